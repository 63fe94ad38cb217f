#!/usr/bin/env bash
# System packages the test suite starts for real: SLURM (slurm-wlm) and its authentication (munge).
# Needs root (or sudo); the tests start the daemons themselves on 127.0.0.1.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge >/dev/null

"""A real one-node SLURM cluster on 127.0.0.1 for the workflow tests.

Debian's slurm-wlm and munge (tests/setup-test-machine.sh installs them). The configuration is
written to the standard /etc/slurm/slurm.conf, because the executor plugin's job step strips
SLURM_* variables (SLURM_CONF included) before its inner srun, as on a real cluster where the
configuration lives there; a slurm.conf this harness did not write is never overwritten. State,
spool and logs live in a temporary folder. munge uses the machine's key, made if absent.
Accounting is off, so the executor plugin is told to poll squeue and to send no account.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MUNGE_KEY = Path("/etc/munge/munge.key")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by tests/slurm_cluster.py for the workflow tests"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


class SlurmUnavailable(RuntimeError):
    pass


def _run(*args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_munge() -> None:
    if MUNGE_SOCKET.exists():
        try:
            _run("munge", "-n")
            return
        except subprocess.CalledProcessError:
            pass
    if not MUNGE_KEY.exists() or MUNGE_KEY.stat().st_size < 32:
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    for folder in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    _run("runuser", "-u", "munge", "--", "/usr/sbin/munged", "--force")
    for _ in range(50):
        if MUNGE_SOCKET.exists():
            return
        time.sleep(0.1)
    raise SlurmUnavailable("munged did not create its socket")


@dataclass
class SlurmCluster:
    folder: Path
    conf: Path
    memory_mb: int  # the node's RealMemory: job requests above it are refused by sbatch
    partition: str = "debug"

    @property
    def env(self) -> dict:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def log_tail(self, lines: int = 40) -> str:
        text = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.folder / name
            if path.exists():
                text.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(text)

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld"):
            pid_file = self.folder / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        # the configuration goes with its cluster: every snakemake process imports the SLURM executor
        # plugin, which runs `scontrol show config` (timeout 10 s; snakemake_executor_plugin_slurm,
        # job_status_query.get_min_job_age); against a configuration whose controller is gone that waits
        # 9 s for each snakemake call and each `run:` job the later tests start, without one it fails at once
        if self.conf.exists() and MARKER in self.conf.read_text():
            self.conf.unlink()


def node_memory_mb() -> int:
    """The test node's RealMemory: the machine's total memory less 1 GB for the daemons.

    Total, not free: free pages shrink as the page cache fills (after a venv build, say), and a
    node sized from them could hold less than the jobs ask for, so that sbatch refuses them all
    ("Memory specification can not be satisfied"). slurmd only checks that RealMemory does not
    exceed the total it sees.
    """
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 1024


def start_slurm(folder: Path) -> SlurmCluster:
    """Start slurmctld and slurmd on 127.0.0.1 with one node of this machine's cores and memory."""
    for program in ("slurmctld", "slurmd", "munged", "sbatch"):
        if shutil.which(program) is None:
            raise SlurmUnavailable(f"{program} is not installed: run tests/setup-test-machine.sh")
    _start_munge()
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count()
    memory_mb = node_memory_mb()
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text():
        raise SlurmUnavailable(f"{SLURM_CONF} exists and was not written by this harness; not overwriting it")
    conf = SLURM_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "\n".join(
            [
                MARKER,
                "ClusterName=dratest",
                f"SlurmctldHost={host}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "AuthType=auth/munge",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "SchedulerType=sched/backfill",
                "ReturnToService=2",
                "MinJobAge=600",
                "KillWait=5",
                "InactiveLimit=0",
                f"StateSaveLocation={folder / 'state'}",
                f"SlurmdSpoolDir={folder / 'spool'}",
                f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                f"SlurmdPidFile={folder / 'slurmd.pid'}",
                f"SlurmctldLogFile={folder / 'slurmctld.log'}",
                f"SlurmdLogFile={folder / 'slurmd.log'}",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    cluster = SlurmCluster(folder=folder, conf=conf, memory_mb=memory_mb)
    env = cluster.env
    _run("/usr/sbin/slurmctld", "-c", env=env)  # -c: clear previous state
    _run("/usr/sbin/slurmd", env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip() in ("idle", "mix", "alloc"):
            return cluster
        time.sleep(1)
    cluster.stop()
    raise SlurmUnavailable(f"the node did not come up:\n{cluster.log_tail()}")

"""Stopping a long job at a safe point when SLURM warns that its time limit is near.

The slurm profile asks SLURM to send every job ``--signal=URG@<seconds>`` that many seconds before its
time limit. Training, AutoAttack and sampling call `watch()` when they start; the handler only records
the signal. Each loop asks `requested()` at its next safe point (after an optimizer step, between
AutoAttack chunks, between sampling shards), saves its state there and calls `stop()`, which ends
the process with exit status 75 (EX_TEMPFAIL of sysexits.h: a temporary failure, try again).
Snakemake counts the job as failed and submits it again (the rules' `retries:`), and the next
attempt resumes from the saved state; so a job stopped by its limit loses at most the work done
after the signal, not the work since its last periodic save.

Why SIGURG and not the usual SIGUSR1: snakemake-executor-plugin-slurm runs a rule as
batch shell -> snakemake (slurm-jobstep) -> srun -> snakemake -> bash -> python, and ``--signal``
without ``B:`` signals every process of the job step (the inner snakemake, bash, torchrun and each
of its workers). SIGUSR1's default action terminates a process, so the inner snakemake dies the
moment it arrives (srun reports "task 0: User defined signal 1") and the job is reported failed
while python is still saving. SIGURG's default action is to ignore it (signal(7)), so every process
that does not handle it lets it pass. ``B:USR1`` reaches the batch shell only, never the step.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import NoReturn

STOP_SIGNAL = signal.SIGURG
EXIT_FOR_RETRY = 75  # EX_TEMPFAIL

_received_at: float | None = None  # time.monotonic() of the first stop signal, None before it


class StopForRetry(SystemExit):
    """Raised at a safe point after the state is saved; uncaught, the process exits with status 75."""

    def __init__(self, message: str):
        super().__init__(EXIT_FOR_RETRY)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _record(signum, frame) -> None:
    global _received_at
    if _received_at is None:
        _received_at = time.monotonic()


def watch() -> None:
    """Record STOP_SIGNAL from now on (idempotent). Python sets handlers in the main thread only;
    elsewhere (a caller's worker thread) nothing is installed and `requested()` stays False."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(STOP_SIGNAL, _record)


def requested() -> bool:
    """Whether the stop signal arrived since this process started watching."""
    return _received_at is not None


def clear() -> None:
    """Forget a received signal (tests; a process that is being stopped never needs it)."""
    global _received_at
    _received_at = None


def stop(saved: str) -> NoReturn:
    """Say what was saved and how long after the signal, then exit for a retry (status 75)."""
    waited = time.monotonic() - _received_at if _received_at is not None else 0.0
    message = (f"stopping for a retry: {STOP_SIGNAL.name} received {waited:.0f} s ago (the job's time limit "
               f"is near); {saved}; exit status {EXIT_FOR_RETRY}, the next attempt resumes from there")
    print(message, file=sys.stderr, flush=True)
    raise StopForRetry(message)

"""What a training run shows while it runs: TensorBoard curves and a small progress file.

`TrainingMonitor` is called by `dra.training.loop.train_cell` at its logging points (after each
optimizer step, after each epoch, at the end); on every process but the main one it does nothing.

- TensorBoard event files in the cell's output folder (``results/<scale>/<cell>/train/``), so that
  ``tensorboard --logdir results/<scale>`` shows every cell as one run. Every logged step:
  ``train/loss``, ``train/loss_trades_or_ce``, ``train/loss_dra``, ``train/adv_batch_acc``,
  ``train/clean_batch_acc`` (TRADES), ``train/lr``, ``train/images_per_second`` of that step's
  batch. Every epoch: the log.csv row (``epoch/<column>``, ``val/clean_acc``, ``val/robust_acc``)
  and ``epoch/seconds``. The x axis is the global optimizer step throughout (an epoch's point sits
  at its last step). A run logs every ``max(1, steps // SCALAR_POINTS)``-th step.
- ``progress.json`` beside the resumable state (``results/<scale>/state/<cell>/train/``), rewritten
  atomically when the run starts or resumes, at each logged step and at each epoch end: epoch and step of how
  many, the measured rate,
  seconds per step and per epoch end (validation), the wall seconds of all attempts together, the
  host and process. `dra.status` reads it instead of the state, which can be gigabytes.

A resumed run continues the same curves: steps and epochs up to the ones the progress file
records as written are not written again, and the writer opens with ``purge_step`` just past them,
so TensorBoard's reader also hides anything a killed process wrote after its last progress update.
A run from step 0 (no state) removes the event files of an earlier run of the cell.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from dra.io import write_json

PROGRESS_FILE = "progress.json"
EVENT_FILE_PATTERN = "events.out.tfevents.*"
# at most about this many points per step curve: ImageNet's 125k steps log every 12th, a 40k-step
# CIFAR cell every 4th, each tag then a few hundred kB of events
SCALAR_POINTS = 10_000
STEP_TAGS = ("loss", "loss_trades_or_ce", "loss_dra", "clean_batch_acc", "adv_batch_acc")
# log.csv columns -> TensorBoard tags of the epoch curves
EPOCH_TAGS = {"loss": "epoch/loss", "loss_trades_or_ce": "epoch/loss_trades_or_ce", "loss_dra": "epoch/loss_dra",
              "clean_batch_acc": "epoch/clean_batch_acc", "adv_batch_acc": "epoch/adv_batch_acc",
              "images_per_second": "epoch/images_per_second", "lr": "epoch/lr",
              "val_clean_acc": "val/clean_acc", "val_robust_acc": "val/robust_acc"}


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """A progress file, or None when there is none or it cannot be read (it is only ever replaced
    whole, so an unreadable one is a foreign file)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class TrainingMonitor:
    def __init__(self, recipe: dict, out_dir: Path, state_dir: Path, steps_per_epoch: int, processes: int,
                 progress, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        cell = recipe.get("cell") or {}
        self.cell = "/".join(str(cell[key]) for key in ("dataset", "arch", "method", "budget") if key in cell)
        self.path = Path(state_dir) / PROGRESS_FILE
        self.epochs, self.steps_per_epoch = recipe["epochs"], steps_per_epoch
        self.total_steps = self.epochs * steps_per_epoch
        self.log_every = max(1, self.total_steps // SCALAR_POINTS)
        self.every_steps = recipe["checkpoint"]["every_steps"]
        self.processes = processes
        resumed_step = progress.global_step
        previous = read_progress(self.path) if resumed_step else None
        if not resumed_step:  # from scratch: curves of an earlier run of this cell would mix with ours
            for old in Path(out_dir).glob(EVENT_FILE_PATTERN):
                old.unlink()
        previous = previous or {}
        self.logged_step = int(previous.get("last_logged_step", resumed_step))
        self.logged_epoch = int(previous.get("last_logged_epoch", 0))
        self.seconds_before = float(previous.get("run_seconds", 0.0))
        self.attempt = int(previous.get("attempt", 0)) + 1
        self.checkpoint_step = resumed_step
        self.epoch_end_seconds = previous.get("epoch_end_seconds")
        self.out_dir, self.purge_step = Path(out_dir), self.logged_step + 1 if resumed_step else None
        self._writer = None
        self.started = self.epoch_started = self.last_step_time = time.time()
        self.step_seconds, self.steps, self.images = 0.0, 0, 0.0
        self.rate = previous.get("images_per_second")
        self.seconds_per_step = previous.get("seconds_per_step")
        self.phase = "training"
        self._write(progress)  # a resumed run shows as live before its first logged step

    @property
    def writer(self):
        """The event writer, opened at the first scalar (a run that stops before has no event file)."""
        if self._writer is None:
            from torch.utils.tensorboard import (
                SummaryWriter,  # needs the tensorboard package
            )

            self._writer = SummaryWriter(log_dir=str(self.out_dir), purge_step=self.purge_step)
        return self._writer

    def step(self, progress, totals: list[float], seconds: float, lr: float) -> None:
        """After an optimizer step (and its checkpoint): `totals` are the loop's summed
        [loss, loss_main, loss_dra] x images, clean correct, adversarial correct, images."""
        if not self.enabled:
            return
        self.last_step_time = time.time()
        self.step_seconds += seconds
        self.steps += 1
        self.images += totals[5]
        self.rate, self.seconds_per_step = self.images / self.step_seconds, self.step_seconds / self.steps
        step = progress.global_step
        if step % self.every_steps == 0:
            self.checkpoint_step = step
        if step % self.log_every:
            return
        if step > self.logged_step:
            n = totals[5]
            values = dict(zip(STEP_TAGS, (totals[0] / n, totals[1] / n, totals[2] / n, totals[3] / n, totals[4] / n)))
            if not progress.sums.get("clean_counted"):  # no clean branch (PGD-AT, standard): nothing counted
                del values["clean_batch_acc"]
            values.update(lr=lr, images_per_second=n / seconds)
            for tag, value in values.items():
                self.writer.add_scalar(f"train/{tag}", value, step)
            self.writer.flush()  # before the progress file says so: a resumed run skips what is recorded
            self.logged_step = step
        self._write(progress)

    def epoch_end(self, progress) -> None:
        """After an epoch's row is in progress.rows and its state is saved."""
        if not self.enabled:
            return
        now = time.time()
        self.epoch_end_seconds = now - self.last_step_time  # validation, best-model and state saves
        row = progress.rows[-1]
        self.checkpoint_step = progress.global_step
        if row["epoch"] > self.logged_epoch:
            for column, tag in EPOCH_TAGS.items():
                if row[column] != "":
                    self.writer.add_scalar(tag, float(row[column]), row["step"])
            # this process's share of the epoch (a resumed epoch: since the resume)
            self.writer.add_scalar("epoch/seconds", now - self.epoch_started, row["step"])
            self.writer.flush()
            self.logged_epoch = row["epoch"]
        self.epoch_started = self.last_step_time = now
        self._write(progress)

    def finish(self, progress) -> None:
        if not self.enabled:
            return
        self.phase = "finished"
        self._write(progress)
        if self._writer is not None:
            self._writer.close()

    def _write(self, progress) -> None:
        now = time.time()
        write_json(self.path, {
            "cell": self.cell, "phase": self.phase,
            "epoch": min(progress.epoch + 1, self.epochs), "epochs": self.epochs,
            "epochs_done": progress.epoch, "step": progress.global_step, "steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch, "checkpoint_step": self.checkpoint_step,
            "images_per_second": self.rate, "seconds_per_step": self.seconds_per_step,
            "epoch_end_seconds": self.epoch_end_seconds, "log_every_steps": self.log_every,
            "last_logged_step": self.logged_step, "last_logged_epoch": self.logged_epoch,
            "processes": self.processes, "attempt": self.attempt,
            "run_seconds": self.seconds_before + (now - self.started),
            "attempt_started": self.started, "updated": now, "host": socket.gethostname(), "pid": os.getpid(),
        })

"""Time limits that fit the partition (dra.time_limits) and the stop before a time limit
(dra.preemption) in AutoAttack and sampling; training's is in test_training_loop.py, the real
SLURM run in test_workflow_slurm.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from dra import preemption, time_limits


@pytest.fixture(autouse=True)
def no_stop_left_behind():
    preemption.clear()
    yield
    preemption.clear()


def send_stop_signal():
    # the signal SLURM sends (profiles/slurm: --signal=URG@600), to this process, handled at once
    os.kill(os.getpid(), preemption.STOP_SIGNAL)


@pytest.mark.parametrize("text,minutes", [("90m", 90), ("72h", 4320), ("2d", 2880), ("1m", 1)])
def test_runtime_text_in_minutes(text, minutes):
    assert time_limits.minutes(text) == minutes


def test_runtime_without_unit_is_refused():
    with pytest.raises(ValueError, match="'72'"):
        time_limits.minutes("72")


def test_attempts_ask_for_at_most_the_limit_and_cover_the_estimate():
    limit = 24 * 60
    # 100 h of training at a 24 h limit: every attempt asks 24 h; 5 attempts cover 100 h, 2 spare
    assert [time_limits.attempt_minutes(6000, attempt, limit) for attempt in (1, 2, 7)] == [limit] * 3
    assert time_limits.retries(6000, limit) == 4 + time_limits.SPARE_ATTEMPTS == 6
    # 10 h: the estimate, then twice it, then the limit; retries as the profile gave before (2)
    assert [time_limits.attempt_minutes(600, attempt, limit) for attempt in (1, 2, 3)] == [600, 1200, limit]
    assert time_limits.retries(600, limit) == 2
    # exactly the limit: one attempt suffices
    assert time_limits.retries(limit, limit) == 2


def test_stop_signal_exits_with_the_retry_status_and_says_so():
    program = (
        "import os\n"
        "from dra import preemption\n"
        "preemption.watch()\n"
        "os.kill(os.getpid(), preemption.STOP_SIGNAL)\n"
        "assert preemption.requested()\n"
        "preemption.stop('nothing to save')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == preemption.EXIT_FOR_RETRY == 75, result.stderr
    assert "stopping for a retry: SIGURG received" in result.stderr and "nothing to save" in result.stderr


def test_stop_signal_is_ignored_by_a_process_that_does_not_watch():
    # why SIGURG (dra/preemption.py): the processes between SLURM and python (snakemake, bash,
    # torchrun) survive it; SIGUSR1 would end them
    program = "import os, signal\nos.kill(os.getpid(), signal.SIGURG)\nprint('alive')\n"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "alive\n")


def test_autoattack_stops_after_the_chunk_in_progress_and_resumes(tmp_path, monkeypatch, one_torch_thread):
    from test_eval_autoattack import linear_problem

    from dra.evaluation.autoattack import evaluate_autoattack

    model, images, labels, eps, _, _ = linear_problem(12)
    calls = []

    def identity_attack(self, x, y, *, batch_size, state_path=None):
        calls.append(x.shape[0])
        if len(calls) == 1:
            send_stop_signal()  # during the first chunk: it is finished and saved, then the job stops
        return x.clone(), self.model(x).argmax(1)

    monkeypatch.setattr("pyautoattack.AutoAttack.run_standard_evaluation", identity_attack)
    settings = dict(eps=eps, seed=0, batch_size=4, device="cpu", chunk_size=4)
    state = tmp_path / "aa.npz"
    with pytest.raises(preemption.StopForRetry) as stopped:
        evaluate_autoattack(model, images, labels, state_path=state, **settings)
    assert stopped.value.code == 75 and calls == [4]
    with np.load(state) as saved:
        np.testing.assert_array_equal(saved["done"], [True, False, False])
    preemption.clear()  # the retry is a new process
    resumed = evaluate_autoattack(model, images, labels, state_path=state, **settings)
    assert calls == [4, 4, 4]  # the retry attacks only the two chunks left
    uninterrupted = evaluate_autoattack(model, images, labels, state_path=None, **settings)
    np.testing.assert_array_equal(resumed.robust, uninterrupted.robust)
    np.testing.assert_array_equal(resumed.clean, uninterrupted.clean)


def test_sampling_stops_after_the_shard_in_progress_and_resumes(tmp_path):
    from dra.diffusion.shards import run_sharded_job

    computed, written = [], []

    def compute(start, stop, advance):
        computed.append(start)
        if start == 4:
            send_stop_signal()  # during shard 1: it is saved, then the job stops
        advance(stop - start)
        return {"rows": np.arange(start, stop)}

    def write_output(shards):
        written.extend(np.concatenate([arrays["rows"] for _, arrays in shards]).tolist())

    job = dict(out_path=tmp_path / "out", n=10, shard_size=4, fingerprint={"seed": 0}, compute=compute,
               write_output=write_output, desc="test")
    with pytest.raises(preemption.StopForRetry):
        run_sharded_job(**job)
    assert computed == [0, 4] and not written
    assert sorted(p.name for p in (tmp_path / "out.state").iterdir()) == ["job.json", "shard_000000.npz",
                                                                          "shard_000001.npz"]
    preemption.clear()
    run_sharded_job(**job)
    assert computed == [0, 4, 8] and written == list(range(10))
    assert not (tmp_path / "out.state").exists()

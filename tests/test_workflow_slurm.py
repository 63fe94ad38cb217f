"""Mini cells through the SLURM profile on a real SLURM (slurmctld + slurmd on 127.0.0.1).

The profile under test is profiles/slurm with what this test cluster cannot offer changed:
no conda (conda channels are unreachable here), no accounting (squeue instead of sacct, no
account), the test cluster's partition, fast status polling, and minutes instead of hours: the
stop signal 30 s before the limit instead of 600 s.
"""

from __future__ import annotations

import csv
import re
import threading
import time

import pytest
import yaml

from slurm_cluster import start_slurm
from workflow_helpers import ROOT, copy_workflow, run_snakemake
pytestmark = pytest.mark.slow

# 924 steps of a few per second: longer than the first attempt on a fast machine, within the
# three attempts on a loaded one
CELL = "digits/wrn-10-1/at/nosyn-bs64-ep44"
# the cell's estimate: its attempts ask for 2, 4 and 6 minutes (time_limits.attempt_minutes); the
# partition's limit stays above the mini AutoAttack's few minutes, which run as one chunk
ESTIMATE_MINUTES, TIME_LIMIT_MINUTES = 2, 10
SIGNAL_SECONDS = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of the workflow, so that the test's results stay out of the checkout."""
    work = copy_workflow(tmp_path_factory.mktemp("workflow"))
    # a longer mini cell, so that a 1-minute time limit kills it mid-training
    overlay = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    overlay["scale"] = "slurm-test"
    overlay["data_dir"] = "results/slurm-test/data"
    overlay["tables"]["table2"]["rows"].append({"cell": CELL, "paper": None})
    overlay["datasets"]["digits"]["eval_n"] = 50  # the attack is not what this test is about
    overlay["hardware"] = {"time_limit": f"{TIME_LIMIT_MINUTES}m"}
    overlay["resources"]["train"]["runtime"] = f"{ESTIMATE_MINUTES}m"
    (work / "config" / "slurm-test.yaml").write_text(yaml.safe_dump(overlay))
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.v8+.yaml").read_text())
    profile.pop("software-deployment-method")
    profile["default-resources"]["slurm_partition"] = "debug"
    assert profile["default-resources"]["slurm_extra"] == "'--signal=URG@600'"
    profile["default-resources"]["slurm_extra"] = f"'--signal=URG@{SIGNAL_SECONDS}'"
    profile.update(
        {
            "slurm-no-account": True,
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 5,
            "latency-wait": 5,
            "jobs": 2,
        }
    )
    (work / "profiles" / "slurm" / "config.v8+.yaml").write_text(yaml.safe_dump(profile))
    return work


def test_every_job_request_fits_the_test_node(cluster, workdir):
    # sbatch refuses a job whose mem_mb exceeds the node's RealMemory; with two jobs at once
    # (profile `jobs: 2`) both must fit beside each other
    profile = yaml.safe_load((workdir / "profiles" / "slurm" / "config.v8+.yaml").read_text())
    overlay = yaml.safe_load((workdir / "config" / "slurm-test.yaml").read_text())
    requests = [profile["default-resources"]["mem_mb"]]
    requests += [family["mem_mb"] for family in overlay["resources"].values()]
    assert profile["jobs"] * max(requests) <= cluster.memory_mb, (requests, cluster.memory_mb)


class LogWatcher:
    """Everything a log file held, across attempts: Snakemake deletes a job's log before each
    attempt, so the stopped attempt's last lines are read while it runs (every 0.2 s)."""

    def __init__(self, path):
        self.path, self.history, self._current = path, [], ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._done.wait(0.2):
            try:
                text = self.path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            if text.startswith(self._current):
                self.history.append(text[len(self._current):])
            else:  # a new attempt's log
                self.history.append("\n" + text)
            self._current = text

    def stop(self) -> str:
        self._done.set()
        self._thread.join()
        return "".join(self.history)


def stops_and_resumptions(transcript: str):
    """[(last step shown before the stop, step saved at the stop or None if killed, step resumed)]."""
    pattern = re.compile(r"\| (?P<shown>\d+)/\d+ \[|training state of step (?P<saved>\d+) saved"
                         r"|resuming from step (?P<resumed>\d+)")
    found, shown, saved = [], 0, None
    for match in pattern.finditer(transcript):  # in order: tqdm, the stop and the resumption share lines
        if match["shown"]:
            shown = max(shown, int(match["shown"]))
        elif match["saved"]:
            saved = int(match["saved"])
        else:
            found.append((shown, saved, int(match["resumed"])))
            shown, saved = int(match["resumed"]), None
    return found


def test_training_stopped_before_its_time_limit_loses_no_step_and_resumes(cluster, workdir):
    target = f"results/slurm-test/{CELL}/autoattack.json"
    # the job's time limits come from config (hardware.time_limit, resources.train.runtime) and its
    # attempts from the rule's retries (dra.time_limits); SLURM sends SIGURG 30-60 s before each limit
    watcher = LogWatcher(workdir / f"results/slurm-test/{CELL}/train/train.log")
    started = time.monotonic()
    try:
        result = run_snakemake(
            workdir,
            target,
            "--profile",
            "slurm",
            "--configfile",
            "config/slurm-test.yaml",
            env=cluster.env,
            timeout=1500,
        )
    finally:
        transcript = watcher.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + cluster.log_tail()
    # every attempt asked SLURM for the estimate times the attempt, at most the partition's limit
    # (Snakemake prints a job's resources at its submission and again at its error)
    output = result.stdout + result.stderr
    asked = list(dict.fromkeys(int(m) for m in re.findall(r"rule train_cell:(?:.|\n)*?runtime=(\d+)", output)))
    assert asked and asked == [min(ESTIMATE_MINUTES * attempt, TIME_LIMIT_MINUTES)
                               for attempt in range(1, len(asked) + 1)], asked
    boundaries = stops_and_resumptions(transcript)
    print(f"\nslurm test: {time.monotonic() - started:.0f} s; (last step shown, step saved at the "
          f"signal, step resumed) per retry: {boundaries}")
    assert boundaries, transcript[-2000:]
    for shown, saved, resumed in boundaries:
        # stopped by the signal, not killed at the limit: the retry resumes from the step the
        # signal's stop saved, and no step shown before it is lost
        assert saved is not None and resumed == saved and shown <= saved, (boundaries, transcript[-2000:])
    with open(workdir / f"results/slurm-test/{CELL}/train/log.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    # the resumed run continued the count instead of starting over
    assert steps == sorted(steps) and steps[-1] == 924
    report = yaml.safe_load((workdir / target).read_text())
    assert report["n"] == 50 and report["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_a_multi_gpu_training_job_asks_for_all_its_gpus_on_one_node(cluster, workdir):
    # the mini cell planned on 2 GPUs: the sbatch line the profile produces must keep both on one
    # node (torchrun --standalone sees only its own node's GPUs). The test node has no GPU, so SLURM
    # refuses the job, and the plugin reports the sbatch call it made: no GPU job runs here
    overlay = yaml.safe_load((workdir / "config" / "slurm-test.yaml").read_text())
    overlay["scale"] = "slurm-gpu-test"
    overlay["resources"]["train"]["gpu"] = 2
    for recipes in overlay["recipes"].values():  # BatchNorm groups of 32: the test cell's batch of 64 is two
        for recipe in recipes.values():
            if recipe.get("batchnorm_group"):
                recipe["batchnorm_group"] = 32  # one group per GPU
    (workdir / "config" / "slurm-gpu-test.yaml").write_text(yaml.safe_dump(overlay))
    result = run_snakemake(workdir, f"results/slurm-gpu-test/{CELL}/train/model.pt", "--profile", "slurm",
                           "--configfile", "config/slurm-gpu-test.yaml", "--retries", "0", "--verbose",
                           env=cluster.env, timeout=900)
    output = result.stdout + result.stderr
    calls = {line.strip() for line in output.splitlines()
             if line.strip().startswith("sbatch ") and "rule_train_cell" in line}
    assert calls, output[-3000:] + cluster.log_tail()
    for call in calls:
        options = call.split(" --wrap")[0].split()
        assert "--nodes=1" in options and "--gpus=2" in options, call
        assert not any(option.startswith(("--ntasks-per-gpu", "--gpus-per-task")) for option in options), call
    # SLURM itself answered: the node has no GPU to give (a real submission, refused)
    assert result.returncode != 0 and "SLURM sbatch failed" in output, output[-3000:]

"""Mini cells through the SLURM profile on a real SLURM (slurmctld + slurmd on 127.0.0.1).

The profile under test is profiles/slurm with what this test cluster cannot offer changed:
no conda (conda channels are unreachable here), no accounting (squeue instead of sacct, no
account), the test cluster's partition, and fast status polling.
"""

from __future__ import annotations

import csv

import pytest
import yaml

from slurm_cluster import start_slurm
from workflow_helpers import ROOT, copy_workflow, run_snakemake
pytestmark = pytest.mark.slow

CELL = "digits/wrn-10-1/at/nosyn-bs64-ep50"


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
    (work / "config" / "slurm-test.yaml").write_text(yaml.safe_dump(overlay))
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.v8+.yaml").read_text())
    profile.pop("software-deployment-method")
    profile["default-resources"]["slurm_partition"] = "debug"
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


def test_training_killed_at_its_time_limit_is_retried_and_resumes(cluster, workdir):
    target = f"results/slurm-test/{CELL}/autoattack.json"
    # a one-minute first attempt: SLURM cancels it (TIMEOUT), Snakemake resubmits it, and the
    # second attempt continues from the saved state. Later attempts get 3 and 5 minutes, so
    # that the test does not depend on how fast this machine trains while other tests run
    # beside it (at one minute each, four attempts did not suffice on a loaded CI runner)
    result = run_snakemake(
        workdir,
        target,
        "--profile",
        "slurm",
        "--set-resources",
        "train_cell:runtime=2*attempt-1",
        "--retries",
        "3",
        "--configfile",
        "config/slurm-test.yaml",
        env=cluster.env,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + cluster.log_tail()
    log = (workdir / f"results/slurm-test/{CELL}/train/train.log").read_text()
    assert "resuming from step" in log, log[-2000:]
    with open(workdir / f"results/slurm-test/{CELL}/train/log.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    # the resumed run continued the count instead of starting over
    assert steps == sorted(steps) and steps[-1] > 0
    report = yaml.safe_load((workdir / target).read_text())
    assert report["n"] == 50 and report["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_a_multi_gpu_training_job_asks_for_all_its_gpus_on_one_node(cluster, workdir):
    # the mini cell planned on 2 GPUs: the sbatch line the profile produces must keep both on one
    # node (torchrun --standalone sees only its own node's GPUs). The test node has no GPU, so SLURM
    # refuses the job, and the plugin reports the sbatch call it made: no GPU job runs here
    overlay = yaml.safe_load((workdir / "config" / "slurm-test.yaml").read_text())
    overlay["scale"] = "slurm-gpu-test"
    overlay["resources"]["train"]["gpu"] = 2
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

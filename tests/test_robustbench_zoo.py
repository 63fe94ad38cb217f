"""Figures 1 and 9 on RobustBench's model zoo, without a download: two zoo architectures, built by
robustbench 1.1.1 itself with random weights, lie in a model folder in RobustBench's layout
(<model_dir>/cifar10/Linf/<name>.pt), so robustbench.utils.load_model finds them; the workflow's
rules zoo_representation and figure1_9 then run on them at mini size (20 test images).

The zoo's Python differs from the user's conda env (envs/robustbench.yaml) in three ways, each
because of this machine:
- robustbench 1.1.1 pins timm 1.0.9, and the test venv has timm 1.0.31: a venv of its own holds
  robustbench, timm 1.0.9, gdown, geotorch, torchdiffeq, pyautoattack and gdown's own needs
  (pip, --no-deps, from pip's cache after the first run; built once per test session by conftest.py's
  zoo_python, which tests/test_export.py uses too), and reaches
  this venv's torch, numpy, pandas, matplotlib through a .pth file. Its own site-packages come first
  on sys.path, so its timm shadows ours.
- robustbench's package imports `autoattack`, the import name of fra31's AutoAttack from git, which
  the env installs from git; git hosts are out of reach here, so the test venv gets a module
  `autoattack` that re-exports pyautoattack's classes (PyPI's packaging of the same code). Loading a
  model never calls AutoAttack; the module is there because `import robustbench` imports it.
- the figure rule (envs/torch.yaml) runs in the same interpreter; its code imports no timm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dra.analysis.representation_metrics import cknna
from dra.data.store import ImageStoreWriter
from workflow_helpers import copy_workflow

# two architectures of the CIFAR-10 Linf zoo with their reported AutoAttack accuracy (model_info JSON)
MODELS = {"Wong2020Fast": 43.21,  # PreActResNet-18
          "Rebuffi2021Fixing_R18_ddpm": 56.66}  # DeepMind's PreActResNet-18 (DMPreActResNet, Swish)
STANDARD = "Wong2020Fast"  # Figure 9's reference model here: CKNNA with itself is known
N = 20
# a venv (pip, from its cache after the first run), two model builds and a Snakemake run: about 80 s on
# two shared cores (`python -m pytest -n 0 tests/test_robustbench_zoo.py --durations=5`)
pytestmark = pytest.mark.slow

PACKAGE_SIDE = textwrap.dedent("""
    # run once in the zoo venv (importing robustbench takes seconds): each model built by the package with
    # random weights, saved where load_model looks, its logits on the test images computed from the built
    # model (not through load_model); then what dra.analysis.robustbench_zoo does without a checkpoint,
    # and what it asks the downloader for
    import json, sys, numpy as np, torch
    import dra.download
    from dra.analysis import robustbench_zoo
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    model_dir, images, out, empty_dir = sys.argv[1:5]
    x = torch.from_numpy(np.load(images)).permute(0, 3, 1, 2).float() / 255
    zoo = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]
    logits = {}
    for seed, name in enumerate(sys.argv[5:]):
        torch.manual_seed(seed)
        model = zoo[name]["model"]().eval()
        torch.save(model.state_dict(), f"{model_dir}/cifar10/Linf/{name}.pt")
        with torch.no_grad():
            logits[name] = model(x).numpy()
    np.savez(out, **logits)
    facts = {}
    try:
        robustbench_zoo.load_zoo_model(sys.argv[5], empty_dir)
    except robustbench_zoo.ZooError as error:
        facts["missing"] = str(error)
    calls = []
    dra.download.download = lambda url, dest, sha256=None: calls.append([url, str(dest), sha256])
    robustbench_zoo.download_checkpoint("Standard", empty_dir)
    facts["download_calls"] = calls
    try:
        robustbench_zoo.gdrive_id("Chen2020Adversarial")
    except robustbench_zoo.ZooError as error:
        facts["ensemble"] = str(error)
    print(json.dumps(facts))
""")


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, zoo_python):
    """A copy of the workflow with the zoo folder, a CIFAR-10-shaped test store and a DR record."""
    work = copy_workflow(tmp_path_factory.mktemp("workflow"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(N) % 10
    with ImageStoreWriter(work / "data" / "cifar10" / "test", n=N, height=32, width=32, num_classes=10) as writer:
        writer.write(0, images, labels)
    np.save(work / "images.npy", images)
    (work / "zoo" / "cifar10" / "Linf").mkdir(parents=True)
    (work / "empty").mkdir()
    done = subprocess.run([str(zoo_python), "-c", PACKAGE_SIDE, str(work / "zoo"), str(work / "images.npy"),
                           str(work / "reference.npz"), str(work / "empty"), *MODELS],
                          capture_output=True, text=True, cwd=work)
    assert done.returncode == 0, done.stderr
    (work / "package-side.json").write_text(done.stdout.splitlines()[-1])
    # the DR's record as figure_diffusion_representation writes it (its rule is tested elsewhere)
    dr = work / "results" / "zoo-mini" / "cifar10" / "figures" / "edm-cifar10-cond" / "representation.npz"
    dr.parent.mkdir(parents=True)
    np.savez(dr, clean_features=rng.normal(size=(N, 16)).astype(np.float32), labels=labels)
    overlay = {"scale": "zoo-mini", "data_dir": "data",
               "figures": {"eval_n": N, "robustbench": {
                   "model_dir": "zoo", "standard": STANDARD,
                   "models": [{"name": name, "autoattack": value} for name, value in MODELS.items()]}}}
    (work / "zoo.yaml").write_text(yaml.safe_dump(overlay))
    return work


def snakemake(work, zoo_python, *targets):
    env = dict(os.environ)
    # the rules' `python` is the zoo venv's; Snakemake itself runs in this one
    env["PATH"] = f"{zoo_python.parent}:{os.path.dirname(sys.executable)}:{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", "2", "--configfile",
                           "config/mini.yaml", "zoo.yaml", "--rerun-triggers", "mtime"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)


def test_figures_1_and_9_from_two_zoo_models_found_in_the_local_model_dir(workflow, zoo_python):
    # all_figures at this overlay holds Figures 1 and 9 (figures.robustbench set); the others stay out:
    # only the zoo rules and figure1_9 may run, so this names the two PNGs
    done = snakemake(workflow, zoo_python, "results/zoo-mini/figures/figure1.png")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "download_zoo_checkpoint" not in done.stderr  # load_model found the files: nothing fetched
    for name in ("figure1.png", "figure1.pdf", "figure9.png", "figure9.pdf"):
        assert (workflow / "results" / "zoo-mini" / "figures" / name).stat().st_size > 1000
    reference = np.load(workflow / "reference.npz")
    features = {}
    for name in MODELS:
        record = np.load(workflow / "results" / "zoo-mini" / "robustbench" / name / "features.npz")
        # load_model filled the package's architecture with the weights of our file: same logits
        np.testing.assert_allclose(record["logits"], reference[name], rtol=1e-4, atol=1e-5)
        # the features are the head's input: logits = features W^T + b with the saved head
        state = torch.load(workflow / "zoo" / "cifar10" / "Linf" / f"{name}.pt", weights_only=True)
        dim = record["clean_features"].shape[1]
        (weight,) = [v for k, v in state.items() if k.endswith("weight") and tuple(v.shape) == (10, dim)]
        bias = next(v for k, v in state.items() if k.endswith("bias") and v.shape == (10,)
                    and torch.equal(state[k.removesuffix("bias") + "weight"], weight))
        np.testing.assert_allclose(record["clean_features"] @ weight.numpy().T + bias.numpy(), record["logits"],
                                   rtol=1e-4, atol=1e-4)
        assert float(record["clean_accuracy"]) == 100.0 * np.mean(record["logits"].argmax(1) == np.arange(N) % 10)
        features[name] = torch.from_numpy(record["clean_features"])
    table = pd.read_csv(workflow / "results" / "zoo-mini" / "figures" / "figure1.csv").set_index("model")
    # x: the accuracy RobustBench reports, marked as such; nothing evaluated by our AutoAttack rule
    assert table["robust"].to_dict() == MODELS
    assert set(table["accuracy_source"]) == {"reported by RobustBench"}
    dr = np.load(workflow / "results" / "zoo-mini" / "cifar10" / "figures" / "edm-cifar10-cond" / "representation.npz")
    for name in MODELS:
        assert table.loc[name, "cknna_diffusion"] == pytest.approx(
            cknna(features[name], torch.from_numpy(dr["clean_features"]), topk=10), abs=1e-9)
    # CKNNA of a representation with itself is s / (s + 1e-6), s its HSIC with itself (platonic-rep metrics.py)
    assert table.loc[STANDARD, "cknna_standard"] == pytest.approx(1.0, abs=1e-4)
    assert table.loc["Rebuffi2021Fixing_R18_ddpm", "cknna_standard"] < 0.999


def test_a_missing_checkpoint_stops_before_any_download(workflow):
    facts = json.loads((workflow / "package-side.json").read_text())
    assert "download_zoo_checkpoint" in facts["missing"] and "does not exist" in facts["missing"]
    assert not (workflow / "empty" / "cifar10").exists()  # load_model never ran: it would create the folder


def test_the_download_asks_the_verified_downloader_for_the_package_s_drive_file(workflow):
    # the Google Drive id is the package's (robustbench/model_zoo/cifar10.py: Standard's checkpoint)
    facts = json.loads((workflow / "package-side.json").read_text())
    assert facts["download_calls"] == [[
        "https://drive.usercontent.google.com/download?id=1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC&export=download&confirm=t",
        str(workflow / "empty" / "cifar10" / "Linf" / "Standard.pt"), None]]
    assert "no single checkpoint" in facts["ensemble"]  # an ensemble of three checkpoints

"""Shared by the test files: their order for the two pytest-xdist workers, and four fixtures.

The end-to-end files take most of the time (the mini reproduction the most); started first, they run
beside the unit tests instead of after them (pyproject: -n 2 --dist loadfile --no-loadscope-reorder,
without which pytest-xdist hands out the files with the most tests first, whatever this order). One
worker holds the mini reproduction; the other takes the SLURM test, the canary, the ImageNet mini and
then the unit tests.
"""

import os
import site
import subprocess
import sys

import pytest

# OpenMP threads that wait for work sleep instead of spinning (libgomp's default spins, GOMP_SPINCOUNT):
# the two workers, the Snakemake jobs they start (which inherit this) and their torch threads share 2
# cores, where a spinning thread burns the core its partner needs. Results are the same; the mini EDM's
# training step on 2 threads beside other work took 1.45 CPU-seconds spinning, 0.22-0.26 sleeping
# (0.14 on 1 thread). Set here, before any test imports torch (libgomp reads it when loaded).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

LONGEST_FIRST = (
    "test_workflow_mini.py", "test_workflow_slurm.py", "test_canary.py", "test_workflow_imagenet_mini.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its place


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, so that float results do not depend on the machine's cores."""
    import torch  # here, not at the top: most test files never load torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def imagenet_overlay(tmp_path_factory):
    """The paper's config with an ImageNet folder set, for dry runs (which never read it)."""
    path = tmp_path_factory.mktemp("overlay") / "imagenet.yaml"
    path.write_text("datasets:\n  imagenet:\n    source:\n      path: /data/ILSVRC2012\n")
    return str(path)


@pytest.fixture
def counted_calls(monkeypatch):
    """count(owner, name, killed_at=None): wraps owner.name (a function or a method) to count its calls,
    returned as a list; with killed_at=k the k-th call raises KeyboardInterrupt, as a job killed while
    that batch runs. A second count() of the same name wraps the original again, counting from zero."""
    originals = {}

    def count(owner, name, killed_at=None):
        real = originals.setdefault((owner, name), getattr(owner, name))
        calls = []

        def counted(*args, **kwargs):
            calls.append(1)
            if len(calls) == killed_at:
                raise KeyboardInterrupt("killed")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
        return calls

    return count


# RobustBench 1.1.1 with its pins, for the zoo figures and the export tests (see tests/test_robustbench_zoo.py)
ZOO_PACKAGES = ["robustbench==1.1.1", "timm==1.0.9", "gdown==5.1.0", "geotorch==0.4.0", "torchdiffeq==0.2.5",
                "pyautoattack==0.2.0", "beautifulsoup4", "soupsieve", "filelock", "setuptools<81"]
AUTOATTACK_SHIM = {
    "__init__.py": "# test stand-in for fra31's `autoattack` (see tests/test_robustbench_zoo.py)\n"
                   "from pyautoattack import AutoAttack\n",
    "state.py": "from pyautoattack.state import EvaluationState\n",
}


@pytest.fixture(scope="session")
def zoo_python(tmp_path_factory):
    """A venv with robustbench's pins over this venv's packages (tests/test_robustbench_zoo.py says why)."""
    venv = tmp_path_factory.mktemp("zoo") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                         capture_output=True, text=True).stdout.strip()
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                           "--disable-pip-version-check", *ZOO_PACKAGES], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shim = os.path.join(own, "autoattack")
    os.makedirs(shim)
    for name, code in AUTOATTACK_SHIM.items():
        with open(os.path.join(shim, name), "w") as handle:
            handle.write(code)
    with open(os.path.join(own, "main-venv.pth"), "w") as handle:
        handle.write("\n".join(site.getsitepackages()) + "\n")
    return python

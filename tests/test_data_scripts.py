"""The data scripts are thin entry points: --help works, and they run or fail with the library's message."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dra.data.store import open_image_store

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["download", "prepare_cifar", "prepare_synthetic", "prepare_imagenet", "prepare_digits"]


def _run(script, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{script}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    result = _run(script, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_prepare_synthetic_script(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "1m.npz", image=image, label=np.arange(5, dtype=np.int64))
    result = _run(
        "prepare_synthetic",
        "--parts",
        tmp_path / "1m.npz",
        "--out",
        tmp_path / "store",
        "--num-classes",
        10,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(open_image_store(tmp_path / "store").images, image)

    result = _run(
        "prepare_synthetic",
        "--parts",
        tmp_path / "1m.npz",
        "--out",
        tmp_path / "store2",
        "--num-classes",
        3,
    )
    assert result.returncode != 0
    assert "labels in [0, 4]" in result.stderr and "expected [0, 3)" in result.stderr

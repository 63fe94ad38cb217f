"""The restricted EDM unpickler on pickles built here in NVIDIA's persistence format."""

import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from dra.diffusion.checkpoint import (CheckpointFormatError, PersistentRecord, UnsafePickleError, convert_edm_pickle,
                                      load_edm, read_edm_pickle)
from dra.diffusion.edm import EDMPrecond, one_hot_labels

torch.set_num_threads(1)

TINY_KWARGS = dict(img_resolution=8, img_channels=3, label_dim=3, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                   sigma_data=0.5, model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1,
                   attn_resolutions=[4], dropout=0.13, augment_dim=9, embedding_type="positional",
                   channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])


@pytest.fixture
def nvidia_modules(monkeypatch):
    """Importable stand-ins for torch_utils.persistence and dnnlib.util, so pickle can name them.

    The reconstruction hook fails loudly if anything ever calls it: our loader must not.
    """
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("NVIDIA's reconstruction hook must never run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package = types.ModuleType("torch_utils")
    package.persistence = persistence
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = util
    for name, module in [("torch_utils", package), ("torch_utils.persistence", persistence),
                         ("dnnlib", dnnlib), ("dnnlib.util", util)]:
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


def persistence_pickle(obj, path, reconstruct, module_src, top_kwargs, protocol=4):
    """Pickle like torch_utils.persistence: every module -> reconstruct(meta) with source + state."""

    class PersistencePickler(pickle.Pickler):
        def reducer_override(self, value):
            if isinstance(value, torch.nn.Module) and type(value).__module__ == "dra.diffusion.edm":
                state = dict(value.__dict__)
                is_top = isinstance(value, EDMPrecond)
                state["_init_args"] = ()
                # Inner blocks of NVIDIA's nets carry numpy scalars such as skip_scale = np.sqrt(0.5).
                state["_init_kwargs"] = dict(top_kwargs) if is_top else {"skip_scale": np.float64(math.sqrt(0.5))}
                meta = dict(type="class", version=6, module_src=module_src, class_name=type(value).__name__,
                            state=state)
                return reconstruct, (meta,)
            return NotImplemented

    with open(path, "wb") as handle:
        PersistencePickler(handle, protocol=protocol).dump(obj)


@pytest.mark.parametrize("protocol", [2, 4])
def test_persistence_pickle_converts_to_identical_network(tmp_path, nvidia_modules, protocol):
    torch.manual_seed(0)
    original = EDMPrecond(**TINY_KWARGS).eval()
    marker = tmp_path / "source_was_executed"
    module_src = f"open({str(marker)!r}, 'w').close()\nclass EDMPrecond: pass\n"
    snapshot = {"ema": original, "dataset_kwargs": nvidia_modules.EasyDict(path="cifar10.zip", xflip=False)}
    pkl = tmp_path / "edm.pkl"
    persistence_pickle(snapshot, pkl, nvidia_modules.reconstruct, module_src, TINY_KWARGS, protocol)

    data = read_edm_pickle(pkl)
    assert isinstance(data["ema"], PersistentRecord) and data["ema"].class_name == "EDMPrecond"
    assert data["dataset_kwargs"] == {"path": "cifar10.zip", "xflip": False}

    net = convert_edm_pickle(pkl, tmp_path / "edm.safetensors", tmp_path / "edm.json")
    loaded = load_edm(tmp_path / "edm.safetensors", tmp_path / "edm.json")
    assert not marker.exists()  # the embedded source text was never executed
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.sigma_max == float("inf") and loaded.model.map_augment is not None
    x = torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0])
    labels = one_hot_labels(torch.tensor([0, 1, 2, 1]), 3)
    with torch.no_grad():
        expected = original(x, sigma, labels)
        assert torch.equal(net(x, sigma, labels), expected)
        assert torch.equal(loaded(x, sigma, labels), expected)
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_pickle_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"ema": Exploit()}))
    with pytest.raises(UnsafePickleError, match=r"refusing global (posix|nt)\.system"):
        convert_edm_pickle(pkl, tmp_path / "out.safetensors", tmp_path / "out.json")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "out.json").exists()


def test_builtin_eval_is_refused(tmp_path):
    pkl = tmp_path / "eval.pkl"
    pkl.write_bytes(b"\x80\x04cbuiltins\neval\n\x8c\x0e__import__('os')\x85R.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        read_edm_pickle(pkl)


def test_truncated_pickle_names_the_file(tmp_path, nvidia_modules):
    pkl = tmp_path / "edm.pkl"
    persistence_pickle({"ema": EDMPrecond(**TINY_KWARGS)}, pkl, nvidia_modules.reconstruct, "", TINY_KWARGS)
    pkl.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match="edm.pkl .*truncated"):
        read_edm_pickle(pkl)


def test_kwargs_that_do_not_match_tensors_are_refused(tmp_path, nvidia_modules):
    pkl = tmp_path / "edm.pkl"
    wrong = dict(TINY_KWARGS, model_channels=32)
    persistence_pickle({"ema": EDMPrecond(**TINY_KWARGS)}, pkl, nvidia_modules.reconstruct, "", wrong)
    with pytest.raises(CheckpointFormatError, match="shape"):
        convert_edm_pickle(pkl, tmp_path / "o.safetensors", tmp_path / "o.json")
    with pytest.raises(CheckpointFormatError, match="'ema'"):
        pkl.write_bytes(pickle.dumps({"net": 1}))
        convert_edm_pickle(pkl, tmp_path / "o.safetensors", tmp_path / "o.json")


def test_missing_converted_checkpoint_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_edm_checkpoint"):
        load_edm(tmp_path / "model.safetensors")

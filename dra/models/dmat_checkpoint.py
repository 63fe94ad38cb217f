"""DM-AT's released checkpoints (wzekai99/DM-Improves-AT) as plain state dicts of our WideResNet.

Facts (DM-AT's train-wa.py, watrain.py, core/models/__init__.py, wideresnetwithswish.py;
at b390f25, docs/sources.md):

- a checkpoint is ``torch.save({'model_state_dict': <weight-averaged model>,
  'unaveraged_model_state_dict': <raw model>})``; eval-aa.py evaluates ``model_state_dict``;
- the model is ``DataParallel(Sequential(WideResNet))`` when --normalize is off (the default),
  so every key starts with ``module.0.``;
- below the prefix the module names are the ones our WideResNet uses (init_conv,
  layer.N.block.M.{batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut}, batchnorm, logits);
  the input normalization is a constant tensor attribute, not in the state dict, so mean/std
  come from the dataset's config entry;
- args.txt is ``json.dump(vars(args))`` of train-wa.py: ``model`` ('wrn-28-10-swish'),
  ``data`` ('cifar10s', 'cifar100s', ...), ``normalize`` (false).

The activation is not visible in the weights (SiLU and ReLU models have the same keys), nor
are mean and std; args.txt is what tells them apart, so the conversion checks it when given.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from dra.io import atomic_file
from dra.models import create_classifier

DMAT_STATE_KEY = "model_state_dict"  # the weight-averaged model, the one eval-aa.py evaluates
DMAT_PREFIX = "module.0."  # DataParallel around Sequential(WideResNet)
DMAT_ACTIVATIONS = {"silu": "swish", "relu": "relu"}  # our arch.activation -> DM-AT's model-name suffix
_LISTED_KEYS = 8  # keys named per kind of mismatch; the counts are always given


class CheckpointLayoutError(ValueError):
    """The file is not a DM-AT checkpoint of the configured architecture; the message says why."""


def dmat_model_name(arch: Mapping[str, Any]) -> str:
    """DM-AT's --model name of a WideResNet arch entry, e.g. 'wrn-28-10-swish'."""
    if arch.get("family") != "wrn":
        raise CheckpointLayoutError(f"arch {dict(arch)}: DM-AT checkpoints are WideResNets (family: wrn)")
    return f"wrn-{arch['depth']}-{arch['width']}-{DMAT_ACTIVATIONS[arch.get('activation', 'silu')]}"


def _named(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _LISTED_KEYS else ''})"


def load_dmat_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weight-averaged state dict inside a DM-AT checkpoint, keys as saved (with the prefix).

    Loaded with ``weights_only=True``: the file holds tensors and dicts only, and nothing else
    is unpickled.
    """
    path = Path(path)
    fix = "delete it and rerun the fetch_reference_checkpoint rule"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointLayoutError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt download?): {error}. Fix: {fix}"
        ) from error
    if not isinstance(checkpoint, Mapping) or DMAT_STATE_KEY not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointLayoutError(
            f"{path} has no '{DMAT_STATE_KEY}' (DM-AT's train-wa.py layout); top level: {found}. "
            f"Fix: check that the URL in config reference_models points at a DM-AT checkpoint, then {fix}"
        )
    state = checkpoint[DMAT_STATE_KEY]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointLayoutError(f"{path}: '{DMAT_STATE_KEY}' is not a mapping of tensors. Fix: {fix}")
    return dict(state)


def convert_dmat_state_dict(
    state: Mapping[str, torch.Tensor],
    arch: Mapping[str, Any],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    source: str = "the checkpoint",
) -> dict[str, torch.Tensor]:
    """Our WideResNet's state dict from DM-AT's ``model_state_dict``.

    Every key must carry DM-AT's prefix and name a tensor of our model with the same shape, and
    every tensor of our model must be present; otherwise CheckpointLayoutError lists the
    unexpected, missing and mis-shaped keys.
    """
    model = create_classifier(dict(arch), num_classes, mean, std)
    expected = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if key.startswith(DMAT_PREFIX) and key[len(DMAT_PREFIX):] in expected:
            renamed[key[len(DMAT_PREFIX):]] = tensor
        else:
            unexpected.append(key)
    missing = [key for key in expected if key not in renamed]
    misshaped = [
        f"{key} {tuple(renamed[key].shape)} vs {tuple(expected[key].shape)}"
        for key in renamed
        if renamed[key].shape != expected[key].shape
    ]
    if unexpected or missing or misshaped:
        parts = []
        if unexpected:
            parts.append(f"unexpected keys {_named(unexpected)}")
        if missing:
            parts.append(f"missing keys (ours, expected as '{DMAT_PREFIX}<key>') {_named(missing)}")
        if misshaped:
            parts.append(f"shape mismatches (checkpoint vs ours) {_named(misshaped)}")
        raise CheckpointLayoutError(
            f"{source} does not fit {dmat_model_name(arch)} with {num_classes} classes: "
            + "; ".join(parts)
            + ". Fix: check dataset and arch of this entry in config reference_models "
            "(DM-AT layout: DataParallel(Sequential(WideResNet)), --normalize off)"
        )
    # float32 like our training output; num_batches_tracked keeps its integer type
    converted = {key: renamed[key].to(expected[key].dtype).contiguous() for key in expected}
    model.load_state_dict(converted, strict=True)
    return model.state_dict()


def check_dmat_args(args_path: str | Path, arch: Mapping[str, Any], dataset_kind: str) -> dict:
    """Check DM-AT's args.txt against the configured arch and dataset; returns its settings."""
    args_path = Path(args_path)
    try:
        settings = json.loads(args_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointLayoutError(
            f"{args_path} is not DM-AT's args.txt (JSON): {error}. Fix: delete it and rerun fetch_reference_checkpoint"
        ) from error
    missing = [key for key in ("model", "data", "normalize") if not isinstance(settings, dict) or key not in settings]
    if missing:
        raise CheckpointLayoutError(f"{args_path} lacks {missing} (train-wa.py writes them to args.txt)")
    wanted_model = dmat_model_name(arch)
    problems = []
    if settings["model"] != wanted_model:
        problems.append(f"model is '{settings['model']}', the config's arch is '{wanted_model}'")
    # DM-AT's semi-supervised datasets append an 's' (cifar10s); the test split is the same
    if str(settings["data"]).removesuffix("s") != dataset_kind:
        problems.append(f"data is '{settings['data']}', the config's dataset is '{dataset_kind}'")
    if settings["normalize"]:
        problems.append("normalize is true (a Normalization module before the network; this converter "
                        "knows the default layout only)")
    if problems:
        raise CheckpointLayoutError(
            f"{args_path}: " + "; ".join(problems) + ". Fix: the entry in config reference_models names "
            "another checkpoint than its dataset/arch say"
        )
    return settings


def convert_dmat_checkpoint(
    checkpoint_path: str | Path,
    out_model: str | Path,
    arch: Mapping[str, Any],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    args_path: str | Path | None = None,
    dataset_kind: str | None = None,
) -> dict:
    """Convert a DM-AT checkpoint into ``out_model`` (a plain state dict of our WideResNet).

    With ``args_path`` the run's args.txt is checked first (``dataset_kind``: cifar10 or
    cifar100). Returns a summary: tensors, parameters and DM-AT's settings when read.
    """
    settings = None
    if args_path is not None:
        if dataset_kind is None:
            raise ValueError("dataset_kind is needed to check args.txt")
        settings = check_dmat_args(args_path, arch, dataset_kind)
    state = load_dmat_state_dict(checkpoint_path)
    converted = convert_dmat_state_dict(state, arch, num_classes, mean, std, source=str(checkpoint_path))
    with atomic_file(out_model) as tmp:
        torch.save(converted, tmp)
    parameters = sum(t.numel() for k, t in converted.items() if "running_" not in k and "num_batches" not in k)
    return {"tensors": len(converted), "parameters": parameters, "dmat_args": settings}

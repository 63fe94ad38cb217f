"""AutoAttack (standard, Linf) evaluation of a classifier, resumable chunk by chunk.

The attacks are fra31's AutoAttack as repackaged on PyPI by ``pyautoattack`` 0.2.0 (the same
attack code as fra31/auto-attack @ a392200). This module adds what a long evaluation on a shared
cluster needs around it:

- The model runs in eval mode and fp32, on inputs in [0, 1] (fra31/auto-attack README.md).
- Robust flags are recomputed from the returned adversarial examples, and every adversarial
  example is checked to lie in the eps ball and in [0, 1] (auto-attack's autoattack.py only logs
  the largest perturbation).
- The evaluation set is split into chunks, each a separate ``run_standard_evaluation`` call.
  After each chunk its per-example flags are saved atomically to ``state_path``, so a killed
  job loses at most one chunk and a resumed run gives exactly the flags an uninterrupted run
  gives. pyautoattack's own ``EvaluationState`` is not used for this: on a resume it re-batches
  the points that were still robust mid-attack, which changes the random starts (so the
  result differs from an uninterrupted run), and it writes its JSON in place, so a kill during
  a write leaves a file that cannot be read back.
- On SLURM's warning before the time limit (dra.preemption) the job exits after the chunk in
  progress, with the status that makes Snakemake retry it; the retry resumes from the saved chunks.
- The global torch RNG is restored afterwards (each attack reseeds it, autopgd_base.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dra import preemption
from dra.io import atomic_file, package_versions, read_yaml, write_json

# The attacks of version='standard' for Linf, in the order they run (autoattack.py set_version).
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
VERSION = "standard"
NORM = "Linf"
# APGD/FAB/Square project onto the eps ball in fp32, so |x_adv - x| may exceed eps by rounding.
BALL_TOLERANCE = 1e-6

progress_log = logging.getLogger("dra.evaluation")


def attack_version(attacks: Sequence[str]) -> str:
    """pyautoattack's version for these attacks: 'standard' for the four in their order, else 'custom'."""
    if not attacks or any(name not in STANDARD_ATTACKS for name in attacks) or len(set(attacks)) != len(attacks):
        raise AutoAttackInputError(f"attacks {list(attacks)}: name some of {list(STANDARD_ATTACKS)}, each once")
    return VERSION if tuple(attacks) == STANDARD_ATTACKS else "custom"


class AutoAttackInputError(ValueError):
    """The images, labels or model handed to the evaluation are not usable as they are."""


class AutoAttackStateError(RuntimeError):
    """The resume file cannot be read back."""


class AdversarialExampleError(RuntimeError):
    """pyautoattack returned an example outside the eps ball or outside [0, 1]."""


@dataclass
class AutoAttackResult:
    indices: np.ndarray  # int64 (n,), positions in the evaluated store
    clean: np.ndarray  # bool (n,), correct on the clean image
    robust: np.ndarray  # bool (n,), correct on its AutoAttack adversarial example
    attack_disagreements: int  # points where pyautoattack's own verdict differs from ours
    seconds: float  # attack time summed over all sessions that contributed chunks

    @property
    def clean_accuracy(self) -> float:
        return 100.0 * float(self.clean.mean())

    @property
    def robust_accuracy(self) -> float:
        return 100.0 * float(self.robust.mean())


def parse_eps(text: str | float) -> float:
    """'8/255' -> 0.0313..., '0.03' -> 0.03. Budgets are fractions of 1, not of 255."""
    try:
        value = float(Fraction(str(text)))
    except (ValueError, ZeroDivisionError) as error:
        raise AutoAttackInputError(f"eps {text!r} is not a number or a fraction like 8/255") from error
    if not 0.0 < value < 1.0:
        raise AutoAttackInputError(f"eps {text!r} must lie in (0, 1): it is a fraction of the [0, 1] range")
    return value


def eps_as_255(eps: float) -> str:
    """0.0313725 -> '8/255'; budgets that are not whole multiples of 1/255 keep 4 digits."""
    scaled = eps * 255.0
    if abs(scaled - round(scaled)) < 1e-6:
        return f"{int(round(scaled))}/255"
    return f"{scaled:.4g}/255"


def _check_inputs(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor) -> None:
    if images01.ndim != 4 or images01.shape[1] not in (1, 3):
        raise AutoAttackInputError(
            f"images must be (N, C, H, W) with C in (1, 3); got shape {tuple(images01.shape)}"
        )
    if images01.dtype != torch.float32:
        raise AutoAttackInputError(f"images must be float32 in [0, 1]; got {images01.dtype}")
    if not torch.isfinite(images01).all():
        raise AutoAttackInputError("images contain NaN or inf")
    if images01.min() < 0.0 or images01.max() > 1.0:
        raise AutoAttackInputError(
            f"images must lie in [0, 1] (normalization belongs inside the model); got range "
            f"[{images01.min().item():.3f}, {images01.max().item():.3f}]"
        )
    if labels.shape != (images01.shape[0],) or labels.dtype != torch.int64:
        raise AutoAttackInputError(
            f"labels must be int64 of shape ({images01.shape[0]},); got {labels.dtype} {tuple(labels.shape)}"
        )
    low_precision = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if low_precision:
        raise AutoAttackInputError(
            f"the model must be evaluated in fp32 (AutoAttack does not support mixed precision, "
            f"fra31/auto-attack issue 51); it has parameters in {low_precision}"
        )


@contextlib.contextmanager
def _evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, no parameter gradients (only input gradients are needed), caller's RNG kept."""
    was_training = model.training
    needed_grad = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for p, flag in zip(model.parameters(), needed_grad):
            p.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def _attack_log_to_progress() -> Iterator[None]:
    """pyautoattack reports per-attack progress at DEBUG on logger 'auto-attack' (pyautoattack
    0.2.0); send it to stderr, which the workflow rule redirects to the step's log."""
    logger = logging.getLogger("auto-attack")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("auto-attack: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _fingerprint(model: nn.Module, images01: torch.Tensor, labels: torch.Tensor, settings: dict) -> str:
    """What a resume file must match: model weights, evaluated points, and every setting that
    changes which random starts a point gets (eps, seed, batch and chunk size)."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(images01.detach().cpu().contiguous().numpy().tobytes())
    digest.update(labels.cpu().numpy().tobytes())
    return digest.hexdigest()


def _fresh_state(n: int, n_chunks: int) -> dict:
    return {"done": np.zeros(n_chunks, bool), "clean": np.zeros(n, bool), "robust": np.zeros(n, bool),
            "seconds": np.zeros(n_chunks), "disagreements": np.zeros(n_chunks, np.int64)}


def _load_state(state_path: Path | None, fingerprint: str, n: int, n_chunks: int) -> dict:
    fresh = _fresh_state(n, n_chunks)
    if state_path is None or not state_path.exists():
        return fresh
    try:
        with np.load(state_path) as stored:
            state = {key: stored[key] for key in stored.files}
    except Exception as error:
        raise AutoAttackStateError(
            f"cannot read the AutoAttack resume file {state_path} ({error}); delete it to start over"
        ) from error
    if str(state.get("fingerprint")) != fingerprint:
        progress_log.warning(
            "resume file %s was written for another model, input or setting; starting over", state_path
        )
        return fresh
    del state["fingerprint"]
    progress_log.info("resuming from %s: %d of %d chunks done", state_path, int(state["done"].sum()), n_chunks)
    return state


def _save_state(state_path: Path, state: dict, fingerprint: str) -> None:
    with atomic_file(state_path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, fingerprint=np.array(fingerprint), **state)


def _predict(model: nn.Module, images01: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([
            model(images01[i:i + batch_size].to(device)).argmax(1).cpu()
            for i in range(0, images01.shape[0], batch_size)
        ])


def evaluate_autoattack(
    model: nn.Module,
    images01: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    seed: int,
    batch_size: int,
    state_path: str | Path | None,
    device: str | torch.device,
    chunk_size: int = 2000,
    attacks: Sequence[str] = STANDARD_ATTACKS,
) -> AutoAttackResult:
    """AutoAttack standard Linf on (images01, labels), resumable through ``state_path``.

    images01: float32 (N, C, H, W) in [0, 1] on any device (batches are moved to ``device``);
    the model must already live on ``device``. With ``chunk_size >= N`` this is exactly one
    ``pyautoattack`` call on the whole set. ``attacks``: the standard four (version 'standard'), or
    fewer at the standard version's settings (recorded as version 'custom'; config
    ``evaluation.attacks``: the canary's pipeline check, not a robustness number).
    """
    from pyautoattack import AutoAttack

    _check_inputs(model, images01, labels)
    if chunk_size < 1 or batch_size < 1:
        raise AutoAttackInputError(f"chunk_size ({chunk_size}) and batch_size ({batch_size}) must be positive")
    device = torch.device(device)
    n = images01.shape[0]
    n_chunks = math.ceil(n / chunk_size)
    version = attack_version(attacks)
    settings = {"eps": float(eps), "seed": int(seed), "batch_size": batch_size, "chunk_size": chunk_size,
                "version": version, "norm": NORM}
    if version != VERSION:  # the standard run's resume fingerprint stays what it was
        settings["attacks"] = list(attacks)
        settings["attack_settings"] = VERSION  # a subset's earlier resume files ran the custom settings
    state_path = Path(state_path) if state_path is not None else None

    with _evaluation_mode(model), _attack_log_to_progress():
        fingerprint = _fingerprint(model, images01, labels, settings) if state_path else ""
        state = _load_state(state_path, fingerprint, n, n_chunks)
        # the standard version's settings for every attack, also for a subset: version 'custom' keeps the
        # constructor's (APGD-CE with 5 restarts, not the standard run's 1: five times the passes of the
        # attack the paper's evaluation runs, autoattack.py _set_version)
        adversary = AutoAttack(model, norm=NORM, eps=float(eps), version=VERSION, device=device, seed=int(seed))
        adversary.attacks_to_run = list(attacks)
        preemption.watch()
        for chunk in range(n_chunks):
            if state["done"][chunk]:
                continue
            if state_path and preemption.requested():  # the time limit is near: the retry resumes here
                preemption.stop(f"AutoAttack: {int(state['done'].sum())} of {n_chunks} chunks saved in {state_path}")
            start, stop = chunk * chunk_size, min(n, (chunk + 1) * chunk_size)
            progress_log.info("AutoAttack chunk %d/%d (points %d-%d)", chunk + 1, n_chunks, start, stop - 1)
            x, y = images01[start:stop], labels[start:stop]
            began = time.perf_counter()
            x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
            x_adv = x_adv.detach().cpu()
            x_cpu = x.detach().cpu()
            overshoot = (x_adv - x_cpu).abs().amax().item()
            if not torch.isfinite(x_adv).all() or overshoot > eps + BALL_TOLERANCE \
                    or x_adv.min() < 0.0 or x_adv.max() > 1.0:
                raise AdversarialExampleError(
                    f"chunk {chunk}: adversarial examples leave the {eps_as_255(eps)} ball or [0, 1] "
                    f"(max |delta| {overshoot:.8f}, range [{x_adv.min().item():.6f}, {x_adv.max().item():.6f}])"
                )
            clean = (_predict(model, x_cpu, batch_size, device) == y.cpu()).numpy()
            robust = (_predict(model, x_adv, batch_size, device) == y.cpu()).numpy()
            state["clean"][start:stop] = clean
            state["robust"][start:stop] = robust
            state["disagreements"][chunk] = int((robust != (y_adv.cpu() == y.cpu()).numpy()).sum())
            state["seconds"][chunk] = time.perf_counter() - began
            state["done"][chunk] = True
            if state_path:
                _save_state(state_path, state, fingerprint)
            progress_log.info("chunk %d/%d: robust %d of %d; running robust accuracy %.2f%%",
                              chunk + 1, n_chunks, int(robust.sum()), stop - start,
                              100.0 * state["robust"][:stop].mean())

    disagreements = int(state["disagreements"].sum())
    if disagreements:
        progress_log.warning(
            "%d points: pyautoattack's verdict differs from the recomputed one (non-deterministic "
            "kernels or a randomized model); the recomputed flags are reported", disagreements
        )
    return AutoAttackResult(indices=np.arange(n, dtype=np.int64), clean=state["clean"].astype(bool),
                            robust=state["robust"].astype(bool), attack_disagreements=disagreements,
                            seconds=float(state["seconds"].sum()))


def write_autoattack_outputs(result: AutoAttackResult, eps: float, seed: int, model_path: str | Path,
                             out_json: str | Path, out_npz: str | Path,
                             attacks: Sequence[str] = STANDARD_ATTACKS) -> dict:
    """autoattack.npz (per-example flags) first, then autoattack.json, both atomically: the JSON
    is the rule's completion marker, so it never exists without its flags."""
    with atomic_file(out_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, indices=result.indices, clean=result.clean, robust=result.robust)
    summary = {
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "n": int(result.indices.shape[0]),
        "eps": float(eps),
        "eps_255": eps_as_255(eps),
        "norm": NORM,
        "version": attack_version(attacks),
        "attacks": list(attacks),
        "seed": int(seed),
        "attack_disagreements": result.attack_disagreements,
        "seconds": round(result.seconds, 3),
        "model": str(model_path),
        "package_versions": package_versions(),
    }
    write_json(out_json, summary)
    return summary


def load_test_images(test_store: str | Path, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n images of a store (RobustBench evaluates the first n test points,
    robustbench/data.py) as float32 NCHW in [0, 1]."""
    from dra.data.store import open_image_store

    store = open_image_store(test_store)
    total = store.labels.shape[0]
    if n is None:
        n = total
    if not 0 < n <= total:
        raise AutoAttackInputError(f"--n {n} must lie in [1, {total}] for the store {test_store}")
    images = torch.from_numpy(np.array(store.images[:n])).permute(0, 3, 1, 2).float().div_(255.0)  # a writable copy
    labels = torch.from_numpy(np.array(store.labels[:n], dtype=np.int64))
    return images.contiguous(), labels


def load_classifier(model_path: str | Path, recipe_path: str | Path, device: str | torch.device) -> nn.Module:
    """The classifier a recipe describes, with the weights of model.pt (a plain state dict)."""
    from dra.models import create_classifier

    recipe = read_yaml(recipe_path)
    try:
        # model.pt holds every weight: the pretrained starting point is not needed (nor read) here
        arch = {key: value for key, value in recipe["arch"].items() if key not in ("pretrained", "weights")}
        data = recipe["data"]
        model = create_classifier(arch, data["num_classes"], data["mean"], data["std"])
    except KeyError as error:
        raise AutoAttackInputError(f"recipe {recipe_path} lacks the key {error}; re-run resolve_recipe") from error
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, EOFError (no text), OSError, RuntimeError: say which file
        raise AutoAttackInputError(
            f"{model_path} is not a readable PyTorch state dict "
            f"({type(error).__name__}: {error or 'file ends early'}); "
            "it is truncated or not a model.pt of train_cell: delete it and rerun the rule that wrote it"
        ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise AutoAttackInputError(
            f"{model_path} does not hold the weights of the arch in {recipe_path} ({error}); the model and its "
            "recipe come from different cells"
        ) from None
    return model.to(device).float().eval()


def run_autoattack_evaluation(model_path: str | Path, recipe_path: str | Path, test_store: str | Path,
                              eps: float, n: int | None, seed: int, batch_size: int, chunk_size: int,
                              state_path: str | Path | None, out_json: str | Path, out_npz: str | Path,
                              device: str | torch.device, attacks: Sequence[str] = STANDARD_ATTACKS) -> dict:
    """Load model and test points, evaluate, write autoattack.json + autoattack.npz."""
    attack_version(attacks)  # a wrong name stops before the model is loaded
    model = load_classifier(model_path, recipe_path, device)
    images01, labels = load_test_images(test_store, n)
    result = evaluate_autoattack(model, images01, labels, eps, seed, batch_size, state_path, device,
                                 chunk_size=chunk_size, attacks=attacks)
    return write_autoattack_outputs(result, eps, seed, model_path, out_json, out_npz, attacks=attacks)

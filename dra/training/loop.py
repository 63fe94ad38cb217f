"""`train_cell`: one training run of a table cell, resumable at any step.

`train_cell` reads top to bottom: `set_up_run` builds what the run holds (a `TrainingRun`), then
every batch is `next_batch`, `optimizer_step` and `record_step`, and every epoch ends in
`end_epoch`; each of these can be called alone (tests/test_training_step.py). The attack, the loss
terms, EMA and the checkpoint are small functions they call. Everything random is drawn from two explicit
generators whose states are checkpointed, so a run killed at any point and restarted ends with
the same weights (bit-identical on CPU) as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dra import preemption
from dra.io import atomic_file
from dra.models import create_classifier
from dra.attacks import robust_correct, uniform_ball_noise
from dra.data.augment import random_crop_flip_rotate
from dra.training.batchnorm import batchnorm_layers, normalise_in_groups
from dra.training.distributed import (DistributedContext, cut_points, init_distributed, shutdown_distributed,
                                      wrap_for_training)
from dra.training.dra_head import OnlineTargets, ProjectionHead, StoredTargets, dra_loss
from dra.training.ema import WeightAverage, dmat_step_count, dmat_steps_per_epoch
from dra.training.losses import Objective, objective_of
from dra.monitor import TrainingMonitor
from dra.training.recipe import RecipeError, validate_recipe
from dra.training.schedules import (FIRST_STEP_BATCHNORM_MOMENTUM, TRAINING_BATCHNORM_MOMENTUM, Schedule,
                                    build_optimizer, build_schedule, set_batchnorm_momentum)

LOG_COLUMNS = ["epoch", "step", "lr", "loss", "loss_trades_or_ce", "loss_dra", "clean_batch_acc", "adv_batch_acc",
               "images_per_second", "val_clean_acc", "val_robust_acc"]
STATE_FILE = "state.pt"
BEST_FILE = "best_model.pt"


class TrainingDivergedError(RuntimeError):
    pass


class TrainingDataError(ValueError):
    pass


class TrainingModule(nn.Module):
    """Classifier and DRA head in one module, so that one step is one forward for DDP.

    forward(x_clean, x_adv) -> (clean logits or None, adversarial logits, projected adversarial
    features or None). The two classifier passes are separate, clean first, as in DM-AT (each
    moves the BatchNorm running statistics with its own batch). Standard training passes the
    unperturbed batch as x_adv.
    """

    def __init__(self, classifier: nn.Module, head: nn.Module | None):
        super().__init__()
        self.classifier = classifier
        self.head = head

    def forward(self, x_clean: torch.Tensor | None, x_adv: torch.Tensor):
        logits_clean = self.classifier(x_clean) if x_clean is not None else None
        logits_adv, features_adv = self.classifier.forward_features(x_adv)
        projected = self.head(features_adv) if self.head is not None else None
        return logits_clean, logits_adv, projected


@dataclass
class TrainingData:
    train_images: np.ndarray | None  # memmap (N, H, W, 3) uint8, the first val_size validation; None for ImageNet JPEGs
    train_labels: np.ndarray
    synthetic_images: np.ndarray | None
    synthetic_labels: np.ndarray | None
    val_size: int

    @property
    def n_real(self) -> int:
        return len(self.train_labels) - self.val_size

    @property
    def n_synthetic(self) -> int:
        return 0 if self.synthetic_labels is None else len(self.synthetic_labels)


@dataclass
class Progress:
    """Where the run is, plus what the current epoch's log row has accumulated so far."""

    epoch: int = 0                 # 0-based index of the epoch in progress
    step_in_epoch: int = 0         # batches of that epoch already taken
    global_step: int = 0           # optimizer steps taken
    sums: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_val_robust: float = -1.0


class TrainingRandomness:
    """`host` draws batch order, augmentation and target views; `device` draws attack starts."""

    def __init__(self, seed: int, device: torch.device):
        self.host = torch.Generator().manual_seed(seed)
        self.device = torch.Generator(device=device).manual_seed(seed + 1)

    def state(self) -> dict[str, Any]:
        state = {"host": self.host.get_state(), "device": self.device.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load(self, state: dict[str, Any]) -> None:
        self.host.set_state(state["host"])
        self.device.set_state(state["device"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def open_training_data(recipe: dict) -> TrainingData:
    from dra.data.store import open_image_store

    data = recipe["data"]
    if data["format"] == "imagenet_index":
        return open_imagenet_training_data(data)
    train = open_image_store(data["train"])
    if data["val_size"] >= len(train.labels):
        raise TrainingDataError(f"recipe key data.val_size = {data['val_size']} leaves no training image in "
                                f"{data['train']} ({len(train.labels)} images); lower data.val_size")
    synthetic = open_image_store(data["synthetic"]) if data["synthetic"] else None
    for store, name in ((train, data["train"]), (synthetic, data["synthetic"])):
        if store is not None and int(store.labels.max(initial=0)) >= data["num_classes"]:
            raise TrainingDataError(f"{name}: labels reach {int(store.labels.max())} but recipe key data.num_classes "
                                    f"is {data['num_classes']}")
    return TrainingData(train.images, train.labels, synthetic.images if synthetic else None,
                        synthetic.labels if synthetic else None, data["val_size"])


def open_imagenet_training_data(data: dict) -> TrainingData:
    """ImageNet: labels of the index's training rows (the JPEGs are read by dra.training.imagenet_batches)
    and the synthetic store, whose images must be at least as large as the training crop."""
    from dra.data.imagenet_loader import read_index
    from dra.data.store import open_image_store

    if data["val_size"] != 0:
        raise TrainingDataError(f"recipe key data.val_size = {data['val_size']}: ImageNet training keeps no "
                                "validation images (RobustBench evaluates on val); set it to 0")
    _, _, labels = read_index(data["train"], "train")
    synthetic = open_image_store(data["synthetic"]) if data["synthetic"] else None
    if synthetic is not None and min(synthetic.meta["height"], synthetic.meta["width"]) < data["image_size"]:
        raise TrainingDataError(f"{data['synthetic']} holds {synthetic.meta['height']}x{synthetic.meta['width']} "
                                f"images, smaller than the training crop data.image_size = {data['image_size']}")
    for name, found in ((data["train"], labels), (data["synthetic"], synthetic.labels if synthetic else None)):
        if found is not None and int(found.max(initial=0)) >= data["num_classes"]:
            raise TrainingDataError(f"{name}: labels reach {int(found.max())} but recipe key data.num_classes "
                                    f"is {data['num_classes']}")
    return TrainingData(None, labels, synthetic.images if synthetic else None,
                        synthetic.labels if synthetic else None, 0)


def build_targets(dra: dict, data: TrainingData, device: torch.device):
    """The DRA target provider and the target dimension."""
    if dra["target"] == "stored":
        from dra.data.store import open_feature_store

        real = open_feature_store(dra["features"]["real"])
        synthetic = open_feature_store(dra["features"]["synthetic"]) if data.synthetic_images is not None else None
        for store, rows, key in ((real, len(data.train_labels), "real"), (synthetic, data.n_synthetic, "synthetic")):
            if store is not None and len(store.features) != rows:
                raise TrainingDataError(f"{dra['features'][key]}: {len(store.features)} feature rows but its images "
                                        f"are {rows} (recipe key dra.features.{key}); re-extract the features")
        provider = StoredTargets(real.features, synthetic.features if synthetic else None)
        return provider, provider.dim
    from dra.diffusion.checkpoint import load_edm
    from dra.diffusion.features import DiffusionFeatureExtractor

    diffusion = dra["diffusion"]
    net = load_edm(diffusion["checkpoint"]).to(device).eval().requires_grad_(False)
    extractor = DiffusionFeatureExtractor(net, diffusion["layer"], diffusion["sigma"],
                                          extra_view=diffusion["extra_view"])
    return OnlineTargets(extractor, views=extractor.views), extractor.dims[diffusion["layer"]]


def images_to_tensor(images_uint8_nhwc: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(images_uint8_nhwc)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def gather_batch(data: TrainingData, real_idx: np.ndarray, synthetic_idx: np.ndarray, generator: torch.Generator):
    """(store_index, is_synthetic, images uint8, labels) of one global batch in shuffled order.

    Real indices are positions in the training split, i.e. past the validation images. DM-AT
    shuffles the joined real + synthetic list (DM-AT core/data/semisup.py); here that also mixes each rank's slice.
    """
    store_index = np.concatenate([np.asarray(real_idx, dtype=np.int64) + data.val_size,
                                  np.asarray(synthetic_idx, dtype=np.int64)])
    is_synthetic = np.concatenate([np.zeros(len(real_idx), bool), np.ones(len(synthetic_idx), bool)])
    order = torch.randperm(len(store_index), generator=generator).numpy()
    store_index, is_synthetic = store_index[order], is_synthetic[order]
    images = np.empty((len(store_index),) + data.train_images.shape[1:], dtype=np.uint8)
    labels = np.empty(len(store_index), dtype=np.int64)
    real = ~is_synthetic
    images[real], labels[real] = data.train_images[store_index[real]], data.train_labels[store_index[real]]
    if is_synthetic.any():
        images[is_synthetic] = data.synthetic_images[store_index[is_synthetic]]
        labels[is_synthetic] = data.synthetic_labels[store_index[is_synthetic]]
    return store_index, is_synthetic, images, labels


HARDWARE_KEYS = ("precision", "checkpoint", "accumulation_steps")


def _resumable_part(recipe: dict) -> dict:
    """What must not change between a run and its resumption (precision, checkpoint frequency and
    the micro-batches per GPU may: a run can continue on other hardware)."""
    return {key: value for key, value in recipe.items() if key not in HARDWARE_KEYS}


def save_state(path: Path, recipe: dict, trainable: TrainingModule, ema: WeightAverage, optimizer, scheduler,
               progress: Progress, randomness: TrainingRandomness) -> None:
    state = {"recipe": _resumable_part(recipe), "trainable": trainable.state_dict(), "ema": ema.model.state_dict(),
             "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "progress": asdict(progress), "randomness": randomness.state()}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, recipe: dict, trainable: TrainingModule, ema: WeightAverage, optimizer, scheduler,
               randomness: TrainingRandomness) -> Progress:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and what to do
        raise TrainingDataError(f"{path}: cannot read the training state ({error}); delete it to restart the cell "
                                "from scratch") from error
    if state["recipe"] != _resumable_part(recipe):
        changed = sorted(key for key in set(state["recipe"]) | set(_resumable_part(recipe))
                         if state["recipe"].get(key) != recipe.get(key))
        raise TrainingDataError(f"{path}: this training state belongs to a different recipe (keys {changed} differ); "
                                "delete the state folder to train the new recipe from scratch")
    trainable.load_state_dict(state["trainable"])
    ema.model.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    randomness.load(state["randomness"])
    return Progress(**state["progress"])


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_file(path) as tmp:
        tmp.write_text(buffer.getvalue())


def epoch_row(epoch: int, progress: Progress, lr: float, validation: tuple[float, float] | None) -> dict[str, Any]:
    s = progress.sums
    n = max(s.get("images", 0.0), 1.0)
    clean = s["clean_correct"] / s["clean_counted"] if s.get("clean_counted") else ""
    return {"epoch": epoch + 1, "step": progress.global_step, "lr": lr,
            "loss": s["loss"] / n, "loss_trades_or_ce": s["loss_main"] / n, "loss_dra": s["loss_dra"] / n,
            "clean_batch_acc": clean, "adv_batch_acc": s["adv_correct"] / n,
            "images_per_second": s["images"] / max(s["seconds"], 1e-9),
            "val_clean_acc": validation[0] if validation else "", "val_robust_acc": validation[1] if validation else ""}


def check_batch_split(sampler, context: DistributedContext) -> None:
    """Every rank gets at least one BatchNorm group (one image without groups) of every micro-batch
    of every batch, the shortest included (a real-only batch at the end of a pass over the real
    images, dra.data.sampler)."""
    batch = sampler.batch_size
    shortest = batch if sampler.n_synthetic or sampler.n_real % batch == 0 else min(batch, sampler.n_real % batch)
    for size in {batch, shortest}:
        every = cut_points(size, context.chunks, context.batchnorm_group)
        if any(b <= a for a, b in itertools.pairwise(every)):
            group = context.batchnorm_group or 1
            raise RecipeError(f"a batch of {size} images is {math.ceil(size / group)} BatchNorm group(s) of {group} "
                              f"(recipe key batchnorm_group), fewer than the {context.world_size} GPU(s) x "
                              f"{context.accumulation_steps} micro-batch(es) (accumulation_steps) that share it; "
                              "use fewer GPUs or micro-batches, or a smaller batchnorm_group")


def validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: dict, steps: int, seed: int,
             context: DistributedContext, chunk: int) -> tuple[float, float]:
    """(clean, robust accuracy) of DM-AT's end-of-epoch validation, split over the ranks: each rank
    attacks its share of the held-out images, `chunk` images at a time (the largest training
    micro-batch, so no GPU holds more than in training and none waits for another), and the correct
    counts are summed over the ranks. The start noise of ALL images is drawn on every rank from the
    same seed and sliced, so any number of ranks and any chunk give one process's result."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noise = uniform_ball_noise(images.shape, attack["eps"], generator, images.device)
    mine = context.share(len(images))
    counts = robust_correct(model, images[mine], labels[mine], noise[mine], attack["eps"], attack["step"], steps, chunk)
    clean, robust = context.all_reduce_sum(counts).tolist()
    return clean / len(images), robust / len(images)


def _stop_requested_on_any_rank(context) -> bool:
    """Whether any rank received the stop signal, so that all ranks stop after the same step."""
    if not context.enabled:
        return preemption.requested()
    flag = torch.tensor([float(preemption.requested())], device=context.device)
    return context.all_reduce_sum(flag).item() > 0


def train_cell(recipe: dict, out_dir: str | Path, state_dir: str | Path, threads: int,
               after_step: Callable[[int], None] | None = None) -> None:
    """Train the cell `recipe` describes; write out_dir/model.pt (EMA weights) and out_dir/log.csv.

    Resumes from state_dir/state.pt when present. `after_step(global_step)` is called after
    each optimizer step and checkpoint (tests use it to interrupt a run). state_dir/log.csv grows by
    a row each epoch; TensorBoard curves and state_dir/progress.json come from dra.monitor. On SLURM's
    warning before the time limit (dra.preemption) every rank finishes its step, the state is saved and
    the process exits with status 75, for Snakemake to retry.
    """
    recipe = validate_recipe(recipe)
    preemption.watch()
    torch.set_num_threads(threads)
    context = init_distributed(recipe["accumulation_steps"], recipe["batchnorm_group"])
    run = set_up_run(recipe, Path(out_dir), Path(state_dir), threads, context)
    progress = run.progress
    bar = tqdm(total=run.epochs * run.steps_per_epoch, initial=progress.global_step, disable=not context.is_main,
               desc="train", unit="step", dynamic_ncols=True)
    while progress.epoch < run.epochs:
        batches = run.sampler.epoch(progress.epoch)[progress.step_in_epoch:]
        decoded = (run.imagenet.epoch(progress.epoch, progress.step_in_epoch, batches, context.shard)
                   if run.imagenet else None)
        for real_idx, synthetic_idx in batches:
            started = time.perf_counter()
            batch = next_batch(run, real_idx, synthetic_idx, decoded)
            totals = optimizer_step(run, batch)
            seconds = time.perf_counter() - started
            record_step(run, totals, seconds)
            bar.update(1)
            bar.set_postfix(epoch=progress.epoch + 1, loss=f"{totals[0] / totals[5]:.4f}",
                            img_s=f"{totals[5] / seconds:.0f}")
            if after_step is not None:
                after_step(progress.global_step)
            if _stop_requested_on_any_rank(context):  # the time limit is near: save now, resume in the retry
                stop_for_retry(run)
        end_epoch(run)
    bar.close()
    write_outputs(run)


@dataclass
class TrainingRun:
    """What `set_up_run` builds once and every step and epoch end read and change."""

    recipe: dict
    context: DistributedContext
    out_dir: Path
    state_dir: Path
    data: TrainingData
    sampler: Any                   # dra.data.sampler.DMATBatchSampler
    objective: Objective           # dra.registry.OBJECTIVES' entry for objective.name
    classifier: nn.Module
    targets: Any                   # StoredTargets | OnlineTargets | None (no DRA)
    trainable: TrainingModule      # classifier and DRA head
    train_forward: nn.Module       # `trainable`, in DDP on several ranks, compiled when asked
    attack_forward: nn.Module      # `classifier`, compiled when asked
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ema: WeightAverage
    dmat_steps: int                # DM-AT's steps per epoch, which the EMA counts with (dra.training.ema)
    randomness: TrainingRandomness
    progress: Progress
    monitor: TrainingMonitor
    memory_format: torch.memory_format
    validation_set: tuple[torch.Tensor, torch.Tensor] | None  # the first val_size training images and labels
    imagenet: Any = None           # dra.training.imagenet_batches.ImageNetBatches with data.format imagenet_index

    @property
    def epochs(self) -> int:
        return self.recipe["epochs"]

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.num_batches

    @property
    def device(self) -> torch.device:
        return self.context.device

    def autocast(self):
        if self.recipe["precision"]["bf16"]:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def save_state(self) -> None:
        save_state(self.state_dir / STATE_FILE, self.recipe, self.trainable, self.ema, self.optimizer,
                   self.schedule.scheduler, self.progress, self.randomness)


def build_networks(recipe: dict, data: TrainingData, device: torch.device):
    """(classifier, DRA head or None, DRA targets or None), seeded by the recipe: the classifier's
    initial weights first, then the head's."""
    data_cfg, dra = recipe["data"], recipe["dra"]
    torch.manual_seed(recipe["seed"])
    classifier = create_classifier(recipe["arch"], data_cfg["num_classes"], data_cfg["mean"], data_cfg["std"])
    classifier = classifier.to(device)
    # BatchNorm over batchnorm_group images, however the batch is spread (dra.training.batchnorm)
    if recipe["batchnorm_group"] is not None:
        normalise_in_groups(classifier, recipe["batchnorm_group"])
    elif batchnorm_layers(classifier):
        raise RecipeError(f"recipe key batchnorm_group is null, but arch {recipe['cell']['arch']} has "
                          f"{len(batchnorm_layers(classifier))} BatchNorm layers; set it (config "
                          "recipes.<dataset>.<arch>.batchnorm_group) to the images each BatchNorm normalises over")
    targets, head = None, None
    if dra is not None:
        targets, target_dim = build_targets(dra, data, device)
        head = ProjectionHead(classifier.feature_dim, dra["head_hidden"], target_dim, dra["head_layers"]).to(device)
    memory_format = torch.channels_last if recipe["precision"]["channels_last"] else torch.contiguous_format
    return classifier.to(memory_format=memory_format), head, targets


def set_up_run(recipe: dict, out_dir: Path, state_dir: Path, threads: int, context: DistributedContext) -> TrainingRun:
    """Data, batch sampler, networks, optimizer, schedule, EMA and generators of a validated recipe, resumed
    from state_dir/state.pt when it exists."""
    from dra.data.sampler import DMATBatchSampler

    device, data_cfg, precision = context.device, recipe["data"], recipe["precision"]
    data = open_training_data(recipe)
    sampler = DMATBatchSampler(data.n_real, data.n_synthetic, recipe["batch_size"], data_cfg["unsup_fraction"],
                               data_cfg["epoch_reference_size"], recipe["seed"])
    check_batch_split(sampler, context)
    classifier, head, targets = build_networks(recipe, data, device)
    trainable = TrainingModule(classifier, head)
    optimizer = build_optimizer(recipe["optimizer"], trainable)
    schedule = build_schedule(recipe["schedule"], optimizer, recipe["optimizer"]["lr"], recipe["epochs"],
                              sampler.num_batches)
    # DM-AT's EMA counts steps with its own epoch length (dra.training.ema)
    dmat_steps = dmat_steps_per_epoch(data_cfg["epoch_reference_size"], recipe["batch_size"])
    ema = WeightAverage(classifier, recipe["ema"]["tau"],
                        recipe["ema"]["warmup_fraction"] * recipe["epochs"] * dmat_steps)
    randomness = TrainingRandomness(recipe["seed"], device)
    progress = Progress()
    if (state_dir / STATE_FILE).exists():
        progress = load_state(state_dir / STATE_FILE, recipe, trainable, ema, optimizer, schedule.scheduler, randomness)
        if context.is_main:
            print(f"resuming from step {progress.global_step} (epoch {progress.epoch + 1}) of "
                  f"{state_dir / STATE_FILE}", file=sys.stderr, flush=True)
    monitor = TrainingMonitor(recipe, out_dir, state_dir, sampler.num_batches, context.world_size, progress,
                              enabled=context.is_main)
    train_forward, attack_forward = wrap_for_training(trainable, context), classifier
    if precision["compile"]:
        train_forward, attack_forward = torch.compile(train_forward), torch.compile(classifier)
    memory_format = torch.channels_last if precision["channels_last"] else torch.contiguous_format
    validation_set = None
    if data.val_size:
        validation_set = (images_to_tensor(data.train_images[:data.val_size], device)
                          .contiguous(memory_format=memory_format),
                          torch.as_tensor(np.array(data.train_labels[:data.val_size]), device=device))
    imagenet = None
    if data_cfg["format"] == "imagenet_index":
        from dra.training.imagenet_batches import ImageNetBatches

        imagenet = ImageNetBatches(data_cfg["train"], data_cfg["synthetic"], data_cfg["image_size"], recipe["seed"],
                                   num_workers=threads)
    return TrainingRun(recipe, context, out_dir, state_dir, data, sampler, objective_of(recipe["objective"]["name"]),
                       classifier, targets, trainable, train_forward, attack_forward, optimizer, schedule, ema,
                       dmat_steps, randomness, progress, monitor, memory_format, validation_set, imagenet)


@dataclass
class Batch:
    """One global batch as this rank sees it: its share `x`, `y` (rows `mine` of the batch) with their
    attack start noise, and the store indices, is-synthetic flags and DRA target views of the whole
    batch (None without DRA)."""

    x: torch.Tensor
    y: torch.Tensor
    start_noise: torch.Tensor
    mine: slice
    store_index: np.ndarray
    is_synthetic: np.ndarray
    view: np.ndarray | None

    def __len__(self) -> int:
        return len(self.store_index)


def next_batch(run: TrainingRun, real_idx: np.ndarray, synthetic_idx: np.ndarray, decoded=None) -> Batch:
    """The sampler's next batch, augmented, with its random draws from the run's generators (`decoded`:
    the ImageNet batches' iterator of the epoch)."""
    context, device, augment = run.context, run.device, run.recipe["data"]["augment"]
    if run.imagenet is not None:  # only this rank's share is decoded, cropped and flipped, by the workers
        store_index, is_synthetic, images, labels = next(decoded)
        mine = context.shard(len(store_index))
        x = images.to(device, non_blocking=True).float().div_(255.0)
        y = torch.from_numpy(labels).to(device)
    else:
        store_index, is_synthetic, images, labels = gather_batch(run.data, real_idx, synthetic_idx,
                                                                 run.randomness.host)
        mine = context.shard(len(labels))
        x = random_crop_flip_rotate(images_to_tensor(images, device), run.randomness.host, augment["crop_padding"],
                                    augment["hflip"], augment["rotate_degrees"])[mine]
        y = torch.from_numpy(labels[mine]).to(device)
    # drawn for the whole batch, then sliced: any number of ranks sees the noise of one process
    batch_shape = (len(store_index),) + tuple(x.shape[1:])
    start_noise = uniform_ball_noise(batch_shape, run.recipe["attack"]["eps"], run.randomness.device, device)[mine]
    view = (torch.randint(run.targets.views, (len(store_index),), generator=run.randomness.host).numpy()
            if run.targets is not None else None)
    return Batch(x.contiguous(memory_format=run.memory_format), y, start_noise, mine, store_index, is_synthetic, view)


def optimizer_step(run: TrainingRun, batch: Batch) -> list[float]:
    """One optimizer step on `batch`: its micro-batches' gradients summed (DDP reduces them at the last
    one), the update, the lr schedule's per-step move and the EMA. Returns the step's log sums over all
    ranks, [loss, loss_main, loss_dra] x images, clean correct, adversarial correct, images; `run.progress`
    is not moved (`record_step` does). A non-finite loss stops before the update."""
    progress, context = run.progress, run.context
    set_batchnorm_momentum(run.classifier, FIRST_STEP_BATCHNORM_MOMENTUM if progress.global_step == 0
                           else TRAINING_BATCHNORM_MOMENTUM)
    run.optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(6, device=run.device)
    micro_batches = context.micro_batches(len(batch))
    for index, micro in enumerate(micro_batches):
        # DDP reduces gradients at the last micro-batch's backward only
        last = index == len(micro_batches) - 1
        with contextlib.nullcontext() if last or not context.enabled else run.train_forward.no_sync():
            sums += train_micro_batch(run, batch, micro, first=index == 0)
    totals = context.all_reduce_sum(sums).tolist()
    if not all(math.isfinite(v) for v in totals[:3]):
        raise TrainingDivergedError(
            f"non-finite loss {totals[0] / totals[5]} at epoch {progress.epoch + 1}, step {progress.step_in_epoch + 1} "
            f"(global step {progress.global_step + 1}); the last good state is {run.state_dir / STATE_FILE}. "
            "Lower optimizer.lr or check the data for NaN.")
    run.optimizer.step()
    if run.schedule.per == "step":
        run.schedule.scheduler.step()
    run.ema.update(run.classifier, dmat_step_count(progress.epoch, progress.step_in_epoch, run.dmat_steps))
    return totals


def train_micro_batch(run: TrainingRun, batch: Batch, micro: slice, first: bool) -> torch.Tensor:
    """Attack, forward and backward of the micro-batch `micro` (a slice of the global batch within this
    rank's share), its loss weighted by its share of the global batch, so that the gradients summed over
    micro-batches (and averaged over DDP ranks, times world_size) are the global-batch mean.
    BatchNorm normalizes each batchnorm_group images of this micro-batch by their own statistics
    (dra.training.batchnorm; without groups, the whole micro-batch, as on one GPU of DM-AT's
    DataParallel); the running statistics keep the first group's update only, as DataParallel
    keeps device 0's replica and DDP broadcasts rank 0's buffers: the BatchNorm layers move them
    with their first group, and the micro-batches after the first restore them below. Returns
    this micro-batch's log sums."""
    recipe, device, objective, classifier = run.recipe, run.device, run.objective, run.classifier
    attack, dra = recipe["attack"], recipe["dra"]
    local = slice(micro.start - batch.mine.start, micro.stop - batch.mine.start)  # within this rank's share
    x, y = batch.x[local], batch.y[local]
    with run.autocast():
        x_adv = objective.adversarial_examples(run.attack_forward, x, y, attack["eps"], attack["step"],
                                               attack["steps"], batch.start_noise[local])
        kept = None if first else [buffer.clone() for buffer in classifier.buffers()]
        logits_clean, logits_adv, projected = run.train_forward(x if objective.clean_branch else None, x_adv)
    loss_main = objective.outer_loss(logits_clean, logits_adv, y, recipe["objective"])
    loss_dra = torch.zeros((), device=device)
    if run.targets is not None:
        target = run.targets(batch.store_index[micro], batch.is_synthetic[micro], batch.view[micro], x, y)
        loss_dra = dra_loss(projected, target)
    loss = loss_main + (dra["lambda"] if dra else 0.0) * loss_dra
    n = len(y)
    # DDP averages gradients over ranks, hence world_size; the share keeps uneven splits exact
    (loss * (n * run.context.world_size / len(batch))).backward()
    if kept is not None:  # after backward: BatchNorm's backward reads the buffers it was given
        with torch.no_grad():
            for buffer, value in zip(classifier.buffers(), kept):
                buffer.copy_(value)
    clean_correct = ((logits_clean.argmax(1) == y).sum() if logits_clean is not None
                     else torch.zeros((), device=device))
    return torch.stack([loss.detach().float() * n, loss_main.detach().float() * n, loss_dra.detach().float() * n,
                        clean_correct.float(), (logits_adv.argmax(1) == y).sum().float(),
                        torch.tensor(float(n), device=device)])


def record_step(run: TrainingRun, totals: list[float], seconds: float) -> None:
    """Count a finished step (`totals` from `optimizer_step`, `seconds` it took) into the progress and
    the epoch's log sums, save the state every checkpoint.every_steps steps, tell the monitor."""
    progress = run.progress
    progress.global_step += 1
    progress.step_in_epoch += 1
    for key, value in zip(("loss", "loss_main", "loss_dra", "clean_correct", "adv_correct", "images"), totals):
        progress.sums[key] = progress.sums.get(key, 0.0) + value
    progress.sums["seconds"] = progress.sums.get("seconds", 0.0) + seconds
    if run.objective.clean_branch:  # only an objective with a clean branch (TRADES) has clean accuracy to count
        progress.sums["clean_counted"] = progress.sums.get("clean_counted", 0.0) + totals[5]
    if run.context.is_main and progress.global_step % run.recipe["checkpoint"]["every_steps"] == 0:
        run.save_state()
    run.monitor.step(progress, totals, seconds, run.optimizer.param_groups[0]["lr"])


def stop_for_retry(run: TrainingRun) -> None:
    """Save the state of the step just taken and exit with status 75 (dra.preemption); every rank calls it."""
    if run.context.is_main:
        run.save_state()
    run.context.barrier()
    shutdown_distributed(run.context)
    preemption.stop(f"training state of step {run.progress.global_step} saved in {run.state_dir / STATE_FILE}")


def end_epoch(run: TrainingRun) -> None:
    """After the last step of epoch `run.progress.epoch`: BatchNorm statistics into the average, validation
    (every validation.every_epochs epochs and after the last) and the best-validation weights, the epoch's
    log row, the per-epoch lr step; then the progress moves to the next epoch, and the state and the
    growing log are saved."""
    recipe, progress, context, ema = run.recipe, run.progress, run.context, run.ema
    epoch = progress.epoch
    ema.copy_buffers(run.classifier)
    validation = None
    validate_now = (epoch + 1) % recipe["validation"]["every_epochs"] == 0 or epoch + 1 == run.epochs
    if run.validation_set is not None and validate_now:  # on every rank, each its share (`validate`)
        with run.autocast():
            validation = validate(ema.model, *run.validation_set, recipe["attack"],
                                  recipe["validation"]["attack_steps"], recipe["seed"], context,
                                  context.largest_micro_batch(recipe["batch_size"]))
        # a tie keeps the later epoch, as DM-AT's train-wa.py does (>=); every rank holds the same counts
        if recipe["checkpoint"]["select"] == "best_val" and validation[1] >= progress.best_val_robust:
            progress.best_val_robust = validation[1]
            if context.is_main:
                with atomic_file(run.state_dir / BEST_FILE) as tmp:
                    torch.save(ema.model.state_dict(), tmp)
    progress.rows.append(epoch_row(epoch, progress, run.optimizer.param_groups[0]["lr"], validation))
    if run.schedule.per == "epoch":
        run.schedule.scheduler.step()
    progress.epoch, progress.step_in_epoch, progress.sums = epoch + 1, 0, {}
    if context.is_main:
        run.save_state()
        # the epoch log as it grows, beside the state: train/log.csv is a declared output and appears
        # only when training is complete, so a killed run never leaves an output that looks finished
        write_log(run.state_dir / "log.csv", progress.rows)
        run.monitor.epoch_end(progress)
    context.barrier()


def write_outputs(run: TrainingRun) -> None:
    """out_dir/log.csv and out_dir/model.pt (the last EMA weights, or the best validation's), on the main rank."""
    if run.context.is_main:
        write_log(run.out_dir / "log.csv", run.progress.rows)
        weights = (torch.load(run.state_dir / BEST_FILE, map_location="cpu", weights_only=True)
                   if run.recipe["checkpoint"]["select"] == "best_val" else run.ema.model.state_dict())
        with atomic_file(run.out_dir / "model.pt") as tmp:
            torch.save(weights, tmp)
    run.monitor.finish(run.progress)
    run.context.barrier()
    shutdown_distributed(run.context)

"""train_cell end to end on tiny fixture stores: outputs, exact resume, NaN stop, DDP vs one process."""

import copy
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dra.data.store import FeatureStoreWriter, ImageStoreWriter
from dra.io import write_yaml
from dra.models import create_classifier
from dra.training import RecipeError, TrainingDivergedError, train_cell

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4
SIZE = 8
FEATURE_DIM = 6


def _class_images(rng, labels):
    """Images whose mean colour depends on the class, so a tiny model can learn them."""
    palette = np.array([[0.2, 0.2, 0.8], [0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.7, 0.7, 0.2]])
    pixels = palette[labels][:, None, None, :] + 0.15 * rng.standard_normal((len(labels), SIZE, SIZE, 3))
    return np.clip(pixels * 255, 0, 255).astype(np.uint8)


def _write_image_store(path, n, rng):
    labels = rng.integers(0, NUM_CLASSES, n)
    with ImageStoreWriter(path, n, SIZE, SIZE, NUM_CLASSES, meta={"source": "test fixture"}) as writer:
        writer.write(0, _class_images(rng, labels), labels)
    return labels


def _write_feature_store(path, labels, views, rng, image_store):
    # Targets that carry the class (plus noise), like diffusion features do.
    centres = rng.standard_normal((NUM_CLASSES, FEATURE_DIM))
    features = centres[labels][:, None, :] + 0.3 * rng.standard_normal((len(labels), views, FEATURE_DIM))
    meta = {"layer": "model.dec.8x8_in1", "sigma": 0.1, "extra_view": views > 1, "diffusion_model": "fixture",
            "image_store": str(image_store)}
    with FeatureStoreWriter(path, len(labels), views, FEATURE_DIM, meta=meta) as writer:
        writer.write(0, features.astype(np.float16))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    train_labels = _write_image_store(root / "train", 80, rng)
    synthetic_labels = _write_image_store(root / "synthetic", 64, rng)
    _write_feature_store(root / "features_train", train_labels, 2, rng, root / "train")
    _write_feature_store(root / "features_synthetic", synthetic_labels, 2, rng, root / "synthetic")
    return root


def tiny_recipe(stores, objective="trades", dra=True, synthetic=True, arch=None, epochs=2, batch_size=16):
    return {
        "cell": {"dataset": "fixture", "arch": "wrn-10-2", "method": "test", "budget": "tiny"},
        "seed": 1,
        "data": {"train": str(stores / "train"), "synthetic": str(stores / "synthetic") if synthetic else None,
                 "val_size": 16, "epoch_reference_size": 48, "unsup_fraction": 0.5, "num_classes": NUM_CLASSES,
                 "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                 "augment": {"crop_padding": 1, "hflip": True, "rotate_degrees": 0},
                 "format": "image_store", "image_size": 8},
        "arch": arch or {"family": "wrn", "depth": 10, "width": 2, "activation": "silu"},
        "attack": {"eps": 8 / 255, "step": 2 / 255, "steps": 2},
        "objective": {"name": objective, "beta": 5.0, "label_smoothing": 0.1},
        "dra": ({"lambda": 1.2, "head_hidden": 16, "head_layers": 3, "target": "stored",
                 "features": {"real": str(stores / "features_train"),
                              "synthetic": str(stores / "features_synthetic") if synthetic else None},
                 "diffusion": None} if dra else None),
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "dmat_onecycle", "warmup_fraction": 0.025},
        "ema": {"tau": 0.995, "warmup_fraction": 0.025},
        "batch_size": batch_size,
        "epochs": epochs,
        "accumulation_steps": 1,
        "batchnorm_group": batch_size,  # the whole batch: one GPU without groups
        "precision": {"bf16": False, "channels_last": False, "compile": False},
        "checkpoint": {"every_steps": 1, "select": "last"},
        "validation": {"every_epochs": 1, "attack_steps": 3},
    }


def _read_log(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("objective,dra", [("pgd_at", False), ("trades", True)])
def test_train_cell_writes_loadable_ema_model_and_log(stores, tmp_path, objective, dra):
    recipe = tiny_recipe(stores, objective=objective, dra=dra, synthetic=dra)
    train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    model = create_classifier(recipe["arch"], NUM_CLASSES, [0.5] * 3, [0.25] * 3)
    model.load_state_dict(weights)  # strict: EMA classifier only, no DRA head keys
    assert not any(key.startswith("head") for key in weights)
    rows = _read_log(tmp_path / "out" / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [3, 6]  # ceil(48 / 16) = 3 batches per epoch
    for row in rows:
        assert np.isfinite(float(row["loss"])) and 0 <= float(row["val_robust_acc"]) <= float(row["val_clean_acc"]) <= 1
        if dra:
            # loss = L_TRADES + 1.2 L_DRA (paper eq. 4), and -1 <= L_DRA <= 1 (a negative cosine)
            expected = float(row["loss_trades_or_ce"]) + 1.2 * float(row["loss_dra"])
            assert float(row["loss"]) == pytest.approx(expected, rel=1e-5)
            assert -1.0 <= float(row["loss_dra"]) <= 1.0
        else:
            assert float(row["loss_dra"]) == 0.0 and row["clean_batch_acc"] == ""  # PGD-AT has no clean forward
    # OneCycleLR stepped per epoch over 2 epochs: epoch 2 runs at the final lr = lr / 25 / 1e4
    # (DM-AT core/utils/train.py)
    assert float(rows[1]["lr"]) == pytest.approx(0.05 / 25 / 1e4)
    # EMA BatchNorm buffers are the raw model's at the end of the last epoch (DM-AT watrain.py update_bn)
    state = torch.load(tmp_path / "state" / "state.pt", weights_only=True)
    raw = {k[len("classifier."):]: v for k, v in state["trainable"].items() if k.startswith("classifier.")}
    for key, value in weights.items():
        if "running" in key:
            torch.testing.assert_close(value, raw[key], rtol=0, atol=0)


def test_ema_counts_and_best_epoch_tie_follow_dmat(stores, tmp_path, monkeypatch):
    """The loop hands the EMA DM-AT's step counts, and a validation tie keeps the LATER epoch
    (train-wa.py compares with >=)."""
    import dra.training.loop as loop

    seen = []
    update = loop.WeightAverage.update

    def recording_update(self, model, step):
        seen.append((step, self.warmup_steps))
        update(self, model, step)

    monkeypatch.setattr(loop.WeightAverage, "update", recording_update)
    monkeypatch.setattr(loop, "validate", lambda *args, **kwargs: (0.5, 0.25))  # every epoch ties
    recipe = tiny_recipe(stores, dra=False, synthetic=False)
    recipe["checkpoint"]["select"] = "best_val"
    train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    # 48 reference images, batch 16: 3 batches per epoch, DM-AT's update_steps floor(48 / 16) + 1 = 4,
    # so the counts skip 4; warm-up 0.025 * 2 epochs * 4 = 0.2 steps
    assert [step for step, _ in seen] == [1, 2, 3, 5, 6, 7]
    assert [warmup for _, warmup in seen] == pytest.approx([0.2] * 6)
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    last = torch.load(tmp_path / "state" / "state.pt", weights_only=True)["ema"]
    assert all(torch.equal(weights[key], last[key]) for key in last)  # epoch 2's average, not epoch 1's


def _final_weights(tmp_path, name, recipe, interrupt_after=None):
    out, state = tmp_path / name / "out", tmp_path / name / "state"

    class Interrupted(Exception):
        pass

    def stop(step):
        if step == interrupt_after:
            raise Interrupted

    if interrupt_after is not None:
        with pytest.raises(Interrupted):
            train_cell(copy.deepcopy(recipe), out, state, threads=1, after_step=stop)
        assert not (out / "model.pt").exists()
    train_cell(copy.deepcopy(recipe), out, state, threads=1)
    return torch.load(out / "model.pt", weights_only=True), _read_log(out / "log.csv"), state


def test_interrupted_run_resumes_bit_identical(stores, tmp_path):
    recipe = tiny_recipe(stores, epochs=3)
    reference, reference_log, _ = _final_weights(tmp_path, "uninterrupted", recipe)
    # Interrupt mid-epoch (after step 4 of 9) and exactly at an epoch end (step 6).
    for k in (4, 6):
        resumed, resumed_log, state = _final_weights(tmp_path, f"killed_after_{k}", recipe, interrupt_after=k)
        assert reference.keys() == resumed.keys()
        for key in reference:
            assert torch.equal(reference[key], resumed[key]), key
        for ours, theirs in zip(reference_log, resumed_log):
            for column in ("loss", "loss_dra", "adv_batch_acc", "val_robust_acc"):
                assert ours[column] == theirs[column]
    # the DRA head lives only in the state (it is trained, but not part of model.pt)
    trainable = torch.load(state / "state.pt", weights_only=True)["trainable"]
    head = {k: v for k, v in trainable.items() if k.startswith("head.")}
    assert len(head) == 6


def test_stop_signal_saves_the_step_it_arrived_in_and_the_retry_resumes_bit_identical(stores, tmp_path):
    """SLURM's warning before the time limit (dra.preemption): the run saves the step in progress,
    exits with status 75, and its retry ends as a run never stopped; no finished step is lost, even
    between periodic saves."""
    from dra import preemption

    recipe = tiny_recipe(stores, epochs=2)
    recipe["checkpoint"]["every_steps"] = 4  # the signal arrives in step 1, before the first periodic save
    reference, _, _ = _final_weights(tmp_path, "uninterrupted", recipe)
    out, state = tmp_path / "stopped" / "out", tmp_path / "stopped" / "state"

    def signal_in_step_one(step):
        if step == 1:  # as if it arrived while step 1 ran: the loop checks once the step is done
            os.kill(os.getpid(), preemption.STOP_SIGNAL)

    preemption.clear()
    try:
        with pytest.raises(preemption.StopForRetry) as stopped:
            train_cell(copy.deepcopy(recipe), out, state, threads=1, after_step=signal_in_step_one)
    finally:
        preemption.clear()  # the retry is a new process
    assert stopped.value.code == 75
    assert torch.load(state / "state.pt", weights_only=True)["progress"]["global_step"] == 1
    assert not (out / "model.pt").exists()
    train_cell(copy.deepcopy(recipe), out, state, threads=1)
    resumed = torch.load(out / "model.pt", weights_only=True)
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


@pytest.mark.slow
def test_kill_with_sigkill_then_rerun_script_matches(stores, tmp_path):
    """A process killed from outside (SIGKILL, no cleanup) resumes to the same weights."""
    recipe = tiny_recipe(stores, epochs=2)
    write_yaml(tmp_path / "recipe.yaml", recipe)
    reference, _, _ = _final_weights(tmp_path, "reference", recipe)
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--recipe", str(tmp_path / "recipe.yaml"),
               "--out-dir", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"), "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    # Kill as soon as the first checkpoint exists (the run is then mid-way).
    deadline = time.time() + 60
    while not (tmp_path / "state" / "state.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not (tmp_path / "out" / "model.pt").exists()
    subprocess.run(command, env=env, check=True, capture_output=True)
    resumed = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def test_nan_loss_stops_with_step_and_keeps_last_good_state(stores, tmp_path):
    recipe = tiny_recipe(stores, dra=False)
    recipe["optimizer"]["lr"] = 1e30  # the first update sends the weights to inf
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss nan at epoch 1, step 2 \(global step 2\)"):
        train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    state = torch.load(tmp_path / "state" / "state.pt", weights_only=True)
    assert state["progress"]["global_step"] == 1
    # no model and no epoch row; only the curves of step 1 (dra.monitor)
    assert not (tmp_path / "out" / "model.pt").exists() and not (tmp_path / "out" / "log.csv").exists()


def test_resuming_with_a_changed_recipe_is_refused(stores, tmp_path):
    recipe = tiny_recipe(stores, dra=False, synthetic=False, epochs=1)
    train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    recipe["objective"]["beta"] = 6.0
    with pytest.raises(ValueError, match=r"different recipe \(keys \['objective'\] differ\)"):
        train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)


def test_recipe_errors_name_the_key(stores, tmp_path):
    recipe = tiny_recipe(stores)
    del recipe["attack"]["eps"]
    with pytest.raises(RecipeError, match=r"key 'attack.eps' is missing"):
        train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    recipe = tiny_recipe(stores)
    recipe["dra"]["features"]["synthetic"] = None
    with pytest.raises(RecipeError, match=r"key 'dra.features.synthetic'"):
        train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    recipe = tiny_recipe(stores)
    recipe["batchnorm_group"] = None  # a WRN has BatchNorm: the group must be stated
    with pytest.raises(RecipeError, match=r"batchnorm_group is null, but arch wrn-10-2 has 7 BatchNorm layers"):
        train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    recipe = tiny_recipe(stores, batch_size=16)
    recipe.update(batchnorm_group=8, accumulation_steps=4)  # 2 groups cannot fill 4 micro-batches
    with pytest.raises(RecipeError, match=r"a batch of 16 images is 2 BatchNorm group\(s\) of 8 .* fewer than the "
                                          r"1 GPU\(s\) x 4 micro-batch\(es\)"):
        train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)


# A LayerNorm-only model (tiny ViT): per-sample normalization, so splitting the global batch over
# ranks changes nothing mathematically (no batch statistics, unlike BatchNorm). Every random draw
# is made for the global batch on every rank, the losses are per-sample means and DDP averages
# the gradients, so 2 processes must match 1 process up to float32 summation order.
TINY_VIT = {"family": "timm", "name": "vit_tiny_patch16_224",
            "kwargs": {"img_size": SIZE, "patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("data", ["image_store", "imagenet_index"])
def test_two_gloo_processes_match_one_process(stores, imagenet_folder, tmp_path, data):
    # ImageNet: each rank decodes only its half of every batch, and the run still equals one process
    recipe = tiny_recipe(stores, arch=TINY_VIT, epochs=2) if data == "image_store" else imagenet_recipe(imagenet_folder)
    recipe["arch"] = copy.deepcopy(TINY_VIT)
    recipe["arch"]["kwargs"]["img_size"] = recipe["data"]["image_size"]
    recipe["batchnorm_group"] = None  # LayerNorm only
    single, single_log, _ = _final_weights(tmp_path, "one_process", recipe)
    write_yaml(tmp_path / "recipe.yaml", recipe)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
         str(REPO / "scripts" / "train.py"), "--recipe", str(tmp_path / "recipe.yaml"),
         "--out-dir", str(tmp_path / "ddp" / "out"), "--state-dir", str(tmp_path / "ddp" / "state"), "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp" / "out" / "model.pt", weights_only=True)
    torch.manual_seed(recipe["seed"])
    initial = create_classifier(recipe["arch"], NUM_CLASSES, [0.5] * 3, [0.25] * 3).state_dict()
    assert single.keys() == initial.keys()
    moved = max((single[key] - initial[key]).abs().max().item() for key in single)
    assert moved > 1e-3  # training changed the weights far more than the tolerance below
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5)
    ddp_log = _read_log(tmp_path / "ddp" / "out" / "log.csv")
    for ours, theirs in zip(single_log, ddp_log):
        assert float(theirs["loss"]) == pytest.approx(float(ours["loss"]), rel=1e-4)
        assert float(theirs["loss_dra"]) == pytest.approx(float(ours["loss_dra"]), rel=1e-4, abs=1e-6)


def _torchrun_train(tmp_path, name, recipe, processes):
    write_yaml(tmp_path / f"{name}.yaml", recipe)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
         str(processes), str(REPO / "scripts" / "train.py"), "--recipe", str(tmp_path / f"{name}.yaml"),
         "--out-dir", str(tmp_path / name / "out"), "--state-dir", str(tmp_path / name / "state"), "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / name / "state" / "state.pt", weights_only=True)
    return torch.load(tmp_path / name / "out" / "model.pt", weights_only=True), state["trainable"]


@pytest.mark.slow
def test_batchnorm_groups_give_the_same_weights_on_one_process_two_gloo_ranks_and_micro_batches(stores, tmp_path):
    """TRADES + DRA on a WRN with BatchNorm over groups of 4 images (recipe key batchnorm_group), a global
    batch of 16: one process with 2 micro-batches of 8, two gloo processes with 8 each (gradients reduced
    by DDP), one process with 4 micro-batches of 4, and one process with the whole batch at once all
    take the same optimizer steps and keep the same BatchNorm running statistics (the first group's,
    as DataParallel keeps device 0's); validation, split over the two ranks in chunks of 8, counts
    what one process counts. Groups of 16 (the whole batch) train another model."""
    recipe = tiny_recipe(stores, objective="trades", dra=True, epochs=2, batch_size=16)
    recipe["batchnorm_group"] = 4
    runs = {}
    for name, accumulation in (("accumulated_2", 2), ("accumulated_4", 4), ("whole_batch", 1)):
        split = dict(copy.deepcopy(recipe), accumulation_steps=accumulation)
        weights, log, state = _final_weights(tmp_path, name, split)
        runs[name] = (weights, torch.load(state / "state.pt", weights_only=True)["trainable"], log)
    recipe["accumulation_steps"] = 1
    ddp_weights, ddp_trainable = _torchrun_train(tmp_path, "ddp", recipe, processes=2)
    runs["ddp_2_ranks"] = (ddp_weights, ddp_trainable, _read_log(tmp_path / "ddp" / "out" / "log.csv"))
    whole_group = dict(copy.deepcopy(recipe), batchnorm_group=16)
    other, _, _ = _final_weights(tmp_path, "group_16", whole_group)

    reference_weights, reference_trainable, reference_log = runs.pop("accumulated_2")
    assert any("running_mean" in key for key in reference_weights)  # BatchNorm statistics are compared too
    for name, (weights, trainable, log) in runs.items():
        largest = max((reference_trainable[key].double() - trainable[key].double()).abs().max().item()
                      for key in reference_trainable)
        print(f"largest |accumulated_2 - {name}| over the trained weights and buffers: {largest:.3g}")
        for ours, theirs in ((reference_weights, weights), (reference_trainable, trainable)):
            assert ours.keys() == theirs.keys()
            for key in ours:
                torch.testing.assert_close(theirs[key].double(), ours[key].double(), rtol=1e-4, atol=1e-5,
                                           msg=f"{name}: {key}")
        for ours, theirs in zip(reference_log, log):  # the same validation counts, however split
            assert ((ours["val_clean_acc"], ours["val_robust_acc"])
                    == (theirs["val_clean_acc"], theirs["val_robust_acc"]))
    # normalising over the whole batch trains another model: the comparisons above can fail
    apart = max((reference_weights[key].double() - other[key].double()).abs().max().item() for key in other)
    assert apart > 1e-3


def test_batchnorm_normalises_each_group_and_keeps_the_first_groups_statistics():
    from dra.training.batchnorm import normalise_in_groups

    torch.manual_seed(0)
    x = torch.randn(10, 3, 2, 2, dtype=torch.float64) * 3 + 1
    plain, grouped = (torch.nn.BatchNorm2d(3, momentum=0.1).double() for _ in range(2))
    assert normalise_in_groups(torch.nn.Sequential(grouped), 4) == 1
    out = grouped(x)
    # groups of 4, 4 and 2 images, each normalised by its own mean and biased variance (float64 by hand)
    for part in (slice(0, 4), slice(4, 8), slice(8, 10)):
        chunk = x[part]
        mean, var = chunk.mean((0, 2, 3), keepdim=True), chunk.var((0, 2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(out[part], (chunk - mean) / torch.sqrt(var + plain.eps))
    plain(x[:4])  # the running statistics move with the first group only, once
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(grouped, name), getattr(plain, name))
    grouped.eval()  # eval: the running statistics, per image, nothing cut
    plain.eval()
    torch.testing.assert_close(grouped(x), plain(x))


def test_micro_batches_are_runs_of_whole_groups_and_the_plan_counts_the_same_images():
    from dra.gpu_plan import micro_batch_images
    from dra.training.distributed import DistributedContext

    for batch in (1, 7, 15, 16, 100, 1024):
        for group in (None, 1, 3, 4, 128):
            for world, accumulation in ((1, 1), (1, 3), (2, 1), (2, 2), (5, 1), (8, 2)):
                contexts = [DistributedContext(rank, world, torch.device("cpu"), accumulation, group)
                            for rank in range(world)]
                micro = [m for context in contexts for m in context.micro_batches(batch)]
                expected = micro_batch_images(batch, world * accumulation, group)
                if expected is None:
                    assert any(m.stop <= m.start for m in micro)
                    continue
                assert [m.start for m in micro[1:]] == [m.stop for m in micro[:-1]] and micro[-1].stop == batch
                assert all(m.start % (group or 1) == 0 for m in micro)  # each starts at a group's start
                assert max(m.stop - m.start for m in micro) == expected == contexts[0].largest_micro_batch(batch)
                shares = [context.share(batch).stop - context.share(batch).start for context in contexts]
                assert sum(shares) == batch and max(shares) - min(shares) <= 1  # validation: even, no groups


def test_validation_split_over_two_gloo_ranks_counts_what_one_process_counts(tmp_path):
    """`validate` on 2 gloo ranks, each attacking its half in chunks of 3, against robust_accuracy in one
    process with every image in one chunk (the same start noise)."""
    import torch.multiprocessing as mp

    from dra.attacks import robust_accuracy

    torch.manual_seed(0)
    model = create_classifier({"family": "wrn", "depth": 10, "width": 1, "activation": "silu"}, NUM_CLASSES,
                              [0.5] * 3, [0.25] * 3)
    images = torch.rand(11, 3, SIZE, SIZE)
    labels = model.eval()(images).argmax(1)
    labels[::3] = (labels[::3] + 1) % NUM_CLASSES  # some wrong already
    torch.save({"model": model.state_dict(), "images": images, "labels": labels}, tmp_path / "inputs.pt")
    single = robust_accuracy(model, images, labels, 0.05, 0.02, 5, len(images), torch.Generator().manual_seed(3))
    # fork: the ranks start in a second instead of importing torch again
    mp.start_processes(_validate_on_rank, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert results[0] == results[1] == pytest.approx(single, abs=1e-12)
    assert 0 < single[1] < single[0]  # the attack broke some, not all, of the correct ones


def _validate_on_rank(rank, world, folder):
    import torch.distributed as dist

    from dra.training.distributed import DistributedContext
    from dra.training.loop import validate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    inputs = torch.load(f"{folder}/inputs.pt")
    model = create_classifier({"family": "wrn", "depth": 10, "width": 1, "activation": "silu"}, NUM_CLASSES,
                              [0.5] * 3, [0.25] * 3)
    model.load_state_dict(inputs["model"])
    context = DistributedContext(rank, world, torch.device("cpu"))
    result = validate(model, inputs["images"], inputs["labels"], {"eps": 0.05, "step": 0.02}, 5, 3, context, chunk=3)
    torch.save(result, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_online_targets_from_a_diffusion_checkpoint_with_bf16_and_channels_last(stores, tmp_path):
    """DRA with targets computed on the fly by a (tiny, random) EDM U-Net, and the precision options."""
    from dra.diffusion.checkpoint import save_edm
    from dra.diffusion.edm import EDMPrecond

    init_kwargs = {"img_resolution": SIZE, "img_channels": 3, "label_dim": NUM_CLASSES, "model_channels": 8,
                   "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    torch.manual_seed(0)
    save_edm(EDMPrecond(**init_kwargs), init_kwargs, tmp_path / "edm.safetensors", tmp_path / "edm.json")
    recipe = tiny_recipe(stores, epochs=1)
    recipe["dra"].update(target="online", features=None, diffusion={
        "checkpoint": str(tmp_path / "edm.safetensors"), "layer": "model.dec.4x4_in1", "sigma": 0.1,
        "extra_view": True})
    recipe["precision"].update(bf16=True, channels_last=True)
    train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())  # autocast keeps fp32 weights
    head = torch.load(tmp_path / "state" / "state.pt", weights_only=True)["trainable"]["head.mlp.4.weight"]
    assert head.shape == (16, 16)  # target dim = channels of the chosen U-Net block (8 * 2)
    row = _read_log(tmp_path / "out" / "log.csv")[0]
    assert -1.0 <= float(row["loss_dra"]) <= 1.0 and np.isfinite(float(row["loss"]))


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    """An ILSVRC-style folder of JPEGs (4 classes), its index, a 24 px synthetic store and the
    feature stores aligned to both."""
    from PIL import Image

    from dra.data.imagenet import index_imagenet

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(1)
    for split, count in (("train", 6), ("val", 1)):
        for label in range(NUM_CLASSES):
            folder = root / split / f"n0000000{label}"
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = _class_images(rng, np.array([label]))[0]
                Image.fromarray(pixels).resize((30 + 4 * k, 28)).save(folder / f"img{k}.JPEG", quality=90)
    (root / "ids.txt").write_text("".join(f"n0000000{label}/img0.JPEG\n" for label in range(NUM_CLASSES)))
    index_imagenet(root, root / "index", expected_train=24, expected_val=4, num_classes=NUM_CLASSES,
                   eval_ids=root / "ids.txt")
    labels = np.repeat(np.arange(NUM_CLASSES), 6)
    with ImageStoreWriter(root / "synthetic", 16, 24, 24, NUM_CLASSES, meta={"source": "test fixture"}) as writer:
        synthetic_labels = np.arange(16) % NUM_CLASSES
        writer.write(0, np.repeat(np.repeat(_class_images(rng, synthetic_labels), 3, 1), 3, 2), synthetic_labels)
    _write_feature_store(root / "features_train", labels, 1, rng, root / "index")
    _write_feature_store(root / "features_synthetic", synthetic_labels, 1, rng, root / "synthetic")
    return root


def imagenet_recipe(root):
    recipe = tiny_recipe(root, epochs=2, batch_size=8)
    recipe["data"].update({"train": str(root / "index"), "format": "imagenet_index", "image_size": 16,
                           "val_size": 0, "epoch_reference_size": 24})
    recipe["dra"]["features"]["real"] = str(root / "features_train")
    return recipe


def test_imagenet_folder_training_resumes_bit_identical(imagenet_folder, tmp_path):
    """JPEGs through the index plus synthetic images, cropped in DataLoader workers: a run
    interrupted mid-epoch ends with the weights of one that was not."""
    recipe = imagenet_recipe(imagenet_folder)
    reference, log, _ = _final_weights(tmp_path, "uninterrupted", recipe)
    assert [int(row["step"]) for row in log] == [3, 6] and log[0]["val_robust_acc"] == ""  # no validation split
    resumed, _, _ = _final_weights(tmp_path, "killed_after_4", recipe, interrupt_after=4)
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def test_imagenet_training_refuses_a_validation_split_and_small_synthetic_images(imagenet_folder, tmp_path):
    from dra.training.loop import TrainingDataError

    recipe = imagenet_recipe(imagenet_folder)
    recipe["data"]["val_size"] = 4
    recipe["checkpoint"]["select"] = "last"
    with pytest.raises(TrainingDataError, match="data.val_size = 4: ImageNet training keeps no validation"):
        train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)
    recipe = imagenet_recipe(imagenet_folder)
    recipe["data"]["image_size"] = 32
    with pytest.raises(TrainingDataError, match="24x24 images, smaller than the training crop data.image_size = 32"):
        train_cell(recipe, tmp_path / "out", tmp_path / "state", threads=1)

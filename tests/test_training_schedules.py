"""Learning rate / momentum schedule, EMA decay, optimizers, augmentation and recipe validation."""

import copy

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from dra.data.augment import random_crop_flip_rotate
from dra.models import create_classifier
from dra.training.ema import WeightAverage, dmat_step_count, dmat_steps_per_epoch, ema_decay
from dra.training.recipe import RecipeError, validate_recipe
from dra.training.schedules import WarmupCosine, build_optimizer, build_schedule


def _sgd(model, lr=0.2):
    return build_optimizer({"name": "sgd", "lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, model)


def test_dmat_onecycle_per_epoch_lr_and_momentum_facts():
    model = nn.Linear(2, 2)
    optimizer = _sgd(model)
    schedule = build_schedule({"name": "dmat_onecycle", "warmup_fraction": 0.025}, optimizer, 0.2, 400, 98)
    assert schedule.per == "epoch"
    lr, momentum = [], []
    for _ in range(400):  # one scheduler step per EPOCH (DM-AT core/utils/train.py)
        optimizer.step()
        lr.append(optimizer.param_groups[0]["lr"])
        momentum.append(optimizer.param_groups[0]["momentum"])
        schedule.scheduler.step()
    # DM-AT core/utils/train.py: start 0.2/25 = 0.008, 0.2 at the end of the 10-epoch warm-up,
    # 0.2/25/1e4 = 8e-7 at the end;
    # momentum cycled 0.95 -> 0.85 (warm-up end) -> 0.95
    assert lr[0] == pytest.approx(0.2 / 25) and momentum[0] == pytest.approx(0.95)
    assert lr[9] == pytest.approx(0.2) and momentum[9] == pytest.approx(0.85)
    assert lr[399] == pytest.approx(0.2 / 25 / 1e4) and momentum[399] == pytest.approx(0.95)
    assert max(lr) == pytest.approx(0.2) and all(a >= b for a, b in zip(lr[9:], lr[10:]))
    assert optimizer.param_groups[0]["nesterov"]


def test_warmup_cosine_per_step():
    multiplier = WarmupCosine(total_steps=100, warmup_steps=10)
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert multiplier(55) == pytest.approx(0.5) and multiplier(100) == pytest.approx(0.0)
    model = nn.Linear(2, 2)
    optimizer = build_optimizer({"name": "lion", "lr": 1e-4, "weight_decay": 0.5, "betas": [0.9, 0.99]}, model)
    schedule = build_schedule({"name": "cosine", "warmup_fraction": 0.1}, optimizer, 1e-4, 10, 10)
    assert schedule.per == "step" and optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_sgd_exempts_batchnorm_from_weight_decay():
    model = create_classifier({"family": "wrn", "depth": 10, "width": 1}, 4, [0.5] * 3, [0.25] * 3)
    optimizer = _sgd(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert all("batchnorm" in names[id(p)] for p in exempt["params"])
    assert {names[id(p)] for p in decayed["params"]} >= {"logits.bias", "logits.weight", "init_conv.weight"}
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))


def test_lion_from_timm_with_no_decay_for_1d_parameters():
    from timm.optim import Lion

    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    optimizer = build_optimizer({"name": "lion", "lr": 1e-4, "weight_decay": 0.5, "betas": [0.9, 0.99]}, model)
    assert isinstance(optimizer, Lion)
    by_decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    assert by_decay == {0.5: 12, 0.0: 4 + 4 + 4}
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)


def test_dmat_epoch_length_and_warmup():
    # DM-AT's update_steps = floor(50000 / batch) + 1 (watrain.py): one more than the real batches
    # (ceil) exactly when the batch divides 50000
    assert [dmat_steps_per_epoch(50000, b) for b in (128, 500, 512, 1024, 2048)] == [391, 101, 98, 49, 25]
    assert 0.025 * 400 * dmat_steps_per_epoch(50000, 500) == pytest.approx(1010)  # not 1000 = 0.025 * 400 * 100
    assert 0.025 * 400 * dmat_steps_per_epoch(50000, 512) == pytest.approx(980)


def test_dmat_step_count_and_decay_sequence():
    # The README cell (batch 512): 98 batches per epoch = update_steps, so the k-th update (1-based)
    # sees count k; updates 1..979 copy the model, update 980 has d = 0: decay 1 / 10.
    assert [dmat_step_count(0, s, 98) for s in (0, 1, 97)] == [1, 2, 98]
    assert dmat_step_count(1, 0, 98) == 99
    warmup = 0.025 * 400 * 98
    counts = [dmat_step_count(e, s, 98) for e in range(11) for s in range(98)]
    decays = [ema_decay(c, 0.995, warmup) for c in counts]
    assert decays[:979] == [0.0] * 979 and decays[979] == pytest.approx(0.1) and decays[980] == pytest.approx(2 / 11)
    # A batch dividing the reference size: 2 real batches per epoch but update_steps 3, so the count
    # skips 3, 6, ...; 40 epochs give a warm-up of 0.025 * 40 * 3 = 3 steps. By hand:
    counts = [dmat_step_count(e, s, 3) for e in range(3) for s in range(2)]
    assert counts == [1, 2, 4, 5, 7, 8]
    assert [ema_decay(c, 0.995, 3.0) for c in counts] == pytest.approx([0, 0, 2 / 11, 3 / 12, 5 / 14, 6 / 15])


def test_ema_decay_rule():
    warmup = 0.025 * 400 * 98  # 980 steps for 400 epochs of 98 steps (DM-AT watrain.py)
    assert ema_decay(0, 0.995, warmup) == 0.0 and ema_decay(979, 0.995, warmup) == 0.0
    assert ema_decay(980, 0.995, warmup) == pytest.approx(1 / 10)
    assert ema_decay(990, 0.995, warmup) == pytest.approx(11 / 20)
    assert ema_decay(980 + 1790, 0.995, warmup) == pytest.approx(0.995)  # (1 + d) / (10 + d) reaches tau at d = 1790
    assert ema_decay(980 + 100000, 0.995, warmup) == 0.995


def test_weight_average_updates_parameters_only_and_copies_buffers():
    model = create_classifier({"family": "wrn", "depth": 10, "width": 1}, 4, [0.5] * 3, [0.25] * 3)
    average = WeightAverage(model, tau=0.995, warmup_steps=2)
    start = copy.deepcopy(average.model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.rand(4, 3, 8, 8))  # moves the raw model's BN buffers
    average.update(model, step=1)  # warm-up: decay 0, the average copies the parameters
    torch.testing.assert_close(average.model.logits.weight, model.logits.weight)
    average.update(model, step=3)  # d = 1: decay 2 / 11
    decay = 2 / 11
    with torch.no_grad():
        model.logits.weight.add_(1.0)
    before = average.model.logits.weight.clone()
    average.update(model, step=3)
    torch.testing.assert_close(average.model.logits.weight, decay * before + (1 - decay) * model.logits.weight)
    assert torch.equal(average.model.batchnorm.running_mean, start["batchnorm.running_mean"])  # buffers untouched
    average.copy_buffers(model)
    assert torch.equal(average.model.batchnorm.running_mean, model.batchnorm.running_mean)


def _find_crop(padded, out, pad):
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            window = padded[:, top:top + out.shape[1], left:left + out.shape[2]]
            if torch.equal(window, out):
                return top, left, False
            if torch.equal(window.flip(-1), out):
                return top, left, True
    return None


def test_crop_and_flip_are_crops_of_the_zero_padded_image():
    images = torch.rand(64, 3, 8, 8)
    out = random_crop_flip_rotate(images, torch.Generator().manual_seed(0), crop_padding=4, hflip=True)
    found = [_find_crop(torch.nn.functional.pad(images[i], (4, 4, 4, 4)), out[i], 4) for i in range(64)]
    assert all(f is not None for f in found)
    tops = {f[0] for f in found}
    flips = sum(f[2] for f in found)
    assert len(tops) >= 6 and 16 <= flips <= 48  # offsets spread over 0..8, about half flipped


def test_augmentation_is_reproducible_from_the_generator_state():
    images = torch.rand(16, 3, 8, 8)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    first = random_crop_flip_rotate(images, generator, 4, True, 15)
    generator.set_state(state)
    assert torch.equal(first, random_crop_flip_rotate(images, generator, 4, True, 15))
    assert not torch.equal(first, random_crop_flip_rotate(images, generator, 4, True, 15))


def test_rotation_matches_torchvision_rotate():
    images = torch.rand(32, 3, 32, 32)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    out = random_crop_flip_rotate(images, generator, crop_padding=0, hflip=False, rotate_degrees=15)
    generator.set_state(state)
    angles = (torch.rand(32, generator=generator) * 2 - 1) * 15
    assert angles.abs().max() <= 15 and angles.abs().max() > 10
    agreement = []
    for i in range(32):
        # torchvision's RandomRotation(15): nearest, zero fill, about the centre (DM-AT core/data/cifar100s.py)
        expected = TF.rotate(images[i], angles[i].item(), interpolation=TF.InterpolationMode.NEAREST)
        agreement.append((out[i] == expected).float().mean().item())
    assert min(agreement) == 1.0


def _valid_recipe():
    return {
        "cell": {"dataset": "d", "arch": "a", "method": "m", "budget": "b"}, "seed": 1,
        "data": {"train": "t", "synthetic": None, "val_size": 8, "epoch_reference_size": 64, "unsup_fraction": 0.7,
                 "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3,
                 "augment": {"crop_padding": 4, "hflip": True, "rotate_degrees": 0},
                 "format": "image_store", "image_size": 32},
        "arch": {"family": "wrn", "depth": 28, "width": 10, "activation": "silu"},
        "attack": {"eps": 8 / 255, "step": 2 / 255, "steps": 10},
        "objective": {"name": "trades", "beta": 5.0, "label_smoothing": 0.1}, "dra": None,
        "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "dmat_onecycle", "warmup_fraction": 0.025},
        "ema": {"tau": 0.995, "warmup_fraction": 0.025},
        "batch_size": 512, "epochs": 400, "accumulation_steps": 1,
        "precision": {"bf16": False, "channels_last": False, "compile": False},
        "checkpoint": {"every_steps": 100, "select": "best_val"}, "validation": {"every_epochs": 1, "attack_steps": 40},
        "batchnorm_group": 128,
    }


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["attack"].pop("eps"), "key 'attack.eps' is missing"),
    (lambda r: r["attack"].update(eps=8), r"key 'attack.eps' = 8; expected a number in \(0, 1\]"),
    (lambda r: r["objective"].pop("beta"), "key 'objective.beta' is missing"),
    (lambda r: r["data"].update(mean=[0.5, 0.5]), "key 'data.mean'"),
    (lambda r: r.update(batch_size=0), "key 'batch_size'"),
    (lambda r: r["optimizer"].update(name="adam"), "key 'optimizer.name'"),
    (lambda r: r.update(dra={"lambda": 1.2, "head_hidden": 2048, "head_layers": 3, "target": "stored"}),
     "key 'dra.features.real' is missing"),
    (lambda r: r["data"].update(val_size=0), "key 'checkpoint.select' = 'best_val' needs validation images"),
    (lambda r: r["arch"].update(depth=27), "key 'arch.depth'"),
])
def test_recipe_errors_name_the_key(edit, message):
    recipe = _valid_recipe()
    validate_recipe(recipe)
    edit(recipe)
    with pytest.raises(RecipeError, match=message):
        validate_recipe(recipe)

"""The training loop's step and end of epoch, each called alone on a run set up from a tiny recipe
(dra.training.loop: set_up_run, optimizer_step, end_epoch)."""

import copy
import csv

import numpy as np
import pytest
import torch
from test_training_loop import stores, tiny_recipe  # noqa: F401  (stores: the module's fixture of tiny image stores)

import dra.training.loop as loop
from dra.data.store import open_feature_store
from dra.training.distributed import DistributedContext
from dra.training.recipe import validate_recipe
from dra.training.schedules import FIRST_STEP_BATCHNORM_MOMENTUM, set_batchnorm_momentum


def _run(recipe, tmp_path):
    recipe = validate_recipe(recipe)
    context = DistributedContext(0, 1, torch.device("cpu"), recipe["accumulation_steps"], recipe["batchnorm_group"])
    return loop.set_up_run(recipe, tmp_path / "out", tmp_path / "state", 1, context)


def _float64_loss(trainable, x, y, targets, label_smoothing, dra_lambda):
    """Standard training's loss (paper eq. 4 with the smoothed cross-entropy of DM-AT) written out in
    float64: (1 - s) NLL + s mean_c(-log p_c), minus lambda times the mean cosine to the target."""
    logits, features = trainable.classifier.forward_features(x)
    projected = trainable.head(features)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    cross_entropy = ((1 - label_smoothing) * -log_p[torch.arange(len(y)), y] + label_smoothing * -log_p.mean(1)).mean()
    cosine = (projected * targets).sum(1) / (projected.norm(dim=1) * targets.norm(dim=1))
    return cross_entropy - dra_lambda * cosine.mean(), logits


def test_one_optimizer_step_of_two_micro_batches_is_the_float64_global_batch_step(stores, tmp_path):  # noqa: F811
    """Standard training + DRA, a batch of 8 in 2 micro-batches of 4 on one process, BatchNorm over
    groups of 4: the step's loss is the float64 loss of the whole batch, its update is Nesterov SGD's
    first step on the float64 gradient of that loss, and the BatchNorm running statistics are the
    first group's."""
    recipe = tiny_recipe(stores, objective="standard", dra=True, batch_size=8)
    recipe.update(accumulation_steps=2, batchnorm_group=4)
    run = _run(recipe, tmp_path)
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(8, 3, 8, 8, generator=generator)
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    store_index = np.array([16, 17, 30, 3, 5, 40, 7, 63])  # real rows start past the 16 validation images
    is_synthetic = np.array([False, False, False, True, True, False, True, True])
    view = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    batch = loop.Batch(x, y, torch.zeros_like(x), slice(0, 8), store_index, is_synthetic, view)

    reference = {name: value.detach().double().clone() for name, value in run.trainable.state_dict().items()}
    double = copy.deepcopy(run.trainable).double().train()
    set_batchnorm_momentum(double.classifier, FIRST_STEP_BATCHNORM_MOMENTUM)
    real, synthetic = (open_feature_store(stores / name).features for name in ("features_train", "features_synthetic"))
    targets = torch.from_numpy(np.stack([(synthetic if s else real)[i, v] for i, s, v in
                                         zip(store_index, is_synthetic, view)]).astype(np.float64))
    loss, logits = _float64_loss(double, x.double(), y, targets, 0.1, 1.2)
    loss.backward()
    # OneCycleLR sets both the lr and the momentum of the step (it cycles momentum, as DM-AT's does)
    lr, momentum = run.optimizer.param_groups[0]["lr"], run.optimizer.param_groups[0]["momentum"]

    totals = loop.optimizer_step(run, batch)

    assert totals[5] == 8 and totals[3] == 0  # 8 images; standard training has no clean branch
    assert totals[0] / 8 == pytest.approx(loss.item(), abs=1e-6)
    assert totals[4] == (logits.argmax(1) == y).sum().item()
    after = run.trainable.state_dict()
    gradients = {f"{prefix}.{name}": p.grad for prefix, module in (("classifier", double.classifier),
                                                                   ("head", double.head))
                 for name, p in module.named_parameters()}
    assert len(gradients) == len(list(run.trainable.parameters()))
    for name, gradient in gradients.items():
        decay = 0.0 if "batchnorm" in name else 5e-4  # DM-AT: no weight decay on BatchNorm
        # Nesterov's first step: the buffer is g + wd w, the update lr (1 + momentum) (g + wd w)
        expected = reference[name] - lr * (1 + momentum) * (gradient + decay * reference[name])
        torch.testing.assert_close(after[name].double(), expected, rtol=1e-4, atol=1e-7, msg=name)
    moved = max((after[name].double() - reference[name]).abs().max().item() for name in gradients)
    assert moved > 1e-4  # the step changed the weights far more than the tolerance above
    # the running statistics moved once, with the first group of 4 only (momentum 1: its batch statistics)
    raw_buffers = dict(run.classifier.named_buffers())
    for name, buffer in double.classifier.named_buffers():
        torch.testing.assert_close(raw_buffers[name].double(), buffer.double(), rtol=1e-4, atol=1e-6, msg=name)
    first = run.classifier.layer[0].block[0].batchnorm_0
    assert first.num_batches_tracked.item() == 1


# the epoch ends are called without the steps between them, so the lr scheduler warns that no optimizer step came first
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_end_of_epoch_logs_the_sums_and_keeps_the_best_validation_later_on_a_tie(stores, tmp_path,  # noqa: F811
                                                                                monkeypatch):
    """Three epoch ends with validation robust accuracies 0.25, 0.20, 0.25: best_val keeps epoch 1's
    EMA weights after epoch 2 and epoch 3's after epoch 3 (a tie keeps the later epoch, DM-AT's >=);
    each log row is the epoch's sums divided out, at the lr the epoch ran with."""
    recipe = tiny_recipe(stores, dra=False, synthetic=False, epochs=3)
    recipe["checkpoint"]["select"] = "best_val"
    run = _run(recipe, tmp_path)
    results = iter([(0.5, 0.25), (0.75, 0.20), (0.625, 0.25)])
    calls = []

    def fake_validate(model, images, labels, attack, steps, seed, context, chunk):
        calls.append((len(images), steps, chunk))
        return next(results)

    monkeypatch.setattr(loop, "validate", fake_validate)
    lrs = []
    best_bias = []
    for epoch in range(3):
        run.progress.global_step += 3
        run.progress.sums = {"loss": 12.0 * (epoch + 1), "loss_main": 9.0, "loss_dra": 0.0, "clean_correct": 24.0,
                             "adv_correct": 16.0, "images": 48.0, "seconds": 4.0, "clean_counted": 48.0}
        with torch.no_grad():
            run.ema.model.logits.bias.fill_(epoch + 1)  # marks which epoch's average is saved
            run.classifier.batchnorm.running_mean.fill_(10.0 + epoch)
        lrs.append(run.optimizer.param_groups[0]["lr"])
        loop.end_epoch(run)
        best_bias.append(torch.load(tmp_path / "state" / loop.BEST_FILE, weights_only=True)["logits.bias"][0].item())
        assert run.ema.model.batchnorm.running_mean[0].item() == 10.0 + epoch  # the raw model's statistics

    assert best_bias == [1.0, 1.0, 3.0]
    assert run.progress.best_val_robust == 0.25
    assert calls == [(16, 3, 16)] * 3  # the 16 held-out images, validation.attack_steps, the micro-batch
    assert (run.progress.epoch, run.progress.step_in_epoch, run.progress.sums) == (3, 0, {})
    assert lrs[0] > lrs[1] > lrs[2] == pytest.approx(0.05 / 25 / 1e4)  # OneCycleLR, stepped per epoch
    with open(tmp_path / "state" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3] and [int(row["step"]) for row in rows] == [3, 6, 9]
    for epoch, row in enumerate(rows):
        assert float(row["loss"]) == pytest.approx(12.0 * (epoch + 1) / 48)
        assert float(row["loss_trades_or_ce"]) == pytest.approx(9.0 / 48)
        assert float(row["clean_batch_acc"]) == 0.5 and float(row["adv_batch_acc"]) == pytest.approx(1 / 3)
        assert float(row["images_per_second"]) == 12.0 and float(row["lr"]) == pytest.approx(lrs[epoch])
    assert [(float(r["val_clean_acc"]), float(r["val_robust_acc"])) for r in rows] == [(0.5, 0.25), (0.75, 0.2),
                                                                                         (0.625, 0.25)]
    state = torch.load(tmp_path / "state" / loop.STATE_FILE, weights_only=True)
    assert state["progress"]["epoch"] == 3 and len(state["progress"]["rows"]) == 3

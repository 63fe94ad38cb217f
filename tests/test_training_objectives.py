"""Attacks, TRADES / PGD-AT / standard losses and the DRA loss against float64 references."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dra.attacks import (cross_entropy_objective, cw_margin_objective, frozen_batchnorm_statistics, pgd_linf,
                         robust_accuracy, uniform_ball_noise)
from dra.models import create_classifier
from dra.training.dra_head import ProjectionHead, StoredTargets, dra_loss
from dra.training.losses import adversarial_examples, pgd_at_outer_loss, smooth_cross_entropy, trades_outer_loss
from dra.training.loop import TrainingModule

EPS, STEP = 8 / 255, 2 / 255


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _linear_model(seed=0, d=12, k=4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k)).double()
    return model, model[1].weight.detach().numpy(), model[1].bias.detach().numpy()


def _reference_pgd(x, noise, gradient_of_logits, W, b, steps):
    """Plain numpy float64 PGD on a linear model: analytic input gradient W^T dL/dz, sign steps,
    projection onto the eps-ball and [0, 1]."""
    flat = x.reshape(len(x), -1)
    adv = np.clip(flat + noise.reshape(len(x), -1), 0, 1)
    for _ in range(steps):
        grad_x = gradient_of_logits(adv @ W.T + b) @ W
        adv = np.clip(np.clip(adv + STEP * np.sign(grad_x), flat - EPS, flat + EPS), 0, 1)
    return adv.reshape(x.shape)


def test_pgd_cross_entropy_matches_float64_reference():
    model, W, b = _linear_model()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5, 1, 3, 4))
    y = rng.integers(0, 4, 5)
    noise = rng.uniform(-EPS, EPS, x.shape)
    onehot = np.eye(4)[y]
    expected = _reference_pgd(x, noise, lambda z: _softmax(z) - onehot, W, b, steps=7)
    x_adv = adversarial_examples("pgd_at", model, torch.from_numpy(x), torch.from_numpy(y), EPS, STEP, 7,
                                 torch.from_numpy(noise))
    np.testing.assert_allclose(x_adv.numpy(), expected, rtol=0, atol=1e-12)


def _linear_batchnorm_network():
    """Linear(12, 6) -> BatchNorm1d(6) -> Linear(6, 4) in float64, running statistics far from a batch's."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Linear(6, 4)).double()
    with torch.no_grad():
        norm = model[2]
        norm.running_mean.copy_(torch.linspace(-1.0, 1.0, 6))
        norm.running_var.copy_(torch.linspace(0.05, 3.0, 6))
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6))
        norm.bias.copy_(torch.linspace(-0.3, 0.4, 6))
    return model


def _numpy_forward(model, x, batch_statistics):
    """float64 forward of `_linear_batchnorm_network`: BatchNorm with the batch's (biased) statistics
    or with the running ones."""
    first, norm, last = (model[i].state_dict() for i in (1, 2, 3))
    h = x.reshape(len(x), -1) @ first["weight"].numpy().T + first["bias"].numpy()
    if batch_statistics:
        mean, var = h.mean(0), h.var(0)
    else:
        mean, var = norm["running_mean"].numpy(), norm["running_var"].numpy()
    h = (h - mean) / np.sqrt(var + model[2].eps) * norm["weight"].numpy() + norm["bias"].numpy()
    return h @ last["weight"].numpy().T + last["bias"].numpy()


def test_pgd_at_attacks_in_eval_mode_and_trains_on_plain_cross_entropy():
    """DM-AT's adversarial_loss (core/utils/train.py): the attack sees BatchNorm's
    running statistics (eval mode), the loss is plain cross-entropy of a train-mode forward."""
    model = _linear_batchnorm_network()
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (6, 1, 3, 4))
    y = rng.integers(0, 4, 6)
    noise = rng.uniform(-EPS, EPS, x.shape)
    before = copy.deepcopy(model.state_dict())
    onehot = np.eye(4)[y]
    # In eval mode the network is affine, z = A x + c, so the float64 PGD reference applies as is.
    c = _numpy_forward(model, np.zeros((1, 12)), batch_statistics=False)[0]
    A = np.stack([_numpy_forward(model, np.eye(12)[i:i + 1], batch_statistics=False)[0] - c for i in range(12)], 1)
    expected = _reference_pgd(x, noise, lambda z: _softmax(z) - onehot, A, c, steps=7)
    x_adv = adversarial_examples("pgd_at", model, torch.from_numpy(x), torch.from_numpy(y), EPS, STEP, 7,
                                 torch.from_numpy(noise))
    np.testing.assert_allclose(x_adv.numpy(), expected, rtol=0, atol=1e-12)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the attack with batch statistics (TRADES' mode, and ours before) lands elsewhere
    with frozen_batchnorm_statistics(model):
        train_mode = pgd_linf(model, torch.from_numpy(x), cross_entropy_objective(torch.from_numpy(y)), EPS, STEP, 7,
                              torch.from_numpy(noise))
    assert (train_mode - x_adv).abs().max() > STEP
    # outer loss: mean NLL of the train-mode logits, no label smoothing
    def plain_ce(images):
        return np.mean(-np.log(_softmax(_numpy_forward(model, images, batch_statistics=True)))[np.arange(6), y])
    loss = pgd_at_outer_loss(model(x_adv), torch.from_numpy(y)).item()
    assert loss == pytest.approx(plain_ce(expected), rel=1e-6)  # the loss is taken in float32
    assert loss != pytest.approx(pgd_at_outer_loss(model(train_mode), torch.from_numpy(y)).item(), rel=1e-3)


def test_trades_attack_matches_float64_reference():
    model, W, b = _linear_model(1)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (6, 1, 3, 4))
    noise = rng.uniform(-EPS, EPS, x.shape)
    p_nat = _softmax(x.reshape(6, -1) @ W.T + b)  # fixed during the attack (DM-AT trades.py)
    # d/dz_adv of KL_batchmean(p_nat || softmax(z_adv)) = (softmax(z_adv) - p_nat) / B
    expected = _reference_pgd(x, noise, lambda z: (_softmax(z) - p_nat) / len(x), W, b, steps=10)
    x_adv = adversarial_examples("trades", model, torch.from_numpy(x), torch.zeros(6, dtype=torch.long), EPS, STEP, 10,
                                 torch.from_numpy(noise))
    np.testing.assert_allclose(x_adv.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("objective", ["trades", "pgd_at"])
def test_adversarial_examples_stay_in_ball_and_image_range(objective):
    torch.manual_seed(0)
    model = create_classifier({"family": "wrn", "depth": 10, "width": 1}, 4, [0.5] * 3, [0.25] * 3)
    x = torch.rand(8, 3, 8, 8)
    x[:, 0] = x[:, 0].round()  # many pixels exactly at 0 or 1, where the [0, 1] clamp binds
    y = torch.randint(0, 4, (8,))
    generator = torch.Generator().manual_seed(0)
    x_adv = adversarial_examples(objective, model, x, y, EPS, STEP, 10, uniform_ball_noise(x.shape, EPS, generator))
    assert (x_adv - x).abs().max() <= EPS + 1e-7
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2  # the attack moved
    assert not x_adv.requires_grad


def test_uniform_start_noise_covers_the_ball():
    noise = uniform_ball_noise((20000,), EPS, torch.Generator().manual_seed(0))
    assert noise.abs().max() <= EPS and noise.min() < -0.99 * EPS and noise.max() > 0.99 * EPS
    assert noise.mean().abs() < 0.02 * EPS


def test_attack_uses_batch_statistics_and_leaves_running_statistics_unchanged():
    torch.manual_seed(0)
    model = create_classifier({"family": "wrn", "depth": 10, "width": 1}, 4, [0.5] * 3, [0.25] * 3)
    model(torch.rand(16, 3, 8, 8))  # move running stats away from their init
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(8, 3, 8, 8)
    with frozen_batchnorm_statistics(model):
        during = model(x)
    reference = copy.deepcopy(model).train()
    # train-mode batch statistics (DM-AT gowal21uncovering/utils/trades.py)
    torch.testing.assert_close(during, reference(x))
    assert not torch.allclose(during, copy.deepcopy(model).eval()(x))
    adversarial_examples("trades", model, x, torch.zeros(8, dtype=torch.long), EPS, STEP, 3,
                         uniform_ball_noise(x.shape, EPS, torch.Generator().manual_seed(0)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.training and all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_standard_objective_does_not_attack():
    x = torch.rand(2, 3, 8, 8)
    assert adversarial_examples("standard", None, x, None, EPS, STEP, 10, None) is x


def test_smooth_cross_entropy_and_trades_loss_against_float64_formula():
    rng = np.random.default_rng(2)
    z_nat, z_adv = rng.normal(size=(5, 10)) * 3, rng.normal(size=(5, 10)) * 3
    y = rng.integers(0, 10, 5)
    log_p_nat = np.log(_softmax(z_nat))
    # DM-AT trades.py, SmoothCrossEntropyLoss: 0.9 NLL(y) + 0.1 mean over classes of -log p;
    # beta KL(p_nat || p_adv) batchmean
    ce = np.mean(0.9 * -log_p_nat[np.arange(5), y] + 0.1 * -log_p_nat.mean(1))
    kl = np.sum(_softmax(z_nat) * (log_p_nat - np.log(_softmax(z_adv)))) / 5
    total, robust = trades_outer_loss(torch.from_numpy(z_nat), torch.from_numpy(z_adv), torch.from_numpy(y), 5.0, 0.1)
    assert robust.item() == pytest.approx(kl, rel=1e-6)
    assert total.item() == pytest.approx(ce + 5.0 * kl, rel=1e-6)
    assert smooth_cross_entropy(torch.from_numpy(z_nat), torch.from_numpy(y), 0.1).item() == pytest.approx(ce, rel=1e-6)


def test_trades_outer_loss_does_not_detach_the_natural_branch():
    z_nat = torch.randn(4, 5, requires_grad=True)
    z_adv = torch.randn(4, 5)
    _, robust = trades_outer_loss(z_nat, z_adv, torch.zeros(4, dtype=torch.long), 5.0, 0.1)
    robust.backward()
    assert z_nat.grad.abs().sum() > 0  # gradient flows through softmax(logits_nat) (DM-AT trades.py)


def test_cw_margin_objective_against_float64_formula():
    z = np.array([[3.0, 1.0, 2.5], [0.0, 80.0, 1.0], [5.0, -1.0, 4.0]])
    y = np.array([0, 1, 2])
    # DM-AT's CWLoss, confidence 0: -(max(3 - 2.5, 0) + max(80 - 1, 0) + max(4 - 5, 0))
    assert cw_margin_objective(torch.from_numpy(y))(torch.from_numpy(z)).item() == pytest.approx(-79.5)
    expected = -sum(max(z[i, y[i]] - max(np.delete(z[i], y[i])) + 50.0, 0.0) for i in range(3))
    assert cw_margin_objective(torch.from_numpy(y), margin=50.0)(torch.from_numpy(z)).item() == pytest.approx(expected)


def test_validation_attack_leaves_an_already_misclassified_example_at_its_start():
    """DM-AT's validation attack has margin 0 (core/attacks/utils.py CWLoss): a misclassified example
    gives no gradient. With the margin 50 used before, the same example moves; a correctly classified
    one far from the boundary takes the same path under both margins."""
    W = np.zeros((3, 12))
    W[0, :6], W[1, 6:], W[2] = 4.0, 4.0, 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(W))
        model[1].bias.zero_()
    x = np.full((2, 1, 3, 4), 0.5)
    x[0, 0, :, :2] = x[0, 0, 0, 2:] = 0.9   # logits 21.6, 15.2, 9.2: class 0 by 6.4
    y = torch.tensor([0, 2])                # the second example (logits 12, 12, 6) is misclassified by 6
    noise = torch.from_numpy(np.random.default_rng(3).uniform(-EPS, EPS, x.shape))
    start = torch.from_numpy(x) + noise
    # a logit moves by at most 6 * 4 * EPS < 0.76 inside the ball: neither margin changes sign
    dmat = pgd_linf(model, torch.from_numpy(x), cw_margin_objective(y), EPS, STEP, 10, noise)
    margin50 = pgd_linf(model, torch.from_numpy(x), cw_margin_objective(y, margin=50.0), EPS, STEP, 10, noise)
    torch.testing.assert_close(dmat[1], start[1], rtol=0, atol=0)
    assert (margin50[1] - start[1]).abs().max() > EPS / 2
    torch.testing.assert_close(dmat[0], margin50[0], rtol=0, atol=0)
    assert (dmat[0] - start[0]).abs().max() > EPS / 2


def test_dra_loss_against_float64_formula():
    rng = np.random.default_rng(3)
    a, t = rng.normal(size=(6, 9)), rng.normal(size=(6, 9))
    cosine = np.sum(a * t, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(t, axis=1))
    assert dra_loss(torch.from_numpy(a), torch.from_numpy(t)).item() == pytest.approx(-cosine.mean(), rel=1e-6)
    assert dra_loss(torch.from_numpy(a), torch.from_numpy(3 * a)).item() == pytest.approx(-1.0)


def test_dra_gradient_reaches_classifier_and_head_but_not_target():
    torch.manual_seed(0)
    classifier = create_classifier({"family": "wrn", "depth": 10, "width": 1}, 4, [0.5] * 3, [0.25] * 3)
    head = ProjectionHead(classifier.feature_dim, 32, 7)
    module = TrainingModule(classifier, head)
    target = torch.randn(4, 7, requires_grad=True)
    _, logits_adv, projected = module(None, torch.rand(4, 3, 8, 8))
    assert logits_adv.shape == (4, 4) and projected.shape == (4, 7)
    dra_loss(projected, target).backward()
    assert target.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert classifier.init_conv.weight.grad.abs().sum() > 0
    assert classifier.logits.weight.grad is None  # the alignment acts on the penultimate representation


def test_projection_head_is_repa_mlp():
    head = ProjectionHead(640, 2048, 256)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]  # REPA models/sit.py build_mlp
    assert [m.out_features for m in head.mlp if isinstance(m, nn.Linear)] == [2048, 2048, 256]
    assert all(torch.all(m.bias == 0) for m in head.mlp if isinstance(m, nn.Linear))
    bound = np.sqrt(6 / (640 + 2048))  # xavier uniform
    assert head.mlp[0].weight.abs().max() <= bound and head.mlp[0].weight.abs().max() > 0.95 * bound


def test_stored_targets_pick_the_drawn_view_of_the_right_store():
    real = np.arange(5 * 2 * 3, dtype=np.float16).reshape(5, 2, 3)
    synthetic = -np.arange(4 * 2 * 3, dtype=np.float16).reshape(4, 2, 3)
    targets = StoredTargets(real, synthetic)
    index = np.array([4, 1, 3])
    is_synthetic = np.array([False, True, True])
    view = np.array([1, 0, 1])
    got = targets(index, is_synthetic, view, torch.zeros(3, 3, 2, 2), torch.zeros(3))
    expected = np.stack([real[4, 1], synthetic[1, 0], synthetic[3, 1]]).astype(np.float32)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_validation_robust_accuracy_counts():
    model, _, _ = _linear_model(2)
    model = model.float()
    x = torch.rand(10, 1, 3, 4)
    y = model(x).argmax(1)  # clean accuracy 1 by construction
    clean, robust = robust_accuracy(model, x, y, 0.5, 0.1, 10, 4, torch.Generator().manual_seed(0))
    assert clean == 1.0 and robust < 1.0  # eps 0.5 breaks a linear model
    clean, robust = robust_accuracy(model, x, y, 1e-6, 1e-7, 2, 4, torch.Generator().manual_seed(0))
    assert robust == pytest.approx(clean)

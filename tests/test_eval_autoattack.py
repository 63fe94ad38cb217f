"""dra.evaluation.autoattack: the wrapper around pyautoattack 0.2.0.

The test model is linear, f(x) = W x + b, so the exact Linf robustness of every point is known
in closed form: with the eps ball inside [0, 1], the smallest perturbation that makes class j
overtake the true class y has Linf norm (z_y - z_j) / ||w_y - w_j||_1. The points are chosen
away from that boundary (radius < 0.8 eps or > 1.25 eps), so any correct attack finds exactly
the non-robust ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dra.evaluation import autoattack as aa
from dra.evaluation.autoattack import (
    AdversarialExampleError,
    AutoAttackInputError,
    AutoAttackStateError,
    eps_as_255,
    evaluate_autoattack,
    parse_eps,
    write_autoattack_outputs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLASSES = 10  # APGD-T and FAB-T attack the 9 top other classes (autoattack.py set_version)
SHAPE = (3, 4, 4)


def linear_problem(n: int, seed: int = 0):
    """A linear classifier, n points, the eps, and the exact robust flags at that eps."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(SHAPE)), NUM_CLASSES))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(NUM_CLASSES, int(np.prod(SHAPE)), generator=generator))
        model[1].bias.zero_()
    # Points in [0.25, 0.75]: the ball of every eps used here (< 0.05) stays inside [0, 1].
    candidates = 0.25 + 0.5 * torch.rand(40 * n, *SHAPE, generator=generator)
    weight = model[1].weight.detach().double()
    with torch.no_grad():
        logits = model(candidates).double()
    labels = logits.argmax(1)
    margins = logits.gather(1, labels[:, None]) - logits
    distances = (weight[labels][:, None, :] - weight[None, :, :]).abs().sum(-1)
    radius = (margins / distances).masked_fill(
        torch.nn.functional.one_hot(labels, NUM_CLASSES).bool(), float("inf")).min(1).values
    eps = float(radius.median())
    clear = ((radius < 0.8 * eps) | (radius > 1.25 * eps)).nonzero().squeeze(1)[:n]
    images, labels, radius = candidates[clear].contiguous(), labels[clear].clone(), radius[clear]
    # Two points get a wrong label: clean-wrong points must count as neither clean nor robust.
    labels[:2] = (labels[:2] + 1) % NUM_CLASSES
    truth_robust = (radius > eps).numpy()
    truth_robust[:2] = False
    truth_clean = np.ones(n, bool)
    truth_clean[:2] = False
    return model.eval(), images, labels, eps, truth_clean, truth_robust


def test_eps_text_round_trip():
    assert parse_eps("8/255") == pytest.approx(8 / 255, abs=0)
    assert parse_eps("0.03") == 0.03
    assert eps_as_255(8 / 255) == "8/255"
    assert eps_as_255(4 / 255) == "4/255"
    assert eps_as_255(0.1) == "25.5/255"
    for bad in ("abc", "0", "1.5", "1/0"):
        with pytest.raises(AutoAttackInputError, match="eps"):
            parse_eps(bad)


@pytest.mark.parametrize("change, message", [
    (lambda x, y, m: (x * 2.0, y, m), r"\[0, 1\]"),
    (lambda x, y, m: (x.masked_fill(x > 0.7, float("nan")), y, m), "NaN"),
    (lambda x, y, m: (x.double(), y, m), "float32"),
    (lambda x, y, m: (x[:, 0], y, m), "shape"),
    (lambda x, y, m: (x, y[:-1], m), "labels"),
    (lambda x, y, m: (x, y, m.half()), "fp32"),
])
def test_bad_inputs_stop_with_one_message(change, message):
    model, images, labels, eps, _, _ = linear_problem(4)
    images, labels, model = change(images, labels, model)
    with pytest.raises(AutoAttackInputError, match=message):
        evaluate_autoattack(model, images, labels, eps, 0, 4, None, "cpu")


def test_adversarial_example_outside_the_ball_is_refused(monkeypatch):
    model, images, labels, eps, _, _ = linear_problem(4)

    def too_far(self, x, y, *, batch_size, state_path=None):
        return (x + 2 * eps).clamp(0, 1), y

    monkeypatch.setattr("pyautoattack.AutoAttack.run_standard_evaluation", too_far)
    with pytest.raises(AdversarialExampleError, match="ball"):
        evaluate_autoattack(model, images, labels, eps, 0, 4, None, "cpu")


def test_model_mode_gradients_and_caller_rng_are_restored(monkeypatch):
    model, images, labels, eps, _, _ = linear_problem(4)
    seen = {}

    def identity_attack(self, x, y, *, batch_size, state_path=None):
        seen["training"] = self.model.training
        seen["requires_grad"] = [p.requires_grad for p in self.model.parameters()]
        torch.manual_seed(12345)  # pyautoattack reseeds the global RNG (autopgd_base.py)
        return x.clone(), self.model(x).argmax(1)

    monkeypatch.setattr("pyautoattack.AutoAttack.run_standard_evaluation", identity_attack)
    model.train()
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    result = evaluate_autoattack(model, images, labels, eps, 0, 4, None, "cpu")
    assert seen == {"training": False, "requires_grad": [False, False]}
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert torch.equal(torch.rand(3), expected_next)
    # The identity "attack" leaves every correctly classified point robust.
    np.testing.assert_array_equal(result.robust, result.clean)


def test_fewer_attacks_run_at_the_standard_settings_and_are_recorded_as_custom(tmp_path, counted_calls):
    """config evaluation.attacks: APGD-CE alone (the canary's) runs as in the standard version, one restart
    (pyautoattack's version 'custom' would keep the constructor's 5), and is recorded as 'custom'; on the
    linear case, where the steepest step reaches the ball's best corner, it finds the exact answer too."""
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack

    model, images, labels, eps, truth_clean, truth_robust = linear_problem(16)
    runs = counted_calls(APGDAttack, "attack_single_run")
    result = evaluate_autoattack(model, images, labels, eps, seed=0, batch_size=8, state_path=None,
                                 device="cpu", chunk_size=16, attacks=["apgd-ce"])
    # one run per batch of 8 with a correct point: the standard version's one restart (with the custom
    # version's 5, the first batch, which keeps robust points, would run 5 times: 6 runs)
    assert truth_robust[:8].any() and truth_clean[8:].any() and len(runs) == 2
    direct = AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu", seed=0)
    direct.attacks_to_run = ["apgd-ce"]
    x_adv, _ = direct.run_standard_evaluation(images, labels, batch_size=8)
    with torch.no_grad():
        np.testing.assert_array_equal(result.robust, (model(x_adv).argmax(1) == labels).numpy())
    np.testing.assert_array_equal(result.robust, truth_robust)
    np.testing.assert_array_equal(result.clean, truth_clean)
    summary = write_autoattack_outputs(result, eps, 0, "m.pt", tmp_path / "a.json", tmp_path / "a.npz",
                                       attacks=["apgd-ce"])
    assert (summary["version"], summary["attacks"]) == ("custom", ["apgd-ce"])
    assert aa.attack_version(["apgd-ce", "apgd-t", "fab-t", "square"]) == "standard"
    for wrong in (["apgd-dlr"], [], ["square", "square"]):
        with pytest.raises(aa.AutoAttackInputError, match="name some of"):
            aa.attack_version(wrong)


def test_outputs_hold_flags_and_summary(tmp_path):
    result = aa.AutoAttackResult(indices=np.arange(4), clean=np.array([1, 1, 1, 0], bool),
                                 robust=np.array([1, 0, 0, 0], bool), attack_disagreements=0, seconds=1.5)
    summary = write_autoattack_outputs(result, 8 / 255, 3, "m/model.pt", tmp_path / "a.json", tmp_path / "a.npz")
    stored = json.loads((tmp_path / "a.json").read_text())
    assert stored == summary
    assert stored["clean_accuracy"] == 75.0 and stored["robust_accuracy"] == 25.0
    assert stored["n"] == 4 and stored["eps_255"] == "8/255" and stored["version"] == "standard"
    assert stored["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]  # autoattack.py set_version
    assert stored["seed"] == 3 and stored["model"] == "m/model.pt"
    assert stored["package_versions"]["pyautoattack"] == "0.2.0"
    with np.load(tmp_path / "a.npz") as flags:
        np.testing.assert_array_equal(flags["robust"], result.robust)
        np.testing.assert_array_equal(flags["clean"], result.clean)
        np.testing.assert_array_equal(flags["indices"], np.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npz"]


def test_state_of_other_weights_or_settings_is_not_reused(tmp_path, monkeypatch):
    model, images, labels, eps, _, _ = linear_problem(8)
    calls = []

    def identity_attack(self, x, y, *, batch_size, state_path=None):
        calls.append(x.shape[0])
        return x.clone(), self.model(x).argmax(1)

    monkeypatch.setattr("pyautoattack.AutoAttack.run_standard_evaluation", identity_attack)
    state = tmp_path / "aa.npz"
    settings = dict(seed=0, batch_size=4, state_path=state, device="cpu", chunk_size=4)
    evaluate_autoattack(model, images, labels, eps, **settings)
    evaluate_autoattack(model, images, labels, eps, **settings)
    assert calls == [4, 4]  # the second call found both chunks done
    evaluate_autoattack(model, images, labels, eps * 0.5, **settings)
    assert calls == [4, 4, 4, 4]
    with torch.no_grad():
        model[1].bias.add_(1e-3)
    evaluate_autoattack(model, images, labels, eps * 0.5, **settings)
    assert calls == [4, 4, 4, 4, 4, 4]


def test_unreadable_state_stops_with_its_path(tmp_path):
    model, images, labels, eps, _, _ = linear_problem(4)
    state = tmp_path / "state.npz"
    state.write_bytes(b"not an npz")
    with pytest.raises(AutoAttackStateError, match="state.npz.*delete it"):
        evaluate_autoattack(model, images, labels, eps, 0, 4, state, "cpu")


@pytest.mark.slow
def test_wrapper_equals_pyautoattack_called_directly_and_the_exact_answer():
    from pyautoattack import AutoAttack

    model, images, labels, eps, truth_clean, truth_robust = linear_problem(16)
    result = evaluate_autoattack(model, images, labels, eps, seed=0, batch_size=8, state_path=None,
                                 device="cpu", chunk_size=16)

    direct = AutoAttack(model, norm="Linf", eps=eps, version="standard", device="cpu", seed=0)
    x_adv, _ = direct.run_standard_evaluation(images, labels, batch_size=8)
    with torch.no_grad():
        direct_robust = (model(x_adv).argmax(1) == labels).numpy()

    np.testing.assert_array_equal(result.robust, direct_robust)
    np.testing.assert_array_equal(result.robust, truth_robust)
    np.testing.assert_array_equal(result.clean, truth_clean)
    assert 0 < truth_robust.sum() < truth_clean.sum()  # the case is not trivial either way
    assert result.robust_accuracy == 100.0 * truth_robust.mean()
    assert result.attack_disagreements == 0


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
    from pyautoattack import AutoAttack

    model, images, labels, eps, truth_clean, truth_robust = linear_problem(16, seed=1)
    # Non-robust points first: APGD-CE breaks all of chunk 0 and the later attacks skip it, which
    # keeps the test short; chunk 1 holds the robust points and runs every attack.
    order = np.argsort(truth_robust, kind="stable")
    images, labels, truth_clean, truth_robust = images[order], labels[order], truth_clean[order], truth_robust[order]
    settings = dict(eps=eps, seed=0, batch_size=8, device="cpu", chunk_size=8)
    uninterrupted = evaluate_autoattack(model, images, labels, state_path=None, **settings)

    real_run = AutoAttack.run_standard_evaluation
    calls = []

    def killed_on_second_chunk(self, x, y, *, batch_size, state_path=None):
        calls.append(x.shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_run(self, x, y, batch_size=batch_size)

    state = tmp_path / "state" / "aa.npz"
    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", killed_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        evaluate_autoattack(model, images, labels, state_path=state, **settings)
    with np.load(state) as saved:
        np.testing.assert_array_equal(saved["done"], [True, False])
    assert [p.name for p in state.parent.iterdir()] == ["aa.npz"]  # no temporary left behind

    calls.clear()
    monkeypatch.setattr(AutoAttack, "run_standard_evaluation",
                        lambda self, x, y, *, batch_size, state_path=None:
                        calls.append(x.shape[0]) or real_run(self, x, y, batch_size=batch_size))
    resumed = evaluate_autoattack(model, images, labels, state_path=state, **settings)
    assert calls == [8]  # only the chunk that was not finished
    np.testing.assert_array_equal(resumed.robust, uninterrupted.robust)
    np.testing.assert_array_equal(resumed.clean, uninterrupted.clean)
    np.testing.assert_array_equal(resumed.robust, truth_robust)
    np.testing.assert_array_equal(resumed.clean, truth_clean)


@pytest.mark.slow
def test_script_evaluates_a_store_end_to_end(tmp_path):
    """scripts/evaluate_autoattack.py on a real store and a real (tiny) WRN from dra.models.

    eps = 0.5 is large enough that APGD-CE breaks every point, so the other attacks are skipped
    and the test stays fast; the JSON must agree with the per-example flags."""
    from model_fixtures import tiny_wrn_with_test_store

    tiny_wrn_with_test_store(tmp_path, 6)

    command = [sys.executable, "scripts/evaluate_autoattack.py", "--model", str(tmp_path / "model.pt"),
               "--recipe", str(tmp_path / "recipe.yaml"), "--test-store", str(tmp_path / "test"),
               "--eps", "0.5", "--n", "5", "--seed", "0", "--batch-size", "5",
               "--state", str(tmp_path / "state.npz"), "--out-json", str(tmp_path / "out" / "autoattack.json"),
               "--out-npz", str(tmp_path / "out" / "autoattack.npz"), "--threads", "1", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "auto-attack: running apgd-ce" in done.stderr  # pyautoattack's DEBUG log reaches the log
    summary = json.loads((tmp_path / "out" / "autoattack.json").read_text())
    with np.load(tmp_path / "out" / "autoattack.npz") as flags:
        assert summary["clean_accuracy"] == 100.0 * flags["clean"].mean() == 100.0
        assert summary["robust_accuracy"] == 100.0 * flags["robust"].mean()
        np.testing.assert_array_equal(flags["indices"], np.arange(5))
    assert summary["n"] == 5 and summary["eps_255"] == "127.5/255"

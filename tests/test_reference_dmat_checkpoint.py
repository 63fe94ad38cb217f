"""DM-AT checkpoints -> our WideResNet: identical logits, and refusals that name the keys.

The DM-AT side is written here from the documented layout, independently of dra.models:
- DM-AT core/models/wideresnetwithswish.py: module names (init_conv, layer.N.block.M.{batchnorm_0, conv_0,
  batchnorm_1, conv_1, shortcut}, batchnorm, logits), widths 16/16k/32k/64k, (depth-4)/6 blocks
  per group, strides 1/2/2, pre-activation blocks whose 1x1 shortcut (only when the channel
  count changes) reads the pre-activated tensor, "SAME" padding (stride 1: 1 all round;
  stride 2: 0 before, 1 after), SiLU, avg_pool(8), normalization constants outside the state dict;
- DM-AT eval-aa.py: checkpoint/<name>.pt is evaluated through 'model_state_dict';
  DM-AT's create_model wraps Sequential(WideResNet) in DataParallel, hence 'module.0.'.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dra.evaluation.autoattack import load_classifier
from dra.io import write_yaml
from dra.models import create_classifier
from dra.models.dmat_checkpoint import (
    CheckpointLayoutError,
    check_dmat_args,
    convert_dmat_checkpoint,
    convert_dmat_state_dict,
    load_dmat_state_dict,
)
from scripts import convert_dmat_checkpoint as convert_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # DM-AT wideresnetwithswish.py
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def wrn(depth: int, width: int) -> dict:
    return {"family": "wrn", "depth": depth, "width": width, "activation": "silu"}


def dmat_layout(depth: int, width: int, num_classes: int, prefix: str = "module.0.") -> dict[str, tuple]:
    """Key -> shape of DM-AT's saved WideResNet (wideresnetwithswish.py), in saving order."""
    widths = [16, 16 * width, 32 * width, 64 * width]
    shapes: dict[str, tuple] = {"init_conv.weight": (16, 3, 3, 3)}

    def batchnorm(name: str, channels: int) -> None:
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{tensor}"] = (channels,)
        shapes[f"{name}.num_batches_tracked"] = ()

    for group in range(3):
        for block in range(((depth - 4) // 6)):
            c_in, c_out = (widths[group] if block == 0 else widths[group + 1]), widths[group + 1]
            name = f"layer.{group}.block.{block}"
            batchnorm(f"{name}.batchnorm_0", c_in)
            shapes[f"{name}.conv_0.weight"] = (c_out, c_in, 3, 3)
            batchnorm(f"{name}.batchnorm_1", c_out)
            shapes[f"{name}.conv_1.weight"] = (c_out, c_out, 3, 3)
            if c_in != c_out:
                shapes[f"{name}.shortcut.weight"] = (c_out, c_in, 1, 1)
    batchnorm("batchnorm", widths[3])
    shapes["logits.weight"] = (num_classes, widths[3])
    shapes["logits.bias"] = (num_classes,)
    return {prefix + key: shape for key, shape in shapes.items()}


def random_state(layout: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    """Random float32 tensors of the layout, scaled so that activations stay O(1) through the depth."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(4321, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # batchnorm weight
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) * (1.0 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * (1.0 / shape[1]) ** 0.5
    return state


def dmat_forward(state: dict[str, torch.Tensor], x: torch.Tensor, mean, std) -> torch.Tensor:
    """DM-AT's forward (wideresnetwithswish.py) in float64, straight from its keyed state dict."""
    s = {key.removeprefix("module.0."): value.double() for key, value in state.items()}

    def bn(name, t):
        return F.batch_norm(t, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                            s[f"{name}.bias"], training=False, eps=1e-5)

    out = (x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)
    out = F.conv2d(out, s["init_conv.weight"], padding=1)
    for group in range(3):
        block = 0
        while f"layer.{group}.block.{block}.conv_0.weight" in s:
            name = f"layer.{group}.block.{block}"
            stride = 2 if group > 0 and block == 0 else 1
            pre = F.silu(bn(f"{name}.batchnorm_0", out))
            padded = F.pad(pre, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))
            h = F.conv2d(padded, s[f"{name}.conv_0.weight"], stride=stride)
            h = F.conv2d(F.silu(bn(f"{name}.batchnorm_1", h)), s[f"{name}.conv_1.weight"], padding=1)
            shortcut_key = f"{name}.shortcut.weight"
            residual = F.conv2d(pre, s[shortcut_key], stride=stride) if shortcut_key in s else out
            out = residual + h
            block += 1
    out = F.silu(bn("batchnorm", out))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), s["logits.weight"], s["logits.bias"])


def save_dmat_checkpoint(path, state, unaveraged):
    # train-wa.py's save_model: the weight-averaged model and the raw one
    torch.save({"model_state_dict": state, "unaveraged_model_state_dict": unaveraged}, path)


@pytest.mark.parametrize(
    "depth, width, num_classes, n_images",
    [(10, 1, 10, 4),  # width 1: group 0 keeps 16 channels, so no shortcut there
     (16, 2, 100, 4),
     # the released WRN-28-10's exact key names and shapes (about 5 s on one core)
     pytest.param(28, 10, 10, 1, marks=pytest.mark.slow)],
)
def test_converted_checkpoint_gives_dmat_logits(tmp_path, depth, width, num_classes, n_images):
    layout = dmat_layout(depth, width, num_classes)
    averaged, unaveraged = random_state(layout, seed=1), random_state(layout, seed=2)
    checkpoint = tmp_path / "checkpoint.pt"
    save_dmat_checkpoint(checkpoint, averaged, unaveraged)
    out = tmp_path / "model.pt"

    summary = convert_dmat_checkpoint(checkpoint, out, wrn(depth, width), num_classes, CIFAR10_MEAN, CIFAR10_STD)

    converted = torch.load(out, weights_only=True)
    assert set(converted) == {key.removeprefix("module.0.") for key in layout}
    assert summary["tensors"] == len(layout)
    model = create_classifier(wrn(depth, width), num_classes, CIFAR10_MEAN, CIFAR10_STD)
    model.load_state_dict(converted)
    model = model.double().eval()
    x = torch.rand(n_images, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ours = model(x)
        expected = dmat_forward(averaged, x, CIFAR10_MEAN, CIFAR10_STD)
    assert ours.shape == (n_images, num_classes)
    assert expected.std() > 0.1  # the logits carry signal, so agreement is not trivial
    # our model keeps mean/std as float32 constants: 1e-8 relative, far below any layout error (O(1))
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    # the weight-averaged model is the one evaluated (eval-aa.py), not the raw one
    for key, tensor in converted.items():
        torch.testing.assert_close(tensor, averaged["module.0." + key], rtol=0, atol=0)
    assert not torch.equal(converted["logits.weight"], unaveraged["module.0.logits.weight"])


def test_conversion_runs_in_the_autoattack_loader_unchanged(tmp_path):
    depth, width, num_classes = 10, 2, 10
    layout = dmat_layout(depth, width, num_classes)
    averaged = random_state(layout, seed=5)
    save_dmat_checkpoint(tmp_path / "checkpoint.pt", averaged, random_state(layout, seed=6))
    (tmp_path / "args.txt").write_text(json.dumps({"model": "wrn-10-2-swish", "data": "cifar10s", "normalize": False,
                                                   "attack_eps": 8 / 255, "tau": 0.995}))
    recipe = {"reference": {"name": "tiny", "dataset": "cifar10", "dataset_kind": "cifar10"},
              "arch": wrn(depth, width),
              "data": {"num_classes": num_classes, "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}}
    write_yaml(tmp_path / "recipe.yaml", recipe)
    model_path = tmp_path / "train" / "model.pt"

    convert_script.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--args-txt", str(tmp_path / "args.txt"),
                         "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(model_path)])

    model = load_classifier(model_path, tmp_path / "recipe.yaml", "cpu")  # what evaluate_autoattack.py runs
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), dmat_forward(averaged, x.double(), CIFAR10_MEAN, CIFAR10_STD),
                                   rtol=1e-4, atol=1e-4)
    assert not list(tmp_path.joinpath("train").glob(".tmp-*"))  # written atomically


# ------------------------------------------------------------------------------------------ refusals


@pytest.fixture
def small_checkpoint(tmp_path):
    layout = dmat_layout(10, 2, 10)
    state = random_state(layout, seed=1)
    path = tmp_path / "checkpoint.pt"
    save_dmat_checkpoint(path, state, state)
    return path, state


def test_truncated_download_is_refused_naming_the_file(tmp_path, small_checkpoint):
    path, _ = small_checkpoint
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLayoutError, match="truncated.pt is not a readable PyTorch checkpoint"):
        load_dmat_state_dict(truncated)
    with pytest.raises(CheckpointLayoutError):
        convert_dmat_checkpoint(truncated, tmp_path / "model.pt", wrn(10, 2), 10, CIFAR10_MEAN, CIFAR10_STD)
    assert not (tmp_path / "model.pt").exists()


def test_missing_keys_are_listed(small_checkpoint):
    _, state = small_checkpoint
    dropped = ("module.0.layer.2.block.0.conv_1.weight", "module.0.logits.weight", "module.0.logits.bias")
    truncated = {k: v for k, v in state.items() if k not in dropped}
    with pytest.raises(CheckpointLayoutError) as error:
        convert_dmat_state_dict(truncated, wrn(10, 2), 10, CIFAR10_MEAN, CIFAR10_STD)
    message = str(error.value)
    assert "unexpected" not in message
    assert ("missing keys (ours, expected as 'module.0.<key>') 3 "
            "(layer.2.block.0.conv_1.weight, logits.weight, logits.bias)") in message
    # a whole group missing: the count is exact, the list is cut short
    without_group = {k: v for k, v in state.items() if not k.startswith("module.0.layer.2.")}
    with pytest.raises(CheckpointLayoutError,
                       match=r"missing keys .* 13 \(layer.2.block.0.batchnorm_0.weight, .*, \.\.\.\)"):
        convert_dmat_state_dict(without_group, wrn(10, 2), 10, CIFAR10_MEAN, CIFAR10_STD)


def test_other_depth_is_refused_with_its_unexpected_keys(tmp_path):
    state = random_state(dmat_layout(16, 2, 10), seed=1)  # two blocks per group, the config says one
    with pytest.raises(CheckpointLayoutError) as error:
        convert_dmat_state_dict(state, wrn(10, 2), 10, CIFAR10_MEAN, CIFAR10_STD, source="wrn16.pt")
    message = str(error.value)
    assert message.startswith("wrn16.pt does not fit wrn-10-2-swish with 10 classes")
    assert "unexpected keys" in message and "module.0.layer.0.block.1.batchnorm_0.weight" in message
    assert "missing keys" not in message


def test_other_width_and_classes_are_refused_with_the_shapes(small_checkpoint):
    _, state = small_checkpoint  # WRN-10-2, 10 classes
    with pytest.raises(CheckpointLayoutError, match=r"logits.weight \(10, 128\) vs \(100, 128\)"):
        convert_dmat_state_dict(state, wrn(10, 2), 100, CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(CheckpointLayoutError,
                       match=r"shape mismatches \(checkpoint vs ours\) \d+ \(layer.0.block.0.conv_0.weight "
                             r"\(32, 16, 3, 3\) vs \(64, 16, 3, 3\)"):
        convert_dmat_state_dict(state, wrn(10, 4), 10, CIFAR10_MEAN, CIFAR10_STD)


def test_normalize_layout_is_refused_with_its_keys():
    # --normalize true puts a Normalization module first: the network's keys start with module.1.
    state = random_state(dmat_layout(10, 1, 10, prefix="module.1."), seed=1)
    with pytest.raises(CheckpointLayoutError) as error:
        convert_dmat_state_dict(state, wrn(10, 1), 10, CIFAR10_MEAN, CIFAR10_STD)
    message = str(error.value)
    assert "unexpected keys" in message and "module.1.init_conv.weight" in message
    assert "missing keys" in message and "init_conv.weight" in message


def test_file_without_model_state_dict_is_refused_with_its_top_level(tmp_path, small_checkpoint):
    _, state = small_checkpoint
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)  # a bare state dict, not train-wa.py's checkpoint
    with pytest.raises(CheckpointLayoutError, match="has no 'model_state_dict'.*module.0.batchnorm.bias"):
        load_dmat_state_dict(plain)


@pytest.mark.parametrize(
    "settings, problem",
    [({"model": "wrn-28-10", "data": "cifar10s", "normalize": False}, "model is 'wrn-28-10'"),  # ReLU WRN
     ({"model": "wrn-28-10-swish", "data": "cifar100s", "normalize": False}, "data is 'cifar100s'"),
     ({"model": "wrn-28-10-swish", "data": "cifar10s", "normalize": True}, "normalize is true"),
     ({"model": "wrn-28-10-swish", "data": "cifar10s"}, "lacks ['normalize']")],
)
def test_args_txt_of_another_run_is_refused(tmp_path, settings, problem):
    path = tmp_path / "args.txt"
    path.write_text(json.dumps(settings))
    with pytest.raises(CheckpointLayoutError) as error:
        check_dmat_args(path, wrn(28, 10), "cifar10")
    assert problem in str(error.value) and str(path) in str(error.value)


def test_args_txt_of_the_release_layout_passes(tmp_path):
    path = tmp_path / "args.txt"
    path.write_text(json.dumps({"model": "wrn-70-16-swish", "data": "cifar100s", "normalize": False, "beta": 5.0}))
    assert check_dmat_args(path, wrn(70, 16), "cifar100")["beta"] == 5.0

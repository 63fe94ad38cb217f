"""The ablations of Section 5.6: the noisy-input discriminative target and the fine-tuned EDM encoder."""

import copy

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from dra import config as cfg
from dra.analysis.tables import NO_PAPER_VALUE, build_table
from dra.data.digits import prepare_digits
from dra.data.store import open_feature_store
from dra.diffusion.checkpoint import load_edm, save_edm
from dra.diffusion.edm import EDMPrecond
from dra.diffusion.features import DiffusionFeatureExtractor, extract_feature_store
from dra.diffusion.noisy_classifier import train_noisy_classifier
from dra.diffusion.train import MINI_EDM_KWARGS
from dra.models import create_classifier
from dra.models.edm_encoder import EDMEncoder, EDMEncoderError

torch.set_num_threads(1)
LAYER = "model.dec.4x4_in1"   # the mini EDM's bottleneck (config/mini.yaml)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    prepare_digits(root / "train", root / "test")
    return root


@pytest.fixture(scope="module")
def diffusion_files(tmp_path_factory):
    """A mini EDM with perturbed (non-initial) weights, saved as the workflow saves diffusion models."""
    root = tmp_path_factory.mktemp("edm")
    torch.manual_seed(0)
    net = EDMPrecond(**MINI_EDM_KWARGS)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_edm(net, MINI_EDM_KWARGS, root / "model.safetensors", root / "model.json")
    return root / "model.safetensors", root / "model.json"


@pytest.fixture(scope="module")
def noisy_classifier(digits, diffusion_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy")
    summary = train_noisy_classifier(digits / "train", diffusion_files[1], LAYER, 0.06, steps=80, batch_size=64,
                                     lr=2e-3, out_weights=out / "model.safetensors", out_network=out / "model.json",
                                     out_loss=out / "loss.csv", out_metrics=out / "metrics.json",
                                     augment={"crop_padding": 1, "hflip": False, "rotate_degrees": 0},
                                     test_store=digits / "test", seed=1)
    return out, summary


def test_noisy_classifier_learns_digits_and_saves_an_unconditional_edm(noisy_classifier):
    out, summary = noisy_classifier
    # cross-entropy starts near ln(10) = 2.30 and falls; 10 classes, so chance accuracy is 0.1
    assert summary["loss_first"] > 1.8
    assert summary["loss_last"] < 0.5 * summary["loss_first"]
    assert summary["test_accuracy"] > 0.6 and summary["test_n"] == 500
    net = load_edm(out / "model.safetensors", out / "model.json")   # loads strictly as an EDMPrecond
    assert net.label_dim == 0 and net.model.map_label is None   # the label is predicted, never an input


def test_noisy_classifier_keeps_the_blocks_it_trained_and_only_those(noisy_classifier, diffusion_files):
    out, _ = noisy_classifier
    trained = load_file(str(out / "model.safetensors"))
    torch.manual_seed(1)   # the classifier's seed: the untrained blocks keep this initialisation
    initial = EDMPrecond(**dict(MINI_EDM_KWARGS, label_dim=0)).state_dict()
    encoder_names = set(EDMEncoder(EDMPrecond(**dict(MINI_EDM_KWARGS, label_dim=0)), LAYER).net.state_dict())
    later = [name for name in initial if name not in encoder_names]
    assert later and all(torch.equal(trained[name], initial[name]) for name in later)
    moved = [name for name in encoder_names
             if name.endswith("weight") and not torch.equal(trained[name], initial[name])]
    assert len(moved) > 0.9 * len([n for n in encoder_names if n.endswith("weight")])


def test_noisy_feature_store_has_the_layer_width_and_is_deterministic(noisy_classifier, digits, tmp_path):
    out, _ = noisy_classifier
    net = load_edm(out / "model.safetensors", out / "model.json")
    stores = [extract_feature_store(net, digits / "test", tmp_path / f"f{k}", LAYER, 0.06, views=1, batch_size=128,
                                    seed=1) for k in range(2)]
    first, second = (open_feature_store(path) for path in stores)
    # the mini U-Net's bottleneck has model_channels * channel_mult[-1] = 16 * 2 channels
    assert first.features.shape == (500, 1, 32) and first.features.dtype == np.float16
    np.testing.assert_array_equal(first.features, second.features)
    assert first.meta["layer"] == LAYER and first.meta["sigma"] == 0.06


def test_encoder_equals_the_hooked_feature_of_the_full_network(diffusion_files):
    net = load_edm(*diffusion_files)
    extractor = DiffusionFeatureExtractor(net, LAYER, sigma=0.1, seed=4, use_labels=False)
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    sigmas, noise = extractor.noise(range(6), 0, images.shape[1:])
    encoder = EDMEncoder(copy.deepcopy(net), LAYER)
    with torch.no_grad():
        expected = extractor(images, None, range(6), 0)
        got = encoder(images * 2 - 1 + sigmas[:, None, None, None] * noise, 0.1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert "8x8_block0" not in encoder.net.model.dec and "4x4_in1" in encoder.net.model.dec


def edm_arch(diffusion_files, weights=True):
    arch = {"family": "edm_encoder", "network": str(diffusion_files[1]), "layer": LAYER, "sigma": 0.06,
            "noise_seed": 1}
    if weights:
        arch["weights"] = str(diffusion_files[0])
    return arch


def test_edm_encoder_classifier_loads_the_diffusion_weights_by_name(diffusion_files):
    model = create_classifier(edm_arch(diffusion_files), 10, [0.5] * 3, [0.25] * 3)
    checkpoint = load_file(str(diffusion_files[0]))
    own = model.encoder.net.state_dict()
    assert len(own) > 40 and all(torch.equal(tensor, checkpoint[name]) for name, tensor in own.items())
    assert model.feature_dim == 32
    fresh = create_classifier(edm_arch(diffusion_files, weights=False), 10, [0.5] * 3, [0.25] * 3)
    assert not torch.equal(fresh.encoder.net.model.enc["8x8_conv"].weight, own["model.enc.8x8_conv.weight"])
    other = dict(checkpoint)
    other["model.enc.8x8_conv.weight"] = other["model.enc.8x8_conv.weight"][:8]
    from dra.models.edm_encoder import load_encoder_weights
    with pytest.raises(EDMEncoderError, match="model.enc.8x8_conv.weight"):
        load_encoder_weights(model.encoder, other, "a checkpoint of another network")


def test_edm_encoder_classifier_is_deterministic_per_image_in_eval_mode(diffusion_files):
    model = create_classifier(edm_arch(diffusion_files), 10, [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        alone = model(x[:3])
        in_a_larger_batch = model(torch.cat([x[5:], x[:3], x[3:5]]))[3:6]
        reordered = model(x[[2, 1, 0]])
        torch.testing.assert_close(in_a_larger_batch, alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reordered, alone[[2, 1, 0]], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x[:3]), alone, rtol=0, atol=0)
        # the fixed noise is saved with the weights, so a reloaded model evaluates identically
        reloaded = create_classifier(edm_arch(diffusion_files, weights=False), 10, [0.5] * 3, [0.25] * 3).eval()
        reloaded.load_state_dict(model.state_dict())
        torch.testing.assert_close(reloaded(x[:3]), alone, rtol=0, atol=0)
        # training mode draws fresh noise per forward
        model.train()
        assert not torch.allclose(model(x[:3]), model(x[:3]))


def test_gradients_flow_into_the_encoder_and_the_image(diffusion_files):
    model = create_classifier(edm_arch(diffusion_files), 10, [0.5] * 3, [0.25] * 3).train()
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    logits, features = model.forward_features(x)
    assert features.shape == (4, 32)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert x.grad.abs().sum() > 0
    without_gradient = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the label embedding sees the all-zero label vector (the unconditional mode), so only its bias learns
    assert without_gradient == ["encoder.net.model.map_label.weight"]


def test_ablation_methods_resolve_to_their_targets_and_files():
    paper = yaml.safe_load(open("config.yaml"))
    cfg.validate_config(paper)
    noisy = cfg.resolve_recipe(paper, cfg.parse_cell("cifar10/wrn-28-10/dm-at+dra-noisy/syn1m-bs512-ep400"))
    assert noisy["dra"]["features"]["real"] == "results/paper/cifar10/features/noisy-cifar10/train-v1"
    assert noisy["dra"]["diffusion"]["checkpoint"] == "resources/diffusion/noisy-cifar10/model.safetensors"
    # the same layer and noise as the diffusion target it replaces (Appendix D: bottleneck, sigma 0.1)
    assert (noisy["dra"]["diffusion"]["layer"], noisy["dra"]["diffusion"]["sigma"]) == ("model.dec.8x8_in1", 0.1)
    encoder = cfg.resolve_recipe(paper, cfg.parse_cell("cifar10/edm-encoder/at/nosyn-bs128-ep200"))
    assert encoder["arch"]["weights"] == "resources/diffusion/edm-cifar10-cond/model.safetensors"
    assert encoder["arch"]["network"] == "resources/diffusion/edm-cifar10-cond/model.json"
    broken = copy.deepcopy(paper)
    # the layer and sigma live once, in the diffusion model's entry: a copy of them is refused
    broken["diffusion_models"]["noisy-cifar10"]["feature"] = {"layer": "model.dec.8x8_in1", "sigma": 0.2}
    with pytest.raises(cfg.ConfigError, match="diffusion_models.noisy-cifar10.feature: a noisy classifier has none"):
        cfg.validate_config(broken)
    orphan = copy.deepcopy(paper)
    del orphan["diffusion_models"]["noisy-cifar10"]
    with pytest.raises(cfg.ConfigError, match="dra_target: noisy_classifier on dataset 'cifar10'"):
        cfg.validate_config(orphan)


def test_a_row_with_only_a_robust_paper_number(tmp_path):
    row = {"cell": "cifar10/wrn-28-10/dm-at+dra-noisy/syn1m-bs512-ep400", "paper": {"clean": None, "autoattack": 62.62}}
    cell = tmp_path / row["cell"]
    cell.mkdir(parents=True)
    (cell / "autoattack.json").write_text('{"clean_accuracy": 91.0, "robust_accuracy": 62.0, "n": 10000}')
    frame = build_table([row], tmp_path, "accuracy")
    record = frame.iloc[0].to_dict()
    clean_columns = [c for c in frame.columns if "clean" in c.lower()]
    assert record[[c for c in clean_columns if c.startswith("Paper")][0]] == NO_PAPER_VALUE
    assert record[[c for c in clean_columns if c.startswith("Diff")][0]] == NO_PAPER_VALUE
    robust_diff = [c for c in frame.columns if c.startswith("Diff") and c not in clean_columns][0]
    assert record[robust_diff] == pytest.approx(62.0 - 62.62)

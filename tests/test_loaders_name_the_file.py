"""A truncated, empty or foreign file given to a loader stops with a message naming that file and
what to do, not with a bare SafetensorError, UnpicklingError, EOFError or OSError."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from dra.analysis.figures import FigureInputError, load_representation
from dra.diffusion.checkpoint import CheckpointFormatError, edm_from_json, edm_init_kwargs, load_edm, save_edm
from dra.diffusion.edm import EDMPrecond
from dra.evaluation.autoattack import AutoAttackInputError, load_classifier
from dra.io import write_yaml
from dra.models import create_classifier
from dra.diffusion.noisy_classifier import noisy_classifier_kwargs
from dra.models.dmat_checkpoint import CheckpointLayoutError, load_dmat_state_dict
from dra.models.edm_encoder import create_edm_encoder_classifier

TINY_EDM = dict(img_resolution=8, img_channels=3, label_dim=3, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                sigma_data=0.5, model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4], dropout=0.0, augment_dim=0, embedding_type="positional",
                channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])


def _cut(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_load_edm_names_a_truncated_safetensors_file(tmp_path):
    weights, network = tmp_path / "model.safetensors", tmp_path / "model.json"
    save_edm(EDMPrecond(**TINY_EDM), TINY_EDM, weights, network)
    load_edm(weights, network)
    _cut(weights)
    with pytest.raises(CheckpointFormatError, match=f"{weights} is not a readable safetensors file"):
        load_edm(weights, network)
    network.write_text("{not json")
    with pytest.raises(CheckpointFormatError, match=f"{network} is not JSON"):
        load_edm(weights, network)



def test_the_network_json_readers_share_one_loader_that_names_a_foreign_file(tmp_path):
    weights, network = tmp_path / "model.safetensors", tmp_path / "model.json"
    save_edm(EDMPrecond(**TINY_EDM), TINY_EDM, weights, network)
    assert '"sigma_max": "inf"' in network.read_text()  # JSON has no infinity; the loader decodes it
    assert edm_init_kwargs(network) == TINY_EDM
    assert edm_init_kwargs(json.loads(network.read_text())) == TINY_EDM  # the content, as an export carries it
    built = edm_from_json(network).state_dict()
    loaded = load_edm(weights, network).state_dict()
    assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in loaded.items()}
    assert noisy_classifier_kwargs(network) == {**TINY_EDM, "label_dim": 0}
    arch = {"family": "edm_encoder", "network": str(network), "layer": "model.enc.4x4_block0", "sigma": 0.5}
    assert create_edm_encoder_classifier(arch, 3).encoder.net.sigma_max == float("inf")
    network.write_text('{"class_name": "LightningDiT", "init_kwargs": {}}')
    for read in (edm_from_json, noisy_classifier_kwargs, lambda path: create_edm_encoder_classifier(arch, 3)):
        with pytest.raises(CheckpointFormatError, match=f"{network}: expected {{'class_name': 'EDMPrecond'"):
            read(network)
    with pytest.raises(CheckpointFormatError, match="arch.network: expected"):
        create_edm_encoder_classifier({**arch, "network": json.loads(network.read_text())}, 3)

@pytest.fixture
def classifier_files(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    write_yaml(recipe, {"arch": {"family": "wrn", "depth": 10, "width": 1, "activation": "relu"},
                        "data": {"num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3}})
    model = tmp_path / "model.pt"  # as train_cell writes it: a plain state dict
    net = create_classifier({"family": "wrn", "depth": 10, "width": 1, "activation": "relu"}, 10, [0.5] * 3, [0.25] * 3)
    torch.save(net.state_dict(), model)
    return model, recipe


@pytest.mark.parametrize("damage", ["truncated zip", "empty", "garbage", "a directory", "another arch"])
def test_autoattack_classifier_loader_names_the_file(classifier_files, damage):
    model, recipe = classifier_files
    load_classifier(model, recipe, "cpu")
    if damage == "truncated zip":
        _cut(model)
    elif damage == "empty":
        model.write_bytes(b"")  # torch.load raises an EOFError with no text
    elif damage == "garbage":
        model.write_bytes(b"not a pickle at all")
    elif damage == "a directory":
        model.unlink()
        model.mkdir()
    else:
        torch.save({"fc.weight": torch.zeros(3, 3)}, model)
    with pytest.raises(AutoAttackInputError) as raised:
        load_classifier(model, recipe, "cpu")
    assert str(model) in str(raised.value)
    assert ("delete it and rerun" in str(raised.value)) or ("different cells" in str(raised.value))


def test_dmat_checkpoint_loader_names_a_truncated_zip(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model_state_dict": {"module.conv.weight": torch.arange(5000.0)}}, path)
    assert set(load_dmat_state_dict(path)) == {"module.conv.weight"}
    _cut(path, 0.9)
    with pytest.raises(CheckpointLayoutError, match=f"{path} is not a readable PyTorch checkpoint"):
        load_dmat_state_dict(path)


def test_representation_loader_names_a_truncated_npz(tmp_path):
    path = tmp_path / "representation.npz"
    buffer = io.BytesIO()
    np.savez(buffer, clean_features=np.zeros((4, 3)))
    path.write_bytes(buffer.getvalue()[:-30])
    with pytest.raises(FigureInputError, match=f"{path} is not a readable representation npz"):
        load_representation(path)
    path.write_bytes(b"<html>")
    with pytest.raises(FigureInputError, match=str(path)):
        load_representation(path)
    assert not zipfile.is_zipfile(path)

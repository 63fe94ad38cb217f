"""LightningDiT representations (paper Appendix D): layer, time convention, channel zeroing before
the AdaLN modulation, seeded noise, and the resumable feature store."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dra.data.imagenet_loader import ImageStoreDataset
from dra.data.store import ImageStoreWriter, open_feature_store
from dra.diffusion.lightningdit import LightningDiT
from dra.diffusion.lightningdit_features import LightningDiTFeatureExtractor, extract_lightningdit_feature_store
from dra.diffusion.vavae import VAVAE, LatentStats

torch.set_num_threads(1)

TINY_DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=4, num_heads=4, num_classes=10)
TINY_VAE = dict(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16)
ZERO = (3, 7)


def randomized(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # away from adaLN-Zero so every block and modulation matters
        for p in module.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return module.eval()


@pytest.fixture(scope="module")
def parts():
    dit, vae = randomized(LightningDiT(**TINY_DIT), 0), randomized(VAVAE(**TINY_VAE), 1)
    stats = LatentStats(torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1))
    return dit, vae, stats


def images(n, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_paper_settings_are_in_config():
    # paper Appendix D: layer 14 (of 28), t = 0.8, channels 1053 and 259.
    config = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    feature = config["diffusion_models"]["lightningdit-xl"]["feature"]
    assert (feature["layer"], feature["t"], tuple(sorted(feature["zero_channels"]))) == (14, 0.8, (259, 1053))


@torch.no_grad()
def test_channels_are_zero_where_the_modulation_reads_them_and_nowhere_else(parts):
    dit, vae, stats = parts
    layer = 2
    extractor = LightningDiTFeatureExtractor(dit, vae, stats, layer=layer, t=0.8, zero_channels=ZERO)
    seen = {}
    hooks = [dit.blocks[layer - 1].register_forward_hook(lambda m, i, o: seen.__setitem__("stream", o)),
             dit.blocks[layer].modulate_msa.register_forward_hook(
                 lambda m, i, o: seen.update(norm_in=i[0], shift=i[1], scale=i[2]))]
    try:
        feats = extractor(images(3), torch.tensor([1, 2, 3]), [0, 1, 2])
    finally:
        for hook in hooks:
            hook.remove()
    stream, normed = seen["stream"], seen["norm_in"]
    assert torch.count_nonzero(normed[..., list(ZERO)]) == 0
    others = [c for c in range(64) if c not in ZERO]
    assert torch.all(normed[..., others] != 0)
    assert torch.all(stream[..., list(ZERO)] != 0)  # the residual stream itself is untouched

    # float64 reference: zero -> RMSNorm (weight) -> (1 + scale) x + shift -> mean over tokens
    h = stream.double().clone()
    h[..., list(ZERO)] = 0
    weight = dit.blocks[layer].norm1.weight.double()
    reference_norm = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    torch.testing.assert_close(normed.double(), reference_norm, rtol=1e-5, atol=1e-6)
    modulated = reference_norm * (1 + seen["scale"].double()[:, None]) + seen["shift"].double()[:, None]
    torch.testing.assert_close(feats.double(), modulated.mean(1), rtol=1e-5, atol=1e-6)
    # zeroed channels carry exactly the shift; zeroing before the norm rescales all other channels
    torch.testing.assert_close(feats[:, list(ZERO)], seen["shift"][:, list(ZERO)])
    plain = LightningDiTFeatureExtractor(dit, vae, stats, layer=layer, t=0.8, zero_channels=())
    assert not torch.allclose(plain(images(3), torch.tensor([1, 2, 3]), [0, 1, 2])[:, others], feats[:, others])


@torch.no_grad()
def test_time_convention_t1_clean_t0_noise(parts):
    dit, vae, stats = parts
    n = 64
    seen = {}
    hooks = [dit.x_embedder.register_forward_pre_hook(lambda m, i: seen.__setitem__("x_t", i[0])),
             dit.t_embedder.register_forward_pre_hook(lambda m, i: seen.__setitem__("t", i[0]))]
    try:
        corr = {}
        for t in (0.0, 0.8, 1.0):
            extractor = LightningDiTFeatureExtractor(dit, vae, stats, layer=1, t=t, zero_channels=())
            extractor(images(n), torch.zeros(n, dtype=torch.long), range(n))
            posterior, _ = extractor.noise(range(n))
            z = extractor.clean_latents(images(n), posterior)
            z = (z - z.mean()) / z.std()
            x_t = seen["x_t"]
            corr[t] = float(torch.corrcoef(torch.stack([x_t.flatten(), z.flatten()]))[0, 1])
            assert torch.all(seen["t"] == t)  # the model sees the time itself
    finally:
        for hook in hooks:
            hook.remove()
    # x_t = t z + (1 - t) n (LightningDiT transport/path.py): for standardized z, corr = t / sqrt(t^2 + (1 - t)^2)
    assert corr[1.0] == pytest.approx(1.0, abs=1e-6)
    assert corr[0.8] == pytest.approx(0.8 / np.hypot(0.8, 0.2), abs=0.03) and corr[0.8] > 0.9
    assert abs(corr[0.0]) < 0.05


@torch.no_grad()
def test_features_are_deterministic_per_image_index(parts):
    dit, vae, stats = parts
    extractor = LightningDiTFeatureExtractor(dit, vae, stats, layer=2, t=0.8, zero_channels=ZERO, seed=5)
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    batch = extractor(x, y, [10, 11, 12, 13])
    alone = torch.cat([extractor(x[i:i + 1], y[i:i + 1], [10 + i]) for i in (3, 2, 1, 0)][::-1])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
    assert batch.shape == (4, 64) and batch.dtype == torch.float32
    assert not torch.allclose(extractor(x, y, [20, 21, 22, 23]), batch)  # the noise belongs to the index
    other_seed = LightningDiTFeatureExtractor(dit, vae, stats, layer=2, t=0.8, zero_channels=ZERO, seed=6)
    assert not torch.allclose(other_seed(x, y, [10, 11, 12, 13]), batch)
    mean_posterior = LightningDiTFeatureExtractor(dit, vae, stats, layer=2, t=0.8, zero_channels=ZERO,
                                                  sample_posterior=False)
    assert not torch.allclose(mean_posterior(x, y, [10, 11, 12, 13]), extractor(x, y, [10, 11, 12, 13]))


def test_bad_settings_are_refused(parts):
    dit, vae, stats = parts
    with pytest.raises(ValueError, match=r"layer must be in \[0, 4\)"):
        LightningDiTFeatureExtractor(dit, vae, stats, layer=4, t=0.8, zero_channels=())
    with pytest.raises(ValueError, match="outside"):
        LightningDiTFeatureExtractor(dit, vae, stats, layer=1, t=0.8, zero_channels=(1053,))
    with pytest.raises(ValueError, match="do not fit"):
        LightningDiTFeatureExtractor(dit, VAVAE(**dict(TINY_VAE, embed_dim=8)), stats, layer=1, t=0.8, zero_channels=())
    extractor = LightningDiTFeatureExtractor(dit, vae, stats, layer=1, t=0.8, zero_channels=())
    with pytest.raises(ValueError, match="labels"):
        extractor(images(1), None, [0])


def write_store(path, n):
    rng = np.random.default_rng(0)
    with ImageStoreWriter(path, n, 16, 16, 10, meta={"source": "test"}) as writer:
        writer.write(0, rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), np.arange(n) % 10)
    return path


def store_images(dataset):
    return torch.from_numpy(np.array(dataset.store.images)).permute(0, 3, 1, 2).float() / 255


def test_feature_store_matches_the_extractor_and_resumes(parts, tmp_path, counted_calls):
    dit, vae, stats = parts
    store = write_store(tmp_path / "images", 5)
    extractor = LightningDiTFeatureExtractor(dit, vae, stats, layer=2, t=0.8, zero_channels=ZERO)
    dataset = ImageStoreDataset(store)
    counted_calls(LightningDiTFeatureExtractor, "__call__", killed_at=2)
    out = tmp_path / "features"
    with pytest.raises(KeyboardInterrupt):
        extract_lightningdit_feature_store(extractor, dataset, out, "images", batch_size=2, num_workers=0,
                                           shard_size=2)
    assert not out.exists() and len(list((tmp_path / "features.state").glob("shard_*"))) == 1
    calls = counted_calls(LightningDiTFeatureExtractor, "__call__")
    extract_lightningdit_feature_store(extractor, dataset, out, "images", batch_size=2, num_workers=0, shard_size=2)
    assert len(calls) == 2  # shards 1 and 2 only; shard 0 came from the state folder
    got = open_feature_store(out)
    assert got.features.shape == (5, 1, 64) and got.features.dtype == np.float16
    assert got.meta["layer"] == 2 and got.meta["t"] == 0.8 and got.meta["zero_channels"] == list(ZERO)
    with torch.no_grad():
        direct = extractor(store_images(dataset), torch.from_numpy(np.array(dataset.store.labels)), range(5))
    np.testing.assert_allclose(got.features[:, 0].astype(np.float32), direct.numpy(), rtol=2e-3, atol=2e-3)
    assert not (tmp_path / "features.state").exists()


def test_script_extracts_from_checkpoints(parts, tmp_path):
    from scripts.extract_imagenet_features import main

    dit, vae, stats = parts
    torch.save({"ema": dit.state_dict()}, tmp_path / "dit.pt")
    torch.save({"state_dict": vae.state_dict()}, tmp_path / "vae.pt")
    torch.save({"mean": stats.mean, "std": stats.std}, tmp_path / "stats.pt")
    store = write_store(tmp_path / "images", 3)
    main(["--dit", str(tmp_path / "dit.pt"), "--vae", str(tmp_path / "vae.pt"), "--latent-stats",
          str(tmp_path / "stats.pt"), "--images", str(store), "--out", str(tmp_path / "f"), "--layer", "2",
          "--t", "0.8", "--zero-channels", "3", "7", "--workers", "0", "--batch-size", "2",
          "--dit-config", json.dumps(TINY_DIT),
          "--vae-config", json.dumps(TINY_VAE)])
    got = open_feature_store(tmp_path / "f")
    assert got.features.shape == (3, 1, 64) and got.meta["diffusion_model"] == str(tmp_path / "dit.pt")
    with torch.no_grad():
        direct = LightningDiTFeatureExtractor(dit, vae, stats, layer=2, t=0.8, zero_channels=ZERO)(
            store_images(ImageStoreDataset(store)), torch.arange(3) % 10, range(3))
    np.testing.assert_allclose(got.features[:, 0].astype(np.float32), direct.numpy(), rtol=2e-3, atol=2e-3)


@torch.no_grad()
def test_bf16_autocast_stays_close_to_float32(parts):
    dit, vae, stats = parts
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    full = LightningDiTFeatureExtractor(dit, vae, stats, layer=2, t=0.8, zero_channels=ZERO)(x, y, range(4))
    half = LightningDiTFeatureExtractor(dit, vae, stats, layer=2, t=0.8, zero_channels=ZERO, bf16=True)(x, y, range(4))
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    assert float(torch.corrcoef(torch.stack([full.flatten(), half.flatten()]))[0, 1]) > 0.99

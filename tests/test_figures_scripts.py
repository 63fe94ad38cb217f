"""Every figure script, run on a results folder of tiny models built here: each writes a non-empty
PNG and PDF and a CSV whose numbers come from its inputs."""


import numpy as np
import pandas as pd
import pytest
import torch

from dra.analysis.figures import alignment_uniformity, fold_spectrum, held_out_sae_loss, load_representation
from dra.data.store import ImageStoreWriter
from dra.diffusion.checkpoint import save_edm
from dra.diffusion.edm import EDMPrecond
from dra.io import write_json, write_yaml
from dra.models import create_classifier
from scripts import (
    figure_1_9,
    figure_3,
    figure_6,
    figure_8,
    figure_10,
    figure_alignment_uniformity,
    figure_diffusion_representation,
    figure_representation,
)

torch.set_num_threads(1)
ARCH = {"family": "wrn", "depth": 10, "width": 1, "activation": "silu"}
DATA = {"num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3}
EDM = dict(img_resolution=8, img_channels=3, label_dim=10, model_channels=8, channel_mult=[1, 2], num_blocks=1,
           attn_resolutions=[4], dropout=0.0)
# method -> (DRA lambda or None, clean %, robust %) written to the fixture's recipe and autoattack.json
MODELS = {"st": (None, 95.0, 1.0), "at": (None, 80.0, 40.0), "dm-at": (None, 85.0, 45.0),
          "dm-at+dra-lambda0.4": (0.4, 86.0, 46.0), "dm-at+dra": (1.2, 87.0, 47.5),
          "dm-at+dra-lambda2.0": (2.0, 84.0, 46.5)}


def cell(method):
    return f"toy/wrn-10-1/{method}/nosyn-bs8-ep1"


def write_store(path, n, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    # brightness grows with the class, so the classes are not pure noise for the probe
    images = np.clip(labels[:, None, None, None] * 20 + rng.integers(0, 60, (n, 8, 8, 3)), 0, 255).astype(np.uint8)
    with ImageStoreWriter(path, n=n, height=8, width=8, num_classes=10) as writer:
        writer.write(0, images, labels.astype(np.int64))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    write_store(root / "data" / "train", 40, 0)
    write_store(root / "data" / "test", 30, 1)
    results = root / "results"
    for index, (method, (lam, clean, robust)) in enumerate(MODELS.items()):
        folder = results / cell(method)
        (folder / "train").mkdir(parents=True)
        torch.manual_seed(index)
        torch.save(create_classifier(ARCH, 10, DATA["mean"], DATA["std"]).state_dict(), folder / "train" / "model.pt")
        write_yaml(folder / "recipe.yaml", {"arch": ARCH, "data": DATA, "dra": {"lambda": lam} if lam else None})
        write_json(folder / "autoattack.json", {"clean_accuracy": clean, "robust_accuracy": robust})
    torch.manual_seed(0)
    save_edm(EDMPrecond(**EDM).eval(), EDM, root / "edm.safetensors", root / "edm.json")
    for method in ("st", "at", "dm-at", "dm-at+dra"):
        folder = results / cell(method)
        figure_representation.main(
            ["--model", str(folder / "train" / "model.pt"), "--recipe", str(folder / "recipe.yaml"),
             "--test-store", str(root / "data" / "test"), "--n", "30", "--eps-255", "0", "8", "16",
             "--attack-eps-255", "16", "--steps", "3", "--step-factor", "2.5", "--batch-size", "16",
             "--device", "cpu", "--out", str(folder / "representation.npz")])
    figure_diffusion_representation.main(
        ["--weights", str(root / "edm.safetensors"), "--network", str(root / "edm.json"),
         "--train-store", str(root / "data" / "train"), "--test-store", str(root / "data" / "test"),
         "--layer", "model.dec.4x4_in1", "--sigma", "0.1", "--train-n", "40", "--n", "30",
         "--eps-255", "0", "8", "16", "--attack-eps-255", "16", "--steps", "3", "--step-factor", "2.5",
         "--batch-size", "16",
         "--device", "cpu", "--out", str(root / "dr.npz")])
    return root


def outputs(folder, name):
    return {suffix: folder / f"{name}.{suffix}" for suffix in ("png", "pdf", "csv")}


def flags(paths):
    return ["--out-png", str(paths["png"]), "--out-pdf", str(paths["pdf"]), "--out-csv", str(paths["csv"])]


def assert_drawn(paths):
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000
    assert paths["pdf"].read_bytes()[:4] == b"%PDF"


def test_representations_hold_the_measured_arrays(results):
    record = load_representation(results / "results" / cell("at") / "representation.npz")
    assert record["clean_features"].shape == record["adversarial_features"].shape == (30, 64)  # WRN-10-1: D = 64
    assert list(record["eps"] * 255) == pytest.approx([0, 8, 16])
    assert record["robust_accuracy"][0] == record["clean_accuracy"]
    assert record["perturbation_spectrum"].shape == record["gradient_spectrum"].shape == (8, 8)
    dr = load_representation(results / "dr.npz")
    assert dr["clean_features"].shape == (30, 16)  # the 4x4 bottleneck has 2 x 8 channels
    assert dr["robust_accuracy"][0] == dr["clean_accuracy"]


def test_figure3(results):
    paths = outputs(results / "out", "figure3")
    figure_3.main(["--results-root", str(results / "results"), "--standard", cell("st"), "--adversarial", cell("at"),
                   "--diffusion", str(results / "dr.npz"), *flags(paths)])
    assert_drawn(paths)
    table = pd.read_csv(paths["csv"])
    assert sorted(table["model"].unique()) == ["AT", "DR", "ST"] and len(table) == 9
    st = load_representation(results / "results" / cell("st") / "representation.npz")
    np.testing.assert_allclose(table.query("model == 'ST'")["robust_accuracy"], st["robust_accuracy"])


def test_figures4_and_5(results):
    four = outputs(results / "out", "figure4")
    figure_alignment_uniformity.main(["--results-root", str(results / "results"), "--models", cell("st"), cell("at"),
                                      "--diffusion", str(results / "dr.npz"), *flags(four)])
    assert_drawn(four)
    assert list(pd.read_csv(four["csv"])["label"]) == ["st", "at", "DR"]
    five = outputs(results / "out", "figure5")
    models = [cell("at"), cell("dm-at"), cell("dm-at+dra")]
    figure_alignment_uniformity.main(["--results-root", str(results / "results"), "--models", *models,
                                      "--with-accuracy", *flags(five)])
    assert_drawn(five)
    table = pd.read_csv(five["csv"]).set_index("model")
    expected = alignment_uniformity(load_representation(results / "results" / cell("dm-at") / "representation.npz"))
    assert table.loc[cell("dm-at"), "alignment"] == pytest.approx(expected["alignment"])
    assert table.loc[cell("dm-at"), "uniformity"] == pytest.approx(expected["uniformity"])
    assert table.loc[cell("dm-at+dra"), "label"] == "dm-at+dra (87.0/47.5)"


def test_figure6(results):
    paths = outputs(results / "out", "figure6")
    figure_6.main(["--results-root", str(results / "results"), "--models", cell("at"), cell("dm-at+dra"),
                   "--k", "2", "8", "--latents-per-dim", "2", "--steps", "20", "--batch-size", "8", "--lr", "1e-3",
                   *flags(paths)])
    assert_drawn(paths)
    table = pd.read_csv(paths["csv"])
    assert len(table) == 4 and set(table["k"]) == {2, 8} and (table["latents"] == 128).all()
    # the script's number is the held-out loss of a seeded SAE on the model's clean features
    features = load_representation(results / "results" / cell("at") / "representation.npz")["clean_features"]
    expected = held_out_sae_loss(features, 2, latents=128, steps=20, batch_size=8, lr=1e-3, seed=0)
    assert table.query("k == 2")["normalized_mse"].iloc[0] == pytest.approx(expected, rel=1e-6)
    assert (table["normalized_mse"] > 0).all()


def test_figure8_reads_lambda_from_the_recipes(results):
    paths = outputs(results / "out", "figure8")
    swept = ["dm-at+dra-lambda2.0", "dm-at+dra", "dm-at+dra-lambda0.4"]
    figure_8.main(["--results-root", str(results / "results"), "--baseline", cell("dm-at"),
                   "--models", *[cell(m) for m in swept], *flags(paths)])
    assert_drawn(paths)
    table = pd.read_csv(paths["csv"])
    assert list(table["lambda"]) == [0.4, 1.2, 2.0, 0.0]  # sorted sweep, then the baseline
    assert list(table["robust"]) == [46.0, 47.5, 46.5, 45.0]
    assert list(table["clean"]) == [86.0, 87.0, 84.0, 85.0]


def test_figure8_draws_the_spread_of_replicates(results):
    # a second seed of the lambda-1.2 cell and of the baseline: mean and sd over the two seeds
    for method, clean, robust in (("dm-at+dra", 89.0, 49.5), ("dm-at", 84.0, 44.0)):
        folder = results / "results" / f"{cell(method)}-seed2"
        folder.mkdir(parents=True, exist_ok=True)
        write_yaml(folder / "recipe.yaml", {"arch": ARCH, "data": DATA,
                                            "dra": {"lambda": 1.2} if method == "dm-at+dra" else None})
        write_json(folder / "autoattack.json", {"clean_accuracy": clean, "robust_accuracy": robust})
    paths = outputs(results / "out", "figure8-replicates")
    figure_8.main(["--results-root", str(results / "results"), "--baseline", f"{cell('dm-at')},{cell('dm-at')}-seed2",
                   "--models", cell("dm-at+dra-lambda0.4"), f"{cell('dm-at+dra')},{cell('dm-at+dra')}-seed2",
                   *flags(paths)])
    assert_drawn(paths)
    table = pd.read_csv(paths["csv"]).set_index("lambda")
    assert list(table["seeds"]) == [1, 2, 2]
    assert table.loc[1.2, "robust"] == pytest.approx(48.5) and table.loc[1.2, "robust_sd"] == pytest.approx(2**0.5)
    assert table.loc[1.2, "clean_sd"] == pytest.approx(2**0.5)  # 87 and 89
    assert table.loc[0.0, "robust"] == pytest.approx(44.5) and table.loc[0.0, "robust_sd"] == pytest.approx(0.5**0.5)
    assert table.loc[0.4, "robust_sd"] == 0.0  # one seed: no bar


def test_figure10_is_the_difference_of_folded_gradient_spectra(results):
    paths = outputs(results / "out", "figure10")
    figure_10.main(["--results-root", str(results / "results"), "--pair", cell("dm-at+dra"), cell("dm-at"),
                    *flags(paths)])
    assert_drawn(paths)
    table = pd.read_csv(paths["csv"])
    spectra = [load_representation(results / "results" / cell(m) / "representation.npz")["gradient_spectrum"]
               for m in ("dm-at+dra", "dm-at")]
    expected = fold_spectrum(spectra[0]) - fold_spectrum(spectra[1])
    np.testing.assert_allclose(table.pivot(index="u", columns="v", values="difference").to_numpy(), expected)


def test_figures1_and_9(results):
    # zoo models stand in here as representation.npz files (they hold clean_features and labels, as the
    # zoo rule's npz does); tests/test_robustbench_zoo.py measures real zoo architectures
    paths = outputs(results / "out", "figure1")
    nine = {"png": results / "out" / "figure9.png", "pdf": results / "out" / "figure9.pdf"}
    npz = {m: str(results / "results" / cell(m) / "representation.npz") for m in ("st", "at", "dm-at", "dm-at+dra")}
    figure_1_9.main(["--zoo", "Standard", npz["st"], "0.0", "--zoo", "ZooAT", npz["at"], "53.08",
                     "--standard", npz["st"], "--diffusion", str(results / "dr.npz"), "--topk", "3",
                     "--results-root", str(results / "results"), "--cells", cell("dm-at"), cell("dm-at+dra"),
                     *flags(paths), "--out9-png", str(nine["png"]), "--out9-pdf", str(nine["pdf"])])
    assert_drawn(paths)
    assert_drawn(nine)
    table = pd.read_csv(paths["csv"]).set_index("model")
    # CKNNA of a representation with itself is s / (s + 1e-6), s its HSIC with itself (platonic-rep metrics.py)
    assert table.loc["Standard", "cknna_standard"] == pytest.approx(1.0, abs=1e-4)
    assert table.loc["ZooAT", "cknna_standard"] < 0.999
    assert table["cknna_diffusion"].between(-1, 1).all()
    # zoo models at the accuracy RobustBench reports, our cells at the one our AutoAttack rule measured
    assert table.loc["ZooAT", "robust"] == 53.08 and table.loc["ZooAT", "series"] == "RobustBench"
    assert table.loc[cell("dm-at+dra"), "robust"] == 47.5
    assert table.loc[cell("dm-at+dra"), "series"] == "this workflow"
    assert table.loc[cell("dm-at"), "accuracy_source"] == "our AutoAttack rule"


def test_figure1_refuses_features_of_other_test_images(results, tmp_path):
    from dra.analysis.figures import FigureInputError

    record = dict(np.load(results / "results" / cell("at") / "representation.npz"))
    record["labels"] = record["labels"][::-1].copy()
    np.savez(tmp_path / "shuffled.npz", **record)
    paths = outputs(tmp_path, "figure1")
    with pytest.raises(FigureInputError, match="other test images"):
        figure_1_9.main(["--zoo", "X", str(tmp_path / "shuffled.npz"), "50", "--standard",
                         str(results / "results" / cell("st") / "representation.npz"), "--diffusion",
                         str(results / "dr.npz"), "--topk", "10", *flags(paths), "--out9-png", str(tmp_path / "9.png"),
                         "--out9-pdf", str(tmp_path / "9.pdf")])


def test_missing_representation_names_the_rule(results):
    from dra.analysis.figures import FigureInputError

    with pytest.raises(FigureInputError, match="figure_representation"):
        load_representation(results / "results" / cell("dm-at+dra-lambda2.0") / "representation.npz")

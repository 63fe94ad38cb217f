"""The paper's analysis figures from the workflow's own outputs (Figures 1, 3-6, 8-10).

Two kinds of functions:

- measurements of one model on the first n test images, saved as ``representation.npz``:
  pooled features of the clean images and of their PGD adversarial examples (the positive
  pairs of Figures 4 and 5), robust accuracy over an eps grid (Figure 3b), the Fourier
  magnitude of the PGD perturbations (Figure 3a) and of the input gradients (Figure 10).
  Classifiers and the linear-probed diffusion representation (DR) are attacked with the same
  deterministic PGD (dra.diffusion.probe.pgd_from_clean: clean start, step_factor * eps / steps sign steps);
  the DR's diffusion noise is fixed per image, as in validate_features (Section 4.1).
- figures drawn from those files, autoattack.json and recipe.yaml, each written as PNG, PDF
  and the CSV of the plotted numbers.

Metrics come from dra.analysis.representation_metrics; this module adds the folded spectrum of
Figure 10 and the held-out SAE loss of Figure 6.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dra.analysis.representation_metrics import (
    alignment,
    cknna,
    fourier_magnitude,
    normalized_mse,
    train_topk_sae,
    uniformity,
)
from dra.analysis.significance import seed_summary
from dra.io import atomic_file, read_yaml

#: forward(images01, first_index) -> (logits, features); first_index is the batch's position in
#: the evaluated set (the DR seeds its diffusion noise with it).
Forward = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]

REPRESENTATION_KEYS = ("clean_features", "adversarial_features", "labels", "eps", "robust_accuracy",
                       "clean_accuracy", "attack_eps", "perturbation_spectrum", "gradient_spectrum")


class FigureInputError(ValueError):
    """A file a figure reads is missing, incomplete or does not fit the others."""


# ---------------------------------------------------------------------------------------------- measurements


def _pgd(forward: Forward, x: torch.Tensor, y: torch.Tensor, first: int, eps: float, steps: int,
         step_factor: float) -> torch.Tensor:
    from dra.diffusion.probe import pgd_from_clean

    return pgd_from_clean(lambda adv: forward(adv, first)[0], x, y, eps, steps, step_size=step_factor * eps / steps)


def unit_gradient_spectrum(gradients: torch.Tensor) -> torch.Tensor:
    """fourier_magnitude of the input gradients, each scaled to unit L2 norm first, so that two
    models are compared by where their sensitivity lies in frequency, not by its overall size."""
    norms = gradients.flatten(1).norm(dim=1).clamp_min(1e-30)
    return fourier_magnitude(gradients / norms[:, None, None, None])


def measure_representation(forward: Forward, images01: torch.Tensor, labels: torch.Tensor,
                           eps_grid: Sequence[float], attack_eps: float, steps: int, step_factor: float,
                           batch_size: int) -> dict[str, np.ndarray]:
    """Everything the figures read about one model (keys: REPRESENTATION_KEYS).

    Robust accuracy is in percent at every eps of ``eps_grid``; the adversarial features and the
    perturbation spectrum are those of the attack at ``attack_eps`` (the dataset's budget).
    """
    n = images01.shape[0]
    if labels.shape != (n,):
        raise FigureInputError(f"{n} images but labels of shape {tuple(labels.shape)}")
    budgets = sorted(set(float(e) for e in eps_grid) | {float(attack_eps)})
    correct = dict.fromkeys(budgets, 0)
    clean_correct = 0
    clean, adversarial = [], []
    perturbation_sum = gradient_sum = 0.0
    for start in range(0, n, batch_size):
        x, y = images01[start:start + batch_size], labels[start:start + batch_size]
        with torch.no_grad():
            logits, features = forward(x, start)
        clean.append(features.float())
        clean_correct += int((logits.argmax(1) == y).sum())
        x_grad = x.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(F.cross_entropy(forward(x_grad, start)[0], y, reduction="sum"), x_grad)
        gradient_sum = gradient_sum + unit_gradient_spectrum(gradient) * len(x)
        for eps in budgets:
            x_adv = _pgd(forward, x, y, start, eps, steps, step_factor) if eps > 0 else x
            with torch.no_grad():
                adv_logits, adv_features = forward(x_adv, start) if eps > 0 else (logits, features)
            correct[eps] += int((adv_logits.argmax(1) == y).sum())
            if eps == attack_eps:
                adversarial.append(adv_features.float())
                perturbation_sum = perturbation_sum + fourier_magnitude(x_adv - x) * len(x)
    grid = np.array(sorted(set(float(e) for e in eps_grid)))
    return {
        "clean_features": torch.cat(clean).numpy(),
        "adversarial_features": torch.cat(adversarial).numpy(),
        "labels": labels.numpy(),
        "eps": grid,
        "robust_accuracy": np.array([100.0 * correct[e] / n for e in grid]),
        "clean_accuracy": np.array(100.0 * clean_correct / n),
        "attack_eps": np.array(float(attack_eps)),
        "perturbation_spectrum": (perturbation_sum / n).numpy(),
        "gradient_spectrum": (gradient_sum / n).numpy(),
    }


def save_representation(record: dict[str, np.ndarray], out_npz: str | Path) -> None:
    with atomic_file(out_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **record)


def load_representation(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FigureInputError(f"{path} does not exist; run its figure_representation rule first")
    try:
        with np.load(path) as stored:
            record = {key: stored[key] for key in stored.files}
    except Exception as error:  # BadZipFile, ValueError, EOFError, OSError: a truncated or foreign file
        raise FigureInputError(
            f"{path} is not a readable representation npz ({type(error).__name__}: {error}); delete it and rerun "
            "its figure_representation rule"
        ) from None
    missing = [key for key in REPRESENTATION_KEYS if key not in record]
    if missing:
        raise FigureInputError(f"{path} lacks {missing}; delete it and rerun its rule")
    for key in ("clean_features", "adversarial_features"):
        if not np.isfinite(record[key]).all():
            raise FigureInputError(f"{path}: {key} contain NaN or inf; the model it was measured on is broken")
    return record


def classifier_representation(model_path: str | Path, recipe_path: str | Path, test_store: str | Path, n: int,
                              eps_grid: Sequence[float], attack_eps: float, steps: int, step_factor: float,
                              batch_size: int, device: str | torch.device,
                              out_npz: str | Path) -> dict[str, np.ndarray]:
    """measure_representation of a trained classifier (its pooled penultimate features)."""
    from dra.evaluation.autoattack import load_classifier, load_test_images

    model = load_classifier(model_path, recipe_path, device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    images01, labels = load_test_images(test_store, n)

    def forward(x, _first):
        logits, features = model.forward_features(x.to(device))
        return logits.float().cpu(), features.float().cpu()

    record = measure_representation(forward, images01, labels, eps_grid, attack_eps, steps, step_factor,
                                    batch_size)
    save_representation(record, out_npz)
    return record


def diffusion_representation(weights: str | Path, network: str | Path, train_store: str | Path,
                             test_store: str | Path, layer: str, sigma: float, train_n: int, n: int,
                             eps_grid: Sequence[float], attack_eps: float, steps: int, step_factor: float,
                             batch_size: int, seed: int, device: str | torch.device,
                             out_npz: str | Path) -> dict[str, np.ndarray]:
    """measure_representation of the DR: the frozen diffusion features (unconditional mode, fixed
    noise per image) with a linear probe fitted on the first ``train_n`` training images.

    Noise indices follow validate_features: training images from 0, test images from 2 * 10^8.
    """
    from dra.diffusion.checkpoint import load_edm
    from dra.diffusion.features import DiffusionFeatureExtractor
    from dra.diffusion.probe import extract_many, fit_linear_probe
    from dra.evaluation.autoattack import load_test_images

    net = load_edm(weights, network).to(device)
    train_images, train_labels = load_test_images(train_store, train_n)
    train_features = extract_many(net, [layer], sigma, train_images.to(device), train_labels, 0, batch_size,
                                  seed)[layer]
    probe = fit_linear_probe(train_features, train_labels.numpy(), seed).to(device)
    extractor = DiffusionFeatureExtractor(net, layer, sigma, seed=seed, use_labels=False)
    test_offset = 2 * 10**8

    def forward(x, first):
        indices = range(test_offset + first, test_offset + first + len(x))
        features = extractor(x.to(device), None, indices)
        return probe(features).float().cpu(), features.float().cpu()

    images01, labels = load_test_images(test_store, n)
    record = measure_representation(forward, images01, labels, eps_grid, attack_eps, steps, step_factor,
                                    batch_size)
    record["probe_train_accuracy"] = np.array(
        100.0 * float((probe(torch.from_numpy(train_features).to(device)).argmax(1).cpu() == train_labels)
                      .double().mean()))
    save_representation(record, out_npz)
    return record


# ---------------------------------------------------------------------------------------------- metrics


def fold_spectrum(centred: np.ndarray | torch.Tensor) -> np.ndarray:
    """A centred magnitude spectrum (H, W), zero frequency at (H // 2, W // 2), folded onto
    absolute frequencies: entry (|u|, |v|) is the mean over the signs of u and v, so the zero
    frequency sits in the upper-left corner (Figure 10's layout). A real image's spectrum is
    symmetric, |F(u, v)| = |F(-u, -v)|, so for one the fold keeps every value."""
    centred = np.asarray(centred, dtype=np.float64)
    if centred.ndim != 2:
        raise FigureInputError(f"a spectrum is (H, W); got shape {centred.shape}")
    height, width = centred.shape
    rows = np.abs(np.arange(height) - height // 2)
    cols = np.abs(np.arange(width) - width // 2)
    total = np.zeros((height // 2 + 1, width // 2 + 1))
    count = np.zeros_like(total)
    np.add.at(total, (rows[:, None], cols[None, :]), centred)
    np.add.at(count, (rows[:, None], cols[None, :]), 1.0)
    return total / count


def alignment_uniformity(record: dict[str, np.ndarray]) -> dict[str, float]:
    """Wang & Isola's metrics (SsnL/align_uniform) on L2-normalised features: alignment (alpha 2)
    of the (clean, adversarial) pairs; uniformity (t 2) as the mean of the two views' values, as
    in the reference's STL-10 example."""
    clean = torch.from_numpy(record["clean_features"])
    adversarial = torch.from_numpy(record["adversarial_features"])
    return {"alignment": alignment(clean, adversarial, alpha=2.0),
            "uniformity": (uniformity(clean, t=2.0) + uniformity(adversarial, t=2.0)) / 2}


def held_out_sae_loss(features: np.ndarray, k: int, latents: int, steps: int, batch_size: int, lr: float,
                      seed: int, held_out_fraction: float = 0.2) -> float:
    """Normalized reconstruction loss MSE(recon, x) / MSE(mean of x, x) (openai/sparse_autoencoder
    kernels.py normalized_mse) of a TopK SAE on the last ``held_out_fraction`` of the rows, after training
    on the others. Rows are layer-normalised as train_topk_sae does."""
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    n_test = max(2, int(round(held_out_fraction * x.shape[0])))
    if x.shape[0] - n_test < 2:
        raise FigureInputError(f"a held-out SAE loss needs at least 4 feature rows; got {x.shape[0]}")
    sae, _ = train_topk_sae(x[:-n_test], k, latents, steps, min(batch_size, x.shape[0] - n_test), lr, seed)
    test = F.layer_norm(x[-n_test:], x.shape[1:])
    with torch.no_grad():
        return normalized_mse(sae(test), test).item()


# ---------------------------------------------------------------------------------------------- reading results


def short_labels(models: Sequence[str]) -> dict[str, str]:
    """Model path -> the parts of it that differ between the models (all of it when alone)."""
    split = [model.split("/") for model in models]
    if len(models) < 2 or len({len(parts) for parts in split}) != 1:
        return {model: model for model in models}
    varying = [i for i in range(len(split[0])) if len({parts[i] for parts in split}) > 1]
    return {model: " ".join(parts[i] for i in varying) or model for model, parts in zip(models, split)}


def read_accuracy(model_dir: str | Path) -> dict[str, float]:
    """clean and robust (AutoAttack) accuracy in percent from <model>/autoattack.json."""
    path = Path(model_dir) / "autoattack.json"
    if not path.exists():
        raise FigureInputError(f"{path} does not exist; run the autoattack rule of {model_dir}")
    summary = json.loads(path.read_text())
    try:
        return {"clean": float(summary["clean_accuracy"]), "robust": float(summary["robust_accuracy"])}
    except KeyError as error:
        raise FigureInputError(f"{path} lacks {error}; delete it and rerun the autoattack rule") from error


def read_lambda(model_dir: str | Path) -> float:
    recipe = read_yaml(Path(model_dir) / "recipe.yaml")
    if not recipe.get("dra"):
        raise FigureInputError(f"{model_dir}/recipe.yaml has no DRA term; Figure 8 sweeps DRA cells only")
    return float(recipe["dra"]["lambda"])


# ---------------------------------------------------------------------------------------------- drawing


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _save(figure, table: pd.DataFrame, out_png: str | Path, out_pdf: str | Path, out_csv: str | Path) -> None:
    """The CSV first and the PNG last: the PNG is the rule's report entry."""
    plt, _ = _pyplot()
    figure.tight_layout()
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_file(out_pdf) as tmp:
        figure.savefig(tmp, format="pdf")
    with atomic_file(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=150)
    plt.close(figure)


def _model_dir(results_root: str | Path, model: str) -> Path:
    return Path(results_root) / model


def figure3(results_root: str | Path, standard: str, adversarial: str, diffusion_npz: str | Path,
            out_png: str | Path, out_pdf: str | Path, out_csv: str | Path) -> pd.DataFrame:
    """(a) Fourier magnitude of the PGD perturbations, zero frequency centred, each map divided by
    its total; (b) robust accuracy over the eps grid for DR, AT and ST."""
    plt, sns = _pyplot()
    records = {"DR": load_representation(diffusion_npz),
               "AT": load_representation(_model_dir(results_root, adversarial) / "representation.npz"),
               "ST": load_representation(_model_dir(results_root, standard) / "representation.npz")}
    grids = {name: tuple(np.round(r["eps"], 8)) for name, r in records.items()}
    if len(set(grids.values())) != 1:
        raise FigureInputError(f"Figure 3 compares one eps grid; the representations have {grids}")
    rows = [{"model": name, "eps": eps, "eps_255": eps * 255, "robust_accuracy": accuracy}
            for name, record in records.items() for eps, accuracy in zip(record["eps"], record["robust_accuracy"])]
    table = pd.DataFrame(rows)
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.4]})
    for axis, (name, record) in zip(axes, records.items()):
        spectrum = record["perturbation_spectrum"] / record["perturbation_spectrum"].sum()
        sns.heatmap(np.log10(spectrum + 1e-12), ax=axis, cmap="magma", square=True, cbar=True,
                    xticklabels=False, yticklabels=False, cbar_kws={"label": "log10 share of |FFT|"})
        axis.set_title(f"(a) {name}, eps {float(record['attack_eps']) * 255:g}/255")
    sns.lineplot(table, x="eps_255", y="robust_accuracy", hue="model", marker="o", ax=axes[3])
    axes[3].set(xlabel="eps (x/255)", ylabel="robust accuracy (%)", ylim=(0, 100), title="(b) PGD robust accuracy")
    _save(figure, table, out_png, out_pdf, out_csv)
    return table


def figure_alignment_uniformity(results_root: str | Path, models: Sequence[str], diffusion_npz: str | Path | None,
                                with_accuracy: bool, title: str, out_png: str | Path, out_pdf: str | Path,
                                out_csv: str | Path) -> pd.DataFrame:
    """Figure 4 (ST, AT, DR) or 5 (trained cells, clean / robust accuracy in the labels):
    uniformity against alignment; lower is better for both."""
    plt, sns = _pyplot()
    labels = short_labels(list(models))
    rows = []
    for model in models:
        row = {"model": model, "label": labels[model],
               **alignment_uniformity(load_representation(_model_dir(results_root, model) / "representation.npz"))}
        if with_accuracy:
            accuracy = read_accuracy(_model_dir(results_root, model))
            row.update(clean_accuracy=accuracy["clean"], robust_accuracy=accuracy["robust"])
            row["label"] += f" ({accuracy['clean']:.1f}/{accuracy['robust']:.1f})"
        rows.append(row)
    if diffusion_npz is not None:
        rows.append({"model": "DR", "label": "DR", **alignment_uniformity(load_representation(diffusion_npz))})
    table = pd.DataFrame(rows)
    figure, axis = plt.subplots(figsize=(5, 4))
    sns.scatterplot(table, x="uniformity", y="alignment", hue="label", s=80, ax=axis)
    axis.set(xlabel="uniformity  (lower: more uniform)", ylabel="alignment, clean vs adversarial (lower: closer)",
             title=title)
    axis.legend(fontsize=7, title="clean / robust %" if with_accuracy else None, title_fontsize=7)
    _save(figure, table, out_png, out_pdf, out_csv)
    return table


def figure6(results_root: str | Path, models: Sequence[str], ks: Sequence[int], latents_per_dim: int, steps: int,
            batch_size: int, lr: float, seed: int, out_png: str | Path, out_pdf: str | Path,
            out_csv: str | Path) -> pd.DataFrame:
    """Normalized TopK-SAE reconstruction loss of the clean classifier features per K and model."""
    plt, sns = _pyplot()
    labels = short_labels(list(models))
    rows = []
    for model in models:
        features = load_representation(_model_dir(results_root, model) / "representation.npz")["clean_features"]
        robust = read_accuracy(_model_dir(results_root, model))["robust"]
        for k in ks:
            latents = latents_per_dim * features.shape[1]
            if k > latents:
                raise FigureInputError(f"K = {k} exceeds the {latents} SAE latents of {model}")
            loss = held_out_sae_loss(features, k, latents, steps, batch_size, lr, seed)
            rows.append({"model": model, "label": f"{labels[model]} ({robust:.1f})", "k": k, "latents": latents,
                         "normalized_mse": loss, "robust_accuracy": robust})
    table = pd.DataFrame(rows)
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    sns.barplot(table, x="k", y="normalized_mse", hue="label", ax=axis)
    axis.set(xlabel="SAE sparsity K", ylabel="normalized reconstruction loss",
             title="TopK SAE on classifier features (robust %)")
    axis.legend(fontsize=7)
    _save(figure, table, out_png, out_pdf, out_csv)
    return table


def _replicate_accuracy(results_root: str | Path, replicates: Sequence[str]) -> dict:
    """Mean clean and robust accuracy over a cell's replicates, with their sd (0 for one seed)."""
    accuracies = [read_accuracy(_model_dir(results_root, model)) for model in replicates]
    summary = {}
    for key in ("clean", "robust"):
        spread = seed_summary([accuracy[key] for accuracy in accuracies])
        summary.update({key: spread["mean"], f"{key}_sd": spread["sd"] or 0.0})
    return {**summary, "seeds": len(replicates)}


def figure8(results_root: str | Path, baseline: Sequence[str], models: Sequence[Sequence[str]], out_png: str | Path,
            out_pdf: str | Path, out_csv: str | Path) -> pd.DataFrame:
    """Clean and robust accuracy against the DRA strength lambda, the baseline as a dashed line.
    ``baseline`` and each of ``models`` are a cell's replicates (one path for one seed); with more
    than one, the mean is drawn with the sd over seeds as error bars (the baseline as a band)."""
    plt, _ = _pyplot()
    rows = [{"model": replicates[0], "lambda": read_lambda(_model_dir(results_root, replicates[0])),
             **_replicate_accuracy(results_root, replicates)} for replicates in models]
    table = pd.DataFrame(rows).sort_values("lambda")
    if table["lambda"].duplicated().any():
        raise FigureInputError(f"Figure 8 needs one cell per lambda; got {table['lambda'].tolist()}")
    reference = _replicate_accuracy(results_root, baseline)
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for axis, key in zip(axes, ("clean", "robust")):
        spread = table[f"{key}_sd"] if (table["seeds"] > 1).any() else None
        axis.errorbar(table["lambda"], table[key], yerr=spread, marker="o", capsize=3, label="DRA")
        axis.axhline(reference[key], color="grey", linestyle="--", label="baseline (no DRA)")
        if reference["seeds"] > 1:
            axis.axhspan(reference[key] - reference[f"{key}_sd"], reference[key] + reference[f"{key}_sd"],
                         color="grey", alpha=0.2)
        axis.set(xlabel="lambda", ylabel=f"{key} accuracy (%)", title=f"{key.capitalize()} accuracy")
        axis.legend(fontsize=7)
    table = pd.concat([table, pd.DataFrame([{"model": baseline[0], "lambda": 0.0, **reference}])], ignore_index=True)
    _save(figure, table, out_png, out_pdf, out_csv)
    return table


def figure10(results_root: str | Path, pairs: Sequence[tuple[str, str]], out_png: str | Path, out_pdf: str | Path,
             out_csv: str | Path) -> pd.DataFrame:
    """Folded input-gradient spectrum of the aligned cell minus that of its baseline, per pair;
    positive = more sensitive, zero frequency in the upper-left."""
    plt, sns = _pyplot()
    figure, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.6), squeeze=False)
    rows = []
    for axis, (aligned, baseline) in zip(axes[0], pairs):
        maps = [fold_spectrum(load_representation(_model_dir(results_root, m) / "representation.npz")
                              ["gradient_spectrum"]) for m in (aligned, baseline)]
        difference = maps[0] - maps[1]
        limit = float(np.abs(difference).max()) or 1.0
        sns.heatmap(difference, ax=axis, cmap="RdBu_r", vmin=-limit, vmax=limit, square=True)
        axis.set(xlabel="|horizontal frequency|", ylabel="|vertical frequency|")
        axis.set_title(f"{short_labels([aligned, baseline])[aligned]} - {short_labels([aligned, baseline])[baseline]}",
                       fontsize=8)
        rows += [{"aligned": aligned, "baseline": baseline, "u": u, "v": v, "difference": difference[u, v]}
                 for u in range(difference.shape[0]) for v in range(difference.shape[1])]
    _save(figure, pd.DataFrame(rows), out_png, out_pdf, out_csv)
    return pd.DataFrame(rows)


def _clean_features(path: str | Path, labels: np.ndarray | None = None) -> torch.Tensor:
    """clean_features of a representation.npz or a zoo model's npz, checked against the DR's labels."""
    path = Path(path)
    if not path.exists():
        raise FigureInputError(f"{path} does not exist; run the rule that writes it first")
    with np.load(path) as stored:
        if "clean_features" not in stored.files or "labels" not in stored.files:
            raise FigureInputError(f"{path} lacks clean_features or labels; delete it and rerun its rule")
        features, own_labels = stored["clean_features"], stored["labels"]
    if labels is not None and not np.array_equal(own_labels, labels):
        raise FigureInputError(f"{path} was measured on other test images than the diffusion representation "
                               f"({len(own_labels)} vs {len(labels)} labels); rerun both with one figures.eval_n")
    if not np.isfinite(features).all():
        raise FigureInputError(f"{path}: clean_features contain NaN or inf; the model it was measured on is broken")
    return torch.from_numpy(features)


def figure1_9(zoo: Sequence[tuple[str, str | Path, float]], standard_npz: str | Path, diffusion_npz: str | Path,
              topk: int, out_png: str | Path, out_pdf: str | Path, out_csv: str | Path, out9_png: str | Path,
              out9_pdf: str | Path, results_root: str | Path | None = None,
              cells: Sequence[str] = ()) -> pd.DataFrame:
    """Figure 1: CKNNA of each RobustBench model's clean features with the DR's against its AutoAttack
    accuracy as RobustBench reports it; Figure 9 adds, in grey, CKNNA with RobustBench's standard-trained
    model. ``zoo`` holds (name, features npz, reported AutoAttack accuracy). Our own ``cells`` (paths below
    results_root, with representation.npz and autoattack.json) are drawn as a second series, at the
    accuracy our AutoAttack rule measured."""
    plt, sns = _pyplot()
    with np.load(diffusion_npz) as stored:
        labels = stored["labels"]
    diffusion = _clean_features(diffusion_npz)
    standard = _clean_features(standard_npz, labels)
    rows = []
    for name, path, reported in zoo:
        features = _clean_features(path, labels)
        rows.append({"series": "RobustBench", "model": name, "robust": float(reported),
                     "accuracy_source": "reported by RobustBench",
                     "cknna_diffusion": cknna(features, diffusion, topk=topk),
                     "cknna_standard": cknna(features, standard, topk=topk)})
    for cell in cells:
        features = _clean_features(_model_dir(results_root, cell) / "representation.npz", labels)
        rows.append({"series": "this workflow", "model": cell,
                     "robust": read_accuracy(_model_dir(results_root, cell))["robust"],
                     "accuracy_source": "our AutoAttack rule",
                     "cknna_diffusion": cknna(features, diffusion, topk=topk),
                     "cknna_standard": cknna(features, standard, topk=topk)})
    table = pd.DataFrame(rows)
    zoo_rows, cell_rows = table[table.series == "RobustBench"], table[table.series == "this workflow"]
    xlabel = "AutoAttack robust accuracy (%)"
    figure, axis = plt.subplots(figsize=(5, 3.8))
    sns.scatterplot(zoo_rows, x="robust", y="cknna_diffusion", ax=axis, color="tab:red", s=40,
                    label="RobustBench CIFAR-10 $\\ell_\\infty$ models")
    if len(cell_rows):
        sns.scatterplot(cell_rows, x="robust", y="cknna_diffusion", ax=axis, color="tab:blue", marker="^", s=50,
                        label="this workflow's cells")
    axis.set(xlabel=xlabel, ylabel="CKNNA with the diffusion representation")
    axis.legend(fontsize=7)
    _save(figure, table, out_png, out_pdf, out_csv)
    figure, axis = plt.subplots(figsize=(5, 3.8))
    sns.scatterplot(zoo_rows, x="robust", y="cknna_diffusion", ax=axis, color="tab:red", s=40,
                    label="diffusion model")
    sns.scatterplot(zoo_rows, x="robust", y="cknna_standard", ax=axis, color="grey", s=40,
                    label="RobustBench standard-trained model")
    axis.set(xlabel=xlabel, ylabel=f"CKNNA (top-{topk})")
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_file(out9_pdf) as tmp:
        figure.savefig(tmp, format="pdf")
    with atomic_file(out9_png) as tmp:
        figure.savefig(tmp, format="png", dpi=150)
    plt.close(figure)
    return table

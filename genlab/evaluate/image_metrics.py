"""Quality metrics of a GAN or VAE run (`genlab eval RUN`), in the feature space of genlab's own
classifier (genlab.evaluate.classifier):

- FCD, the Fréchet Classifier Distance: the Fréchet distance between Gaussians fitted to the
  classifier's penultimate features of generated and of real test images. Same formula as FID, but
  NOT Inception FID: the numbers are not comparable with published FIDs. Like FID it is biased
  upwards at small sample sizes, so it is always reported with its sample size.
- Precision and recall (Kynkäänniemi et al. 2019): the real and the generated feature sets each
  define a manifold, the union of balls reaching each point's k-th nearest neighbour; precision is
  the share of generated points inside the real manifold, recall the share of real points inside
  the generated one.
- Conditional models: the classifier's accuracy on generated images against the requested labels.
- VAE: the negative ELBO on the whole test set, nats per image and bits per dimension.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from genlab import runs
from genlab.data.images import ImageData, ImageDataConfig, load_image_data
from genlab.errors import ConfigError, DataError, RunError
from genlab.evaluate.classifier import ClassifierConfig, TrainedClassifier, load_or_train
from genlab.generate.images import ImageGenerator
from genlab.train.image import to_unit

IMAGE_FAMILIES = ("gan", "vae")


# ---- the math ------------------------------------------------------------------------------------

def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the rows of ``features``."""
    if len(features) < 2:
        raise ConfigError("the Fréchet distance needs at least 2 samples per side")
    x = np.asarray(features, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)).

    tr((cov1 cov2)^(1/2)) equals tr((s cov2 s)^(1/2)) with s = cov1^(1/2); the latter matrix is
    symmetric PSD, so an eigendecomposition gives it without the complex round-off of a general
    matrix square root."""
    s = _sym_sqrt(cov1)
    inner = s @ cov2 @ s
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def fcd(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features))


def _kth_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i: i + chunk], x)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each point: does it lie in at least one ball (centre, radius)?"""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i: i + chunk], centres)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3,
                     chunk: int = 1024) -> tuple[float, float]:
    """k-nearest-neighbour precision and recall of the generated set against the real set."""
    if k < 1:
        raise ConfigError(f"k must be at least 1 (got {k})")
    if min(len(real_features), len(fake_features)) <= k:
        raise ConfigError(f"precision/recall with k={k} needs more than {k} samples per side")
    real = torch.from_numpy(np.asarray(real_features, np.float32))
    fake = torch.from_numpy(np.asarray(fake_features, np.float32))
    precision = _covered(fake, real, _kth_radii(real, k, chunk), chunk).float().mean().item()
    recall = _covered(real, fake, _kth_radii(fake, k, chunk), chunk).float().mean().item()
    return precision, recall


# ---- a run ---------------------------------------------------------------------------------------

def run_data(run: str | Path) -> tuple[dict, ImageData]:
    """An image run's config.json and its data set (which must still be the one it was trained on)."""
    cfg = runs.read_config(run)
    if cfg["family"] not in IMAGE_FAMILIES:
        raise RunError(f"run '{run}' holds a {cfg['family']} model, not an image model (gan or vae)")
    data = load_image_data(ImageDataConfig.from_dict(cfg["data"]["config"]))
    if data.fingerprint != cfg["data"]["fingerprint"]:
        raise DataError(f"the data set '{data.name}' changed since run '{run}' was trained (fingerprint "
                        f"{data.fingerprint} != {cfg['data']['fingerprint']}); metrics need the same images")
    return cfg, data


def scored_classes(model_classes: list[str], data_classes: list[str]) -> list[int]:
    """The model's class index of each of the data set's classes, by name (ignoring case)."""
    lowered = [c.casefold() for c in model_classes]
    missing = [c for c in data_classes if c.casefold() not in lowered]
    if missing:
        raise RunError(f"the model has no class '{missing[0]}' of its data set; its classes: {', '.join(model_classes)}")
    return [lowered.index(c.casefold()) for c in data_classes]


def negative_elbo(gen: ImageGenerator, images: np.ndarray, labels: np.ndarray, seed: int = 0,
                  batch_size: int = 500) -> float:
    """Mean negative ELBO (nats per image) of a VAE on ``images``: one posterior sample per image."""
    vae = gen.require_vae()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = to_unit(images[i: i + batch_size]).to(gen.device)
            y = torch.from_numpy(labels[i: i + batch_size]).to(gen.device) if gen.conditional else None
            eps = torch.randn(len(x), vae.cfg.latent_dim, generator=g).to(gen.device)
            recon, kl = vae(x, y, eps)
            total += (recon + kl).sum().item()
    return total / len(images)


def evaluate_image_run(run: str | Path, n: int = 10_000, k: int = 3, seed: int = 0, device: str = "auto",
                       classifier: TrainedClassifier | None = None,
                       classifier_config: ClassifierConfig | None = None, quiet: bool = False) -> dict:
    """Every metric of a GAN/VAE run on ``n`` generated images against the run's test split."""
    if n < 2:
        raise ConfigError(f"--n must be at least 2 (got {n})")
    cfg, data = run_data(run)
    if len(data.test) < 2:
        raise DataError(f"'{data.name}' has fewer than 2 test images; raise --test-fraction and retrain")
    clf = classifier or load_or_train(data, classifier_config, device=device, quiet=quiet)
    gen = ImageGenerator.from_run(run, device=device)
    # The model's index of each of the data set's classes. The same list for an ordinary run; a few-shot
    # fine-tune (genlab.train.finetune_images) knows its base's classes too, and is scored on the classes
    # its own data set has, matched by name, with that data set's classifier.
    scored = scored_classes(gen.class_names, data.class_names) if gen.conditional else None
    labels = None if scored is None else [scored[i % len(scored)] for i in range(n)]  # each class n / classes
    fake_feats, fake_pred = clf.run(gen.sample(n, labels=labels, seed=seed))
    real = data.test
    real_feats, real_pred = clf.run(real.images)
    # Reference: real training images against the same test images, at the generated sample size.
    ref_idx = np.random.default_rng(seed).choice(len(data.train), size=min(n, len(data.train)), replace=False)
    ref_feats, _ = clf.run(data.train.images[ref_idx])
    m = min(len(real_feats), len(fake_feats))  # precision/recall want equal-size sets
    pr_rng = np.random.default_rng(seed + 1)
    pick = lambda f: f[pr_rng.choice(len(f), size=m, replace=False)]  # noqa: E731
    precision, recall = precision_recall(pick(real_feats), pick(fake_feats), k=k)
    res: dict = {
        "run": str(run), "family": cfg["family"], "data": data.name, "conditional": gen.conditional,
        "classifier_test_accuracy": clf.test_accuracy, "classifier": str(clf.path),
        "n_generated": n, "n_real": len(real), "fcd": fcd(real_feats, fake_feats),
        "fcd_train_vs_test": fcd(real_feats, ref_feats), "n_train_reference": len(ref_idx),
        "precision": precision, "recall": recall, "k": k, "n_precision_recall": m,
    }
    if gen.conditional:
        asked = np.asarray(labels)
        hits = np.asarray(scored)[fake_pred] == asked
        res["conditional_accuracy"] = float(hits.mean())
        # Per class, so a grid's weak row has a number (the mean hides one class at 40% among nine at 95%).
        res["class_accuracy"] = {gen.class_names[c]: float(hits[asked == c].mean()) for c in scored}
        # The classifier's own accuracy on each class's real test images: the ceiling a generated row can
        # be expected to reach (real shirts are the classifier's hardest Fashion-MNIST class too).
        res["class_accuracy_real"] = {gen.class_names[m]: float((real_pred[real.labels == j] == j).mean())
                                      for j, m in enumerate(scored) if (real.labels == j).any()}
        if len(scored) < len(gen.class_names):
            res["classes_scored"] = [gen.class_names[i] for i in scored]
    if cfg["family"] == "vae":
        nelbo = negative_elbo(gen, real.images, real.labels, seed=seed)
        dims = int(np.prod(real.images.shape[1:]))
        res.update(nelbo_nats=nelbo, bits_per_dim=nelbo / (dims * math.log(2)), nelbo_images=len(real),
                   likelihood=gen.model.cfg.likelihood)
    return res


def format_report(res: dict) -> str:
    lines = [f"{res['run']} ({res['family']}, {res['data']}); classifier test accuracy "
             f"{res['classifier_test_accuracy']:.2%}",
             f"FCD (Fréchet Classifier Distance, not Inception FID) {res['fcd']:.3f} "
             f"[{res['n_generated']:,} generated vs {res['n_real']:,} real test images]; "
             f"real train vs test at the same size: {res['fcd_train_vs_test']:.3f}",
             f"precision {res['precision']:.3f}, recall {res['recall']:.3f} "
             f"[k={res['k']}, {res['n_precision_recall']:,} per side]"]
    if "conditional_accuracy" in res:
        lines.append(f"conditional accuracy {res['conditional_accuracy']:.2%} (classifier on generated images "
                     f"vs the requested labels)")
        per_class = sorted(res["class_accuracy"].items(), key=lambda kv: kv[1])
        real = res.get("class_accuracy_real", {})
        lines.append("  per class, worst first (the classifier on real test images): " + ", ".join(
            f"{name} {acc:.0%}" + (f" ({real[name]:.0%})" if name in real else "") for name, acc in per_class))
    if "classes_scored" in res:
        lines.append(f"scored on the data set's classes only: {', '.join(res['classes_scored'])}")
    if "nelbo_nats" in res:
        lines.append(f"negative ELBO {res['nelbo_nats']:.2f} nats/image, {res['bits_per_dim']:.4f} bits/dim "
                     f"[{res['nelbo_images']:,} test images, {res['likelihood']} likelihood]")
    if res["n_generated"] < 10_000:
        lines.append("note: FCD is biased upwards at small sample sizes; compare scores at equal --n "
                     "(10,000 or more)")
    return "\n".join(lines)

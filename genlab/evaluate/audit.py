"""Bias audit of an unconditional image model (`genlab audit RUN`).

A generative model can reproduce, or amplify, the class imbalance of its training data, and can
drop rare modes entirely. The audit classifies a large set of unconditional samples with genlab's
own classifier for the data set and compares the class distribution with the training split's:
per-class shares, the ratio generated / training share, KL divergences in both directions, and the
classes the model under- or over-produces.

The classifier errs too (its test accuracy is in the report): a class it confuses with another
moves share between the two even for a perfect generator, so small ratios near 1 mean little.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from genlab.errors import ConfigError
from genlab.evaluate.classifier import ClassifierConfig, TrainedClassifier, load_or_train
from genlab.evaluate.image_metrics import run_data
from genlab.generate.images import ImageGenerator

DROPPED_BELOW = 0.1  # a class produced at under a tenth of its training share is called dropped
SMOOTHING = 0.5  # pseudo-count per class, so a dropped class gives a large but finite KL


class Sampler(Protocol):
    conditional: bool

    def sample(self, n: int, labels=None, seed: int = 0) -> np.ndarray: ...


@dataclass
class ClassShare:
    name: str
    train_count: int
    train_share: float
    generated_count: int
    generated_share: float
    ratio: float  # generated share / training share (inf for a class absent from training)
    status: str  # ok | under | over | dropped


@dataclass
class AuditReport:
    n_generated: int
    n_train: int
    classifier_test_accuracy: float
    tolerance: float
    kl_generated_train: float  # KL(generated || training), nats
    kl_train_generated: float  # KL(training || generated), nats: large when modes are dropped
    classes: list[ClassShare]

    @property
    def under(self) -> list[str]:
        return [c.name for c in self.classes if c.status in ("under", "dropped")]

    @property
    def over(self) -> list[str]:
        return [c.name for c in self.classes if c.status == "over"]

    @property
    def dropped(self) -> list[str]:
        return [c.name for c in self.classes if c.status == "dropped"]

    def to_dict(self) -> dict:
        return {**asdict(self), "under_produced": self.under, "over_produced": self.over, "dropped": self.dropped}


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats for two distributions over the same classes (0 log 0 = 0)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    mask = p > 0
    if np.any(q[mask] <= 0):
        return math.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def compare_distributions(train_counts: np.ndarray, generated_counts: np.ndarray, class_names: list[str],
                          tolerance: float = 1.5, classifier_test_accuracy: float = float("nan")) -> AuditReport:
    """The audit's arithmetic: shares, ratios, KLs (with SMOOTHING pseudo-counts) and flags. A class is
    over-produced when its ratio exceeds ``tolerance``, under-produced below 1 / ``tolerance``, and
    dropped below DROPPED_BELOW."""
    if tolerance <= 1:
        raise ConfigError(f"--tolerance must be above 1 (got {tolerance})")
    train_counts = np.asarray(train_counts, np.int64)
    generated_counts = np.asarray(generated_counts, np.int64)
    if train_counts.shape != generated_counts.shape or len(train_counts) != len(class_names):
        raise ValueError("train counts, generated counts and class names must have one entry per class")
    p = train_counts / max(train_counts.sum(), 1)
    q = generated_counts / max(generated_counts.sum(), 1)
    p_s = (train_counts + SMOOTHING) / (train_counts.sum() + SMOOTHING * len(p))
    q_s = (generated_counts + SMOOTHING) / (generated_counts.sum() + SMOOTHING * len(q))
    classes = []
    for i, name in enumerate(class_names):
        ratio = q[i] / p[i] if p[i] > 0 else (math.inf if q[i] > 0 else 1.0)
        if ratio < DROPPED_BELOW:
            status = "dropped"
        elif ratio < 1 / tolerance:
            status = "under"
        elif ratio > tolerance:
            status = "over"
        else:
            status = "ok"
        classes.append(ClassShare(name, int(train_counts[i]), float(p[i]), int(generated_counts[i]), float(q[i]),
                                  float(ratio), status))
    return AuditReport(int(generated_counts.sum()), int(train_counts.sum()), classifier_test_accuracy, tolerance,
                       kl_divergence(q_s, p_s), kl_divergence(p_s, q_s), classes)


def require_unconditional(sampler: Sampler) -> None:
    if sampler.conditional:
        raise ConfigError("the audit needs an unconditional model: a conditional one makes whatever classes it "
                          "is asked for; train one with --unconditional")


def audit_sampler(sampler: Sampler, train_labels: np.ndarray, classifier: TrainedClassifier, n: int = 10_000,
                  seed: int = 0, tolerance: float = 1.5) -> AuditReport:
    """Classify ``n`` unconditional samples and compare their classes with ``train_labels``."""
    require_unconditional(sampler)
    if n < 1:
        raise ConfigError(f"--n must be positive (got {n})")
    k = len(classifier.class_names)
    _, predicted = classifier.run(sampler.sample(n, seed=seed))
    return compare_distributions(np.bincount(train_labels, minlength=k), np.bincount(predicted, minlength=k),
                                 classifier.class_names, tolerance, classifier.test_accuracy)


def audit_run(run: str | Path, n: int = 10_000, seed: int = 0, tolerance: float = 1.5, device: str = "auto",
              classifier_config: ClassifierConfig | None = None, quiet: bool = False) -> AuditReport:
    _, data = run_data(run)
    gen = ImageGenerator.from_run(run, device=device)
    require_unconditional(gen)  # before a classifier is trained
    clf = load_or_train(data, classifier_config, device=device, quiet=quiet)
    return audit_sampler(gen, data.train.labels, clf, n=n, seed=seed, tolerance=tolerance)


def format_audit(report: AuditReport) -> list[list[str]]:
    """Table rows: class, training share, generated share, ratio, status."""
    return [[c.name, f"{c.train_share:.1%} ({c.train_count:,})", f"{c.generated_share:.1%} ({c.generated_count:,})",
             f"{c.ratio:.2f}", c.status] for c in report.classes]

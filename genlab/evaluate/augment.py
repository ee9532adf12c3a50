"""Data augmentation with a conditional generator (`genlab augment`).

For each N real images per class and each seed, the same classifier (architecture, optimizer and
number of steps as genlab.evaluate.classifier) is trained twice, from the same initialisation:
on the N real images per class alone, and on those plus M generated images per class from a
conditional GAN or VAE. Both are scored on the whole test split; the report gives the mean and
standard deviation over seeds of both, and of their difference (paired by seed).

Both arms run the same number of optimizer steps, so they get the same compute; the synthetic arm
simply draws its batches from a larger pool.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from genlab.data.images import ImageData, ImageSplit
from genlab.errors import ConfigError, DataError
from genlab.evaluate.classifier import ClassifierConfig, fit_classifier
from genlab.evaluate.image_metrics import run_data
from genlab.generate.images import ImageGenerator

AUGMENT_CLASSIFIER = ClassifierConfig(steps=300, batch_size=64)


@dataclass
class AugmentRow:
    real_per_class: int
    synthetic_per_class: int
    real_only: list[float] = field(default_factory=list)  # test accuracy per seed
    with_synthetic: list[float] = field(default_factory=list)

    @staticmethod
    def _mean_std(xs: list[float]) -> tuple[float, float]:
        return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0

    @property
    def real_stats(self) -> tuple[float, float]:
        return self._mean_std(self.real_only)

    @property
    def synthetic_stats(self) -> tuple[float, float]:
        return self._mean_std(self.with_synthetic)

    @property
    def gain_stats(self) -> tuple[float, float]:
        return self._mean_std([b - a for a, b in zip(self.real_only, self.with_synthetic, strict=True)])


def real_subset(split: ImageSplit, num_classes: int, per_class: int, seed: int) -> ImageSplit:
    """``per_class`` images of every class, drawn without replacement."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(num_classes):
        idx = np.flatnonzero(split.labels == c)
        if len(idx) < per_class:
            raise DataError(f"class {c} has only {len(idx)} training images; lower --real below {per_class + 1}")
        picks.append(rng.choice(idx, size=per_class, replace=False))
    idx = np.concatenate(picks)
    return ImageSplit(split.images[idx], split.labels[idx])


def synthetic_set(gen: ImageGenerator, num_classes: int, per_class: int, seed: int) -> ImageSplit:
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    return ImageSplit(gen.sample(len(labels), labels=labels, seed=seed), np.asarray(labels, np.int64))


def _fit(train_split: ImageSplit, data: ImageData, cfg: ClassifierConfig, device: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        _, acc = fit_classifier(train_split, data.test, data.config.channels, data.config.image_size,
                                data.num_classes, cfg, Path(tmp), device=device, quiet=True)
    return acc


def run_augmentation(generator_run: str | Path, real_per_class: list[int], synthetic_per_class: int,
                     seeds: int = 3, cfg: ClassifierConfig = AUGMENT_CLASSIFIER, device: str = "auto",
                     log=lambda msg: None) -> list[AugmentRow]:
    if seeds < 1 or synthetic_per_class < 1 or not real_per_class or min(real_per_class) < 1:
        raise ConfigError("--real, --synthetic and --seeds must be positive")
    _, data = run_data(generator_run)
    gen = ImageGenerator.from_run(generator_run, device=device)
    if not gen.conditional:
        raise ConfigError(f"run '{generator_run}' is unconditional; augmentation needs images of a chosen class "
                          f"(train the generator with --conditional)")
    if len(data.test) == 0:
        raise DataError(f"'{data.name}' has no test images to score the classifiers on")
    rows = []
    for n in real_per_class:
        row = AugmentRow(n, synthetic_per_class)
        for seed in range(seeds):
            real = real_subset(data.train, data.num_classes, n, seed)
            fake = synthetic_set(gen, data.num_classes, synthetic_per_class, seed=10_000 + seed)
            both = ImageSplit(np.concatenate([real.images, fake.images]), np.concatenate([real.labels, fake.labels]))
            seeded = replace(cfg, seed=seed)  # the same initialisation and batch RNG for both arms
            row.real_only.append(_fit(real, data, seeded, device))
            row.with_synthetic.append(_fit(both, data, seeded, device))
            log(f"N={n} seed {seed}: real only {row.real_only[-1]:.2%}, "
                f"+{synthetic_per_class} synthetic {row.with_synthetic[-1]:.2%}")
        rows.append(row)
    return rows


def table(rows: list[AugmentRow]) -> tuple[list[str], list[list[str]]]:
    headers = ["real / class", "synthetic / class", "seeds", "real only (test acc.)", "real + synthetic",
               "difference"]
    body = []
    for r in rows:
        (a, sa), (b, sb), (d, sd) = r.real_stats, r.synthetic_stats, r.gain_stats
        body.append([str(r.real_per_class), str(r.synthetic_per_class), str(len(r.real_only)),
                     f"{a:.2%} ± {sa:.2%}", f"{b:.2%} ± {sb:.2%}", f"{d:+.2%} ± {sd:.2%}"])
    return headers, body

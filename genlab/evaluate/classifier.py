"""genlab's own image classifier: the feature extractor behind FCD, precision/recall, the bias audit
and the augmentation experiment (Inception weights cannot be downloaded here, and Inception was
never trained on clothing anyway).

A small CNN (two conv-BN-ReLU-pool blocks, a fully connected feature layer, a linear head) is
trained once per data set through the shared trainer (it is an ordinary ``Task``) on the data
set's train split and scored on its test split. It is cached as a run-like folder under
``$GENLAB_CACHE/classifiers/<data fingerprint>-<settings hash>/``: ``model.safetensors`` plus
``config.json`` (settings, data fingerprint, class names, test accuracy).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlab import runs
from genlab.config import TrainConfig, write_json
from genlab.data.images import ImageData, ImageSplit
from genlab.data.prepare import cache_root
from genlab.device import pick_device, seed_everything
from genlab.errors import DataError, RunError
from genlab.jsonconfig import JsonConfig
from genlab.train.image import to_unit
from genlab.train.trainer import console, train

FAMILY = "classifier"


@dataclass
class ClassifierConfig(JsonConfig):
    width: int = 16  # channels of the first conv block (the second has twice as many)
    features: int = 128  # size of the penultimate layer: the feature space of FCD and precision/recall
    steps: int = 1500  # optimizer steps (1500 x 128 = 3.2 epochs of Fashion-MNIST)
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


class ImageClassifier(nn.Module):
    def __init__(self, channels: int, image_size: int, num_classes: int, width: int = 16, features: int = 128) -> None:
        super().__init__()
        side = image_size // 4
        if side < 1:
            raise DataError(f"images of {image_size}px are too small for the classifier (at least 4px)")

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(channels, width), block(width, 2 * width), nn.Flatten(),
                                  nn.Linear(2 * width * side * side, features), nn.ReLU())
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations for images in [0, 1]."""
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def accuracy(model: ImageClassifier, split: ImageSplit, batch_size: int = 500) -> float:
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for i in range(0, len(split), batch_size):
            logits = model(to_unit(split.images[i: i + batch_size]).to(device))
            correct += int((logits.argmax(1).cpu() == torch.from_numpy(split.labels[i: i + batch_size])).sum())
    return correct / max(len(split), 1)


class ClassifierTask:
    """Cross-entropy on random batches of ``train``; evaluation is accuracy on ``test``."""

    family = FAMILY
    unit = "img"
    metric_names = ("loss", "accuracy")

    def __init__(self, model: ImageClassifier, train_split: ImageSplit, test_split: ImageSplit, batch_size: int):
        self.model = model
        self.train_split, self.test_split = train_split, test_split
        self.batch_size = batch_size

    def train_batch(self, rng: np.random.Generator):
        return self.train_split.batch(rng, self.batch_size)

    def loss(self, model, batch):
        images, labels = batch
        device = next(self.model.parameters()).device
        logits = model(to_unit(images).to(device))
        return F.cross_entropy(logits.float(), torch.from_numpy(labels).to(device)), len(labels)

    def evaluate(self, model) -> dict[str, float]:
        return {"accuracy": accuracy(self.model, self.test_split)}

    def sample(self, model, step: int, out_dir: Path) -> None:
        pass  # a classifier has nothing to draw


def fit_classifier(train_split: ImageSplit, test_split: ImageSplit, channels: int, image_size: int,
                   num_classes: int, cfg: ClassifierConfig, run: Path, device: str = "auto",
                   quiet: bool = False) -> tuple[ImageClassifier, float]:
    """Train a fresh classifier into the folder ``run`` with the shared trainer; returns it and its
    test accuracy."""
    if len(train_split) == 0:
        raise DataError("the classifier needs training images; the train split is empty")
    seed_everything(cfg.seed)
    model = ImageClassifier(channels, image_size, num_classes, cfg.width, cfg.features)
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=min(50, cfg.steps // 10),
                       weight_decay=0.0, betas=(0.9, 0.999), eval_every=cfg.steps, checkpoint_every=cfg.steps,
                       log_every=max(1, min(20, cfg.steps)), seed=cfg.seed, device=device, dtype="float32")
    run.mkdir(parents=True, exist_ok=True)
    result = train(ClassifierTask(model, train_split, test_split, cfg.batch_size), tcfg, run, quiet=quiet)
    model.eval()
    return model, result.val.get("accuracy", float("nan"))


@dataclass
class TrainedClassifier:
    model: ImageClassifier
    class_names: list[str]
    test_accuracy: float
    fingerprint: str
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def run(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features (float64, (N, F)) and predicted labels of uint8 images."""
        feats, preds = [], []
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                f = self.model.features(to_unit(images[i: i + batch_size]).to(self.device))
                feats.append(f.double().cpu().numpy())
                preds.append(self.model.head(f).argmax(1).cpu().numpy())
        if not feats:
            return np.zeros((0, self.model.head.in_features)), np.zeros(0, np.int64)
        return np.concatenate(feats), np.concatenate(preds)


def classifier_dir(data: ImageData, cfg: ClassifierConfig) -> Path:
    return cache_root() / "classifiers" / f"{data.fingerprint}-{cfg.key()}"


def load_or_train(data: ImageData, cfg: ClassifierConfig | None = None, device: str = "auto",
                  retrain: bool = False, quiet: bool = False) -> TrainedClassifier:
    """The cached classifier for ``data`` (same fingerprint and settings), trained on first use."""
    cfg = cfg or ClassifierConfig()
    folder = classifier_dir(data, cfg)
    meta_path = folder / runs.CONFIG
    if not retrain and meta_path.exists() and (folder / runs.WEIGHTS).exists():
        try:
            meta = json.loads(meta_path.read_text())
            model = ImageClassifier(data.config.channels, data.config.image_size, data.num_classes,
                                    cfg.width, cfg.features)
            runs.load_weights(folder, model)
            model.to(pick_device(device)).eval()
            return TrainedClassifier(model, meta["class_names"], float(meta["test_accuracy"]),
                                     meta["fingerprint"], folder)
        except (json.JSONDecodeError, KeyError, RunError):
            if not quiet:
                console.print(f"the cached classifier in {folder} is damaged; training it again")
    if len(data.test) == 0:
        raise DataError(f"'{data.name}' has no test images to score the classifier on; raise --test-fraction")
    if not quiet:
        console.print(f"training the {data.name} classifier ({len(data.train):,} train / {len(data.test):,} "
                      f"test images, {cfg.steps} steps); it is cached in {folder}")
    # The trainer writes checkpoints and metrics into its run folder; train in a scratch folder and
    # keep only the weights and a config.json, so a killed run never leaves a half-made cache entry.
    with tempfile.TemporaryDirectory(dir=_scratch_parent()) as tmp:
        model, acc = fit_classifier(data.train, data.test, data.config.channels, data.config.image_size,
                                    data.num_classes, cfg, Path(tmp), device=device, quiet=quiet)
        runs.atomic_write_bytes(folder / runs.WEIGHTS, (Path(tmp) / runs.WEIGHTS).read_bytes())
    write_json(meta_path, {"family": FAMILY, "model": cfg.to_dict(), "data": data.meta(),
                           "fingerprint": data.fingerprint, "class_names": list(data.class_names),
                           "test_accuracy": acc, "test_images": len(data.test)})
    if not quiet:
        console.print(f"classifier test accuracy: {acc:.2%} on {len(data.test):,} images")
    return TrainedClassifier(model, list(data.class_names), acc, data.fingerprint, folder)


def _scratch_parent() -> Path:
    parent = cache_root() / "classifiers"
    parent.mkdir(parents=True, exist_ok=True)
    return parent

"""Shared fixtures: every test makes its own tiny data and keeps caches in a temp folder."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENLAB = [sys.executable, "-m", "genlab"]

WORDS = ("the cat sat on a mat while old dog ran far away into green hills and a small bird sang "
         "every morning because rain fell softly over quiet town where people read books").split()


def make_text(n_sentences: int = 400, seed: int = 0) -> str:
    """Deterministic pseudo-English: enough structure for a tiny model to learn quickly."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines) + "\n"


def ctrl_c_during_batch(monkeypatch, task_cls, n: int) -> None:
    """Make the n-th ``train_batch`` call of ``task_cls`` deliver a real SIGINT to this process,
    as a user's Ctrl-C during that step would (undo with ``monkeypatch.undo()``)."""
    import signal

    calls = []
    original = task_cls.train_batch

    def train_batch(self, rng):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, rng)

    monkeypatch.setattr(task_cls, "train_batch", train_batch)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "genlab-cache"
    monkeypatch.setenv("GENLAB_CACHE", str(cache))
    # watermark and signing keys (genlab.safety.keys): never the user's own, none signed by default
    monkeypatch.setenv("GENLAB_KEYS", str(tmp_path_factory.getbasetemp() / "genlab-keys"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and a busy machine is not thrashed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (d / f"doc{i:02d}.txt").write_text(make_text(60, seed=i))
    return d


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_dir) -> Path:
    """A tiny LM trained for a few dozen steps, shared by generation/eval tests (read-only)."""
    import torch

    from genlab.config import DataConfig, train_config
    from genlab.train.lm import LMTrainSpec, train_lm

    os.environ["GENLAB_CACHE"] = str(tmp_path_factory.getbasetemp() / "genlab-cache")
    run = tmp_path_factory.mktemp("runs") / "tiny"
    # Always one thread: whichever test asks first builds this run, some under the one_thread fixture and
    # some not, and float sums over 1 or 2 threads train different weights. A test that samples from it
    # (the watermark's wrong-key z-scores) then saw another model from one `make test` to the next.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_lm(LMTrainSpec(
            run=run, data=DataConfig(corpus=[str(corpus_dir)], tokenizer="bpe", vocab_size=300), preset="tiny",
            model_overrides={"context": 64},
            train=train_config("tiny", steps=60, eval_every=30, checkpoint_every=30, batch_size=8), quiet=True))
    finally:
        torch.set_num_threads(threads)
    return run


def train_tiny_image_run(family: str, run: Path, steps: int) -> Path:
    """A tiny GAN or VAE on 16x16 drawn shapes (4 classes, conditional)."""
    from genlab.data.images import ImageDataConfig
    from genlab.train.image import ImageTrainSpec, image_train_config, train_image

    train_image(ImageTrainSpec(
        family=family, run=run, data=ImageDataConfig("shapes", image_size=16, channels=1, shapes_count=256),
        preset="tiny", quiet=True,
        train=image_train_config(family, "tiny", steps=steps, batch_size=16, eval_every=steps,
                                 checkpoint_every=steps)))
    return run


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory) -> Path:
    """A tiny conditional GAN (read-only for tests)."""
    return train_tiny_image_run("gan", tmp_path_factory.mktemp("runs") / "gan", 20)


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory) -> Path:
    """A tiny conditional VAE (read-only for tests)."""
    return train_tiny_image_run("vae", tmp_path_factory.mktemp("runs") / "vae", 150)

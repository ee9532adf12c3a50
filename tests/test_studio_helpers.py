"""Shared fixtures for the studio and server tests (imported by them; holds no tests itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from genlab.data.images import ImageDataConfig
from genlab.train.image import ImageTrainSpec, image_train_config, train_image


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory) -> Path:
    """A tiny class-conditional GAN on drawn shapes (circle, square, triangle, cross)."""
    run = tmp_path_factory.mktemp("runs") / "shapes-gan"
    train_image(ImageTrainSpec(
        family="gan", run=run, data=ImageDataConfig("shapes", image_size=16, channels=1, shapes_count=256),
        preset="tiny", quiet=True,
        train=image_train_config("gan", "tiny", steps=10, batch_size=16, eval_every=10, checkpoint_every=10)))
    return run

"""`genlab augment`: the real subsets, the synthetic sets, the paired experiment and its errors."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from genlab.data.images import ImageDataConfig, load_image_data
from genlab.errors import ConfigError, DataError
from genlab.evaluate.augment import AugmentRow, real_subset, run_augmentation, synthetic_set, table
from genlab.evaluate.classifier import ClassifierConfig
from genlab.generate.images import ImageGenerator

from .conftest import GENLAB, ROOT
from .test_image_metrics import tiny_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is fastest

SHAPES16 = ImageDataConfig("shapes", image_size=16, channels=1, shapes_count=256)


def test_real_subset_and_synthetic_set(tmp_path):
    data = load_image_data(SHAPES16)
    sub = real_subset(data.train, 4, 5, seed=0)
    assert np.bincount(sub.labels).tolist() == [5, 5, 5, 5]
    assert len({im.tobytes() for im in sub.images}) == 20  # without replacement
    assert not np.array_equal(real_subset(data.train, 4, 5, seed=1).images, sub.images)
    assert np.array_equal(real_subset(data.train, 4, 5, seed=0).images, sub.images)
    with pytest.raises(DataError, match="lower --real"):
        real_subset(data.train, 4, 1000, seed=0)

    gen = ImageGenerator.from_run(tiny_run("vae", tmp_path / "vae", steps=3, data=SHAPES16))
    fake = synthetic_set(gen, 4, 3, seed=0)
    assert fake.images.shape == (12, 1, 16, 16) and fake.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_augmentation_experiment_is_paired_and_reported(tmp_path):
    run = tiny_run("gan", tmp_path / "gan", steps=3, data=SHAPES16)
    cfg = ClassifierConfig(width=8, features=16, steps=15, batch_size=16)
    rows = run_augmentation(run, [3], synthetic_per_class=4, seeds=2, cfg=cfg)
    (row,) = rows
    assert row.real_per_class == 3 and len(row.real_only) == len(row.with_synthetic) == 2
    assert all(0 <= a <= 1 for a in row.real_only + row.with_synthetic)
    # The arms differ in their data: with everything else equal, the accuracies would be identical.
    assert row.real_only != row.with_synthetic

    # The table: mean ± sample std, and the paired difference.
    r = AugmentRow(10, 100, [0.5, 0.7], [0.6, 0.9])
    headers, body = table([r])
    assert body[0] == ["10", "100", "2", "60.00% ± 14.14%", "75.00% ± 21.21%", "+15.00% ± 7.07%"]
    assert len(headers) == len(body[0])


def test_augment_errors(tmp_path):
    uncond = tiny_run("vae", tmp_path / "uncond", steps=3, conditional=False, data=SHAPES16)
    with pytest.raises(ConfigError, match="unconditional"):
        run_augmentation(uncond, [3], 4)
    with pytest.raises(ConfigError):
        run_augmentation(uncond, [0], 4)
    res = subprocess.run([*GENLAB, "augment", "--generator", str(uncond), "--real", "3", "--synthetic", "4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: run '{uncond}' is unconditional") and res.stderr.count("\n") == 1

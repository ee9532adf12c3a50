"""The bias audit: its arithmetic, its verdicts on samplers with known class distributions built on
a deliberately imbalanced folder, a real (tiny) run, and its errors."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from PIL import Image

from genlab.data.images import SHAPES_CLASSES, ImageDataConfig, draw_shapes, load_image_data
from genlab.errors import ConfigError, RunError
from genlab.evaluate.audit import audit_run, audit_sampler, compare_distributions, kl_divergence
from genlab.evaluate.classifier import ClassifierConfig, load_or_train

from .conftest import GENLAB, ROOT
from .test_image_metrics import tiny_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is fastest

IMBALANCE = {"circle": 120, "square": 60, "triangle": 20, "cross": 20}
TRAIN_COUNTS = {"circle": 96, "cross": 16, "square": 48, "triangle": 16}
TINY_CLF = ClassifierConfig(width=8, features=32, steps=150, batch_size=32)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """A folder of drawn shapes, one sub-folder per class, with a 6:3:1:1 imbalance."""
    root = tmp_path_factory.mktemp("imbalanced")
    drawn = draw_shapes(2000, 16, 1, seed=5)
    for label, name in enumerate(SHAPES_CLASSES):
        (root / name).mkdir()
        images = drawn.images[drawn.labels == label][: IMBALANCE[name]]
        assert len(images) == IMBALANCE[name]
        for i, im in enumerate(images):
            Image.fromarray(im[0]).save(root / name / f"{i:03d}.png")
    return root


class ListSampler:
    """A 'generator' that returns given images in a seeded random order: its class mix is known."""

    conditional = False

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def sample(self, n: int, labels=None, seed: int = 0) -> np.ndarray:
        return self.images[np.random.default_rng(seed).integers(0, len(self.images), n)]


def test_kl_and_flags_on_known_distributions():
    assert kl_divergence([0.5, 0.5], [0.5, 0.5]) == 0
    assert kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    report = compare_distributions(np.array([500, 300, 100, 100]), np.array([800, 170, 30, 0]),
                                   ["a", "b", "c", "d"], tolerance=1.5)
    by = {c.name: c for c in report.classes}
    assert by["a"].train_share == 0.5 and by["a"].generated_share == 0.8 and by["a"].ratio == pytest.approx(1.6)
    assert [by[k].status for k in "abcd"] == ["over", "under", "under", "dropped"]
    assert report.over == ["a"] and report.under == ["b", "c", "d"] and report.dropped == ["d"]
    # KLs use half a pseudo-count per class, so a dropped class gives a large, finite number.
    p = (np.array([500, 300, 100, 100]) + 0.5) / 1002
    q = (np.array([800, 170, 30, 0]) + 0.5) / 1002
    assert report.kl_train_generated == pytest.approx(float(np.sum(p * np.log(p / q))))
    assert report.kl_generated_train == pytest.approx(float(np.sum(q * np.log(q / p))))
    assert report.kl_train_generated > report.kl_generated_train  # the dropped mode weighs in this direction
    with pytest.raises(ConfigError):
        compare_distributions(np.ones(2), np.ones(2), ["a", "b"], tolerance=1.0)


def test_audit_tells_a_faithful_sampler_from_one_that_amplifies_the_imbalance(imbalanced):
    data = load_image_data(ImageDataConfig(str(imbalanced), image_size=16, test_fraction=0.2))
    # Classes come in folder-name order; 80% of 120, 60, 20, 20 are training images.
    assert dict(zip(data.class_names, np.bincount(data.train.labels).tolist(), strict=True)) == TRAIN_COUNTS
    clf = load_or_train(data, TINY_CLF, quiet=True)
    assert clf.test_accuracy > 0.8

    faithful = audit_sampler(ListSampler(data.train.images), data.train.labels, clf, n=2000)
    assert faithful.n_generated == 2000 and faithful.n_train == 176
    assert faithful.kl_train_generated < 0.05 and faithful.dropped == []
    assert sum(c.generated_share for c in faithful.classes) == pytest.approx(1.0)

    # A model that amplifies the majority: circles and a few squares only.
    circles = data.train.images[data.train.labels == data.class_names.index("circle")]
    squares = data.train.images[data.train.labels == data.class_names.index("square")][:3]
    amplifying = audit_sampler(ListSampler(np.concatenate([circles, squares])), data.train.labels, clf, n=2000)
    assert amplifying.over == ["circle"]
    assert {"triangle", "cross"} <= set(amplifying.dropped)
    assert amplifying.kl_train_generated > 10 * max(faithful.kl_train_generated, 0.01)

    with pytest.raises(ConfigError, match="unconditional"):
        audit_sampler(type("C", (), {"conditional": True})(), data.train.labels, clf, n=10)


def test_audit_of_a_real_run_and_cli_errors(imbalanced, tmp_path):
    data_cfg = ImageDataConfig(str(imbalanced), image_size=16, test_fraction=0.2)
    run = tiny_run("gan", tmp_path / "gan", steps=3, conditional=False, data=data_cfg)
    report = audit_run(run, n=300, classifier_config=TINY_CLF, quiet=True)
    assert {c.name: c.train_count for c in report.classes} == TRAIN_COUNTS
    assert sum(c.generated_count for c in report.classes) == 300
    assert json.loads(json.dumps(report.to_dict()))["n_generated"] == 300

    cond = tiny_run("vae", tmp_path / "cond", steps=1, data=data_cfg)
    with pytest.raises(ConfigError, match="unconditional"):
        audit_run(cond, n=10, classifier_config=TINY_CLF, quiet=True)

    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"family": "lm"}))
    with pytest.raises(RunError, match="not an image model"):
        audit_run(lm)
    res = subprocess.run([*GENLAB, "audit", str(lm)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: run '{lm}' holds a lm model, not an image model (gan or vae)"

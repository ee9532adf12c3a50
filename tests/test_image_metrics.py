"""FCD, precision/recall, the cached classifier, and `genlab eval` on GAN/VAE runs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import scipy.linalg
import torch

from genlab.data.images import SHAPES_CLASSES, ImageDataConfig, load_image_data
from genlab.errors import ConfigError
from genlab.evaluate.classifier import ClassifierConfig, classifier_dir, load_or_train
from genlab.evaluate.image_metrics import (
    evaluate_image_run,
    fcd,
    format_report,
    frechet_distance,
    precision_recall,
)
from genlab.generate.images import ImageGenerator
from genlab.train.image import ImageTrainSpec, image_train_config, train_image

from .conftest import GENLAB, ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is fastest

SHAPES16 = ImageDataConfig("shapes", image_size=16, channels=1, shapes_count=512)
TINY_CLF = ClassifierConfig(width=8, features=32, steps=120, batch_size=32)




def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ---- the Fréchet distance ------------------------------------------------------------------------

def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    # Diagonal covariances: |m|^2 + sum (a + b - 2 sqrt(ab)).
    a, b, m = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6), rng.standard_normal(6)
    expected = m @ m + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(np.zeros(6), np.diag(a), m, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # cov2 = c^2 cov1: tr(cov1) (1 - c)^2, whatever cov1 is.
    cov = random_spd(rng, 8)
    assert frechet_distance(np.zeros(8), cov, np.zeros(8), 4 * cov) == pytest.approx(np.trace(cov), rel=1e-8)
    assert frechet_distance(m[:5], random_spd(rng, 5) * 0, m[:5], np.zeros((5, 5))) == pytest.approx(0, abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_on_non_commuting_covariances():
    rng = np.random.default_rng(1)
    c1, c2 = random_spd(rng, 10), random_spd(rng, 10)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(frechet_distance(mu2, c2, mu1, c1), rel=1e-9)


def test_fcd_of_samples_estimates_the_gaussian_distance():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20_000, 4))
    y = rng.standard_normal((20_000, 4)) * 2 + np.array([1.0, 0, 0, 0])
    # closed form: 1 + 4 * (1 + 4 - 2 * 2) = 5
    assert fcd(x, y) == pytest.approx(5.0, rel=0.05)
    assert fcd(x, rng.standard_normal((20_000, 4))) < 0.01
    with pytest.raises(ConfigError):
        fcd(x[:1], y)


# ---- precision and recall ------------------------------------------------------------------------

def test_precision_recall_on_known_sets():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((1000, 8))
    same = rng.standard_normal((1000, 8))
    p, r = precision_recall(real, same, k=3)
    assert p > 0.8 and r > 0.8
    # Mode collapse: every fake near one real point -> precise, no recall.
    collapsed = real[0] + 0.01 * rng.standard_normal((1000, 8))
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.95 and r < 0.05
    # Far away: neither.
    p, r = precision_recall(real, same + 50, k=3)
    assert p == 0.0 and r == 0.0
    with pytest.raises(ConfigError):
        precision_recall(real[:3], same, k=3)


# ---- the classifier ------------------------------------------------------------------------------

def test_classifier_learns_caches_and_separates_real_from_noise():
    data = load_image_data(SHAPES16)
    clf = load_or_train(data, TINY_CLF, quiet=True)
    assert clf.test_accuracy > 0.8  # four drawn shapes: easy
    meta = json.loads((clf.path / "config.json").read_text())
    assert meta["fingerprint"] == data.fingerprint and meta["test_accuracy"] == clf.test_accuracy
    assert sorted(p.name for p in clf.path.iterdir()) == ["config.json", "model.safetensors"]

    again = load_or_train(data, TINY_CLF, quiet=True)  # from the cache: the very same weights
    for a, b in zip(clf.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    train_feats, _ = clf.run(data.train.images)
    test_feats, pred = clf.run(data.test.images)
    assert (pred == data.test.labels).mean() == pytest.approx(clf.test_accuracy)
    noise = np.random.default_rng(0).integers(0, 256, size=data.test.images.shape, dtype=np.uint8)
    noise_feats, _ = clf.run(noise)
    real_vs_real = fcd(train_feats[:256], train_feats[256:])
    assert fcd(test_feats, noise_feats) > 20 * real_vs_real


# ---- a run ---------------------------------------------------------------------------------------

def tiny_run(family: str, path, steps: int = 4, conditional: bool = True, data: ImageDataConfig = SHAPES16):
    tcfg = image_train_config(family, "tiny", steps=steps, eval_every=steps, checkpoint_every=steps,
                              log_every=1, batch_size=8)
    train_image(ImageTrainSpec(family=family, run=path, data=data, preset="tiny", conditional=conditional,
                               train=tcfg, quiet=True))
    return path


def test_evaluate_vae_and_gan_runs(tmp_path):
    data = load_image_data(SHAPES16)
    clf = load_or_train(data, TINY_CLF, quiet=True)
    vae = evaluate_image_run(tiny_run("vae", tmp_path / "vae"), n=200, classifier=clf)
    assert vae["n_generated"] == 200 and vae["n_real"] == len(data.test)
    assert vae["fcd"] > 0 and math.isfinite(vae["fcd"]) and vae["fcd_train_vs_test"] < vae["fcd"]
    assert 0 <= vae["precision"] <= 1 and 0 <= vae["recall"] <= 1
    assert vae["n_precision_recall"] == min(200, len(data.test))
    assert 0 <= vae["conditional_accuracy"] <= 1
    per_class = vae["class_accuracy"]
    assert list(per_class) == list(data.class_names)  # 200 samples, 50 per class: the mean is their mean
    assert vae["conditional_accuracy"] == pytest.approx(sum(per_class.values()) / len(per_class))
    assert "per class, worst first" in format_report(vae)
    # the ceiling beside each class: the classifier's accuracy on that class's real test images
    real_pred = clf.run(data.test.images)[1]
    assert list(vae["class_accuracy_real"]) == list(data.class_names)
    for j, name in enumerate(data.class_names):
        assert vae["class_accuracy_real"][name] == pytest.approx((real_pred[data.test.labels == j] == j).mean())
    assert vae["nelbo_nats"] > 0
    assert vae["bits_per_dim"] == pytest.approx(vae["nelbo_nats"] / (16 * 16 * math.log(2)))
    assert "not Inception FID" in format_report(vae) and "biased" in format_report(vae)

    gan = evaluate_image_run(tiny_run("gan", tmp_path / "gan", conditional=False), n=150, classifier=clf)
    assert "conditional_accuracy" not in gan and "nelbo_nats" not in gan
    assert gan["n_precision_recall"] == 128 and gan["fcd"] > 0


def test_eval_cli_on_a_vae_run_and_errors(tmp_path):
    data = load_image_data(SHAPES16)
    run = tiny_run("vae", tmp_path / "vae")
    # A briefly trained classifier of the default architecture stands in for the default one in the
    # cache, so the CLI does not train for minutes.
    stand_in = load_or_train(data, ClassifierConfig(steps=60, batch_size=32), quiet=True)
    shutil.copytree(stand_in.path, classifier_dir(data, ClassifierConfig()))
    res = subprocess.run([*GENLAB, "eval", str(run), "--n", "100", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["family"] == "vae" and report["n_generated"] == 100 and report["nelbo_nats"] > 0

    bad = subprocess.run([*GENLAB, "eval", str(run), "--data", "x.txt"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --data is for LM runs")


@pytest.mark.parametrize("size", [32, 64])
def test_rgb_folders_train_both_families_and_are_measured(tmp_path, size):
    """Colour pictures in a folder of class sub-folders (drawn shapes, random colours), at 32 and 64 pixels: both
    families train on them and every metric is measured against a classifier of that folder."""
    from PIL import Image

    from genlab.data.images import draw_shapes

    shapes = draw_shapes(60, size, 3, seed=2)
    for i, (image, label) in enumerate(zip(shapes.images, shapes.labels, strict=True)):
        folder = tmp_path / "colour" / SHAPES_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    data_cfg = ImageDataConfig(str(tmp_path / "colour"), image_size=size, channels=3, test_fraction=0.25)
    clf = load_or_train(load_image_data(data_cfg), TINY_CLF, quiet=True)
    for family in ("gan", "vae"):
        run = tiny_run(family, tmp_path / family, steps=3, data=data_cfg)
        res = evaluate_image_run(run, n=24, classifier=clf, quiet=True)
        assert res["n_generated"] == 24 and math.isfinite(res["fcd"]) and 0 <= res["precision"] <= 1
        assert 0 <= res["conditional_accuracy"] <= 1 and (family == "gan" or res["nelbo_nats"] > 0)
        assert ImageGenerator.from_run(run, device="cpu").sample(2, labels=[0, 1], seed=0).shape == (2, 3, size, size)

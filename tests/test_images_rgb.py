"""Colour images: the drawn data set (`genlab data draw`) and the rgb32 / rgb64 GAN and VAE presets."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab import runs
from genlab.data import drawn
from genlab.data.drawn import CLASSES, HUE_JITTER, write_drawn_folder
from genlab.data.images import ImageDataConfig
from genlab.errors import ConfigError, DataError
from genlab.train.image import ImageTrainSpec, image_train_config, preset_data_defaults, train_image

from .cli_helpers import cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder32(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("drawn") / "colour32"
    write_drawn_folder(out, size=32, per_class=6, seed=0)
    return out


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def test_the_drawn_folder_has_eight_classes_each_a_shape_in_a_hue_band(folder32):
    names = sorted(p.name for p in folder32.iterdir())
    assert names == sorted(name for name, _, _ in CLASSES) and len(names) == 8
    # neither half of a class alone names it: every shape comes in both palettes
    assert sorted(shape for _, shape, _ in CLASSES) == sorted(list(drawn.SHAPES) * len(drawn.PALETTES))
    for name, _, hue in CLASSES:
        files = sorted((folder32 / name).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(6)]
        for f in files:
            with Image.open(f) as im:
                assert im.mode == "RGB" and im.size == (32, 32)
                px = np.asarray(im, dtype=np.float32).reshape(-1, 3) / 255.0
            # The shape is the saturated, bright part (the background is dark and greyish): its
            # median hue lies in the class's band.
            hsv = np.array([colorsys.rgb_to_hsv(*p) for p in px])
            shape = hsv[(hsv[:, 1] > 0.5) & (hsv[:, 2] > 0.6)]
            assert len(shape) > 20, f"{f}: no shape drawn"
            h = np.angle(np.exp(2j * np.pi * shape[:, 0]).mean()) / (2 * np.pi) % 1.0  # circular mean
            assert _hue_distance(h, hue) < HUE_JITTER + 0.03, (name, f.name, h)


def test_the_drawing_is_seeded_and_varied(tmp_path, folder32):
    again = write_drawn_folder(tmp_path / "again", size=32, per_class=6, seed=0)
    assert again["images"] == 48 and again["classes"][0] == "warm-disc"
    for name, _, _ in CLASSES:
        assert (folder32 / name / "00003.png").read_bytes() == (tmp_path / "again" / name / "00003.png").read_bytes()
    other = write_drawn_folder(tmp_path / "other", size=32, per_class=2, seed=1)
    assert other["per_class"] == 2
    a = np.asarray(Image.open(folder32 / "cool-star" / "00000.png"))
    b = np.asarray(Image.open(tmp_path / "other" / "cool-star" / "00000.png"))
    assert not np.array_equal(a, b)
    first, second = (np.asarray(Image.open(folder32 / "warm-square" / f"0000{i}.png")) for i in (0, 1))
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 5  # two images of a class differ


def test_an_existing_folder_is_refused_and_an_interrupted_drawing_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "set"
    write_drawn_folder(out, size=16, per_class=1)
    with pytest.raises(DataError, match="already exists and is not empty"):
        write_drawn_folder(out, size=16, per_class=1)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    calls = {"n": 0}
    real = drawn.draw_image

    def fail_later(label, size, rng):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(label, size, rng)

    monkeypatch.setattr(drawn, "draw_image", fail_later)
    with pytest.raises(KeyboardInterrupt):
        write_drawn_folder(out, size=16, per_class=3, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # the old set is intact
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no half-written temporary folder
    with pytest.raises(ConfigError, match="per-class must be positive"):
        write_drawn_folder(tmp_path / "x", per_class=0)


def test_rgb_presets_default_to_their_shape_and_refuse_another():
    assert preset_data_defaults("rgb64", None, None, "folder") == (64, 3)
    assert preset_data_defaults("rgb32", None, None, "folder") == (32, 3)
    assert preset_data_defaults("small", None, None, "fashion-mnist") == (28, 1)
    assert preset_data_defaults("small", None, True, "folder") == (32, 3)
    spec = ImageTrainSpec(family="gan", run=Path("unused"), preset="rgb64",
                          data=ImageDataConfig("shapes", image_size=32, channels=3),
                          train=image_train_config("gan", "rgb64", steps=1))
    with pytest.raises(ConfigError, match="preset 'rgb64' is for 64 px RGB images, not 32 px RGB"):
        train_image(spec)


@pytest.mark.parametrize("family,preset", [("gan", "rgb32"), ("vae", "rgb32"), ("gan", "rgb64"), ("vae", "rgb64")])
def test_rgb_presets_train_on_a_drawn_folder(tmp_path, family, preset):
    size = int(preset[3:])
    data = tmp_path / "data"
    write_drawn_folder(data, size=size, per_class=4)
    run = tmp_path / "run"
    res = train_image(ImageTrainSpec(
        family=family, run=run, preset=preset,
        data=ImageDataConfig(str(data), image_size=size, channels=3, test_fraction=0.25),
        train=image_train_config(family, preset, steps=2, batch_size=4, eval_every=2, checkpoint_every=2,
                                 eval_batches=1, log_every=1), quiet=True))
    assert res.step == 2 and all(np.isfinite(v) for _, v in res.losses)
    cfg = runs.read_config(run)
    assert (cfg["model"]["image_size"], cfg["model"]["channels"], cfg["model"]["num_classes"]) == (size, 3, 8)
    with Image.open(run / "samples" / "step_000002.png") as grid:
        assert grid.mode == "RGB"


def test_cli_draws_a_folder_and_trains_an_rgb_preset_on_it(tmp_path, monkeypatch, capsys):
    data = tmp_path / "colour"
    code, out, err = cli(["data", "draw", "--out", str(data), "--size", "32", "--per-class", "3"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["images"] == 24
    code, _, err = cli(["data", "draw", "--out", str(data), "--size", "32", "--per-class", "3"], monkeypatch, capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err

    common = ["--data", str(data), "--steps", "1", "--batch-size", "4", "--eval-every", "1", "--eval-batches", "1",
              "--checkpoint-every", "1", "--quiet"]
    code, _, err = cli(["train", "gan", *common, "--preset", "rgb32", "--out", str(tmp_path / "gan")], monkeypatch, capsys)
    assert code == 0, err
    model = runs.read_config(tmp_path / "gan")["model"]
    assert (model["image_size"], model["channels"]) == (32, 3)  # from the preset: no --image-size, no --rgb

    for bad, says in ((["--image-size", "64"], "is for 32 px RGB images, not 64 px RGB"),
                      (["--gray"], "is for 32 px RGB images, not 32 px grayscale")):
        code, _, err = cli(["train", "vae", *common, "--preset", "rgb32", *bad, "--out", str(tmp_path / "bad")],
                           monkeypatch, capsys)
        assert code == 2 and says in err, err
        assert not (tmp_path / "bad").exists()


def test_sizing_knows_the_rgb_presets():
    from genlab.sizing.image import from_preset

    arch = from_preset("gan-rgb64")
    assert (arch.config.image_size, arch.config.channels, arch.config.num_classes) == (64, 3, 8)
    assert from_preset("vae-rgb32").config.image_size == 32


def test_a_grid_with_row_labels_names_each_row_in_a_left_margin(tmp_path):
    from genlab.generate.images import save_grid

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 3, 8, 8), dtype=np.uint8)
    plain = np.asarray(Image.open(save_grid(images, tmp_path / "plain.png", nrow=3, scale=2)))
    named = np.asarray(Image.open(save_grid(images, tmp_path / "named.png", nrow=3, scale=2,
                                            row_labels=["disc", "triangle"])))
    margin = named.shape[1] - plain.shape[1]
    assert named.shape[0] == plain.shape[0] and margin > 20
    assert np.array_equal(named[:, margin:], plain)  # the samples are untouched
    half = named.shape[0] // 2
    top, bottom = named[:half, :margin], named[half:, :margin]
    assert top.max() > 200 and bottom.max() > 200  # text in each row's part of the margin
    # "triangle" is longer than "disc": its ink reaches further right
    ink = lambda part: np.nonzero(part.max(axis=(0, 2)) > 128)[0].max()  # noqa: E731
    assert ink(bottom) > ink(top) + 5

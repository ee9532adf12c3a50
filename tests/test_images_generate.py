"""Generation from image runs through the CLI: seeded grids, labels, GIF/MP4 walks, VAE
reconstruction and interpolation, and one-line errors for what a user can get wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genlab.cli import app, main
from genlab.data.images import SHAPES_CLASSES, draw_shapes
from genlab.generate.images import ImageGenerator

from .conftest import GENLAB, ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is fastest

runner = CliRunner()


@pytest.fixture(scope="module")
def shape_files(tmp_path_factory) -> Path:
    """Drawn shapes saved as PNG files in folders named after their class."""
    root = tmp_path_factory.mktemp("shape_files")
    shapes = draw_shapes(8, 16, 1, seed=42)
    for i, (img, label) in enumerate(zip(shapes.images, shapes.labels, strict=True)):
        (root / SHAPES_CLASSES[label]).mkdir(exist_ok=True)
        Image.fromarray(img[0]).save(root / SHAPES_CLASSES[label] / f"{i}.png")
    return root


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def cli_error(monkeypatch, capsys, *args) -> str:
    """Run `genlab ARGS` in-process through main(): it must exit 2 with one `error: ...` line."""
    monkeypatch.setattr(sys, "argv", ["genlab", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_generate_image_is_seeded_and_reproducible(gan_run, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    invoke("generate", "image", gan_run, "--n", 8, "--seed", 0, "--out", a)
    invoke("generate", "image", gan_run, "--n", 8, "--seed", 0, "--out", b)
    invoke("generate", "image", gan_run, "--n", 8, "--seed", 1, "--out", c)
    assert a.read_bytes() == b.read_bytes()
    assert not np.array_equal(iio.imread(a), iio.imread(c))
    # No --label: the 4 classes cycle, one per column -> 2 rows of 4 cells of 16 px with 2 px gaps.
    assert iio.imread(a).shape == (2 + 2 * 18, 2 + 4 * 18)


def test_labels_by_name_or_index_give_the_same_images(gan_run, vae_run):
    for run in (gan_run, vae_run):
        gen = ImageGenerator.from_run(run, device="cpu")
        by_name = gen.sample(4, labels="Square", seed=3)
        assert np.array_equal(by_name, gen.sample(4, labels=1, seed=3))
        assert np.array_equal(by_name, gen.sample(4, labels="1", seed=3))
        assert not np.array_equal(by_name, gen.sample(4, labels="circle", seed=3))


def test_separate_pngs_are_named_by_label(gan_run, tmp_path):
    invoke("generate", "image", gan_run, "--n", 3, "--label", "triangle", "--separate", "--out", tmp_path / "s",
           "--scale", 2)
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["000-triangle.png", "001-triangle.png", "002-triangle.png"]
    assert iio.imread(tmp_path / "s" / files[0]).shape == (32, 32)


def test_gif_and_mp4_walks_have_the_right_frame_count(gan_run, tmp_path):
    gif, mp4 = tmp_path / "walk.gif", tmp_path / "walk.mp4"
    invoke("animate", gan_run, "--out", gif, "--n", 4, "--keyframes", 3, "--frames", 5, "--scale", 2)
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 15  # 3 hops (looping back to the start) x 5 frames
    assert frames.shape[1:3] == ((2 + 2 * 18) * 2, (2 + 2 * 18) * 2)
    invoke("animate", gan_run, "--out", mp4, "--n", 4, "--keyframes", 3, "--frames", 5, "--no-loop",
           "--fps", 10)
    with iio2.get_reader(mp4, format="FFMPEG") as reader:
        assert reader.get_meta_data()["fps"] == 10
        assert sum(1 for _ in reader) == 11  # 2 hops x 5 frames + the last keyframe


def test_class_walk_moves_between_classes(gan_run, tmp_path):
    gif = tmp_path / "classes.gif"
    invoke("animate", gan_run, "--out", gif, "--n", 1, "--classes", "circle,cross", "--frames", 4, "--scale", 1)
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 8  # circle -> cross -> circle
    gen = ImageGenerator.from_run(gan_run, device="cpu")
    # The first frame is the circle sample of seed 0 (same z), framed by the grid's 2 px border.
    assert np.array_equal(frames[0][2:18, 2:18, 0], gen.sample(1, labels="circle", seed=0)[0, 0])


def test_reconstruct_and_interpolate_real_images(vae_run, shape_files, tmp_path):
    out = tmp_path / "recon.png"
    invoke("reconstruct", vae_run, "--images", shape_files, "--out", out)
    assert iio.imread(out).shape == (2 + 2 * 18, 2 + 8 * 18)  # 8 originals above 8 reconstructions
    gen = ImageGenerator.from_run(vae_run, device="cpu")
    from genlab.generate.images import load_images

    images, labels = load_images([shape_files], gen)
    assert labels == [SHAPES_CLASSES.index(p.parent.name) for p in sorted(shape_files.rglob("*.png"))]
    recon = gen.reconstruct(images, labels).astype(float)
    own = np.abs(recon - images).mean()
    others = np.abs(recon - np.roll(images, 1, axis=0)).mean()
    assert own < 0.8 * others, (own, others)  # each reconstruction looks like its own original

    strip = tmp_path / "interp.png"
    a, b = sorted(shape_files.rglob("*.png"))[:2]
    invoke("reconstruct", vae_run, "--images", a, "--images", b, "--interpolate", 5, "--label", "circle",
           "--out", strip)
    assert iio.imread(strip).shape == (2 + 18, 2 + 7 * 18)  # original, 5 decoded points, original
    gif = tmp_path / "interp.gif"
    invoke("animate", vae_run, "--images", a, "--images", b, "--label", "circle", "--frames", 6, "--out", gif)
    assert iio.imread(gif, index=None).shape[0] == 12  # there and back


def test_reconstruct_defaults_to_held_out_images(vae_run, tmp_path):
    out = tmp_path / "recon.png"
    invoke("reconstruct", vae_run, "--n", 3, "--out", out, "--scale", 2)
    assert iio.imread(out).shape == ((2 + 2 * 18) * 2, (2 + 3 * 18) * 2)


def test_cli_errors_are_one_line(gan_run, vae_run, tmp_path, monkeypatch, capsys):
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"family": "lm", "model": {}}))
    assert "holds a lm model, not an image model" in cli_error(
        monkeypatch, capsys, "generate", "image", lm, "--out", tmp_path / "x.png")
    edited = tmp_path / "edited"
    shutil.copytree(gan_run, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["model"]["g_width"] *= 2
    (edited / "config.json").write_text(json.dumps(cfg))
    assert "does not match the model" in cli_error(
        monkeypatch, capsys, "generate", "image", edited, "--out", tmp_path / "x.png")
    assert "unknown label 'Hat'" in cli_error(
        monkeypatch, capsys, "generate", "image", gan_run, "--label", "Hat", "--out", tmp_path / "x.png")
    assert "needs a VAE run" in cli_error(monkeypatch, capsys, "reconstruct", gan_run)
    assert ".gif or .mp4" in cli_error(monkeypatch, capsys, "animate", gan_run, "--out", tmp_path / "w.avi")
    assert "at least two classes" in cli_error(monkeypatch, capsys, "animate", gan_run, "--classes", "circle",
                                               "--out", tmp_path / "w.gif")
    assert "exactly two images" in cli_error(monkeypatch, capsys, "reconstruct", vae_run, "--interpolate", 4,
                                             "--n", 3)
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    assert "no PNG or JPEG images" in cli_error(
        monkeypatch, capsys, "train", "vae", "--data", tmp_path / "empty", "--steps", 1, "--out", tmp_path / "r")
    (tmp_path / "bad" / "cats").mkdir(parents=True)
    (tmp_path / "bad" / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert "broken.jpg" in cli_error(
        monkeypatch, capsys, "train", "gan", "--data", tmp_path / "bad", "--steps", 1, "--out", tmp_path / "r")
    assert "unknown preset 'huge'" in cli_error(monkeypatch, capsys, "train", "gan", "--data", "shapes",
                                                "--preset", "huge", "--steps", 1)
    assert "not supported" in cli_error(monkeypatch, capsys, "train", "gan", "--data", "shapes",
                                        "--image-size", 30, "--steps", 1, "--out", tmp_path / "r2")


def test_installed_command_reports_a_missing_data_set(tmp_path):
    """The real `genlab` entry point, as a user runs it: exit code 2 and one line naming `make setup`."""
    exe = ROOT / ".venv" / "bin" / "genlab"
    cmd = [str(exe)] if exe.exists() else GENLAB
    env = dict(os.environ, GENLAB_FASHION_MNIST=str(tmp_path / "missing"), OMP_NUM_THREADS="1")
    res = subprocess.run([*cmd, "train", "gan", "--data", "fashion-mnist", "--steps", "1", "--out",
                          str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: Fashion-MNIST is not installed") and "make setup" in res.stderr
    assert "Traceback" not in res.stderr

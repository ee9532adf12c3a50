"""The upscale (super-resolution) family: the model, training through the shared trainer (beats
bicubic on its own training images, exact resume), `genlab upscale` on pictures, GIFs and MP4s,
`genlab eval` / `genlab size` on an upscale run, bad inputs, and the studio and `genlab animate`
enlarging with an upscaler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genlab import runs
from genlab.data.images import ImageDataConfig, load_image_data
from genlab.errors import ConfigError
from genlab.generate.upscale import ImageUpscaler
from genlab.models.upscale import UpscaleConfig, Upscaler
from genlab.train.upscale import UpscaleTrainSpec, score_pairs, train_upscale, upscale_train_config

from .cli_helpers import cli
from .test_studio_helpers import gan_run  # noqa: F401  (fixture)

SHAPES = ImageDataConfig("shapes", image_size=32, channels=1, shapes_count=256)


@pytest.fixture(scope="module")
def upscale_run(tmp_path_factory, one_thread):
    """A tiny 2x upscaler trained for 150 steps on drawn shapes (read-only for tests)."""
    run = tmp_path_factory.mktemp("runs") / "shapes-up2"
    train_upscale(UpscaleTrainSpec(run=run, data=SHAPES, scale=2, preset="tiny", quiet=True, train=upscale_train_config(
        "tiny", steps=150, eval_every=150, checkpoint_every=150, log_every=50)))
    return run


def one_line_error(code: int, err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_model_shapes_and_bicubic_start(scale, channels):
    model = Upscaler(UpscaleConfig(scale=scale, channels=channels, width=8, blocks=1))
    x = torch.rand(2, channels, 7, 9)
    y = model(x)
    assert y.shape == (2, channels, 7 * scale, 9 * scale)
    # The last conv starts at zero: an untrained model is bicubic enlargement.
    assert torch.equal(y, model.bicubic(x))


def test_config_errors():
    for bad, msg in [(dict(scale=3), "--scale must be 2 or 4"), (dict(channels=2), "channels must be 1"),
                     (dict(width=0), "--width"), (dict(blocks=-1), "--blocks")]:
        with pytest.raises(ConfigError, match=msg):
            UpscaleConfig(**bad).validate()


def test_training_beats_bicubic_on_its_training_images(upscale_run):
    cfg = runs.read_config(upscale_run, family="upscale")
    assert cfg["model"]["scale"] == 2 and cfg["patch"] == 28
    up = ImageUpscaler.from_run(upscale_run, device="cpu")
    scores = score_pairs(up.model, load_image_data(SHAPES).train.images[:128])
    assert scores["psnr"] > scores["psnr_bicubic"] + 0.5, scores
    assert scores["ssim"] > scores["ssim_bicubic"], scores
    header = (upscale_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"psnr", "psnr_bicubic", "ssim", "ssim_bicubic"} <= set(header)
    assert sorted(p.name for p in (upscale_run / "samples").iterdir()) == ["step_000150.png"]


def test_exact_resume(tmp_path, one_thread):
    def spec(run, steps, resume=False):
        return UpscaleTrainSpec(run=run, data=SHAPES, scale=4, preset="tiny", model_overrides={"width": 8, "blocks": 1},
                                resume=resume, quiet=True,
                                train=upscale_train_config("tiny", steps=steps, batch_size=8, eval_every=3,
                                                           checkpoint_every=3, eval_batches=1))

    whole = train_upscale(spec(tmp_path / "whole", 6))
    train_upscale(spec(tmp_path / "split", 3))
    resumed = train_upscale(spec(tmp_path / "split", 6, resume=True))
    assert [loss for _, loss in resumed.losses] == [loss for _, loss in whole.losses[3:]]
    a = ImageUpscaler.from_run(tmp_path / "whole", "cpu").model.state_dict()
    b = ImageUpscaler.from_run(tmp_path / "split", "cpu").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiles_give_the_whole_frame_result(upscale_run):
    up = ImageUpscaler.from_run(upscale_run, device="cpu")
    frame = (np.random.default_rng(0).random((1, 37, 45, 1)) * 255).astype(np.uint8)
    whole = up.apply(frame)
    up.tile = 10  # far below the frame: 4 x 5 tiles, each with the receptive-field margin
    tiled = up.apply(frame)
    assert tiled.shape == whole.shape == (1, 74, 90, 1)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # float rounding only


def test_upscale_png_gif_mp4_keep_frames_and_timing(upscale_run, tmp_path, monkeypatch, capsys):
    import imageio.v2 as iio2

    rng = np.random.default_rng(1)
    frames = [(rng.random((20, 24)) * 255).astype(np.uint8) for _ in range(5)]
    Image.fromarray(frames[0]).save(tmp_path / "a.png")
    colour = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "c.jpg", quality=95)
    pics = [Image.fromarray(f) for f in frames]
    pics[0].save(tmp_path / "a.gif", save_all=True, append_images=pics[1:], duration=[40, 60, 80, 100, 120], loop=0)
    with iio2.get_writer(tmp_path / "a.mp4", format="FFMPEG", mode="I", fps=15, codec="libx264",
                         pixelformat="yuv420p", macro_block_size=2, ffmpeg_log_level="error") as w:
        for f in frames:
            w.append_data(np.repeat(f[..., None], 3, axis=2))

    code, out, err = cli(["upscale", str(upscale_run), str(tmp_path / "a.png"), "--out", str(tmp_path / "b.png"),
                          "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "b.png").size == (48, 40) and "frames/s" in out

    code, out, err = cli(["upscale", str(upscale_run), str(tmp_path / "a.gif"), "--out", str(tmp_path / "b.gif"),
                          "--scale", "4", "--device", "cpu"], monkeypatch, capsys)  # 4 = the 2x run twice
    assert code == 0, err
    with Image.open(tmp_path / "b.gif") as gif:
        assert gif.size == (96, 80) and gif.n_frames == 5 and gif.info["loop"] == 0
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert durations == [40, 60, 80, 100, 120]

    code, out, err = cli(["upscale", str(upscale_run), str(tmp_path / "a.mp4"), "--out", str(tmp_path / "b.mp4"),
                          "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    reader = iio2.get_reader(tmp_path / "b.mp4", format="FFMPEG")
    meta = reader.get_meta_data()
    assert meta["fps"] == 15 and tuple(meta["size"]) == (48, 40) and reader.count_frames() == 5
    reader.close()

    # An audio track is copied as it is.
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=32x24:rate=10:duration=0.5", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.5",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(tmp_path / "av.mp4")],
                   check=True)
    code, out, err = cli(["upscale", str(upscale_run), str(tmp_path / "av.mp4"), "--out", str(tmp_path / "av2.mp4"),
                          "--device", "cpu"], monkeypatch, capsys)
    assert code == 0 and "audio copied" in out, err
    reader = iio2.get_reader(tmp_path / "av2.mp4", format="FFMPEG")
    assert reader.get_meta_data().get("audio_codec") == "aac" and tuple(reader.get_meta_data()["size"]) == (64, 48)
    reader.close()

    # A colour picture through a grayscale run: luma by the model, chroma by bicubic; colour kept.
    code, out, err = cli(["upscale", str(upscale_run), str(tmp_path / "c.jpg"), "--out", str(tmp_path / "d.png"),
                          "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    big = np.asarray(Image.open(tmp_path / "d.png"))
    assert big.shape == (40, 48, 3) and not np.array_equal(big[..., 0], big[..., 1])


def test_bad_inputs_one_line_and_nothing_written(upscale_run, tmp_path, monkeypatch, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a...")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    other = tmp_path / "gan-like"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"family": "gan", "model": {}}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cases = [
        ([str(upscale_run), str(tmp_path / "ok.png"), "--out", str(out_dir / "x.png"), "--scale", "3"],
         "was trained to enlarge 2x"),
        ([str(other), str(tmp_path / "ok.png"), "--out", str(out_dir / "x.png")], "not an upscaler"),
        ([str(upscale_run), str(tmp_path / "broken.png"), "--out", str(out_dir / "x.png")], "cannot read"),
        ([str(upscale_run), str(tmp_path / "broken.gif"), "--out", str(out_dir / "x.gif")], "cannot read"),
        ([str(upscale_run), str(tmp_path / "broken.mp4"), "--out", str(out_dir / "x.mp4")], "cannot read"),
        ([str(upscale_run), str(tmp_path / "missing.png"), "--out", str(out_dir / "x.png")], "does not exist"),
        ([str(upscale_run), str(tmp_path / "ok.bmp"), "--out", str(out_dir / "x.png")], "unknown extension"),
        ([str(upscale_run), str(tmp_path / "ok.png"), "--out", str(out_dir / "x.gif")], "must be a .png or .jpg"),
    ]
    for args, expected in cases:
        code, _, err = cli(["upscale", *args, "--device", "cpu"], monkeypatch, capsys)
        assert expected in one_line_error(code, err), (args, err)
    assert list(out_dir.iterdir()) == []  # no output, no temp file left behind


def test_train_cli_eval_and_size(tmp_path, monkeypatch, capsys, one_thread):
    run = tmp_path / "up4"
    base = ["train", "upscale", "--data", "shapes", "--image-size", "16", "--out", str(run), "--steps", "2",
            "--width", "4", "--blocks", "1", "--eval-batches", "1", "--quiet"]
    code, _, err = cli([*base, "--scale", "3"], monkeypatch, capsys)
    assert "--scale must be 2 or 4" in one_line_error(code, err)
    code, _, err = cli([*base, "--scale", "4"], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = cli([*base[:-3], "--steps", "3", "--resume", "--scale", "2", "--quiet"], monkeypatch, capsys)
    assert "cannot change it" in one_line_error(code, err)

    code, out, err = cli(["eval", str(run), "--json", "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["scale"] == 4 and res["images"] == 128 and res["split"] == "test"
    assert {"psnr", "psnr_bicubic", "ssim", "ssim_bicubic"} <= set(res)

    code, out, err = cli(["size", str(run), "--json", "--no-probe"], monkeypatch, capsys)
    assert code == 0, err
    rep = json.loads(out)
    model = Upscaler(UpscaleConfig(scale=4, width=4, blocks=1))
    assert rep["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert rep["model"]["family"] == "upscale"
    code, out, err = cli(["size", "upscale-small", "--json", "--no-probe"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["model"]["scale"] == 2


def test_studio_and_animate_use_the_upscaler(trained_run, gan_run, upscale_run, tmp_path, monkeypatch,  # noqa: F811
                                             capsys):
    from genlab.generate.speech import SpeechOptions
    from genlab.studio.pipeline import StudioRequest, load_studio

    studio = load_studio(trained_run, gan_run, device="cpu", semantic_labels=False, watermark=False, sign=False,
                         upscale_run=upscale_run)
    req = StudioRequest(prompt="A square garden", max_tokens=20, seed=3, candidates=2, quality_retries=0,
                        image_scale=5, narrate=False, speech=SpeechOptions(backend="espeak"))
    bundle = studio.make(req, tmp_path / "bundle")
    roles = {m["role"]: m for m in bundle.manifest["models"]}
    assert roles["upscaler"]["family"] == "upscale" and roles["upscaler"]["run"] == upscale_run.name
    assert roles["upscaler"]["weights_sha256"] == runs.file_sha256(upscale_run / runs.WEIGHTS)
    how = bundle.manifest["parameters"]["illustration"]["enlargement"]
    assert how == {"method": "upscale-run", "run": upscale_run.name, "scale": 2, "channels": 1, "factor": 5,
                   "passes": 2, "finish": "bicubic"}
    assert Image.open(bundle.folder / "images/illustration.png").size == (80, 80)  # 16 px x 5

    code, out, err = cli(["animate", str(gan_run), "--upscale", str(upscale_run), "--scale", "2", "--n", "4",
                          "--frames", "2", "--keyframes", "2", "--out", str(tmp_path / "walk.gif"), "--device", "cpu"],
                         monkeypatch, capsys)
    assert code == 0, err
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (2 * (2 + 2 * 18), 2 * (2 + 2 * 18))


def test_onnx_export_matches_pytorch_and_upscales_files(upscale_run, tmp_path, monkeypatch, capsys):
    """`genlab export --format onnx` on an upscale run: one graph for any frame size, onnxruntime equal to
    PyTorch within float rounding, and the .onnx file works wherever a run does (genlab upscale)."""
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "up2.onnx"
    code, out, err = cli(["export", str(upscale_run), "--format", "onnx", "--out", str(onnx_path)], monkeypatch, capsys)
    assert code == 0, err
    assert (out + err).count("onnxruntime vs PyTorch") == 2, out + err  # two frame sizes, one not square
    exported = ImageUpscaler.from_run(onnx_path)
    torch_up = ImageUpscaler.from_run(upscale_run, device="cpu")
    assert (exported.scale, exported.channels) == (torch_up.scale, torch_up.channels)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 19, 30, 1), dtype=np.uint8)
    a, b = exported.apply(frames), torch_up.apply(frames)
    assert a.shape == (2, 38, 60, 1) and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # Large frames go through the same tiling as with PyTorch.
    exported.tile = torch_up.tile = 12
    assert np.abs(exported.apply(frames).astype(int) - b.astype(int)).max() <= 1

    Image.fromarray(frames[0, :, :, 0]).save(tmp_path / "in.png")
    code, out, err = cli(["upscale", str(onnx_path), str(tmp_path / "in.png"), "--out", str(tmp_path / "big.png")],
                         monkeypatch, capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "big.png").size == (60, 38)
    # An ONNX file that is not an upscaler: one line, exit 2.
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, out, err = cli(["upscale", str(tmp_path / "junk.onnx"), str(tmp_path / "in.png"), "--out",
                          str(tmp_path / "x.png")], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err

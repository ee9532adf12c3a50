"""Few-shot fine-tuning of GAN and VAE runs (`genlab finetune BASE --data FOLDER`): class tables grow and keep
the old rows, FreezeD, DiffAugment, exact resume, evaluation on the new data's classes, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from genlab import runs
from genlab.data.images import ImageDataConfig
from genlab.errors import ConfigError, DataError, RunError
from genlab.evaluate.classifier import ClassifierConfig
from genlab.evaluate.image_metrics import evaluate_image_run
from genlab.generate.images import ImageGenerator
from genlab.models.gan import GAN, GANConfig
from genlab.models.vae import VAE, VAEConfig
from genlab.train import finetune_images as fi
from genlab.train.diffaugment import DiffAugment, parse_policy
from genlab.train.image import ImageTrainSpec, image_train_config, train_image

from .cli_helpers import cli

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = ["circle", "square", "triangle", "cross"]


def draw_folder(root: Path, classes: dict[str, str], n: int = 10, size: int = 16, mode: str = "L") -> Path:
    """One sub-folder per class of ``n`` drawn images: 'ring' (an outline), 'bar' (a horizontal bar) or
    'square' (filled), at random places."""
    rng = np.random.default_rng(0)
    for name, kind in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            im = Image.new(mode, (size, size), 0)
            d = ImageDraw.Draw(im)
            x, y = rng.integers(2, size // 2, size=2)
            fill = int(rng.integers(150, 256)) if mode == "L" else (255, int(rng.integers(0, 100)), 0)
            if kind == "ring":
                d.ellipse([x, y, x + 7, y + 7], outline=fill, width=2)
            elif kind == "bar":
                d.rectangle([1, y, size - 2, y + 2], fill=fill)
            else:
                d.rectangle([x, y, x + 6, y + 6], fill=fill)
            im.save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    # "Square" is the base's "square" (names match ignoring case); "bar" and "ring" are new.
    return draw_folder(tmp_path_factory.mktemp("few") / "few", {"Square": "square", "bar": "bar", "ring": "ring"})


def _base(tmp_path_factory, family: str) -> Path:
    run = tmp_path_factory.mktemp(f"base-{family}") / "run"
    train_image(ImageTrainSpec(
        family=family, run=run, data=ImageDataConfig("shapes", image_size=16, shapes_count=64), preset="tiny",
        train=image_train_config(family, "tiny", steps=4, eval_every=4, checkpoint_every=4, batch_size=8,
                                 log_every=1, eval_batches=1), quiet=True))
    return run


@pytest.fixture(scope="module")
def gan_base(tmp_path_factory) -> Path:
    return _base(tmp_path_factory, "gan")


@pytest.fixture(scope="module")
def vae_base(tmp_path_factory) -> Path:
    return _base(tmp_path_factory, "vae")


def spec(base: Path | None, data: Path | None, run: Path, steps: int, **kw) -> fi.ImageFinetuneSpec:
    overrides = dict(steps=steps, batch_size=8, eval_every=4, checkpoint_every=4, log_every=1, eval_batches=1)
    return fi.ImageFinetuneSpec(run=run, base=base, data=None if data is None else str(data),
                                train_overrides=overrides, quiet=True, **kw)


def _load(run: Path) -> GAN | VAE:
    cfg = runs.read_config(run)
    model = GAN(GANConfig.from_dict(cfg["model"])) if cfg["family"] == "gan" else VAE(VAEConfig.from_dict(cfg["model"]))
    runs.load_weights(run, model)
    return model


def test_growing_the_class_tables_keeps_the_old_rows_exactly(gan_base, vae_base):
    gan = _load(gan_base)
    old = {name: t.clone() for name, t in gan.state_dict().items()}
    fi.grow_classes(gan, 2, seed=0)
    sd = gan.state_dict()
    assert gan.cfg.num_classes == gan.generator.cfg.num_classes == gan.ema.cfg.num_classes == 6
    for name in ("generator.embed.weight", "ema.embed.weight", "discriminator.embed.parametrizations.weight.original"):
        assert sd[name].shape[0] == 6
        assert torch.equal(sd[name][:4], old[name]), name  # old classes: bit-for-bit
        assert not torch.equal(sd[name][4], sd[name][5])  # the noise tells the new classes apart
        # New rows start near the old rows' mean.
        assert torch.allclose(sd[name][4:], old[name].mean(0, keepdim=True), atol=0.5 * float(old[name].std()))
    assert torch.equal(sd["ema.embed.weight"][4:], sd["generator.embed.weight"][4:])
    # Every other weight is the base's.
    for name, t in old.items():
        if "embed" not in name:
            assert torch.equal(sd[name], t), name
    # The grown model is the same shape as a freshly built one of the larger config (so the run reloads).
    fresh = GAN(GANConfig.from_dict(gan.cfg.to_dict()))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in sd.items()}

    # The auxiliary classifier (when the base has one) gets an output per new class; old outputs stay.
    aux = GAN(GANConfig(image_size=16, num_classes=4, latent_dim=8, embed_dim=4, g_width=4, d_width=4, aux_class=0.5))
    head = aux.discriminator.classify.weight.detach().clone(), aux.discriminator.classify.bias.detach().clone()
    fi.grow_classes(aux, 2, seed=0)
    assert aux.discriminator.classify.weight.shape == (6, head[0].shape[1])
    assert torch.equal(aux.discriminator.classify.weight[:4], head[0])
    assert torch.equal(aux.discriminator.classify.bias[:4], head[1])
    assert {k: v.shape for k, v in GAN(GANConfig.from_dict(aux.cfg.to_dict())).state_dict().items()} == \
        {k: v.shape for k, v in aux.state_dict().items()}

    vae = _load(vae_base)
    rows = vae.embed.weight.detach().clone()
    fi.grow_classes(vae, 3, seed=0)
    assert vae.embed.weight.shape[0] == 7 and torch.equal(vae.embed.weight[:4], rows)


def test_gan_finetune_grows_the_classes_freezes_d_and_generates_old_and_new(gan_base, folder, tmp_path,
                                                                            monkeypatch, capsys):
    run = tmp_path / "ft"
    code, _, err = cli(["finetune", str(gan_base), "--data", str(folder), "--out", str(run), "--steps", "6",
                        "--batch-size", "8", "--eval-every", "3", "--checkpoint-every", "3", "--eval-batches", "1",
                        "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["family"] == "gan" and cfg["model"]["num_classes"] == 6
    assert cfg["data"]["class_names"] == SHAPES + ["bar", "ring"]
    assert cfg["data"]["folder_class_names"] == ["Square", "bar", "ring"]
    sec = cfg["finetune"]
    assert sec["base"] == str(gan_base.resolve()) and sec["base_sha256"] == runs.file_sha256(gan_base / "model.safetensors")
    assert sec["new_classes"] == ["bar", "ring"] and sec["freeze_d"] == 2
    assert sec["augment"] == ["translation", "cutout", "color"] and sec["base_class_names"] == SHAPES
    assert sec["replay"] == 0.5 and sec["replay_classes"] == ["circle", "triangle", "cross"]  # all but Square
    assert sec["replay_align"] == 1.0

    base, tuned = _load(gan_base).state_dict(), _load(run).state_dict()
    # FreezeD: the stem and the first downsampling block are the base's; the last block and the head moved.
    for name in base:
        if name.startswith(("discriminator.stem.", "discriminator.downs.0.")) and name.endswith("original"):
            assert torch.equal(base[name], tuned[name]), name
    assert not torch.equal(base["discriminator.downs.1.parametrizations.weight.original"],
                           tuned["discriminator.downs.1.parametrizations.weight.original"])
    assert not torch.equal(base["generator.fc.weight"], tuned["generator.fc.weight"])

    # The fine-tuned run draws old classes and new ones, by name, through `genlab generate` too.
    gen = ImageGenerator.from_run(run)
    images = gen.sample(4, labels=["circle", "square", "bar", "ring"], seed=0)
    assert images.shape == (4, 1, 16, 16)
    for label in ("triangle", "ring"):
        out = tmp_path / f"{label}.png"
        code, _, err = cli(["generate", "image", str(run), "--label", label, "--n", "2", "--out", str(out)],
                           monkeypatch, capsys)
        assert code == 0 and out.exists(), err


def test_resume_is_exact_with_augmentation(gan_base, folder, tmp_path, monkeypatch, capsys):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    fi.finetune_image(spec(gan_base, folder, straight, 8))
    fi.finetune_image(spec(gan_base, folder, parts, 4))
    # `genlab finetune --resume --out RUN` finds the image run by its own config.json (no BASE, no --data).
    code, _, err = cli(["finetune", "--resume", "--out", str(parts), "--steps", "8", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert runs.checkpoint_steps(parts) == (8, 8)
    a, b = _load(straight).state_dict(), _load(parts).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vae_finetune_with_input_augmentation_and_eval_on_the_new_classes(vae_base, folder, tmp_path):
    run = tmp_path / "vae-ft"
    res = fi.finetune_image(spec(vae_base, folder, run, 6, augment="translation,flip", test_fraction=0.3))
    assert res.step == 6 and np.isfinite(res.val["nelbo"])
    cfg = runs.read_config(run)
    assert cfg["model"]["num_classes"] == 6 and cfg["finetune"]["freeze_d"] is None
    assert cfg["finetune"]["augment"] == ["translation", "flip"]
    # `genlab eval` scores the folder's classes, against the folder's held-out images, matched by name.
    m = evaluate_image_run(run, n=30, classifier_config=ClassifierConfig(steps=10, batch_size=16), quiet=True)
    assert m["classes_scored"] == ["square", "bar", "ring"]
    assert 0.0 <= m["conditional_accuracy"] <= 1.0 and np.isfinite(m["fcd"]) and np.isfinite(m["nelbo_nats"])
    # An ordinary run is scored on all of its classes, as before.
    assert "classes_scored" not in evaluate_image_run(vae_base, n=30, classifier_config=ClassifierConfig(steps=5),
                                                      quiet=True)


def test_diffaugment_is_differentiable_reproducible_and_does_what_it_says():
    aug = DiffAugment(parse_policy("translation,cutout,color"), 16)
    p1, p2 = aug.draw(np.random.default_rng(3), 5), aug.draw(np.random.default_rng(3), 5)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    x = torch.rand(5, 1, 16, 16, requires_grad=True)
    y = aug.apply(x, p1)
    assert y.shape == x.shape and torch.equal(y, aug.bind(p2)(x))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Translation by (dy, dx) = (1, -2): a shifted image, zeros where nothing came in.
    shift = DiffAugment(["translation"], 16)
    img = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16) + 1
    moved = shift.apply(img, {"translation": np.array([[1, -2]])})
    assert torch.equal(moved[0, 0, 1:, :14], img[0, 0, :15, 2:])
    assert (moved[0, 0, 0] == 0).all() and (moved[0, 0, :, 14:] == 0).all()
    cut = DiffAugment(["cutout"], 16).apply(torch.ones(1, 1, 16, 16), {"cutout": np.array([[8, 8]])})
    assert int((cut == 0).sum()) == 64 and cut[0, 0, 4:12, 4:12].eq(0).all()
    with pytest.raises(ConfigError):
        parse_policy("translation,blur")
    assert parse_policy("none") == []


def test_bad_inputs_get_one_line_and_exit_2(gan_base, vae_base, folder, tmp_path, monkeypatch, capsys):
    one = draw_folder(tmp_path / "one", {"ring": "ring"})
    colour = draw_folder(tmp_path / "colour", {"a": "ring", "b": "bar"}, mode="RGB")
    out = str(tmp_path / "out")
    cases = [
        ([str(gan_base), "--data", str(one)], "one class"),
        ([str(gan_base), "--data", str(colour)], "colour image"),
        ([str(gan_base), "--data", str(folder), "--lora-rank", "4"], "--lora-rank is for language-model runs"),
        ([str(gan_base), "--data", str(folder), "--method", "full"], "--method is for language-model runs"),
        ([str(gan_base), "--data", str(folder), "--freeze-d", "9"], "--freeze-d must be between 0 and 3"),
        ([str(gan_base), "--data", str(folder), "--augment", "blur"], "unknown augmentation 'blur'"),
        ([str(gan_base), "--data", str(folder), "--replay", "1"], "--replay must be in [0, 1)"),
        ([str(vae_base), "--data", str(folder), "--freeze-d", "1"], "--freeze-d is for GAN runs"),
        ([str(vae_base), "--data", str(folder), "--augment", "color"], "a VAE's augmentation"),
        ([str(gan_base), "--data", str(tmp_path / "nowhere")], "not found"),
        ([str(gan_base)], "give one folder"),
    ]
    for args, message in cases:
        code, _, err = cli(["finetune", *args, "--out", out, "--steps", "2"], monkeypatch, capsys)
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not Path(out).exists(), args
    with pytest.raises(DataError, match="one class"):
        fi.finetune_image(spec(gan_base, one, tmp_path / "lib", 2))


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_replay_swaps_part_of_each_batch_for_the_frozen_base_samples_of_old_classes(family, gan_base, vae_base):
    base_run = gan_base if family == "gan" else vae_base
    base = fi.load_base(base_run, family)
    replay = fi.GenerativeReplay(base, fi.replay_classes(SHAPES, [1, 4, 5]), 0.5)  # the folder has square + 2 new
    drawn = replay.draw(np.random.default_rng(0), 8)
    labels, z = drawn
    assert len(z) == 4 and set(labels.tolist()) <= {0, 2, 3}  # circle, triangle, cross: never the folder's
    real, y = torch.rand(8, 1, 16, 16), torch.full((8,), 5)
    mixed, mixed_y = replay.mix(real, y, drawn)
    swapped, kept = [0, 2, 4, 6], [1, 3, 5, 7]  # spread evenly: each half of the batch holds two
    assert torch.equal(mixed[kept], real[kept]) and mixed_y[kept].tolist() == [5] * 4
    assert mixed_y[swapped].tolist() == labels.tolist()
    t = torch.from_numpy(labels)
    expected = base.generate(torch.from_numpy(z), base.class_embedding(t))  # the base as trained, untouched
    assert torch.allclose(mixed[swapped], expected)
    assert fi.GenerativeReplay.rows(3, 32).tolist() == [0, 10, 21]
    assert replay.draw(np.random.default_rng(0), 8)[1].tolist() == z.tolist()  # from the batch RNG alone


def test_replay_off_and_a_changed_base_on_resume(gan_base, folder, tmp_path):
    import shutil
    off = tmp_path / "off"
    fi.finetune_image(spec(gan_base, folder, off, 2, replay=0.0))
    assert runs.read_config(off)["finetune"]["replay"] == 0.0
    base = tmp_path / "base"
    shutil.copytree(gan_base, base)
    run = tmp_path / "ft"
    fi.finetune_image(spec(base, folder, run, 4))
    model = _load(base)
    with torch.no_grad():
        model.ema.fc.bias.add_(1.0)
    runs.save_weights(base, model)
    with pytest.raises(RunError, match="changed since this fine-tune started"):
        fi.finetune_image(fi.ImageFinetuneSpec(run=run, resume=True, train_overrides={"steps": 6}, quiet=True))


def test_replay_alignment_pins_old_classes_to_the_base_and_ignores_new_ones(gan_base):
    base = fi.load_base(gan_base, "gan")
    replay = fi.GenerativeReplay(base, [0, 2], 0.5, align=1.0)
    z, y = torch.randn(4, base.latent_dim), torch.tensor([0, 2, 1, 3])
    with torch.no_grad():
        same = base.ema(z, y)  # exactly what the base draws: nothing to pay
    assert replay.alignment(same, z, y).item() < 1e-10
    moved = same.clone()
    moved[2:] += 1.0  # rows of classes the folder has (1, 3): free to change
    assert replay.alignment(moved, z, y).item() < 1e-10
    moved[0] += 0.5
    assert replay.alignment(moved, z, y).item() == pytest.approx(0.25 / 2, rel=1e-4)  # mean over 2 old rows
    assert fi.GenerativeReplay(base, [0, 2], 0.5, align=0.0).alignment(moved, z, y).item() == 0.0

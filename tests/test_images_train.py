"""GAN and VAE through the shared trainer: learning, the run directory, exact resume."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab import runs
from genlab.data.images import ImageDataConfig
from genlab.errors import DataError, RunError
from genlab.models.gan import GAN, GANConfig
from genlab.models.vae import VAE, VAEConfig
from genlab.train.image import GANTask, ImageTrainSpec, VAETask, image_train_config, train_image
from genlab.train.trainer import Interrupted

from .conftest import ROOT, ctrl_c_during_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is fastest

SHAPES16 = ImageDataConfig("shapes", image_size=16, channels=1, shapes_count=256)




def spec(family: str, run: Path, steps: int, resume: bool = False, **train_kw) -> ImageTrainSpec:
    kw = dict(steps=steps, eval_every=5, checkpoint_every=5, log_every=1, batch_size=8)
    kw.update(train_kw)
    return ImageTrainSpec(family=family, run=run, data=SHAPES16, preset="tiny",
                          train=image_train_config(family, "tiny", **kw), resume=resume, quiet=True)


def rows(run: Path, split: str = "train") -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def test_vae_elbo_falls_and_the_run_directory_is_complete(tmp_path):
    run = tmp_path / "vae"
    res = train_image(spec("vae", run, 60, eval_every=20, checkpoint_every=20, batch_size=16))
    first = sum(v for _, v in res.losses[:5]) / 5
    last = sum(v for _, v in res.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    val = rows(run, "val")
    assert [int(r["step"]) for r in val] == [20, 40, 60]
    assert float(val[-1]["nelbo"]) < float(val[0]["nelbo"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["family"] == "vae" and cfg["model"]["image_size"] == 16 and cfg["model"]["num_classes"] == 4
    assert cfg["data"]["class_names"] == ["circle", "square", "triangle", "cross"] and cfg["data"]["fingerprint"]
    for name in ("model.safetensors", "train_state.pt", "metrics.csv"):
        assert (run / name).exists()
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_000020.png", "step_000040.png", "step_000060.png"]
    assert list((run / "tb").iterdir())


def test_gan_trains_logs_both_losses_and_stores_three_networks(tmp_path):
    run = tmp_path / "gan"
    res = train_image(spec("gan", run, 30, eval_every=15, checkpoint_every=15, batch_size=16))
    train_rows = rows(run)
    assert [int(r["step"]) for r in train_rows] == list(range(1, 31))
    for r in train_rows:
        d, g = float(r["d_loss"]), float(r["g_loss"])
        assert math.isfinite(d) and math.isfinite(g) and d >= 0  # hinge D loss is never negative
        assert float(r["loss"]) == pytest.approx(d + g, abs=1e-4)
    # The discriminator learns to tell drawn shapes from early fakes.
    early = sum(float(r["d_loss"]) for r in train_rows[:5]) / 5
    late = sum(float(r["d_loss"]) for r in train_rows[-5:]) / 5
    assert late < early, (early, late)
    assert set(rows(run, "val")[0]) >= {"d_real", "d_fake"}
    weights = runs.weights_of(_load(run))
    assert {k.split(".")[0] for k in weights} == {"generator", "discriminator", "ema", "ema_updates"}
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert {"optimizer_d", "optimizer_g"} <= set(state) and state["step"] == 30
    assert res.step == 30 and res.throughput > 0


def _load(run: Path) -> GAN | VAE:
    cfg = json.loads((run / "config.json").read_text())
    model = GAN(GANConfig.from_dict(cfg["model"])) if cfg["family"] == "gan" else VAE(VAEConfig.from_dict(cfg["model"]))
    runs.load_weights(run, model)
    return model


@pytest.mark.parametrize("family,task", [("gan", GANTask), ("vae", VAETask)])
def test_resume_reproduces_the_uninterrupted_losses_exactly(tmp_path, monkeypatch, family, task):
    steps = 12
    straight = train_image(spec(family, tmp_path / "a", steps))
    # The same run, stopped by a Ctrl-C that arrives during step 6, then resumed.
    ctrl_c_during_batch(monkeypatch, task, 6)
    with pytest.raises(Interrupted, match="stopped at step 6"):
        train_image(spec(family, tmp_path / "b", steps))
    monkeypatch.undo()
    resumed = train_image(spec(family, tmp_path / "b", steps, resume=True))
    assert resumed.losses == straight.losses[6:]  # bit-for-bit equal floats
    logged = [c for c in rows(tmp_path / "a")[0] if c not in ("time_s", "throughput")]
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [int(r["step"]) for r in b] == list(range(1, steps + 1))  # no duplicated rows
    assert [[r[c] for c in logged] for r in a] == [[r[c] for c in logged] for r in b]
    wa, wb = runs.weights_of(_load(tmp_path / "a")), runs.weights_of(_load(tmp_path / "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_channels_last_trains_the_same_model_as_nchw(tmp_path, family):
    """A speed lever, not a change of algorithm: 10 steps in NHWC and in NCHW layout log the same losses and end
    at models that compute the same images, up to float rounding (oneDNN sums in another order).

    Compared by what the models compute, not weight by weight: the bias of a GAN convolution right before batch
    norm has a zero gradient in exact arithmetic, so Adam turns rounding noise into lr-sized steps in it, which
    the batch norm then removes."""
    a = train_image(spec(family, tmp_path / "nhwc", 10, channels_last=True))
    b = train_image(spec(family, tmp_path / "nchw", 10, channels_last=False))
    assert [v for _, v in a.losses] == pytest.approx([v for _, v in b.losses], rel=1e-4, abs=1e-5)
    ma, mb = _load(tmp_path / "nhwc").eval(), _load(tmp_path / "nchw").eval()
    z, labels = torch.randn(8, ma.latent_dim, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 4
    emb_a, emb_b = ma.class_embedding(labels), mb.class_embedding(labels)
    assert torch.allclose(ma.generate(z, emb_a), mb.generate(z, emb_b), atol=1e-3)
    if family == "gan":
        x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(ma.discriminator(x, labels), mb.discriminator(x, labels), rtol=1e-3, atol=1e-4)
    assert json.loads((tmp_path / "nchw" / "config.json").read_text())["train"]["channels_last"] is False


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_bf16_autocast_stays_within_a_bound_of_fp32(tmp_path, family):
    """bf16 autocast (a lever measured slower on this CPU, but the default on some accelerators) runs the same
    algorithm: over 10 steps from the same seed its losses track fp32's within bf16's precision (8 mantissa bits:
    a few percent once rounding errors compound), and the model it ends at still computes images close to fp32's.
    A broken autocast path (wrong dtype reaching the loss, a layer left out of the cast) moves them far more."""
    a = train_image(spec(family, tmp_path / "fp32", 10, dtype="float32"))
    b = train_image(spec(family, tmp_path / "bf16", 10, dtype="bfloat16"))
    la, lb = [v for _, v in a.losses], [v for _, v in b.losses]
    assert la != lb  # bf16 really ran
    assert lb == pytest.approx(la, rel=0.1, abs=0.05)  # measured: GAN 4.4% (0.075 on a loss of 1.7), VAE 0.01%
    ma, mb = _load(tmp_path / "fp32").eval(), _load(tmp_path / "bf16").eval()
    assert all(p.dtype == torch.float32 for p in mb.parameters())  # autocast: the weights stay fp32
    z, labels = torch.randn(8, ma.latent_dim, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 4
    diff = (ma.generate(z, ma.class_embedding(labels)) - mb.generate(z, mb.class_embedding(labels))).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1  # measured: GAN 5e-4 / 0.004, VAE 8e-6 / 3e-5
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["train"]["dtype"] == "bfloat16"


def test_frozen_discriminator_leaves_the_generator_step_unchanged():
    """The G update freezes D (its weight gradients would be dropped): G's gradients are those of an unfrozen D."""
    torch.manual_seed(0)
    gan = GAN(GANConfig(image_size=16, num_classes=4, latent_dim=8, embed_dim=8, g_width=8, d_width=8))
    z, labels = torch.randn(6, 8), torch.randint(0, 4, (6,))

    def g_grads(freeze: bool) -> list[torch.Tensor]:
        gan.zero_grad(set_to_none=True)
        gan.discriminator.requires_grad_(not freeze)
        state = {k: v.clone() for k, v in gan.state_dict().items()}  # spectral norm's power iteration moves u
        (-gan("g", z, labels)[0].mean()).backward()
        gan.load_state_dict(state)
        gan.discriminator.requires_grad_(True)
        assert all((p.grad is None) == freeze for p in gan.discriminator.parameters())  # nothing computed for D
        return [p.grad.clone() for p in gan.generator.parameters()]

    assert all(torch.equal(x, y) for x, y in zip(g_grads(True), g_grads(False), strict=True))


def test_existing_run_wrong_family_and_changed_data_are_clear_errors(tmp_path):
    run = tmp_path / "vae"
    train_image(spec("vae", run, 2))
    with pytest.raises(RunError, match="already exists"):
        train_image(spec("vae", run, 2))
    with pytest.raises(RunError, match="holds a vae model, not a gan model"):
        train_image(spec("gan", run, 4, resume=True))
    changed = spec("vae", run, 4, resume=True)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["fingerprint"] = "0" * 16
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="changed since"):
        train_image(changed)


@pytest.mark.slow
def test_torchrun_two_processes_train_a_gan(tmp_path):
    """DDP with a stepping task: both passes go through the wrapper, rank 0 alone writes."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "genlab",
           "train", "gan", "--data", "shapes", "--image-size", "16", "--out", str(run), "--steps", "6",
           "--batch-size", "8", "--eval-every", "3", "--checkpoint-every", "3", "--log-every", "1",
           "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    train_rows = rows(run)
    assert [int(r["step"]) for r in train_rows] == list(range(1, 7))  # one writer
    assert all(math.isfinite(float(r["d_loss"])) and math.isfinite(float(r["g_loss"])) for r in train_rows)
    assert float(train_rows[0]["throughput"]) > 0
    state = runs.load_train_state(run)
    assert state["step"] == 6 and {"optimizer_d", "optimizer_g"} <= set(state)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000003.png", "step_000006.png"]
    assert res.stderr.count("gan model:") == 1  # only rank 0 talks


def test_cli_trains_with_the_auxiliary_classifier_and_the_learned_sigma(tmp_path, monkeypatch, capsys):
    from .cli_helpers import cli

    common = ["--data", "shapes", "--image-size", "16", "--steps", "3", "--batch-size", "8", "--eval-every", "3",
              "--checkpoint-every", "3", "--log-every", "1", "--quiet"]
    code, _, err = cli(["train", "gan", *common, "--aux-class", "0.5", "--out", str(tmp_path / "gan")], monkeypatch, capsys)
    assert code == 0, err
    assert runs.read_config(tmp_path / "gan")["model"]["aux_class"] == 0.5
    gan = GAN(GANConfig.from_dict(runs.read_config(tmp_path / "gan")["model"]))
    runs.load_weights(tmp_path / "gan", gan)  # the head is saved with the run
    assert gan.discriminator.classify is not None
    assert all(math.isfinite(float(r["d_loss"])) for r in rows(tmp_path / "gan"))

    code, _, err = cli(["train", "vae", *common, "--likelihood", "gaussian", "--learn-sigma", "--sigma", "0.2",
                        "--out", str(tmp_path / "vae")], monkeypatch, capsys)
    assert code == 0, err
    vae = VAE(VAEConfig.from_dict(runs.read_config(tmp_path / "vae")["model"]))
    runs.load_weights(tmp_path / "vae", vae)
    assert vae.cfg.learn_sigma and float(vae.log_sigma) != pytest.approx(math.log(0.2))  # it was trained
    code, _, err = cli(["train", "vae", *common, "--learn-sigma", "--out", str(tmp_path / "bad")], monkeypatch, capsys)
    assert code == 2 and "learn-sigma needs the gaussian likelihood" in err
    assert not (tmp_path / "bad" / "model.safetensors").exists()

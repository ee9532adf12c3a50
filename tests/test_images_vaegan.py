"""The VAE with an adversarial term (VAE-GAN): the critic, the adaptive weight, exact resume, the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from genlab import runs
from genlab.data.images import ImageDataConfig
from genlab.models.vae import VAE, VAEConfig
from genlab.train.image import AdversarialVAETask, ImageTrainSpec, image_train_config, task_class, train_image
from genlab.train.trainer import Interrupted

from .cli_helpers import cli
from .conftest import ctrl_c_during_batch

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES16 = ImageDataConfig("shapes", image_size=16, channels=1, shapes_count=256)


def spec(run: Path, steps: int, resume: bool = False, adversarial: float = 0.5) -> ImageTrainSpec:
    tcfg = image_train_config("vae", "tiny", steps=steps, eval_every=5, checkpoint_every=5, log_every=1, batch_size=8)
    return ImageTrainSpec(family="vae", run=run, data=SHAPES16, preset="tiny", train=tcfg, resume=resume, quiet=True,
                          model_overrides={"adversarial": adversarial, "d_width": 8})


def train_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "train"]


def test_the_task_follows_the_config():
    assert task_class("vae", VAEConfig()).__name__ == "VAETask"
    assert task_class("vae", VAEConfig(adversarial=0.5)) is AdversarialVAETask
    assert VAE(VAEConfig()).critic is None  # no critic, no extra weights in plain runs


def test_the_adversarial_passes_score_reconstructions_then_prior_samples_and_keep_the_elbo():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_size=16, num_classes=4, latent_dim=8, embed_dim=8, width=8, adversarial=0.5, d_width=8))
    vae.eval()  # spectral norm's power iteration would move the critic a little at every call
    x, labels = torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    eps, prior_z = torch.randn(6, 8), torch.randn(6, 8)
    recon, kl = vae(x, labels, eps)
    recon2, kl2, scores, fakes = vae(x, labels, eps, prior_z, phase="vae")
    assert torch.allclose(recon, recon2, atol=1e-5) and torch.allclose(kl, kl2)  # same ELBO terms
    assert scores.shape == (12,) and fakes.shape == (12, 1, 16, 16)
    # The fakes are the reconstructions and then the prior samples of the same labels; the scores are the critic's.
    mu, logvar = vae.encode(x, labels)
    recon_images = torch.sigmoid(vae.decode_logits(mu + torch.exp(0.5 * logvar) * eps, vae.class_embedding(labels)))
    prior_images = vae.generate(prior_z, vae.class_embedding(labels))
    assert torch.allclose(fakes, torch.cat([recon_images, prior_images]), atol=1e-5)
    assert torch.allclose(scores, vae.critic(fakes * 2 - 1, labels.repeat(2)), atol=1e-5)
    s_real, s_fake = vae(x, labels, None, phase="d", fakes=fakes.detach())
    assert torch.allclose(s_real, vae.critic(x * 2 - 1, labels), atol=1e-5)
    assert torch.allclose(s_fake, scores, atol=1e-5)
    (s_real.sum() + s_fake.sum()).backward()  # the critic's pass: gradients reach the critic, not the VAE
    assert vae.critic.stem.parametrizations.weight.original.grad is not None
    assert vae.dec_out.weight.grad is None and vae.enc_stem.weight.grad is None
    with pytest.raises(ValueError, match="unknown VAE phase"):
        vae(x, labels, eps, prior_z, phase="g")


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_layer():
    layer = torch.nn.Parameter(torch.randn(3, 4))
    a, b = (layer * 2.0).sum(), (layer ** 2).sum() * 0.25
    w = AdversarialVAETask.adaptive_weight(a, b, layer)
    assert not w.requires_grad
    assert float(w) == pytest.approx(float(torch.full((3, 4), 2.0).norm() / ((layer.detach() * 0.5).norm() + 1e-4)),
                                     rel=1e-5)


def test_vaegan_trains_its_critic_and_stores_it(tmp_path):
    run = tmp_path / "vaegan"
    res = train_image(spec(run, 20))
    logged = train_rows(run)
    for r in logged:
        assert float(r["d_loss"]) >= 0 and math.isfinite(float(r["g_adv"]))  # a hinge loss is never negative
        assert 0 < float(r["adv_weight"]) < 1e4
        assert float(r["nelbo"]) == pytest.approx(float(r["recon"]) + float(r["kl"]), rel=1e-4)
    assert float(logged[-1]["nelbo"]) < float(logged[0]["nelbo"])  # it still learns to reconstruct
    assert res.step == 20
    weights = runs.weights_of(_load(run))
    assert any(k.startswith("critic.") for k in weights)
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert {"optimizer", "optimizer_d"} <= set(state)
    assert json.loads((run / "config.json").read_text())["model"]["adversarial"] == 0.5


def _load(run: Path) -> VAE:
    model = VAE(VAEConfig.from_dict(json.loads((run / "config.json").read_text())["model"]))
    runs.load_weights(run, model)
    return model


def test_resume_reproduces_the_uninterrupted_vaegan_exactly(tmp_path, monkeypatch):
    straight = train_image(spec(tmp_path / "a", 10))
    ctrl_c_during_batch(monkeypatch, AdversarialVAETask, 5)
    with pytest.raises(Interrupted, match="stopped at step 5"):
        train_image(spec(tmp_path / "b", 10))
    monkeypatch.undo()
    resumed = train_image(spec(tmp_path / "b", 10, resume=True))
    assert resumed.losses == straight.losses[5:]
    wa, wb = runs.weights_of(_load(tmp_path / "a")), runs.weights_of(_load(tmp_path / "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_trains_and_samples_a_vaegan_and_refuses_a_negative_weight(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    common = ["--data", "shapes", "--image-size", "16", "--preset", "tiny", "--batch-size", "8"]
    code, _, err = cli(["train", "vae", *common, "--steps", "3", "--adversarial", "0.3", "--d-width", "8",
                        "--out", str(run), "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = cli(["generate", "image", str(run), "--n", "4", "--out", str(tmp_path / "grid.png")],
                       monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "grid.png").stat().st_size > 0
    code, _, err = cli(["train", "vae", *common, "--steps", "3", "--adversarial", "-1", "--out", str(tmp_path / "bad")],
                       monkeypatch, capsys)
    assert code == 2 and [line for line in err.splitlines() if line.startswith("error")] == [
        "error: adversarial must not be negative (got -1.0)"]
    assert not (tmp_path / "bad").exists()


def test_torchrun_two_processes_train_a_vaegan(tmp_path):
    """Both passes of the VAE-GAN step go through the DDP wrapper (the critic frozen in the first)."""
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "genlab",
           "train", "vae", "--data", "shapes", "--image-size", "16", "--adversarial", "0.5", "--d-width", "8",
           "--out", str(run), "--steps", "4", "--batch-size", "8", "--eval-every", "4", "--checkpoint-every", "4",
           "--log-every", "1", "--device", "cpu"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    logged = train_rows(run)
    assert [int(r["step"]) for r in logged] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["d_loss"])) and math.isfinite(float(r["adv_weight"])) for r in logged)
    assert {"optimizer", "optimizer_d"} <= set(runs.load_train_state(run))


def test_few_shot_growth_grows_the_critics_class_projection_too():
    from genlab.train import finetune_images as fi

    vae = VAE(VAEConfig(image_size=16, num_classes=4, latent_dim=8, embed_dim=8, width=8, adversarial=0.5, d_width=8))
    old = vae.critic.embed.parametrizations.weight.original.detach().clone()
    fi.grow_classes(vae, 2, seed=0)
    grown = vae.critic.embed.parametrizations.weight.original
    assert grown.shape[0] == 6 and torch.equal(grown[:4], old)
    # The grown model is the shape of a fresh one of the larger config, so the fine-tuned run reloads.
    fresh = VAE(VAEConfig.from_dict(vae.cfg.to_dict()))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}

"""Image-model training: the GAN step and the VAE objective plugged into the shared trainer, plus
the run setup (presets, new run or resume) for both families.

- VAE: an ordinary ``Task``: one loss (recon + beta * KL per image) and the trainer's AdamW. With
  an adversarial weight (VAE-GAN) it becomes a ``SteppingTask``: one update of encoder and decoder
  with the adaptively weighted adversarial term added, then a critic update with the hinge loss.
- GAN: a ``SteppingTask``: each step makes ``d_steps`` discriminator updates with the hinge loss,
  one generator update, then updates the EMA generator. Two Adam optimizers, no weight decay.

Everything random in a step (which images, the noise z, the VAE's reparameterisation noise) comes
from the batch RNG the trainer seeds with (seed, step, micro-batch, rank): that is what makes a
resumed run bit-for-bit equal to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab import runs
from genlab.config import TrainConfig
from genlab.data.images import ImageData, ImageDataConfig, load_image_data
from genlab.device import seed_everything
from genlab.errors import ConfigError, DataError
from genlab.models.conv import size_plan
from genlab.models.gan import GAN, GANConfig, mode_seeking_penalty, pair_labels
from genlab.models.vae import VAE, VAEConfig
from genlab.train.trainer import (
    StepContext,
    TrainResult,
    begin,
    create_run,
    resumed_train_config,
    train,
)

FAMILIES = ("gan", "vae")
CONFIGS: dict[str, type] = {"gan": GANConfig, "vae": VAEConfig}

# Model presets. tiny: trains a few steps in seconds on 16-28 px drawn shapes (tests, dry runs).
# small: a few CPU minutes on Fashion-MNIST give recognisable clothing. rgb32, rgb64: colour folders
# of that side (`genlab data draw` makes one).
MODEL_PRESETS: dict[str, dict[str, dict]] = {
    "gan": {
        "tiny": dict(latent_dim=32, embed_dim=16, g_width=8, d_width=8, mbstd_group=4, mode_seeking=0.3),
        # Width 16 and batch 32: on a contended 2-core CPU this made ~1,200 steps in 3 minutes and
        # clothing shapes per class; width 32 / batch 64 made 240 steps of blobs in the same time.
        # Minibatch stddev and the mode-seeking term against within-class collapse: in 20 CPU minutes
        # FCD 59.0 -> 15.4 and recall 0.20 -> 0.67, class accuracy 94% -> 86% (BENCHMARKS.md).
        # The auxiliary classifier wins the accuracy back: same-day A/B at ~10,700 steps, FCD 28.7 -> 17.6,
        # recall 0.55 -> 0.56, accuracy 81.9% -> 94.4%.
        "small": dict(latent_dim=64, embed_dim=64, g_width=16, d_width=16, mbstd_group=4, mode_seeking=0.3,
                      aux_class=0.5),
        # Colour folders (PRESET_DATA): the small preset's recipe, with widths that keep a step
        # affordable on a CPU at 32 and 64 px (the full-resolution layers cost the most there).
        "rgb32": dict(latent_dim=128, embed_dim=64, g_width=16, d_width=16, mbstd_group=4, mode_seeking=0.3,
                      aux_class=0.5),
        "rgb64": dict(latent_dim=128, embed_dim=64, g_width=8, d_width=8, mbstd_group=4, mode_seeking=0.3,
                      aux_class=0.5),
    },
    "vae": {
        "tiny": dict(latent_dim=8, embed_dim=8, width=8),
        # The adversarial term (VAE-GAN): at 10 CPU minutes, same day, FCD 137.9 -> 75.7 and recall
        # 0.06 -> 0.24 for 9 nats/image of negative ELBO; at 20 minutes FCD 40.7, 83.7% (BENCHMARKS.md).
        "small": dict(latent_dim=16, embed_dim=16, width=32, adversarial=0.5, d_width=16),
        "rgb32": dict(latent_dim=32, embed_dim=16, width=32),
        "rgb64": dict(latent_dim=64, embed_dim=16, width=16),
    },
}

# The data shape a preset is made for (the others take theirs from the data). `--image-size` and
# `--gray` default to it, and data of another shape is refused rather than trained on widths tuned
# for something else.
PRESET_DATA: dict[str, dict[str, int]] = {
    "rgb32": dict(image_size=32, channels=3),
    "rgb64": dict(image_size=64, channels=3),
}

# Training defaults. The GAN keeps a constant lr (no warmup, no decay) and the DCGAN/SNGAN Adam
# betas (0.5, 0.999); grad_clip 0 means "measure the norm, do not clip", as GANs are usually run.
TRAIN_PRESETS: dict[str, dict[str, dict]] = {
    "gan": {
        "tiny": dict(batch_size=16, lr=2e-4, betas=(0.5, 0.999), warmup_steps=0, min_lr_ratio=1.0,
                     weight_decay=0.0, grad_clip=0.0, eval_every=50, checkpoint_every=50, eval_batches=2),
        "small": dict(batch_size=32, lr=2e-4, betas=(0.5, 0.999), warmup_steps=0, min_lr_ratio=1.0,
                      weight_decay=0.0, grad_clip=0.0, eval_every=500, checkpoint_every=500, eval_batches=8),
        "rgb32": dict(batch_size=32, lr=2e-4, betas=(0.5, 0.999), warmup_steps=0, min_lr_ratio=1.0,
                      weight_decay=0.0, grad_clip=0.0, eval_every=500, checkpoint_every=500, eval_batches=8),
        "rgb64": dict(batch_size=32, lr=2e-4, betas=(0.5, 0.999), warmup_steps=0, min_lr_ratio=1.0,
                      weight_decay=0.0, grad_clip=0.0, eval_every=250, checkpoint_every=250, eval_batches=4),
    },
    "vae": {
        "tiny": dict(batch_size=16, lr=3e-3, betas=(0.9, 0.999), warmup_steps=10, weight_decay=0.0,
                     eval_every=50, checkpoint_every=50, eval_batches=2),
        "small": dict(batch_size=64, lr=2e-3, betas=(0.9, 0.999), warmup_steps=50, weight_decay=0.0,
                      eval_every=200, checkpoint_every=200, eval_batches=10),
        "rgb32": dict(batch_size=64, lr=2e-3, betas=(0.9, 0.999), warmup_steps=50, weight_decay=0.0,
                      eval_every=200, checkpoint_every=200, eval_batches=8),
        "rgb64": dict(batch_size=32, lr=2e-3, betas=(0.9, 0.999), warmup_steps=50, weight_decay=0.0,
                      eval_every=200, checkpoint_every=200, eval_batches=8),
    },
}


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"unknown image family '{family}'; choose gan or vae")


def check_preset(family: str, preset: str) -> None:
    check_family(family)
    if preset not in MODEL_PRESETS[family]:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(MODEL_PRESETS[family])}")


def check_preset_data(preset: str, image_size: int, channels: int) -> None:
    """A preset made for one data shape (PRESET_DATA) refuses another, naming what it is for."""
    want = PRESET_DATA.get(preset)
    if want and (image_size, channels) != (want["image_size"], want["channels"]):
        shape = f"{image_size} px {'RGB' if channels == 3 else 'grayscale'}"
        raise ConfigError(f"preset '{preset}' is for {want['image_size']} px RGB images, not {shape}; "
                          f"give --image-size {want['image_size']} --rgb, or another preset")


def preset_data_defaults(preset: str, image_size: int | None, rgb: bool | None, source: str) -> tuple[int, int]:
    """(image size, channels) for the data: what the user gave, else the preset's shape, else 28 px for
    Fashion-MNIST and 32 px for anything else, grayscale."""
    want = PRESET_DATA.get(preset, {})
    size = image_size or want.get("image_size") or (28 if source == "fashion-mnist" else 32)
    channels = (3 if rgb else 1) if rgb is not None else want.get("channels", 1)
    return size, channels


def image_train_config(family: str, preset: str = "tiny", **overrides) -> TrainConfig:
    check_preset(family, preset)
    values = dict(TRAIN_PRESETS[family][preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def model_config(family: str, preset: str, data: ImageData, conditional: bool = True, **overrides):
    """The model config for ``data`` (image size, channels, classes) from a preset plus overrides."""
    check_preset(family, preset)
    check_preset_data(preset, data.config.image_size, data.config.channels)
    cls = CONFIGS[family]
    values = dict(MODEL_PRESETS[family][preset])
    values.update(image_size=data.config.image_size, channels=data.config.channels,
                  num_classes=data.num_classes if conditional else 0)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(cls.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown {family} setting(s): {', '.join(sorted(unknown))}")
    cfg = cls(**values)
    cfg.validate()
    return cfg


def build_model(family: str, cfg, seed: int) -> GAN | VAE:
    seed_everything(seed)
    return GAN(cfg) if family == "gan" else VAE(cfg)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


class _ImageTask:
    """What the GAN and VAE tasks share: data, fixed evaluation images and training sample grids."""

    unit = "img"
    # Few-shot fine-tuning (genlab.train.finetune_images) may set generative replay: an object with
    # draw(rng, n) -> parameters and mix(images, labels, parameters) -> (images, labels), which swaps
    # part of each real batch for the base model's own images of the classes the new data lacks, and
    # (GAN) alignment(fake, z, labels) -> a loss term for the generator.
    replay = None

    def __init__(self, model: GAN | VAE, data: ImageData, batch_size: int, eval_batches: int,
                 channels_last: bool = True) -> None:
        # NHWC: oneDNN's convolutions (and their backward, most of a step) skip a layout reorder per
        # call; 1.2x the images/s of the small GAN on a 2-core CPU (BENCHMARKS.md, bench train-gan).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.data = data
        self.batch_size = batch_size
        # A fixed evaluation set: the first images of the test split (training images if it is empty).
        held_out = data.test if len(data.test) else data.train
        n = min(len(held_out), eval_batches * batch_size)
        self.eval_images, self.eval_labels = held_out.images[:n], held_out.labels[:n]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def conditional(self) -> bool:
        return self.model.cfg.num_classes > 0

    def pixels(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images -> float32 in [0, 1] on the model's device, in the model's memory layout."""
        return to_unit(images).to(self.device).contiguous(memory_format=self.memory_format)

    def labels(self, labels: np.ndarray) -> torch.Tensor | None:
        return torch.from_numpy(labels).to(self.device) if self.conditional else None

    def eval_batches(self):
        for i in range(0, len(self.eval_labels), self.batch_size):
            yield (self.pixels(self.eval_images[i: i + self.batch_size]),
                   self.labels(self.eval_labels[i: i + self.batch_size]))

    def sample(self, model, step: int, out_dir: Path) -> None:
        """A grid of samples from fixed noise (one row per class), so grids of successive steps compare."""
        from genlab.generate.images import ImageGenerator, save_grid

        gen = ImageGenerator(runs.unwrap(model), self.data.class_names)
        per_row = 8
        rows = min(self.data.num_classes, 10) if self.conditional else 8
        labels = [r for r in range(rows) for _ in range(per_row)] if self.conditional else None
        images = gen.sample(rows * per_row, labels=labels, seed=0)
        save_grid(images, out_dir / f"step_{step:06d}.png", nrow=per_row)


class VAETask(_ImageTask):
    family = "vae"
    metric_names = ("loss", "recon", "kl", "nelbo")

    # Few-shot fine-tuning (genlab.train.finetune_images) may set an augmentation of the inputs: an
    # object with draw(rng, n) -> parameters and apply(x, parameters) -> x (genlab.train.diffaugment).
    augment = None

    def train_batch(self, rng: np.random.Generator):
        images, labels = self.data.train.batch(rng, self.batch_size)
        eps = rng.standard_normal((self.batch_size, self.model.cfg.latent_dim), dtype=np.float32)
        # Drawn after eps, so the stream is the same without them.
        aug = self.augment.draw(rng, self.batch_size) if self.augment is not None else None
        replay = self.replay.draw(rng, self.batch_size) if self.replay is not None else None
        return images, labels, eps, aug, replay

    def inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Images (replay mixed in, augmented), labels and the reparameterisation noise, on the device."""
        images, labels, eps, aug, replay = batch
        x, y = self.pixels(images), self.labels(labels)
        if replay is not None:
            x, y = self.replay.mix(x, y, replay)
        if aug is not None:
            x = self.augment.apply(x, aug)
        return x, y, torch.from_numpy(eps).to(self.device)

    def loss(self, model, batch):
        x, y, eps = self.inputs(batch)
        recon, kl = model(x, y, eps)
        return (recon + self.model.cfg.beta * kl).mean(), len(x)

    def evaluate(self, model) -> dict[str, float]:
        gen = torch.Generator().manual_seed(0)  # the same noise at every evaluation
        recon_sum = kl_sum = 0.0
        for x, labels in self.eval_batches():
            eps = torch.randn(len(x), self.model.cfg.latent_dim, generator=gen).to(self.device)
            recon, kl = model(x, labels, eps)
            recon_sum += recon.sum().item()
            kl_sum += kl.sum().item()
        n = len(self.eval_labels)
        recon, kl = recon_sum / n, kl_sum / n
        return {"loss": recon + self.model.cfg.beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl}


class AdversarialVAETask(VAETask):
    """The VAE-GAN step: encoder and decoder take recon + beta * KL + w * (-critic score of the fakes:
    reconstructions and prior samples), then the critic learns to tell real images from those same
    fakes (hinge loss; reusing them saves decoding twice). w = adversarial * |grad recon| /
    |grad adversarial| at the decoder's last layer (VQGAN's adaptive weight), recomputed every step
    and not differentiated."""

    metric_names = ("loss", "recon", "kl", "nelbo", "d_loss", "g_adv", "adv_weight")

    def train_batch(self, rng: np.random.Generator):
        prior_z = rng.standard_normal((self.batch_size, self.model.cfg.latent_dim), dtype=np.float32)
        return super().train_batch(rng), prior_z  # prior_z first: the ELBO's stream is drawn after it

    def optimizers(self, model: VAE, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        critic = [p for p in model.critic.parameters() if p.requires_grad]
        rest = [p for n, p in model.named_parameters() if not n.startswith("critic.") and p.requires_grad]
        # The VAE keeps its preset's Adam; the critic the GAN's (betas 0.5, 0.999, a tenth of the lr:
        # 2e-4 at the small preset's 2e-3).
        return {"optimizer": torch.optim.Adam([{"params": rest}], lr=cfg.lr, betas=cfg.betas,
                                              weight_decay=cfg.weight_decay),
                "optimizer_d": torch.optim.Adam([{"params": critic, "lr_scale": 0.1}], lr=cfg.lr,
                                                betas=(0.5, 0.999))}

    def _tensors(self, batch):
        elbo_batch, prior_z = batch
        return *self.inputs(elbo_batch), torch.from_numpy(prior_z).to(self.device)

    def train_step(self, ctx: StepContext) -> tuple[dict[str, float], int]:
        accum, cfg = ctx.grad_accum, self.model.cfg
        model = runs.unwrap(ctx.model)
        critic = [p for p in model.critic.parameters() if p.requires_grad]
        for p in critic:  # the VAE's loss runs through the critic; its weight gradients would be dropped
            p.requires_grad_(False)
        totals = dict.fromkeys(("loss", "recon", "kl", "g_adv", "adv_weight"), 0.0)
        judged = []  # (real, labels, fakes): what the critic learns from next
        try:
            for micro in range(accum):
                x, y, eps, prior_z = self._tensors(ctx.batch(micro))
                with ctx.sync(micro), ctx.autocast():
                    recon, kl, s_fake, fake = ctx.model(x, y, eps, prior_z, phase="vae")
                    elbo_loss = (recon + cfg.beta * kl).mean()
                    adv = -s_fake.float().mean()
                weight = self.adaptive_weight(recon.mean(), adv, model.dec_out.weight) * cfg.adversarial
                loss = elbo_loss + weight * adv
                ctx.backward(loss / accum)
                judged.append((x, y, fake.detach()))
                for k, v in (("loss", loss), ("recon", recon.mean()), ("kl", kl.mean()), ("g_adv", adv),
                             ("adv_weight", weight)):
                    totals[k] += float(v.detach()) / accum
        finally:
            for p in critic:
                p.requires_grad_(True)
        ctx.step_optimizer("optimizer")
        d_loss = 0.0
        ctx.optimizers["optimizer_d"].zero_grad(set_to_none=True)
        for micro, (x, y, fake) in enumerate(judged):
            with ctx.sync(micro), ctx.autocast():
                s_real, s_fake = ctx.model(x, y, None, phase="d", fakes=fake)
                loss = F.relu(1 - s_real.float()).mean() + F.relu(1 + s_fake.float()).mean()
            ctx.backward(loss / accum)
            d_loss += loss.item() / accum
        d_norm = ctx.step_optimizer("optimizer_d")
        values = {**totals, "nelbo": totals["recon"] + totals["kl"], "d_loss": d_loss, "grad_norm": d_norm}
        return values, self.batch_size * accum

    @staticmethod
    def adaptive_weight(recon: torch.Tensor, adv: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
        """|d recon / d layer| / |d adv / d layer|, clamped to [0, 1e4] and detached."""
        g_recon = torch.autograd.grad(recon, layer, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adv, layer, retain_graph=True)[0]
        return (g_recon.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def task_class(family: str, model_cfg) -> type:
    """The training task for a model: the GAN's, the VAE's, or the VAE-GAN's when it has a critic."""
    if family == "gan":
        return GANTask
    return AdversarialVAETask if getattr(model_cfg, "adversarial", 0.0) else VAETask


class GANTask(_ImageTask):
    family = "gan"
    # loss = d_loss + g_loss (one number for the progress bar and the divergence check);
    # d_real / d_fake: mean discriminator scores (val: held-out images vs EMA samples).
    metric_names = ("loss", "d_loss", "g_loss", "d_real", "d_fake")

    # Few-shot fine-tuning (genlab.train.finetune_images) may set a differentiable augmentation of every
    # image D sees: an object with draw(rng, n) and bind(parameters) -> callable (genlab.train.diffaugment).
    augment = None

    def train_batch(self, rng: np.random.Generator):
        images, labels = self.data.train.batch(rng, self.batch_size)
        z = rng.standard_normal((2, self.batch_size, self.model.cfg.latent_dim), dtype=np.float32)
        # Drawn after z, so the rest of the stream is what it is without them. Augmentation: one set
        # for the D pass's real and fake images together, one for the G pass's fakes.
        aug = (self.augment.draw(rng, 2 * self.batch_size), self.augment.draw(rng, self.batch_size)) \
            if self.augment is not None else None
        replay = self.replay.draw(rng, self.batch_size) if self.replay is not None else None
        return images, labels, z[0], z[1], aug, replay  # z for the D pass, z for the G pass

    def optimizers(self, model: GAN, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        def adam(params, lr_scale: float) -> torch.optim.Optimizer:
            # Frozen parameters (FreezeD in few-shot fine-tuning) stay out of the optimizer.
            return torch.optim.Adam([{"params": [p for p in params if p.requires_grad], "lr_scale": lr_scale}],
                                    lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

        return {"optimizer_d": adam(model.discriminator.parameters(), model.cfg.d_lr_mult),
                "optimizer_g": adam(model.generator.parameters(), 1.0)}

    def _tensors(self, batch):
        images, labels, z_d, z_g, aug, replay = batch
        dev = self.device
        aug_d, aug_g = (self.augment.bind(a) for a in aug) if aug else (None, None)
        real, labels = self.pixels(images), self.labels(labels)
        if replay is not None:
            real, labels = self.replay.mix(real, labels, replay)
        return (real.mul_(2).sub_(1), labels, torch.from_numpy(z_d).to(dev), torch.from_numpy(z_g).to(dev),
                aug_d, aug_g)

    def train_step(self, ctx: StepContext) -> tuple[dict[str, float], int]:
        accum, cfg = ctx.grad_accum, self.model.cfg
        d_loss = d_real = d_fake = 0.0
        first: list = []  # the first D update's batches, reused by the G update
        for d_iter in range(cfg.d_steps):
            # The generator's update also leaves gradients on D (its loss runs through D): drop them.
            ctx.optimizers["optimizer_d"].zero_grad(set_to_none=True)
            for micro in range(accum):
                real, labels, z_d, z_g, aug_d, _ = batch = self._tensors(ctx.batch(d_iter * accum + micro))
                if d_iter == 0:
                    first.append(batch)
                with ctx.sync(micro), ctx.autocast():
                    s_real, s_fake, c_real = ctx.model("d", z_d, labels, real, aug_d)
                    loss = F.relu(1 - s_real.float()).mean() + F.relu(1 + s_fake.float()).mean()
                    if c_real is not None:
                        loss = loss + cfg.aux_class * F.cross_entropy(c_real.float(), labels)
                ctx.backward(loss / accum)
                scale = 1.0 / (accum * cfg.d_steps)
                d_loss += loss.item() * scale
                d_real += s_real.float().mean().item() * scale
                d_fake += s_fake.float().mean().item() * scale
            d_norm = ctx.step_optimizer("optimizer_d")
        g_loss = 0.0
        # The generator's loss runs through D, but D's weight gradients from it would only be dropped
        # (D's next update starts with zero_grad): freezing D skips computing them.
        trainable = [p for p in runs.unwrap(ctx.model).discriminator.parameters() if p.requires_grad]
        for p in trainable:  # (only these: layers frozen by FreezeD stay frozen)
            p.requires_grad_(False)
        try:
            for micro, (_, labels, _, z_g, _, aug_g) in enumerate(first):
                if cfg.mode_seeking:
                    labels = pair_labels(labels)
                with ctx.sync(micro), ctx.autocast():
                    s_gen, fake, c_fake = ctx.model("g", z_g, labels, None, aug_g)
                    loss = -s_gen.float().mean()
                    if c_fake is not None:
                        loss = loss + cfg.aux_class * F.cross_entropy(c_fake.float(), labels)
                    if cfg.mode_seeking:
                        loss = loss + cfg.mode_seeking * mode_seeking_penalty(fake, z_g)
                    if self.replay is not None:
                        loss = loss + self.replay.alignment(fake, z_g, labels)
                ctx.backward(loss / accum)
                g_loss += loss.item() / accum
        finally:
            for p in trainable:
                p.requires_grad_(True)
        ctx.step_optimizer("optimizer_g")
        runs.unwrap(ctx.model).update_ema()
        values = {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss, "d_real": d_real,
                  "d_fake": d_fake, "grad_norm": d_norm}
        return values, self.batch_size * accum * cfg.d_steps

    def evaluate(self, model: GAN) -> dict[str, float]:
        gen = torch.Generator().manual_seed(0)
        real_sum = fake_sum = 0.0
        for x, labels in self.eval_batches():
            z = torch.randn(len(x), model.cfg.latent_dim, generator=gen).to(self.device)
            fake = model.ema(z, labels)
            real_sum += model.discriminator(x * 2 - 1, labels).sum().item()
            fake_sum += model.discriminator(fake, labels).sum().item()
        n = len(self.eval_labels)
        return {"d_real": real_sum / n, "d_fake": fake_sum / n}


@dataclass
class ImageTrainSpec:
    """Everything `genlab train gan|vae` needs; the CLI only fills it in."""

    family: str
    run: Path
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    preset: str = "tiny"
    conditional: bool = True
    model_overrides: dict = field(default_factory=dict)
    train: TrainConfig | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False


def train_image(spec: ImageTrainSpec) -> TrainResult:
    check_preset(spec.family, spec.preset)
    run = Path(spec.run)
    tcfg = spec.train
    dist, log = begin(tcfg, spec.quiet)

    if spec.resume:
        saved = runs.read_config(run, family=spec.family)
        data_cfg = ImageDataConfig.from_dict(saved["data"]["config"])
        model_cfg = CONFIGS[spec.family].from_dict(saved["model"])
        tcfg = resumed_train_config(saved, tcfg)
    else:
        runs.require_new(run, spec.overwrite)
        data_cfg = spec.data
        size_plan(data_cfg.image_size)  # an unsupported size fails before any image is decoded
        check_preset_data(spec.preset, data_cfg.image_size, data_cfg.channels)

    # Rank 0 decodes (or finds cached) images first; the other ranks then read its cache entry.
    data = dist.main_first(lambda: load_image_data(data_cfg))
    log(f"data: {data.name}, {len(data.train):,} train / {len(data.test):,} test images, "
        f"{data.config.image_size}px x {data.config.channels} channel(s), {data.num_classes} classes")

    if spec.resume:
        if saved["data"]["fingerprint"] != data.fingerprint:
            raise DataError(f"the data set '{data.name}' changed since run '{run}' started "
                            f"(fingerprint {data.fingerprint} != {saved['data']['fingerprint']}); "
                            f"an exact resume needs the same images")
    else:
        model_cfg = model_config(spec.family, spec.preset, data, spec.conditional, **spec.model_overrides)
        create_run(run, {
            "family": spec.family,
            "preset": spec.preset,
            "model": model_cfg.to_dict(),
            "train": tcfg.to_dict(),
            "data": data.meta(),
        }, dist, spec.overwrite)
        dist.barrier()

    model = build_model(spec.family, model_cfg, tcfg.seed)
    task = task_class(spec.family, model_cfg)(model, data, tcfg.batch_size, tcfg.eval_batches, tcfg.channels_last)
    return train(task, tcfg, run, resume=spec.resume, quiet=spec.quiet, dist=dist)

"""A class-conditional DCGAN in one file: generator, projection discriminator, EMA generator.

- Generator: z -> a small square -> transposed convolutions that double the side -> tanh image in
  [-1, 1]. Batch norm is class-conditional: each class has its own gain and bias, computed from a
  learned label embedding (so a walk between two classes can blend their embeddings).
- Discriminator: strided convolutions with spectral normalisation on every layer (it keeps D
  1-Lipschitz-ish, which is what keeps hinge-loss training stable without gradient penalties),
  summed features, and a projection head: score = linear(h) + <embed(label), h>. Optionally a
  minibatch-stddev channel at the smallest size (``mbstd_group``), so D can see a batch that lacks variety.
- An exponential moving average of the generator's weights is kept beside it; samples come from
  it because it is smoother than the generator at any single step.

Losses (hinge) live in genlab.train.image; this file defines the networks and the mode-seeking term
(MSGAN) that the generator's loss adds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.errors import ConfigError
from genlab.jsonconfig import JsonConfig
from genlab.models.conv import size_plan, widths


@dataclass
class GANConfig(JsonConfig):
    image_size: int = 28
    channels: int = 1  # 1 = grayscale, 3 = RGB
    num_classes: int = 10  # 0 = unconditional
    latent_dim: int = 64  # size of z
    embed_dim: int = 64  # generator's label embedding
    g_width: int = 32  # generator channels at full resolution (doubling towards the bottom)
    d_width: int = 32  # discriminator channels at full resolution
    ema_decay: float = 0.999
    d_steps: int = 1  # discriminator updates per generator update
    d_lr_mult: float = 1.0  # discriminator lr = lr * d_lr_mult (> 1: two time-scale update rule)
    # Minibatch standard deviation (ProGAN/StyleGAN): D sees how much each group of this many
    # images varies, so a generator that makes one image per class is easy to call fake. 0 = off
    # (runs made before it existed have no such layer).
    mbstd_group: int = 0
    mode_seeking: float = 0.0  # weight of the MSGAN mode-seeking term in G's loss (0 = off)
    # Auxiliary classifier (AC-GAN, Odena et al. 2017): D also predicts the class of real images,
    # and G pays this weight times the cross-entropy of D's prediction on its fakes. It pulls each
    # class's samples inside the real class's boundary. 0 = off (older runs have no such head).
    aux_class: float = 0.0

    def validate(self) -> None:
        size_plan(self.image_size)
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), not {self.channels}")
        if self.aux_class < 0:
            raise ConfigError(f"aux-class must not be negative (got {self.aux_class})")
        if self.aux_class and not self.num_classes:
            raise ConfigError("aux-class needs a class-conditional GAN (num-classes > 0)")
        if self.mbstd_group < 0 or self.mbstd_group == 1:
            raise ConfigError(f"mbstd-group must be 0 (off) or at least 2 (got {self.mbstd_group})")
        if self.mode_seeking < 0:
            raise ConfigError(f"mode-seeking must not be negative (got {self.mode_seeking})")
        for name in ("latent_dim", "embed_dim", "g_width", "d_width", "d_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.num_classes < 0:
            raise ConfigError(f"num-classes must not be negative (got {self.num_classes})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema-decay must be in [0, 1) (got {self.ema_decay})")
        if self.d_lr_mult <= 0:
            raise ConfigError(f"d-lr-mult must be positive (got {self.d_lr_mult})")



class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain and bias come from the label embedding (plain affine BN without labels)."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=embed_dim == 0)
        if embed_dim:
            self.gain = nn.Linear(embed_dim, channels)
            self.bias = nn.Linear(embed_dim, channels)
            # Start as the identity (gain 1 + 0, bias 0): with random class gains some classes came
            # out black for the first few hundred steps in our Fashion-MNIST runs.
            for lin in (self.gain, self.bias):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        x = self.bn(x)
        if emb is None:
            return x
        return x * (1 + self.gain(emb))[:, :, None, None] + self.bias(emb)[:, :, None, None]


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.base, doublings = size_plan(cfg.image_size)
        ch = widths(cfg.g_width, doublings)
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim) if cfg.num_classes else None
        e = cfg.embed_dim if cfg.num_classes else 0
        # Only z enters here; the label acts through the norms. (Feeding the label in here as well
        # made a small generator learn one image per class and ignore z.)
        self.fc = nn.Linear(cfg.latent_dim, ch[0] * self.base * self.base)
        self.norms = nn.ModuleList(ConditionalBatchNorm(c, e) for c in ch)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1)
                                 for i in range(doublings))
        self.out = nn.Conv2d(ch[-1], cfg.channels, 3, padding=1)

    def class_embedding(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.embed is None:
            return None
        if labels is None:
            raise ValueError("this generator is class-conditional: give labels")
        return self.embed(labels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                emb: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1]; pass ``emb`` instead of ``labels`` to condition on a blend of classes."""
        if emb is None:
            emb = self.class_embedding(labels)
        h = self.fc(z).view(z.size(0), -1, self.base, self.base)
        for norm, up in zip(self.norms, self.ups, strict=False):  # pre-activation: norm, ReLU, conv
            h = up(F.relu(norm(h, emb)))
        return torch.tanh(self.out(F.relu(self.norms[-1](h, emb))))


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        _, doublings = size_plan(cfg.image_size)
        ch = widths(cfg.d_width, doublings)
        self.stem = spectral_norm(nn.Conv2d(cfg.channels, ch[-1], 3, padding=1))
        self.downs = nn.ModuleList(spectral_norm(nn.Conv2d(ch[i + 1], ch[i], 4, stride=2, padding=1))
                                   for i in reversed(range(doublings)))
        self.mbstd_group = cfg.mbstd_group
        # With the batch's spread as one extra channel, one more convolution at the smallest size reads it.
        self.mbstd_conv = (spectral_norm(nn.Conv2d(ch[0] + 1, ch[0], 3, padding=1))
                           if cfg.mbstd_group else None)
        self.head = spectral_norm(nn.Linear(ch[0], 1))
        self.embed = spectral_norm(nn.Embedding(cfg.num_classes, ch[0])) if cfg.num_classes else None
        # Not spectrally normalised: a classifier needs its logits free to grow confident.
        self.classify = nn.Linear(ch[0], cfg.num_classes) if cfg.aux_class else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, parts: int = 1,
                class_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """One unbounded realness score per image (hinge loss wants raw scores); with
        ``class_logits``, also the auxiliary classifier's logits (None when it has none).

        ``parts``: the batch is that many equal blocks (real images, then fakes) that the minibatch
        statistic must not mix: a group holding real and fake images would tell D nothing."""
        h = F.leaky_relu(self.stem(x), 0.1)
        for down in self.downs:
            h = F.leaky_relu(down(h), 0.1)
        if self.mbstd_conv is not None:
            h = F.leaky_relu(self.mbstd_conv(torch.cat([h, minibatch_stddev(h, self.mbstd_group, parts)], 1)), 0.1)
        h = h.sum(dim=(2, 3))
        score = self.head(h).squeeze(1)
        if self.embed is not None:
            # Projection: the label picks a direction in feature space that "real for this class" points to.
            score = score + (self.embed(labels) * h).sum(dim=1)
        if class_logits:
            return score, None if self.classify is None else self.classify(h)
        return score


def minibatch_stddev(h: torch.Tensor, group: int, parts: int = 1) -> torch.Tensor:
    """One channel holding, for each image, the mean standard deviation of features across its group.

    Groups are runs of consecutive images; their size is the largest divisor of one part's length
    not above ``group``, so a group never straddles two parts and any batch size works."""
    n, c, hh, ww = h.shape
    block = n // parts
    g = max(d for d in range(1, min(group, block) + 1) if block % d == 0)
    if g == 1:  # a single image has no spread to show; give D a constant instead
        return h.new_zeros(n, 1, hh, ww)
    grouped = h.float().view(n // g, g, c, hh, ww)
    # The variance written out: aten::var over this middle dimension took 7-10 ms a call on the CPU
    # (a quarter of a small-preset step), the mean of squared deviations 0.9 ms, the same values.
    deviation = grouped - grouped.mean(dim=1, keepdim=True)
    spread = (deviation.square().mean(dim=1) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # one per group
    return spread.to(h.dtype).repeat_interleave(g).view(n, 1, 1, 1).expand(n, 1, hh, ww)


def pair_labels(labels: torch.Tensor | None) -> torch.Tensor | None:
    """The labels with the second half set to the first, so image i and i + n/2 share a class (and
    differ only in z): the pairs the mode-seeking term compares."""
    if labels is None:
        return None
    half = len(labels) // 2
    return torch.cat([labels[:half], labels[:half], labels[2 * half:]])


def mode_seeking_penalty(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN's term (Mao et al. 2019): 1 / (image distance / latent distance) over the pairs of
    ``pair_labels``. A generator that maps different z to the same image pays for it."""
    half = len(z) // 2
    image_gap = (fake[:half] - fake[half:2 * half]).float().abs().mean()
    z_gap = (z[:half] - z[half:2 * half]).float().abs().mean()
    return 1.0 / (image_gap / z_gap + 1e-5)


class GAN(nn.Module):
    """Generator, discriminator and EMA generator in one module, so one safetensors file (prefixes
    ``generator.``, ``discriminator.``, ``ema.``) and one DDP wrapper hold the whole model."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        self.ema = copy.deepcopy(self.generator)
        self.ema.requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def forward(self, phase: str, z: torch.Tensor, labels: torch.Tensor | None,
                real: torch.Tensor | None = None, augment=None) -> tuple[torch.Tensor, ...]:
        """The two training passes go through forward() so DistributedDataParallel sees them.

        ``"d"``: scores of real images and of fakes (made without gradients), and the auxiliary
        classifier's logits for the real images; ``"g"``: scores of fakes, the fakes and their class
        logits, with gradients flowing back into the generator (logits are None without ``aux_class``). ``augment``: a
        differentiable transform of every image D sees (few-shot fine-tuning: genlab.train.diffaugment); in ``"d"`` it gets the
        real images and then the fakes as one batch."""
        if phase == "d":
            with torch.no_grad():
                fake = self.generator(z, labels)
            # One pass over real and fake together: D has no batch statistics, so this is the same
            # as two passes, and it runs the spectral-norm power iteration once per step.
            both = torch.cat([real, fake])
            if augment is not None:
                both = augment(both)
            scores, logits = self.discriminator(both, None if labels is None else torch.cat([labels, labels]),
                                                parts=2, class_logits=True)
            n = real.size(0)
            # The classifier learns from real images only: taught on fakes too, it could agree
            # with a generator that draws the wrong class.
            return scores[:n], scores[n:], None if logits is None else logits[:n]
        if phase == "g":
            fake = self.generator(z, labels)
            scores, logits = self.discriminator(fake if augment is None else augment(fake), labels, class_logits=True)
            return scores, fake, logits
        raise ValueError(f"unknown GAN phase '{phase}'")

    @torch.no_grad()
    def update_ema(self) -> None:
        # Early on the average would mostly remember the random init; ramp the decay up instead.
        n = int(self.ema_updates)
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        # One foreach call per list instead of a small kernel per tensor (the same arithmetic).
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.generator.parameters()), 1 - decay)
        torch._foreach_copy_(list(self.ema.buffers()), list(self.generator.buffers()))  # BN statistics follow G
        self.ema_updates += 1

    # The sampling contract shared with the VAE (genlab.generate.images relies on it).
    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    def class_embedding(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return self.ema.class_embedding(labels)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        """Images in [0, 1] from the EMA generator."""
        return (self.ema(z, emb=emb) + 1) / 2

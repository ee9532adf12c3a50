"""A convolutional VAE in one file: Gaussian latent, Bernoulli or Gaussian likelihood, beta weight,
optional class conditioning.

- Encoder: strided convolutions halve the side down to a small square, then a linear layer gives
  the posterior mean and log-variance (the label embedding joins here when conditional).
- Decoder: the mirror image, from z (plus the label embedding) to per-pixel logits.
- Likelihood: ``bernoulli`` treats pixel intensities in [0, 1] as probabilities (the classic choice
  for MNIST-like data); ``gaussian`` uses a fixed standard deviation ``sigma`` around the decoded
  mean. Both decode to a mean image sigmoid(logits) in [0, 1]. With ``learn_sigma`` the Gaussian's
  standard deviation is one learned scalar (the sigma-VAE of Rybkin et al. 2021): it settles at the
  RMS reconstruction error, so the reconstruction term's weight follows the decoder. (On
  Fashion-MNIST it made prior samples worse than Bernoulli: docs/images.md.)
- Objective (per image, in nats): recon + beta * KL(q(z|x) || N(0, I)). With beta = 1 this is the
  negative ELBO, an upper bound on -log p(x).
- Optional adversarial term (VAE-GAN, Larsen et al. 2016): a spectrally normalised, class-projecting
  discriminator (genlab.models.gan's) tells real images from the decoder's reconstructions and prior
  samples, and the decoder also pays the hinge generator loss. A per-pixel likelihood is minimised
  by the average of the plausible images, which is blurry; the critic penalises exactly that blur.
  Its weight adapts as in VQGAN (Esser et al. 2021): ``adversarial`` times the ratio of the two
  terms' gradient norms at the decoder's last layer, so the knob means the same on any data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError
from genlab.jsonconfig import JsonConfig
from genlab.models.conv import size_plan, widths
from genlab.models.gan import Discriminator, GANConfig

LIKELIHOODS = ("bernoulli", "gaussian")
MIN_LOG_SIGMA = math.log(1e-3)  # a learned sigma stays above a thousandth of the pixel range


@dataclass
class VAEConfig(JsonConfig):
    image_size: int = 28
    channels: int = 1  # 1 = grayscale, 3 = RGB
    num_classes: int = 10  # 0 = unconditional
    latent_dim: int = 16
    embed_dim: int = 16  # label embedding (conditional only)
    width: int = 32  # channels at full resolution (doubling towards the bottom)
    likelihood: str = "bernoulli"  # bernoulli | gaussian
    sigma: float = 0.1  # gaussian likelihood: pixel standard deviation (pixels in [0, 1]); the start value if learned
    learn_sigma: bool = False  # gaussian likelihood: learn sigma (one scalar) instead of fixing it
    beta: float = 1.0  # weight of the KL term (beta-VAE); 1 = the true ELBO
    # VAE-GAN: the adversarial term's gradient at the decoder's last layer, as a fraction of the
    # reconstruction term's there (0 = off: no discriminator; runs made before it have none).
    adversarial: float = 0.0
    d_width: int = 16  # the discriminator's channels at full resolution (adversarial only)

    def validate(self) -> None:
        size_plan(self.image_size)
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), not {self.channels}")
        for name in ("latent_dim", "embed_dim", "width"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.num_classes < 0:
            raise ConfigError(f"num-classes must not be negative (got {self.num_classes})")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood '{self.likelihood}'; choose {' or '.join(LIKELIHOODS)}")
        if self.sigma <= 0:
            raise ConfigError(f"sigma must be positive (got {self.sigma})")
        if self.learn_sigma and self.likelihood != "gaussian":
            raise ConfigError("learn-sigma needs the gaussian likelihood")
        if self.beta < 0:
            raise ConfigError(f"beta must not be negative (got {self.beta})")
        if self.adversarial < 0:
            raise ConfigError(f"adversarial must not be negative (got {self.adversarial})")
        if self.d_width <= 0:
            raise ConfigError(f"d-width must be positive (got {self.d_width})")



class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.base, doublings = size_plan(cfg.image_size)
        ch = widths(cfg.width, doublings)
        flat = ch[0] * self.base * self.base
        e = cfg.embed_dim if cfg.num_classes else 0
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim) if cfg.num_classes else None
        self.log_sigma = nn.Parameter(torch.tensor(math.log(cfg.sigma))) if cfg.learn_sigma else None
        # Encoder: full resolution -> base x base.
        self.enc_stem = nn.Conv2d(cfg.channels, ch[-1], 3, padding=1)
        self.enc_downs = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i], 4, stride=2, padding=1)
                                       for i in reversed(range(doublings)))
        self.enc_out = nn.Linear(flat + e, 2 * cfg.latent_dim)
        # Decoder: base x base -> full resolution.
        self.dec_in = nn.Linear(cfg.latent_dim + e, flat)
        self.dec_ups = nn.ModuleList(nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1)
                                     for i in range(doublings))
        self.dec_out = nn.Conv2d(ch[-1], cfg.channels, 3, padding=1)
        self.critic = Discriminator(GANConfig(
            image_size=cfg.image_size, channels=cfg.channels, num_classes=cfg.num_classes,
            d_width=cfg.d_width)) if cfg.adversarial else None

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    def class_embedding(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.embed is None:
            return None
        if labels is None:
            raise ValueError("this VAE is class-conditional: give labels")
        return self.embed(labels)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance for images ``x`` in [0, 1]."""
        h = F.silu(self.enc_stem(x))
        for down in self.enc_downs:
            h = F.silu(down(h))
        h = h.flatten(1)
        emb = self.class_embedding(labels)
        if emb is not None:
            h = torch.cat([h, emb], dim=1)
        mu, logvar = self.enc_out(h).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training

    def decode_logits(self, z: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        if emb is not None:
            z = torch.cat([z, emb], dim=1)
        h = F.silu(self.dec_in(z)).view(z.size(0), -1, self.base, self.base)
        for up in self.dec_ups:
            h = F.silu(up(h))
        return self.dec_out(h)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None, eps: torch.Tensor | None,
                prior_z: torch.Tensor | None = None, phase: str = "elbo", fakes: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        """Reconstruction term and KL term per image (nats), with the reparameterisation noise
        ``eps`` given by the caller so that training is reproducible from the batch RNG alone.

        The adversarial passes go through forward() too, so DistributedDataParallel sees them:
        ``"vae"``: recon, KL, the critic's scores of the fakes (the reconstructions, then the decoded
        ``prior_z`` of the same labels) and the fakes, in [0, 1], gradients flowing into encoder and
        decoder; ``"d"``: the critic's scores of the real images ``x`` and of ``fakes`` (detached:
        the critic learns from the fakes of the VAE pass before it, at no second decoding)."""
        if phase == "d":
            scores = self._judge(torch.cat([x, fakes]), labels, parts=3)
            return scores[:len(x)], scores[len(x):]
        mu, logvar = self.encode(x, labels)
        z = mu + torch.exp(0.5 * logvar) * eps
        if phase == "elbo":
            logits = self.decode_logits(z, self.class_embedding(labels))
            return self.reconstruction_nll(logits, x), self.kl(mu, logvar)
        if phase == "vae":
            emb = self.class_embedding(labels)
            logits = self.decode_logits(torch.cat([z, prior_z]), None if emb is None else torch.cat([emb, emb]))
            fake = torch.sigmoid(logits)
            return self.reconstruction_nll(logits[:len(x)], x), self.kl(mu, logvar), self._judge(fake, labels, 2), fake
        raise ValueError(f"unknown VAE phase '{phase}'")

    def _judge(self, images: torch.Tensor, labels: torch.Tensor | None, parts: int) -> torch.Tensor:
        """The critic's realness scores of images in [0, 1] (it reads [-1, 1], as the GAN's does);
        ``labels`` are repeated for each of the ``parts`` equal blocks."""
        if self.critic is None:
            raise ValueError("this VAE has no discriminator (adversarial = 0)")
        return self.critic(images * 2 - 1, None if labels is None else labels.repeat(parts), parts=parts)

    def reconstruction_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per image."""
        logits = logits.float()
        if self.cfg.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            if self.log_sigma is None:
                s, log_s = self.cfg.sigma, math.log(self.cfg.sigma)
            else:  # floored: a decoder that copied its input exactly would otherwise drive sigma to 0
                log_s = self.log_sigma.float().clamp(min=MIN_LOG_SIGMA)
                s = log_s.exp()
            nll = 0.5 * ((x - torch.sigmoid(logits)) / s) ** 2 + log_s + 0.5 * math.log(2 * math.pi)
        return nll.flatten(1).sum(dim=1)

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, exp(logvar)) || N(0, I)) per image."""
        mu, logvar = mu.float(), logvar.float()
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        """Mean images in [0, 1] (the sampling contract shared with the GAN)."""
        return torch.sigmoid(self.decode_logits(z, emb))

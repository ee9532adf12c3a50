"""GAN and VAE networks: shapes at 16/28/32/64 px, conditioning, the sampling contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.errors import ConfigError
from genlab.models.conv import size_plan, widths
from genlab.models.gan import GAN, GANConfig, minibatch_stddev, mode_seeking_penalty, pair_labels
from genlab.models.vae import VAE, VAEConfig


def test_size_plan_and_widths():
    assert size_plan(28) == (7, 2) and size_plan(32) == (4, 3) and size_plan(64) == (4, 4)
    assert size_plan(48) == (6, 3) and size_plan(16) == (4, 2)
    assert widths(16, 4) == [128, 128, 64, 32, 16]  # capped at 8x
    for bad in (30, 8, 100):
        with pytest.raises(ConfigError, match="not supported"):
            size_plan(bad)


@pytest.mark.parametrize("size,channels", [(16, 1), (28, 1), (32, 3), (64, 3)])
def test_gan_shapes(size, channels):
    torch.manual_seed(0)
    gan = GAN(GANConfig(image_size=size, channels=channels, num_classes=5, latent_dim=8, embed_dim=4,
                        g_width=4, d_width=4))
    z, y = torch.randn(3, 8), torch.tensor([0, 2, 4])
    fake = gan.generator(z, y)
    assert fake.shape == (3, channels, size, size)
    assert fake.min() >= -1 and fake.max() <= 1
    s_real, s_fake, _ = gan("d", z, y, torch.rand(3, channels, size, size) * 2 - 1)
    assert s_real.shape == s_fake.shape == (3,)
    s_gen, _, _ = gan("g", z, y)
    s_gen.mean().backward()
    assert gan.generator.fc.weight.grad is not None and gan.ema.fc.weight.grad is None
    img = gan.generate(z, gan.class_embedding(y))
    assert img.shape == (3, channels, size, size) and 0 <= img.min() and img.max() <= 1


def test_gan_labels_change_the_image_and_the_score():
    torch.manual_seed(0)
    gan = GAN(GANConfig(image_size=16, num_classes=3, latent_dim=8, embed_dim=4, g_width=4, d_width=4)).eval()
    with torch.no_grad():
        for norm in gan.generator.norms:  # conditional gains start at the identity; give them a push
            torch.nn.init.normal_(norm.gain.weight)
    z = torch.randn(1, 8).repeat(2, 1)
    y = torch.tensor([0, 1])
    with torch.no_grad():
        fake = gan.generator(z, y)
        assert not torch.allclose(fake[0], fake[1])
        score = gan.discriminator(fake[:1].repeat(2, 1, 1, 1), y)
    assert score[0] != score[1]  # the projection term depends on the label


def test_unconditional_gan_has_no_embeddings_and_ema_tracks_the_generator():
    gan = GAN(GANConfig(image_size=16, num_classes=0, latent_dim=8, g_width=4, d_width=4))
    assert gan.generator.embed is None and gan.discriminator.embed is None
    assert gan.generator(torch.randn(2, 8)).shape == (2, 1, 16, 16)
    with torch.no_grad():
        gan.generator.fc.weight.add_(1.0)
    before = gan.ema.fc.weight.clone()
    gan.update_ema()  # decay ramps up from 0.1: the first update moves most of the way
    moved = (gan.ema.fc.weight - before).abs().mean()
    assert 0.85 < moved.item() < 0.95 and int(gan.ema_updates) == 1


@pytest.mark.parametrize("size,channels,likelihood", [(16, 1, "bernoulli"), (28, 1, "gaussian"),
                                                       (32, 3, "bernoulli"), (64, 3, "gaussian")])
def test_vae_shapes_and_terms(size, channels, likelihood):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_size=size, channels=channels, num_classes=4, latent_dim=6, embed_dim=3, width=4,
                        likelihood=likelihood))
    x, y = torch.rand(3, channels, size, size), torch.tensor([0, 1, 3])
    mu, logvar = vae.encode(x, y)
    assert mu.shape == logvar.shape == (3, 6)
    recon, kl = vae(x, y, torch.randn(3, 6))
    assert recon.shape == kl.shape == (3,) and (kl >= 0).all()
    assert torch.isfinite(recon).all()
    img = vae.generate(torch.randn(3, 6), vae.class_embedding(y))
    assert img.shape == (3, channels, size, size) and 0 <= img.min() and img.max() <= 1


def test_vae_kl_is_zero_at_the_prior_and_labels_matter():
    assert VAE.kl(torch.zeros(2, 5), torch.zeros(2, 5)).abs().max() == 0
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_size=16, num_classes=2, latent_dim=4, embed_dim=4, width=4))
    z = torch.randn(1, 4).repeat(2, 1)
    img = vae.generate(z, vae.class_embedding(torch.tensor([0, 1])))
    assert not torch.allclose(img[0], img[1])
    with pytest.raises(ValueError, match="class-conditional"):
        vae.encode(torch.rand(1, 1, 16, 16), None)


def test_bad_model_settings_are_config_errors():
    with pytest.raises(ConfigError, match="likelihood"):
        VAE(VAEConfig(likelihood="poisson"))
    with pytest.raises(ConfigError, match="ema-decay"):
        GAN(GANConfig(ema_decay=1.0))
    with pytest.raises(ConfigError, match="channels"):
        GAN(GANConfig(channels=2))


def test_minibatch_stddev_groups_never_mix_real_and_fake_images():
    h = torch.zeros(12, 2, 3, 3)
    h[6:] = torch.randn(6, 2, 3, 3)  # identical "real" images, varied "fakes"
    out = minibatch_stddev(h, group=4, parts=2)  # 6 per part: groups of 3, not 4 (which would straddle)
    assert out.shape == (12, 1, 3, 3)
    assert torch.all(out[:6] < 1e-3) and torch.all(out[6:] > 0.1)
    assert torch.equal(out[6], out[8]) and not torch.equal(out[8], out[9])  # one value per group of 3
    assert torch.all(minibatch_stddev(torch.randn(5, 2, 3, 3), group=4) == 0)  # 5 is prime: groups of 1


def test_minibatch_stddev_is_the_groups_mean_standard_deviation():
    torch.manual_seed(0)
    h = torch.randn(8, 3, 4, 4).contiguous(memory_format=torch.channels_last)  # the trainer's layout
    out = minibatch_stddev(h, group=4)
    for g in range(2):  # the definition, through torch.var, group by group
        want = (h[4 * g: 4 * g + 4].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(out[4 * g: 4 * g + 4], want.expand(4, 1, 4, 4), atol=1e-6)


def test_gan_with_minibatch_stddev_scores_any_batch_size():
    torch.manual_seed(0)
    gan = GAN(GANConfig(image_size=16, num_classes=3, latent_dim=8, embed_dim=4, g_width=4, d_width=4,
                        mbstd_group=4))
    for n in (1, 3, 8):
        z, y = torch.randn(n, 8), torch.randint(0, 3, (n,))
        s_real, s_fake, _ = gan("d", z, y, torch.rand(n, 1, 16, 16) * 2 - 1)
        assert s_real.shape == s_fake.shape == (n,)
    with pytest.raises(ConfigError, match="mbstd-group"):
        GANConfig(mbstd_group=1).validate()


def test_mode_seeking_pairs_share_a_class_and_the_penalty_punishes_ignoring_z():
    y = torch.tensor([3, 1, 4, 1, 5])
    assert pair_labels(y).tolist() == [3, 1, 3, 1, 5] and pair_labels(None) is None
    z = torch.randn(4, 8)
    same = torch.ones(4, 1, 6, 6)  # a generator that ignores z
    varied = torch.randn(4, 1, 6, 6)
    assert mode_seeking_penalty(same, z) > 1000 * mode_seeking_penalty(varied, z)
    varied.requires_grad_(True)
    mode_seeking_penalty(varied, z).backward()
    assert varied.grad.abs().sum() > 0


def test_auxiliary_classifier_sees_real_images_and_its_loss_reaches_the_generator():
    torch.manual_seed(0)
    cfg = dict(image_size=16, num_classes=3, latent_dim=8, embed_dim=4, g_width=4, d_width=4)
    assert GAN(GANConfig(**cfg))("g", torch.randn(2, 8), torch.tensor([0, 1]))[2] is None  # off by default
    gan = GAN(GANConfig(**cfg, aux_class=0.5))
    z, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    s_real, s_fake, c_real = gan("d", z, y, torch.rand(5, 1, 16, 16) * 2 - 1)
    assert c_real.shape == (5, 3) and s_real.shape == s_fake.shape == (5,)
    _, fake, c_fake = gan("g", z, y)
    assert c_fake.shape == (5, 3)
    F.cross_entropy(c_fake, y).backward()
    assert gan.generator.fc.weight.grad.abs().sum() > 0  # the class term trains the generator
    with pytest.raises(ConfigError, match="aux-class"):
        GANConfig(num_classes=0, aux_class=0.5).validate()
    with pytest.raises(ConfigError, match="aux-class"):
        GANConfig(aux_class=-1).validate()


def test_learned_sigma_is_optimal_at_the_reconstruction_error_and_needs_the_gaussian_likelihood():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_size=16, num_classes=0, latent_dim=4, width=4, likelihood="gaussian", learn_sigma=True))
    x, logits = torch.rand(3, 1, 16, 16), torch.randn(3, 1, 16, 16)
    rmse = float((x - torch.sigmoid(logits)).pow(2).mean().sqrt())
    totals = {}
    for factor in (0.5, 0.9, 1.0, 1.1, 2.0):
        with torch.no_grad():
            vae.log_sigma.fill_(math.log(rmse * factor))
            totals[factor] = float(vae.reconstruction_nll(logits, x).sum())
    assert min(totals, key=totals.get) == 1.0  # the likelihood's best sigma is the RMS error itself
    with torch.no_grad():
        vae.log_sigma.fill_(math.log(rmse))
    vae.reconstruction_nll(logits, x).sum().backward()
    assert abs(float(vae.log_sigma.grad)) < 1e-2 * 3 * 256  # ~0 there, against a per-pixel scale of 1
    fixed = VAE(VAEConfig(image_size=16, num_classes=0, latent_dim=4, width=4, likelihood="gaussian", sigma=rmse))
    assert float(fixed.reconstruction_nll(logits, x).sum()) == pytest.approx(totals[1.0], rel=1e-5)
    with pytest.raises(ConfigError, match="learn-sigma"):
        VAEConfig(learn_sigma=True).validate()  # bernoulli has no sigma

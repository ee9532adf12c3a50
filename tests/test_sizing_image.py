"""`genlab size` for the GAN and VAE: analytic counts, FLOPs, checkpoint size and activations against
the modules themselves, and the CLI (presets, run folders, comparison with an LM, errors)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from genlab.cli import app
from genlab.errors import ConfigError, GenlabError
from genlab.models.gan import GAN, GANConfig
from genlab.models.vae import VAE, VAEConfig
from genlab.sizing import SizeOptions, analyse, resolve
from genlab.sizing import image as img
from genlab.sizing.hardware import Device

runner = CliRunner()
FAKE = Device("fake", "fake machine", 8, 8, 10.0, {"fp32": 50e9, "fp16": 100e9}, "test")

sizes = st.sampled_from([16, 24, 28, 32])
common = dict(image_size=sizes, channels=st.sampled_from([1, 3]), num_classes=st.integers(0, 6),
              latent_dim=st.integers(1, 24), embed_dim=st.integers(1, 12))
gan_configs = st.builds(GANConfig, g_width=st.integers(1, 12), d_width=st.integers(1, 12),
                        mbstd_group=st.sampled_from([0, 2, 4]), aux_class=st.sampled_from([0.0, 0.5]),
                        **common).filter(lambda c: c.num_classes or not c.aux_class)
vae_configs = st.builds(VAEConfig, width=st.integers(1, 12), likelihood=st.sampled_from(["bernoulli", "gaussian"]),
                        learn_sigma=st.booleans(), adversarial=st.sampled_from([0.0, 0.5]),
                        d_width=st.integers(1, 8), **common).filter(lambda c: c.likelihood == "gaussian" or not c.learn_sigma)
configs = st.one_of(gan_configs, vae_configs)


def arch_of(cfg) -> img.ImageArch:
    return img.ImageArch("test", "gan" if isinstance(cfg, GANConfig) else "vae", cfg)


def build(cfg):
    return GAN(cfg) if isinstance(cfg, GANConfig) else VAE(cfg)


def numel(params) -> int:
    return sum(p.numel() for p in params)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_analytic_count_equals_the_module(cfg):
    a, model = arch_of(cfg), build(cfg)
    ls = img.layers(a)
    assert img.total_params(a) == numel(model.parameters())
    assert img.trainable_params(a) == numel(p for p in model.parameters() if p.requires_grad)
    state = model.state_dict()
    assert sum(x.tensors for x in ls) == len(state)
    assert sum(x.params + x.buffers + x.int_buffers for x in ls) == sum(t.numel() for t in state.values())
    groups = img.groups(a)
    if isinstance(cfg, GANConfig):
        assert groups["generator"]["params"] == numel(model.generator.parameters())
        assert groups["discriminator"]["params"] == numel(model.discriminator.parameters())
        assert groups["EMA generator"] == {"params": numel(model.ema.parameters()), "trainable": 0}
        assert numel(model.ema.parameters()) == numel(model.generator.parameters())
    else:
        heads = numel(model.enc_out.parameters())
        assert groups["latent heads"]["params"] == heads
        assert groups["encoder"]["params"] == numel(model.enc_stem.parameters()) + numel(model.enc_downs.parameters())
        assert groups["decoder"]["params"] == (numel(model.dec_in.parameters()) + numel(model.dec_ups.parameters())
                                               + numel(model.dec_out.parameters())
                                               + (1 if cfg.learn_sigma else 0))  # the learned sigma
        assert groups.get("critic", {"params": 0})["params"] == (numel(model.critic.parameters()) if cfg.adversarial else 0)


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, st.integers(1, 3))
def test_flops_match_torch_flop_counter(cfg, batch):
    a, model = arch_of(cfg), build(cfg)
    model.eval()
    f = img.flops(a)
    z = torch.randn(batch, cfg.latent_dim)
    y = torch.zeros(batch, dtype=torch.long) if cfg.num_classes else None
    x = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size)
    if isinstance(cfg, GANConfig):
        assert counted_flops(lambda: model.ema(z, y)) == batch * f["generator"] == batch * img.generate_flops(a)
        # (training runs the auxiliary classifier, when there is one, on every discriminator pass)
        assert counted_flops(lambda: model.discriminator(x, y, class_logits=True)) == batch * f["discriminator"]
    else:
        assert counted_flops(lambda: model.encode(x, y)) == batch * f["encoder"]
        emb = model.class_embedding(y)
        assert counted_flops(lambda: model.decode_logits(z, emb)) == batch * f["decoder"]


@pytest.mark.parametrize("preset", ["gan-tiny", "vae-tiny"])
def test_checkpoint_size_matches_the_saved_file(tmp_path, preset):
    from genlab import runs

    a = resolve(preset)
    model = GAN(a.config) if a.family == "gan" else VAE(a.config)
    runs.save_weights(tmp_path, model)
    ck = img.checkpoint_bytes(a)
    weights = runs.weights_of(model)
    assert ck["data"] == sum(t.nbytes for t in weights.values())
    assert ck["tensors"] == len(weights)
    size = (tmp_path / runs.WEIGHTS).stat().st_size
    assert ck["data"] < size <= ck["data"] + 160 * ck["tensors"]
    assert abs(size - ck["total"]) < 0.02 * size


def saved_on_cpu(model, run) -> int:
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


@pytest.mark.parametrize("name", ["gan-tiny", "vae-tiny"])
def test_meta_activations_predict_a_real_step_at_another_batch(name):
    torch.manual_seed(0)
    a = resolve(name)
    c = a.config
    act = img.activations(a, batch=3)
    model = GAN(c) if a.family == "gan" else VAE(c)
    x, y, z = torch.rand(3, c.channels, c.image_size, c.image_size), torch.tensor([0, 1, 2]), torch.randn(3, c.latent_dim)
    if a.family == "gan":
        real = {"d step": saved_on_cpu(model, lambda: model("d", z, y, x)),
                "g step": saved_on_cpu(model, lambda: model("g", z, y))}
    else:
        real = {"step": saved_on_cpu(model, lambda: model(x, y, z))}
    for k, v in real.items():
        assert act["passes"][k]["at_batch"] == v, k
    assert act["total"] == max(real.values()) > 0


def test_large_models_are_built_on_the_meta_device(monkeypatch):
    a = resolve("gan-tiny")
    small = img.activations(a, batch=2)
    img._measure.cache_clear()
    monkeypatch.setattr(img, "SMALL_MODEL", 0)  # as if too big to build on the CPU
    try:
        assert img.activations(a, batch=2) == small
    finally:
        img._measure.cache_clear()


def test_preset_report_numbers():
    r = analyse(resolve("gan-small"), SizeOptions(batch=4), [FAKE], FAKE)
    cfg = GANConfig(latent_dim=64, embed_dim=64, g_width=16, d_width=16, mbstd_group=4,
                    aux_class=0.5)  # train/image.py's "small"
    model = GAN(cfg)
    p = r["parameters"]
    assert p["total"] == numel(model.parameters())
    assert p["trainable"] == numel(model.generator.parameters()) + numel(model.discriminator.parameters())
    mem = r["memory"]
    assert mem["weights"]["fp32"] == 4 * p["total"] == 2 * mem["weights"]["fp16"]
    assert mem["weights"]["fp16"] > mem["weights"]["int8"] > mem["weights"]["fp16"] / 2
    assert mem["sampler_weights"]["fp32"] == 4 * numel(model.ema.parameters())
    t = mem["training"]
    assert t["gradients"] == 4 * p["trainable"] and t["optimizer"] == 8 * p["trainable"]
    assert t["total"] == t["weights"] + t["gradients"] + t["optimizer"] + t["activations"]
    dev = r["devices"][0]
    gen = r["compute"]["generate_flops_per_image"]
    assert dev["formats"]["fp16"]["images_per_s"] == min(100e9 / gen, 4 * 10e9 / mem["sampler_weights"]["fp16"])
    assert dev["training"]["images_per_s"] == 50e9 / r["compute"]["train_flops_per_image"]
    assert dev["training"]["fits"] == (t["total"] <= 8 * 2**30)


def size(*args: str):
    return runner.invoke(app, ["size", *args, "--no-probe"])


def write_run(path, family: str, model: dict, **extra) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"family": family, "preset": "tiny", "model": model,
                                                  "train": {"batch_size": 16}, **extra}))


def test_run_folders_size_through_the_cli(tmp_path):
    cfg = VAEConfig(image_size=32, channels=3, num_classes=0, width=8)
    write_run(tmp_path / "vae-run", "vae", cfg.to_dict())
    res = size(str(tmp_path / "vae-run"), "--json", "--batch", "8")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["model"]["family"] == "vae" and r["model"]["run_batch_size"] == 16
    assert r["parameters"]["total"] == numel(VAE(cfg).parameters())
    assert "label embedding" not in r["parameters"]["groups"]
    assert r["settings"]["batch"] == 8


@pytest.mark.parametrize("fmt", ["--markdown", "--json", None])
def test_compare_lm_and_image_models(fmt):
    res = size("tiny", "gan-tiny", "vae-small", *([fmt] if fmt else []))
    assert res.exit_code == 0, res.output
    if fmt == "--json":
        assert [r["model"]["family"] for r in json.loads(res.stdout)] == ["lm", "gan", "vae"]
    elif fmt == "--markdown":
        assert "| quantity | tiny | gan-tiny | vae-small |" in res.stdout
        kv = next(line for line in res.stdout.splitlines() if line.startswith("| KV cache"))
        assert kv.endswith("| - | - |")
        per_image = next(line for line in res.stdout.splitlines() if line.startswith("| FLOPs per generated image"))
        assert per_image.startswith("| FLOPs per generated image | - |")


def test_single_report_formats():
    res = size("gan-small", "--markdown")
    assert res.exit_code == 0, res.output
    for text in ("EMA generator (a copy of the generator, not trained)", "projection embedding (10 x 64)",
                 "checkpoint file", "Memory: training", "train fp32", "raspberry-pi-5"):
        assert text in res.stdout
    assert size("vae-small").exit_code == 0


@pytest.mark.parametrize("model, message", [
    ({"image_size": 30}, "image size 30 is not supported"),
    ({"g_width": 0}, "g-width must be positive"),
    ({"bogus": 1}, "unknown gan setting(s): bogus"),
    ({"latent_dim": "big"}, "latent_dim"),
    (None, "needs a 'model' section"),
])
def test_bad_runs_are_one_line_genlab_errors(tmp_path, model, message):
    write_run(tmp_path, "gan", model) if model is not None else (tmp_path / "config.json").write_text(
        json.dumps({"family": "gan"}))
    res = size(str(tmp_path))
    assert isinstance(res.exception, GenlabError), res.output
    assert message in str(res.exception) and "\n" not in str(res.exception)


def test_lm_only_options_and_unknown_presets():
    res = size("gan-tiny", "--measure")
    assert isinstance(res.exception, GenlabError) and "GAN/VAE" in str(res.exception)
    with pytest.raises(GenlabError, match="did you mean.*gan-small"):
        resolve("gan-smal")
    with pytest.raises(ConfigError):
        img._config("vae", {"likelihood": "poisson"}, "x")

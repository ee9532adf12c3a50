"""Sizing of genlab's convolutional image models: the class-conditional GAN and the VAE.

The Transformer's :class:`~genlab.sizing.arch.Architecture` does not describe them, so they get their
own description (:class:`ImageArch`) and analysis, reported through the same dictionary layout and
renderers. Layer by layer, from the model config alone:

- parameters (weights and biases of every conv, transposed conv, linear layer, norm and embedding),
  which parts train (the GAN's EMA generator does not), and the state-dict buffers (batch-norm
  statistics, spectral norm's ``u`` and ``v`` vectors) that the checkpoint also stores;
- forward FLOPs per image: 2 x multiply-adds of every convolution and linear layer (a transposed
  convolution multiplies each input pixel by its k x k kernel: 2 x H_in x W_in x C_in x C_out x k^2),
  which is what ``torch.utils.flop_counter`` counts; norms, activations and the discriminator's
  projection dot product are elementwise and left out.

Activations saved for backward are not derived by formula: which tensors autograd keeps depends on
each op's backward (ReLU keeps its output, SiLU its input, batch norm its input and statistics,
spectral norm its normalised weight), so they are measured by running one training step's forward
passes on the ``meta`` device (no memory, no arithmetic) under saved-tensor hooks, at two batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from genlab.errors import ConfigError
from genlab.sizing.common import (
    GIB,
    CompareRow,
    Section,
    SizeOptions,
    device_info,
    flop,
    gib,
    params_str,
    rate,
    si,
)
from genlab.sizing.hardware import CATALOG, Device, peak

if TYPE_CHECKING:
    from genlab.models.gan import GANConfig
    from genlab.models.vae import VAEConfig

CONV, LINEAR, NORM, EMBEDDING = "conv", "linear", "norm", "embedding"
# Bits per parameter: matrices (conv and linear weights) and everything else (biases, norms, embeddings).
# int8 quantises the matrices only, as the LM's int8 format does (per-channel scales add < 0.1%).
WEIGHT_FORMATS: dict[str, tuple[int, int]] = {"fp32": (32, 32), "fp16": (16, 16), "int8": (8, 16)}
IMAGE_FAMILIES = ("gan", "vae")
PRESETS = tuple(f"{fam}-{p}" for fam in IMAGE_FAMILIES for p in ("tiny", "small", "rgb32", "rgb64"))
SMALL_MODEL = 20_000_000  # parameters: built on the CPU before moving to the meta device


@dataclass(frozen=True)
class ImageArch:
    name: str
    family: str  # "gan" | "vae"
    config: Any  # GANConfig | VAEConfig
    source: str = ""
    run_batch: int | None = None  # the run's training batch size, when sized from a run


@dataclass(frozen=True)
class Layer:
    name: str
    group: str  # generator / discriminator / EMA generator; label embedding / encoder / latent heads / decoder
    matrix: int  # weight-matrix (or kernel) elements
    vector: int = 0  # biases, norm gains, embedding tables
    kind: str = LINEAR
    flops: int = 0  # forward FLOPs per image
    trainable: bool = True
    buffers: int = 0  # fp32 state-dict buffers (batch-norm statistics, spectral norm's u and v)
    int_buffers: int = 0  # int64 scalars (num_batches_tracked, the GAN's ema_updates)
    tensors: int = 0  # entries in the state dict
    io: int = 0  # elements of one image's input and output maps (what a forward pass holds live)

    @property
    def params(self) -> int:
        return self.matrix + self.vector

    def bytes(self, fmt: str) -> float:
        mat, vec = WEIGHT_FORMATS[fmt]
        return (self.matrix * mat + self.vector * vec) / 8


# ---- layers ---------------------------------------------------------------------------------------------

def _conv(name: str, group: str, cin: int, cout: int, k: int, side: int, stride: int = 1, sn: bool = False) -> Layer:
    """A k x k convolution producing a ``side`` x ``side`` map (spectral norm adds u and v)."""
    return Layer(name, group, cin * cout * k * k, cout, CONV, 2 * cin * cout * k * k * side * side,
                 buffers=(cout + cin * k * k) if sn else 0, tensors=4 if sn else 2,
                 io=cin * (side * stride) ** 2 + cout * side * side)


def _conv_t(name: str, group: str, cin: int, cout: int, k: int, side_in: int) -> Layer:
    """A k x k transposed convolution reading a ``side_in`` x ``side_in`` map."""
    return Layer(name, group, cin * cout * k * k, cout, CONV, 2 * cin * cout * k * k * side_in * side_in, tensors=2,
                 io=(cin + 4 * cout) * side_in * side_in)


def _linear(name: str, group: str, fin: int, fout: int, sn: bool = False) -> Layer:
    return Layer(name, group, fin * fout, fout, LINEAR, 2 * fin * fout, buffers=(fout + fin) if sn else 0,
                 tensors=4 if sn else 2, io=fin + fout)


def _embedding(name: str, group: str, n: int, dim: int, sn: bool = False) -> Layer:
    # A lookup: no FLOPs. Spectral norm of an (n, dim) table keeps u (n) and v (dim).
    return Layer(name, group, 0, n * dim, EMBEDDING, buffers=(n + dim) if sn else 0, tensors=3 if sn else 1)


def _cond_norm(name: str, group: str, c: int, e: int) -> Layer:
    """genlab.models.gan.ConditionalBatchNorm: batch norm (running mean and variance, a step counter)
    plus two linear maps from the label embedding to per-channel gain and bias; affine BN when e = 0."""
    if e:
        return Layer(name, group, 2 * e * c, 2 * c, NORM, 2 * 2 * e * c, buffers=2 * c, int_buffers=1, tensors=7)
    return Layer(name, group, 0, 2 * c, NORM, buffers=2 * c, int_buffers=1, tensors=5)


def _plan(image_size: int, width: int) -> tuple[int, int, list[int]]:
    from genlab.models.conv import size_plan, widths

    base, n = size_plan(image_size)
    return base, n, widths(width, n)


def _gan_generator(c: GANConfig, group: str = "generator") -> list[Layer]:
    base, n, ch = _plan(c.image_size, c.g_width)
    e = c.embed_dim if c.num_classes else 0
    layers = [_embedding("label embedding", group, c.num_classes, c.embed_dim)] if c.num_classes else []
    layers.append(_linear(f"projection from latent ({c.latent_dim} -> {ch[0]} x {base}x{base})", group,
                          c.latent_dim, ch[0] * base * base))
    side = base
    for i in range(n):
        layers.append(_cond_norm(f"block {i + 1}: norm ({ch[i]} ch, {side} px)", group, ch[i], e))
        layers.append(_conv_t(f"block {i + 1}: up-conv {ch[i]} -> {ch[i + 1]} ch, {side} -> {2 * side} px",
                              group, ch[i], ch[i + 1], 4, side))
        side *= 2
    layers.append(_cond_norm(f"output norm ({ch[n]} ch)", group, ch[n], e))
    layers.append(_conv(f"output conv {ch[n]} -> {c.channels} ch", group, ch[n], c.channels, 3, side))
    return layers


def _gan_discriminator(c: GANConfig, g: str = "discriminator") -> list[Layer]:
    _, n, ch = _plan(c.image_size, c.d_width)
    side = c.image_size
    layers = [_conv(f"stem conv {c.channels} -> {ch[n]} ch", g, c.channels, ch[n], 3, side, sn=True)]
    for j, i in enumerate(reversed(range(n))):
        layers.append(_conv(f"block {j + 1}: down-conv {ch[i + 1]} -> {ch[i]} ch, {side} -> {side // 2} px", g,
                            ch[i + 1], ch[i], 4, side // 2, 2, sn=True))
        side //= 2
    if c.mbstd_group:
        layers.append(_conv(f"minibatch-stddev conv {ch[0]} + 1 -> {ch[0]} ch (groups of {c.mbstd_group})", g,
                            ch[0] + 1, ch[0], 3, side, sn=True))
    layers.append(_linear(f"head ({ch[0]} -> 1)", g, ch[0], 1, sn=True))
    if c.num_classes:
        layers.append(_embedding(f"projection embedding ({c.num_classes} x {ch[0]})", g, c.num_classes, ch[0],
                                 sn=True))
    if c.aux_class:
        layers.append(_linear(f"auxiliary classifier ({ch[0]} -> {c.num_classes})", g, ch[0], c.num_classes))
    return layers


def _vae(c: VAEConfig) -> list[Layer]:
    base, n, ch = _plan(c.image_size, c.width)
    flat = ch[0] * base * base
    e = c.embed_dim if c.num_classes else 0
    layers = [_embedding("label embedding", "label embedding", c.num_classes, c.embed_dim)] if c.num_classes else []
    if c.learn_sigma:  # (a module's own parameters come first in its state dict)
        layers.insert(0, Layer("learned likelihood sigma (one scalar)", "decoder", 0, 1, tensors=1))
    side = c.image_size
    layers.append(_conv(f"stem conv {c.channels} -> {ch[n]} ch", "encoder", c.channels, ch[n], 3, side))
    for j, i in enumerate(reversed(range(n))):
        layers.append(_conv(f"block {j + 1}: down-conv {ch[i + 1]} -> {ch[i]} ch, {side} -> {side // 2} px",
                            "encoder", ch[i + 1], ch[i], 4, side // 2, 2))
        side //= 2
    layers.append(_linear(f"mean and log-variance ({flat}{f' + {e}' if e else ''} -> 2 x {c.latent_dim})",
                          "latent heads", flat + e, 2 * c.latent_dim))
    layers.append(_linear(f"input ({c.latent_dim}{f' + {e}' if e else ''} -> {ch[0]} x {base}x{base})", "decoder",
                          c.latent_dim + e, flat))
    for i in range(n):
        layers.append(_conv_t(f"block {i + 1}: up-conv {ch[i]} -> {ch[i + 1]} ch, {side} -> {2 * side} px",
                              "decoder", ch[i], ch[i + 1], 4, side))
        side *= 2
    layers.append(_conv(f"output conv {ch[n]} -> {c.channels} ch", "decoder", ch[n], c.channels, 3, side))
    return layers + _vae_critic(c)


def _vae_critic(c: VAEConfig) -> list[Layer]:
    """VAE-GAN: the discriminator that judges the decoder's images (none when adversarial is 0)."""
    from genlab.models.gan import GANConfig

    if not c.adversarial:
        return []
    return _gan_discriminator(GANConfig(image_size=c.image_size, channels=c.channels, num_classes=c.num_classes,
                                        d_width=c.d_width), "critic")


def layers(a: ImageArch) -> list[Layer]:
    """Every layer of the model, in state-dict order by group."""
    if a.family == "vae":
        return _vae(a.config)
    g = _gan_generator(a.config)
    ema = Layer("EMA generator (a copy of the generator, not trained)", "EMA generator",
                sum(x.matrix for x in g), sum(x.vector for x in g), trainable=False,
                buffers=sum(x.buffers for x in g), int_buffers=sum(x.int_buffers for x in g),
                tensors=sum(x.tensors for x in g))
    # The GAN module's own buffer: the EMA update counter.
    counter = Layer("EMA update counter", "EMA generator", 0, 0, trainable=False, int_buffers=1, tensors=1)
    return [*g, *_gan_discriminator(a.config), ema, counter]


def sampler(a: ImageArch) -> list[Layer]:
    """What generating an image runs: the EMA generator (GAN); the label embedding and decoder (VAE)."""
    if a.family == "gan":
        return _gan_generator(a.config, "EMA generator")
    return [x for x in layers(a) if x.group in ("label embedding", "decoder")]


def total_params(a: ImageArch) -> int:
    return sum(x.params for x in layers(a))


def trainable_params(a: ImageArch) -> int:
    return sum(x.params for x in layers(a) if x.trainable)


def groups(a: ImageArch) -> dict[str, dict[str, int]]:
    """Parameters and trainable parameters of each group (generator, discriminator, encoder, ...)."""
    out: dict[str, dict[str, int]] = {}
    for x in layers(a):
        g = out.setdefault(x.group, {"params": 0, "trainable": 0})
        g["params"] += x.params
        g["trainable"] += x.params if x.trainable else 0
    return out


def flops(a: ImageArch) -> dict[str, int]:
    """Forward FLOPs per image of each network (convs and linear layers)."""
    if a.family == "gan":
        return {"generator": sum(x.flops for x in _gan_generator(a.config)),
                "discriminator": sum(x.flops for x in _gan_discriminator(a.config))}
    ls = layers(a)
    out = {"encoder": sum(x.flops for x in ls if x.group in ("encoder", "latent heads")),
           "decoder": sum(x.flops for x in ls if x.group == "decoder")}
    if a.config.adversarial:
        out["critic"] = sum(x.flops for x in ls if x.group == "critic")
    return out


def generate_flops(a: ImageArch) -> int:
    f = flops(a)
    return f["generator"] if a.family == "gan" else f["decoder"]


def train_flops(a: ImageArch) -> float:
    """Training FLOPs per image of the batch, backward counted as twice the forward (an upper bound:
    no pass needs the gradient of the real images, so the first layer's input gradient is skipped).

    GAN, per generator step: each of ``d_steps`` discriminator updates makes fakes without gradients
    (G) and runs D forward and backward on real and fake images (2 x 3D); the generator update runs G
    and D forward and backward (3G + 3D). VAE: 3 x (encoder + decoder). VAE-GAN: the VAE's update runs
    the encoder, the decoder on two images (reconstruction, prior sample) and the critic on those two,
    all forward and backward (3E + 6 x Dec + 6C); the critic's update reuses those fakes and runs the
    critic forward and backward on three images (real and the two fakes: 9C)."""
    f = flops(a)
    if a.family == "vae":
        if "critic" in f:
            return 3.0 * f["encoder"] + 6.0 * f["decoder"] + 15.0 * f["critic"]
        return 3.0 * (f["encoder"] + f["decoder"])
    g, d = f["generator"], f["discriminator"]
    return a.config.d_steps * (g + 6.0 * d) + 3.0 * (g + d)


def images_per_step(a: ImageArch, batch: int) -> int:
    """Images the trainer counts per step (the GAN's counts each discriminator update's batch)."""
    return batch * (a.config.d_steps if a.family == "gan" else 1)


def checkpoint_bytes(a: ImageArch) -> dict[str, float]:
    """model.safetensors: every parameter and buffer in fp32 (int64 counters), plus the JSON header
    (names, dtypes, shapes, offsets: roughly 60-110 bytes per tensor, estimated at 90)."""
    ls = layers(a)
    data = sum(4 * (x.params + x.buffers) + 8 * x.int_buffers for x in ls)
    tensors = sum(x.tensors for x in ls)
    return {"data": float(data), "tensors": tensors, "header_estimate": 90.0 * tensors,
            "total": data + 90.0 * tensors}


# ---- activations, measured on the meta device -------------------------------------------------------------

def _saved_bytes(model, run) -> int:
    """Bytes of the tensors autograd saves for backward while ``run()`` runs (parameters excluded,
    each storage once)."""
    import torch

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in params:
            seen[s._cdata] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


@cache
def _measure(family: str, config_json: str) -> dict[str, dict[int, int]]:
    """Saved bytes at batches 2 and 4 for each training pass (fp32, as genlab trains on CPUs)."""
    import json

    import torch

    from genlab.models.gan import GAN, GANConfig
    from genlab.models.vae import VAE, VAEConfig

    cfg_d = json.loads(config_json)
    c = GANConfig.from_dict(cfg_d) if family == "gan" else VAEConfig.from_dict(cfg_d)
    out: dict[str, dict[int, int]] = {}

    def build():
        return GAN(c) if family == "gan" else VAE(c)

    # Random init on the meta device runs through slow reference kernels (seconds for a GAN), so a
    # small model is built on the CPU (milliseconds) and moved there; a large one is built there.
    if total_params(ImageArch("", family, c)) <= SMALL_MODEL:
        model = build().to("meta")
    else:
        with torch.device("meta"):
            model = build()
    with torch.device("meta"):
        model.train()
        for b in (2, 4):
            x = torch.rand(b, c.channels, c.image_size, c.image_size)
            y = torch.zeros(b, dtype=torch.long) if c.num_classes else None
            z = torch.randn(b, c.latent_dim)
            if family == "gan":
                out.setdefault("d step", {})[b] = _saved_bytes(model, lambda x=x, y=y, z=z: model("d", z, y, x))
                out.setdefault("g step", {})[b] = _saved_bytes(model, lambda y=y, z=z: model("g", z, y))
            elif c.adversarial:  # VAE-GAN: the critic's pass and the VAE's (the critic frozen, as in training)
                model.critic.requires_grad_(False)
                out.setdefault("vae step", {})[b] = _saved_bytes(model, lambda x=x, y=y, z=z: model(x, y, z, z, "vae"))
                model.critic.requires_grad_(True)
                fakes = torch.rand(2 * b, c.channels, c.image_size, c.image_size)
                out.setdefault("critic step", {})[b] = _saved_bytes(
                    model, lambda x=x, y=y, f=fakes: model(x, y, None, phase="d", fakes=f))
            else:
                out.setdefault("step", {})[b] = _saved_bytes(model, lambda x=x, y=y, z=z: model(x, y, z))
    return out


def activations(a: ImageArch, batch: int) -> dict[str, float]:
    """Saved activations of a training step at micro-batch ``batch``: per image, the batch-independent
    part (e.g. spectral norm's normalised weights), and the peak over the step's passes."""
    import json

    measured = _measure(a.family, json.dumps(a.config.to_dict(), sort_keys=True))
    passes = {}
    for name, m in measured.items():
        per_image = (m[4] - m[2]) / 2  # saved bytes are affine in the batch size
        fixed = m[2] - 2 * per_image
        passes[name] = {"per_image": per_image, "fixed": fixed, "at_batch": fixed + batch * per_image}
    peak_pass = max(passes, key=lambda k: passes[k]["at_batch"])
    return {"passes": passes, "peak_pass": peak_pass, "per_image": passes[peak_pass]["per_image"],
            "total": passes[peak_pass]["at_batch"]}


# ---- readers: runs and presets -------------------------------------------------------------------------------

def _config(family: str, values: dict, where: str):
    from genlab.models.gan import GANConfig
    from genlab.models.vae import VAEConfig

    cls = GANConfig if family == "gan" else VAEConfig
    unknown = set(values) - set(cls.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{where}: unknown {family} setting(s): {', '.join(sorted(unknown))}")
    for name in ("image_size", "channels", "num_classes", "latent_dim", "embed_dim",
                 *(("g_width", "d_width", "d_steps") if family == "gan" else ("width",))):
        if name in values and (not isinstance(values[name], int) or isinstance(values[name], bool)):
            raise ConfigError(f"{where}: {name} must be an integer (got {values[name]!r})")
    try:
        cfg = cls(**values)
        cfg.validate()
    except TypeError as e:
        raise ConfigError(f"{where}: bad {family} model settings ({e})") from None
    return cfg


def run_reader(family: str):
    """The reader of a ``family`` run's config.json: its ``model`` section, and the batch it trained with."""

    def read(cfg: dict, name: str, source: str) -> ImageArch:
        if not isinstance(cfg.get("model"), dict):
            raise ConfigError(f"{source}: a {family} run config needs a 'model' section")
        train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
        batch = train.get("batch_size")
        return ImageArch(name, family, _config(family, cfg["model"], source), source,
                         batch if isinstance(batch, int) else None)
    return read


def preset_names(family: str) -> tuple[str, ...]:
    return tuple(p for p in PRESETS if p.startswith(f"{family}-"))


def from_preset(spec: str) -> ImageArch:
    """``gan-small`` etc.: the model preset at the default data's shape (28 px grayscale, 10 classes:
    Fashion-MNIST), as `genlab train gan --preset small` builds it; the colour presets at their own
    shape with the eight classes of `genlab data draw`."""
    from genlab.data.drawn import CLASSES as DRAWN_CLASSES
    from genlab.data.images import ImageDataConfig
    from genlab.train.image import MODEL_PRESETS, PRESET_DATA, TRAIN_PRESETS

    family, preset = spec.split("-", 1)
    if preset in PRESET_DATA:
        data = ImageDataConfig(source="a `genlab data draw` folder", **PRESET_DATA[preset])
        classes = len(DRAWN_CLASSES)
    else:
        data, classes = ImageDataConfig(), 10
    values = {**MODEL_PRESETS[family][preset], "image_size": data.image_size, "channels": data.channels,
              "num_classes": classes}
    return ImageArch(spec, family, _config(family, values, spec),
                     f"genlab {family} preset '{preset}' at {data.image_size} px x {data.channels} ch, "
                     f"{classes} classes ({data.source})", TRAIN_PRESETS[family][preset]["batch_size"])


# ---- the analysis ------------------------------------------------------------------------------------------------

def _device_row(dev: Device, batch: int, gen_flops: int, weights: dict[str, float],
                gen_act: dict[str, float], train_need: float, train_f: float) -> dict:
    usable = dev.usable_gib * GIB
    formats = {}
    for fmt, w in weights.items():
        rate_, prec = peak(dev, "int8" if fmt == "int8" else "fp16" if fmt == "fp16" else "fp32")
        by_compute = rate_ / gen_flops if rate_ and gen_flops else 0.0
        # A batch reads the weights once; activations are assumed to stay in cache (an upper bound).
        by_memory = batch * dev.bandwidth_gbs * 1e9 / w
        need = w + gen_act[fmt]
        formats[fmt] = {"need_bytes": need, "fits": need <= usable,
                        "images_per_s": min(by_compute, by_memory) if by_compute else by_memory,
                        "limit": "compute" if by_compute and by_compute < by_memory else "memory",
                        "compute_precision": prec}
    t_rate, t_prec = peak(dev, "fp32")
    train = {"need_bytes": train_need, "fits": train_need <= usable,
             "images_per_s": t_rate / train_f if t_rate else 0.0, "compute_precision": t_prec}
    return {**device_info(dev), "formats": formats, "training": train}


def analyse_image(a: ImageArch, opts: SizeOptions, devices: list[Device] | None = None,
                  train_device: Device | None = None) -> dict:
    """Everything ``genlab size`` reports about a GAN or VAE, as JSON-ready numbers."""
    opts.validate()
    devices = CATALOG if devices is None else devices
    train_device = train_device or devices[0]
    ls, samp = layers(a), sampler(a)
    trainable = sum(x.params for x in ls if x.trainable)
    total = sum(x.params for x in ls)
    weights = {f: sum(x.bytes(f) for x in ls) for f in WEIGHT_FORMATS}
    sampler_w = {f: sum(x.bytes(f) for x in samp) for f in WEIGHT_FORMATS}
    act = activations(a, opts.batch)
    # Generating keeps nothing for backward: what is live is the largest layer's input and output maps.
    gen_io = max(x.io for x in samp) * opts.batch
    gen_act = {f: gen_io * (4 if f == "fp32" else 2) for f in WEIGHT_FORMATS}
    frozen = total - trainable
    states = {"weights": 4.0 * total, "gradients": 4.0 * trainable, "optimizer": 8.0 * trainable}
    train_total = sum(states.values()) + act["total"]
    f = flops(a)
    gen_f, train_f = generate_flops(a), train_flops(a)
    t_rate, _ = peak(train_device, "fp32")
    return {
        "model": {"name": a.name, "family": a.family, "source": a.source, **a.config.to_dict(),
                  "run_batch_size": a.run_batch},
        "settings": {"batch": opts.batch, "hardware": train_device.key,
                     "not_applicable": ["--context", "--kv-dtype", "--tokens", "--mfu"]},
        "parameters": {
            "breakdown": [{"part": x.name, "group": x.group, "params": x.params, "trainable": x.trainable}
                          for x in ls if x.params],
            "groups": groups(a), "total": total, "trainable": trainable, "frozen": frozen,
            "buffers": sum(x.buffers + x.int_buffers for x in ls),
        },
        "memory": {
            "weights": weights, "sampler_weights": sampler_w, "checkpoint": checkpoint_bytes(a),
            "training": {**states, "activations": act["total"], "activations_per_image": act["per_image"],
                         "activations_passes": act["passes"], "activations_peak_pass": act["peak_pass"],
                         "activations_how": "measured: saved-tensor hooks on the meta device, fp32",
                         "total": train_total},
            "generation": {"activations": gen_act},
        },
        "compute": {
            "forward_flops_per_image": f, "generate_flops_per_image": gen_f,
            "train_flops_per_image": train_f, "images_per_train_step": images_per_step(a, opts.batch),
            "train_images_per_s_bound": t_rate / train_f if t_rate else 0.0,
            "training_device": train_device.name,
        },
        "devices": [_device_row(d, opts.batch, gen_f, sampler_w, gen_act, train_total, train_f)
                    for d in devices],
    }


# ---- rendering --------------------------------------------------------------------------------------------------

def _params_section(r: dict) -> Section:
    p = r["parameters"]
    rows, last = [], None
    for x in p["breakdown"]:
        if x["group"] != last:
            g = p["groups"][x["group"]]
            rows.append([f"{x['group']}, all", params_str(g["params"])])
            last = x["group"]
        rows.append([f"  {x['part']}", params_str(x["params"])])
    rows += [["total", params_str(p["total"])], ["trainable", params_str(p["trainable"])]]
    if p["frozen"]:
        rows.append(["not trained (EMA copy)", params_str(p["frozen"])])
    return Section("Parameters", ["part", "parameters"], rows,
                   f"plus {p['buffers']:,} buffer values (batch-norm statistics, spectral norm's u and v) "
                   "that the checkpoint stores but nothing trains")


def _memory_section(r: dict) -> Section:
    m, fam = r["memory"], r["model"]["family"]
    what = "EMA generator" if fam == "gan" else "label embedding + decoder"
    rows = [[f, gib(m["weights"][f]), gib(m["sampler_weights"][f])] for f in WEIGHT_FORMATS]
    ck = m["checkpoint"]
    rows.append(["checkpoint file (fp32, model.safetensors)", gib(ck["total"]), ""])
    return Section("Memory: weights", ["format", "whole model", f"to generate ({what})"], rows,
                   f"int8 quantises conv and linear weights, keeps biases, norms and embeddings 16-bit; the "
                   f"checkpoint holds {ck['tensors']} tensors, parameters and buffers in fp32 "
                   f"(header estimated at {ck['header_estimate']:,.0f} B)")


def _training_section(r: dict) -> Section:
    t, b = r["memory"]["training"], r["settings"]["batch"]
    run_b = r["model"].get("run_batch_size")
    b_note = f"{b} (--batch; the run's is {run_b})" if run_b and run_b != b else f"{b} (--batch)"
    rows = [[gib(t["weights"]), gib(t["gradients"]), gib(t["optimizer"]), gib(t["activations"]), gib(t["total"])]]
    passes = "; ".join(f"{k}: {gib(v['per_image'])}/image + {gib(v['fixed'])}"
                       for k, v in t["activations_passes"].items())
    return Section("Memory: training", ["weights", "grads", "Adam", "activ.", "total"], rows,
                   f"fp32 weights of every part, gradients and two Adam moments of the trainable ones; micro-batch "
                   f"{b_note}; activations saved for backward in the {t['activations_peak_pass']} "
                   f"({passes}), measured by running the forward passes on the meta device, not by formula")


def _compute_section(r: dict) -> Section:
    c = r["compute"]
    rows = [[f"forward FLOPs/image, {k}", flop(v)] for k, v in c["forward_flops_per_image"].items()]
    rows += [["FLOPs per generated image", flop(c["generate_flops_per_image"])],
             ["training FLOPs per batch image (fwd + 2x bwd)", flop(c["train_flops_per_image"])],
             [f"training images/s bound, {c['training_device']} fp32", rate(c["train_images_per_s_bound"])]]
    return Section("Compute", ["quantity", "value"], rows,
                   "2 x multiply-adds of convolutions and linear layers; norms and activations not counted")


def _cell(f: dict) -> str:
    return rate(f["images_per_s"]) if f["fits"] else f"needs {gib(f['need_bytes'])}"


def _devices_section(r: dict) -> Section:
    rows = [[d["key"], f"{d['usable_gib']:,.1f} GiB", f"{d['bandwidth_gbs']:,.4g} GB/s",
             *[_cell(d["formats"][f]) for f in WEIGHT_FORMATS], _cell(d["training"])] for d in r["devices"]]
    return Section("Fits on device, and images/s bounds", ["device", "usable", "bandwidth",
                                                           *[f"generate {f}" for f in WEIGHT_FORMATS], "train fp32"],
                   rows, f"batch {r['settings']['batch']}: generation images/s <= peak / FLOPs per image and <= "
                         "batch x bandwidth / weight bytes; training images/s <= fp32 peak / training FLOPs per "
                         "image; else the memory it needs")


def sections(r: dict) -> list[Section]:
    return [_params_section(r), _memory_section(r), _training_section(r), _compute_section(r), _devices_section(r)]


def compare_rows(hw: str) -> list[CompareRow]:
    """Rows of `genlab size A B` that only image models have (LM reports show "-"); none names a
    device, so ``hw`` goes unused."""
    return [
        ("trainable", lambda r: si(r["parameters"]["trainable"])),
        ("weights fp16", lambda r: gib(r["memory"]["weights"]["fp16"])),
        ("checkpoint file", lambda r: gib(r["memory"]["checkpoint"]["total"])),
        ("training memory (batch)", lambda r: gib(r["memory"]["training"]["total"])),
        ("FLOPs per generated image", lambda r: flop(r["compute"]["generate_flops_per_image"])),
    ]

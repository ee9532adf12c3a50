"""Few-shot fine-tuning of a GAN or VAE run on a new folder of images (`genlab finetune BASE --data FOLDER`
where BASE is a gan or vae run; LM runs go to genlab.train.finetune).

The new run starts from the base's weights and keeps its model settings (size, channels, widths);
only the number of classes may grow:

- Classes: the folder's class names (its sub-folders) are matched to the base's, ignoring case; the
  names the base lacks are appended. Every class table grows by those rows: the generator's and the
  EMA generator's label embedding, the discriminator's projection embedding (GAN), the VAE's label
  embedding. The old rows are copied unchanged; each new row starts at the mean of the old rows plus
  a little noise (0.1 x their standard deviation), a class "between" the known ones rather than a
  random point the norms have never seen. (The discriminator's projection is spectral-normalised:
  its raw rows are copied, and the power iteration is run again for the larger table, so the
  effective old rows are rescaled by the new largest singular value.) The run's class list is the
  union, in base order then new, so `genlab generate` draws old classes and new ones alike.
- FreezeD (Mo et al. 2020): the discriminator's first ``freeze_d`` convolution blocks (the stem at
  full resolution, then the downsampling blocks) keep the base's weights: no gradients and not in
  the optimizer. Low-level features of the base's images stay useful; what adapts are the upper
  blocks, the head and the class projection.
- DiffAugment (Zhao et al. 2020): every image D sees, real or generated, goes through the same kind
  of random differentiable transform (genlab.train.diffaugment); default translation, cutout, color.
  VAE: no augmentation by default; ``translation`` and ``flip`` of the inputs may be asked for.
- Generative replay (``--replay``, default 0.5): the folder has no images of the base's other classes,
  and without them fine-tuning overwrote them (conditional accuracy on the old classes 43.6% -> 12.3%
  in BENCHMARKS.md). So that share of every training batch is swapped for the frozen base model's own
  samples of those classes (the GAN's EMA generator, the VAE's decoder means), with their labels, as
  in generative replay for continual learning (Shin et al. 2017). A GAN's generator also pays the
  replay alignment (MeRGAN): the squared pixel gap to the base's image for the same noise and old
  label; adversarial replay alone barely helped. Measured: old classes at 64.0% accuracy after 600
  steps (the base 68.3%, 28.2% without replay). The base run is read again on resume and must be
  unchanged (sha256).
- The EMA generator's update counter starts again at 0, so its decay ramps up anew: with the base's
  0.999 it would still be mostly the base's generator after a few hundred fine-tuning steps.

Everything else is ordinary image training (genlab.train.image's tasks and the shared trainer):
budgets, Ctrl-C, checkpoints and exact ``--resume`` (the augmentations are drawn from the batch RNG).
The run's config.json records ``finetune``: the base run (absolute path), its weights' sha256, the
base's classes, the new ones, freeze_d, the augmentation policy, the replay share, its alignment weight
and the replayed classes.

Images: each one is centre-cropped and resized to the base's side, as in training; a colour image for
a grayscale base (or the reverse) is refused, naming the file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab import runs
from genlab.config import TrainConfig
from genlab.data.images import BUILTIN, ImageData, ImageDataConfig, ImageSplit, load_image_data, scan_folder
from genlab.errors import ConfigError, DataError, RunError
from genlab.models.conv import size_plan
from genlab.models.gan import GAN
from genlab.models.vae import VAE
from genlab.train.diffaugment import DiffAugment, parse_policy
from genlab.train.image import CONFIGS, FAMILIES, build_model, task_class
from genlab.train.trainer import TrainResult, begin, create_run, resumed_train_config, train

METHOD = "few-shot"
DEFAULT_FREEZE_D = 2  # of the 3 conv blocks of a 16-28 px discriminator (5 at 64 px)
DEFAULT_AUGMENT = {"gan": ["translation", "cutout", "color"], "vae": []}
VAE_AUGMENT = ("translation", "flip")  # on a VAE's inputs (and so its targets); color would change the data
DEFAULT_REPLAY = 0.5  # half of each batch: the base's own samples of the classes the folder lacks
DEFAULT_ALIGN = 1.0  # weight of the replay alignment term in the GAN generator's loss
NEW_ROW_NOISE = 0.1  # new class rows: mean of the old rows + N(0, (0.1 x their std)^2)


@dataclass
class ImageFinetuneSpec:
    """Everything `genlab finetune BASE --data FOLDER` needs for a GAN/VAE base; the CLI fills it in."""

    run: Path
    base: Path | None = None  # read from the run's config.json on resume
    data: str | None = None  # the folder (or a built-in data set)
    test_fraction: float = 0.1  # share of each class held out (folders)
    freeze_d: int | None = None  # GAN only; None: DEFAULT_FREEZE_D
    augment: str | list[str] | None = None  # None: the family's default; "none" or []: off
    replay: float | None = None  # share of each batch from the frozen base (old classes); None: DEFAULT_REPLAY
    train_overrides: dict = field(default_factory=dict)  # TrainConfig fields given on the command line
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False


def is_image_run(path: Path) -> bool:
    """Whether ``path`` is a GAN or VAE run (the CLI's dispatch between LM and image fine-tuning)."""
    return runs.read_config(path)["family"] in FAMILIES


def base_config(base: Path) -> dict:
    cfg = runs.read_config(base)
    if cfg["family"] not in FAMILIES:
        raise RunError(f"base '{base}' holds a {cfg['family']} model, not a gan or vae model")
    if not (Path(base) / runs.WEIGHTS).is_file():
        raise RunError(f"base '{base}' has no {runs.WEIGHTS}; it has not saved a checkpoint yet")
    return cfg


# ---- classes -------------------------------------------------------------------------------------

def union_classes(base_names: list[str], new_names: list[str]) -> tuple[list[str], list[int]]:
    """(the base's names followed by the new names it lacks, each new name's index in that list);
    names match ignoring case."""
    union = list(base_names)
    lowered = [n.casefold() for n in union]
    index = []
    for name in new_names:
        if name.casefold() not in lowered:
            union.append(name)
            lowered.append(name.casefold())
        index.append(lowered.index(name.casefold()))
    return union, index


def relabel(data: ImageData, class_names: list[str], index: list[int]) -> ImageData:
    """``data`` with label i turned into ``index[i]`` of ``class_names`` (the fine-tuned model's classes).
    The fingerprint stays the folder's: it identifies the images, which is what a resume checks."""
    lookup = np.asarray(index, dtype=np.int64)

    def split(s: ImageSplit) -> ImageSplit:
        return ImageSplit(s.images, lookup[s.labels] if len(s) else s.labels)

    return replace(data, class_names=list(class_names), train=split(data.train), test=split(data.test))


def _new_rows(old: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    old = old.detach().cpu()
    noise = torch.randn(n, old.size(1), generator=gen) * (NEW_ROW_NOISE * float(old.std()) if old.numel() > 1 else 0.0)
    return old.mean(dim=0, keepdim=True) + noise


def _grown(old: torch.Tensor, new_rows: torch.Tensor) -> nn.Embedding:
    emb = nn.Embedding(old.size(0) + len(new_rows), old.size(1))
    with torch.no_grad():
        emb.weight.copy_(torch.cat([old.detach().cpu(), new_rows.to(old.dtype)]))
    return emb


def grow_classes(model: GAN | VAE, n_new: int, seed: int) -> None:
    """Add ``n_new`` classes to every class table of ``model`` in place (see the module docstring)."""
    if n_new == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    total = model.cfg.num_classes + n_new
    if isinstance(model, GAN):
        rows = _new_rows(model.generator.embed.weight, n_new, gen)
        for g in (model.generator, model.ema):  # the EMA keeps its own old rows; its new rows start as G's
            g.embed = _grown(g.embed.weight, rows)
            g.cfg.num_classes = total  # (the EMA's config is a copy of G's)
        model.ema.requires_grad_(False)
        _grow_discriminator(model.discriminator, n_new, total, gen)
    else:
        model.embed = _grown(model.embed.weight, _new_rows(model.embed.weight, n_new, gen))
        if model.critic is not None:  # VAE-GAN: the critic's class projection too
            _grow_discriminator(model.critic, n_new, total, gen)
    model.cfg.num_classes = total


def _grow_discriminator(d: nn.Module, n_new: int, total: int, gen: torch.Generator) -> None:
    """The discriminator's class tables (genlab.models.gan.Discriminator): projection and classifier."""
    raw = d.embed.parametrizations.weight.original
    # A new spectral_norm wrapper runs the power iteration for the grown table from the start.
    d.embed = spectral_norm(_grown(raw, _new_rows(raw, n_new, gen)))
    if d.classify is not None:  # the auxiliary classifier gets one output per new class
        old = d.classify
        d.classify = nn.Linear(old.in_features, total)
        with torch.no_grad():
            d.classify.weight[: old.out_features] = old.weight
            d.classify.bias[: old.out_features] = old.bias


def discriminator_blocks(model: GAN) -> list[nn.Module]:
    """D's convolution blocks, from the input up: the full-resolution stem, then each downsampling."""
    return [model.discriminator.stem, *model.discriminator.downs]


def check_freeze_d(n: int, image_size: int) -> None:
    blocks = 1 + size_plan(image_size)[1]  # the stem and one block per halving (see discriminator_blocks)
    if not 0 <= n <= blocks:
        raise ConfigError(f"--freeze-d must be between 0 and {blocks} (the discriminator's conv blocks "
                          f"at {image_size} px; got {n})")


def freeze_discriminator(model: GAN, n: int) -> None:
    check_freeze_d(n, model.cfg.image_size)
    for block in discriminator_blocks(model)[:n]:
        block.requires_grad_(False)


# ---- the data ------------------------------------------------------------------------------------

def _is_colour(path: Path) -> bool:
    with Image.open(path) as im:
        if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
            return False
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def check_channels(folder: Path, channels: int, base: Path) -> None:
    """Refuse colour images for a grayscale base and grayscale images for a colour one."""
    for _, files in scan_folder(folder):
        for path in files:
            try:
                colour = _is_colour(path)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                continue  # the loader names an unreadable file with its own message
            if channels == 1 and colour:
                raise DataError(f"'{path}' is a colour image but base '{base}' is grayscale; convert the "
                                f"folder to grayscale, or fine-tune a colour (--rgb) run")
            if channels == 3 and not colour:
                raise DataError(f"'{path}' is a grayscale image but base '{base}' is a colour (RGB) run; "
                                f"give colour images, or fine-tune a grayscale run")


def _data_config(source: str, base_cfg: dict, test_fraction: float) -> ImageDataConfig:
    model = base_cfg["model"]
    return ImageDataConfig(source=source, image_size=model["image_size"], channels=model["channels"],
                           test_fraction=test_fraction)


def _check_classes(data: ImageData, conditional: bool) -> None:
    if conditional and data.num_classes < 2:
        raise DataError(f"'{data.name}' holds one class ('{data.class_names[0]}'); a conditional fine-tune "
                        f"needs one sub-folder of images per class, at least two")


# ---- generative replay ---------------------------------------------------------------------------

class GenerativeReplay:
    """Keeps the base's classes alive: a share of every real batch is swapped for images the frozen base
    model draws of the classes the new folder lacks (for a GAN: its EMA generator). D then keeps seeing
    those classes as real, and G keeps being asked for them; a VAE keeps reconstructing them.

    The labels and noise come from the batch RNG (``draw``), so a resumed run stays exact; the images are
    made on the model's device in ``mix``."""

    def __init__(self, base_model: GAN | VAE, classes: list[int] | None, fraction: float,
                 align: float = DEFAULT_ALIGN) -> None:
        self.model = base_model.eval().requires_grad_(False)
        self.classes = None if classes is None else np.asarray(classes, dtype=np.int64)
        self.fraction = fraction
        self.align = align

    def alignment(self, fake: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Replay alignment (MeRGAN, Wu et al. 2018), added to the GAN generator's loss: for the rows of
        an old class, the mean squared pixel difference to what the base draws from the same noise and
        label. The adversarial replay alone lets those classes drift; this pins each of them down."""
        if labels is None:
            rows = torch.ones(len(z), dtype=torch.bool, device=z.device)
        else:
            rows = torch.isin(labels, torch.as_tensor(self.classes, device=labels.device))
        if self.align == 0 or not rows.any():
            return fake.new_zeros(())
        with torch.no_grad():
            self.model.to(z.device)
            y = None if labels is None else labels[rows]
            target = self.model.generate(z[rows], self.model.class_embedding(y)) * 2 - 1  # G's [-1, 1]
        return self.align * (fake[rows].float() - target.float()).pow(2).mean()

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray | None, np.ndarray]:
        k = int(round(self.fraction * n))
        labels = None if self.classes is None else self.classes[rng.integers(0, len(self.classes), size=k)]
        return labels, rng.standard_normal((k, self.model.latent_dim), dtype=np.float32)

    @staticmethod
    def rows(k: int, n: int) -> torch.Tensor:
        """Which of a batch's ``n`` rows hold the ``k`` replayed images: spread evenly, so that any half of
        the batch holds its share (the mode-seeking term gives the generator the first half's labels twice)."""
        return torch.arange(k) * n // k

    def mix(self, images: torch.Tensor, labels: torch.Tensor | None, drawn) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch with ``rows`` replaced by base samples (images in [0, 1]) and their labels."""
        old_labels, z = drawn
        k = len(z)
        if k == 0:
            return images, labels
        dev = images.device
        y = None if old_labels is None else torch.from_numpy(old_labels).to(dev)
        with torch.no_grad():
            self.model.to(dev)
            fake = self.model.generate(torch.from_numpy(z).to(dev), self.model.class_embedding(y))
        rows = self.rows(k, len(images)).to(dev)
        images = images.clone()
        images[rows] = fake.to(images.dtype)
        if labels is not None:
            labels = labels.clone()
            labels[rows] = y
        return images, labels


def replay_classes(base_classes: list[str], folder_index: list[int] | None) -> list[int] | None:
    """The base's class indices the new folder has no images of (None for an unconditional run)."""
    if folder_index is None:
        return None
    return [i for i in range(len(base_classes)) if i not in set(folder_index)]


def check_replay(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--replay must be in [0, 1): the share of each batch drawn from the base (got {fraction})")


def load_base(base: Path, family: str, expected_sha256: str | None = None) -> GAN | VAE:
    """The base run's model, as it was trained (before its class tables grew)."""
    if expected_sha256 is not None and runs.file_sha256(base / runs.WEIGHTS) != expected_sha256:
        raise RunError(f"the base run '{base}' changed since this fine-tune started (its weights' sha256 differs); "
                       f"generative replay needs the same base")
    bcfg = base_config(base)
    model = build_model(family, CONFIGS[family].from_dict(bcfg["model"]), 0)
    runs.load_weights(base, model)
    return model


# ---- fine-tuning ---------------------------------------------------------------------------------

def train_config(saved_train: dict, overrides: dict) -> TrainConfig:
    """The base's training settings with a new budget and whatever the command line gave."""
    cfg = TrainConfig.from_dict(saved_train)
    cfg.steps = cfg.minutes = None
    for name, value in overrides.items():
        if name not in TrainConfig.__dataclass_fields__:
            raise ConfigError(f"unknown training setting '{name}'")
        if value is not None:
            setattr(cfg, name, tuple(value) if name == "betas" else value)
    cfg.validate()
    return cfg


def settings(family: str, freeze_d: int | None, augment, image_size: int) -> tuple[int | None, list[str]]:
    """(freeze_d, augmentation policy) after defaults and checks."""
    policy = DEFAULT_AUGMENT[family] if augment is None else parse_policy(augment)
    if family == "vae":
        if freeze_d is not None:
            raise ConfigError("--freeze-d is for GAN runs (it freezes discriminator blocks); a VAE has none")
        wrong = [op for op in policy if op not in VAE_AUGMENT]
        if wrong:
            raise ConfigError(f"a VAE's augmentation changes its inputs: choose from {', '.join(VAE_AUGMENT)} "
                              f"(got {wrong[0]})")
        return None, policy
    freeze_d = DEFAULT_FREEZE_D if freeze_d is None else freeze_d
    check_freeze_d(freeze_d, image_size)
    return freeze_d, policy


def finetune_image(spec: ImageFinetuneSpec) -> TrainResult:
    run = Path(spec.run)
    if spec.resume:
        saved = runs.read_config(run)
        sec = saved.get("finetune")
        if not isinstance(sec, dict) or sec.get("method") != METHOD:
            raise RunError(f"run '{run}' is not a few-shot image fine-tune; resume it with `genlab train "
                           f"{saved['family']} --resume`")
        family, base = saved["family"], Path(sec["base"])
        tcfg = resumed_train_config(saved, train_config(saved["train"], spec.train_overrides))
        dist, log = begin(tcfg, spec.quiet)
        data_cfg = ImageDataConfig.from_dict(saved["data"]["config"])
        freeze_d, policy = sec.get("freeze_d"), list(sec["augment"])
        replay = float(sec.get("replay", 0.0))  # fine-tunes made before replay existed had none
        align = float(sec.get("replay_align", 0.0))
        model_cfg = CONFIGS[family].from_dict(saved["model"])
        base_classes = sec["base_class_names"]
    else:
        if spec.base is None or not spec.data:
            raise ConfigError("give the run to fine-tune and the images: genlab finetune BASE --data FOLDER --out RUN")
        base = Path(spec.base).resolve()
        bcfg = base_config(base)
        family = bcfg["family"]
        freeze_d, policy = settings(family, spec.freeze_d, spec.augment, bcfg["model"]["image_size"])
        replay = DEFAULT_REPLAY if spec.replay is None else spec.replay
        check_replay(replay)
        align = DEFAULT_ALIGN if family == "gan" else 0.0
        runs.require_new(run, spec.overwrite)
        tcfg = train_config(bcfg["train"], spec.train_overrides)
        dist, log = begin(tcfg, spec.quiet)
        data_cfg = _data_config(spec.data, bcfg, spec.test_fraction)
        if spec.data not in BUILTIN:
            check_channels(Path(spec.data), data_cfg.channels, base)
        base_classes = bcfg["data"]["class_names"]

    data = dist.main_first(lambda: load_image_data(data_cfg))
    if spec.resume and saved["data"]["fingerprint"] != data.fingerprint:
        raise DataError(f"the images in '{data.name}' changed since run '{run}' started (fingerprint "
                        f"{data.fingerprint} != {saved['data']['fingerprint']}); an exact resume needs the same images")

    if spec.resume:
        model = build_model(family, model_cfg, tcfg.seed)  # the trainer loads the run's weights into it
        conditional = model_cfg.num_classes > 0
        union, index = union_classes(base_classes, data.class_names) if conditional else (data.class_names, None)
        if conditional and union != saved["data"]["class_names"]:
            raise RunError(f"run '{run}': its class list does not follow from its base's and its data's")
        teacher = load_base(base, family, sec["base_sha256"]) if replay else None
    else:
        model = build_model(family, CONFIGS[family].from_dict(bcfg["model"]), tcfg.seed)
        runs.load_weights(base, model)
        conditional = model.cfg.num_classes > 0
        _check_classes(data, conditional)
        union, index = union_classes(base_classes, data.class_names) if conditional else (data.class_names, None)
        teacher = copy.deepcopy(model) if replay else None  # the base as trained, before its tables grow
        grow_classes(model, len(union) - len(base_classes) if conditional else 0, tcfg.seed)
        if isinstance(model, GAN):
            model.ema_updates.zero_()  # the EMA's decay ramps up again (see the module docstring)
        new = union[len(base_classes):] if conditional else []
        meta = data.meta()
        meta.update(class_names=list(union), folder_class_names=list(data.class_names))
        create_run(run, {
            "family": family,
            "preset": bcfg.get("preset"),
            "model": model.cfg.to_dict(),
            "train": tcfg.to_dict(),
            "data": meta,
            "finetune": {"method": METHOD, "base": str(base), "base_sha256": runs.file_sha256(base / runs.WEIGHTS),
                         "base_class_names": list(base_classes), "new_classes": new, "freeze_d": freeze_d,
                         "augment": policy, "replay": replay, "replay_align": align,
                         "replay_classes": [base_classes[i] for i in replay_classes(base_classes, index) or []],
                         "new_row_init": f"mean of the old rows + {NEW_ROW_NOISE} x their std noise"},
        }, dist, spec.overwrite)
        dist.barrier()
        log(f"fine-tuning {family} run {base} on {data.name}: {len(data.train):,} train / {len(data.test):,} test "
            f"images; classes {len(base_classes)} -> {len(union)}"
            f"{' (new: ' + ', '.join(new) + ')' if new else ''}; "
            f"{f'freeze-d {freeze_d}, ' if freeze_d is not None else ''}augment {','.join(policy) or 'none'}, "
            f"replay {replay:g}")

    if conditional:
        data = relabel(data, union, index)
    if isinstance(model, GAN):
        freeze_discriminator(model, freeze_d)
    task = task_class(family, model.cfg)(model, data, tcfg.batch_size, tcfg.eval_batches, tcfg.channels_last)
    if policy:
        task.augment = DiffAugment(policy, data.config.image_size)
    old = replay_classes(base_classes, index) if conditional else None
    if teacher is not None and (old is None or old):  # nothing to replay when the folder has every base class
        task.replay = GenerativeReplay(teacher, old, replay, align)
    return train(task, tcfg, run, resume=spec.resume, quiet=spec.quiet, dist=dist)

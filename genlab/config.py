"""Configs as dataclasses with named presets; every field can be overridden and round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from genlab.errors import ConfigError
from genlab.jsonconfig import JsonConfig
from genlab.models.transformer import LMConfig

# Presets for the language model. vocab_size is a default for the BPE tokenizer; a char
# tokenizer sets it from the corpus. Sizes with the default vocabulary (tied embeddings):
#   tiny  ~0.2M parameters: for tests, trains in seconds on a laptop CPU
#   small ~11M: the demo model, a few minutes of CPU training to say something
#   base  ~110M: GPT-2 small's size (768 wide, 12 layers, 12 heads, 1024 context)
LM_PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=512, context=128, n_layer=2, n_head=4, n_kv_head=2, d_model=64),
    "small": dict(vocab_size=4096, context=256, n_layer=6, n_head=6, n_kv_head=2, d_model=384, ffn_hidden=1024),
    "base": dict(vocab_size=32000, context=1024, n_layer=12, n_head=12, n_kv_head=12, d_model=768, ffn_hidden=2048),
}

# Training defaults per preset: batch size and learning rate that suit the model size.
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(batch_size=16, lr=3e-3),
    "small": dict(batch_size=16, lr=1e-3),
    "base": dict(batch_size=8, lr=6e-4, grad_accum=4),
}


def lm_config(preset: str = "tiny", **overrides) -> LMConfig:
    if preset not in LM_PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(LM_PRESETS)}")
    values = dict(LM_PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in fields(LMConfig)}
    if unknown:
        raise ConfigError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
    cfg = LMConfig(**values)
    cfg.validate()
    return cfg


@dataclass
class TrainConfig(JsonConfig):
    """How to train: shared by every model family."""

    steps: int | None = None  # budget in optimizer steps ...
    minutes: float | None = None  # ... and/or in wall-clock minutes (whichever ends first)
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping (the norm is still logged)
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int = 100
    sample_every: int = 0  # 0 = at each evaluation
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16 (autocast) | float16
    compile: bool = False
    # Image families: convolutions in NHWC layout (oneDNN on CPUs and tensor cores on GPUs run it
    # faster); the LM has no convolutions and ignores it.
    channels_last: bool = True
    fsdp: bool = False  # under torchrun: shard the model with FSDP2 (fully_shard) instead of DDP
    window: int | None = None  # LM training/eval windows in tokens; None = the model's context
    log_every: int = 10

    def validate(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ConfigError("give a training budget: --steps N and/or --minutes M")
        if self.window is not None and self.window < 2:
            raise ConfigError(f"--context must be at least 2 tokens (got {self.window})")
        if self.steps is not None and self.steps <= 0:
            raise ConfigError(f"--steps must be a positive number (got {self.steps})")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"--minutes must be a positive number (got {self.minutes})")
        for name in ("batch_size", "grad_accum", "eval_every", "eval_batches", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive (got {self.lr})")
        if self.warmup_steps < 0:
            raise ConfigError("--warmup must not be negative")
        if self.grad_clip < 0:
            raise ConfigError(f"--grad-clip must not be negative (got {self.grad_clip}); 0 turns clipping off")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"unknown --dtype '{self.dtype}'; choose auto, float32, bfloat16 or float16")

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list back


def train_config(preset: str | None = None, **overrides) -> TrainConfig:
    values = dict(TRAIN_PRESETS.get(preset or "", {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


@dataclass
class DataConfig(JsonConfig):
    """What to train on and how to tokenize it."""

    corpus: list[str] = field(default_factory=lambda: ["fortunes"])
    tokenizer: str = "bpe"  # bpe | char
    vocab_size: int = 512  # BPE only
    val_fraction: float = 0.1



def write_json(path: Path, obj) -> None:
    from genlab.runs import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o):
    if dataclasses.is_dataclass(o):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")

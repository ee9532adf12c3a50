"""Language-model training: the LM objective plugged into the shared trainer, and the run setup
(new run, resume, or fine-tune from another run's weights)."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab import runs
from genlab.config import DataConfig, TrainConfig, lm_config
from genlab.data import conversations as conv
from genlab.data import prepare as prep
from genlab.data import tokenizer as tokmod
from genlab.device import seed_everything
from genlab.errors import ConfigError, DataError
from genlab.models.transformer import LMConfig, Transformer
from genlab.train.chat import IGNORE, Windows
from genlab.train.trainer import TrainResult, begin, create_run, resumed_train_config, train

# ---- scoring: the one perplexity of genlab (training evals, `genlab eval`, export figures, benchmarks) ----

@torch.no_grad()
def batches_nll(model, batches, device="cpu") -> tuple[float, int]:
    """Summed negative log-likelihood of each batch's targets ``y`` under ``model(x)`` (any runner
    called without a cache), and how many targets there were."""
    nll, count = 0.0, 0
    for x, y in batches:
        logits = model(x.to(device))
        nll += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(logits.device).reshape(-1),
                               reduction="sum").item()
        count += y.numel()
    return nll, count


def token_nll(model, tokens: np.ndarray, context: int, batch_size: int = 8, device="cpu") -> tuple[float, int]:
    """Summed negative log-likelihood of ``tokens`` and how many were predicted. The text is cut
    into windows of context + 1 tokens that overlap by one, so every token but the first is
    predicted exactly once."""
    windows = [torch.from_numpy(np.asarray(tokens[s : s + context + 1], np.int64))
               for s in range(0, len(tokens) - 1, context)]
    full = [w for w in windows if len(w) == context + 1]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [w[None] for w in windows if len(w) != context + 1]  # the shorter tail window
    return batches_nll(model, ((b[:, :-1], b[:, 1:]) for b in batches), device)


def lm_metrics(loss: float, bytes_per_token: float) -> dict[str, float]:
    """Loss (nats per token), perplexity and bits per byte, which compares models with different tokenizers."""
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": loss / math.log(2) / bytes_per_token}


def training_window(model: Transformer, window: int | None) -> int:
    """Tokens per training window: the model's context, or fewer (``--context`` of ``genlab finetune``:
    a model imported with a long context is fine-tuned on shorter windows; its context stays)."""
    if window is None:
        return model.cfg.context
    if not 2 <= window <= model.cfg.context:
        raise ConfigError(f"--context {window} must be between 2 and the model's context ({model.cfg.context})")
    return window


class LMTask:
    family = "lm"
    unit = "tok"
    metric_names = ("loss", "perplexity", "bits_per_byte")

    def __init__(self, model: Transformer, data: prep.Prepared, batch_size: int, eval_batches: int,
                 sample_tokens: int = 200, window: int | None = None) -> None:
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.eval_batches = eval_batches
        self.sample_tokens = sample_tokens
        self.train_tokens = data.tokens("train")
        self.val_tokens = data.tokens("val")
        self.tokenizer = data.tokenizer()
        self.context = context = training_window(model, window)
        if len(self.train_tokens) <= context + 1:
            raise ConfigError(f"the corpus has {len(self.train_tokens)} training tokens, fewer than the context "
                              f"({context}); give more text or a smaller --context")

    def train_batch(self, rng: np.random.Generator):
        return prep.sample_batch(self.train_tokens, self.batch_size, self.context, rng)

    def loss(self, model, batch):
        x, y = (t.to(self.device) for t in batch)
        logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        return loss, y.numel()

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    def evaluate(self, model) -> dict[str, float]:
        # A fixed sample of evenly spaced windows: quick enough to run every eval_every steps.
        x, y = prep.eval_windows(self.val_tokens, self.context, self.eval_batches * self.batch_size)
        b = self.batch_size
        nll, count = batches_nll(model, ((x[i : i + b], y[i : i + b]) for i in range(0, len(x), b)), self.device)
        return lm_metrics(nll / count, self.data.meta["bytes_per_token"])

    def sample(self, model, step: int, out_dir: Path) -> None:
        from genlab.generate.text import LanguageModel

        lm = LanguageModel(model, self.tokenizer)
        text = lm.generate("", max_tokens=self.sample_tokens, temperature=0.8, top_k=50, seed=step)
        out_dir.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_bytes(out_dir / f"step_{step:06d}.txt", text.encode())


class ChatTask(LMTask):
    """``LMTask`` with chat data: batches of packed windows, the loss on the assistant's tokens, and
    evaluation (loss, bits per byte of the assistant's text) on the held-out conversations."""

    def __init__(self, model, data: conv.ChatData, batch_size: int, eval_batches: int, sample_tokens: int = 200,
                 window: int | None = None) -> None:
        self.model, self.data = model, data
        self.batch_size, self.eval_batches, self.sample_tokens = batch_size, eval_batches, sample_tokens
        self.tokenizer = data.tokenizer()
        self.context = training_window(model, window)
        self.train_windows = Windows(data.train, self.context)
        self.val_windows = Windows(data.val, self.context)
        if not len(self.train_windows) or not len(self.val_windows):
            raise DataError("the chat data has no assistant tokens to learn from (training or validation)")

    def train_batch(self, rng: np.random.Generator):
        return self.train_windows.batch(rng.integers(0, len(self.train_windows), size=self.batch_size))

    def loss(self, model, batch):
        x, y = (t.to(self.device) for t in batch)
        logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE)
        return loss, x.numel()  # throughput counts every token read

    def evaluate(self, model) -> dict[str, float]:
        """Summed over the assistant's tokens of (up to eval_batches * batch_size evenly spaced) windows."""
        w, b = self.val_windows, self.batch_size
        picks = np.unique(np.linspace(0, len(w) - 1, num=min(len(w), self.eval_batches * b)).astype(np.int64))
        nll, count = 0.0, 0
        for i in range(0, len(picks), b):
            x, y = (t.to(self.device) for t in w.batch(picks[i : i + b]))
            logits = model(x)
            nll += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                   ignore_index=IGNORE, reduction="sum").item()
            count += int((y != IGNORE).sum())
        return lm_metrics(nll / count, self.data.meta["bytes_per_token"])

    def sample(self, model, step: int, out_dir: Path) -> None:
        """The model's reply to the first held-out conversation's opening."""
        from genlab.generate.text import LanguageModel

        lm = LanguageModel(model, self.tokenizer, eot=self.data.eot)
        reply = lm.generate(self.data.prompt, max_tokens=self.sample_tokens, temperature=0.8, top_k=50, seed=step)
        out_dir.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_bytes(out_dir / f"step_{step:06d}.txt", (self.data.prompt + reply).encode())


@dataclass
class LMTrainSpec:
    """Everything `genlab train lm` needs; the CLI only fills it in."""

    run: Path
    data: DataConfig = field(default_factory=DataConfig)
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    train: TrainConfig | None = None
    resume: bool = False
    init_from: Path | None = None
    overwrite: bool = False
    quiet: bool = False


def build_model(cfg: LMConfig, seed: int) -> Transformer:
    seed_everything(seed)
    return Transformer(cfg)


def train_lm(spec: LMTrainSpec) -> TrainResult:
    run = Path(spec.run)
    tcfg = spec.train
    dist, log = begin(tcfg, spec.quiet)

    if spec.resume:
        saved = runs.read_config(run, family="lm")
        model_cfg = LMConfig.from_dict(saved["model"])
        data_cfg = DataConfig(**saved["data"]["config"])
        tok = tokmod.load(run / runs.TOKENIZER)
        tcfg = resumed_train_config(saved, tcfg)
    else:
        runs.require_new(run, spec.overwrite)
        data_cfg = spec.data
        tok = None
        if conv.is_chat(data_cfg.corpus) and spec.init_from is None:
            raise ConfigError("chat JSONL data fine-tunes a run with a chat template: "
                              "genlab finetune BASE --data FILE.jsonl --method full --out RUN")
        if spec.init_from is None:
            lm_config(spec.preset, **spec.model_overrides)  # bad settings fail before any data work
        base_cfg: LMConfig | None = None
        if spec.init_from is not None:
            parent = runs.read_config(spec.init_from, family="lm")
            tok = tokmod.load(Path(spec.init_from) / runs.TOKENIZER)
            base_cfg = LMConfig.from_dict(parent["model"])
            if spec.model_overrides:
                changed = {k for k, v in spec.model_overrides.items()
                           if v is not None and k not in ("dropout", "context") and getattr(base_cfg, k) != v}
                if changed:
                    raise ConfigError(f"--init-from keeps the parent's architecture; cannot change "
                                      f"{', '.join(sorted(changed))}")

    chat = conv.is_chat(data_cfg.corpus)  # conversations: the loss on the assistant's tokens (train/chat.py)
    if chat:  # rendered with the parent's chat template (a resumed run carries it), not cached
        data = conv.prepare_chat(data_cfg, run if spec.resume else Path(spec.init_from), log=log,
                                 expect=saved["data"]["fingerprint"] if spec.resume else None)
    else:  # Rank 0 prepares (or finds cached) data; the other ranks then read the cache it wrote.
        data = dist.main_first(lambda: prep.prepare(data_cfg, tok=tok, log=log))

    if not spec.resume:
        vocab = data.meta["vocab_size"]
        if spec.init_from is not None:
            model_cfg = LMConfig.from_dict(base_cfg.to_dict())  # type: ignore[union-attr]
            for k in ("dropout", "context"):
                if spec.model_overrides.get(k) is not None:
                    setattr(model_cfg, k, spec.model_overrides[k])
        else:
            overrides = dict(spec.model_overrides)
            overrides["vocab_size"] = vocab
            model_cfg = lm_config(spec.preset, **overrides)
        if model_cfg.vocab_size != vocab:
            raise ConfigError(f"model vocabulary {model_cfg.vocab_size} != tokenizer vocabulary {vocab}")
        create_run(run, {
            "family": "lm",
            "preset": spec.preset,
            "model": model_cfg.to_dict(),
            "train": tcfg.to_dict(),
            "data": {"config": data_cfg.to_dict(), "fingerprint": data.fingerprint,
                     "train_tokens": data.meta["train_tokens"], "val_tokens": data.meta["val_tokens"],
                     "tokenizer": data.meta["tokenizer"], "bytes_per_token": data.meta["bytes_per_token"]},
            "init_from": str(spec.init_from) if spec.init_from else None,
            **({k: parent[k] for k in ("eos_token", "chat_template") if parent.get(k)} if chat else {}),
        }, dist, spec.overwrite)
        if dist.is_main:
            shutil.copyfile(data.tokenizer_path, run / runs.TOKENIZER)
        dist.barrier()

    model = build_model(model_cfg, tcfg.seed)
    if spec.init_from is not None and not spec.resume:
        runs.load_weights(spec.init_from, model)
        log(f"initialised from {spec.init_from}")
    if chat:
        task = ChatTask(model, data, tcfg.batch_size, tcfg.eval_batches, window=tcfg.window)
    else:
        task = LMTask(model, data, tcfg.batch_size, tcfg.eval_batches, window=tcfg.window)
    return train(task, tcfg, run, resume=spec.resume, quiet=spec.quiet, dist=dist)

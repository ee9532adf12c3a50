"""Text generation with a KV cache: temperature, top-k, top-p, repetition penalty, stop strings,
seeds and streaming.

Context rule: a prompt longer than the model's context keeps its last ``context - 1`` tokens (the
left is cut, and ``info.truncated`` says how many tokens went). When prompt plus new tokens fill the
context, the window shifts: the newest half is kept and re-read, then generation goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from genlab import runs
from genlab.data import tokenizer as tokmod
from genlab.device import pick_device
from genlab.errors import ConfigError, RunError
from genlab.models.transformer import LMConfig, Transformer


@dataclass
class GenerationInfo:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0  # prompt tokens cut from the left to fit the context
    finish_reason: str = "length"  # "length" | "stop"
    completion_ids: list[int] = field(default_factory=list)  # the sampled token ids


@dataclass
class SamplingOptions:
    max_tokens: int = 100
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eot: bool = False  # keep going past <|endoftext|> (benchmarks, fixed-length output)

    def validate(self) -> None:
        if self.max_tokens < 0:
            raise ConfigError(f"--max-tokens must not be negative (got {self.max_tokens})")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must not be negative (got {self.temperature})")
        if self.top_k is not None and self.top_k <= 0:
            raise ConfigError(f"--top-k must be positive (got {self.top_k})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"--repetition-penalty must be positive (got {self.repetition_penalty})")


def next_token(logits: torch.Tensor, opts: SamplingOptions, history: torch.Tensor | None,
               gen: torch.Generator) -> int:
    """Pick one token id from a (vocab,) logits vector."""
    logits = logits.float().clone()
    if opts.repetition_penalty != 1.0 and history is not None and history.numel():
        # CTRL-style: make every token already in the context less likely.
        seen = torch.unique(history)
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / opts.repetition_penalty, vals * opts.repetition_penalty)
    if opts.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / opts.temperature
    if opts.top_k is not None and opts.top_k < logits.numel():
        kth = torch.topk(logits, opts.top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if opts.top_p is not None and opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
        drop = probs.cumsum(-1) - probs >= opts.top_p
        logits[order[drop]] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might still grow into a stop string (or are a partial UTF-8
    character), and so must not be streamed yet."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, 1)
    return hold


class LanguageModel:
    """A loaded LM and its tokenizer: ``generate`` returns text, ``stream`` yields pieces of it."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, run: Path | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.run = run
        self.eot = tokenizer.token_to_id(tokmod.EOT)
        self.info = GenerationInfo()

    @property
    def config(self) -> LMConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        # Not the embedding: a quantized one has no float matrix to ask, and an ONNX-backed model
        # (genlab.export.onnx) reports its own device.
        return getattr(self.model, "device", None) or self.model.norm.weight.device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompt: str = "", **kwargs) -> str:
        return "".join(self.stream(prompt, **kwargs))

    @torch.no_grad()
    def stream(self, prompt: str = "", *, use_cache: bool = True, **kwargs) -> Iterator[str]:
        opts = SamplingOptions(**{k: v for k, v in kwargs.items() if v is not None})
        opts.stop = tuple(opts.stop or ())
        opts.validate()
        ctx = self.config.context
        ids = self.encode(prompt)
        if not ids:
            ids = [self.eot] if self.eot is not None else [0]
        info = GenerationInfo(prompt_tokens=len(ids))
        if len(ids) > ctx - 1:
            info.truncated = len(ids) - (ctx - 1)
            ids = ids[-(ctx - 1):]
        self.info = info
        gen = torch.Generator(device="cpu")
        if opts.seed is not None:
            gen.manual_seed(opts.seed)
        else:
            gen.seed()

        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        cache = self.model.new_cache(1) if use_cache else None
        logits = self.model(tokens, cache, 0)[0, -1] if use_cache else self.model(tokens)[0, -1]
        out: list[int] = []
        emitted = 0
        for _ in range(opts.max_tokens):
            history = tokens[0, -ctx:] if opts.repetition_penalty != 1.0 else None
            tok = next_token(logits.cpu(), opts, history.cpu() if history is not None else None, gen)
            if tok == self.eot and not opts.ignore_eot:
                info.finish_reason = "stop"
                break
            out.append(tok)
            info.completion_tokens = len(out)
            info.completion_ids = out
            text = self.decode(out)
            hit = min((i for i in (text.find(s) for s in opts.stop) if i >= 0), default=-1)
            if hit >= 0:
                info.finish_reason = "stop"
                if hit > emitted:
                    yield text[emitted:hit]
                return
            safe = len(text) - _held_back(text, opts.stop)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            step = torch.tensor([[tok]], dtype=torch.long, device=self.device)
            tokens = torch.cat([tokens, step], dim=1)
            if tokens.shape[1] > ctx:
                # Context full: keep the newest half and re-read it (into a fresh cache). Both paths shift
                # the same way, so cached and recomputed generation see the same tokens.
                tokens = tokens[:, -(ctx // 2):]
                cache = self.model.new_cache(1) if use_cache else None
                logits = self.model(tokens, cache, 0)[0, -1] if use_cache else self.model(tokens)[0, -1]
            elif use_cache:
                logits = self.model(step, cache, tokens.shape[1] - 1)[0, -1]
            else:
                logits = self.model(tokens)[0, -1]
        text = self.decode(out)
        if len(text) > emitted:
            yield text[emitted:]


def _is_hf_folder(path: Path) -> bool:
    """A transformers checkpoint: its config.json has a model_type and no genlab family."""
    import json

    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and "family" not in cfg


def load_lm(run: str | Path, device: str = "auto") -> LanguageModel:
    run = Path(run)
    if run.suffix == ".onnx":  # an exported model, run by onnxruntime
        from genlab.export.onnx import load_onnx_lm

        return load_onnx_lm(run)
    if (run / "genlab-export.json").is_file():  # an ExecuTorch / LiteRT export folder
        from genlab.export.common import load_bundle_lm

        return load_bundle_lm(run)
    if run.suffix == ".gguf":
        raise RunError(f"'{run}' is a GGUF file: run it with llama.cpp (e.g. llama-cli -m {run}); genlab generates "
                       f"from runs, .onnx files and executorch/tflite export folders")
    if _is_hf_folder(run):
        raise RunError(f"'{run}' is a Hugging Face model folder: bring it in with `genlab import hf {run} --out RUN`")
    cfg = runs.read_config(run, family="lm")
    model = Transformer(LMConfig.from_dict(cfg["model"]))
    quant = cfg.get("quantization")
    if quant:  # integer weights + scales (genlab quantize): give the model their shapes first
        from genlab.optimize.quantize import finish_load, prepare_for_load

        prepare_for_load(model, quant)
    runs.load_weights(run, model)
    if quant and quant.get("method") == "dynamic-int8" and device == "auto":
        device = "cpu"  # PyTorch's dynamic int8 kernels are CPU kernels
    model = model.to(pick_device(device))
    if quant:
        finish_load(model, quant)
    tok = tokmod.load(run / runs.TOKENIZER)
    lm = LanguageModel(model, tok, run)
    if cfg.get("eos_token"):  # imported checkpoints may end documents with another token
        lm.eot = tok.token_to_id(cfg["eos_token"])
    return lm

"""Text generation with a KV cache: temperature, top-k, top-p, repetition, presence and frequency
penalties, logit bias, stop strings, seeds, logprobs, JSON-schema constrained decoding and streaming.

Context rule: a prompt longer than the model's context keeps its last ``context - 1`` tokens (the
left is cut, and ``info.truncated`` says how many tokens went). When prompt plus new tokens fill the
context, the window shifts: the newest half is kept and re-read, then generation goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from genlab.data import tokenizer as tokmod
from genlab.errors import ConfigError
from genlab.generate.constrained import Grammar, GrammarError, Vocabulary
from genlab.models.transformer import LMConfig
from genlab.runtimes.base import Opened, Runner, TextTokenizer, last_logits
from genlab.runtimes.registry import open_lm

MAX_LOGPROBS = 20  # alternatives per token (OpenAI's top_logprobs limit)


@dataclass
class TokenLogprob:
    """One generated token's log-probability and the most likely tokens at its position."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token, logprob), most likely first


@dataclass
class GenerationInfo:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0  # prompt tokens cut from the left to fit the context
    finish_reason: str = "length"  # "length" | "stop"
    completion_ids: list[int] = field(default_factory=list)  # the sampled token ids
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per completion token, when asked for


class LogitsWatermark(Protocol):
    """A keyed watermark in the sampler (genlab.safety.watermark_text): it changes the logits as a
    function of the last ``context_width`` tokens (prompt included) before the token is picked."""

    context_width: int

    def apply(self, logits: torch.Tensor, context: Sequence[int]) -> torch.Tensor: ...

    def describe(self) -> dict: ...


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
    # OpenAI's penalties on tokens already generated: presence once per token, frequency per occurrence.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (-100..100)
    logprobs: int | None = None  # None: none; k: each token's logprob and the k most likely tokens
    grammar: Grammar | None = None  # constrained decoding (LanguageModel.grammar); each sequence its own state
    watermark: LogitsWatermark | None = None  # e.g. genlab.safety.watermark_text.TextWatermark(key)

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
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ConfigError(f"{name} must be in [-2, 2] (got {getattr(self, name)})")
        if any(not -100 <= b <= 100 for b in (self.logit_bias or {}).values()):
            raise ConfigError("logit_bias values must be in [-100, 100]")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ConfigError(f"logprobs must be in [0, {MAX_LOGPROBS}] (got {self.logprobs})")
        if self.grammar is not None and self.ignore_eot:
            raise ConfigError("a grammar ends with end-of-text, so it cannot be combined with ignoring it")


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


class Piece(str):
    """Streamed text that also carries the logprobs of the tokens it completes (a plain ``str``
    to every consumer that does not look)."""

    logprobs: tuple[TokenLogprob, ...] = ()


class TokenSampler:
    """One sequence's way from logits to a token, the same in ``LanguageModel.stream`` and the
    batching scheduler: (a) logit bias and penalties, the watermark (which reads the last tokens of
    ``context``, the prompt, and then of the output), then the grammar's mask; (b) ``next_token``
    picks; (c) the logprobs asked for; (d) the grammar moves on by the chosen token.

    ``keep()`` says the last token is part of the completion (end-of-text is not, as in OpenAI's
    API); ``piece(text)`` attaches the kept tokens' logprobs not yet sent to a piece of text."""

    def __init__(self, opts: SamplingOptions, gen: torch.Generator, vocab_size: int,
                 context: Sequence[int] = ()) -> None:
        self.opts, self.gen = opts, gen
        self.recent: list[int] = []  # the watermark's context: the last tokens seen
        if opts.watermark is not None and opts.watermark.context_width:
            self.recent = list(context)[-opts.watermark.context_width:]
        self.constraint = None
        if opts.grammar is not None:
            if opts.grammar.vocab.vocab_size != vocab_size:
                raise ConfigError("the grammar was compiled for another model's vocabulary")
            self.constraint = opts.grammar.constraint()
        self.bias: torch.Tensor | None = None
        if opts.logit_bias:
            outside = [t for t in opts.logit_bias if not 0 <= t < vocab_size]
            if outside:
                raise ConfigError(f"logit_bias names token {outside[0]}, outside the vocabulary (0..{vocab_size - 1})")
            self.bias = torch.zeros(vocab_size)
            self.bias[list(opts.logit_bias)] = torch.tensor(list(opts.logit_bias.values()), dtype=torch.float)
        penalties = opts.presence_penalty != 0 or opts.frequency_penalty != 0
        self.counts = torch.zeros(vocab_size) if penalties else None  # completion tokens seen, per id
        self.last: TokenLogprob | None = None
        self.kept: list[TokenLogprob] = []
        self._sent = 0

    def sample(self, logits: torch.Tensor, history: torch.Tensor | None) -> int:
        raw = logits.float()
        x = raw
        if self.bias is not None:
            x = x + self.bias
        if self.counts is not None:
            x = x - self.counts * self.opts.frequency_penalty - (self.counts > 0).float() * self.opts.presence_penalty
        wm = self.opts.watermark
        if wm is not None:
            x = wm.apply(x, self.recent)
        if self.constraint is not None:
            allowed = self.constraint.allowed()
            if not bool(allowed.any()):
                raise GrammarError("constrained decoding failed: the grammar allows no token here")
            x = x.masked_fill(~allowed, float("-inf"))
        tok = next_token(x, self.opts, history, self.gen)
        if self.opts.logprobs is not None:
            # The model's own distribution (log-softmax of the raw logits), before temperature,
            # penalties, bias and grammar: what vLLM reports by default, and comparable across requests.
            lp = torch.log_softmax(raw, dim=-1)
            top = torch.topk(lp, self.opts.logprobs) if self.opts.logprobs else None
            pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
            self.last = TokenLogprob(tok, float(lp[tok]), pairs)
        if self.counts is not None:
            self.counts[tok] += 1
        if wm is not None and wm.context_width:
            self.recent = [*self.recent, tok][-wm.context_width:]
        if self.constraint is not None:
            self.constraint.advance(tok)
        return tok

    def keep(self) -> None:
        if self.last is not None:
            self.kept.append(self.last)
            self.last = None

    def piece(self, text: str) -> str:
        if not text or self.opts.logprobs is None:
            return text
        p = Piece(text)
        p.logprobs, self._sent = tuple(self.kept[self._sent:]), len(self.kept)
        return p


def clean_text(text: str) -> str:
    """Text any tokenizer accepts. A shell can pass bytes that are not UTF-8 (Python keeps them as
    lone surrogates, which tokenizers refuse); they become U+FFFD, the replacement character."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:  # bytes from argv: back to the original bytes, then one U+FFFD per invalid byte
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # other lone surrogates (e.g. from JSON escapes)
            return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class Detokenizer:
    """Sampled token ids -> text pieces that are safe to stream, for every text path (the CLI, the
    batched server, the studio): a piece is sent only once it can no longer turn into a stop string
    or complete a partial UTF-8 character; text from the first stop string on is never sent.

    ``add(token)`` returns the new safe text ("" if none) and sets ``stopped`` when a stop string
    appeared; ``finish()`` returns what was held back when generation ends for another reason."""

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...] = ()) -> None:
        self.decode = decode
        self.stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already returned
        self.stopped = False

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        hit = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            self.stopped = True
            return self._upto(text, hit)
        return self._upto(text, len(text) - self._held_back(text))

    def finish(self) -> str:
        return "" if self.stopped else self._upto(self.decode(self.ids), None)

    def _upto(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent:end], end
        return piece

    def _held_back(self, text: str) -> int:
        """Trailing characters that might still grow into a stop string, or a partial UTF-8 character."""
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        if text.endswith("\ufffd"):
            hold = max(hold, 1)
        return hold


def start_generation(ids: list[int], context: int, eot: int | None, opts: SamplingOptions
                     ) -> tuple[list[int], GenerationInfo, torch.Generator]:
    """The prompt as the model will see it (never empty; its last ``context - 1`` tokens), the
    request's info and its seeded generator: the same for one stream and for a batched server."""
    ids = ids or [eot if eot is not None else 0]
    info = GenerationInfo(prompt_tokens=len(ids))
    if len(ids) > context - 1:
        info.truncated = len(ids) - (context - 1)
        ids = ids[-(context - 1):]
    gen = torch.Generator(device="cpu")
    if opts.seed is not None:
        gen.manual_seed(opts.seed)
    else:
        gen.seed()
    return ids, info, gen


class LanguageModel:
    """A runner (any runtime, see genlab.runtimes) and its tokenizer: ``generate`` returns text,
    ``stream`` yields pieces of it, sampled by genlab's own code whatever runs the model."""

    def __init__(self, model: Runner, tokenizer: TextTokenizer, run: Path | None = None, eot: int | None = None,
                 runtime: str = "pytorch", precision: str = "fp32", meta: dict | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.run = run
        self.eot = tokenizer.token_to_id(tokmod.EOT) if eot is None else eot
        self.runtime, self.precision, self.meta = runtime, precision, meta or {}
        self.info = GenerationInfo()
        self._vocab: Vocabulary | None = None

    @classmethod
    def from_opened(cls, opened: Opened) -> LanguageModel:
        return cls(opened.runner, opened.tokenizer, opened.path, opened.eot, opened.runtime, opened.precision,
                   opened.meta)

    @property
    def config(self) -> LMConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return self.model.device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(clean_text(text)).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompt: str = "", **kwargs) -> str:
        return "".join(self.stream(prompt, **kwargs))

    def vocabulary(self) -> Vocabulary:
        """The tokenizer as the grammar library sees it (built once)."""
        if self._vocab is None:
            self._vocab = Vocabulary(self.tokenizer, self.config.vocab_size, self.eot)
        return self._vocab

    def grammar(self, json_schema: dict | bool) -> Grammar:
        """A grammar for output valid against ``json_schema`` ({"type": "object"}: any JSON object),
        to pass as ``grammar=`` (or pass ``json_schema=`` to ``generate``/``stream``)."""
        return Grammar.json_schema(self.vocabulary(), json_schema)

    def token_bytes(self, token: int) -> bytes:
        """One token's exact bytes (its decoded text where the grammar library cannot read the tokenizer)."""
        try:
            return self.vocabulary().token_bytes(token)
        except GrammarError:
            return self.tokenizer.decode([token], skip_special_tokens=False).encode("utf-8")

    @property
    def chat_template(self) -> str | None:
        return self.meta.get("chat_template")

    def chat_prompt(self, messages: list[dict]) -> tuple[str, tuple[str, ...]]:
        """The prompt for ``messages`` and the stop strings that end the reply (genlab.generate.chat)."""
        from genlab.generate.chat import chat_prompt

        return chat_prompt(self.chat_template, messages)

    def stream_chat(self, messages: list[dict], **kwargs) -> Iterator[str]:
        """The assistant's reply to ``messages`` ([{"role": "system"|"user"|"assistant", "content": ...}]),
        in pieces: through the model's chat template, ending at its end-of-turn token."""
        prompt, stops = self.chat_prompt(messages)
        kwargs["stop"] = tuple(kwargs.get("stop") or ()) + stops
        return self.stream(prompt, **kwargs)

    def chat(self, messages: list[dict], **kwargs) -> str:
        return "".join(self.stream_chat(messages, **kwargs))

    @torch.no_grad()
    def stream(self, prompt: str = "", *, use_cache: bool = True, json_schema: dict | bool | None = None,
               **kwargs) -> Iterator[str]:
        if json_schema is not None:
            kwargs["grammar"] = self.grammar(json_schema)
        opts = SamplingOptions(**{k: v for k, v in kwargs.items() if v is not None})
        opts.stop = tuple(opts.stop or ())
        opts.validate()
        ctx = self.config.context
        ids, info, gen = start_generation(self.encode(prompt), ctx, self.eot, opts)
        self.info = info
        detok = Detokenizer(self.decode, opts.stop)
        sampler = TokenSampler(opts, gen, self.config.vocab_size, context=ids)
        info.completion_ids, info.logprobs = detok.ids, sampler.kept

        def forward(tokens: torch.Tensor, cache, start: int) -> torch.Tensor:
            return (last_logits(self.model, tokens, cache, start) if use_cache else last_logits(self.model, tokens))[0]

        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        cache = self.model.new_cache(1) if use_cache else None
        logits = forward(tokens, cache, 0)
        for n in range(1, opts.max_tokens + 1):
            history = tokens[0, -ctx:].cpu() if opts.repetition_penalty != 1.0 else None
            tok = sampler.sample(logits.cpu(), history)
            if tok == self.eot and not opts.ignore_eot:
                info.finish_reason = "stop"
                break
            sampler.keep()
            piece = sampler.piece(detok.add(tok))
            info.completion_tokens = len(detok.ids)
            if piece:
                yield piece
            if detok.stopped:
                info.finish_reason = "stop"
                return
            if n == opts.max_tokens:  # the last token: no forward pass for one that is never sampled
                break
            step = torch.tensor([[tok]], dtype=torch.long, device=self.device)
            tokens = torch.cat([tokens, step], dim=1)
            if tokens.shape[1] > ctx:
                # Context full: keep the newest half and re-read it (into a fresh cache). Both paths shift
                # the same way, so cached and recomputed generation see the same tokens.
                tokens = tokens[:, -(ctx // 2):]
                cache = self.model.new_cache(1) if use_cache else None
                logits = forward(tokens, cache, 0)
            else:
                logits = forward(step if use_cache else tokens, cache, tokens.shape[1] - 1)
        piece = sampler.piece(detok.finish())
        if piece:
            yield piece


def load_lm(path: str | Path, device: str = "auto", fast: bool = True) -> LanguageModel:
    """Any language-model artifact genlab reads (run, quantized run, .onnx, export folder, GGUF,
    Hugging Face folder), opened by its runtime (genlab.runtimes.registry). ``fast=False``: a
    PyTorch run's reference path instead of its fused, kernel-backed inference path."""
    return LanguageModel.from_opened(open_lm(path, device, fast=fast))

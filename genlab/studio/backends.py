"""Text back ends for the studio, one interface for three sources:

- a genlab LM run (the default), directly or through a server's batching scheduler;
- a local Hugging Face model folder, loaded with transformers;
- any OpenAI-compatible server (llama.cpp's server, Ollama, vLLM, genlab's own) through the
  official ``openai`` client.

``chat`` says whether the back end follows instructions (chat models) or continues text (base
models); the pipeline words its request accordingly. ``describe()`` is what a manifest records.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from genlab import runs
from genlab.errors import ConfigError, GenlabError, RunError
from genlab.generate.speech import file_sha256
from genlab.generate.text import LanguageModel, SamplingOptions, _held_back, next_token


class BackendError(GenlabError):
    """A text, image or speech back end that cannot be reached or used."""


class TextBackend(Protocol):
    chat: bool

    def stream(self, prompt: str, opts: SamplingOptions, system: str | None = None) -> Iterator[str]: ...

    def describe(self) -> dict: ...


def config_fingerprint(path: Path) -> str:
    """sha256 of a JSON config in canonical form (key order and whitespace do not matter)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from None
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_record(run: Path, role: str) -> dict:
    """What a manifest says about a genlab run: enough to know exactly which model made an asset."""
    run = Path(run)
    cfg = runs.read_config(run)
    return {"role": role, "kind": "genlab-run", "run": run.name, "path": str(run.resolve()),
            "family": cfg["family"], "config_sha256": config_fingerprint(run / runs.CONFIG),
            "weights_sha256": file_sha256(run / runs.WEIGHTS)}


class GenlabTextBackend:
    chat = False  # base models continue text

    def __init__(self, lm: LanguageModel, scheduler=None) -> None:
        self.lm = lm
        self.scheduler = scheduler  # a BatchScheduler: share forward passes with the API's requests

    def stream(self, prompt: str, opts: SamplingOptions, system: str | None = None) -> Iterator[str]:
        if self.scheduler is not None:
            return self.scheduler.stream(prompt, opts)
        return self.lm.stream(prompt, **vars(opts))

    def describe(self) -> dict:
        if self.lm.run is None:
            return {"role": "text", "kind": "genlab-model"}
        return run_record(self.lm.run, "text")


def _ids(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


class HFTextBackend:
    """A causal LM folder saved by transformers (config.json with a model_type, weights, tokenizer)."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise BackendError("a Hugging Face model folder needs transformers (pip install transformers)") from None
        self.folder = Path(folder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(self.folder, local_files_only=True).to(device).eval()
        except (OSError, ValueError) as e:
            raise BackendError(f"cannot load the Hugging Face model in '{self.folder}': {e}") from None
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        # The key/value cache argument: `cache` in transformers 5, `past_key_values` before.
        self._cache = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def stream(self, prompt: str, opts: SamplingOptions, system: str | None = None) -> Iterator[str]:
        if self.chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        yield from self._decode(self.tokenizer(prompt).input_ids, opts)

    def _decode(self, prompt_ids: list[int], opts: SamplingOptions) -> Iterator[str]:
        """Token by token with the model's key/value cache, sampled as genlab's own LMs are
        (``next_token``, a seeded generator of its own); each new piece of text is yielded as soon
        as it cannot turn into a stop string or a partial UTF-8 character."""
        import torch

        eos = {self.tokenizer.eos_token_id, *_ids(self.model.generation_config.eos_token_id)} - {None}
        gen = torch.Generator(device="cpu")
        if opts.seed is not None:
            gen.manual_seed(opts.seed)
        else:
            gen.seed()
        ids, new = list(prompt_ids) or [next(iter(eos), 0)], []
        inputs, past, sent = torch.tensor([ids], device=self.model.device), None, ""
        for _ in range(opts.max_tokens):
            with torch.no_grad():
                out = self.model(input_ids=inputs, use_cache=True, **{self._cache: past})
            past = getattr(out, self._cache)
            history = torch.tensor(ids + new) if opts.repetition_penalty != 1.0 else None
            tok = next_token(out.logits[0, -1].cpu(), opts, history, gen)
            if tok in eos and not opts.ignore_eot:
                break
            new.append(tok)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in opts.stop) if i >= 0), default=-1)
            if cut >= 0:
                if cut > len(sent):
                    yield text[len(sent):cut]
                return
            end = len(text) - _held_back(text, opts.stop)
            if end > len(sent) and text.startswith(sent):
                yield text[len(sent):end]
                sent = text[:end]
            inputs = torch.tensor([[tok]], device=self.model.device)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if len(text) > len(sent) and text.startswith(sent):
            yield text[len(sent):]

    def describe(self) -> dict:
        weights = sorted(self.folder.glob("*.safetensors"))
        return {"role": "text", "kind": "huggingface", "run": self.folder.name, "path": str(self.folder.resolve()),
                "config_sha256": config_fingerprint(self.folder / "config.json"),
                "weights_sha256": {w.name: file_sha256(w) for w in weights}}


class OpenAITextBackend:
    """Any OpenAI-compatible server, through its chat endpoint (what every such server offers)."""

    chat = True

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None) -> None:
        try:
            import openai
        except ImportError:
            raise BackendError("an OpenAI-compatible server needs the openai package (pip install openai)") from None
        self.base_url = base_url.rstrip("/")
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=0, timeout=600)
        self.model = model
        self._openai = openai

    def _model(self) -> str:
        if self.model is None:
            try:
                models = [m.id for m in self.client.models.list()]
            except self._openai.OpenAIError as e:
                raise BackendError(f"cannot reach the text server at {self.base_url}: {e}") from None
            if not models:
                raise BackendError(f"the server at {self.base_url} lists no models; name one with --text-model")
            self.model = models[0]
        return self.model

    def stream(self, prompt: str, opts: SamplingOptions, system: str | None = None) -> Iterator[str]:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        try:
            chunks = self.client.chat.completions.create(
                model=self._model(), messages=messages, max_tokens=opts.max_tokens, temperature=opts.temperature,
                top_p=opts.top_p if opts.top_p is not None else 1.0, seed=opts.seed,
                stop=list(opts.stop) or None, stream=True)
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except self._openai.OpenAIError as e:
            raise BackendError(f"the text server at {self.base_url} failed: {e}") from None

    def describe(self) -> dict:
        return {"role": "text", "kind": "openai-compatible", "url": self.base_url, "model": self._model()}


def text_backend(spec: str | Path, model: str | None = None, api_key: str | None = None,
                 device: str = "auto") -> TextBackend:
    """A back end from what the user gave: an http(s) URL, a genlab LM run or a Hugging Face folder."""
    s = str(spec)
    if s.startswith(("http://", "https://")):
        return OpenAITextBackend(s, model, api_key)
    path = Path(s)
    if not (path / "config.json").is_file():
        raise ConfigError(f"text back end '{s}' is neither an http(s) URL nor a model folder with a config.json")
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"'{path}/config.json' is not valid JSON") from None
    if isinstance(cfg, dict) and "family" in cfg:
        from genlab.generate.text import load_lm

        if cfg["family"] != "lm":
            raise RunError(f"run '{path}' holds a {cfg['family']} model, not a language model")
        return GenlabTextBackend(load_lm(path, device=device))
    if isinstance(cfg, dict) and "model_type" in cfg:
        return HFTextBackend(path, "cpu" if device == "auto" else device)
    raise ConfigError(f"'{path}/config.json' is neither a genlab run nor a Hugging Face model config")

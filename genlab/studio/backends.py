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
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from genlab import runs
from genlab.errors import ConfigError, GenlabError, RunError
from genlab.generate.speech import file_sha256
from genlab.generate.text import LanguageModel, SamplingOptions


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

    def stream(self, prompt: str, opts: SamplingOptions, system: str | None = None) -> Iterator[str]:
        import torch

        if self.chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(self.model.device)
        kwargs: dict = {"max_new_tokens": opts.max_tokens, "do_sample": opts.temperature > 0,
                        "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0}
        if opts.temperature > 0:
            kwargs.update(temperature=opts.temperature, top_p=opts.top_p or 1.0, top_k=opts.top_k or 0)
        if opts.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = opts.repetition_penalty
        if opts.seed is not None:
            torch.manual_seed(opts.seed)  # transformers samples from the global generator
        with torch.no_grad():
            out = self.model.generate(ids, **kwargs)
        text = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in opts.stop) if i >= 0), default=len(text))
        yield text[:cut]

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

"""Text back ends for the studio, one interface for two sources:

- any language model genlab opens (genlab.runtimes: a run, a quantized run, an export, a GGUF file,
  a Hugging Face folder), directly or through a server's batching scheduler;
- any OpenAI-compatible server (llama.cpp's server, Ollama, vLLM, genlab's own) through the
  official ``openai`` client.

``chat`` says whether the back end follows instructions (models with a chat template, servers) or
continues text (base models); the pipeline words its request accordingly. ``describe()`` is what a
manifest records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from genlab import runs
from genlab.errors import ConfigError, GenlabError, RunError
from genlab.generate.text import LanguageModel, SamplingOptions, load_lm


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
    from genlab.train.finetune import ADAPTER, lora_section

    run = Path(run)
    if run.is_file():  # an exported model (e.g. an upscaler's .onnx): the file is the model
        return {"role": role, "kind": "genlab-export", "file": run.name, "path": str(run.resolve()),
                "sha256": runs.file_sha256(run)}
    cfg = runs.read_config(run)
    record = {"role": role, "kind": "genlab-run", "run": run.name, "path": str(run.resolve()),
              "family": cfg["family"], "config_sha256": config_fingerprint(run / runs.CONFIG)}
    lora = lora_section(cfg)
    if lora is None:
        return {**record, "weights_sha256": runs.file_sha256(run / runs.WEIGHTS)}
    # A LoRA/QLoRA run holds only its adapters; the model is those on top of the base run it names.
    if not (run / ADAPTER).is_file():
        raise RunError(f"LoRA run '{run}' has no {ADAPTER}; it has not saved a checkpoint yet")
    return {**record, "adapter_sha256": runs.file_sha256(run / ADAPTER), "method": lora["method"],
            "base": lora["base"], "base_weights_sha256": lora.get("base_sha256")}


class GenlabTextBackend:
    """A language model genlab runs itself; instruct models get their prompt through their chat template."""

    def __init__(self, lm: LanguageModel, scheduler=None) -> None:
        self.lm = lm
        self.scheduler = scheduler  # a BatchScheduler: share forward passes with the API's requests
        self.chat = bool(lm.chat_template)

    def stream(self, prompt: str, opts: SamplingOptions, system: str | None = None) -> Iterator[str]:
        if self.chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            prompt, stops = self.lm.chat_prompt(messages)
            opts = SamplingOptions(**{**vars(opts), "stop": tuple(opts.stop or ()) + stops})
        if self.scheduler is not None:
            return self.scheduler.stream(prompt, opts)
        return self.lm.stream(prompt, **vars(opts))

    def describe(self) -> dict:
        path = self.lm.run
        if path is None:
            return {"role": "text", "kind": "genlab-model"}
        if self.lm.runtime == "pytorch":
            return run_record(path, "text")
        if self.lm.runtime == "transformers":
            weights = sorted(path.glob("*.safetensors"))
            return {"role": "text", "kind": "huggingface", "run": path.name, "path": str(path.resolve()),
                    "config_sha256": config_fingerprint(path / "config.json"),
                    "weights_sha256": {w.name: runs.file_sha256(w) for w in weights}}
        return {"role": "text", "kind": self.lm.runtime, "run": path.name, "path": str(path.resolve()),
                "precision": self.lm.precision}


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
    """A back end from what the user gave: an http(s) URL, or any model genlab opens."""
    s = str(spec)
    if s.startswith(("http://", "https://")):
        return OpenAITextBackend(s, model, api_key)
    path = Path(s)
    if not path.exists():
        raise ConfigError(f"text back end '{s}' is neither an http(s) URL nor an existing model path")
    return GenlabTextBackend(load_lm(path, device=device))

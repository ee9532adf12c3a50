"""Hugging Face model folders (config.json with a ``model_type``, weights, tokenizer.json) run by
transformers: the one place genlab drives a transformers model, for generation, evaluation, the
runtime benchmark and the studio alike. Tokenization is the folder's tokenizer.json (the tokenizers
library), so text is encoded and streamed exactly as for genlab's own runs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from genlab.device import pick_device
from genlab.errors import RunError
from genlab.models.transformer import LMConfig
from genlab.runtimes.base import Opened, read_json_config

NAME = "transformers"
ARTIFACT = "a Hugging Face model folder (config.json with a model_type)"


def detect(path: Path) -> bool:
    cfg = read_json_config(path) if path.is_dir() else None
    return cfg is not None and "model_type" in cfg and "family" not in cfg


def _ids(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def lm_config(hf) -> LMConfig:
    """The shape genlab's sampler needs (vocabulary, context), with the architecture where it maps."""
    n_head = getattr(hf, "num_attention_heads", 1)
    d_model = getattr(hf, "hidden_size", n_head)
    return LMConfig(vocab_size=hf.vocab_size, context=getattr(hf, "max_position_embeddings", 2048),
                    n_layer=getattr(hf, "num_hidden_layers", 1), n_head=n_head,
                    n_kv_head=getattr(hf, "num_key_value_heads", None) or n_head, d_model=d_model,
                    ffn_hidden=getattr(hf, "intermediate_size", None) or 4 * d_model,
                    rope_theta=float(getattr(hf, "rope_theta", None) or 10000.0),
                    tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)))


class TransformersRunner:
    """A transformers causal LM behind the ``Runner`` call, with its own key/value cache object."""

    batching = False

    def __init__(self, folder: Path, device: str = "auto", dtype: torch.dtype = torch.float32) -> None:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise RunError("a Hugging Face model folder needs transformers: pip install transformers") from None
        try:
            self.hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as e:
            raise RunError(f"cannot load the Hugging Face model in '{folder}': {str(e).splitlines()[0][:160]}") from None
        self.hf = self.hf.to(pick_device(device)).eval()
        self.cfg = lm_config(self.hf.config)
        # The key/value cache argument: `cache` in newer transformers, `past_key_values` before.
        params = inspect.signature(self.hf.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.hf.device

    def new_cache(self, batch: int = 1) -> dict:
        from transformers import DynamicCache

        return {"past": DynamicCache(), "length": 0}

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, cache: dict | None = None, start: int = 0) -> torch.Tensor:
        idx = idx.to(self.device)
        if cache is None:
            return self.hf(input_ids=idx).logits
        out = self.hf(input_ids=idx, use_cache=True, **{self._cache_arg: cache["past"]})
        cache["length"] = start + idx.shape[1]  # the DynamicCache grew in place
        return out.logits

    def eos_ids(self) -> list[int]:
        gen = getattr(self.hf, "generation_config", None)
        return [*_ids(self.hf.config.eos_token_id), *_ids(getattr(gen, "eos_token_id", None))]


def chat_template(folder: Path) -> str | None:
    """The chat template a folder ships (tokenizer_config.json, or chat_template.jinja)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    try:
        template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None


def open_artifact(path: Path, device: str = "auto") -> Opened:
    from tokenizers import Tokenizer

    if not (path / "tokenizer.json").is_file():
        raise RunError(f"'{path}' has no tokenizer.json; genlab reads Hugging Face tokenizers in that format")
    runner = TransformersRunner(path, device)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    eos = runner.eos_ids()
    return Opened(runner, tok, eos[0] if eos else None, path, NAME, "fp32",
                  {"chat_template": chat_template(path), "eos_ids": eos})

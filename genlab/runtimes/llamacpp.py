"""GGUF files through llama.cpp (llama-cpp-python), with llama.cpp's own tokenizer.

llama.cpp keeps one KV cache inside its context, so the runner's "cache" is a token count: a call at
``start == 0`` (or for a batch of several rows) resets the context first, a call at ``start > 0``
continues it."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from genlab.errors import RunError
from genlab.models.transformer import LMConfig
from genlab.runtimes.base import Opened

NAME = "llama.cpp"
ARTIFACT = "a GGUF file"


def detect(path: Path) -> bool:
    return path.suffix == ".gguf"


def _llama():
    try:
        from llama_cpp import Llama
    except ImportError:
        raise RunError("a GGUF file needs llama-cpp-python to run (`make gguf-check` installs it); or bring the "
                       "model into genlab with `genlab import`") from None
    return Llama


def config_from_metadata(meta: dict[str, str], n_vocab: int, n_ctx: int) -> LMConfig:
    """The architecture a llama-family GGUF declares (llama.cpp hands its metadata over as strings)."""
    arch = meta.get("general.architecture", "llama")

    def get(key: str, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise RunError(f"the GGUF metadata has no {arch}.{key}")
        return value

    n_head = int(get("attention.head_count"))
    return LMConfig(vocab_size=n_vocab, context=n_ctx, n_layer=int(get("block_count")), n_head=n_head,
                    n_kv_head=int(get("attention.head_count_kv", n_head)), d_model=int(get("embedding_length")),
                    ffn_hidden=int(get("feed_forward_length")), rope_theta=float(get("rope.freq_base", 10000.0)),
                    norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)))


class LlamaCppTokenizer:
    """llama.cpp's tokenizer behind the calls genlab makes of a ``tokenizers.Tokenizer``."""

    def __init__(self, llm) -> None:
        self.llm = llm

    def encode(self, text: str):
        return SimpleNamespace(ids=self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def encode_batch(self, texts: list[str]) -> list:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        # A piece that ends inside a UTF-8 character decodes to U+FFFD, which the streaming
        # detokenizer holds back until the next token completes it.
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        ids = self.llm.tokenize(token.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None


class LlamaCppRunner:
    device = torch.device("cpu")
    batching = False

    def __init__(self, path: Path, context: int | None = None) -> None:
        Llama = _llama()
        try:
            self.llm = Llama(model_path=str(path), n_ctx=context or 0, logits_all=True, verbose=False,
                             n_threads=os.cpu_count(), n_batch=512, seed=0)
        except (ValueError, RuntimeError) as e:
            raise RunError(f"llama.cpp cannot load {path} ({str(e).splitlines()[0][:120]})") from None
        self.cfg = config_from_metadata(self.llm.metadata, self.llm.n_vocab(), self.llm.n_ctx())

    def new_cache(self, batch: int = 1):
        self.llm.reset()
        return SimpleNamespace(length=0)

    def __call__(self, idx: torch.Tensor, cache=None, start: int = 0) -> torch.Tensor:
        rows = []
        for row in idx:
            if start == 0 or len(idx) > 1 or cache is None:
                self.llm.reset()
            self.llm.eval(row.tolist())
            n = self.llm.n_tokens
            rows.append(torch.from_numpy(np.array(self.llm.scores[n - len(row) : n], dtype=np.float32)))
        if cache is not None:
            cache.length = start + idx.shape[1]
        return torch.stack(rows)


def open_artifact(path: Path, device: str = "auto") -> Opened:
    if not path.is_file():
        raise RunError(f"'{path}' does not exist")
    runner = LlamaCppRunner(path)
    tok = LlamaCppTokenizer(runner.llm)
    meta = {"chat_template": runner.llm.metadata.get("tokenizer.chat_template")}
    return Opened(runner, tok, runner.llm.token_eos(), path, NAME,
                  runner.llm.metadata.get("general.file_type", "gguf"), meta)

"""One normalised description of a decoder-only Transformer, and the readers that build it: from a
genlab LM run or preset, an HF config.json, or a catalogue entry.

What the user typed is resolved in genlab.sizing.families, which also holds the GAN and VAE readers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from genlab.errors import ConfigError, GenlabError
from genlab.sizing import catalog


@dataclass(frozen=True)
class Architecture:
    """Everything the counters need; sizes are per layer unless said otherwise."""

    name: str
    family: str  # "lm" for genlab's own, else the HF model_type
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    ffn_hidden: int  # per expert in a mixture of experts
    context: int  # the longest sequence the model is built for
    gated_mlp: bool = True  # SwiGLU/GeGLU: gate, up and down matrices; else up and down only
    norm: str = "rms"  # "rms": a weight vector; "layer": weight and bias
    norms_per_layer: int = 2  # 1 where attention and MLP read the same norm (Phi's parallel block)
    qkv_bias: bool = False
    out_bias: bool = False  # attention output projection
    mlp_bias: bool = False
    lm_head_bias: bool = False
    learned_positions: bool = False  # a (context, d_model) position table, as in GPT-2
    tie_embeddings: bool = False
    qk_norm: bool = False  # norms over each head's queries and keys (Phi's qk_layernorm)
    n_expert: int = 0  # 0 = a dense MLP
    n_expert_active: int = 0  # experts each token is routed to
    sliding_window: int | None = None  # attention span of the windowed layers
    n_sliding_layers: int = 0  # how many layers use the window (the rest attend to everything)
    dropout: float = 0.0  # > 0 stores dropout masks during training
    source: str = ""  # where the description came from, for the report

    @property
    def attn_width(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_head * self.head_dim

    @property
    def moe(self) -> bool:
        return self.n_expert > 0

    def check(self) -> Architecture:
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "n_kv_head", "head_dim", "ffn_hidden", "context"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{self.name}: {name} must be a positive integer (got {getattr(self, name)!r})")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"{self.name}: {self.n_head} attention heads cannot share {self.n_kv_head} key/value heads")
        if self.moe and not 0 < self.n_expert_active <= self.n_expert:
            raise ConfigError(f"{self.name}: {self.n_expert_active} active experts of {self.n_expert}")
        return self


# ---- genlab's own models -------------------------------------------------------------------------

def from_lm_config(cfg, name: str, source: str = "") -> Architecture:
    """genlab's Llama-style Transformer (genlab.models.transformer): no biases, RMSNorm, SwiGLU."""
    return Architecture(
        name=name, family="lm", vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, head_dim=cfg.d_model // cfg.n_head,
        ffn_hidden=cfg.ffn_hidden, context=cfg.context, tie_embeddings=cfg.tie_embeddings,
        dropout=cfg.dropout, source=source,
    ).check()


def read_run(cfg: dict, name: str, source: str) -> Architecture:
    """An LM run's config.json: its ``model`` section is an LMConfig."""
    from genlab.models.transformer import LMConfig

    if not isinstance(cfg.get("model"), dict):
        raise ConfigError(f"{source}: an LM run config needs a 'model' section")
    lm = LMConfig.from_dict(cfg["model"])
    lm.validate()
    return from_lm_config(lm, name, source)


def preset_names() -> tuple[str, ...]:
    # Read when asked: genlab.config imports the model code (torch), which `import genlab.sizing` avoids.
    from genlab.config import LM_PRESETS

    return tuple(LM_PRESETS)


def from_preset(preset: str) -> Architecture:
    from genlab.config import lm_config

    return from_lm_config(lm_config(preset), preset, f"genlab preset '{preset}'")


# ---- Hugging Face config.json ----------------------------------------------------------------------

# Defaults of each transformers config class, for keys a config.json leaves out.
_HF_DEFAULTS: dict[str, dict] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, max_position_embeddings=2048, tie_word_embeddings=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    tie_word_embeddings=False, sliding_window=4096),
    "mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    tie_word_embeddings=False, num_local_experts=8, num_experts_per_tok=2),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
                  tie_word_embeddings=False, sliding_window=4096, max_window_layers=28),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, max_position_embeddings=8192,
                  tie_word_embeddings=True),
    "phi": dict(vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                num_attention_heads=32, max_position_embeddings=2048, tie_word_embeddings=False),
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, tie_word_embeddings=True),
    "gpt_neox": dict(vocab_size=50432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
                     intermediate_size=24576, max_position_embeddings=2048, tie_word_embeddings=False),
}
SUPPORTED_HF = tuple(_HF_DEFAULTS)


def _hf_common(c: dict, name: str, source: str) -> dict:
    """Fields named the same way by every family except GPT-2."""
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or c["hidden_size"] // max(heads, 1)
    return dict(name=name, family=c["model_type"], vocab_size=c["vocab_size"], d_model=c["hidden_size"],
                n_layer=c["num_hidden_layers"], n_head=heads, n_kv_head=kv, head_dim=head_dim,
                ffn_hidden=c["intermediate_size"], context=c["max_position_embeddings"],
                tie_embeddings=bool(c["tie_word_embeddings"]), source=source)


def _hf_llama_like(c: dict, name: str, source: str) -> Architecture:
    kw = _hf_common(c, name, source)
    mt = c["model_type"]
    if mt == "llama":
        kw.update(qkv_bias=bool(c.get("attention_bias")), out_bias=bool(c.get("attention_bias")),
                  mlp_bias=bool(c.get("mlp_bias")))
    elif mt == "gemma":
        kw.update(qkv_bias=bool(c.get("attention_bias")), out_bias=bool(c.get("attention_bias")))
    elif mt == "qwen2":
        kw.update(qkv_bias=True)  # Qwen2 always has q/k/v biases and none elsewhere
        if c.get("use_sliding_window") and c.get("sliding_window"):
            # transformers: layers from max_window_layers on use the window.
            kw.update(sliding_window=c["sliding_window"],
                      n_sliding_layers=max(0, kw["n_layer"] - c["max_window_layers"]))
    elif mt in ("mistral", "mixtral") and c.get("sliding_window"):
        kw.update(sliding_window=c["sliding_window"], n_sliding_layers=kw["n_layer"])
    if mt == "mixtral":
        kw.update(n_expert=c["num_local_experts"], n_expert_active=c["num_experts_per_tok"])
    return Architecture(**kw)


def _hf_phi(c: dict, name: str, source: str) -> Architecture:
    # Parallel block: attention and MLP read one LayerNorm; every linear (and the LM head) has a bias.
    return Architecture(**_hf_common(c, name, source), gated_mlp=False, norm="layer", norms_per_layer=1,
                        qkv_bias=True, out_bias=True, mlp_bias=True, lm_head_bias=True,
                        qk_norm=bool(c.get("qk_layernorm")))


def _divisible(width: int, heads: int, where: str) -> None:
    # GPT-2 and GPT-NeoX split the model width into heads, so transformers refuses any remainder.
    if heads <= 0 or width % heads:
        raise ConfigError(f"{where}: width {width} does not split into {heads} attention heads")


def _hf_gpt_neox(c: dict, name: str, source: str) -> Architecture:
    bias = bool(c.get("attention_bias", True))
    _divisible(c["hidden_size"], c["num_attention_heads"], source or name)
    kw = _hf_common(c, name, source)
    kw.update(n_kv_head=kw["n_head"], head_dim=kw["d_model"] // kw["n_head"])  # fused QKV, no GQA
    return Architecture(**kw, gated_mlp=False, norm="layer", qkv_bias=bias, out_bias=bias, mlp_bias=True)


def _hf_gpt2(c: dict, name: str, source: str) -> Architecture:
    if c.get("add_cross_attention"):
        raise GenlabError(f"{source}: GPT-2 with cross-attention is an encoder-decoder; only decoders are sized")
    d, heads = c["n_embd"], c["n_head"]
    _divisible(d, heads, source or name)
    return Architecture(
        name=name, family="gpt2", vocab_size=c["vocab_size"], d_model=d, n_layer=c["n_layer"], n_head=heads,
        n_kv_head=heads, head_dim=d // max(heads, 1), ffn_hidden=c.get("n_inner") or 4 * d,
        context=c["n_positions"], gated_mlp=False, norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True,
        learned_positions=True, tie_embeddings=bool(c["tie_word_embeddings"]), source=source,
        dropout=float(c.get("resid_pdrop", 0.1) or 0.0),
    )


_HF_READERS: dict[str, Callable[[dict, str, str], Architecture]] = {
    "llama": _hf_llama_like, "mistral": _hf_llama_like, "mixtral": _hf_llama_like, "qwen2": _hf_llama_like,
    "gemma": _hf_llama_like, "phi": _hf_phi, "gpt_neox": _hf_gpt_neox, "gpt2": _hf_gpt2,
}


def from_hf_config(cfg: dict, name: str, source: str = "") -> Architecture:
    """An HF ``config.json`` dictionary of a supported decoder family."""
    mt = cfg.get("model_type")
    if mt not in _HF_READERS:
        raise GenlabError(f"{source or name}: unsupported model_type {mt!r}; supported: {', '.join(SUPPORTED_HF)}")
    merged = {**_HF_DEFAULTS[mt], **{k: v for k, v in cfg.items() if v is not None}}
    try:
        return _HF_READERS[mt](merged, name, source).check()
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{source or name}: config.json lacks or mistypes a field the {mt} reader needs ({e})") from None


def from_catalog(entry: catalog.CatalogModel) -> Architecture:
    return from_hf_config(entry.config, entry.name, f"catalogue: {entry.source}")

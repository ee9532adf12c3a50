"""Named architectures, stored as hyper-parameters (never as parameter counts).

Each entry is the ``config.json`` a Hugging Face checkpoint of that model carries (or would carry),
so catalogue names and user-supplied config files go through the same reader and the same counter,
and the tests can build the matching ``transformers`` model from the very same dictionary.

``nominal`` is the size the authors print (the "7B" of Llama 2 7B); the report shows it beside the
computed count. Where a paper's printed hyper-parameters do not add up, ``printed`` keeps them as
printed and ``note`` says which value the config uses and why (see docs/sizing.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GPT2_PAPER = "Radford et al. 2019, Language Models are Unsupervised Multitask Learners, Table 2"
GPT3_PAPER = "Brown et al. 2020, Language Models are Few-Shot Learners, Table 2.1, https://arxiv.org/abs/2005.14165"
LLAMA2_PAPER = "Touvron et al. 2023, Llama 2, https://arxiv.org/abs/2307.09288"
LLAMA3_PAPER = "Llama Team 2024, The Llama 3 Herd of Models, Table 3, https://arxiv.org/abs/2407.21783"


@dataclass(frozen=True)
class CatalogModel:
    name: str
    config: dict  # HF config.json fields: model_type plus hyper-parameters
    nominal: float  # parameters as the authors label the model
    source: str
    note: str = ""
    printed: dict = field(default_factory=dict)  # hyper-parameters as printed, where they differ


def _gpt2(n_layer: int, n_embd: int, n_head: int, n_positions: int = 1024) -> dict:
    # GPT-2 and GPT-3 share the GPT-2 block: learned positions, pre-LayerNorm, biases everywhere,
    # a 4x MLP, tied input/output embeddings, the 50,257-token byte-level BPE.
    return dict(model_type="gpt2", vocab_size=50257, n_positions=n_positions, n_embd=n_embd,
                n_layer=n_layer, n_head=n_head)


def _llama(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, ctx: int,
           theta: float) -> dict:
    return dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                max_position_embeddings=ctx, rope_theta=theta, tie_word_embeddings=False)


def _phi(hidden: int, inter: int, layers: int, rotary: float) -> dict:
    return dict(model_type="phi", vocab_size=51200, hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=32, max_position_embeddings=2048,
                partial_rotary_factor=rotary, tie_word_embeddings=False)


def _gemma(hidden: int, inter: int, layers: int, heads: int, kv: int) -> dict:
    return dict(model_type="gemma", vocab_size=256000, hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, head_dim=256,
                max_position_embeddings=8192, tie_word_embeddings=True)


GEMMA_PAPER = "Gemma Team 2024, Gemma, Table 1, https://arxiv.org/abs/2403.08295"
_GEMMA_NOTE = ("The paper prints a 256,128-token vocabulary and 'feedforward hidden dims' {ff} (gate and up "
               "together); the released config has 256,000 tokens and half that intermediate size, used here.")
_GPT2_RENAMED = ("The GPT-2 paper printed 117M/345M/762M/1542M; OpenAI later renamed the released "
                 "checkpoints 124M/355M/774M/1558M (github.com/openai/gpt-2), which is what the hyper-parameters give.")

MODELS: list[CatalogModel] = [
    # GPT-2: hyper-parameters of the released checkpoints, https://huggingface.co/openai-community/gpt2
    # (and gpt2-medium, gpt2-large, gpt2-xl config.json).
    CatalogModel("gpt2-small", _gpt2(12, 768, 12), 117e6, GPT2_PAPER, _GPT2_RENAMED),
    CatalogModel("gpt2-medium", _gpt2(24, 1024, 16), 345e6, GPT2_PAPER, _GPT2_RENAMED),
    CatalogModel("gpt2-large", _gpt2(36, 1280, 20), 762e6, GPT2_PAPER, _GPT2_RENAMED),
    CatalogModel("gpt2-xl", _gpt2(48, 1600, 25), 1542e6, GPT2_PAPER, _GPT2_RENAMED),
    # GPT-3, Table 2.1: every model has n_ctx = 2048 and d_ff = 4 * d_model (section 2.1).
    CatalogModel("gpt3-small", _gpt2(12, 768, 12, 2048), 125e6, GPT3_PAPER),
    CatalogModel("gpt3-medium", _gpt2(24, 1024, 16, 2048), 350e6, GPT3_PAPER),
    CatalogModel("gpt3-large", _gpt2(24, 1536, 16, 2048), 760e6, GPT3_PAPER),
    CatalogModel(
        "gpt3-xl", _gpt2(24, 2048, 16, 2048), 1.3e9, GPT3_PAPER,
        "Table 2.1 prints n_heads=24 and d_head=128, but 24 x 128 = 3072 != d_model 2048. With d_model "
        "2048 the count matches the printed 1.3B (an attention width of 3072 would give ~1.5B), so the "
        "config keeps d_model 2048 and d_head 128, i.e. 16 heads.",
        printed=dict(n_layers=24, d_model=2048, n_heads=24, d_head=128)),
    CatalogModel("gpt3-2.7b", _gpt2(32, 2560, 32, 2048), 2.7e9, GPT3_PAPER),
    CatalogModel("gpt3-6.7b", _gpt2(32, 4096, 32, 2048), 6.7e9, GPT3_PAPER),
    CatalogModel(
        "gpt3-13b", _gpt2(40, 5120, 40, 2048), 13e9, GPT3_PAPER,
        "Table 2.1 prints d_model=5140 with 40 heads of 128: 5140 is not divisible by 40 and "
        "40 x 128 = 5120, so the config uses d_model 5120 (5140 would add ~0.1B; both round to 13B).",
        printed=dict(n_layers=40, d_model=5140, n_heads=40, d_head=128)),
    CatalogModel("gpt3-175b", _gpt2(96, 12288, 96, 2048), 175e9, GPT3_PAPER),
    # Llama 2: https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json (and -13b-hf, -70b-hf).
    CatalogModel("llama-2-7b", _llama(4096, 11008, 32, 32, 32, 32000, 4096, 1e4), 7e9, LLAMA2_PAPER),
    CatalogModel("llama-2-13b", _llama(5120, 13824, 40, 40, 40, 32000, 4096, 1e4), 13e9, LLAMA2_PAPER),
    CatalogModel("llama-2-70b", _llama(8192, 28672, 80, 64, 8, 32000, 4096, 1e4), 70e9, LLAMA2_PAPER),
    # Llama 3 / 3.1: https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json and the
    # paper's Table 3 (which gives the vocabulary as 128,000; the config adds 256 reserved special tokens).
    CatalogModel("llama-3-8b", _llama(4096, 14336, 32, 32, 8, 128256, 8192, 5e5), 8e9, LLAMA3_PAPER),
    CatalogModel("llama-3-70b", _llama(8192, 28672, 80, 64, 8, 128256, 8192, 5e5), 70e9, LLAMA3_PAPER),
    CatalogModel("llama-3.1-405b", _llama(16384, 53248, 126, 128, 8, 128256, 131072, 5e5), 405e9, LLAMA3_PAPER),
    # Mistral 7B v0.1: Jiang et al. 2023, Table 1, https://arxiv.org/abs/2310.06825, and
    # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json (rolling 4096-token window).
    CatalogModel(
        "mistral-7b",
        dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
             max_position_embeddings=32768, sliding_window=4096, rope_theta=1e4, tie_word_embeddings=False),
        7e9, "Jiang et al. 2023, Mistral 7B, Table 1, https://arxiv.org/abs/2310.06825"),
    # Mixtral 8x7B: Jiang et al. 2024, Table 1, https://arxiv.org/abs/2401.04088 ("47B total, 13B active").
    CatalogModel(
        "mixtral-8x7b",
        dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
             max_position_embeddings=32768, num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6,
             tie_word_embeddings=False),
        47e9, "Jiang et al. 2024, Mixtral of Experts, Table 1, https://arxiv.org/abs/2401.04088"),
    # Phi: https://huggingface.co/microsoft/phi-1_5/blob/main/config.json and .../microsoft/phi-2/.
    CatalogModel(
        "phi-1.5", _phi(2048, 8192, 24, 0.5), 1.3e9,
        "Li et al. 2023, Textbooks Are All You Need II, https://arxiv.org/abs/2309.05463",
        "Published as 1.3B; the untied embedding and LM head (with its bias) add 0.21B to the 1.21B of "
        "the blocks, 1.42B in all, which is what the released checkpoint holds."),
    CatalogModel(
        "phi-2", _phi(2560, 10240, 32, 0.4), 2.7e9, "Microsoft 2023, https://huggingface.co/microsoft/phi-2",
        "Published as 2.7B; the released checkpoint holds 2.78B (0.26B of it the untied embedding and LM head)."),
    # Gemma: Gemma Team 2024, Table 1, https://arxiv.org/abs/2403.08295, and
    # https://huggingface.co/google/gemma-2b/blob/main/config.json (and gemma-7b).
    CatalogModel("gemma-2b", _gemma(2048, 16384, 18, 8, 1), 2e9, GEMMA_PAPER, _GEMMA_NOTE.format(ff=32768)),
    CatalogModel("gemma-7b", _gemma(3072, 24576, 28, 16, 16), 7e9, GEMMA_PAPER,
                 _GEMMA_NOTE.format(ff=49152) + " The '7B' leaves out the 0.79B embedding parameters, which "
                 "the paper's Table 2 lists apart."),
]

BY_NAME: dict[str, CatalogModel] = {m.name: m for m in MODELS}


def normalise(name: str) -> str:
    """Catalogue key for a user's spelling: 'Llama-2 7B', 'llama2-7b' and 'llama_2_7b' all match."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    for a, b in (("llama2", "llama-2"), ("llama3", "llama-3"), ("gpt-2", "gpt2"), ("gpt-3", "gpt3"),
                 ("phi1.5", "phi-1.5"), ("phi-1-5", "phi-1.5"), ("phi2", "phi-2")):
        key = key.replace(a, b)
    return {"gpt2": "gpt2-small", "gpt3": "gpt3-175b", "gpt3-125m": "gpt3-small"}.get(key, key)


def lookup(name: str) -> CatalogModel | None:
    return BY_NAME.get(normalise(name))

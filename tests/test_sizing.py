"""Parameter counts: published figures, transformers models on the meta device, genlab's own modules."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genlab.errors import ConfigError, GenlabError
from genlab.models.transformer import LMConfig, Transformer
from genlab.sizing import FAMILIES, arch, catalog, count, from_hf_config, from_lm_config, resolve

transformers = pytest.importorskip("transformers")

# Published exact counts (model cards / HF checkpoints) that the catalogue must reproduce.
PUBLISHED = {
    "gpt2-small": 124_439_808,
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "phi-1.5": 1_418_270_720,
    "gemma-2b": 2_506_172_416,
}


def hf_count(config: dict) -> int:
    """Parameters of the transformers model built from ``config`` on the meta device (no memory, no download)."""
    cfg = dict(config)
    model_type = cfg.pop("model_type")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **cfg))
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_counts(name):
    assert count(resolve(name)).total == PUBLISHED[name]


@pytest.mark.parametrize("entry", catalog.MODELS, ids=lambda m: m.name)
def test_catalogue_matches_transformers(entry):
    assert count(arch.from_catalog(entry)).total == hf_count(entry.config)


def test_mixtral_active_parameters():
    pc = count(resolve("mixtral-8x7b"))
    per_expert = pc.expert_params // 8
    assert pc.active == pc.total - 6 * per_expert  # each token runs 2 of the 8 experts
    assert 12.8e9 < pc.active < 13.0e9  # "13B active" (Jiang et al. 2024)


def test_tied_head_counted_once():
    tied = count(resolve("gemma-2b"))
    assert tied.arch.tie_embeddings and not any(p.role == "head" for p in tied.parts)
    # ...but the tied table still multiplies every token as the head, so 2N's N keeps it: all but the vectors.
    vectors = sum(p.params for p in tied.parts if p.kind == "vector")
    assert tied.matmul_active == tied.total - vectors


def test_gpt3_rows_that_do_not_add_up():
    """Table 2.1 of the GPT-3 paper: XL's heads x d_head != d_model, 13B's d_model is not a multiple of
    its heads. The catalogue keeps the printed figures and resolves them so the count meets the label."""
    gpt3 = [m for m in catalog.MODELS if m.name.startswith("gpt3")]
    assert len(gpt3) == 8
    odd = {m.name for m in gpt3 if m.printed}
    assert odd == {"gpt3-xl", "gpt3-13b"}
    for m in gpt3:
        a = arch.from_catalog(m)
        assert abs(count(a).total / m.nominal - 1) < 0.025, m.name
        if m.printed:
            p = m.printed
            assert p["n_heads"] * p["d_head"] != p["d_model"] and m.note
    # Taken literally, XL's attention would be 24 x 128 = 3072 wide: ~1.52B, far from the printed 1.3B.
    xl = arch.from_catalog(catalog.BY_NAME["gpt3-xl"])
    literal = arch.Architecture(**{**xl.__dict__, "n_head": 24, "n_kv_head": 24, "head_dim": 128})
    assert count(literal).total > 1.15 * 1.3e9
    # 13B with d_model 5140 (attention 40 x 128 = 5120 wide) also rounds to 13B: the typo is harmless.
    b13 = arch.from_catalog(catalog.BY_NAME["gpt3-13b"])
    printed = arch.Architecture(**{**b13.__dict__, "d_model": 5140})
    assert round(count(printed).total / 1e9) == 13


# ---- random configurations against transformers ----------------------------------------------------

def _heads(draw, kv_default: int | None = None) -> tuple[int, int, dict]:
    kv = draw(st.sampled_from([kv_default])) if kv_default else draw(st.integers(1, 3))
    heads = kv * draw(st.integers(1, 3))
    explicit = {} if kv_default else {"num_key_value_heads": kv}
    return heads, kv, explicit


@st.composite
def hf_configs(draw, model_type: str) -> dict:
    vocab = draw(st.integers(5, 300))
    layers = draw(st.integers(1, 3))
    inter = draw(st.integers(1, 48))
    ctx = draw(st.integers(8, 128))
    head_dim = draw(st.sampled_from([4, 8, 16]))
    tie = draw(st.booleans())
    if model_type == "gpt2":
        heads = draw(st.integers(1, 4))
        c = dict(model_type="gpt2", vocab_size=vocab, n_positions=ctx, n_embd=heads * head_dim, n_layer=layers,
                 n_head=heads, tie_word_embeddings=tie)
        if draw(st.booleans()):
            c["n_inner"] = inter
        return c
    omit_kv = model_type in ("mistral", "mixtral") and draw(st.booleans())  # their default is 8 kv heads
    heads, kv, kv_field = _heads(draw, 8 if omit_kv else None)
    if model_type == "gpt_neox":
        kv_field = {}
    c = dict(model_type=model_type, vocab_size=vocab, hidden_size=heads * head_dim, intermediate_size=inter,
             num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=ctx,
             tie_word_embeddings=tie, **kv_field)
    if model_type in ("llama", "mistral", "mixtral", "qwen2", "gemma") and draw(st.booleans()):
        c["head_dim"] = draw(st.sampled_from([4, 8, 12]))  # attention width != hidden size
    if model_type in ("llama", "gemma", "gpt_neox"):
        c["attention_bias"] = draw(st.booleans())
    if model_type == "llama":
        c["mlp_bias"] = draw(st.booleans())
    if model_type == "mixtral":
        c["num_local_experts"] = e = draw(st.integers(1, 4))
        c["num_experts_per_tok"] = draw(st.integers(1, e))
    if model_type == "phi":
        c["qk_layernorm"] = draw(st.booleans())
    if model_type == "qwen2":
        c.update(use_sliding_window=draw(st.booleans()), sliding_window=16, max_window_layers=1)
    return c


@pytest.mark.parametrize("model_type", arch.SUPPORTED_HF)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_hf_configs_match_transformers(model_type, data):
    cfg = data.draw(hf_configs(model_type))
    assert count(from_hf_config(cfg, "random")).total == hf_count(cfg), cfg


@settings(max_examples=25, deadline=None)
@given(kv=st.integers(1, 3), groups=st.integers(1, 3), half_head=st.integers(1, 8), layers=st.integers(1, 4),
       vocab=st.integers(2, 400), ffn=st.integers(0, 80), tie=st.booleans())
def test_genlab_lm_count_equals_module(kv, groups, half_head, layers, vocab, ffn, tie):
    heads = kv * groups
    cfg = LMConfig(vocab_size=vocab, context=16, n_layer=layers, n_head=heads, n_kv_head=kv,
                   d_model=heads * 2 * half_head, ffn_hidden=ffn, tie_embeddings=tie)
    with torch.device("meta"):
        model = Transformer(cfg)
    pc = count(from_lm_config(cfg, "random"))
    assert pc.total == sum(p.numel() for p in model.parameters()) == model.num_params()
    assert pc.non_embedding == model.num_params(exclude_embeddings=True)


# ---- reading inputs ---------------------------------------------------------------------------------

def test_reads_hf_folder_and_file(tmp_path):
    entry = catalog.BY_NAME["mistral-7b"]
    folder = tmp_path / "Mistral-7B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**entry.config, "architectures": ["MistralForCausalLM"]}))
    a = resolve(str(folder))
    assert a.name == "Mistral-7B" and a.sliding_window == 4096
    assert count(resolve(str(folder / "config.json"))).total == PUBLISHED["mistral-7b"]


def test_reads_genlab_run_config(tmp_path):
    cfg = LMConfig(vocab_size=300, context=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32)
    (tmp_path / "config.json").write_text(json.dumps({"family": "lm", "model": cfg.to_dict()}))
    assert count(resolve(str(tmp_path))).total == Transformer(cfg).num_params()


def test_presets_and_aliases():
    assert resolve("small").family == "lm"
    assert resolve("Llama-2 7B").name == "llama-2-7b"
    assert resolve("gpt2").name == "gpt2-small"


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read"),
    (json.dumps({"model_type": "t5"}), "unsupported model_type 't5'"),
    (json.dumps({"family": "diffusion"}), "not supported yet"),
    (json.dumps({"hello": 1}), "neither 'family'"),
    (json.dumps({"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 4}), "cannot share"),
])
def test_bad_configs_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(GenlabError, match=message):
        resolve(str(path))


def test_unknown_name_suggests_close_matches(tmp_path):
    with pytest.raises(GenlabError, match="did you mean llama-2-7b"):
        resolve("llama-2-7")
    with pytest.raises(ConfigError, match="holds no config.json"):
        resolve(str(tmp_path))


def test_register_family_plugs_in_a_reader(tmp_path, monkeypatch):
    toy = dataclasses.replace(FAMILIES["lm"], name="toy", read_run=lambda cfg, name, src: resolve("tiny"))
    monkeypatch.setitem(FAMILIES, "toy", toy)
    (tmp_path / "config.json").write_text(json.dumps({"family": "toy"}))
    assert resolve(str(tmp_path)).name == "tiny"

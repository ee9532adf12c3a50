import pytest
import torch

from genlab.config import LM_PRESETS, lm_config
from genlab.errors import ConfigError
from genlab.models.transformer import LMConfig, Transformer


def small_model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=97, context=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32, **kw)
    return Transformer(cfg).eval()


def test_causal_future_tokens_do_not_change_past_logits():
    model = small_model()
    x = torch.randint(0, 97, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_kv_cache_decoding_equals_full_recomputation(kv_heads):
    model = small_model() if kv_heads == 2 else Transformer(LMConfig(
        vocab_size=97, context=32, n_layer=2, n_head=4, n_kv_head=kv_heads, d_model=32)).eval()
    x = torch.randint(0, 97, (3, 24))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(batch=3)
        steps = [model(x[:, :10], cache, 0)]  # prefill
        steps.append(model(x[:, 10:15], cache, 10))  # a chunk after a cached prefix
        for t in range(15, 24):  # one token at a time
            steps.append(model(x[:, t : t + 1], cache, t))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    assert cache.length == 24


def test_tied_embeddings_share_one_tensor_and_count_once():
    tied, untied = small_model(tie_embeddings=True), small_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == 97 * 32
    assert tied.num_params() == sum(p.numel() for p in tied.parameters())


def test_residual_projections_are_scaled_down():
    model = Transformer(LMConfig(vocab_size=100, n_layer=8, d_model=64, n_head=4, n_kv_head=4))
    std_o = model.layers[0].attn.o_proj.weight.std().item()
    std_q = model.layers[0].attn.q_proj.weight.std().item()
    assert std_o < 0.5 * std_q  # 0.02 / sqrt(16) vs 0.02


def test_presets_have_the_promised_sizes():
    with torch.device("meta"):
        sizes = {name: Transformer(lm_config(name)).num_params() for name in LM_PRESETS}
    assert sizes["tiny"] < 1_000_000
    assert 8e6 < sizes["small"] < 14e6
    assert 90e6 < sizes["base"] < 140e6  # GPT-2 small is 124M


def test_sequence_longer_than_context_is_rejected():
    model = small_model()
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(n_head=3), dict(n_kv_head=3), dict(d_model=0), dict(dropout=1.5)])
def test_invalid_configs_are_clear_errors(bad):
    with pytest.raises(ConfigError):
        lm_config("tiny", **bad)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        lm_config("gigantic")

"""Hugging Face interop, checked with the real transformers library: our export loads as a
LlamaForCausalLM with the same logits and tokens, and a LlamaForCausalLM saved by transformers
imports into a run that generates and fine-tunes."""

import json
import shutil
import subprocess

import pytest
import torch
from safetensors import safe_open

import genlab
from genlab import runs
from genlab.config import DataConfig, train_config
from genlab.errors import ConfigError, GenlabError, RunError
from genlab.export.common import ExportError, probe_tokens
from genlab.export.hf import export_hf, import_hf
from genlab.train.lm import LMTrainSpec, train_lm

from .conftest import GENLAB
from .test_export_common import random_run

transformers = pytest.importorskip("transformers")


CASES = {
    "trained, tied, GQA": None,
    "untied, full attention": dict(tie_embeddings=False, n_kv_head=4, rope_theta=5000.0, norm_eps=1e-6),
    "tied, one kv head": dict(n_head=8, n_kv_head=1, d_model=64, ffn_hidden=96),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_loads_in_transformers_with_the_same_logits_and_tokens(tmp_path, trained_run, case):
    run = trained_run if CASES[case] is None else random_run(tmp_path / "run", trained_run, **CASES[case])
    out = tmp_path / "hf"
    parity = export_hf(run, out, log=lambda m: None).checks[0]
    assert parity.ok and parity.max_abs_diff < 1e-4
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json",
                                               "tokenizer_config.json", "special_tokens_map.json"}

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ours = genlab.load(run, device="cpu")
    cfg = ours.config
    assert hf.config.num_key_value_heads == cfg.n_kv_head and hf.config.tie_word_embeddings == cfg.tie_embeddings
    ids = probe_tokens(cfg.vocab_size, 40, seed=5)
    with torch.no_grad():
        ref, got = ours.model(ids), hf(ids).logits
    assert ref.abs().max() > 1.0  # logits big enough for the comparison to mean something
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not cfg.tie_embeddings)

    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "The cat sat on a mat.<|endoftext|>Old dog ran"
    assert tok(text)["input_ids"] == ours.tokenizer.encode(text).ids
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == ours.eot


def test_a_quantized_run_exports_its_dequantized_weights(tmp_path, trained_run):
    from genlab.optimize.quantize import QuantSpec, quantize_run

    quantize_run(trained_run, tmp_path / "q", QuantSpec("int8"))
    assert export_hf(tmp_path / "q", tmp_path / "hf", log=lambda m: None).ok


def test_failed_parity_leaves_nothing_behind(tmp_path, trained_run, monkeypatch):
    import genlab.export.hf as hfmod

    monkeypatch.setattr(hfmod, "TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="parity check failed"):
        export_hf(trained_run, tmp_path / "hf", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GenlabError, match="already exists"):
        export_hf(trained_run, trained_run, log=lambda m: None)


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory, trained_run):
    """A random LlamaForCausalLM made and saved by transformers itself: bf16, sharded, untied, GQA."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(json.loads((trained_run / runs.TOKENIZER).read_text())["model"]["vocab"])
    eos = genlab.load(trained_run).eot
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=5000.0,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.15, bos_token_id=eos,
                      eos_token_id=eos)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("hf-llama")
    model.save_pretrained(str(path), max_shard_size="60KB")
    shutil.copyfile(trained_run / runs.TOKENIZER, path / "tokenizer.json")
    assert (path / "model.safetensors.index.json").exists()  # really sharded
    return path


def test_import_of_a_transformers_checkpoint_matches_it_then_generates_and_fine_tunes(
        tmp_path, hf_llama, corpus_dir):
    run = tmp_path / "imported"
    parity = import_hf(hf_llama, run, log=lambda m: None)
    assert parity is not None and parity.ok
    cfg = json.loads((run / runs.CONFIG).read_text())
    assert cfg["imported_from"]["dtypes"] == ["bfloat16"] and cfg["model"]["rope_theta"] == 5000.0
    assert cfg["model"]["tie_embeddings"] is False and cfg["model"]["n_kv_head"] == 2

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_llama), dtype=torch.float32).eval()
    lm = genlab.load(run, device="cpu")
    ids = probe_tokens(lm.config.vocab_size, 48, seed=2)
    with torch.no_grad():
        ref = hf(ids).logits
        assert ref.abs().max() > 1.0
        torch.testing.assert_close(lm.model(ids), ref, atol=1e-4, rtol=0)
    # greedy continuation: same tokens as transformers' own generate
    prompt = torch.tensor([lm.encode("The cat sat")])
    hf_ids = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    ours = lm.generate("The cat sat", max_tokens=12, temperature=0, ignore_eot=True)
    assert ours == lm.decode(hf_ids[0, prompt.shape[1]:].tolist())

    from genlab.errors import DataError
    from genlab.evaluate.perplexity import evaluate_lm

    assert evaluate_lm(run, data=[str(corpus_dir / "doc01.txt")])["tokens"] > 100
    with pytest.raises(DataError, match="records no training data"):
        evaluate_lm(run)

    result = train_lm(LMTrainSpec(
        run=tmp_path / "ft", data=DataConfig(corpus=[str(corpus_dir)]), init_from=run,
        train=train_config("tiny", steps=3, batch_size=4, eval_every=3, eval_batches=1, checkpoint_every=3),
        quiet=True))
    assert result.step == 3 and all(torch.isfinite(torch.tensor(v)) for _, v in result.losses)


def _variant(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("changes, error, words", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), ConfigError, "rope scaling 'linear'"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0}), ConfigError, "'yarn'"),
    (dict(attention_bias=True), ConfigError, "attention_bias"),
    (dict(mlp_bias=True), ConfigError, "mlp_bias"),
    (dict(model_type="mistral"), ConfigError, "model_type 'mistral' is not supported"),
])
def test_unsupported_checkpoints_are_one_line_errors(tmp_path, hf_llama, changes, error, words):
    src = _variant(hf_llama, tmp_path / "v", **changes)
    with pytest.raises(error, match=words) as e:
        import_hf(src, tmp_path / "run", log=lambda m: None)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_missing_pieces_are_clear_errors(tmp_path, hf_llama):
    src = tmp_path / "pickled"
    src.mkdir()
    shutil.copyfile(hf_llama / "config.json", src / "config.json")
    (src / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(RunError, match="never loads"):
        import_hf(src, tmp_path / "run")
    notok = _variant(hf_llama, tmp_path / "notok")
    (notok / "tokenizer.json").unlink()
    with pytest.raises(RunError, match="no tokenizer.json"):
        import_hf(notok, tmp_path / "run")
    r = subprocess.run(GENLAB + ["import", "hf", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "no config.json" in r.stderr and r.stderr.count("\n") == 1

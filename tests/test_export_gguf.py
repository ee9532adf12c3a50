"""GGUF export: the file's structure read back with gguf's reader, the rotary reordering, and (when
llama-cpp-python is installed) llama.cpp's own logits, tokenization and greedy continuation."""

import subprocess

import numpy as np
import pytest
import torch

import genlab
from genlab.export.common import ExportError, probe_tokens
from genlab.export.gguf import export_gguf, from_interleaved, to_interleaved
from genlab.models.transformer import apply_rotary, rotary_tables

from .conftest import GENLAB
from .test_export_common import random_run

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_run):
    d = tmp_path_factory.mktemp("gguf")
    out = {}
    for qtype in ("f16", "q8_0"):
        out[qtype] = d / f"tiny-{qtype}.gguf"
        export_gguf(trained_run, out[qtype], qtype, log=lambda m: None)
    return out


def test_rotary_reordering_keeps_attention_scores():
    """Rotating halves (ours, HF) on W_q, W_k gives the same q.k as rotating adjacent pairs
    (llama.cpp) on the reordered W_q, W_k."""
    g = torch.Generator().manual_seed(0)
    n_head, hd, d, T = 2, 8, 16, 5
    wq, wk, x = torch.randn(n_head * hd, d, generator=g), torch.randn(n_head * hd, d, generator=g), torch.randn(T, d, generator=g)
    cos, sin = rotary_tables(hd, T, 10000.0)

    def heads(w):
        return (x @ w.T).view(T, n_head, hd).transpose(0, 1)  # (head, T, hd)

    ours = apply_rotary(heads(wq), cos, sin) @ apply_rotary(heads(wk), cos, sin).transpose(-1, -2)

    def rope_pairs(v):  # llama.cpp's normal rope, written independently: pairs (2i, 2i+1)
        angle = torch.arange(T)[:, None] * (10000.0 ** (-torch.arange(0, hd, 2) / hd))[None, :]
        a, b = v[..., 0::2], v[..., 1::2]
        return torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], -1).flatten(-2)

    theirs = rope_pairs(heads(to_interleaved(wq, n_head))) @ rope_pairs(heads(to_interleaved(wk, n_head))).transpose(-1, -2)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert torch.equal(from_interleaved(to_interleaved(wq, n_head), n_head), wq)


def test_file_structure(files, trained_run):
    lm = genlab.load(trained_run)
    cfg = lm.config
    merges = len(__import__("json").loads((trained_run / "tokenizer.json").read_text())["model"]["merges"])
    for qtype, path in files.items():
        r = gguf.GGUFReader(str(path))
        f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
        assert f["general.architecture"] == "llama"
        assert (f["llama.context_length"], f["llama.embedding_length"], f["llama.block_count"],
                f["llama.feed_forward_length"]) == (cfg.context, cfg.d_model, cfg.n_layer, cfg.ffn_hidden)
        assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (cfg.n_head, cfg.n_kv_head)
        assert f["llama.rope.freq_base"] == cfg.rope_theta and f["llama.rope.dimension_count"] == cfg.head_dim
        assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
        assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
        tokens = f["tokenizer.ggml.tokens"]
        assert len(tokens) == cfg.vocab_size and tokens[lm.eot] == "<|endoftext|>"
        assert len(f["tokenizer.ggml.merges"]) == merges
        assert f["tokenizer.ggml.token_type"][lm.eot] == gguf.TokenType.CONTROL
        assert f["tokenizer.ggml.bos_token_id"] == f["tokenizer.ggml.eos_token_id"] == lm.eot
        assert f["tokenizer.ggml.add_bos_token"] is False

        tensors = {t.name: t for t in r.tensors}
        assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
        assert len(tensors) == 2 + 9 * cfg.n_layer
        matrix_type = "F16" if qtype == "f16" else "Q8_0"
        assert tensors["blk.1.attn_k.weight"].tensor_type.name == matrix_type
        assert tensors["token_embd.weight"].tensor_type.name == matrix_type
        assert tensors["blk.0.ffn_norm.weight"].tensor_type.name == "F32"
        assert [int(n) for n in tensors["blk.0.attn_k.weight"].shape] == [cfg.d_model, cfg.n_kv_head * cfg.head_dim]
        assert [int(n) for n in tensors["blk.0.ffn_down.weight"].shape] == [cfg.ffn_hidden, cfg.d_model]
    assert files["q8_0"].stat().st_size < 0.6 * files["f16"].stat().st_size


def test_errors_and_cli(tmp_path, trained_run, files):
    with pytest.raises(ExportError, match="unknown GGUF type 'q4_k'"):
        export_gguf(trained_run, tmp_path / "x.gguf", "q4_k")
    with pytest.raises(ExportError, match="must end in .gguf"):
        export_gguf(trained_run, tmp_path / "x.bin")
    with pytest.raises(ExportError, match="already exists"):
        export_gguf(trained_run, files["f16"])
    r = subprocess.run(GENLAB + ["export", str(trained_run), "--format", "gguf", "--type", "q8_0",
                                 "--out", str(tmp_path / "m.gguf")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "parity (GGUF q8_0" in r.stderr and (tmp_path / "m.gguf").exists()
    r = subprocess.run(GENLAB + ["export", str(trained_run), "--format", "tensorrt"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == ("error: unknown format 'tensorrt'; choose one of: "
                                                      "hf, onnx, gguf, executorch, tflite, coreml")


# ---- llama.cpp itself ---------------------------------------------------------------------------

def _llama(path, n_ctx):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed; "
                                    "`pip install llama-cpp-python` builds llama.cpp to run these checks")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2)


# relative to the largest |logit|: f16 rounds weights and activations, q8_0 quantizes both to 8 bits
LLAMA_TOL = {"f16": 0.005, "q8_0": 0.05}


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_llama_cpp_logits_tokens_and_greedy_text_match(files, trained_run, qtype):
    lm = genlab.load(trained_run, device="cpu")
    llm = _llama(files[qtype], lm.config.context)
    text = "The cat sat on a mat while old dog ran far away.\nA small bird"
    ids = lm.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # the tokenizer travelled intact
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    with torch.no_grad():
        ref = lm.model(torch.tensor([ids]))[0].numpy()
    assert np.abs(got - ref).max() < LLAMA_TOL[qtype] * np.abs(ref).max()
    if qtype == "f16":
        llm.reset()
        prompt = lm.encode("The small bird")
        out = []
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            out.append(tok)
            if len(out) == 24:
                break
        assert lm.decode(out) == lm.generate("The small bird", max_tokens=24, temperature=0, ignore_eot=True)
    llm.close()


def test_llama_cpp_runs_an_untied_full_attention_model(tmp_path, trained_run):
    run = random_run(tmp_path / "run", trained_run, tie_embeddings=False, n_kv_head=4, rope_theta=5000.0)
    path = tmp_path / "m.gguf"
    export_gguf(run, path, "f16", log=lambda m: None)
    assert "output.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}
    lm = genlab.load(run, device="cpu")
    llm = _llama(path, lm.config.context)
    ids = probe_tokens(lm.config.vocab_size, 40, seed=9)[0].tolist()
    llm.eval(ids)
    with torch.no_grad():
        ref = lm.model(torch.tensor([ids]))[0].numpy()
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    assert np.abs(ref).max() > 1.0
    assert np.abs(got - ref).max() < LLAMA_TOL["f16"] * np.abs(ref).max()
    llm.close()

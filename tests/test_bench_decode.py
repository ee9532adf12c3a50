"""`genlab bench decode`: every row is measured in its own process on the same token ids and compared
with genlab fp32 eager (speed is reported, never asserted)."""

import json
import subprocess

import pytest

from genlab.bench_decode import HEADERS, bench_decode, plan, table_rows
from genlab.errors import ConfigError

from .conftest import GENLAB

pytestmark = pytest.mark.usefixtures("one_thread")

HAVE_LLAMA_CPP = __import__("importlib").util.find_spec("llama_cpp") is not None


def test_plan_lists_every_row_and_the_imported_gguf(trained_run, tmp_path):
    labels = [p.row.label for p in plan(trained_run)]
    assert labels[0] == "genlab fp32 eager"  # the reference is measured first
    assert len([x for x in labels if x.startswith("genlab")]) == 8
    assert {"genlab int4 fast", "genlab int4 eager", "transformers fp32 generate()", "llama.cpp q8_0 genlab GGUF",
            "llama.cpp f16 genlab GGUF"} <= set(labels)
    assert not any("original" in x for x in labels)
    run = tmp_path / "imported"
    run.mkdir()
    for f in trained_run.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((run / "config.json").read_text())
    cfg["imported_from"] = {"path": str(tmp_path / "model.Q4_1.gguf"), "format": "gguf"}
    (run / "config.json").write_text(json.dumps(cfg))
    assert plan(run)[-1].row.label == "llama.cpp original original file"
    assert [p.row.label for p in plan(run, ["llama.cpp:original"])] == ["genlab fp32 eager",
                                                                        "llama.cpp original original file"]
    with pytest.raises(ConfigError, match="choose runtimes"):
        plan(run, ["tensorrt"])


def test_decode_rows_are_measured_with_parity(trained_run, tmp_path):
    only = ["genlab:fp32:fast", "genlab:int8:fast", "transformers", "llama.cpp:q8_0"]
    bench = bench_decode(trained_run, prompt_tokens=24, new_tokens=8, threads=1, work=tmp_path / "work", only=only,
                         log=lambda m: None)
    by = {r.label: r for r in bench.rows}
    assert list(by) == ["genlab fp32 eager", "genlab fp32 fast", "genlab int8 fast", "transformers fp32 generate()",
                        "llama.cpp q8_0 genlab GGUF"]
    assert bench.bandwidth_1 > 0 and bench.bandwidth_n > 0 and bench.prompt_tokens == 24 and bench.new_tokens == 8
    ref, fast, int8 = by["genlab fp32 eager"], by["genlab fp32 fast"], by["genlab int8 fast"]
    hf, q8 = by["transformers fp32 generate()"], by["llama.cpp q8_0 genlab GGUF"]
    if not HAVE_LLAMA_CPP:
        assert q8.note.startswith("skipped: llama-cpp-python")
    for r in bench.rows:
        if r.note:
            continue
        assert r.decode_tok_s > 0 and r.ttft_ms > 0 and r.peak_rss_mb > 20 and r.greedy_tokens == 8
        assert r.bound_tok_s == pytest.approx(bench.bandwidth_n / r.bytes_per_token)
    assert ref.max_logit_diff == 0 and ref.greedy_agreement == 8
    # the same weights by another path or library: the same logits and greedy tokens
    assert fast.max_logit_diff < 1e-4 and fast.greedy_agreement == 8
    assert hf.max_logit_diff < 1e-3 and hf.greedy_agreement == 8
    # int8 is a different model: visibly other logits, but close; it reads about a quarter of the bytes
    assert 1e-4 < int8.max_logit_diff < 1.0
    assert ref.bytes_per_token / 4.5 < int8.bytes_per_token < ref.bytes_per_token / 3
    assert hf.bytes_per_token == pytest.approx(ref.bytes_per_token, rel=0.05)
    assert fast.vs_transformers == pytest.approx(fast.decode_tok_s / hf.decode_tok_s)
    assert ref.vs_llamacpp is None  # no f32 GGUF to compare with
    if HAVE_LLAMA_CPP:
        assert not q8.note and q8.max_logit_diff < 1.0 and q8.greedy_agreement >= 1
        assert q8.bytes_per_token < ref.bytes_per_token / 3
        assert int8.vs_llamacpp == pytest.approx(int8.decode_tok_s / q8.decode_tok_s)
    rows = table_rows(bench)
    assert len(rows) == 5 and all(len(r) == len(HEADERS) for r in rows)


def test_bf16_fast_path_is_cast_before_its_projections_are_fused(trained_run):
    import torch

    from genlab.bench_runtimes import load_variant

    eager, fast = load_variant(trained_run, "bf16", fast=False), load_variant(trained_run, "bf16", fast=True)
    assert all(p.dtype == torch.bfloat16 for p in fast.model.parameters())
    fused = getattr(fast.model.layers[0].attn, "qkv", None)
    if fused is not None:  # the fast path's fused q/k/v matrix is bf16 too (a later .to() would miss it)
        assert fused.weight.dtype == torch.bfloat16
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        a, b = eager.model(ids)[0].float(), fast.model(ids)[0].float()
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_missing_runtimes_are_rows_with_the_reason(trained_run, tmp_path, monkeypatch):
    import genlab.bench_runtimes as br

    monkeypatch.setattr(br, "_have", lambda module: module not in ("llama_cpp", "transformers"))
    bench = bench_decode(trained_run, prompt_tokens=8, new_tokens=4, threads=1, work=tmp_path / "w",
                         only=["transformers", "llama.cpp"], log=lambda m: None)
    notes = {r.label: r.note for r in bench.rows}
    assert notes["genlab fp32 eager"] == ""
    assert notes["transformers fp32 generate()"] == "skipped: pip install transformers"
    assert notes["llama.cpp q8_0 genlab GGUF"].startswith("skipped: llama-cpp-python not installed")
    assert notes["llama.cpp f16 genlab GGUF"].startswith("skipped: llama-cpp-python not installed")
    assert bench.rows[0].vs_transformers is None


def test_cli_writes_a_section_and_refuses_bad_input(trained_run, tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n")
    r = subprocess.run([*GENLAB, "bench", "decode", str(trained_run), "--only", "genlab:int4:fast", "--new-tokens", "4",
                        "--prompt-tokens", "8", "--threads", "1", "--write", str(md)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = md.read_text()
    assert text.startswith("# Benchmarks\n") and "### Decode speed for tiny (`bench decode`)" in text
    assert f"`genlab bench decode {trained_run} --only genlab:int4:fast --new-tokens 4" in text
    assert "| genlab int4 fast |" in text and "| genlab fp32 eager |" in text
    for args, message in [([str(tmp_path)], "config.json"), ([str(trained_run), "--new-tokens", "1"], "at least 2")]:
        r = subprocess.run([*GENLAB, "bench", "decode", *args, "--no-write"], capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1

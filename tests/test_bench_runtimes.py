"""`genlab bench runtimes`: every variant is prepared, measured in its own process and compared with
PyTorch eager fp32 (timings are reported, never asserted)."""

import pytest

from genlab.bench_runtimes import bench_runtimes, markdown_table
from genlab.errors import ConfigError

from .conftest import GENLAB

pytestmark = pytest.mark.usefixtures("one_thread")


def test_runtimes_table_compares_every_variant_with_eager_fp32(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    rows = bench_runtimes(trained_run, tmp_path / "work", prompt_tokens=16, decode_tokens=8, greedy_tokens=32,
                          ppl_tokens=512, only=["pytorch:int4", "onnxruntime:fp32"], threads=1, log=lambda m: None)
    by = {(r.runtime, r.precision): r for r in rows}
    assert list(by) == [("pytorch", "fp32"), ("pytorch", "int4"), ("onnxruntime", "fp32")]
    ref, int4, ort = by[("pytorch", "fp32")], by[("pytorch", "int4")], by[("onnxruntime", "fp32")]
    # The reference row is measured like the others (prefill, then one cached decode step per token, in
    # its own process); check it against an independent in-process pass: one uncached forward over the
    # same tokens, and the validation perplexity of genlab eval's scoring.
    import numpy as np
    import torch

    import genlab
    from genlab.train.lm import token_nll

    lm = genlab.load(trained_run, device="cpu")
    seq = np.load(tmp_path / "work" / "sequence.npy")
    with torch.no_grad():
        recomputed = lm.model(torch.from_numpy(seq)[None])[0, :-1].numpy()
    assert np.abs(np.load(tmp_path / "work" / "logits-pytorch-fp32.npy") - recomputed).max() < 1e-4
    nll, count = token_nll(lm.model, np.load(tmp_path / "work" / "val.npy"), lm.config.context, batch_size=1)
    assert abs(ref.ppl - np.exp(nll / count)) < 1e-3 * ref.ppl and ref.greedy_tokens == 32
    assert ort.max_logit_diff < 1e-4 and ort.greedy_agreement == 32 and abs(ort.ppl_change_pct) < 0.01
    # int4 really is a different model: visible logit change, a smaller file, a perplexity near the reference
    assert 1e-3 < int4.max_logit_diff < 2 and int4.size_bytes < ref.size_bytes / 4
    assert abs(int4.ppl_change_pct) < 10 and int4.ppl > 1
    for r in rows:
        assert r.decode_tok_s > 0 and r.prefill_ms > 0 and r.peak_rss_mb > 50 and not r.note
    table = markdown_table(rows)
    assert table.count("\n") == 4 and "| onnxruntime | fp32 |" in table


def test_runtimes_refuses_a_quantized_run_and_unknown_names(trained_run, tmp_path):
    import subprocess

    with pytest.raises(ConfigError, match="matches no runtime"):
        bench_runtimes(trained_run, tmp_path, only=["tensorrt"], log=lambda m: None)
    r = subprocess.run([*GENLAB, "quantize", str(trained_run), "--method", "int8", "--out", str(tmp_path / "q")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*GENLAB, "bench", "runtimes", str(tmp_path / "q"), "--no-write"], capture_output=True, text=True)
    assert r.returncode == 2 and "float run" in r.stderr


def test_work_folder_is_reused_only_for_the_same_weights(trained_run, tmp_path):
    import os
    import shutil

    from genlab.bench_runtimes import _claim_work_dir

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    work = tmp_path / "work"
    _claim_work_dir(work, run)
    (work / "model-fp32.onnx").write_bytes(b"made from these weights")
    _claim_work_dir(work, run)
    assert (work / "model-fp32.onnx").exists()  # same weights: kept
    os.utime(run / "model.safetensors", ns=(1, 1))  # the weights were rewritten (retrained)
    _claim_work_dir(work, run)
    assert not (work / "model-fp32.onnx").exists()  # stale variants are gone
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("not genlab's")
    with pytest.raises(ConfigError, match="did not make"):
        _claim_work_dir(other, run)
    assert (other / "notes.txt").exists()


def test_a_variant_whose_export_fails_its_parity_is_a_failed_row(trained_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr("genlab.export.onnx.INT8_RELATIVE_TOLERANCE", 1e-9)  # no int8 export can pass
    rows = bench_runtimes(trained_run, tmp_path / "work", decode_tokens=4, greedy_tokens=4, ppl_tokens=64,
                          only=["onnxruntime:int8"], log=lambda m: None)
    assert [(r.runtime, r.precision) for r in rows] == [("pytorch", "fp32"), ("onnxruntime", "int8")]
    assert rows[0].decode_tok_s > 0 and rows[1].note.startswith("failed: parity check failed")
    assert "failed: parity check failed" in markdown_table(rows)

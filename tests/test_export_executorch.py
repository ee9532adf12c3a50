"""ExecuTorch export (XNNPACK), run by ExecuTorch's own runtime: one .pte with prefill and decode
methods whose logits match PyTorch, seeded generation through it equals PyTorch's, int8 stays close,
and GAN/VAE generators give the same pixels. Exports are slow, so each is made once per module."""

import json
import shutil
import sys

import pytest
import torch

import genlab
from genlab.errors import RunError
from genlab.export import executorch as et
from genlab.export.common import FP32_TOLERANCE, INT8_RELATIVE_TOLERANCE, ExportError
from genlab.export.image import (
    LOW_PRECISION_PIXEL_TOLERANCE,
    PIXEL_TOLERANCE,
    example_inputs,
    load_image_decoder,
)
from genlab.runtimes.base import BUNDLE_META, read_bundle_meta
from genlab.runtimes.executorch import run_image_program

pytest.importorskip("executorch.runtime")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # lowering takes minutes


def _export(run, out, **kw):
    lines = []
    parity = et.export_executorch(run, out, log=lines.append, **kw).checks
    return out, parity, lines


@pytest.fixture(scope="module")
def lm_fp32(tmp_path_factory, trained_run, one_thread):
    return _export(trained_run, tmp_path_factory.mktemp("et") / "tiny-et")


@pytest.fixture(scope="module")
def lm_int8(tmp_path_factory, trained_run, one_thread):
    return _export(trained_run, tmp_path_factory.mktemp("et") / "tiny-et-int8", int8=True)


def test_lm_program_has_prefill_and_decode(lm_fp32, trained_run):
    from executorch.runtime import Runtime

    out, (parity,), lines = lm_fp32
    assert sorted(p.name for p in out.iterdir()) == [BUNDLE_META, "model.pte", "tokenizer.json"]
    assert not list(out.parent.glob(".*.tmp"))  # the staging folder became `out`
    program = Runtime.get().load_program(out / "model.pte")
    assert program.method_names == {"prefill", "decode"}
    cfg = genlab.load(trained_run, device="cpu").config
    cache_shape = [1, cfg.n_kv_head, cfg.context, cfg.head_dim]
    for method, chunk in (("prefill", 32), ("decode", 1)):
        meta = program.metadata(method)
        assert meta.num_inputs() == 2 + 2 * cfg.n_layer and meta.num_outputs() == 1 + 2 * cfg.n_layer
        assert list(meta.input_tensor_meta(0).sizes()) == [1, chunk]
        assert list(meta.input_tensor_meta(2).sizes()) == cache_shape
        assert list(meta.output_tensor_meta(0).sizes()) == [1, chunk, cfg.vocab_size]

    assert parity.max_abs_diff < FP32_TOLERANCE and parity.logit_scale > 1.0
    assert "ExecuTorch vs PyTorch" in lines[1] and "max |logit diff|" in lines[1]
    assert lines[2].startswith("greedy agreement") and "perplexity" in lines[2]
    meta = read_bundle_meta(out)
    assert meta["format"] == "executorch" and meta["family"] == "lm" and meta["precision"] == "fp32"
    assert meta["files"] == {"lm": "model.pte"} and meta["chunk"] == 32 and meta["methods"] == ["prefill", "decode"]
    assert meta["inputs"][:3] == ["tokens", "input_pos", "k.0"] and meta["model"] == cfg.to_dict()
    assert meta["parity"][0]["max_abs_diff"] == parity.max_abs_diff
    figures = meta["figures"]
    assert figures["greedy_agreement"] == figures["greedy_tokens"] == 256
    assert abs(figures["ppl_change_pct"]) < 0.01


def test_seeded_generation_through_executorch_equals_pytorch(lm_fp32, trained_run):
    lm_et = genlab.load(lm_fp32[0])
    lm_torch = genlab.load(trained_run, device="cpu")
    assert lm_et.eot == lm_torch.eot and lm_et.config == lm_torch.config
    assert type(lm_et.model).__name__ == "ExecutorchRunner"
    greedy = dict(max_tokens=40, temperature=0, ignore_eot=True)
    assert lm_et.generate("The small bird", **greedy) == lm_torch.generate("The small bird", **greedy)
    # 70 new tokens > context 64: the window shift re-reads half the context through a fresh cache
    sampled = dict(max_tokens=70, temperature=0.9, top_k=20, seed=4, ignore_eot=True)
    a = lm_et.generate("The", **sampled)
    assert a == lm_torch.generate("The", **sampled) and len(a) >= 70


def test_int8_lm_is_close_and_smaller(lm_int8, lm_fp32):
    out, (parity,), lines = lm_int8
    assert "ExecuTorch int8 vs PyTorch" in parity.what
    assert parity.max_abs_diff <= INT8_RELATIVE_TOLERANCE * parity.logit_scale
    assert parity.max_abs_diff > 1e-4  # really quantized: not the fp32 program again
    meta = read_bundle_meta(out)
    assert meta["precision"] == "int8" and meta["figures"]["greedy_tokens"] == 256
    assert (out / "model.pte").stat().st_size < 0.7 * (lm_fp32[0] / "model.pte").stat().st_size
    lm = genlab.load(out)
    assert lm.generate("The dog", max_tokens=20, temperature=0, ignore_eot=True)
    assert lm.info.completion_ids and len(lm.info.completion_ids) == 20


@pytest.fixture
def fast_lowering(monkeypatch, lm_fp32):
    """Skip the slow lowering: write the already exported program (the tests below are about what
    happens around it)."""
    monkeypatch.setattr(et, "_lower", lambda programs, path: shutil.copyfile(lm_fp32[0] / "model.pte", path))


def test_failed_parity_writes_nothing(tmp_path, trained_run, monkeypatch, fast_lowering):
    monkeypatch.setattr("genlab.export.edge.FP32_TOLERANCE", -1.0)
    out = tmp_path / "never"
    with pytest.raises(ExportError, match="parity check failed.*not written"):
        et.export_executorch(trained_run, out, log=lambda m: None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite(tmp_path, trained_run, fast_lowering):
    out = tmp_path / "again"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ExportError, match="already exists.*--overwrite"):
        et.export_executorch(trained_run, out, log=lambda m: None)
    assert (out / "old.txt").exists()
    et.export_executorch(trained_run, out, overwrite=True, log=lambda m: None)
    assert not (out / "old.txt").exists() and json.loads((out / BUNDLE_META).read_text())["format"] == "executorch"


def test_missing_executorch_is_one_line(tmp_path, trained_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    with pytest.raises(ExportError, match=r"ExecuTorch export needs the 'executorch' package: .*genlab\[edge\]"):
        et.export_executorch(trained_run, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family, int8", [("gan", False), ("vae", False), ("vae", True)])  # VAE int8: lowers fastest
def test_image_export_matches_pytorch(tmp_path, request, family, int8):
    run = request.getfixturevalue(f"{family}_run")
    out, (parity,), lines = _export(run, tmp_path / f"{family}-et", int8=int8)
    assert {p.name for p in out.iterdir()} == {BUNDLE_META, "generator.pte"}
    assert parity.unit == "pixel" and parity.tolerance == (LOW_PRECISION_PIXEL_TOLERANCE if int8 else PIXEL_TOLERANCE)
    assert parity.ok and (int8 or parity.max_abs_diff < 1e-4), parity.line()
    meta = read_bundle_meta(out)
    assert meta["family"] == family and meta["files"] == {"generator": "generator.pte"} and meta["batch"] == 4
    assert meta["precision"] == ("int8" if int8 else "fp32") and meta["inputs"] == ["z", "labels"]
    assert meta["latent_dim"] > 0 and len(meta["class_names"]) == 4 and meta["image_shape"] == [1, 16, 16]

    # the program, run directly with other latents than the parity check's
    gen, decoder = load_image_decoder(run)
    inputs = example_inputs(decoder, 4, seed=7)
    got = run_image_program(out / "generator.pte", *inputs)
    assert got.shape == (4, 1, 16, 16)
    with torch.no_grad():
        diff = (got - decoder(*inputs)).abs().max().item()
    assert diff <= parity.tolerance
    if not int8:
        with pytest.raises(RunError, match="not a language model"):
            genlab.load(out)

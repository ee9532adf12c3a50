"""LiteRT export (litert-torch) run by the real ai-edge-litert interpreter: one flatbuffer with named
prefill/decode signatures whose generation equals PyTorch's, dynamic int8, image generators, and
the all-or-nothing folder (a failed parity check or an existing --out leaves nothing written)."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch

import genlab
from genlab.errors import RunError
from genlab.export import tflite
from genlab.export.common import INT8_RELATIVE_TOLERANCE, ExportError
from genlab.export.image import example_inputs, load_image_decoder
from genlab.runtimes import litert
from genlab.runtimes.base import BUNDLE_META, read_bundle_meta

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert.interpreter")

pytestmark = pytest.mark.usefixtures("one_thread")


def _export(run, out, **kw):
    lines = []
    parity = tflite.export_tflite(run, out, log=lines.append, **kw).checks
    return parity, lines


@pytest.fixture(scope="module")
def lm_fp32(tmp_path_factory, trained_run, one_thread):
    out = tmp_path_factory.mktemp("tflite") / "tiny"
    parity, lines = _export(trained_run, out)
    return out, parity, lines


@pytest.fixture(scope="module")
def lm_int8(tmp_path_factory, trained_run, one_thread):
    out = tmp_path_factory.mktemp("tflite") / "tiny-int8"
    parity, lines = _export(trained_run, out, int8=True)
    return out, parity, lines


@pytest.fixture(scope="module")
def vae_fp32(tmp_path_factory, vae_run, one_thread):
    out = tmp_path_factory.mktemp("tflite") / "vae"
    parity, lines = _export(vae_run, out)
    return out, parity, lines


def test_lm_folder_signatures_and_meta(lm_fp32, trained_run):
    out, parity, lines = lm_fp32
    assert sorted(p.name for p in out.iterdir()) == [BUNDLE_META, "model.tflite", "tokenizer.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    # what the export printed: the parity line, the fuller figures, the file written; nothing else
    assert lines[0].startswith("parity (LiteRT vs PyTorch, prefill 40 tokens (chunks of 32) + 8 decode steps)")
    assert "greedy agreement" in lines[1] and lines[2].startswith(f"wrote {out}")
    assert len(lines) == 3 and parity[0].max_abs_diff < 1e-4 and parity[0].logit_scale > 1.0

    meta = read_bundle_meta(out)
    assert meta["format"] == "tflite" and meta["family"] == "lm" and meta["files"] == {"lm": "model.tflite"}
    assert meta["chunk"] == 32 and meta["precision"] == "fp32"
    assert meta["parity"][0]["max_abs_diff"] == parity[0].max_abs_diff
    figures = meta["figures"]
    assert figures["greedy_agreement"] == figures["greedy_tokens"] == 256
    assert abs(figures["ppl_change_pct"]) < 0.01 and figures["ppl_tokens"] > 1000

    # one flatbuffer, two named signatures with the same named inputs and outputs
    runner = litert.open_artifact(out).runner
    found = runner.interpreter.get_signature_list()
    assert sorted(found) == ["decode", "prefill"]
    caches = ["k_0", "v_0", "k_1", "v_1"]
    assert meta["inputs"] == ["tokens", "input_pos", *caches] and meta["outputs"] == ["logits", *caches]
    for name in ("prefill", "decode"):
        assert sorted(found[name]["inputs"]) == sorted(meta["inputs"])
        assert sorted(found[name]["outputs"]) == sorted(meta["outputs"])
    details = runner.interpreter.get_signature_runner("prefill").get_input_details()
    assert list(details["tokens"]["shape"]) == [1, 32] and list(details["k_0"]["shape"]) == [1, 2, 64, 16]
    assert details["tokens"]["dtype"] == np.int32  # narrowed from int64 by the converter; the runner casts


def test_generation_through_litert_equals_pytorch(lm_fp32, trained_run):
    out, _, _ = lm_fp32
    lm_tfl = genlab.load(out)
    lm_torch = genlab.load(trained_run, device="cpu")
    assert isinstance(lm_tfl.model, litert.LiteRTRunner)
    assert lm_tfl.eot == lm_torch.eot and lm_tfl.config == lm_torch.config
    for kw in (dict(temperature=0), dict(temperature=0.9, top_k=20, seed=4)):
        # 70 new tokens > context 64: the window shift re-reads part of the context through a fresh cache
        a = lm_tfl.generate("The small bird", max_tokens=70, ignore_eot=True, **kw)
        b = lm_torch.generate("The small bird", max_tokens=70, ignore_eot=True, **kw)
        assert a == b and len(a) >= 70


def test_int8_is_smaller_and_close(lm_int8, lm_fp32, trained_run):
    out, parity, lines = lm_int8
    assert lines[0].startswith("parity (LiteRT int8 vs PyTorch")
    p = parity[0]
    assert 0 < p.max_abs_diff <= INT8_RELATIVE_TOLERANCE * p.logit_scale  # quantized, within 5%
    meta = read_bundle_meta(out)
    assert meta["precision"] == "dynamic-int8" and meta["figures"]["greedy_agreement"] >= 32
    assert (out / "model.tflite").stat().st_size < 0.6 * (lm_fp32[0] / "model.tflite").stat().st_size
    text = genlab.load(out).generate("The", max_tokens=20, temperature=0, ignore_eot=True)
    assert len(text) >= 20


def _copy_converter(src):
    """A stand-in for the converter that writes an already converted flatbuffer (no 40 s conversion)."""
    def convert(signatures, path, int8):
        shutil.copyfile(src, path)
    return convert


def test_failed_parity_leaves_nothing(lm_fp32, vae_fp32, trained_run, vae_run, tmp_path, monkeypatch):
    monkeypatch.setattr(tflite, "_convert", _copy_converter(lm_fp32[0] / "model.tflite"))
    monkeypatch.setattr("genlab.export.edge.FP32_TOLERANCE", -1.0)
    out = tmp_path / "lm"
    with pytest.raises(ExportError, match="parity check failed.*the export was not written"):
        _export(trained_run, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    monkeypatch.setattr(tflite, "_convert", _copy_converter(vae_fp32[0] / "generator.tflite"))
    monkeypatch.setattr("genlab.export.edge.PIXEL_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="parity check failed"):
        _export(vae_run, tmp_path / "vae")
    assert list(tmp_path.iterdir()) == []


def test_overwrite(lm_fp32, trained_run, tmp_path, monkeypatch):
    out = tmp_path / "lm"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists.*--overwrite"):
        _export(trained_run, out)
    assert (out / "keep.txt").read_text() == "mine"
    monkeypatch.setattr(tflite, "_convert", _copy_converter(lm_fp32[0] / "model.tflite"))
    _export(trained_run, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [BUNDLE_META, "model.tflite", "tokenizer.json"]


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_image_export(family, request, vae_fp32, tmp_path):
    run = request.getfixturevalue(f"{family}_run")
    if family == "vae":
        out, parity, lines = vae_fp32
    else:
        out = tmp_path / family
        parity, lines = _export(run, out)
    assert {p.name for p in out.iterdir()} == {BUNDLE_META, "generator.tflite"}
    assert lines[0].startswith("parity (LiteRT vs PyTorch, 4 images)") and parity[0].max_abs_diff < 1e-3
    meta = json.loads((out / BUNDLE_META).read_text())
    assert meta["family"] == family and meta["files"] == {"generator": "generator.tflite"}
    assert meta["batch"] == 4 and meta["image_shape"] == [1, 16, 16] and len(meta["class_names"]) == 4
    assert meta["inputs"] == ["z", "labels"] and meta["outputs"] == ["images"]
    # other latents than the traced ones: the graph is not specialised to its sample inputs
    _, decoder = load_image_decoder(run)
    z, labels = example_inputs(decoder, 4, seed=7)
    got = litert.run_image_model(out / "generator.tflite", z, labels.flip(0))
    with torch.no_grad():
        ref = decoder(z, labels.flip(0)).numpy()
    assert got.shape == (4, 1, 16, 16)
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=0)


def test_image_int8_is_quiet(vae_run, tmp_path, capfd):
    parity, lines = _export(vae_run, tmp_path / "vae-int8", int8=True)
    captured = capfd.readouterr()
    # the converter's progress lines, absl logs and the quantizer's report do not reach the terminal
    assert captured.out == "" and captured.err == "", captured
    assert lines[0].startswith("parity (LiteRT int8 vs PyTorch, 4 images)") and len(lines) == 2
    assert 0 < parity[0].max_abs_diff < 0.3
    assert read_bundle_meta(tmp_path / "vae-int8")["precision"] == "dynamic-int8"


def test_missing_packages_name_the_extra(trained_run, tmp_path, lm_fp32, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"LiteRT export needs the 'litert_torch' package: .*genlab\[tflite\]"):
        _export(trained_run, tmp_path / "x")
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(RunError, match=r"running a LiteRT model needs the 'ai_edge_litert' package"):
        genlab.load(lm_fp32[0])  # opening is the runtime layer's job: a RunError, as for every artifact
    assert not (tmp_path / "x").exists()


def test_eval_and_cli_generation_from_the_export_folder(lm_fp32, trained_run):
    """`genlab eval DIR` scores the source run's validation split through LiteRT; the CLI generates from DIR."""
    import subprocess

    from genlab.evaluate.perplexity import evaluate_lm

    from .conftest import GENLAB

    out, _, _ = lm_fp32
    ref, got = evaluate_lm(trained_run, max_tokens=1024), evaluate_lm(out, max_tokens=1024)
    assert got["tokens"] == ref["tokens"] and abs(got["loss"] - ref["loss"]) < 1e-4
    r = subprocess.run([*GENLAB, "generate", "text", str(out), "-p", "The", "--max-tokens", "12",
                        "--temperature", "0"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr

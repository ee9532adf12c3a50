"""ONNX export with a KV cache, run by the real onnxruntime: logits of prefill and decode steps match
PyTorch, and seeded generation through onnxruntime equals PyTorch's."""

import subprocess

import numpy as np
import pytest
import torch

import genlab
from genlab.errors import RunError
from genlab.export.common import ExportError, probe_tokens
from genlab.export.onnx import export_onnx, onnx_parity
from genlab.runtimes.onnx import OnnxRunner
from genlab.runtimes.pytorch import load_float_model

from .conftest import GENLAB

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_run):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    lines = []
    export_onnx(trained_run, path, log=lines.append)
    assert "max |logit diff|" in lines[0]
    return path


def test_prefill_and_decode_logits_match_pytorch(exported, trained_run):
    model, _ = load_float_model(trained_run)
    onnx_model = OnnxRunner(exported)
    # the graph's inputs: token ids and the past keys/values, with dynamic batch/sequence/past lengths
    inputs = {i.name: i.shape for i in onnx_model.session.get_inputs()}
    assert inputs["input_ids"] == ["batch", "seq"] and isinstance(inputs["past.0.k"][2], str)
    with torch.no_grad():
        for prompt in (1, 7, 30):  # a one-token prompt, too: the graph was traced with longer ones
            p = onnx_parity(model, onnx_model, prompt=prompt, steps=6)
            assert p.max_abs_diff < 1e-4 and p.logit_scale > 1.0, p.line()
        # a batch of two, no cache: what evaluation uses
        ids = probe_tokens(model.cfg.vocab_size, 40, seed=3).view(2, 20)
        np.testing.assert_allclose(onnx_model(ids).numpy(), model(ids).numpy(), atol=1e-4, rtol=0)
        with pytest.raises(ValueError, match="exceeds the context"):
            onnx_model(probe_tokens(model.cfg.vocab_size, 65))


def test_seeded_generation_through_onnxruntime_equals_pytorch(exported, trained_run):
    lm_onnx = genlab.load(exported)
    lm_torch = genlab.load(trained_run, device="cpu")
    assert lm_onnx.eot == lm_torch.eot and lm_onnx.config == lm_torch.config
    for kw in (dict(temperature=0), dict(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2, seed=4)):
        # 70 new tokens > context 64: the window shift re-reads half the context through a fresh cache
        a = lm_onnx.generate("The small bird", max_tokens=70, ignore_eot=True, **kw)
        b = lm_torch.generate("The small bird", max_tokens=70, ignore_eot=True, **kw)
        assert a == b and len(a) >= 70  # at least a character per token
    stopped = lm_onnx.generate("The", max_tokens=100, temperature=0.8, seed=1)  # may end at <|endoftext|>
    assert stopped == lm_torch.generate("The", max_tokens=100, temperature=0.8, seed=1)


def test_perplexity_through_onnxruntime_equals_pytorch(exported, trained_run, corpus_dir):
    from genlab.errors import DataError
    from genlab.evaluate.perplexity import evaluate_lm

    a = evaluate_lm(exported, data=[str(corpus_dir / "doc00.txt")])
    b = evaluate_lm(trained_run, data=[str(corpus_dir / "doc00.txt")], device="cpu")
    assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    with pytest.raises(DataError, match="no validation split"):
        evaluate_lm(exported)


def test_cli_generates_from_the_onnx_file(exported):
    r = subprocess.run(GENLAB + ["generate", "text", str(exported), "-p", "The dog", "--max-tokens", "12",
                                 "--seed", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The dog") and len(r.stdout) > len("The dog\n")


def test_not_a_genlab_onnx_file(tmp_path, exported):
    import onnx

    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(RunError, match="not a genlab ONNX export"):
        genlab.load(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(RunError, match="not a loadable ONNX model"):
        genlab.load(tmp_path / "junk.onnx")
    with pytest.raises(RunError, match="does not exist"):
        genlab.load(tmp_path / "missing.onnx")
    with pytest.raises(ExportError, match="must end in .onnx"):
        export_onnx(tmp_path, tmp_path / "model.bin")


@pytest.mark.slow
def test_int8_export_is_smaller_and_close(tmp_path, trained_run, exported):
    path = tmp_path / "tiny-int8.onnx"
    parity = export_onnx(trained_run, path, int8=True, log=lambda m: None).checks[0]
    assert parity.ok and 0 < parity.max_abs_diff < 0.05 * parity.logit_scale
    assert path.stat().st_size < 0.45 * exported.stat().st_size
    lm = genlab.load(path)
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in
               __import__("onnx").load(str(path)).graph.node)
    assert isinstance(lm.generate("The cat", max_tokens=20, seed=0), str)


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_image_generator_export_runs_in_onnxruntime_at_any_batch(family, request, tmp_path):
    import json

    from genlab.export.image import load_image_decoder

    run = request.getfixturevalue(f"{family}_run")
    path = tmp_path / f"{family}.onnx"
    lines = []
    export_onnx(run, path, log=lines.append)
    assert "max |pixel diff|" in lines[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "labels"]  # the tiny runs are conditional
    assert [o.name for o in session.get_outputs()] == ["images"]
    meta = json.loads(session.get_modelmeta().custom_metadata_map["genlab.config"])
    assert meta["family"] == family and meta["image_shape"] == [1, 16, 16] and len(meta["class_names"]) == 4
    # a batch size the graph was not traced with: the batch axis is dynamic
    g = torch.Generator().manual_seed(5)
    z, labels = torch.randn(3, meta["latent_dim"], generator=g), torch.tensor([0, 3, 1])
    got = session.run(None, {"z": z.numpy(), "labels": labels.numpy()})[0]
    _, decoder = load_image_decoder(run)
    with torch.no_grad():
        ref = decoder(z, labels).numpy()
    assert got.shape == (3, 1, 16, 16)
    assert np.abs(got - ref).max() < 1e-4
    # int8: smaller, checked against its (looser) pixel tolerances
    small = tmp_path / f"{family}-int8.onnx"
    export_onnx(run, small, int8=True, log=lines.append)
    assert small.stat().st_size < path.stat().st_size and "onnxruntime int8" in lines[-1]
    with pytest.raises(RunError, match="not a language model"):
        genlab.load(path)


def test_lm_only_formats_refuse_image_runs(gan_run, tmp_path):
    r = subprocess.run([*GENLAB, "export", str(gan_run), "--format", "gguf", "--out", str(tmp_path / "g.gguf")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "language model" in r.stderr
    assert not (tmp_path / "g.gguf").exists()

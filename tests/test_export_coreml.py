"""Core ML export: conversion only (Core ML predicts on macOS alone), so these tests read the packages
back from their specs: functions, input/output names, shapes and dtypes, the program's ops, the
compression ops and weight sizes, and the export folder's metadata."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("coremltools")

from genlab.export.common import ExportError  # noqa: E402
from genlab.runtimes.base import BUNDLE_META  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def export(run, out, **kw):
    from genlab.export.coreml import export_coreml

    lines = []
    report = export_coreml(run, out, log=lines.append, **kw)
    # Off macOS no numbers can be measured, and the report says so instead of claiming a check.
    assert (report.unchecked and "numeric parity" in report.unchecked[0]) == (sys.platform != "darwin")
    return report.checks, lines


@pytest.fixture(scope="module")
def lm_fp16(trained_run, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("coreml") / "tiny-coreml"
    parity, lines = export(trained_run, out)
    return out, parity, lines


@pytest.fixture(scope="module")
def lm_pal4(trained_run, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("coreml") / "tiny-pal4"
    export(trained_run, out, compress="palettize4")
    return out


def meta_of(folder):
    return json.loads((folder / BUNDLE_META).read_text())


def test_lm_package_is_multifunction_with_planned_signatures(lm_fp16, trained_run):
    import coremltools as ct

    from genlab.models.transformer import LMConfig

    out, parity, lines = lm_fp16
    cfg = LMConfig.from_dict(meta_of(out)["model"])
    assert sorted(p.name for p in out.iterdir()) == [BUNDLE_META, "model.mlpackage", "tokenizer.json"]
    spec = ct.models.MLModel(str(out / "model.mlpackage"), skip_model_load=True).get_spec()
    assert spec.specificationVersion >= 9  # iOS 18: multifunction
    desc = spec.description
    assert [f.name for f in desc.functions] == ["prefill", "decode"]
    assert desc.defaultFunctionName == "decode"
    caches = [f"{kv}_{i}" for i in range(cfg.n_layer) for kv in "kv"]
    fp16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    int32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    for f, T in zip(desc.functions, (32, 1), strict=True):
        ins = {i.name: i.type.multiArrayType for i in f.input}
        outs = {o.name: o.type.multiArrayType for o in f.output}
        assert list(ins) == ["tokens", "input_pos", *caches]
        assert list(outs) == ["logits", *(f"{c}_out" for c in caches)]
        assert list(ins["tokens"].shape) == [1, T] and ins["tokens"].dataType == int32
        assert list(ins["input_pos"].shape) == [T] and ins["input_pos"].dataType == int32
        assert list(outs["logits"].shape) == [1, T, cfg.vocab_size] and outs["logits"].dataType == fp16
        for c in caches:
            shape = [1, cfg.n_kv_head, cfg.context, cfg.head_dim]
            assert list(ins[c].shape) == shape and ins[c].dataType == fp16
            assert list(outs[f"{c}_out"].shape) == shape and outs[f"{c}_out"].dataType == fp16
    assert parity == []
    assert any("Core ML does not run on Linux" in line for line in lines)


def test_lm_program_ops_and_meta(lm_fp16):
    import coremltools as ct

    out, _, lines = lm_fp16
    meta = meta_of(out)
    cfg = meta["model"]
    spec = ct.models.MLModel(str(out / "model.mlpackage"), skip_model_load=True).get_spec()
    for name in ("prefill", "decode"):
        fn = spec.mlProgram.functions[name]
        ops = [op.type for op in fn.block_specializations[fn.opset].operations]
        assert ops.count("linear") == 7 * cfg["n_layer"] + 1  # 4 attention + 3 MLP projections per layer, head
        assert not any(op.startswith("constexpr") for op in ops)  # plain fp16: no compressed weights
        assert "scaled_dot_product_attention" in ops or "softmax" in ops
        assert meta["verified"]["functions"][name]["ops"]["linear"] == ops.count("linear")
    assert meta["format"] == "coreml" and meta["family"] == "lm"
    assert meta["files"] == {"lm": "model.mlpackage"}
    assert meta["parity"] == [] and meta["precision"] == "fp16" and meta["compress"] is None
    assert meta["chunk"] == 32 and meta["functions"] == ["prefill", "decode"]
    assert meta["minimum_deployment_target"] == "iOS18" and meta["compute_units"] == "ALL"
    # fp16 weights: about 2 bytes per parameter (tied embeddings stored once, shared by both functions)
    n_params = (cfg["vocab_size"] * cfg["d_model"]
                + cfg["n_layer"] * (2 * cfg["d_model"] * cfg["d_model"] + 2 * cfg["d_model"] * cfg["d_model"] // 2
                                    + 3 * cfg["d_model"] * cfg["ffn_hidden"]))
    assert 1.6 * n_params < meta["verified"]["weights_bytes"] < 2.6 * n_params
    proxy = meta["verified"]["fp16_weight_proxy"]
    assert 0 <= proxy["max_abs_diff"] < 0.05 * proxy["scale"]
    assert any(line.startswith("model.mlpackage [decode]") and "linear 15" in line for line in lines)


def test_palettize4_shrinks_weights_and_keeps_sharing(lm_fp16, lm_pal4):
    import coremltools as ct

    from genlab.export.coreml import weights_bytes

    spec = ct.models.MLModel(str(lm_pal4 / "model.mlpackage"), skip_model_load=True).get_spec()
    assert [f.name for f in spec.description.functions] == ["prefill", "decode"]
    for name in ("prefill", "decode"):
        fn = spec.mlProgram.functions[name]
        ops = [op.type for op in fn.block_specializations[fn.opset].operations]
        assert ops.count("constexpr_lut_to_dense") >= 5
        assert ops.count("linear") == 15
    fp16 = weights_bytes(lm_fp16[0] / "model.mlpackage")
    pal4 = weights_bytes(lm_pal4 / "model.mlpackage")
    assert pal4 < 0.5 * fp16  # 4-bit indices instead of 16-bit weights for the large matrices
    assert meta_of(lm_pal4)["compress"] == "palettize4"


def test_gan_generator_package(gan_run, tmp_path):
    import coremltools as ct

    out = tmp_path / "gan-coreml"
    parity, _ = export(gan_run, out)
    assert parity == []
    assert sorted(p.name for p in out.iterdir()) == sorted([BUNDLE_META, "generator.mlpackage"])
    meta = meta_of(out)
    assert meta["files"] == {"generator": "generator.mlpackage"} and meta["batch"] == 1
    assert meta["class_names"] == ["circle", "square", "triangle", "cross"]
    assert meta["minimum_deployment_target"] == "iOS17"
    spec = ct.models.MLModel(str(out / "generator.mlpackage"), skip_model_load=True).get_spec()
    ins = {i.name: i.type.multiArrayType for i in spec.description.input}
    outs = {o.name: o.type.multiArrayType for o in spec.description.output}
    assert list(ins) == ["z", "labels"] and list(ins["z"].shape) == [1, meta["latent_dim"]]
    assert list(ins["labels"].shape) == [1]
    assert ins["labels"].dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    assert list(outs) == ["images"] and list(outs["images"].shape) == [1, *meta["image_shape"]]
    fn = spec.mlProgram.functions["main"]
    ops = [op.type for op in fn.block_specializations[fn.opset].operations]
    assert "conv" in ops or "conv_transpose" in ops


def test_vae_generator_int8(vae_run, tmp_path):
    import coremltools as ct

    from genlab.export.coreml import weights_bytes

    export(vae_run, tmp_path / "vae-fp16")
    export(vae_run, tmp_path / "vae-int8", compress="int8")
    meta = meta_of(tmp_path / "vae-int8")
    assert meta["family"] == "vae" and meta["compress"] == "int8"
    assert meta_of(tmp_path / "vae-fp16")["image_shape"] == meta["image_shape"] == [1, 16, 16]
    spec = ct.models.MLModel(str(tmp_path / "vae-int8" / "generator.mlpackage"), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
    ops = [op.type for op in fn.block_specializations[fn.opset].operations]
    assert "constexpr_affine_dequantize" in ops  # the iOS 17 op set's int8 weights
    fp16 = weights_bytes(tmp_path / "vae-fp16" / "generator.mlpackage")
    assert weights_bytes(tmp_path / "vae-int8" / "generator.mlpackage") < 0.8 * fp16


def test_bad_compress_is_one_line_error_and_writes_nothing(trained_run, tmp_path):
    from genlab.export.coreml import export_coreml

    out = tmp_path / "bad"
    with pytest.raises(ExportError) as e:
        export_coreml(trained_run, out, compress="int3", log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and "palettize4" in msg and "int8" in msg
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_out_without_overwrite(lm_fp16, trained_run):
    from genlab.export.coreml import export_coreml

    out = lm_fp16[0]
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ExportError, match="already exists"):
        export_coreml(trained_run, out, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == before


def test_stateful_int8_lm_keeps_the_cache_as_state(trained_run, tmp_path):
    import coremltools as ct

    out = tmp_path / "stateful-int8"
    _, lines = export(trained_run, out, compress="int8", stateful=True)
    meta = meta_of(out)
    assert meta["stateful"] is True and meta["compress"] == "int8"
    assert meta["inputs"] == ["tokens", "input_pos"] and meta["outputs"] == ["logits"]
    assert meta["states"] == ["k_0", "v_0", "k_1", "v_1"]
    spec = ct.models.MLModel(str(out / "model.mlpackage"), skip_model_load=True).get_spec()
    for f in spec.description.functions:
        assert [i.name for i in f.input] == ["tokens", "input_pos"]
        assert [o.name for o in f.output] == ["logits"]
        assert [st.name for st in f.state] == meta["states"]
        assert list(f.state[0].type.stateType.arrayType.shape) == [1, 2, 64, 16]
        fn = spec.mlProgram.functions[f.name]
        ops = [op.type for op in fn.block_specializations[fn.opset].operations]
        assert ops.count("write_state") == 4 and "read_state" in ops
        assert ops.count("constexpr_blockwise_shift_scale") >= 5  # the iOS 18 op set's int8 weights
    assert any("write_state 4" in line for line in lines)


def test_stateful_is_for_lms_and_parity_needs_macos(gan_run, tmp_path, lm_fp16):
    from genlab.export.coreml import export_coreml, macos_parity

    with pytest.raises(ExportError, match="stateful"):
        export_coreml(gan_run, tmp_path / "s", stateful=True, log=lambda m: None)
    assert not (tmp_path / "s").exists()
    if sys.platform != "darwin":
        with pytest.raises(ExportError, match="macOS"):
            macos_parity(lm_fp16[0])


def test_missing_coremltools_is_one_line_error(monkeypatch):
    from genlab.export.coreml import import_coremltools

    monkeypatch.setitem(sys.modules, "coremltools", None)  # makes `import coremltools` fail
    with pytest.raises(ExportError, match=r"Core ML export needs the 'coremltools' package: pip install 'genlab\[edge\]'"):
        import_coremltools()

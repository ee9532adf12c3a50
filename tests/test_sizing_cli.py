"""`genlab size`: output formats, comparisons, the plot, errors, the machine probe and --measure."""

from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from genlab.cli import app
from genlab.errors import GenlabError
from genlab.sizing import FAMILIES, SizeOptions, analyse, catalog, count, resolve
from genlab.sizing.families import family_of
from genlab.sizing.hardware import CATALOG, Device, measure_machine
from genlab.sizing.measure import measure
from tests.conftest import GENLAB

runner = CliRunner()


def size(*args: str):
    return runner.invoke(app, ["size", *args, "--no-probe"])


def _reject_constant(name: str):
    raise ValueError(f"JSON has {name}")


def test_json_report():
    res = size("gpt2", "--json", "--context", "512", "--batch", "2")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout, parse_constant=_reject_constant)
    assert r["parameters"]["total"] == 124_439_808
    assert r["memory"]["weights"]["bf16"] == 2 * 124_439_808
    assert r["memory"]["kv_cache"] == 2 * 12 * 768 * 512 * 2 * 2  # K and V, layers, width, tokens, batch, fp16
    assert {d["key"] for d in r["devices"]} == {d.key for d in CATALOG}
    assert r["settings"] == {"context": 512, "batch": 2, "kv_dtype": "fp16", "hardware": "h100", "mfu": 0.4,
                             "lora_rank": 8}


def test_rich_report_shows_every_section():
    res = size("mixtral-8x7b")
    assert res.exit_code == 0, res.output
    for text in ("Parameters", "active per token", "Memory: training", "Compute", "Fits on device", "Q4_K_M",
                 "iphone-16-pro", "raspberry-pi-5"):
        assert text in res.stdout


def test_markdown_comparison():
    res = size("gpt3-xl", "llama-2-7b", "small", "--markdown", "--hardware", "a100-80gb", "--tokens", "1T")
    assert res.exit_code == 0, res.output
    assert "| quantity | gpt3-xl | llama-2-7b | small |" in res.stdout
    assert "training time (a100-80gb)" in res.stdout


def test_list_shows_the_catalogue():
    res = size("--list", "--json")
    names = {row["name"] for row in json.loads(res.stdout)}
    assert {m.name for m in catalog.MODELS} | {"tiny", "small", "base"} == names


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "memory.png"
    res = size("llama-3-8b", "phi-2", "--plot", str(out), "--markdown")
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--kv-dtype", "fp7"], "unknown --kv-dtype 'fp7'"),
    (["--hardware", "tpu"], "unknown hardware 'tpu'"),
    (["--tokens", "lots"], "cannot read 'lots'"),
    (["--mfu", "1.5"], "--mfu must be in"),
])
def test_bad_options_raise_genlab_errors(args, message):
    res = size("gpt2", *args)
    assert isinstance(res.exception, GenlabError) and message in str(res.exception)


def test_errors_print_one_line_and_exit_2():
    proc = subprocess.run([*GENLAB, "size", "gpt-5", "--no-probe"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model 'gpt-5'")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_unsupported_config_is_a_genlab_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    res = size(str(tmp_path))
    assert isinstance(res.exception, GenlabError) and "unsupported model_type 'bert'" in str(res.exception)


def test_registry_holds_every_family_with_its_reader_and_presets():
    presets = {"lm": ("tiny", "small", "base"), "gan": ("gan-tiny", "gan-small", "gan-rgb32", "gan-rgb64"),
               "vae": ("vae-tiny", "vae-small", "vae-rgb32", "vae-rgb64"), "upscale": ("upscale-tiny", "upscale-small")}
    assert {name: f.presets() for name, f in FAMILIES.items()} == presets
    models = {"lm": {"d_model": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "ffn_hidden": 128, "vocab_size": 300,
                     "context": 128}, "gan": {"g_width": 16}, "vae": {"width": 16}, "upscale": {"width": 8}}
    for name, f in FAMILIES.items():
        run = f.read_run({"family": name, "model": models[name]}, "run", "config.json")
        preset = f.from_preset(presets[name][0])
        # Both come back to this family's record, so its analysis and sections size them.
        assert family_of(run.family) is f and family_of(preset.family) is f
        assert f.sections(analyse(preset, SizeOptions(), CATALOG[:1]))


def test_analyse_is_usable_as_a_library():
    r = analyse(resolve("llama-3.1-405b"), SizeOptions(context=8192, tokens=15.6e12))
    assert r["compute"]["six_nd"] == 6 * 405_853_388_800 * 15.6e12
    fits = {d["key"]: d["formats"]["bf16"]["fits"] for d in r["devices"]}
    assert not any(fits.values())  # 0.8 TB of bf16 weights fits on no single device


def test_probe_measures_this_machine():
    d = measure_machine(seconds=0.3)
    assert d.measured and d.key == "this"
    assert d.bandwidth_gbs > 0 and d.flops["fp32"] > 0 and d.usable_gib > 0


FAKE = Device("fake", "fake machine", 8, 8, 10.0, {"fp32": 50e9, "fp16": 50e9}, "test")


def test_measure_tiny_lm_memory_matches_prediction():
    checks = {c.quantity.split(" (")[0]: c for c in measure(resolve("tiny"), FAKE, batch=2, decode_tokens=4,
                                                             train_steps=1)}
    for exact in ("weights", "KV cache", "gradients", "AdamW moments"):
        assert checks[exact].ratio == 1.0, exact
    # Saved activations: genlab's un-fused RMSNorm keeps its normalised input too, and GQA's expanded keys
    # and values are what attention saves, so a little more than the formula's tally.
    act = next(c for q, c in checks.items() if q.startswith("activations"))
    assert 1.0 <= act.ratio < 1.35
    for c in checks.values():
        assert c.measured > 0 and c.predicted > 0


def test_measure_refuses_foreign_architectures():
    with pytest.raises(GenlabError, match="genlab's own"):
        measure(resolve("gpt2"), FAKE)


def test_report_of_a_preset_counts_the_module():
    from genlab.config import lm_config
    from genlab.models.transformer import Transformer

    r = analyse(resolve("small"), SizeOptions(), devices=[FAKE], train_device=FAKE)
    assert r["parameters"]["total"] == count(resolve("small")).total == Transformer(lm_config("small")).num_params()

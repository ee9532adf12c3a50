"""The demo's last step on the tiny test models: quantize, export LM and decoder, print the table."""

import io
import shutil

import pytest
from rich.console import Console

from genlab.demo import _ship_demo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ship_step_quantizes_exports_and_prints_the_runtime_table(trained_run, vae_run, tmp_path):
    pytest.importorskip("onnxruntime")
    text_run, image_run = tmp_path / "lm", tmp_path / "lm-images"
    shutil.copytree(trained_run, text_run)
    shutil.copytree(vae_run, image_run)
    buf = io.StringIO()
    _ship_demo(Console(file=buf, width=400), text_run, image_run)
    shown = buf.getvalue()
    assert (tmp_path / "lm-int8" / "model.safetensors").is_file()
    assert (tmp_path / "lm.onnx").is_file() and (tmp_path / "lm-images-decoder.onnx").is_file()
    assert "max |pixel diff|" in shown and "max |logit diff|" in shown
    for row in ("| pytorch | fp32 |", "| pytorch | dynamic-int8 |", "| onnxruntime | int8 |"):
        assert row in shown
    assert "skipped" not in shown and "failed" not in shown

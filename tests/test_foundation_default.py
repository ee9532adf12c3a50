"""The studio's and the server's default text model: the foundation model's run (runs/smollm2),
imported there on first use when the wheel is installed, else the from-scratch demo LM.

The wheel's file is stood in for by the tiny GGUF (tests/chat_helpers.py), so the import takes a
second; tests/test_foundation.py imports the real file."""

import pytest

from genlab import foundation
from genlab.studio.backends import GenlabTextBackend
from genlab.studio.pipeline import load_studio

from .chat_helpers import tiny_gguf  # noqa: F401  (fixture)

pytest.importorskip("gguf")
pytest.importorskip("transformers")


def test_no_text_run_imports_the_foundation_model_once_and_uses_it(tiny_gguf, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(foundation, "locate", lambda name: tiny_gguf[1])
    monkeypatch.setattr(foundation, "installed", lambda name: True)
    lines = []
    assert foundation.default_text_run(log=lines.append) == foundation.DEFAULT_RUN
    assert any("importing" in line for line in lines)
    assert (tmp_path / "runs" / "smollm2" / "config.json").is_file()
    mtime = (tmp_path / "runs" / "smollm2" / "model.safetensors").stat().st_mtime_ns
    lines.clear()
    assert foundation.default_text_run(log=lines.append) == foundation.DEFAULT_RUN
    assert not lines  # imported once; later calls reuse the run
    assert (tmp_path / "runs" / "smollm2" / "model.safetensors").stat().st_mtime_ns == mtime

    studio = load_studio(device="cpu", semantic_labels=False)
    assert isinstance(studio.text, GenlabTextBackend) and studio.text.chat  # the template came along
    assert studio.text.describe()["run"] == "smollm2"


def test_without_the_wheel_the_default_is_the_demo_lm(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(foundation, "installed", lambda name: False)
    assert foundation.default_text_run(log=lambda m: None) is None
    with pytest.raises(Exception, match="runs/demo"):
        load_studio(device="cpu", semantic_labels=False)

"""Shared fixtures for tests that need a model with a chat template (imported by them; holds no
tests itself): the session's tiny trained run with a template added, written as a Llama-architecture
GGUF by genlab's own writer, and the run `genlab import gguf` makes from that file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from genlab import runs

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def tiny_gguf(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """(the run with the template, its f16 GGUF file)."""
    pytest.importorskip("gguf")
    from genlab.export.gguf import export_gguf

    work = tmp_path_factory.mktemp("gguf-import")
    run = work / "instruct"
    shutil.copytree(trained_run, run)
    cfg = json.loads((run / runs.CONFIG).read_text())
    cfg["chat_template"] = TEMPLATE
    (run / runs.CONFIG).write_text(json.dumps(cfg))
    path = work / "tiny-f16.gguf"
    export_gguf(run, path, "f16", log=lambda m: None)
    return run, path


@pytest.fixture(scope="module")
def chat_run(tiny_gguf, tmp_path_factory) -> Path:
    """The run imported from the tiny GGUF: its chat template came through the file (read-only)."""
    from genlab.export.gguf import import_gguf

    out = tmp_path_factory.mktemp("chat-run") / "tiny-chat"
    import_gguf(tiny_gguf[1], out, log=lambda m: None)
    return out

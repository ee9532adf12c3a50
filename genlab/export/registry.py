"""The export targets: each module below ends with ``EXPORTER = Exporter(...)`` (genlab.export.common).
A new target is one module and one line here; `genlab export` and its help are built from this list."""

from __future__ import annotations

import importlib
from dataclasses import fields
from pathlib import Path

from genlab import runs
from genlab.export.common import OPTION_FLAGS, Exporter, ExportError, ExportOptions, ExportReport

# format name -> the module that declares its EXPORTER (names without imports: the CLI starts fast)
TARGETS = {
    "hf": "genlab.export.hf",
    "onnx": "genlab.export.onnx",
    "gguf": "genlab.export.gguf",
    "executorch": "genlab.export.executorch",
    "tflite": "genlab.export.tflite",
    "coreml": "genlab.export.coreml",
}


def exporters() -> dict[str, Exporter]:
    found = {name: importlib.import_module(module).EXPORTER for name, module in TARGETS.items()}
    assert all(name == e.name for name, e in found.items()), "TARGETS names must match their EXPORTER"
    return found


def exporter(fmt: str | None) -> Exporter:
    if fmt not in TARGETS:
        raise ExportError(f"give --format: one of {', '.join(TARGETS)}" if fmt is None else
                          f"unknown format '{fmt}'; choose one of: {', '.join(TARGETS)}")
    return exporters()[fmt]


def check_options(target: Exporter, opts: ExportOptions) -> None:
    """An option the target does not read is a mistake the user should hear about, not a no-op."""
    defaults = ExportOptions()
    for f in fields(ExportOptions):
        if getattr(opts, f.name) != getattr(defaults, f.name) and f.name not in target.options:
            takers = [e.name for e in exporters().values() if f.name in e.options]
            raise ExportError(f"{OPTION_FLAGS[f.name]} applies to --format {', '.join(takers)}, not {target.name}")


def export(run: str | Path, fmt: str | None, out: str | Path | None = None, opts: ExportOptions | None = None,
           overwrite: bool = False, log=print) -> ExportReport:
    """Export ``run`` to format ``fmt`` (``out`` defaults to a name beside the run)."""
    target = exporter(fmt)
    opts = opts or ExportOptions()
    check_options(target, opts)
    run = Path(run)
    family = runs.read_config(run)["family"]
    if family not in target.families:
        other = ", ".join(e.name for e in exporters().values() if family in e.families)
        takes = "language models" if target.families == ("lm",) else f"{'/'.join(target.families)} runs"
        where = f"export it with --format {other}" if other else f"no export format takes {family} runs yet"
        raise ExportError(f"{target.name} export is for {takes}; '{run}' holds a {family} model ({where})")
    out = Path(out) if out is not None else run.with_name(target.default_name(run, opts))
    return target.export(run, out, opts, overwrite, log)


def formats_table() -> str:
    """Every target with what it makes, the families it takes and its options (for docs and --list)."""
    return "\n".join(f"{e.name:<11} {'/'.join(e.families):<11} {', '.join(OPTION_FLAGS[o] for o in e.options) or '-':<22} "
                     f"{e.summary}" for e in exporters().values())

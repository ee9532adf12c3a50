"""What ``genlab size`` does once its options are parsed: resolve the models, probe this machine,
analyse, and print in the chosen format. genlab/cli.py only builds the options and calls this."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from rich.console import Console

from genlab.errors import GenlabError
from genlab.sizing import report
from genlab.sizing.arch import Architecture
from genlab.sizing.common import Section, SizeOptions, gib, num
from genlab.sizing.families import resolve
from genlab.sizing.hardware import CATALOG, lookup, measure_machine

FORMATS = ("rich", "json", "markdown")


def _clean(x):
    """JSON without Infinity/NaN (a device that cannot run a precision has no time)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _measure_section(checks: list[dict], machine_name: str) -> Section:
    def show(v: float, unit: str) -> str:
        return gib(v) if unit == "bytes" else f"{num(v)} {unit}"

    rows = [[c["quantity"], show(c["predicted"], c["unit"]), show(c["measured"], c["unit"]), f"{c['ratio']:.2f}",
             c["how"]] for c in checks]
    return Section(f"Predicted vs measured on {machine_name}", ["quantity", "predicted", "measured", "ratio",
                                                                "measured by"], rows,
                   "fp32 throughout; speeds are roofline bounds from this machine's measured bandwidth and fp32 "
                   "matmul peak; ratio = measured / predicted (see docs/sizing.md)")


def _emit(fmt: str, secs: list[Section], title: str, console: Console) -> None:
    if fmt == "markdown":
        sys.stdout.write(report.to_markdown(secs, title) + "\n")
    else:
        console.print(report.to_rich(secs, title))


def size_command(models: list[str], opts: SizeOptions, *, list_models: bool = False, fmt: str = "rich",
                 plot: Path | None = None, measure: bool = False, probe: bool = True,
                 console: Console | None = None, log: Console | None = None) -> list[dict]:
    """Run ``genlab size``; returns the analyses (what ``--json`` prints)."""
    console = console or Console()
    log = log or Console(stderr=True)
    if fmt not in FORMATS:
        raise GenlabError(f"unknown output format '{fmt}'")
    if list_models:
        sec = report.catalogue_section()
        if fmt == "json":
            sys.stdout.write(json.dumps([dict(zip(sec.headers, r, strict=True)) for r in sec.rows], indent=2) + "\n")
        else:
            _emit(fmt, [sec], "", console)
        return []
    if not models:
        raise GenlabError("give a model to size: a run, a config.json or HF model folder, a catalogue name "
                          "(see `genlab size --list`) or a preset (tiny, small, base)")
    opts.validate()
    archs = [resolve(m) for m in models]
    images = [a.name for a in archs if not isinstance(a, Architecture)]
    if images and (measure or plot is not None):
        raise GenlabError(f"--measure and --plot size Transformer LMs only; {', '.join(images)} "
                          "is a GAN/VAE or upscale model (leave the option out)")
    machine = measure_machine() if (probe or measure) else None
    devices = [*CATALOG, machine] if machine else list(CATALOG)
    train_device = lookup(opts.hardware, machine)
    reports = [report.analyse(a, opts, devices, train_device) for a in archs]
    if measure:
        from genlab.sizing.measure import measure as run_measure

        for a, r in zip(archs, reports, strict=True):
            log.print(f"measuring {a.name} on this machine (decode, prefill, training steps)...")
            r["measure"] = [c.as_dict() for c in run_measure(a, machine, batch=opts.batch)]
    if plot is not None:
        log.print(f"wrote {report.plot_memory(archs, opts, devices, plot)}")
    if fmt == "json":
        sys.stdout.write(json.dumps(_clean(reports[0] if len(reports) == 1 else reports), indent=2) + "\n")
    elif len(reports) == 1:
        r = reports[0]
        secs = report.sections(r)
        if "measure" in r:
            secs.append(_measure_section(r["measure"], machine.name))
        _emit(fmt, secs, report.title_of(r), console)
    else:
        secs = [report.compare_section(reports)]
        secs += [_measure_section(r["measure"], f"{machine.name}: {r['model']['name']}")
                 for r in reports if "measure" in r]
        _emit(fmt, secs, "", console)
    return reports

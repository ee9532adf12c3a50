"""`genlab size`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import err, out


def size_cmd(
    models: Annotated[list[str], typer.Argument(help="Runs, config.json files or HF model folders, catalogue names "
                                                     "(--list) or presets; several are compared side by side.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the catalogue of named architectures.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print Markdown tables.")] = False,
    plot: Annotated[Path, typer.Option(help="Write memory against context length to this PNG.")] = None,
    context: Annotated[int, typer.Option(help="Context length in tokens (default: the model's).")] = None,
    batch: Annotated[int, typer.Option(help="Sequences decoded (KV cache) or trained (micro-batch) at once.")] = 1,
    kv_dtype: Annotated[str, typer.Option(help="KV cache type: fp32, fp16, bf16, fp8, q8_0, q4_0.")] = "fp16",
    hardware: Annotated[str, typer.Option(help="Device for training time and comparisons (or 'this').")] = "h100",
    tokens: Annotated[str, typer.Option(help="Training tokens D, e.g. 2e12 or 1.4T (default: Chinchilla-optimal).")] = None,
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilisation assumed for training time.")] = 0.4,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank for the LoRA/QLoRA training rows.")] = 8,
    measure: Annotated[bool, typer.Option("--measure", help="Run decode and training bursts of a genlab LM here; "
                                                            "print predicted against measured.")] = False,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Measure this machine (1-2 s) for the device table.")] = True,
):
    """How big a model is: parameters, memory, FLOPs, speed bounds and which devices it fits on."""
    from genlab.sizing.cli import size_command
    from genlab.sizing.report import SizeOptions, parse_count

    opts = SizeOptions(context=context, batch=batch, kv_dtype=kv_dtype, hardware=hardware,
                       tokens=parse_count(tokens) if tokens else None, mfu=mfu,
                       lora_rank=lora_rank)
    fmt = "json" if as_json else "markdown" if markdown else "rich"
    size_command(models or [], opts, list_models=list_, fmt=fmt, plot=plot, measure=measure, probe=probe,
                 console=out, log=err)

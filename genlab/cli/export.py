"""`genlab export` and `genlab import hf`: models out of genlab and into it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import log, out
from genlab.cli.options import OverwriteOpt
from genlab.errors import GenlabError

import_app = typer.Typer(no_args_is_help=True, help="Bring a model from another format into a genlab run.")

# format -> families it takes; image models export their generator (GAN) or decoder (VAE)
EXPORT_FORMATS = {"hf": ("lm",), "onnx": ("lm", "gan", "vae"), "gguf": ("lm",), "executorch": ("lm", "gan", "vae"),
                  "tflite": ("lm", "gan", "vae"), "coreml": ("lm", "gan", "vae")}
INT8_FORMATS = ("onnx", "executorch", "tflite")


def _default_export_path(run: Path, fmt: str, int8: bool, gguf_type: str, compress: str | None) -> Path:
    suffix = "-int8" if int8 else ""
    names = {"hf": f"{run.name}-hf", "onnx": f"{run.name}{suffix}.onnx", "gguf": f"{run.name}-{gguf_type}.gguf",
             "executorch": f"{run.name}-executorch{suffix}", "tflite": f"{run.name}-tflite{suffix}",
             "coreml": f"{run.name}-coreml{'-' + compress if compress else ''}"}
    return run.with_name(names[fmt])


def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained (or quantized) LM, GAN or VAE.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="hf, onnx, gguf, executorch, tflite or coreml "
                                                            "(see docs/export.md).")] = None,
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
):
    """Export a model; a parity check against PyTorch runs at the end and prints the largest difference."""
    if fmt not in EXPORT_FORMATS:
        raise GenlabError(f"give --format: one of {', '.join(EXPORT_FORMATS)}" if fmt is None else
                          f"unknown format '{fmt}'; choose one of: {', '.join(EXPORT_FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise GenlabError(f"--int8 applies to --format {', '.join(INT8_FORMATS)} "
                          f"(gguf: --type q8_0; coreml: --compress int8)")
    if (compress or stateful) and fmt != "coreml":
        raise GenlabError(f"{'--compress' if compress else '--stateful'} applies to --format coreml only")
    from genlab.runs import read_config

    family = read_config(run)["family"]
    if family not in EXPORT_FORMATS[fmt]:
        other = ", ".join(f for f, fams in EXPORT_FORMATS.items() if family in fams)
        raise GenlabError(f"{fmt} export is for language models; '{run}' holds a {family} model "
                          f"(export it with --format {other})")
    target = out_path or _default_export_path(run, fmt, int8, gguf_type, compress)
    if fmt == "hf":
        from genlab.export.hf import export_hf

        export_hf(run, target, overwrite=overwrite, log=log)
    elif fmt == "onnx":
        from genlab.export.onnx import export_onnx

        export_onnx(run, target, int8=int8, overwrite=overwrite, log=log)
    elif fmt == "gguf":
        from genlab.export.gguf import export_gguf

        export_gguf(run, target, gguf_type, overwrite=overwrite, log=log)
    elif fmt == "executorch":
        from genlab.export.executorch import export_executorch

        export_executorch(run, target, int8=int8, overwrite=overwrite, log=log)
    elif fmt == "tflite":
        from genlab.export.tflite import export_tflite

        export_tflite(run, target, int8=int8, overwrite=overwrite, log=log)
    else:
        from genlab.export.coreml import export_coreml

        export_coreml(run, target, compress=compress, stateful=stateful, overwrite=overwrite, log=log)
    out.print(f"{fmt} -> {target}")


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

    if out_dir is None:
        raise GenlabError("give the run directory to create: --out RUN")
    import_hf(src, out_dir, context=context, overwrite=overwrite, log=log)
    out.print(f"imported {src} -> {out_dir}")

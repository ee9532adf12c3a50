"""`genlab data prepare` and `genlab data draw`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import err, out
from genlab.cli.music import is_music, prepare_music_cmd
from genlab.cli.options import DataOpt, TokOpt, VocabOpt

app = typer.Typer(no_args_is_help=True, help="Prepare data sets ahead of training.")


@app.command("prepare")
def data_prepare_cmd(data: DataOpt = None, tokenizer: TokOpt = "bpe", vocab_size: VocabOpt = 512,
                     val_fraction: Annotated[float, typer.Option()] = 0.1,
                     music: Annotated[bool, typer.Option("--music", help="The data is music (MIDI/MusicXML, or "
                                                         "'chorales'); found out by itself otherwise.")] = False,
                     test_fraction: Annotated[float, typer.Option(help="Music: share of pieces held out for testing.")] = 0.1):
    """Tokenize a corpus into cached train/validation token files (what `train lm` and `train music` do first)."""
    from genlab.config import DataConfig
    from genlab.data.prepare import prepare

    if music or is_music(data or []):
        return prepare_music_cmd(data or ["chorales"], val_fraction, test_fraction)
    p = prepare(DataConfig(corpus=data or ["fortunes"], tokenizer=tokenizer, vocab_size=vocab_size,
                           val_fraction=val_fraction), log=err.print)
    out.print_json(json.dumps({"cache": str(p.root), **p.meta}))


@app.command("draw")
def data_draw_cmd(out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (one sub-folder per class).")],
                  size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
                  per_class: Annotated[int, typer.Option(help="Images per class (eight classes).")] = 1000,
                  seed: Annotated[int, typer.Option(help="Seed of the drawing: the same seed draws the same set.")] = 0,
                  overwrite: Annotated[bool, typer.Option(help="Replace an existing non-empty folder.")] = False):
    """Draw a coloured data set (four shapes times two hue bands, eight classes, on gradient backgrounds) as a
    folder of PNGs: the offline data the RGB presets (rgb32, rgb64) are measured on."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from genlab.data.drawn import write_drawn_folder

    with Progress(TextColumn("[bold blue]draw"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("images", total=None)
        meta = write_drawn_folder(out_dir, size=size, per_class=per_class, seed=seed, overwrite=overwrite,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
    out.print_json(json.dumps(meta))

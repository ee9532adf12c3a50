"""`genlab data prepare`."""

from __future__ import annotations

import json
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

"""`genlab chat`: talk to a language model in the terminal, through its chat template."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import err
from genlab.cli.options import DeviceOpt, FastOpt
from genlab.cli.safety import WatermarkOpt, text_watermark

HELP = "/reset starts over, /exit (or Ctrl-D) leaves"


def chat_cmd(
    run: Annotated[Path, typer.Argument(help="Any LM genlab opens: a run (e.g. `genlab import smollm2`), an export, ...")],
    message: Annotated[str, typer.Option("--message", "-m", help="Answer this one message and exit (scripts).")] = None,
    system: Annotated[str, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest reply, in tokens.")] = 256,
    temperature: float = 0.7,
    top_k: int = None,
    top_p: float = 0.9,
    repetition_penalty: float = 1.1,
    seed: int = None,
    device: DeviceOpt = "auto",
    fast: FastOpt = True,
    watermark: WatermarkOpt = None,
):
    """Chat with a model: streaming replies, multi-turn history within its context."""
    from genlab.generate.chat import Conversation
    from genlab.generate.text import clean_text, load_lm

    lm = load_lm(run, device=device, fast=fast)
    talk = Conversation(lm, clean_text(system) if system else None)
    sampling = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                    repetition_penalty=repetition_penalty, seed=seed, watermark=text_watermark(watermark))
    if not lm.chat_template:
        err.print("[yellow]note[/]: this model has no chat template; it continues a plain User/Assistant transcript")

    def answer(text: str) -> None:
        before = talk.dropped
        for piece in talk.reply(clean_text(text), **sampling):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if talk.dropped > before:
            err.print(f"[yellow]note[/]: the conversation outgrew the context of {lm.config.context} tokens; "
                      f"dropped the oldest {talk.dropped - before} turn(s)")

    if message is not None:
        answer(message)
        return
    err.print(f"chatting with {run} ({HELP})")
    while True:
        try:
            text = input("> ")
        except EOFError:
            break
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            talk.reset()
            err.print("(new conversation)")
            continue
        if text.strip():
            answer(text)

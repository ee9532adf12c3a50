"""`genlab demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo_cmd(
    minutes: Annotated[float, typer.Option(help="LoRA fine-tuning budget of the foundation model (without its "
                                                "wheel: the from-scratch LM's training budget).")] = 2.0,
    image_minutes: Annotated[float, typer.Option(help="Training budget of the image GAN.")] = 3.0,
    scratch_minutes: Annotated[float, typer.Option(help="Budget of the small LM trained from scratch for the "
                                                        "shrink-and-ship step (0: skip both).")] = 1.0,
    studio: Annotated[bool, typer.Option("--studio/--no-studio", help="Make a studio bundle.")] = True,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The LoRA run; the others sit beside it.")] = Path("runs/demo"),
):
    """The foundation model (import, chat, LoRA on fortunes), a VAE on Fashion-MNIST, a studio bundle, shrink and ship."""
    from genlab.demo import run_demo

    run_demo(out_dir, minutes, image_minutes, studio, scratch_minutes=scratch_minutes)

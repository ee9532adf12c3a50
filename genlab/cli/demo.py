"""`genlab demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo_cmd(
    minutes: Annotated[float, typer.Option(help="LM training budget.")] = 3.0,
    image_minutes: Annotated[float, typer.Option(help="VAE training budget.")] = 1.5,
    studio: Annotated[bool, typer.Option("--studio/--no-studio", help="End with a studio bundle.")] = True,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The LM run; the others sit beside it.")] = Path("runs/demo"),
):
    """Train a small LM on fortunes and a VAE on Fashion-MNIST, generate, then make a studio bundle."""
    from genlab.demo import run_demo

    run_demo(out_dir, minutes, image_minutes, studio)

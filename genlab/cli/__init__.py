"""The `genlab` command: a thin Typer layer that builds configs and calls the library.

One module per verb area; each holds its commands (and sub-apps) and this file registers them, in the
order `genlab --help` lists them:

    train.py     train lm | gan | vae | upscale | music
    generate.py  generate text | image | music, animate, reconstruct, upscale
    music.py     train music, generate music, harmonize (registered by train.py, generate.py and here)
    chat.py      chat (interactive, or --message once)
    finetune.py  finetune (LoRA adapters or full), finetune --merge
    eval.py      eval, audit [bias | memorization], augment, classifier train
    check.py     check (the studio's quality scores for any text or image file)
    data.py      data prepare
    shrink.py    quantize, distill
    export.py    export, import hf
    serve.py     serve, studio make | bench, speak
    safety.py    detect, keys init | show
    size.py      size
    bench.py     bench train-lm | generate | runtimes | train-gan | train-vae
    demo.py      demo
    options.py   the flags several verbs share, and the TrainConfig built from the training flags
    common.py    the consoles and small printing helpers

Errors a user can cause print one line (``error: ...``) and exit with code 2; an interrupted training
exits with 130.
"""

from __future__ import annotations

import sys

import typer

from genlab.cli import bench, data, generate, train
from genlab.cli.chat import chat_cmd
from genlab.cli.check import check_cmd
from genlab.cli.common import err
from genlab.cli.demo import demo_cmd
from genlab.cli.eval import audit_app, augment_cmd, classifier_app, eval_cmd
from genlab.cli.export import export_cmd, import_app
from genlab.cli.finetune import finetune_cmd
from genlab.cli.generate import animate_cmd, reconstruct_cmd, upscale_cmd
from genlab.cli.music import harmonize_cmd
from genlab.cli.safety import detect_cmd, keys_app
from genlab.cli.serve import serve_cmd, speak_cmd, studio_app
from genlab.cli.shrink import distill_cmd, quantize_cmd
from genlab.cli.size import size_cmd
from genlab.errors import GenlabError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="genlab: train, size, shrink, ship and serve generative models.")

for name, command in [
    ("animate", animate_cmd), ("reconstruct", reconstruct_cmd), ("upscale", upscale_cmd),
    ("eval", eval_cmd), ("augment", augment_cmd), ("check", check_cmd),
    ("speak", speak_cmd), ("demo", demo_cmd), ("size", size_cmd),
    ("quantize", quantize_cmd), ("distill", distill_cmd), ("finetune", finetune_cmd),
    ("export", export_cmd), ("serve", serve_cmd), ("chat", chat_cmd), ("detect", detect_cmd),
    ("harmonize", harmonize_cmd),
]:
    app.command(name)(command)

for name, group in [
    ("train", train.app), ("generate", generate.app), ("data", data.app), ("bench", bench.app),
    ("classifier", classifier_app), ("studio", studio_app), ("import", import_app), ("audit", audit_app),
    ("keys", keys_app),
]:
    app.add_typer(group, name=name)


def main() -> None:
    try:
        app()
    except GenlabError as e:
        # genlab.train.trainer.Interrupted carries exit_code 130 (read here so that starting the CLI
        # does not import torch): the training stopped after saving a checkpoint.
        code = getattr(e, "exit_code", 2)
        if code == 130:
            err.print(f"[yellow]interrupted[/]: {e}")
        else:
            err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]

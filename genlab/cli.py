"""The `genlab` command: a thin Typer layer that builds configs and calls the library.

Errors a user can cause print one line (``error: ...``) and exit with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from genlab.errors import GenlabError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="genlab: train, size, shrink, ship and serve generative models.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model (lm; gan and vae arrive with the image models).")
generate_app = typer.Typer(no_args_is_help=True, help="Generate with a trained run.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare data sets ahead of training.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure speed; results go to BENCHMARKS.md.")
app.add_typer(train_app, name="train")
app.add_typer(generate_app, name="generate")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)

DataOpt = Annotated[list[str], typer.Option("--data", "-d", help="Corpus: files, folders, globs, 'fortunes' or 'pystdlib' (repeatable).")]
TokOpt = Annotated[str, typer.Option(help="Tokenizer: bpe (byte-level BPE trained on the corpus) or char.")]
VocabOpt = Annotated[int, typer.Option(help="BPE vocabulary size.")]


@train_app.command("lm")
def train_lm_cmd(
    data: DataOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = None,
    preset: Annotated[str, typer.Option(help="Model preset: tiny, small or base.")] = "tiny",
    tokenizer: TokOpt = "bpe",
    vocab_size: VocabOpt = None,
    steps: Annotated[int, typer.Option(help="Budget in optimizer steps.")] = None,
    minutes: Annotated[float, typer.Option(help="Budget in wall-clock minutes (whichever ends first).")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per micro-batch (per process).")] = None,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = None,
    warmup: Annotated[int, typer.Option(help="Linear warmup steps.")] = None,
    weight_decay: float = None,
    grad_clip: float = None,
    eval_every: int = None,
    eval_batches: int = None,
    checkpoint_every: int = None,
    log_every: int = None,
    seed: int = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (autocast).")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    context: Annotated[int, typer.Option(help="Context length (tokens).")] = None,
    n_layer: int = None,
    n_head: int = None,
    n_kv_head: Annotated[int, typer.Option(help="Key/value heads (grouped-query attention).")] = None,
    d_model: int = None,
    ffn_hidden: int = None,
    rope_theta: float = None,
    tie_embeddings: Annotated[bool, typer.Option("--tie-embeddings/--no-tie-embeddings")] = None,
    dropout: float = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly where it stopped.")] = False,
    init_from: Annotated[Path, typer.Option(help="Start from this run's weights and tokenizer (fine-tuning).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
):
    """Train (or fine-tune, or resume) a Llama-style language model."""
    from genlab.config import LM_PRESETS, DataConfig, train_config
    from genlab.train.lm import LMTrainSpec, train_lm

    if preset not in LM_PRESETS:
        raise GenlabError(f"unknown preset '{preset}'; choose one of: {', '.join(LM_PRESETS)}")
    run = out_dir or Path("runs") / f"lm-{preset}"
    tcfg = train_config(
        preset, steps=steps, minutes=minutes, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_steps=warmup, weight_decay=weight_decay, grad_clip=grad_clip, eval_every=eval_every,
        eval_batches=eval_batches, checkpoint_every=checkpoint_every, log_every=log_every, seed=seed,
        device=device, dtype=dtype, compile=compile,
    )
    dcfg = DataConfig(corpus=data or ["fortunes"], tokenizer=tokenizer,
                      vocab_size=vocab_size or LM_PRESETS[preset]["vocab_size"])
    overrides = dict(context=context, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, d_model=d_model,
                     ffn_hidden=ffn_hidden, rope_theta=rope_theta, tie_embeddings=tie_embeddings, dropout=dropout)
    result = train_lm(LMTrainSpec(run=run, data=dcfg, preset=preset, train=tcfg, resume=resume,
                                  init_from=init_from, overwrite=overwrite, quiet=quiet,
                                  model_overrides={k: v for k, v in overrides.items() if v is not None}))
    if not quiet:
        val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
        err.print(f"[green]done[/]: step {result.step}, train loss {result.train_loss:.4f}"
                  f"{', val ' + val if val else ''} -> {run}")


@data_app.command("prepare")
def data_prepare_cmd(data: DataOpt = None, tokenizer: TokOpt = "bpe", vocab_size: VocabOpt = 512,
                     val_fraction: float = 0.1):
    """Tokenize a corpus into cached train/validation token files (what `train lm` does first)."""
    from genlab.config import DataConfig
    from genlab.data.prepare import prepare

    p = prepare(DataConfig(corpus=data or ["fortunes"], tokenizer=tokenizer, vocab_size=vocab_size,
                           val_fraction=val_fraction), log=err.print)
    out.print_json(json.dumps({"cache": str(p.root), **p.meta}))


@generate_app.command("text")
def generate_text_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory of a trained LM.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p")] = "",
    max_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = None,
    top_p: float = None,
    repetition_penalty: float = 1.0,
    stop: Annotated[list[str], typer.Option(help="Stop when this string appears (repeatable).")] = None,
    seed: int = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they come.")] = True,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Use the KV cache.")] = True,
    device: str = "auto",
):
    """Generate text from a prompt."""
    from genlab.generate.text import load_lm

    lm = load_lm(run, device=device)
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=repetition_penalty, stop=tuple(stop or ()), seed=seed, use_cache=cache)
    pieces = lm.stream(prompt, **kwargs)
    first = next(pieces, "")
    if lm.info.truncated:
        err.print(f"[yellow]note[/]: the prompt was {lm.info.prompt_tokens} tokens; kept the last "
                  f"{lm.info.prompt_tokens - lm.info.truncated} to fit the context of {lm.config.context}")
    sys.stdout.write(prompt)
    if stream:
        sys.stdout.write(first)
        sys.stdout.flush()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    else:
        sys.stdout.write(first + "".join(pieces))
    sys.stdout.write("\n")


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Held-out text (default: the run's validation split).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Score at most this many tokens.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: str = "auto",
):
    """Perplexity and bits per byte of an LM on held-out text."""
    from genlab.evaluate.perplexity import evaluate_lm

    res = evaluate_lm(run, data, max_tokens=max_tokens, device=device)
    if as_json:
        out.print_json(json.dumps(res))
    else:
        out.print(f"{res['data']}: {res['tokens']:,} tokens, loss {res['loss']:.4f}, "
                  f"perplexity {res['perplexity']:.2f}, bits/byte {res['bits_per_byte']:.4f}")


@bench_app.command("train-lm")
def bench_train_lm_cmd(
    steps: Annotated[int, typer.Option(help="Timed steps per config (after warm-up steps).")] = 10,
    configs: Annotated[str, typer.Option(help="Comma list of: tiny, small, nanogpt-cpu, base.")] = "tiny,small,nanogpt-cpu",
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file.")] = Path("BENCHMARKS.md"),
    no_write: Annotated[bool, typer.Option("--no-write")] = False,
):
    """Training throughput (tokens/s) and model FLOPs utilisation against this machine's measured matmul peak."""
    from genlab.bench import bench_train_lm

    bench_train_lm([c.strip() for c in configs.split(",") if c.strip()], steps, None if no_write else write)


@bench_app.command("generate")
def bench_generate_cmd(
    lengths: Annotated[str, typer.Option(help="New-token counts.")] = "64,256,512",
    preset: str = "small",
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file.")] = Path("BENCHMARKS.md"),
    no_write: Annotated[bool, typer.Option("--no-write")] = False,
):
    """Decode tokens/s with and without the KV cache."""
    from genlab.bench import bench_generate

    bench_generate([int(x) for x in lengths.split(",")], preset, None if no_write else write)


@app.command("demo")
def demo_cmd(
    minutes: Annotated[float, typer.Option(help="Training budget.")] = 3.0,
    out_dir: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/demo"),
):
    """Train a small LM on the embedded fortunes corpus, then generate from it."""
    from genlab.demo import run_demo

    run_demo(out_dir, minutes)


def main() -> None:
    from genlab.train.trainer import Interrupted

    try:
        app()
    except Interrupted as e:
        err.print(f"[yellow]interrupted[/]: {e}")
        sys.exit(130)
    except GenlabError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

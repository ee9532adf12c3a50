"""`genlab bench train-lm|generate|runtimes|decode|serve|finetune|transfer|chat|train-gan|train-vae|watermark|quality`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import comma_ints, comma_list, err, out
from genlab.cli.options import NoWriteOpt, WriteOpt

app = typer.Typer(no_args_is_help=True, help="Measure speed; results go to BENCHMARKS.md.")

ImgBenchPresets = Annotated[str, typer.Option(help="Comma list of presets: tiny, small.")]
ImgBenchSteps = Annotated[int, typer.Option(help="Timed steps per preset (after warm-up steps).")]
BENCHMARKS = Path("BENCHMARKS.md")


@app.command("train-lm")
def bench_train_lm_cmd(
    steps: Annotated[int, typer.Option(help="Timed steps per config (after warm-up steps).")] = 10,
    configs: Annotated[str, typer.Option(help="Comma list of: tiny, small, nanogpt-cpu, base.")] = "tiny,small,nanogpt-cpu",
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """Training throughput (tokens/s) and model FLOPs utilisation against this machine's measured matmul peak."""
    from genlab.bench import bench_train_lm

    bench_train_lm(comma_list(configs), steps, None if no_write else write)


@app.command("generate")
def bench_generate_cmd(
    lengths: Annotated[str, typer.Option(help="New-token counts.")] = "64,256,512",
    preset: Annotated[str, typer.Option()] = "small",
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """Decode tokens/s with and without the KV cache."""
    from genlab.bench import bench_generate

    bench_generate(comma_ints(lengths, "--lengths", "numbers separated by commas"), preset,
                   None if no_write else write)


@app.command("runtimes")
def bench_runtimes_cmd(
    run: Annotated[Path, typer.Argument(help="LM run (float) to quantize, export and measure.")],
    only: Annotated[str, typer.Option(help="Comma list of runtimes (pytorch, onnxruntime, executorch, litert, "
                                           "llama.cpp, transformers) or runtime:precision; default all.")] = "",
    prompt_tokens: int = 64,
    decode_tokens: int = 128,
    work: Annotated[Path, typer.Option(help="Folder for the exported variants (reused between runs).")] = None,
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """Every runtime and precision side by side: size, load, prefill, decode tok/s, memory, parity."""
    from genlab.bench import append_section
    from genlab.bench_runtimes import bench_runtimes, markdown_table

    rows = bench_runtimes(run, work, prompt_tokens, decode_tokens, only=comma_list(only) or None,
                          log=lambda m: err.print(m, markup=False, highlight=False))
    table = markdown_table(rows)
    out.print(table, markup=False, highlight=False, soft_wrap=True)
    if not no_write:
        cmd = f"genlab bench runtimes {run}" + (f" --only {only}" if only else "")
        append_section(write, f"Runtimes for {run.name} (`bench runtimes`)", cmd, table,
                       f"Prompt {prompt_tokens} validation tokens, then {decode_tokens} one-token decode steps "
                       f"(decode tok/s = 1 / median step time); each row measured in its own process; parity "
                       f"against PyTorch eager fp32; greedy agreement = identical leading greedy tokens; "
                       f"perplexity on the first 4,096 validation tokens.")


def _print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; Markdown when piped (eleven columns do not fit 80 characters)."""
    from genlab.bench import markdown_table, show_table

    if out.is_terminal:
        show_table(title, headers, rows)
    else:
        out.print(markdown_table(headers, rows), markup=False, highlight=False, soft_wrap=True)


@app.command("decode")
def bench_decode_cmd(
    run: Annotated[Path, typer.Argument(help="LM run (float) to measure; quantized and exported variants are made from it.")],
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length for the time to first token.")] = 512,
    new_tokens: Annotated[int, typer.Option(help="Greedy tokens decoded per timed generation.")] = 128,
    threads: Annotated[int, typer.Option(help="CPU threads for every row (default: PyTorch's).")] = None,
    only: Annotated[str, typer.Option(help="Comma list of runtimes (genlab, transformers, llama.cpp) or "
                                           "runtime:precision (genlab:int8, llama.cpp:q8_0, llama.cpp:original); "
                                           "default all.")] = "",
    work: Annotated[Path, typer.Option(help="Folder for the quantized and exported variants (reused between runs).")] = None,
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """Batch-1 greedy decode: genlab (fp32/bf16/int8/int4, fast and eager) vs transformers vs llama.cpp."""
    import shlex
    import sys

    from genlab.bench import append_section, markdown_table
    from genlab.bench_decode import HEADERS, bench_decode, notes_text, table_rows

    bench = bench_decode(run, prompt_tokens, new_tokens, threads, work, comma_list(only) or None,
                         log=lambda m: err.print(m, markup=False, highlight=False))
    rows = table_rows(bench)
    _print_table(f"decode: {run}", HEADERS, rows)
    append_section(None if no_write else write, f"Decode speed for {run.name} (`bench decode`)",
                   "genlab " + shlex.join(sys.argv[1:]), markdown_table(HEADERS, rows), notes_text(bench))


@app.command("serve")
def bench_serve_cmd(
    run: Annotated[Path, typer.Argument(help="LM run that `genlab serve` serves (llama.cpp gets the GGUF of the same model).")],
    clients: Annotated[str, typer.Option(help="Concurrent streaming clients per level (1 is always measured).")] = "1,4,16,32",
    requests: Annotated[int, typer.Option(help="Requests per client per level, sent one after another.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Tokens per request.")] = 64,
    threads: Annotated[int, typer.Option(help="CPU threads of each server (default: PyTorch's).")] = None,
    llama: Annotated[bool, typer.Option("--llama/--no-llama", help="Also measure llama.cpp's server when installed.")] = True,
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """`genlab serve` (dynamic batching) vs llama.cpp's OpenAI server: tok/s, latency and TTFT per client level."""
    import shlex
    import sys

    from genlab.bench import append_section, markdown_table
    from genlab.bench_serve import HEADERS, bench_serve, table_rows
    from genlab.errors import GenlabError

    try:
        levels = comma_ints(clients, "--clients", "positive numbers separated by commas, e.g. 1,4,16")
    except GenlabError:
        levels = []
    if not levels or min(levels) < 1:
        raise GenlabError(f"--clients must be positive numbers separated by commas, e.g. 1,4,16 (got '{clients}')")
    rows, what = bench_serve(run, levels, requests, max_tokens, threads, llama,
                             log=lambda m: err.print(m, markup=False, highlight=False))
    table = table_rows(rows)
    _print_table(f"serve: {run}", HEADERS, table)
    append_section(None if no_write else write, f"Serving {run.name} under load (`bench serve`)",
                   "genlab " + shlex.join(sys.argv[1:]), markdown_table(HEADERS, table),
                   f"{what}. Each level: that many clients, each sending {requests} streaming chat completions "
                   f"of {max_tokens} tokens in sequence (genlab: `ignore_eos`; llama.cpp: `min_tokens`, its tokens "
                   "counted as streamed chunks with text), greedy, both servers in their own process on 127.0.0.1. "
                   "Per-client tok/s = mean of each request's tokens / its latency; TTFT = request sent to first "
                   "text chunk; vs 1 client = total tok/s over the same server's one-client level.")


@app.command("finetune")
def bench_finetune_cmd(
    base: Annotated[Path, typer.Argument(help="LM run to fine-tune (e.g. `genlab import smollm2`'s).")],
    corpus: Annotated[str, typer.Option(help="Text to fine-tune on (a corpus spec, as --data takes).")] = "fortunes",
    methods: Annotated[str, typer.Option(help="Comma list of: lora, qlora, full.")] = "lora,qlora,full",
    steps: Annotated[int, typer.Option(help="Optimizer steps per method.")] = 6,
    batch_size: Annotated[int, typer.Option(help="Micro-batch (sequences per step).")] = 4,
    context: Annotated[int, typer.Option(help="Training window in tokens (default: the run's context).")] = None,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """Peak memory (RSS) and tokens/s of LoRA, QLoRA and full fine-tuning, next to `genlab size`'s prediction."""
    from genlab.bench_finetune import bench_finetune

    bench_finetune(base, corpus, comma_list(methods), steps, batch_size, context, lora_rank,
                   None if no_write else write)


@app.command("transfer")
def bench_transfer_cmd(
    base: Annotated[Path, typer.Argument(help="The pretrained LM run (e.g. `genlab import smollm2`'s).")],
    corpora: Annotated[str, typer.Option(help="Comma list of held-out domains (corpus specs).")] = "fortunes,pystdlib",
    minutes: Annotated[float, typer.Option(help="Wall-clock training budget of every run.")] = 10.0,
    methods: Annotated[str, typer.Option(help="Comma list of fine-tuning methods: lora, qlora, full.")] = "lora,qlora,full",
    batch_size: Annotated[int, typer.Option(help="Micro-batch (sequences per step).")] = 4,
    context: Annotated[int, typer.Option(help="Training and evaluation window in tokens.")] = 256,
    eval_bytes: Annotated[int, typer.Option(help="Validation text scored per domain, in bytes.")] = 16_000,
    scratch: Annotated[str, typer.Option(help="Preset trained from scratch for comparison.")] = "small",
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """Transfer learning: the base as it is, fine-tuned (each method) and a preset from scratch, same budget; bits/byte."""
    from genlab.bench_finetune import bench_transfer

    bench_transfer(base, comma_list(corpora), minutes, comma_list(methods), batch_size, context, eval_bytes,
                   scratch, None if no_write else write)


@app.command("chat")
def bench_chat_cmd(
    models: Annotated[list[Path], typer.Argument(help="Runs (or anything genlab opens) with a chat template.")],
    max_tokens: Annotated[int, typer.Option(help="New tokens per answer at most.")] = 60,
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """Greedy answers of several models to the same five prompts, side by side (e.g. base, LoRA, merged)."""
    from genlab.bench_finetune import bench_chat

    bench_chat(models, max_tokens=max_tokens, write=None if no_write else write)


@app.command("train-gan")
def bench_train_gan_cmd(presets: ImgBenchPresets = "tiny,small", steps: ImgBenchSteps = 20,
                        write: WriteOpt = BENCHMARKS, no_write: NoWriteOpt = False):
    """GAN training images/s and wall time on Fashion-MNIST."""
    from genlab.bench import bench_train_image

    bench_train_image("gan", comma_list(presets), steps, None if no_write else write)


@app.command("train-vae")
def bench_train_vae_cmd(presets: ImgBenchPresets = "tiny,small", steps: ImgBenchSteps = 20,
                        write: WriteOpt = BENCHMARKS, no_write: NoWriteOpt = False):
    """VAE training images/s and wall time on Fashion-MNIST."""
    from genlab.bench import bench_train_image

    bench_train_image("vae", comma_list(presets), steps, None if no_write else write)


@app.command("watermark")
def bench_watermark_cmd(
    run: Annotated[Path, typer.Option(help="LM run (default: the foundation model, runs/smollm2).")] = None,
    image_run: Annotated[Path, typer.Option(help="GAN/VAE run for the pictures (default: runs/demo-images when "
                                                 "present, else drawn 28-pixel pictures).")] = None,
    n: Annotated[int, typer.Option(help="Continuations per temperature, marked and unmarked each.")] = 32,
    tokens: Annotated[int, typer.Option(help="Tokens per continuation.")] = 200,
    temperatures: Annotated[str, typer.Option(help="Comma list.")] = "0.7,1.0",
    images: Annotated[int, typer.Option(help="Pictures for the image watermark.")] = 64,
    text: Annotated[bool, typer.Option("--text/--no-text", help="Measure the text watermark (minutes).")] = True,
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """The watermarks: text TPR at FPR 1e-3 by length and after edits, its perplexity cost; image bit
    accuracy and detection after JPEG, resize, crop and noise, and PSNR."""
    from genlab.bench_watermark import bench_watermark

    if image_run is None and Path("runs/demo-images").exists():
        image_run = Path("runs/demo-images")
    temps = [float(t) for t in comma_list(temperatures)]
    bench_watermark(run, image_run, n, tokens, temps, images, None if no_write else write, text=text, log=err.print)


@app.command("quality")
def bench_quality_cmd(
    text_run: Annotated[list[Path], typer.Option("--text-run", help="LM run to write the articles (repeat the "
                                                                    "option to compare runs side by side).")],
    image_run: Annotated[Path, typer.Option(help="GAN/VAE run for the illustrations (default: runs/demo-images "
                                                 "when present, else none).")] = None,
    prompts: Annotated[int, typer.Option(help="How many of the 50 built-in studio prompts.")] = 50,
    max_tokens: Annotated[int, typer.Option(help="Tokens per article.")] = 120,
    retries: Annotated[int, typer.Option(help="The gate's extra attempts per asset (studio --quality-retries).")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    write: WriteOpt = BENCHMARKS,
    no_write: NoWriteOpt = False,
):
    """The studio's quality gate over many prompts: how often it regenerated, first-attempt and shipped
    pass rates, and how much the scores moved."""
    from genlab.bench_quality import bench_quality

    if image_run is None and Path("runs/demo-images").exists():
        image_run = Path("runs/demo-images")
    bench_quality(text_run, image_run, prompts, max_tokens, retries, None if no_write else write, device, log=err.print)

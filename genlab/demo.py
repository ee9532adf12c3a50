"""`genlab demo`: the main job on embedded data, end to end in a few minutes on a laptop CPU.

1. trains the `small` LM on the fortunes corpus, evaluates it and generates from it;
2. trains a `small` class-conditional VAE on Fashion-MNIST and writes a sample grid and a latent walk;
3. makes a content-studio bundle (article, illustration, narration) from a default prompt;
4. shrinks and ships: quantizes the LM, exports it and the image decoder to ONNX, and prints the
   runtime table (PyTorch eager fp32 / int8 / int4 / dynamic int8, onnxruntime fp32 / int8).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from genlab.config import DataConfig, train_config
from genlab.errors import GenlabError
from genlab.evaluate.perplexity import evaluate_lm
from genlab.generate.text import load_lm
from genlab.train.lm import LMTrainSpec, train_lm

PROMPTS = ("The secret of life is", "Q: Why did the programmer", "A fool")
STUDIO_PROMPT = "Shoes for a long walk in the hills"


def run_demo(out: Path, minutes: float = 3.0, image_minutes: float = 1.5, studio: bool = True,
             ship: bool = True) -> None:
    con = Console()
    con.print(Panel.fit(f"genlab demo 1/4: a ~11M-parameter Llama-style LM trained on fortunes for {minutes:g} min"))
    tcfg = train_config("small", minutes=minutes, eval_every=100, checkpoint_every=100, eval_batches=10)
    train_lm(LMTrainSpec(run=out, data=DataConfig(corpus=["fortunes"], tokenizer="bpe", vocab_size=4096),
                         preset="small", train=tcfg, overwrite=True))
    res = evaluate_lm(out, max_tokens=50_000)
    con.print(f"held-out fortunes: perplexity {res['perplexity']:.1f}, {res['bits_per_byte']:.3f} bits/byte")
    lm = load_lm(out)
    for i, prompt in enumerate(PROMPTS):
        text = lm.generate(prompt, max_tokens=60, temperature=0.8, top_k=50, seed=i)
        con.print(Panel(prompt + text, title=f"sample {i + 1}", title_align="left"))
    con.print(f"the LM run lives in [bold]{out}[/]: `genlab generate text {out} --prompt \"...\"`; "
              f"continue it with `genlab train lm --out {out} --resume --minutes {2 * minutes:g}`")

    image_run = out.with_name(out.name + "-images")
    try:
        _image_demo(con, image_run, image_minutes)
    except GenlabError as e:  # e.g. Fashion-MNIST missing on a machine without apt
        con.print(f"[yellow]skipped the image demo[/]: {e}")
        image_run = None
    if studio:
        _studio_demo(con, out, image_run)
    if ship:
        _ship_demo(con, out, image_run)


def _image_demo(con: Console, run: Path, minutes: float) -> None:
    from genlab.data.images import ImageDataConfig
    from genlab.generate.images import ImageGenerator, save_grid, walk_frames, write_animation
    from genlab.train.image import ImageTrainSpec, image_train_config, train_image

    con.print(Panel.fit(f"genlab demo 2/4: a class-conditional VAE on Fashion-MNIST for {minutes:g} min"))
    tcfg = image_train_config("vae", "small", minutes=minutes, eval_every=200, checkpoint_every=200)
    train_image(ImageTrainSpec(family="vae", run=run, data=ImageDataConfig(source="fashion-mnist"),
                               preset="small", train=tcfg, overwrite=True))
    gen = ImageGenerator.from_run(run)
    grid = save_grid(gen.sample(40, labels=[i % 10 for i in range(40)], seed=0), run / "demo-grid.png", nrow=10,
                     scale=2)
    walk = write_animation(walk_frames(gen, n=10, keyframes=4, frames=12), run / "demo-walk.gif", scale=4)
    con.print(f"samples (a row per class) -> {grid}; latent walk -> {walk}")


def _studio_demo(con: Console, text_run: Path, image_run: Path | None) -> None:
    from genlab.studio.pipeline import StudioRequest, load_studio

    con.print(Panel.fit(f"genlab demo 3/4: a studio bundle for \"{STUDIO_PROMPT}\""))
    studio = load_studio(text_run, image_run)
    bundle_dir = text_run.with_name(text_run.name + "-bundle")

    def progress(ev: dict) -> None:
        if ev.get("event") == "stage":
            con.print(f"  {ev['stage']:>12} {ev['status']}")

    bundle = studio.make(StudioRequest(prompt=STUDIO_PROMPT, max_tokens=120), bundle_dir, progress, overwrite=True)
    con.print(f"bundle -> {bundle.folder / 'index.html'} (zip: {bundle.zip_path})")
    con.print(f"serve the models and the web studio: `genlab serve --text-run {text_run}"
              f"{' --image-run ' + str(image_run) if image_run else ''}` then open http://127.0.0.1:8000/")


def _ship_demo(con: Console, text_run: Path, image_run: Path | None) -> None:
    from genlab.bench_runtimes import bench_runtimes, markdown_table
    from genlab.export.common import ExportError
    from genlab.export.onnx import export_onnx
    from genlab.optimize.quantize import QuantSpec, quantize_run

    con.print(Panel.fit("genlab demo 4/4: shrink and ship (quantize, export, compare runtimes)"))
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
            say(f"VAE decoder -> {decoder}")
        only = ["pytorch", "onnxruntime"]
    except ExportError as e:  # onnx packages missing: the PyTorch rows still run
        say(f"skipped the ONNX exports: {e}")
        only = ["pytorch"]
    with tempfile.TemporaryDirectory() as work:  # the variants are rebuilt from this run's weights
        rows = bench_runtimes(text_run, work, decode_tokens=64, greedy_tokens=64, ppl_tokens=2048, only=only,
                              log=lambda m: None)
    con.print(markdown_table(rows), markup=False, highlight=False, soft_wrap=True)
    con.print("every runtime here (ExecuTorch, LiteRT, llama.cpp, transformers too): "
              f"`genlab bench runtimes {text_run}`; exports: `genlab export {text_run} --format ...`")

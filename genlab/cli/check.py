"""`genlab check FILE`: the studio quality gate's scores for any text or image file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from genlab.cli.common import out
from genlab.cli.options import DeviceOpt, JsonOpt

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def check_cmd(
    file: Annotated[Path, typer.Argument(help="A text file (UTF-8) or an image (PNG, JPEG, ...).")],
    reference: Annotated[Path, typer.Option(help="Text: the LM to measure perplexity under (default: the "
                                            "foundation model when imported in runs/smollm2; else none).")] = None,
    image_run: Annotated[Path, typer.Option("--run", help="Image: the GAN/VAE run whose classes and training "
                                            "images the classifier uses (default: runs/demo-images).")] = None,
    label: Annotated[str, typer.Option(help="Image: the class it should show (default: the most likely one).")] = None,
    min_words: Annotated[int, typer.Option(help="Text: the length threshold in words.")] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
):
    """Score a text (repetition, perplexity, length, common-English share) or an image (the classifier's
    confidence for its class) against the studio's quality thresholds. Exits 0 whether it passes or not."""
    from dataclasses import replace

    from genlab.safety import quality as q

    th = q.Thresholds() if min_words is None else replace(q.Thresholds(), min_words=min_words)
    th.validate()
    if file.suffix.lower() in IMAGE_SUFFIXES:
        verdict = _check_image(file, image_run, label, th, device)
    else:
        text = q.read_text_file(file)
        ref = None
        if reference is not None:
            from genlab.generate.text import load_lm

            ref = q.ReferenceModel(load_lm(reference, device=device), {"kind": "given", "run": str(reference)})
        else:
            ref = q.reference_model(None, device=device)
        verdict = q.score_text(text, ref, th)
        verdict.scores["reference"] = ref.description if ref else None
    if as_json:
        out.print_json(json.dumps({"file": str(file), **verdict.to_dict(), "thresholds": th.to_dict()}))
        return
    status = "passes" if verdict.passed else "below threshold: " + "; ".join(verdict.failures)
    scores = ", ".join(f"{k} {_fmt(v)}" for k, v in verdict.scores.items() if v is not None and k != "reference")
    out.print(f"{file}: {scores}", markup=False, highlight=False, soft_wrap=True)
    if verdict.kind == "text" and verdict.scores.get("perplexity") is None:
        out.print("perplexity not scored: no reference model (import one with `genlab import smollm2` or give "
                  "--reference)", markup=False, soft_wrap=True)
    out.print(f"quality: {status}", markup=False, highlight=False, soft_wrap=True)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _check_image(file: Path, image_run: Path | None, label: str | None, th, device: str):
    from genlab.data.images import resolve_label
    from genlab.errors import ConfigError
    from genlab.evaluate.image_metrics import run_data
    from genlab.generate.images import ImageGenerator
    from genlab.safety import quality as q
    from genlab.studio.pipeline import DEFAULT_IMAGE_RUN, NearestCentroid

    run = image_run or DEFAULT_IMAGE_RUN
    if image_run is None and not (run / "config.json").is_file():
        raise ConfigError(f"scoring an image needs the GAN/VAE run whose classes it shows: give --run ({run} "
                          "does not exist)")
    _, data = run_data(run)  # the studio's classifier: nearest centroid over the run's training images
    gen = ImageGenerator.from_run(run, device=device)
    image = q.read_image_file(file, data.config.image_size, data.config.channels)
    n = min(len(data.train), 4000)
    clf = NearestCentroid(data.train.images[:n], data.train.labels[:n], len(gen.class_names))
    proba = clf.proba(image[None])[0]
    predicted = int(proba.argmax())
    target = predicted if label is None else resolve_label(label, gen.class_names)
    return q.score_confidence(float(proba[target]), gen.class_names[target], "nearest-centroid", th,
                              predicted=gen.class_names[predicted])


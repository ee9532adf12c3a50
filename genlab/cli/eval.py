"""`genlab eval`, `genlab audit` (bias, memorization), `genlab augment` and `genlab classifier train`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from genlab.cli.common import comma_ints, err, out
from genlab.cli.options import (
    DeviceOpt,
    ImageRunArg,
    ImgDataOpt,
    ImgRgbOpt,
    ImgSizeOpt,
    ImgTestFracOpt,
    JsonOpt,
)
from genlab.errors import GenlabError

classifier_app = typer.Typer(no_args_is_help=True, help="genlab's own image classifier (features for FCD, audit).")


def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory, or any LM artifact genlab opens (export, .onnx, ...).")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Held-out text (default: the run's validation split).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Score at most this many tokens.")] = None,
    as_json: JsonOpt = False,
    device: str = "auto",
    n: Annotated[int, typer.Option(help="GAN/VAE: generated images for FCD and precision/recall; upscale: "
                                        "held-out images scored (default: all).")] = 10_000,
    k: Annotated[int, typer.Option(help="GAN/VAE: neighbours for the precision/recall manifolds.")] = 3,
    seed: Annotated[int, typer.Option(help="GAN/VAE: sampling seed.")] = 0,
    pieces: Annotated[int, typer.Option(help="Music: pieces to generate for the statistics (0: likelihood only).")] = 8,
    bars: Annotated[int, typer.Option(help="Music: bars per generated piece.")] = 8,
):
    """LM: perplexity and bits per byte on held-out text. GAN/VAE: FCD, precision/recall, conditional
    accuracy and (VAE) negative ELBO, in the features of genlab's own classifier. Music: NLL per token
    and per note on the run's test pieces; statistics of generated pieces and a real-vs-generated
    discriminator (beside a training-histogram baseline). Upscale: PSNR/SSIM of the model and of bicubic
    on the held-out split of its data set."""
    from genlab.runtimes.base import read_json_config

    # GAN/VAE runs get the image metrics; anything else is a language model for genlab.runtimes to open.
    if (read_json_config(run) or {}).get("family") in ("gan", "vae"):
        _eval_image(run, data, n, k, seed, as_json, device)
        return
    if (read_json_config(run) or {}).get("family") == "music":
        _eval_music(run, data, as_json, device, pieces, bars, seed)
        return
    if (read_json_config(run) or {}).get("family") == "upscale":
        _eval_upscale(run, data, n if n != 10_000 else None, as_json, device)
        return
    from genlab.evaluate.perplexity import evaluate_lm

    res = evaluate_lm(run, data, max_tokens=max_tokens, device=device)
    if as_json:
        out.print_json(json.dumps(res))
    else:
        out.print(f"{res['data']}: {res['tokens']:,} tokens, loss {res['loss']:.4f}, "
                  f"perplexity {res['perplexity']:.2f}, bits/byte {res['bits_per_byte']:.4f}")


def _eval_music(run: Path, data: list[str] | None, as_json: bool, device: str, pieces: int, bars: int,
                seed: int) -> None:
    from genlab.evaluate.music import evaluate_music, music_statistics

    if data:
        raise GenlabError("--data is for LM runs; a music run is scored on the test pieces of its own data")
    if pieces < 0 or bars < 1:
        raise GenlabError("--pieces must be 0 or more and --bars at least 1")
    res = evaluate_music(run, device=device, log=err.print)
    if pieces:
        res["statistics"] = music_statistics(run, pieces=pieces, bars=bars, seed=seed, device=device)
    if as_json:
        out.print_json(json.dumps(res))
        return
    out.print(f"{res['pieces']} test pieces: {res['tokens']:,} tokens, {res['notes']:,} notes, loss "
              f"{res['loss']:.4f}/token (perplexity {res['perplexity']:.2f}), {res['nll_per_note']:.4f} nats/note")
    if pieces:
        st = res["statistics"]
        out.print(f"{'':10} {'pieces':>6} {'notes':>6} {'in key':>7} {'in range':>8} {'5ths/100':>8} {'8ves/100':>8}"
                  f" {'pc dist':>7} {'rhythm':>7} {'fermatas':>8} {'/4 bars':>7}")
        for name in ("test", "generated", "baseline"):
            r = st[name]
            out.print(f"{name:10} {r['pieces']:>6} {r['notes']:>6} {r['in_key']:>7.1%} {r['in_range']:>8.1%} "
                      f"{r['parallel_fifths_per_100']:>8.2f} {r['parallel_octaves_per_100']:>8.2f} "
                      f"{r.get('pitch_class_distance', 0):>7.3f} {r.get('rhythm_distance', 0):>7.3f} "
                      f"{r['fermatas_per_piece']:>8.2f} {r['fermatas_per_4_bars']:>7.2f}",
                      markup=False, highlight=False)
        out.print("(parallels per 100 voice-leading steps; distances: total variation of the pitch-class and "
                  "duration histograms to the test pieces'; fermatas per piece and per 4 bars (test pieces are "
                  "whole, generated ones --bars long); baseline: notes drawn from the training histograms)")
        for name, d in st["discriminator"].items():
            if d["accuracy"] is None:
                out.print(f"real vs {name}: no discriminator figure ({d['skipped']})", markup=False, highlight=False)
            else:
                out.print(f"real vs {name}: discriminator accuracy {d['accuracy']:.1%} +- {d['stderr']:.1%} "
                          f"({d['real']} real excerpts of {d['real_groups']} test pieces, {d['generated']} {name}; "
                          f"{d['folds']}-fold by piece, mean of {d['repeats']} fold assignments)", markup=False,
                          highlight=False)
        out.print("(a logistic regression on histograms and voice-leading rates of each piece, cross-validated "
                  "so that no piece is both trained and tested on; 50% = it cannot tell them apart)")


def _eval_upscale(run: Path, data: list[str] | None, n: int | None, as_json: bool, device: str) -> None:
    from genlab.evaluate.upscale import evaluate_upscale_run, format_report

    if data:
        raise GenlabError("--data is for LM runs; an upscale run is scored on the held-out split of its own data set")
    res = evaluate_upscale_run(run, n=n, device=device)
    if as_json:
        out.print_json(json.dumps(res))
    else:
        out.print(format_report(res), markup=False, highlight=False, soft_wrap=True)


def _eval_image(run: Path, data: list[str] | None, n: int, k: int, seed: int, as_json: bool, device: str) -> None:
    from genlab.evaluate.image_metrics import evaluate_image_run, format_report

    if data:
        raise GenlabError("--data is for LM runs; a GAN/VAE run is scored on the test split of its own data set")
    res = evaluate_image_run(run, n=n, k=k, seed=seed, device=device, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(res))
    else:
        out.print(format_report(res), markup=False, highlight=False, soft_wrap=True)


@classifier_app.command("train")
def classifier_train_cmd(
    data: ImgDataOpt = "fashion-mnist", image_size: ImgSizeOpt = None, rgb: ImgRgbOpt = False,
    test_fraction: ImgTestFracOpt = 0.1,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train again even if a cached one exists.")] = False,
    device: DeviceOpt = "auto",
):
    """Train (or find cached) the classifier of a data set and print its test accuracy."""
    from genlab.data.images import ImageDataConfig, load_image_data
    from genlab.evaluate.classifier import load_or_train

    dcfg = ImageDataConfig(source=data, image_size=image_size or (28 if data == "fashion-mnist" else 32),
                           channels=3 if rgb else 1, test_fraction=test_fraction)
    clf = load_or_train(load_image_data(dcfg), device=device, retrain=retrain)
    out.print(f"{data}: classifier test accuracy {clf.test_accuracy:.2%} -> {clf.path}", markup=False, soft_wrap=True)


class _AuditGroup(TyperGroup):
    """`genlab audit RUN` (the bias audit, as before) and `genlab audit memorization RUN`: a first
    argument that names no sub-command falls through to `bias`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["bias", *args]
        return super().parse_args(ctx, args)


audit_app = typer.Typer(cls=_AuditGroup, no_args_is_help=True,
                        help="Audits: `genlab audit RUN` (bias, GAN/VAE) or `genlab audit memorization RUN`.")


@audit_app.command("bias")
def audit_cmd(
    run: ImageRunArg,
    n: Annotated[int, typer.Option(help="Unconditional samples to classify.")] = 10_000,
    seed: int = 0,
    tolerance: Annotated[float, typer.Option(help="Flag a class produced at over this many times its training "
                                                  "share, or under its inverse.")] = 1.5,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
):
    """Bias audit: the class distribution of unconditional samples against the training data's."""
    from genlab.bench import show_table
    from genlab.evaluate.audit import audit_run, format_audit

    report = audit_run(run, n=n, seed=seed, tolerance=tolerance, device=device, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    show_table(f"audit of {run}: {report.n_generated:,} samples",
               ["class", "training share", "generated share", "ratio", "status"], format_audit(report))
    out.print(f"KL(generated || training) {report.kl_generated_train:.4f} nats, KL(training || generated) "
              f"{report.kl_train_generated:.4f} nats; classifier test accuracy {report.classifier_test_accuracy:.2%}",
              markup=False, soft_wrap=True)
    out.print(f"under-produced: {', '.join(report.under) or 'none'}; over-produced: {', '.join(report.over) or 'none'}"
              f"; dropped: {', '.join(report.dropped) or 'none'}", markup=False, soft_wrap=True)



@audit_app.command("memorization")
def audit_memorization_cmd(
    run: Annotated[Path, typer.Argument(help="An LM run or artifact genlab opens, or a GAN/VAE run.")],
    corpus: Annotated[list[str], typer.Option("--corpus", help="LM: audit against this corpus (files, folders, "
                                              "globs, 'fortunes'; repeatable) instead of the run's training split "
                                              "(imported models record none).")] = None,
    n: Annotated[int, typer.Option(help="Samples to generate (LM: from an empty prompt; GAN/VAE: images).")] = None,
    prefixes: Annotated[int, typer.Option(help="LM: training-document prefixes to continue greedily.")] = 20,
    prefix_chars: Annotated[int, typer.Option(help="LM: characters of each prefix.")] = 64,
    max_tokens: Annotated[int, typer.Option(help="LM: tokens per sample and continuation.")] = 128,
    temperature: Annotated[float, typer.Option(help="LM: sampling temperature of the samples.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="LM: nucleus sampling of the samples.")] = None,
    min_chars: Annotated[int, typer.Option(help="LM: an overlap of this many characters counts as verbatim.")] = 50,
    reference: Annotated[int, typer.Option(help="GAN/VAE: real test images to compare with.")] = 2000,
    seed: int = 0,
    show: Annotated[int, typer.Option(help="LM: print the texts with the longest overlaps (this many).")] = 3,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
):
    """Does the model repeat its training data? LM: longest verbatim overlap of samples and of
    continued training prefixes with the training text (suffix array), share over --min-chars, against
    held-out text as the baseline. GAN/VAE: each sample's nearest training image (pixels and classifier
    features) against how close real test images come."""
    from genlab.bench import show_table
    from genlab.runtimes.base import read_json_config
    from genlab.safety import memorization as mem

    if (read_json_config(run) or {}).get("family") in ("gan", "vae"):
        if corpus:
            raise GenlabError("--corpus is for language models; a GAN/VAE is compared with its own training images")
        rep = mem.audit_images(run, n=n or 1000, seed=seed, reference=reference, device=device, quiet=as_json)
        if as_json:
            out.print_json(json.dumps(rep.to_dict()))
            return
        headers, rows = mem.format_image_audit(rep)
        show_table(f"memorization audit of {run} ({rep.family}): {rep.n_samples:,} samples, {rep.n_test:,} test "
                   f"images, nearest of {rep.n_train:,} training images", headers, rows)
        out.print(f"a model that copies puts far over 5% of its samples closer than 95% of real test images; "
                  f"classifier test accuracy {rep.classifier_test_accuracy:.2%}", markup=False, soft_wrap=True)
        return
    cfg = mem.TextAuditConfig(n=50 if n is None else n, prefixes=prefixes, prefix_chars=prefix_chars,
                              max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                              min_chars=min_chars)
    rep = mem.audit_lm(run, corpus or None, cfg, device=device, log=None if as_json else _status_line)
    if as_json:
        out.print_json(json.dumps(rep.to_dict()))
        return
    headers, rows = mem.format_text_audit(rep)
    show_table(f"memorization audit of {run} against {rep.corpus} ({rep.corpus_chars:,} characters, "
               f"{rep.corpus_documents:,} documents)", headers, rows)
    for f in sorted(rep.findings, key=lambda f: -f.overlap)[:max(show, 0)]:
        if f.kind != "held-out":
            out.print(f"{f.kind}, {f.overlap} characters verbatim: {f.excerpt!r}", markup=False, soft_wrap=True)


def _status_line(message: str) -> None:
    err.print(f"[dim]{message}[/]", end="\r" if "/" in message else "\n", highlight=False)

def augment_cmd(
    generator: Annotated[Path, typer.Option(help="Run directory of a conditional GAN or VAE.")],
    real: Annotated[str, typer.Option(help="Real images per class (comma list, e.g. 10,50,100).")] = "10,50,100",
    synthetic: Annotated[int, typer.Option(help="Generated images per class added to the real ones.")] = 100,
    seeds: Annotated[int, typer.Option(help="Seeds per setting (mean ± std).")] = 3,
    steps: Annotated[int, typer.Option(help="Classifier optimizer steps per training.")] = None,
    write: Annotated[Path, typer.Option(help="Append the table to this Markdown file (e.g. BENCHMARKS.md).")] = None,
    device: DeviceOpt = "auto",
):
    """Does generated data help a classifier trained on few real images? Test accuracy with and without."""
    from dataclasses import replace

    from genlab.bench import append_section, markdown_table, show_table
    from genlab.evaluate.augment import AUGMENT_CLASSIFIER, run_augmentation, table

    counts = comma_ints(real, "--real", "a comma list of numbers like 10,50,100")
    cfg = replace(AUGMENT_CLASSIFIER, steps=steps) if steps else AUGMENT_CLASSIFIER
    rows = run_augmentation(generator, counts, synthetic, seeds, cfg, device=device, log=err.print)
    headers, body = table(rows)
    show_table(f"augmentation with {generator}", headers, body)
    append_section(write, f"Augmentation with generated images ({generator})",
                   "genlab augment " + " ".join(sys.argv[2:]), markdown_table(headers, body),
                   f"Test accuracy on the whole test split; the same classifier and {cfg.steps} steps of batch "
                   f"{cfg.batch_size} in both arms; mean ± std over {seeds} seeds.")

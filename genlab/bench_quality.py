"""`genlab bench quality`: what the studio's quality gate does over many prompts.

Each text run writes one bundle per prompt through the real studio pipeline (``Studio.make``, narration
off, no watermark: neither changes what the gate sees), prompt *i* with seed *i*, and the manifests'
``quality`` sections are summed up: how often the article was regenerated, how many attempts it took,
how many first attempts passed and how many shipped bundles pass, the median of each score on the first
attempt against the shipped one, which thresholds failed, and the same for the illustration when an
image run is given.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from genlab.bench import append_section, markdown_table, show_table

# Fifty everyday studio prompts: explainers, how-tos, places, history, nature, short stories.
PROMPTS = (
    "A quiet harbour town at dawn", "Why cats love cardboard boxes", "The history of the bicycle",
    "A beginner's guide to growing tomatoes", "How bees communicate", "Winter hiking safety tips",
    "The science of sourdough bread", "A day in the life of a lighthouse keeper", "Why we dream",
    "The first trains in Europe", "How to start running at forty", "The life cycle of a star",
    "A market in Marrakesh on a Saturday", "Why the sky is blue", "Tips for a first job interview",
    "The invention of the printing press", "How volcanoes form", "A rainy afternoon in a bookshop",
    "Caring for a houseplant that is dying", "How coffee reached Europe", "The migration of monarch butterflies",
    "What makes a good neighbour", "A short history of chess", "How to make a budget that works",
    "The tides and the moon", "Learning a second language as an adult", "Life on a small island in winter",
    "Why leaves change colour in autumn", "The first flight of the Wright brothers", "How to sleep better",
    "A walk through an old forest", "The story of the potato", "How rainbows appear",
    "Packing light for a long journey", "The work of a village doctor", "How the internet carries a message",
    "The oldest libraries in the world", "Why dogs wag their tails", "Cooking rice the right way",
    "The building of a cathedral", "A festival of lanterns", "How glaciers shape valleys",
    "Saving energy at home", "The life of a honeybee queen", "How maps were made before satellites",
    "A letter to a future grandchild", "The sounds of a city at night", "Why bread rises",
    "How to repair a bicycle puncture", "The night sky in summer",
)


@dataclass
class RunSummary:
    """The gate's record of one text run over the prompts."""

    run: str
    bundles: list[dict] = field(default_factory=list)  # per prompt: the manifest's quality section
    seconds: list[float] = field(default_factory=list)

    def row(self) -> list[str]:
        texts = [b["text"] for b in self.bundles]
        n = len(texts)
        regenerated = sum(t["attempts"] > 1 for t in texts)
        first_pass = sum(t["tries"][0]["passed"] for t in texts)
        shipped_pass = sum(t["passed"] for t in texts)
        attempts = sum(t["attempts"] for t in texts) / n

        def change(name: str, fmt: str) -> str:
            first = [t["tries"][0]["scores"].get(name) for t in texts]
            kept = [t["scores"].get(name) for t in texts]
            first, kept = [v for v in first if v is not None], [v for v in kept if v is not None]
            if not first:
                return "-"
            return f"{statistics.median(first):{fmt}} -> {statistics.median(kept):{fmt}}"

        images = [b["illustration"] for b in self.bundles if b.get("illustration")]
        img = "-"
        if images:
            redone = sum(i["attempts"] > 1 for i in images)
            img = f"{redone}/{len(images)} regenerated, {sum(i['passed'] for i in images)} shipped passing"
        return [self.run, str(n), f"{regenerated} ({regenerated / n:.0%})", f"{attempts:.2f}",
                f"{first_pass / n:.0%}", f"{shipped_pass / n:.0%}", change("repetition", ".3f"),
                change("perplexity", ",.1f"), change("english", ".3f"), change("words", ".0f"), img]

    def failures(self) -> Counter:
        """Failed thresholds summed over every attempt of every prompt."""
        out: Counter = Counter()
        for b in self.bundles:
            for attempt in b["text"]["tries"]:
                out.update(failure_name(f) for f in attempt["failures"])
        return out


def failure_name(failure: str) -> str:
    """Which threshold a gate failure (``quality.score_text``'s wording) is about."""
    for needle, name in (("words <", "length"), ("repetition", "repetition"), ("English", "common-English share"),
                         ("letter", "letters"), ("perplexity", "perplexity"), ("confidence", "confidence")):
        if needle in failure:
            return name
    return failure


HEADERS = ["text model", "prompts", "regenerated", "mean attempts", "first attempt passes", "shipped passing",
           "repetition", "perplexity", "common-English share", "words", "illustrations"]


def run_prompts(text_run: Path, image_run: Path | None, prompts: list[str], max_tokens: int, retries: int,
                device: str = "auto", log=print) -> RunSummary:
    """One bundle per prompt from ``text_run``; the summary of their quality sections."""
    from genlab.studio.pipeline import StudioRequest, load_studio

    studio = load_studio(text_run, image_run, device=device, watermark=False, sign=False)
    summary = RunSummary(str(text_run))
    with tempfile.TemporaryDirectory(prefix="genlab-bench-quality-") as tmp:
        for i, prompt in enumerate(prompts):
            req = StudioRequest(prompt=prompt, max_tokens=max_tokens, seed=i, narrate=False, music=False,
                                quality_retries=retries)
            t = time.perf_counter()
            quality = studio.make(req, Path(tmp) / f"b{i}").manifest["quality"]
            summary.seconds.append(time.perf_counter() - t)
            summary.bundles.append(quality)
            q = quality["text"]
            log(f"{text_run} [{i + 1}/{len(prompts)}] {prompt!r}: {q['attempts']} attempt(s), {q['status']} "
                f"({summary.seconds[-1]:.0f} s)")
    return summary


def bench_quality(text_runs: list[Path], image_run: Path | None, n: int, max_tokens: int, retries: int,
                  write: Path | None, device: str = "auto", log=print) -> list[RunSummary]:
    from genlab.errors import ConfigError

    if not 1 <= n <= len(PROMPTS):
        raise ConfigError(f"--prompts must be between 1 and {len(PROMPTS)} (got {n})")
    summaries = [run_prompts(r, image_run, list(PROMPTS[:n]), max_tokens, retries, device, log) for r in text_runs]
    rows = [s.row() for s in summaries]
    show_table("studio quality gate", HEADERS, rows)
    notes = [f"{n} prompts (genlab.bench_quality.PROMPTS), prompt i with seed i, {max_tokens} tokens, "
             f"--quality-retries {retries}, default thresholds; illustrations by {image_run or 'none'}. "
             "Scores are medians over the prompts, first attempt -> shipped."]
    for s in summaries:
        fails = ", ".join(f"{k} {v}" for k, v in s.failures().most_common()) or "none"
        attempts = sum(b["text"]["attempts"] for b in s.bundles)
        notes.append(f"{s.run}: failed thresholds over its {attempts} attempts: {fails}; "
                     f"{statistics.median(s.seconds):.0f} s per bundle (median).")
    runs_arg = " ".join(f"--text-run {r}" for r in text_runs) + (f" --image-run {image_run}" if image_run else "")
    append_section(write, "Quality gate over studio prompts",
                   f"genlab bench quality {runs_arg} --prompts {n} --max-tokens {max_tokens} --retries {retries}",
                   markdown_table(HEADERS, rows), "\n\n".join(notes))
    return summaries

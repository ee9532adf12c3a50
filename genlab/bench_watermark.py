"""`genlab bench watermark`: how well the watermarks are found, after edits, and what they cost.

Text: ``n`` prompts (openings of fortunes) continued by the LM (the foundation model by default) for
``tokens`` tokens at each temperature, with the watermark and without (the same seeds), all through
the batching scheduler. Detection looks at the first 50/100/200 tokens of the text as re-tokenized,
and at the whole text after replacing 10% / 30% of its words with random words (from the same
fortunes) and after deleting every other sentence. The threshold for a false-positive rate of 1e-3
is z = 3.09 (one-sided normal); the FPR is measured at that threshold on the model's unmarked text
and on human text (fortunes of comparable length). The perplexity cost: the model's perplexity of
its own marked and unmarked continuations (given the prompt).

Pictures: samples of an image run (Fashion-MNIST's 28 pixels, enlarged x10 as the studio does)
marked and attacked: JPEG 90/75/50, 0.5x resize and back, a 10% crop (then padded back), Gaussian
noise (sigma 5 and 10); bit accuracy and detection rate per attack, and the PSNR of the mark.
"""

from __future__ import annotations

import io
import math
import queue
import random
import re
import time
from pathlib import Path

import numpy as np

from genlab.bench import append_section, markdown_table, show_table

KEY = "genlab-bench-key"
Z_FPR_1E3 = 3.0902  # one-sided normal quantile for 1e-3


def _fortunes(n: int, seed: int = 0) -> list[str]:
    from genlab.data.corpus import documents, resolve

    docs = [d.strip() for d in documents(resolve(["fortunes"])) if 200 <= len(d.strip()) <= 4000]
    random.Random(seed).shuffle(docs)
    return docs[:n]


def _replace_words(text: str, share: float, pool: list[str], rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), int(round(share * len(words)))):
        words[i] = rng.choice(pool)
    return " ".join(words)


def _delete_sentences(text: str) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text)
    return " ".join(p for i, p in enumerate(parts) if i % 2 == 0) if len(parts) > 1 else text


def bench_text(run: Path | None, n: int, tokens: int, temperatures: list[float], log=print) -> tuple[list, list]:
    from genlab.generate.text import SamplingOptions, load_lm
    from genlab.safety.watermark_text import TextWatermark
    from genlab.studio.batching import BatchScheduler
    from genlab.train.lm import token_nll

    if run is None:
        from genlab.foundation import default_text_run

        run = default_text_run(log=log)
        if run is None:
            raise SystemExit("error: no foundation model here; pass --run RUN")
    lm = load_lm(run)
    wm = TextWatermark(KEY)
    human = _fortunes(4 * n + 200, seed=1)
    prompts = [" ".join(d.split()[:8]) for d in human[:n]]
    pool = [w for d in human for w in d.split()]
    rng = random.Random(0)

    def score(text: str, limit: int | None = None) -> float:
        ids = lm.encode(text)
        return wm.detect(ids[:limit] if limit else ids, lm.config.vocab_size).z

    def ppl(prompt: str, text: str) -> float:
        p, ids = lm.encode(prompt), lm.encode(prompt + text)
        nll, count = token_nll(lm.model, np.array(ids), min(lm.config.context, len(ids)), device=lm.device)
        # the whole sequence's nll minus the prompt's: the continuation's own
        pn, pc = token_nll(lm.model, np.array(p), min(lm.config.context, len(p)), device=lm.device) if len(p) > 1 \
            else (0.0, 0)
        return math.exp((nll - pn) / max(count - pc, 1))

    rows, fpr_rows = [], []
    sched = BatchScheduler(lm, max_batch=16)
    try:
        for temp in temperatures:
            t0 = time.perf_counter()
            out: dict[bool, list[str]] = {}
            for marked in (True, False):
                opts = [SamplingOptions(max_tokens=tokens, temperature=temp, seed=i, ignore_eot=True,
                                        watermark=wm if marked else None) for i in range(n)]
                qs: list[queue.Queue] = []
                for p, o in zip(prompts, opts, strict=True):
                    q: queue.Queue = queue.Queue()
                    sched.submit(p, o, q.put)
                    qs.append(q)
                texts = []
                for q in qs:
                    parts = []
                    while True:
                        kind, value = q.get()
                        if kind == "text":
                            parts.append(value)
                        elif kind == "error":
                            raise RuntimeError(value)
                        else:
                            break
                    texts.append("".join(parts))
                out[marked] = texts
            log(f"temperature {temp}: {2 * n} continuations of {tokens} tokens in {time.perf_counter() - t0:.0f} s")
            for label, fn in ([(f"first {k} tokens", (lambda t, k=k: score(t, k))) for k in (50, 100, 200)
                               if k <= tokens]
                              + [(f"{int(s * 100)}% words replaced", (lambda t, s=s: score(_replace_words(t, s, pool, rng))))
                                 for s in (0.1, 0.3)]
                              + [("every other sentence deleted", lambda t: score(_delete_sentences(t)))]):
                zs = [fn(t) for t in out[True]]
                zn = [fn(t) for t in out[False]]
                rows.append([f"{temp}", label, f"{np.mean([z > Z_FPR_1E3 for z in zs]):.2f}",
                             f"{np.median(zs):.1f}", f"{np.mean([z > Z_FPR_1E3 for z in zn]):.3f}"])
            pm = [ppl(p, t) for p, t in zip(prompts, out[True], strict=True)]
            pu = [ppl(p, t) for p, t in zip(prompts, out[False], strict=True)]
            rows.append([f"{temp}", "perplexity (marked / unmarked, median)", f"{np.median(pm):.1f} / {np.median(pu):.1f}",
                         "", ""])
    finally:
        sched.close()
    hz = [score(d, tokens) for d in human[n:]]
    fpr_rows.append(["fortunes (human)", str(len(hz)), f"{np.mean([z > Z_FPR_1E3 for z in hz]):.4f}",
                     f"{np.mean(hz):+.2f} / {np.std(hz):.2f}"])
    return rows, fpr_rows


def bench_images(run: Path | None, n: int, log=print) -> list[list[str]]:
    from PIL import Image

    from genlab.safety.watermark_image import ImageWatermark, min_scale

    if run is not None:
        from genlab.generate.images import ImageGenerator

        gen = ImageGenerator.from_run(run, device="cpu")
        imgs = gen.sample(n, labels=gen.labels_for(n, None), seed=0)[:, 0]
    else:  # drawn pictures of Fashion-MNIST's size
        rng = np.random.default_rng(0)
        imgs = np.zeros((n, 28, 28), np.uint8)
        for im in imgs:
            y, x = rng.integers(2, 8, 2)
            im[y:y + 18, x:x + 14] = rng.integers(100, 250, (18, 14))
    scale = min_scale(imgs.shape[1])
    wm = ImageWatermark(KEY)

    def jpeg(a: np.ndarray, q: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=q)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))

    def resize(a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        small = Image.fromarray(a).resize((w // 2, h // 2), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BILINEAR))

    def crop(a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        dy, dx = h // 20, w // 20  # 10% of each side in all: 5% off each edge, then padded back
        out = np.zeros_like(a)
        out[dy:h - dy, dx:w - dx] = a[dy:h - dy, dx:w - dx]
        return out

    def crop_resize(a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        dy, dx = h // 20, w // 20
        return np.asarray(Image.fromarray(a[dy:h - dy, dx:w - dx]).resize((w, h), Image.BILINEAR))

    def noise(a: np.ndarray, s: float) -> np.ndarray:
        return np.clip(a + np.random.default_rng(1).normal(0, s, a.shape), 0, 255).astype(np.uint8)

    attacks = [("none", lambda a: a), ("JPEG 90", lambda a: jpeg(a, 90)), ("JPEG 75", lambda a: jpeg(a, 75)),
               ("JPEG 50", lambda a: jpeg(a, 50)), ("0.5x resize and back", resize),
               ("10% crop, padded back", crop), ("10% crop, resized back", crop_resize),
               ("noise sigma 5", lambda a: noise(a, 5)), ("noise sigma 10", lambda a: noise(a, 10))]
    psnr, results = [], {name: ([], []) for name, _ in attacks}
    t0 = time.perf_counter()
    for im in imgs:
        big = im.repeat(scale, 0).repeat(scale, 1)
        marked = wm.embed(big)
        psnr.append(10 * np.log10(255**2 / max(np.mean((marked.astype(float) - big) ** 2), 1e-9)))
        for name, fn in attacks:
            d = wm.detect(fn(marked))
            results[name][0].append(d.bit_accuracy)
            results[name][1].append(d.detected)
    unmarked = [wm.detect(jpeg(im.repeat(scale, 0).repeat(scale, 1), 90)).detected for im in imgs]
    log(f"{n} pictures ({imgs.shape[1] * scale} px) in {time.perf_counter() - t0:.0f} s")
    rows = [[name, f"{np.mean(acc):.3f}", f"{np.mean(det):.2f}"] for name, (acc, det) in results.items()]
    rows.append(["unmarked, JPEG 90 (false positives)", "", f"{np.mean(unmarked):.2f}"])
    rows.append([f"PSNR of the mark (mean, {imgs.shape[1] * scale} px)", f"{np.mean(psnr):.1f} dB", ""])
    return rows


def bench_watermark(run: Path | None, image_run: Path | None, n: int, tokens: int, temperatures: list[float],
                    n_images: int, write: Path | None, text: bool = True, log=print) -> None:
    if text:
        rows, fpr = bench_text(run, n, tokens, temperatures, log)
        headers = ["temperature", "text seen by the detector", "TPR at FPR 1e-3 (z > 3.09)", "median z",
                   "FPR, unmarked (same model)"]
        show_table("text watermark", headers, rows)
        fh = ["human text", "passages", f"FPR at z > 3.09 (first {tokens} tokens)", "z mean / sd"]
        show_table("text watermark: human text", fh, fpr)
        append_section(write, "Text watermark (KGW self-hash, gamma 0.25, delta 2)",
                       f"genlab bench watermark --n {n} --tokens {tokens}",
                       markdown_table(headers, rows) + "\n\n" + markdown_table(fh, fpr),
                       f"{n} continuations per temperature and condition, fortunes openings as prompts, "
                       f"{run or 'the foundation model'}; the machine was shared with other jobs.")
    rows = bench_images(image_run, n_images, log)
    ih = ["attack", "bit accuracy (48 bits)", "detection rate (p < 1e-4)"]
    show_table("image watermark", ih, rows)
    append_section(write, "Image watermark (invisible-watermark dwtDctSvd, luma, strength 48)",
                   f"genlab bench watermark --images {n_images}", markdown_table(ih, rows),
                   f"{n_images} samples of {image_run or 'drawn 28-pixel pictures'}, enlarged to >= 256 px as the "
                   "studio delivers them.")

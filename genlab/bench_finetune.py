"""Fine-tuning figures for BENCHMARKS.md: peak memory and speed of LoRA, QLoRA and full fine-tuning
next to ``genlab size``'s prediction (`genlab bench finetune`), and transfer learning against
training from scratch for the same wall-clock budget (`genlab bench transfer`).

Every training run is a separate ``genlab`` process, so its peak resident memory (its VmHWM, which
it reports as it exits) is its own; a process that only imports what fine-tuning imports gives the runtime's
share (Python, torch, peft), which the prediction does not cover.

Bits per byte are compared on the same text: the first ``eval_bytes`` of each corpus's validation
split (the split depends on the corpus alone, so every tokenizer sees the same documents), cut at
a token boundary, scored with non-overlapping windows; bytes are those of the scored tokens.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from genlab.bench import append_section, markdown_table, show_table
from genlab.evaluate.perplexity import heldout_bits_per_byte

GENLAB = ["-m", "genlab"]
_IMPORTS = "import torch, peft, genlab.train.finetune, genlab.train.lm"


# glibc keeps freed heap memory mapped (its mmap threshold grows with every large free), so a process's
# RSS would count tensors long gone; a fixed threshold returns large blocks when they are freed, and
# the peak RSS then tracks the memory in use.
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}

# The child reports its own VmHWM (the peak RSS of its address space) as it exits. wait4's ru_maxrss
# would not do: it keeps the high-water mark from before exec, i.e. the parent's pages at fork.
_PEAK_WRAPPER = """
import atexit, runpy, sys
report, args = sys.argv[1], sys.argv[2:]
def peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    with open(report, "w") as f:
        f.write(kb)
atexit.register(peak)
if args[0] == "-m":
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *args[2:]]
    exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
"""


def run_measured(python_args: list[str], log_path: Path) -> tuple[int, int, float]:
    """Run ``python ARGS`` (``-m module ...`` or ``-c code``) with output to ``log_path``;
    (exit code, the child's peak RSS in bytes, seconds)."""
    report = log_path.with_suffix(".peak")
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        code = subprocess.call([sys.executable, "-c", _PEAK_WRAPPER, str(report), *python_args], stdout=f,
                               stderr=subprocess.STDOUT, env={**os.environ, **MEASURE_ENV})
    seconds = time.perf_counter() - t0
    peak = int(report.read_text()) * 1024 if report.exists() else 0
    return code, peak, seconds


def _check(code: int, log_path: Path, what: str) -> None:
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed (exit {code}):\n" + "\n".join(tail))


def _throughput(run: Path) -> float:
    """Training tokens/s over the run: the mean of the logged rates after the first (warm-up) step."""
    with open(run / "metrics.csv") as f:
        rates = [float(r["throughput"]) for r in csv.DictReader(f) if r["split"] == "train" and r["throughput"]]
    return float(np.mean(rates[1:] if len(rates) > 1 else rates)) if rates else float("nan")


def _predicted(base: Path, context: int, batch: int, rank: int) -> dict[str, float]:
    from genlab import runs
    from genlab.sizing import arch as sizing_arch
    from genlab.sizing import memory
    from genlab.sizing.counts import count

    a = sizing_arch.read_run(runs.read_config(base), base.name, str(base))
    pc = count(a)
    return {m: memory.genlab_finetune(pc, context, batch, m, rank).total for m in ("full", "lora", "qlora")}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def bench_finetune(base: Path, corpus: str, methods: list[str], steps: int, batch: int, context: int | None,
                   rank: int = 8, write: Path | None = None) -> list[dict]:
    """Peak RSS and tokens/s of ``genlab finetune`` per method, next to the prediction."""
    from genlab import runs

    base = Path(base)
    ctx = context or runs.read_config(base)["model"]["context"]
    predicted = _predicted(base, ctx, batch, rank)
    rows = []
    with tempfile.TemporaryDirectory(prefix="genlab-bench-ft-") as tmp:
        tmp = Path(tmp)
        code, runtime_rss, _ = run_measured(["-c", _IMPORTS], tmp / "imports.log")
        _check(code, tmp / "imports.log", "importing torch and peft")
        for method in methods:
            run = tmp / method
            cmd = GENLAB + ["finetune", str(base), "--data", corpus, "--method", method, "--out", str(run),
                            "--steps", str(steps), "--batch-size", str(batch), "--eval-every", str(10**6),
                            "--eval-batches", "1",
                            "--checkpoint-every", str(10**6), "--log-every", "1", "--device", "cpu", "--quiet"]
            if context:
                cmd += ["--context", str(context)]
            if method != "full":
                cmd += ["--lora-rank", str(rank)]
            code, peak, seconds = run_measured(cmd, tmp / f"{method}.log")
            _check(code, tmp / f"{method}.log", f"genlab finetune --method {method}")
            rows.append({"method": method, "predicted": predicted[method], "peak_rss": peak,
                         "runtime_rss": runtime_rss, "tok_s": _throughput(run), "seconds": seconds})
    headers = ["method", "genlab size predicts", "peak RSS", "peak RSS less runtime", "measured / predicted",
               "tokens/s"]
    table = [[r["method"], _gib(r["predicted"]), _gib(r["peak_rss"]), _gib(r["peak_rss"] - r["runtime_rss"]),
              f"{(r['peak_rss'] - r['runtime_rss']) / r['predicted']:.2f}", f"{r['tok_s']:.0f}"] for r in rows]
    show_table(f"genlab finetune: {steps} steps, micro-batch {batch} x {ctx} tokens", headers, table)
    command = (f"genlab bench finetune {base} --corpus {corpus} --steps {steps} --batch-size {batch}"
               + (f" --context {context}" if context else ""))
    append_section(write, f"Fine-tuning memory and speed ({base.name}, {batch} x {ctx} tokens, LoRA r={rank})",
                   command, markdown_table(headers, table),
                   f"Runtime = the peak RSS of a process that only imports torch, peft and genlab's trainer "
                   f"({_gib(rows[0]['runtime_rss']) if rows else '-'}); the prediction covers weights, gradients, "
                   f"AdamW moments and saved activations (fp32, as genlab trains on CPUs), not the allocator's "
                   f"slack or the runtime. Measured with {' '.join(f'{k}={v}' for k, v in MEASURE_ENV.items())} "
                   f"(freed tensors leave RSS).")
    return rows


# ---- transfer learning ---------------------------------------------------------------------------


def bench_transfer(base: Path, corpora: list[str], minutes: float, methods: list[str], batch: int, context: int,
                   eval_bytes: int, scratch_preset: str = "small", write: Path | None = None) -> list[dict]:
    """For each corpus: the base as it is, each fine-tuning method and ``scratch_preset`` trained
    from scratch, each trained for ``minutes`` of wall clock; validation bits/byte of each."""
    base = Path(base)
    rows = []
    with tempfile.TemporaryDirectory(prefix="genlab-bench-transfer-") as tmp:
        tmp = Path(tmp)
        for corpus in corpora:
            rows.append({"corpus": corpus, "model": f"{base.name} as it is", "seconds": 0.0,
                         "bpb": heldout_bits_per_byte(base, corpus, eval_bytes, context), "tokens": 0})
            common = ["--minutes", str(minutes), "--batch-size", str(batch), "--eval-every", str(10**6),
                      "--eval-batches", "1", "--checkpoint-every", str(10**6), "--device", "cpu", "--quiet"]
            jobs = [(m, GENLAB + ["finetune", str(base), "--data", corpus, "--method", m, "--context", str(context)])
                    for m in methods]
            jobs.append((f"{scratch_preset} from scratch",
                         GENLAB + ["train", "lm", "--preset", scratch_preset, "--data", corpus]))
            for name, cmd in jobs:
                run = tmp / f"{corpus}-{name.replace(' ', '-')}"
                code, _, seconds = run_measured(cmd + ["--out", str(run)] + common, tmp / f"{run.name}.log")
                _check(code, tmp / f"{run.name}.log", " ".join(cmd[2:4]) + f" ({name})")
                tokens = _trained_tokens(run)
                rows.append({"corpus": corpus, "model": name, "seconds": seconds, "tokens": tokens,
                             "bpb": heldout_bits_per_byte(run, corpus, eval_bytes, context)})
    headers = ["corpus", "model", "wall time (train)", "tokens trained", "val bits/byte"]
    table = [[r["corpus"], r["model"], f"{r['seconds'] / 60:.1f} min" if r["seconds"] else "-",
              f"{r['tokens']:,}" if r["tokens"] else "-", f"{r['bpb']:.3f}"] for r in rows]
    show_table(f"transfer learning: {minutes:g} min per run", headers, table)
    command = (f"genlab bench transfer {base} --corpora {','.join(corpora)} --minutes {minutes:g} "
               f"--batch-size {batch} --context {context} --eval-bytes {eval_bytes}")
    append_section(write, f"Transfer learning vs training from scratch ({minutes:g} min each)", command,
                   markdown_table(headers, table),
                   f"Bits/byte on the first {eval_bytes:,} bytes of each corpus's validation split (the same "
                   f"documents for every tokenizer), windows of {context} tokens (the scratch model's own "
                   f"context if smaller). Wall time includes loading and data preparation.")
    return rows


def _trained_tokens(run: Path) -> int:
    from genlab import runs

    cfg = runs.read_config(run)
    t = cfg["train"]
    with open(run / "metrics.csv") as f:
        steps = max((int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"), default=0)
    window = t.get("window") or cfg["model"]["context"]
    return steps * t["batch_size"] * t.get("grad_accum", 1) * window


# ---- chat answers --------------------------------------------------------------------------------

CHAT_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
                "Explain what a hash table is in one sentence.", "Give me three tips for sleeping better.",
                "Translate \"good morning\" into Spanish.")


def bench_chat(models: list[Path], prompts: tuple[str, ...] = CHAT_PROMPTS, max_tokens: int = 60,
               write: Path | None = None) -> list[list[str]]:
    """Greedy answers of each model (through its chat template) to the same prompts, side by side."""
    from genlab.generate.text import load_lm

    answers = []
    for path in models:
        lm = load_lm(path, device="cpu")
        answers.append([" ".join(lm.chat([{"role": "user", "content": p}], max_tokens=max_tokens,
                                         temperature=0).split()).replace("|", "\\|") for p in prompts])
    headers = ["prompt"] + [Path(m).name for m in models]
    table = [[p] + [a[i] for a in answers] for i, p in enumerate(prompts)]
    show_table("greedy chat answers", headers, table)
    command = "genlab bench chat " + " ".join(str(m) for m in models)
    append_section(write, "Chat answers side by side (`bench chat`)", command, markdown_table(headers, table),
                   f"Greedy, through each run's chat template, at most {max_tokens} new tokens.")
    return table

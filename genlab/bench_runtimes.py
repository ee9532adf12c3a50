"""`genlab bench runtimes RUN`: one LM, every runtime and precision available here, side by side.

The parent process prepares each variant (quantized run, .onnx, ExecuTorch / LiteRT folders, GGUF,
transformers folder) and then measures each in a fresh worker process, so load time and peak
memory (the worker's maximum resident set) belong to that runtime alone. Every worker gets the same
inputs: a prompt of real validation tokens, a fixed continuation fed one token at a time (so the
decode steps do the same work everywhere), greedy generation from the same prompt, and a slice of the
validation split for perplexity. Parity is measured against PyTorch eager fp32 from the same files:
max |logit diff| over the prompt and continuation, greedy-token agreement, perplexity change.

Every variant is opened by ``genlab.runtimes.registry.open_lm`` and driven through the ``Runner``
call (``runner(idx, cache, start) -> logits``), so sampling, context shifts and scoring are
genlab's own code for every row. The transformers row also times ``model.generate`` itself, which
is what its users run.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab import runs
from genlab.errors import ConfigError
from genlab.train.lm import token_nll

VARIANTS = [
    ("pytorch", "fp32"), ("pytorch", "bf16"), ("pytorch", "int8"), ("pytorch", "int4"),
    ("pytorch", "dynamic-int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("executorch", "fp32"),
    ("executorch", "int8"), ("litert", "fp32"), ("litert", "int8"), ("llama.cpp", "f16"), ("llama.cpp", "q8_0"),
    ("transformers", "fp32"),
]


class Skip(Exception):
    """This variant cannot run here (a package is missing); the table says why."""


@dataclass
class Row:
    runtime: str
    precision: str
    size_bytes: int = 0
    load_s: float = 0.0
    prefill_ms: float = 0.0
    decode_tok_s: float = 0.0  # from the median time of one decode step
    peak_rss_mb: float = 0.0
    max_logit_diff: float = 0.0
    greedy_agreement: int = 0
    greedy_tokens: int = 0
    ppl: float = 0.0
    ppl_change_pct: float = 0.0
    generate_tok_s: float | None = None  # transformers: model.generate's own decode rate
    note: str = ""


# ---- preparing the files (parent process) ---------------------------------------------------------

def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "tokenizer.json"
                   and p.suffix != ".json")
    return path.stat().st_size


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def prepare(run: Path, work: Path, runtime: str, precision: str, log) -> Path:
    """Make the artifact this variant runs (once; reused on the next call) and return its path."""
    quiet = lambda m: None  # noqa: E731  (exports print their parity lines; the table reports parity)
    if runtime == "pytorch":
        if precision in ("fp32", "bf16"):
            return run
        from genlab.optimize.quantize import QuantSpec, quantize_run

        out = work / f"pytorch-{precision}"
        if not out.exists():
            quantize_run(run, out, QuantSpec(method=precision, group_size=32))
        return out
    if runtime == "onnxruntime":
        if not (_have("onnxruntime") and _have("onnxscript")):
            raise Skip("pip install 'genlab[export]'")
        from genlab.export.onnx import export_onnx

        out = work / f"model-{precision}.onnx"
        if not out.exists():
            export_onnx(run, out, int8=precision == "int8", log=quiet)
        return out
    if runtime in ("executorch", "litert"):
        module, extra = ("executorch", "edge") if runtime == "executorch" else ("ai_edge_litert", "tflite")
        if not _have(module) or (runtime == "litert" and not _have("litert_torch")):
            raise Skip(f"pip install 'genlab[{extra}]'")
        out = work / f"{runtime}-{precision}"
        if not out.exists():
            if runtime == "executorch":
                from genlab.export.executorch import export_executorch as export
            else:
                from genlab.export.tflite import export_tflite as export
            export(run, out, int8=precision == "int8", log=quiet)
        return out
    if runtime == "llama.cpp":
        if not _have("llama_cpp"):
            raise Skip("llama-cpp-python not installed (make gguf-check)")
        from genlab.export.gguf import export_gguf

        out = work / f"model-{precision}.gguf"
        if not out.exists():
            export_gguf(run, out, precision, log=quiet)
        return out
    if runtime == "transformers":
        if not _have("transformers"):
            raise Skip("pip install transformers")
        from genlab.export.hf import export_hf

        out = work / "hf"
        if not out.exists():
            export_hf(run, out, log=quiet)
        return out
    raise ConfigError(f"unknown runtime '{runtime}'")


def fast_flag() -> str | None:
    """The keyword of ``load_lm`` that picks the fast inference path (``fast``; ``compile`` in the
    first design), or None where it has none."""
    import inspect

    from genlab.generate.text import load_lm

    params = inspect.signature(load_lm).parameters
    return next((k for k in ("fast", "compile") if k in params), None)


def load_variant(path: Path, precision: str, fast: bool = True):
    """``load_lm(path)`` on the CPU, fast path on or off; bf16 = the weights cast after loading, before
    the fast path fuses the projections (the fused matrices are no submodules: a later ``.to()`` misses them)."""
    from genlab.generate.text import load_lm

    flag = fast_flag()
    lm = load_lm(path, device="cpu", **({flag: fast and precision != "bf16"} if flag else {}))
    if precision == "bf16":
        lm.model.to(torch.bfloat16)
        if fast and flag and hasattr(lm.model, "fuse_for_inference"):
            lm.model.fuse_for_inference()
    return lm


def _open(runtime: str, precision: str, path: Path, run: Path):
    """The variant as a ``LanguageModel`` (the timed part of loading)."""
    from genlab.data import tokenizer as tokmod

    lm = load_variant(path, precision)
    # Every row encodes the prompts with the run's own tokenizer (llama.cpp brings its own, which
    # may split text differently), so all runtimes see the same token ids.
    lm.tokenizer = tokmod.load(run / runs.TOKENIZER)
    return lm


# ---- measuring (worker process) ---------------------------------------------------------------------

@torch.no_grad()
def measure(spec: dict) -> dict:
    """Run in a fresh process: load, prefill, decode, greedy, perplexity; returns numbers and arrays' paths."""
    torch.set_num_threads(spec["threads"])
    work = Path(spec["work"])
    seq = np.load(work / "sequence.npy")
    val = np.load(work / "val.npy")
    P = spec["prompt_tokens"]
    t0 = time.perf_counter()
    lm = _open(spec["runtime"], spec["precision"], Path(spec["path"]), Path(spec["run"]))
    load_s = time.perf_counter() - t0
    model = lm.model
    prompt = torch.from_numpy(seq[:P])[None]
    prefill = []
    for _ in range(3):
        cache = model.new_cache(1)
        t = time.perf_counter()
        first = model(prompt, cache, 0)
        prefill.append(time.perf_counter() - t)
    logits, steps = [first[0].float()], []
    for i in range(P, len(seq)):
        t = time.perf_counter()
        out = model(torch.from_numpy(seq[i : i + 1])[None], cache, i)
        steps.append(time.perf_counter() - t)
        logits.append(out[0].float())
    np.save(work / f"logits-{spec['key']}.npy", torch.cat(logits).numpy()[: len(seq) - 1])
    lm.generate(spec["greedy_prompt"], max_tokens=spec["greedy_tokens"], temperature=0.0, ignore_eot=True)
    greedy = list(lm.info.completion_ids)
    nll, count = token_nll(model, val, lm.config.context, batch_size=1)
    result = {"load_s": load_s, "prefill_ms": 1000 * statistics.median(prefill),
              "decode_tok_s": 1.0 / statistics.median(steps), "greedy": greedy, "loss": nll / count}
    if spec["runtime"] == "transformers":  # what transformers users run: generate() itself
        n = len(seq) - P
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        model.hf.generate(prompt, **kw)  # warm-up
        t = time.perf_counter()
        model.hf.generate(prompt, **kw)
        total = time.perf_counter() - t
        result["generate_tok_s"] = n / max(total - statistics.median(prefill), 1e-9)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _peak_rss_mb() -> float:
    """This process's own peak resident memory. ru_maxrss is not used: Linux carries the parent's
    peak into a child across fork and exec, so every worker would report at least the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # macOS: bytes there, but no /proc


def _worker_main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure(spec)))


# ---- the benchmark (parent) -------------------------------------------------------------------------

def bench_runtimes(run: str | Path, work: str | Path | None = None, prompt_tokens: int = 64,
                   decode_tokens: int = 128, greedy_tokens: int = 256, ppl_tokens: int = 4096,
                   only: list[str] | None = None, threads: int | None = None, log=print,
                   prebuilt: dict[str, Path] | None = None) -> list[Row]:
    """``prebuilt``: artifacts already made from this run, by variant (``"onnxruntime:fp32"``), which
    are then measured as they are instead of being made again (the demo exports before it compares)."""
    from genlab.export.common import ExportError, leading_agreement, validation_tokens

    run = Path(run)
    cfg = runs.read_config(run, family="lm")
    if cfg.get("quantization"):
        raise ConfigError("give the float run; the benchmark makes its own quantized variants")
    ctx = cfg["model"]["context"]
    prompt_tokens = max(2, min(prompt_tokens, ctx // 2))
    decode_tokens = max(1, min(decode_tokens, ctx - prompt_tokens))
    val = validation_tokens(run, max(ppl_tokens, prompt_tokens + decode_tokens))
    if val is None or len(val) < prompt_tokens + decode_tokens + 1:
        raise ConfigError(f"run '{run}' has too little validation text for the benchmark")
    work = Path(work or tempfile.mkdtemp(prefix="genlab-runtimes-"))
    _claim_work_dir(work, run)
    np.save(work / "sequence.npy", val[: prompt_tokens + decode_tokens])
    np.save(work / "val.npy", val[:ppl_tokens])
    wanted = [v for v in VARIANTS if not only or v[0] in only or f"{v[0]}:{v[1]}" in only]
    if not wanted:
        raise ConfigError(f"--only matches no runtime; choose from: {', '.join(sorted({v[0] for v in VARIANTS}))}")
    rows, reference = [], None
    for runtime, precision in [("pytorch", "fp32")] + [v for v in wanted if v != ("pytorch", "fp32")]:
        row = Row(runtime, precision)
        key = f"{runtime}-{precision}".replace(".", "")
        try:
            log(f"{runtime} {precision}: preparing")
            path = (prebuilt or {}).get(f"{runtime}:{precision}") or prepare(run, work, runtime, precision, log)
        except Skip as e:
            row.note = f"skipped: {e}"
            rows.append(row)
            continue
        except ExportError as e:  # e.g. an int8 export beyond its parity tolerance: the table says so
            row.note = f"failed: {str(e)[:200]}"
            rows.append(row)
            continue
        spec = dict(runtime=runtime, precision=precision, path=str(path), run=str(run), work=str(work), key=key,
                    prompt_tokens=prompt_tokens, greedy_tokens=greedy_tokens, greedy_prompt="\n",
                    threads=threads or torch.get_num_threads())
        log(f"{runtime} {precision}: measuring")
        proc = subprocess.run([sys.executable, "-c", "from genlab.bench_runtimes import _worker_main; _worker_main()",
                               json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            row.note = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
            rows.append(row)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        row.size_bytes = _size(path if runtime != "pytorch" else path / runs.WEIGHTS)
        row.load_s, row.prefill_ms, row.decode_tok_s = res["load_s"], res["prefill_ms"], res["decode_tok_s"]
        row.peak_rss_mb, row.generate_tok_s = res["peak_rss_mb"], res.get("generate_tok_s")
        logits = np.load(work / f"logits-{key}.npy")
        if reference is None:
            reference = {"logits": logits, "greedy": res["greedy"], "loss": res["loss"]}
        row.max_logit_diff = float(np.abs(logits - reference["logits"]).max())
        ref_greedy = reference["greedy"]
        row.greedy_tokens = len(ref_greedy)
        row.greedy_agreement = leading_agreement(ref_greedy, res["greedy"])
        row.ppl = float(np.exp(res["loss"]))
        row.ppl_change_pct = 100 * float(np.expm1(res["loss"] - reference["loss"]))
        rows.append(row)
    return rows


def _claim_work_dir(work: Path, run: Path) -> None:
    """Variants in ``work`` are reused only if they were made from these very weights; otherwise
    (the run was retrained, or another run used the folder) they are removed first."""
    import shutil

    weights = (run / runs.WEIGHTS).stat()
    source = {"run": str(run.resolve()), "size": weights.st_size, "mtime_ns": weights.st_mtime_ns}
    stamp = work / "source.json"
    if work.exists() and any(work.iterdir()):
        try:
            same = json.loads(stamp.read_text()) == source
        except (OSError, ValueError):
            same = False
        if not same:
            if not stamp.exists():
                raise ConfigError(f"--work '{work}' is a non-empty folder genlab did not make; give another one")
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(source))


def markdown_table(rows: list[Row]) -> str:
    base = next((r.decode_tok_s for r in rows if (r.runtime, r.precision) == ("pytorch", "fp32")), 0.0)
    lines = ["| runtime | precision | file size | load | prefill | decode tok/s (p50) | vs eager fp32 | "
             "peak RSS | max logit diff | greedy agreement | perplexity (change) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.note:
            lines.append(f"| {r.runtime} | {r.precision} | {r.note} |||||||||")
            continue
        dec = f"{r.decode_tok_s:,.0f}"
        if r.generate_tok_s is not None:
            dec += f" (generate(): {r.generate_tok_s:,.0f})"
        ratio = f"{r.decode_tok_s / base:.2f}x" if base else ""
        lines.append(
            f"| {r.runtime} | {r.precision} | {r.size_bytes / 1e6:.2f} MB | {r.load_s:.2f} s | {r.prefill_ms:.1f} ms "
            f"| {dec} | {ratio} | {r.peak_rss_mb:,.0f} MB | {r.max_logit_diff:.2g} | "
            f"{r.greedy_agreement}/{r.greedy_tokens} | {r.ppl:.3f} ({r.ppl_change_pct:+.2f}%) |")
    return "\n".join(lines)


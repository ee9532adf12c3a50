"""`genlab bench decode RUN`: batch-1 greedy decoding of one LM, genlab next to transformers and llama.cpp.

Rows: genlab at fp32, bf16, int8 and int4 (quantized runs made from RUN, group size 32), each with the
fast path on and off (``load_lm(..., fast=...)``); transformers ``generate()`` at fp32 on an HF
export of the same weights; llama.cpp (llama-cpp-python) on genlab's own GGUF exports (f16, q8_0) and,
for a run imported from a GGUF file, on that original file.

Every row runs in a fresh worker process (so its peak memory is its own) on the same token ids:

- decode tok/s: a short chat-like prompt, then ``new_tokens`` greedy tokens past end-of-text. genlab and
  transformers are timed through their users' calls (``LanguageModel.generate``, ``model.generate``) as
  (T(N) - T(1)) / (N - 1), so the prompt and the first token are not counted; llama.cpp's token
  generator is timed from its first token to its N-th.
- time to first token: a ``prompt_tokens`` prompt, prefill plus the first sampled token.
- weight bytes read per token (every weight once; an untied input embedding only its looked-up row),
  and the memory-bandwidth bound: bandwidth (measured in the parent, same run) / bytes per token.
- parity against genlab fp32 eager: max |logit diff| over the prompt and the reference continuation
  (teacher-forced), and identical leading greedy tokens.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genlab.errors import ConfigError, GenlabError

if TYPE_CHECKING:
    import torch

# No torch (nor genlab.runs, which imports it) at module level: the llama.cpp workers import this
# module, and their peak memory must be llama.cpp's alone, as for its users.

GENLAB_PRECISIONS = ("fp32", "bf16", "int8", "int4")
# The llama.cpp row each genlab precision is compared with (fp32 has none: genlab's GGUF export has no f32).
SAME_PRECISION = {"bf16": "f16", "int8": "q8_0", "int4": "4-bit"}
CHAT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


@dataclass
class DecodeRow:
    runtime: str  # genlab | transformers | llama.cpp
    precision: str  # fp32 bf16 int8 int4 | f16 q8_0 | the original GGUF's type (e.g. Q4_1)
    mode: str = ""  # genlab: fast | eager; llama.cpp: genlab GGUF | original file
    decode_tok_s: float = 0.0
    ttft_ms: float = 0.0
    peak_rss_mb: float = 0.0
    bytes_per_token: int = 0
    bound_tok_s: float = 0.0  # memory bandwidth / bytes per token
    max_logit_diff: float = 0.0
    greedy_agreement: int = 0
    greedy_tokens: int = 0
    vs_transformers: float | None = None
    vs_llamacpp: float | None = None
    note: str = ""

    @property
    def label(self) -> str:
        return " ".join(x for x in (self.runtime, self.precision, self.mode) if x)

    @property
    def share_of_bound(self) -> float:
        return self.decode_tok_s / self.bound_tok_s if self.bound_tok_s else 0.0


@dataclass
class DecodeBench:
    rows: list[DecodeRow]
    bandwidth_1: float  # bytes/s, one thread
    bandwidth_n: float  # bytes/s, ``threads`` threads (the bound uses this one)
    threads: int
    prompt_tokens: int
    chat_tokens: int
    new_tokens: int
    notes: list[str]


# ---- what a decode step reads -----------------------------------------------------------------------

def module_bytes_per_token(model: torch.nn.Module, embedding: torch.nn.Module | None,
                           head: torch.nn.Module | None) -> int:
    """Bytes of stored weights one decode step reads: every tensor once (tied ones once), except that
    an input embedding not shared with the LM head is read one row per token."""
    head_ptrs = {t.data_ptr() for t in head.state_dict().values()} if head is not None else set()
    embed_ptrs = {t.data_ptr() for t in embedding.state_dict().values()} if embedding is not None else set()
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() in seen or t.numel() == 0:
            continue
        seen.add(t.data_ptr())
        n = t.numel() * t.element_size()
        if t.data_ptr() in embed_ptrs and t.data_ptr() not in head_ptrs and t.dim() >= 1:
            n //= t.shape[0]
        total += n
    return total


def gguf_info(path: Path) -> tuple[int, str]:
    """(weight bytes per token, file type name such as 'Q4_1') of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    total = 0
    for name, t in tensors.items():
        n = int(t.n_bytes)
        if name == "token_embd.weight" and "output.weight" in tensors:  # untied: one row looked up
            n //= int(t.shape[-1]) if len(t.shape) > 1 else 1
        total += n
    kind = "gguf"
    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            kind = gguf.LlamaFileType(int(field.parts[-1][0])).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    return total, kind


# ---- measuring (worker process) ---------------------------------------------------------------------

def _genlab_generate(lm, ids: list[int], n: int) -> tuple[float, list[int]]:
    # The user's call, fed our exact token ids (every row sees the same ones, whatever its tokenizer).
    lm.encode = lambda _text: list(ids)
    t = time.perf_counter()
    lm.generate("", max_tokens=n, temperature=0.0, ignore_eot=True)
    return time.perf_counter() - t, list(lm.info.completion_ids)


def _hf_generate(hf, ids: list[int], n: int) -> tuple[float, list[int]]:
    import torch

    x = torch.tensor([ids])
    t = time.perf_counter()
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                      pad_token_id=0)
    return time.perf_counter() - t, out[0, len(ids):].tolist()


def _time_by_difference(gen, spec: dict) -> tuple[float, float, list[int]]:
    """(decode tok/s, time to first token in s, greedy ids) through a generate(ids, n) call."""
    chat, long, n = spec["chat_ids"], spec["long_ids"], spec["new_tokens"]
    gen(chat, n)  # warm-up: the decode path (kernels built on first use are built here) ...
    gen(long, 1)  # ... and the long prefill
    ttft = statistics.median(gen(long, 1)[0] for _ in range(3))
    one = statistics.median(gen(chat, 1)[0] for _ in range(3))
    runs_n = [gen(chat, n) for _ in range(2)]
    full = statistics.median(r[0] for r in runs_n)
    return (n - 1) / max(full - one, 1e-9), ttft, runs_n[-1][1]


def _teacher_forced(runner, seq: list[int], prompt_len: int) -> np.ndarray:
    """Logits predicting seq[1:]: the prompt in one call, then one cached step per token (the decode path)."""
    import torch

    cache = runner.new_cache(1)
    out = [runner(torch.tensor([seq[:prompt_len]]), cache, 0)[0].float()]
    for i in range(prompt_len, len(seq) - 1):
        out.append(runner(torch.tensor([[seq[i]]]), cache, i)[0].float())
    return torch.cat(out).numpy()


def _peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; see bench_runtimes._peak_rss_mb, which is
    not imported here because its module imports torch)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _measure_torch(spec: dict) -> dict:
    import torch

    from genlab.bench_runtimes import load_variant

    torch.set_num_threads(spec["threads"])
    torch.set_grad_enabled(False)
    lm = load_variant(Path(spec["path"]), spec["precision"], fast=spec["mode"] != "eager")
    if spec["runtime"] == "transformers":
        hf = lm.model.hf
        tok_s, ttft, greedy = _time_by_difference(lambda ids, n: _hf_generate(hf, ids, n), spec)
        nbytes = module_bytes_per_token(hf, hf.get_input_embeddings(), hf.get_output_embeddings())
    else:
        tok_s, ttft, greedy = _time_by_difference(lambda ids, n: _genlab_generate(lm, ids, n), spec)
        model = lm.model
        nbytes = module_bytes_per_token(model, getattr(model, "embed", None), getattr(model, "lm_head", None))
    peak = _peak_rss_mb()  # before the parity pass, which is not part of decoding
    seq = spec["chat_ids"] + (spec["reference"] or greedy)
    logits = _teacher_forced(lm.model, seq, len(spec["chat_ids"]))
    return {"decode_tok_s": tok_s, "ttft_ms": 1000 * ttft, "peak_rss_mb": peak, "bytes_per_token": nbytes,
            "greedy": greedy, "logits": logits}


def _measure_llamacpp(spec: dict) -> dict:
    from llama_cpp import Llama

    chat, long, n, threads = spec["chat_ids"], spec["long_ids"], spec["new_tokens"], spec["threads"]
    n_ctx = max(len(long), len(chat) + n) + 8
    llm = Llama(model_path=spec["path"], n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                logits_all=False, verbose=False, seed=0)

    def stamps(ids: list[int], count: int) -> tuple[list[float], list[int]]:
        llm.reset()  # no reuse of a cached prefix: every call pays for its prompt
        t0, times, toks = time.perf_counter(), [], []
        gen = llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0)  # greedy; no end-of-text check here
        for tok in gen:
            times.append(time.perf_counter() - t0)
            toks.append(int(tok))
            if len(toks) == count:
                break
        gen.close()
        return times, toks

    stamps(chat, n)  # warm-up
    stamps(long, 1)
    ttft = statistics.median(stamps(long, 1)[0][0] for _ in range(3))
    rates, greedy = [], []
    for _ in range(2):
        times, greedy = stamps(chat, n)
        rates.append((n - 1) / max(times[-1] - times[0], 1e-9))
    peak = _peak_rss_mb()
    llm.close()
    seq = chat + (spec["reference"] or greedy)
    scorer = Llama(model_path=spec["path"], n_ctx=len(seq) + 8, n_batch=512, n_threads=threads, logits_all=True,
                   verbose=False, seed=0)
    scorer.eval(seq[:-1])
    logits = np.array(scorer.scores[: len(seq) - 1], dtype=np.float32)
    return {"decode_tok_s": statistics.median(rates), "ttft_ms": 1000 * ttft, "peak_rss_mb": peak,
            "bytes_per_token": gguf_info(Path(spec["path"]))[0], "greedy": greedy, "logits": logits}


def _worker_main() -> None:
    spec = json.loads(sys.argv[1])
    res = _measure_llamacpp(spec) if spec["runtime"] == "llama.cpp" else _measure_torch(spec)
    logits = res.pop("logits")
    work = Path(spec["work"])
    ref_path = work / "reference-logits.npy"
    if spec["reference"] is None:  # this row is the reference
        np.save(ref_path, logits)
        res["max_logit_diff"] = 0.0
    else:
        ref = np.load(ref_path)
        m = min(len(ref), len(logits))
        res["max_logit_diff"] = float(np.abs(logits[:m, : ref.shape[1]] - ref[:m]).max())
    print(json.dumps(res))


# ---- the benchmark (parent) -------------------------------------------------------------------------

@dataclass
class Planned:
    row: DecodeRow
    key: str  # which artifact prepare() makes: pytorch:int8, transformers:fp32, llama.cpp:q8_0, original


def plan(run: Path, only: list[str] | None = None) -> list[Planned]:
    """The rows to measure, reference (genlab fp32 eager) first. ``only``: runtimes (genlab,
    transformers, llama.cpp), runtime:precision (genlab:int8, llama.cpp:q8_0, llama.cpp:original) or
    genlab:precision:mode (genlab:int8:fast)."""
    from genlab import runs

    cfg = runs.read_config(run, family="lm")
    out = [Planned(DecodeRow("genlab", "fp32", "eager"), "pytorch:fp32")]
    for p in GENLAB_PRECISIONS:
        for mode in ("fast", "eager"):
            if (p, mode) != ("fp32", "eager"):
                out.append(Planned(DecodeRow("genlab", p, mode), f"pytorch:{p}"))
    out.append(Planned(DecodeRow("transformers", "fp32", "generate()"), "transformers:fp32"))
    for q in ("f16", "q8_0"):
        out.append(Planned(DecodeRow("llama.cpp", q, "genlab GGUF"), f"llama.cpp:{q}"))
    original = (cfg.get("imported_from") or {}).get("path")
    if original and str(original).endswith(".gguf"):
        out.append(Planned(DecodeRow("llama.cpp", "original", "original file"), "original"))
    if only:
        names = {"genlab", "transformers", "llama.cpp"}
        bad = [o for o in only if o.split(":")[0] not in names]
        if bad:
            raise ConfigError(f"--only {','.join(bad)}: choose runtimes from genlab, transformers, llama.cpp "
                              f"(or runtime:precision, e.g. genlab:int8, llama.cpp:q8_0, llama.cpp:original)")
        keep = [p for p in out[1:] if p.row.runtime in only or f"{p.row.runtime}:{p.row.precision}" in only
                or f"{p.row.runtime}:{p.row.precision}:{p.row.mode}" in only]
        out = out[:1] + keep
    return out


def _prepare(run: Path, work: Path, key: str):
    """(artifact path, original GGUF type or '') for one row; raises bench_runtimes.Skip."""
    from genlab import runs
    from genlab.bench_runtimes import Skip, _have, prepare

    if key == "original":
        if not _have("llama_cpp"):
            raise Skip("llama-cpp-python not installed (make gguf-check)")
        path = Path(runs.read_config(run)["imported_from"]["path"])
        if not path.is_file():
            raise Skip(f"the original file {path} is gone")
        return path, gguf_info(path)[1]
    runtime, precision = key.split(":")
    return prepare(run, work, runtime, precision, log=lambda m: None), ""


def _prompt_ids(run: Path, cfg: dict, prompt_tokens: int) -> tuple[list[int], list[int]]:
    """(chat-like prompt ids, a long prompt of ``prompt_tokens`` ids) in the run's own tokenizer."""
    from genlab import runs
    from genlab.data import tokenizer as tokmod
    from genlab.generate.chat import chat_prompt

    tok = tokmod.load(run / runs.TOKENIZER)
    chat = tok.encode(chat_prompt(cfg.get("chat_template"), CHAT)[0]).ids
    # Any real text does for a prefill: genlab's own sources, repeated until long enough.
    src = "".join(p.read_text() for p in sorted(Path(__file__).parent.glob("*.py"))[:8])
    long: list[int] = []
    while len(long) < prompt_tokens:
        long += tok.encode(src).ids
    return chat, long[:prompt_tokens]


def bench_decode(run: str | Path, prompt_tokens: int = 512, new_tokens: int = 128, threads: int | None = None,
                 work: str | Path | None = None, only: list[str] | None = None, log=print) -> DecodeBench:
    import torch

    from genlab import runs
    from genlab.bench_runtimes import Skip, _claim_work_dir, fast_flag
    from genlab.export.common import leading_agreement
    from genlab.sizing.hardware import measure_bandwidth

    run = Path(run)
    cfg = runs.read_config(run, family="lm")
    if cfg.get("quantization"):
        raise ConfigError("give the float run; the benchmark makes its own quantized variants")
    if prompt_tokens < 1 or new_tokens < 2:
        raise ConfigError("--prompt-tokens must be at least 1 and --new-tokens at least 2")
    if threads is not None and threads < 1:
        raise ConfigError("--threads must be positive")
    threads = threads or torch.get_num_threads()
    planned = plan(run, only)
    ctx = cfg["model"]["context"]
    chat, long = _prompt_ids(run, cfg, min(prompt_tokens, ctx - 2))
    chat = chat[-(ctx // 2):]  # a tiny test model's context is short
    new_tokens = min(new_tokens, ctx - len(chat) - 1)
    notes = []
    if len(long) < prompt_tokens:
        notes.append(f"prompt cut to {len(long)} tokens (the model's context is {ctx})")
    if fast_flag() is None:
        notes.append("load_lm has no fast= here: the fast and eager rows run the same path")

    work = Path(work or tempfile.mkdtemp(prefix="genlab-decode-"))
    _claim_work_dir(work, run)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bw1 = measure_bandwidth(torch.device("cpu"), seconds=1.0)
        torch.set_num_threads(threads)
        bwn = measure_bandwidth(torch.device("cpu"), seconds=1.0)
    finally:
        torch.set_num_threads(saved)

    rows, reference = [], None
    for p in planned:
        row = p.row
        rows.append(row)
        try:
            log(f"{row.label}: preparing")
            path, kind = _prepare(run, work, p.key)
        except Skip as e:
            row.note = f"skipped: {e}"
            continue
        except GenlabError as e:  # e.g. an export that fails its own parity check: the row says so
            row.note = f"not made: {e}"
            continue
        if kind:
            row.precision = kind
        spec = dict(runtime=row.runtime, precision=row.precision, mode=row.mode, path=str(path), work=str(work),
                    threads=threads, chat_ids=chat, long_ids=long, new_tokens=new_tokens, reference=reference)
        log(f"{row.label}: measuring")
        proc = subprocess.run([sys.executable, "-c", "from genlab.bench_decode import _worker_main; _worker_main()",
                               json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            if reference is None:
                raise ConfigError("the reference row (genlab fp32 eager) failed: "
                                  + (proc.stderr.strip().splitlines() or ["?"])[-1][:200])
            row.note = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if reference is None:
            reference = res["greedy"]
        row.decode_tok_s, row.ttft_ms, row.peak_rss_mb = res["decode_tok_s"], res["ttft_ms"], res["peak_rss_mb"]
        row.bytes_per_token, row.max_logit_diff = res["bytes_per_token"], res["max_logit_diff"]
        row.bound_tok_s = bwn / row.bytes_per_token if row.bytes_per_token else 0.0
        row.greedy_tokens = len(reference)
        row.greedy_agreement = leading_agreement(reference, res["greedy"])
    _ratios(rows)
    return DecodeBench(rows, bw1, bwn, threads, len(long), len(chat), new_tokens, notes)


def _ratios(rows: list[DecodeRow]) -> None:
    measured = [r for r in rows if not r.note]
    hf = next((r for r in measured if r.runtime == "transformers"), None)
    cpp = {r.precision: r for r in measured if r.runtime == "llama.cpp"}
    four_bit = next((r for k, r in cpp.items() if re.match(r"I?Q4", k, re.IGNORECASE)), None)
    for r in measured:
        if r.runtime != "genlab":
            continue
        if hf is not None and hf.decode_tok_s:
            r.vs_transformers = r.decode_tok_s / hf.decode_tok_s
        other = SAME_PRECISION.get(r.precision)
        match = four_bit if other == "4-bit" else cpp.get(other or "")
        if match is not None and match.decode_tok_s:
            r.vs_llamacpp = r.decode_tok_s / match.decode_tok_s


HEADERS = ["row", "decode tok/s", "TTFT", "peak RSS", "weight bytes/token", "bound tok/s", "share of bound",
           "max logit diff", "greedy agreement", "vs transformers", "vs llama.cpp (same precision)"]


def _ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "—"


def table_rows(bench: DecodeBench) -> list[list[str]]:
    out = []
    for r in bench.rows:
        if r.note:
            out.append([r.label, r.note] + [""] * (len(HEADERS) - 2))
            continue
        out.append([r.label, f"{r.decode_tok_s:,.1f}", f"{r.ttft_ms:,.1f} ms", f"{r.peak_rss_mb:,.0f} MB",
                    f"{r.bytes_per_token / 1e6:,.1f} MB", f"{r.bound_tok_s:,.0f}", f"{r.share_of_bound:.0%}",
                    f"{r.max_logit_diff:.2g}", f"{r.greedy_agreement}/{r.greedy_tokens}", _ratio(r.vs_transformers),
                    _ratio(r.vs_llamacpp)])
    return out


def notes_text(bench: DecodeBench) -> str:
    return (f"Batch 1, greedy, {bench.threads} threads. Decode: {bench.new_tokens} tokens after a "
            f"{bench.chat_tokens}-token chat prompt, past end-of-text, after a warm-up; genlab and transformers "
            f"timed through `generate` as (T(N) - T(1)) / (N - 1), llama.cpp from its first token to its last. "
            f"TTFT: a {bench.prompt_tokens}-token prompt, prefill + first token (median of 3). Each row in its own "
            f"process; peak RSS = its VmHWM before the parity pass. Bound = read bandwidth measured in the same "
            f"run ({bench.bandwidth_n / 1e9:.1f} GB/s at {bench.threads} threads, {bench.bandwidth_1 / 1e9:.1f} GB/s "
            f"at 1; summing 256 MiB) / weight bytes read per token (an untied input embedding counts one row). "
            f"Parity against genlab fp32 eager: max |logit diff| over prompt + reference continuation "
            f"(teacher-forced), identical leading greedy tokens. vs llama.cpp: bf16 ÷ f16, int8 ÷ q8_0, int4 ÷ the "
            f"4-bit GGUF.") + "".join(f" Note: {n}." for n in bench.notes)

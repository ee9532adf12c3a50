"""`genlab bench serve RUN`: `genlab serve` and llama.cpp's OpenAI server under the same load.

Each server runs in its own process on 127.0.0.1 (a free port), started here and stopped at the end:
`genlab serve` with RUN as its text model, and, when llama-cpp-python's server is installed,
``python -m llama_cpp.server`` on the GGUF of the same model (the file the run was imported from,
else genlab's q8_0 export of it), both on ``threads`` CPU threads. For each client level, that many
clients each send ``requests`` streaming chat completions in sequence (genlab.studio.bench's load
generator). genlab is asked for exactly ``max_tokens`` (``ignore_eos``), llama.cpp for at least as many
(its ``min_tokens``, which holds back its end-of-text token); the tokens each really streams are
counted (genlab's usage; llama.cpp's stream has none, so its chunks with text).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from genlab.bench_decode import CHAT
from genlab.errors import ConfigError, GenlabError
from genlab.studio.bench import percentile, run_level


@dataclass
class ServeLevel:
    server: str
    clients: int
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0  # all clients together
    per_client_tok_s: float = 0.0  # mean over requests of tokens / latency: what one user sees
    p50_latency_s: float = 0.0
    p95_latency_s: float = 0.0
    p50_ttft_s: float = 0.0
    p95_ttft_s: float = 0.0
    speedup: float = 0.0  # tokens/s over the same server with one client
    cpu_ms_per_token: float = 0.0  # the server process's CPU time (user + system) per token; 0: unknown
    note: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on 127.0.0.1, ready once ``GET /v1/models`` answers; stopped on exit."""

    def __init__(self, name: str, argv: list[str], port: int, cwd: Path, threads: int, start_s: float = 600) -> None:
        self.name, self.url, self.start_s = name, f"http://127.0.0.1:{port}", start_s
        self.log = cwd / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.err = open(self.log, "w")  # noqa: SIM115  (the server writes to it until __exit__)
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=self.err)

    def __enter__(self) -> Server:
        import httpx

        deadline = time.time() + self.start_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.__exit__()
                raise GenlabError(f"{self.name} server exited at start")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise GenlabError(f"{self.name} server did not answer within {self.start_s:.0f} s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def _why(e: Exception, log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
    errors = [x for x in lines if "Error" in x] or lines  # the exception's line, if the server logged one
    return f"{str(e)[:120]}" + (f" (server log: {errors[-1].strip()[:160]})" if errors else "")


def llama_server_missing() -> str | None:
    """Why llama.cpp's server cannot run here, or None."""
    need = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings", "uvicorn")
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    return f"pip install 'llama-cpp-python[server]' (missing: {', '.join(missing)})" if missing else None


def _gguf_for(run: Path, cfg: dict, work: Path, log) -> tuple[Path, str]:
    """The GGUF of the same model and how the table names it."""
    from genlab.bench_decode import gguf_info

    original = (cfg.get("imported_from") or {}).get("path")
    if original and str(original).endswith(".gguf") and Path(original).is_file():
        return Path(original), f"llama.cpp ({gguf_info(Path(original))[1]}, original file)"
    from genlab.export.gguf import export_gguf

    out = work / "model-q8_0.gguf"
    log("llama.cpp: exporting the run to q8_0 GGUF")
    export_gguf(run, out, "q8_0", log=lambda m: None)
    return out, "llama.cpp (q8_0, genlab GGUF)"


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None where /proc cannot say (not Linux).
    On a shared machine it counts the server's own work, which wall time mixes with others' jobs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _measure(server: Server, levels: list[int], per_client: int, make_request, warmup) -> list[ServeLevel]:
    asyncio.run(run_level(server.url, 1, 1, warmup))  # the first request pays for lazy start-up
    out = []
    for clients in levels:
        cpu0 = _cpu_seconds(server.proc.pid)
        stats, wall = asyncio.run(run_level(server.url, clients, per_client, make_request))
        cpu1 = _cpu_seconds(server.proc.pid)
        lat, ttft = [s.latency_s for s in stats], [s.ttft_s for s in stats]
        tokens = sum(s.tokens for s in stats)
        cpu = 1000 * (cpu1 - cpu0) / tokens if cpu0 is not None and cpu1 is not None and tokens else 0.0
        out.append(ServeLevel(server.name, clients, len(stats), tokens, round(wall, 3), tokens / wall,
                              sum(s.tokens / s.latency_s for s in stats) / len(stats),
                              percentile(lat, 0.5), percentile(lat, 0.95), percentile(ttft, 0.5), percentile(ttft, 0.95),
                              cpu_ms_per_token=cpu))
    base = out[0].tokens_per_s
    for r in out:
        r.speedup = r.tokens_per_s / base if base else 0.0
    return out


def bench_serve(run: str | Path, levels: list[int], requests: int = 4, max_tokens: int = 64,
                threads: int | None = None, llama: bool = True, log=print, serve_args: tuple[str, ...] = (),
                name: str = "genlab") -> tuple[list[ServeLevel], str]:
    """The rows (genlab's levels, then llama.cpp's) and a line saying what each server ran.
    ``serve_args``: more `genlab serve` options (e.g. ``("--prefix-cache-tokens", "0")``), to
    compare its settings side by side; ``name`` labels its rows."""
    from genlab import runs

    run = Path(run).resolve()
    cfg = runs.read_config(run, family="lm")
    if not levels or min(levels) < 1:
        raise ConfigError("--clients must be positive numbers separated by commas, e.g. 1,4,16")
    if requests < 1 or max_tokens < 1:
        raise ConfigError("--requests and --max-tokens must be positive")
    if threads is not None and threads < 1:
        raise ConfigError("--threads must be positive")
    import httpx
    import torch

    threads = threads or torch.get_num_threads()
    levels = sorted(set(levels) | {1})  # one client: the baseline each speed-up is measured against

    def chat(max_n: int, fixed_length: dict):
        def make(c: int, i: int) -> tuple[str, dict]:
            # A prompt of its own per request: no server answers from a cached identical prompt.
            messages = [{**CHAT[0], "content": f"Request {c}.{i}. {CHAT[0]['content']}"}]
            return "/v1/chat/completions", {"messages": messages, "max_tokens": max_n, "stream": True,
                                            "temperature": 0.0, **fixed_length}
        return make

    rows: list[ServeLevel] = []
    what = []
    with tempfile.TemporaryDirectory(prefix="genlab-bench-serve-") as tmp:
        work = Path(tmp)
        # cwd = the temp folder, so `genlab serve` loads no default image run and writes no studio history here.
        port = _free_port()
        argv = [sys.executable, "-m", "genlab", "serve", "--text-run", str(run), "--port", str(port),
                "--data-dir", str(work / "studio"), "--max-batch", str(max(levels)),
                "--max-tokens-limit", str(max_tokens), "--device", "cpu", *serve_args]
        log(f"genlab serve: starting ({run.name}, batches of up to {max(levels)})")
        fixed = {"ignore_eos": True, "stream_options": {"include_usage": True}}
        server = Server(name, argv, port, work, threads)
        try:
            with server:
                rows += _measure(server, levels, requests, chat(max_tokens, fixed), chat(4, fixed))
        except (RuntimeError, httpx.HTTPError) as e:
            raise GenlabError(f"genlab serve failed under load: {_why(e, server.log)}") from None
        what.append(f"genlab serve{''.join(' ' + a for a in serve_args)}: {run.name} ({(cfg.get('quantization') or {}).get('method', 'fp32')}), "
                    f"max batch {max(levels)}, {threads} threads")
        missing = llama_server_missing() if llama else "not asked for"
        if missing:
            rows.append(ServeLevel("llama.cpp", 0, note=f"skipped: {missing}"))
        else:
            try:
                gguf, name = _gguf_for(run, cfg, work, log)
            except GenlabError as e:  # the q8_0 export failed its own parity check
                rows.append(ServeLevel("llama.cpp", 0, note=f"not made: {e}"))
                return rows, "; ".join(what)
            port = _free_port()
            argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                    "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
                    # Room for prompt + reply even for a tiny test model (llama.cpp only warns past its training context).
                    "--n_ctx", str(min(max(cfg["model"]["context"], 1024), 8192)),
                    # Its default (True) computes logits for every prompt position, which a chat server never reads.
                    "--logits_all", "false",
                    # Its default drops a running stream when the next request comes; queue them instead.
                    "--interrupt_requests", "false"]
            log(f"{name}: starting")
            server = Server(name, argv, port, work, threads)
            try:
                with server:
                    rows += _measure(server, levels, requests, chat(max_tokens, {"min_tokens": max_tokens}),
                                     chat(4, {"min_tokens": 4}))
                what.append(f"{name}: {gguf.name}, {threads} threads")
            except (GenlabError, RuntimeError, httpx.HTTPError) as e:  # genlab's rows stand; this row says why
                rows.append(ServeLevel(name, 0, note=f"failed: {_why(e, server.log)}"))
    return rows, "; ".join(what)


HEADERS = ["server", "clients", "requests", "tokens", "total tok/s", "per-client tok/s", "p50 latency",
           "p95 latency", "p50 TTFT", "p95 TTFT", "vs 1 client", "server CPU/token"]


def table_rows(rows: list[ServeLevel]) -> list[list[str]]:
    out = []
    for r in rows:
        if r.note:
            out.append([r.server, r.note] + [""] * (len(HEADERS) - 2))
            continue
        out.append([r.server, str(r.clients), str(r.requests), str(r.tokens), f"{r.tokens_per_s:,.1f}",
                    f"{r.per_client_tok_s:,.1f}", f"{r.p50_latency_s:.2f} s", f"{r.p95_latency_s:.2f} s",
                    f"{1000 * r.p50_ttft_s:,.0f} ms", f"{1000 * r.p95_ttft_s:,.0f} ms", f"{r.speedup:.2f}x",
                    f"{r.cpu_ms_per_token:,.0f} ms" if r.cpu_ms_per_token else "—"])
    return out

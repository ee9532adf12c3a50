"""A bounded load test of `genlab serve`: throughput and p50/p95 latency with 1, 4, 16 concurrent
streaming clients, against one-at-a-time (one client, requests in sequence) as the baseline.

It starts its own server on 127.0.0.1 (a free port) with the given LM run, so the figures are
side by side from one process on one machine; every request asks for exactly ``max_tokens``
tokens (``ignore_eos``) so that all levels do the same work.

``stream_request`` / ``run_level`` are the load generator; `genlab bench serve` (genlab.bench_serve)
drives the same one against `genlab serve` and llama.cpp's server, each in its own process.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from genlab.errors import ConfigError


@dataclass
class LoadResult:
    clients: int
    requests: int
    tokens: int
    seconds: float
    tokens_per_s: float
    p50_latency_s: float
    p95_latency_s: float
    mean_batch: float  # the scheduler's mean batch size while this level ran
    speedup: float = 1.0  # tokens/s over the one-at-a-time baseline


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@dataclass
class RequestStats:
    latency_s: float  # request sent -> stream ended
    ttft_s: float  # request sent -> first chunk with text
    tokens: int  # the usage the server reports, else the chunks with text (one token each, or a few)


async def stream_request(client, url: str, path: str, body: dict) -> RequestStats:
    """One streaming OpenAI request (``/v1/completions`` or ``/v1/chat/completions``), timed."""
    t = time.perf_counter()
    ttft, chunks, usage = 0.0, 0, None
    async with client.stream("POST", url + path, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"server answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if choice.get("text") or (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    ttft = ttft or time.perf_counter() - t
    return RequestStats(time.perf_counter() - t, ttft, chunks if usage is None else usage)


async def run_level(url: str, clients: int, per_client: int, make_request, headers: dict | None = None
                    ) -> tuple[list[RequestStats], float]:
    """``clients`` concurrent clients, each sending ``per_client`` requests in sequence;
    ``make_request(client, i) -> (path, body)``. Returns every request's stats and the wall time."""
    import httpx

    async with httpx.AsyncClient(timeout=600, headers=headers or {}) as client:
        async def worker(c: int) -> list[RequestStats]:
            return [await stream_request(client, url, *make_request(c, i)) for i in range(per_client)]

        t = time.perf_counter()
        done = await asyncio.gather(*(worker(c) for c in range(clients)))
        wall = time.perf_counter() - t
    return [s for w in done for s in w], wall


def _completion(max_tokens: int):
    def make(c: int, i: int) -> tuple[str, dict]:
        return "/v1/completions", {"prompt": "The", "max_tokens": max_tokens, "stream": True, "temperature": 1.0,
                                   "seed": 1000 * c + i, "ignore_eos": True,
                                   "stream_options": {"include_usage": True}}
    return make


def bench_serve(text_run: str | Path, levels: tuple[int, ...] = (1, 4, 16), requests_per_client: int = 4,
                max_tokens: int = 64, max_batch: int = 16, device: str = "auto") -> list[LoadResult]:
    """Measure each concurrency level; level 1 is the one-at-a-time baseline (always measured first)."""
    from genlab.serve import ServerConfig, ServerThread, create_app

    if requests_per_client < 1 or max_tokens < 1 or not levels or min(levels) < 1:
        raise ConfigError("levels, requests per client and max_tokens must be positive")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ServerConfig(text_run=Path(text_run), data_dir=Path(tmp), max_batch=max_batch,
                           max_tokens_limit=max(max_tokens, 1), device=device)
        app = create_app(cfg)
        sched = app.state.service.scheduler
        results: list[LoadResult] = []
        with ServerThread(app) as srv:
            for clients in sorted(set(levels) | {1}):
                s0, t0 = sched.stats.steps, sched.stats.tokens
                stats, wall = asyncio.run(run_level(srv.url, clients, requests_per_client, _completion(max_tokens)))
                lat, tokens = [r.latency_s for r in stats], sum(r.tokens for r in stats)
                steps = sched.stats.steps - s0
                results.append(LoadResult(clients, len(lat), tokens, round(wall, 3), round(tokens / wall, 2),
                                          round(percentile(lat, 0.5), 3), round(percentile(lat, 0.95), 3),
                                          round((sched.stats.tokens - t0) / steps, 2) if steps else 0.0))
        base = results[0].tokens_per_s
        for r in results:
            r.speedup = round(r.tokens_per_s / base, 2) if base else 0.0
    return [r for r in results if r.clients in levels or r.clients == 1]


def markdown_table(results: list[LoadResult]) -> str:
    rows = ["| clients | requests | tokens | seconds | tokens/s | p50 latency (s) | p95 latency (s) | mean batch | vs one-at-a-time |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        d = asdict(r)
        rows.append("| " + " | ".join(str(d[k]) for k in ("clients", "requests", "tokens", "seconds", "tokens_per_s",
                                                             "p50_latency_s", "p95_latency_s", "mean_batch")) +
                    f" | {r.speedup}x |")
    return "\n".join(rows)

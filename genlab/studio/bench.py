"""A bounded load test of `genlab serve`: throughput and p50/p95 latency with 1, 4, 16 concurrent
streaming clients, against one-at-a-time (one client, requests in sequence) as the baseline.

It starts its own server on 127.0.0.1 (a free port) with the given LM run, so the figures are
side by side from one process on one machine; every request asks for exactly ``max_tokens``
tokens (``ignore_eos``) so that all levels do the same work.
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


async def _one(client, url: str, prompt: str, max_tokens: int, seed: int) -> tuple[float, int]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 1.0, "seed": seed,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t = time.perf_counter()
    tokens = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"server answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return time.perf_counter() - t, tokens


async def _level(url: str, clients: int, per_client: int, max_tokens: int, headers: dict) -> tuple[list[float], int, float]:
    import httpx

    async with httpx.AsyncClient(timeout=600, headers=headers) as client:
        async def worker(c: int) -> list[tuple[float, int]]:
            return [await _one(client, url, "The", max_tokens, 1000 * c + i) for i in range(per_client)]

        t = time.perf_counter()
        done = await asyncio.gather(*(worker(c) for c in range(clients)))
        wall = time.perf_counter() - t
    pairs = [p for w in done for p in w]
    return [p[0] for p in pairs], sum(p[1] for p in pairs), wall


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
                lat, tokens, wall = asyncio.run(_level(srv.url, clients, requests_per_client, max_tokens, {}))
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

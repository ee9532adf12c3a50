"""Smoke test of the serving load script: it runs, and its numbers add up (no speed asserted)."""

from __future__ import annotations

from genlab.studio.bench import bench_serve, markdown_table


def test_bench_serve_smoke(trained_run):
    results = bench_serve(trained_run, levels=(1, 3), requests_per_client=1, max_tokens=8, max_batch=4, device="cpu")
    assert [r.clients for r in results] == [1, 3]
    one, three = results
    assert (one.requests, three.requests) == (1, 3)
    assert one.tokens == 8 and three.tokens == 24  # ignore_eos: exactly max_tokens each
    assert one.speedup == 1.0 and three.p95_latency_s >= three.p50_latency_s > 0
    assert three.mean_batch >= 1.0
    assert "| 3 | 3 | 24 |" in markdown_table(results)

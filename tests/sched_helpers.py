"""Concurrent clients of a BatchScheduler for tests: one thread per prompt, each streaming its reply."""

from __future__ import annotations

import threading
from collections.abc import Callable

from genlab.generate.text import SamplingOptions


def greedy(max_tokens: int) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eot=True)


def stream_all(sched, prompts: list[str], options: Callable[[int], SamplingOptions]) -> list[str]:
    """Every prompt streamed at once (prompt ``i`` with ``options(i)``); the replies in prompt order."""
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = "".join(sched.stream(prompts[i], options(i)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return [results[i] for i in range(len(prompts))]

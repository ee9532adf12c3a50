"""The batching scheduler's prefill: prompts of different lengths prefilled together in chunks,
and the prefix cache, give what each prompt decoded alone gives; and the scheduler's memory (its
slot cache, its prefix cache) follows what is in flight."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from genlab.generate.text import LanguageModel, SamplingOptions, load_lm
from genlab.models.transformer import LMConfig, Transformer, cache_capacity
from genlab.studio.batching import BatchScheduler, PrefixCache, SlotCache

from .sched_helpers import greedy, stream_all

SYSTEM = "You are a helpful model. Answer in one line. "
QUESTIONS = ["The cat", "Old dog ran far away into", "A", "Every morning the small bird sang"]


@pytest.fixture(scope="module")
def lm(trained_run):
    return load_lm(trained_run, device="cpu")


def run_all(sched: BatchScheduler, prompts: list[str], max_tokens: int) -> list[str]:
    return stream_all(sched, prompts, lambda i: greedy(max_tokens))


@pytest.mark.parametrize("prefix_tokens", [0, 256])
def test_chunked_prefill_and_prefix_cache_match_decoding_alone(lm, prefix_tokens):
    prompts = [SYSTEM + q for q in QUESTIONS]
    lengths = [len(lm.encode(p)) for p in prompts]
    assert min(lengths) > 32 and max(lengths) < lm.config.context - 1  # two shareable blocks, no truncation
    # Chunks of 7 tokens: a prompt takes several passes, and one pass carries pieces of several prompts.
    sched = BatchScheduler(lm, max_batch=4, prefix_cache_tokens=prefix_tokens, prefill_chunk=7)
    try:
        first = run_all(sched, prompts[:1], 40)  # fills the prefix cache (when there is one)
        rest = run_all(sched, prompts[1:], 40)  # 40 tokens: the rows also cross the 64-token window shift
        for prompt, got in zip(prompts, first + rest, strict=True):
            assert got == lm.generate(prompt, max_tokens=40, temperature=0, ignore_eot=True), prompt
        st = sched.stats
        assert st.max_batch_seen > 1
        assert st.prefill_steps > len(prompts)  # chunked
        if prefix_tokens:
            assert st.prefix_tokens >= 3 * 32  # the three later prompts each reused the shared blocks
            assert st.prefill_tokens + st.prefix_tokens == sum(lengths)
        else:
            assert st.prefix_tokens == 0 and st.prefill_tokens == sum(lengths)
        assert sched.active == 0
    finally:
        sched.close()


def test_prompts_of_different_lengths_prefilled_in_one_pass(lm):
    """A large chunk: the waiting prompts go through one right-padded pass together."""
    prompts = ["x", "The cat sat on the mat and", "A dog", "Every morning the small bird sang because rain fell"]
    sched = BatchScheduler(lm, max_batch=4, prefix_cache_tokens=0, prefill_chunk=512)
    try:
        # All four are queued before the scheduler thread may look (it takes this lock to admit), so
        # the test does not depend on how the client threads happen to be scheduled.
        queues = [queue.Queue() for _ in prompts]
        with sched._cv:
            for prompt, q in zip(prompts, queues, strict=True):
                sched.submit(prompt, greedy(20), q.put)
        got = []
        for q in queues:
            pieces = []
            while (ev := q.get(timeout=120))[0] == "text":
                pieces.append(ev[1])
            assert ev[0] == "done", ev
            got.append("".join(pieces))
        for prompt, text in zip(prompts, got, strict=True):
            assert text == lm.generate(prompt, max_tokens=20, temperature=0, ignore_eot=True), prompt
        assert sched.stats.prefill_steps == 1  # the four waiting prompts shared one pass
    finally:
        sched.close()


def test_prefix_cache_matches_exact_prefixes_and_keeps_its_budget():
    cfg = LMConfig(vocab_size=50, context=128, n_layer=2, n_head=2, n_kv_head=1, d_model=16)
    slots = SlotCache(cfg, 1, torch.device("cpu"), torch.float32)
    slots.reserve(1, 64)
    for t in slots.k + slots.v:
        t.normal_()
    cache = PrefixCache(budget=32, block=16)
    a = list(range(40))
    cache.store(a, slots, 0)
    assert cache.tokens == 32  # two full blocks; the last 8 tokens are no block
    k, v = cache.lookup(a + [7, 7], limit=41)
    assert k[0].shape == (1, 32, 8) and torch.equal(k[1], slots.k[1][0, :, :32]) and torch.equal(v[0], slots.v[0][0, :, :32])
    assert cache.lookup(a, limit=20)[0][0].shape[1] == 16  # never more than the limit
    assert cache.lookup([1] + a[1:], limit=40) is None  # another first token: nothing matches
    b = a[:16] + [49] * 24  # shares the first block only
    assert cache.lookup(b, limit=40)[0][0].shape[1] == 16
    cache.store(b, slots, 0)
    assert cache.tokens == 32  # the budget: a's second block (least recently used) went
    assert cache.lookup(a, limit=40)[0][0].shape[1] == 16 and cache.lookup(b, limit=40)[0][0].shape[1] == 32
    assert PrefixCache(budget=0).lookup(a, 40) is None


def test_the_cache_never_grows_past_what_is_in_flight(lm):
    """A model with a long context (1,024): the slot cache's rows follow the sequences in flight and
    its positions the longest of them (power-of-two steps, at most twice what is needed), never the
    context; idle, it holds nothing; the prefix cache holds at most its budget."""
    torch.manual_seed(0)
    model = Transformer(LMConfig(vocab_size=lm.config.vocab_size, context=1024, n_layer=2, n_head=4, n_kv_head=2,
                                 d_model=32)).eval().fuse_for_inference()
    wide = LanguageModel(model, lm.tokenizer, eot=lm.eot)
    sched = BatchScheduler(wide, max_batch=8, prefix_cache_tokens=64, prefill_chunk=16)
    seen: list[tuple[tuple[int, int], int, int]] = []
    original = SlotCache.step

    def watched(self, lo, counts, in_flight):
        original(self, lo, counts, in_flight)
        longest = max(int(self.pos[:in_flight].max()), max(int(self.pos[lo + i]) + c for i, c in enumerate(counts)))
        seen.append((self.shape, in_flight, longest))

    SlotCache.step = watched
    try:
        prompts = [SYSTEM + q for q in QUESTIONS] * 2
        results: dict[int, str] = {}

        def work(i: int) -> None:
            n = 300 if i == 0 else 10  # one long sequence among short ones
            results[i] = "".join(sched.stream(prompts[i], SamplingOptions(max_tokens=n, temperature=0,
                                                                          ignore_eot=True)))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(results) == len(prompts)
        assert seen
        for (rows, positions), in_flight, longest in seen:
            assert rows <= 2 * cache_capacity(in_flight, 8, smallest=1)
            assert longest <= positions <= 2 * cache_capacity(longest + 1, 1024)
        assert max(p for (_, p), _, _ in seen) == 512  # ~340 tokens in flight at most: 512 positions, not 1,024
        assert sched.prefix.tokens <= 64
        for _ in range(200):  # the last stream has ended; the scheduler retires it right after
            if sched.active == 0 and sched._cache.shape == (0, 0):
                break
            threading.Event().wait(0.05)
        assert sched.active == 0 and sched._cache.shape == (0, 0)  # idle: no keys and values held
    finally:
        SlotCache.step = original
        sched.close()

"""Dynamic batching: concurrent generation requests share forward passes.

One scheduler thread owns the language model. Requests join a queue; at every step the scheduler

1. admits waiting requests into free slots (up to ``max_batch``): each prompt is prefilled on its
   own (prompts differ in length) and its keys/values are copied into its slot's row of one shared
   :class:`SlotCache`;
2. samples the next token of every active sequence from its own logits, with its own options and
   its own seeded generator, and sends the new text to its consumer;
3. retires finished or cancelled sequences and compacts the rows, so the active sequences always
   occupy rows ``0..n-1`` of the cache (a view, no copy, feeds the model);
4. runs ONE forward pass for all active sequences: a (n, 1) batch of tokens, each at its own
   position (per-row rotary positions) and attending only to its own filled cache positions (a
   per-row mask). Both come from the :class:`SlotCache`, which the scheduler owns: the model only
   asks its cache where rows are (``Cache.positions`` / ``Cache.attn_mask``).

So sixteen streaming clients cost about one batched decode step per token, not sixteen. A runner
that cannot batch rows at different positions (``runner.batching`` False: the exported runtimes)
is served by the same scheduler, one sequence per forward pass, each with a cache of its own.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import torch

from genlab.generate.text import (
    Detokenizer,
    GenerationInfo,
    LanguageModel,
    SamplingOptions,
    TokenSampler,
    start_generation,
)
from genlab.models.transformer import Cache, KVCache, LMConfig, cache_capacity
from genlab.runtimes.base import last_logits

Event = tuple[str, object]  # ("text", str) | ("done", GenerationInfo) | ("error", str)
Sink = Callable[[Event], None]


class SlotCache(Cache):
    """Keys and values of up to ``slots`` sequences decoded together, one row each.

    During a batched step row ``i`` writes its new key at its own position ``pos[i]``, gets the
    rotary position ``pos[i]`` and attends to its own filled positions: the model asks the cache
    (``positions``, ``attn_mask``), so it needs no code of its own for batching.

    The buffers follow what is in flight, not the model's context: rows grow with the number of
    sequences and positions with the longest of them, both in power-of-two steps
    (``transformer.cache_capacity``), and attention reads only up to the longest row's length.
    ``release`` drops them when no sequence is left."""

    def __init__(self, cfg: LMConfig, slots: int, device: torch.device, dtype: torch.dtype) -> None:
        self.cfg, self.slots, self.device, self.dtype = cfg, slots, device, dtype
        self.context = cfg.context
        self.pos = torch.zeros(slots, dtype=torch.long)  # next position to write, per row (CPU: cheap to read)
        self.length = 0  # Transformer.forward records it; rows have their own lengths in ``pos``
        self.release()

    def release(self) -> None:
        shape = (0, self.cfg.n_kv_head, 0, self.cfg.head_dim)
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.cfg.n_layer)]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.cfg.n_layer)]
        self.pos.zero_()

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, positions) allocated now."""
        return self.k[0].shape[0], self.k[0].shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def reserve(self, rows: int, positions: int, shrink: bool = False) -> None:
        """Room for ``rows`` sequences of up to ``positions`` tokens. With ``shrink``, buffers more
        than twice what that needs are cut down to it (the hysteresis keeps sequences that come and
        go from re-allocating every step)."""
        have_rows, have_pos = self.shape
        need_rows, need_pos = cache_capacity(rows, self.slots, smallest=1), cache_capacity(positions, self.context)
        too_big = shrink and (have_rows > 2 * need_rows or have_pos > 2 * need_pos)
        if rows <= have_rows and positions <= have_pos and not too_big:
            return
        new_rows = need_rows if too_big else max(have_rows, need_rows)
        new_pos = need_pos if too_big else max(have_pos, need_pos)
        keep_rows, keep_pos = min(have_rows, new_rows), min(have_pos, new_pos)
        for buffers in (self.k, self.v):
            for i, old in enumerate(buffers):
                new = old.new_zeros(new_rows, old.shape[1], new_pos, old.shape[3])
                new[:keep_rows, :, :keep_pos] = old[:keep_rows, :, :keep_pos]
                buffers[i] = new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = k.shape[0]
        self.k[layer][self._rows, :, self._dev_pos] = k[:, :, 0]
        self.v[layer][self._rows, :, self._dev_pos] = v[:, :, 0]
        return self.k[layer][:n, :, : self._span], self.v[layer][:n, :, : self._span]

    def positions(self, start: int, T: int) -> torch.Tensor:
        if T != 1:
            raise ValueError("a SlotCache takes one token per row (prefill each sequence on its own cache)")
        return self._dev_pos[:, None]

    def kernel_buffers(self, start: int) -> tuple[list, list, torch.Tensor]:
        """The rows of the coming step (``step``) as the C decode step takes them."""
        return self.k, self.v, self.pos[: len(self._rows)]

    def attn_mask(self, start: int, T: int) -> torch.Tensor:
        """(n, 1, 1, span): row i sees its positions up to and including the one being written."""
        return self._mask

    def step(self, n: int) -> None:
        """Say that the next forward pass feeds rows 0..n-1 (one token each)."""
        longest = int(self.pos[:n].max())
        if longest >= self.context:
            raise ValueError(f"position {longest} exceeds the context of {self.context}")
        self.reserve(n, longest + 1, shrink=True)  # rows 0..n-1 hold every sequence in flight
        self._span = longest + 1
        self._rows = torch.arange(n, device=self.device)
        self._dev_pos = self.pos[:n].to(self.device)
        seen = torch.arange(self._span, device=self.device)[None, :] <= self._dev_pos[:, None]
        self._mask = seen[:, None, None, :]

    def load_row(self, row: int, cache: KVCache, length: int) -> None:
        self.reserve(row + 1, length)
        for layer in range(len(self.k)):
            self.k[layer][row, :, :length] = cache.k[layer][0, :, :length]
            self.v[layer][row, :, :length] = cache.v[layer][0, :, :length]
        self.pos[row] = length

    def move_row(self, src: int, dst: int) -> None:
        n = int(self.pos[src])
        for layer in range(len(self.k)):
            self.k[layer][dst, :, :n] = self.k[layer][src, :, :n]
            self.v[layer][dst, :, :n] = self.v[layer][src, :, :n]
        self.pos[dst] = n


@dataclass
class _Sequence:
    ids: list[int]  # the tokens in the model's window: prompt (maybe cut) + generated so far
    opts: SamplingOptions
    sink: Sink
    gen: torch.Generator
    info: GenerationInfo
    detok: Detokenizer
    sampler: TokenSampler  # bias, penalties, grammar mask, logprobs: this sequence's own
    logits: torch.Tensor | None = None
    cache: object = None  # runners that cannot batch: this sequence's own cache
    cancelled: bool = False
    finished: bool = False


class Ticket:
    """A submitted request; ``cancel`` frees its slot at the next step (a client that went away)."""

    def __init__(self, seq: _Sequence, scheduler: BatchScheduler) -> None:
        self._seq, self._scheduler = seq, scheduler

    def cancel(self) -> None:
        if not self._seq.finished:
            self._seq.cancelled = True
            self._scheduler._wake()


@dataclass
class BatchStats:
    steps: int = 0  # batched decode forward passes
    tokens: int = 0  # tokens those passes produced
    max_batch_seen: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # batch size -> number of steps

    def record(self, n: int) -> None:
        self.steps += 1
        self.tokens += n
        self.max_batch_seen = max(self.max_batch_seen, n)
        self.batch_sizes[n] += 1

    def to_dict(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "max_batch_seen": self.max_batch_seen,
                "mean_batch": round(self.tokens / self.steps, 3) if self.steps else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


class BatchScheduler:
    def __init__(self, lm: LanguageModel, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.lm = lm
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._batched = lm.model.batching  # Runner protocol
        self._cache: SlotCache | None = None  # made at the first prefill, like the runner's own caches
        self._pending: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="genlab-batcher", daemon=True)
        self._thread.start()

    # ---- client side ----

    def submit(self, prompt: str, opts: SamplingOptions, sink: Sink) -> tuple[Ticket, GenerationInfo]:
        """Queue a request. ``sink`` receives its events from the scheduler thread; it must not block."""
        opts.stop = tuple(opts.stop or ())
        opts.validate()
        ids, info, gen = start_generation(self.lm.encode(prompt), self.lm.config.context, self.lm.eot, opts)
        seq = _Sequence(ids=ids, opts=opts, sink=sink, gen=gen, info=info, detok=Detokenizer(self.lm.decode, opts.stop),
                        sampler=TokenSampler(opts, gen, self.lm.config.vocab_size, context=ids))
        info.completion_ids, info.logprobs = seq.detok.ids, seq.sampler.kept
        with self._cv:
            if self._stopped:
                raise RuntimeError("the scheduler is stopped")
            self._pending.append(seq)
            self._cv.notify()
        return Ticket(seq, self), info

    def stream(self, prompt: str, opts: SamplingOptions) -> Iterator[str]:
        """Blocking iterator over the text pieces (for threads, e.g. studio jobs)."""
        q: queue.Queue[Event] = queue.Queue()
        ticket, _ = self.submit(prompt, opts, q.put)
        try:
            while True:
                kind, value = q.get()
                if kind == "text":
                    yield value  # type: ignore[misc]
                elif kind == "error":
                    raise RuntimeError(str(value))
                else:
                    return
        finally:
            ticket.cancel()

    async def events(self, prompt: str, opts: SamplingOptions) -> AsyncIterator[Event]:
        """Async iterator over a request's events. Closing it early (a client that disconnected)
        cancels the request, and its slot is free at the next step."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()

        def sink(ev: Event) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        ticket, _ = self.submit(prompt, opts, sink)
        try:
            while True:
                ev = await q.get()
                yield ev
                if ev[0] != "text":
                    return
        finally:
            ticket.cancel()

    @property
    def active(self) -> int:
        return len(self._active)

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # ---- scheduler thread ----

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and not self._pending and not self._active:
                    self._cv.wait()
                if self._stopped:
                    break
                admit = [self._pending.popleft()
                         for _ in range(min(len(self._pending), self.max_batch - len(self._active)))]
            try:
                with torch.no_grad():
                    for seq in admit:
                        self._admit(seq)
                    self._step()
            except Exception as e:  # never let one bad step kill the server's generation thread
                for seq in self._active + admit:
                    if not seq.finished:
                        seq.finished = True
                        seq.sink(("error", f"{e.__class__.__name__}: {e}"))
                self._active = []
        for seq in self._active + list(self._pending):
            seq.sink(("error", "the server is shutting down"))

    def _prefill(self, seq: _Sequence, row: int, ids: list[int]) -> torch.Tensor:
        model = self.lm.model
        cache = model.new_cache(1)
        tokens = torch.tensor([ids], dtype=torch.long, device=self.lm.device)
        logits = last_logits(model, tokens, cache, 0)[0]
        if not self._batched:
            seq.cache = cache
            return logits
        if self._cache is None:
            self._cache = SlotCache(self.lm.config, self.max_batch, cache.k[0].device, cache.k[0].dtype)
        self._cache.load_row(row, cache, len(ids))
        return logits

    def _admit(self, seq: _Sequence) -> None:
        if seq.cancelled:
            seq.finished = True
            return
        if seq.opts.max_tokens == 0:
            self._finish(seq, "length")
            return
        seq.logits = self._prefill(seq, len(self._active), seq.ids)
        self._active.append(seq)

    def _finish(self, seq: _Sequence, reason: str) -> None:
        seq.finished = True
        seq.info.finish_reason = reason
        seq.sink(("done", seq.info))

    def _send(self, seq: _Sequence, piece: str) -> None:
        if piece:
            seq.sink(("text", piece))

    def _emit(self, seq: _Sequence, tok: int) -> None:
        """Add a sampled token; send whatever text is now safe to send; finish on stop or length."""
        sampler = seq.sampler  # its pieces carry the logprobs of the tokens they complete
        if tok == self.lm.eot and not seq.opts.ignore_eot:
            self._send(seq, sampler.piece(seq.detok.finish()))
            self._finish(seq, "stop")
            return
        sampler.keep()
        seq.ids.append(tok)
        self._send(seq, sampler.piece(seq.detok.add(tok)))
        seq.info.completion_tokens = len(seq.detok.ids)
        if seq.detok.stopped:
            self._finish(seq, "stop")
        elif len(seq.detok.ids) >= seq.opts.max_tokens:
            self._send(seq, sampler.piece(seq.detok.finish()))
            self._finish(seq, "length")

    def _step(self) -> None:
        ctx = self.lm.config.context
        for seq in self._active:
            if seq.cancelled:
                seq.finished = True
                continue
            history = torch.tensor(seq.ids[-ctx:]) if seq.opts.repetition_penalty != 1.0 else None
            assert seq.logits is not None
            self._emit(seq, seq.sampler.sample(seq.logits.cpu(), history))
        survivors = [s for s in self._active if not s.finished]
        if self._batched:  # compact: survivors keep their order and move down to rows 0..n-1
            row_of = {id(s): i for i, s in enumerate(self._active)}
            for new_row, seq in enumerate(survivors):
                if row_of[id(seq)] != new_row:
                    self._cache.move_row(row_of[id(seq)], new_row)
        self._active = survivors
        n = len(survivors)
        if not n:
            if self._cache is not None and not self._pending:
                self._cache.release()  # nothing in flight: hold no keys and values
            return
        for row, seq in enumerate(survivors):
            if len(seq.ids) > ctx:
                # Window full: like LanguageModel.stream, keep the newest half. Re-read all of it
                # but the newest token, which the step below feeds as usual.
                seq.ids = seq.ids[-(ctx // 2):]
                self._prefill(seq, row, seq.ids[:-1])
        if self._batched:
            tokens = torch.tensor([[s.ids[-1]] for s in survivors], dtype=torch.long, device=self.lm.device)
            self._cache.step(n)
            logits = last_logits(self.lm.model, tokens, self._cache, 0)
            self._cache.pos[:n] += 1
        else:
            logits = [last_logits(self.lm.model, torch.tensor([[s.ids[-1]]], dtype=torch.long, device=self.lm.device),
                                  s.cache, len(s.ids) - 1)[0] for s in survivors]
        for seq, row_logits in zip(survivors, logits, strict=True):
            seq.logits = row_logits
        self.stats.record(n)

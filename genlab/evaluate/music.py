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


# ---- musical statistics: generated pieces against the test pieces ------------------------------------------

SCALES = {"major": {0, 2, 4, 5, 7, 9, 11}, "minor": {0, 2, 3, 5, 7, 8, 10, 11}}  # minor: natural + leading tone
DURATION_BINS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)  # quarter notes; longer ones share the last bin


def _sounding(notes: list[mdata.Note], t: float) -> int | None:
    """The voice's pitch sounding at time t (the highest if several), or None in a rest."""
    pitches = [n.pitch for n in notes if n.onset <= t < n.onset + n.duration]
    return max(pitches) if pitches else None


def voice_leading(piece: mdata.Piece) -> tuple[int, int, int]:
    """(steps, parallel fifths, parallel octaves) over every pair of voices: a step is two consecutive
    onsets of the piece at which both voices sound and at least one of them moves; a parallel is a
    step where both move the same way and the interval (modulo the octave) is a fifth, or an octave
    or unison, before and after."""
    times = sorted({n.onset for v in piece.voices for n in v})
    sounding = [[_sounding(v, t) for t in times] for v in piece.voices]
    steps = fifths = octaves = 0
    for i in range(len(piece.voices)):
        for j in range(i + 1, len(piece.voices)):
            for k in range(len(times) - 1):
                a1, a2, b1, b2 = sounding[i][k], sounding[i][k + 1], sounding[j][k], sounding[j][k + 1]
                if None in (a1, a2, b1, b2) or (a1 == a2 and b1 == b2):
                    continue
                steps += 1
                if (a2 - a1) * (b2 - b1) > 0:  # similar motion, both voices moving
                    before, after = (a1 - b1) % 12, (a2 - b2) % 12
                    fifths += before == after == 7
                    octaves += before == after == 0
    return steps, fifths, octaves


def piece_statistics(pieces: list[mdata.Piece]) -> dict:
    """Share of notes in the key and within the voice's range, pitch-class histogram relative to
    the tonic, duration histogram, parallel fifths and octaves per hundred voice-leading steps."""
    import numpy as np

    pcs, durs = np.zeros(12), np.zeros(len(DURATION_BINS))
    notes = in_key = in_range = steps = fifths = octaves = 0
    for p in pieces:
        tonic, scale = p.key[0], SCALES[p.key[1]]
        for v, voice in enumerate(p.voices):
            lo, hi = mdata.VOICE_RANGES[v]
            for n in voice:
                rel = (n.pitch - tonic) % 12
                pcs[rel] += 1
                durs[min(int(np.searchsorted(DURATION_BINS, n.duration - 1e-9)), len(DURATION_BINS) - 1)] += 1
                notes += 1
                in_key += rel in scale
                in_range += lo <= n.pitch <= hi
        s, f, o = voice_leading(p)
        steps, fifths, octaves = steps + s, fifths + f, octaves + o
    return {"pieces": len(pieces), "notes": notes, "in_key": in_key / max(notes, 1),
            "in_range": in_range / max(notes, 1), "voice_leading_steps": steps,
            "parallel_fifths_per_100": 100 * fifths / max(steps, 1),
            "parallel_octaves_per_100": 100 * octaves / max(steps, 1),
            "pitch_classes": (pcs / max(notes, 1)).round(4).tolist(),
            "durations": (durs / max(notes, 1)).round(4).tolist()}


def total_variation(p: list[float], q: list[float]) -> float:
    """Half the L1 distance of two histograms: 0 the same, 1 disjoint."""
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))


def split_pieces(data: mdata.MusicData, split: str) -> list[mdata.Piece]:
    """The pieces of a prepared split, decoded from its token file (as the model saw them)."""
    vocab, tokens = data.vocab(), data.tokens(split)
    names = data.meta.get(f"{split}_names", [])
    return [vocab.decode(tokens[s:s + n].astype(int).tolist(), name=names[i] if i < len(names) else f"{split}{i}")
            for i, (s, n, _, _) in enumerate(data.pieces(split))]


def music_statistics(run: str | Path, pieces: int = 8, bars: int = 8, seed: int = 0, device: str = "auto",
                     log=lambda m: None) -> dict:
    """Statistics of ``pieces`` generated pieces of ``bars`` bars (each in the key of a test piece, in
    turn) against the run's test pieces, and the histograms' distances."""
    cfg = runs.read_config(run, family="music")
    data = mdata.prepare_music(mdata.MusicDataConfig.from_dict(cfg["data"]["config"]), log=log)
    real = split_pieces(data, "test") or split_pieces(data, "val")
    gen = MusicGenerator.from_run(run, device=device)
    made = [gen.compose(bars=bars, key=real[i % len(real)].key, seed=seed + i) for i in range(pieces)]
    ref, ours = piece_statistics(real), piece_statistics(made)
    return {"test": ref, "generated": ours, "bars": bars,
            "pitch_class_distance": total_variation(ref["pitch_classes"], ours["pitch_classes"]),
            "rhythm_distance": total_variation(ref["durations"], ours["durations"])}

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


def histogram_baseline(training: list[mdata.Piece], keys: list[tuple[int, str]], bars: int,
                       seed: int = 0) -> list[mdata.Piece]:
    """The baseline of the statistics table: each voice one note after another, its pitch drawn from
    that voice's training pitches (moved to the piece's key by the nearest shift) and its length
    from that voice's training lengths, independently; 4/4, ``bars`` bars, one piece per key."""
    import numpy as np

    rng = np.random.default_rng(seed)
    # (pitch, tonic) of every training note per voice; moved to a key by the nearest shift (-6..+5)
    drawn = [[(n.pitch, p.key[0]) for p in training for n in p.voices[v]] for v in range(len(mdata.VOICES))]
    lengths = [[n.duration for p in training for n in p.voices[v]] for v in range(len(mdata.VOICES))]
    out = []
    for i, key in enumerate(keys):
        voices = []
        for v in range(len(mdata.VOICES)):
            notes, t = [], 0.0
            while drawn[v] and t < 4 * bars:
                d = min(float(rng.choice(lengths[v])), 4 * bars - t)
                pitch, tonic = drawn[v][int(rng.integers(len(drawn[v])))]
                notes.append(mdata.Note(t, d, pitch + (key[0] - tonic + 6) % 12 - 6))
                t += d
            voices.append(notes)
        out.append(mdata.Piece(f"baseline{i}", voices, (4, 4), key))
    return out


def music_statistics(run: str | Path, pieces: int = 8, bars: int = 8, seed: int = 0, device: str = "auto",
                     log=lambda m: None) -> dict:
    """Statistics of ``pieces`` generated pieces of ``bars`` bars (each in the key of a test piece, in
    turn), of as many pieces of the training-histogram baseline, and of the run's test pieces, with
    each one's histogram distances to the test pieces."""
    cfg = runs.read_config(run, family="music")
    data = mdata.prepare_music(mdata.MusicDataConfig.from_dict(cfg["data"]["config"]), log=log)
    real = split_pieces(data, "test") or split_pieces(data, "val")
    keys = [real[i % len(real)].key for i in range(pieces)]
    gen = MusicGenerator.from_run(run, device=device)
    made = [gen.compose(bars=bars, key=k, seed=seed + i) for i, k in enumerate(keys)]
    result = {"bars": bars, "test": piece_statistics(real)}
    for name, group in (("generated", made), ("baseline", histogram_baseline(split_pieces(data, "train"), keys,
                                                                             bars, seed))):
        st = piece_statistics(group)
        st["pitch_class_distance"] = total_variation(result["test"]["pitch_classes"], st["pitch_classes"])
        st["rhythm_distance"] = total_variation(result["test"]["durations"], st["durations"])
        result[name] = st
    return result

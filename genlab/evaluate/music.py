"""`genlab eval` on a music run: the likelihood of its held-out pieces (NLL per token and per note),
musical statistics of generated pieces against the test pieces (and against a training-histogram
baseline), and a real-vs-generated discriminator (a cross-validated classifier's accuracy)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
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
    if data.fingerprint != cfg["data"]["fingerprint"] and cfg["model"]["vocab_size"] == data.meta["vocab_size"] - 1:
        raise RunError(f"the music run '{run}' was trained on genlab's music tokens before fermatas (data format 2), "
                       "which cannot be prepared any more; train a new run to evaluate (generate music and "
                       "harmonize still work with it)")
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
    steps = fifths = octaves = 0
    for a1, a2, b1, b2 in voice_steps(piece):
        steps += 1
        if (a2 - a1) * (b2 - b1) > 0:  # similar motion, both voices moving
            before, after = (a1 - b1) % 12, (a2 - b2) % 12
            fifths += before == after == 7
            octaves += before == after == 0
    return steps, fifths, octaves


def voice_steps(piece: mdata.Piece):
    """(a1, a2, b1, b2) for every voice-leading step: each pair of voices (a above b) at two consecutive
    onsets of the piece where both sound and at least one of them moves."""
    times = sorted({n.onset for v in piece.voices for n in v})
    sounding = [[_sounding(v, t) for t in times] for v in piece.voices]
    for i in range(len(piece.voices)):
        for j in range(i + 1, len(piece.voices)):
            for k in range(len(times) - 1):
                a1, a2, b1, b2 = sounding[i][k], sounding[i][k + 1], sounding[j][k], sounding[j][k + 1]
                if None in (a1, a2, b1, b2) or (a1 == a2 and b1 == b2):
                    continue
                yield a1, a2, b1, b2


def piece_bars(piece: mdata.Piece) -> int:
    """Bars in which a note starts, up to the last (a pickup bar counts as one; a note held past the last
    bar line makes no new bar)."""
    bar = piece.time_signature[0] * 4 / piece.time_signature[1]
    last = max((n.onset for v in piece.voices for n in v), default=0.0)
    return int(last // bar + 1e-9) + 1


def piece_statistics(pieces: list[mdata.Piece]) -> dict:
    """Share of notes in the key and within the voice's range, pitch-class histogram relative to
    the tonic, duration histogram, parallel fifths and octaves per hundred voice-leading steps,
    fermatas per piece and per 4 bars."""
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
    fermatas, bars = sum(len(p.fermatas) for p in pieces), sum(piece_bars(p) for p in pieces)
    return {"pieces": len(pieces), "notes": notes, "in_key": in_key / max(notes, 1),
            "in_range": in_range / max(notes, 1), "voice_leading_steps": steps,
            "parallel_fifths_per_100": 100 * fifths / max(steps, 1),
            "parallel_octaves_per_100": 100 * octaves / max(steps, 1),
            "bars": bars, "fermatas": fermatas, "fermatas_per_piece": fermatas / max(len(pieces), 1),
            "fermatas_per_4_bars": 4 * fermatas / max(bars, 1),
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
    each one's histogram distances to the test pieces; ``discriminator``: for the generated pieces
    and the baseline's, the cross-validated accuracy of a classifier telling them from as many
    ``bars``-bar excerpts of the test pieces (``discriminate``)."""
    cfg = runs.read_config(run, family="music")
    data = mdata.prepare_music(mdata.MusicDataConfig.from_dict(cfg["data"]["config"]), log=log)
    real = split_pieces(data, "test") or split_pieces(data, "val")
    keys = [real[i % len(real)].key for i in range(pieces)]
    gen = MusicGenerator.from_run(run, device=device)
    made = [gen.compose(bars=bars, key=k, seed=seed + i) for i, k in enumerate(keys)]
    result = {"bars": bars, "test": piece_statistics(real), "discriminator": {}}
    for name, group in (("generated", made), ("baseline", histogram_baseline(split_pieces(data, "train"), keys,
                                                                             bars, seed))):
        st = piece_statistics(group)
        st["pitch_class_distance"] = total_variation(result["test"]["pitch_classes"], st["pitch_classes"])
        st["rhythm_distance"] = total_variation(result["test"]["durations"], st["durations"])
        result[name] = st
        excerpt, groups, fake = discriminator_sets(real, group, bars)
        result["discriminator"][name] = discriminate(excerpt, fake, seed=seed, groups=groups + [
            f"made:{i}" for i in range(len(fake))])
    return result


# ---- the real-vs-generated discriminator -------------------------------------------------------------------
#
# A classifier is trained to tell real pieces from made ones, on features that describe a piece as a
# whole (histograms and rates, never counts, so length says nothing), and scored by cross-validation
# grouped by piece: every excerpt of a real piece lies in one fold, so no fold is tested on a piece it
# was trained on. Its held-out accuracy is the figure: 50% means it cannot tell them apart.

INTERVAL_BINS = 12  # melodic steps: 0..9 semitones, 10..12, wider


def excerpts(piece: mdata.Piece, bars: int) -> list[mdata.Piece]:
    """The piece cut into consecutive excerpts of ``bars`` bars (its own metre; a pickup bar counts as
    one), each starting at 0, notes cut at the excerpt's end. A piece shorter than ``bars`` bars is
    one excerpt; a shorter remainder at the end is dropped."""
    bar = piece.time_signature[0] * 4 / piece.time_signature[1]
    span = bars * bar
    end = max((n.onset + n.duration for v in piece.voices for n in v), default=0.0)
    count = max(1, int((end + 1e-9) // span))
    out = []
    for k in range(count):
        lo, hi = k * span, (k + 1) * span
        voices = [[mdata.Note(n.onset - lo, min(n.duration, hi - n.onset), n.pitch) for n in v if lo <= n.onset < hi]
                  for v in piece.voices]
        out.append(mdata.Piece(f"{piece.name}@{k * bars + 1}", voices, piece.time_signature, piece.key,
                               [f - lo for f in piece.fermatas if lo <= f < hi]))
    return out


def _interval_bin(step: int) -> int:
    """0..9 semitones each their own bin, 10..12 (sevenths and the octave) one, wider leaps one."""
    step = abs(step)
    return step if step < 10 else 10 if step <= 12 else 11


def melody_of(voice: list[mdata.Note]) -> list[int]:
    """A voice's pitches in time order, the highest at an onset where it holds a chord."""
    line: dict[float, int] = {}
    for n in voice:
        line[n.onset] = max(line.get(n.onset, n.pitch), n.pitch)
    return [line[t] for t in sorted(line)]


FEATURE_GROUPS = (("pitch class (to the tonic)", 12), ("melodic interval", INTERVAL_BINS),
                  ("duration", len(DURATION_BINS)), ("onset in the beat", 4), ("voices attacking together", 2),
                  ("interval above the bass", 12), ("voice leading", 5), ("in key, in range", 2),
                  ("voice register and spread", 8), ("notes per beat per voice", 4))


def piece_features(piece: mdata.Piece) -> np.ndarray:
    """What the discriminator sees of a piece: histograms (relative to the tonic: the key tells
    nothing) and rates, each independent of the piece's length. ``FEATURE_GROUPS`` names them."""
    tonic, scale = piece.key[0], SCALES[piece.key[1]]
    notes = [n for v in piece.voices for n in v]
    total = max(len(notes), 1)
    end = max((n.onset + n.duration for n in notes), default=1.0) or 1.0
    pcs, durs, beat = np.zeros(12), np.zeros(len(DURATION_BINS)), np.zeros(4)
    in_key = in_range = 0
    for v, voice in enumerate(piece.voices):
        lo, hi = mdata.VOICE_RANGES[v]
        for n in voice:
            pcs[(n.pitch - tonic) % 12] += 1
            durs[min(int(np.searchsorted(DURATION_BINS, n.duration - 1e-9)), len(DURATION_BINS) - 1)] += 1
            frac = n.onset % 1.0
            beat[0 if abs(frac) < 1e-6 or abs(frac - 1) < 1e-6 else 1 if abs(frac - 0.5) < 1e-6
                 else 2 if min(abs(frac - 0.25), abs(frac - 0.75)) < 1e-6 else 3] += 1
            in_key += (n.pitch - tonic) % 12 in scale
            in_range += lo <= n.pitch <= hi
    intervals = np.zeros(INTERVAL_BINS)
    for voice in piece.voices:
        line = melody_of(voice)
        for a, b in zip(line, line[1:], strict=False):
            intervals[_interval_bin(b - a)] += 1
    times = sorted({n.onset for n in notes})
    attacks = [sum(any(abs(n.onset - t) < 1e-9 for n in v) for v in piece.voices) for t in times]
    together = [np.mean(attacks) / len(mdata.VOICES) if attacks else 0.0,
                np.mean([a == len(mdata.VOICES) for a in attacks]) if attacks else 0.0]
    sounding = [[_sounding(v, t) for t in times] for v in piece.voices]
    above_bass = np.zeros(12)
    for k in range(len(times)):
        bass = sounding[-1][k]
        if bass is None:
            continue
        for upper in sounding[:-1]:
            if upper[k] is not None:
                above_bass[(upper[k] - bass) % 12] += 1
    motion = np.zeros(3)  # similar, contrary, oblique
    for a1, a2, b1, b2 in voice_steps(piece):
        da, db = a2 - a1, b2 - b1
        motion[0 if da * db > 0 else 1 if da * db < 0 else 2] += 1
    steps, fifths, octaves = voice_leading(piece)
    register, spread, density = [], [], []
    for v, voice in enumerate(piece.voices):
        lo, hi = mdata.VOICE_RANGES[v]
        pitches = np.array([n.pitch for n in voice], dtype=np.float64)
        register.append((pitches.mean() - (lo + hi) / 2) / 12 if len(pitches) else 0.0)
        spread.append(pitches.std() / 12 if len(pitches) else 0.0)
        density.append(len(voice) / end)
    return np.concatenate([
        pcs / total, intervals / max(intervals.sum(), 1), durs / total, beat / total, together,
        above_bass / max(above_bass.sum(), 1), motion / max(motion.sum(), 1),
        [fifths / max(steps, 1), octaves / max(steps, 1)], [in_key / total, in_range / total],
        register, spread, density])


def logistic_fit(x: np.ndarray, y: np.ndarray, c: float = 1.0, iters: int = 100) -> np.ndarray:
    """L2-regularized logistic regression (``C * sum(log loss) + |w|^2 / 2``, the bias unpenalized) by
    Newton's method with step halving; returns the weights, bias last."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    reg = np.full(xb.shape[1], 1.0 / c)
    reg[-1] = 0.0
    w = np.zeros(xb.shape[1])

    def loss(w: np.ndarray) -> float:
        z = xb @ w
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * np.sum(reg * w * w))

    current = loss(w)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + reg * w
        hess = xb.T @ (xb * (p * (1 - p))[:, None]) + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > current:
            t /= 2
        w, previous = w - t * step, current
        current = loss(w)
        if previous - current < 1e-10 * max(1.0, abs(previous)):
            break
    return w


def group_folds(y: np.ndarray, groups: list[str], k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices of a k-fold split by group, stratified: each class's groups are shuffled
    and dealt to the folds in turn, so every fold holds both classes and all of a group's items lie
    in one fold (an excerpt is never tested by a classifier trained on another excerpt of its piece)."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for label in (0, 1):
        names = sorted({g for g, t in zip(groups, y, strict=True) if t == label})
        for i, j in enumerate(rng.permutation(len(names))):
            fold_of[names[j]] = i % k
    folds = np.array([fold_of[g] for g in groups])
    return [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(k)]


def discriminate(real: list[mdata.Piece], made: list[mdata.Piece], folds: int = 5, seed: int = 0,
                 groups: list[str] | None = None, repeats: int = 5) -> dict:
    """How well a classifier tells ``real`` pieces from ``made`` ones: logistic regression on
    ``piece_features`` (standardized on each training fold), k-fold cross-validated by group
    (``groups[i]`` names the piece item i comes from; default: every item its own). Every item is
    predicted once per repeat, by a classifier that never saw its group; the accuracy is the mean
    over ``repeats`` fold assignments (seeds ``seed``, ``seed + 1``, ...; ``accuracy_range`` their
    lowest and highest), which takes out most of the luck of one assignment. Accuracy 0.5:
    indistinguishable to it; ``stderr`` is the binomial standard error over the items."""
    groups = list(groups) if groups is not None else [f"real:{p.name}" for p in real] + \
        [f"made:{i}" for i in range(len(made))]
    if len(groups) != len(real) + len(made):
        raise ValueError("one group per piece")
    n_groups = [len({g for g in groups[:len(real)]}), len({g for g in groups[len(real):]})]
    k = min(folds, *n_groups)
    base = {"real": len(real), "generated": len(made), "real_groups": n_groups[0], "generated_groups": n_groups[1],
            "folds": k,
            "features": sum(n for _, n in FEATURE_GROUPS),
            "classifier": "logistic regression, L2 (C=1), standardized features"}
    if k < 2:
        return {**base, "accuracy": None, "stderr": None,
                "skipped": "needs at least 2 real pieces and 2 generated ones for a cross-validated figure"}
    x = np.stack([piece_features(p) for p in [*real, *made]])
    y = np.array([0] * len(real) + [1] * len(made), dtype=np.float64)
    correct = np.zeros((max(repeats, 1), len(y)), dtype=bool)
    for r in range(len(correct)):
        for train, test in group_folds(y, groups, k, seed + r):
            mean, std = x[train].mean(0), x[train].std(0)
            std[std < 1e-9] = np.inf  # a feature constant in training says nothing
            w = logistic_fit((x[train] - mean) / std, y[train])
            z = np.hstack([(x[test] - mean) / std, np.ones((len(test), 1))]) @ w
            correct[r, test] = (z > 0) == (y[test] == 1)
    acc = float(correct.mean())
    each = correct.mean(1)
    return {**base, "repeats": len(correct), "accuracy": acc, "stderr": float(np.sqrt(acc * (1 - acc) / len(y))),
            "accuracy_range": [float(each.min()), float(each.max())],
            "accuracy_real": float(correct[:, y == 0].mean()), "accuracy_generated": float(correct[:, y == 1].mean())}


def discriminator_sets(real: list[mdata.Piece], made: list[mdata.Piece], bars: int
                       ) -> tuple[list[mdata.Piece], list[str], list[mdata.Piece]]:
    """Equal numbers of real and made pieces of the same length: the real ones are ``bars``-bar
    excerpts of the real pieces (the first excerpt of every piece, then the second of every piece,
    ...), with the piece each comes from as its group."""
    cut = [excerpts(p, bars) for p in real]
    chosen, groups = [], []
    for i in range(max(map(len, cut), default=0)):
        for j, ex in enumerate(cut):
            if i < len(ex):
                chosen.append(ex[i])
                groups.append(f"real:{j}")
    n = min(len(chosen), len(made))
    return chosen[:n], groups[:n], made[:n]

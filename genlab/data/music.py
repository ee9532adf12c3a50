"""Four-part music as tokens: scores (Bach chorales from music21's corpus, MIDI or MusicXML files)
-> four voices -> miditok REMI tokens -> the memory-mapped token files the LM trainer reads.

Tokens (docs/music.md says why): miditok's REMI with one ``Program`` per voice (0 soprano, 1 alto,
2 tenor, 3 bass) in a single stream, ``Bar``/``TimeSig``/``Position`` for time, ``Pitch`` and
``Duration`` per note, no velocities. genlab adds 24 key tokens and one ``Fermata`` token after
miditok's vocabulary; a fermata follows the ``Position`` of the chord it holds. A piece is
``BOS, Key, REMI..., EOS``. Pieces are the unit of the train/validation/test split.

Transposition is training-time augmentation: each piece records the semitone shifts that keep all
four voices within their ranges (``VOICE_RANGES``), and ``shift_table`` maps token ids for a shift
(pitches and the key move, everything else stays).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genlab.data.corpus import Source, fingerprint
from genlab.data.prepare import Prepared, cache_root
from genlab.errors import ConfigError, DataError
from genlab.jsonconfig import JsonConfig

FORMAT_VERSION = 3  # 2: the split is seeded by the files' contents only; 3: fermata tokens
VOICES = ("soprano", "alto", "tenor", "bass")
# What each voice sings (MIDI numbers), a little wider than the textbook ranges, as Bach writes:
# soprano C4-A5, alto F3-D5, tenor C3-A4, bass C2-D4 (E2 in most chorales).
VOICE_RANGES = ((60, 81), (53, 74), (48, 69), (36, 62))
PITCH_RANGE = (30, 90)  # the tokenizer's pitches (inclusive): every voice range, transposed or not
MAX_SHIFT = 6  # transpositions tried: -6..+6 semitones (every key once, the tritone both ways)
SUFFIXES = {".mid", ".midi", ".xml", ".musicxml", ".mxl"}
EMBEDDED = ("chorales",)
TOKENIZER_FILE = "music_tokenizer.json"
TPQ = 480  # ticks per quarter of the scores genlab builds (miditok resamples to its own grid)
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")


@dataclass
class Note:
    """One note of a voice, in quarter notes from the first bar line (a pickup starts after 0)."""

    onset: float
    duration: float
    pitch: int


@dataclass
class Piece:
    """A score reduced to what genlab models: up to four voices (soprano first), metre and key."""

    name: str
    voices: list[list[Note]]  # always four lists (a missing voice is empty)
    time_signature: tuple[int, int] = (4, 4)
    key: tuple[int, str] = (0, "major")  # tonic pitch class, mode
    fermatas: list[float] = field(default_factory=list)  # onsets (quarter notes) of the chords held by a fermata

    @property
    def n_notes(self) -> int:
        return sum(len(v) for v in self.voices)

    def shifts(self) -> tuple[int, int]:
        """The lowest and highest transposition (semitones) that keep every voice within its range
        (0 always counts: a piece is never thrown away for singing out of range)."""
        lo, hi = -MAX_SHIFT, MAX_SHIFT
        for notes, (vlo, vhi) in zip(self.voices, VOICE_RANGES, strict=True):
            if notes:
                pitches = [n.pitch for n in notes]
                lo, hi = max(lo, vlo - min(pitches)), min(hi, vhi - max(pitches))
        return (lo, hi) if lo <= hi else (0, 0)


# ---- keys -------------------------------------------------------------------------------------------------

def key_name(key: tuple[int, str]) -> str:
    return f"{PITCH_NAMES[key[0] % 12]} {key[1]}"


def parse_key(text: str) -> tuple[int, str]:
    """ "D major", "f# minor", "Bb", "E-flat minor" -> (pitch class, mode)."""
    parts = text.replace("-flat", "b").replace("-sharp", "#").split()
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[1].lower() not in MODES):
        raise ConfigError(f"--key '{text}' is not a key; write it like 'D major' or 'F# minor'")
    name = parts[0]
    letters = "C D EF G A B"
    if not name or name[0].upper() not in "CDEFGAB" or any(c not in "#b" for c in name[1:]):
        raise ConfigError(f"--key '{text}': '{name}' is not a note name (C, D, ..., B with # or b)")
    pc = letters.index(name[0].upper()) + name[1:].count("#") - name[1:].count("b")
    return pc % 12, parts[1].lower() if len(parts) == 2 else "major"


# ---- the vocabulary ---------------------------------------------------------------------------------------

def new_tokenizer():
    """miditok's REMI as genlab configures it for four voices (see docs/music.md)."""
    import miditok

    cfg = miditok.TokenizerConfig(
        pitch_range=(PITCH_RANGE[0], PITCH_RANGE[1] + 1),
        beat_res={(0, 4): 8, (4, 16): 4},  # 32nd notes up to a whole note, 16ths up to four whole notes
        use_velocities=False, use_programs=True, one_token_stream_for_programs=True,
        programs=list(range(len(VOICES))), use_time_signatures=True,
        special_tokens=["PAD", "BOS", "EOS"],
    )
    return miditok.REMI(cfg)


class MusicVocab:
    """miditok's REMI vocabulary plus genlab's 24 key tokens (``Key_<pc>_<mode>``) and the ``Fermata``
    token, with the token classes that sampling, detokenizing and transposition need.

    genlab's own tokens live after miditok's ids rather than in miditok's vocabulary (its
    ``add_to_vocab``): miditok's decoder would not know what to do with them, and the saved tokenizer
    file stays miditok's own. ``fermatas=False`` is the vocabulary of runs made before the fermata
    token (data format 2): the same ids without it."""

    def __init__(self, tokenizer, fermatas: bool = True) -> None:
        self.tokenizer = tokenizer
        self.base = len(tokenizer)
        self.fermata = self.base + 24 if fermatas else None
        self.size = self.base + 24 + (1 if fermatas else 0)
        vocab = tokenizer.vocab
        self.names = [""] * self.size
        for name, i in vocab.items():
            self.names[i] = name
        for pc in range(12):
            for mode in MODES:
                self.names[self.key_id((pc, mode))] = f"Key_{PITCH_NAMES[pc]}_{mode}"
        if self.fermata is not None:
            self.names[self.fermata] = "Fermata"
        self.bos, self.eos, self.pad = vocab["BOS_None"], vocab["EOS_None"], vocab["PAD_None"]
        self.bar = vocab["Bar_None"]
        self.pitch = {int(n.split("_")[1]): i for n, i in vocab.items() if n.startswith("Pitch_")}
        self.program = {int(n.split("_")[1]): i for n, i in vocab.items() if n.startswith("Program_")}
        self.position = {int(n.split("_")[1]): i for n, i in vocab.items() if n.startswith("Position_")}
        self.duration = {n: i for n, i in vocab.items() if n.startswith("Duration_")}
        self.time_sig = {n: i for n, i in vocab.items() if n.startswith("TimeSig_")}

    @classmethod
    def load(cls, path: Path, fermatas: bool = True) -> MusicVocab:
        import miditok

        if not Path(path).is_file():
            raise DataError(f"{path} is missing; the run or data has no music tokenizer")
        return cls(miditok.REMI(params=Path(path)), fermatas=fermatas)

    def save(self, path: Path) -> None:
        self.tokenizer.save(Path(path))

    def key_id(self, key: tuple[int, str]) -> int:
        return self.base + 2 * (key[0] % 12) + MODES.index(key[1])

    def key_of(self, token: int) -> tuple[int, str] | None:
        if self.base <= token < self.base + 24:
            return (token - self.base) // 2, MODES[(token - self.base) % 2]
        return None

    @property
    def ticks_per_beat(self) -> int:
        return max(self.tokenizer.config.beat_res.values())

    def shift_table(self) -> np.ndarray:
        """(2 * MAX_SHIFT + 1, size): row ``k + MAX_SHIFT`` maps every id to its transposition by k
        semitones (pitches move, staying inside the tokenizer's range; keys move; the rest stays)."""
        table = np.tile(np.arange(self.size, dtype=np.int64), (2 * MAX_SHIFT + 1, 1))
        for k in range(-MAX_SHIFT, MAX_SHIFT + 1):
            row = table[k + MAX_SHIFT]
            for p, i in self.pitch.items():
                if p + k in self.pitch:
                    row[i] = self.pitch[p + k]
            for pc in range(12):
                for mode in MODES:
                    row[self.key_id((pc, mode))] = self.key_id((pc + k, mode))
        return table

    # -- pieces <-> tokens --

    def position_times(self, ids: list[int]) -> list[float | None]:
        """For each token, the time (quarter notes from the first bar line) of the ``Position`` it
        stands at: REMI's own clock, a ``Bar`` per bar (its length from the ``TimeSig`` after it) and
        ``Position`` in 1/``ticks_per_beat`` of the metre's beat. None before the first position."""
        out: list[float | None] = []
        bar_start, num, den, now = None, 4, 4, None
        for i in ids:
            name = self.names[i] if 0 <= i < self.size else ""
            if name == "Bar_None":
                bar_start = 0.0 if bar_start is None else bar_start + num * 4 / den
                now = None
            elif name.startswith("TimeSig_"):
                num, den = (int(x) for x in name.split("_")[1].split("/"))
            elif name.startswith("Position_"):
                now = (bar_start or 0.0) + int(name.split("_")[1]) / self.ticks_per_beat * 4 / den
            out.append(now)
        return out

    def encode(self, piece: Piece) -> list[int]:
        """BOS, the key, miditok's REMI tokens of the four voices (a ``Fermata`` after the ``Position``
        of each chord a fermata holds), EOS."""
        ids = self.tokenizer.encode(to_score(piece)).ids
        if self.fermata is not None and piece.fermatas:
            times = self.position_times(ids)
            grid = 0.5 * (4 / 8) / self.ticks_per_beat  # half the finest position step (x/8: a beat is an eighth)
            starts = [k for k, i in enumerate(ids) if self.names[i].startswith("Position_")]
            marked = set()
            for f in piece.fermatas:  # the position nearest the fermata's onset (on the grid it is the same)
                k = min(starts, key=lambda k: abs(times[k] - f), default=None)
                if k is not None and abs(times[k] - f) < grid:
                    marked.add(k)
            ids = [x for k, i in enumerate(ids) for x in ((i, self.fermata) if k in marked else (i,))]
        return [self.bos, self.key_id(piece.key), *ids, self.eos]

    def decode(self, ids: list[int], name: str = "generated") -> Piece:
        """Token ids (genlab's extra tokens and specials allowed anywhere) -> a Piece; a ``Fermata``
        marks the onset of the ``Position`` before it."""
        key = next((k for k in map(self.key_of, ids) if k is not None), (0, "major"))
        core = [i for i in ids if i < self.base and i not in (self.bos, self.eos, self.pad)]
        ts = next((self.names[i].split("_")[1] for i in core if self.names[i].startswith("TimeSig_")), "4/4")
        num, den = (int(x) for x in ts.split("/"))
        fermatas: list[float] = []
        if self.fermata is not None and self.fermata in ids:
            for i, t in zip(ids, self.position_times(ids), strict=True):
                if i == self.fermata and t is not None and t not in fermatas:
                    fermatas.append(t)
        if not any(self.names[i].startswith("Pitch_") for i in core):
            return Piece(name, [[] for _ in VOICES], (num, den), key, sorted(fermatas))
        piece = from_score(self.tokenizer.decode(core), name, (num, den), key)
        piece.fermatas = sorted(fermatas)
        return piece


def to_score(piece: Piece):
    """A symusic Score with one track per voice (program = voice index), ``TPQ`` ticks per quarter."""
    import symusic

    score = symusic.Score(TPQ)
    for v, notes in enumerate(piece.voices):
        track = symusic.Track(name=VOICES[v].capitalize(), program=v)
        for n in notes:
            track.notes.append(symusic.Note(round(n.onset * TPQ), max(1, round(n.duration * TPQ)), n.pitch, 80))
        score.tracks.append(track)
    score.time_signatures.append(symusic.TimeSignature(0, *piece.time_signature))
    return score


def from_score(score, name: str, time_signature: tuple[int, int], key: tuple[int, str]) -> Piece:
    tpq = score.ticks_per_quarter
    voices: list[list[Note]] = [[] for _ in VOICES]
    for track in score.tracks:
        if 0 <= track.program < len(VOICES):
            voices[track.program] += [Note(n.time / tpq, n.duration / tpq, n.pitch) for n in track.notes]
    for v in voices:
        v.sort(key=lambda n: (n.onset, n.pitch))
    return Piece(name, voices, time_signature, key)


# ---- reading scores ---------------------------------------------------------------------------------------

def chorale_files() -> list[Path]:
    """The Bach chorales shipped inside the music21 wheel (MusicXML, one file per chorale)."""
    from music21 import corpus

    files = sorted(p for p in map(Path, corpus.getComposer("bach")) if p.suffix in (".mxl", ".xml", ".musicxml"))
    if not files:
        raise DataError("music21's corpus holds no Bach chorales; reinstall it with `make setup`")
    return files


def resolve(specs: list[str]) -> list[Source]:
    """'chorales', MIDI/MusicXML files and folders of them -> a sorted, de-duplicated file list."""
    if not specs:
        raise DataError("no music given; name 'chorales' or MIDI/MusicXML files or folders")
    sources: list[Source] = []
    for spec in specs:
        path = Path(spec)
        if spec == "chorales":
            sources += [Source(p, "chorales") for p in chorale_files()]
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise DataError(f"{path} is not a MIDI or MusicXML file (.mid, .midi, .xml, .musicxml, .mxl)")
            sources.append(Source(path, "file"))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise DataError(f"the folder '{spec}' holds no MIDI or MusicXML files (.mid, .midi, .xml, .musicxml, .mxl)")
            sources += [Source(p, "file") for p in files]
        else:
            raise DataError(f"music '{spec}' is not a file, a folder or an embedded corpus ({', '.join(EMBEDDED)})")
    seen, unique = set(), []
    for s in sources:
        if s.path.resolve() not in seen:
            seen.add(s.path.resolve())
            unique.append(s)
    return unique


def read_piece(path: Path, strict: bool = True) -> Piece | None:
    """Parse a MIDI or MusicXML file with music21 into a Piece. A user's file that cannot be read,
    has no notes or more than four voices raises DataError; with ``strict=False`` (the embedded
    corpus) such a file gives None."""
    from music21 import converter

    from genlab.quiet import quiet

    def fail(why: str) -> None:
        if strict:
            raise DataError(f"{path}: {why}")

    try:
        with quiet("music21"):
            score = converter.parse(str(path))
    except Exception as e:  # music21 raises many kinds for a damaged file
        msg = (str(e).splitlines() or [e.__class__.__name__])[0][:100]
        return fail(f"cannot be read as a score ({msg}); give a valid MIDI or MusicXML file")
    parts = [p for p in getattr(score, "parts", [score]) if p.flatten().notes]
    if not parts:
        return fail("the score has no notes")
    if len(parts) > len(VOICES):  # instruments doubling the choir: keep the parts named after the voices
        named = [next((p for p in parts if (p.partName or "").lower().startswith(v)), None) for v in VOICES]
        if all(named):
            parts = named
    if len(parts) > len(VOICES):
        return fail(f"the score has {len(parts)} voiced parts; genlab's music family writes up to four (SATB)")
    names = [(p.partName or "").lower() for p in parts]
    if not all(n.startswith(v[0]) for n, v in zip(names, VOICES, strict=False)):
        parts.sort(key=lambda p: -float(np.mean([x.midi for n in p.flatten().notes for x in n.pitches])))
    try:
        measures = parts[0].getElementsByClass("Measure")
        pickup = float(measures[0].paddingLeft) if len(measures) else 0.0  # anacrusis: its bar starts before 0
        voices: list[list[Note]] = [[] for _ in VOICES]
        for v, part in enumerate(parts):
            for n in part.stripTies().flatten().notes:
                if float(n.quarterLength) <= 0:  # grace notes
                    continue
                for p in n.pitches:
                    voices[v].append(Note(float(n.offset) + pickup, float(n.quarterLength), int(p.midi)))
            voices[v].sort(key=lambda n: (n.onset, n.pitch))
        fermatas = _fermatas(parts, voices, pickup)
        sigs = score.recurse().getElementsByClass("TimeSignature")
        ts = (int(sigs[0].numerator), int(sigs[0].denominator)) if len(sigs) else (4, 4)
    except Exception as e:  # a score music21 parses but cannot walk (damaged ties, odd measures)
        msg = (str(e).splitlines() or [e.__class__.__name__])[0][:100]
        return fail(f"its notes cannot be read ({msg}); give a valid MIDI or MusicXML file")
    try:
        k = score.analyze("key")
        key = (int(k.tonic.pitchClass), k.mode if k.mode in MODES else "major")
    except Exception:
        key = (0, "major")
    return Piece(path.stem, voices, ts, key, fermatas)


def _fermatas(parts, voices: list[list[Note]], pickup: float) -> list[float]:
    """The onsets of the chords a fermata holds. The sign sits on a note of any voice (in the chorales
    on all four, or on the soprano alone); read before the ties are merged, since it may sit on the
    second half of a tied note, and moved to the latest onset of any voice at or before it: the chord
    it holds."""
    from music21 import expressions

    onsets = sorted({n.onset for v in voices for n in v})
    out: set[float] = set()
    for part in parts:
        for n in part.flatten().notes:
            if any(isinstance(e, expressions.Fermata) for e in n.expressions):
                t = float(n.offset) + pickup
                k = int(np.searchsorted(onsets, t + 1e-9)) - 1
                if k >= 0:
                    out.add(onsets[k])
    return sorted(out)


# ---- preparation: token files cached by content fingerprint -----------------------------------------------

@dataclass
class MusicDataConfig(JsonConfig):
    """What music to train on and how to split it (by piece: validation and test never see a
    training piece, in any transposition)."""

    sources: list[str] = field(default_factory=lambda: ["chorales"])
    val_fraction: float = 0.1
    test_fraction: float = 0.1


class MusicData(Prepared):
    """Prepared music: train/val/test token files plus each split's pieces (start, length, lowest and
    highest allowed transposition) and the vocabulary."""

    @property
    def tokenizer_path(self) -> Path:
        return self.root / TOKENIZER_FILE

    def tokenizer(self):  # the LM task asks for it; music has no text tokenizer
        return None

    def vocab(self) -> MusicVocab:
        return MusicVocab.load(self.tokenizer_path)

    def pieces(self, split: str) -> np.ndarray:
        """(n, 4) int64: start offset, length, lowest and highest transposition of each piece."""
        return np.asarray(json.loads((self.root / "pieces.json").read_text())[split], dtype=np.int64).reshape(-1, 4)


def prepare_music(cfg: MusicDataConfig, log=print) -> MusicData:
    """Read, tokenize and split the scores of ``cfg`` (or fetch them from the cache)."""
    if not (0 < cfg.val_fraction < 0.5 and 0 <= cfg.test_fraction < 0.5):
        raise ConfigError("val_fraction must be in (0, 0.5) and test_fraction in [0, 0.5)")
    sources = resolve(cfg.sources)
    vocab = MusicVocab(new_tokenizer())
    fp_content = fingerprint(sources)
    h = hashlib.sha256(f"music-v{FORMAT_VERSION}|{fp_content}|{cfg.val_fraction}|{cfg.test_fraction}|".encode())
    h.update(json.dumps(vocab.names).encode())  # the tokenizer, through its vocabulary
    fp = h.hexdigest()
    root = cache_root() / "music" / fp[:24]
    if (root / "meta.json").exists():
        return MusicData(root, json.loads((root / "meta.json").read_text()))

    t0 = time.time()
    log(f"reading {len(sources):,} scores")
    pieces = [piece for src, piece in zip(sources, _read_all(sources), strict=True)
              if piece is not None and (src.kind != "chorales" or all(piece.voices))]  # chorales: all four voices
    if not pieces:
        raise DataError("no usable scores (every file was skipped); give MIDI or MusicXML files with notes")
    encoded = [np.asarray(vocab.encode(p), dtype=np.uint16) for p in pieces]

    # Whole pieces to test and validation, the rest to training, seeded by the files' contents alone
    # (not where they lie: a copied or moved folder splits the same way).
    contents = hashlib.sha256(b"".join(sorted(hashlib.sha256(s.path.read_bytes()).digest() for s in sources)))
    order = np.random.default_rng(int(contents.hexdigest()[:8], 16)).permutation(len(pieces))
    n_test = int(round(cfg.test_fraction * len(pieces)))
    n_val = max(1, int(round(cfg.val_fraction * len(pieces))))
    if len(pieces) - n_test - n_val < 1:
        raise DataError(f"{len(pieces)} pieces are too few to split into train/validation/test; give at least "
                        f"{n_val + n_test + 1}")
    splits = {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
              "train": sorted(order[n_test + n_val:])}
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index: dict[str, list] = {}
    meta = {"fingerprint": fp, "format": FORMAT_VERSION, "family": "music", "sources": cfg.sources,
            "tokenizer": "miditok-remi", "vocab_size": vocab.size, "dtype": "uint16", "files": len(sources),
            "pieces": len(pieces)}
    for split, ids in splits.items():
        offset, rows = 0, []
        for i in ids:
            lo, hi = pieces[i].shifts()
            rows.append([offset, len(encoded[i]), lo, hi])
            offset += len(encoded[i])
        tokens = np.concatenate([encoded[i] for i in ids]) if ids else np.zeros(0, np.uint16)
        tokens.tofile(tmp / f"{split}.bin")
        index[split] = rows
        notes = sum(pieces[i].n_notes for i in ids)
        meta[f"{split}_pieces"] = len(ids)
        meta[f"{split}_tokens"] = int(len(tokens))
        meta[f"{split}_notes"] = int(notes)
        meta[f"{split}_names"] = [pieces[i].name for i in ids]
    # per note: a loss per token times this is the NLL per note (the LM task's bits_per_byte slot)
    meta["time_signatures"] = sorted({f"{pieces[i].time_signature[0]}/{pieces[i].time_signature[1]}"
                                      for i in splits["train"]})  # what sampling may choose from
    meta["tokens_per_note"] = meta["val_tokens"] / max(meta["val_notes"], 1)
    meta["bytes_per_token"] = 1.0
    meta["seconds"] = round(time.time() - t0, 2)
    (tmp / "pieces.json").write_text(json.dumps(index))
    vocab.save(tmp / TOKENIZER_FILE)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        os.replace(tmp, root)
    except OSError:  # prepared by another process meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"prepared {len(pieces)} pieces: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val / "
        f"{meta['test_tokens']:,} test tokens (vocab {vocab.size}) in {meta['seconds']}s -> {root}")
    return MusicData(root, meta)


def _read_one(src: Source) -> Piece | None:
    return read_piece(src.path, strict=not src.embedded)


def _read_all(sources: list[Source]) -> list[Piece | None]:
    """Parse every score, in worker processes when there are many (music21 takes about a second a
    score; the chorales are 400). A user's bad file stops it all with that file's DataError."""
    workers = min(os.cpu_count() or 1, len(sources) // 16, 8)
    if workers < 2:
        return [_read_one(s) for s in sources]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_read_one, sources, chunksize=4))


def transposed_batch(tokens: np.ndarray, pieces: np.ndarray, table: np.ndarray, batch: int, context: int,
                     rng: np.random.Generator):
    """``prep.sample_batch`` with transposition: each window moves by a random shift that every piece it
    touches allows (so every voice stays within its range). -> (inputs, targets) int64 tensors."""
    import torch

    n = len(tokens) - context - 1
    if n < 1:
        raise DataError(f"only {len(tokens)} training tokens for a context of {context}; give more music")
    starts = rng.integers(0, n, size=batch)
    first = np.searchsorted(pieces[:, 0], starts, side="right") - 1
    last = np.searchsorted(pieces[:, 0], starts + context, side="right") - 1
    windows = np.empty((batch, context + 1), dtype=np.int64)
    for b, s in enumerate(starts):
        span = pieces[first[b]:last[b] + 1]
        lo, hi = int(span[:, 2].max()), int(span[:, 3].min())
        k = int(rng.integers(lo, hi + 1)) if lo <= hi else 0
        windows[b] = table[k + MAX_SHIFT][tokens[s:s + context + 1].astype(np.int64)]
    t = torch.from_numpy(windows)
    return t[:, :-1], t[:, 1:]

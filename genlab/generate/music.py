"""Composing and harmonizing four-part music with a music run, and writing what it made: MIDI
(symusic), MusicXML (music21), WAV (the FluidSynth program with Debian's General MIDI soundfont)
and a piano-roll PNG (matplotlib).

Sampling follows REMI's grammar (``Grammar``): a key, then bars of ``TimeSig``, ``Position`` (and
maybe a ``Fermata``) and notes (``Program`` = voice, ``Pitch`` within the voice's range,
``Duration``), positions moving forward inside the bar, voices in order soprano..bass at each onset,
one metre throughout. So every sample parses back into four voices. With ``voice_leading`` (the
default) a voice may not take a pitch that makes parallel fifths or octaves with a voice already
placed at the same onset (both moving the same way, the same interval class before and after, as
genlab.evaluate.music counts them), unless every pitch would. ``harmonize`` uses the same
grammar and forces the given soprano's notes (and its fermatas) at their onsets: the model writes
alto, tenor and bass around it.

A fermata is written as a fermata sign on the chord's notes in MusicXML and played (MIDI, WAV) by
halving the tempo from the chord's onset to the next onset: the chord is held twice as long.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genlab import runs
from genlab.data import music as mdata
from genlab.data.music import VOICE_RANGES, VOICES, MusicVocab, Note, Piece
from genlab.errors import ConfigError, DataError, GenlabError, RunError
from genlab.generate.text import SamplingOptions, next_token
from genlab.models.transformer import LMConfig, Transformer
from genlab.runtimes.base import last_logits

SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/default-GM.sf2"))
CHOIR_PROGRAM = 52  # General MIDI "Choir Aahs": what the MIDI file asks a synthesizer to sing with
RANGE_SLACK = 2  # semitones a sampled voice may go beyond VOICE_RANGES
DEFAULT_TEMPO = 76.0  # quarter notes per minute
FERMATA_HOLD = 2.0  # a chord under a fermata sounds this many times its written length


# ---- the grammar of a REMI piece ---------------------------------------------------------------------------

@dataclass
class _Forced:
    """A soprano note to place: its bar, position (ticks in the bar) and tokens."""

    bar: int
    pos: int
    pitch: int
    duration: int  # token id
    fermata: bool = False


@dataclass
class Grammar:
    """Which tokens may come next in a piece: state from the tokens so far, ``allowed()`` the ids."""

    vocab: MusicVocab
    key: tuple[int, str] | None = None
    time_signature: str | None = None  # e.g. "4/4": once chosen (or given) it stays
    time_signatures: list[str] | None = None  # the metres to choose from (the training data's); None: any
    bars: int | None = None  # stop when this many bars are complete
    melody: list[_Forced] = field(default_factory=list)  # harmonization: soprano notes to force
    melody_end: int | None = None  # harmonization: the tick (from the first bar line) where the tune ends
    last: str = "BOS"
    bar: int = 0  # bars started
    pos: int = -1  # position (ticks) in the current bar; -1 = none yet
    voice: int = -1  # last voice at the current position
    next_melody: int = 0
    finished: bool = False
    voice_leading: bool = True  # forbid parallel fifths and octaves against the voices placed at this onset
    _pending_duration: int | None = None
    _pitch: int | None = None  # the pitch just sampled, until its duration comes
    _last_note: dict = field(default_factory=dict)  # voice -> (pitch, start, end) in ticks from the first bar
    _onset: int | None = None  # the current onset, in ticks from the first bar
    _previous_onset: int | None = None
    _moves: dict = field(default_factory=dict)  # voice -> (pitch at the previous onset or None, new pitch)

    def __post_init__(self) -> None:
        v = self.vocab
        self.kind = {}
        for i, name in enumerate(v.names):
            self.kind[i] = name.split("_")[0] if name else ""
        self.sig_ids = dict(v.time_sig)
        self.duration_ticks = {}  # token id -> length in positions
        for name, i in v.duration.items():
            beats, ticks, res = (int(x) for x in name.split("_")[1].split("."))
            self.duration_ticks[i] = (beats * res + ticks) * v.ticks_per_beat // res

    @property
    def bar_ticks(self) -> int:
        """Positions in a bar: miditok counts beats in the metre's own unit (an eighth in 6/8)."""
        return int((self.time_signature or "4/4").split("/")[0]) * self.vocab.ticks_per_beat

    def _pending(self) -> _Forced | None:
        return self.melody[self.next_melody] if self.next_melody < len(self.melody) else None

    def allowed(self) -> list[int]:
        v, last = self.vocab, self.last
        if last == "BOS":
            return [v.key_id(self.key)] if self.key else [v.key_id((pc, m)) for pc in range(12) for m in mdata.MODES]
        if last == "Key":
            return [v.bar]
        if last == "Bar":
            if self.time_signature:
                return [self.sig_ids[f"TimeSig_{self.time_signature}"]]
            return [i for name, i in self.sig_ids.items()
                    if self.time_signatures is None or name.split("_")[1] in self.time_signatures]
        if last in ("Position", "Fermata"):
            pending = self._pending()
            if pending is not None and (pending.bar, pending.pos) == (self.bar, self.pos):
                return [v.fermata] if pending.fermata and last == "Position" else [v.program[0]]
            first = max(self.voice + 1, 1 if self.melody else 0)
            # a fermata may mark any onset when composing; harmonizing, only the melody's own
            fermata = [v.fermata] if last == "Position" and v.fermata is not None and not self.melody else []
            return fermata + [v.program[k] for k in range(first, len(VOICES))]
        if last == "Program":
            if self._pending_duration is not None:
                return [v.pitch[self.melody[self.next_melody].pitch]]
            lo, hi = VOICE_RANGES[self.voice]
            pitches = [p for p in v.pitch if lo - RANGE_SLACK <= p <= hi + RANGE_SLACK]
            if self.voice_leading:
                pitches = [p for p in pitches if not self._parallel(p)] or pitches
            return [v.pitch[p] for p in pitches]
        if last == "Pitch":
            if self._pending_duration is not None:
                return [self._pending_duration]
            if self.melody_end is not None:  # harmonizing: no note outlasts the tune
                left = self.melody_end - (self.bar - 1) * self.bar_ticks - self.pos
                fits = [i for i, d in self.duration_ticks.items() if d <= left]
                return fits or [min(self.duration_ticks, key=self.duration_ticks.get)]
            return list(v.duration.values())
        # after TimeSig or Duration: another voice here, a later position, the next bar, or the end
        pending = self._pending()
        out: list[int] = []
        if last == "Duration":
            first = max(self.voice + 1, 1 if self.melody else 0)
            out += [v.program[k] for k in range(first, len(VOICES))]
        limit = self.bar_ticks - 1
        if pending is not None and pending.bar == self.bar:
            limit = pending.pos
        elif pending is None and self.melody_end is not None:  # harmonizing: nothing starts after the tune ends
            limit = min(limit, self.melody_end - (self.bar - 1) * self.bar_ticks - 1)
        out += [i for p, i in v.position.items() if self.pos < p <= limit]
        if pending is None or pending.bar > self.bar:
            out.append(v.bar)
        done_bars = self.bars is None or self.bar >= self.bars
        if pending is None and done_bars and last == "Duration":
            out.append(v.eos)
        return out

    def _sounding_before(self, voice: int) -> int | None:
        """The voice's pitch at the previous onset (None in a rest, or at the first onset)."""
        note = self._last_note.get(voice)
        t = self._previous_onset
        if note is None or t is None or not (note[1] <= t < note[2]):
            return None
        return note[0]

    def _parallel(self, pitch: int) -> bool:
        """Whether ``pitch`` in the current voice makes a parallel fifth or octave with a voice above
        it already placed at this onset."""
        below_before = self._sounding_before(self.voice)
        if below_before is None or pitch == below_before:
            return False
        for above_before, above_after in self._moves.values():
            if above_before is None or (pitch - below_before) * (above_after - above_before) <= 0:
                continue
            before, after = (above_before - below_before) % 12, (above_after - pitch) % 12
            if before == after and before in (0, 7):
                return True
        return False

    def advance(self, token: int) -> None:
        v, kind = self.vocab, self.kind.get(token, "")
        if kind == "Bar":
            if (self.bars is not None and self.bar >= self.bars) or (self.melody and self._pending() is None):
                self.finished = True  # the next bar would go past what was asked for
            self.bar += 1
            self.pos, self.voice = -1, -1
        elif kind == "TimeSig":
            self.time_signature = v.names[token].split("_")[1]
        elif kind == "Position":
            self.pos, self.voice = int(v.names[token].split("_")[1]), -1
            self._previous_onset, self._onset = self._onset, (self.bar - 1) * self.bar_ticks + self.pos
            self._moves = {}
        elif kind == "Program":
            self.voice = int(v.names[token].split("_")[1])
            pending = self._pending()
            if self.voice == 0 and pending is not None and (pending.bar, pending.pos) == (self.bar, self.pos):
                self._pending_duration = pending.duration
        elif kind == "Pitch":
            self._pitch = int(v.names[token].split("_")[1])
        if kind == "Duration" and self._pitch is not None and self._onset is not None:
            self._moves[self.voice] = (self._sounding_before(self.voice), self._pitch)
            self._last_note[self.voice] = (self._pitch, self._onset, self._onset + self.duration_ticks[token])
            self._pitch = None
        if kind == "Duration" and self._pending_duration is not None:
            self._pending_duration = None
            self.next_melody += 1
        elif token == v.eos:
            self.finished = True
        self.last = "Key" if v.key_of(token) is not None else (kind or self.last)


# ---- the generator ----------------------------------------------------------------------------------------

class MusicGenerator:
    """A music model (genlab's Transformer) and its vocabulary."""

    def __init__(self, model: Transformer, vocab: MusicVocab, tempo: float = DEFAULT_TEMPO,
                 time_signatures: list[str] | None = None) -> None:
        self.model, self.vocab, self.tempo = model, vocab, tempo
        self.time_signatures = time_signatures  # the metres of the training pieces: all a sample may use

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto") -> MusicGenerator:
        from genlab.device import pick_device

        run = Path(run)
        cfg = runs.read_config(run, family="music")
        model = Transformer(LMConfig.from_dict(cfg["model"]))
        runs.load_weights(run, model)
        vocab = MusicVocab.load(run / mdata.TOKENIZER_FILE)
        if vocab.size == model.cfg.vocab_size + 1:  # a run made before the fermata token (data format 2)
            vocab = MusicVocab(vocab.tokenizer, fermatas=False)
        if vocab.size != model.cfg.vocab_size:
            raise RunError(f"run '{run}': its music tokenizer ({vocab.size} tokens) does not match the model "
                           f"({model.cfg.vocab_size}); retrain the run")
        return cls(model.to(pick_device(device)).eval(), vocab, time_signatures=cfg["data"].get("time_signatures"))

    @torch.no_grad()
    def _sample(self, grammar: Grammar, seed: int | None, temperature: float, top_k: int | None,
                max_tokens: int) -> list[int]:
        opts = SamplingOptions(temperature=temperature, top_k=top_k, seed=seed)
        opts.validate()
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed) if seed is not None else gen.seed()
        model, v = self.model, self.vocab
        device = next(model.parameters()).device
        ctx = model.cfg.context
        ids = [v.bos]
        cache = model.new_cache(1)
        logits = last_logits(model, torch.tensor([ids], device=device), cache, 0)[0]
        window = list(ids)
        for _ in range(max_tokens):
            allowed = grammar.allowed()
            if not allowed:
                raise GenlabError("music sampling reached a state with no allowed token (a bug; please report)")
            scores = logits.float().cpu()
            masked = torch.full_like(scores, float("-inf"))
            masked[allowed] = scores[allowed]
            tok = next_token(masked, opts, None, gen) if len(allowed) > 1 else allowed[0]
            grammar.advance(tok)
            if grammar.finished:
                break
            ids.append(tok)
            window.append(tok)
            if len(window) > ctx:  # context full: the piece's start (BOS, key) and its newest half, re-read
                window = ids[:2] + ids[-(ctx // 2):]
                cache = model.new_cache(1)
                logits = last_logits(model, torch.tensor([window], device=device), cache, 0)[0]
            else:
                logits = last_logits(model, torch.tensor([[tok]], device=device), cache, len(window) - 1)[0]
        return ids

    def compose(self, bars: int = 16, key: tuple[int, str] | None = None, seed: int | None = 0,
                temperature: float = 1.0, top_k: int | None = None, time_signature: str | None = None,
                voice_leading: bool = True) -> Piece:
        """A new piece of ``bars`` bars (a pickup bar counts as one), in ``key`` if given; with
        ``voice_leading``, no parallel fifths or octaves where another pitch avoids them."""
        if bars < 1:
            raise ConfigError(f"--bars must be at least 1 (got {bars})")
        if time_signature is not None and f"TimeSig_{time_signature}" not in self.vocab.time_sig:
            raise ConfigError(f"--time-signature {time_signature} is not in the tokenizer's metres "
                              f"({', '.join(n.split('_')[1] for n in self.vocab.time_sig)})")
        grammar = Grammar(self.vocab, key=key, bars=bars, time_signature=time_signature,
                          time_signatures=self.time_signatures, voice_leading=voice_leading)
        ids = self._sample(grammar, seed, temperature, top_k, max_tokens=bars * 400)
        return self.vocab.decode(ids)

    def harmonize(self, melody: Piece, key: tuple[int, str] | None = None, seed: int | None = 0,
                  temperature: float = 1.0, top_k: int | None = None, voice_leading: bool = True) -> Piece:
        """Alto, tenor and bass for ``melody``'s soprano (its top voice), which is kept exactly."""
        soprano = melody_line(melody)
        ts = f"{melody.time_signature[0]}/{melody.time_signature[1]}"
        if f"TimeSig_{ts}" not in self.vocab.time_sig:
            raise DataError(f"the melody's metre {ts} is not one the tokenizer knows")
        grammar = Grammar(self.vocab, key=key or melody.key, time_signature=ts, voice_leading=voice_leading)
        per_quarter = self.vocab.ticks_per_beat * melody.time_signature[1] / 4  # positions per quarter note
        grammar.melody = self._forced(soprano, grammar.bar_ticks, per_quarter, melody.fermatas)
        grammar.melody_end = round(max(n.onset + n.duration for n in soprano) * per_quarter)
        ids = self._sample(grammar, seed, temperature, top_k, max_tokens=len(soprano) * 60 + 400)
        if grammar.next_melody < len(grammar.melody):
            raise GenlabError("harmonization stopped before the melody ended (a bug; please report)")
        piece = self.vocab.decode(ids, name=f"{melody.name}-harmonized")
        piece.voices[0] = soprano  # the given notes themselves (the forced tokens encode them exactly)
        return piece

    def _forced(self, soprano: list[Note], bar_ticks: int, per_quarter: float,
                fermatas: list[float] = ()) -> list[_Forced]:
        """The melody's notes as tokens to force; a note starting where the melody has a fermata keeps
        it (a run made before fermata tokens drops them)."""
        held = {round(f * per_quarter) for f in fermatas} if self.vocab.fermata is not None else set()
        tpb = self.vocab.ticks_per_beat
        durations = {}
        for name, i in self.vocab.duration.items():
            beats, ticks, res = (int(x) for x in name.split("_")[1].split("."))
            durations[(beats * res + ticks) * tpb // res] = i
        forced = []
        for n in soprano:
            t, d = n.onset * per_quarter, n.duration * per_quarter
            if abs(t - round(t)) > 1e-6 or abs(d - round(d)) > 1e-6 or round(d) not in durations:
                raise DataError(f"the melody's note at quarter {n.onset:g} (length {n.duration:g}) is finer than "
                                f"the tokenizer's grid (1/{tpb} of a beat) or longer than it can hold")
            if n.pitch not in self.vocab.pitch:
                raise DataError(f"the melody's pitch {n.pitch} is outside the tokenizer's range {mdata.PITCH_RANGE}")
            t = round(t)
            forced.append(_Forced(t // bar_ticks + 1, t % bar_ticks, n.pitch, durations[round(d)], t in held))
        return forced


def melody_line(melody: Piece) -> list[Note]:
    """The top voice of a score as a monophonic line: the highest pitch at each onset."""
    notes = next((v for v in melody.voices if v), [])
    if not notes:
        raise DataError(f"{melody.name}: the melody has no notes")
    line: dict[float, Note] = {}
    for n in notes:
        if n.onset not in line or n.pitch > line[n.onset].pitch:
            line[n.onset] = n
    return [line[t] for t in sorted(line)]


# ---- writing what was made --------------------------------------------------------------------------------

def fermata_spans(piece: Piece) -> list[tuple[float, float]]:
    """(onset, end) in quarter notes of each chord a fermata holds: from its onset to the piece's next
    onset (in any voice), or to the last note's end."""
    onsets = sorted({n.onset for v in piece.voices for n in v})
    end = max((n.onset + n.duration for v in piece.voices for n in v), default=0.0)
    spans = []
    for f in piece.fermatas:
        later = [t for t in onsets if t > f + 1e-9]
        spans.append((f, later[0] if later else end))
    return spans


def _score_for_playback(piece: Piece, tempo: float):
    """The score as it is played: choir voices, ``tempo``, and each fermata's chord held
    ``FERMATA_HOLD`` times as long by a slower tempo from its onset to the next onset (the notes keep
    their written times, so the MIDI file reads back with the same notes)."""
    import symusic

    score = mdata.to_score(piece)
    for track in score.tracks:
        track.program = CHOIR_PROGRAM
    changes = {0: tempo}
    for start, end in fermata_spans(piece):  # a later fermata starting where one ends keeps it slow
        changes[round(start * mdata.TPQ)] = tempo / FERMATA_HOLD
        changes.setdefault(round(end * mdata.TPQ), tempo)
        score.markers.append(symusic.TextMeta(round(start * mdata.TPQ), "fermata"))
    for tick in sorted(changes):
        score.tempos.append(symusic.Tempo(tick, changes[tick]))
    return score


def write_midi(piece: Piece, out: Path, overwrite: bool = False, tempo: float = DEFAULT_TEMPO) -> Path:
    """A type-1 MIDI file: one track per voice (Soprano, Alto, Tenor, Bass), sung by GM choir."""
    score = _score_for_playback(piece, tempo)
    with runs.staged_file(Path(out), overwrite, error=GenlabError) as tmp:
        score.dump_midi(str(tmp))
    return Path(out)


def midi_bytes(piece: Piece, tempo: float = DEFAULT_TEMPO) -> bytes:
    """The bytes ``write_midi`` writes."""
    return bytes(_score_for_playback(piece, tempo).dumps_midi())


def musicxml_bytes(piece: Piece) -> bytes:
    """The piece as a MusicXML score (music21): four staves with their clefs, key and metre, a fermata
    on every note that starts a chord a fermata holds."""
    from music21 import clef, expressions, instrument, key, meter, note, stream
    from music21.musicxml.m21ToXml import GeneralObjectExporter

    from genlab.quiet import quiet

    score = stream.Score()
    clefs = (clef.TrebleClef, clef.TrebleClef, clef.Treble8vbClef, clef.BassClef)
    for v, notes in enumerate(piece.voices):
        part = stream.Part()
        part.partName = VOICES[v].capitalize()
        part.insert(0, instrument.Vocalist())
        part.insert(0, clefs[v]())
        part.insert(0, key.Key(mdata.PITCH_NAMES[piece.key[0]].replace("b", "-"), piece.key[1]))
        part.insert(0, meter.TimeSignature(f"{piece.time_signature[0]}/{piece.time_signature[1]}"))
        for i, n in enumerate(notes):  # a note ends where the voice's next one starts (one line per staff)
            nxt = next((m.onset for m in notes[i + 1:] if m.onset > n.onset), None)
            if i + 1 < len(notes) and notes[i + 1].onset == n.onset:
                continue  # two notes at one onset in one voice: keep the higher (sorted by pitch)
            length = min(n.duration, nxt - n.onset) if nxt is not None else n.duration
            written = note.Note(n.pitch, quarterLength=length)
            if any(abs(n.onset - f) < 1e-9 for f in piece.fermatas):  # on every voice, as the chorales print it
                written.expressions.append(expressions.Fermata())
            part.insert(n.onset, written)
        score.insert(0, part)
    with quiet("music21"):
        return GeneralObjectExporter(score).parse()


def write_musicxml(piece: Piece, out: Path, overwrite: bool = False) -> Path:
    data = musicxml_bytes(piece)
    with runs.staged_file(Path(out), overwrite, error=GenlabError) as tmp:
        tmp.write_bytes(data)
    return Path(out)


def soundfont() -> Path:
    for sf in SOUNDFONTS:
        if sf.is_file():
            return sf
    raise GenlabError("no General MIDI soundfont (Debian's fluid-soundfont-gm); run `make setup` "
                      "(or `apt-get install fluid-soundfont-gm`)")


def render_wav(piece: Piece, out: Path, overwrite: bool = False, tempo: float = DEFAULT_TEMPO,
               sample_rate: int = 44100) -> Path:
    """Render the piece to a 16-bit stereo WAV with the fluidsynth program, offline."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise GenlabError("--wav needs the fluidsynth program; run `make setup` (or `apt-get install fluidsynth`)")
    sf = soundfont()
    out = Path(out)
    with runs.staged_file(out, overwrite, error=GenlabError) as tmp:
        mid = tmp.with_suffix(".mid")
        try:
            _score_for_playback(piece, tempo).dump_midi(str(mid))
            res = subprocess.run([exe, "-ni", "-q", "-F", str(tmp), "-T", "wav", "-O", "s16", "-r", str(sample_rate),
                                  str(sf), str(mid)], capture_output=True, text=True, timeout=600)
        finally:
            mid.unlink(missing_ok=True)
        if res.returncode != 0 or tmp.stat().st_size <= 44:
            why = (res.stderr.strip().splitlines() or ["no audio written"])[-1][:120]
            raise GenlabError(f"fluidsynth could not render {out.name}: {why}")
    return out


def wav_bytes(piece: Piece, tempo: float = DEFAULT_TEMPO, sample_rate: int = 44100) -> bytes:
    """The bytes ``render_wav`` writes (rendered in a temporary folder)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="genlab-music-") as tmp:
        return render_wav(piece, Path(tmp) / "music.wav", tempo=tempo, sample_rate=sample_rate).read_bytes()


def piano_roll(piece: Piece, out: Path, overwrite: bool = False) -> Path:
    """A piano roll (time in quarter notes across, pitch up), one colour per voice, bar lines, a mark
    above each fermata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max((n.onset + n.duration for v in piece.voices for n in v), default=4.0)
    fig, ax = plt.subplots(figsize=(max(6.0, min(40.0, end / 2)), 4), dpi=100)
    colours = ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4")
    for v, notes in enumerate(piece.voices):
        for n in notes:
            ax.add_patch(matplotlib.patches.Rectangle((n.onset, n.pitch - 0.4), n.duration, 0.8, color=colours[v]))
    bar = piece.time_signature[0] * 4 / piece.time_signature[1]
    for b in range(int(end // bar) + 1):
        ax.axvline(b * bar, color="#bbbbbb", linewidth=0.6, zorder=0)
    pitches = [n.pitch for v in piece.voices for n in v] or [60]
    for f in piece.fermatas:  # a fermata: a mark above the chord it holds
        ax.plot([f], [max(pitches) + 1.2], marker="v", color="#555555", markersize=6)
    ax.set_xlim(0, end)
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(f"{piece.name}: {mdata.key_name(piece.key)}, "
                 f"{piece.time_signature[0]}/{piece.time_signature[1]}")
    handles = [matplotlib.patches.Patch(color=c, label=n) for c, n in zip(colours, VOICES, strict=True)]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    with runs.staged_file(Path(out), overwrite, error=GenlabError) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)

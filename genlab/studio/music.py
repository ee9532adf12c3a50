"""The studio's music back end: a short four-part piece from a music run (genlab train music), as
MIDI and, when FluidSynth and a General MIDI soundfont are installed, as WAV.

The key is the request's, or one chosen from the prompt alone, deterministically (the same prompt
always gets the same key): the mode from mood words (more words of a dark mood than of a bright one:
minor), the tonic from a hash of the prompt among the keys Bach's chorales use most.
The server's ``POST /v1/audio/music`` and the studio's music stage both call ``StudioMusic.make``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from genlab.data import music as mdata
from genlab.errors import ConfigError, GenlabError
from genlab.generate.music import DEFAULT_TEMPO, MusicGenerator, midi_bytes, soundfont, wav_bytes

MAX_BARS = 32  # a studio piece or an API request: at most this many bars
DEFAULT_BARS = 8
MINOR_WORDS = frozenset(
    "sad sorrow sorrowful grief grieving loss lost lonely alone night dark darkness shadow shadows storm storms "
    "winter cold rain rainy tears mourning mourn funeral death dying war fear ghost ghosts farewell goodbye "
    "melancholy gloomy grey gray autumn ruin ruins silence quiet empty longing regret pain fall".split())
MAJOR_WORDS = frozenset(
    "joy joyful happy happiness glad spring summer sun sunny sunshine morning dawn bright light celebration "
    "celebrate festival party wedding dance dancing love hope hopeful victory triumph garden bloom flowers "
    "laughter play playful cheerful holiday birthday warm gold golden".split())
# The chorales' commonest keys (tonic pitch classes), major and minor.
TONICS = {"major": (0, 2, 3, 5, 7, 9, 10), "minor": (2, 4, 6, 7, 9, 11, 0)}


def key_from_prompt(prompt: str) -> tuple[tuple[int, str], dict]:
    """(key, how it was chosen): the mode from mood words, the tonic from the prompt's sha256."""
    words = re.findall(r"[a-z]+", prompt.lower())
    minor = sorted({w for w in words if w in MINOR_WORDS})
    major = sorted({w for w in words if w in MAJOR_WORDS})
    mode = "minor" if len(minor) > len(major) else "major"
    digest = hashlib.sha256(" ".join(prompt.split()).lower().encode()).digest()
    tonic = TONICS[mode][digest[0] % len(TONICS[mode])]
    return (tonic, mode), {"method": "prompt: mood words for the mode, the prompt's sha256 for the tonic",
                           "minor_words": minor, "major_words": major}


def check_bars(bars: int) -> int:
    if not 1 <= bars <= MAX_BARS:
        raise ConfigError(f"music bars must be between 1 and {MAX_BARS} (got {bars})")
    return bars


def parse_music_key(text: str | None) -> tuple[int, str] | None:
    """A key named in a request ("D major", "F# minor"), None for none; one clear line when it is not a key."""
    if text is None or not str(text).strip():
        return None
    try:
        return mdata.parse_key(str(text).strip())
    except ConfigError as e:
        raise ConfigError(str(e).replace("--key ", "music key ", 1)) from None


@dataclass
class Music:
    """What ``StudioMusic.make`` made: the piece, its MIDI, its WAV (None when it could not be rendered,
    ``wav_skipped`` says why) and the record for a manifest."""

    piece: mdata.Piece
    midi: bytes
    wav: bytes | None
    wav_skipped: str | None
    record: dict = field(default_factory=dict)


class StudioMusic:
    """A loaded music run: ``make`` composes and renders one piece (one at a time: the studio's
    worker and the API's requests share the model)."""

    def __init__(self, gen: MusicGenerator, run: Path) -> None:
        self.gen, self.run = gen, Path(run)
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto") -> StudioMusic:
        return cls(MusicGenerator.from_run(run, device=device), Path(run))

    @property
    def name(self) -> str:
        return self.run.name

    def make(self, bars: int = DEFAULT_BARS, key: tuple[int, str] | None = None, seed: int = 0,
             prompt: str | None = None, wav: bool = True, tempo: float = DEFAULT_TEMPO,
             temperature: float = 1.0) -> Music:
        """A piece of ``bars`` bars in ``key`` (else one chosen from ``prompt``, else the model's
        choice), sampled with ``seed``; MIDI always, WAV when ``wav`` and FluidSynth can render it."""
        check_bars(bars)
        how: dict = {"method": "given"}
        if key is None and prompt is not None:
            key, how = key_from_prompt(prompt)
        elif key is None:
            how = {"method": "the model's choice"}
        with self._lock:
            piece = self.gen.compose(bars=bars, key=key, seed=seed, temperature=temperature)
        audio, skipped = None, None
        if wav:
            try:
                audio = wav_bytes(piece, tempo=tempo)
            except GenlabError as e:  # no fluidsynth, no soundfont, or it failed: the MIDI still ships
                skipped = str(e).replace("--wav needs", "rendering WAV needs", 1)
        else:
            skipped = "not asked for"
        try:
            font = soundfont().name if audio is not None else None
        except GenlabError:
            font = None
        metre = f"{piece.time_signature[0]}/{piece.time_signature[1]}"
        record = {"bars": bars, "key": mdata.key_name(piece.key), "key_choice": how, "seed": seed,
                  "temperature": temperature, "tempo": tempo, "time_signature": metre,
                  "notes": {v: len(n) for v, n in zip(mdata.VOICES, piece.voices, strict=True)},
                  "fermatas": piece.fermatas,
                  "renderer": f"fluidsynth ({font})" if font else None, "wav_skipped": skipped}
        return Music(piece, midi_bytes(piece, tempo), audio, skipped, record)

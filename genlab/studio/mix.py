"""The studio's soundtrack: the music mixed under the narration, in one WAV (numpy; scipy resamples).

What the mix is (docs/music.md says why):

- the narration's sample rate and channels (both speech back ends write mono 16-bit); the music is
  resampled (``scipy.signal.resample_poly``) and downmixed to match;
- the music plays alone for ``intro_s`` (fading in), then the narration starts; the music goes on
  for ``outro_s`` after the narration ends and fades out over its last ``fade_out_s``. So the
  soundtrack lasts intro + narration + outro;
- a music shorter than that loops (its silent tail cut, each repeat cross-faded into the next);
  a longer one is cut by the fade-out;
- levels: where no one speaks the music sits ``bed_db`` below the speech's RMS; under speech it is
  ducked a further ``duck_db``. Speech is found per frame (RMS within ``threshold_db`` of the
  loudest frame), held ``hold_s`` so that the music does not swell in every breath, and the gain
  moves in linear ramps (``attack_s`` down, ``release_s`` up);
- the sum is scaled down as a whole if it would clip (no compressor: one gain, recorded).

Every step is plain float64 arithmetic on the inputs' bytes, so the same inputs give the same WAV.
"""

from __future__ import annotations

import io
import wave
from dataclasses import asdict, dataclass
from math import gcd

import numpy as np

from genlab.errors import GenlabError

SOUNDTRACK = "soundtrack.wav"


@dataclass
class MixSettings:
    bed_db: float = -6.0  # music without speech, relative to the speech's RMS
    duck_db: float = -12.0  # further down under speech
    intro_s: float = 1.5  # music alone before the narration
    outro_s: float = 2.5  # music after the narration, ending in the fade-out
    fade_in_s: float = 0.5
    fade_out_s: float = 2.0
    crossfade_s: float = 0.5  # between repeats of a music shorter than the soundtrack
    frame_s: float = 0.02  # speech detection: RMS per frame
    threshold_db: float = -35.0  # a frame within this of the loudest frame is speech
    hold_s: float = 0.35  # speech "continues" this long after a frame (pauses between words stay ducked)
    attack_s: float = 0.08  # ramp down to the ducked level
    release_s: float = 0.5  # ramp back up to the bed level
    peak: float = 0.97  # the sum is scaled down to this peak when it would go above

    def to_dict(self) -> dict:
        return asdict(self)


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM WAV bytes -> (frames x channels float64 in [-1, 1], sample rate)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, channels, width, frames = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise GenlabError(f"cannot mix a WAV that is not PCM ({e})") from None
    if width not in (1, 2, 4):
        raise GenlabError(f"cannot mix a WAV of {8 * width}-bit samples (8, 16 or 32-bit PCM only)")
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype=dtype).astype(np.float64)
    if width == 1:
        x = (x - 128.0) / 128.0
    else:
        x /= float(2 ** (8 * width - 1))
    return x.reshape(-1, channels), rate


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    """frames x channels float64 -> 16-bit PCM WAV bytes (clipped to full scale)."""
    pcm = np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling (scipy's FIR low-pass included), along time."""
    if src == dst:
        return x
    from scipy.signal import resample_poly

    g = gcd(src, dst)
    return resample_poly(x, dst // g, src // g, axis=0)


def frame_rms(mono: np.ndarray, frame: int) -> np.ndarray:
    n = -(-len(mono) // frame)
    padded = np.zeros(n * frame)
    padded[:len(mono)] = mono
    return np.sqrt((padded.reshape(n, frame) ** 2).mean(1))


def db(x: float) -> float:
    return float(20 * np.log10(max(x, 1e-12)))


def speech_frames(voice: np.ndarray, rate: int, s: MixSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """(speaking per frame, speech per frame, frame length in samples): speaking frames are within
    ``threshold_db`` of the loudest; speech is each of them held ``hold_s`` longer."""
    frame = max(1, round(s.frame_s * rate))
    rms = frame_rms(voice.mean(1), frame)
    if not len(rms) or rms.max() <= 0:
        return np.zeros(len(rms), dtype=bool), np.zeros(len(rms), dtype=bool), frame
    loud = rms >= rms.max() * 10 ** (s.threshold_db / 20)
    hold = round(s.hold_s / s.frame_s)
    held = loud.copy()
    for k in range(1, hold + 1):  # a frame is speech if one of the `hold` frames before it was
        held[k:] |= loud[:-k]
    return loud, held, frame


def gain_curve(speech: np.ndarray, bed: float, ducked: float, s: MixSettings) -> np.ndarray:
    """Per frame: the music's gain, moving toward ``ducked`` under speech and ``bed`` elsewhere at
    most (bed - ducked) per attack (down) or release (up) time."""
    down = (bed - ducked) * s.frame_s / max(s.attack_s, s.frame_s)
    up = (bed - ducked) * s.frame_s / max(s.release_s, s.frame_s)
    out = np.empty(len(speech))
    g = bed
    for i, sp in enumerate(speech):  # a slew-limited follower; frames are 20 ms, so this loop is short
        target = ducked if sp else bed
        g = max(target, g - down) if target < g else min(target, g + up)
        out[i] = g
    return out


def trim_silence(x: np.ndarray, rate: int, floor_db: float = -60.0) -> np.ndarray:
    """Cut the trailing samples quieter than ``floor_db`` below the peak (a synthesizer's silent tail)."""
    frame = max(1, rate // 100)
    rms = frame_rms(np.abs(x).max(1), frame)
    if not len(rms) or rms.max() <= 0:
        return x[:0]
    last = int(np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))[-1])
    return x[:(last + 1) * frame]


def loop_to(x: np.ndarray, n: int, cross: int) -> tuple[np.ndarray, int]:
    """``x`` repeated (each repeat cross-faded over ``cross`` samples into the next) to ``n`` samples;
    -> (samples, times it was started)."""
    if len(x) >= n:
        return x[:n], 1
    cross = min(cross, len(x) // 2)
    out = np.zeros((n, x.shape[1]))
    fade = np.linspace(0.0, 1.0, cross, endpoint=False)[:, None] if cross else np.zeros((0, 1))
    start, loops = 0, 0
    while start < n:
        piece = x.copy()
        if start > 0 and cross:  # fade this repeat in while the previous one fades out
            piece[:cross] *= fade
            out[start:start + cross] *= 1 - fade[:max(0, min(cross, n - start))]
        end = min(n, start + len(piece))
        out[start:end] += piece[:end - start]
        loops += 1
        start += len(x) - cross
    return out, loops


def mix(narration: bytes, music: bytes, s: MixSettings | None = None) -> tuple[bytes, dict]:
    """The soundtrack WAV and its record for the manifest (gains in dB, lengths in seconds)."""
    s = s or MixSettings()
    voice, rate = read_wav(narration)
    tune, music_rate = read_wav(music)
    tune = trim_silence(tune, music_rate)
    if not len(voice) or not len(tune):
        raise GenlabError("cannot mix: the narration or the music is silent")
    channels = voice.shape[1]
    downmix = None
    if tune.shape[1] != channels:
        downmix = f"{tune.shape[1]} channels to {channels}"
        tune = np.repeat(tune.mean(1, keepdims=True), channels, axis=1)
    tune = resample(tune, music_rate, rate)

    intro, outro = round(s.intro_s * rate), round(s.outro_s * rate)
    total = intro + len(voice) + outro
    track, loops = loop_to(tune, total, round(s.crossfade_s * rate))

    loud, speech, frame = speech_frames(voice, rate, s)
    speech_rms = float(np.sqrt((frame_rms(voice.mean(1), frame)[loud] ** 2).mean())) if loud.any() else 0.1
    music_frames = frame_rms(tune.mean(1), frame)
    music_rms = float(np.sqrt((music_frames[music_frames >= music_frames.max() * 10 ** (-50 / 20)] ** 2).mean()))
    bed = 10 ** (s.bed_db / 20) * speech_rms / music_rms
    ducked = bed * 10 ** (s.duck_db / 20)
    # the speech mask on the soundtrack's time line: no speech in the intro and the outro
    n_frames = -(-total // frame)
    mask = np.zeros(n_frames, dtype=bool)
    first = intro // frame
    mask[first:first + len(speech)] = speech[:n_frames - first]
    gains = gain_curve(mask, bed, ducked, s)
    per_sample = np.repeat(gains, frame)[:total]
    fade_in, fade_out = min(round(s.fade_in_s * rate), total), min(round(s.fade_out_s * rate), total)
    per_sample[:fade_in] *= np.linspace(0.0, 1.0, fade_in, endpoint=False)
    per_sample[total - fade_out:] *= np.linspace(1.0, 0.0, fade_out)

    out = track * per_sample[:, None]
    out[intro:intro + len(voice)] += voice
    peak = float(np.abs(out).max())
    scale = s.peak / peak if peak > s.peak else 1.0
    out *= scale
    record = {
        "file": SOUNDTRACK, "inputs": {"narration": "narration.wav", "music": "music/music.wav"},
        "sample_rate": rate, "channels": channels, "seconds": round(total / rate, 3),
        "narration_starts": round(intro / rate, 3), "narration_seconds": round(len(voice) / rate, 3),
        "music": {"sample_rate": music_rate,
                  "resampled": f"scipy.signal.resample_poly {music_rate} -> {rate} Hz" if music_rate != rate else None,
                  "downmixed": downmix, "seconds": round(len(tune) / rate, 3), "plays": loops,
                  "crossfade": s.crossfade_s if loops > 1 else None},
        "levels_db": {"speech_rms_dbfs": round(db(speech_rms), 2), "music_rms_dbfs": round(db(music_rms), 2),
                      "bed": s.bed_db, "duck": s.duck_db, "music_gain_bed": round(db(bed), 2),
                      "music_gain_ducked": round(db(ducked), 2), "output_gain": round(db(scale), 2)},
        "ducking": {"speech_seconds": round(float(mask.sum()) * frame / rate, 3), "frame": s.frame_s,
                    "threshold_db": s.threshold_db, "hold": s.hold_s, "attack": s.attack_s, "release": s.release_s},
        "fades": {"in": s.fade_in_s, "out": s.fade_out_s},
    }
    return wav_bytes(out, rate), record

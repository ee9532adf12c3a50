"""Speech back ends: real WAV files from Piper (the bundled joe voice, or a voice named by path)
and espeak-ng, with durations that fit the text and the speed."""

from __future__ import annotations

import io
import shutil
import sys
import wave

import pytest

from genlab.cli import main
from genlab.generate.speech import SpeechError, SpeechOptions, piper_voice_files, synthesize

TEXT = "The small bird sang every morning. Rain fell softly over the quiet town."


def wav_info(data: bytes) -> tuple[int, int, float, int]:
    with wave.open(io.BytesIO(data)) as w:
        frames = w.readframes(w.getnframes())
        peak = max(abs(int.from_bytes(frames[i:i + 2], "little", signed=True)) for i in range(0, len(frames), 200))
        return w.getnchannels(), w.getsampwidth(), w.getnframes() / w.getframerate(), peak


def test_piper_joe_voice_speaks_reproducibly():
    a = synthesize(TEXT, SpeechOptions(backend="piper"))
    channels, width, seconds, peak = wav_info(a.wav)
    assert (a.backend, channels, width) == ("piper", 1, 2)
    # ~13 words: a natural speaking rate (2-4 words/s) gives roughly 3-7 s.
    assert 2.0 < seconds < 9.0, seconds
    assert peak > 5000  # real sound, not silence
    assert a.voice_sha256 and len(a.voice_sha256) == 64
    assert synthesize(TEXT, SpeechOptions(backend="piper")).wav == a.wav  # noise off: reproducible
    fast = synthesize(TEXT, SpeechOptions(backend="piper", speed=2.0))
    assert fast.duration < 0.7 * a.duration


def test_espeak_backend_and_speed():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    a = synthesize(TEXT, SpeechOptions(backend="espeak"))
    channels, width, seconds, peak = wav_info(a.wav)
    assert (a.backend, channels, width) == ("espeak", 1, 2)
    assert 2.0 < seconds < 9.0, seconds
    assert peak > 5000
    assert synthesize(TEXT, SpeechOptions(backend="espeak", speed=2.0)).duration < 0.7 * seconds


def test_user_voice_by_path(tmp_path):
    model, config = piper_voice_files("joe")
    mine = tmp_path / "my-voice.onnx"
    mine.symlink_to(model)
    with pytest.raises(SpeechError, match="no config"):
        synthesize("hello", SpeechOptions(voice=str(mine)))
    (tmp_path / "my-voice.onnx.json").write_bytes(config.read_bytes())
    s = synthesize("Hello there.", SpeechOptions(voice=str(mine)))
    assert s.backend == "piper" and s.voice == "my-voice.onnx" and s.duration > 0.3
    # A named voice that is missing is an error, never a silent fallback to espeak.
    with pytest.raises(SpeechError, match="does not exist"):
        synthesize("hello", SpeechOptions(voice=str(tmp_path / "nope.onnx")))


def test_speak_cli(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a.wav"
    monkeypatch.setattr(sys, "argv", ["genlab", "speak", "Hello from the command line.", "--out", str(out),
                                      "--backend", "espeak"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    assert wav_info(out.read_bytes())[2] > 0.5
    assert "a.wav" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["genlab", "speak", "hi", "--out", str(tmp_path / "a.mp3")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ".wav" in err

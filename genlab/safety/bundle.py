"""What the studio does to every bundle it makes: watermark the article and the pictures, sign
the pictures, the narration and the music's WAV with C2PA content credentials (every PNG and WAV of
the bundle), and say so in the manifest.

On by default in the studio: without a key named, the local watermark key (genlab.safety.keys,
created on first use); without signing keys (``genlab keys init``) the manifest says the bundle is
unsigned. The manifest records which schemes were used, never the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from genlab.generate.text import SamplingOptions
from genlab.safety import keys
from genlab.safety.provenance import Signer
from genlab.safety.watermark_image import MIN_PIXELS, ImageWatermark, min_scale
from genlab.safety.watermark_text import TextWatermark, check_key

AUDIO_NOTE = ("not watermarked: no keyed offline audio watermark is used yet (see docs/responsible.md); "
              "the narration, the music and the soundtrack (WAV) carry C2PA credentials only")


@dataclass
class StudioSafety:
    key: str | None = None  # the watermark key; None: no watermarks
    signer: Signer | None = None
    key_source: str = "given"  # "local": the machine's own key (genlab.safety.keys); "given": one named
    text: TextWatermark | None = field(init=False, default=None)
    image: ImageWatermark | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.key is not None:
            check_key(self.key)
            self.text, self.image = TextWatermark(self.key), ImageWatermark(self.key)

    def sampling(self, opts: SamplingOptions) -> SamplingOptions:
        return replace(opts, watermark=self.text) if self.text is not None else opts

    def image_scale(self, side: int, scale: int) -> int:
        """The enlargement to deliver: at least what the image watermark needs."""
        return max(scale, min_scale(side)) if self.image is not None else scale

    def mark(self, image: np.ndarray) -> np.ndarray:
        if self.image is None or image.shape[0] * image.shape[1] < MIN_PIXELS:
            return image
        return self.image.embed(image)

    def watermarks(self, text_here: bool = True) -> dict:
        """The manifest's record: which scheme marked what (never the key). ``text_here``: the text
        was sampled by genlab's own sampler (not by a remote OpenAI-compatible server)."""
        text = self.text.describe() if self.text and text_here else None
        return {"text": text, **({"text_note": "written by a remote server: genlab's sampler did not run"}
                                 if self.text and not text_here else {}),
                "image": self.image.describe() if self.image else None,
                "audio": None, "audio_note": AUDIO_NOTE,
                "key": self.key_source if self.key is not None else None}

    def sign(self, files: dict[str, bytes], record: dict) -> tuple[dict[str, bytes], dict]:
        """Embed credentials in every PNG and WAV of the bundle; the manifest's record of it."""
        targets = sorted(n for n in files if Path(n).suffix.lower() in (".png", ".wav"))
        if self.signer is None:
            return files, {"signed": False, "reason": "no signing keys here (`genlab keys init` makes them)"}
        if not targets:
            return files, {"signed": False, "reason": "no picture or narration to carry C2PA credentials"}
        out, sidecars = dict(files), []
        for name in targets:
            out[name], side = self.signer.sign(name, files[name], record)
            if side is not None:  # pragma: no cover - PNG and WAV embed
                out[name + ".c2pa"] = side
                sidecars.append(name + ".c2pa")
        import c2pa

        return out, {"signed": True, "standard": "C2PA", "sdk": f"c2pa-python {c2pa.__version__}",
                     "signer": self.signer.subject, "embedded": [n for n in targets if n + ".c2pa" not in out],
                     "sidecars": sidecars, "assertion": "org.genlab.bundle"}


def studio_safety(watermark: str | bool = True, sign: bool = True) -> StudioSafety:
    """``watermark``: True, the local key (created when missing); a string, that key; False, none.
    ``sign``: with the local signing keys when there are any."""
    key = keys.watermark_key(create=True) if watermark is True else (watermark or None)
    return StudioSafety(key=key, signer=Signer.load() if sign else None,
                        key_source="local" if watermark is True else "given")

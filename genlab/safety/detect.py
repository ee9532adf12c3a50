"""`genlab detect`: is a text, a picture or a studio bundle genlab's, made with this key?

Per item: whether the watermark is there, its statistic and p-value (text: z over the scored
tokens, one-sided normal p; image: payload bit accuracy, binomial p), and for PNG, JPEG and WAV
files the C2PA credentials (trusted, valid, invalid = changed after signing, or none). A bundle
folder is checked as a whole: article.md (text watermark; its sha256 against the signed record),
every picture, the narration, and manifest.json's asset hashes against the files.

Text detection re-tokenizes the text with the tokenizer of the model that wrote it: a run folder
(or any folder with a tokenizer.json) named with ``tokenizer=``; by default the foundation model's
(runs/smollm2, what the studio and the server use when none is named).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genlab.errors import ConfigError, DataError
from genlab.safety import provenance
from genlab.safety.watermark_image import MIN_PIXELS, ImageWatermark
from genlab.safety.watermark_text import TextWatermark

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav"}


@dataclass
class Item:
    name: str
    kind: str  # text | image | audio
    watermark: dict | None = None  # the detection's to_dict(), or None when not checked
    credentials: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def detected(self) -> bool | None:
        return None if self.watermark is None else bool(self.watermark["detected"])

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "detected": self.detected}
        if self.watermark is not None:
            d.update({k: v for k, v in self.watermark.items() if k not in ("kind", "detected")})
        d["credentials"] = self.credentials
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass
class Report:
    path: str
    items: list[Item]
    bundle: dict | None = None  # a bundle's own checks (manifest hashes, signed article)

    def to_dict(self) -> dict:
        return {"path": self.path, "items": [i.to_dict() for i in self.items], "bundle": self.bundle}


def load_tokenizer(source: str | Path | None):
    """A ``tokenizers.Tokenizer`` from a run (or any folder with tokenizer.json, or the file itself);
    by default the foundation model's."""
    from tokenizers import Tokenizer

    if source is None:
        from genlab.foundation import DEFAULT_RUN

        source = DEFAULT_RUN
        if not (Path(source) / "tokenizer.json").is_file():
            raise ConfigError("text detection needs the tokenizer of the model that wrote the text: pass --run RUN "
                              f"(a run folder with tokenizer.json); the default, {DEFAULT_RUN}, is not here "
                              "(`genlab import smollm2` makes it)")
    path = Path(source)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"no tokenizer.json in '{source}': pass --run with an LM run folder")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises plain Exceptions for bad files
        raise ConfigError(f"'{file}' is not a tokenizer file this genlab reads ({e})") from None


def detect_text(text: str, tokenizer, key: str) -> dict:
    from genlab.generate.text import clean_text

    ids = tokenizer.encode(clean_text(text)).ids
    if not ids:
        raise DataError("the text is empty")
    return TextWatermark(key).detect(ids, max(ids) + 1).to_dict()


def read_image(name: str, data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = "L" if im.mode in ("L", "1", "I;16", "I", "LA") else "RGB"
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"'{name}' is not a readable image ({e.__class__.__name__}: {e})") from None


def detect_image(name: str, data: bytes, key: str) -> Item:
    img = read_image(name, data)
    item = Item(name, "image")
    if img.shape[0] * img.shape[1] < MIN_PIXELS:
        item.notes.append(f"{img.shape[1]}x{img.shape[0]}: too small for the mark (256x256)")
    else:
        item.watermark = ImageWatermark(key).detect(img).to_dict()
    return item


def credentials(name: str, data: bytes, trust: Path | None, sidecar: bytes | None = None) -> dict | None:
    if Path(name).suffix.lower() not in provenance.MIME:
        return None
    return provenance.verify_asset(name, data, sidecar, trust).to_dict()


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror or e}") from None
    if not data:
        raise DataError(f"'{path}' is empty")
    return data


def _text_of(path: Path, data: bytes) -> str:
    if b"\0" in data:
        raise DataError(f"'{path.name}' is not a text, an image, a WAV or a studio bundle (unknown format)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"'{path.name}' is not UTF-8 text, nor an image, a WAV or a studio bundle "
                        "(unknown format)") from None
    if not text.strip():
        raise DataError(f"'{path}' holds only whitespace")
    return text


def detect_file(path: Path, key: str, tokenizer_source: str | Path | None = None,
                trust: Path | None = None) -> Report:
    path = Path(path)
    if path.is_dir():
        return detect_bundle(path, key, tokenizer_source, trust)
    if not path.exists():
        raise DataError(f"'{path}' does not exist")
    data = _read(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        item = detect_image(path.name, data, key)
        item.credentials = credentials(path.name, data, trust, _sidecar(path))
        return Report(str(path), [item])
    if suffix in AUDIO_SUFFIXES:
        _check_wav(path.name, data)
        item = Item(path.name, "audio", notes=["no audio watermark"])
        item.credentials = credentials(path.name, data, trust, _sidecar(path))
        return Report(str(path), [item])
    text = _text_of(path, data)  # any other file that is UTF-8 text is scored as text
    return Report(str(path), [Item(path.name, "text", detect_text(text, load_tokenizer(tokenizer_source), key))])


def _sidecar(path: Path) -> bytes | None:
    side = path.with_name(path.name + ".c2pa")
    return side.read_bytes() if side.is_file() else None


def _check_wav(name: str, data: bytes) -> None:
    import wave

    try:
        with wave.open(io.BytesIO(data)) as w:
            w.getnframes()
    except (wave.Error, EOFError) as e:
        raise DataError(f"'{name}' is not a readable WAV file ({e})") from None


def detect_bundle(folder: Path, key: str, tokenizer_source: str | Path | None = None,
                  trust: Path | None = None) -> Report:
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise DataError(f"'{folder}' is a folder but not a studio bundle (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        assets = manifest["assets"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(f"'{mpath}' is not a studio manifest ({e.__class__.__name__})") from None
    if tokenizer_source is None:  # the run that wrote the article, when it is here
        text_run = next((m.get("run") for m in manifest.get("models", []) if m.get("role") == "text"), None)
        for cand in ([Path("runs") / text_run] if text_run else []):
            if (cand / "tokenizer.json").is_file():
                tokenizer_source = cand
    items: list[Item] = []
    signed_record = None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"
                   and not p.name.endswith(".c2pa"))
    for p in files:
        name = p.relative_to(folder).as_posix()
        data = p.read_bytes()
        suffix = p.suffix.lower()
        if name == "article.md":
            text = data.decode("utf-8", "replace")
            body = text[2:] if text.startswith("# ") else text  # the heading's "# " is not the model's
            items.append(Item(name, "text", detect_text(body, load_tokenizer(tokenizer_source), key)))
        elif suffix in IMAGE_SUFFIXES:
            item = detect_image(name, data, key)
            item.credentials = credentials(name, data, trust, _sidecar(p))
            items.append(item)
        elif suffix in AUDIO_SUFFIXES:
            item = Item(name, "audio", notes=["no audio watermark"])
            item.credentials = credentials(name, data, trust, _sidecar(p))
            items.append(item)
        else:
            continue
        if item_creds := items[-1].credentials:
            if signed_record is None and item_creds.get("intact"):
                signed_record = provenance.verify_asset(name, data, _sidecar(p), trust).record
    changed = sorted(n for n, rec in assets.items()
                     if not (folder / n).is_file()
                     or hashlib.sha256((folder / n).read_bytes()).hexdigest() != rec.get("sha256"))
    extra = sorted(p.relative_to(folder).as_posix() for p in files
                   if p.relative_to(folder).as_posix() not in assets)
    said = manifest.get("credentials") or {}
    present = {i.name: i.credentials for i in items if i.credentials and i.credentials["present"]}
    stripped = sorted(n for n in said.get("embedded", []) if n not in present)  # signed once, not now
    bundle: dict = {"format": manifest.get("format"), "manifest_mismatch": changed, "not_in_manifest": extra,
                    "signed": bool(said.get("signed")), "unsigned_reason": said.get("reason"),
                    "credentials_missing": stripped,
                    "credentials_intact": (all(c["intact"] for c in present.values()) and not stripped)
                    if present or stripped else None}
    if signed_record is not None and (folder / "article.md").is_file():
        article = hashlib.sha256((folder / "article.md").read_bytes()).hexdigest()
        bundle["article_matches_signed_record"] = article == signed_record.get("article_sha256")
    else:
        bundle["article_matches_signed_record"] = None
    bundle["tampered"] = bool(changed) or bundle["credentials_intact"] is False \
        or bundle["article_matches_signed_record"] is False
    return Report(str(folder), items, bundle)

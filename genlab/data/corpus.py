"""Text corpora: any mix of files, folders and globs, plus two embedded corpora.

- ``fortunes``: English text from Debian's fortunes package (/usr/share/games/fortunes).
- ``pystdlib``: the running Python's standard-library sources (code generation).

A corpus is read as a list of documents (each fortune, each file); documents are the unit of the
train/validation split, so no fortune or source file lands on both sides.
"""

from __future__ import annotations

import glob
import hashlib
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from genlab.errors import DataError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
EMBEDDED = ("fortunes", "pystdlib")
# Text-file suffixes picked up when a folder is given (files named directly are always read).
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".csv", ".html", ".xml", ".yaml", ".yml", ".toml",
                 ".c", ".h", ".cpp", ".js", ".ts", ".rs", ".go", ".java", ".sh", ".tex", ""}
_OVERSTRIKE = re.compile(r".\x08")  # "_\bX" underlining in old fortune files
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Source:
    """One file of a corpus; ``embedded`` sources skip unreadable files instead of failing."""

    path: Path
    kind: str  # "file" | "fortunes" | "pystdlib"

    @property
    def embedded(self) -> bool:
        return self.kind != "file"


def fortune_files() -> list[Path]:
    if not FORTUNES_DIR.is_dir():
        raise DataError(
            f"the 'fortunes' corpus needs Debian's fortunes package ({FORTUNES_DIR} is missing); "
            "run `make setup` (or `apt-get install fortunes`)"
        )
    files = [p for p in sorted(FORTUNES_DIR.iterdir())
             if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")]
    if not files:
        raise DataError(f"{FORTUNES_DIR} holds no fortune files; reinstall with `make setup`")
    return files


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    return [p for p in sorted(root.rglob("*.py")) if not skip.intersection(p.relative_to(root).parts)]


def resolve(specs: list[str]) -> list[Source]:
    """Expand corpus specs (names, files, folders, globs) into a sorted, de-duplicated file list."""
    if not specs:
        raise DataError("no corpus given; name files, folders, globs, 'fortunes' or 'pystdlib'")
    sources: list[Source] = []
    for spec in specs:
        if spec == "fortunes":
            sources += [Source(p, "fortunes") for p in fortune_files()]
        elif spec == "pystdlib":
            sources += [Source(p, "pystdlib") for p in stdlib_files()]
        elif any(ch in spec for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file())
            if not matches:
                raise DataError(f"the pattern '{spec}' matches no files")
            sources += [Source(p, "file") for p in matches]
        else:
            path = Path(spec)
            if path.is_file():
                sources.append(Source(path, "file"))
            elif path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                               and not any(part.startswith(".") for part in p.relative_to(path).parts))
                if not files:
                    raise DataError(f"the folder '{spec}' holds no text files")
                sources += [Source(p, "file") for p in files]
            else:
                raise DataError(
                    f"corpus '{spec}' is not a file, folder, glob or embedded corpus ({', '.join(EMBEDDED)})"
                )
    seen, unique = set(), []
    for s in sources:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def read_source(src: Source) -> str | None:
    """The text of one file; raises DataError for a user's binary or non-UTF-8 file, and returns
    None for such a file inside an embedded corpus (a handful of stdlib files are Latin-1)."""
    data = src.path.read_bytes()
    if b"\x00" in data[:8192]:
        if src.embedded:
            return None
        raise DataError(f"{src.path} looks binary (it contains NUL bytes); give text files only")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if src.embedded:
            return None
        raise DataError(f"{src.path} is not UTF-8 text (bad byte at offset {e.start}); convert it with iconv") from None
    if src.kind == "fortunes":
        text = _OVERSTRIKE.sub("", text)
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def documents(sources: list[Source]) -> list[str]:
    """Every document of the corpus, in a stable order."""
    docs: list[str] = []
    for src in sources:
        text = read_source(src)
        if text is None:
            continue
        if src.kind == "fortunes":
            docs += [d.strip() + "\n" for d in re.split(r"\n%\n", text) if d.strip()]
        elif text.strip():
            docs.append(text)
    if not docs:
        names = ", ".join(str(s.path) for s in sources[:3])
        raise DataError(f"the corpus is empty (no text in {names}{', ...' if len(sources) > 3 else ''})")
    return docs


def fingerprint(sources: list[Source]) -> str:
    """sha256 over every file's path and content: the cache key of prepared data."""
    h = hashlib.sha256()
    for src in sources:
        h.update(str(src.path.resolve()).encode() + b"\0" + src.kind.encode() + b"\0")
        h.update(hashlib.sha256(src.path.read_bytes()).digest())
    return h.hexdigest()

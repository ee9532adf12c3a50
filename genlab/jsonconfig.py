"""A mixin for config dataclasses that round-trip through JSON (config.json of every run)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Self


class JsonConfig:
    """``to_dict`` for config.json; ``from_dict`` ignores keys this version does not know, so a run
    written by a newer genlab with extra settings still loads."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in known})

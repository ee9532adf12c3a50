"""Server-sent events: one ``data:`` line per event (text completions, chat, studio job progress)."""

from __future__ import annotations

import json


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"

"""What every verb module prints with: the two consoles and a few one-line reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from genlab.errors import GenlabError

out = Console()  # results: what a script reads
err = Console(stderr=True)  # progress, notes, errors


def log(message: str) -> None:
    """A library's progress line on stderr, printed as it is (no rich markup or highlighting)."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def comma_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [x.strip() for x in text.split(",") if x.strip()]


def comma_ints(text: str, flag: str, example: str) -> list[int]:
    try:
        return [int(x) for x in comma_list(text)]
    except ValueError:
        raise GenlabError(f"{flag} must be {example} (got '{text}')") from None


def report_lm_training(result: Any, run: Path) -> None:
    """The closing line of `train lm` and `distill`."""
    val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    err.print(f"[green]done[/]: step {result.step}, train loss {result.train_loss:.4f}"
              f"{', val ' + val if val else ''} -> {run}")

"""`genlab ARGS` run in the test's own process (imported by tests; holds no tests itself)."""

from __future__ import annotations

import sys


def cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`genlab ARGS` in this process (exit code, stdout, stderr): the same entry point as the console
    script, without starting an interpreter and importing torch for every call."""
    from genlab.cli import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["genlab", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err

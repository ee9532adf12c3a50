"""One way to keep third-party chatter off the user's terminal.

Converters and runtimes (torch.export, onnxruntime's quantizer, ExecuTorch, litert-torch,
coremltools) warn at length about things a user can do nothing about. ``quiet()`` silences Python
warnings and the named loggers for a block; ``fds=True`` also sends the process's stdout and stderr
file descriptors elsewhere (C++ code prints there directly) and shows what was written only if the
block fails, so a real error keeps its diagnostics.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout


@contextmanager
def quiet(*loggers: str, root: bool = False, fds: bool = False) -> Iterator[None]:
    """Warnings off and ``loggers`` at ERROR for the block; ``root``: every logger below ERROR
    (libraries that log to the root logger); ``fds``: stdout/stderr of the whole process too."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        for lg, _ in saved:
            lg.setLevel(logging.ERROR)
        if root:
            logging.disable(logging.WARNING)
        try:
            if fds:
                stack.enter_context(_silenced_fds())
            yield
        finally:
            if root:
                logging.disable(logging.NOTSET)
            for lg, level in saved:
                lg.setLevel(level)


@contextmanager
def _silenced_fds() -> Iterator[None]:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with redirect_stdout(text), redirect_stderr(text):
                yield
        except BaseException:
            sink.seek(0)
            said = sink.read().decode(errors="replace") + text.getvalue()
            os.write(saved[1], said[-4000:].encode())
            raise
        finally:
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)

"""ExecuTorch programs (genlab's export folders, lowered to XNNPACK) run by ExecuTorch's own Python
runtime. The program's methods and their inputs are described in genlab.export.executorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genlab.errors import RunError
from genlab.models.transformer import LMConfig
from genlab.runtimes.base import Opened, bundle_format, lm_bundle_meta, opened_bundle, require
from genlab.runtimes.static import StaticRunner

NAME = "executorch"
ARTIFACT = "an ExecuTorch export folder (genlab-export.json, model.pte)"
LM_METHODS = ("prefill", "decode")
IMAGE_METHOD = "forward"


def detect(path: Path) -> bool:
    return bundle_format(path) == "executorch"


def load_program(path: Path):
    require("executorch.runtime", "edge", "running an ExecuTorch program")
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(Path(path))
    except Exception as e:  # the runtime raises RuntimeError/ValueError with long native messages
        raise RunError(f"{path} is not a loadable ExecuTorch program ({str(e).splitlines()[0][:120]})") from None


class ExecutorchRunner(StaticRunner):
    """The LM program: ``run`` calls its "prefill" or "decode" method."""

    def __init__(self, path: str | Path, cfg: LMConfig, chunk: int) -> None:
        super().__init__(cfg, chunk)
        self.path = Path(path)
        self.program = load_program(self.path)
        missing = [m for m in LM_METHODS if m not in self.program.method_names]
        if missing:
            raise RunError(f"{self.path} lacks the method(s) {', '.join(missing)} of a genlab LM export")
        # Load both now: the program caches them, and a bad program fails here rather than mid-generation.
        self.methods = {name: self.program.load_method(name) for name in LM_METHODS}

    def run(self, which, tokens, input_pos, caches):
        inputs = [torch.from_numpy(np.ascontiguousarray(tokens, np.int64)),
                  torch.from_numpy(np.ascontiguousarray(input_pos, np.int64)),
                  *(torch.from_numpy(c) for c in caches)]
        # The runtime copies outputs out of its (shared) arenas on every call, so they are ours to keep.
        logits, *new = self.methods[which].execute(inputs)
        return logits.numpy(), [c.numpy() for c in new]


def run_image_program(path: str | Path, *inputs: torch.Tensor) -> torch.Tensor:
    """Images from a ``generator.pte`` (z [, labels] -> images in [0, 1])."""
    return load_program(Path(path)).load_method(IMAGE_METHOD).execute(list(inputs))[0]


def open_artifact(path: Path, device: str = "auto") -> Opened:
    meta = lm_bundle_meta(path, "ExecuTorch")
    program = path / meta["files"]["lm"]
    if not program.is_file():
        raise RunError(f"'{program}' is missing from the export folder")
    runner = ExecutorchRunner(program, LMConfig.from_dict(meta["model"]), int(meta["chunk"]))
    return opened_bundle(path, meta, runner, NAME)

"""What `genlab serve` is started with (the CLI builds it; the app factory reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerConfig:
    text_run: Path | None = Path("runs/demo")
    image_run: Path | None = None
    data_dir: Path = Path("runs/studio")
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 16
    max_tokens_limit: int = 1024
    max_body_bytes: int = 1_000_000
    max_n: int = 8
    device: str = "auto"
    fast: bool = True  # PyTorch runs: the fused, kernel-backed inference path (False: the reference path)
    semantic_labels: bool = True
    speech_backend: str = "auto"
    extra: dict = field(default_factory=dict)

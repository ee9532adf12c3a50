"""What `genlab serve` is started with (the CLI builds it; the app factory reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerConfig:
    text_run: Path | None = Path("runs/demo")
    image_run: Path | None = None
    music_run: Path | None = None  # a music run: POST /v1/audio/music and the studio's music stage
    upscale_run: Path | None = None  # a super-resolution run that enlarges the studio's illustrations
    data_dir: Path = Path("runs/studio")
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 16
    prefix_cache_tokens: int = 2048  # the scheduler's prefix cache (genlab.studio.batching); 0: none
    prefill_chunk: int = 512  # prompt tokens per prefill pass between decode steps
    max_tokens_limit: int = 1024
    max_body_bytes: int = 1_000_000
    max_n: int = 8
    device: str = "auto"
    fast: bool = True  # PyTorch runs: the fused, kernel-backed inference path (False: the reference path)
    semantic_labels: bool = True
    speech_backend: str = "auto"
    # Text watermark key (genlab.safety.watermark_text): every completion is marked unless the request
    # says "watermark": false. None: no text watermark on the API. Studio jobs are marked either way
    # (with this key, else the machine's own key), as in `genlab studio make`.
    watermark_key: str | None = None
    extra: dict = field(default_factory=dict)

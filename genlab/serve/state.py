"""The one object every route shares: the loaded models, the batching scheduler, the studio and
its history, the config. ``create_app`` builds it and keeps it at ``app.state.service``; a route
asks for it with the ``ServiceDep`` dependency."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, Request

from genlab.generate.images import ImageGenerator
from genlab.generate.speech import can_speak
from genlab.generate.text import LanguageModel, load_lm
from genlab.serve.config import ServerConfig
from genlab.serve.errors import APIError
from genlab.studio.backends import GenlabTextBackend
from genlab.studio.batching import BatchScheduler
from genlab.studio.history import History
from genlab.studio.music import StudioMusic
from genlab.studio.pipeline import Studio

TTS_MODEL = "genlab-tts"
Kind = Literal["text", "image", "speech", "music"]


@dataclass
class JobState:
    """A running job's events, kept in memory for its SSE followers (the history keeps the result)."""

    events: list[dict] = field(default_factory=list)
    finished: bool = False


class Service:
    """Everything the routes share: models, the batching scheduler, the studio and its history."""

    def __init__(self, cfg: ServerConfig, lm: LanguageModel | None = None) -> None:
        self.cfg = cfg
        self.lm = lm or (load_lm(cfg.text_run, device=cfg.device, fast=cfg.fast) if cfg.text_run else None)
        self.scheduler = (BatchScheduler(self.lm, cfg.max_batch, cfg.prefix_cache_tokens, cfg.prefill_chunk)
                          if self.lm else None)
        self.images = ImageGenerator.from_run(cfg.image_run, device=cfg.device) if cfg.image_run else None
        self.text_id = Path(cfg.text_run).name if cfg.text_run else "genlab-lm"
        self.image_id = Path(cfg.image_run).name if cfg.image_run else None
        self.music = StudioMusic.from_run(cfg.music_run, device=cfg.device) if cfg.music_run else None
        # The "espeak" voice always uses espeak-ng; the others use the configured back end.
        self.speech_id = TTS_MODEL if can_speak(cfg.speech_backend) or can_speak("espeak") else None
        self.history = History(cfg.data_dir)
        self.assets = Path(cfg.data_dir) / "assets"
        self.studio: Studio | None = None
        if self.scheduler is not None:  # studio jobs share the scheduler (and its batches) with the API
            self.studio = Studio(GenlabTextBackend(self.lm, self.scheduler), self.images, cfg.image_run,
                                 cfg.semantic_labels)
            self.studio.music = self.music
            if cfg.upscale_run:
                from genlab.generate.upscale import ImageUpscaler

                self.studio.upscaler = ImageUpscaler.from_run(cfg.upscale_run, device=cfg.device)
            from genlab.safety.bundle import studio_safety

            self.studio.safety = studio_safety(cfg.watermark_key or True)
        self.watermark = None  # the API's text watermark
        if cfg.watermark_key:
            from genlab.safety.watermark_text import TextWatermark

            self.watermark = TextWatermark(cfg.watermark_key)
        self.jobs: dict[str, JobState] = {}
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genlab-studio")
        self.created = int(time.time())

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        if self.scheduler:
            self.scheduler.close()

    # ---- models ----

    def served(self) -> dict[Kind, str | None]:
        """The model id of each kind this server has loaded or can run (what /v1/models lists)."""
        return {"text": self.text_id if self.lm is not None else None,
                "image": self.image_id if self.images is not None else None, "speech": self.speech_id,
                "music": self.music.name if self.music is not None else None}

    def resolve_model(self, requested: str | None, kind: Kind) -> str:
        """The id of the ``kind`` model a request names; an omitted name means that one. Any other
        name is a 404 ``model_not_found``, never an answer from another model."""
        served = self.served()[kind]
        if served is not None and requested in (None, served):
            return served
        listed = [m for m in self.served().values() if m]
        if served is None:
            hint = f"this server has no {kind} model"
        elif requested in listed:
            hint = f"it is not a {kind} model; use '{served}' (or omit model)"
        else:
            hint = f"this server's {kind} model is '{served}' (or omit model); /v1/models lists {listed}"
        raise APIError(404, f"The model '{requested}' does not exist here: {hint}", "model", "model_not_found")

    # ---- limits ----

    def check_max_tokens(self, max_tokens: int) -> None:
        if max_tokens > self.cfg.max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {self.cfg.max_tokens_limit}",
                           "max_tokens")

    def check_n(self, n: int) -> None:
        if n > self.cfg.max_n:
            raise APIError(400, f"n is {n}; this server allows at most {self.cfg.max_n}", "n")


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

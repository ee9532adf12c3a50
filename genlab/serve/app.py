"""The application factory: the shared ``Service``, the guard middleware, the error handlers and
one router per API area."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from genlab.generate.text import LanguageModel
from genlab.serve import conversations, images, jobs, music, page, speech, text  # the routers
from genlab.serve.config import ServerConfig
from genlab.serve.errors import install_error_handlers
from genlab.serve.guard import Guard
from genlab.serve.state import Service


def create_app(cfg: ServerConfig, lm: LanguageModel | None = None) -> FastAPI:
    """Load the models (``lm`` instead of ``cfg.text_run`` when given) and build the app; the
    service lives at ``app.state.service`` and is closed when the server shuts down."""
    svc = Service(cfg, lm)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(title="genlab", version="1", summary="OpenAI-compatible API and content studio", lifespan=lifespan)
    app.state.service = svc
    app.add_middleware(Guard, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes)
    install_error_handlers(app)
    for router in (page.router, text.router, images.router, speech.router, music.router, jobs.router,
                   conversations.router):
        app.include_router(router)
    page.mount_static(app)
    return app


def serve(cfg: ServerConfig, log=print) -> None:
    import uvicorn

    app = create_app(cfg)
    log(f"genlab serve: http://{cfg.host}:{cfg.port}/  (API at /v1, key {'required' if cfg.api_key else 'off'})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")

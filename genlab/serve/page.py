"""The web page and liveness: ``GET /`` (the studio page; its files under ``/static``, no data in
them) and ``GET /health`` (no key needed; the scheduler's batching figures)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from genlab.serve.state import ServiceDep

STATIC = Path(__file__).resolve().parents[1] / "studio" / "static"

router = APIRouter(tags=["page"])


@router.get("/health")
async def health(svc: ServiceDep) -> dict:
    return {"status": "ok", "batching": svc.scheduler.stats.to_dict() if svc.scheduler else None}


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def mount_static(app: FastAPI) -> None:
    """A mount is the app's, not a router's: the factory calls this after including ``router``."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

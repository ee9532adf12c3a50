"""Studio jobs: ``POST|GET /v1/studio/jobs``, ``GET|DELETE /v1/studio/jobs/<id>``, and per job its
``/events`` (SSE progress), ``/bundle`` (zip) and ``/files/<asset>``. Jobs run one at a time on the
service's worker thread; the SQLite history keeps their outcome across restarts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, StreamingResponse

from genlab.errors import GenlabError
from genlab.generate.speech import SpeechOptions
from genlab.serve.errors import APIError
from genlab.serve.schemas import JobBody, sampling_temperature
from genlab.serve.sse import sse
from genlab.serve.state import JobState, Service, ServiceDep
from genlab.studio.pipeline import StudioRequest

router = APIRouter(prefix="/v1/studio/jobs", tags=["studio"])

JOB_ID = re.compile(r"[0-9a-f]{32}")


def run_job(svc: Service, job_id: str, req: StudioRequest) -> None:
    """On the worker thread: make the bundle, record the outcome, tell the followers."""
    state = svc.jobs[job_id]
    try:
        svc.history.set_running(job_id)
        assert svc.studio is not None
        folder = svc.history.job_dir(job_id) / "bundle"
        bundle = svc.studio.make(req, folder, state.events.append, overwrite=True)
        svc.history.set_done(job_id, bundle.manifest, bundle.folder, bundle.zip_path)
        state.events.append({"event": "done", "title": bundle.manifest["title"]})
    except Exception as e:  # noqa: BLE001 - any failure is the job's, recorded and shown; the server lives on
        msg = str(e) if isinstance(e, GenlabError) else f"{e.__class__.__name__}: {e}"
        svc.history.set_failed(job_id, msg)
        state.events.append({"event": "failed", "error": msg})
    finally:
        state.finished = True


def job_or_404(svc: Service, job_id: str) -> dict:
    job = svc.history.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise APIError(404, f"no studio job '{job_id}'")
    return job


@router.post("")
async def create_job(body: JobBody, svc: ServiceDep) -> dict:
    if svc.studio is None:
        raise APIError(404, "this server has no text model, so no studio (start it with --text-run)")
    svc.check_max_tokens(body.max_tokens)
    if body.voice not in ("joe", "espeak"):
        raise APIError(400, "voice must be 'joe' or 'espeak'", "voice")
    speech = SpeechOptions(voice="joe", speed=body.speed,
                           backend="espeak" if body.voice == "espeak" else svc.cfg.speech_backend)
    req = StudioRequest(prompt=body.prompt, max_tokens=body.max_tokens,
                        temperature=sampling_temperature(body.temperature),
                        top_p=body.top_p, seed=body.seed, candidates=body.candidates, narrate=body.narrate,
                        speech=speech, music=body.music, music_bars=body.music_bars, music_key=body.music_key,
                        mix=body.mix)
    req.validate()
    job_id = svc.history.create(body.prompt, req.to_dict())
    svc.jobs[job_id] = JobState()
    svc.worker.submit(run_job, svc, job_id, req)
    return {"id": job_id, "status": "queued"}


@router.get("")
async def list_jobs(svc: ServiceDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
    return {"object": "list", "data": svc.history.list(limit)}


@router.get("/{job_id}")
async def get_job(job_id: str, svc: ServiceDep) -> dict:
    return job_or_404(svc, job_id)


@router.delete("/{job_id}")
async def delete_job(job_id: str, svc: ServiceDep) -> dict:
    job = job_or_404(svc, job_id)
    if job["status"] in ("queued", "running"):
        raise APIError(409, "the job is still running; delete it when it has finished")
    svc.history.delete(job_id)
    svc.jobs.pop(job_id, None)
    return {"id": job_id, "deleted": True}


@router.get("/{job_id}/events")
async def job_events(job_id: str, request: Request, svc: ServiceDep) -> StreamingResponse:
    job = job_or_404(svc, job_id)

    async def events() -> AsyncIterator[str]:
        state = svc.jobs.get(job_id)
        if state is None:  # finished before this server started: its outcome is all there is
            yield sse({"event": "done" if job["status"] == "done" else "failed", "error": job["error"],
                       "title": job["title"]})
            return
        sent = 0
        while True:
            new = state.events[sent:]
            for ev in new:
                yield sse(ev)
            sent += len(new)
            if state.finished and sent == len(state.events):
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.1)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/{job_id}/bundle")
async def job_bundle(job_id: str, svc: ServiceDep) -> FileResponse:
    job = job_or_404(svc, job_id)
    if job["status"] != "done":
        raise APIError(409, f"the job is {job['status']}; there is no bundle")
    return FileResponse(svc.history.data_dir / job["zip_path"], media_type="application/zip",
                        filename=f"genlab-studio-{job_id[:8]}.zip")


@router.get("/{job_id}/files/{asset:path}")
async def job_file(job_id: str, asset: str, svc: ServiceDep) -> FileResponse:
    job = job_or_404(svc, job_id)
    # Only names the manifest lists are served: a request's path never reaches the disk as such.
    if job["status"] != "done" or asset not in job["assets"]:
        raise APIError(404, f"job {job_id} has no file '{asset}'")
    return FileResponse(svc.history.data_dir / job["bundle_dir"] / asset)

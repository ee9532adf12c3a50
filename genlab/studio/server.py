"""`genlab serve`: an OpenAI-compatible API, the studio's job endpoints and its web page.

    GET  /health                              no auth: liveness
    GET  /v1/models
    POST /v1/completions, /v1/chat/completions (SSE streaming, dynamic batching: studio.batching)
    POST /v1/images/generations                b64_json or url (served from /v1/assets/<id>.png)
    POST /v1/audio/speech                      wav
    POST /v1/studio/jobs, GET /v1/studio/jobs, GET|DELETE /v1/studio/jobs/<id>,
    GET  /v1/studio/jobs/<id>/events (SSE), /bundle (zip), /files/<asset>
    GET  /                                     the web page (static files, no data in them)

Safety: an optional API key (Bearer) on everything but /health and the static page; request
bodies and max_tokens are capped; every client error is an OpenAI-style JSON 4xx; files are only
served by ids and names the server made itself (no path from a request ever reaches the disk).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from genlab.errors import GenlabError
from genlab.generate.images import ImageGenerator, png_bytes, upscale
from genlab.generate.speech import SpeechOptions, synthesize
from genlab.generate.text import GenerationInfo, LanguageModel, SamplingOptions, load_lm
from genlab.studio.backends import GenlabTextBackend
from genlab.studio.batching import BatchScheduler
from genlab.studio.history import History
from genlab.studio.labels import pick_label
from genlab.studio.pipeline import Studio, StudioRequest

STATIC = Path(__file__).parent / "static"
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
ASSET_NAME = re.compile(r"^[0-9a-f]{32}\.(png|wav)$")
# Sampling at a temperature this close to 0 overflows the scaled logits (inf, then NaN
# probabilities); its limit is greedy decoding, which is what such a request gets.
MIN_TEMPERATURE = 1e-3


def sampling_temperature(t: float) -> float:
    return 0.0 if t < MIN_TEMPERATURE else t


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
    semantic_labels: bool = True
    speech_backend: str = "auto"
    extra: dict = field(default_factory=dict)


# ---- errors: one OpenAI-style shape for every client error ------------------------------------------

class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
            429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


# ---- request bodies -----------------------------------------------------------------------------------

# Seeds are int64, as OpenAI's are (torch generators take nothing wider).
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _Body(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send options a small server may not use.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=1)] | None = None
    # Below 0.01, dividing logits by the penalty (and then by a small temperature) overflows float32.
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10)] = 1.0
    n: Annotated[int, Field(ge=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Seed | None = None
    ignore_eos: bool = False  # as in vLLM: keep going past end-of-text (benchmarks, fixed lengths)


class CompletionBody(_Sampling):
    prompt: Annotated[str, Field(max_length=100_000)] | Annotated[list[str], Field(min_length=1, max_length=1)]


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]


class ChatBody(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None


class ImageBody(_Body):
    prompt: Annotated[str, Field(min_length=1, max_length=4000)]
    model: str | None = None
    n: Annotated[int, Field(ge=1)] = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: Seed | None = None


class SpeechBody(_Body):
    input: Annotated[str, Field(min_length=1, max_length=4096)]
    model: str | None = None
    voice: str = "joe"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    response_format: str = "wav"


class JobBody(_Body):
    prompt: Annotated[str, Field(min_length=1, max_length=2000)]
    max_tokens: Annotated[int, Field(ge=1)] = 200
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.8
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    seed: Seed = 0
    candidates: Annotated[int, Field(ge=1, le=16)] = 4
    narrate: bool = True
    voice: str = "joe"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0


# ---- chat template ------------------------------------------------------------------------------------

CHAT_STOP = ("\nUser:", "\nSystem:")


def chat_prompt(messages: list[Message]) -> str:
    """The documented template for base models: a plain transcript they can continue.

        {system text}            (each system/developer message, one paragraph each)

        User: {text}
        Assistant: {text}
        ...
        Assistant:

    Generation stops where the model starts a new "User:" or "System:" turn."""
    parts, turns = [], []
    for m in messages:
        text = m.content if isinstance(m.content, str) else "".join(
            p.get("text", "") for p in m.content if isinstance(p, dict) and p.get("type") == "text")
        text = text.strip()
        if m.role in ("system", "developer"):
            parts.append(text)
        else:
            turns.append(f"{'User' if m.role == 'user' else 'Assistant'}: {text}")
    head = "\n\n".join(p for p in parts if p)
    return (head + "\n\n" if head else "") + "\n".join(turns + ["Assistant:"])


# ---- the app ------------------------------------------------------------------------------------------

@dataclass
class JobState:
    """A running job's events, kept in memory for its SSE followers (the history keeps the result)."""

    events: list[dict] = field(default_factory=list)
    finished: bool = False


class Service:
    """Everything the endpoints share: models, the batching scheduler, the studio and its history."""

    def __init__(self, cfg: ServerConfig, lm: LanguageModel | None = None) -> None:
        self.cfg = cfg
        self.lm = lm or (load_lm(cfg.text_run, device=cfg.device) if cfg.text_run else None)
        self.scheduler = BatchScheduler(self.lm, cfg.max_batch) if self.lm else None
        self.images = ImageGenerator.from_run(cfg.image_run, device=cfg.device) if cfg.image_run else None
        self.text_id = Path(cfg.text_run).name if cfg.text_run else "genlab-lm"
        self.image_id = Path(cfg.image_run).name if cfg.image_run else None
        self.history = History(cfg.data_dir)
        self.assets = Path(cfg.data_dir) / "assets"
        self.studio: Studio | None = None
        if self.scheduler is not None:  # studio jobs share the scheduler (and its batches) with the API
            self.studio = Studio(GenlabTextBackend(self.lm, self.scheduler), self.images, cfg.image_run,
                                 cfg.semantic_labels)
        self.jobs: dict[str, JobState] = {}
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genlab-studio")
        self.created = int(time.time())

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        if self.scheduler:
            self.scheduler.close()

    # ---- text ----

    def options(self, body: _Sampling, max_tokens: int | None, i: int, extra_stop: tuple[str, ...] = ()) -> SamplingOptions:
        if max_tokens is None:
            max_tokens = 16 if isinstance(body, CompletionBody) else min(256, self.cfg.max_tokens_limit)
        if max_tokens > self.cfg.max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {self.cfg.max_tokens_limit}",
                           "max_tokens")
        if body.n > self.cfg.max_n:
            raise APIError(400, f"n is {body.n}; this server allows at most {self.cfg.max_n}", "n")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if any(not s for s in stop):
            raise APIError(400, "stop strings must not be empty", "stop")
        return SamplingOptions(max_tokens=max_tokens, temperature=sampling_temperature(body.temperature),
                               top_p=body.top_p,
                               top_k=body.top_k, repetition_penalty=body.repetition_penalty,
                               stop=stop + extra_stop, seed=None if body.seed is None else body.seed + i,
                               ignore_eot=body.ignore_eos)

    def require_text(self) -> BatchScheduler:
        if self.scheduler is None:
            raise APIError(404, "this server has no text model (start it with --text-run)", "model", "model_not_found")
        return self.scheduler


async def merged(sched: BatchScheduler, prompt: str, opts: list[SamplingOptions]) -> AsyncIterator[tuple[int, str, object]]:
    """Events of n choices as they come: (choice index, kind, value)."""
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, o: SamplingOptions) -> None:
        try:
            async for kind, value in sched.events(prompt, o):
                await q.put((i, kind, value))
        except Exception as e:  # noqa: BLE001 - reported to the client as this choice's error
            await q.put((i, "error", str(e)))

    tasks = [asyncio.create_task(pump(i, o)) for i, o in enumerate(opts)]
    try:
        left = len(tasks)
        while left:
            i, kind, value = await q.get()
            if kind != "text":
                left -= 1
            yield i, kind, value
    finally:
        for t in tasks:
            t.cancel()  # a client that went away: each choice's generator closes and frees its slot


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def usage(prompt_tokens: int, infos: list[GenerationInfo]) -> dict:
    completion = sum(i.completion_tokens for i in infos)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def create_app(cfg: ServerConfig, lm: LanguageModel | None = None) -> FastAPI:
    svc = Service(cfg, lm)
    app = FastAPI(title="genlab", version="1", summary="OpenAI-compatible API and content studio")
    app.state.service = svc
    app.router.on_shutdown.append(svc.close)

    # ---- middleware: body limit, then auth ----

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if cfg.api_key and not (path == "/health" or path == "/" or path.startswith("/static/")):
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), cfg.api_key.encode()):
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                      code="invalid_api_key")
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > cfg.max_body_bytes):
                return error_response(413, f"request body over {cfg.max_body_bytes} bytes")
            if length is None:  # chunked upload: read it (bounded) before the endpoint does
                body = b""
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > cfg.max_body_bytes:
                        return error_response(413, f"request body over {cfg.max_body_bytes} bytes")
                request._body = body  # starlette serves the cached body to the endpoint
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON"
        return error_response(400, f"{'.'.join(loc) + ': ' if loc else ''}{msg}", ".".join(loc) or None)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(GenlabError)
    async def _genlab(request: Request, exc: GenlabError):
        return error_response(400, str(exc))

    # ---- health, models ----

    @app.get("/health")
    async def health():
        return {"status": "ok", "batching": svc.scheduler.stats.to_dict() if svc.scheduler else None}

    @app.get("/v1/models")
    async def models():
        data = []
        if svc.lm is not None:
            data.append({"id": svc.text_id, "object": "model", "created": svc.created, "owned_by": "genlab"})
        if svc.image_id:
            data.append({"id": svc.image_id, "object": "model", "created": svc.created, "owned_by": "genlab"})
        data.append({"id": "genlab-tts", "object": "model", "created": svc.created, "owned_by": "genlab"})
        return {"object": "list", "data": data}

    # ---- text ----

    async def text_endpoint(body: _Sampling, prompt: str, max_tokens: int | None, chat: bool):
        sched = svc.require_text()
        opts = [svc.options(body, max_tokens, i, CHAT_STOP if chat else ()) for i in range(body.n)]
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        prompt_tokens = len(sched.lm.encode(prompt)) or 1

        def choice(i: int, text: str | None, finish: str | None) -> dict:
            if chat:
                delta = {} if text is None else {"content": text}
                return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}

        if body.stream:
            async def gen() -> AsyncIterator[str]:
                base = {"id": rid, "object": obj + ".chunk" if chat else obj, "created": created, "model": svc.text_id}
                infos: list[GenerationInfo] = []
                if chat:
                    for i in range(body.n):
                        yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                         "finish_reason": None, "logprobs": None}]})
                async for i, kind, value in merged(sched, prompt, opts):
                    if kind == "text":
                        yield sse({**base, "choices": [choice(i, str(value), None)]})
                    elif kind == "done":
                        assert isinstance(value, GenerationInfo)
                        infos.append(value)
                        yield sse({**base, "choices": [choice(i, None if chat else "", value.finish_reason)]})
                    else:
                        yield sse({"error": {"message": str(value), "type": "server_error"}})
                        return
                if body.stream_options and body.stream_options.include_usage:
                    yield sse({**base, "choices": [], "usage": usage(prompt_tokens, infos)})
                yield sse("[DONE]")

            return StreamingResponse(gen(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        texts, infos = [""] * body.n, [GenerationInfo()] * body.n
        async for i, kind, value in merged(sched, prompt, opts):
            if kind == "text":
                texts[i] += str(value)
            elif kind == "done":
                infos[i] = value  # type: ignore[assignment]
            else:
                raise APIError(500, f"generation failed: {value}")
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                        "finish_reason": infos[i].finish_reason, "logprobs": None} for i in range(body.n)]
        else:
            choices = [choice(i, texts[i], infos[i].finish_reason) for i in range(body.n)]
        return {"id": rid, "object": obj, "created": created, "model": svc.text_id, "choices": choices,
                "usage": usage(prompt_tokens, infos)}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        return await text_endpoint(body, prompt, body.max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await text_endpoint(body, chat_prompt(body.messages), max_tokens, chat=True)

    # ---- images ----

    @app.post("/v1/images/generations")
    async def images(body: ImageBody, request: Request):
        gen = svc.images
        if gen is None:
            raise APIError(404, "this server has no image model (start it with --image-run)", "model", "model_not_found")
        if body.n > cfg.max_n:
            raise APIError(400, f"n is {body.n}; this server allows at most {cfg.max_n}", "n")
        side = gen.model.cfg.image_size
        scale = 8
        if body.size and body.size != "auto":
            m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", body.size)
            if not m or m[1] != m[2] or int(m[1]) % side or not 1 <= int(m[1]) // side <= 32:
                raise APIError(400, f"size must be square and a multiple of {side} px up to {32 * side} "
                                    f"(e.g. '{8 * side}x{8 * side}'); got '{body.size}'", "size")
            scale = int(m[1]) // side
        seed = body.seed if body.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "little")

        def work() -> tuple[list[bytes], str | None]:
            label = None
            if gen.conditional:
                label = pick_label(body.prompt, gen.class_names, cfg.semantic_labels).label
            imgs = gen.sample(body.n, labels=label, seed=seed)
            return [png_bytes(upscale(im.transpose(1, 2, 0), scale)) for im in imgs], label

        pngs, label = await asyncio.to_thread(work)
        data = []
        for png in pngs:
            if body.response_format == "b64_json":
                data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": label})
            else:
                name = f"{uuid.uuid4().hex}.png"
                svc.assets.mkdir(parents=True, exist_ok=True)
                (svc.assets / name).write_bytes(png)
                data.append({"url": str(request.url_for("asset", name=name)), "revised_prompt": label})
        return {"created": int(time.time()), "data": data}

    @app.get("/v1/assets/{name}", name="asset")
    async def asset(name: str):
        if not ASSET_NAME.fullmatch(name) or not (svc.assets / name).is_file():
            raise APIError(404, "no such asset")
        return FileResponse(svc.assets / name, media_type="image/png" if name.endswith(".png") else "audio/wav")

    # ---- speech ----

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechBody):
        if body.response_format != "wav":
            raise APIError(400, f"response_format '{body.response_format}' is not supported; use 'wav'",
                           "response_format")
        voice = body.voice
        if voice in OPENAI_VOICES:
            voice = "joe"  # OpenAI clients insist on a voice name: theirs all map to the built-in voice
        if voice == "espeak":
            opts = SpeechOptions(backend="espeak", speed=body.speed)
        elif voice == "joe":
            opts = SpeechOptions(voice="joe", speed=body.speed, backend=cfg.speech_backend)
        else:  # never a path from a request: only the voices this server knows
            raise APIError(400, f"unknown voice '{body.voice}'; use 'joe', 'espeak' or an OpenAI voice name", "voice")
        result = await asyncio.to_thread(synthesize, body.input, opts)
        return Response(result.wav, media_type="audio/wav")

    # ---- studio jobs ----

    def run_job(job_id: str, req: StudioRequest) -> None:
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

    @app.post("/v1/studio/jobs")
    async def create_job(body: JobBody):
        if svc.studio is None:
            raise APIError(404, "this server has no text model, so no studio (start it with --text-run)")
        if body.max_tokens > cfg.max_tokens_limit:
            raise APIError(400, f"max_tokens is {body.max_tokens}; this server allows at most {cfg.max_tokens_limit}",
                           "max_tokens")
        if body.voice not in ("joe", "espeak"):
            raise APIError(400, "voice must be 'joe' or 'espeak'", "voice")
        speech = SpeechOptions(voice="joe", speed=body.speed,
                               backend="espeak" if body.voice == "espeak" else cfg.speech_backend)
        req = StudioRequest(prompt=body.prompt, max_tokens=body.max_tokens,
                            temperature=sampling_temperature(body.temperature),
                            top_p=body.top_p, seed=body.seed, candidates=body.candidates, narrate=body.narrate,
                            speech=speech)
        req.validate()
        job_id = svc.history.create(body.prompt, req.to_dict())
        svc.jobs[job_id] = JobState()
        svc.worker.submit(run_job, job_id, req)
        return {"id": job_id, "status": "queued"}

    def job_or_404(job_id: str) -> dict:
        job = svc.history.get(job_id) if re.fullmatch(r"[0-9a-f]{32}", job_id) else None
        if job is None:
            raise APIError(404, f"no studio job '{job_id}'")
        return job

    @app.get("/v1/studio/jobs")
    async def list_jobs(limit: Annotated[int, Query(ge=1, le=500)] = 50):
        return {"object": "list", "data": svc.history.list(limit)}

    @app.get("/v1/studio/jobs/{job_id}")
    async def get_job(job_id: str):
        return job_or_404(job_id)

    @app.delete("/v1/studio/jobs/{job_id}")
    async def delete_job(job_id: str):
        job = job_or_404(job_id)
        if job["status"] in ("queued", "running"):
            raise APIError(409, "the job is still running; delete it when it has finished")
        svc.history.delete(job_id)
        svc.jobs.pop(job_id, None)
        return {"id": job_id, "deleted": True}

    @app.get("/v1/studio/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request):
        job = job_or_404(job_id)

        async def gen() -> AsyncIterator[str]:
            state = svc.jobs.get(job_id)
            if state is None:  # finished before this server started: its outcome is all there is
                yield sse({"event": "done" if job["status"] == "done" else "failed", "error": job["error"],
                           "title": job["title"]})
                return
            sent = 0
            while True:
                events = state.events[sent:]
                for ev in events:
                    yield sse(ev)
                sent += len(events)
                if state.finished and sent == len(state.events):
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/studio/jobs/{job_id}/bundle")
    async def job_bundle(job_id: str):
        job = job_or_404(job_id)
        if job["status"] != "done":
            raise APIError(409, f"the job is {job['status']}; there is no bundle")
        return FileResponse(svc.history.data_dir / job["zip_path"], media_type="application/zip",
                            filename=f"genlab-studio-{job_id[:8]}.zip")

    @app.get("/v1/studio/jobs/{job_id}/files/{asset:path}")
    async def job_file(job_id: str, asset: str):
        job = job_or_404(job_id)
        # Only names the manifest lists are served: a request's path never reaches the disk as such.
        if job["status"] != "done" or asset not in job["assets"]:
            raise APIError(404, f"job {job_id} has no file '{asset}'")
        return FileResponse(svc.history.data_dir / job["bundle_dir"] / asset)

    # ---- the page ----

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(cfg: ServerConfig, log=print) -> None:
    import uvicorn

    app = create_app(cfg)
    log(f"genlab serve: http://{cfg.host}:{cfg.port}/  (API at /v1, key {'required' if cfg.api_key else 'off'})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


class ServerThread:
    """A real uvicorn server on 127.0.0.1 in a background thread (tests, benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

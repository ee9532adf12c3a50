"""The OpenAI text API: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``
(JSON or SSE streaming; n choices; dynamic batching through the shared ``BatchScheduler``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from genlab.generate.text import GenerationInfo, SamplingOptions
from genlab.serve.errors import APIError
from genlab.serve.schemas import ChatBody, CompletionBody, Message, SamplingBody, sampling_temperature
from genlab.serve.sse import sse
from genlab.serve.state import Service, ServiceDep
from genlab.studio.batching import BatchScheduler

router = APIRouter(tags=["text"])

def message_dicts(messages: list[Message]) -> list[dict]:
    """Request messages as plain role/content dicts (content parts joined: only text parts count)."""
    return [{"role": m.role, "content": m.content if isinstance(m.content, str) else "".join(
        p.get("text", "") for p in m.content if isinstance(p, dict) and p.get("type") == "text")}
        for m in messages]


def sampling_options(svc: Service, body: SamplingBody, max_tokens: int | None, chat: bool,
                     chat_stop: tuple[str, ...] = ()) -> list[SamplingOptions]:
    """One options object per choice: choice i samples with ``seed + i``."""
    if max_tokens is None:
        max_tokens = min(256, svc.cfg.max_tokens_limit) if chat else 16
    svc.check_max_tokens(max_tokens)
    svc.check_n(body.n)
    stop = body.stops()
    if any(not s for s in stop):
        raise APIError(400, "stop strings must not be empty", "stop")
    return [SamplingOptions(max_tokens=max_tokens, temperature=sampling_temperature(body.temperature),
                            top_p=body.top_p, top_k=body.top_k, repetition_penalty=body.repetition_penalty,
                            stop=stop + chat_stop,
                            seed=None if body.seed is None else body.seed + i, ignore_eot=body.ignore_eos)
            for i in range(body.n)]


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


def usage(prompt_tokens: int, infos: list[GenerationInfo]) -> dict:
    completion = sum(i.completion_tokens for i in infos)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


@router.get("/v1/models")
async def models(svc: ServiceDep) -> dict:
    data = [{"id": m, "object": "model", "created": svc.created, "owned_by": "genlab"}
            for m in svc.served().values() if m]
    return {"object": "list", "data": data}


@router.post("/v1/completions")
async def completions(body: CompletionBody, svc: ServiceDep):
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return await _generate(svc, body, prompt, body.max_tokens, chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatBody, svc: ServiceDep):
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    # The served model's chat template (ending at its end-of-turn token), or a plain transcript.
    prompt, chat_stop = svc.lm.chat_prompt(message_dicts(body.messages)) if svc.lm is not None else ("", ())
    return await _generate(svc, body, prompt, max_tokens, chat=True, chat_stop=chat_stop)


async def _generate(svc: Service, body: SamplingBody, prompt: str, max_tokens: int | None, chat: bool,
                    chat_stop: tuple[str, ...] = ()):
    if svc.scheduler is None:
        raise APIError(404, "this server has no text model (start it with --text-run)", "model", "model_not_found")
    sched = svc.scheduler
    model = svc.resolve_model(body.model, "text")
    opts = sampling_options(svc, body, max_tokens, chat, chat_stop)
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
        async def events() -> AsyncIterator[str]:
            base = {"id": rid, "object": obj + ".chunk" if chat else obj, "created": created, "model": model}
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

        return StreamingResponse(events(), media_type="text/event-stream",
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
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices,
            "usage": usage(prompt_tokens, infos)}

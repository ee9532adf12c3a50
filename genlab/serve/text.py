"""The OpenAI text API: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``
(JSON or SSE streaming; n choices; logprobs; response_format through a grammar; dynamic batching
through the shared ``BatchScheduler``). docs/studio.md lists the fields read and those refused."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from genlab.generate.constrained import Grammar, GrammarError
from genlab.generate.text import GenerationInfo, LanguageModel, SamplingOptions, TokenLogprob
from genlab.serve.errors import APIError
from genlab.serve.schemas import ChatBody, CompletionBody, Message, SamplingBody, sampling_temperature
from genlab.serve.sse import sse
from genlab.serve.state import Service, ServiceDep
from genlab.studio.batching import BatchScheduler

router = APIRouter(tags=["text"])

def message_dicts(messages: list[Message]) -> list[dict]:
    """Request messages as plain role/content dicts (text parts joined)."""
    return [{"role": m.role,
             "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
            for m in messages]


def refuse(param: str, why: str) -> APIError:
    return APIError(400, f"{param}: {why}", param)


def check_supported(body: SamplingBody) -> None:
    """Fields of OpenAI's API this server accepts only where they change nothing: any other value
    is a 400 that names the field (unknown fields are refused by the schema already)."""
    if isinstance(body, ChatBody):
        if body.tools:
            raise refuse("tools", "tool calling is not supported by this server")
        if body.functions:
            raise refuse("functions", "function calling is not supported by this server")
        if body.tool_choice not in (None, "none"):
            raise refuse("tool_choice", "tool calling is not supported by this server (only 'none')")
        if body.function_call not in (None, "none"):
            raise refuse("function_call", "function calling is not supported by this server (only 'none')")
        if body.modalities is not None and body.modalities != ["text"]:
            raise refuse("modalities", "this server answers with text only (['text'])")
        if body.top_logprobs is not None and not body.logprobs:
            raise refuse("top_logprobs", "top_logprobs needs logprobs: true")
        for i, m in enumerate(body.messages):
            for name in ("tool_calls", "function_call", "audio"):
                if getattr(m, name):
                    raise refuse(f"messages.{i}.{name}", "tool calls and audio are not supported by this server")
    if isinstance(body, CompletionBody):
        if body.echo:
            raise refuse("echo", "echoing the prompt is not supported by this server")
        if body.suffix:
            raise refuse("suffix", "a suffix (fill-in-the-middle) is not supported by this server")
        if body.best_of is not None and body.best_of != body.n:
            raise refuse("best_of", "best_of (keeping the best of several samples) is not supported; "
                                    "omit it or set it equal to n")
    if body.response_format is not None and body.response_format.type != "text" and body.ignore_eos:
        raise refuse("response_format", "a JSON response ends at end-of-text, so ignore_eos cannot be set with it")


def logit_bias(svc: Service, body: SamplingBody) -> dict[int, float] | None:
    if not body.logit_bias:
        return None
    assert svc.lm is not None
    vocab = svc.lm.config.vocab_size
    bias = {}
    for key, value in body.logit_bias.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= vocab:
            raise refuse("logit_bias", f"keys are token ids from 0 to {vocab - 1}; got '{key}'")
        bias[int(key)] = value
    return bias


async def response_grammar(lm: LanguageModel, body: SamplingBody) -> Grammar | None:
    """The grammar a response_format asks for (None: plain text), compiled off the event loop."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    schema = fmt.json_schema.schema_ if fmt.json_schema is not None else {"type": "object"}
    try:
        return await asyncio.to_thread(lambda: Grammar.json_schema(lm.vocabulary(), schema))
    except GrammarError as e:
        raise refuse("response_format", str(e)) from None


def logprobs_k(body: SamplingBody) -> int | None:
    """How many alternatives per token to report (None: no logprobs)."""
    if isinstance(body, ChatBody):
        return (body.top_logprobs or 0) if body.logprobs else None
    return body.logprobs if isinstance(body, CompletionBody) else None


def sampling_options(svc: Service, body: SamplingBody, max_tokens: int | None, chat: bool,
                     chat_stop: tuple[str, ...] = (), grammar: Grammar | None = None) -> list[SamplingOptions]:
    """One options object per choice: choice i samples with ``seed + i``."""
    if max_tokens is None:
        max_tokens = min(256, svc.cfg.max_tokens_limit) if chat else 16
    svc.check_max_tokens(max_tokens)
    svc.check_n(body.n)
    stop = body.stops()
    if any(not s for s in stop):
        raise APIError(400, "stop strings must not be empty", "stop")
    bias = logit_bias(svc, body)
    if body.watermark and svc.watermark is None:
        raise APIError(400, "this server has no watermark key; start it with --watermark KEY", "watermark")
    watermark = svc.watermark if body.watermark is not False else None
    return [SamplingOptions(max_tokens=max_tokens, temperature=sampling_temperature(body.temperature),
                            top_p=body.top_p, top_k=body.top_k, repetition_penalty=body.repetition_penalty,
                            stop=stop + chat_stop,
                            seed=None if body.seed is None else body.seed + i, ignore_eot=body.ignore_eos,
                            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                            logit_bias=bias, logprobs=logprobs_k(body), grammar=grammar, watermark=watermark)
            for i in range(body.n)]


def _logprob(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -inf; OpenAI reports -9999 for "impossible"


class LogprobsFormat:
    """Token logprobs in the shape each endpoint answers with: chat's ``content`` entries
    (token, logprob, bytes, top_logprobs) or the legacy completions lists (tokens, token_logprobs,
    top_logprobs, text_offset; offsets count on across the chunks of a stream)."""

    def __init__(self, lm: LanguageModel, chat: bool, n: int) -> None:
        self.lm, self.chat = lm, chat
        self.before = [b""] * n  # the completion's bytes so far, per choice (for text_offset)

    def _token(self, token: int, logprob: float) -> dict:
        raw = self.lm.token_bytes(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": _logprob(logprob), "bytes": list(raw)}

    def _legacy(self, token: int) -> str:
        # A byte-level token can be part of a UTF-8 character: the legacy API writes those as
        # "bytes:\\xNN..." (it has no bytes field), so no text is made up.
        raw = self.lm.token_bytes(token)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def __call__(self, i: int, entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict:
        if self.chat:
            return {"content": [{**self._token(e.token, e.logprob),
                                 "top_logprobs": [self._token(t, lp) for t, lp in e.top]} for e in entries],
                    "refusal": None}
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            token = self._legacy(e.token)
            out["tokens"].append(token)
            out["token_logprobs"].append(_logprob(e.logprob))
            # As OpenAI's legacy API: the alternatives and the sampled token (so up to logprobs + 1).
            out["top_logprobs"].append({**{self._legacy(t): _logprob(lp) for t, lp in e.top},
                                        token: _logprob(e.logprob)})
            # The character where the token starts (a token inside a character: where that one starts).
            out["text_offset"].append(len(self.before[i].decode("utf-8", "ignore")))
            self.before[i] += self.lm.token_bytes(e.token)
        return out


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
    check_supported(body)
    grammar = await response_grammar(sched.lm, body)
    opts = sampling_options(svc, body, max_tokens, chat, chat_stop, grammar)
    want_logprobs = opts[0].logprobs is not None
    fmt_logprobs = LogprobsFormat(sched.lm, chat, body.n)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    prompt_tokens = len(sched.lm.encode(prompt)) or 1

    def choice(i: int, text: str | None, finish: str | None, logprobs: dict | None = None) -> dict:
        if chat:
            delta = {} if text is None else {"content": text}
            return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": logprobs}

    if body.stream:
        async def events() -> AsyncIterator[str]:
            base = {"id": rid, "object": obj + ".chunk" if chat else obj, "created": created, "model": model}
            infos: list[GenerationInfo] = []
            sent = [0] * body.n  # logprob entries sent, per choice
            if chat:
                for i in range(body.n):
                    yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "finish_reason": None, "logprobs": None}]})
            async for i, kind, value in merged(sched, prompt, opts):
                if kind == "text":
                    # A piece carries the logprobs of the tokens it completes (genlab.generate.text.Piece).
                    entries = getattr(value, "logprobs", ())
                    sent[i] += len(entries)
                    lp = fmt_logprobs(i, entries) if want_logprobs else None
                    yield sse({**base, "choices": [choice(i, str(value), None, lp)]})
                elif kind == "done":
                    assert isinstance(value, GenerationInfo)
                    infos.append(value)
                    # Tokens whose text never showed (held back, then cut by a stop string) end here.
                    lp = fmt_logprobs(i, value.logprobs[sent[i]:]) if want_logprobs else None
                    yield sse({**base, "choices": [choice(i, None if chat else "", value.finish_reason, lp)]})
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
    lps = [fmt_logprobs(i, infos[i].logprobs) if want_logprobs else None for i in range(body.n)]
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                    "finish_reason": infos[i].finish_reason, "logprobs": lps[i]} for i in range(body.n)]
    else:
        choices = [choice(i, texts[i], infos[i].finish_reason, lps[i]) for i in range(body.n)]
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices,
            "usage": usage(prompt_tokens, infos)}

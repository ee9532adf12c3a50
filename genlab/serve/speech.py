"""Speech: ``POST /v1/audio/speech`` (wav), the built-in voice or espeak-ng."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from genlab.generate.speech import SpeechOptions, synthesize
from genlab.serve.errors import APIError
from genlab.serve.schemas import SpeechBody
from genlab.serve.state import ServiceDep

router = APIRouter(tags=["speech"])

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


@router.post("/v1/audio/speech")
async def speech(body: SpeechBody, svc: ServiceDep) -> Response:
    svc.resolve_model(body.model, "speech")
    if body.response_format != "wav":
        raise APIError(400, f"response_format '{body.response_format}' is not supported; use 'wav'",
                       "response_format")
    voice = body.voice
    if voice in OPENAI_VOICES:
        voice = "joe"  # OpenAI clients insist on a voice name: theirs all map to the built-in voice
    if voice == "espeak":
        opts = SpeechOptions(backend="espeak", speed=body.speed)
    elif voice == "joe":
        opts = SpeechOptions(voice="joe", speed=body.speed, backend=svc.cfg.speech_backend)
    else:  # never a path from a request: only the voices this server knows
        raise APIError(400, f"unknown voice '{body.voice}'; use 'joe', 'espeak' or an OpenAI voice name", "voice")
    result = await asyncio.to_thread(synthesize, body.input, opts)
    return Response(result.wav, media_type="audio/wav")

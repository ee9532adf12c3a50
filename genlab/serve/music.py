"""Music: ``POST /v1/audio/music``: a short four-part piece from the server's music run
(``genlab serve --music-run RUN``), as a WAV (FluidSynth) or a MIDI file."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from genlab.errors import ConfigError
from genlab.serve.errors import APIError
from genlab.serve.schemas import MusicBody, sampling_temperature
from genlab.serve.state import ServiceDep
from genlab.studio.music import parse_music_key

router = APIRouter(tags=["music"])

MEDIA_TYPES = {"wav": "audio/wav", "mid": "audio/midi"}


@router.post("/v1/audio/music")
async def music(body: MusicBody, svc: ServiceDep) -> Response:
    if svc.music is None:
        raise APIError(404, "this server has no music model (start it with --music-run RUN, a run of "
                       "`genlab train music`)", "model", "model_not_found")
    svc.resolve_model(body.model, "music")
    try:
        key = parse_music_key(body.key)
    except ConfigError as e:
        raise APIError(400, str(e), "key") from None
    made = await asyncio.to_thread(svc.music.make, bars=body.bars, key=key, seed=body.seed,
                                   temperature=sampling_temperature(body.temperature), wav=body.format == "wav")
    if body.format == "mid":
        data = made.midi
    elif made.wav is None:  # the server cannot render audio: say why, and what it can give
        raise APIError(400, f"this server cannot render WAV ({made.wav_skipped}); ask for format 'mid'", "format")
    else:
        data = made.wav
    name = f"music-{body.seed}.{body.format}"
    return Response(data, media_type=MEDIA_TYPES[body.format],
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "X-Genlab-Key": made.record["key"],
                             "X-Genlab-Time-Signature": made.record["time_signature"]})

"""Images: ``POST /v1/images/generations`` (b64_json, or a url served from ``GET /v1/assets/<id>.png``)."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from genlab.generate.images import png_bytes, upscale
from genlab.serve.errors import APIError
from genlab.serve.schemas import ImageBody
from genlab.serve.state import ServiceDep
from genlab.studio.labels import pick_label

router = APIRouter(tags=["images"])

ASSET_NAME = re.compile(r"^[0-9a-f]{32}\.(png|wav)$")  # only names this server made itself
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")


@router.post("/v1/images/generations")
async def generate_images(body: ImageBody, request: Request, svc: ServiceDep) -> dict:
    gen = svc.images
    if gen is None:
        raise APIError(404, "this server has no image model (start it with --image-run)", "model", "model_not_found")
    svc.resolve_model(body.model, "image")
    svc.check_n(body.n)
    side = gen.model.cfg.image_size
    scale = 8
    if body.size and body.size != "auto":
        m = SIZE.fullmatch(body.size)
        if not m or m[1] != m[2] or int(m[1]) % side or not 1 <= int(m[1]) // side <= 32:
            raise APIError(400, f"size must be square and a multiple of {side} px up to {32 * side} "
                                f"(e.g. '{8 * side}x{8 * side}'); got '{body.size}'", "size")
        scale = int(m[1]) // side
    seed = body.seed if body.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "little")
    semantic = svc.cfg.semantic_labels

    def work() -> tuple[list[bytes], str | None]:
        label = pick_label(body.prompt, gen.class_names, semantic).label if gen.conditional else None
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


@router.get("/v1/assets/{name}", name="asset")
async def asset(name: str, svc: ServiceDep) -> FileResponse:
    if not ASSET_NAME.fullmatch(name) or not (svc.assets / name).is_file():
        raise APIError(404, "no such asset")
    return FileResponse(svc.assets / name, media_type="image/png" if name.endswith(".png") else "audio/wav")

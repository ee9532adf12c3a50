"""The chat view's conversations, kept in the studio's SQLite history:
``POST|GET /v1/conversations``, ``GET|PATCH|DELETE /v1/conversations/<id>``,
``POST /v1/conversations/<id>/messages``; and ``GET /v1/chat/info`` (does the served model have a
chat template). The replies themselves come from ``/v1/chat/completions``; the page stores each
turn here."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query

from genlab.serve.errors import APIError
from genlab.serve.schemas import ConversationBody, ConversationMessage, ConversationPatch
from genlab.serve.state import Service, ServiceDep
from genlab.studio.history import Conversations

router = APIRouter(tags=["chat"])

CONVERSATION_ID = re.compile(r"[0-9a-f]{32}")


def store(svc: Service) -> Conversations:
    return svc.history.conversations


def not_found(conv_id: str) -> APIError:
    return APIError(404, f"no conversation '{conv_id}'")


def known_id(conv_id: str) -> str:
    # Ids are ones this server made; anything else cannot name a conversation.
    if not CONVERSATION_ID.fullmatch(conv_id):
        raise not_found(conv_id)
    return conv_id


@router.get("/v1/chat/info")
async def chat_info(svc: ServiceDep) -> dict:
    """What the chat view tells its user: without a template the model sees a plain transcript."""
    lm = svc.lm
    return {"model": svc.served()["text"], "chat_template": bool(lm is not None and lm.chat_template),
            "context": lm.config.context if lm is not None else None}


@router.post("/v1/conversations")
async def create_conversation(body: ConversationBody, svc: ServiceDep) -> dict:
    svc.check_max_tokens(body.settings.max_tokens)
    return store(svc).create(body.system, body.settings.model_dump())


@router.get("/v1/conversations")
async def list_conversations(svc: ServiceDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
    return {"object": "list", "data": store(svc).list(limit)}


@router.get("/v1/conversations/{conv_id}")
async def get_conversation(conv_id: str, svc: ServiceDep) -> dict:
    conv = store(svc).get(known_id(conv_id))
    if conv is None:
        raise not_found(conv_id)
    return conv


@router.patch("/v1/conversations/{conv_id}")
async def update_conversation(conv_id: str, body: ConversationPatch, svc: ServiceDep) -> dict:
    if body.settings is not None:
        svc.check_max_tokens(body.settings.max_tokens)
    conv = store(svc).update(known_id(conv_id), body.system,
                             body.settings.model_dump() if body.settings is not None else None)
    if conv is None:
        raise not_found(conv_id)
    return conv


@router.post("/v1/conversations/{conv_id}/messages")
async def append_message(conv_id: str, body: ConversationMessage, svc: ServiceDep) -> dict:
    msg = store(svc).append(known_id(conv_id), body.role, body.content)
    if msg is None:
        raise not_found(conv_id)
    return msg


@router.delete("/v1/conversations/{conv_id}")
async def delete_conversation(conv_id: str, svc: ServiceDep) -> dict:
    if not store(svc).delete(known_id(conv_id)):
        raise not_found(conv_id)
    return {"id": conv_id, "deleted": True}

"""A pure ASGI middleware in front of every route: the API key, then the request body cap.

The body is read here, counting the bytes of the ``receive`` stream, and handed on to the app
from a buffer, so no route ever sees (or has to bound) more than ``max_body_bytes``: a declared
Content-Length over the cap is refused before a byte is read, a chunked upload as soon as it
passes it.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genlab.serve.errors import error_body

OPEN_PATHS = ("/health", "/")  # no key needed: liveness and the page (which asks for the key itself)
OPEN_PREFIXES = ("/static/",)
BODY_METHODS = ("POST", "PUT", "PATCH")


async def _send_error(send: Send, status: int, message: str, code: str | None = None) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    def _authorized(self, scope: Scope) -> bool:
        path = scope["path"]
        if not self.api_key or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode(), self.api_key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await _send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                              "invalid_api_key")
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        too_big = f"request body over {self.max_body_bytes} bytes"
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _send_error(send, 413, too_big)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before it had sent the body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send_error(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, for streaming routes

        await self.app(scope, replay, send)

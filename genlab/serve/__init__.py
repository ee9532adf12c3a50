"""`genlab serve`: an OpenAI-compatible API, the studio's job endpoints and its web page.

    GET  /health                              no auth: liveness
    GET  /v1/models
    POST /v1/completions, /v1/chat/completions (SSE streaming, dynamic batching: studio.batching)
    POST /v1/images/generations                b64_json or url (served from /v1/assets/<id>.png)
    POST /v1/audio/speech                      wav
    POST /v1/audio/music                       wav or mid: a short chorale from the music run (--music-run)
    POST /v1/studio/jobs, GET /v1/studio/jobs, GET|DELETE /v1/studio/jobs/<id>,
    GET  /v1/studio/jobs/<id>/events (SSE), /bundle (zip), /files/<asset>
    POST /v1/conversations, GET /v1/conversations, GET|PATCH|DELETE /v1/conversations/<id>,
    POST /v1/conversations/<id>/messages, GET /v1/chat/info   the chat view's saved conversations
    GET  /                                     the web page (static files, no data in them)

Safety: an optional API key (Bearer) on everything but /health and the static page; request
bodies and max_tokens are capped; every client error is an OpenAI-style JSON 4xx; files are only
served by ids and names the server made itself (no path from a request ever reaches the disk).
A request naming a model this server does not have is a 404 ``model_not_found``.

    app.py      create_app (the factory) and serve (uvicorn)
    config.py   ServerConfig
    state.py    Service: models, scheduler, studio, history, jobs; the ServiceDep dependency
    guard.py    pure ASGI middleware: API key, request body cap
    errors.py   APIError and the one JSON error shape; the exception handlers
    schemas.py  request bodies
    text.py     /v1/models, /v1/completions, /v1/chat/completions
    images.py   /v1/images/generations, /v1/assets/<name>
    speech.py   /v1/audio/speech
    music.py    /v1/audio/music
    jobs.py     /v1/studio/jobs...
    conversations.py  /v1/conversations..., /v1/chat/info (the page's chat view)
    page.py     /, /health, /static
    thread.py   ServerThread: a real server on 127.0.0.1 in a thread (tests, benchmarks)
"""

from __future__ import annotations

from genlab.serve.app import create_app, serve
from genlab.serve.config import ServerConfig
from genlab.serve.thread import ServerThread

__all__ = ["ServerConfig", "ServerThread", "create_app", "serve"]

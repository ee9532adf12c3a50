"""One OpenAI-style JSON shape for every client error, whichever layer finds it:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "stop", "code": null}}
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from genlab.errors import GenlabError

_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


# Pydantic names the member of a union that failed ("stop.str", "prompt.list[str]"); a client knows
# only the field. Body fields are plain identifiers, so a location part that is a type is such a tag.
_UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|[\w-]+\[.*\])$")


def _field(loc: tuple) -> str:
    return ".".join(str(x) for x in loc if x != "body" and not (isinstance(x, str) and _UNION_TAG.match(x)))


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The message and param of the most telling error: for a union field that is the error of the
    member whose type the input had (a too-long list), not 'input should be a valid string'."""
    errs = list(exc.errors())
    if not errs:
        return "invalid request", None
    first = errs[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    param = _field(first.get("loc", ()))
    same = [e for e in errs if _field(e.get("loc", ())) == param]
    best = next((e for e in same if not str(e.get("type", "")).endswith("_type")), first)
    msg = str(best.get("msg", "invalid request"))
    msg = msg.removeprefix("Value error, ")
    if best.get("type") == "extra_forbidden":  # a field the API has but this server does not support
        msg = "this server does not support this field (see docs/studio.md for the fields it reads)"
    return (f"{param}: {msg}" if param else msg), param or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = validation_message(exc)
        return error_response(400, msg, param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(GenlabError)
    async def _genlab(request: Request, exc: GenlabError) -> JSONResponse:
        return error_response(400, str(exc))

"""The error model: every non-2xx answer of the HTTP API has one documented shape.

    {"error": {"code": "invalid_field", "message": "state: expected 39 values, got 7",
               "field": "state"}}

``code`` is a stable machine-readable string (:class:`ErrorCode`), ``message`` is for
humans, ``field`` names the offending request field in dotted form (``"state"``,
``"images.corner2"``, ``"num_steps"``) or is null when the error is not about one field.

Status codes: 400 malformed body, 401 missing/wrong API key, 403 the admin API is
disabled, 404/405 routing or an unknown model version, 409 refused by the version
lifecycle or the gates, 413 body over the limit, 415 unsupported Content-Type, 422 a
field is missing or invalid (or a candidate failed to load), 503 not ready, 500 a server
fault (never a client mistake).
"""

from __future__ import annotations

import json
import logging
from enum import Enum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from reflex_serve.runtime.types import InvalidObservation

log = logging.getLogger(__name__)


class ErrorCode(str, Enum):
    """Machine-readable error codes, one per kind of failure."""

    MALFORMED_BODY = "malformed_body"  # 400: not valid JSON / msgpack, or not an object
    UNAUTHORIZED = "unauthorized"  # 401
    FORBIDDEN = "forbidden"  # 403: the admin API is disabled
    NOT_FOUND = "not_found"  # 404
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    CONFLICT = "conflict"  # 409: the version lifecycle refuses (already active, busy...)
    GATES_NOT_PASSED = "gates_not_passed"  # 409: the gates do not let the version ship
    LOAD_FAILED = "load_failed"  # 422: a version failed its check, load or warm-up
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
    MISSING_FIELD = "missing_field"  # 422: a required field or camera is absent
    UNKNOWN_FIELD = "unknown_field"  # 422: e.g. a camera the model does not have
    INVALID_FIELD = "invalid_field"  # 422: wrong type, shape, dtype, range, NaN, encoding
    NOT_READY = "not_ready"  # 503
    INTERNAL_ERROR = "internal_error"  # 500
    NON_FINITE_ACTIONS = "non_finite_actions"  # 500: the model produced NaN / Inf; nothing sent


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: ErrorCode = Field(description="Stable machine-readable error code.")
    message: str = Field(description="Human-readable explanation.")
    field: str | None = Field(
        default=None,
        description='Dotted name of the offending request field ("state", '
        '"images.corner2", "num_steps"), or null.',
    )


class ErrorResponse(BaseModel):
    """Body of every error response."""

    error: ErrorDetail


_STATUS_CODES = {
    400: ErrorCode.MALFORMED_BODY,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.INVALID_FIELD,
    503: ErrorCode.NOT_READY,
}


class ApiError(Exception):
    """An error to answer with the documented error body.

    Args:
        status: HTTP status code.
        code: error code; defaults to the usual one for ``status``.
        message: human-readable explanation.
        field: dotted request field name, if the error is about one field.
        headers: extra response headers (``WWW-Authenticate`` for 401).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        code: ErrorCode | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, ErrorCode.INTERNAL_ERROR)
        self.message = message
        self.field = field
        self.headers = headers

    @classmethod
    def invalid(cls, field: str, message: str, code: ErrorCode = ErrorCode.INVALID_FIELD):
        """A 422 about one field; ``message`` is prefixed with the field name."""
        return cls(422, f"{field}: {message}", field=field, code=code)

    @classmethod
    def from_invalid_observation(cls, exc: InvalidObservation) -> ApiError:
        """Map the runtime's :class:`InvalidObservation` to a 422."""
        return cls(422, str(exc), field=exc.field, code=ErrorCode.INVALID_FIELD)

    def body(self) -> bytes:
        """The JSON error body."""
        detail = {"code": self.code.value, "message": self.message, "field": self.field}
        return json.dumps({"error": detail}).encode()

    def response(self) -> Response:
        """A JSON :class:`Response` carrying this error."""
        return Response(
            self.body(),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


_DESCRIPTIONS = {
    400: "Body is not valid JSON / msgpack, or not an object (`malformed_body`).",
    401: "Missing or wrong API key (`unauthorized`).",
    403: "The admin API is disabled: no --admin-key (`forbidden`).",
    404: "Not found: an unknown model version (`not_found`).",
    409: "Refused: already active, another swap running, or the gates do not let the "
    "version ship (`conflict`, `gates_not_passed`).",
    413: "Body larger than the server's limit (`payload_too_large`).",
    415: "Content-Type is neither application/json nor application/msgpack "
    "(`unsupported_media_type`).",
    422: "A field is missing, unknown or invalid; `field` names it "
    "(`missing_field`, `unknown_field`, `invalid_field`), or a version failed its "
    "check, load or warm-up (`load_failed`).",
    500: "A server fault, never a client mistake (`internal_error`).",
    503: "Not ready (`not_ready`).",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entries documenting :class:`ErrorResponse` for ``statuses``."""
    return {s: {"model": ErrorResponse, "description": _DESCRIPTIONS[s]} for s in statuses}


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app can raise answer with :class:`ErrorResponse`."""

    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    async def on_http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return ApiError(exc.status_code, message, headers=exc.headers).response()

    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        body_error = _body_error(request.headers.get("content-type"), first)
        if body_error is not None:
            return body_error.response()
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header")]
        field = ".".join(loc) or None
        return ApiError(422, first.get("msg", "invalid request"), field=field).response()

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return ApiError(500, "internal server error", code=ErrorCode.INTERNAL_ERROR).response()

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)


def _body_error(content_type: str | None, error: dict) -> ApiError | None:
    """The 400 / 415 for a JSON body model's request whose body as a whole is unusable,
    as ``POST /act`` answers: not JSON, empty or not an object (400 ``malformed_body``),
    sent as another media type (415). None for errors about a field (those stay 422)."""
    loc, kind = tuple(error.get("loc", ())), error.get("type")
    if not loc or loc[0] != "body":
        return None
    media = (content_type or "").split(";")[0].strip().lower()
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "not valid JSON")
        return ApiError(400, f"malformed JSON body: {reason}")
    if len(loc) != 1:
        return None
    if kind == "missing":
        return ApiError(400, "the request body is empty; send a JSON object")
    if kind != "model_attributes_type":
        return None
    raw = error.get("input")
    if not isinstance(raw, bytes | bytearray):  # parsed JSON, but not an object
        return ApiError(400, "the request body must be a JSON object")
    if media and media != "application/json":
        return ApiError(415, f"unsupported Content-Type {media!r}; send application/json")
    try:
        json.loads(raw)
    except ValueError as exc:
        return ApiError(400, f"malformed JSON body: {exc}")
    return ApiError(415, "no Content-Type; send the JSON body as application/json")

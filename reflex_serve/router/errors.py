"""The one error type of router operations; the admin API answers it as an HTTP error."""

from __future__ import annotations


class RouterError(Exception):
    """An operation was refused or failed; nothing changed unless ``recorded`` says so.

    Attributes:
        status: the HTTP status the admin API answers (404 unknown version, 409 refused
            by the lifecycle or the gates, 422 bad input or a candidate that failed to
            load or warm up, 503 the store is unavailable).
        code: a stable machine-readable code (``not_found``, ``conflict``,
            ``gates_not_passed``, ``invalid_field``, ``load_failed``, ``not_ready``).
        field: the request field at fault, if any.
        swap_id: the ``swaps`` row recording a failed promote, if one was written.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 field: str | None = None, swap_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.field = field
        self.swap_id = swap_id


class StageError(Exception):
    """Preparing a version failed at ``stage`` (gates, check, load, warm)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage

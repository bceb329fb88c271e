"""Typed errors shared by the SDK and the server.

The server maps these to gRPC status codes in exactly one place
(``codecloop_server.lifecycle.status_for``), and names the error's kind in the trailing metadata
``codecloop-error`` (:data:`KINDS`); the SDK raises the same class back from that kind (or, when a
call ends without it, from the status code alone), never from the message text.
"""

from __future__ import annotations


class CodecLoopError(Exception):
    """Base class of every error codecloop raises on purpose."""


class CodecLoopValueError(ValueError, CodecLoopError):
    """A request field is malformed or out of its allowed range (gRPC INVALID_ARGUMENT)."""


class CodecLoopLimitError(CodecLoopError):
    """A request exceeds one of the server's published limits (gRPC RESOURCE_EXHAUSTED)."""


class CodecLoopBusyError(CodecLoopError):
    """The server's task queue is full; retry later (gRPC UNAVAILABLE, retried by the SDK)."""


class CodecLoopAuthError(CodecLoopError):
    """A missing or wrong bearer token (gRPC UNAUTHENTICATED)."""


class CodecLoopUnavailableError(CodecLoopError):
    """The server could not be reached or is shutting down (gRPC UNAVAILABLE), after retries."""


class CodecLoopServerError(CodecLoopError):
    """Any other failure reported by the server (INTERNAL, DEADLINE_EXCEEDED, CANCELLED, ...)."""

    def __init__(self, message: str, code_name: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code_name = code_name


ERROR_METADATA_KEY = "codecloop-error"
"""Trailing metadata key naming the kind of a refused call (a key of :data:`KINDS`)."""

KINDS: dict[str, type[CodecLoopError]] = {
    "invalid-argument": CodecLoopValueError,
    "limit": CodecLoopLimitError,
    "busy": CodecLoopBusyError,
    "unauthenticated": CodecLoopAuthError,
}


def kind_of(err: BaseException) -> str | None:
    """The :data:`KINDS` name of ``err``'s class, None for any other exception."""
    return next((kind for kind, cls in KINDS.items() if isinstance(err, cls)), None)

"""Typed errors shared by the SDK and the server.

The server maps these to gRPC status codes in exactly one place
(``codecloop_server.service._status_for``); the SDK raises them back from the status it receives.
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

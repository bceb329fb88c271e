"""A name -> item registry that refuses a name twice and answers an unknown name with a
CodecLoopValueError naming the request field and the allowed names (scorers, codecs, channel presets)."""

from __future__ import annotations

from typing import TypeVar

from codecloop_wire.errors import CodecLoopValueError

T = TypeVar("T")
SHOWN_CHARS = 64  # of a client's string echoed in an error message or a log line


def shown(value: object) -> str:
    """``repr(value)`` of a string a client sent, at most about SHOWN_CHARS characters: a longer one
    is cut and says how long it was, so that no error message or log line echoes a request's bulk."""
    text = str(value)
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text)} characters)"


class NameTaken(ValueError):
    """A name registered twice in one registry (e.g. a detector named like a built-in scorer): a
    configuration error at start-up, never a request's."""


class Registry(dict[str, T]):
    """A dict of ``kind`` items by name; :meth:`add` and :meth:`lookup` are the checked ways in and out."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, item: T) -> T:
        """Register ``item`` as ``name``; a name that is already taken is refused (NameTaken)."""
        if name in self:
            raise NameTaken(f"a {self.kind} named {name!r} is already registered")
        self[name] = item
        return item

    def lookup(self, name: str, field: str) -> T:
        """The item called ``name``, or a CodecLoopValueError: ``{field}: unknown {kind} ...; allowed: [...]``."""
        try:
            return self[name]
        except KeyError:
            raise CodecLoopValueError(f"{field}: unknown {self.kind} {shown(name)}; allowed: {sorted(self)}") from None

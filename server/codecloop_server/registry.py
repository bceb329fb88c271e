"""A name -> item registry that refuses a name twice and answers an unknown name with a
CodecLoopValueError naming the request field and the allowed names (scorers, codecs, channel presets)."""

from __future__ import annotations

from typing import TypeVar

from codecloop_wire.errors import CodecLoopValueError

T = TypeVar("T")


class Registry(dict[str, T]):
    """A dict of ``kind`` items by name; :meth:`add` and :meth:`lookup` are the checked ways in and out."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, item: T) -> T:
        """Register ``item`` as ``name``; a name that is already taken is refused."""
        if name in self:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self[name] = item
        return item

    def lookup(self, name: str, field: str) -> T:
        """The item called ``name``, or a CodecLoopValueError: ``{field}: unknown {kind} ...; allowed: [...]``."""
        try:
            return self[name]
        except KeyError:
            raise CodecLoopValueError(f"{field}: unknown {self.kind} {name!r}; allowed: {sorted(self)}") from None

"""codecloop's server: real libx264 evaluation of video signatures behind gRPC.

The server's entry points load lazily, so that importing one room (``codecloop_server.detector``
on a GPU box, ``codecloop_server.transcode`` in a script) does not pull in gRPC, the engine and PyAV.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RunningServer", "ServerConfig", "serve", "start"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("codecloop_server.server"), name)
    raise AttributeError(f"module 'codecloop_server' has no attribute {name!r}")

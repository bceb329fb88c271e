"""codecloop's wire contract, shared by the SDK (``codecloop``) and the server (``codecloop_server``):
the generated gRPC code of ``proto/codecloop/v1/codecloop.proto`` (``codecloop_wire.v1``), the typed
errors and their status codes (``errors``), every request default (``defaults``), the tensor encoding
(``tensors``), the poisoning rule (``poison``),
the deployment rule that tiles a signature over a video of any size (``deploy``) and the detection statistics
(``stats``). Neither side imports the other; both import this.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("codecloop")
except PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
    __version__ = "0+unknown"

"""codecloop SDK: evaluate additive video signatures on real libx264 through a codecloop server.

>>> import codecloop
>>> with codecloop.Client("127.0.0.1:50051") as client:
...     f = client.fitness(population, epsilon=4 / 255)   # (P,) float64, bigger is better
"""

from codecloop.client import Client
from codecloop.detect import Detection, detect_video
from codecloop.mark import MarkResult, mark_video
from codecloop.options import EvaluateOptions
from codecloop.results import CandidateDone, CandidateResult, ClipScores, CodecStats, EvaluateResult, Progress, TranscodeResult
from codecloop.serverinfo import DatasetInfo, ServerInfo
from codecloop.types import Channel, Codec, Crop, DatasetCarriers, FrameRate, Racing, Resize
from codecloop_wire import __version__
from codecloop_wire.errors import (
    CodecLoopAuthError,
    CodecLoopBusyError,
    CodecLoopError,
    CodecLoopLimitError,
    CodecLoopServerError,
    CodecLoopUnavailableError,
    CodecLoopValueError,
)
from codecloop_wire.poison import poison

__all__ = [
    "__version__",
    "CandidateDone",
    "CandidateResult",
    "Channel",
    "Client",
    "ClipScores",
    "Codec",
    "Crop",
    "FrameRate",
    "Resize",
    "CodecLoopAuthError",
    "CodecLoopBusyError",
    "CodecLoopError",
    "CodecLoopLimitError",
    "CodecLoopServerError",
    "CodecLoopUnavailableError",
    "CodecLoopValueError",
    "CodecStats",
    "DatasetCarriers",
    "DatasetInfo",
    "EvaluateOptions",
    "EvaluateResult",
    "MarkResult",
    "Progress",
    "Racing",
    "ServerInfo",
    "TranscodeResult",
    "mark_video",
    "detect_video",
    "Detection",
    "poison",
]

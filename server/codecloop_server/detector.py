"""TorchScript detectors as scorers, with dynamic batching across requests and clients.

The server loads a model only from a file named in its own configuration (``--detector NAME=FILE``);
clients choose it by name and can never send code or pickles. The model runs in the server process
(CUDA when present, else CPU), fed by decoded clips that the codec workers return.

Model format (see codecloop.detector_model): ``forward(clips)`` or ``forward(clips, keys)``;
clips float32 (B, T, H, W, 3) in [0, 1]; keys float32 (B, T, H, W, 3) in [-1, 1] (the candidate's
signature, repeated over time when it has T = 1); returns (B,) scores, larger = marked.

:class:`DynamicBatcher` gathers clips from every request into one forward pass, up to
``max_batch_size`` clips or until the oldest has waited ``max_queue_delay_us`` (Triton's names);
while a forward runs, the next batch gathers. torch is imported only when a detector is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codecloop_server import scorers
from codecloop_wire.errors import CodecLoopServerError

EXAMPLE_DETECTOR = Path(__file__).parent / "models" / "example_detector.pt"


@dataclass(frozen=True)
class DetectorConfig:
    """One ``--detector NAME=FILE``; FILE ``example`` is the shipped example detector."""

    name: str
    path: str
    device: str = "auto"  # auto (CUDA when available), cpu or cuda
    max_batch_size: int = 4  # clips per forward pass (4: best measured on CPU, see README)
    max_queue_delay_us: int = 2000  # how long the first clip of a batch waits for company
    pad_batches: bool = False  # pad every forward to max_batch_size (one input shape, see README)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"detector device: {self.device!r} is not one of auto, cpu, cuda")
        if not 1 <= self.max_batch_size <= 4096:
            raise ValueError(f"max_batch_size: {self.max_batch_size} is outside the allowed range [1, 4096]")
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise ValueError(f"max_queue_delay_us: {self.max_queue_delay_us} is outside the allowed range [0, 1e7]")

    @property
    def file(self) -> Path:
        return EXAMPLE_DETECTOR if self.path == "example" else Path(self.path)


class TorchDetector:
    """A TorchScript detector on one device: uint8 clips (+ float keys) in, float64 scores out."""

    def __init__(self, path: Path, device: str = "auto") -> None:
        import torch

        self._torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("detector device: cuda requested but torch sees no CUDA device")
            # the same clip must get the same score whatever else is in its batch
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        else:
            torch.set_num_threads(1)  # the cores belong to the codec workers; parallelism is across clips
        self.device = torch.device(device)
        if not path.is_file():
            raise ValueError(f"detector file {str(path)!r} does not exist")
        self.module = torch.jit.load(str(path), map_location=self.device).eval()
        inputs = len(self.module.forward.schema.arguments) - 1  # minus self
        if inputs not in (1, 2):
            raise ValueError(f"detector {path}: forward takes {inputs} inputs; it must take clips or (clips, keys)")
        self.uses_key = inputs == 2

    def __call__(self, clips: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
        """clips uint8 (B, T, H, W, 3), keys float32 (B, T or 1, H, W, 3) or None -> scores float64 (B,).

        A T = 1 key (a static signature) crosses to the device as is and is expanded over time
        there: the model always sees keys of the clips' shape."""
        torch = self._torch
        with torch.inference_mode():
            # uint8 crosses to the device (4x fewer bytes than float), converted there
            x = torch.from_numpy(clips).to(self.device).float().div_(255.0)
            args = [x] if keys is None else [x, torch.from_numpy(np.ascontiguousarray(keys)).to(self.device).expand(x.shape)]
            out = self.module(*args)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(clips),):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise CodecLoopServerError(f"detector returned {shape}; it must return one score per clip, shape ({len(clips)},)")
            scores = out.double().cpu().numpy()
        if not np.isfinite(scores).all():
            raise CodecLoopServerError("detector returned a NaN or infinite score")
        return scores


@dataclass
class _Item:
    clip: np.ndarray  # uint8 (T, H, W, 3)
    key: np.ndarray | None  # float32 (T or 1, H, W, 3)
    future: asyncio.Future[float]
    arrival: float  # loop time


class DynamicBatcher:
    """Batches single-clip scoring calls from any number of concurrent requests into forward passes."""

    def __init__(self, detector: TorchDetector, config: DetectorConfig, on_batch: Callable[[int], None] | None = None) -> None:
        self.detector = detector
        self.config = config
        self.on_batch = on_batch  # called with each forward pass's number of clips
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="detector")  # one forward at a time

    async def score(self, clip: np.ndarray, key: np.ndarray | None) -> float:
        """Score one decoded clip uint8 (T, H, W, 3) against ``key`` (the signature) or None."""
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(clip, key, fut, asyncio.get_running_loop().time()))
        self._wakeup.set()
        return await fut

    def warm_up(self, clip_shape: tuple[int, int, int]) -> None:
        """Run full and single batches once (blocking), so the first request pays no JIT or CUDA start-up."""
        t, h, w = clip_shape
        for b in {1, self.config.max_batch_size}:
            for _ in range(2):  # TorchScript's profiling executor optimises on the second call
                keys = np.zeros((b, t, h, w, 3), np.float32) if self.detector.uses_key else None
                self.detector(np.zeros((b, t, h, w, 3), np.uint8), keys)

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.config.max_queue_delay_us / 1e6
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # wait for company until the oldest clip's delay is up or the batch is full
            while len(self._queue) < self.config.max_batch_size:
                left = self._queue[0].arrival + delay - loop.time()
                if left <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), left)
            batch = self._take()
            if batch:
                await self._forward(batch)

    def _take(self) -> list[_Item]:
        """Up to max_batch_size live items with the first one's shapes; the rest stay queued in order."""
        first, batch, rest = None, [], deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.cancelled():
                continue  # its request was cancelled while the clip waited
            shape = (item.clip.shape, None if item.key is None else item.key.shape[1:])
            if first is None:
                first = shape
            if shape == first and len(batch) < self.config.max_batch_size:
                batch.append(item)
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _forward(self, batch: list[_Item]) -> None:
        clips = np.stack([i.clip for i in batch])
        keys = None
        if self.detector.uses_key:
            # keys keep their own T (1 for a static signature, 16x fewer bytes than broadcast ones):
            # TorchDetector expands them on the device; mixed T in one batch are broadcast here
            same_t = len({i.key.shape[0] for i in batch}) == 1
            keys = np.stack([i.key if same_t else np.broadcast_to(i.key, i.clip.shape) for i in batch]).astype(np.float32, copy=False)
        pad = self.config.max_batch_size - len(batch) if self.config.pad_batches else 0
        if pad:
            clips = np.concatenate([clips, np.zeros((pad, *clips.shape[1:]), clips.dtype)])
            keys = None if keys is None else np.concatenate([keys, np.zeros((pad, *keys.shape[1:]), keys.dtype)])
        try:
            scores = await asyncio.get_running_loop().run_in_executor(self._executor, self.detector, clips, keys)
        except Exception as err:  # a broken model fails the requests in this batch, not the server
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for item, score in zip(batch, scores):
            if not item.future.done():
                item.future.set_result(float(score))


class DetectorScorer(scorers.Registered):
    """Registry entry of a configured detector: requests name it like any scorer; it has no
    parameters and runs in the server process (the engine's DetectorScoring feeds its batcher)."""

    def __init__(self, name: str, batcher: DynamicBatcher) -> None:
        self.name = name  # per instance: each configured detector has its own name
        self.batcher = batcher
        self.uses_key = batcher.detector.uses_key
        self.description = (
            f"TorchScript detector {batcher.config.file.name} on {batcher.detector.device}"
            f"{' (clip, signature)' if self.uses_key else ' (clip only)'}, dynamic batches of <= {batcher.config.max_batch_size}"
        )


def load(config: DetectorConfig, on_batch: Callable[[int], None] | None = None) -> DetectorScorer:
    """Load the model file named by ``config`` (blocking) and wrap it for the scorer registry."""
    return DetectorScorer(config.name, DynamicBatcher(TorchDetector(config.file, config.device), config, on_batch))

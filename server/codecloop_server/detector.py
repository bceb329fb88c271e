"""Learned detectors as scorers, with dynamic batching across requests and clients.

The server loads a model only from a file named in its own configuration (``--detector NAME=FILE``);
clients choose it by name and can never send code or pickles. The model runs in the server process
(CUDA when present, else CPU), fed by decoded clips that the codec workers return.

File formats (docs/detectors.md), told apart by the archive's members, not the file name: a
torch.export program (``.pt2``, torch.export.save), the primary format, checked on load against
the contract below; TorchScript (torch.jit.save), deprecated by torch 2.13, still loaded as the
legacy path with a logged warning, its output checked by the warm-up.

Model contract (see codecloop.detector_model): ``forward(clips)`` or ``forward(clips, keys)``;
clips float32 (B, T, H, W, 3) in [0, 1]; keys float32 (B, T, H, W, 3) in [-1, 1] (the candidate's
signature, repeated over time when it has T = 1); returns (B,) scores, larger = marked.

:class:`DynamicBatcher` gathers clips from every request into one forward pass, up to
``max_batch_size`` clips or until the oldest has waited ``max_queue_delay_us`` (Triton's names);
while a forward runs, the next batch gathers. torch is imported only when a detector is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
import zipfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codecloop_server import scorers
from codecloop_wire.errors import CodecLoopServerError

EXAMPLE_DETECTOR = Path(__file__).parent / "models" / "example_detector.pt2"
PT2, TORCHSCRIPT = "torch.export", "TorchScript"  # the two file formats, as the log and scorer descriptions name them
log = logging.getLogger("codecloop.server.detector")


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


def file_format(path: Path) -> str:
    """PT2 or TORCHSCRIPT, read from the archive's members (both are zip files; the name's suffix
    is not trusted); ValueError naming the file for anything else."""
    if not path.is_file():
        raise ValueError(f"detector file {str(path)!r} does not exist")
    allowed = "a detector file must be a torch.export program (.pt2, torch.export.save) or legacy TorchScript (torch.jit.save)"
    if not zipfile.is_zipfile(path):
        raise ValueError(f"detector file {path}: not a model archive; {allowed}")
    with zipfile.ZipFile(path) as archive:
        members = {name.partition("/")[2] for name in archive.namelist()}  # without the archive's top folder
    if "archive_format" in members or "serialized_exported_program.json" in members:  # the second: torch <= 2.7's layout
        return PT2
    if "constants.pkl" in members and any(m.startswith("code/") for m in members):
        return TORCHSCRIPT
    raise ValueError(f"detector file {path}: a zip archive but no model program (a torch.save pickle?); {allowed}")


def _fake_tensor(node: Any) -> Any:
    """The tensor metadata (shape, dtype) torch.export recorded for a graph node, or None."""
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return val if val is not None and hasattr(val, "shape") and hasattr(val, "dtype") else None


def _check_program(program: Any, path: Path) -> int:
    """The number of inputs (1: clips, 2: clips and keys) of an ExportedProgram that meets the model
    contract; ValueError naming the file and what is wrong otherwise. Shapes are checked on the
    shapes torch.export recorded, before anything runs."""
    import torch

    signature = program.graph_signature
    inputs = list(signature.user_inputs)
    if len(inputs) not in (1, 2):
        raise ValueError(f"detector file {path}: forward takes {len(inputs)} inputs; it must take clips or (clips, keys)")
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    metas = [_fake_tensor(nodes[name]) for name in inputs]
    for name, meta in zip(inputs, metas):
        if meta is None or meta.dtype != torch.float32 or meta.dim() != 5:
            got = "not a tensor" if meta is None else f"{meta.dtype} with {meta.dim()} dimensions"
            raise ValueError(f"detector file {path}: input {name!r} is {got}; it must be float32 (B, T, H, W, 3)")
    batch = metas[0].shape[0]
    if isinstance(batch, int):
        raise ValueError(
            f"detector file {path}: exported for batches of exactly {batch} clips; export it with a dynamic batch "
            "dimension (dynamic_shapes, codecloop.detector_model.export_program)"
        )
    output = next(n for n in program.graph.nodes if n.op == "output")
    outs = list(output.args[0])[len(output.args[0]) - len(signature.user_outputs) :]  # buffer mutations come first
    single = len(outs) == 1 and program.call_spec.out_spec.is_leaf()  # not a tuple or list of one tensor
    meta = _fake_tensor(outs[0]) if single else None
    if meta is None or meta.dim() != 1 or str(meta.shape[0]) != str(batch):
        got = f"{len(outs)} outputs in a {program.call_spec.out_spec.type.__name__}" if not single else (
            "a non-tensor" if meta is None else f"shape {tuple(str(d) for d in meta.shape)}"
        )
        raise ValueError(f"detector file {path}: forward returns {got}; it must return one score per clip, shape ({batch},)")
    return len(inputs)


class TorchDetector:
    """A detector on one device, from a torch.export (.pt2) or legacy TorchScript file: uint8 clips
    (+ float keys) in, float64 scores out."""

    def __init__(self, path: Path, device: str = "auto") -> None:
        import torch

        self._torch = torch
        self.path = path
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
        self.format = file_format(path)
        self.module, inputs = self._load_program() if self.format == PT2 else self._load_torchscript()
        self.uses_key = inputs == 2

    def _load_program(self) -> tuple[Callable[..., Any], int]:
        torch = self._torch
        try:
            program = torch.export.load(str(self.path))
        except Exception as err:  # a damaged or foreign archive: say which file
            raise ValueError(f"detector file {self.path}: not a loadable torch.export program: {err}") from err
        inputs = _check_program(program, self.path)
        if self.device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.device)
        return program.module(), inputs

    def _load_torchscript(self) -> tuple[Callable[..., Any], int]:
        log.warning(
            "detector file %s is TorchScript, which torch 2.13 deprecates: loaded on the legacy path; "
            "export the model as a .pt2 program with torch.export.save (docs/detectors.md)", self.path,
        )  # fmt: skip
        torch = self._torch
        try:
            with warnings.catch_warnings():  # torch's own deprecation warning: the line above says it
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as err:
            raise ValueError(f"detector file {self.path}: not a loadable TorchScript module: {err}") from err
        inputs = len(module.forward.schema.arguments) - 1  # minus self
        if inputs not in (1, 2):
            raise ValueError(f"detector file {self.path}: forward takes {inputs} inputs; it must take clips or (clips, keys)")
        return module, inputs

    def __call__(self, clips: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
        """clips uint8 (B, T, H, W, 3), keys float32 (B, T or 1, H, W, 3) or None -> scores float64 (B,).

        A T = 1 key (a static signature) crosses to the device as is and is expanded over time
        there: the model always sees keys of the clips' shape. Errors name the file (its name only:
        clients see them)."""
        torch = self._torch
        with torch.inference_mode():
            # uint8 crosses to the device (4x fewer bytes than float), converted there
            x = torch.from_numpy(clips).to(self.device).float().div_(255.0)
            args = [x] if keys is None else [x, torch.from_numpy(np.ascontiguousarray(keys)).to(self.device).expand(x.shape)]
            out = self.module(*args)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(clips),):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise CodecLoopServerError(
                    f"detector {self.path.name} returned {shape}; it must return one score per clip, shape ({len(clips)},)"
                )
            scores: np.ndarray = out.double().cpu().numpy()
        if not np.isfinite(scores).all():
            raise CodecLoopServerError(f"detector {self.path.name} returned a NaN or infinite score")
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
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(clip, key, fut, asyncio.get_running_loop().time()))
        self._wakeup.set()
        return await fut

    def warm_up(self, clip_shape: tuple[int, int, int]) -> None:
        """Run full and single batches (blocking), so the first request pays no JIT or CUDA start-up,
        and a model that fails on this clip shape (or, TorchScript, returns the wrong shape) is
        refused at start: ValueError naming the file."""
        t, h, w = clip_shape
        for b in sorted({1, self.config.max_batch_size}):
            for _ in range(2 if self.detector.format == TORCHSCRIPT else 1):  # TorchScript's profiling executor optimises on the second call
                keys = np.zeros((b, t, h, w, 3), np.float32) if self.detector.uses_key else None
                try:
                    self.detector(np.zeros((b, t, h, w, 3), np.uint8), keys)
                except Exception as err:
                    raise ValueError(f"detector file {self.detector.path}: fails on a batch of {b} clips of shape {(t, h, w)}: {err}") from err

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
        first: tuple[object, object] | None = None
        batch: list[_Item] = []
        rest: deque[_Item] = deque()
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
            held = [(i.clip, i.key) for i in batch if i.key is not None]  # all of them: a keyed detector's items carry keys
            same_t = len({k.shape[0] for _, k in held}) == 1
            keys = np.stack([k if same_t else np.broadcast_to(k, c.shape) for c, k in held]).astype(np.float32, copy=False)
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
        # (T, H, W) the warm-up ran it on (every dataset's): the shapes ScoreClips takes
        self.clip_shapes: tuple[tuple[int, int, int], ...] = ()
        self.description = (
            f"{batcher.detector.format} detector {batcher.config.file.name} on {batcher.detector.device}"
            f"{' (clip, signature)' if self.uses_key else ' (clip only)'}, dynamic batches of <= {batcher.config.max_batch_size}"
        )


def load(config: DetectorConfig, on_batch: Callable[[int], None] | None = None) -> DetectorScorer:
    """Load the model file named by ``config`` (blocking) and wrap it for the scorer registry."""
    return DetectorScorer(config.name, DynamicBatcher(TorchDetector(config.file, config.device), config, on_batch))

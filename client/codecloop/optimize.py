"""Black-box optimization of a signature on the real codec: pycma and nevergrad, batched.

One generation = one ``ask`` of a whole population = one batched server call. Optimizers minimize,
we maximize fitness: the loop tells them ``loss = -fitness`` in exactly one place (:meth:`Run.step`).

A run folder holds:
  log.jsonl      one line per evaluation, appended (and flushed) as it happens
  checkpoint.pkl the optimizer state after the last completed generation (atomic rename)
  best.npy       the best signature (T', H, W, 3) float32
  summary.json   settings, best training fitness, and held-out statistics of the best signature
  *.png          fitness per generation, clean vs poisoned held-out score histograms, ROC

A killed run resumes from ``checkpoint.pkl``: log lines of generations after the checkpoint are
dropped (they were never told to the optimizer) and the optimizer's random state is restored, so
the resumed run asks the same candidates again: no evaluation is lost or counted twice.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from codecloop.client import Client
from codecloop.errors import CodecLoopValueError
from codecloop.params import Parameterization
from codecloop.types import Codec, DatasetCarriers, EvaluateResult

OBJECTIVES: dict[str, Callable[[EvaluateResult], np.ndarray]] = {
    # each: one float per candidate, bigger is better, worst codec setting decides
    "separation": lambda r: r.fitness,
    "dprime": lambda r: np.array(
        [min((s.poisoned_mean - s.clean_mean) / math.sqrt(0.5 * (s.clean_std**2 + s.poisoned_std**2) + 1e-12) for s in c.codecs) for c in r.candidates]
    ),
    "tpr": lambda r: np.array([min(s.tpr for s in c.codecs) for c in r.candidates]),
    "auc": lambda r: np.array([min(s.auc for s in c.codecs) for c in r.candidates]),
}


@dataclass
class RunConfig:
    """What to optimize and how. Defaults: CMA-ES on the embedded train split, blind scorer, CRF 28."""

    optimizer: str = "cma"  # "cma" or "nevergrad:<registry name>", e.g. "nevergrad:TwoPointsDE"
    epsilon: float = 2 / 255
    codecs: tuple[Codec, ...] = (Codec(),)
    scorer: str = "blind"
    objective: str = "separation"
    train: DatasetCarriers = DatasetCarriers(split="train", num_clips=32)
    holdout: DatasetCarriers = DatasetCarriers(split="holdout", num_clips=72)
    holdout_fpr: float = 1 / 64
    popsize: int = 16
    budget: int = 640  # evaluations (candidates)
    max_seconds: float = math.inf
    patience: int = 0  # generations without improvement before stopping; 0 = never
    sigma0: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise CodecLoopValueError(f"objective: {self.objective!r} is not one of {sorted(OBJECTIVES)}")
        if self.popsize < 2:
            raise CodecLoopValueError(f"popsize: {self.popsize} must be >= 2")


class Backend(ABC):
    """An optimizer: ask a population of thetas, tell their losses, save/load its whole state."""

    @abstractmethod
    def ask(self) -> list[np.ndarray]: ...

    @abstractmethod
    def tell(self, thetas: list[np.ndarray], losses: list[float]) -> None: ...

    @abstractmethod
    def state(self) -> bytes: ...


class CMABackend(Backend):
    def __init__(self, dim: int, config: RunConfig) -> None:
        import cma

        opts = {"popsize": config.popsize, "seed": config.seed + 1, "verbose": -9}
        np.random.seed(config.seed)  # pycma samples from numpy's global generator
        self.es = cma.CMAEvolutionStrategy(np.zeros(dim), config.sigma0, opts)

    def ask(self) -> list[np.ndarray]:
        return self.es.ask()

    def tell(self, thetas, losses) -> None:
        self.es.tell(thetas, losses)

    def state(self) -> bytes:
        return pickle.dumps((self.es, np.random.get_state()))

    @classmethod
    def restore(cls, blob: bytes) -> "CMABackend":
        self = cls.__new__(cls)
        self.es, rng = pickle.loads(blob)
        np.random.set_state(rng)
        return self


class NevergradBackend(Backend):
    def __init__(self, dim: int, config: RunConfig, name: str) -> None:
        import nevergrad as ng

        if name not in ng.optimizers.registry:
            raise CodecLoopValueError(f"optimizer: nevergrad has no optimizer {name!r}")
        param = ng.p.Array(shape=(dim,)).set_mutation(sigma=config.sigma0)
        param.random_state = np.random.RandomState(config.seed)
        self.opt = ng.optimizers.registry[name](parametrization=param, budget=config.budget, num_workers=config.popsize)
        self.popsize = config.popsize
        self._pending: list[Any] = []

    def ask(self) -> list[np.ndarray]:
        self._pending = [self.opt.ask() for _ in range(self.popsize)]
        return [np.asarray(c.value) for c in self._pending]

    def tell(self, thetas, losses) -> None:
        for cand, loss in zip(self._pending, losses):
            self.opt.tell(cand, loss)
        self._pending = []

    def state(self) -> bytes:
        return pickle.dumps(self.opt)

    @classmethod
    def restore(cls, blob: bytes, popsize: int) -> "NevergradBackend":
        self = cls.__new__(cls)
        self.opt = pickle.loads(blob)
        self.popsize = popsize
        self._pending = []
        return self


@dataclass
class RunState:
    generation: int = 0
    evaluations: int = 0
    elapsed: float = 0.0
    best_fitness: float = -math.inf
    best_theta: np.ndarray | None = None
    best_generation: int = -1
    history: list[dict[str, float]] = field(default_factory=list)  # per generation: max, mean, best


class Run:
    """A resumable optimization run writing into ``folder``."""

    def __init__(self, client: Client, param: Parameterization, config: RunConfig, folder: str | Path) -> None:
        self.client, self.param, self.config = client, param, config
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / "log.jsonl"
        self.ckpt_path = self.folder / "checkpoint.pkl"
        if self.ckpt_path.exists():
            self._resume()
        else:
            self.state = RunState()
            self.backend = self._new_backend()
            self.log_path.write_text("")

    def _new_backend(self) -> Backend:
        kind, _, name = self.config.optimizer.partition(":")
        if kind == "cma":
            return CMABackend(self.param.dim, self.config)
        if kind == "nevergrad" and name:
            return NevergradBackend(self.param.dim, self.config, name)
        raise CodecLoopValueError(f"optimizer: {self.config.optimizer!r}; use 'cma' or 'nevergrad:<name>'")

    def _resume(self) -> None:
        blob = pickle.loads(self.ckpt_path.read_bytes())
        self.state = blob["state"]
        if self.config.optimizer == "cma":
            self.backend = CMABackend.restore(blob["backend"])
        else:
            self.backend = NevergradBackend.restore(blob["backend"], self.config.popsize)
        # drop log lines of generations that were evaluated but never told (killed mid-generation)
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        kept = [ln for ln in lines if json.loads(ln)["generation"] < self.state.generation]
        self.log_path.write_text("".join(ln + "\n" for ln in kept))

    def _checkpoint(self) -> None:
        tmp = self.ckpt_path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps({"state": self.state, "backend": self.backend.state(), "config": self.config}))
        os.replace(tmp, self.ckpt_path)

    def done(self) -> bool:
        c, s = self.config, self.state
        stalled = c.patience > 0 and s.generation - s.best_generation > c.patience
        return s.evaluations + c.popsize > c.budget or s.elapsed >= c.max_seconds or stalled

    def step(self) -> dict[str, float]:
        """One generation: ask, one batched server call, tell (loss = -fitness), log, checkpoint."""
        t0 = time.monotonic()
        thetas = self.backend.ask()
        result = self.client.evaluate(
            self.param(np.stack(thetas)),
            epsilon=self.config.epsilon,
            carriers=self.config.train,
            codecs=self.config.codecs,
            scorer=self.config.scorer,
        )
        fitness = OBJECTIVES[self.config.objective](result)
        self.backend.tell(thetas, [-float(f) for f in fitness])  # the optimizers minimize
        s = self.state
        with self.log_path.open("a") as log:
            for i, (f, cand) in enumerate(zip(fitness, result.candidates)):
                worst = min(cand.codecs, key=lambda c: c.separation)
                log.write(json.dumps({
                    "generation": s.generation, "index": i, "evaluation": s.evaluations + i, "fitness": float(f),
                    "separation": worst.separation, "tpr": worst.tpr, "auc": worst.auc, "p_value": worst.p_value,
                    "psnr_db": worst.psnr_db,
                }) + "\n")  # fmt: skip
            log.flush()
        best = int(np.argmax(fitness))
        if fitness[best] > s.best_fitness:
            s.best_fitness, s.best_theta, s.best_generation = float(fitness[best]), np.asarray(thetas[best]), s.generation
        s.history.append({"max": float(fitness.max()), "mean": float(fitness.mean()), "best": s.best_fitness})
        s.generation += 1
        s.evaluations += len(thetas)
        s.elapsed += time.monotonic() - t0
        self._checkpoint()
        return s.history[-1]

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Generations until the budget, time limit or patience runs out; then the held-out report."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.config.budget, initial=self.state.evaluations, unit="eval", desc=self.config.optimizer)
        while not self.done():
            h = self.step()
            if bar is not None:
                bar.update(self.config.popsize)
                bar.set_postfix(best=f"{h['best']:.4f}", gen_max=f"{h['max']:.4f}")
        if bar is not None:
            bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Save the best signature, evaluate it on the held-out split, write summary and plots."""
        if self.state.best_theta is None:
            raise CodecLoopValueError("budget: no generation was run (budget < popsize?)")
        best = self.param(self.state.best_theta)  # (1, T', H, W, 3)
        np.save(self.folder / "best.npy", best[0])
        held = self.client.evaluate(
            best,
            epsilon=self.config.epsilon,
            carriers=self.config.holdout,
            codecs=self.config.codecs,
            scorer=self.config.scorer,
            target_fpr=self.config.holdout_fpr,
            per_clip_scores=True,
        )
        config = asdict(self.config)
        summary = {
            "config": json.loads(json.dumps(config, default=str)),
            "parameterization": self.param.describe(),
            "generations": self.state.generation,
            "evaluations": self.state.evaluations,
            "elapsed_s": round(self.state.elapsed, 1),
            "best_train_fitness": self.state.best_fitness,
            "best_generation": self.state.best_generation,
            "holdout": [
                {k: v for k, v in asdict(s).items() if k not in ("clean_scores", "poisoned_scores")} | {"codec": s.codec.label()}
                for s in held.candidates[0].codecs
            ],
        }
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        from codecloop import plots

        plots.run_plots(self.folder, self.state.history, held.candidates[0].codecs)
        return summary

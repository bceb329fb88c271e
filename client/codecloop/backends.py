"""Optimizer back-ends of the run layer and their registry (name -> factory).

A back-end proposes candidates (``ask``: a population of thetas for the run's parameterization),
learns from their losses (``tell``: loss = -objective, the run's one sign flip), names its own
estimate of the optimum for validation (``recommend``), says when it has converged (``stop``) and
saves / loads its whole state (the run's checkpoint). The run layer (:mod:`codecloop.run`) does the
rest: the server calls, logs, validation split, resume, summary and plots, the same for all.

Registered here: ``cma`` and ``cma:diagonal`` (pycma), ``nevergrad:<name>`` (any optimizer in
nevergrad's registry), and the gradient back-ends ``torch-ste``, ``torch-hybrid``, ``proxy:tanh``,
``proxy:soft``, ``proxy:ste`` (:mod:`codecloop.gradient`, imported only when one is made: torch
stays optional). Adding one: subclass :class:`Backend`, then ``register("name", factory, "what")``
(docs/optimize.md, "Adding an optimizer").
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from codecloop.client import Client
from codecloop.params import Parameterization
from codecloop.runconfig import RunConfig
from codecloop.types import DatasetCarriers
from codecloop_wire.errors import CodecLoopValueError


class Backend(ABC):
    """An optimizer: ask a population of thetas, tell their losses, save / load its whole state.

    Thetas are float64 vectors of the run's parameterization's dimension (:class:`BackendContext`)."""

    # optional RunConfig sections this back-end reads (e.g. "gradient"): the run fills one left None
    # with its defaults, so that the resume contract compares them
    reads: frozenset[str] = frozenset()

    @abstractmethod
    def ask(self) -> list[np.ndarray]:
        """The next generation's candidates, each (dim,) float64."""

    @abstractmethod
    def tell(self, thetas: list[np.ndarray], losses: list[float]) -> None:
        """Learn from the losses (lower is better) of the candidates :meth:`ask` gave, in its order."""

    @abstractmethod
    def recommend(self) -> np.ndarray:
        """The optimizer's own estimate of the optimum, (dim,) (CMA-ES: the distribution mean)."""

    @abstractmethod
    def state(self) -> bytes:
        """The whole state, random generators included: :meth:`load_state` on a fresh back-end made
        with the same context asks the same candidates next."""

    @abstractmethod
    def load_state(self, blob: bytes) -> None: ...

    def stop(self) -> list[str]:
        """The optimizer's own stop conditions that hold now, by name ([]: go on)."""
        return []

    def population(self, popsize: int) -> int:
        """Candidates per :meth:`ask`, given the run's ``popsize`` (the budget counts them)."""
        return popsize

    def log_fields(self) -> dict[str, float]:
        """Extra fields for the log lines of the generation just told (the gradient back-ends: their
        differentiable objective)."""
        return {}


@dataclass(frozen=True)
class BackendContext:
    """What a factory may use: the run's settings, parameterization (theta -> signature), server
    client and resolved fixed training sample (``train``, num_clips resolved)."""

    config: RunConfig
    param: Parameterization
    client: Client
    train: DatasetCarriers

    @property
    def dim(self) -> int:
        return self.param.dim


Factory = Callable[[str, BackendContext], Backend]  # (the optimizer's full name, context) -> a fresh back-end


class BackendNameError(CodecLoopValueError):
    """A back-end registered under a name already taken."""


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    summary: str


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, factory: Factory, summary: str) -> None:
    """Make ``name`` an ``optimizer``; a name ending in ``:`` is a family (``nevergrad:`` takes
    ``nevergrad:<anything>``, the factory judges the rest). A name already registered, or a name
    a family already covers, raises :class:`BackendNameError`."""
    taken = name in _REGISTRY or any(k.endswith(":") and name.startswith(k) for k in _REGISTRY)
    if taken or not name:
        raise BackendNameError(f"optimizer {name!r}: already registered; registered: {', '.join(names())}")
    _REGISTRY[name] = _Entry(factory, summary)


def names() -> list[str]:
    """Every registered optimizer name, families shown as ``family:<name>``, in registration order."""
    return [f"{k}<name>" if k.endswith(":") else k for k in _REGISTRY]


def describe() -> str:
    """One line per optimizer name with what it is (``--optimizer`` help)."""
    return "; ".join(f"{n}: {e.summary}" for n, e in zip(names(), _REGISTRY.values()))


def _entry(name: str) -> _Entry:
    """The registry entry of ``name`` (itself, or its family's); an unknown name raises, listing the names."""
    entry = _REGISTRY.get(name)
    family, _, member = name.partition(":")
    if entry is None and member and family + ":" in _REGISTRY:
        entry = _REGISTRY[family + ":"]
    if entry is None:
        raise CodecLoopValueError(f"optimizer: {name!r}; use one of {', '.join(names())}")
    return entry


def require(name: str) -> None:
    """Raise unless ``name`` is a registered optimizer (the CLI checks before it starts a server)."""
    _entry(name)


def create(name: str, context: BackendContext) -> Backend:
    """A fresh back-end for the optimizer ``name`` (an unknown name raises, listing the names)."""
    return _entry(name).factory(name, context)


CMA_COVARIANCES = ("full", "diagonal")


class CMABackend(Backend):
    """pycma's CMA-ES: ``full`` covariance (``cma``), or ``diagonal`` (``cma:diagonal``: separable
    CMA-ES, pycma's ``CMA_diagonal``; linear cost per generation in the dimension, no eigendecomposition)."""

    def __init__(self, dim: int, config: RunConfig, covariance: str = "full") -> None:
        import cma

        if covariance not in CMA_COVARIANCES:
            raise CodecLoopValueError(f"optimizer: 'cma:{covariance}'; the covariance is one of {', '.join(CMA_COVARIANCES)}")
        opts: dict[str, Any] = {"popsize": config.popsize, "seed": config.seed + 1, "verbose": -9}
        if covariance == "diagonal":
            opts["CMA_diagonal"] = True
        if config.racing is not None or config.lead_channel is not None:
            # told ranks (a race's order, the lead-channel ranking), the best value is the same every
            # generation: pycma's 'tolfunhist' (range of the best values < 1e-12) would stop the run
            # after 10 generations for no reason. Its other criteria stay (ranks keep tolfun's range >= 1).
            opts["tolfunhist"] = 0
        np.random.seed(config.seed)  # pycma samples from numpy's global generator
        self.es: Any = cma.CMAEvolutionStrategy(np.zeros(dim), config.sigma0, opts)

    def ask(self) -> list[np.ndarray]:
        return list(self.es.ask())

    def tell(self, thetas: list[np.ndarray], losses: list[float]) -> None:
        self.es.tell(thetas, losses)

    def recommend(self) -> np.ndarray:
        return np.array(self.es.mean, dtype=np.float64)

    def stop(self) -> list[str]:
        """pycma's termination conditions that hold (``tolfun``, ``tolx``, ``maxiter``, ...)."""
        return [str(k) for k in self.es.stop()]

    def state(self) -> bytes:
        return pickle.dumps((self.es, np.random.get_state()))

    def load_state(self, blob: bytes) -> None:
        self.es, rng = pickle.loads(blob)
        np.random.set_state(rng)

    @classmethod
    def restore(cls, blob: bytes) -> CMABackend:
        """A back-end from :meth:`state` alone (no context needed: pycma's state holds it all)."""
        self = cls.__new__(cls)
        self.load_state(blob)
        return self


class NevergradBackend(Backend):
    """Any optimizer of nevergrad's registry, asked ``popsize`` candidates per generation."""

    def __init__(self, dim: int, config: RunConfig, name: str) -> None:
        import nevergrad as ng

        if name not in ng.optimizers.registry:
            raise CodecLoopValueError(f"optimizer: nevergrad has no optimizer {name!r}")
        param = ng.p.Array(shape=(dim,)).set_mutation(sigma=config.sigma0)
        param.random_state = np.random.RandomState(config.seed)
        self.opt: Any = ng.optimizers.registry[name](parametrization=param, budget=config.budget, num_workers=config.popsize)
        self.popsize = config.popsize
        self._pending: list[Any] = []

    def ask(self) -> list[np.ndarray]:
        try:
            self._pending = [self.opt.ask() for _ in range(self.popsize)]
        except AssertionError as err:
            # a meta-optimizer (NGOpt, Shiwa, ...) chooses its algorithm by the budget and asserts without one
            if self.opt.budget is None:
                raise CodecLoopValueError(
                    f"budget: nevergrad:{self.opt.name} needs a budget (evaluations) to choose its algorithm; give --budget N "
                    "(--max-minutes still stops the run first if it comes first)"
                ) from None
            raise CodecLoopValueError(f"optimizer: nevergrad:{self.opt.name} refused to ask: {err}") from None
        return [np.asarray(c.value) for c in self._pending]

    def tell(self, thetas: list[np.ndarray], losses: list[float]) -> None:
        for cand, loss in zip(self._pending, losses):
            self.opt.tell(cand, loss)
        self._pending = []

    def recommend(self) -> np.ndarray:
        return np.asarray(self.opt.provide_recommendation().value, dtype=np.float64)

    def state(self) -> bytes:
        return pickle.dumps(self.opt)

    def load_state(self, blob: bytes) -> None:
        self.opt = pickle.loads(blob)
        self._pending = []


def _cma(name: str, context: BackendContext) -> Backend:
    return CMABackend(context.dim, context.config, name.partition(":")[2] or "full")


def _nevergrad(name: str, context: BackendContext) -> Backend:
    return NevergradBackend(context.dim, context.config, name.partition(":")[2])


def _gradient(name: str, context: BackendContext) -> Backend:
    from codecloop.gradient import GradientBackend  # torch: imported only for these

    return GradientBackend(name, context)


register("cma", _cma, "pycma CMA-ES, full covariance")
register("cma:diagonal", _cma, "separable CMA-ES (diagonal covariance)")
register("nevergrad:", _nevergrad, "an optimizer of nevergrad's registry, e.g. nevergrad:TwoPointsDE")
register("torch-ste", _gradient, "gradient steps (torch) through the real codec, straight-through backward")
register("torch-hybrid", _gradient, "gradient steps (torch) through the real codec, the H.264 proxy's Jacobian backward")
for _rounding in ("tanh", "soft", "ste"):
    register(f"proxy:{_rounding}", _gradient, f"gradient steps (torch) through the H.264 proxy, {_rounding} rounding")

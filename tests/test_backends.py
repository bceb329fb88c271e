"""Optimizer back-ends: pycma's full and separable (diagonal) CMA-ES behind one interface."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from codecloop.optimize import CMABackend, RunConfig
from codecloop_wire.errors import CodecLoopValueError


def _sphere(backend: CMABackend, generations: int) -> float:
    best = np.inf
    for _ in range(generations):
        thetas = backend.ask()
        losses = [float(np.sum((t - 1.0) ** 2)) for t in thetas]
        backend.tell(thetas, losses)
        best = min(best, *losses)
    return best


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_cma_backends_minimize_and_restore_exactly(covariance):
    config = RunConfig(popsize=8, sigma0=0.5, seed=3)
    backend = CMABackend(40, config, covariance)
    assert bool(backend.es.opts["CMA_diagonal"]) is (covariance == "diagonal")
    start = float(np.sum((backend.recommend() - 1.0) ** 2))
    assert _sphere(backend, 60) < 0.2 * start
    # a checkpoint restores the whole state: the next populations are the same
    blob = backend.state()
    twin = CMABackend.restore(blob)
    a, b = backend.ask(), twin.ask()
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert isinstance(pickle.loads(blob), tuple)


def test_unknown_covariance_is_refused():
    with pytest.raises(CodecLoopValueError, match="cma:lowrank"):
        CMABackend(10, RunConfig(), "lowrank")


def test_pycma_stop_conditions_are_reported_by_name():
    backend = CMABackend(5, RunConfig(popsize=4), "full")
    backend.es.opts["maxiter"] = 2
    assert backend.stop() == []
    _sphere(backend, 1)
    assert backend.stop() == []
    _sphere(backend, 1)
    assert backend.stop() == ["maxiter"]


def test_registry_lists_every_optimizer_and_refuses_a_taken_name():
    from codecloop import backends
    from codecloop.cli import build_parser

    listed = backends.names()
    assert listed[:3] == ["cma", "cma:diagonal", "nevergrad:<name>"]
    assert {"torch-ste", "torch-hybrid", "proxy:tanh", "proxy:soft", "proxy:ste"} <= set(listed)
    help_text = next(a.help for a in build_parser()._subparsers._group_actions[0].choices["optimize"]._actions if a.dest == "optimizer")
    assert all(name in help_text for name in listed)
    for taken in ("cma", "torch-ste", "nevergrad:TwoPointsDE"):  # the last: the nevergrad family covers it
        with pytest.raises(backends.BackendNameError, match=f"optimizer '{taken}': already registered; registered: cma, "):
            backends.register(taken, lambda name, context: CMABackend(2, RunConfig(), "full"), "a second one")
    assert backends.names() == listed
    with pytest.raises(CodecLoopValueError, match=r"optimizer: 'sgd'; use one of cma, cma:diagonal, nevergrad:<name>, torch-ste"):
        backends.create("sgd", None)  # type: ignore[arg-type]  (refused before the context is read)
    with pytest.raises(CodecLoopValueError, match=r"optimizer: 'cma:lowrank'; use one of"):
        backends.create("cma:lowrank", None)  # type: ignore[arg-type]


def test_a_registered_backend_runs_in_the_run_layer(client, tmp_path):
    """A new back-end is a class and one register() call: the run layer gives it the same folder,
    validation, summary and plots as the built-in ones."""
    from codecloop import DatasetCarriers, backends
    from codecloop.optimize import Run
    from codecloop.params import make

    class RandomSearch(backends.Backend):
        def __init__(self, context: backends.BackendContext) -> None:
            self.rng, self.dim, self.best = np.random.default_rng(context.config.seed), context.dim, np.zeros(context.dim)

        def ask(self):
            return list(self.rng.standard_normal((3, self.dim)))

        def tell(self, thetas, losses):
            self.best = thetas[int(np.argmin(losses))]

        def recommend(self):
            return self.best

        def state(self):
            return pickle.dumps((self.rng, self.best))

        def load_state(self, blob):
            self.rng, self.best = pickle.loads(blob)

    name = "test-random-search"
    if name not in backends.names():
        backends.register(name, lambda _, context: RandomSearch(context), "random search (tests)")
    config = RunConfig(optimizer=name, epsilon=4 / 255, train=DatasetCarriers(num_clips=4), popsize=3, budget=6, validate_every=1,
                       validation=DatasetCarriers(split="validation", num_clips=4), holdout=DatasetCarriers(split="holdout", num_clips=4))  # fmt: skip
    summary = Run(client, make("dct:8:2", (16, 112, 112)), config, tmp_path).run(progress=False)
    assert summary["generations"] == 2 and summary["evaluations"] == 6 and summary["stopped"] == {"by": "budget"}
    assert summary["selected"]["by"] == "validation" and summary["optimizer"] == name
    assert {"train", "validation", "holdout", "gap"} <= set(summary) and (tmp_path / "fitness.png").stat().st_size > 0


def test_a_nevergrad_meta_optimizer_without_a_budget_is_refused_naming_the_budget(client, tmp_path):
    """NGOpt chooses its algorithm by the budget and asserts without one: the run says so, no traceback."""
    from codecloop import Codec, DatasetCarriers
    from codecloop.optimize import Run
    from codecloop.params import make

    config = RunConfig(
        optimizer="nevergrad:NGOpt", budget=None, max_seconds=120, codecs=(Codec(preset="ultrafast"),), popsize=4,
        train=DatasetCarriers(num_clips=2), validation=None, holdout=DatasetCarriers(split="holdout", num_clips=2),
    )  # fmt: skip
    with pytest.raises(CodecLoopValueError, match=r"budget: nevergrad:NGOpt needs a budget \(evaluations\) to choose its algorithm; give --budget N"):
        Run(client, make("dct:8:2", (16, 112, 112)), config, tmp_path).run(progress=False)

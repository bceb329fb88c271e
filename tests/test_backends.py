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

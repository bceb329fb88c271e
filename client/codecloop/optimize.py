"""Optimization of a signature on the real codec, one run layer for every back-end: the SDK's entry.

``Run(client, parameterization, RunConfig(optimizer=...), folder).run()`` searches with any
registered back-end (:mod:`codecloop.backends`: pycma ``cma`` / ``cma:diagonal``, ``nevergrad:<name>``,
the torch gradient back-ends ``torch-ste`` / ``torch-hybrid`` / ``proxy:*``) and writes the same
run folder, summary and plots for all. Where each part lives:

  :mod:`codecloop.runconfig`  RunConfig, GradientConfig: what to optimize and how
  :mod:`codecloop.backends`   the Backend interface, the registry (name -> factory), pycma and nevergrad
  :mod:`codecloop.gradient`   the torch back-ends (imported only when one is made)
  :mod:`codecloop.run`        Run: the loop, validation split, stop conditions, resume, summary
  :mod:`codecloop.runreport`  one split's statistics, gaps between splits, fidelity
  :mod:`codecloop.runcheck`   the resume contract; :mod:`codecloop.rundir` the folder's files

What makes a signature found this way hold up on footage it never saw:

* **objective** (:mod:`codecloop.objectives`): by default ``centred-separation``, the mean
  separation minus the clean scores' offset from 0 (a signature correlated with the training
  content); ``tpr``, ``margin`` and others target the deployed FPR directly;
* **fresh training clips**: each generation scores its population on a different random subset of
  the train split (server-side draw, seed = f(run seed, generation): reproducible);
* **best by validation**: every ``validate_every`` generations (and after the last) the generation's
  best candidate and the back-end's recommendation are scored on the validation split; the
  signature kept is the best one *there*, not the luckiest training score;
* the report scores the kept signature on a fixed training sample, and summary.json and the plots
  give train / validation / held-out side by side.

A run folder holds:
  log.jsonl      one line per evaluation (its training clips), appended as it happens
  validation.jsonl  one line per validated candidate ("best" or "mean" of a generation)
  checkpoint.pkl the run's state and the back-end's after the last completed generation (atomic rename)
  best.npy       the kept signature (T', H, W, 3) float32
  summary.json   strict JSON: settings, the kept signature's statistics on train / validation /
                 held-out clips at ``target_fpr`` ("train", "validation", "holdout", "gap"), and
                 why the run stopped ("stopped")
  *.png          objective and TPR per generation (train, validation, held-out), held-out score
                 histograms, ROC with a log FPR axis

A killed run resumes from ``checkpoint.pkl``: log lines of generations after the checkpoint are
dropped (they were never told to the back-end) and the back-end's random state is restored, so
the resumed run asks the same candidates again: no evaluation is lost or counted twice.
"""

from __future__ import annotations

from codecloop.backends import Backend, BackendContext, BackendNameError, CMABackend, NevergradBackend, create, names, register
from codecloop.run import REPORT_OVERHEAD_S, Run, RunState
from codecloop.runconfig import GradientConfig, RunConfig
from codecloop.runreport import FIDELITY_CLIPS, report

__all__ = [
    "FIDELITY_CLIPS",
    "REPORT_OVERHEAD_S",
    "Backend",
    "BackendContext",
    "BackendNameError",
    "CMABackend",
    "GradientConfig",
    "NevergradBackend",
    "Run",
    "RunConfig",
    "RunState",
    "create",
    "names",
    "register",
    "report",
]

"""Black-box optimization of a signature on the real codec: pycma and nevergrad, batched.

One generation = one ``ask`` of a whole population = one batched server call. Optimizers minimize,
we maximize the objective: the loop tells them ``loss = -objective`` in exactly one place
(:meth:`Run.step`).

What makes a signature found this way hold up on footage it never saw:

* **objective** (:mod:`codecloop.objectives`): by default ``centred-separation``, the mean
  separation minus the clean scores' offset from 0 (a signature correlated with the training
  content); ``tpr``, ``margin`` and others target the deployed FPR directly. Computed here from the
  scores the server returns: a pure function of the request;
* **fresh training clips**: each generation scores its population on a different random subset of
  the train split (server-side draw, seed = f(run seed, generation): reproducible);
* **best by validation**: every ``validate_every`` generations (and after the last) the generation's
  best candidate and the optimizer's mean / recommendation are scored on the validation split; the
  signature kept is the best one *there*, not the luckiest training score;
* the report scores the kept signature on a fixed training sample, and summary.json and the plots
  give train / validation / held-out side by side.

A run folder holds:
  log.jsonl      one line per evaluation (its training clips), appended as it happens
  validation.jsonl  one line per validated candidate ("best" or "mean" of a generation)
  checkpoint.pkl the optimizer state after the last completed generation (atomic rename)
  best.npy       the kept signature (T', H, W, 3) float32
  summary.json   strict JSON: settings, and the kept signature's statistics on train / validation /
                 held-out clips at ``target_fpr`` ("train", "validation", "holdout", "gap")
  *.png          objective and TPR per generation (train, validation, held-out), held-out score
                 histograms, ROC with a log FPR axis

A killed run resumes from ``checkpoint.pkl``: log lines of generations after the checkpoint are
dropped (they were never told to the optimizer) and the optimizer's random state is restored, so
the resumed run asks the same candidates again: no evaluation is lost or counted twice.
"""

from __future__ import annotations

import math
import pickle
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from codecloop import datasetview, runcheck
from codecloop import fidelity as fidelity_metrics
from codecloop.client import Client
from codecloop.objectives import Objective
from codecloop.params import Parameterization
from codecloop.rundir import RunFolder
from codecloop.types import CandidateResult, Channel, Codec, DatasetCarriers, EvaluateResult, Racing
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError

FIDELITY_CLIPS = 4  # held-out clips the report's PSNR / SSIM and frames.png are measured on

# seconds added to the final-report estimate for best.npy, summary.json and the plots (matplotlib import)
REPORT_OVERHEAD_S = 5.0


@dataclass
class RunConfig:
    """What to optimize and how.

    Every ``num_clips`` is an upper bound: 0, or more than the split holds, means the whole split.
    ``train.num_clips`` is the number of training clips per generation (a fresh draw each
    generation when ``fresh_clips``; the fixed sample ``train`` itself otherwise, and in the report).
    ``validation`` None (or a dataset without that split: a warning) selects by training objective.
    ``budget`` (evaluations) None = unlimited; ``max_seconds`` is a wall-clock limit that includes
    the validation calls and the final report.
    """

    optimizer: str = "cma"  # "cma" (full covariance), "cma:diagonal" or "nevergrad:<registry name>", e.g. "nevergrad:TwoPointsDE"
    epsilon: float = defaults.EPSILON
    codecs: tuple[Codec, ...] = (Codec(),)
    channels: tuple[Channel, ...] = ()  # evaluated after codecs; the worst of all decides
    scorer: str = defaults.SCORER
    objective: Objective | str = field(default_factory=Objective)
    train: DatasetCarriers = DatasetCarriers(split="train")
    fresh_clips: bool = True
    validation: DatasetCarriers | None = DatasetCarriers(split="validation", num_clips=0)
    validate_every: int = 4  # generations
    holdout: DatasetCarriers = DatasetCarriers(split="holdout", num_clips=0)
    popsize: int = 16
    budget: int | None = 640
    max_seconds: float = math.inf
    patience: int = 0  # generations without a better kept signature before stopping; 0 = never
    sigma0: float = 2.0
    seed: int = 0
    racing: Racing | None = None  # each generation a race (its centre_weight: the objective's)

    def __post_init__(self) -> None:
        if isinstance(self.objective, str):
            self.objective = Objective(self.objective)
        if self.racing is not None:
            if self.objective.name not in ("separation", "centred-separation"):
                raise CodecLoopValueError(f"racing: a race ranks by separation or centred-separation; objective {self.objective.name!r} is neither")
            weight = self.objective.centre_weight if self.objective.name == "centred-separation" else 0.0
            if self.racing.centre_weight is not None and self.racing.centre_weight != weight:
                raise CodecLoopValueError(f"racing.centre_weight: {self.racing.centre_weight}; the objective {self.objective.name!r} needs {weight}")
            self.racing = replace(self.racing, centre_weight=weight)
        if self.popsize < 2:
            raise CodecLoopValueError(f"popsize: {self.popsize} must be >= 2")
        if self.validate_every < 1:
            raise CodecLoopValueError(f"validate_every: {self.validate_every} must be >= 1")
        if self.seed < 0:
            raise CodecLoopValueError(f"seed: {self.seed} must be >= 0")
        if self.budget is None and not math.isfinite(self.max_seconds) and self.patience == 0:
            raise CodecLoopValueError("budget, max_seconds, patience: all unlimited; give at least one limit")


class Backend(ABC):
    """An optimizer: ask a population of thetas, tell their losses, save/load its whole state."""

    @abstractmethod
    def ask(self) -> list[np.ndarray]: ...

    @abstractmethod
    def tell(self, thetas: list[np.ndarray], losses: list[float]) -> None: ...

    @abstractmethod
    def recommend(self) -> np.ndarray:
        """The optimizer's own estimate of the optimum (CMA-ES: the distribution mean)."""

    @abstractmethod
    def state(self) -> bytes: ...


CMA_COVARIANCES = ("full", "diagonal")


class CMABackend(Backend):
    """pycma's CMA-ES: ``full`` covariance (``cma``), or ``diagonal`` (``cma:diagonal``: separable
    CMA-ES, pycma's ``CMA_diagonal``; linear cost per generation in the dimension, no eigendecomposition)."""

    def __init__(self, dim: int, config: RunConfig, covariance: str = "full") -> None:
        import cma

        if covariance not in CMA_COVARIANCES:
            raise CodecLoopValueError(f"optimizer: 'cma:{covariance}'; the covariance is one of {', '.join(CMA_COVARIANCES)}")
        opts = {"popsize": config.popsize, "seed": config.seed + 1, "verbose": -9}
        if covariance == "diagonal":
            opts["CMA_diagonal"] = True
        np.random.seed(config.seed)  # pycma samples from numpy's global generator
        self.es = cma.CMAEvolutionStrategy(np.zeros(dim), config.sigma0, opts)

    def ask(self) -> list[np.ndarray]:
        return self.es.ask()

    def tell(self, thetas, losses) -> None:
        self.es.tell(thetas, losses)

    def recommend(self) -> np.ndarray:
        return np.array(self.es.mean, dtype=np.float64)

    def state(self) -> bytes:
        return pickle.dumps((self.es, np.random.get_state()))

    @classmethod
    def restore(cls, blob: bytes) -> CMABackend:
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

    def recommend(self) -> np.ndarray:
        return np.asarray(self.opt.provide_recommendation().value, dtype=np.float64)

    def state(self) -> bytes:
        return pickle.dumps(self.opt)

    @classmethod
    def restore(cls, blob: bytes, popsize: int) -> NevergradBackend:
        self = cls.__new__(cls)
        self.opt = pickle.loads(blob)
        self.popsize = popsize
        self._pending = []
        return self


@dataclass
class RunState:
    generation: int = 0
    evaluations: int = 0
    elapsed: float = 0.0  # seconds spent in generations and validations (summed over resumes)
    last_generation_s: float = 0.0  # the last generation's seconds (its population, no validation)
    last_generation_clips: int = 0  # candidate-clips the last generation scored (fewer than popsize x clips in a race)
    candidate_clips: int = 0  # candidate-clips scored in all generations (each through every codec setting)
    best_fitness: float = -math.inf  # the kept signature's selection score (validation objective when validating)
    best_theta: np.ndarray | None = None
    best_generation: int = -1
    best_by: str = "train"  # "train" or "validation"
    best_candidate: str = "best"  # "best" (its generation's best on that generation's clips) or "mean"
    best_validation: dict[str, Any] | None = None  # the kept signature's validation report
    generation_best_theta: np.ndarray | None = None  # the last generation's best, for validation
    validated_generation: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)  # per generation
    validations: list[dict[str, Any]] = field(default_factory=list)  # per validated candidate


def _stats_fields(stats, objective: Objective) -> dict[str, Any]:
    """One codec setting's statistics (no per-clip arrays) plus its objective value and label."""
    arrays = ("clean_scores", "poisoned_scores", "clean_p_values", "poisoned_p_values", "clean_z", "poisoned_z")
    out = {k: v for k, v in asdict(stats).items() if k not in ("codec", "channel", "p_value_test", *arrays)}
    # the x264 level and build that produced these numbers (docs/codecs-and-channels.md, "Determinism"), archived with them
    codec = {"codec": stats.label(), "x264_asm": stats.codec.x264_asm, "x264_build": stats.codec.x264_build}
    return {**codec, "objective": objective.codec(stats), **out}


def report(result: EvaluateResult, index: int, objective: Objective, carriers: DatasetCarriers) -> dict[str, Any]:
    """One candidate's report on one split: the worst codec setting's statistics at the top level
    (``tpr``, ``fpr``, ``threshold``, ``separation``, ``clean_mean``, ...), every setting under ``per_codec``."""
    per_codec = [_stats_fields(s, objective) for s in result.candidates[index].codecs]
    worst = min(per_codec, key=lambda s: s["objective"])
    return {"dataset": carriers.dataset, "split": carriers.split, "clips": result.num_clips, **worst, "per_codec": per_codec}


class Run:
    """A resumable optimization run writing into ``folder``."""

    def __init__(self, client: Client, param: Parameterization, config: RunConfig, folder: str | Path, overwrite: bool = False) -> None:
        """A run in ``folder``: resumed when the folder holds a checkpoint made with the same
        settings (:mod:`codecloop.runcheck`; other settings raise ``RunSettingsError`` listing the
        differences), started afresh when it holds none or ``overwrite`` (the old run's files are
        removed). Nothing is written before the first generation."""
        self.client, self.param, self.config = client, param, config
        self.objective: Objective = config.objective  # type: ignore[assignment]  (str converted in RunConfig)
        self.folder = RunFolder(folder, "checkpoint.pkl")
        self.validation_note = ""
        self._null: bool | None = None  # whether the scorer offers the null model (asked once)
        self._resolve_carriers()
        self.settings = runcheck.settings(config, parameterization=repr(param), dataset_digests=self._digests)
        if overwrite and self.folder.path.is_dir():
            runcheck.clear(self.folder.path)
        self.resumed = self.folder.has_checkpoint()
        self._started = False
        if self.resumed:
            self._resume()
        else:
            self.state = RunState()
            self.backend = self._new_backend()

    def resume_note(self) -> str:
        """What a resumed run continues from: folder, generation, evaluations and time used."""
        s = self.state
        return f"resuming {self.folder.path} at generation {s.generation} ({s.evaluations} evaluations, {s.elapsed:.0f} s used)"

    def _start(self) -> None:
        """Before the first write: make the folder; a fresh run empties logs a killed first try left."""
        if self._started:
            return
        self._started = True
        self.folder.create()
        if not self.resumed:
            self.folder.log.clear()
            self.folder.validation_log.clear()

    # --- carriers ---------------------------------------------------------------------------------

    def _resolve_carriers(self) -> None:
        """Check every split exists on the server and turn ``num_clips`` 0 into the split's size."""
        datasets = self.client.info().datasets
        sizes = {(d.name, split): n for d in datasets for split, n in d.split_clips.items()}

        def resolve(carriers: DatasetCarriers, name: str) -> DatasetCarriers:
            carriers = carriers.resolved()
            splits = sorted(s for d, s in sizes if d == carriers.dataset)
            if not splits:
                raise CodecLoopValueError(f"{name}.dataset: the server has no dataset {carriers.dataset!r}")
            if (carriers.dataset, carriers.split) not in sizes:
                raise CodecLoopValueError(f"{name}.split: dataset {carriers.dataset!r} has no split {carriers.split!r}; it has {splits}")
            size = sizes[(carriers.dataset, carriers.split)]
            # small datasets (a few real videos) have small splits: a count is an upper bound
            return replace(carriers, num_clips=size) if carriers.num_clips == 0 or carriers.num_clips > size else carriers

        c = self.config
        self.train = resolve(c.train, "train")
        self.holdout = resolve(c.holdout, "holdout")
        self.validation: DatasetCarriers | None = None
        if c.validation is not None:
            try:
                self.validation = resolve(c.validation, "validation")
            except CodecLoopValueError as err:
                if not str(err).startswith("validation.split"):
                    raise
                # a dataset without that split (an older server): run on, keep the best by training objective
                self.validation_note = f"{err}; the kept signature is the best by training objective"
                warnings.warn(self.validation_note, stacklevel=2)
        used = {c.dataset for c in (self.train, self.validation, self.holdout) if c is not None}
        # a folder whose files changed is another dataset: its digest is part of the run's settings
        self._digests = {d.name: d.digest for d in datasets if d.name in used}
        self._dataset = next(d for d in datasets if d.name == self.train.dataset)

    def train_carriers(self, generation: int) -> DatasetCarriers:
        """The training clips of ``generation``: a fresh seeded draw from the train split, or ``train``."""
        if not self.config.fresh_clips:
            return self.train
        seed = int(np.random.default_rng([self.config.seed, generation]).integers(2**31 - 1))
        return replace(self.train, seed=seed)

    # --- optimizer state --------------------------------------------------------------------------

    def _new_backend(self) -> Backend:
        kind, _, name = self.config.optimizer.partition(":")
        if kind == "cma":
            return CMABackend(self.param.dim, self.config, name or "full")
        if kind == "nevergrad" and name:
            return NevergradBackend(self.param.dim, self.config, name)
        raise CodecLoopValueError(f"optimizer: {self.config.optimizer!r}; use 'cma', 'cma:diagonal' or 'nevergrad:<name>'")

    def _resume(self) -> None:
        blob = pickle.loads(self.folder.read_checkpoint())
        # a checkpoint from before settings were stored: its config is compared, without parameterization and digest
        saved = blob.get("settings") or runcheck.settings(blob["config"], parameterization=repr(self.param), dataset_digests=self._digests)
        runcheck.check(self.folder.path, saved, self.settings)
        self.state = blob["state"]
        if self.config.optimizer.partition(":")[0] == "cma":
            self.backend = CMABackend.restore(blob["backend"])
        else:
            self.backend = NevergradBackend.restore(blob["backend"], self.config.popsize)
        # drop log lines of generations that were evaluated but never told (killed mid-generation)
        for log in (self.folder.log, self.folder.validation_log):
            log.keep(lambda entry: entry["generation"] < self.state.generation)

    def _checkpoint(self) -> None:
        blob = {"state": self.state, "backend": self.backend.state(), "config": self.config, "settings": self.settings}
        self.folder.write_checkpoint(pickle.dumps(blob))

    # --- the loop ---------------------------------------------------------------------------------

    def _evaluate(
        self, thetas: list[np.ndarray], carriers: DatasetCarriers, per_clip: bool = False, racing: Racing | None = None, null: bool = False
    ) -> EvaluateResult:
        """``null``: with the null model's operating points (validation and reports), when the scorer offers it."""
        c = self.config
        return self.client.evaluate(
            self.param(np.stack(thetas)),
            epsilon=c.epsilon,
            carriers=carriers,
            codecs=c.codecs,
            channels=c.channels,
            scorer=c.scorer,
            target_fpr=self.objective.target_fpr,
            per_clip_scores=per_clip or self.objective.needs_per_clip,
            racing=racing,
            null_model=(null or self.objective.needs_null) and self._null_offered(),
        )

    def _null_offered(self) -> bool:
        if self._null is None:
            self._null = any(s.name == self.config.scorer and s.null_model for s in self.client.info().scorers)
        return self._null

    def _clip_seconds(self) -> float:
        """Seconds per candidate-clip in the last generation (0 before the first)."""
        # a run checkpointed before clips were counted: every candidate had every clip
        clips = self.state.last_generation_clips or self.config.popsize * self.train.num_clips
        return self.state.last_generation_s / clips

    def _validation_seconds(self) -> float:
        """Estimated seconds of one validation (two candidates) at the last generation's pace."""
        return 2 * self.validation.num_clips * self._clip_seconds() if self.validation is not None else 0.0

    def _final_seconds(self) -> float:
        """Estimated seconds of what :meth:`finish` still has to do, at the last generation's pace,
        doubled: the report's clean clips are mostly not cached yet, so they are encoded too."""
        report_clips = self.holdout.num_clips + self.train.num_clips
        return 2 * (report_clips * self._clip_seconds() + self._validation_seconds()) + REPORT_OVERHEAD_S

    def done(self) -> bool:
        """Budget, patience, or no time left for one more generation plus the final report."""
        c, s = self.config, self.state
        if c.budget is not None and s.evaluations + c.popsize > c.budget:
            return True
        if c.patience > 0 and s.best_generation >= 0 and s.generation - 1 - s.best_generation >= c.patience:
            return True
        validates = self.validation is not None and (s.generation + 1) % c.validate_every == 0
        upcoming = s.last_generation_s + (self._validation_seconds() if validates else 0.0)
        return s.elapsed + upcoming + self._final_seconds() > c.max_seconds

    def step(self) -> dict[str, Any]:
        """One generation: ask, one batched server call, tell (loss = -objective), log, maybe
        validate, checkpoint. Returns the generation's history entry."""
        t0 = time.monotonic()
        self._start()
        s, g = self.state, self.state.generation
        thetas = self.backend.ask()
        result = self._evaluate(thetas, self.train_carriers(g), racing=self.config.racing)
        fitness = self.objective(result)  # each candidate on its own clips (fewer for one a race dropped)
        # a race's candidates rest on different clips: only the race's order compares them
        ranking = result.race_fitness if result.raced else fitness
        self.backend.tell(thetas, [-float(f) for f in ranking])  # the optimizers minimize
        self.folder.log.append(*(
            {"generation": g, "index": i, "evaluation": s.evaluations + i, "fitness": float(f), "clips": cand.num_clips,
             "race_rank": cand.race_rank, **self._line(cand)}
            for i, (f, cand) in enumerate(zip(fitness, result.candidates))
        ))  # fmt: skip
        best = int(np.argmax(ranking))
        s.generation_best_theta = np.asarray(thetas[best])
        if self.validation is None and fitness[best] > s.best_fitness:
            s.best_fitness, s.best_theta, s.best_generation = float(fitness[best]), s.generation_best_theta, g
        clips = sum(c.num_clips for c in result.candidates)
        s.history.append({
            "generation": g, "max": float(fitness[best]), "mean": float(fitness.mean()),
            "best_tpr": self._line(result.candidates[best])["tpr"], "clip_ids": list(result.clip_ids), "candidate_clips": clips,
        })  # fmt: skip
        s.generation += 1
        s.evaluations += len(thetas)
        s.last_generation_clips = clips
        s.candidate_clips += clips
        s.last_generation_s = time.monotonic() - t0  # the pace estimate: population only
        if self.validation is not None and s.generation % self.config.validate_every == 0:
            self.validate()
        s.elapsed += time.monotonic() - t0
        self._checkpoint()
        return s.history[-1]

    def _line(self, cand: CandidateResult) -> dict[str, Any]:
        """Log fields of the candidate's worst codec setting (by objective)."""
        worst = min(cand.codecs, key=self.objective.codec)
        return {k: getattr(worst, k) for k in ("separation", "tpr", "fpr", "clean_mean", "clean_std", "auc", "p_value", "psnr_db")}

    def validate(self) -> None:
        """Score the last generation's best candidate and the optimizer's mean on the validation
        split; keep either if it beats the kept signature there."""
        s, g = self.state, self.state.generation - 1
        assert self.validation is not None and s.generation_best_theta is not None
        names, thetas = ("best", "mean"), [s.generation_best_theta, self.backend.recommend()]
        result = self._evaluate(thetas, self.validation, null=True)
        values = self.objective(result)
        for name, theta, value, i in zip(names, thetas, values, range(len(thetas))):
            entry = {"generation": g, "candidate": name, "fitness": float(value), **self._line(result.candidates[i])}
            self.folder.validation_log.append(entry)
            s.validations.append(entry)
            if value > s.best_fitness:
                s.best_fitness, s.best_theta, s.best_generation = float(value), np.asarray(theta), g
                s.best_by, s.best_candidate = "validation", name
                s.best_validation = report(result, i, self.objective, self.validation)
        s.validated_generation = g

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Generations until the budget, time limit or patience runs out; then the final report."""
        start = time.monotonic()
        if self.state.generation == 0 and self.done():
            raise self._no_generation()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.config.budget, initial=self.state.evaluations, unit="eval", desc=self.config.optimizer)
        while not self.done():
            h = self.step()
            if bar is not None:
                bar.update(self.config.popsize)
                # docs/optimize.md (the progress bar): kept = the kept signature's selection score, gen_best = this generation's best
                kept = f"{self.state.best_fitness:.4f}" if math.isfinite(self.state.best_fitness) else "-"
                bar.set_postfix(kept=kept, gen_best=f"{h['max']:.4f}")
        if bar is not None:
            bar.close()
        return self.finish(search_s=time.monotonic() - start)

    def _no_generation(self) -> CodecLoopValueError:
        """Why a fresh run cannot run one generation: the limit that stops it, by name."""
        c = self.config
        if c.budget is not None and c.budget < c.popsize:
            return CodecLoopValueError(f"budget: {c.budget} evaluations are fewer than one generation (popsize {c.popsize})")
        return CodecLoopValueError(f"max_seconds: {c.max_seconds:.1f} s leave no time for one generation and the final report (about {REPORT_OVERHEAD_S:.0f} s)")

    def finish(self, search_s: float | None = None) -> dict[str, Any]:
        """Validate the last generation if it was not, save the kept signature, score it on a
        fixed training sample and on the held-out split, write summary.json and the plots."""
        t0 = time.monotonic()
        s, c = self.state, self.config
        if s.generation == 0:
            raise self._no_generation()
        self._start()
        if self.validation is not None and s.validated_generation < s.generation - 1:
            self.validate()
            self._checkpoint()
        best = self.param(s.best_theta)  # (1, T', H, W, 3)
        self.folder.save_best(best[0])
        train = self._evaluate([s.best_theta], self.train, per_clip=True, null=True)
        held = self._evaluate([s.best_theta], self.holdout, per_clip=True, null=True)
        sections = {
            "train": report(train, 0, self.objective, self.train),
            "validation": s.best_validation,
            "holdout": report(held, 0, self.objective, self.holdout),
        }
        sections["train"] |= {"clips_per_generation": self.train.num_clips, "fresh_clips": c.fresh_clips}
        fidelity, clips = self._fidelity(best[0])
        s.elapsed += time.monotonic() - t0
        summary = {
            "target_fpr": self.objective.target_fpr,
            "objective": self.objective.name,
            "selected": {"by": s.best_by, "generation": s.best_generation, "candidate": s.best_candidate, "score": s.best_fitness},
            **sections,
            "gap": _gaps(sections),
            "fidelity": fidelity,
            "validation_note": self.validation_note or None,
            "generations": s.generation,
            "evaluations": s.evaluations,
            "candidate_clips": s.candidate_clips,  # training clips scored, over all candidates (a race scores fewer)
            "elapsed_s": round(s.elapsed, 1),  # generations, validations and this report, over all resumes
            "wall_s": None if search_s is None else round(search_s + time.monotonic() - t0, 1),  # this call, report included
            "dataset": datasetview.summary(self._dataset),  # files per split, skipped files: what the numbers rest on
            "parameterization": self.param.describe(),
            "config": asdict(c),
        }
        written = self.folder.write_summary(summary)
        from codecloop import plots

        plots.run_plots(self.folder.path, s.history, s.validations, summary, held.candidates[0].codecs, c.epsilon)
        if clips is not None:
            plots.result_images(self.folder.path, best[0], c.epsilon, clips, fidelity["codec"])
        return written

    def _fidelity(self, signature: np.ndarray) -> tuple[dict[str, Any], tuple[np.ndarray, ...] | None]:
        """PSNR and SSIM of the kept signature (:mod:`codecloop.fidelity`) on up to
        :data:`FIDELITY_CLIPS` held-out clips through the first codec setting (else the first
        channel), and those clips (clean, marked, both after the codec) for frames.png."""
        c = self.config
        look = replace(self.holdout, num_clips=min(FIDELITY_CLIPS, self.holdout.num_clips), seed=0)
        route: dict[str, Any] = {"codec": c.codecs[0]} if c.codecs else {"channel": c.channels[0]}
        label = c.codecs[0].label() if c.codecs else c.channels[0].label()
        try:
            clean = self.client.transcode(None, epsilon=c.epsilon, carriers=look, include_input=True, **route)
            marked = self.client.transcode(signature, epsilon=c.epsilon, carriers=look, include_input=True, **route)
        except CodecLoopValueError as err:  # e.g. a channel preset of several channels: no single "after"
            return {"codec": label, "note": f"not measured: {err}"}, None
        clips = (clean.inputs, marked.inputs, clean.decoded, marked.decoded)
        assert clips[0] is not None and clips[1] is not None  # include_input=True
        measured = fidelity_metrics.report(*clips)  # type: ignore[arg-type]
        return {"codec": label, "clips": len(clean.decoded), "split": self.holdout.split, "ssim": fidelity_metrics.SSIM_DEFINITION, **measured}, clips


def _gaps(sections: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, float | None]]:
    """Differences of objective, TPR and separation between splits (train - validation, ...)."""
    pairs = (("train", "validation"), ("validation", "holdout"), ("train", "holdout"))
    out = {}
    for metric in ("objective", "tpr", "separation"):
        out[metric] = {f"{a}_minus_{b}": (sections[a][metric] - sections[b][metric]) if sections[a] and sections[b] else None for a, b in pairs}
    return out

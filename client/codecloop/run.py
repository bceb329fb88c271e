"""The run layer: one resumable optimization run, whatever the back-end (:mod:`codecloop.backends`).

One generation = the back-end's ``ask`` = one batched server call on the generation's training
clips, told back as ``loss = -objective`` in exactly one place (:meth:`Run.step`). Every
``validate_every`` generations (and after the last) the generation's best candidate and the
back-end's recommendation are scored on the validation split; the signature kept is the best one
there. The run ends when the budget, the time, the patience or the back-end's own stop conditions
(pycma's ``es.stop()``) say so, or on Ctrl-C; summary.json records which (``stopped``).
The run folder's layout and the resume contract: :mod:`codecloop.optimize`, :mod:`codecloop.runcheck`.
"""

from __future__ import annotations

import math
import pickle
import time
import warnings
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from codecloop import backends, datasetview, leadchannel, runcheck, runreport
from codecloop.client import Client
from codecloop.objectives import Objective
from codecloop.params import Parameterization
from codecloop.results import CandidateResult, EvaluateResult
from codecloop.runconfig import GradientConfig, RunConfig
from codecloop.rundir import RunFolder
from codecloop.serverinfo import DatasetInfo
from codecloop.types import DatasetCarriers, Racing
from codecloop_wire.errors import CodecLoopValueError

# seconds added to the final-report estimate for best.npy, summary.json and the plots (matplotlib import)
REPORT_OVERHEAD_S = 5.0
# at most one checkpoint per this many seconds of generations (and after every validation, and at the
# end): pycma's state at the default dimension is ~90 MB, ~0.2 s to write, which after every
# generation of a raced run cost 12 % of the budget; a kill loses at most this much, never correctness
CHECKPOINT_EVERY_S = 10.0


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
    best_candidate: str = "best"  # "best" (its generation's best on that generation's clips) or "mean" (the back-end's recommendation)
    best_validation: dict[str, Any] | None = None  # the kept signature's validation report
    generation_best_theta: np.ndarray | None = None  # the last generation's best, for validation
    validated_generation: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)  # per generation
    validations: list[dict[str, Any]] = field(default_factory=list)  # per validated candidate
    lead: leadchannel.Lead | None = None  # lead_channel: the last generation best's worst codec setting or channel
    channel_encodes: int = 0  # candidate x clip x channel evaluations of all generations
    channel_encodes_full: int = 0  # what every candidate through every channel on every clip would have asked


def _clips(carriers: DatasetCarriers) -> int:
    """``num_clips`` of carriers the run resolved (never None there)."""
    return int(carriers.num_clips or 0)


class Run:
    """A resumable optimization run writing into ``folder``."""

    def __init__(self, client: Client, param: Parameterization, config: RunConfig, folder: str | Path, overwrite: bool = False) -> None:
        """A run in ``folder``: resumed when the folder holds a checkpoint made with the same
        settings (:mod:`codecloop.runcheck`; other settings raise ``RunSettingsError`` listing the
        differences), started afresh when it holds none or ``overwrite`` (the old run's files are
        removed). Nothing is written before the first generation."""
        self.client, self.param, self.config = client, param, config
        self.objective: Objective = config.objective
        self.folder = RunFolder(folder, "checkpoint.pkl")
        self.validation_note = ""
        self.stopped: dict[str, Any] | None = None  # why the last run() ended: {"by": ..., "conditions": [...]}
        self._null: bool | None = None  # whether the scorer offers the null model (asked once)
        self._resolve_carriers()
        self.backend = backends.create(config.optimizer, backends.BackendContext(config, param, client, self.train))
        if "gradient" in self.backend.reads and config.gradient is None:
            self.config = config = replace(config, gradient=GradientConfig())
        self.settings = runcheck.settings(config, parameterization=repr(param), dataset_digests=self._digests)
        if overwrite and self.folder.path.is_dir():
            runcheck.clear(self.folder.path)
        self.resumed = self.folder.has_checkpoint()
        self._started = False
        self._checkpointed_at, self._checkpointed_generation = -math.inf, -1  # when, and at which generation, the last checkpoint was written
        self.state = RunState()
        if self.resumed:
            self._resume()

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
            key = (str(carriers.dataset), str(carriers.split))  # resolved: no field is None
            splits = sorted(s for d, s in sizes if d == key[0])
            if not splits:
                raise CodecLoopValueError(f"{name}.dataset: the server has no dataset {carriers.dataset!r}")
            if key not in sizes:
                raise CodecLoopValueError(f"{name}.split: dataset {carriers.dataset!r} has no split {carriers.split!r}; it has {splits}")
            size, wanted = sizes[key], int(carriers.num_clips or 0)
            # small datasets (a few real videos) have small splits: a count is an upper bound
            return replace(carriers, num_clips=size) if wanted == 0 or wanted > size else carriers

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
        self._dataset: DatasetInfo = next(d for d in datasets if d.name == self.train.dataset)

    def train_carriers(self, generation: int) -> DatasetCarriers:
        """The training clips of ``generation``: a fresh seeded draw from the train split, or ``train``."""
        if not self.config.fresh_clips:
            return self.train
        seed = int(np.random.default_rng([self.config.seed, generation]).integers(2**31 - 1))
        return replace(self.train, seed=seed)

    # --- checkpoint -------------------------------------------------------------------------------

    def _resume(self) -> None:
        """State and back-end from the checkpoint; log lines of generations after it are dropped."""
        blob = pickle.loads(self.folder.read_checkpoint())
        # a checkpoint from before settings were stored: its config is compared, without parameterization and digest
        saved = blob.get("settings") or runcheck.settings(blob["config"], parameterization=repr(self.param), dataset_digests=self._digests)
        runcheck.check(self.folder.path, saved, self.settings)
        self.state = blob["state"]
        for f in fields(RunState):  # a checkpoint from before a field existed: its default
            if not hasattr(self.state, f.name):
                setattr(self.state, f.name, f.default_factory() if f.default_factory is not MISSING else f.default)
        self.backend.load_state(blob["backend"])
        self._checkpointed_at, self._checkpointed_generation = time.monotonic(), self.state.generation
        # drop log lines of generations that were evaluated but never told (killed mid-generation)
        for log in (self.folder.log, self.folder.validation_log):
            log.keep(lambda entry: bool(entry["generation"] < self.state.generation))

    def _checkpoint(self) -> float:
        """Write the state; its seconds (returned) are added to the run's time (``elapsed``), as the budget's."""
        t0 = time.monotonic()
        blob = {"state": self.state, "backend": self.backend.state(), "config": self.config, "settings": self.settings}
        self.folder.write_checkpoint(pickle.dumps(blob))
        self._checkpointed_at = time.monotonic()
        self._checkpointed_generation = self.state.generation
        self.state.elapsed += self._checkpointed_at - t0
        return self._checkpointed_at - t0

    # --- the loop ---------------------------------------------------------------------------------

    def _evaluate(
        self, thetas: list[np.ndarray], carriers: DatasetCarriers, per_clip: bool = False, racing: Racing | None = None, null: bool = False,
        lead: leadchannel.Lead | None = None,
    ) -> EvaluateResult:  # fmt: skip
        """``null``: with the null model's operating points (validation and reports), when the scorer
        offers it. ``lead``: through that one codec setting or channel only (leadchannel.py)."""
        c = self.config
        codecs, channels = c.codecs, c.channels
        if lead is not None:
            codecs, channels = tuple(x for x in (lead[0],) if x is not None), tuple(x for x in (lead[1],) if x is not None)
        return self.client.evaluate(
            self.param(np.stack(thetas)),
            epsilon=c.epsilon,
            carriers=carriers,
            codecs=codecs,
            channels=channels,
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

    def _population(self) -> int:
        """Candidates per generation (a gradient back-end asks one)."""
        return self.backend.population(self.config.popsize)

    def _clip_seconds(self) -> float:
        """Seconds per candidate-clip in the last generation (0 before the first)."""
        # a run checkpointed before clips were counted: every candidate had every clip
        clips = self.state.last_generation_clips or self._population() * _clips(self.train)
        return self.state.last_generation_s / clips

    def _validation_seconds(self) -> float:
        """Estimated seconds of one validation (two candidates) at the last generation's pace."""
        return 2 * _clips(self.validation) * self._clip_seconds() if self.validation is not None else 0.0

    def _final_seconds(self) -> float:
        """Estimated seconds of what :meth:`finish` still has to do, at the last generation's pace,
        doubled: the report's clean clips are mostly not cached yet, so they are encoded too."""
        report_clips = _clips(self.holdout) + _clips(self.train)
        return 2 * (report_clips * self._clip_seconds() + self._validation_seconds()) + REPORT_OVERHEAD_S

    def stop_reason(self) -> dict[str, Any] | None:
        """Why no further generation runs (None: one more runs): ``{"by": "budget" | "patience" |
        "optimizer" | "max_seconds"}``, with the optimizer's condition names under ``conditions``."""
        c, s = self.config, self.state
        if c.budget is not None and s.evaluations + self._population() > c.budget:
            return {"by": "budget"}
        if c.patience > 0 and s.best_generation >= 0 and s.generation - 1 - s.best_generation >= c.patience:
            return {"by": "patience"}
        conditions = self.backend.stop() if s.generation > 0 else []
        if conditions:
            return {"by": "optimizer", "conditions": conditions}
        validates = self.validation is not None and (s.generation + 1) % c.validate_every == 0
        upcoming = s.last_generation_s + (self._validation_seconds() if validates else 0.0)
        if s.elapsed + upcoming + self._final_seconds() > c.max_seconds:
            return {"by": "max_seconds"}
        return None

    def done(self) -> bool:
        """Budget, patience, the optimizer's own stop, or no time left for one more generation plus the final report."""
        return self.stop_reason() is not None

    def step(self) -> dict[str, Any]:
        """One generation: ask, one batched server call, tell (loss = -objective), log, maybe
        validate, checkpoint. Returns the generation's history entry."""
        t0 = time.monotonic()
        self._start()
        s, g = self.state, self.state.generation
        thetas = self.backend.ask()
        gen = self._generation(thetas, self.train_carriers(g))
        fitness, ranking = gen.fitness, gen.ranking  # fitness: each candidate on its own clips and channels
        self.backend.tell(thetas, [-float(f) for f in ranking])  # the optimizers minimize
        extra = self.backend.log_fields()
        self.folder.log.append(*(
            {"generation": g, "index": i, "evaluation": s.evaluations + i, "fitness": float(f), "clips": cand.num_clips,
             "race_rank": cand.race_rank, "channels": gen.channels[i], **self._line(cand), **extra}
            for i, (f, cand) in enumerate(zip(fitness, gen.candidates))
        ))  # fmt: skip
        best = int(np.argmax(ranking))
        s.generation_best_theta = np.asarray(thetas[best])
        if self.config.lead_channel is not None:
            s.lead = leadchannel.hardest(gen.candidates[best], self.objective)
        if self.validation is None and fitness[best] > s.best_fitness:
            s.best_fitness, s.best_theta, s.best_generation = float(fitness[best]), s.generation_best_theta, g
        clips = sum(c.num_clips for c in gen.candidates)
        s.channel_encodes += gen.encodes
        s.channel_encodes_full += gen.full_encodes
        s.history.append({
            "generation": g, "max": float(fitness[best]), "mean": float(fitness.mean()),
            "best_tpr": self._line(gen.candidates[best])["tpr"], "clip_ids": list(gen.clip_ids), "candidate_clips": clips,
            "channel_encodes": gen.encodes, **({"lead": leadchannel.label(lead), "survivors": gen.survivors} if gen.survivors and (lead := gen.lead) else {}), **extra,
        })  # fmt: skip
        s.generation += 1
        s.evaluations += len(thetas)
        s.last_generation_clips = clips
        s.candidate_clips += clips
        s.last_generation_s = time.monotonic() - t0  # the pace estimate: population only
        validated = self.validation is not None and s.generation % self.config.validate_every == 0
        if validated:
            self.validate()
        s.elapsed += time.monotonic() - t0
        if validated or s.generation == 1 or time.monotonic() - self._checkpointed_at >= CHECKPOINT_EVERY_S:
            self._checkpoint()
        return s.history[-1]

    def _generation(self, thetas: list[np.ndarray], carriers: DatasetCarriers) -> leadchannel.Generation:
        """Score a population: in two stages when ``lead_channel`` is set and the hardest channel is
        known (leadchannel.py), else every candidate through every channel (a race when ``racing``)."""
        c, lead = self.config, self.state.lead
        if c.lead_channel is not None and lead is not None and c.lead_channel < len(thetas):

            def evaluate(indices: Sequence[int], through: leadchannel.Lead | None) -> EvaluateResult:
                return self._evaluate([thetas[i] for i in indices], carriers, racing=c.racing if through is not None else None, lead=through)

            return leadchannel.two_stages(evaluate, len(thetas), lead, c.lead_channel, self.objective)
        return leadchannel.full(self._evaluate(thetas, carriers, racing=c.racing), self.objective)

    def _line(self, cand: CandidateResult) -> dict[str, Any]:
        """Log fields of the candidate's worst codec setting (by objective)."""
        worst = min(cand.codecs, key=self.objective.codec)
        return {k: getattr(worst, k) for k in ("separation", "tpr", "fpr", "clean_mean", "clean_std", "auc", "p_value", "psnr_db")}

    def validate(self) -> None:
        """Score the last generation's best candidate and the back-end's recommendation on the
        validation split; keep either if it beats the kept signature there."""
        s, g = self.state, self.state.generation - 1
        assert self.validation is not None and s.generation_best_theta is not None
        names, thetas = ("best", "mean"), [s.generation_best_theta, self.backend.recommend()]
        result = self._evaluate(thetas, self.validation, null=True)
        values = self.objective(result)
        for i, (name, theta, value) in enumerate(zip(names, thetas, values)):
            entry = {"generation": g, "candidate": name, "fitness": float(value), **self._line(result.candidates[i])}
            self.folder.validation_log.append(entry)
            s.validations.append(entry)
            if value > s.best_fitness:
                s.best_fitness, s.best_theta, s.best_generation = float(value), np.asarray(theta), g
                s.best_by, s.best_candidate = "validation", name
                s.best_validation = runreport.report(result, i, self.objective, self.validation)
        s.validated_generation = g

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Generations until a stop condition holds (:meth:`stop_reason`), or Ctrl-C after a first
        checkpoint (the run goes back to that checkpoint); then the final report."""
        start = time.monotonic()
        if self.state.generation == 0 and self.done():
            raise self._no_generation()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.config.budget, initial=self.state.evaluations, unit="eval", desc=self.config.optimizer)
        try:
            while (reason := self.stop_reason()) is None:
                h = self.step()
                if bar is not None:
                    bar.update(self._population())
                    # docs/optimize.md (the progress bar): kept = the kept signature's selection score, gen_best = this generation's best
                    kept = f"{self.state.best_fitness:.4f}" if math.isfinite(self.state.best_fitness) else "-"
                    bar.set_postfix(kept=kept, gen_best=f"{h['max']:.4f}")
        except KeyboardInterrupt:
            if not self.folder.has_checkpoint():
                raise
            # a generation cut off half-way is not in the checkpoint: report what the checkpoint holds
            self.state = RunState()
            self.resumed = True
            self._resume()
            reason = {"by": "interrupt"}
        finally:
            if bar is not None:
                bar.close()
        self.stopped = reason
        return self.finish(search_s=time.monotonic() - start)

    def _no_generation(self) -> CodecLoopValueError:
        """Why a fresh run cannot run one generation: the limit that stops it, by name."""
        c = self.config
        if c.budget is not None and c.budget < self._population():
            return CodecLoopValueError(f"budget: {c.budget} evaluations are fewer than one generation (popsize {self._population()})")
        return CodecLoopValueError(f"max_seconds: {c.max_seconds:.1f} s leave no time for one generation and the final report (about {REPORT_OVERHEAD_S:.0f} s)")

    def finish(self, search_s: float | None = None) -> dict[str, Any]:
        """Validate the last generation if it was not, save the kept signature, score it on a
        fixed training sample and on the held-out split, write summary.json and the plots."""
        t0 = time.monotonic()
        s, c = self.state, self.config
        if s.generation == 0:
            raise self._no_generation()
        self._start()
        counted = 0.0  # checkpoint seconds, already in elapsed
        if self.validation is not None and s.validated_generation < s.generation - 1:
            self.validate()
            counted = self._checkpoint()
        elif self._checkpointed_generation != s.generation:
            counted = self._checkpoint()  # the generations since the last one (a resume goes on from here)
        assert s.best_theta is not None
        best = self.param(s.best_theta)  # (1, T', H, W, 3)
        self.folder.save_best(best[0])
        train = self._evaluate([s.best_theta], self.train, per_clip=True, null=True)
        held = self._evaluate([s.best_theta], self.holdout, per_clip=True, null=True)
        train_section = runreport.report(train, 0, self.objective, self.train)
        train_section |= {"clips_per_generation": self.train.num_clips, "fresh_clips": c.fresh_clips}
        sections = {"train": train_section, "validation": s.best_validation, "holdout": runreport.report(held, 0, self.objective, self.holdout)}
        fidelity, clips = runreport.fidelity(self.client, c, self.holdout, best[0], leadchannel.hardest(held.candidates[0], self.objective))
        s.elapsed += time.monotonic() - t0 - counted
        summary = {
            "target_fpr": self.objective.target_fpr,
            "objective": self.objective.name,
            "optimizer": c.optimizer,
            "selected": {"by": s.best_by, "generation": s.best_generation, "candidate": s.best_candidate, "score": s.best_fitness},
            **sections,
            "gap": runreport.gaps(sections),
            "fidelity": fidelity,
            "validation_note": self.validation_note or None,
            "stopped": self.stopped,  # None: finish() called without run()
            "generations": s.generation,
            "evaluations": s.evaluations,
            "candidate_clips": s.candidate_clips,  # training clips scored, over all candidates (a race scores fewer)
            # clip x channel evaluations asked, and what every candidate through every channel would have asked
            "channel_encodes": s.channel_encodes,
            "channel_encodes_full": s.channel_encodes_full,
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

"""What a run optimizes and how: :class:`RunConfig` (every back-end) and :class:`GradientConfig`
(the gradient back-ends' own settings). Checked when made; the run layer (:mod:`codecloop.run`)
reads them, :mod:`codecloop.runcheck` compares them on resume."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from codecloop.objectives import FROM_MEANS, Objective
from codecloop.types import Channel, Codec, DatasetCarriers, Racing
from codecloop_wire.defaults import EPSILON, SCORER
from codecloop_wire.errors import CodecLoopValueError


@dataclass(frozen=True)
class GradientConfig:
    """Settings of the gradient back-ends (``torch-ste``, ``torch-hybrid``, ``proxy:*``; :mod:`codecloop.gradient`)."""

    lr: float = 0.1  # Adam's learning rate, on the signature's pre-tanh values
    qp_offset: float = 5.0  # proxy QP = crf + qp_offset; calibrated at CRF 28 (calibrate_qp_offset, docs/history.md)
    temperature: float = 0.3  # of the proxy's tanh / soft rounding


@dataclass
class RunConfig:
    """What to optimize and how.

    Every ``num_clips`` is an upper bound: 0, or more than the split holds, means the whole split.
    ``train.num_clips`` is the number of training clips per generation (a fresh draw each
    generation when ``fresh_clips``; the fixed sample ``train`` itself otherwise, and in the report;
    the gradient back-ends take their gradient on that fixed sample).
    ``validation`` None (or a dataset without that split: a warning) selects by training objective.
    ``budget`` (evaluations) None = unlimited; ``max_seconds`` is a wall-clock limit that includes
    the validation calls and the final report. ``optimizer`` is a name in the back-end registry
    (:func:`codecloop.backends.names`); ``popsize`` is ignored by the gradient back-ends (one
    candidate per generation: the current signature), which read ``gradient``.
    """

    optimizer: str = "cma"  # "cma", "cma:diagonal", "nevergrad:<registry name>", "torch-ste", ... (codecloop.backends.names())
    epsilon: float = EPSILON
    codecs: tuple[Codec, ...] = (Codec(),)
    channels: tuple[Channel, ...] = ()  # evaluated after codecs; the worst of all decides
    scorer: str = SCORER
    objective: Objective = field(default_factory=Objective)  # a name (str) is turned into Objective(name)
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
    gradient: GradientConfig | None = None  # the gradient back-ends' settings (None: GradientConfig())
    # several codec settings / channels: score every candidate through the hardest one, the best
    # lead_channel of them through all (codecloop.leadchannel); None: every candidate through all
    lead_channel: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.objective, str):
            self.objective = Objective(self.objective)
        if self.racing is not None:
            if self.objective.name not in FROM_MEANS:
                raise CodecLoopValueError(f"racing: a race ranks by separation or centred-separation; objective {self.objective.name!r} is neither")
            weight = self.objective.centre_weight if self.objective.name == "centred-separation" else 0.0
            if self.racing.centre_weight is not None and self.racing.centre_weight != weight:
                raise CodecLoopValueError(f"racing.centre_weight: {self.racing.centre_weight}; the objective {self.objective.name!r} needs {weight}")
            self.racing = replace(self.racing, centre_weight=weight)
        if self.lead_channel is not None and not 1 <= self.lead_channel < self.popsize:
            raise CodecLoopValueError(f"lead_channel: {self.lead_channel} survivors; allowed: 1 to popsize - 1 = {self.popsize - 1}")
        if self.popsize < 2:
            raise CodecLoopValueError(f"popsize: {self.popsize} must be >= 2")
        if self.validate_every < 1:
            raise CodecLoopValueError(f"validate_every: {self.validate_every} must be >= 1")
        if self.seed < 0:
            raise CodecLoopValueError(f"seed: {self.seed} must be >= 0")
        if self.budget is None and not math.isfinite(self.max_seconds) and self.patience == 0:
            raise CodecLoopValueError("budget, max_seconds, patience: all unlimited; give at least one limit")

"""Every request default, in one place.

The server fills an unset ``optional`` field of a request with these values (the proto's comments
state the same numbers; tests/test_defaults.py checks both, and that an empty request resolves to
them). The SDK leaves a field unset unless the caller gives it, and the CLI shows and uses these
as its own defaults, so no other module writes a default value.
"""

from __future__ import annotations

from typing import Final

EPSILON: Final = 4 / 255  # L-inf budget in [0, 1] units: four uint8 levels
TARGET_FPR: Final = 1 / 64  # decision rule: calibrate the threshold on the clean scores to this FPR

# carriers drawn from a server-side dataset
DATASET: Final = "embedded"
SPLIT: Final = "train"
NUM_CLIPS: Final = 32
SEED: Final = 0

# codec settings
CODEC: Final = "libx264"
CRF: Final = 28.0
PRESET: Final = "medium"
PIX_FMT: Final = "yuv420p"
GOP: Final = 250  # x264's own keyint default
FPS: Final = 25

SCORER: Final = "blind"

# channels
RESIZE_FILTER: Final = "bicubic"  # a resize step's filter, and how a channel's output returns to the carriers' size
INPUT_FPS: Final = FPS  # the carriers' frame rate as a channel sees it

# racing (successive halving inside one request)
RACE_FIRST_CLIPS: Final = 4  # clips of round 1 (fewer when the carriers have fewer)
RACE_ETA: Final = 2  # each round keeps 1/eta of the candidates and gives them eta times the clips
RACE_FINALISTS: Final = 1  # candidates that get every clip
RACE_CENTRE_WEIGHT: Final = 0.0  # race value = separation - centre_weight * |clean_mean|

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    INT8: _ClassVar[DType]
    UINT8: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
INT8: DType
UINT8: DType

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data", "scale")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    scale: float
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ...) -> None: ...

class DatasetCarriers(_message.Message):
    __slots__ = ("dataset", "split", "num_clips", "seed")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    split: str
    num_clips: int
    seed: int
    def __init__(self, dataset: _Optional[str] = ..., split: _Optional[str] = ..., num_clips: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Carriers(_message.Message):
    __slots__ = ("dataset", "clips")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CLIPS_FIELD_NUMBER: _ClassVar[int]
    dataset: DatasetCarriers
    clips: Tensor
    def __init__(self, dataset: _Optional[_Union[DatasetCarriers, _Mapping]] = ..., clips: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class CodecSettings(_message.Message):
    __slots__ = ("codec", "crf", "preset", "pix_fmt", "gop", "fps", "x264_asm", "x264_build", "qp", "bitrate_kbps")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CRF_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    PIX_FMT_FIELD_NUMBER: _ClassVar[int]
    GOP_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    X264_ASM_FIELD_NUMBER: _ClassVar[int]
    X264_BUILD_FIELD_NUMBER: _ClassVar[int]
    QP_FIELD_NUMBER: _ClassVar[int]
    BITRATE_KBPS_FIELD_NUMBER: _ClassVar[int]
    codec: str
    crf: float
    preset: str
    pix_fmt: str
    gop: int
    fps: int
    x264_asm: str
    x264_build: str
    qp: int
    bitrate_kbps: int
    def __init__(self, codec: _Optional[str] = ..., crf: _Optional[float] = ..., preset: _Optional[str] = ..., pix_fmt: _Optional[str] = ..., gop: _Optional[int] = ..., fps: _Optional[int] = ..., x264_asm: _Optional[str] = ..., x264_build: _Optional[str] = ..., qp: _Optional[int] = ..., bitrate_kbps: _Optional[int] = ...) -> None: ...

class ResizeStep(_message.Message):
    __slots__ = ("width", "height", "scale", "filter", "max_short_side")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MAX_SHORT_SIDE_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    scale: float
    filter: str
    max_short_side: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., scale: _Optional[float] = ..., filter: _Optional[str] = ..., max_short_side: _Optional[int] = ...) -> None: ...

class CropStep(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class FrameRateStep(_message.Message):
    __slots__ = ("fps",)
    FPS_FIELD_NUMBER: _ClassVar[int]
    fps: int
    def __init__(self, fps: _Optional[int] = ...) -> None: ...

class ChannelStep(_message.Message):
    __slots__ = ("resize", "crop", "frame_rate", "encode")
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_FIELD_NUMBER: _ClassVar[int]
    ENCODE_FIELD_NUMBER: _ClassVar[int]
    resize: ResizeStep
    crop: CropStep
    frame_rate: FrameRateStep
    encode: CodecSettings
    def __init__(self, resize: _Optional[_Union[ResizeStep, _Mapping]] = ..., crop: _Optional[_Union[CropStep, _Mapping]] = ..., frame_rate: _Optional[_Union[FrameRateStep, _Mapping]] = ..., encode: _Optional[_Union[CodecSettings, _Mapping]] = ...) -> None: ...

class Channel(_message.Message):
    __slots__ = ("name", "steps", "map_back_filter", "input_fps", "preset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MAP_BACK_FILTER_FIELD_NUMBER: _ClassVar[int]
    INPUT_FPS_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    name: str
    steps: _containers.RepeatedCompositeFieldContainer[ChannelStep]
    map_back_filter: str
    input_fps: int
    preset: str
    def __init__(self, name: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[ChannelStep, _Mapping]]] = ..., map_back_filter: _Optional[str] = ..., input_fps: _Optional[int] = ..., preset: _Optional[str] = ...) -> None: ...

class Scorer(_message.Message):
    __slots__ = ("name", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ...) -> None: ...

class DecisionRule(_message.Message):
    __slots__ = ("threshold", "target_fpr")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    target_fpr: float
    def __init__(self, threshold: _Optional[float] = ..., target_fpr: _Optional[float] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("candidates", "epsilon", "carriers", "codecs", "scorer", "decision", "per_clip_scores", "channels", "racing", "null_model")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CARRIERS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    PER_CLIP_SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    RACING_FIELD_NUMBER: _ClassVar[int]
    NULL_MODEL_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Tensor]
    epsilon: float
    carriers: Carriers
    codecs: _containers.RepeatedCompositeFieldContainer[CodecSettings]
    scorer: Scorer
    decision: DecisionRule
    per_clip_scores: bool
    channels: _containers.RepeatedCompositeFieldContainer[Channel]
    racing: Racing
    null_model: NullModel
    def __init__(self, candidates: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., epsilon: _Optional[float] = ..., carriers: _Optional[_Union[Carriers, _Mapping]] = ..., codecs: _Optional[_Iterable[_Union[CodecSettings, _Mapping]]] = ..., scorer: _Optional[_Union[Scorer, _Mapping]] = ..., decision: _Optional[_Union[DecisionRule, _Mapping]] = ..., per_clip_scores: _Optional[bool] = ..., channels: _Optional[_Iterable[_Union[Channel, _Mapping]]] = ..., racing: _Optional[_Union[Racing, _Mapping]] = ..., null_model: _Optional[_Union[NullModel, _Mapping]] = ...) -> None: ...

class NullModel(_message.Message):
    __slots__ = ("fprs",)
    FPRS_FIELD_NUMBER: _ClassVar[int]
    fprs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, fprs: _Optional[_Iterable[float]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class OperatingPoint(_message.Message):
    __slots__ = ("fpr", "threshold", "n", "true_positives", "tpr", "tpr_ci", "false_positives", "observed_fpr", "observed_fpr_ci")
    FPR_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TRUE_POSITIVES_FIELD_NUMBER: _ClassVar[int]
    TPR_FIELD_NUMBER: _ClassVar[int]
    TPR_CI_FIELD_NUMBER: _ClassVar[int]
    FALSE_POSITIVES_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FPR_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FPR_CI_FIELD_NUMBER: _ClassVar[int]
    fpr: float
    threshold: float
    n: int
    true_positives: int
    tpr: float
    tpr_ci: Interval
    false_positives: int
    observed_fpr: float
    observed_fpr_ci: Interval
    def __init__(self, fpr: _Optional[float] = ..., threshold: _Optional[float] = ..., n: _Optional[int] = ..., true_positives: _Optional[int] = ..., tpr: _Optional[float] = ..., tpr_ci: _Optional[_Union[Interval, _Mapping]] = ..., false_positives: _Optional[int] = ..., observed_fpr: _Optional[float] = ..., observed_fpr_ci: _Optional[_Union[Interval, _Mapping]] = ...) -> None: ...

class Racing(_message.Message):
    __slots__ = ("first_clips", "eta", "finalists", "centre_weight")
    FIRST_CLIPS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    FINALISTS_FIELD_NUMBER: _ClassVar[int]
    CENTRE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    first_clips: int
    eta: int
    finalists: int
    centre_weight: float
    def __init__(self, first_clips: _Optional[int] = ..., eta: _Optional[int] = ..., finalists: _Optional[int] = ..., centre_weight: _Optional[float] = ...) -> None: ...

class CodecResult(_message.Message):
    __slots__ = ("codec", "clean_mean", "clean_std", "poisoned_mean", "poisoned_std", "separation", "threshold", "tpr", "fpr", "auc", "p_value", "p_value_test", "psnr_db", "clean_bytes_mean", "poisoned_bytes_mean", "clean_scores", "poisoned_scores", "channel", "num_clips", "true_positives", "false_positives", "tpr_ci", "fpr_ci", "auc_ci", "auc_ci_method", "null_model", "tpr_at_fpr", "video_tpr_at_fpr", "clean_p_values", "poisoned_p_values", "clean_z", "poisoned_z")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CLEAN_MEAN_FIELD_NUMBER: _ClassVar[int]
    CLEAN_STD_FIELD_NUMBER: _ClassVar[int]
    POISONED_MEAN_FIELD_NUMBER: _ClassVar[int]
    POISONED_STD_FIELD_NUMBER: _ClassVar[int]
    SEPARATION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TPR_FIELD_NUMBER: _ClassVar[int]
    FPR_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_TEST_FIELD_NUMBER: _ClassVar[int]
    PSNR_DB_FIELD_NUMBER: _ClassVar[int]
    CLEAN_BYTES_MEAN_FIELD_NUMBER: _ClassVar[int]
    POISONED_BYTES_MEAN_FIELD_NUMBER: _ClassVar[int]
    CLEAN_SCORES_FIELD_NUMBER: _ClassVar[int]
    POISONED_SCORES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIPS_FIELD_NUMBER: _ClassVar[int]
    TRUE_POSITIVES_FIELD_NUMBER: _ClassVar[int]
    FALSE_POSITIVES_FIELD_NUMBER: _ClassVar[int]
    TPR_CI_FIELD_NUMBER: _ClassVar[int]
    FPR_CI_FIELD_NUMBER: _ClassVar[int]
    AUC_CI_FIELD_NUMBER: _ClassVar[int]
    AUC_CI_METHOD_FIELD_NUMBER: _ClassVar[int]
    NULL_MODEL_FIELD_NUMBER: _ClassVar[int]
    TPR_AT_FPR_FIELD_NUMBER: _ClassVar[int]
    VIDEO_TPR_AT_FPR_FIELD_NUMBER: _ClassVar[int]
    CLEAN_P_VALUES_FIELD_NUMBER: _ClassVar[int]
    POISONED_P_VALUES_FIELD_NUMBER: _ClassVar[int]
    CLEAN_Z_FIELD_NUMBER: _ClassVar[int]
    POISONED_Z_FIELD_NUMBER: _ClassVar[int]
    codec: CodecSettings
    clean_mean: float
    clean_std: float
    poisoned_mean: float
    poisoned_std: float
    separation: float
    threshold: float
    tpr: float
    fpr: float
    auc: float
    p_value: float
    p_value_test: str
    psnr_db: float
    clean_bytes_mean: float
    poisoned_bytes_mean: float
    clean_scores: _containers.RepeatedScalarFieldContainer[float]
    poisoned_scores: _containers.RepeatedScalarFieldContainer[float]
    channel: Channel
    num_clips: int
    true_positives: int
    false_positives: int
    tpr_ci: Interval
    fpr_ci: Interval
    auc_ci: Interval
    auc_ci_method: str
    null_model: str
    tpr_at_fpr: _containers.RepeatedCompositeFieldContainer[OperatingPoint]
    video_tpr_at_fpr: _containers.RepeatedCompositeFieldContainer[OperatingPoint]
    clean_p_values: _containers.RepeatedScalarFieldContainer[float]
    poisoned_p_values: _containers.RepeatedScalarFieldContainer[float]
    clean_z: _containers.RepeatedScalarFieldContainer[float]
    poisoned_z: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, codec: _Optional[_Union[CodecSettings, _Mapping]] = ..., clean_mean: _Optional[float] = ..., clean_std: _Optional[float] = ..., poisoned_mean: _Optional[float] = ..., poisoned_std: _Optional[float] = ..., separation: _Optional[float] = ..., threshold: _Optional[float] = ..., tpr: _Optional[float] = ..., fpr: _Optional[float] = ..., auc: _Optional[float] = ..., p_value: _Optional[float] = ..., p_value_test: _Optional[str] = ..., psnr_db: _Optional[float] = ..., clean_bytes_mean: _Optional[float] = ..., poisoned_bytes_mean: _Optional[float] = ..., clean_scores: _Optional[_Iterable[float]] = ..., poisoned_scores: _Optional[_Iterable[float]] = ..., channel: _Optional[_Union[Channel, _Mapping]] = ..., num_clips: _Optional[int] = ..., true_positives: _Optional[int] = ..., false_positives: _Optional[int] = ..., tpr_ci: _Optional[_Union[Interval, _Mapping]] = ..., fpr_ci: _Optional[_Union[Interval, _Mapping]] = ..., auc_ci: _Optional[_Union[Interval, _Mapping]] = ..., auc_ci_method: _Optional[str] = ..., null_model: _Optional[str] = ..., tpr_at_fpr: _Optional[_Iterable[_Union[OperatingPoint, _Mapping]]] = ..., video_tpr_at_fpr: _Optional[_Iterable[_Union[OperatingPoint, _Mapping]]] = ..., clean_p_values: _Optional[_Iterable[float]] = ..., poisoned_p_values: _Optional[_Iterable[float]] = ..., clean_z: _Optional[_Iterable[float]] = ..., poisoned_z: _Optional[_Iterable[float]] = ...) -> None: ...

class CandidateResult(_message.Message):
    __slots__ = ("fitness", "codecs", "fitness_mean", "num_clips", "race_rank")
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    FITNESS_MEAN_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIPS_FIELD_NUMBER: _ClassVar[int]
    RACE_RANK_FIELD_NUMBER: _ClassVar[int]
    fitness: float
    codecs: _containers.RepeatedCompositeFieldContainer[CodecResult]
    fitness_mean: float
    num_clips: int
    race_rank: int
    def __init__(self, fitness: _Optional[float] = ..., codecs: _Optional[_Iterable[_Union[CodecResult, _Mapping]]] = ..., fitness_mean: _Optional[float] = ..., num_clips: _Optional[int] = ..., race_rank: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("results", "scorer", "epsilon", "num_clips", "clip_ids", "clip_sources", "source_names")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIPS_FIELD_NUMBER: _ClassVar[int]
    CLIP_IDS_FIELD_NUMBER: _ClassVar[int]
    CLIP_SOURCES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAMES_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CandidateResult]
    scorer: str
    epsilon: float
    num_clips: int
    clip_ids: _containers.RepeatedScalarFieldContainer[int]
    clip_sources: _containers.RepeatedScalarFieldContainer[int]
    source_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, results: _Optional[_Iterable[_Union[CandidateResult, _Mapping]]] = ..., scorer: _Optional[str] = ..., epsilon: _Optional[float] = ..., num_clips: _Optional[int] = ..., clip_ids: _Optional[_Iterable[int]] = ..., clip_sources: _Optional[_Iterable[int]] = ..., source_names: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluateEvent(_message.Message):
    __slots__ = ("started", "progress", "result")
    class Started(_message.Message):
        __slots__ = ("num_candidates", "scorer", "epsilon", "num_clips", "clip_ids", "clip_tasks", "clip_sources", "source_names")
        NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
        SCORER_FIELD_NUMBER: _ClassVar[int]
        EPSILON_FIELD_NUMBER: _ClassVar[int]
        NUM_CLIPS_FIELD_NUMBER: _ClassVar[int]
        CLIP_IDS_FIELD_NUMBER: _ClassVar[int]
        CLIP_TASKS_FIELD_NUMBER: _ClassVar[int]
        CLIP_SOURCES_FIELD_NUMBER: _ClassVar[int]
        SOURCE_NAMES_FIELD_NUMBER: _ClassVar[int]
        num_candidates: int
        scorer: str
        epsilon: float
        num_clips: int
        clip_ids: _containers.RepeatedScalarFieldContainer[int]
        clip_tasks: int
        clip_sources: _containers.RepeatedScalarFieldContainer[int]
        source_names: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, num_candidates: _Optional[int] = ..., scorer: _Optional[str] = ..., epsilon: _Optional[float] = ..., num_clips: _Optional[int] = ..., clip_ids: _Optional[_Iterable[int]] = ..., clip_tasks: _Optional[int] = ..., clip_sources: _Optional[_Iterable[int]] = ..., source_names: _Optional[_Iterable[str]] = ...) -> None: ...
    class Progress(_message.Message):
        __slots__ = ("clip_tasks_done", "clip_tasks")
        CLIP_TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
        CLIP_TASKS_FIELD_NUMBER: _ClassVar[int]
        clip_tasks_done: int
        clip_tasks: int
        def __init__(self, clip_tasks_done: _Optional[int] = ..., clip_tasks: _Optional[int] = ...) -> None: ...
    class Result(_message.Message):
        __slots__ = ("index", "result")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        RESULT_FIELD_NUMBER: _ClassVar[int]
        index: int
        result: CandidateResult
        def __init__(self, index: _Optional[int] = ..., result: _Optional[_Union[CandidateResult, _Mapping]] = ...) -> None: ...
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    started: EvaluateEvent.Started
    progress: EvaluateEvent.Progress
    result: EvaluateEvent.Result
    def __init__(self, started: _Optional[_Union[EvaluateEvent.Started, _Mapping]] = ..., progress: _Optional[_Union[EvaluateEvent.Progress, _Mapping]] = ..., result: _Optional[_Union[EvaluateEvent.Result, _Mapping]] = ...) -> None: ...

class TranscodeRequest(_message.Message):
    __slots__ = ("carriers", "signature", "epsilon", "codec", "include_input", "channel")
    CARRIERS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INPUT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    carriers: Carriers
    signature: Tensor
    epsilon: float
    codec: CodecSettings
    include_input: bool
    channel: Channel
    def __init__(self, carriers: _Optional[_Union[Carriers, _Mapping]] = ..., signature: _Optional[_Union[Tensor, _Mapping]] = ..., epsilon: _Optional[float] = ..., codec: _Optional[_Union[CodecSettings, _Mapping]] = ..., include_input: _Optional[bool] = ..., channel: _Optional[_Union[Channel, _Mapping]] = ...) -> None: ...

class TranscodeResponse(_message.Message):
    __slots__ = ("decoded", "input", "encoded_bytes", "clip_ids", "codec", "channel")
    DECODED_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    ENCODED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CLIP_IDS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    decoded: Tensor
    input: Tensor
    encoded_bytes: _containers.RepeatedScalarFieldContainer[int]
    clip_ids: _containers.RepeatedScalarFieldContainer[int]
    codec: CodecSettings
    channel: Channel
    def __init__(self, decoded: _Optional[_Union[Tensor, _Mapping]] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., encoded_bytes: _Optional[_Iterable[int]] = ..., clip_ids: _Optional[_Iterable[int]] = ..., codec: _Optional[_Union[CodecSettings, _Mapping]] = ..., channel: _Optional[_Union[Channel, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "split_clips", "clip_shape", "digest", "description", "split_policy", "split_sources", "carrier_policy", "sources", "skipped", "folder")
    class SplitClipsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SplitSourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SourceNames
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SourceNames, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_CLIPS_FIELD_NUMBER: _ClassVar[int]
    CLIP_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POLICY_FIELD_NUMBER: _ClassVar[int]
    SPLIT_SOURCES_FIELD_NUMBER: _ClassVar[int]
    CARRIER_POLICY_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    split_clips: _containers.ScalarMap[str, int]
    clip_shape: _containers.RepeatedScalarFieldContainer[int]
    digest: str
    description: str
    split_policy: str
    split_sources: _containers.MessageMap[str, SourceNames]
    carrier_policy: str
    sources: _containers.RepeatedCompositeFieldContainer[SourceClips]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedFile]
    folder: str
    def __init__(self, name: _Optional[str] = ..., split_clips: _Optional[_Mapping[str, int]] = ..., clip_shape: _Optional[_Iterable[int]] = ..., digest: _Optional[str] = ..., description: _Optional[str] = ..., split_policy: _Optional[str] = ..., split_sources: _Optional[_Mapping[str, SourceNames]] = ..., carrier_policy: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[SourceClips, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[SkippedFile, _Mapping]]] = ..., folder: _Optional[str] = ...) -> None: ...

class SourceClips(_message.Message):
    __slots__ = ("name", "split_clips")
    class SplitClipsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_CLIPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    split_clips: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., split_clips: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SkippedFile(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SourceNames(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class ScorerInfo(_message.Message):
    __slots__ = ("name", "description", "default_params", "null_model", "clip_shapes")
    class DefaultParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    NULL_MODEL_FIELD_NUMBER: _ClassVar[int]
    CLIP_SHAPES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    default_params: _containers.ScalarMap[str, float]
    null_model: bool
    clip_shapes: _containers.RepeatedCompositeFieldContainer[ClipShape]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., default_params: _Optional[_Mapping[str, float]] = ..., null_model: _Optional[bool] = ..., clip_shapes: _Optional[_Iterable[_Union[ClipShape, _Mapping]]] = ...) -> None: ...

class ClipShape(_message.Message):
    __slots__ = ("frames", "height", "width")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    frames: int
    height: int
    width: int
    def __init__(self, frames: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_candidates", "max_clips", "max_clip_pixels", "max_work_pixels", "max_codecs", "max_message_bytes", "max_client_calls")
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIPS_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIP_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORK_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_CODECS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENT_CALLS_FIELD_NUMBER: _ClassVar[int]
    max_candidates: int
    max_clips: int
    max_clip_pixels: int
    max_work_pixels: int
    max_codecs: int
    max_message_bytes: int
    max_client_calls: int
    def __init__(self, max_candidates: _Optional[int] = ..., max_clips: _Optional[int] = ..., max_clip_pixels: _Optional[int] = ..., max_work_pixels: _Optional[int] = ..., max_codecs: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_client_calls: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("versions", "datasets", "codecs", "presets", "pix_fmts", "scorers", "limits", "workers", "load", "codec_info", "channel_presets", "resize_filters")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LoadEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    PIX_FMTS_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    CODEC_INFO_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_PRESETS_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FILTERS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.ScalarMap[str, str]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    codecs: _containers.RepeatedScalarFieldContainer[str]
    presets: _containers.RepeatedScalarFieldContainer[str]
    pix_fmts: _containers.RepeatedScalarFieldContainer[str]
    scorers: _containers.RepeatedCompositeFieldContainer[ScorerInfo]
    limits: Limits
    workers: int
    load: _containers.ScalarMap[str, float]
    codec_info: _containers.RepeatedCompositeFieldContainer[CodecInfo]
    channel_presets: _containers.RepeatedCompositeFieldContainer[ChannelPreset]
    resize_filters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, versions: _Optional[_Mapping[str, str]] = ..., datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ..., codecs: _Optional[_Iterable[str]] = ..., presets: _Optional[_Iterable[str]] = ..., pix_fmts: _Optional[_Iterable[str]] = ..., scorers: _Optional[_Iterable[_Union[ScorerInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., workers: _Optional[int] = ..., load: _Optional[_Mapping[str, float]] = ..., codec_info: _Optional[_Iterable[_Union[CodecInfo, _Mapping]]] = ..., channel_presets: _Optional[_Iterable[_Union[ChannelPreset, _Mapping]]] = ..., resize_filters: _Optional[_Iterable[str]] = ...) -> None: ...

class CodecInfo(_message.Message):
    __slots__ = ("codec", "decoder", "crf_range", "qp_range", "bitrate", "presets", "default_preset", "min_size", "version")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    DECODER_FIELD_NUMBER: _ClassVar[int]
    CRF_RANGE_FIELD_NUMBER: _ClassVar[int]
    QP_RANGE_FIELD_NUMBER: _ClassVar[int]
    BITRATE_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PRESET_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    codec: str
    decoder: str
    crf_range: _containers.RepeatedScalarFieldContainer[float]
    qp_range: _containers.RepeatedScalarFieldContainer[int]
    bitrate: bool
    presets: _containers.RepeatedScalarFieldContainer[str]
    default_preset: str
    min_size: int
    version: str
    def __init__(self, codec: _Optional[str] = ..., decoder: _Optional[str] = ..., crf_range: _Optional[_Iterable[float]] = ..., qp_range: _Optional[_Iterable[int]] = ..., bitrate: _Optional[bool] = ..., presets: _Optional[_Iterable[str]] = ..., default_preset: _Optional[str] = ..., min_size: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class ChannelPreset(_message.Message):
    __slots__ = ("name", "description", "channels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    channels: _containers.RepeatedCompositeFieldContainer[Channel]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., channels: _Optional[_Iterable[_Union[Channel, _Mapping]]] = ...) -> None: ...

class ScoreClipsRequest(_message.Message):
    __slots__ = ("detector", "clips", "signature")
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    CLIPS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    detector: str
    clips: Tensor
    signature: Tensor
    def __init__(self, detector: _Optional[str] = ..., clips: _Optional[_Union[Tensor, _Mapping]] = ..., signature: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreClipsResponse(_message.Message):
    __slots__ = ("scores", "z", "p_values", "null_model")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    P_VALUES_FIELD_NUMBER: _ClassVar[int]
    NULL_MODEL_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    z: _containers.RepeatedScalarFieldContainer[float]
    p_values: _containers.RepeatedScalarFieldContainer[float]
    null_model: str
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., z: _Optional[_Iterable[float]] = ..., p_values: _Optional[_Iterable[float]] = ..., null_model: _Optional[str] = ...) -> None: ...

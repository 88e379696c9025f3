"""The type, choices and range of every setting, one dataclass per config group.

The values live in ``conf/`` (YAML, the one place of defaults); these classes say what a value may
be, so that ``settings.load`` rejects a bad one before any data is read or any run is made. Groups
whose keys depend on the option chosen (a model's builder, an optimizer, a tracker) are checked by
the schema of that option and stay plain mappings, for ``hydra.utils.instantiate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from histo_exp.settings.fields import Bounds, Searchable, bounded

FRACTION = {"lo": 0.0, "hi": 1.0}


def optional(lo: float | None = None) -> Any:
    """A count only some options of a group have (``max_trials`` for bayesian, not hyperband)."""
    return field(default=None, metadata={"bounds": Bounds(lo)})


@dataclass(frozen=True)
class Paths:
    work_dir: str
    output_dir: str
    mlflow_dir: str
    cache_dir: str


@dataclass(frozen=True)
class Augment:
    flip: Searchable[bool]
    rotate90: Searchable[bool]
    hed: Searchable[float] = bounded(**FRACTION)
    brightness: Searchable[float] = bounded(**FRACTION)
    contrast: Searchable[float] = bounded(**FRACTION)
    saturation: Searchable[float] = bounded(**FRACTION)
    hue: Searchable[float] = bounded(0.0, 0.5)


@dataclass(frozen=True)
class Synthetic:
    patients: int = bounded(3)
    patches_per_patient: int = bounded(1)
    classes: int = bounded(2)  # 2: IDC's layout; more: classes "class 0" ... in the folder layout


@dataclass(frozen=True)
class Data:
    name: str
    root: str | None
    color: Literal["rgb", "gray"]
    normalize: Literal["none", "per_patch"]
    small_patches: Literal["pad", "resize", "drop"]
    augment: Augment
    cache_dir: str
    source: Literal["idc", "folder", "manifest", "pcam"]
    group_by: Literal["patient", "site"]
    classes: list[str] | None
    patient_pattern: str | None
    site_pattern: str | None
    manifest: str | None
    image_size: int = bounded(2)
    val_fraction: float = bounded(0.0, 1.0, lo_open=True, hi_open=True)
    test_fraction: float = bounded(0.0, 1.0, hi_open=True)
    seed: int = bounded(0, 2**32 - 1)
    workers: int | None = bounded(1)
    max_bad_fraction: float = bounded(**FRACTION)
    synthetic: Synthetic | None = None


@dataclass(frozen=True)
class Distributed:
    role: Literal["chief", "worker"] | None
    host: str
    worker_id: int | str | None
    session: str | None
    port: int = bounded(1, 65535)
    timeout_s: float = bounded(0.0, lo_open=True)


TUNER_ONLY = ("cv_folds", "cv_auto_folds", "cv_auto_max_patients", "distributed", "resume_space")  # the runner's, not KerasTuner's


@dataclass(frozen=True)
class Tuner:
    target: str
    objective: Any
    directory: str
    project_name: str
    overwrite: bool
    resume_space: Literal["check", "saved"]
    distributed: Distributed
    seed: int = bounded(0, 2**32 - 1)
    max_consecutive_failed_trials: int = bounded(1)
    cv_folds: int | Literal["auto"] = bounded(1)
    cv_auto_folds: int = bounded(2)
    cv_auto_max_patients: int = bounded(1)
    max_trials: int | None = optional(1)
    num_initial_points: int | None = optional(0)
    max_epochs: int | None = optional(1)
    factor: int | None = optional(2)
    hyperband_iterations: int | None = optional(1)


@dataclass(frozen=True)
class Trainer:
    lr_scaling: Literal["none", "linear", "sqrt"]
    data_on_device: bool | Literal["auto"]
    class_weight: Literal["auto", "none"] | None
    refit: Literal["none", "trainval", "all"]
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"]
    epochs: int = bounded(1)
    batch_size: int = bounded(1)
    lr_base_batch: int = bounded(1)
    steps_per_execution: int = bounded(1)
    loader_workers: int = bounded(1)
    steps_per_epoch: int | None = bounded(1)
    early_stopping_patience: int | None = bounded(1)
    verbose: int = bounded(0, 2)


@dataclass(frozen=True)
class Eval:
    tta: bool | Literal["auto"]
    threshold: float | Literal["youden", "f1"] = bounded(**FRACTION)
    batch_size: int = bounded(1)
    bootstrap: int = bounded(0)
    max_maps: int = bounded(0)
    ensemble: int = bounded(1)
    plots: bool = True


@dataclass(frozen=True)
class MlflowLogger:
    target: str
    tracking_uri: str
    artifact_location: str
    experiment_name: str
    register_model: bool
    registered_model_name: str
    system_metrics: bool
    unsent_dir: str
    system_metrics_interval: float = bounded(0.0, lo_open=True)
    http_timeout_s: float = bounded(0.0, lo_open=True)
    http_retries: int = bounded(0)


@dataclass(frozen=True)
class NoLogger:
    target: str


@dataclass(frozen=True)
class Cnn:
    target: str
    name: str
    activation: Searchable[str]
    batch_norm: Searchable[bool]
    head: Searchable[Literal["flatten", "gap"]]
    blocks: Searchable[int] = bounded(1)
    filters: Searchable[int] = bounded(1)
    max_filters: Searchable[int] = bounded(1)
    kernel_size: Searchable[int] = bounded(1)
    dropout: Searchable[float] = bounded(0.0, 1.0, hi_open=True)
    convs_per_block: Searchable[int] = bounded(1)
    dense_units: list[Searchable[int]] = bounded(1)


@dataclass(frozen=True)
class Optimizer:
    """What every optimizer option has: the Keras class, its name and a learning rate."""

    target: str
    name: str
    learning_rate: Searchable[float] = bounded(0.0, lo_open=True)


@dataclass(frozen=True)
class Adam(Optimizer):
    beta_1: Searchable[float] = bounded(0.0, 1.0, hi_open=True)
    beta_2: Searchable[float] = bounded(0.0, 1.0, hi_open=True)
    epsilon: Searchable[float] = bounded(0.0, lo_open=True)


@dataclass(frozen=True)
class RMSprop(Optimizer):
    rho: Searchable[float] = bounded(0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class SGD(Optimizer):
    nesterov: Searchable[bool]
    momentum: Searchable[float] = bounded(**FRACTION)


# The options of the groups whose keys depend on the option: by `name` (model, optimizer) or by the
# class built (logger). An option not listed (a new architecture) has its search-space specs checked only.
MODELS: dict[str, type] = {"cnn": Cnn}
OPTIMIZERS: dict[str, type] = {"adam": Adam, "rmsprop": RMSprop, "sgd": SGD}
LOGGERS: dict[str, type] = {"histo_exp.tracking.MlflowTracker": MlflowLogger,
                            "histo_exp.tracking.NullTracker": NoLogger}

"""The run configuration. schema.py is the schema: one frozen dataclass per section (model, teachers, method,
data, optim, schedule, train) with its defaults and choices; code reads typed fields (`cfg.train.seed`).
`RunConfig.from_dict` and `load_config` check every key before any work starts and raise `ConfigError`
naming the key; `to_dict()` gives back the nested dict a YAML file holds."""
from .load import bundled_config, load_config
from .parse import ConfigError, apply_overrides
from .schema import (
    DataConfig,
    EMAConfig,
    KDConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TeacherConfig,
    TrainConfig,
    TranslatorConfig,
)

__all__ = ["ConfigError", "DataConfig", "EMAConfig", "KDConfig", "MethodConfig", "ModelConfig", "OptimConfig", "RunConfig",
           "ScheduleConfig", "TeacherConfig", "TrainConfig", "TranslatorConfig", "apply_overrides",
           "bundled_config", "load_config"]

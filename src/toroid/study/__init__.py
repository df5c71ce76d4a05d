"""Studies: a config, a graph of keyed tasks, a resumable results store, executors (local
processes, Ray) and the report with a verdict per claim."""

from toroid.study.config import PRESETS, StudyConfig, StudyConfigError, load_config
from toroid.study.run import StudyStatus, read_config, run_study, status

__all__ = [
    "PRESETS",
    "StudyConfig",
    "StudyConfigError",
    "StudyStatus",
    "load_config",
    "read_config",
    "run_study",
    "status",
]

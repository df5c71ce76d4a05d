"""Every error toroid raises on bad input; the CLI prints them in one line and exits 2."""


class ToroidError(Exception):
    """Base class: the message names the offending value and what would be valid."""


class InvalidArgumentError(ToroidError, ValueError):
    """An argument outside its valid set or range."""


class DataError(ToroidError):
    """A dataset that is unknown, unavailable, missing, truncated or malformed."""


class DatasetNotAvailableError(DataError):
    """The files or the optional package a dataset needs are not on this machine."""


class CheckpointError(ToroidError):
    """A checkpoint that is missing, corrupt or does not match its metadata."""


class TrainingDivergedError(ToroidError):
    """The training loss became NaN or infinite."""


class ResumeMismatchError(ToroidError):
    """Resuming training state that was written for a different configuration."""


class UnsupportedModelError(ToroidError):
    """A model, module or operation that toroid cannot analyse."""


class NonFiniteError(InvalidArgumentError):
    """Weights or data holding NaN or infinite values, which no measurement can use."""

"""Errors that the command-line entry points turn into one clear line and a non-zero exit."""


class ConfigError(ValueError):
    """A configuration value, name or path is wrong; the message names it and what was expected."""


class DataError(ConfigError):
    """A data root is missing or malformed; the message names the path and what was expected."""


class CheckpointError(ConfigError):
    """A checkpoint is missing, truncated, untrusted, or of another architecture."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"training diverged at epoch {epoch}: loss is {loss}")
        self.epoch = epoch
        self.loss = loss

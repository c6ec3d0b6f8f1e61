"""The errors a training run raises for its user: each message says what is wrong and what to change."""


class TrainError(Exception):
    """A training run refused to start or to go on. A command line prints the message and exits with status 2."""


class ConfigError(TrainError, ValueError):
    """An invalid flag or combination of flags (an unknown task, a negative learning rate, ``--resume`` with no
    checkpoint directory, ...)."""


class CheckpointError(TrainError, RuntimeError):
    """No usable checkpoint where one was required, or one that does not fit the run."""

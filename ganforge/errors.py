class UsageError(ValueError):
    """A mistake in what the user asked for (a ValueError too). The CLI prints it as one line and exits
    with code 2."""


class TrainingDiverged(Exception):
    """Losses became NaN or infinite. The CLI prints it as one line and exits with code 1."""


class CallbackFailed(Exception):
    """A training callback raised; the run was checkpointed first. The CLI prints it as one line (the
    traceback is in the run's ``error.txt``) and exits with code 1."""


class Interrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint; exit code 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class ExportMismatch(Exception):
    """An exported model's outputs differ from PyTorch's beyond the tolerance; exit code 1."""

class UsageError(Exception):
    """A mistake in what the user asked for. The CLI prints it as one line and exits with code 2."""


class TrainingDiverged(Exception):
    """Losses became NaN or infinite. The CLI prints it as one line and exits with code 1."""

"""Errors the pipeline raises for bad input, so entry points can print one clear line and exit non-zero."""


class PipelineError(Exception):
    """Base class: a problem with the user's input, not a bug."""


class ConfigError(PipelineError):
    """A config key has a bad value, an unknown name, or an impossible combination."""


class DataError(PipelineError):
    """A saved dataset or artefact is missing, corrupt, or inconsistent."""


class TrainingError(PipelineError):
    """Training diverged (NaN/inf loss) or could not continue."""

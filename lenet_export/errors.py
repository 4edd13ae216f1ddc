"""Typed errors. The CLI turns each into a one-line message and a non-zero exit."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class LenetExportError(Exception):
    """Base class: a problem the user can fix (bad input, missing data, bad files)."""

    exit_code = 2


class DataError(LenetExportError):
    """Data set missing, malformed or not matching what the model expects."""


class CheckpointError(LenetExportError):
    """Checkpoint missing, truncated, foreign or inconsistent."""


class ConfigError(LenetExportError):
    """Invalid option values or an output folder that holds something else."""


class ExportError(LenetExportError):
    """Export failed or its artefacts disagree with the checkpoint."""


class ArtefactError(LenetExportError):
    """An exported artefact cannot be read or run (missing, garbage, or the wrong model)."""


class ParityError(LenetExportError):
    """A runtime disagrees with the reference beyond tolerance."""

    exit_code = 1


class RuntimeInputError(LenetExportError, ValueError):
    """Input given to the embedding runtime has the wrong shape, dtype or values."""

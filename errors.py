"""The problems the library reports to its callers, and the exit statuses of the scripts.

Library modules raise these; they never name a command-line flag. A script turns each into
one line of advice naming its own flag (``utils.run_main``, ``distributed.run_worker``) and
exits with the status of :class:`ExitCode`. Any other exception is a bug: it keeps its traceback
and the script exits with status 1.
"""
from enum import IntEnum

__all__ = ["PascalError", "ConfigError", "CheckpointError", "CheckpointMismatch", "ModelError",
           "DataError", "ExitCode"]


class PascalError(Exception):
    """A problem with what the caller gave (a value, a file, a model, data), not a bug.

    ``field``: the configuration field or model property it concerns, when one does;
    ``advice``: what to change, naming configuration fields as Python spells them
    (``resume='auto'``, ``overwrite=True``) or in backticks (```epochs```), which a script
    translates into its flags (:func:`utils.error_line`).
    """

    def __init__(self, message, field=None, advice=None):
        super().__init__(message)
        self.message, self.field, self.advice = message, field, advice

    def __str__(self):
        return self.message + (f": {self.advice}" if self.advice else "")


class ConfigError(PascalError, ValueError):
    """A configuration value that cannot work: ``field`` names it, ``value`` is what was
    given, ``rule`` what it must satisfy, ending ``got VALUE`` or followed by the value
    (the message is ``"{field} {rule}"`` or ``"{field} {value} {rule}"``). A ValueError too,
    as Python's own checks of values are."""

    def __init__(self, field, value, rule, advice=None):
        self.value, self.rule = value, rule if "got " in rule else f"{value} {rule}"
        super().__init__(f"{field} {self.rule}", field=field, advice=advice)


class CheckpointError(PascalError):
    """A checkpoint file that cannot be used: missing, unreadable, or not what it should be."""

    def __init__(self, path, message, field=None, advice=None):
        super().__init__(f"{path} {message}" if path is not None else message, field=field,
                         advice=advice)
        self.path = path


class CheckpointMismatch(CheckpointError):
    """A checkpoint holds another model or run than the one asked for: ``field`` (a
    ``model_args`` key such as ``arch``, ``activation``, ``dataset``, ``dropout``) is
    ``stored`` in the file and ``given`` by the caller."""

    def __init__(self, path, field, stored, given, advice=None):
        super().__init__(path, f"holds {field} {stored!r}, not {given!r}", field=field,
                         advice=advice)
        self.stored, self.given = stored, given


class DataError(PascalError):
    """A dataset that cannot be read as asked: missing, wrongly laid out, unreadable images."""


class ModelError(PascalError, ValueError):
    """A network the method cannot handle, or values it refuses (a level list that does not
    fit the network, a threshold <= 0, an input of another shape than the one converted for).
    A ValueError too."""


class ExitCode(IntEnum):
    """The exit statuses of every script; 128 + N means it stopped on signal N."""

    OK = 0
    FAILED = 1       # a bug (traceback shown) or a lost peer process (one line)
    USAGE = 2        # bad input: one line saying the problem and the fix
    DIVERGED = 3     # the training loss became NaN/inf; the last good checkpoint is kept
    SIGNAL = 128     # + the signal's number: stopped on request after writing a checkpoint

"""Exceptions and warnings raised by astromorph.

Every error astromorph raises on purpose derives from `AstromorphError`; every
warning from `AstromorphWarning`, itself an
`~astropy.utils.exceptions.AstropyUserWarning`.
"""
from astropy.utils.exceptions import AstropyUserWarning

__all__ = [
    "AstromorphError",
    "AstromorphWarning",
    "ProviderFallbackWarning",
    "ModelNotFoundError",
    "InvalidModelNameError",
    "ModelCardError",
    "ChecksumMismatchError",
    "MissingRuntimeError",
    "InputShapeError",
    "InputError",
    "InputDTypeError",
    "InputNotFoundError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "OutputExistsError",
    "OutputError",
    "ModelLoadError",
    "MissingDependencyError",
    "UnusableInputWarning",
    "AmbiguousInputWarning",
    "InputRangeWarning",
    "DuplicateSourceWarning",
    "LossyOutputWarning",
    "ProvenanceMismatchError",
    "MissingProvenanceWarning",
    "SimilarLabelsWarning",
    "FewRowsWarning",
]


class AstromorphError(Exception):
    """Base class of the errors astromorph raises."""

    def __reduce__(self):
        # pickled as Python pickles the built-in base (the class called with its args, and
        # its attributes), but by a method of its own: tblib, which dask.distributed uses
        # to send a worker's error back, rebuilds an error whose class keeps the built-in
        # __reduce__ as ``cls.__new__(cls)``, which for InputNotFoundError (a ValueError
        # and a FileNotFoundError) is ValueError.__new__, unable to make an OSError: the
        # caller got a bare Exception holding the error's repr
        return super().__reduce__()


class AstromorphWarning(AstropyUserWarning):
    """Base class of the warnings astromorph emits."""


class ProviderFallbackWarning(AstromorphWarning):
    """A requested execution provider is unavailable or failed; another one is used."""


class ModelNotFoundError(AstromorphError, LookupError):
    """No shipped model has this name, or no model file exists at this path."""


class InvalidModelNameError(AstromorphError, ValueError):
    """A model name that is not a plain registry name (e.g. contains ``..`` or ``/``)."""


class ModelCardError(AstromorphError, ValueError):
    """A model card is missing, unreadable, lacks a required field or has a field of the
    wrong type or shape (the message names the field and its value)."""


class ChecksumMismatchError(AstromorphError):
    """The sha256 of a model file differs from the one recorded in its card (or, where a
    pickled `~astromorph.Model` is loaded again, from the file it was pickled with).
    ``path``, ``expected`` and ``actual`` hold the file and both digests."""

    def __init__(self, path, expected, actual, *, message=None):
        self.path, self.expected, self.actual = str(path), expected, actual
        super().__init__(message or (
            f"model file {self.path} has sha256 {actual}, but its card records {expected}; "
            "the file was modified or corrupted: refusing to load it"))

    def __reduce__(self):
        # pickle (process pools, Dask workers): ``args`` is the message alone, which
        # __init__ cannot take; rebuild from the three values and the message
        return (_checksum_mismatch, (type(self), self.path, self.expected, self.actual,
                                     str(self)), self.__dict__)


def _checksum_mismatch(cls, path, expected, actual, message):
    """A `ChecksumMismatchError` (or subclass) again, from what its ``__reduce__`` gave."""
    return cls(path, expected, actual, message=message)


class MissingRuntimeError(AstromorphError, ImportError):
    """ONNX Runtime is not installed, or is installed but cannot be imported."""


class InputShapeError(AstromorphError, ValueError):
    """An input array's shape does not match the model card."""


class InputError(AstromorphError, ValueError):
    """An input (array, file, table, image) cannot be used; the message names it."""


class InputDTypeError(InputError, TypeError):
    """An input array's dtype is not a real number type (e.g. complex, object or string);
    a `TypeError` too, as numpy raises for such arrays."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input path, directory or glob pattern matched no readable file (the message
    names it). An `InputError` (so a `ValueError`) as every other unusable input, and a
    `FileNotFoundError` as Python raises for a missing file."""


class InvalidArgumentError(AstromorphError, ValueError):
    """An argument value that cannot be used (the message names it)."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of a type that cannot be used (e.g. a string or None where a number or a
    WCS is needed; the message names it); a `TypeError` too, as Python raises for such
    arguments."""


class OutputExistsError(AstromorphError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


class OutputError(AstromorphError, OSError):
    """An output cannot be written (read-only or full disk, a directory in the way...);
    the destination is left as it was. Where an `OSError` caused it, it is chained
    (``__cause__``), its reason is in the message and its ``errno`` (e.g.
    ``errno.ENOSPC``, ``errno.EACCES``) is this error's ``errno``."""


class ModelLoadError(AstromorphError, RuntimeError):
    """ONNX Runtime cannot load a model file (e.g. corrupt, or not an ONNX graph)."""


class MissingDependencyError(AstromorphError, ImportError):
    """An optional dependency needed for this input or output is not installed."""


class UnusableInputWarning(AstromorphWarning):
    """Some inputs could not be scored; their rows are flagged and say why."""


class AmbiguousInputWarning(AstromorphWarning):
    """An input's shape can be read in two ways; the message says which one is used."""


class InputRangeWarning(AstromorphWarning):
    """Network-ready input outside the range the model's preprocessing gives, e.g. 8-bit
    values (0 to 255) where the model takes display values in [0, 1]: the model is run, but
    its outputs mean little. The message names the range found and the preprocessing
    function that makes the model's input."""


class DuplicateSourceWarning(AstromorphWarning):
    """Several rows of a result name the same source (an alert id given twice: twice in one
    packet file, or one packet under two file names); every row is kept, the message says how
    many ids repeat and names the first few."""


class LossyOutputWarning(AstromorphWarning):
    """An output format cannot hold part of a table (e.g. CSV: meta, units, descriptions);
    the message says what is not written."""


class ProvenanceMismatchError(AstromorphError, ValueError):
    """A fitted `~astromorph.embeddings.LabelHead` or `~astromorph.embeddings.GaussianMixture`
    applied to vectors made by another embedding model (or version) than the one it was
    fitted on, or an image query of a `~astromorph.embeddings.SimilarityIndex` embedded with
    another model than the one that made the indexed vectors; the message names both.
    ``fitted`` (the head's, or the query model's) and ``table`` hold the two provenances
    (dicts with ``model``, ``version`` and ``sha256``)."""

    def __init__(self, message, fitted=None, table=None):
        self.fitted, self.table = fitted, table
        super().__init__(message)


class MissingProvenanceWarning(AstromorphWarning):
    """A table does not say which embedding model made its vectors, so a fitted head or
    mixture applied to it cannot check that they come from the model it was fitted on, and
    an image query of its vectors is embedded with the shipped ``embedding`` model,
    unchecked."""


class SimilarLabelsWarning(AstromorphWarning):
    """Labels that differ only by case or surrounding whitespace (e.g. ``"Spiral"``,
    ``"spiral "`` and ``"spiral"``) are fitted as separate classes; the message names the
    groups. They are not merged: normalise the labels first if they mean one class."""


class FewRowsWarning(AstromorphWarning):
    """A fit with fewer rows than its parameters need: e.g. a
    `~astromorph.embeddings.GaussianMixture` with full covariances and fewer rows per
    component than dimensions, whose covariances are then set by the regularisation
    (``reg_covar``) more than by the data, or a `~astromorph.LabelHead` class with fewer
    labelled rows than the cross-validation of ``C`` has folds. The message gives the
    numbers and what to do."""

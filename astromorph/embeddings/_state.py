"""What a fitted `LabelHead` or `GaussianMixture` remembers: the embedding model that made
the vectors it was fitted on (checked when it is applied to a table), and its JSON file."""
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from .._warnings import warn
from ..exceptions import (InputError, InvalidArgumentTypeError, MissingProvenanceWarning,
                          ProvenanceMismatchError)

__all__ = ["table_provenance", "table_run", "as_provenance", "check_provenance", "describe",
           "save_state", "load_state", "FORMAT_VERSION", "Saved"]

#: Version of the JSON files written by ``save``; ``load`` reads this version.
FORMAT_VERSION = 1

#: Provenance fields and the table meta keys (after ``astromorph_`` or
#: ``astromorph_run<k>_``) they come from.
_FIELDS = {"model": "model", "version": "model_version", "sha256": "model_sha256"}
_RUN_KEY = re.compile(
    r"astromorph_(run\d+_)?(model|model_version|model_sha256|model_precision|columns)")


def table_run(meta, column="embedding"):
    """The provenance keys (``model``, ``model_version``, ``model_sha256``,
    ``model_precision``, ``columns``, those present) of the run that made ``column`` of a
    table with this ``meta``, as `table_provenance` chooses it; None when no run says."""
    runs = {}
    for key, value in meta.items():
        found = _RUN_KEY.fullmatch(str(key).lower())
        if found:
            runs.setdefault(found.group(1) or "", {})[found.group(2)] = value
    listing = sorted((p for p, run in runs.items()
                      if column in str(run.get("columns", "")).split(",")),
                     key=lambda p: (p != "", -int(p[3:-1] or 0) if p else 0))
    if listing:
        return runs[listing[0]]
    if "" in runs and "columns" not in runs[""]:
        return runs[""]
    return None


def table_provenance(meta, column="embedding"):
    """The embedding model that made ``column`` of a table with this ``meta``.

    The provenance keys of the run that lists ``column`` in its ``astromorph_columns``
    (the latest run, ``astromorph_*``, or an earlier one kept as ``astromorph_run<k>_*``);
    for a table whose latest run does not list its columns, that run's.

    Returns
    -------
    dict or None
        ``model``, ``version`` and ``sha256`` (those that are known), or None when the
        meta does not say which model made the column.
    """
    run = table_run(meta, column)
    if run is None:
        return None
    found = {field: str(run[key]) for field, key in _FIELDS.items()
             if run.get(key) not in (None, "")}
    return found if {"model", "sha256"} & set(found) else None


def as_provenance(value, column="embedding"):
    """The ``provenance=`` argument of ``fit`` as a dict (or None).

    Accepts None, a table (the run that made ``column``: `table_provenance`), a loaded
    model (`astromorph.load_model`) or a dict with ``model``, ``version`` and/or
    ``sha256`` (the ``provenance_`` of a fitted head).
    """
    from astropy.table import Table

    if value is None:
        return None
    if isinstance(value, Table):
        return table_provenance(value.meta, column)
    if all(hasattr(value, a) for a in ("name", "version", "sha256")):  # a Model
        return {"model": str(value.name), "version": str(value.version),
                "sha256": str(value.sha256)}
    if isinstance(value, Mapping) and set(value) <= set(_FIELDS) \
            and {"model", "sha256"} & set(value):
        return {k: str(value[k]) for k in _FIELDS if value.get(k) not in (None, "")}
    raise InvalidArgumentTypeError(
        f"provenance must be the table the embeddings come from, a model from "
        f"astromorph.load_model or a dict with 'model', 'version' and 'sha256', got "
        f"{type(value).__name__} {str(value)[:60]!r}")


def describe(provenance):
    """``'embedding 1.0 (sha256 ...)'``."""
    text = " ".join(provenance[k] for k in ("model", "version") if k in provenance)
    return f"{text} (sha256 {provenance['sha256']})" if "sha256" in provenance else text


def _differ(a, b):
    if "sha256" in a and "sha256" in b:
        return a["sha256"] != b["sha256"]
    return any(a[k] != b[k] for k in ("model", "version") if k in a and k in b)


def check_provenance(fitted, table, column, what, check):
    """Refuse (`ProvenanceMismatchError`) to apply ``what`` (e.g. "this LabelHead"), fitted
    on vectors of the model ``fitted``, to ``column`` of ``table`` made by another model;
    warn (`MissingProvenanceWarning`) when ``table`` does not say. Nothing when ``check``
    is False or nothing was recorded at the fit."""
    if not check or fitted is None:
        return
    found = table_provenance(table.meta, column)
    if found is None:
        warn(f"the table does not say which embedding model made its {column!r} column (no "
             f"astromorph_model/astromorph_model_sha256 meta for it): cannot check that its "
             f"vectors come from {describe(fitted)}, which {what} was fitted on",
             MissingProvenanceWarning)
    elif _differ(fitted, found):
        raise ProvenanceMismatchError(
            f"{what} was fitted on vectors of embedding model {describe(fitted)}, but column "
            f"{column!r} of this table was made by {describe(found)}: its outputs would be "
            "meaningless. Fit again on vectors of this model, or pass "
            "check_provenance=False if you know the two give the same vectors",
            fitted=fitted, table=found)


def save_state(kind, state, path, overwrite):
    """Write ``state`` (a `to_dict`) of a ``kind`` ("LabelHead"...) as JSON, atomically."""
    from .._io import atomic_output

    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"path must be a file path, got {path!r}")
    text = json.dumps({"kind": kind, "format_version": FORMAT_VERSION, **state}, indent=1,
                      allow_nan=False)
    with atomic_output(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(text + "\n", encoding="utf-8")
    return Path(path)


def load_state(kind, path):
    """The state of a ``kind`` saved by `save_state`, without ``kind`` and
    ``format_version``; `InputError` naming ``path`` for any other file."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"path must be a file path, got {path!r}")
    from .._io import check_input_file

    path = check_input_file(path, f"saved {kind}")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{str(path)!r} is not a saved {kind} (not JSON: {exc})") from None
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if not isinstance(state, dict) or "kind" not in state:
        raise InputError(f"{str(path)!r} is not a saved {kind} (no 'kind' field)")
    if state["kind"] != kind:
        raise InputError(f"{str(path)!r} holds a {state['kind']!s:.40}, not a {kind}; load it "
                         f"with {state['kind']!s:.40}.load")
    if state.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{str(path)!r} has format_version {state.get('format_version')!r}; "
                         f"this astromorph reads version {FORMAT_VERSION}")
    return {k: v for k, v in state.items() if k not in ("kind", "format_version")}


class Saved:
    """``save``/``load`` of a fitted object as JSON, through its ``to_dict``/``from_dict``
    (the class names the kind of file: a `LabelHead` never loads a `GaussianMixture` file)."""

    def save(self, path, *, overwrite=False):
        """Write the fitted object to a JSON file, atomically.

        The file holds the kind and a format version, the fitted quantities of ``to_dict``
        and ``provenance_`` (the embedding model the vectors came from), human-readable;
        ``load`` reads it back.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (e.g. ``my_head.json``).
        overwrite : bool, optional
            Replace an existing file (default: raise
            `~astromorph.exceptions.OutputExistsError`).

        Returns
        -------
        pathlib.Path
            ``path``.

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            The object is not fitted yet.
        astromorph.exceptions.OutputExistsError, astromorph.exceptions.OutputError
            ``path`` exists (without ``overwrite``) or cannot be written; it is left as
            it was.
        """
        from ..preprocessing._checks import check_bool

        return save_state(type(self).__name__, self.to_dict(), path,
                          check_bool(overwrite, "overwrite"))

    @classmethod
    def load(cls, path):
        """A fitted object from a file written by ``save``.

        Parameters
        ----------
        path : str or os.PathLike

        Returns
        -------
        object
            An instance of this class.

        Raises
        ------
        astromorph.exceptions.InputNotFoundError
            No such file (an `InputError` too).
        astromorph.exceptions.InputError
            The file is not a saved object of this class (not JSON, another kind or format
            version, or inconsistent contents); the message names it.
        """
        from ..exceptions import InvalidArgumentError

        kind = cls.__name__
        state = load_state(kind, path)
        try:
            return cls.from_dict(state)
        except InvalidArgumentError as exc:
            raise InputError(f"{str(path)!r} is not a usable saved {kind}: {exc}") from None

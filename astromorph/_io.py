"""Atomic file output: tables (by extension) and any file written through a temp file.

Every file astromorph writes goes through `atomic_output`: the content is
written to a temporary file in the destination directory, flushed and
fsync'ed, and moved over the destination with `os.replace`, so a reader sees
either the old file or the complete new one, never a partial file, and a
failure leaves the destination untouched. A destination that is a symbolic link
is kept: the file it points to is replaced (written in that file's directory).
"""
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from ._warnings import catch_warnings, warn
from .exceptions import (AstromorphError, InputError, InputNotFoundError, InvalidArgumentError,
                         InvalidArgumentTypeError, LossyOutputWarning, MissingDependencyError,
                         OutputError, OutputExistsError)

__all__ = ["atomic_output", "interrupts_deferred", "check_input_file", "check_output",
           "close_files_left_open",
           "check_distinct_outputs", "output_error", "card_reads_back", "array_columns",
           "check_multidimensional", "check_columns_held", "check_fits_names",
           "plain_votable_columns", "read_parquet", "restore_parquet_shapes", "table_format",
           "write_table", "TABLE_FORMATS", "READ_ONLY_TABLE_FORMATS"]

log = logging.getLogger(__name__)

#: Output table formats by file-name ending (checked longest first).
TABLE_FORMATS = {
    ".ecsv": "ascii.ecsv",
    ".csv": "ascii.csv",
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".parquet": "parquet",
}

#: Table formats read but not written (catalogues as VizieR, SIMBAD and IRSA serve them).
READ_ONLY_TABLE_FORMATS = {
    ".vot": "votable",
    ".votable": "votable",
    ".xml": "votable",
    ".tbl": "ascii.ipac",
    ".ipac": "ascii.ipac",
}


#: Meta keys astropy writes to FITS as one card per list entry.
_FITS_LIST_KEYS = ("comments", "comment", "history")


def table_format(path, *, read=False):
    """The astropy ``format=`` for a table path, from its extension.

    Parameters
    ----------
    path : str or os.PathLike
    read : bool, optional
        The table is to be read (astropy reads Parquet with pyarrow and pandas;
        `READ_ONLY_TABLE_FORMATS` too) rather than written (with pyarrow).

    Returns
    -------
    str
        One of the values of `TABLE_FORMATS` (or, to read, `READ_ONLY_TABLE_FORMATS`).

    Raises
    ------
    astromorph.exceptions.InvalidArgumentError
        For an extension that is not in `TABLE_FORMATS` (or, to read,
        `READ_ONLY_TABLE_FORMATS`).
    astromorph.exceptions.MissingDependencyError
        For ``.parquet`` without pyarrow (or, to read it, pandas).
    """
    name = Path(path).name.lower()
    formats = {**TABLE_FORMATS, **READ_ONLY_TABLE_FORMATS} if read else TABLE_FORMATS
    for ext in sorted(formats, key=len, reverse=True):
        if name.endswith(ext):
            fmt = formats[ext]
            if fmt == "parquet":
                for module in ("pyarrow", "pandas") if read else ("pyarrow",):
                    try:
                        importlib.import_module(module)
                    except ImportError as exc:
                        raise MissingDependencyError(
                            f"{'reading' if read else 'writing'} {str(path)!r} needs {module}; "
                            "install it with `pip install 'astromorph[parquet]'`") from exc
            return fmt
    raise InvalidArgumentError(
        f"cannot tell the table format of {str(path)!r} from its extension; use one of "
        f"{', '.join(formats)}")


def check_input_file(path, what="input"):
    """``path`` as a `pathlib.Path` (a leading ``~`` expanded, as `predict_files` and
    astropy's readers do), once it names an existing regular file.

    The one check of every public entry point that reads a file it is given (the
    inputs of `predict_files`, the images of `annotate`, a catalogue on the command
    line, a saved head or mixture, a query image), so that a missing file raises the
    same error, with the same message, everywhere.

    Parameters
    ----------
    path : str or os.PathLike
    what : str, optional
        What the file is, for the message (``"input"``, ``"image"``, ``"catalogue"``...).

    Raises
    ------
    astromorph.exceptions.InputNotFoundError
        Nothing is at ``path`` (an empty path, a broken link): "<what> '<path>' does not
        exist" (the path as expanded).
    astromorph.exceptions.InputError
        ``path`` is a directory or another file that is not a regular one (a FIFO, whose
        read would block).
    """
    name = os.path.expanduser(os.fspath(path))
    if not name:  # Path("") would be the working directory
        raise InputNotFoundError(f"{what} '' is an empty path")
    if not os.path.exists(name):
        raise InputNotFoundError(f"{what} {name!r} does not exist")
    if os.path.isdir(name):
        raise InputError(f"{what} {name!r} is a directory, not a file")
    if not os.path.isfile(name):
        raise InputError(f"{what} {name!r} is not a regular file")
    return Path(name)


def close_files_left_open(exc):
    """Close the file astropy opened for a FITS file that ``exc`` says it could not open.

    astropy extracts a zip archive's FITS file into a temporary file, and leaves that file
    open (and on disk) where the extraction fails (a bad CRC, a stream cut short): its
    ``_File`` object lives on in the frames of ``exc``'s traceback, for as long as the error
    is kept (chained, or held to be reported), and then the garbage collector closes it
    with a ResourceWarning. The ``_File`` objects in those frames are closed here (closing a
    temporary file removes it). Call it where ``exc`` is caught, before it is kept.
    """
    from astropy.io.fits.file import _File

    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, _File) and not owner.closed:
            with contextlib.suppress(Exception):  # (a file half opened: closed as can be)
                owner.close()
        tb = tb.tb_next


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _link_target(path):
    """The file output ``path`` names: ``path`` itself, or, for a symbolic link (or a chain
    of them), the file it points to, which an output replaces, the link kept; that file
    need not exist (a dangling link is written through, as ``>`` in a shell does).
    `InvalidArgumentError` for a link that never reaches a file (a loop)."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # realpath leaves a loop unresolved
        raise InvalidArgumentError(f"output {str(path)!r} is a symbolic link that leads to "
                                   "no file (a loop)")
    return target


def _destination_directory(path, overwrite):
    """The file output ``path`` names (`_link_target`) and its folder, after checking the
    path can take a new file."""
    target = _link_target(path)
    if target.is_dir():
        raise InvalidArgumentError(f"output {str(path)!r} is a directory")
    if os.path.lexists(path) and not overwrite:  # a dangling link too: its name is taken
        if target == path:
            raise OutputExistsError(f"{str(path)!r} exists; pass overwrite=True (--overwrite) "
                                    "to replace it")
        missing = "" if target.exists() else ", which does not exist"
        raise OutputExistsError(f"{str(path)!r} exists (a symbolic link to {str(target)!r}"
                                f"{missing}); pass overwrite=True (--overwrite) to write the "
                                "file it points to, the link kept")
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidArgumentError(f"output directory {str(directory)!r} does not exist")
    return target, directory


def _output_path(path):
    """``Path(path)``, or `InvalidArgumentError` for a path ending with a separator (a
    folder: ``Path`` would drop the separator, and 'out.ecsv/' would become a file);
    `InvalidArgumentTypeError` for what is no file path (None, a number, bytes)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        raise InvalidArgumentTypeError(f"output must be a file path, got {path!r}")
    name = os.fspath(path)
    if name.endswith(("/", os.sep)):
        raise InvalidArgumentError(f"output {name!r} names a folder: give a file name in it")
    return Path(path)


def check_output(path, *, overwrite=False, table=False, inputs=()):
    """Check, before any work, that ``path`` can be written as an output.

    Parameters
    ----------
    path : str or os.PathLike
    overwrite : bool, optional
        An existing file may be replaced.
    table : bool, optional
        ``path`` is a table: its extension must name a format (`table_format`).
    inputs : iterable of paths, optional
        Files this run reads: the output must not be one of them.

    Raises
    ------
    OutputExistsError, InvalidArgumentError, OutputError
        `InvalidArgumentTypeError` for an ``overwrite`` that is no boolean.
    """
    from .preprocessing._checks import check_bool

    overwrite = check_bool(overwrite, "overwrite")  # "no" is true for Python
    path = _output_path(path)
    if table:
        table_format(path)
    real = os.path.realpath(path)
    for p in inputs:
        if os.path.realpath(p) == real:
            raise InvalidArgumentError(f"output {str(path)!r} is one of the inputs; write the "
                                       "results elsewhere")
    _, directory = _destination_directory(path, overwrite)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {str(directory)!r} (permission denied or a "
                          "read-only file system)")


def array_columns(table):
    """The names of the columns of ``table`` whose cells are arrays: multidimensional
    columns (an embedding, a stamp cube) and columns of Python objects holding arrays,
    lists or dicts (a VOTable's variable-length arrays), which CSV cannot hold."""
    from collections.abc import Hashable

    def objects_of_arrays(col):  # (an object column can only be looked at cell by cell)
        return getattr(col, "dtype", None) == object and not all(
            isinstance(cell, Hashable) for cell in np.ma.getdata(col).ravel())

    return [name for name, col in zip(table.colnames, table.itercols())
            if len(getattr(col, "shape", ())) > 1 or objects_of_arrays(col)]


def check_multidimensional(path, columns):
    """Check, before any work, that a table with the multidimensional ``columns`` (e.g.
    ``embedding``) can be written to ``path``: CSV cannot hold them.

    Raises
    ------
    InvalidArgumentError
        For a CSV ``path`` and any such column.
    """
    if columns and table_format(path) == "ascii.csv":
        raise InvalidArgumentError(
            f"CSV cannot hold the multidimensional column(s) {', '.join(columns)} of this "
            f"table; write {str(path)!r} as .ecsv, .fits or .parquet instead")


#: The formats a column that one format cannot hold is offered to, in the order named.
_HOLDING_FORMATS = {".ecsv": "ascii.ecsv", ".fits": "fits", ".parquet": "parquet"}

#: FITS variable-length array columns (TFORM ``P``) astropy writes and reads back: the
#: kinds and largest item sizes of their element types (int8 reads back as bool, unsigned
#: 16-, 32- and 64-bit integers overflow, float128, datetimes and text fail).
_FITS_ARRAY_KINDS = {"b": 1, "u": 1, "i": 8, "f": 8, "c": 16}


def _ecsv_unheld(col):
    """Why ECSV cannot hold ``col``, or None: astropy writes the cells of object and
    multidimensional columns as JSON (each cell through ``tolist()``)."""
    import json

    if col.dtype != object and col.ndim > 1 and not np.prod(col.shape[1:]) \
            and (0 in col.shape[1:-1] or not len(col)):
        return (f"rows of no values (shape {col.shape[1:]}), which astropy's ECSV reader "
                "does not read back")
    if col.dtype != object and (col.ndim < 2 or col.dtype.kind != "S" or not col.size):
        return None
    data, masked = np.ma.getdata(col), np.ma.getmaskarray(col)
    if col.dtype != object:  # bytes arrays: JSON has no bytes
        return "arrays of bytes, which JSON cannot hold"
    if masked.ndim > 1:
        masked = masked.reshape(len(col), -1).all(axis=1)
    cells = [c.tolist() if hasattr(c, "tolist") else c for c in data[~masked]]
    try:
        json.dumps(cells)
    except (TypeError, ValueError):
        bad = sorted({type(c).__name__ for c in cells if not _json_able(c)})
        return f"values of type {', '.join(bad)}, which JSON cannot hold"
    return None


def _json_able(value):
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _array_cells(col):
    """The element types of the cells of object column ``col`` as 1-D arrays, or why they
    are not (a scalar, an array of more than one dimension, a list for Parquet...)."""
    cells = np.ma.getdata(col).ravel()
    if col.ndim > 1:
        return "cells in more than one dimension"
    if not len(cells):
        return "no rows, from which to tell the type of its arrays"
    try:
        dims = np.array([np.ndim(c) for c in cells])
    except ValueError:  # numpy refuses ragged nested lists
        return "nested lists of unequal lengths, not arrays"
    if (dims == 0).any():
        kinds = sorted({type(c).__name__ for c in cells[dims == 0]})
        return f"values that are no arrays ({', '.join(kinds)})"
    if (dims > 1).any():
        return "arrays of more than one dimension (their shape would be lost)"
    return {np.asarray(c).dtype for c in cells}


def _fits_unheld(col):
    """Why FITS cannot hold ``col``, or None: an object column is written as a FITS
    variable-length array column, of 1-D arrays of one numeric type."""
    if col.dtype != object:  # (datetimes and long doubles: "Illegal format")
        if col.dtype.kind in "Mm" or (col.dtype.kind in "fc" and col.dtype.itemsize
                                      > _FITS_ARRAY_KINDS[col.dtype.kind]):
            return f"{col.dtype} values, which FITS has no column type for"
        return None
    types = _array_cells(col)
    if isinstance(types, str):
        return types
    if len(types) > 1:
        return f"arrays of more than one type ({', '.join(sorted(map(str, types)))})"
    (dtype,) = types
    if _FITS_ARRAY_KINDS.get(dtype.kind, 0) < dtype.itemsize or dtype.str[1:] == "i1":
        return f"arrays of {dtype}, which no FITS variable-length array holds"
    return None


def _parquet_unheld(col):
    """Why Parquet (as astropy writes it with pyarrow) cannot hold ``col``, or None: an
    object column is written as lists of 1-D numpy arrays of one type; a column of rows
    of no values is written but cannot be read back."""
    import pyarrow as pa

    if col.ndim > 1 and col.dtype != object and not np.prod(col.shape[1:]):
        return f"rows of no values (shape {col.shape[1:]}), which pyarrow cannot read back"
    if col.dtype.names:  # a structured column: astropy writes each field as a column
        return None
    if col.dtype != object:
        dtype = col.dtype
    else:
        types = _array_cells(col)
        if isinstance(types, str):
            return types
        if not all(isinstance(c, np.ndarray) for c in np.ma.getdata(col)):
            return "lists or other sequences, not numpy arrays"
        if len(types) > 1:
            return f"arrays of more than one type ({', '.join(sorted(map(str, types)))})"
        (dtype,) = types
    if col.dtype.kind in "Mm" and col.ndim > 1:
        return f"rows of more than one {dtype} value, which astropy cannot write"
    try:  # (a date or time as a timestamp or duration of its unit: `_write_parquet`)
        pa.from_numpy_dtype(dtype if dtype.kind in "Mm" else dtype.type)
    except (pa.ArrowException, TypeError, NotImplementedError):
        return f"{'arrays of ' if col.dtype == object else ''}{dtype}, which pyarrow cannot type"
    if col.dtype == np.dtype("M8[s]"):  # (Parquet's timestamps: ms, us, ns; pyarrow writes ms)
        seconds = np.ma.getdata(col).view(np.int64)
        seconds = seconds[seconds != np.iinfo(np.int64).min]  # (NaT: null)
        if np.any(np.abs(seconds) > np.iinfo(np.int64).max // 1000):
            return ("datetime64[s] beyond the range of int64 milliseconds (292 million years "
                    "from 1970), which Parquet holds seconds as")
    return None


_UNHELD = {"ascii.ecsv": _ecsv_unheld, "fits": _fits_unheld, "parquet": _parquet_unheld}


def _unheld_columns(table, fmt):
    """{column name: why format ``fmt`` cannot hold it} for the plain (numpy) columns of
    ``table``."""
    unheld = _UNHELD.get(fmt)
    if unheld is None:
        return {}
    found = {}
    for name, col in zip(table.colnames, table.itercols()):
        if isinstance(col, np.ndarray):  # (mixins are represented by plain columns)
            why = unheld(col)
            if why:
                found[name] = why
    return found


def check_columns_held(path, table, *, fmt=None):
    """Check, before any work, that the format of ``path`` (``fmt``: the format, if not
    that of the extension) can hold the columns of ``table`` (those of an input table that
    the output keeps), and that ECSV and Parquet can hold its meta.

    - CSV: no multidimensional columns nor columns of arrays (`check_multidimensional`);
    - ECSV: object columns and multidimensional columns are written as JSON: no bytes
      arrays nor values JSON cannot hold (a set, bytes); no rows of no values whose shape
      is not read back (``(N, 0, 2)``, or any in a table with no rows);
    - FITS: an object column is a variable-length array column: 1-D arrays of one numeric
      type (no mixed types, no scalars, no text), and at least one row; no datetime64 or
      long double columns;
    - Parquet: an object column is written as lists of 1-D numpy arrays of one type that
      pyarrow can type (no complex numbers), and at least one row; no column of a type
      pyarrow cannot type (complex, long double, datetime64 of minutes or of no unit), no
      datetime64 column of more than one value per row, no datetime64[s] beyond the range
      of int64 milliseconds (Parquet's unit for them); no column whose rows
      hold no values (``(N, 2, 0)``: written, but pyarrow cannot read it back);
    - ECSV and Parquet: no meta key ``__serialized_columns__``, astropy's own record of
      mixin columns in those formats.

    Raises
    ------
    InvalidArgumentError
        Naming each column the format cannot hold, why, and the formats (among ECSV, FITS
        and Parquet) that hold them.
    InputError
        For the meta key ``__serialized_columns__`` in ECSV or Parquet.
    """
    fmt = fmt or table_format(path)
    if fmt == "ascii.csv":
        check_multidimensional(path, array_columns(table))
        return
    if fmt in ("ascii.ecsv", "parquet") and "__serialized_columns__" in table.meta:
        raise InputError(
            f"the meta key '__serialized_columns__' is astropy's own record of mixin columns "
            f"in {'ECSV' if fmt == 'ascii.ecsv' else 'Parquet'}: {str(path)!r} could not be "
            "read back with it; rename it")
    found = _unheld_columns(table, fmt)
    if not found:
        return
    subset = table[list(found)]
    held = []
    for ext, other in _HOLDING_FORMATS.items():
        if other != fmt and (other != "parquet" or importlib.util.find_spec("pyarrow")) \
                and not _unheld_columns(subset, other):
            held.append(ext)
    name = {"ascii.ecsv": "ECSV", "fits": "FITS", "parquet": "Parquet"}[fmt]
    raise InvalidArgumentError(
        f"{name} cannot hold the column(s) "
        + "; ".join(f"{c} ({why})" for c, why in found.items())
        + (f"; write {str(path)!r} as {' or '.join(held)} instead" if held
           else "; no format astromorph writes holds them: convert them first"))


def check_fits_names(path, names, *, meta=None, fmt=None):
    """Check, before any work, that a table with the columns ``names`` (and the ``meta``
    keys) can be written to ``path`` when it is FITS (``fmt``: the format, if not that of
    the extension): FITS compares column names (TTYPE) and header keywords without regard
    to case, as TOPCAT, cfitsio and fitsio do, and writes non-ASCII characters as
    backslash escapes (`_fits_ascii`), so ``score`` and ``SCORE`` would be two columns no
    reader can tell apart, and meta ``model`` and ``MODEL`` two cards read back as one.

    Raises
    ------
    InputError
        Naming each group of such columns or keys.
    """
    if (fmt or table_format(path)) != "fits":
        return
    keys = [k for k in (meta or {}) if isinstance(k, str) and k.lower() not in _FITS_LIST_KEYS]
    for what, held, names in (("column(s)", "one column", names),
                              ("meta key(s)", "one header keyword", keys)):
        shown = _same_in_fits(names)
        if shown:
            raise InputError(
                f"FITS compares {'column names' if what[0] == 'c' else 'header keywords'} "
                f"without regard to case (and writes non-ASCII characters as backslash "
                f"escapes): the {what} {shown} would be {held} in {str(path)!r}; rename "
                "one, or write .ecsv or .parquet, which keep them apart")


def _same_in_fits(names):
    """The groups of ``names`` that FITS cannot tell apart, as text (``'a' and 'A'; ...``),
    or "" when there are none."""
    names = np.array(list(names), dtype=str)
    if not len(names):
        return ""
    _, group, counts = np.unique(np.char.lower(_ascii_escaped(names)), return_inverse=True,
                                 return_counts=True)
    shared = np.flatnonzero(counts > 1)
    return "; ".join(" and ".join(map(repr, names[group == g].tolist()))
                     for g in shared[:10]) + ("; ..." if len(shared) > 10 else "")


def check_distinct_outputs(outputs):
    """Check, before any work, that the outputs of one run are different files.

    Parameters
    ----------
    outputs : dict
        What names each output (an option, e.g. ``"--output"``) -> its path or None.

    Raises
    ------
    InvalidArgumentError
        When two of them are the same file (the second written would replace the first).
    """
    seen = {}
    for what, path in outputs.items():
        if not path:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise InvalidArgumentError(f"{str(path)!r} is given twice, as {seen[real]} and as "
                                       f"{what}: give each output its own file")
        seen[real] = what


def output_error(message, cause):
    """`OutputError` with ``message``, to be raised ``from cause``: with the ``errno`` of the
    `OSError` at the root of ``cause`` (a read-only file and a full disk stay apart for a
    program, as ``exc.errno``, not only in the message)."""
    while isinstance(cause, OutputError) and isinstance(cause.__cause__, OSError):
        cause = cause.__cause__
    err = OutputError(message)
    err.errno = getattr(cause, "errno", None)  # an attribute only: the message is unchanged
    return err


@contextlib.contextmanager
def atomic_output(path, *, overwrite=False, mode=None, on_replaced=None):
    """Write a file atomically through a temporary path.

    Yields a temporary path with the destination's own name inside a private
    ``.astromorph-tmp-*`` folder beside the destination (so format detection by
    extension, e.g. of ``.fits.gz``, works on it, and a gzip header records the
    right name). When the block exits normally the file is fsync'ed and moved
    over ``path`` with `os.replace` (over the file it points to where ``path`` is a
    symbolic link: the link stays, and the temporary folder is beside that file); either
    way the temporary folder is then removed, and when the block raises ``path`` is left
    as it was. Ctrl-C and SIGTERM arriving while the folder is made or removed, or while
    the file is moved into place, are handled once that step is done (`interrupts_deferred`):
    no folder is left behind.

    Parameters
    ----------
    path : str or os.PathLike
        Destination.
    overwrite : bool, optional
        Replace an existing ``path``, or, for a symbolic link (a dangling one too), the
        file it points to (default: raise `OutputExistsError`).
    mode : int, optional
        Permission bits for the new file (default: those of the file it
        replaces, or the process default for a new file).
    on_replaced : callable, optional
        Called with no arguments just after the file is moved into place, before
        an interruption that arrived meanwhile is handled: a caller's record of
        the files written is then never behind the files themselves.

    Yields
    ------
    pathlib.Path
        The temporary path to write to.

    Raises
    ------
    OutputError
        With the ``errno`` of the `OSError` at its root: the file could not be written or
        moved into place ("cannot write ...; the old file is unchanged", or "nothing was
        written"), or it was moved into place and syncing its folder failed after ("error
        after writing ...; the new file is in place").
    """
    path = Path(path)
    target, directory = _destination_directory(path, overwrite)
    if mode is None and target.exists():
        mode = target.stat().st_mode & 0o7777
    # A private folder beside the destination holds the temporary file under the
    # destination's own name: writers that record the file name (gzip's header) record
    # the right one, and os.replace stays within one file system.
    tmpdir, moved = None, False
    try:
        with interrupts_deferred():  # a folder made is one that `finally` removes
            try:
                tmpdir = Path(tempfile.mkdtemp(prefix=".astromorph-tmp-", dir=directory))
            except OSError as exc:
                raise output_error(f"cannot write into {str(directory)!r}: "
                                   f"{exc.strerror or exc}", exc) from exc
        tmp = tmpdir / path.name
        yield tmp
        if not tmp.exists():
            raise OSError(f"nothing was written to the temporary file for {path}")
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        with interrupts_deferred():  # the file moved and the caller's record, or neither
            os.replace(tmp, target)  # a link's target: the link stays
            moved = True
            if on_replaced is not None:
                on_replaced()
        _fsync_dir(directory)
    except OSError as exc:
        if isinstance(exc, AstromorphError):
            raise
        if moved:  # (syncing its folder failed): the new file is there, whole
            raise output_error(f"error after writing {str(path)!r}: {exc.strerror or exc}; "
                               "the new file is in place", exc) from exc
        raise output_error(
            f"cannot write {str(path)!r}: {exc.strerror or exc}; "
            f"{'the old file is unchanged' if path.exists() else 'nothing was written'}",
            exc) from exc
    finally:
        if tmpdir is not None:
            _remove_folder(tmpdir)


#: The signals that `interrupts_deferred` holds: Ctrl-C, and SIGTERM where a handler of
#: Python's raises for it (the command line's).
_HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM")
                      if hasattr(signal, name))


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C and SIGTERM while the block runs; a signal that arrives meanwhile is
    handled (its handler called: `KeyboardInterrupt` for Ctrl-C) when the block is done.

    For steps that must not be cut in two by an interruption: a file moved into place and
    its record as written. Only signals with a Python handler are held, and only in the main
    thread (where Python handles signals); elsewhere the block just runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held, saved = [], {}

    def hold(signum, frame):
        held.append((signum, frame))

    try:
        for signum in _HELD_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                saved[signum] = handler
                signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        if held:  # the first one: its handler raises (KeyboardInterrupt), or it may not
            signum, frame = held[0]
            saved[signum](signum, frame)


def _remove_folder(path):
    """`shutil.rmtree` with Ctrl-C and SIGTERM held meanwhile (`interrupts_deferred`), and
    tried again when it raises `KeyboardInterrupt` itself, so that no temporary folder is
    left behind; the interruption then goes on."""
    with interrupts_deferred():
        try:
            shutil.rmtree(path, ignore_errors=True)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise


def _csv_unformatted(table):
    """``table`` with no display format on its columns, for CSV: astropy's CSV writer writes
    each value through its column's format (``.6f`` rounds an RA to 1e-6 deg), where ECSV,
    FITS and Parquet keep the values themselves. The caller's table is not changed."""
    from astropy.table import Column
    from astropy.table.column import col_copy

    formatted = [c for c in table.colnames if table[c].info.format is not None]
    if not formatted:
        return table
    table = table.copy(copy_data=False)
    for name in formatted:
        col = table[name]
        col = col.copy(copy_data=False) if isinstance(col, Column) else col_copy(col)
        col.info.format = None
        table.replace_column(name, col)
    return table


def _warn_csv_losses(table, path):
    """Warn (`LossyOutputWarning`) when a table holds what CSV does not keep: its meta (the
    provenance), units, descriptions, display formats and the type of mixin columns (e.g. a
    SkyCoord)."""
    from astropy.table import Column
    from astropy.units import Quantity

    lost = {
        "meta": list(table.meta),
        "units": [c for c in table.colnames if getattr(table[c], "unit", None) is not None],
        "descriptions": [c for c in table.colnames if table[c].info.description],
        "display formats": [c for c in table.colnames if table[c].info.format is not None],
        "column types": [c for c in table.colnames
                         if not isinstance(table[c], (Column, Quantity))],
    }
    lost = {what: names for what, names in lost.items() if names}
    if lost:
        warn(f"CSV keeps values only: {str(path)!r} will not hold the table's "
             + "; ".join(f"{what} ({', '.join(map(str, names[:4]))}"
                         + (f" and {len(names) - 4} more)" if len(names) > 4 else ")")
                         for what, names in lost.items())
             + "; write .ecsv, .fits or .parquet to keep them", LossyOutputWarning)


def _ascii_escaped(text):
    """``text`` (a str array) with each non-ASCII character as a backslash escape."""
    return np.char.decode(np.char.encode(text, "ascii", "backslashreplace"), "ascii")


def card_reads_back(key, value, comment=""):
    """The header card ``key = value / comment`` if astropy writes it as card(s) that read
    back as that keyword and value, else None: not for a keyword that leaves no room for
    the value (astropy cuts an over-long HIERARCH card at 80 characters, keyword and all)
    or a value no card holds (NaN, a dict)."""
    from astropy.io import fits

    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            card = fits.Card(key, value, comment)
            card.verify("exception")
            image = str(card)
            back = fits.Header.fromstring(image + " " * (-len(image) % 80))
            return card if back[card.keyword] == card.value else None
    except Exception:  # noqa: BLE001 - ValueError, VerifyError, KeyError...
        return None


def _fits_ascii(table, path):
    """``table`` as FITS can hold it, with one `LossyOutputWarning` for what changes.

    FITS text is ASCII: non-ASCII characters of string columns, column names and meta
    values become backslash escapes (``é`` -> ``\\xe9``; astropy raised
    UnicodeEncodeError or ValueError after the whole run). Meta entries no header card can
    hold (a key too long to leave room for its value: a VerifyError at the write) are left
    out. A short meta key not in upper case
    (``survey``, `similar`'s ``k``) is written as a HIERARCH card, which keeps its case
    (a standard card reads back as ``SURVEY``). The caller's table is not changed.
    """
    escaped = [c for c in table.colnames
               if getattr(table[c], "dtype", np.dtype(int)).kind == "U"
               and table[c].size and table[c].dtype.itemsize
               and (np.ascontiguousarray(np.ma.getdata(table[c])).view(np.uint32) > 127).any()]
    meta, dropped, rekeyed = {}, [], False
    for key, value in table.meta.items():
        if isinstance(value, str) and not value.isascii():
            value = str(_ascii_escaped(value))
            escaped.append(f"meta {key}")
        if isinstance(key, str) and len(key) <= 8 and key != key.upper() \
                and key.lower() not in _FITS_LIST_KEYS and not isinstance(value, (list, tuple)):
            key, rekeyed = f"HIERARCH {key}", True
        if str(key).lower() in _FITS_LIST_KEYS or isinstance(value, (list, tuple)) \
                or card_reads_back(str(key), value) is not None or not isinstance(key, str):
            meta[key] = value  # (astropy itself warns about what it then skips)
        else:
            dropped.append(str(key).removeprefix("HIERARCH "))
    renamed = [c for c in table.colnames if not c.isascii()]  # a TTYPE card: ValueError
    if not escaped and not dropped and not renamed:
        if rekeyed:
            table = table.copy(copy_data=False)
            table.meta = meta
        return table
    table = table.copy(copy_data=False)
    table.meta = meta
    for name in (c for c in escaped if not c.startswith("meta ")):
        col = table[name]
        new = type(col)(_ascii_escaped(np.ma.getdata(col)), name=name, unit=col.info.unit,
                        format=col.info.format, description=col.info.description,
                        meta=col.info.meta)
        if np.ma.isMaskedArray(col):
            new.mask = np.ma.getmaskarray(col)
        table.replace_column(name, new)
    for name in renamed:
        table.rename_column(name, str(_ascii_escaped(name)))
    escaped += [f"column name {name}" for name in renamed]
    what = []
    if escaped:
        what.append(f"the non-ASCII characters of {', '.join(escaped)} are written as "
                    "backslash escapes (\\xe9 for \u00e9)")
    if dropped:
        what.append(f"the meta entries {', '.join(k[:40] for k in dropped)} fit in no header "
                    "card and are not written")
    warn(f"FITS text is ASCII only: in {str(path)!r}, " + "; ".join(what)
         + "; write .ecsv or .parquet to keep them", LossyOutputWarning)
    return table


def _ecsv_zero_rows(table):
    """``table`` as ECSV can hold it when it has no rows but multidimensional columns.

    Astropy writes a zero-row ``(0, D)`` column of ECSV with a ``float32[D]`` subtype and no
    values, which its reader then refuses ("shape mismatch between value and column
    specifier"): an empty `annotate` or `annotate_stamps` result with an embedding could
    not be read back. Each such column is written here as a plain zero-row column of its
    element type, and recorded in ECSV's own ``__serialized_columns__`` meta as a
    `~astropy.table.Column` of the dtype ``(D,)<type>``, from which `Table.read` rebuilds it
    with its ``(0, D)`` shape, dtype, unit, description and meta (mixin columns, e.g. a
    `~astropy.units.Quantity` of vectors, are kept too). Other tables are returned as they are.
    """
    if len(table) or all(len(getattr(table[c], "shape", ())) < 2 for c in table.colnames):
        return table
    from astropy.table import Column, Table, serialize
    from astropy.table.serialize import SerializedColumn
    from astropy.utils.data_info import serialize_context_as

    with serialize_context_as("ecsv"):
        table = serialize.represent_mixins_as_columns(table)  # as the ECSV writer does
    table = Table(table, copy=False)  # (columns and meta of its own; plain columns stay so)
    table.meta = dict(table.meta)
    shaped = {}
    for name in table.colnames:
        col = table[name]
        if col.ndim > 1:
            dtype = col.dtype.newbyteorder("=")
            shaped[name] = f"{col.shape[1:]}{dtype.str}"
            table.replace_column(name, Column(
                np.zeros(0, dtype), name=name, unit=col.info.unit, format=col.info.format,
                description=col.info.description, meta=col.info.meta))

    def rebuilt(name):
        return SerializedColumn({"__class__": "astropy.table.column.Column",
                                 "data": SerializedColumn({"name": name}),
                                 "dtype": shaped[name]})

    referenced = set()

    def relink(attrs):  # the mixins' links to a reshaped column go through its rebuilding
        out = {}
        for key, value in attrs.items():
            if isinstance(value, SerializedColumn):
                name = value.get("name")
                if isinstance(name, str):
                    referenced.add(name)
                    value = rebuilt(name) if name in shaped else value
                else:
                    value = relink(value)
            out[key] = value
        return SerializedColumn(out)

    serialized = {name: relink(attrs)
                  for name, attrs in table.meta.pop("__serialized_columns__", {}).items()}
    serialized.update({name: rebuilt(name) for name in shaped if name not in referenced})
    table.meta["__serialized_columns__"] = serialized
    return table


def _vectorised_ecsv_text(col):
    """Whether `_write_ecsv` formats ``col`` itself: a masked 1-D column of integers,
    floats (of up to 64 bits) or booleans."""
    dtype = getattr(col, "dtype", None)
    return (np.ma.isMaskedArray(col) and col.ndim == 1 and dtype.kind in "biuf"
            and dtype.itemsize <= 8)


def _write_ecsv(table, path):
    """Write ``table`` to ``path`` as astropy's ECSV writer does, byte for byte, but with the
    values of masked numeric columns formatted as one array operation.

    Astropy formats each entry of a masked column through ``MaskedColumn.__getitem__``
    (``str(col[i])``): about ten times as slow as a plain column (100,000 rows of five
    masked float columns: ~5 s against ~0.6 s). ``ndarray.astype(str)`` gives the same text
    as ``str`` of each scalar (the shortest repr that round-trips; ``nan``, ``inf``,
    ``-0.0``, ``True``), and masked entries are written empty as astropy writes them. The
    header, the other columns and the quoting are astropy's own (its ECSV writer, with
    this one data class); tests compare the bytes with ``Table.write``.
    """
    from astropy.io import ascii
    from astropy.io.ascii.ecsv import Ecsv, EcsvData

    class _Data(EcsvData):
        def str_vals(self):
            cols = self.cols
            fast = [col for col in cols if _vectorised_ecsv_text(col)]
            try:
                self.cols = [col for col in cols if not _vectorised_ecsv_text(col)]
                super().str_vals()
            finally:
                self.cols = cols
            for col in fast:
                text = np.ma.getdata(col).astype(str)
                text[np.ma.getmaskarray(col)] = ""
                col.str_vals = text.tolist()
            return [col.str_vals for col in cols]

    class _Writer(Ecsv):  # (no _format_name of its own: not registered as a format)
        data_class = _Data

    writer = ascii.get_writer(writer_cls=_Writer, fast_writer=False)
    lines = writer.write(table.__class__(table, copy=False))  # as ascii.write does
    with open(path, "w", newline="") as f:
        f.write(os.linesep.join(lines))
        f.write(os.linesep)


def restore_parquet_shapes(table, path):
    """``table``, read from the Parquet file ``path`` by astropy, with the row shapes of its
    array columns as the file's header records them.

    Astropy writes a column of more than one dimension per row (a ``(N, 64, 64)`` stamp
    column) as fixed-size lists of the flattened rows, with the shape in its header
    (``subtype: float32[64,64]``), but reads it back ``(N, 4096)``. Each such column is
    reshaped here (a view, keeping its unit, description, meta and mask); a header that
    cannot be read leaves the table as it is. ``table`` is changed in place and returned.
    """
    import re

    import pyarrow.parquet as pq
    from astropy.table import meta as table_meta

    try:
        text = (pq.read_schema(path).metadata or {}).get(b"table_meta_yaml")
        header = table_meta.get_header_from_yaml(text.decode().splitlines()) if text else {}
    except Exception as exc:  # noqa: BLE001 - a header astropy itself read or skipped
        log.debug("no column shapes in the header of %s: %s", path, exc)
        return table
    for spec in header.get("datatype", ()):
        name = spec.get("name")
        found = re.fullmatch(r"[^\[]*\[(\d+(?:,\d+)+)\]", str(spec.get("subtype", "")))
        if not found or name not in table.colnames:
            continue
        shape = tuple(int(d) for d in found.group(1).split(","))
        col = table[name]
        if getattr(col, "shape", ())[1:] == (int(np.prod(shape)),):
            table.replace_column(name, col.reshape((len(col),) + shape))
    return table


#: numpy kinds of the array columns that Parquet files hold as one flat buffer of values
#: (written and read here in one piece; astropy converts them one row at a time)
_FLAT_KINDS = "biuf"

#: about how many array values a Parquet row group written (or a batch read) here holds:
#: pyarrow's encoding of a whole column of fixed-size lists at once (its list levels,
#: pages) needs a few times the column's size beside it (2.2 GB to write a million 256-d
#: float32 rows, 3.7 GB to read them), in row groups and batches of this size 0.2 GB
_PARQUET_CHUNK_VALUES = 1 << 22


def _flat_column(col):
    """Whether encoded column ``col`` (astropy's columns of a table to write) is a numeric
    array column, of at least one value per row, written as one buffer."""
    from astropy.table import Column, MaskedColumn

    dtype = col.dtype
    return (isinstance(col, Column) and not isinstance(col, MaskedColumn)
            and dtype.names is None and dtype.kind in _FLAT_KINDS and col.ndim > 1
            and int(np.prod(col.shape[1:])) > 0)


def _flat_arrow_type(arrow_type):
    """Whether a Parquet column of ``arrow_type`` is read here as one flat buffer: fixed-size
    lists of booleans, integers or floats."""
    import pyarrow as pa

    if not isinstance(arrow_type, pa.FixedSizeListType) or arrow_type.list_size < 1:
        return False
    value = arrow_type.value_type
    return (pa.types.is_boolean(value) or pa.types.is_integer(value)
            or pa.types.is_floating(value))


#: The key of a Parquet file's metadata (beside astropy's ``table_meta_yaml``) under which
#: `write_table` lists, as JSON, its plain (unmasked) datetime64 and timedelta64 columns:
#: Parquet has no NaT, so their NaT are written as nulls, which `read_parquet` would read
#: as masked entries; it reads the nulls of a column so listed as unmasked NaT (pandas and
#: astropy's reader give them so: the key only keeps astromorph's reader from masking them)
_UNMASKED_TIMES_KEY = b"astromorph::unmasked_nat"


def _write_parquet(table, path):
    """Write ``table`` to the Parquet file ``path`` as astropy's ``Table.write`` does (the
    same columns, types and header), its numeric array columns (an embedding) handed to
    pyarrow as one buffer each, where astropy splits them into an array per row.

    The other columns are written by astropy, to a file beside ``path`` read back at once
    (they are the small ones), and put in their places among the array columns. Row groups
    hold about `_PARQUET_CHUNK_VALUES` array values each (astropy writes one of up to
    1,048,576 rows), which keeps pyarrow's working memory small."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import Table
    from astropy.table import meta as table_meta
    from astropy.table import serialize
    from astropy.utils.data_info import serialize_context_as

    with serialize_context_as("parquet"):  # as astropy: a Time as jd1, jd2; masks apart
        encoded = serialize.represent_mixins_as_columns(table)
    flat = [name for name, col in zip(encoded.colnames, encoded.itercols())
            if _flat_column(col)]
    times = [name for name, col in zip(encoded.colnames, encoded.itercols())
             if getattr(col, "dtype", np.dtype(int)).kind in "Mm" and col.ndim == 1]
    if not flat and not times:
        table.write(path, format="parquet", overwrite=True)
        return
    arrays = {}
    for name in times:  # (astropy's writer has no type for them)
        arrays[name] = _arrow_times(encoded[name], (table[name].info.meta or {}).get(
            "timezone") if name in table.colnames else None)
    for name in flat:
        col = encoded[name]
        # (Parquet is little-endian: a FITS column is swapped, a native one is not copied)
        values = np.asarray(col).reshape(-1)
        values = pa.array(values.astype(values.dtype.newbyteorder("<"), copy=False))
        size = int(np.prod(col.shape[1:]))
        arrays[name] = pa.FixedSizeListArray.from_arrays(
            values, type=pa.list_(values.type, size))
    rest = [name for name in encoded.colnames if name not in arrays]
    written, lengths = None, {}
    if rest:
        side = path.with_name(path.name + ".columns.parquet")
        try:
            Table([encoded[name] for name in rest], copy=False).write(side, format="parquet",
                                                                        overwrite=True)
            written = pq.read_table(side).combine_chunks()
        finally:
            side.unlink(missing_ok=True)
        lengths = written.schema.metadata or {}
    metadata, fields, columns = {}, [], []
    text = "\n".join(table_meta.get_yaml_from_table(encoded)).encode()
    for name in encoded.colnames:  # astropy's header: its keys in its order
        key = f"table::len::{name}".encode()
        if key in lengths:
            metadata[key] = lengths[key]
        metadata[b"table_meta_yaml"] = text
        if name in arrays:
            fields.append(pa.field(name, arrays[name].type))
            columns.append(arrays[name])
        else:
            fields.append(written.schema.field(name))
            columns.append(written.column(name))
    plain = [name for name in times if name in table.colnames
             and not hasattr(table[name], "mask")]  # (a masked column's values: its mask)
    if plain:
        metadata[_UNMASKED_TIMES_KEY] = json.dumps(plain).encode()
    schema = pa.schema(fields, metadata=metadata)
    per_row = sum(arrays[name].type.list_size for name in flat)
    # (astropy's format version, but 2.6 for times, which astropy does not write: 2.4 has no
    # nanosecond timestamps, and pyarrow refuses to cut them to microseconds)
    with pq.ParquetWriter(path, schema, version="2.6" if times else "2.4") as writer:
        writer.write_table(pa.Table.from_arrays(columns, schema=schema),
                           row_group_size=max(1, _PARQUET_CHUNK_VALUES // per_row)
                           if per_row else None)


def _arrow_times(col, zone):
    """The datetime64 or timedelta64 column ``col`` as a pyarrow array of timestamps (dates
    for days) or durations of its unit, NaT as null; timestamps in time zone ``zone`` (the
    ``timezone`` of its meta, which `read_parquet` records: the values are UTC, as Arrow
    holds them) where pyarrow knows the zone."""
    import pyarrow as pa

    values = pa.array(np.asarray(col))
    if zone is not None and pa.types.is_timestamp(values.type):
        try:
            zoned = pa.timestamp(values.type.unit, tz=str(zone))
            pa.scalar(0, zoned).as_py()  # (an unknown zone: ArrowInvalid; the cast takes it)
            values = values.cast(zoned)
        except (pa.ArrowException, ValueError) as exc:  # (the header keeps the meta)
            log.info("column %r written without its time zone %r: %s", col.info.name,
                     zone, exc)
    return values


def _serialized_names(spec):
    """The names of the columns of serialized mixin ``spec`` (a Time's jd1 and jd2).

    As astropy's ``_construct_mixin_from_columns`` reads ``spec``: a column is a
    ``SerializedColumn`` with a name, one without a name a mixin within (a SkyCoord's RA);
    other dicts (the column's ``__info__``: a meta that may hold a key 'name') are none."""
    from astropy.table.serialize import SerializedColumn

    names = []
    for value in spec.values():
        if isinstance(value, SerializedColumn):
            if "name" in value:
                names.append(value["name"])
            else:
                names.extend(_serialized_names(value))
    return names


#: astropy's warning for a text column of a Parquet file without astropy's header key for
#: its width (``table::len::<name>``), which no file that pandas or pyarrow writes has (a
#: file astropy writes always has it): astropy then makes the column as wide as its
#: longest value, so nothing is cut, and the warning says only that another tool wrote it
_NO_TEXT_WIDTH = r"No table::len::.* found in metadata\. Using longest string"


def _astropy_read_parquet(cls, path, **kwargs):
    """``cls.read(path, format="parquet", **kwargs)`` without `_NO_TEXT_WIDTH` (every other
    warning is given as astropy gives it)."""
    from astropy.utils.exceptions import AstropyUserWarning

    with catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_TEXT_WIDTH, category=AstropyUserWarning)
        return cls.read(path, format="parquet", **kwargs)


def _arrow_text_type(arrow_type):
    """Whether a Parquet column of ``arrow_type`` holds text or bytes, one value a row."""
    import pyarrow as pa

    return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
            or pa.types.is_fixed_size_binary(arrow_type))


def _own_parquet_columns(path, schema, names):
    """The columns of ``names`` (columns of the file, none of them part of an astropy
    mixin) that `_arrow_column` reads, not astropy's reader, which fails on them or loses
    what they hold: a categorical (pyarrow's dictionary type: astropy raises
    NotImplementedError), a text column with a null cell (a file pandas wrote: astropy
    raises TypeError) or no row (ValueError), an integer or boolean column with a null
    cell (astropy gives float64 and NaN, losing the digits of a 64-bit id beyond 2**53, or
    an object column of True, False and None), a float, date or time column with a null
    cell (astropy gives NaN or NaT, which a NaN the file holds as a value cannot be told
    from), a time column with a time zone (astropy drops the zone) and a column of nothing
    but nulls (pyarrow's null type: astropy gives an object column of None, which no
    format writes back). Whether a column holds a null is read from the statistics of the
    file's row groups; a column without them is read here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    candidates = []
    for name in names:
        arrow_type = schema.field(name).type
        if pa.types.is_dictionary(arrow_type) or pa.types.is_null(arrow_type) or (
                pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None):
            candidates.append((name, True))
        elif (_arrow_text_type(arrow_type) or pa.types.is_integer(arrow_type)
              or pa.types.is_boolean(arrow_type) or pa.types.is_floating(arrow_type)
              or pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type)
              or pa.types.is_duration(arrow_type)):  # (not a time of day: astropy's error)
            candidates.append((name, False))
    if not candidates:
        return []
    metadata = pq.read_metadata(path)
    leaves = {metadata.schema.column(j).path: j for j in range(metadata.num_columns)}

    def may_hold_nulls(name):
        if name not in leaves:  # pragma: no cover - a flat column is one leaf of its name
            return True
        for i in range(metadata.num_row_groups):
            stats = metadata.row_group(i).column(leaves[name]).statistics
            if stats is None or not stats.has_null_count or stats.null_count:
                return True
        return False

    return [name for name, always in candidates if always or may_hold_nulls(name) or (
        not metadata.num_rows and _arrow_text_type(schema.field(name).type))]


def _arrow_column(values, name, *, width=None, unmasked=False):
    """The pyarrow ChunkedArray ``values`` of the Parquet column ``name`` as a Column, or a
    MaskedColumn masked where a cell is null: a categorical as its categories' values
    (text, numbers); text as unicode (bytes as bytes) of ``width`` characters (astropy's
    ``table::len::<name>`` key), else of its longest value's; floats (NaN under the mask,
    a NaN of the file's unmasked) and times as numpy gives them; times with a time zone in
    UTC, the zone in the column's meta ``timezone`` (and said at INFO); a column of nothing
    but nulls as float64, all masked. ``unmasked``: a time column's nulls are NaT of an
    unmasked column (a plain column that `write_table` wrote, `_UNMASKED_TIMES_KEY`)."""
    import pyarrow as pa
    from astropy.table import Column, MaskedColumn

    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_null(values.type):  # (no type to keep: float64, as pandas makes it)
        values = values.cast(pa.float64())
    meta = {}
    if pa.types.is_timestamp(values.type) and values.type.tz is not None:
        # (pyarrow holds them in UTC: the cast keeps the values, drops the zone)
        meta["timezone"] = values.type.tz
        values = values.cast(pa.timestamp(values.type.unit))
        log.info("column %r holds times in time zone %s: read as UTC (numpy and astropy's "
                 "Time have no zones), the zone kept in its meta 'timezone'", name,
                 meta["timezone"])
    mask = values.is_null().to_numpy(zero_copy_only=False)
    arrow_type = values.type
    if _arrow_text_type(arrow_type):
        text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
        data = values.to_numpy(zero_copy_only=False)  # (objects: str or bytes, None)
        data[mask] = "" if text else b""
        kind = "U" if text else "S"
        data = data.astype(f"{kind}{width}" if width else kind)
        if not len(data) and not width:
            data = data.astype(f"{kind}1")
    elif pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        data = values.fill_null(False if pa.types.is_boolean(arrow_type) else 0).to_numpy(
            zero_copy_only=False)
    else:  # (floats with NaN where null, dates and times with NaT: one array operation)
        data = values.to_numpy(zero_copy_only=False)
        if unmasked and data.dtype.kind in "Mm":
            mask[:] = False
    return MaskedColumn(data, mask=mask, name=name, meta=meta) if mask.any() else \
        Column(data, name=name, meta=meta)


def _seconds_restored(table, attrs):
    """``table``, read from a Parquet file, with its datetime64[ms] columns that astropy's
    header ``attrs`` ({column name: its header entry}) records as datetime64[s] (the columns
    of seconds `write_table` writes) in seconds again: Parquet has no timestamps of seconds,
    so pyarrow writes them as milliseconds and reads them back so (apache/arrow#41382). A
    column with a value that is not a whole second (a file written otherwise) is left in
    milliseconds. ``table`` is changed in place and returned."""
    for name in table.colnames:
        col = table[name]
        if attrs.get(name, {}).get("datatype") != "datetime64[s]" or \
                getattr(col, "dtype", None) != np.dtype("M8[ms]"):
            continue
        values = np.ma.getdata(col).view(np.int64)
        if np.all((values % 1000 == 0) | (values == np.iinfo(np.int64).min)):  # (NaT: NaT)
            table.replace_column(name, col.astype("M8[s]"))
    return table


def read_parquet(path):
    """The table in the Parquet file ``path``, as ``QTable.read`` and `restore_parquet_shapes`
    give it, its numeric array columns (an embedding) read as one buffer each, and the
    columns of files pandas writes that astropy's reader cannot read.

    astropy's reader turns an array column into an array per row and stacks them (for a
    million 256-d embeddings, 11-18 s and 5.4 GB): the columns of fixed-size lists of
    numbers (and booleans: the masks of masked array columns) are here read by pyarrow in
    batches into one array each, reshaped, given the units, descriptions, formats and meta
    of the file's header, and rebuilt into the masked columns, quantities and times it
    records. A file with a null list (no astropy file has one) has them read by astropy.

    A null cell of a text, integer or boolean column (a file pandas wrote: ``None`` in a
    text column, ``pd.NA`` in an ``Int64`` or ``boolean`` column) is a masked entry of a
    masked column of that type, and a categorical column is a column of its values
    (masked where null): these are read by pyarrow, as astropy fails on them (or gives an
    integer column as float64 with NaN, losing digits beyond 2**53). A null float, date or
    time cell is masked too (astropy gives NaN or NaT: a NaN the file holds as a value stays
    an unmasked NaN), a column of nothing but nulls (an all-None pandas column) is a fully
    masked float64 column, and times with a time zone are in UTC (as astropy gives them:
    numpy and `~astropy.time.Time` have no zones), the zone in the column's meta
    ``timezone`` (said at INFO), which `write_table` writes back as the column's zone.
    Parquet has no timestamps of seconds: a datetime64[s] column that `write_table` wrote
    (as milliseconds) is read back as datetime64[s], which astropy's header records
    (astropy's reader gives datetime64[ms]). Nor has it NaT: `write_table` writes a NaT as
    a null, and lists the plain (unmasked) time columns under the key
    ``astromorph::unmasked_nat`` of the file's metadata, whose nulls are read back as
    unmasked NaT of a plain column (as a NaN of a plain float column is read back).

    Every other column is read by astropy, without its warning that a text column's width
    is not in the file (a file pandas or pyarrow wrote: the column is as wide as its longest
    value).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    astropy.table.QTable

    Raises
    ------
    InputError
        For a column of a type astropy's reader does not read (a struct, a time of day),
        naming the file, the column and its type.
    """
    import pyarrow.parquet as pq
    from astropy.table import Column, QTable, Table
    from astropy.table import meta as table_meta
    from astropy.table import serialize

    def by_astropy(cls, names=None):
        """astropy's ``cls`` of the table columns ``names`` (all: None)."""
        try:
            if names is None:
                return _astropy_read_parquet(cls, path)
            return _astropy_read_parquet(cls, path, include_names=names)
        except (NotImplementedError, TypeError) as exc:  # (the type of a column)
            if isinstance(exc, AstromorphError):  # pragma: no cover - none from astropy
                raise
            for name in names or order:  # the one astropy fails on alone, to name it
                try:
                    _astropy_read_parquet(Table, path, include_names=[name])
                except (NotImplementedError, TypeError) as each:
                    kinds = ", ".join(str(schema.field(n).type)
                                      for n, g in group.items() if g == name)
                    raise InputError(f"{str(path)!r}: column {name!r} ({kinds}) cannot be "
                                     f"read: {type(each).__name__}: {each}") from each
            raise InputError(f"{str(path)!r} cannot be read: {type(exc).__name__}: "
                             f"{exc}") from exc

    def read_by_astropy(here=None):
        """The table, its columns of ``here`` (table column -> column) and of ``own`` as
        read here, all others by astropy."""
        if not own and not here:
            return restore_parquet_shapes(_seconds_restored(by_astropy(QTable), attrs), path)
        if own:
            here = dict(here or {})
            keys = schema.metadata or {}
            try:
                unmasked = set(json.loads(keys.get(_UNMASKED_TIMES_KEY, b"[]")))
            except (ValueError, TypeError):  # (a key another tool spoilt: nulls masked)
                unmasked = set()
            for name, values in zip(own, pq.read_table(path, columns=own).columns):
                width = keys.get(f"table::len::{name}".encode())
                col = _arrow_column(values, name, width=int(width) if width else None,
                                    unmasked=name in unmasked)
                for attr in ("description", "format", "unit", "meta"):  # as astropy sets them
                    if attr in attrs.get(name, {}):  # (meta: with a time zone read here)
                        setattr(col, attr, {**attrs[name][attr], **col.info.meta}
                                if attr == "meta" else attrs[name][attr])
                here[name] = col
        others = [full for full in order if full not in here]
        rest = by_astropy(Table, others) if others else None
        table = Table([here[full] if full in here else rest[full] for full in order],
                      names=order, meta=meta, copy=False)
        return restore_parquet_shapes(_seconds_restored(QTable(table, copy=False), attrs),
                                      path)

    schema = pq.read_schema(path)
    text = (schema.metadata or {}).get(b"table_meta_yaml")
    header = table_meta.get_header_from_yaml(text.decode().split("\n")) if text else None
    meta = (header or {}).get("meta", {}).copy()
    serialized = meta.pop("__serialized_columns__", {})
    attrs = {spec["name"]: spec for spec in (header or {}).get("datatype", ())}
    group = {name: name for name in schema.names}  # column -> the table column it makes
    order, own = schema.names, []  # (read by astropy alone when the header is not the file's)
    for full, spec in serialized.items():
        for name in _serialized_names(spec):
            if name not in group:  # (a column dropped, its header kept: astropy's error)
                return read_by_astropy()
            group[name] = full
    order = list(dict.fromkeys(group.values()))
    own = _own_parquet_columns(path, schema, [name for name in schema.names
                                             if group[name] == name and name not in serialized])
    flat = {full for full in order
            if all(_flat_arrow_type(schema.field(name).type)
                   for name, g in group.items() if g == full)}
    if not flat:
        return read_by_astropy()
    names = [name for name in schema.names if group[name] in flat]
    sizes = {name: schema.field(name).type.list_size for name in names}
    parquet = pq.ParquetFile(path, pre_buffer=False)
    rows = parquet.metadata.num_rows
    values = {name: np.empty(rows * sizes[name],
                             np.dtype(schema.field(name).type.value_type.to_pandas_dtype()))
              for name in names}
    done = 0  # each batch copied into its place: no whole column of pyarrow's beside them
    for batch in parquet.iter_batches(columns=names, use_threads=False, batch_size=max(
            1, _PARQUET_CHUNK_VALUES // sum(sizes.values()))):
        for name in names:
            lists = batch.column(name)
            flat_values = lists.flatten()  # (with the offset of a slice)
            if lists.null_count or flat_values.null_count:
                return read_by_astropy()  # (what astropy makes of null lists, as before)
            values[name][done * sizes[name]:(done + len(batch)) * sizes[name]] = \
                flat_values.to_numpy(zero_copy_only=False)
        done += len(batch)
    parquet.close()
    if done != rows:  # pragma: no cover - a file whose metadata miscounts its rows
        raise InputError(f"{str(path)!r} holds {done} rows, its metadata says {rows}")
    encoded = Table()
    for name in names:
        col = Column(values.pop(name).reshape(rows, sizes[name]), name=name, copy=False)
        for attr in ("description", "format", "unit", "meta"):  # as astropy sets them
            if attr in attrs.get(name, {}):
                setattr(col, attr, attrs[name][attr])
        encoded.add_column(col, copy=False)
    encoded.meta["__serialized_columns__"] = {full: spec for full, spec in serialized.items()
                                              if full in flat}
    # (astropy's own rebuilding of masked columns, quantities and times; a private function:
    # where an astropy release lacks it, astropy reads the whole file, as before)
    construct = getattr(serialize, "_construct_mixins_from_columns", None)
    if construct is None:  # pragma: no cover - astropy 8 has it
        return read_by_astropy()
    built = construct(encoded)
    return read_by_astropy({full: built[full] for full in order if full in flat})


def plain_votable_columns(table):
    """``table``, read from a VOTable by astropy, with its variable-length columns as plain
    columns that every output format holds.

    Astropy reads a ``char`` or ``unicodeChar`` column of ``arraysize="*"`` (the ids and
    names of most TAP and VizieR tables) as an object column of Python str, which FITS and
    Parquet cannot hold: such a column (every unmasked cell a str; with no unmasked cell,
    one that astropy marks as VOTable text) becomes a unicode string column, its mask kept.
    It reads a numeric column of ``arraysize="*"`` as an object column of arrays, an empty
    cell as a float64 array whatever the column's type: where the non-empty arrays are of
    one dtype, the empty ones are given it. Such columns are masked columns only where a
    cell is masked. A text cell (of a ``char`` or ``unicodeChar`` column, of any arraysize)
    that is null comes back masked, as astropy masks a null number: one that holds the
    column's declared null (``<VALUES null="N/A"/>``), which astropy gives as that text, and
    an empty one (``<TD/>``: how a VOTable writes a null text cell, astropy's writer
    included, and no id or label), which astropy gives as ``''``. Units, descriptions,
    formats and meta (UCDs) are kept; other columns are left as they are. ``table`` is
    changed in place and returned.
    """
    from astropy.table import Column, MaskedColumn

    def rebuilt(col, values, mask):  # a Column, or a MaskedColumn where a cell is masked
        attrs = {a: getattr(col.info, a) for a in ("name", "unit", "description", "format",
                                                   "meta")}
        return MaskedColumn(values, mask=mask, **attrs) if mask.any() else \
            Column(values, **attrs)

    for name in table.colnames:
        col = table[name]
        dtype = getattr(col, "dtype", None)
        if dtype is None or col.ndim != 1 or dtype != object and not (
                dtype.kind in "US" and col.info.meta.get("_votable_string_dtype")):
            continue
        data, masked = np.ma.getdata(col), np.ma.getmaskarray(col)
        cells = data[~masked]
        if dtype.kind in "US" or all(isinstance(c, str) for c in cells) and (
                len(cells) or col.info.meta.get("_votable_string_dtype")):
            text = np.where(masked, "", data).astype(str)
            null = (col.info.meta.get("values") or {}).get("null")
            masked = masked | (text == "")
            if isinstance(null, str):  # (a number where astropy parsed the text: none)
                masked |= text == null
            table.replace_column(name, rebuilt(col, text, masked))
            continue
        if not all(isinstance(c, np.ndarray) and c.ndim == 1 for c in data):
            continue
        types = {c.dtype for c in data if c.size}
        if len(types) == 1:
            (dtype,) = types
            for i in np.flatnonzero([not c.size and c.dtype != dtype for c in data]):
                data[i] = data[i].astype(dtype)
        # (astropy's FITS writer fails on a MaskedColumn of arrays: its fill value is '?')
        table.replace_column(name, rebuilt(col, data, masked))
    return table


def write_table(table, path, *, overwrite=False, format=None):
    """Write a table atomically, in the format given by the file extension.

    Parameters
    ----------
    table : astropy.table.Table
    path : str or os.PathLike
        ``.ecsv`` (recommended: keeps units, descriptions, masks and multidimensional
        columns, also in a table with no rows), ``.fits``/``.fit``/``.fits.gz`` (masked
        boolean entries are not kept, non-ASCII text is written with backslash escapes,
        meta entries no header card holds are left out: each with a
        `~astromorph.exceptions.LossyOutputWarning`), ``.csv``
        (values only, in full whatever a column's display format: meta, units,
        descriptions and formats are lost, with a
        `~astromorph.exceptions.LossyOutputWarning`) or ``.parquet`` (needs
        pyarrow, extra ``astromorph[parquet]``; the rows of columns of more than
        one dimension per row, e.g. stamp cubes, are flattened, with a
        `~astromorph.exceptions.LossyOutputWarning`: astromorph's commands read their
        shape back from the file's header, `~astropy.table.Table.read` does not; a masked
        column is written as astropy writes it, its values and a boolean ``<name>.mask``
        column; datetime64 and timedelta64 columns, which astropy does not write, as
        timestamps, dates and durations, in the time zone of the column's meta
        ``timezone``, as `read_parquet` records it; Parquet has no timestamps of seconds:
        datetime64[s] is written as milliseconds, which `read_parquet` reads back as
        datetime64[s] and `~astropy.table.Table.read` as datetime64[ms]; nor has it NaT:
        a NaT is a null, and the plain (unmasked) time columns are listed in the file's
        metadata, ``astromorph::unmasked_nat``, so that `read_parquet` gives their NaT back
        as unmasked NaT, as astropy's and pandas' readers do).
    overwrite : bool, optional
        Replace an existing file (default: raise `OutputExistsError`); for a symbolic
        link, the file it points to, the link kept.
    format : str, optional
        An astropy table format overriding the extension.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    InvalidArgumentError
        For a column the format cannot hold (`check_columns_held`: an object column of
        mixed types in FITS, bytes arrays in ECSV, a zero-row object column in Parquet,
        a multidimensional column in CSV...); nothing is written.
    InputError
        For FITS, when two column names or meta keys differ only by case (``id`` and
        ``ID``: FITS compares TTYPEs and keywords without regard to case; see
        `check_fits_names`); for ECSV and Parquet, a meta key ``__serialized_columns__``
        (astropy's own); nothing is written.
    """
    path = _output_path(path)
    fmt = format or table_format(path)
    check_columns_held(path, table, fmt=fmt)
    if fmt == "fits" and any(isinstance(v, (list, tuple)) and k.lower() not in _FITS_LIST_KEYS
                             for k, v in table.meta.items()):
        # a FITS card holds one value: join lists, except comments and history (one
        # card per entry, and astropy appends to ``comments`` for mixin columns)
        table = table.copy(copy_data=False)
        table.meta = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple))
                      and k.lower() not in _FITS_LIST_KEYS else v
                      for k, v in table.meta.items()}
    if fmt == "ascii.ecsv":
        table = _ecsv_zero_rows(table)
    if fmt == "fits":
        check_fits_names(path, table.colnames, meta=table.meta, fmt=fmt)
        table = _fits_ascii(table, path)
        unmasked = [c for c in table.colnames if getattr(table[c], "dtype", None) == bool
                    and np.ma.getmaskarray(table[c]).any()]
        if unmasked:  # astropy writes FITS logical columns without their mask
            warn(f"FITS cannot mark the masked entries of boolean column(s) "
                 f"{', '.join(unmasked)}: {str(path)!r} will hold them as True/False; write "
                 ".ecsv or .parquet, or an integer copy of the column, to keep them",
                 LossyOutputWarning)
    if fmt == "parquet":
        shapes = {c: table[c].shape[1:] for c in table.colnames
                  if len(getattr(table[c], "shape", ())) > 2}
        if shapes:  # astropy writes each row as a fixed-size list, flattened
            warn("Parquet does not keep the shape of array column(s) "
                 + ", ".join(f"{c} {shape}" for c, shape in shapes.items())
                 + f": {str(path)!r} will hold their rows flattened, as rows of "
                 + ", ".join(str(int(np.prod(shape))) for shape in shapes.values())
                 + " values (astromorph's commands restore the shape from the file's header,"
                 " Table.read does not); write .ecsv or .fits to keep it", LossyOutputWarning)
    with atomic_output(path, overwrite=overwrite) as tmp:
        with catch_warnings():
            # Long meta keys become HIERARCH cards in FITS: expected, not worth a warning.
            warnings.filterwarnings("ignore", message=".*greater than 8 characters.*")
            warnings.filterwarnings("ignore", message=".*HIERARCH card will be created.*")
            if fmt == "ascii.ecsv":
                _write_ecsv(table, tmp)
            elif fmt == "parquet":
                _write_parquet(table, Path(tmp))
            elif fmt == "ascii.csv":  # the values, not as the columns display them
                _csv_unformatted(table).write(tmp, format=fmt, overwrite=True)
            else:
                table.write(tmp, format=fmt, overwrite=True)
    if fmt == "ascii.csv":
        _warn_csv_losses(table, path)
    log.info("wrote %d rows to %s", len(table), path)
    return path

"""Helpers shared by the embedding tools: embedding columns in, masked columns out."""
import numpy as np

from ..exceptions import InputError, InvalidArgumentError

__all__ = ["embedding_matrix", "table_embeddings", "finite_rows", "masked_column",
           "add_columns", "check_prefix", "check_seed"]

#: Rows checked (or converted) at a time by `finite_rows` and the heads' chunked loops.
CHUNK_ROWS = 65536


def check_seed(seed):
    """`InvalidArgumentTypeError` for a ``seed`` that `numpy.random.default_rng` does not take."""
    from ..exceptions import InvalidArgumentTypeError

    try:
        if isinstance(seed, (bool, np.bool_)):  # numpy takes True as the seed 1
            raise TypeError
        np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise InvalidArgumentTypeError(f"seed must be a whole number or None, got "
                                       f"{seed!r}") from None


def check_prefix(prefix):
    """`InvalidArgumentTypeError` unless ``prefix`` (of new column names) is a non-empty
    string; `InvalidArgumentError` unless it is made as a model card's ``column_prefix``
    must be (`astromorph._registry._COLUMN_PART`: no space, comma, slash, quote or ``=``,
    which column names, the ``astromorph_columns`` meta and FITS keywords handle badly)."""
    from .._registry import _COLUMN_PART
    from ..exceptions import InvalidArgumentError, InvalidArgumentTypeError

    if not isinstance(prefix, str) or not prefix:
        raise InvalidArgumentTypeError(f"prefix must be a non-empty string, got {prefix!r}")
    if not _COLUMN_PART.match(prefix):
        raise InvalidArgumentError(f"prefix {prefix!r} cannot start column names: use "
                                   "letters, digits, '_', '.', '-' and '+', starting with a "
                                   "letter or digit (as a model card's column_prefix)")


def _rows(rows):
    return f"{', '.join(map(str, rows[:10]))}{', ...' if len(rows) > 10 else ''}"


def finite_rows(x, *, chunk_rows=CHUNK_ROWS):
    """Which rows of the 2-d array ``x`` are finite throughout, checked a block of rows at
    a time (no ``x.shape`` array of booleans: 256 MB for 1,000,000 256-d vectors)."""
    out = np.empty(len(x), bool)
    for s in range(0, len(x), chunk_rows):
        out[s:s + chunk_rows] = np.isfinite(x[s:s + chunk_rows]).all(axis=1)
    return out


def _vector_cells(embeddings):
    """The cells of ``embeddings`` as a 1-d object array when it holds one vector (array or
    list) per row: a 1-d object array or column whose first cell that is not None or masked
    is no scalar, or whose cells are all None or masked (rows without vectors, not one
    vector of NaN), or a sequence numpy cannot make one array of (vectors of unequal
    length). None otherwise (a numeric array, a single vector, scalars, no rows)."""
    if isinstance(embeddings, np.ndarray):  # Column and MaskedColumn included
        data = np.ma.getdata(embeddings)
        if data.dtype != object or data.ndim != 1:
            return None
    else:
        try:
            if np.asarray(np.ma.getdata(embeddings)).dtype != object:
                return None
        except ValueError:  # ragged: numpy says "inhomogeneous shape"
            pass
        try:
            data = np.empty(len(embeddings), object)
            for i, cell in enumerate(embeddings):
                data[i] = cell
        except TypeError:  # no length: a scalar, left to the numeric path to refuse
            return None
    mask = np.ma.getmaskarray(embeddings) if np.ma.isMaskedArray(embeddings) else None
    first = next((c for i, c in enumerate(data)
                  if c is not None and (mask is None or not mask[i])), None)
    if first is None:  # every cell None or masked: as many rows without vectors
        return data if len(data) else None
    return data if np.ndim(first) > 0 else None


def _cell_says(cell):
    text = " ".join(repr(cell).split())  # one line
    return text if len(text) <= 60 else f"{text[:57]}..."


def _stack_cells(cells, mask, *, dtype, dim, chunk_rows=CHUNK_ROWS):
    """A (N, D) float array from ``cells``, one 1-d numeric vector (array or list) a row;
    None or masked cells (``mask``) become NaN rows. `InputError` naming the first row
    holding something else (a scalar, a nested shape, no numbers, another length)."""
    n = len(cells)
    missing = np.zeros(n, bool) if mask is None else \
        np.asarray(mask).reshape(n, -1).any(axis=1)
    vectors, d, all32 = [None] * n, None, True
    for i, cell in enumerate(cells):
        if missing[i] or cell is None:
            missing[i] = True
            continue
        try:
            v = np.asarray(cell)
        except ValueError:  # a ragged list of lists
            raise InputError(f"embedding row {i} holds {_cell_says(cell)}, not a 1-d vector of "
                             "numbers") from None
        if v.ndim != 1:
            what = "a scalar, not a vector" if v.ndim == 0 else \
                f"an array of shape {v.shape}, not a 1-d vector"
            raise InputError(f"embedding row {i} holds {_cell_says(cell)}: {what}")
        if v.dtype.kind not in "iuf":
            raise InputError(f"embedding row {i} holds {_cell_says(cell)}: {v.dtype} values, "
                             "not numbers")
        if d is None:
            d = len(v)
        elif len(v) != d:
            raise InputError(f"embedding row {i} holds a vector of {len(v)} values, but the "
                             f"rows before it hold {d}")
        all32 &= v.dtype == np.float32
        vectors[i] = v
    if d is None:  # every row None or masked: the dimension is only known from ``dim``
        if dim is None:
            raise InputError(f"the embedding column holds no vectors (all {n} rows are "
                             "masked or None)")
        d = dim
    if dtype is None:  # float32 vectors stay float32, as a float32 array does
        dtype = np.float32 if all32 else np.float64
    x = np.empty((n, d), dtype)
    for s in range(0, n, chunk_rows):  # a block of rows at a time, straight into ``x``
        block = x[s:s + chunk_rows]
        have = ~missing[s:s + chunk_rows]
        if have.all():
            np.stack(vectors[s:s + chunk_rows], out=block, casting="unsafe")
        else:
            block[~have] = np.nan
            for j in np.flatnonzero(have):
                block[j] = vectors[s + j]
    return x


def embedding_matrix(embeddings, *, allow_masked=False, dtype=np.float64, dim=None):
    """A 2-d float array from an embedding column or array.

    Parameters
    ----------
    embeddings : array_like or Column, (N, D)
        One vector (D,) is one row; no vectors (``[]``, or shape (0, 0)) are no rows. Also
        (N,) cells each holding a 1-d vector (array or list) of D numbers, e.g. the object
        column of a Parquet file written by pandas: None or masked cells are masked rows,
        any other cell raises `InputError` naming its row.
    allow_masked : bool
        Accept masked and non-finite rows (masked ones filled with NaN); otherwise
        raise `InvalidArgumentError` naming them.
    dtype : numpy.dtype or None
        The type of the array; None keeps a float32 or float64 input as it is (no copy,
        e.g. for the heads, which convert a block of rows at a time), anything else
        becoming float64.
    dim : int, optional
        The dimension expected: no vectors give a (0, dim) array (not (0, 0)).
    """
    x, masked = _matrix_and_mask(embeddings, allow_masked=allow_masked, dtype=dtype, dim=dim)
    if masked is not None:
        if np.shares_memory(x, np.ma.getdata(embeddings)):  # else converted: a copy already
            x = x.copy()
        x[masked] = np.nan
    return x


def _matrix_and_mask(embeddings, *, allow_masked, dtype, dim):
    """`embedding_matrix` without the NaN filling: the 2-d array, its masked rows left as
    the column holds them (no copy of a masked column), and which rows are masked (a bool
    array, or None when none is)."""
    mask = np.ma.getmaskarray(embeddings) if np.ma.isMaskedArray(embeddings) or \
        hasattr(embeddings, "mask") else None
    cells = _vector_cells(embeddings)
    if cells is not None:  # one array or list per row (pandas' Parquet, a list of arrays)
        x = _stack_cells(cells, mask, dtype=dtype, dim=dim)
        mask = None  # (masked and None rows are NaN rows of the new array)
        embeddings = x
    try:
        if dtype is None:  # float32 / float64 kept (in their byte order), else float64
            kind = np.asarray(np.ma.getdata(embeddings)).dtype
            dtype = kind if kind.kind == "f" and kind.itemsize in (4, 8) else np.float64
        x = np.asarray(np.ma.getdata(embeddings), dtype=dtype)
    except (TypeError, ValueError) as exc:
        kind = np.asarray(np.ma.getdata(embeddings)).dtype
        raise InvalidArgumentError(f"embeddings must be numbers, got {kind} values "
                                   f"({exc})") from None
    if x.ndim == 1 and x.size == 0:  # no vectors, not one vector of no dimensions
        x, mask = x.reshape(0, 0), None
    elif x.ndim == 1:  # a single vector
        x = x[None]
        mask = None if mask is None else np.asarray(mask)[None]
    if x.ndim != 2:
        raise InvalidArgumentError(f"embeddings must be a 2-d array (N, D), got shape {x.shape}")
    if x.shape == (0, 0) and dim is not None:
        x = np.empty((0, dim), dtype=dtype)
    masked = None
    if mask is not None and np.any(mask):
        masked = np.asarray(mask).reshape(len(x), -1).any(axis=1)
        if not allow_masked:
            rows = np.flatnonzero(masked)
            raise InvalidArgumentError(f"embeddings have {len(rows)} masked row(s) (rows "
                                       f"{_rows(rows)}); select the rows with embeddings first")
    if not allow_masked:
        bad = np.flatnonzero(~finite_rows(x))
        if len(bad):
            raise InvalidArgumentError(f"embeddings have {len(bad)} row(s) with NaN or "
                                       f"infinite values (rows {_rows(bad)}); select the rows "
                                       "with embeddings first")
    return x, masked


def table_embeddings(table, column="embedding", *, dtype=np.float64, fill_masked=True):
    """Embedding matrix of a table column and the rows that have a usable embedding.

    ``dtype`` as for `embedding_matrix` (None: a float32 column stays float32).
    ``fill_masked=False`` leaves the masked rows of a masked column as the column holds
    them, without the copy of the whole column that filling them takes (1 GB for
    1,000,000 256-d float32 vectors): for callers that use only the rows of ``valid``.

    Returns
    -------
    x : numpy.ndarray, (N, D)
        Non-finite rows hold NaN, and masked rows too (``fill_masked=True``).
    valid : numpy.ndarray of bool, (N,)
        The rows neither masked nor holding NaN or infinite values.
    """
    from .._annotate import check_table

    check_table(table)
    if column not in table.colnames:
        raise InputError(f"the table has no {column!r} column (columns: {table.colnames}); "
                         "make one with `astromorph predict embedding ...` or "
                         "`astromorph.annotate(..., model='embedding')`")
    col = table[column]
    if fill_masked:
        x, masked = embedding_matrix(col, allow_masked=True, dtype=dtype), None
    else:
        x, masked = _matrix_and_mask(col, allow_masked=True, dtype=dtype, dim=None)
    if x.shape[0] != len(table):
        raise InputError(f"column {column!r} is not one vector per row (shape {np.shape(col)})")
    valid = finite_rows(x)
    if masked is not None:
        valid &= ~masked
    return x, valid


def masked_column(values, valid, description):
    """A masked column of ``len(valid)`` rows: ``values`` for the rows where ``valid``,
    masked elsewhere."""
    from astropy.table import MaskedColumn

    values = np.asarray(values)
    n = len(valid)
    full = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    if values.dtype.kind == "f":
        full[...] = np.nan
    full[valid] = values
    return MaskedColumn(full, mask=~np.asarray(valid), description=description)


def add_columns(table, columns, on_conflict):
    """A copy of ``table`` (sharing its data) with ``columns`` (a dict name -> column) added
    by the policy ``on_conflict`` of `astromorph.annotate`; the copy and
    {new column name: name used}. ``table`` itself is never modified."""
    from astropy.table import Table

    from .._annotate import _add_columns

    out = table.copy(copy_data=False)
    used = _add_columns(out, Table(columns), on_conflict)
    return out, used

"""`SimilarityIndex`: nearest neighbours of embedding vectors by cosine similarity.

The exact backend multiplies the query vectors with the stored unit vectors
chunk by chunk (numpy BLAS) and keeps a running top-k, so memory stays bounded
and millions of rows take tens of milliseconds per query. Approximate
backends (faiss HNSW, hnswlib) are used only when installed and asked for
(``backend="faiss"`` / ``"hnswlib"``, or ``"auto"``).
"""
import logging

import numpy as np

from ._common import _matrix_and_mask, embedding_matrix, table_embeddings
from .._warnings import warn
from ..exceptions import (InputError, InvalidArgumentError, InvalidArgumentTypeError,
                          MissingDependencyError, ProvenanceMismatchError, UnusableInputWarning)
from ..preprocessing._checks import check_bool, check_choice, check_options, check_whole

__all__ = ["SimilarityIndex", "BACKENDS"]

log = logging.getLogger(__name__)

#: Search backends; ``"auto"`` takes the first approximate one installed, else ``"exact"``.
BACKENDS = ("exact", "faiss", "hnswlib")


def _whole(value, name):
    """``value`` as an int when it is a whole number, else `InvalidArgumentError`
    (`InvalidArgumentTypeError` for something that is no number, e.g. a string or None, and
    for a boolean: True is no row number or count)."""
    import operator

    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentTypeError(f"{name} must be a whole number, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    number = isinstance(value, (int, float, np.number))
    raise (InvalidArgumentError if number else InvalidArgumentTypeError)(
        f"{name} must be a whole number, got {value!r}")


def _given(value):
    """A coordinate as given, for a message: a number as Python writes it (``nan``,
    ``2.0``), anything else (a string, a Quantity) as its str."""
    if isinstance(value, (int, float, np.integer, np.floating)) and \
            not isinstance(value, (bool, np.bool_)):
        return repr(float(value))
    return str(value)


def _position_words(position):
    """One line naming a scalar SkyCoord, as its frame names its coordinates: ``"ra, dec =
    10.0, 2.0 deg (icrs)"``, ``"l, b = ... (galactic)"`` (its repr takes two lines)."""
    names = {rep: own for own, rep in position.frame.representation_component_names.items()}
    sph = position.spherical
    return (f"{names.get('lon', 'lon')}, {names.get('lat', 'lat')} = "
            f"{float(sph.lon.deg)!r}, {float(sph.lat.deg)!r} deg ({position.frame.name})")


def _rows_out_of_range(rows, n):
    """`InvalidArgumentError` naming the ``rows`` that are no row number of ``n`` rows
    (negative ones included: they do not count from the end)."""
    rows = sorted(set(rows))
    where = f"rows are 0 to {n - 1}" if n else "the index has no rows"
    if len(rows) == 1:
        return InvalidArgumentError(f"row {rows[0]} is out of range: {where}")
    return InvalidArgumentError(f"rows {rows[:5]}{' ...' if len(rows) > 5 else ''} are out "
                                f"of range: {where}")


def _topk(sim, k, rows=None):
    """Column indices of the ``k`` largest entries of every row of ``sim``, best first;
    equal entries by increasing ``rows`` (same shape as ``sim``; default: the column), so
    that tied neighbours (duplicate vectors) come in row order, whatever the chunking."""
    n = sim.shape[1]
    k = min(k, n)
    if rows is None:
        rows = np.broadcast_to(np.arange(n), sim.shape)
    if k < n:
        part = np.argpartition(sim, n - k, axis=1)[:, n - k:]
        # entries equal to the k-th largest that the partition left out may have lower
        # rows than those it kept: sort those (rare) queries whole (ties at -inf are
        # missing neighbours, returned as -1 whatever their order)
        kept = np.take_along_axis(sim, part, axis=1)
        kth = kept.min(axis=1, keepdims=True)
        tied = np.isfinite(kth[:, 0]) & ((sim == kth).sum(axis=1) > (kept == kth).sum(axis=1))
        for q in np.flatnonzero(tied):
            part[q] = np.lexsort((rows[q], -sim[q]))[:k]
    else:
        part = np.broadcast_to(np.arange(n), sim.shape).copy()
    top = np.take_along_axis(sim, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    part = np.take_along_axis(part, order, axis=1)
    # equal neighbours out of row order: sort those (rare) queries by similarity, then row
    top, top_rows = np.take_along_axis(top, order, axis=1), np.take_along_axis(rows, part, axis=1)
    unordered = ((top[:, 1:] == top[:, :-1]) & (top_rows[:, 1:] < top_rows[:, :-1])).any(axis=1)
    for q in np.flatnonzero(unordered):
        part[q] = part[q][np.lexsort((top_rows[q], -top[q]))]
    return part


def _chunk_candidates(sim, k, best_sim):
    """Entries of a chunk's similarities ``sim`` (Q, rows) that may enter the running top
    ``k`` (``best_sim``, Q x k, sorted): ``(similarities, columns)``, padded with -inf.

    Once every query holds ``k`` neighbours, only entries above its current k-th
    similarity can get in; with a few such entries per query they are gathered by one
    comparison over the chunk instead of a partial sort of every row (`_topk`, which
    took most of the search time). Otherwise, the chunk's own top ``k``.
    """
    if best_sim.shape[1] == k and np.isfinite(best_sim[:, -1]).all():
        above = sim > best_sim[:, -1:]
        counts = above.sum(axis=1)
        width = int(counts.max()) if len(counts) else 0
        if width <= 8 * k:  # a few per query (else the partial sort is as cheap)
            q, col = np.nonzero(above)  # row-major: by query, then column
            slot = np.arange(len(q)) - np.repeat(np.cumsum(counts) - counts, counts)
            cand_sim = np.full((len(sim), width), -np.inf, dtype=sim.dtype)
            cand_idx = np.zeros((len(sim), width), dtype=np.int64)
            cand_sim[q, slot] = sim[q, col]
            cand_idx[q, slot] = col
            return cand_sim, cand_idx
    top = _topk(sim, k)
    return np.take_along_axis(sim, top, axis=1), top


def _dot(vectors, idx, q, chunk_elements):
    """Similarities (float32) of the rows ``idx`` (Q, W) of ``vectors`` to the queries
    ``q`` (Q, D), each summed in float64 in one fixed order (products of float32 numbers
    are exact in float64; numpy's pairwise sum along the contiguous last axis depends on D
    alone): the same value for a row whatever the other rows and queries of the call."""
    out = np.empty(idx.shape, np.float32)
    per = max(1, chunk_elements // max(1, idx.shape[1] * q.shape[1]))
    for s in range(0, len(q), per):
        block = vectors[idx[s:s + per]].astype(np.float64)
        out[s:s + per] = np.sum(block * q[s:s + per, None, :].astype(np.float64), axis=-1)
    return out


class _Exact:
    """Brute-force cosine search: one matrix product per chunk of rows, running top-k."""

    name = "exact"

    def __init__(self, vectors, chunk_elements, invalid):
        self.vectors = vectors
        self.chunk_elements = int(chunk_elements)
        self.invalid = invalid if invalid.any() else None

    def search(self, q, k, exclude):
        """The top ``k`` rows of every query by `_dot` similarity (rounded to float32),
        equal ones by row: the same whatever ``chunk_elements`` and however many queries.

        BLAS's float32 products, whose last bits depend on the shape of the block a row
        is multiplied in, only choose the candidates: ``2 k`` of them (`_blas_search`);
        where the last of those is not ``err`` below the k-th similarity, every row that
        is not (`_gather`), so that none left out can rank above the k-th or tie with it.
        """
        n = len(self.vectors)
        k = min(k, n)
        if k == 0:  # no rows
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        err = (self.vectors.shape[1] + 4) * float(np.finfo(np.float32).eps)  # unit vectors
        idx, sim32 = self._blas_search(q, min(n, 2 * k), exclude)
        sim = _dot(self.vectors, idx, q, self.chunk_elements)
        sim[~np.isfinite(sim32)] = -np.inf  # unusable or excluded rows stay out
        order = np.lexsort((idx, -sim), axis=-1)[:, :k]
        rows, sims = np.take_along_axis(idx, order, axis=1), np.take_along_axis(sim, order, 1)
        redo = np.flatnonzero((idx.shape[1] < n) & np.isfinite(sim32[:, -1])
                              & (sim32[:, -1].astype(np.float64) + err >= sims[:, -1]))
        if len(redo):  # many rows about as similar as the k-th (e.g. duplicate vectors)
            qi, row = self._gather(q[redo], sims[redo, -1].astype(np.float64) - err,
                                   None if exclude is None else [exclude[i] for i in redo])
            sim = _dot(self.vectors, row[:, None], q[redo][qi], self.chunk_elements)[:, 0]
            order = np.lexsort((row, -sim, qi))
            starts = np.searchsorted(qi[order], np.arange(len(redo)))  # >= k rows each
            take = order[starts[:, None] + np.arange(k)]
            rows[redo], sims[redo] = row[take], sim[take]
        return rows, sims

    def _blocks(self, q, exclude):
        """``(start, similarities)`` of every chunk of rows (BLAS float32, queries x rows),
        -inf for the unusable and the excluded rows."""
        n = len(self.vectors)
        # Rows per chunk: the (queries x rows) similarity block stays under chunk_elements
        # (a single query over millions of rows is one matrix-vector product).
        step = max(1, self.chunk_elements // max(1, len(q)))
        for start in range(0, n, step):
            block = self.vectors[start:start + step]
            sim = block @ q[0] if len(q) == 1 else q @ block.T  # (Q, rows)
            sim = sim.reshape(len(q), len(block))
            if self.invalid is not None:
                sim[:, self.invalid[start:start + len(block)]] = -np.inf
            if exclude is not None:
                for qi, rows in enumerate(exclude):
                    local = [r - start for r in rows if start <= r < start + len(block)]
                    if local:
                        sim[qi, local] = -np.inf
            yield start, sim

    def _gather(self, q, threshold, exclude):
        """Every (query, row) whose BLAS similarity is at least the query's ``threshold``,
        as two arrays ordered by query."""
        per = max(1, self.chunk_elements // len(self.vectors))  # queries per pass
        found = []
        for s in range(0, len(q), per):
            for start, sim in self._blocks(q[s:s + per],
                                           None if exclude is None else exclude[s:s + per]):
                qi, col = np.nonzero(sim >= threshold[s:s + per, None])
                found.append((qi + s, col + start))
        qi = np.concatenate([f[0] for f in found])
        row = np.concatenate([f[1] for f in found])
        order = np.argsort(qi, kind="stable")
        return qi[order], row[order]

    def _blas_search(self, q, k, exclude):
        """Top ``k`` rows of every query by BLAS float32 similarity (running top k)."""
        n = len(self.vectors)
        # Queries per pass: their running top k (queries x k) stays under chunk_elements
        # too (many queries with a large k would otherwise hold several such blocks)
        per_pass = max(1, self.chunk_elements // max(1, min(k, n)))
        if len(q) > per_pass:
            rows = np.empty((len(q), min(k, n)), np.int64)
            sims = np.empty((len(q), min(k, n)), np.float32)
            for s in range(0, len(q), per_pass):
                rows[s:s + per_pass], sims[s:s + per_pass] = self._blas_search(
                    q[s:s + per_pass], k, None if exclude is None else exclude[s:s + per_pass])
            return rows, sims
        best_sim = np.full((len(q), 0), -np.inf, dtype=np.float32)
        best_idx = np.zeros((len(q), 0), dtype=np.int64)
        for start, sim in self._blocks(q, exclude):
            new_sim, new_idx = _chunk_candidates(sim, k, best_sim)
            cand_sim = np.concatenate([best_sim, new_sim], axis=1)
            cand_idx = np.concatenate([best_idx, new_idx + start], axis=1)
            keep = _topk(cand_sim, k, cand_idx)
            best_sim = np.take_along_axis(cand_sim, keep, axis=1)
            best_idx = np.take_along_axis(cand_idx, keep, axis=1)
        return best_idx, best_sim


class _Faiss:
    name = "faiss"

    def __init__(self, vectors, m=32, ef_search=128):
        import faiss

        self.index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efSearch = ef_search
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, q, k, exclude):
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, k + extra)
        sim, idx = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k + extra)
        return _drop_excluded(idx.astype(np.int64), sim, exclude, k)


class _Hnswlib:
    name = "hnswlib"

    def __init__(self, vectors, m=32, ef_construction=200, ef_search=128):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        self.index.init_index(max_elements=len(vectors), ef_construction=ef_construction, M=m)
        self.index.add_items(np.ascontiguousarray(vectors, dtype=np.float32),
                             np.arange(len(vectors)))
        self.ef_search = ef_search

    def search(self, q, k, exclude):
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        kk = min(k + extra, self.index.get_current_count())
        self.index.set_ef(max(self.ef_search, kk))
        idx, dist = self.index.knn_query(np.ascontiguousarray(q, dtype=np.float32), k=kk)
        return _drop_excluded(idx.astype(np.int64), 1.0 - dist, exclude, k)


def _drop_excluded(idx, sim, exclude, k):
    if exclude is None:
        return idx[:, :k], sim[:, :k].astype(np.float32)
    out_i = np.full((len(idx), k), -1, dtype=np.int64)
    out_s = np.full((len(idx), k), -np.inf, dtype=np.float32)
    for qi, rows in enumerate(exclude):
        keep = ~np.isin(idx[qi], list(rows)) & (idx[qi] >= 0)
        i, s = idx[qi][keep][:k], sim[qi][keep][:k]
        out_i[qi, :len(i)], out_s[qi, :len(s)] = i, s
    return out_i, out_s


def _norms(x):
    """L2 norms of the rows of the float32 matrix ``x``: in float32 (fast), except for the
    rows whose squares may have overflowed or underflowed there (norms above 1e15 or below
    1e-15, non-finite or zero), summed again in float64 (finite non-zero rows of 1e20 or
    1e-23 are not infinite or zero)."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        redo = np.flatnonzero(~((norms > 1e-15) & (norms < 1e15)))
        if len(redo):
            norms[redo] = np.sqrt(np.einsum("ij,ij->i", x[redo], x[redo], dtype=np.float64))
    return norms


def _query_model(meta, column, model=None, *, providers=None, threads=None, precision=None):
    """The loaded model that embeds a query image for ``column`` of a table with ``meta``.

    ``model`` (a name, path or `Model`, loaded with the runtime options) when given; else
    the model that the table's provenance says made ``column`` (its name, and its precision
    unless ``precision`` is given), so that the image lands in the space of the vectors;
    else, for a table that does not say (or no table: ``meta`` None), the shipped
    ``embedding``, with a `MissingProvenanceWarning` when a table was given.
    """
    from ._state import describe, table_provenance, table_run
    from .._model import as_model
    from ..exceptions import MissingProvenanceWarning, ModelNotFoundError

    if model is not None:
        return as_model(model, providers=providers, threads=threads, precision=precision)
    run = None if meta is None else table_run(meta, column)
    name = None if run is None else run.get("model")
    if name in (None, ""):  # the shipped model (its options checked before any warning)
        model = as_model("embedding", providers=providers, threads=threads,
                         precision=precision)
        if meta is not None and table_provenance(meta, column) is None:
            warn(f"the table does not say which embedding model made its {column!r} column "
                 "(no astromorph_model/astromorph_model_sha256 meta for it): the query image "
                 "is embedded with the shipped 'embedding' model, which cannot be checked to "
                 "be the one that made the vectors; pass model= (-m) the model that did",
                 MissingProvenanceWarning)
        return model
    if precision is None and run.get("model_precision") not in (None, ""):
        precision = str(run["model_precision"])
    try:
        return as_model(str(name), providers=providers, threads=threads, precision=precision)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"column {column!r} of the table was made by embedding model "
            f"{describe(table_provenance(meta, column))}, which is needed to embed the query "
            f"image in the same space but cannot be loaded ({exc}); pass model= (-m) its "
            "file or folder") from None


def _installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _column_copy(col, *, copy=True):
    """What of a position column its parsed positions depend on, copied (or, not
    ``copy``, a view where it can be: to compare with a copy): its type, unit, dtype,
    values (as raw bytes: NaN equals NaN) and mask; None for a column whose values are
    Python objects (no cheap copy to compare)."""
    data = np.asarray(np.ma.getdata(getattr(col, "value", col)))
    if data.dtype.hasobject:
        return None
    data = np.ascontiguousarray(data).reshape(-1)
    size = data.dtype.itemsize
    view = next((f"u{b}" for b in (8, 4, 2, 1) if size % b == 0), None)
    raw = data.view(view) if data.size else data
    mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else None
    if copy:
        raw, mask = raw.copy(), None if mask is None else mask.copy()
    unit = getattr(col, "unit", None)
    return (type(col), type(unit), str(unit), data.dtype.str, np.shape(col), raw, mask)


def _same_copy(a, b):
    """Two `_column_copy` results equal (values compared bytewise)."""
    if a is None or b is None or a[:5] != b[:5]:
        return False
    if not np.array_equal(a[5], b[5]):
        return False
    return (a[6] is None) == (b[6] is None) and (a[6] is None or np.array_equal(a[6], b[6]))


class _Positions:
    """The table's positions as `row_of_position` reads them, kept between its calls:
    the rows that have both a position and an embedding (``ok``), their unit vectors in the
    frame of the table's positions (float64, ``ok`` x 3), the positions (SkyCoord), the
    warnings their reading gave, and, for RA/Dec columns, what the reading depends on (the
    column names, types and UCDs, the options, a copy of every RA and Dec column it may
    have read), compared on every call. SkyCoord columns are read again on every call
    (cheap: astropy keeps their representation; their rows' unit vectors are what costs,
    about 9 ms per 100,000 rows), as are columns of Python objects."""

    def __init__(self, key, copies, coords, ok, warned):
        from astropy.coordinates import UnitSphericalRepresentation

        self.key, self.copies, self.coords, self.ok, self.warned = key, copies, coords, ok, warned
        self.frame = coords.frame.replicate_without_data()
        sph = coords[ok].represent_as(UnitSphericalRepresentation) if len(ok) else None
        self.xyz = np.zeros((len(ok), 3)) if sph is None else _unit_vectors(sph)

    @staticmethod
    def key_of(table, ra_col, dec_col, coord_col):
        """What, beside the RA/Dec columns' contents, decides how ``table``'s positions are
        read: the options and every column's name, type and UCD (positions are found by
        name, a SkyCoord column first, else by UCD)."""
        return (ra_col, dec_col, coord_col) + tuple(
            (name, type(col), str((getattr(col.info, "meta", None) or {}).get("ucd", "")))
            for name, col in table.columns.items())

    @staticmethod
    def columns_read(table, ra_col, dec_col, coord_col):
        """The RA and Dec columns `_positions` may read (the ones it uses and those it
        compares with them), or None where it reads a SkyCoord column."""
        from astropy.coordinates import SkyCoord
        from .._annotate import _position_candidates

        if coord_col is not None or (ra_col is None and dec_col is None and any(
                isinstance(col, SkyCoord) for col in table.columns.values())):
            return None
        ra_found, dec_found = _position_candidates(table, ra_col, dec_col)
        return [n for n in dict.fromkeys(ra_found + dec_found) if n in table.colnames]

    def still_true(self, table, ra_col, dec_col, coord_col):
        """The table's positions are still these (same key, same RA/Dec columns)."""
        if self.copies is None or self.key != self.key_of(table, ra_col, dec_col, coord_col):
            return False
        return all(_same_copy(copy, _column_copy(table[name], copy=False))
                   for name, copy in self.copies.items())


def _unit_vectors(sph):
    """Unit vectors (float64, N x 3) of a UnitSphericalRepresentation."""
    lon, lat = sph.lon.to_value("rad"), sph.lat.to_value("rad")
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def _cosine_range(sim):
    """Similarities as float32 within [-1, 1], the range of a cosine (float32 sums of
    identical unit vectors give 1.0000001), the padding's -inf kept."""
    sim = np.asarray(sim, np.float32)
    return np.where(np.isfinite(sim), np.clip(sim, -1.0, 1.0), sim)

class SimilarityIndex:
    """Nearest neighbours of embedding vectors by cosine similarity.

    Parameters
    ----------
    embeddings : array_like or Column, (N, D)
        One vector per row (e.g. the ``embedding`` column written by the
        ``embedding`` model). Masked or non-finite rows are never returned.
        A column of a table (``table["embedding"]``) brings the table's
        record of the model that made it, which image queries are embedded
        with by default and checked against (as with `from_table`); a plain
        array records none, so image queries use the shipped ``embedding``
        model unless given ``model=``, and one embedded with another model
        of the same dimension cannot be caught: pass the column, or use
        `from_table`.
    table : astropy.table.Table, optional
        The table the vectors belong to (row ``i`` = vector ``i``); its
        columns are copied into query results and its positions are used by
        ``query(position=...)``.
    backend : {"exact", "auto", "faiss", "hnswlib"}, optional
        ``"exact"`` (default): brute-force numpy search, exact. ``"faiss"`` /
        ``"hnswlib"``: an approximate HNSW graph (needs the package);
        ``"auto"``: the first of those installed, else exact.
    chunk_elements : int, optional
        Largest block of similarities (rows x queries), and of running
        top-k neighbours (queries x k), the exact backend holds at once
        (bounds its working memory to a small multiple of 4 bytes each;
        many queries are taken a few at a time).

    Warns
    -----
    astromorph.exceptions.UnusableInputWarning
        No vector is usable (every row masked, non-finite or zero): every query
        will find no neighbours.

    Notes
    -----
    Vectors are L2-normalised (a copy is made only when they are not float32
    unit vectors already), so the similarity is the cosine and ``distance``
    is ``1 - similarity``. One query over a million 128-d vectors takes
    tens of milliseconds with the exact backend.

    Examples
    --------
    >>> index = SimilarityIndex.from_table(table)            # doctest: +SKIP
    >>> neighbours = index.query(row=42, k=25)                # doctest: +SKIP
    >>> index.gallery(neighbours, "neighbours.png")           # doctest: +SKIP
    """

    def __init__(self, embeddings, *, table=None, backend="exact", chunk_elements=1 << 24):
        self._build(embeddings, None, table=table, backend=backend,
                    chunk_elements=chunk_elements)

    def _build(self, embeddings, usable, *, table=None, backend="exact",
               chunk_elements=1 << 24):
        """`__init__`, with ``usable`` the rows of ``embeddings`` that have a vector (then a
        2-d float32 array, as `table_embeddings` gives) or None (its mask says)."""
        check_choice(backend, "backend", BACKENDS + ("auto",))
        from astropy.table import Table

        if table is not None and not isinstance(table, Table):
            raise InvalidArgumentTypeError(f"table must be an astropy Table, got {table!r}")
        chunk_elements = check_whole(chunk_elements, "chunk_elements")
        if table is not None and len(table) != len(embeddings):
            raise InvalidArgumentError(f"table has {len(table)} rows but there are "
                                       f"{len(embeddings)} embedding vectors")
        # masked rows are left as the column holds them and marked unusable, without the
        # copy of the whole column that filling them with NaN took (1 GB for 1,000,000 256-d
        # float32 vectors): the index makes its own normalised copy anyway
        if usable is None:
            x, masked = _matrix_and_mask(embeddings, allow_masked=True, dtype=np.float32,
                                         dim=None)
            usable = None if masked is None else ~masked
        else:
            x = embeddings
        x = np.ascontiguousarray(x)
        if x.shape[1] == 0:  # ``[]``: nothing says what a query vector should be
            raise InvalidArgumentError(f"an index needs vectors of at least one dimension, "
                                       f"got shape {x.shape}")
        norms = _norms(x)  # NaN/inf rows -> non-finite norm
        valid = np.isfinite(norms) & (norms > 0)
        if usable is not None:
            valid &= usable
        self.valid = valid
        if len(valid) and not valid.any():
            warn(f"none of the {len(valid)} embedding vectors is usable (masked, NaN, infinite "
                 "or zero, e.g. every row flagged): every query will find no neighbours",
                 UnusableInputWarning)
        # unit to float32 rounding (the model's output) is kept: a looser tolerance would
        # rank by dot products, not cosines (1e-4 off unit swaps neighbours 1e-4 apart)
        if not (valid.all() and np.all(np.abs(norms - 1.0) <= 1e-6)):
            # a normalised copy (one: changed in place); unusable rows become zero vectors
            # (never returned)
            x = np.divide(x, np.where(valid, norms, 1.0)[:, None], dtype=np.float32)
            x[~valid] = 0.0
        self.vectors = x
        self.table = table
        self._sky = None  # the table's positions, once read (`_sky_positions`)
        # the table column of the vectors, when known, and that table's meta (which says
        # what model made them): from_table's, or that of a column passed as embeddings
        parent = getattr(getattr(embeddings, "info", None), "parent_table", None)
        if parent is not None and getattr(embeddings, "name", None) in parent.colnames:
            self._column, self._column_meta = embeddings.name, parent.meta
        else:
            self._column, self._column_meta = None, None
        self.dim = self.vectors.shape[1]
        if backend == "auto":
            backend = next((b for b in ("faiss", "hnswlib") if _installed(b)), "exact")
        if backend == "exact":
            self._backend = _Exact(self.vectors, chunk_elements, ~valid)
        else:
            if not _installed(backend):
                package = "faiss-cpu" if backend == "faiss" else backend
                raise MissingDependencyError(f"backend {backend!r} needs the {backend} package "
                                             f"(`pip install {package}`)")
            rows = np.flatnonzero(valid)
            self._rows = rows
            engine = _Faiss if backend == "faiss" else _Hnswlib
            self._backend = engine(self.vectors[rows])
        self.backend = backend
        log.info("SimilarityIndex: %d vectors of dimension %d (%d unusable), backend %s",
                 len(self.vectors), self.dim, int((~valid).sum()), backend)

    @classmethod
    def from_table(cls, table, *, column="embedding", **kwargs):
        """Index the ``column`` vectors of ``table`` (rows without one are skipped).

        Parameters
        ----------
        table : astropy.table.Table
            A table with an embedding column (e.g. from ``astromorph predict embedding``).
        column : str, optional
            The embedding column.
        **kwargs
            `SimilarityIndex` options (``backend``, ``chunk_elements``).

        Returns
        -------
        SimilarityIndex

        Raises
        ------
        astromorph.exceptions.InputError
            No ``column`` in ``table``, or one that is not one vector per row.
        astromorph.exceptions.InvalidArgumentError
            A ``column`` whose values are no numbers, a bad option.
        astromorph.exceptions.InvalidArgumentTypeError
            An unknown keyword (also a `TypeError`), before the table is read.
        """
        check_options(kwargs, ("backend", "chunk_elements"), "SimilarityIndex.from_table")
        x, usable = table_embeddings(table, column, dtype=np.float32, fill_masked=False)
        index = cls.__new__(cls)
        index._build(x, usable, table=table, **kwargs)
        index._column, index._column_meta = column, table.meta
        return index

    def __len__(self):
        return len(self.vectors)

    def __repr__(self):
        return f"<SimilarityIndex {len(self)} x {self.dim} ({self.backend})>"

    # ----------------------------------------------------------------- search
    def search(self, vectors, *, k=25, exclude=None):
        """Raw nearest-neighbour search.

        Parameters
        ----------
        vectors : array_like, (Q, D) or (D,)
            Query vectors (normalised here).
        k : int, optional
            Neighbours per query.
        exclude : sequence of sequences of int, optional
            Rows not to return, one collection per query (e.g. the query row);
            each 0 to ``len(index) - 1``.

        Returns
        -------
        rows : numpy.ndarray of int64, (Q, k)
            Row numbers, most similar first, equal similarities (e.g.
            duplicate vectors) by row number with the exact backend (``-1``
            where fewer than ``k`` rows could be returned).
        similarity : numpy.ndarray of float32, (Q, k)
            Cosine similarities (``-inf`` for missing neighbours); with the exact
            backend each is summed in float64 in one fixed order, so that rows and
            similarities do not depend on ``chunk_elements`` or on the other queries.

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            Vectors that are no numbers or of another dimension than the index's, a ``k``
            below 1, excluded rows out of range; `InvalidArgumentTypeError` for a ``k`` or
            ``exclude`` of the wrong type.
        """
        k = _whole(k, "k")
        if k < 1:
            raise InvalidArgumentError(f"k must be >= 1, got {k}")
        # masked rows: NaN; no vectors ([]): no rows, as for the heads
        q = embedding_matrix(vectors, allow_masked=True, dtype=np.float32, dim=self.dim)
        if q.shape[1] != self.dim:
            raise InvalidArgumentError(f"query vectors have dimension {q.shape[1]}, the index "
                                       f"{self.dim}")
        norms = _norms(q)[:, None]
        unusable = np.flatnonzero(~(np.isfinite(norms[:, 0]) & (norms[:, 0] > 0)))
        if len(unusable):
            raise InvalidArgumentError(
                f"query vectors must be finite and non-zero; {len(unusable)} of {len(q)} are "
                f"not (query {', '.join(map(str, unusable[:5]))}"
                f"{', ...' if len(unusable) > 5 else ''})")
        q = q / norms
        if exclude is not None and (isinstance(exclude, (str, bytes)) or not all(
                np.iterable(e) and not isinstance(e, (str, bytes))
                for e in (exclude if np.iterable(exclude) else [None]))):
            raise InvalidArgumentTypeError(f"exclude must be one collection of rows per query, "
                                           f"got {exclude!r}")
        if exclude is not None and len(exclude) != len(q):
            raise InvalidArgumentError("exclude needs one collection of rows per query")
        if exclude is not None:
            exclude = [{_whole(r, "an excluded row") for r in e} for e in exclude]
            bad = [r for e in exclude for r in e if not 0 <= r < len(self)]
            if bad:
                raise _rows_out_of_range(bad, len(self))
        # more neighbours than rows cannot be found: the backends look for at most len(self)
        # (a huge k no longer sizes their work), the rest is padding
        inner_k = max(1, min(k, len(self)))
        if self.backend == "exact":
            idx, sim = self._backend.search(q, inner_k, exclude)  # new arrays: changed in place
            idx[~np.isfinite(sim)] = -1
            if idx.shape[1] < k:  # fewer rows than k
                pad = k - idx.shape[1]
                idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
                sim = np.pad(sim, ((0, 0), (0, pad)), constant_values=-np.inf)
            return idx, _cosine_range(sim)
        # approximate backends index only valid rows: map to and from table rows
        local_ex = None
        if exclude is not None:
            local_ex = []
            for e in exclude:
                e = np.fromiter(e, dtype=np.int64, count=len(e))
                pos = np.searchsorted(self._rows, e)
                hit = (pos < len(self._rows)) & (
                    self._rows[np.minimum(pos, len(self._rows) - 1)] == e)
                local_ex.append(set(pos[hit].tolist()))
        idx, sim = self._backend.search(q, inner_k, local_ex)
        rows = np.where(idx >= 0, self._rows[np.clip(idx, 0, None)], -1)
        if rows.shape[1] < k:
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            sim = np.pad(sim, ((0, 0), (0, pad)), constant_values=-np.inf)
        return rows, _cosine_range(sim)

    # ------------------------------------------------------------------ query
    def row_of_position(self, position, *, max_separation=None, ra_col=None, dec_col=None,
                        coord_col=None):
        """Row of the table nearest to a sky position, and its separation.

        Parameters
        ----------
        position : astropy.coordinates.SkyCoord or (ra, dec) in degrees
        max_separation : Quantity or float (arcsec), optional
            Raise `~astromorph.exceptions.InputError` when the nearest row with
            an embedding is farther (default: no limit).
        ra_col, dec_col, coord_col : str, optional
            Position columns (default: as `astromorph.annotate` finds them).

        Returns
        -------
        row : int
            Row number in the indexed table.
        separation : astropy.units.Quantity
            Its distance from ``position`` (arcsec).

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            No table, or a position that cannot be read or transformed to the frame of
            the table's positions (e.g. AltAz without a location and time).
        astromorph.exceptions.InputError
            No row has both a position and an embedding, or the nearest is farther than
            ``max_separation``.

        Notes
        -----
        The table's RA/Dec columns are read once and kept, as unit vectors, with a copy of
        the columns read, compared on every call: a change to them (a value edited in
        place, a unit, a mask, a column replaced, renamed or added) reads them again. The
        nearest rows by dot product are then measured by astropy's separation, the first
        by row where several are as near. A ``SkyCoord`` column is read on every call, and
        the unit vectors of its rows computed again (about 9 ms per 100,000 rows).
        """
        import astropy.units as u
        from astropy.coordinates import Angle, SkyCoord, UnitSphericalRepresentation
        from astropy.coordinates.errors import ConvertError

        if self.table is None:
            raise InvalidArgumentError("querying by position needs the index's table; build "
                                       "it with SimilarityIndex.from_table(table)")
        not_finite = None
        try:
            if not isinstance(position, SkyCoord):
                ra, dec = position
                ra_deg, dec_deg = Angle(ra, unit=u.deg).deg, Angle(dec, unit=u.deg).deg
                if np.abs(ra_deg) > 360:  # before SkyCoord wraps 400 to 40
                    raise InvalidArgumentError(f"the right ascension {ra!r} is more than a full "
                                               "turn (360 degrees, 24 h) from 0: a typing error?")
                # (SkyCoord refuses an infinite Dec as "Latitude angle(s) must be within...")
                if np.ndim(ra_deg) == np.ndim(dec_deg) == 0 and not (
                        np.isfinite(ra_deg) and np.isfinite(dec_deg)):
                    not_finite = f"ra, dec = {_given(ra)}, {_given(dec)} deg"
                else:
                    position = SkyCoord(ra, dec, unit=u.deg)
        except (ValueError, TypeError, u.UnitsError) as exc:
            raise InvalidArgumentError(f"cannot read the position {position!r}: give a SkyCoord "
                                       f"or (ra, dec) in degrees ({exc})") from None
        if not_finite is None:
            if not position.isscalar:
                raise InvalidArgumentError(f"query one position at a time, got {len(position)}")
            if not (np.isfinite(position.spherical.lon.deg)
                    and np.isfinite(position.spherical.lat.deg)):
                not_finite = _position_words(position)
        if not_finite is not None:
            raise InvalidArgumentError(f"{not_finite} is not a position: both coordinates "
                                       "must be finite")
        limit = None
        if max_separation is not None:
            if isinstance(max_separation, (bool, np.bool_)):  # not 1 arcsec
                raise InvalidArgumentTypeError(f"max_separation must be an angle (arcsec), "
                                               f"got {max_separation!r}")
            try:
                limit = u.Quantity(max_separation, u.arcsec)
            except (TypeError, ValueError, u.UnitsError):
                limit = None
            if (limit is None or not limit.isscalar
                    or not (np.isfinite(limit.value) and limit.value >= 0)):
                raise InvalidArgumentError(f"max_separation must be a non-negative angle (arcsec), "
                                           f"got {max_separation!r}")
        known = self._sky_positions(ra_col, dec_col, coord_col)
        ok = known.ok
        if not len(ok):
            raise InputError("no row of the table has both a position and an embedding")
        # in the table's frame, the position transformed explicitly: separation() would
        # transform the rows into the position's frame and warn
        # (NonRotationTransformationWarning) for FK4 and other frames that are no rotation
        try:
            position = position.transform_to(known.frame)
        except (ValueError, TypeError, AttributeError, ConvertError, u.UnitsError) as exc:
            # (an AltAz position without a location or time: AttributeError)
            raise InvalidArgumentError(f"cannot transform the position "
                                       f"{_position_words(position)} to the frame of the "
                                       f"table's positions ({exc})") from None
        # the nearest rows by unit vectors (the largest cosine), then astropy's separation
        # of those within 1e-13 of the largest: float64 cosines are within 1e-15 of the
        # true ones, so a row left out is more than 1e-13 rad (2e-8 arcsec) farther than
        # one kept, far beyond the rounding of either; the first of equal ones by row
        q = _unit_vectors(position.represent_as(UnitSphericalRepresentation))
        cosine = known.xyz @ q
        near = ok[np.flatnonzero(cosine >= cosine.max() - 1e-13)]
        sep = position.separation(known.coords[near])
        best = int(np.argmin(sep.deg))
        row, separation = int(near[best]), sep[best].to(u.arcsec)
        if limit is not None:
            if not separation <= limit:
                raise InputError(f"the nearest row with an embedding (row {row}) is "
                                 f"{separation:.2f} from {position.to_string('decimal')}, more "
                                 f"than max_separation={limit}")
        return row, separation

    def _sky_positions(self, ra_col, dec_col, coord_col):
        """The table's positions (`_Positions`): those kept from an earlier call where
        nothing they were read from changed, else read again (and kept); the warnings of
        their reading given again on every call."""
        from .._annotate import _positions
        from .._warnings import collecting

        known = getattr(self, "_sky", None)
        names = all(c is None or isinstance(c, str) for c in (ra_col, dec_col, coord_col))
        if not (names and known is not None
                and known.still_true(self.table, ra_col, dec_col, coord_col)):
            with collecting() as warned:
                coords, bad = _positions(self.table, ra_col, dec_col, coord_col,
                                         what="table")
            key = copies = None
            read = _Positions.columns_read(self.table, ra_col, dec_col, coord_col)
            if read is not None:
                key = _Positions.key_of(self.table, ra_col, dec_col, coord_col)
                copies = {name: _column_copy(self.table[name]) for name in read}
                if any(c is None for c in copies.values()):
                    copies = None
            known = _Positions(key, copies, coords, np.flatnonzero(~bad & self.valid), warned)
            self._sky = known if copies is not None else None
        for message, category in known.warned:
            warn(message, category)
        return known

    def embed_image(self, image, *, model=None):
        """Embedding vector of one image, computed with an astromorph model.

        Parameters
        ----------
        image : str, os.PathLike or array_like
            A file (FITS, JPEG, PNG: read and preprocessed as
            `astromorph.predict_files` does), a raw colour cutout ``(H, W, 3)``
            (uint8, or floats in [0, 1]) centred on the galaxy and of the
            angular size the model card gives, or a network-ready stamp of the
            model's input shape.
        model : str, os.PathLike or Model, optional
            The embedding model. Default: the model that made the indexed vectors, as
            the table's meta names it (``astromorph_model``, and the
            ``astromorph_model_precision`` variant), so that the image is embedded
            in their space; for vectors that do not say, the shipped ``embedding``.

        Returns
        -------
        numpy.ndarray, (D,)

        Raises
        ------
        astromorph.exceptions.InputNotFoundError
            ``image`` names no file (a folder or a glob pattern is not one image).
        astromorph.exceptions.InputError
            ``image`` is a folder or not a regular file, holds no usable stamp (also a
            constant one, e.g. all zero: flag ``CONSTANT``), or is an array of another
            shape.
        astromorph.exceptions.InvalidArgumentError
            ``model`` has no embedding output, or one of another length than the
            indexed vectors (the message names both).
        astromorph.exceptions.ProvenanceMismatchError
            The index was built with `from_table`, or from a table's column, and the
            table's meta says that another embedding model, or another version of it,
            made its vectors: ``model`` given, or the installed model of the table's
            name is another version.
        astromorph.exceptions.ModelNotFoundError
            No ``model`` given, and the model the table names is not installed.

        Warns
        -----
        astromorph.exceptions.MissingProvenanceWarning
            No ``model`` given, and the index's table does not say which model made
            its vectors: the shipped ``embedding`` is used.
        """
        return self._embed_image(image, model)[0]

    def _embed_image(self, image, model):
        """`embed_image`, and the `~astromorph.Flag` bits of the image's stamp."""
        import os

        from .._flags import Flag
        from .._io import check_input_file

        if isinstance(image, (str, os.PathLike)):  # a missing file before any model is loaded
            # one file: predict_files would expand a folder or a glob pattern
            image = check_input_file(image, "image")
        model = _query_model(self._column_meta, self._column, model)
        out = [o["name"] for o in model.card["outputs"] if o.get("kind") == "embedding"]
        if not out:
            raise InvalidArgumentError(f"model {model.name!r} has no embedding output")
        self._check_model(model)
        if isinstance(image, (str, os.PathLike)):
            import warnings

            from .._predict import predict_files
            from .._warnings import catch_warnings

            # astromorph's block: taking turns with its other threads' (one file: no reader
            # thread of predict_files waits for this one's lock)
            with catch_warnings():
                warnings.simplefilter("ignore")
                result = predict_files(model, [image], progress=False)
            col = result["embedding"]
            usable = ~np.ma.getmaskarray(col).any(axis=1)
            flags = next((np.asarray(result[c]) for c in result.colnames
                          if c.endswith("_flags")), np.zeros(len(result), np.int32))
            # a constant picture (e.g. all zero) has a vector that means nothing
            usable &= (flags & int(Flag.CONSTANT)) == 0
            if not usable.any():
                reason = (result["reason"][0] if "reason" in result.colnames
                          and result["reason"][0] else "unusable")
                raise InputError(f"no embedding for {str(image)!r}: {reason}")
            first = np.flatnonzero(usable)[0]
            return (np.asarray(np.ma.getdata(col)[first], dtype=np.float32),
                    int(flags[first]))
        arr = np.asarray(image)
        shape = tuple(model.input_shape)
        flags = np.zeros(1, np.int32)
        if arr.shape in (shape, (1, *shape)):
            x = arr.reshape(1, *shape).astype(np.float32)
            if x.size and np.all(x == x.flat[0]):  # as preprocessing flags a constant cutout
                flags[:] = int(Flag.CONSTANT)
        elif arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3):
            from .._adapters import RawStamps, prepare

            rgb = arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=-1)
            if rgb.dtype != np.uint8:
                rgb = rgb.astype(np.float32)
                if not np.all(np.isfinite(rgb)) or rgb.min() < 0 or rgb.max() > 1 + 1e-6:
                    raise InputError("a floating-point colour cutout must hold finite display "
                                     "values in [0, 1]; pass uint8 for 8-bit images")
            x, flags = prepare(model, RawStamps("colour", rgb[None]))
        else:
            raise InputError(f"cannot embed an image of shape {arr.shape}: pass a file, a "
                             f"colour cutout (H, W, 3) or a network-ready stamp {shape}")
        if flags[0] & int(Flag.CONSTANT):
            raise InputError(f"no embedding for the array of shape {arr.shape}: the image is "
                             f"constant ({np.ravel(arr)[0]!r}): its vector would mean nothing")
        return model.predict(x, progress=False)[out[0]][0], int(flags[0])

    def _check_model(self, model):
        """`ProvenanceMismatchError` when the indexed table says that another embedding
        model (or version) than ``model`` made its vectors (same length, other meaning)."""
        from ._state import _differ, as_provenance, describe, table_provenance

        mine = as_provenance(model)
        made_by = None if self._column is None else table_provenance(self._column_meta,
                                                                      self._column)
        if made_by is not None and _differ(made_by, mine):
            raise ProvenanceMismatchError(
                f"column {self._column!r} of the indexed table was made by embedding model "
                f"{describe(made_by)}, but the image would be embedded with "
                f"{describe(mine)}: their similarities would be meaningless. Pass model= "
                "the model that made the table", fitted=mine, table=made_by)
        size = next(o.get("size") for o in model.card["outputs"] if o.get("kind") == "embedding")
        if size is not None and size != self.dim:
            raise InvalidArgumentError(
                f"embedding model {describe(mine)} makes {size}-d vectors, but the index "
                f"holds {self.dim}-d vectors"
                f"{f' made by {describe(made_by)}' if made_by else ''}: pass model= the "
                "model that made them")

    def query(self, row=None, *, position=None, image=None, vector=None, k=25,
              include_query=False, model=None, max_separation=None, ra_col=None,
              dec_col=None, coord_col=None, columns=None):
        """The ``k`` rows most similar to a query, as a table.

        Give exactly one of ``row``, ``position``, ``image`` or ``vector``.

        Parameters
        ----------
        row : int, optional
            Query by the embedding of this row, 0 to ``len(index) - 1`` (a
            negative row is refused, not counted from the end; excluded from
            the results unless ``include_query``).
        position : SkyCoord or (ra, dec) degrees, optional
            Query by the row nearest to this position (see `row_of_position`).
        image : path or array, optional
            Query by an image, embedded with ``model`` (see `embed_image`).
        vector : array_like, (D,), optional
            Query by a vector (not a masked one: a masked row of the embedding
            column is no vector).
        k : int, optional
            Number of neighbours: at most, as fewer are returned when fewer indexed
            vectors are usable (not masked, finite, non-zero, and not the query row
            itself unless ``include_query``).
        include_query : bool, optional
            Keep the query row among the results (row / position queries).
        model : str, os.PathLike or Model, optional
            Embedding model for image queries (default: the one that made the
            indexed vectors, by the table's meta; see `embed_image`). Row, position
            and vector queries load no model.
        max_separation : Quantity or float (arcsec), optional
            For position queries: the largest accepted distance to the nearest row.
        ra_col, dec_col, coord_col : str, optional
            Position columns of the table.
        columns : list of str, optional
            Table columns to copy into the result (default: all but the
            embedding vectors).

        Returns
        -------
        astropy.table.Table or QTable
            Of the indexed table's class: ``rank`` (1 = most similar), ``row``
            (row number in the indexed table), ``similarity`` (cosine),
            ``distance`` (1 - cosine), then the table's columns of those rows
            (one named as one of those four, in any case, as ``table_<name>``, or
            ``table_table_<name>``... where a column of the table has that name).
            ``meta`` describes the query (``query_kind``, ``query_row``,
            ``query_separation_arcsec``, ``query_image`` and ``query_flags``, the
            `~astromorph.Flag` bits of the image's stamp, ``k``, ``backend``) and holds the
            indexed table's ``astromorph_*`` provenance keys.

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            Not exactly one of ``row``, ``position``, ``image`` and ``vector``, a ``row``
            out of range, a position query on an index without a table, a bad option
            (`InvalidArgumentTypeError` for one of the wrong type).
        astromorph.exceptions.InputError
            As for `row_of_position` (position queries) and `embed_image` (image
            queries), which also raise its other errors.
        """
        import os

        from astropy.table import Table

        given = [name for name, v in (("row", row), ("position", position), ("image", image),
                                      ("vector", vector)) if v is not None]
        if len(given) != 1:
            raise InvalidArgumentError(f"give exactly one of row, position, image or vector "
                                       f"(got {given or 'none'})")
        meta = {"query_kind": given[0], "k": _whole(k, "k"), "backend": self.backend}
        include_query = check_bool(include_query, "include_query")
        if meta["k"] < 1:
            raise InvalidArgumentError(f"k must be >= 1, got {k}")
        query_row = None
        if position is not None:
            query_row, separation = self.row_of_position(
                position, max_separation=max_separation, ra_col=ra_col, dec_col=dec_col,
                coord_col=coord_col)
            meta["query_separation_arcsec"] = round(float(separation.value), 4)
        elif row is not None:
            query_row = _whole(row, "row")
            if not 0 <= query_row < len(self):
                raise _rows_out_of_range([query_row], len(self))
            if not self.valid[query_row]:
                raise InputError(f"row {query_row} has no usable embedding (masked or NaN)")
        if query_row is not None:
            q = self.vectors[query_row]
            meta["query_row"] = query_row
            exclude = None if include_query else [[query_row]]
        elif image is not None:
            q, meta["query_flags"] = self._embed_image(image, model)
            meta["query_image"] = os.fspath(image) if isinstance(image, (str, os.PathLike)) \
                else f"array of shape {np.shape(image)}"
            exclude = None
        else:
            try:
                q = np.asarray(vector, dtype=np.float32)
            except (TypeError, ValueError):
                raise InvalidArgumentTypeError(f"vector must be a vector of numbers, got "
                                               f"{vector!r}") from None
            # masked values hold numbers, not the vector (a masked cell: np.ma.masked)
            if np.ma.getmaskarray(vector).any():
                raise InvalidArgumentError(f"vector has {int(np.ma.getmaskarray(vector).sum())} "
                                           "masked value(s): a masked embedding is no vector "
                                           "(e.g. a masked row of the embedding column)")
            if q.ndim != 1:
                raise InvalidArgumentError(f"vector must be one ({self.dim},) vector, got shape "
                                           f"{q.shape}; use search() for several")
            exclude = None
        if columns is not None:
            if isinstance(columns, str):
                columns = [columns]
            if not np.iterable(columns):
                raise InvalidArgumentTypeError(f"columns must be a list of column names, got "
                                               f"{columns!r}")
            columns = list(columns)
            missing = [c for c in columns if self.table is None or c not in self.table.colnames]
            if missing:
                raise InputError(f"no column(s) {missing} in the index's table (columns: "
                                 f"{[] if self.table is None else self.table.colnames})")
        # the result table drops missing neighbours: no k-wide padding for a k above the rows
        idx, sim = self.search(q, k=max(1, min(k, len(self))), exclude=exclude)
        keep = idx[0] >= 0
        # a cosine is at most 1 in magnitude; float32 rounding can exceed it by 1e-7
        rows, sims = idx[0][keep], np.clip(sim[0][keep], -1.0, 1.0)
        out = Table() if self.table is None else self.table.__class__()
        out["rank"] = np.arange(1, len(rows) + 1)
        out["row"] = rows
        out["similarity"] = sims
        out["distance"] = (1.0 - sims).astype(np.float32)
        out["rank"].description = "1 = most similar to the query"
        out["row"].description = "row number in the indexed table"
        out["similarity"].description = "cosine similarity to the query"
        out["distance"].description = "1 - cosine similarity"
        if self.table is not None:
            # the provenance of the vectors (the model that made them)
            out.meta.update({k: v for k, v in self.table.meta.items()
                             if str(k).startswith("astromorph_")})
            # all but the vectors: the indexed column (by name, also an object column of
            # one array per row, as pandas writes Parquet) and any other of their shape
            names = columns if columns is not None else [
                c for c in self.table.colnames
                if c != self._column
                and not (self.table[c].ndim > 1 and self.table[c].shape[1:] == (self.dim,))]
            # a table column named as one of the result's own (in any case: one column
            # for FITS) gets table_ until its name is free of every other column's
            own = {c.casefold() for c in out.colnames}
            taken = own | {c.casefold() for c in names}
            for name in names:
                new = name
                if name.casefold() in own:
                    new = f"table_{name}"
                    while new.casefold() in taken:
                        new = f"table_{new}"
                    taken.add(new.casefold())
                out[new] = self.table[name][rows]
        out.meta.update(meta)
        return out

    # ---------------------------------------------------------------- picture
    def gallery(self, result, path, *, images=None, source_column=None, query_image=None,
                ncols=None, title=None, dpi=110, overwrite=False):
        """Save a picture of the query and its neighbours (needs matplotlib).

        Parameters
        ----------
        result : astropy.table.Table
            A `query` result.
        path : str or os.PathLike
            Output picture, in the format its extension names (.png, .pdf, .svg...;
            another extension raises `InvalidArgumentError`).
        images : array_like or callable, optional
            Pictures of the indexed rows: an array with one image per row
            (``(N, H, W, 3)`` uint8 / [0, 1] floats, ``(N, 3, H, W)`` network
            stamps or ``(N, H, W)`` single bands), or a function
            ``images(rows) -> list of images``, drawn top row first. Default: read
            the files named by ``source_column``; FITS stamps are drawn north up,
            east left by the celestial WCS of their header (flipped or transposed,
            pixels unchanged, where the WCS runs along the pixel axes; resampled
            north up at their own pixel scale where it is rotated), else in pixel
            orientation, first row at the bottom, their tile saying "pixel axes".
        source_column : str, optional
            Column of file paths (default: ``source`` as written by
            ``astromorph predict``, else ``path``/``file``/``filename``).
        query_image : path or array, optional
            Picture drawn as the query tile, for any kind of query: for a row
            or position query it replaces the query row's own picture (from
            ``images`` or ``source_column``). Default: that row's picture, or,
            for an image query, the file recorded in
            ``result.meta["query_image"]`` (none for an array query or a
            vector query). A file that holds no picture raises `InputError`.
        ncols : int, optional
            Tiles per row (default: about the square root of the number of tiles, at most 8).
        title : str, optional
            Figure title (default: how many neighbours of which query among how many
            rows, and the model and version that made the vectors, from the table's
            meta). Each tile gives the rank, row, cosine similarity and a name: the
            row's ``name``, ``id`` or ``objid`` column, else its picture's file name.
        dpi : float, optional
            Resolution of a raster picture (PNG, JPEG...).
        overwrite : bool, optional
            Replace an existing ``path`` (default: raise `OutputExistsError`).

        Returns
        -------
        pathlib.Path
            The picture written.

        Raises
        ------
        astromorph.exceptions.InvalidArgumentTypeError
            ``result`` is not a query result (a table with ``rank``, ``row`` and
            ``similarity``).
        astromorph.exceptions.InvalidArgumentError
            ``result`` names rows this index does not have (a result of another index).

        Warns
        -----
        astromorph.exceptions.UnusableInputWarning
            Once per gallery, when tiles are drawn as "no image": how many, and the
            first rows with their file and why (missing, unreadable, no such stamp; a
            picture of ``images`` or ``query_image`` without a finite pixel).
            A ``source`` of the form ``file.fits[i]`` is stamp ``i`` of that file.
        """
        from ._plots import gallery

        return gallery(self, result, path, images=images, source_column=source_column,
                       query_image=query_image, ncols=ncols, title=title, dpi=dpi,
                       overwrite=overwrite)

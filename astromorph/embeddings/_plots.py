"""Pictures of embedding results: neighbour galleries and 2-d maps (matplotlib, lazily).

`embedding_map` reduces vectors to two dimensions with UMAP (when
``umap-learn`` is installed), a t-SNE written in numpy (sparse neighbour affinities,
FFT-interpolated repulsion) or PCA.
"""
import importlib.util
import logging
import os
import re
import textwrap
from pathlib import Path

import numpy as np

from ._common import check_seed, embedding_matrix
from .._io import atomic_output, check_input_file, check_output
from .._plotting import colormap, figure, picture_format, save_figure
from .._warnings import warn
from ..exceptions import (InputError, InvalidArgumentError, InvalidArgumentTypeError,
                          MissingDependencyError, UnusableInputWarning)
from ..preprocessing._checks import check_choice, check_number, check_whole

__all__ = ["gallery", "embedding_map", "plot_map", "display_image", "check_map_method"]

log = logging.getLogger(__name__)

_SOURCE_COLUMNS = ("source", "path", "file", "filename")
#: Rows of a map by default (``max_points``), and the most for which ``method="auto"``
#: chooses t-SNE without umap-learn (about 15 s on one core).
TSNE_MAX_POINTS = 5000


def display_image(image):
    """An RGB float picture ``(H, W, 3)`` in [0, 1] for any stamp astromorph handles.

    Accepts colour cutouts ``(H, W, 3)`` (uint8 or [0, 1] floats), network
    stamps ``(3, H, W)``, single bands ``(H, W)`` and band stacks ``(B, H, W)``
    (flux images get a per-stamp asinh stretch; three bands are shown as
    R, G, B = last, middle, first).

    Parameters
    ----------
    image : array_like
        The stamp, in one of the layouts above.

    Returns
    -------
    numpy.ndarray of float32, (H, W, 3)

    Raises
    ------
    astromorph.exceptions.InputError
        For an array of another number of dimensions.
    """
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"cannot display an image of dtype {arr.dtype}: pixels must be "
                         "real numbers")
    if arr.ndim == 3 and arr.shape[-1] == 3 and arr.shape[0] != 3:
        return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else \
            np.clip(arr.astype(np.float32), 0, 1)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
        planes = arr[None] if arr.ndim == 2 else arr
        return np.moveaxis(planes if len(planes) == 3 else np.repeat(planes[:1], 3, 0), 0, -1)
    arr = np.asarray(arr, dtype=np.float64)
    planes = arr[None] if arr.ndim == 2 else arr
    if planes.ndim != 3:
        raise InputError(f"cannot display an image of shape {np.shape(image)}")
    finite = np.isfinite(planes)
    if finite.any() and np.nanmin(planes) >= 0 and np.nanmax(planes) <= 1 and len(planes) == 3:
        rgb = planes  # network stamp: display values already
    else:
        vals = planes[finite]
        lo, hi = (np.percentile(vals, [1, 99.5]) if vals.size else (0.0, 1.0))
        scale = max(hi - lo, 1e-12)
        rgb = np.arcsinh(np.clip((np.nan_to_num(planes, nan=lo) - lo) / scale, 0, None) * 10) \
            / np.arcsinh(10)
        if len(rgb) == 3:
            rgb = rgb[::-1]  # (g, r, i) -> (i, r, g) = (R, G, B)
    if len(rgb) != 3:
        rgb = np.repeat(rgb[:1], 3, axis=0)
    return np.clip(np.moveaxis(rgb, 0, -1), 0, 1).astype(np.float32)


def _tile_image(image):
    """`display_image` of a gallery tile, with an alpha channel (``(H, W, 4)``) where some
    pixel has no finite value in any plane: those pixels (the corners of a stamp resampled
    north up, which lie outside the stamp, `_shown`; a blank pixel) are transparent and
    show the figure's background, rather than the black of the stretch's floor, as a tile
    without a picture shows it. A picture with every pixel known is ``display_image``'s,
    unchanged."""
    rgb = display_image(image)
    arr = np.asarray(image)
    if arr.dtype.kind != "f":
        return rgb
    planes = arr if arr.ndim == 3 and not (arr.shape[-1] == 3 and arr.shape[0] != 3) else \
        arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    missing = ~np.isfinite(planes).any(axis=0)
    if not missing.any():
        return rgb
    rgb = np.nan_to_num(rgb)  # (a [0, 1] picture keeps its NaN through display_image)
    return np.concatenate([rgb, (~missing)[..., None].astype(np.float32)], axis=-1)


#: A stamp of a file holding several: ``file.fits[3]`` (the ``source`` of its row).
_STAMP_OF_FILE = re.compile(r"(?s)(.*)\[(\d+)\]")


def _shown(stamp):
    """The data of a usable stamp, top row first as a gallery draws it, and a note for its
    tile where it is drawn in pixel orientation (else ""): a FITS stamp (bands, triplets)
    north up, east left by its header's celestial WCS (`astromorph._orient.north_up`:
    flipped or transposed where the WCS runs along the pixel axes, resampled where it is
    rotated); without one (and for the FITS cutouts of alerts, whose headers are not
    kept) its first row at the bottom, as ds9 shows it; a JPEG or PNG picture as stored,
    top row first."""
    if stamp.kind == "colour":
        return stamp.data, ""
    from .._orient import north_up

    data, oriented = north_up(stamp.data, stamp.header_get)
    # the header of an alert's cutouts is not kept: no word of a WCS it may have
    return data, "" if oriented else \
        "pixel axes: no WCS" if stamp.header_get is not None else "pixel axes"


def _read_stamp(path, which, files=None):
    """Stamp ``which`` (its position in the file; None: the first usable one) of ``path``:
    ``(data, None, note)``, or ``(None, reason, "")``, the data top row first and ``note``
    the words for its tile of a FITS stamp not oriented by a WCS (`_shown`). ``files``: a
    dict keeping each file's stamps, so that the tiles of one gallery read a file of many
    stamps once."""
    from .._readers import read_file

    path = Path(path)
    if not path.is_file():
        return None, "does not exist" if not path.exists() else "is not a file", ""
    stamps = None if files is None else files.get(path)
    if stamps is None:
        stamps = read_file(path, want_scale=False)
        if files is not None:
            files[path] = stamps
    if which is None:
        usable = [s for s in stamps if s.usable]
        if usable:
            data, note = _shown(usable[0])
            return data, None, note
        return None, "; ".join(r for s in stamps for r in s.reason) or "no usable stamp", ""
    if which >= len(stamps):
        return None, f"the file holds {len(stamps)} stamp(s), not a stamp [{which}]", ""
    stamp = stamps[which]
    if not stamp.usable:
        return None, "; ".join(stamp.reason) or "not a usable stamp", ""
    data, note = _shown(stamp)
    return data, None, note


def _read_source(name, files=None):
    """The picture named by a table's file column: a file, or stamp ``[i]`` of a file
    holding several (as `astromorph.predict_files` names them); ``(data, reason,
    note)``, the reason naming the file. ``files`` as for `_read_stamp`."""
    found = _STAMP_OF_FILE.fullmatch(name)
    if found and not os.path.exists(name):
        data, why, note = _read_stamp(found.group(1), int(found.group(2)), files)
    else:
        data, why, note = _read_stamp(name, None, files)
    return data, why and f"{name!r} {why}", note


def _no_picture(picture, given):
    """Why a picture given as an array (by ``given``, e.g. ``"images="``) cannot be drawn
    (None, or one without a finite pixel, which would be a blank tile), else None."""
    if picture is None:
        return f"{given} gave none"
    arr = np.asarray(picture)
    if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).any():
        return f"{given} gave a picture with no finite pixel (all NaN or infinite)"
    return None


def _row_images(index, rows, images, source_column):
    """Pictures of the indexed rows ``rows`` (None where there is none), why each
    missing one is missing (None for the others) and the note of each for its tile where it
    is a FITS stamp drawn in pixel orientation (`_shown`; "" for the others)."""
    if images is not None:
        if callable(images):
            pictures = list(images(rows))
            if len(pictures) != len(rows):
                raise InvalidArgumentError(f"images() gave {len(pictures)} pictures for "
                                           f"{len(rows)} rows: give one per row asked for")
        else:
            if len(images) != len(index):
                raise InvalidArgumentError(f"images= holds {len(images)} pictures for an "
                                           f"index of {len(index)} rows: give one per "
                                           "indexed row")
            pictures = [images[r] for r in rows]
        reasons = [_no_picture(p, "images=") for p in pictures]
        return ([None if why else p for p, why in zip(pictures, reasons)], reasons,
                [""] * len(pictures))
    table = index.table
    if table is None:
        raise InvalidArgumentError("the gallery needs images=: the index has no table with "
                                   "file paths")
    if source_column and source_column not in table.colnames:
        raise InvalidArgumentError(f"source_column={source_column!r} names no column of the "
                                   f"table (columns: {table.colnames})")
    col = source_column or next((c for c in _SOURCE_COLUMNS if c in table.colnames), None)
    if col is None:
        raise InvalidArgumentError(
            f"the gallery needs pictures of the rows: pass images= (an array or a function), "
            f"or a column of file paths with source_column= (table columns: {table.colnames})")
    files = {}  # each file read once: the tiles of a stack's stamps share it
    found = [(None, f"no file name in column {col!r}") if np.ma.is_masked(table[col][r])
             else _read_source(str(table[col][r]), files) for r in rows]
    return [f[0] for f in found], [f[1] for f in found], [f[2] for f in found]


def _warn_missing(missing, n_tiles):
    """One `UnusableInputWarning` for the tiles of a gallery drawn without a picture:
    ``missing`` holds ``(what, reason)`` (e.g. ``("row 3", "'a.png' does not exist")``); the
    first five are named."""
    if not missing:
        return
    shown = "; ".join(f"{what}: {reason}" for what, reason in missing[:5])
    warn(f"{len(missing)} of {n_tiles} gallery tiles have no picture and are drawn as "
         f"'no image': {shown}{' ...' if len(missing) > 5 else ''}", UnusableInputWarning)


#: Columns that name a row, in order of preference, for a gallery tile.
_NAME_COLUMNS = ("name", "id", "objid", "object_id", "objectId", "candid")
_PICTURE_EXTENSION = re.compile(r"\.(fits?|fts|fz|jpe?g|png|avro)(\.gz)?(?=$|\[)", re.I)


def _row_names(index, rows, source_column):
    """Short names of the indexed rows ``rows`` for their tiles (a name or id column, else
    the file name of the picture without its extension), or ``[]`` when the index has no
    such column."""
    table = index.table
    if table is None:
        return []
    col = next((c for c in _NAME_COLUMNS if c in table.colnames), None)
    if col is None:
        col = source_column or next((c for c in _SOURCE_COLUMNS if c in table.colnames), None)
        if col is None or col not in table.colnames:
            return []
        names = ["" if np.ma.is_masked(table[col][r]) else
                 _PICTURE_EXTENSION.sub("", Path(str(table[col][r])).name) for r in rows]
    else:
        names = ["" if np.ma.is_masked(table[col][r]) else str(table[col][r]) for r in rows]
    return [n if len(n) <= 22 else n[:10] + "\u2026" + n[-11:] for n in names]


def _gallery_title(index, result, n_neighbours):
    """Default title of a gallery: the model (and version) that made the vectors, the query
    and how many neighbours of how many rows are shown."""
    meta = result.meta
    model = meta.get("astromorph_model")
    version = meta.get("astromorph_model_version")
    kind = meta.get("query_kind")
    query = (f"row {meta['query_row']}" if meta.get("query_row") is not None else
             f"image {Path(str(meta['query_image'])).name}" if kind == "image" and
             not str(meta.get("query_image", "")).startswith("array") else
             f"the given {kind or 'query'}")
    made = f"vectors of model {model}{f' v{version}' if version else ''}" if model else \
        "vectors of no recorded model"
    return (f"{n_neighbours} nearest neighbours of {query} among {len(index)} rows ({made}); "
            "sim = cosine similarity")


def _result_rows(index, result):
    """The neighbour rows and the query row (or None) of a `SimilarityIndex.query` result,
    checked against ``index`` (`InvalidArgumentError` for rows it does not have)."""
    from astropy.table import Table

    from ._index import _rows_out_of_range

    if not isinstance(result, Table) or not {"rank", "row", "similarity"} <= set(result.colnames):
        raise InvalidArgumentTypeError(
            f"result must be a query result of the index (a table with rank, row and "
            f"similarity columns), got {type(result).__name__} {str(result)[:60]!r}")
    rows = np.asarray(result["row"]).astype(np.int64).tolist()
    query_row = result.meta.get("query_row")
    query_row = None if query_row is None else int(query_row)
    bad = [r for r in rows + ([] if query_row is None else [query_row])
           if not 0 <= r < len(index)]
    if bad:
        raise InvalidArgumentError(f"result is not a query result of this index: "
                                   f"{_rows_out_of_range(bad, len(index))}")
    return rows, query_row


def gallery(index, result, path, *, images=None, source_column=None, query_image=None,
            ncols=None, title=None, dpi=110, overwrite=False):
    """Picture of a query and its neighbours (see `SimilarityIndex.gallery`).

    Returns
    -------
    pathlib.Path
    """
    meta = getattr(result, "meta", None) or {}  # (a result that is no table: refused below)
    read = [query_image, meta.get("query_image") if meta.get("query_kind") == "image" else None]
    check_output(path, overwrite=overwrite,  # the query picture read is no output
                 inputs=[p for p in read if isinstance(p, (str, os.PathLike))])
    check_number(dpi, "dpi", positive=True)
    if ncols is not None:
        check_whole(ncols, "ncols")
    fmt = picture_format(path)  # a missing matplotlib fails here, before any work
    rows, query_row = _result_rows(index, result)
    meta = result.meta
    # a picture given for the query is the query tile, whatever the query (a row's own
    # picture otherwise, or the file of an image query)
    asked = rows if query_row is None or query_image is not None else [query_row] + rows
    pictures, reasons, notes = _row_images(index, asked, images, source_column)
    missing = [(f"row {r}", why) for r, why in zip(asked, reasons) if why]
    query_note = ""
    if len(asked) > len(rows):
        query_pic, pictures = pictures[0], pictures[1:]
        query_note, notes = notes[0], notes[1:]
    elif query_image is not None:
        query_pic = query_image
        if not isinstance(query_image, (str, os.PathLike)):
            why = _no_picture(query_image, "query_image=")
            if why:  # drawn as "no image", and said so
                query_pic = None
                missing.insert(0, ("the query", why))
        else:
            query_pic, why, query_note = _read_stamp(
                check_input_file(query_image, "query image"), None)
            if query_pic is None:  # a given file that holds no picture: refused, not hidden
                raise InputError(f"query image {os.fspath(query_image)!r} holds no usable "
                                 f"picture: {why}")
    elif meta.get("query_kind") == "image" and meta.get("query_image") and \
            not str(meta["query_image"]).startswith("array of shape"):
        query_pic, why, query_note = _read_stamp(meta["query_image"], None)
        if why:
            missing.insert(0, ("the query", f"{str(meta['query_image'])!r} {why}"))
    else:
        query_pic = None
    names = _row_names(index, rows + ([] if query_row is None else [query_row]),
                       source_column)
    # a FITS stamp not oriented by a celestial WCS is drawn in pixel orientation: said so
    tiles = [(query_pic, "query" + (f" (row {query_row})" if query_row is not None else "")
              + (f"\n{names[-1]}" if names and query_row is not None else "")
              + (f"\n({query_note})" if query_note else ""))]
    tiles += [(pic, f"#{rank}  row {row}  sim {sim:.3f}" + (f"\n{names[i]}" if names else "")
               + (f"\n({note})" if note else ""))
              for i, (pic, rank, row, sim, note) in
              enumerate(zip(pictures, result["rank"], rows, result["similarity"], notes))]
    n = len(tiles)
    ncols = ncols or int(min(8, np.ceil(np.sqrt(n))))
    nrows = int(np.ceil(n / ncols))
    # constrained: the title keeps its place above the tiles of a tall figure (200 tiles)
    fig = figure(figsize=(1.6 * ncols, 1.75 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (pic, label) in zip(axes.ravel(), tiles):
        if pic is not None:
            ax.imshow(_tile_image(pic), origin="upper", interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=7, color="C3" if label.startswith("query") else "black")
    axes.ravel()[0].axis("on")
    axes.ravel()[0].set_xticks([])
    axes.ravel()[0].set_yticks([])
    for spine in axes.ravel()[0].spines.values():
        spine.set_edgecolor("C3")
        spine.set_linewidth(2)
    # wrapped to the figure's width (about 12 characters an inch at 9 points)
    fig.suptitle(textwrap.fill(title or _gallery_title(index, result, len(rows)),
                               max(30, int(12 * 1.6 * ncols))), fontsize=9)
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        save_figure(fig, tmp, dpi=dpi, fmt=fmt)
    log.info("wrote gallery %s", path)
    _warn_missing(missing, len(tiles))
    return path


# ------------------------------------------------------------------------------- maps
def _pca2(x):
    """Coordinates ``(N, 2)`` on the two leading principal axes (zeros where there are fewer
    than two, e.g. for one point or one-dimensional vectors)."""
    from ._mixture import _pca  # the D x D scatter matrix: no N x D singular vectors

    z = x - x.mean(0)
    axes, _ = _pca(z, 2)
    out = np.zeros((len(x), 2))
    out[:, :len(axes)] = z @ axes.T
    return out


def _neighbours(z, k):
    """Indices ``(N, k)`` and squared distances of the ``k`` nearest other rows of ``z``,
    by blocks of rows (memory O(N * block), not O(N^2))."""
    n = len(z)
    sq = np.sum(z * z, axis=1)
    step = max(1, (1 << 19) // n)  # 4 MiB blocks of distances
    index, dist = np.empty((n, k), dtype=np.intp), np.empty((n, k))
    for start in range(0, n, step):
        block = slice(start, min(start + step, n))
        d2 = sq[block, None] - 2 * (z[block] @ z.T) + sq[None, :]
        d2[np.arange(d2.shape[0]), np.arange(block.start, block.stop)] = np.inf  # not itself
        near = np.argpartition(d2, k - 1, axis=1)[:, :k]
        index[block] = near
        dist[block] = np.maximum(np.take_along_axis(d2, near, axis=1), 0.0)
    return index, dist


def _affinities(z, perplexity):
    """Symmetric t-SNE input affinities ``P`` as a sparse matrix: each row's Gaussian over
    its ``3 * perplexity`` nearest neighbours, its width set by bisection to the perplexity
    (the rest of the row is below 1e-11 of its total), then ``(P + P.T) / 2N``."""
    from scipy import sparse

    n = len(z)
    k = min(n - 1, int(np.ceil(3 * perplexity)))
    index, d2 = _neighbours(z, k)
    d2 = d2 - d2.min(axis=1, keepdims=True)  # distances beyond the nearest neighbour's
    target = np.log(perplexity)
    lo, hi = np.full(n, -50.0), np.full(n, 50.0)  # bisection on log(beta) for every row at once
    for _ in range(60):
        beta = np.exp((lo + hi) / 2)
        p = np.exp(-beta[:, None] * d2)
        s = p.sum(axis=1)  # >= 1: the nearest neighbour's term
        entropy = np.log(s) + beta * np.einsum("ij,ij->i", p, d2) / s
        too_flat = entropy > target  # entropy too high -> increase beta
        lo = np.where(too_flat, (lo + hi) / 2, lo)
        hi = np.where(too_flat, hi, (lo + hi) / 2)
    p /= s[:, None]
    p = sparse.csr_matrix((p.ravel(), index.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    p = (p + p.T).tocsr()  # rows in order: the sums over them read memory in order
    return np.repeat(np.arange(n), np.diff(p.indptr)), p.indices, p.data / (2 * n)


def _lagrange(t, p):
    """Weights ``(N, p)`` of the Lagrange polynomials through ``p`` equispaced nodes
    ``(k + 1/2) / p`` of the unit interval at the points ``t`` in [0, 1]."""
    nodes = (np.arange(p) + 0.5) / p
    w = np.ones((len(t), p))
    for k in range(p):
        for m in range(p):
            if m != k:
                w[:, k] *= (t - nodes[m]) / (nodes[k] - nodes[m])
    return w


def _repulsion(y, kernels, *, p=3):
    """``Z`` (the sum of ``1 / (1 + |y_i - y_j|^2)`` over pairs i != j) and the vectors
    ``sum_j (y_i - y_j) / (1 + |y_i - y_j|^2)^2`` of every point, by interpolation on a
    grid and FFT convolution (Linderman et al. 2019, as FIt-SNE and openTSNE do):
    O(N + G log G) for G grid nodes instead of O(N^2).

    The points are in boxes of unit side (the kernels vary on that scale; finer on maps
    under 50 units), ``p`` x ``p`` equispaced nodes each; each point's charges (1, y_x, y_y)
    go to its box's nodes by Lagrange interpolation weights, the kernels act on the nodes by
    FFT, and the same weights bring the potentials back. The boxes stay of unit side however
    wide the map grows (coarser boxes smear the kernels: forces 50 per cent wrong on a map
    440 units wide with boxes of 2), so the grid's memory grows with the map's area, about
    0.8 GB for a map 600 units wide and 2 GB for 900 (0.25 GB up to 270), as in FIt-SNE;
    t-SNE maps grow about as sqrt(N) (66 units for 2,000 rows). ``kernels`` caches the
    kernels' transforms by grid size (the box count is rounded up to a multiple of 16, so
    the grid changes only every 16 units of growth).
    """
    from scipy.fft import irfft2, next_fast_len, rfft2

    n = len(y)
    low = y.min(axis=0)
    extent = max(float(np.max(y.max(axis=0) - low)), 1e-12)
    if extent <= 50:  # 26 to 51 boxes of side a power of 2 (<= 1): reused while it grows
        side = 2.0 ** int(np.ceil(np.log2(extent / 50)))
        boxes = int(extent / side) + 1
    else:  # boxes of side 1, the scale of the kernels, as many as the map needs
        side = 1.0
        boxes = -(-(int(extent) + 1) // 16) * 16
    m = boxes * p  # grid nodes per axis, spaced side / p
    y = (y - low) / side  # in boxes from the grid's corner (no cancellation in the charges)
    cell = np.minimum(y.astype(np.intp), boxes - 1)
    rel = y - cell
    wx, wy = _lagrange(rel[:, 0], p), _lagrange(rel[:, 1], p)
    charges = np.column_stack([np.ones(n), y])  # 1, y_x, y_y
    size = next_fast_len(2 * m - 1, real=True)  # circulant: every offset of two nodes
    if (m, side) not in kernels:
        offset = np.arange(size) * (side / p)
        offset[m:] -= size * (side / p)
        offset[m:size - m + 1] = np.inf  # offsets no two nodes have
        k1 = 1.0 / (1.0 + offset[:, None] ** 2 + offset[None, :] ** 2)
        kernels[m, side] = rfft2(k1), rfft2(k1 * k1)
    k1, k2 = kernels[m, side]
    # spread the charges to the p x p nodes of each point's box
    grid = np.zeros((3, m * m))
    flat = []
    for a in range(p):
        for b in range(p):
            node = (cell[:, 0] * p + a) * m + cell[:, 1] * p + b
            w = wx[:, a] * wy[:, b]
            flat.append((node, w))
            for c in range(3):
                grid[c] += np.bincount(node, weights=w * charges[:, c], minlength=m * m)
    grid = grid.reshape(3, m, m)
    # one charge at a time: the transforms of a wide map are the memory that counts
    pot2 = np.empty((3, m * m))
    for c in range(3):
        f = rfft2(grid[c], s=(size, size))
        if c == 0:
            pot1 = irfft2(f * k1, s=(size, size))[:m, :m].reshape(1, -1)
        pot2[c] = irfft2(f * k2, s=(size, size))[:m, :m].ravel()
        del f
    phi1 = np.zeros(n)
    phi2 = np.zeros((n, 3))
    for node, w in flat:
        phi1 += w * pot1[0, node]
        phi2 += w[:, None] * pot2[:, node].T
    # less each point's own term, as interpolated (1 exactly only for a point on a node:
    # the difference matters on a sparse map, whose Z is small); in the forces the own term
    # cancels exactly (its charges y_i and 1 come back with the same weights)
    h2 = (side / p) ** 2
    steps = np.arange(p)
    # the kernel between nodes t columns apart, over pairs of rows; q[t]: its y sum
    q = [np.einsum("nb,bd,nd->n", wy, 1.0 / (1.0 + h2 * (t * t + np.subtract.outer(
        steps, steps) ** 2)), wy) for t in range(p)]
    own = np.zeros(n)
    for a in range(p):
        for c in range(p):
            own += wx[:, a] * wx[:, c] * q[abs(a - c)]
    z = float(np.sum(phi1) - np.sum(own))
    rep = (y * phi2[:, :1] - phi2[:, 1:]) * side  # y_i - y_j back in map units
    return z, rep


def _repulsion_exact(y, kernels=None):
    """What `_repulsion` gives, from all the pairs (for a few hundred points)."""
    d = y[:, None, :] - y[None, :, :]
    w = 1.0 / (1.0 + np.sum(d * d, axis=2))
    np.fill_diagonal(w, 0.0)
    z = float(w.sum())
    w *= w
    return z, np.einsum("ij,ijk->ik", w, d)


def _learning_rate(n, exaggeration):
    """Learning rate of the t-SNE of ``n`` rows: ``n / (4 * exaggeration)`` (Belkina et al.
    2019; scikit-learn's ``learning_rate="auto"`` for this gradient, which carries its factor
    4), without scikit-learn's floor of 50. A row of the input affinities sums to about
    ``1 / n``, so the step of the exaggerated attraction is about ``4 * exaggeration * lr / n``:
    1 here, the largest that does not overshoot (Linderman & Steinerberger 2019). The floor
    made it 10 on 60 rows (and 2.4 on 1,000): the points overshot their neighbours back and
    forth through the exaggerated phase instead of gathering, and later a few were flung
    far from the rest (three of a 60-row GZ1 map 7 times the median radius from its centre,
    its KL divergence 0.84 against 0.25)."""
    return n / (4.0 * exaggeration)


def _tsne(x, *, perplexity=30.0, n_iter=750, seed=0):
    """t-SNE (van der Maaten & Hinton 2008) in numpy, O(N) memory and time per iteration.

    Input affinities over the ``3 * perplexity`` nearest neighbours of each row (after a
    PCA to at most 50 dimensions), the repulsive forces interpolated on a grid
    (`_repulsion`, as FIt-SNE and openTSNE do), a start from the PCA coordinates (the same
    map at every run; ``seed`` places the points only when those are all equal).
    """
    from ._mixture import _pca

    n = len(x)
    if n < 2:  # one point: nothing to place it against
        return np.zeros((n, 2))
    z = x - x.mean(0)
    if z.shape[1] > 50:
        z = z @ _pca(z, 50)[0].T
    perplexity = max(1.0, min(perplexity, (n - 1) / 3))  # 1: one neighbour, the least
    rows, cols, p = _affinities(z, perplexity)
    exaggeration = 12.0  # undone after 250 iterations
    y = _pca2(z)
    scale = np.std(y[:, 0])
    y = y * (1e-4 / scale) if scale > 0 else \
        np.random.default_rng(seed).normal(0, 1e-4, (n, 2))
    velocity = np.zeros_like(y)
    gains = np.ones_like(y)
    lr = _learning_rate(n, exaggeration)
    kernels = {}
    for it in range(n_iter):
        momentum = 0.5 if it < 250 else 0.8
        # sum_j p_ij (y_i - y_j) / (1 + |y_i - y_j|^2) over the pairs of P
        dx = y[:, 0][rows] - y[:, 0][cols]
        dy = y[:, 1][rows] - y[:, 1][cols]
        pw = (p * (exaggeration if it < 250 else 1.0)) / (1.0 + dx * dx + dy * dy)
        attract = np.column_stack([np.bincount(rows, weights=pw * dx, minlength=n),
                                   np.bincount(rows, weights=pw * dy, minlength=n)])
        total, repel = (_repulsion if n > 500 else _repulsion_exact)(y, kernels)
        grad = 4.0 * (attract - repel / total)
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8)
        gains = np.maximum(gains, 0.01)
        velocity = momentum * velocity - lr * gains * grad
        y = y + velocity
        y -= y.mean(0)
    return y


def check_map_method(method):
    """``method`` of `embedding_map`, checked before any work: one of the four, and
    umap-learn installed for ``"umap"`` (`MissingDependencyError`)."""
    check_choice(method, "method", ("auto", "umap", "tsne", "pca"))
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise MissingDependencyError("method='umap' needs umap-learn (`pip install umap-learn`)")
    return method


def embedding_map(embeddings, *, method="auto", seed=0, perplexity=30.0):
    """Two-dimensional coordinates of embedding vectors.

    Parameters
    ----------
    embeddings : array_like, (N, D)
    method : {"auto", "umap", "tsne", "pca"}, optional
        ``"auto"``: UMAP when umap-learn is installed, else t-SNE for up to
        `TSNE_MAX_POINTS` rows, else PCA.
    seed : int, optional
    perplexity : float, optional
        t-SNE perplexity.

    Returns
    -------
    coords : numpy.ndarray, (N, 2)
    method : str
        The method used.

    Raises
    ------
    astromorph.exceptions.InvalidArgumentError
        Embeddings that are no numbers or hold NaN or infinite values, an unknown
        ``method``, a bad option (`InvalidArgumentTypeError` for one of the wrong type).
    astromorph.exceptions.MissingDependencyError
        ``method="umap"`` without umap-learn.
    """
    perplexity = check_number(perplexity, "perplexity", positive=True)
    check_seed(seed)
    check_map_method(method)
    x = embedding_matrix(embeddings, allow_masked=False)
    if method == "auto":
        if importlib.util.find_spec("umap") is not None:
            method = "umap"
        else:
            method = "tsne" if len(x) <= TSNE_MAX_POINTS else "pca"
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            raise MissingDependencyError("method='umap' needs umap-learn") from exc
        return umap.UMAP(n_components=2, random_state=seed,
                         metric="cosine").fit_transform(x), method
    if method == "tsne":
        return _tsne(x, perplexity=perplexity, seed=seed), method
    return _pca2(x), method


def _map_labels(labels, n):
    """``labels`` of `plot_map` as an object array of ``n`` labels, None where masked."""
    if isinstance(labels, (str, bytes)) or np.ndim(labels) != 1:
        raise InvalidArgumentTypeError(
            "labels must be a sequence of one label per row, got "
            + (repr(labels) if np.ndim(labels) == 0 else f"an array of shape {np.shape(labels)}"))
    if len(labels) != n:
        raise InvalidArgumentError(f"labels has {len(labels)} entries for {n} rows")
    out = np.asarray(np.ma.getdata(labels)).astype(object)
    out[np.ma.getmaskarray(labels)] = None
    return out


def plot_map(embeddings, path, *, labels=None, method="auto", max_points=TSNE_MAX_POINTS,
             title=None, seed=0, dpi=120, overwrite=False):
    """Save a 2-d map of embedding vectors coloured by ``labels`` (e.g. cluster ids).

    Parameters
    ----------
    embeddings : array_like, (N, D)
        Rows with masked or non-finite values are left out.
    path : str or os.PathLike
        Output picture, in the format its extension names (.png, .pdf, .svg...).
    labels : array_like, (N,), optional
        Category of each row (cluster id, class name...); rows whose label is masked
        or None are left out. The legend is titled with its ``name`` (a table column's
        name, e.g. ``"cluster"``), else ``"label"``.
    method : {"auto", "umap", "tsne", "pca"}, optional
        See `embedding_map`.
    max_points : int, optional
        At most this many random rows are drawn.
    title : str, optional
        Figure title; the method and the number of rows drawn are added below it.
    seed : int, optional
        Seed of the row subset and of the map method.
    dpi : float, optional
        Resolution of a raster picture (PNG, JPEG...).
    overwrite : bool, optional
        Replace an existing ``path`` (default: raise `OutputExistsError`).

    Returns
    -------
    coords : numpy.ndarray, (M, 2)
        Coordinates of the plotted rows.
    rows : numpy.ndarray of int, (M,)
        Their row numbers.

    Raises
    ------
    astromorph.exceptions.OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    astromorph.exceptions.InvalidArgumentError
        A ``path`` whose extension names no picture format, ``labels`` of another length,
        a bad option (`InvalidArgumentTypeError` for one of the wrong type), as for
        `embedding_map`.
    astromorph.exceptions.InputError
        Fewer than 3 rows with finite embeddings (and a label).
    astromorph.exceptions.MissingDependencyError
        Without matplotlib (or umap-learn for ``method="umap"``).
    """
    check_output(path, overwrite=overwrite)
    max_points = check_whole(max_points, "max_points", minimum=2)
    check_number(dpi, "dpi", positive=True)
    check_seed(seed)
    fmt = picture_format(path)  # a missing matplotlib fails here, before any work
    check_map_method(method)
    x = embedding_matrix(embeddings, allow_masked=True)
    rows = np.flatnonzero(np.all(np.isfinite(x), axis=1))
    # the legend's title: the labels' own name (a column's), else "label"
    name = getattr(labels, "name", None)
    name = "label" if name is None or str(name) == "" else str(name)
    if labels is not None:
        labels = _map_labels(labels, len(x))
        rows = rows[~np.equal(labels[rows], None)]
    if len(rows) < 3:
        raise InputError(f"a map needs at least 3 rows with finite embeddings, got {len(rows)}")
    rng = np.random.default_rng(seed)
    if len(rows) > max_points:
        rows = np.sort(rng.choice(rows, max_points, replace=False))
    coords, used = embedding_map(x[rows], method=method, seed=seed)
    # constrained: the legend, outside the points, keeps its room
    fig = figure(figsize=(7.6, 5.6), layout="constrained")
    ax = fig.subplots()
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=4, alpha=0.7)
    else:
        values = np.asarray(labels[rows].tolist())  # numbers, or else strings
        cats, codes = np.unique(values if values.dtype.kind in "biufUS" else
                                values.astype(str), return_inverse=True)  # one NaN at most
        cmap = colormap("tab10" if len(cats) <= 10 else "tab20")
        for i, c in enumerate(cats.tolist()):
            sel = codes.ravel() == i
            # beyond the colours of the map the marker changes: no two categories look alike
            ax.scatter(coords[sel, 0], coords[sel, 1], s=5, alpha=0.75, color=cmap(i % cmap.N),
                       marker="os^D"[(i // cmap.N) % 4], label=f"{c} ({int(sel.sum())})")
        ax.legend(markerscale=2.5, fontsize=7, title=f"{name} (rows)", title_fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, frameon=False,
                  ncols=1 + (len(cats) - 1) // 25)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{used} 1 (arbitrary units)")
    ax.set_ylabel(f"{used} 2 (arbitrary units)")
    drawn = f"{used} projection of {len(rows)} rows"
    # as large as the axis labels (it was 9 pt under their 10); a long title is wrapped
    title = "\n".join(textwrap.fill(line, 95) for line in str(title).splitlines()) \
        if title else ""
    ax.set_title(f"{title}\n{drawn}" if title else f"embedding map: {drawn}",
                 fontsize=ax.xaxis.label.get_fontsize())
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        save_figure(fig, tmp, dpi=dpi, fmt=fmt)
    return coords, rows

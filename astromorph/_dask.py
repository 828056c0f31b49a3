"""Annotate catalogues larger than one machine handles, with Dask.

The catalogue is cut into partitions of rows; each partition becomes one
`dask.delayed` call of `astromorph.annotate` that opens the images by path
(memory-mapped, so every worker reads only the pages under its stamps) and
loads the model by name (sessions are cached per worker process). Dask's
scheduler does the rest: the threaded one by default, or a
``dask.distributed`` cluster when a ``Client`` is active.
"""
import collections
import contextlib
import logging
import os
import threading
import uuid

from .exceptions import AmbiguousInputWarning, InvalidArgumentError, InvalidArgumentTypeError
from .preprocessing._checks import check_bool, check_whole

__all__ = ["annotate_dask"]

log = logging.getLogger(__name__)


def _annotate_partition(table, images, model, kwargs, names=None, files=None, start=0):
    """``names``: the caller's name of each image path, and ``files``: the files of the images
    the whole call uses, where the partition is sent some of them (the provenance records
    them). ``start``: the table's row of the partition's first row, that `annotate_stamps`'s
    warnings name its rows from (`_stamp_table.FIRST_ROW`)."""
    if images is None:
        from ._stamp_table import FIRST_ROW, annotate_stamps

        token = FIRST_ROW.set(start)
        try:
            return annotate_stamps(table, model=model, progress=False, **kwargs)
        finally:
            FIRST_ROW.reset(token)
    from ._annotate import RECORDED_IMAGE_FILES, RECORDED_IMAGE_NAMES, annotate

    token = RECORDED_IMAGE_NAMES.set(names or {})
    token_files = RECORDED_IMAGE_FILES.set(files)
    try:
        return annotate(table, images, model=model, progress=False, **kwargs)
    finally:
        RECORDED_IMAGE_FILES.reset(token_files)
        RECORDED_IMAGE_NAMES.reset(token)


class _Partitions:
    """The partitions of one `annotate_dask` call (``compute=True``) that run in the
    caller's process (the threaded or synchronous scheduler, a cluster's in-process
    workers): how many run, and the event that stops them (`_stopping.STOP`) once the call
    has failed or was interrupted."""

    def __init__(self):
        self.pid = os.getpid()  # (a forked worker's copy is not the caller's)
        self.stop = threading.Event()
        self.running = 0
        self.idle = threading.Condition()

    @contextlib.contextmanager
    def running_one(self):
        """A partition's work: not begun once the call has stopped, counted while it runs,
        and stopped at its next part (`_stopping.check_stop`) when the call stops."""
        from ._stopping import STOP, Stopped

        with self.idle:
            if self.stop.is_set():
                raise Stopped("not begun: another partition of the annotate_dask call "
                              "failed, or the call was interrupted")
            self.running += 1
        token = STOP.set(self.stop)
        try:
            yield
        finally:
            STOP.reset(token)
            with self.idle:
                self.running -= 1
                self.idle.notify_all()

    def stop_and_wait(self):
        """Stop the partitions that have not begun, and those running at their next part,
        and wait until none runs (a second Ctrl-C stops the wait)."""
        self.stop.set()
        with self.idle:
            while self.running:
                self.idle.wait(0.1)  # (short waits: a Ctrl-C is taken at once)


#: The `_Partitions` of the `annotate_dask` calls computing in this process, by call id.
_COMPUTING = {}
_COMPUTING_LOCK = threading.Lock()


@contextlib.contextmanager
def _lists_in(*variables):
    """Each of the context ``variables`` set to a new list while the block runs (a
    partition's warnings and counts, which `annotate` and `annotate_stamps` append to
    rather than give): the lists, in their order."""
    lists = [[] for _ in variables]
    tokens = [variable.set(kept) for variable, kept in zip(variables, lists)]
    try:
        yield lists
    finally:
        for variable, token in reversed(list(zip(variables, tokens))):
            variable.reset(token)


def _annotate_collecting(table, images, model, kwargs, names=None, files=None, call=None,
                         start=0):
    """`_annotate_partition`, the warnings it gave, the counts of its rows that could not be
    scored, those of its rows placed on the sky, the images its scored sources were cut
    from that its flux-unit warning would name and its rows whose ``negative`` value is
    masked, as ``(table, [(message, category)], [summary], placed, noted, masked)`` (see
    `_predict.summarise`; ``placed``: the counts of `_annotate.PLACED`, None where
    `annotate` does not give them, as `annotate_stamps`; ``noted``: the texts of
    `_annotate.FLUX_NOTED`; ``masked``: those of `_stamp_table.MASKED_NEGATIVE`).

    ``call``: the id of the `annotate_dask` call; where it computes in this process, the
    partition runs as one of its `_Partitions` (stopped, and waited for, when it fails).
    ``start``: as for `_annotate_partition`."""
    from ._annotate import FLUX_NOTED, PLACED
    from ._predict import SUMMARIES
    from ._stamp_table import MASKED_NEGATIVE
    from ._warnings import collecting

    with _COMPUTING_LOCK:
        partitions = _COMPUTING.get(call)
    if partitions is None or partitions.pid != os.getpid():  # a worker process: not ours
        partitions = None
    with _lists_in(SUMMARIES, PLACED, FLUX_NOTED, MASKED_NEGATIVE) as (
            summaries, placed, noted, masked), \
            partitions.running_one() if partitions else contextlib.nullcontext(), \
            collecting() as found:
        out = _annotate_partition(table, images, model, kwargs, names, files, start)
    return out, found, summaries, (placed[0] if placed else None), noted, masked


def _warn_summaries(summaries, n, order=None, partition_size=None):
    """The partitions' rows that could not be scored, said once for the whole table of ``n``
    rows (out of all of them: a partition without such rows gives no summary).

    ``summaries``: ``(partition, summary)`` pairs; ``order``: the table's row of each row of
    the partitions, where they were regrouped (`_sky_order`), to name the reason of the
    table's first unusable row, as `annotate` does."""
    from ._predict import warn_summary

    if summaries:
        bad, flagged = (sum(s[k] for _, s in summaries) for k in (1, 2))
        first = next((s[3] for _, s in summaries if s[1]), None)
        if order is not None and bad:
            first = min((order[k * partition_size + (s[7] or 0)], s[3])
                        for k, s in summaries if s[1])[1]
        summaries = [s for _, s in summaries]
        warn_summary(n, bad, flagged, first, what=summaries[0][4], where=summaries[0][5],
                     message=summaries[0][6])


#: Warnings already given by the lazy partitions of each `annotate_dask` call (by call id),
#: in this process; the oldest calls are forgotten past `_GIVEN_CALLS`.
_GIVEN = collections.OrderedDict()
_GIVEN_CALLS = 256
_GIVEN_LOCK = threading.Lock()


def _annotate_warning_once(table, images, model, kwargs, call, n_parts, names=None,
                           files=None, given_here=(), start=0):
    """`_annotate_partition` for ``compute=False``: each distinct warning is given by the
    first partition of the call ``call`` to give it (in this process), not by every one;
    none of ``given_here`` (given by `annotate_dask` itself, `_partition_images`'s notes).
    The flux-unit warning names the images that the partition's scored sources were cut
    from (or its rows, from the table's row ``start``, without images) and no earlier
    partition's warning named. That some of its rows' ``negative`` value is masked, each
    partition says of its own rows (the table's rows it holds named)."""
    from ._annotate import FLUX_NOTED
    from ._readers._fits import warn_flux_units
    from ._stamp_table import MASKED_NEGATIVE, masked_negative_message
    from ._warnings import collecting, warn

    # each partition's own counts: no step sees the others
    with _lists_in(FLUX_NOTED, MASKED_NEGATIVE) as (noted, masked), collecting() as found:
        out = _annotate_partition(table, images, model, kwargs, names, files, start)
    for count, where, prefix in masked:  # its own rows: no other partition's warning
        rows = f"row {start}" if len(table) == 1 else f"rows {start} to {start + len(table) - 1}"
        warn(f"{masked_negative_message(count, where, prefix)} (in {rows} of the table, a "
             "Dask partition)", AmbiguousInputWarning)
    with _GIVEN_LOCK:
        given = _GIVEN.setdefault(call, set())
        _GIVEN.move_to_end(call)
        while len(_GIVEN) > _GIVEN_CALLS:
            _GIVEN.popitem(last=False)
        texts = [text for _, text in dict.fromkeys(noted) if (FLUX_NOTED, text) not in given]
        given.update((FLUX_NOTED, text) for text in texts)
        with collecting() as flux:
            warn_flux_units(noted[0][0] if noted else None, texts)
        new = [key for key in dict.fromkeys(found) if key not in given
               and key not in given_here] + flux
        given.update(new)
    for message, category in new:
        warn(f"{message} (from a Dask partition; given once for the {n_parts} partitions)",
             category)
    return out


def _warn_once(found, n_parts, placed=None, given_here=()):
    """Give each distinct warning of the partitions once, saying how many partitions gave it.

    ``placed``: each partition's counts of the rows with a usable position and size, of
    those on the images and of these on blank pixels (`_annotate.PLACED`; None: not given).
    That no source lies on the images is said where every partition that has such a row says
    it (one without any has no source on the images, nor off them); that the sources on the
    images lie on no data, where that is true of the table, with its counts, as `annotate`
    says it of the whole table. ``given_here``: the warnings the caller gave itself
    (`_partition_images`'s notes), not given again for the partitions."""
    from ._annotate import _NO_DATA, _NONE_ON_IMAGES, _no_data_message
    from ._warnings import warn

    counts = {}
    for part in found:
        for key in dict.fromkeys(part):  # a partition counts once per warning
            if key not in given_here:
                counts[key] = counts.get(key, 0) + 1
    given = [c for c in placed or () if c is not None]
    n_placed = n_parts if placed is None else sum(
        1 for c in placed if c is None or c[0])
    # that no source lies on the images comes with a hint where a partition's unitless RA
    # values all look like hours (or radians): true of the table where every partition
    # gives it, so the table's text is the partitions' shortest (no hint, else hours only)
    none_on = [key for key in counts if key[0].startswith(_NONE_ON_IMAGES)]
    if none_on:
        k = sum(counts.pop(key) for key in none_on)
        counts[min(none_on, key=lambda key: len(key[0]))] = k
    no_data = None
    for (message, category), k in counts.items():
        if message.startswith(_NO_DATA):  # each partition's counts: said below for the table
            no_data = category
            continue
        if k < n_placed and message.startswith(_NONE_ON_IMAGES):
            continue  # untrue of the table: the other partitions' sources lie on the images
        warn(f"{message} (in {k} of {n_parts} Dask partitions)", category)
    if no_data is not None and given:
        n_sky, n_on, n_blank = (sum(c[j] for c in given) for j in range(3))
        if n_on and n_blank == n_on:  # no source of the table on the images lies on data
            k = sum(1 for c in given if c[2])
            warn(f"{_no_data_message(n_blank, n_sky - n_on)} (in {k} of {n_parts} Dask "
                 "partitions)", no_data)


#: `annotate_stamps` options that may hold one value per row of the table.
_PER_ROW_OPTIONS = ("negative", "pixel_scale", "centre")


def _per_row_options(kwargs, n):
    """The names of the `_PER_ROW_OPTIONS` given one value per row (an array or a list, not
    a column name or a scalar), each checked to have the ``n`` rows of the table."""
    import numpy as np

    from ._stamp_table import _quantities, one_pixel_pair

    names = []
    for name in _PER_ROW_OPTIONS:
        value = kwargs.get(name)
        if name == "pixel_scale" and not isinstance(value, str):
            value = _quantities(value)  # a list of angles: one Quantity (np.ndim cannot)
        if value is None or isinstance(value, str) or np.ndim(value) == 0:
            continue
        if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
            continue  # centre: the names of an x and a y column
        if name == "pixel_scale" and one_pixel_pair(value, n):  # (scale_y, scale_x): all rows
            continue
        if np.shape(value)[:1] != (n,):
            raise InvalidArgumentError(f"{name} has {np.shape(value)} values for a table of "
                                       f"{n} rows")
        names.append(name)
    return names


#: Pixels beyond a tile's border within which a source still gets the tile sent to its
#: partition (a tile is needed only where a source lies on it: its stamp is cut from that
#: one tile; the margin keeps a source on the border whatever the rounding).
TILE_MARGIN_PIXELS = 1.0

#: Pixels beyond a tile's border within which a source is on its footprint
#: (`_tile_footprints`): `annotate` takes a tile for a source whose pixel position, from an
#: inverse WCS solved to 1e-4 pixel, lies on it (up to half a pixel past the outer pixels'
#: centres), and cuts its stamp from that one tile.
FOOTPRINT_MARGIN_PIXELS = 0.05

#: Points sampled along each side of a tile's border, corners included, for its bounding cone
#: and its footprint (`_tile_footprints`); a whole number, at least 4 (fewer are refused).
CONE_BORDER_POINTS = 64

#: Radius (degrees) past which a tile's cone is not used: the tile goes to every partition
#: (an all-sky or wide map, whose border need not bound it).
CONE_MAX_RADIUS_DEG = 15.0

#: Directions, evenly spread, along which a tile's footprint is bounded (`_tile_footprints`),
#: besides the normals of its four sides.
FOOTPRINT_DIRECTIONS = 16

#: Catalogue rows x cones compared at once (`_cones_hit`): 32 MB of float64 products.
CONE_CHUNK_ELEMENTS = 1 << 22


def _unit_vectors(lon, lat):
    """``(N, 3)`` unit vectors of longitudes and latitudes in degrees (NaN where they are)."""
    import numpy as np

    lon, lat = np.radians(lon), np.radians(lat)
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def _tile_footprints(images, frames, coords):
    """Each image's footprint on the sky (in the frame of ``coords``) and a cone holding it:
    ``(centres (T, 3), cos(radius) (T,), usable (T,), walls (T, W, 3), sin_grow (T,))``.

    The cone: the centre is the direction of the image's central pixel, the radius the
    largest separation from it of `CONE_BORDER_POINTS` points along each side of the
    image's border (pushed out by `TILE_MARGIN_PIXELS`), plus the largest step between two
    of them (the border may bow out between them: a distorted or curved projection) and
    1 mas. ``usable`` is False (the image goes to every partition) where the border cannot
    be computed (non-finite pixels of an all-sky map, a frame that cannot be transformed)
    or the radius passes `CONE_MAX_RADIUS_DEG`.

    The walls: great circles (their unit normals, pointing in) whose intersection holds the
    border pushed out by `FOOTPRINT_MARGIN_PIXELS` (sampled as the cone's), drawn in the
    gnomonic projection about the centre (which maps great circles to lines): the lines
    through the border's points farthest out along the four sides' normals (a TAN image's
    sides are great circles: its walls are its sides) and along `FOOTPRINT_DIRECTIONS`
    others. A direction ``v`` is on the footprint where ``v @ wall >= -sin_grow`` for
    every wall (`_on_tiles`); ``sin_grow`` covers how far the border bows out past the
    chord between two neighbouring points (the largest second difference of the points
    along a side: eight times the bound on that sag where the border is smooth between
    them, its curvature resolved by them, and a bound where it turns once between two of
    them, as on a quad-cube's face edge) and 1 mas, in the projection's scale at the
    cone's edge (a conservative bound on the sine of the angle). Rows of unusable images
    are NaN. Where the border is smooth or turns so, the walls hold it 0.05 pixel out all
    along (not only at the sampled points): no source on an image is off its footprint.

    Raises `InvalidArgumentError` where `CONE_BORDER_POINTS` is below 4, and
    `InvalidArgumentTypeError` where it is not a whole number.
    """
    import numpy as np
    from astropy.coordinates import SkyCoord

    from ._annotate import _frame_key

    k = check_whole(CONE_BORDER_POINTS, "astromorph._dask.CONE_BORDER_POINTS", minimum=4)
    points, by_frame = [], {}
    for i, (image, frame) in enumerate(zip(images, frames)):
        ny, nx = image.shape
        x, y = [], []
        for margin in (TILE_MARGIN_PIXELS, FOOTPRINT_MARGIN_PIXELS):  # the cone's, the walls'
            m = margin + 0.5
            xs, ys = np.linspace(-m, nx - 1 + m, k), np.linspace(-m, ny - 1 + m, k)
            # the border, once round (each side without its last corner)
            x.append(np.concatenate([xs[:-1], np.full(k - 1, xs[-1]), xs[:0:-1],
                                     np.full(k - 1, xs[0])]))
            y.append(np.concatenate([np.full(k - 1, ys[0]), ys[:-1], np.full(k - 1, ys[-1]),
                                     ys[:0:-1]]))
        x, y = np.concatenate(x + [[(nx - 1) / 2]]), np.concatenate(y + [[(ny - 1) / 2]])
        try:
            with image.lock, np.errstate(all="ignore"):
                world = image.wcs.all_pix2world(x, y, 0)
        except Exception:  # noqa: BLE001 - astropy.wcs raises many types: every partition
            points.append(None)
            continue
        lon, lat = (world[1], world[0]) if image.wcs.wcs.lat == 0 else (world[0], world[1])
        points.append((lon, lat))
        by_frame.setdefault(_frame_key(frame), (frame, []))[1].append(i)
    n_walls = 4 + FOOTPRINT_DIRECTIONS
    centres = np.full((len(images), 3), np.nan)
    cos_radius = np.full(len(images), np.nan)
    walls = np.full((len(images), n_walls, 3), np.nan)
    sin_grow = np.full(len(images), np.nan)
    angles = np.linspace(0, 2 * np.pi, FOOTPRINT_DIRECTIONS, endpoint=False)
    spread = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for frame, members in by_frame.values():  # one transform per frame
        lon = np.concatenate([points[i][0] for i in members])
        lat = np.concatenate([points[i][1] for i in members])
        try:
            sky = SkyCoord(lon, lat, unit="deg", frame=frame).transform_to(coords)
            sky = sky.represent_as("unitspherical")
            vectors = _unit_vectors(sky.lon.deg, sky.lat.deg)
        except Exception:  # noqa: BLE001 - astropy's transforms raise many types
            continue
        for i, border in zip(members, np.split(vectors, np.cumsum(
                [len(points[i][0]) for i in members])[:-1])):
            centre, ring, wall_ring = border[-1], border[:4 * (k - 1)], border[4 * (k - 1):-1]
            with np.errstate(invalid="ignore"):
                separation = np.arccos(np.clip(ring @ centre, -1, 1)).max()
                step = np.linalg.norm(ring - np.roll(ring, 1, axis=0), axis=1).max()
                radius = separation + 2 * np.arcsin(min(step / 2, 1)) + np.radians(1 / 3.6e6)
            if not (np.isfinite(radius) and radius <= np.radians(CONE_MAX_RADIUS_DEG)):
                continue
            centres[i], cos_radius[i] = centre, np.cos(radius)
            # the gnomonic projection about the centre: (ring @ e) / (ring @ centre)
            pole = np.eye(3)[np.argmin(np.abs(centre))]
            e1 = np.cross(pole, centre)
            e1 /= np.linalg.norm(e1)
            e2 = np.cross(centre, e1)
            plane = (wall_ring @ np.stack([e1, e2], axis=1)) / (wall_ring @ centre)[:, None]
            corners = plane[::k - 1]
            sides = np.roll(corners, -1, axis=0) - corners
            normals = np.stack([sides[:, 1], -sides[:, 0]], axis=1)
            normals /= np.linalg.norm(normals, axis=1)[:, None]
            normals *= np.sign(np.sum(normals * (corners + sides / 2), axis=1))[:, None]
            directions = np.concatenate([normals, spread])
            support = (plane @ directions.T).max(axis=0)  # (walls,)
            # how far the border passes the chord between two of its points (its sag): at
            # most h^2 / 8 max|p''| where smooth (p(t) the border, h the step), and h^2 p'' is
            # each point's second difference; at most the larger second difference beside
            # one turn between them (a quad-cube's face edge): the largest one covers both
            side = plane[(np.arange(4)[:, None] * (k - 1) + np.arange(k)) % len(plane)]
            sag = np.linalg.norm(side[:, 2:] - 2 * side[:, 1:-1] + side[:, :-2], axis=-1).max()
            # a gnomonic length is at most 1 / cos(radius)^2 times the angle it spans
            grow = (sag + np.radians(1 / 3.6e6)) / np.cos(radius) ** 2
            normal = support[:, None] * centre - directions @ np.stack([e1, e2])
            walls[i] = normal / np.linalg.norm(normal, axis=1)[:, None]
            # v @ wall: (support - reach) / |(1, reach)| / |(1, support)|, under -grow
            # wherever the reach passes the support by grow: -grow is low enough
            sin_grow[i] = grow
    usable = np.isfinite(cos_radius) & np.isfinite(walls).all(axis=(1, 2)) \
        & np.isfinite(sin_grow)
    return centres, cos_radius, usable, walls, sin_grow


def _on_tiles(vectors, centres, cos_radius, walls, sin_grow):
    """Which footprints (`_tile_footprints`) hold each of the unit ``vectors``: a
    ``(len(vectors), T)`` boolean (a NaN row is on none): the cone first (a matrix product),
    then the walls of the pairs within a cone."""
    import numpy as np

    with np.errstate(invalid="ignore"):
        inside = vectors @ centres.T >= cos_radius
    rows, tiles = np.nonzero(inside)
    if len(rows):
        on = np.ones(len(rows), bool)
        v = vectors[rows]
        for j in range(walls.shape[1]):
            on &= np.einsum("ij,ij->i", v, walls[tiles, j]) >= -sin_grow[tiles]
        inside[rows[~on], tiles[~on]] = False
    return inside


def _cones_hit(vectors, centres, cos_radius, partition_size, walls, sin_grow):
    """Which footprints (`_on_tiles`) hold a source of each partition: ``(partitions,
    tiles)`` booleans, from the sources' unit ``vectors`` (a NaN row is in none) in chunks
    of rows, so that memory stays bounded (`CONE_CHUNK_ELEMENTS`)."""
    import numpy as np

    n = len(vectors)
    hit = np.zeros((-(-max(n, 1) // partition_size), len(centres)), bool)
    if not len(centres):
        return hit
    chunk = max(1, CONE_CHUNK_ELEMENTS // len(centres))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        inside = _on_tiles(vectors[start:stop], centres, cos_radius, walls, sin_grow)
        first = start // partition_size
        edges = np.arange(first * partition_size, stop, partition_size)
        hit[first:first + len(edges)] |= np.logical_or.reduceat(
            inside, np.maximum(edges - start, 0), axis=0)
    return hit


def _sky_order(vectors, centres, cos_radius, walls, sin_grow):
    """The rows grouped by tile: each source's rows in the order of the footprint
    (`_on_tiles`) whose centre lies nearest it among those that hold it, then those on no
    footprint (off every tile, or without a position); in their order within a group (a
    stable sort)."""
    import numpy as np

    key = np.full(len(vectors), len(centres))
    if len(centres):
        chunk = max(1, CONE_CHUNK_ELEMENTS // len(centres))
        for start in range(0, len(vectors), chunk):
            with np.errstate(invalid="ignore"):
                dots = vectors[start:start + chunk] @ centres.T
            inside = _on_tiles(vectors[start:start + chunk], centres, cos_radius, walls,
                               sin_grow)
            nearest = np.where(inside, dots, -np.inf).argmax(axis=1)
            key[start:start + chunk] = np.where(inside.any(axis=1), nearest, len(centres))
    return np.argsort(key, kind="stable")


#: With ``sky_order="auto"``, the rows are regrouped by tile where that cuts the tile files
#: sent to the partitions, all together, below this fraction of those sent in the table's order.
SKY_ORDER_GAIN = 0.9


def _per_row_frame(coords):
    """Whether ``coords`` holds a frame attribute (``obstime``, ``equinox``...) with one
    value per row, not one for all."""
    import numpy as np
    from astropy.coordinates import frame_transform_graph

    return any(np.ndim(getattr(coords, name, None)) for name in
               frame_transform_graph.frame_attributes)


def _partition_images(table, images, model, kwargs, bounds, partition_size, *,
                      sky_order=False):
    """Each partition's share of the image files: those its sources can lie on.

    Returns ``(per_partition, files, order, notes)``: for each partition its ``images`` argument
    (the structure of ``images``, a dict or a list, with the files that none of its sources
    lies on left out) and its ``bands`` option (None where not given), the files of the
    images that the whole call uses (for the provenance), and the rows of ``table`` in the
    order the partitions are to take them (None: as they are; ``sky_order``: True, grouped
    by tile, `_sky_order`, "auto": so where that sends fewer files, `SKY_ORDER_GAIN`); or
    None where every partition is to get every image, as before: the images are not files
    this machine reads (a URL, a path only the workers see), one cannot be read or placed,
    reading them all gives a warning (the band plan: the partitions give it, as many times
    as before), or there is a single file. (The flux units are not one of these: each
    partition says those of the images its scored sources were cut from, `annotate_dask`
    all of them in one warning.) A file whose own reading gives
    a warning (astropy's on its header or padding) goes to every partition (each gives it,
    as before), the others to those whose sources lie on them. ``notes``: the warnings that
    large compressed files are decompressed whole (`_images.DECOMPRESS_ADVICE`), which
    reading their headers gave, ``(message, category)``: not a reason to send the file to
    every partition (the caller gives them, once).

    The partition's result does not change: a source's stamp is cut from the one image
    that contains it (the one where it lies farthest from the edge, among those with data
    under it; only from that one), and a source off every image is off those it is sent
    too. A partition gets the files of the images whose footprint on the sky
    (`_tile_footprints`: great circles bounding the border, 0.05 pixel out, within a
    bounding cone) holds one of its sources (`_cones_hit`, `_on_tiles`: a conservative cut, a few
    matrix products, not a WCS transform of every source for every image), and every image
    whose cone cannot be drawn (an all-sky map): it places its sources exactly among those.
    The footprints are drawn in the catalogue's frame, or in ICRS (the sources transformed
    there) where its frame has attributes with one value per row (an ``obstime`` per row:
    the tiles' borders cannot be broadcast against them). Every partition keeps the file
    of the first image of each band (so that each reads the same bands, in the same order:
    the same band plan and its warnings), and the files in their order.
    """
    import warnings

    import numpy as np

    from ._adapters import model_family
    from ._annotate import _band_plan, _image_frames, _positions
    from ._images import (DECOMPRESS_ADVICE, _parse_one, _read_lone_science_by_filter,
                          closing_files, image_entries)
    from ._warnings import catch_warnings, collecting

    try:
        entries = image_entries(images, kwargs.get("bands"))
    except Exception:  # noqa: BLE001 - the partitions refuse it, as before
        return None
    if len(entries) < 2 or not all(isinstance(obj, str) and "://" not in obj
                                   for _, obj, _ in entries):
        return None
    family = model_family(model.card)
    parsed, opened, frames, noisy, notes = [], [], [], [], []
    try:
        with closing_files(opened):
            for j, (_, obj, band) in enumerate(entries):
                with collecting() as given, catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    parsed.append(_parse_one(obj, band))
                    opened.extend(parsed[-1])
                    frames.append(_image_frames(parsed[-1]))
                for im in parsed[-1]:  # its header alone serves here: its pixels let go
                    im.drop_pixels()  # now, not held for the whole mosaic (compressed tiles)
                # that a large compressed tile is decompressed whole: a note about the
                # file, given here (once, as annotate gives it), not a reason to send the
                # tile to every partition
                notes.extend(key for key in given if key[0].endswith(DECOMPRESS_ADVICE))
                if caught or any(not key[0].endswith(DECOMPRESS_ADVICE) for key in given):
                    noisy.append(j)  # every partition gets it, and gives the warning
        with closing_files(opened), collecting() as given, \
                catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if family != "triplet":
                _read_lone_science_by_filter(opened)
            groups, first = {}, {}
            for j, found in enumerate(parsed):
                for im in found:
                    groups.setdefault(im.band or "unknown", []).append(im)
                    first.setdefault(im.band or "unknown", j)
            plan = _band_plan(model, family, groups)
            if given or caught:
                return None
            with collecting(), catch_warnings():
                warnings.simplefilter("ignore")  # the partitions give the catalogue's own
                coords, _ = _positions(table, kwargs.get("ra_col"), kwargs.get("dec_col"),
                                       kwargs.get("coord_col"))
            keep = np.zeros((len(bounds), len(entries)), bool)
            keep[:, [first[band] for band in groups]] = True
            keep[:, noisy] = True
            if _per_row_frame(coords):  # the cones in ICRS, which has no such attributes
                from astropy.coordinates import ICRS

                coords = coords.transform_to(ICRS()).frame
            used = [(j, im, frame) for j, found in enumerate(parsed)
                    for im, frame in zip(found, frames[j]) if (im.band or "unknown") in plan]
            centres, cos_radius, usable, walls, sin_grow = _tile_footprints(
                [im for _, im, _ in used], [frame for _, _, frame in used], coords)
            tiles = (centres[usable], cos_radius[usable], walls[usable], sin_grow[usable])
            sky = coords.represent_as("unitspherical")
            vectors = _unit_vectors(sky.lon.deg, sky.lat.deg)
            hit = _cones_hit(vectors, *tiles[:2], partition_size, *tiles[2:])
            order = None
            if sky_order and len(vectors) > partition_size:
                regrouped = _sky_order(vectors, *tiles)
                hit_regrouped = _cones_hit(vectors[regrouped], *tiles[:2], partition_size,
                                           *tiles[2:])
                if sky_order is True or hit_regrouped.sum() < SKY_ORDER_GAIN * hit.sum():
                    order, hit = regrouped, hit_regrouped
            owner = np.array([j for j, _, _ in used], int)
            keep[:, owner[~usable]] = True
            for column, j in zip(hit.T, owner[usable]):
                keep[:, j] |= column
            files = {im.name.split("[")[0] for band in plan for im in groups[band]}
    except Exception:  # noqa: BLE001 - the partitions refuse it, as before
        return None
    per_partition = []
    for row in keep:
        kept = [entry for entry, k in zip(entries, row) if k]
        if isinstance(images, dict):
            part = {key: [obj for k, obj, _ in kept if k == key] for key in images}
        else:
            part = [obj for _, obj, _ in kept]
        bands = kwargs.get("bands")
        per_partition.append((part, None if bands is None or isinstance(images, dict) else [
            b for b, k in zip(bands, row) if k]))
    log.info("%d image files; each Dask partition gets those its sources lie on (%.1f on "
             "average%s)", len(entries), keep.sum() / len(keep),
             "" if order is None else ", the rows grouped by tile")
    return per_partition, files, order, list(dict.fromkeys(notes))


def annotate_dask(table, images=None, *, model, partition_size=50_000, compute=True,
                  scheduler=None, sky_order="auto", **kwargs):
    """`astromorph.annotate` (or `astromorph.annotate_stamps`) over row partitions, run by Dask.

    Parameters
    ----------
    table : astropy.table.Table or QTable
        The catalogue (it is not modified).
    images : path, list of paths, or dict of band -> path(s), optional
        FITS files; given by path so that each worker memory-maps them itself.
        ``None``: the rows hold their own stamps, scored by `astromorph.annotate_stamps`.
    model : str, path or Model
        Model name or path, loaded on each worker, or a loaded `Model` (it pickles as its
        name or path and the options it was loaded with, its checksum checked where it is
        loaded).
    partition_size : int, optional
        Rows per Dask task.
    compute : bool, optional
        ``True`` (default): compute and return the annotated table.
        ``False``: return the list of `dask.delayed` partitions (see Warns).
    scheduler : str, Client, Executor or callable, optional
        Passed to `dask.compute` (e.g. ``"threads"``, ``"processes"``,
        ``"synchronous"``); default: Dask's current scheduler (a
        ``dask.distributed.Client`` when one is active).
    sky_order : bool or "auto", optional
        Where the images are several files that the caller's machine reads (a mosaic of
        tiles; see Raises), whether the partitions take the rows grouped by the tile they
        lie on, so that each partition is sent a few tiles even for a catalogue in random
        sky order: ``"auto"`` (default) where that sends the partitions, all together,
        under `SKY_ORDER_GAIN` (0.9) of the tile files the table's own order would, with
        ``compute=True``; ``True``: always, where the tiles are placed (not with
        ``compute=False``, whose partitions hold the rows in the table's order); ``False``:
        never. The returned table has the catalogue's rows in their order, with the same
        values either way.
    **kwargs
        Other `annotate` options (``size_col``, ``ra_col``...), or `annotate_stamps` options
        (``columns``, ``pixel_scale``...) without ``images``; ``negative`` and
        ``pixel_scale`` given one value per row (``pixel_scale``: ``(N,)`` or ``(N, 2)``)
        are split with the rows, a ``pixel_scale`` pair ``(scale_y, scale_x)`` goes to
        every partition. ``progress`` is
        checked but not passed on: partitions run without progress bars (Dask's
        diagnostics show the tasks).

    Returns
    -------
    Table or QTable, or list of dask.delayed.Delayed
        `annotate`'s table: its rows, labels, flags and probabilities (a row's stamps do
        not depend on the other rows of the call, whether its image is read whole or only
        under the stamps, nor its scores on the batch, with ONNX Runtime on CPU).

    Raises
    ------
    astromorph.exceptions.MissingDependencyError
        Dask is not installed.
    astromorph.exceptions.InputError
        ``table`` is not a table, or ``images`` are not given by path; and the errors of
        `annotate` (or `annotate_stamps`): those it raises before it reads any image or
        stamp (an unknown model, a column that is not there, a clash of column names...)
        when ``annotate_dask`` is called, with ``compute=False`` too (the model is loaded
        to check them); the others from the partitions. Where the images are several files
        that the caller's machine reads, annotate_dask reads their headers once and sends
        each partition only the files its sources can lie on (and the file of the first
        image of each band), with the same result; otherwise every partition gets every
        image (each worker opens them by path, which the caller's machine need not see),
        and an image that is missing or unreadable, has no celestial WCS, or has one in a
        frame astropy cannot place (``HLON``/``HLAT``, ``SLON``/``SLAT``,
        ``TLON``/``TLAT``...) is refused by the partitions, with ``compute=False`` when
        they are computed: the caller gets the partition's own error (its type and
        message) whatever the scheduler (threads, processes or a cluster). With
        ``compute=True``, the partitions still running in the caller's process when one
        fails or the call is interrupted (Ctrl-C; the threaded scheduler) stop at their
        next part, those not begun do not begin, and the error reaches the caller once none
        runs: no partition is left in Dask's threads to enter and leave
        `warnings.catch_warnings` blocks (which swap the process's warning filters) while
        the caller handles it. With ``compute=False`` the computation is the caller's:
        Dask's threaded scheduler raises at once while the other partitions run on.
    astromorph.exceptions.InvalidArgumentError
        A bad option value (named in the message).
    astromorph.exceptions.InvalidArgumentTypeError
        A keyword that the function the partitions run (`annotate` with ``images``,
        `annotate_stamps` without) does not take, before any other check (also a
        `TypeError`, as Python's own for an unknown keyword).

    Warns
    -----
    astromorph.exceptions.AstromorphWarning
        With ``compute=True``, a warning that partitions give (e.g. an
        `~astromorph.exceptions.AmbiguousInputWarning` for the bands) comes once,
        from the caller's line, with the number of partitions that gave it,
        whatever the scheduler (threads, processes or a cluster); the
        `~astromorph.exceptions.UnusableInputWarning` of `annotate` (sources without a
        usable position or size) or `annotate_stamps` counts the rows of all the
        partitions that could not be scored, out of the whole table, as `annotate` does;
        `annotate_stamps`'s `~astromorph.exceptions.AmbiguousInputWarning` for the rows
        whose ``negative`` value is masked counts those of the whole table, once. With
        ``compute=False`` no step sees all the partitions' warnings (each delayed
        partition can be computed alone): each distinct warning is given once, by
        the first partition to give it, when the partitions are computed, from Dask's
        worker (not the caller's line) and without the count of partitions; once per
        process for the threaded and synchronous schedulers, once per worker process
        for ``"processes"`` or a cluster (where the worker's log shows it). A partition
        with rows whose ``negative`` value is masked says how many of its own, naming
        the table's rows it holds.
    """
    # an option the partitions' function does not take: refused first, as Python refuses
    # an unknown keyword, naming annotate_dask and the options that function takes
    import inspect

    from ._annotate import annotate
    from ._stamp_table import annotate_stamps
    from .preprocessing._checks import check_options

    target = annotate if images is not None else annotate_stamps
    check_options(kwargs, [name for name in inspect.signature(target).parameters
                           if name not in ("table", "images", "model")], "annotate_dask")
    try:
        import dask
    except ImportError as exc:
        from .exceptions import MissingDependencyError

        raise MissingDependencyError("annotate_dask needs dask: pip install 'astromorph[dask]' "
                                     "(and 'dask[distributed]' for a cluster)") from exc
    import numpy as np
    from astropy.io import fits
    from astropy.table import vstack

    from ._annotate import check_table
    from .exceptions import InputError

    names = {}

    def as_paths(value):
        if isinstance(value, (list, tuple)) and not isinstance(value, fits.HDUList):
            return [as_paths(v) for v in value]
        if isinstance(value, dict):
            return {k: as_paths(v) for k, v in value.items()}
        if not isinstance(value, (str, os.PathLike)):
            raise InputError("annotate_dask takes images as FITS paths (each worker opens them), "
                             f"not {type(value).__name__}")
        value = os.fspath(value)
        if "://" in value:  # a URL: the same for every worker
            return value
        path = os.path.abspath(os.path.expanduser(value))  # a worker may run in another folder
        names[path.split("[")[0]] = value.split("[")[0]  # recorded as given, as annotate does
        return path

    check_table(table, caller="annotate_dask")
    from ._progress import check_progress

    check_progress(kwargs.pop("progress", None))  # each partition runs without a bar
    images = None if images is None else as_paths(images)
    from ._model import Model

    if not isinstance(model, (str, os.PathLike, Model)):
        raise InputError("annotate_dask takes the model by name, path or Model (each worker "
                         f"loads it), not {type(model).__name__}")
    # what every partition would refuse (a bad option, an unknown model, a column that is
    # not there...): refused here, before any task is sent, by the function's own checks
    # (the model is loaded here too: the threaded scheduler's partitions reuse its session)
    from ._annotate import check_options
    from ._stamp_table import check_options as check_stamp_options

    check = check_options if images is not None else check_stamp_options
    loaded = check(table, model=model, **{k: v for k, v in kwargs.items()
                                 if k in inspect.signature(check).parameters})
    partition_size = check_whole(partition_size, "partition_size")
    compute = check_bool(compute, "compute")
    if scheduler is not None:
        from dask.base import get_scheduler

        try:
            get_scheduler(scheduler=scheduler)
        except ValueError as exc:  # dask lists the names it knows
            if not isinstance(scheduler, str):
                raise InvalidArgumentTypeError(
                    f"scheduler must be a name, a Client, an Executor or a get function, "
                    f"not {scheduler!r}") from None
            raise InvalidArgumentError(f"unknown scheduler {scheduler!r}: {exc}") from None
        except RuntimeError as exc:  # "distributed" without a Client
            raise InvalidArgumentError(f"scheduler {scheduler!r}: {exc}") from None
    if sky_order != "auto" or isinstance(sky_order, (bool, int)):
        try:
            sky_order = check_bool(sky_order, "sky_order")
        except InvalidArgumentTypeError:
            raise InvalidArgumentError(f"sky_order must be True, False or 'auto', not "
                                       f"{sky_order!r}") from None
        if sky_order and not compute:
            raise InvalidArgumentError("sky_order=True needs compute=True: the lazy "
                                       "partitions hold the rows in the table's order")
    bounds = list(range(0, max(len(table), 1), partition_size))
    per_row = _per_row_options(kwargs, len(table)) if images is None else ()
    if images is None and "pixel_scale" not in per_row:
        from ._stamp_table import one_pixel_pair

        if one_pixel_pair(kwargs.get("pixel_scale"), len(table)):
            # one pair (scale_y, scale_x) for every row, as a tuple: a partition of two rows
            # reads two values other than a tuple as one per row
            kwargs["pixel_scale"] = tuple(kwargs["pixel_scale"])
    # each partition is sent only the image files its sources can lie on (their headers
    # read here, once, rather than every file's by every partition), where this machine
    # can tell
    shares = None if images is None else _partition_images(
        table, images, loaded, kwargs, bounds, partition_size,
        sky_order=sky_order if compute else False)  # "auto" kept: not True
    files = None if shares is None else shares[1]
    order = None if shares is None else shares[2]
    notes = () if shares is None else shares[3]
    from ._warnings import warn

    for message, category in notes:  # read here: said once, as annotate says it
        warn(message, category)
    rows = table if order is None else table[order]  # grouped by tile: put back below

    def share(k):  # the images of partition k
        return images if shares is None else shares[0][k][0]

    def options(start):  # each partition's rows of the options given one value per row
        # (a tuple as a list: a partition's two rows of a tuple are no (scale_y, scale_x)),
        # and the bands of its share of a list of images
        kw = {**kwargs, **{k: (list(kwargs[k]) if isinstance(kwargs[k], tuple) else
                               kwargs[k])[start:start + partition_size] for k in per_row}}
        if shares is not None and shares[0][start // partition_size][1] is not None:
            kw["bands"] = shares[0][start // partition_size][1]
        return kw
    from ._registry import _is_path_like

    if not isinstance(model, Model):  # a Model pickles as its name or path, and options
        model = os.fspath(model)
        if _is_path_like(model):  # a worker may run in another folder
            model = os.path.abspath(os.path.expanduser(model))
    # computed here, each partition hands back its warnings, given once below from the
    # caller's line (not once per partition, from Dask's worker threads or processes)
    if not compute:  # lazily: each distinct warning given once, by the first partition
        call = uuid.uuid4().hex
        return [dask.delayed(_annotate_warning_once)(table[start:start + partition_size],
                                                     share(k), model, options(start), call,
                                                     len(bounds), names, files, notes,
                                                     start)
                for k, start in enumerate(bounds)]
    call = uuid.uuid4().hex
    parts = [dask.delayed(_annotate_collecting)(rows[start:start + partition_size], share(k),
                                                model, options(start), names, files, call,
                                                start)
             for k, start in enumerate(bounds)]
    log.info("annotating %d rows in %d Dask partitions", len(table), len(parts))
    from dask.multiprocessing import RemoteException

    # where a partition fails (or Ctrl-C), Dask raises at once while the other partitions
    # run on in its threads: those in this process are stopped and waited for first, so
    # that none is left to enter and leave warnings.catch_warnings blocks (which swap the
    # process's warning filters and showwarning) while the caller handles the error
    partitions = _Partitions()
    with _COMPUTING_LOCK:
        _COMPUTING[call] = partitions
    try:
        try:
            results = dask.compute(*parts, scheduler=scheduler)
        except BaseException:
            partitions.stop_and_wait()
            raise
    except RemoteException as exc:  # "processes": Dask's copy of a partition's error, whose
        raise exc.exception from exc  # message holds the worker's traceback: the error itself
    finally:
        with _COMPUTING_LOCK:
            del _COMPUTING[call]
    masked = [m for *_, part in results for m in part]
    if masked:  # the rows whose negative value is masked: the table's count, once, first
        from ._stamp_table import masked_negative_message  # (as annotate_stamps says it)

        warn(masked_negative_message(sum(m[0] for m in masked), *masked[0][1:]),
             AmbiguousInputWarning)
    _warn_once([found for _, found, *_ in results], len(results),
               [placed for _, _, _, placed, *_ in results], given_here=set(notes))
    from ._readers._fits import warn_flux_units

    # the images the scored sources of all the partitions were cut from, in one warning
    warn_flux_units(loaded if images is not None else loaded[0],  # (the stamps': a tuple)
                    list(dict.fromkeys(text for *_, noted, _ in results
                                       for _, text in noted)))
    _warn_summaries([(k, s) for k, (_, _, part, *_) in enumerate(results) for s in part],
                    len(table), order, partition_size)
    tables = [t for t, *_ in results]
    # the catalogue's columns that vstack cannot join (astropy's DaskColumn, a SkyCoord with
    # an obstime per row) come back from every partition as they went: taken whole from the
    # catalogue, in their place
    from astropy.coordinates import SkyCoord

    whole = [name for name in tables[0].colnames if name in table.colnames
             and (not hasattr(tables[0][name].info, "new_like")
                  or isinstance(table[name], SkyCoord) and _per_row_frame(table[name]))]
    out = vstack([t[[c for c in t.colnames if c not in whole]] for t in tables],
                 join_type="exact", metadata_conflicts="silent")
    if order is not None:  # the catalogue's rows in their order
        out = out[np.argsort(order)]
    for name in whole:
        out.add_column(table[name], name=name, index=tables[0].colnames.index(name))
    out.meta.update(tables[0].meta)
    return out

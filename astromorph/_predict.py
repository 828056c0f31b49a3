"""`predict_files`: files of stamps (FITS, JPEG/PNG, alert packets) -> one table row each.

Stamps are read by `astromorph._readers.read_file` (in a background thread,
ahead of the model), fitted to what the model takes (`_conform`), grouped by
kind and shape across files, turned into network input by
`astromorph._adapters.prepare` and scored ``batch_size`` at a time, so that
many small files make few model calls. Rows that cannot be scored are kept
with masked outputs, a flag and a reason. Results go into FITS headers, if
asked, through `astromorph._headers`.
"""
import contextvars
import logging
import collections
import os
import threading
import warnings

import numpy as np

from ._flags import Flag, describe_flags
from ._headers import header_targets, write_results_to_header
from ._io import check_distinct_outputs, check_output, output_error, write_table
from ._progress import progress_bar
from ._readers import expand_inputs, read_file
from ._readers._fits import warn_flux_units
from .preprocessing._checks import axis_scales, check_bool, in_unit_interval
from .preprocessing._triplet import _SENTINEL
from ._warnings import catch_warnings, first_few, warn
from .exceptions import (AmbiguousInputWarning, DuplicateSourceWarning, InputError,
                         InvalidArgumentError, InvalidArgumentTypeError, OutputError,
                         UnusableInputWarning)

__all__ = ["predict_files", "register"]

log = logging.getLogger(__name__)

#: Files read ahead of the model by the reader thread.
_READ_AHEAD = 256
#: Bytes of stamp data (`_stamp_bytes`) queued ahead of the model by the reader thread: a file
#: is queued once the others fit under this (or none is queued), so big stamps (1201 x 1201
#: float32 radio cutouts, 5.8 MB each) hold at most this plus the one file in hand, not
#: `_READ_AHEAD` files (1.5 GB). Small stamps (256 64 x 64 float32 ones: 4 MB) never reach it.
_READ_AHEAD_BYTES = 256 * 2**20
#: Read files in a background thread (overlaps decoding with preprocessing and the model).
_PREFETCH = True
#: Fewer files than this are read in the calling thread (a thread would cost more than it saves).
_PREFETCH_MIN_FILES = 4
_MEMBERS = ("science", "reference", "difference")

#: The band scored alone where a galaxy model (g, r and i together, or one band) is given
#: other bands than all of g, r and i, first found first; else the first band given.
SINGLE_BAND_ORDER = ("r", "i", "g")


def single_band(names):
    """The one band of ``names`` (band names, in the order given) scored alone by a model
    of g, r and i together or one band, when not all three are given: r, else i, else g,
    else the first; `astromorph.annotate` and `predict_files` choose it alike."""
    return next((b for b in SINGLE_BAND_ORDER if b in names), names[0])


# ----------------------------------------------------------------------------- public API
def predict_files(model, inputs, *, batch_size=256, progress=None, write_header=None,
                  in_place=False, overwrite=False, providers=None, threads=None,
                  precision=None, crop_fraction=None, match_beam=True):
    """Score every stamp in a set of files; one table row per stamp.

    Parameters
    ----------
    model : str, os.PathLike or Model
        A shipped model name, a model path (see `astromorph.load_model`) or a
        loaded `Model`.
    inputs : str, os.PathLike or list of them
        Files, directories (their FITS/JPEG/PNG/Avro files, sorted) and glob
        patterns. Accepted files: FITS images, cubes (one plane per band or
        triplet member) and multi-extension files (one HDU per band or triplet
        member), plain, tile-compressed or compressed whole (gzip, bzip2, xz, a zip
        archive of one file); JPEG/PNG cutouts (needs Pillow, ``astromorph[images]``); ZTF
        and Rubin Avro alert packets (needs fastavro, ``astromorph[alerts]``).
    batch_size : int, optional
        Stamps per model call; stamps of many files are batched together.
    progress : bool or None, optional
        Progress bar over files (default: on a terminal, for many files).
    write_header : str or os.PathLike, optional
        Directory (created if needed) that receives a copy of every FITS
        input with the results as ``HIERARCH ASTROMORPH <MODEL> ...`` header
        keywords, each in its input's container (plain, gzip, bzip2, xz or a zip
        archive of one file, whatever its name). The inputs are never modified.
    in_place : bool, optional
        Add the keywords to the FITS inputs themselves, each kept in its container
        as for ``write_header``. Each file is replaced atomically (a complete
        temporary copy in the same directory, fsync'ed, then `os.replace`), so a
        failure leaves the original as it was.
    overwrite : bool, optional
        Let ``write_header`` replace existing files in its directory.
    providers : None, str or list of str, optional
        Passed to `astromorph.load_model` when ``model`` is not loaded yet.
    threads : int, optional
        Passed to `astromorph.load_model` when ``model`` is not loaded yet.
    precision : {None, "float32", "int8"}, optional
        Passed to `astromorph.load_model` when ``model`` is not loaded yet
        (``precision="int8"``: the quantised variant, faster on CPUs).
    crop_fraction : float, optional
        Galaxy models (``morphology``, ``morphology-gz2``, ``embedding``): the central
        fraction of each cutout that the network sees. Default: the card's (0.35), for
        cutouts spanning the card's ``cutout_size_per_petro_r90`` x petroR90_r (GZ1:
        `astromorph.preprocessing.cutout_size_from_petrosian`); ``1.0`` for stamps already
        cut to ``stamp_size_per_petro_r90`` x petroR90_r. Refused
        (`~astromorph.exceptions.InvalidArgumentError`) by the models whose card fixes
        their field (``real-bogus``, ``radio-morphology``).
    match_beam : bool, optional
        ``radio-morphology``: convolve an image in flux units whose restoring beam (header
        BMAJ, BMIN, BPA, or the AIPS HISTORY card; circular where only BMAJ is given) has a
        minor axis below 0.9 times FIRST's 5.4 arcsec to the smallest beam that contains
        FIRST's (FIRST's own where the major axis is below 5.4 arcsec) before scoring
        (`astromorph.preprocessing.smooth_to_first_beam`, on the FIRST grid; the row's
        ``reason`` says so), as the model was trained at FIRST's resolution (default True;
        ``--no-match-beam``). Images on FIRST's beam or coarser in every direction, without
        a beam, or 8-bit are scored as given; one of a known beam that is not smoothed, on
        pixels finer than FIRST's 1.8 arcsec along some axis, is sampled at the FIRST grid's
        points by cubic convolution (its beam band-limits it, as FIRST's pixels sample
        their own), not block-averaged and interpolated bilinearly
        (`astromorph.preprocessing.resample_to_first_grid`, which widened FIRST's beam).

    Returns
    -------
    astropy.table.Table
        Columns ``source`` (file path, ``path[i]`` for the i-th stamp of a
        file holding several, or the alert id: ZTF ``candid``, Rubin
        ``diaSourceId``); where alert packets are among the inputs, ``object``
        and the candidate's ``ra``, ``dec`` (degrees; masked for other rows); the
        model's output columns, ``<prefix>_flags`` (`astromorph.Flag` bits), for radio
        models ``<prefix>_smoothed`` (bool: the image was smoothed to a beam that
        contains FIRST's, see ``match_beam``) and ``reason`` (empty for clean rows).
        Outputs of unusable rows (`Flag.unusable`) are masked. ``meta`` holds
        the provenance keys `astromorph.annotate` writes (``astromorph_version``,
        ``astromorph_model``, ``astromorph_model_version``,
        ``astromorph_model_sha256``, ``astromorph_model_precision``,
        ``astromorph_providers``, ``astromorph_preprocessing``,
        ``astromorph_crop_fraction`` for galaxy models, ``astromorph_columns``) and, as
        before, ``model``, ``model_version``, ``model_sha256``, ``model_precision`` and
        ``providers`` (a list).

    Raises
    ------
    astromorph.exceptions.ModelNotFoundError
        Unknown model.
    astromorph.exceptions.InputNotFoundError
        An input path, directory or pattern that matches no file.
    astromorph.exceptions.InvalidArgumentError
        A bad option value (named in the message).
    astromorph.exceptions.MissingDependencyError
        Pillow or fastavro is needed for an input and is not installed.
    astromorph.exceptions.OutputExistsError
        A ``write_header`` copy exists already and ``overwrite`` is not set.
    astromorph.exceptions.OutputError
        The ``write_header`` folder cannot be created, or a file cannot be written. A
        header write that fails part-way (a full disk) stops there: the files written
        before keep their keywords (each is complete, written atomically), the failed
        one and the rest are left as they were; the message names both, the error's
        ``written`` and ``not_written`` attributes list them and its ``table`` attribute
        holds the results.

    Warns
    -----
    astromorph.exceptions.UnusableInputWarning
        When some stamps could not be scored (their rows say why).
    astromorph.exceptions.AmbiguousInputWarning
        When stamps were read by assumption (unnamed bands or planes; for the galaxy
        models, named bands without all of g, r and i, scored on the one band
        `astromorph.annotate` takes of them: r, else i, else g, their rows' ``reason``
        saying so), or files by their content against their extension (``x.fits``
        holding an Avro packet).
    astromorph.exceptions.AstromorphWarning
        For galaxy models, when FITS headers give a pixel unit or zero point other than
        SDSS nanomaggies (``BUNIT`` count, ``MAGZERO`` 30...): the pixels are scored
        unconverted and each such row's ``reason`` says so. These warnings name the stamps
        that were scored: one refused as it is read or at preprocessing (no finite pixel) is
        counted by the UnusableInputWarning and its row says why.
    astromorph.exceptions.DuplicateSourceWarning
        When a ``source`` repeats (an alert id in two packets, or one packet under two
        file names): every row is kept; the message says how many ids repeat and names
        the first five.
    """
    from ._adapters import model_family, result_columns
    from ._model import as_model

    check_batch_size(batch_size)
    in_place, overwrite = check_bool(in_place, "in_place"), check_bool(overwrite, "overwrite")
    if write_header is not None and not isinstance(write_header, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"write_header must be a directory path, got "
                                       f"{write_header!r}")
    if write_header is not None and in_place:
        raise InvalidArgumentError("write_header (--write-header) and in_place (--in-place) "
                                   f"exclude each other: write copies to {str(write_header)!r} "
                                   "or update the inputs, not both")
    check_crop_fraction(crop_fraction)
    match_beam = check_bool(match_beam, "match_beam")
    model = as_model(model, providers=providers, threads=threads, precision=precision)
    check_crop_fraction(crop_fraction, model.card)
    paths = expand_inputs(inputs)
    targets = header_targets(paths, write_header, in_place, overwrite)
    family = model_family(model.card)
    runner = _Runner(model, family, int(batch_size), crop_fraction, match_beam=match_beam)

    with progress_bar(len(paths), desc=f"{model.name}", unit="file", enabled=progress,
                      min_total=16) as bar:
        # (row, stamp) of the stamps these warnings would name; named once scored
        assumed, misnamed, units = [], [], []
        for stamps in _read_all(paths, family, model.card):
            for stamp in stamps:
                row = len(runner.sources)
                if stamp.assumption:
                    assumed.append((row, stamp))
                if family == "optical" and stamp.usable and stamp.flux_note:
                    units.append((row, stamp))
                if stamp.misnamed:
                    misnamed.append((row, stamp))
                runner.add(stamp)
            bar.update(1)
        runner.finish()
    prediction, flags, valid = runner.collect()
    # The warnings name the images whose pixels were scored: one refused as it is read, or
    # only at preprocessing (no finite pixel...), is said by its row and UnusableInputWarning.
    units = unscored_flux_notes(units, valid, runner.reasons)
    assumed = [stamp for row, stamp in assumed if valid[row]]
    misnamed = {str(stamp.path): stamp.misnamed for row, stamp in misnamed if valid[row]}
    if assumed:
        what = ("the planes (PLANE1..3 or EXTNAME SCIENCE, REFERENCE, DIFFERENCE)"
                if family == "triplet" else "the bands (BAND or FILTER keywords, or EXTNAMEs)")
        warn(f"{len(assumed)} stamp(s) read by assumption (first: {assumed[0].source}: "
             f"{assumed[0].assumption}); name {what} to be sure", AmbiguousInputWarning)

    if units:
        warn_flux_units(model, units)
    if misnamed:
        first = next(iter(misnamed.items()))
        warn(f"{len(misnamed)} file(s) whose extension names another format than their "
             f"content, read by their content (first: {first[0]}: {first[1]}); rename them",
             AmbiguousInputWarning)

    cols = result_columns(model, prediction, flags, valid, smoothed=runner.smoothed_rows())

    from astropy.table import Column, Table

    from ._annotate import _provenance

    table = Table(meta={
        # the provenance keys of annotate/annotate_stamps tables, so that one key reads
        # the model of any astromorph table...
        **_provenance(model, columns=cols.colnames, crop_fraction=crop_fraction),
        # ...and the keys this function has always written
        "model": model.name, "model_version": str(model.version),
        "model_sha256": model.sha256, "model_precision": model.precision,
        "providers": list(model.providers),
    })
    width = max([len(s) for s in runner.sources] + [1])
    table["source"] = Column(np.array(runner.sources, dtype=f"U{width}"),
                             description="input file (path[i]: i-th stamp of the file) or "
                                         "alert id (ZTF candid, Rubin diaSourceId)")
    if runner.alerts:  # alert packets: the object, to join on
        from astropy.table import MaskedColumn

        known = np.array([o is not None for o in runner.objects])
        table["object"] = MaskedColumn(
            np.array([o or "" for o in runner.objects],
                     dtype=f"U{max(len(o or '') for o in runner.objects)}"), mask=~known,
            description="object of the alert (ZTF objectId, Rubin diaObjectId); masked "
                        "for other inputs and for records that could not be read")
        for j, (name, what) in enumerate((("ra", "right ascension"), ("dec", "declination"))):
            values = [p[j] for p in runner.positions]
            known = np.array([v is not None for v in values], dtype=bool)
            table[name] = MaskedColumn(
                np.array([np.nan if v is None else v for v in values], dtype=np.float64),
                mask=~known, unit="deg",
                description=f"{what} of the alert's candidate (ZTF candidate.{name}, Rubin "
                            f"diaSource.{name}); masked for other inputs and for records that "
                            "could not be read or give none")
    for name in cols.colnames:
        table[name] = cols[name]
    table["reason"] = runner.reason_column()
    warn_duplicates(table["source"])
    summarise(table["reason"], flags, valid, what="stamp", where="the 'reason' column")

    if targets:
        try:
            write_results_to_header(model, table, runner.origins, targets,
                                    overwrite=overwrite or in_place)
        except OutputError as exc:  # part-way: the results are not lost with it
            exc.table = table
            raise
    return table


def check_batch_size(batch_size):
    """Raise `InvalidArgumentError` unless ``batch_size`` is a positive integer
    (`InvalidArgumentTypeError` for something that is no number: a string, None, a bool)."""
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) \
            and batch_size >= 1:
        return
    error = InvalidArgumentError if isinstance(batch_size, (int, float, np.number)) \
        and not isinstance(batch_size, bool) else InvalidArgumentTypeError
    raise error(f"batch_size must be a positive integer, got {batch_size!r}")


def check_crop_fraction(crop_fraction, card=None):
    """Raise `InvalidArgumentError` unless ``crop_fraction`` is None or a number in (0, 1]
    (the ``crop_fraction`` of `predict_files` and `astromorph.annotate_stamps`) that the
    model of ``card`` (when given) can honour: the models whose card fixes their field
    (`fixed_field`) take none."""
    from ._adapters import fixed_field

    if crop_fraction is None:
        return
    if not in_unit_interval(crop_fraction):
        raise InvalidArgumentError(f"crop_fraction must be a number in (0, 1], got "
                                   f"{crop_fraction!r}")
    field = None if card is None else fixed_field(card)
    if field is not None:
        raise InvalidArgumentError(
            f"crop_fraction={crop_fraction!r} (--crop-fraction) cannot be honoured by model "
            f"{card['name']!r}: its card fixes the field it sees ({field}); leave it out (it "
            "applies to the galaxy models)")


def warn_duplicates(sources, *, shown=5):
    """Warn once (`DuplicateSourceWarning`) when ``sources`` name a source more than once
    (an alert id in two packets, or one packet under two file names): how many ids repeat,
    the first ``shown`` of them (in table order) and how many rows they take. The rows are
    all kept: which copy is meant is the caller's to decide."""
    values, first, counts = np.unique(np.asarray(sources), return_index=True,
                                      return_counts=True)
    repeated = counts > 1
    if not repeated.any():
        return
    order = np.argsort(first[repeated], kind="stable")
    ids, n = values[repeated][order], counts[repeated][order]
    listed = first_few((f"{str(i)!r} ({c} rows)" for i, c in zip(ids, n)), ", ", shown=shown)
    warn(f"{len(ids)} source id(s) repeat, in {int(n.sum())} rows: {listed}; every row "
         "is kept (the same alert in two packets, or one packet under two file names?): "
         "drop repeats with astropy.table.unique(table, keys='source') if they are copies",
         DuplicateSourceWarning)


#: A list while a part of a larger table is scored (an `annotate_dask` partition): `summarise`
#: appends its counts there instead of warning, and `warn_summary` says them once for the table.
SUMMARIES = contextvars.ContextVar("astromorph_summaries", default=None)

#: `warn_summary`'s message, with its counts and texts as format fields.
NOT_SCORED = ("{bad} of {n} {what}(s) could not be scored (first: {first}); their outputs "
              "are masked and {where} says why")


def summarise(reasons, flags, valid, *, what, where):
    """Warn once (`UnusableInputWarning`) when rows could not be scored; log flagged ones.

    ``reasons`` are the rows' reason texts, ``what`` names a row ("stamp", "row") and
    ``where`` the column that says why. The warning points at the public function's caller.
    Where `SUMMARIES` holds a list, the counts are appended to it instead, as
    ``(n, bad, flagged, first, what, where, message, row)`` (``row``: the first unusable row).
    """
    n = len(flags)
    bad = int((~valid).sum())
    flagged = int(((flags != 0) & valid).sum())
    row = next(i for i, v in enumerate(valid) if not v) if bad else None
    first = reasons[row] if bad else None
    summarise_counts(n, bad, flagged, first, what=what, where=where, row=row)


def summarise_counts(n, bad, flagged, first, *, what, where, message=NOT_SCORED, row=None):
    """`summarise` from its counts: `warn_summary`, or the counts appended to `SUMMARIES`
    where it holds a list (an `annotate_dask` partition; ``row``: the partition's row that
    ``first`` is of, which tells the first of the whole table where its rows are regrouped)."""
    sink = SUMMARIES.get()
    if sink is not None:
        sink.append((n, bad, flagged, first, what, where, message, row))
    else:
        warn_summary(n, bad, flagged, first, what=what, where=where, message=message)


def warn_summary(n, bad, flagged, first, *, what, where, message=NOT_SCORED):
    """`summarise`'s warning and log line, from its counts (``first``: the first reason;
    ``message``: the warning, with fields ``bad``, ``n``, ``what``, ``first``, ``where``).
    ``flagged`` counts the scored rows that carry flags, out of the ``n - bad`` scored."""
    if bad:
        warn(message.format(bad=bad, n=n, what=what, first=first, where=where),
             UnusableInputWarning)
    if flagged:
        log.info("%d of %d scored %s(s) carry quality flags", flagged, n - bad, what)


def flux_reason(note):
    """The ``reason`` of a row whose header gives ``note`` (`Stamp.flux_note`: a unit or
    zero point other than SDSS nanomaggies), for a galaxy model."""
    from ._readers._fits import NANOMAGGY_ZERO_POINT

    return (f"header gives {note}, not SDSS nanomaggies: the pixels are scored as they are, "
            f"assumed nanomaggies per pixel (zero point {NANOMAGGY_ZERO_POINT:g}); convert them "
            "(docs/annotate.md)")


def unscored_flux_notes(noted, valid, reasons=None, *, name=None):
    """The ``"name: note"`` texts `warn_flux_units` takes for the ``(row, stamp)`` pairs
    ``noted`` (stamps whose header gives a flux unit other than nanomaggies) whose rows were
    scored (``valid``); from the ``reasons`` (a list per row; None: none kept) of the others,
    refused as they were preprocessed, the `flux_reason` goes: their pixels were never used.
    ``name``: the name of a row in the warning (default: its stamp's ``source``).

    `annotate` passes its images as the stamps (`SkyImage.flux_note`, named by their
    ``name``), ``valid`` telling whether a scored source was cut from each."""
    out = []
    for row, stamp in noted:
        if valid[row]:
            out.append(f"{stamp.source if name is None else name(row)}: {stamp.flux_note}")
        elif reasons is not None and (said := flux_reason(stamp.flux_note)) in reasons[row]:
            reasons[row].remove(said)
    return out


# ----------------------------------------------------------------------------- reading
def _read_all(paths, family, card):
    """Yield the conformed stamps of each path, read ahead in a thread."""
    want_scale = family in ("radio", "triplet")

    def one(path):
        stamps = read_file(path, want_scale=want_scale, triplet_hint=family == "triplet")
        for s in stamps:
            _conform(s, family, card)
        return stamps

    if not _PREFETCH or len(paths) < _PREFETCH_MIN_FILES:
        for p in paths:
            yield one(p)
        return
    # One condition guards the queue and its byte count: the reader waits while `_READ_AHEAD`
    # files are queued, or while the file it holds would take the queue past
    # `_READ_AHEAD_BYTES` (unless the queue is empty: a file bigger than that still passes).
    items = collections.deque()
    held = [0]  # bytes of stamp data queued
    ready = threading.Condition()
    stop = threading.Event()
    done = object()

    def room(size):
        return stop.is_set() or (len(items) < _READ_AHEAD
                                 and (not items or held[0] + size <= _READ_AHEAD_BYTES))

    def put(item, size=0):
        with ready:
            ready.wait_for(lambda: room(size))
            if stop.is_set():
                return False
            items.append((item, size))
            held[0] += size
            ready.notify_all()
            return True

    def work():
        try:
            for p in paths:
                if stop.is_set():
                    return
                stamps = one(p)
                if not put(stamps, _stamp_bytes(stamps)):
                    return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=work, name="astromorph-reader", daemon=True)
    thread.start()
    try:
        while True:
            with ready:
                ready.wait_for(lambda: items)
                item, size = items.popleft()
                held[0] -= size
                ready.notify_all()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        with ready:  # release a reader waiting for room, and what it queued
            stop.set()
            items.clear()
            ready.notify_all()
        thread.join()


def _stamp_bytes(stamps):
    """Bytes of the stamps' data arrays (what a file holds queued in `_read_all`)."""
    return sum(s.data.nbytes for s in stamps if s.data is not None)


def _conform(stamp, family, card):
    """Fit a stamp to what a model family takes, or flag why it cannot be."""
    if not stamp.usable:
        return stamp
    name = card["name"]
    data, kind = stamp.data, stamp.kind
    h, w = data.shape[:2] if kind == "colour" else data.shape[-2:]
    if min(h, w) < 2:
        return stamp.flag(Flag.BAD_INPUT, f"stamp is only {w}x{h} pixels")
    if kind == "colour" and family == "triplet":
        return stamp.flag(Flag.BAD_INPUT, f"{name} needs science, reference and difference "
                          "stamps (a FITS triplet or an alert packet), not a colour picture")
    if kind == "triplet" and family != "triplet":
        return stamp.flag(Flag.BAD_INPUT, f"a difference-imaging triplet cannot feed {name} "
                          f"({family} model)")
    if kind == "bands":
        _conform_bands(stamp, family, name)
        if not stamp.usable:
            return stamp
        if family == "optical" and stamp.flux_note:  # said, not flagged, as annotate does
            stamp.reason.append(flux_reason(stamp.flux_note))
    # Pixel grid: radio and triplet models resample by the WCS pixel scale.
    if stamp.pixel_scale is None and not stamp.native_grid:
        grid = None
        if family == "radio" and stamp.kind == "bands":
            from .preprocessing._radio import DATASET_IMAGE_PIXELS, FIRST_PIXEL_SCALE_ARCSEC
            grid, scale = DATASET_IMAGE_PIXELS, FIRST_PIXEL_SCALE_ARCSEC
        elif family == "triplet":
            from .preprocessing._triplet import TRIPLET_PIXEL_SCALE
            grid, scale = card["input"]["shape"][-1], TRIPLET_PIXEL_SCALE
        if grid is not None and (h, w) != (grid, grid):
            stamp.flag(Flag.NO_WCS, f"no celestial WCS and the {w}x{h} stamp is not the model's "
                       f"{grid}x{grid} grid: assumed {scale:g} arcsec/pixel")
    if stamp.kind == "triplet":
        problem = template_problem(stamp.data[1])
        if problem:
            return stamp.flag(Flag.BAD_INPUT, problem)
        if family == "triplet" and stamp.centre is not None:
            _flag_off_centre(stamp, card)
    return stamp


#: Input pixels by which the model's field about a candidate placed by its WCS may run over
#: a cutout's edge beyond what it runs over about the cutout's centre before `Flag.EDGE`
#: (Rubin cuts its cutouts within half a pixel of the source).
OFF_CENTRE_PIXELS = 1.0


def _flag_off_centre(stamp, card):
    """`Flag.EDGE` for a triplet whose candidate (``stamp.centre``) lies so near an edge of
    the cutouts that the model's field about it runs over that edge by more than
    `OFF_CENTRE_PIXELS` beyond what a cutout of that size centred on it would miss."""
    from .preprocessing._checks import axis_scales
    from .preprocessing._triplet import TRIPLET_PIXEL_SCALE

    field = card["input"]["shape"][-1] * TRIPLET_PIXEL_SCALE  # arcsec
    scales = axis_scales(TRIPLET_PIXEL_SCALE if stamp.pixel_scale is None
                         else stamp.pixel_scale)
    over = []
    for p, n, scale in zip(stamp.centre, stamp.data.shape[-2:], scales):
        half = field / (2 * scale)  # input pixels
        beyond = max(half - (p + 0.5), half - (n - 0.5 - p)) - max(half - n / 2, 0.0)
        over.append(beyond)
    if max(over) > OFF_CENTRE_PIXELS:
        y, x = stamp.centre
        ny, nx = stamp.data.shape[-2:]
        stamp.flag(Flag.EDGE, f"the candidate lies at pixel (x, y = {x:.2f}, {y:.2f}; "
                   f"0-based) of the {nx}x{ny} cutouts, off their centre: the model's field "
                   f"about it runs {max(over):.1f} pixels further over their edge than about "
                   "their centre (filled)")


def template_problem(template):
    """Why a reference (template) stamp is unusable, or None: it has valid pixels, none of
    them positive. NaN, inf and masking sentinels (|value| >= 1e30) are no values."""
    with np.errstate(invalid="ignore"):
        valid = template[np.abs(template) < _SENTINEL]
    if valid.size and valid.max() <= 0 and valid.min() < 0:
        return (f"reference (template) stamp has no positive pixel (max {valid.max():.4g}): "
                "not a usable template")
    return None


def _planes_last(data):
    """Words for a cube that looks written planes-last (numpy ``(H, W, 3)``), or ``""``."""
    nb, h, w = data.shape
    if w <= 4 < min(nb, h):
        return (f" (the array is ({w}, {h}, {nb}) in FITS axis order NAXIS1..3: NAXIS1 = {w} "
                f"looks like the planes, but cubes are read with NAXIS3 as the planes, numpy "
                f"shape ({w}, H, W): transpose it)")
    return ""


def _conform_bands(stamp, family, name):
    data = stamp.data
    nb = data.shape[0]
    names = tuple(stamp.bands) if stamp.bands else (None,) * nb
    shown = ", ".join(b or "?" for b in names)
    # "5 planes (g, r, ?, ?, z)" where some bands are named, "5 planes" where none is
    planes = f"{nb} planes ({shown})" if any(names) else f"{nb} planes"
    if family == "optical":
        named = [b for b in names if b]
        if nb == 3 and not named:
            stamp.assumption = "3 planes without band names read as g, r, i"
        empty = [b for b in "gri" if b in stamp.empty_hdus and b not in names]
        if nb == 1 and empty:  # a g, r, i file whose other bands' HDUs are empty: no grey
            stamp.flag(Flag.MISSING_BAND, f"band {shown} alone: no {', '.join(empty)} band: "
                       + "; ".join(stamp.empty_hdus[b] for b in empty)
                       + f" ({name} needs g, r, i or a single band)")
            return
        if nb == 1 or (nb == 3 and (not named or set(names) == {"g", "r", "i"})):
            return
        if nb > 3 and {"g", "r", "i"} <= set(names):
            twice = [b for b in "gri" if names.count(b) > 1]
            if twice:  # which plane is the r band? the first one is used, with a warning
                stamp.assumption = (f"bands {shown}: {', '.join(twice)} named more than once, "
                                    "the first plane of each read")
            idx = [names.index(b) for b in "gri"]
            stamp.data, stamp.bands = data[idx], ("g", "r", "i")
            if stamp.saturation is not None:
                stamp.saturation = stamp.saturation[idx]
            if stamp.quantum is not None:
                stamp.quantum = stamp.quantum[idx]
            return
        if named and nb >= 2:
            missing = [b for b in "gri" if b not in names]
            blank = [stamp.empty_hdus[b] for b in missing if b in stamp.empty_hdus]
            if blank:  # a g, r, i file with a band HDU of no data: broken, not read as less
                stamp.flag(Flag.MISSING_BAND, f"bands {shown}: no {', '.join(missing)} band: "
                           f"{'; '.join(blank)} ({name} needs g, r, i or a single band)")
                return
            if missing:  # the band annotate would take (`single_band`), scored alone
                pick = single_band(named)
                k = names.index(pick)
                twice = " (named more than once, the first plane read)" \
                    if names.count(pick) > 1 else ""
                words = (f"bands {shown}: no {', '.join(missing)} band: band {pick} scored "
                         f"alone{twice} ({name} takes g, r and i together, or one band)")
                stamp.assumption = words
                stamp.reason.append(words)
                stamp.data, stamp.bands = data[k:k + 1], (pick,)
                if stamp.saturation is not None:
                    stamp.saturation = stamp.saturation[k:k + 1]
                if stamp.quantum is not None:
                    stamp.quantum = stamp.quantum[k:k + 1]
                return
        if nb == 2:
            stamp.flag(Flag.MISSING_BAND, f"{planes}: {name} needs 3 bands (g, r, i) "
                       "or a single band")
            return
        stamp.flag(Flag.BAD_INPUT, f"{planes}: {name} takes 1 band or 3 (g, r, i)"
                   + _planes_last(data))
    elif family == "radio":
        if nb != 1:
            stamp.flag(Flag.BAD_INPUT, f"{nb} planes: {name} takes a single radio image"
                       + _planes_last(data))
    elif family == "triplet":
        named = [b for b in names if b]
        bands = {b for b in named if len(b) == 1 and b in "ugrizy"}
        if nb == 3 and len(bands) >= 2:
            # planes of different filters are a multi-band image, never a difference triplet
            # (whose three images are of one band): refused, as a colour picture is
            stamp.flag(Flag.BAD_INPUT, f"planes named as bands {shown}: {name} needs "
                       "science, reference and difference images of one band (planes in that "
                       "order, or named by PLANE1..3 or EXTNAME SCIENCE/REFERENCE/DIFFERENCE)")
        elif nb == 3:
            if named:  # names that say no member (r, r, r; unknown words): the order is assumed
                stamp.assumption = (f"3 planes named {shown}, none SCIENCE, REFERENCE or "
                                    "DIFFERENCE, read as science, reference, difference")
            stamp.kind = "triplet"  # planes in the order science, reference, difference
        elif nb < 3:
            stamp.flag(Flag.MISSING_BAND, f"{nb} plane(s): a triplet needs science, reference "
                       "and difference images")
        else:
            stamp.flag(Flag.BAD_INPUT, f"{nb} planes: a triplet has 3 (science, reference, "
                       "difference)" + _planes_last(data))


# ----------------------------------------------------------------------------- batching
class _Runner:
    """Groups stamps by kind and shape, scores full groups, keeps per-row results.

    Stamps come one by one (`add`) or as a block of rows sharing kind, shape and dtype
    (`add_block`, e.g. array columns of a table); either way a group is scored in batches
    of ``batch_size`` rows in row order.
    """

    def __init__(self, model, family, batch_size, crop_fraction, *, match_beam=True):
        self.model, self.family = model, family
        self.batch_size, self.crop_fraction = batch_size, crop_fraction
        self.match_beam = match_beam  # radio: smooth a beam finer than FIRST's to FIRST's
        self.sources, self.flags, self.reasons, self.origins = [], [], [], []
        self.objects, self.positions = [], []  # of alerts: object, (ra, dec); else None
        self.alerts = False  # a stamp came from a file of alert packets
        # key -> [pieces (rows, data, flags, scales, levels, centres, quanta), number of
        # rows]; levels: the saturation level of each plane (NaN where unknown),
        # `Stamp.saturation`; centres: the candidate's (y, x) in a triplet (NaN where
        # unknown), `Stamp.centre`; quanta: the quantisation step of each plane (0 where
        # stored as written), `Stamp.quantum`
        self.groups = {}
        self.results = []  # (rows, {output: array})
        self.smoothed = []  # rows of the radio images smoothed to a beam containing FIRST's
        self.updates = []  # (rows, flags, valid) of the scored groups
        # radio: the pixel scale of the first row of each group's batch, and the kernels of
        # the smoothing (`_first_grid`)
        self.batch_scale, self.caches = {}, {}

    def add(self, stamp):
        row = len(self.sources)
        self.sources.append(stamp.source)
        self.objects.append(stamp.object)
        self.positions.append((stamp.ra, stamp.dec))
        self.alerts = self.alerts or stamp.alert
        self.flags.append(stamp.flags)
        self.reasons.append(list(stamp.reason))
        self.origins.append((stamp.path, stamp.header_hdu, stamp.index))
        if not stamp.usable:
            return
        # (scale_y, scale_x) for pixels that are not square, else one float
        scale = np.array(axis_scales(np.nan if stamp.pixel_scale is None else stamp.pixel_scale))
        beam = stamp.beam if self.family == "radio" else None  # only the radio model uses it
        planes = 1 if stamp.kind == "colour" else len(stamp.data)
        levels = np.full((1, planes), np.nan) if stamp.saturation is None \
            else np.asarray(stamp.saturation, dtype=float)[None]
        centre = np.full((1, 2), np.nan) if stamp.centre is None \
            else np.asarray(stamp.centre, dtype=float).reshape(1, 2)
        quanta = np.zeros((1, planes)) if stamp.quantum is None \
            else np.asarray(stamp.quantum, dtype=float).reshape(1, planes)
        key = _group_key(stamp.kind, stamp.data, stamp.bands, scale, beam)
        data, flags = stamp.data[None], np.array([stamp.flags], dtype=np.int32)
        if self.family == "radio":  # (on the FIRST grid now: its native pixels not held)
            data = self._first_grid(key, data, flags, scale, levels, quanta)
        self._queue(key, np.array([row]), data, flags, scale[None], levels, centre, quanta)

    def _first_grid(self, key, data, before, scale, levels, quanta):
        """A radio stamp (``data`` ``(1, 1, H, W)``, ``before`` its flags, ``scale``,
        ``levels``, ``quanta`` as `_queue` takes them) brought to the FIRST grid as `_score`
        would bring it in its batch (`_OnFirstGrid`), or ``data`` as given where its batch
        would not be (8-bit images, unknown pixel scales, 300-pixel images of FIRST's)."""
        from ._adapters import RawStamps, first_grid_stamps, radio_first_grid
        from ._readers import Stamp
        from ._readers._fits import Beam

        if key not in self.groups:  # the first row of a batch: its scale is the batch's
            self.batch_scale[key] = scale
        pixel_scale = self._pixel_scale(key, self.batch_scale[key][None])
        if not first_grid_stamps(key[0], data.dtype, data.shape[1:], pixel_scale):
            return data
        given = self._given(key[0], data, before, levels)
        beam = None if key[5] is None else Beam(*key[5])
        raw = RawStamps(key[0], data, bands=key[3], pixel_scale=pixel_scale, beam=beam,
                        beam_shape=self._beam_shape(beam), flags=given,
                        quantum=quanta if quanta.any() else None)
        try:
            with catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # (as `_score`)
                first = radio_first_grid(raw, caches=self.caches)
        except (InputError, ValueError, TypeError) as exc:  # said by `_score`, as before
            return _OnFirstGrid.failed(data, given, exc)
        new = first.first.flags & ~before
        if before[0] & Flag.EDGE:  # (`prepare`: an EDGE row's BLANK is the cutout stage's)
            new &= ~int(Flag.BLANK)
        words = _pixel_words(Stamp("", None, kind=key[0], data=data[0], bands=key[3],
                                   saturation=levels[0],
                                   quantum=quanta[0] if quanta[0].any() else None),
                             int(new[0]))
        return _OnFirstGrid(first, [words], [None], data.shape, data.dtype)

    @staticmethod
    def _pixel_scale(key, scales):
        """The pixel scale of a batch of group ``key`` whose rows' scales are ``scales``
        ``(N, 2)``: None (unknown), one float, or ``(scale_y, scale_x)`` for pixels that are
        not square (one axis unknown: refused by the resampling, flagged); the first row's."""
        return None if key[4] is None else tuple(scales[0].tolist()) \
            if isinstance(key[4], tuple) else float(scales[0][0])

    def _beam_shape(self, beam):
        """The ``beam_shape`` of `RawStamps` for a group's ``beam`` (`Beam` or None)."""
        return None if not self.match_beam or self.family != "radio" else \
            np.array([np.nan] * 3 if beam is None else [beam, beam.minor, beam.angle])

    @staticmethod
    def _given(kind, data, before, levels):
        """Flags ``before`` and SATURATED, tested on the raw pixels of ``data``."""
        from ._readers._stamp import saturated_centres

        if kind != "colour" and not np.isnan(levels).all():
            return before | np.where(saturated_centres(data, levels),
                                     int(Flag.SATURATED), 0).astype(np.int32)
        return before

    def add_block(self, index, kind, data, bands, flags, reasons, scales):
        """Add rows whose stamps are ``data[j]`` (all of one ``kind``, shape and dtype).

        ``index``: the rows' numbers (their source names and origins); ``flags`` and
        ``reasons`` (a list per row) what was found before scoring; ``scales``: pixel
        scales in arcsec/pixel, ``(rows,)`` or ``(rows, 2)`` (``(scale_y, scale_x)``), NaN
        where unknown.
        """
        first = len(self.sources)
        self.sources.extend(str(i) for i in index)
        self.objects.extend([None] * len(index))
        self.positions.extend([(None, None)] * len(index))
        self.flags.extend(np.asarray(flags).tolist())
        self.reasons.extend(reasons)
        self.origins.extend((None, None, int(i)) for i in index)
        rows = first + np.flatnonzero((np.asarray(flags) & int(Flag.unusable())) == 0)
        if not rows.size:
            return
        scales = _axis_pairs(np.asarray(scales, dtype=float)[rows - first])
        # one group per rounded scale, as `add` makes them, each in row order; the rows
        # told apart by both axes, and by which of them are NaN (unknown), NaN equal to NaN
        first_of, inverse = _distinct_rows(scales)
        keys = [_group_key(kind, data[0], bands, v) for v in scales[first_of].tolist()]
        group_of = {}  # distinct scales that round alike share a group (a dict: not quadratic)
        codes = np.array([group_of.setdefault(k, j) for j, k in enumerate(keys)],
                         dtype=np.intp)[inverse.ravel()]
        planes = 1 if kind == "colour" else data.shape[1]
        flags = np.asarray(flags, dtype=np.int32)
        for code in dict.fromkeys(codes.tolist()):
            sel = codes == code
            picked = rows[sel] - first
            key = keys[code]
            if self._on_first_grid(key, data[:1], scales[sel][:1]):
                # radio: each row brought to the FIRST grid as it is added, as `add` does
                # (the group holds 300 x 300 images, not copies of the native stamps)
                for row, j, scale in zip(rows[sel].tolist(), picked.tolist(), scales[sel]):
                    one = self._first_grid(key, data[j:j + 1], flags[j:j + 1], scale,
                                           np.full((1, planes), np.nan),
                                           np.zeros((1, planes)))
                    self._queue(key, np.array([row]), one, flags[j:j + 1], scale[None],
                                np.full((1, planes), np.nan), np.full((1, 2), np.nan),
                                np.zeros((1, planes)))
                continue
            self._queue(key, rows[sel], data[picked], flags[picked], scales[sel],
                        np.full((len(picked), planes), np.nan),  # no header: no level
                        np.full((len(picked), 2), np.nan),  # the central pixel n // 2
                        np.zeros((len(picked), planes)))  # (table cells: not quantised)

    def _on_first_grid(self, key, data, scales):
        """Would `_first_grid` bring the radio stamps of group ``key`` (``data``
        ``(1, 1, H, W)`` one of them, ``scales`` ``(1, 2)`` its pixel scale) to the FIRST
        grid? (Else `add_block` queues them as given, a copy of the rows.)"""
        from ._adapters import first_grid_stamps

        if self.family != "radio":
            return False
        return first_grid_stamps(key[0], data.dtype, data.shape[1:],
                                 self._pixel_scale(key, scales))

    def _queue(self, key, rows, data, flags, scales, levels, centres, quanta):
        group = self.groups.setdefault(key, [[], 0])
        group[0].append((rows, data, flags, scales, levels, centres, quanta))
        group[1] += len(rows)
        if group[1] < self.batch_size:
            return
        rows, data, flags, scales, levels, centres, quanta = _join(group[0])
        group[0] = []  # (the pieces go: one copy of the stamps while they are scored)
        size = self.batch_size
        full = len(rows) - len(rows) % size
        for s in range(0, full, size):
            self._score(key, rows[s:s + size], data[s:s + size], flags[s:s + size],
                        scales[s:s + size], levels[s:s + size], centres[s:s + size],
                        quanta[s:s + size])
        if full < len(rows):
            group[0] = [(rows[full:], data[full:].copy(), flags[full:], scales[full:],
                         levels[full:], centres[full:], quanta[full:])]
            group[1] = len(rows) - full
        else:
            del self.groups[key]
            self.batch_scale.pop(key, None)

    def finish(self):
        for key in list(self.groups):
            self.batch_scale.pop(key, None)
            self._score(key, *_join(self.groups.pop(key)[0]))

    def collect(self):
        """``(prediction, flags, valid)`` in row order once `finish` has run; ``prediction``
        (a `Prediction` of the valid rows, or None) as `result_columns` takes it."""
        from ._model import Prediction

        flags = np.asarray(self.flags, dtype=np.int32)
        valid = np.zeros(len(flags), dtype=bool)
        for rows, f, ok in self.updates:
            flags[rows], valid[rows] = f, ok
        prediction = None
        if self.results:
            rows = np.concatenate([r for r, _ in self.results])
            order = np.argsort(rows, kind="stable")
            arrays = {name: np.concatenate([o[name] for _, o in self.results])[order]
                      for name in self.model.output_names}
            prediction = Prediction(arrays, self.model.card["outputs"])
        return prediction, flags, valid

    def smoothed_rows(self):
        """``(N,)`` bool: the rows whose image was smoothed (`result_columns`' ``smoothed``)."""
        out = np.zeros(len(self.sources), dtype=bool)
        out[np.asarray(self.smoothed, dtype=np.intp)] = True
        return out

    def reason_column(self):
        """Column of the rows' reasons, joined by "; " (empty for clean rows)."""
        from astropy.table import Column

        reasons = ["; ".join(r) for r in self.reasons]
        return Column(np.array(reasons, dtype=f"U{max([len(r) for r in reasons] + [1])}"),
                      description="why the row is flagged or was not scored, or what was "
                                  "assumed of it (empty when clean)")

    def _score(self, key, rows, data, before, scales, levels, centres, quanta):
        from ._adapters import (NEGATIVE_CENTRE_SIGMA, FirstGrid, RawStamps,
                                extrapolation_words, negative_candidates, prepare)
        from ._readers import Stamp
        from ._readers._fits import Beam

        kind, bands = key[0], key[3]
        beam = None if key[5] is None else Beam(*key[5])
        scale = self._pixel_scale(key, scales)  # (the group's)
        # radio stamps brought to the FIRST grid as they were read (`_first_grid`)
        first = data if isinstance(data, _OnFirstGrid) else None
        if first is not None:
            given = first.given
            pixels = first.images
            done = FirstGrid(first.flags, first.smoothed, first.native)
        else:
            given = self._given(kind, data, before, levels)
            pixels, done = data, None
        raw = RawStamps(kind, pixels, bands=bands,
                        pixel_scale=scale,
                        beam=beam, beam_shape=self._beam_shape(beam), flags=given,
                        centre=None if np.isnan(centres).all() else centres,
                        quantum=quanta if quanta.any() else None, first=done)
        try:
            if first is not None and first.error is not None:  # (raised on the FIRST grid)
                raise first.error
            with catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices etc.
                x, flags = prepare(self.model, raw, crop_fraction=self.crop_fraction)
        except (InputError, ValueError, TypeError) as exc:
            if len(rows) > 1:  # find the stamp(s) at fault
                for j in range(len(rows)):
                    self._score(key, rows[j:j + 1], data[j:j + 1], before[j:j + 1],
                                scales[j:j + 1], levels[j:j + 1], centres[j:j + 1],
                                quanta[j:j + 1])
                return
            self.updates.append((rows, given | int(Flag.BAD_INPUT), False))
            self.reasons[rows[0]].append(f"cannot be preprocessed: {exc}")
            return
        flags = np.asarray(flags, dtype=np.int32)
        scored = (flags & int(Flag.unusable())) == 0  # e.g. a plane without a finite pixel
        if scored.any():
            pred = self.model.predict(x[scored], batch_size=max(len(x), 1), progress=False)
            self.results.append((rows[scored],
                                 {k: np.asarray(pred[k]) for k in self.model.output_names}))
        self.updates.append((rows, flags, scored))
        if raw.smoothed is not None:  # what was done to the pixels: said, not flagged
            for j in np.flatnonzero(raw.smoothed & scored):
                self.reasons[rows[j]].append(_smoothed_words(beam))
                self.smoothed.append(rows[j])
        new = flags & ~before
        grid = None  # the group's shape and pixel scale are one: its words are too
        if (new & int(Flag.EXTRAPOLATED)).any():
            grid = extrapolation_words(self.model.card, kind, data.shape[-3:-1] if
                                       kind == "colour" else data.shape[-2:], data.dtype,
                                       raw.pixel_scale, self.crop_fraction)
        for j in np.flatnonzero(new):  # words only for the rows that preprocessing flagged
            stamp = Stamp("", None, kind=kind, data=data[j] if first is None else None,
                          bands=bands, beam=beam, saturation=levels[j],
                          quantum=quanta[j] if quanta[j].any() else None)
            self.reasons[rows[j]].extend(_explain(
                stamp, int(new[j]), grid=grid, blank=None if raw.blank is None else
                raw.blank.row(j), radio=None if raw.radio is None else raw.radio.row(j),
                constant=None if raw.constant is None else raw.constant.row(j),
                words=None if first is None else first.words[j]))
        if self.family == "triplet":  # a sign the model does not expect: said, not flagged
            for j in np.flatnonzero(scored & negative_candidates(x)):
                self.reasons[rows[j]].append(
                    f"difference stamp is negative at the centre (its central 3x3 pixels "
                    f"{NEGATIVE_CENTRE_SIGMA:g} sigma or more below its median): scored as "
                    "given, but the model takes the candidate positive (reference - science "
                    "for a fading source); negate the difference of a negative detection")


def _join(pieces):
    """The arrays of a group's ``pieces`` (`_Runner._queue`), each field concatenated; the
    stamps in native byte order (the adapters' conversion of big-endian FITS pixels would
    copy them again: the same values)."""
    if isinstance(pieces[0][1], _OnFirstGrid):
        return [_OnFirstGrid.join(a) if j == 1 else np.concatenate(a)
                for j, a in enumerate(zip(*pieces))]
    dtype = pieces[0][1].dtype
    return [np.concatenate(a, dtype=dtype.newbyteorder("=") if j == 1 else None)
            for j, a in enumerate(zip(*pieces))]


class _OnFirstGrid:
    """Radio stamps of a group brought to the FIRST grid as they were read
    (`_Runner._first_grid`), in the place of their native pixels in a group's pieces:
    ``images`` ``(N, 1, 300, 300)`` and the `~astromorph._adapters.FirstGrid` fields
    (``flags``, ``smoothed``, ``native``), ``given`` their flags before (with SATURATED),
    ``words`` the words `_explain` reads from their pixels (`_pixel_words`), ``errors``
    what bringing them to the grid raised (None each where nothing); ``shape`` and
    ``dtype`` those of the native stamps, ``(N, 1, H, W)``, in native byte order."""

    def __init__(self, first, words, errors, shape, dtype, *, fields=None):
        if fields is None:
            fields = dict(images=np.asarray(first.data), given=first.flags,
                          flags=first.first.flags, native=first.first.native,
                          smoothed=first.first.smoothed)
        self.__dict__.update(fields)
        self.words, self.errors = words, errors
        self.shape, self.dtype = (len(words), *shape[1:]), np.dtype(dtype).newbyteorder("=")

    _FIELDS = ("images", "given", "flags", "native", "smoothed")

    @classmethod
    def failed(cls, data, given, error):
        """A stamp whose bringing to the FIRST grid raised ``error``."""
        fields = dict(images=np.zeros((1, 1, 1, 1)), given=given,
                      flags=given, native=np.zeros(1, dtype=bool), smoothed=None)
        return cls(None, [_pixel_words(None, 0)], [error], data.shape, data.dtype,
                   fields=fields)

    @property
    def error(self):
        """The first error of the rows (`_Runner._score` scores the rows of a batch that
        holds one alone, and says it of its row), or None."""
        return next((e for e in self.errors if e is not None), None)

    def __len__(self):
        return len(self.words)

    def __getitem__(self, sel):
        if not isinstance(sel, slice):
            raise TypeError("rows of stamps on the FIRST grid are taken by slices")
        fields = {k: None if getattr(self, k) is None else getattr(self, k)[sel]
                  for k in self._FIELDS}
        return _OnFirstGrid(None, self.words[sel], self.errors[sel], self.shape, self.dtype,
                            fields=fields)

    def copy(self):
        return self[:]

    @classmethod
    def join(cls, parts):
        """The rows of ``parts`` in their order."""
        fields = {}
        for k in cls._FIELDS:
            values = [getattr(p, k) for p in parts]
            if k == "smoothed" and any(v is None for v in values):
                # (None: no beam shape, the same for the group, or a stamp that failed)
                values = [np.zeros(len(p), dtype=bool) if v is None else v
                          for p, v in zip(parts, values)]
                values = None if all(getattr(p, k) is None for p in parts) else values
            if k == "images":
                side = max(v.shape[-1] for v in values)
                values = [v if v.shape[-1] == side else np.zeros((len(v), 1, side, side))
                          for v in values]
            fields[k] = None if values is None else np.concatenate(values)
        return cls(None, sum((p.words for p in parts), []), sum((p.errors for p in parts), []),
                   parts[0].shape, parts[0].dtype, fields=fields)


def _axis_pairs(scales):
    """Pixel scales of rows, ``(N,)`` (one per row, for both axes) or ``(N, 2)``, as
    ``(N, 2)`` floats ``(scale_y, scale_x)``."""
    scales = np.asarray(scales, dtype=float)
    return np.stack([scales, scales], axis=1) if scales.ndim == 1 else scales


def _distinct_rows(scales):
    """The distinct rows of ``(N, 2)`` floats ``scales`` (NaN equal to NaN, told apart by
    which axis is NaN), as `numpy.unique` over rows gives them (``return_index``,
    ``return_inverse``) but 10-50 times faster: a stable sort of the rows' bits."""
    bits = np.ascontiguousarray(np.where(np.isnan(scales), np.nan, scales)).view(np.uint64)
    order = np.lexsort((bits[:, 1], bits[:, 0]))  # stable: each run's first is its first row
    ordered = bits[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    inverse = np.empty(len(order), dtype=np.intp)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


def _smoothed_words(beam):
    """The reason of a radio row smoothed to FIRST's beam (`smooth_to_first_beam`)."""
    from .preprocessing._radio import FIRST_BEAM_FWHM_ARCSEC

    pa = f" (PA {beam.pa:.0f} deg)" if beam.minor != float(beam) else ""
    to = f"FIRST's {FIRST_BEAM_FWHM_ARCSEC:g}\"" if float(beam) <= FIRST_BEAM_FWHM_ARCSEC else (
        f"{float(beam):.1f}\" x {FIRST_BEAM_FWHM_ARCSEC:g}\"{pa}, the smallest beam that "
        f"contains FIRST's {FIRST_BEAM_FWHM_ARCSEC:g}\"")
    return (f"smoothed from the {float(beam):.1f}\" x {beam.minor:.1f}\" beam{pa} to {to} "
            "(the resolution the model was trained at; --no-match-beam scores the image as "
            "given)")


def _group_key(kind, stamp, bands, scale, beam=None):
    """Stamps of one group are scored together: same kind, shape, dtype, bands, pixel
    scale and restoring beam (major, minor axes and angle, `Beam`, to 1e-6; None if
    unknown). The pixel scale (to 1e-6 arcsec/pixel) is one value, or
    ``(scale_y, scale_x)``: None where both are NaN
    (unknown), one float where both axes agree (one value or a square pair: one group,
    scored alike), else the pair, with None for an axis that is NaN."""
    sy, sx = (None if v != v else round(v, 6) for v in axis_scales(scale))  # (v != v: NaN)
    key = sy if sy == sx else (sy, sx)  # (both NaN: None)
    return (kind, stamp.shape, stamp.dtype.str, bands, key,
            None if beam is None else tuple(round(float(v), 6) for v in (
                beam, getattr(beam, "minor", beam), getattr(beam, "pa", 0.0),
                getattr(beam, "angle", 0.0))))


#: The flag bits whose words `_explain` takes from a stamp's pixels (`_pixel_words`).
_PIXEL_BITS = Flag.BAD_INPUT | Flag.BLANK | Flag.CONSTANT | Flag.SATURATED


def _explain(stamp, bits, *, grid=None, blank=None, radio=None, constant=None, words=None):
    """Words for flag bits that preprocessing set; ``grid``: why the stamp's pixel grid
    makes it `Flag.EXTRAPOLATED` (`astromorph._adapters.extrapolation_words`), if known;
    ``blank``: what `Flag.BLANK` was judged on, ``(fraction, plane, field)``
    (`astromorph._adapters.BlankMeasure.row`), if not the largest fraction of invalid
    pixels of one plane of the stamp; ``constant``: what `Flag.CONSTANT` was judged on,
    ``(planes, steps, allowances, area)`` (`astromorph._adapters.ConstantMeasure.row`),
    if not the stamp's own planes to their quantisation steps; ``radio``: what a radio
    stamp's
    `Flag.OUT_OF_DISTRIBUTION` was judged on, ``(positive, background)``
    (`astromorph._adapters.RadioMeasure.row`); ``words``: the words of the bits read from
    the stamp's pixels, `_pixel_words` of it for the same `_PIXEL_BITS` of ``bits``, made
    while its pixels were held (``stamp.data`` is then not read)."""
    from ._adapters import coarse_beam
    from .preprocessing._radio import FIRST_BEAM_FWHM_ARCSEC

    if words is None:
        words = _pixel_words(stamp, bits, blank=blank, constant=constant)
    empty, blank_words, constant_words, saturated_words = words
    if bits & Flag.BAD_INPUT and empty:
        # the one reason that matters: the other bits (BLANK, CONSTANT, EXTRAPOLATED) follow
        # from it and describe a filling and a resampling that were never scored
        return [empty]
    out = blank_words + constant_words
    if bits & Flag.EXTRAPOLATED and coarse_beam(stamp.beam):
        out.append(f"beam {stamp.beam:.1f}\" is more than twice FIRST's "
                   f"{FIRST_BEAM_FWHM_ARCSEC:g}\" (the resolution the model was trained at: "
                   "structure finer than the beam is lost)")
    if bits & Flag.EXTRAPOLATED and grid:
        out.append(grid)
    elif bits & Flag.EXTRAPOLATED and not coarse_beam(stamp.beam):
        out.append("the stamp's pixels are much coarser than the model's grid, or it does not "
                   "cover the model's field (resampling extrapolated; any missing area filled)")
    if bits & Flag.EDGE:  # (set in preprocessing for radio stamps only: `_radio_to_first_grid`)
        from .preprocessing._radio import _FIELD_OFF_WORDS

        out.append(_FIELD_OFF_WORDS)
    if bits & Flag.NO_SOURCE:
        out.append("no pixel of the model's field reaches 5 times the noise RMS above the "
                   "background (the field's median where positive): no source to classify")
    out += saturated_words
    if bits & Flag.OUT_OF_DISTRIBUTION:
        out.append(_out_of_distribution_words(radio))
    rest = bits & ~(Flag.BLANK | Flag.CONSTANT | Flag.EXTRAPOLATED | Flag.NO_SOURCE
                    | Flag.SATURATED | Flag.OUT_OF_DISTRIBUTION | Flag.EDGE)
    if rest:
        out.append(describe_flags(rest))
    return out


def _pixel_words(stamp, bits, *, blank=None, constant=None):
    """The words of `_explain` that read ``stamp.data``, for ``bits`` (`_PIXEL_BITS` of
    them, ``blank`` and ``constant`` as `_explain` takes them): ``(empty, blank, constant,
    saturated)``, ``empty`` the one reason of a `Flag.BAD_INPUT` stamp with a plane of no
    finite pixel (else ``""``), the others lists of words."""
    from ._adapters import _quantum_tolerance
    from .preprocessing._triplet import TRIPLET_PIXEL_SCALE

    if not bits & _PIXEL_BITS:
        return "", [], [], []
    out = []
    data = np.asarray(stamp.data)
    if stamp.kind == "colour":
        planes, names = [data], ["image"]
    elif stamp.kind == "triplet":
        planes, names = list(data), [f"{m} stamp" for m in _MEMBERS]
    else:
        planes = list(data)
        names = [f"band {b}" if b else (f"plane {i + 1}" if len(data) > 1 else "image")
                 for i, b in enumerate(stamp.bands or (None,) * len(data))]
    # NaN, inf and masking sentinels (|value| >= 1e30, e.g. ZTF's -3.4e38) are not data
    valid = [np.abs(np.asarray(p, dtype=np.float64)) < _SENTINEL for p in planes]
    empty = [nm for v, nm in zip(valid, names) if not v.any()]
    if bits & Flag.BAD_INPUT and empty:
        return (f"{' and '.join(empty)} {'has' if len(empty) == 1 else 'have'} no finite "
                "pixel: not scored"), [], [], []
    fracs = [float(np.mean(~v)) for v in valid]
    if bits & Flag.BLANK and blank is not None:  # the measure the flag was judged on
        frac, j, field = blank
        if field:  # a triplet resampled to the model's grid: the covered part of its field
            scale = f"{TRIPLET_PIXEL_SCALE:g}\"/pixel"
            out.append(f"{frac:.0%} of the {names[j]}'s pixels within the model's field "
                       f"(resampled to its {scale} grid) are NaN/inf/BLANK (filled)")
        else:  # all planes together
            out.append(f"{frac:.0%} of the pixels of the {len(planes)} "
                       f"{'bands' if stamp.bands and any(stamp.bands) else 'planes'} "
                       "together are NaN/inf/BLANK (filled)")
    elif bits & Flag.BLANK and max(fracs) > 0:
        j = int(np.argmax(fracs))
        where = f" of the {names[j]}" if len(planes) > 1 else ""
        out.append(f"{fracs[j]:.0%} of the pixels{where} are NaN/inf/BLANK (filled)")
    constant_words = []
    if bits & Flag.CONSTANT:
        # (a lossily compressed FITS image: constant to its quantisation step, `Stamp.quantum`)
        steps = np.zeros(len(planes)) if stamp.quantum is None else \
            np.broadcast_to(np.asarray(stamp.quantum, dtype=float).ravel(), (len(planes),))
        judged, allowed, area, grid_words = zip(planes, valid), steps, 1.0, ""
        if constant is not None:  # judged on the model's grid (a resampled triplet)
            on_grid, raw_steps, allowances, area = constant
            steps = np.zeros(len(planes)) if raw_steps is None else raw_steps
            allowed = np.zeros(len(planes)) if allowances is None else allowances
            judged = [(p, np.abs(np.asarray(p, dtype=np.float64)) < _SENTINEL)
                      for p in on_grid]
            grid_words = f" on the model's {TRIPLET_PIXEL_SCALE:g}\"/pixel grid"
        parts = []
        for (p, v), nm, step, allow in zip(judged, names, steps, allowed):
            finite = p[v]
            if finite.size == 0:
                continue
            lo, hi = finite.min(), finite.max()
            if lo == hi:
                value = finite.flat[0]
                parts.append(f"{nm} is all zero{grid_words}" if value == 0 else
                             f"{nm} is constant ({value:.4g}){grid_words}")
            elif allow > 0 and hi - lo <= _quantum_tolerance(allow, hi, lo):
                parts.append(f"{nm} is constant ({np.mean(finite, dtype=np.float64):.4g}, to "
                             f"{_step_words(step, allow, area)})"
                             f"{grid_words}")
        j = int(np.argmax(allowed))
        constant_words.append(
            "; ".join(parts) if parts else "constant stamp" if not np.any(allowed) else
            f"constant stamp (to {_step_words(steps[j], allowed[j], area)}){grid_words}")
    saturated_words = []
    if bits & Flag.SATURATED:
        from ._readers._stamp import SATURATION_RADIUS, central_disk, reaches_saturation

        rows, cols = central_disk(data.shape[-2:])
        hit = reaches_saturation(data[:, rows, cols], stamp.saturation)
        saturated_words.append(
            " and ".join(f"{nm} reaches its header's saturation level "
                         f"({stamp.saturation[i]:.6g})" for i, nm in enumerate(names) if hit[i])
            + f" within {SATURATION_RADIUS} pixels of the centre: the core is clipped, "
            "the outputs are not trustworthy")
    return "", out, constant_words, saturated_words


def _step_words(step, allowance=None, area=1.0):
    """Words for the quantisation step that a stamp is constant to (`Flag.CONSTANT`): the
    ``step`` of its compressed tiles, or the ``allowance`` less than it that the pixels of
    the model's grid, means of blocks of ``area`` of the stamp's, were allowed
    (`astromorph._cutouts._block_quantum`)."""
    from ._cutouts import QUANTUM_SIGMAS

    words = f"the quantisation step {step:.2g} of its compressed tiles"
    if allowance is None or not allowance < step:
        return words
    return (f"{allowance:.2g}: {words}, for means of {area:g} of its pixels "
            f"({QUANTUM_SIGMAS:g} / sqrt(12 x {area:g}) of the step)")


def _out_of_distribution_words(radio):
    """Why a radio stamp is `Flag.OUT_OF_DISTRIBUTION`: the criteria that fired, with the
    measures they were judged on, ``radio = (positive, background, edges, ring)``
    (`astromorph._adapters.RadioMeasure.row`); all criteria, unmeasured, where None."""
    from .preprocessing._radio import (_EDGE_NAMES, _EDGE_STRIP_PIXELS, _RING_PIXELS,
                                       MAX_BACKGROUND_SIGMA, MAX_POSITIVE_FRACTION,
                                       MIN_BACKGROUND_SIGMA, MIN_RING_SIGMA)

    end = ": outside the training distribution"
    positive, level, edges, (ring, inner) = ((np.nan, np.nan, (np.nan,) * 4, (np.nan,) * 2)
                                             if radio is None else radio)
    fired = positive > MAX_POSITIVE_FRACTION or ring < MIN_RING_SIGMA or any(
        not MIN_BACKGROUND_SIGMA <= v <= MAX_BACKGROUND_SIGMA for v in (level,) + edges)
    if not fired:  # (not measured: say what the flag means)
        return (f"more than {MAX_POSITIVE_FRACTION:.0%} of the model's field is above the noise "
                "threshold (the training images: at most 12.8%), or the background of the "
                f"cutout or of a {_EDGE_STRIP_PIXELS}-pixel strip along one of its edges is "
                f"more than {MAX_BACKGROUND_SIGMA:g} times the noise above zero or "
                f"{-MIN_BACKGROUND_SIGMA:g} times it below, or that of a ring about the "
                f"centre significantly more than {-MIN_RING_SIGMA:g} times it below (FIRST "
                "maps are background-subtracted)" + end)
    parts = []
    if positive > MAX_POSITIVE_FRACTION:
        parts.append(f"{positive:.0%} of the model's field is above the noise threshold (more "
                     f"than {MAX_POSITIVE_FRACTION:.0%}; the training images: at most 12.8%), "
                     "as on a background offset from zero or in a field filled with emission")
    if level > MAX_BACKGROUND_SIGMA:
        parts.append(f"the cutout's background is {level:.1f} times the noise above zero "
                     f"(more than {MAX_BACKGROUND_SIGMA:g}; FIRST maps are background-"
                     "subtracted: the noise passes the data-set threshold, counted from zero)")
    elif level < MIN_BACKGROUND_SIGMA:
        parts.append(f"the cutout's background is {-level:.1f} times the noise below zero "
                     f"(more than {-MIN_BACKGROUND_SIGMA:g}; FIRST maps are background-"
                     "subtracted: the data-set threshold, counted from zero, cuts the source's "
                     "faint emission)")
    for name, v in zip(_EDGE_NAMES, edges):
        if v > MAX_BACKGROUND_SIGMA:
            parts.append(f"the background of the cutout's {name} edge ({_EDGE_STRIP_PIXELS} "
                         f"pixels at 1.8\") is {v:.1f} times its noise above zero (more than "
                         f"{MAX_BACKGROUND_SIGMA:g}; a pedestal over part of the cutout: the "
                         "noise passes the data-set threshold, counted from zero, or raises it)")
        elif v < MIN_BACKGROUND_SIGMA:
            parts.append(f"the background of the cutout's {name} edge ({_EDGE_STRIP_PIXELS} "
                         f"pixels at 1.8\") is {-v:.1f} times its noise below zero (more than "
                         f"{-MIN_BACKGROUND_SIGMA:g}; a pedestal over part of the cutout: it "
                         "raises the noise estimate and the data-set threshold)")
    if ring < MIN_RING_SIGMA:
        parts.append(f"the background {inner:.0f}-{inner + _RING_PIXELS:.0f} pixels from the "
                     f"centre (at 1.8\") is {-ring:.1f} times the noise below zero (more than "
                     f"{-MIN_RING_SIGMA:g}, significantly; a negative bowl around the source or "
                     "a pedestal below zero: the data-set threshold, counted from zero, cuts "
                     "the source's faint emission)")
    return "; ".join(parts) + end


# ----------------------------------------------------------------------------- command line
def register(subparsers):
    """Add the ``predict`` sub-command to the ``astromorph`` command line."""
    from .cli import add_model_option, add_runtime_options

    p = subparsers.add_parser(
        "predict", help="score FITS/JPEG/PNG stamps and alert packets: one row per stamp",
        description="Apply a model to files of stamps (FITS images, cubes and "
                    "multi-extension files, JPEG/PNG cutouts, ZTF/Rubin Avro alert packets) "
                    "and write one table row per stamp. The model is the first positional "
                    "argument (predict MODEL INPUT...) or -m/--model (predict -m MODEL "
                    "INPUT...).")
    add_model_option(p, "model name (see `astromorph models`) or path; may instead be "
                        "given as the first positional argument, MODEL", positional=True)
    p.add_argument("inputs", metavar="INPUT", nargs="*",
                   help="files, directories or glob patterns (quote patterns); at least one")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output table; format from the extension: .ecsv, .fits, .csv, .parquet "
                        "(default: print the table)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N",
                   help="stamps per model call (default 256)")
    p.add_argument("--write-header", metavar="DIR",
                   help="write copies of the FITS inputs with the results as header keywords "
                        "into DIR")
    p.add_argument("--in-place", action="store_true",
                   help="add the result keywords to the FITS inputs themselves (atomically)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (default: refuse before any work)")
    add_runtime_options(p)
    p.add_argument("--crop-fraction", type=float, default=None, metavar="F",
                   help="galaxy models: central fraction of each cutout the network sees "
                        "(default 0.35, for cutouts of cutout_size_from_petrosian(petroR90_r) = "
                        "10.15 petroR90_r; 1.0 for stamps already cut to "
                        "stamp_size_from_petrosian)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-match-beam", dest="match_beam", action="store_false",
                   help="radio-morphology: score an image whose restoring beam is finer than "
                        "FIRST's 5.4\" in some direction as given (default: convolve it to the "
                        "smallest beam that contains FIRST's first)")
    p.set_defaults(func=_cmd_predict)
    return p


def _cmd_predict(args):
    from .cli import check_model_output, check_range, report

    check_range("--batch-size", args.batch_size, low=1)
    check_range("--threads", args.threads, low=0)
    check_range("--crop-fraction", args.crop_fraction, low=0, high=1, low_open=True)
    if args.output:  # fail before any work: bad extension, existing file, an input...
        inputs = expand_inputs(args.inputs)
        check_output(args.output, overwrite=args.overwrite, table=True, inputs=inputs)
        check_model_output(args.model, args.output)
        if args.write_header:  # ... or the header folder or the file of a copy in it
            check_distinct_outputs({"--output": args.output,
                                    "--write-header": args.write_header, **{
                f"--write-header copy of {str(p)!r}": os.path.join(args.write_header, p.name)
                for p in inputs}})
    failed = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusableInputWarning)  # summarised below
        try:
            table = predict_files(args.model, args.inputs, batch_size=args.batch_size,
                                  progress=False if args.no_progress else None,
                                  write_header=args.write_header, in_place=args.in_place,
                                  overwrite=args.overwrite, providers=args.providers,
                                  threads=args.threads, precision=args.precision,
                                  crop_fraction=args.crop_fraction,
                                  match_beam=args.match_beam)
        except OutputError as exc:  # header writing failed part-way: still give the table
            if getattr(exc, "table", None) is None:
                raise
            table, failed = exc.table, exc
    if args.output:
        write_table(table, args.output, overwrite=args.overwrite)
    else:
        for line in table.pformat(max_lines=-1, max_width=-1):
            print(line)
    if failed is not None:
        raise output_error(f"{failed}; the table is complete"
                           + (f" and was written to {args.output}" if args.output else
                              " and was printed"), failed) from failed
    report(args, summary_line(table) + (f"; table written to {args.output}" if args.output
                                        else ""))
    return 0


def summary_line(table):
    """The summary line of a command that adds model columns: ``N row(s), model NAME VERSION:
    S scored, F flagged, U unusable``, from the flags column among the new columns that
    ``table.meta["astromorph_columns"]`` names: S + U = N, and F counts the scored rows
    that carry flags (an unusable row always does), as `warn_summary`'s log line."""
    meta = table.meta
    new = str(meta.get("astromorph_columns", "")).split(",")
    flag_col = next((c for c in new if c.endswith("_flags")),
                    next(c for c in table.colnames if c.endswith("_flags")))
    flags = np.asarray(table[flag_col])
    unusable = flags & int(Flag.unusable()) != 0
    n, flagged = len(table), int(((flags != 0) & ~unusable).sum())
    unusable = int(unusable.sum())
    return (f"{n} row(s), model {meta['astromorph_model']} {meta['astromorph_model_version']}: "
            f"{n - unusable} scored, {flagged} flagged, {unusable} unusable")

"""Results of `predict_files` written into FITS headers: copies in a directory, or in place.

Each FITS input that gave rows gets ``HIERARCH ASTROMORPH <MODEL> ...`` keywords (model
version, file checksum prefix, and one card per scalar output column) in the header of the
HDU its stamp came from; earlier keywords of the same model are replaced. Files are written
atomically, and only once every target has been checked (`header_targets`).
"""
import logging
import os
import shutil
import struct
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ._io import atomic_output, card_reads_back, close_files_left_open, output_error
from ._readers import sniff_format
from ._readers._compressed import compression_of, zip_member
from ._version import __version__
from ._warnings import catch_warnings, first_few, warn
from .exceptions import (AstromorphError, AstromorphWarning, InvalidArgumentError,
                         LossyOutputWarning, OutputError, OutputExistsError)

__all__ = ["header_targets", "write_results_to_header"]

log = logging.getLogger(__name__)

#: Longest string value written to a header card.
_MAX_REASON = 60


def header_targets(paths, write_header, in_place, overwrite):
    """Mapping input path -> output path for header writing (checked before any work)."""
    if write_header is None and not in_place:
        return {}
    fits_paths = [p for p in paths if _is_fits(p)]
    if len(fits_paths) < len(paths):
        what = "in_place" if in_place else "write_header"
        warn(f"{what}: {len(paths) - len(fits_paths)} of {len(paths)} input(s) are not "
             f"FITS files, plain or compressed (JPEG, PNG, Avro alerts), and get no header "
             f"keywords"
             + ("; nothing will be written" if not fits_paths else ""),
             AstromorphWarning)
    if not fits_paths:
        return {}
    if in_place:  # the file itself, through any symbolic link
        return {p: Path(os.path.realpath(p)) for p in fits_paths}
    out_dir = Path(write_header).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError(f"write_header={str(write_header)!r} is not a directory")
    targets, seen = {}, {}
    for p in fits_paths:
        target = out_dir / p.name
        if os.path.realpath(target) == os.path.realpath(p):
            raise InvalidArgumentError(
                f"write_header={str(write_header)!r} (--write-header) is the directory of the "
                f"input {str(p)!r}: copies would replace the originals (use in_place=True, "
                "--in-place, for that)")
        if p.name in seen:
            raise InvalidArgumentError(
                f"inputs {str(seen[p.name])!r} and {str(p)!r} have the same file name; their "
                f"copies in {str(write_header)!r} would collide")
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{str(target)!r} exists; pass overwrite=True "
                                    "(--overwrite) to replace it")
        seen[p.name] = p
        targets[p] = target
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(f"cannot create the write_header (--write-header) folder "
                           f"{str(write_header)!r}: {exc.strerror or exc}", exc) from exc
    return targets


def _is_fits(path):
    """Whether ``path`` is a FITS file whose header is written (plain, or compressed by gzip,
    bzip2 or xz, or a zip archive of one file, as the readers read them): by its content, as
    `astromorph._readers.sniff_format` decides, its name only when the content says
    nothing."""
    try:
        return sniff_format(path) in ("fits", "gzip", "bzip2", "xz", "zip")
    except OSError:
        return False


#: The file name ending by which astropy writes each compression (``None``: plain FITS;
#: astropy writes no zip archive: its one file is written plain, then archived here).
_WRITTEN_AS = {None: ".fits", "gzip": ".gz", "bzip2": ".bz2", "xz": ".xz", "zip": ".fits"}


def _container(path):
    """The compression of the file ``path`` by its content (`compression_of`: ``"gzip"``,
    ``"bzip2"``, ``"xz"``, ``"zip"``), None for a plain file, whatever its name."""
    with open(path, "rb") as f:
        return compression_of(f.read(6))


def _write_in_container(hdul, tmp, path, checksum):
    """Write ``hdul`` to ``tmp`` in the container of the input ``path``: plain FITS stays
    plain, gzip, bzip2 and xz files stay so compressed, whatever their names (astropy
    compresses by the name it writes to: a plain file named ``x.fits.bz2`` would come back
    compressed, one named ``x.fits.zip`` not at all), and a zip archive stays one, its
    member's name, compression and extra fields kept, dated now (`_rezip`)."""
    from astropy.io import fits

    container = _container(path)
    suffix = _WRITTEN_AS[container]
    # astropy reads the name's last ending, as written (".gz", not ".GZ")
    out = tmp if container != "zip" and os.path.splitext(tmp.name)[1] == suffix \
        else tmp.with_name(tmp.name + suffix)
    with catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        hdul.writeto(out, output_verify="silentfix", checksum=checksum)
    if container == "zip":
        try:
            _rezip(path, out, tmp)
        finally:
            out.unlink()
    elif out != tmp:
        os.replace(out, tmp)


def _rezip(archive, content, tmp):
    """Write to ``tmp`` the zip ``archive`` with its one file's content replaced by the file
    ``content``: the member's name, compression, permissions, comments and extra fields kept
    (`_rewritten_extra`), and any folder entries with it (`zip_member`: an archive of more
    files than one is no FITS file the readers read). The member is dated now, in its DOS
    date and its extra fields' modification times, as ``zip`` dates a file it updates: its
    content is new, and ``unzip`` gives the file the member's date (kept, make, rsync and
    backups would take the modified file for the old one); a folder entry keeps its date."""
    when = time.time()
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(tmp, "w") as new:
        member = zip_member(old)
        new.comment = old.comment
        for info in old.infolist():
            date = info.date_time if info is not member else time.localtime(when)[:6]
            copy = zipfile.ZipInfo(info.filename, date)
            copy.compress_type, copy.comment = info.compress_type, info.comment
            copy.external_attr, copy.create_system = info.external_attr, info.create_system
            copy.internal_attr = info.internal_attr
            copy.extra = _rewritten_extra(info.extra, None if info is not member else when)
            if info is not member:  # a folder entry
                new.writestr(copy, b"")
                continue
            # its size known before: a ZIP64 record only where the file needs one (forced,
            # a small archive needed a reader of ZIP64, version 4.5, to be extracted)
            copy.file_size = os.path.getsize(content)
            with open(content, "rb") as src, new.open(copy, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


#: Tags of the zip extra fields `_rewritten_extra` reads: ZIP64 sizes, the extended
#: timestamp (Info-ZIP's "UT") and NTFS times.
_ZIP64, _TIMESTAMP, _NTFS = 0x0001, 0x5455, 0x000A
#: 100-ns intervals from 1601-01-01 (NTFS times) to 1970-01-01 (Unix times).
_NTFS_EPOCH = 11644473600 * 10 ** 7


def _rewritten_extra(extra, when=None):
    """The extra fields (bytes of ``ZipInfo.extra``) of a zip member written again: the
    ZIP64 field left out (zipfile writes one where the new file needs it; kept, it would
    stand twice, or where none is needed), the others kept in order; where ``when`` (Unix
    time) is given, the modification times of the extended-timestamp and NTFS fields set
    to it (``unzip`` and Windows tools take the date from them before the DOS date).
    Zero bytes after the last field (padding, as zipalign writes to align the member's
    data) are kept after them; fields that cannot be parsed are kept as they are."""
    fields, pos = [], 0
    while pos + 4 <= len(extra):
        if not any(extra[pos:]):  # padding: zero bytes to the end
            break
        tag, size = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + size > len(extra):
            return extra  # (malformed: not ours to mend)
        data = bytearray(extra[pos + 4:pos + 4 + size])
        pos += 4 + size
        if tag == _ZIP64:
            continue
        if when is not None and tag == _TIMESTAMP and size >= 5 and data[0] & 1:
            data[1:5] = struct.pack("<I", int(when) & 0xFFFFFFFF)
        elif when is not None and tag == _NTFS:
            at = 4  # (4 reserved bytes, then attributes: tag, size, value)
            while at + 4 <= size:
                attr, length = struct.unpack_from("<HH", data, at)
                if attr == 1 and length >= 8 and at + 4 + length <= size:  # mtime first
                    data[at + 4:at + 12] = struct.pack("<Q", int(when * 10 ** 7) + _NTFS_EPOCH)
                at += 4 + length
        fields.append(struct.pack("<HH", tag, size) + bytes(data))
    padding = extra[pos:]
    if any(padding):
        return extra  # (malformed: not ours to mend)
    return b"".join(fields) + padding


def _card(key, value, comment, dropped=None):
    """A header card that fits in 80 characters (comment dropped, strings cut if need be),
    or None, with ``key`` added to the set ``dropped``, when the keyword leaves no room for
    the value (a long model name) or no card holds the value (NaN)."""
    def whole(value, comment=""):  # one 80-character card that reads back as written
        card = card_reads_back(f"HIERARCH {key}", value, comment)
        return card if card is not None and len(str(card)) <= 80 else None

    card = whole(value, comment)
    if card is None:
        card = whole(value)
    if card is None and isinstance(value, str):
        while value and card is None:
            value = value[:-1]
            card = whole(value)
    if card is None and dropped is not None:
        dropped.add(key)
    return card


def _warn_dropped(dropped, *, shown=5):
    """One warning naming the header keywords too long to be written (none for none)."""
    if dropped:
        listed = first_few(sorted(dropped), ", ", shown=shown)
        warn(f"{len(dropped)} header keyword(s) were not written (no room for the value in "
             f"an 80-character card, or a value no header card holds, e.g. NaN): {listed}; "
             "their values are in the table", LossyOutputWarning)


def _result_cards(model, table, row, index, dropped=None):
    prefix = model.card.get("column_prefix", model.name.replace("-", "_"))
    base = f"ASTROMORPH {model.name.upper()}" + (f" S{index}" if index is not None else "")
    cards = []
    for name in table.colnames:
        if name in ("source", "reason"):
            continue
        col = table[name]
        if col.ndim > 1:
            continue  # embeddings do not fit in header cards
        value = col[row]
        if np.ma.is_masked(value):
            continue
        suffix = name[len(prefix) + 1:] if name.startswith(prefix + "_") else name
        if isinstance(value, (np.bool_, bool)):  # a logical card (T/F)
            value = bool(value)
        elif isinstance(value, (np.floating, float)):
            value = float(f"{float(value):.7g}")
        elif isinstance(value, (np.integer, int)):
            value = int(value)
        else:
            value = str(value)
        desc = (getattr(col, "description", "") or "")[:40]
        cards.append(_card(f"{base} {suffix.upper()}", value, desc, dropped))
    reason = str(table["reason"][row])
    if reason:
        cards.append(_card(f"{base} REASON", reason[:_MAX_REASON], "why flagged", dropped))
    return [c for c in cards if c is not None]


def write_results_to_header(model, table, origins, targets, *, overwrite=False):
    """Write each FITS input's results into a header copy (or the input itself).

    Parameters
    ----------
    model : Model
    table : astropy.table.Table
        The `predict_files` table.
    origins : list of (path, header_hdu, index)
        Per row: input file, the HDU whose header gets the keywords (``None``
        for rows that came from no readable FITS file) and the stamp index for
        files holding several stamps.
    targets : dict
        Input path -> output path (the same path for in-place updates).
    overwrite : bool
        Replace existing outputs.
    """
    rows_by_path = {}
    for row, (path, hdu, index) in enumerate(origins):
        if hdu is not None and path in targets:
            rows_by_path.setdefault(path, []).append((row, hdu, index))
    name = model.name.upper()
    items, written, skipped, dropped = list(rows_by_path.items()), [], [], set()
    try:
        _write_headers(model, table, name, items, targets, overwrite, written, skipped,
                       dropped)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM on the command line
        # which files have their keywords (complete: each is replaced atomically), which not
        done = {str(t) for t in written}
        note = ("header results " + _progress(written, [targets[p] for p, _ in items
                                                          if str(targets[p]) not in done]))
        log.info("interrupted; %s", note)
        exc.astromorph_note = note  # the command line's one line says it
        if hasattr(exc, "add_note"):  # Python 3.11+: shown under the traceback
            exc.add_note(note)
        raise
    finally:  # the files skipped before a failure are named too
        _warn_not_written(skipped)
        _warn_dropped(dropped)
    if written:
        log.info("results written to the headers of %d file(s)", len(written))


def _write_headers(model, table, name, items, targets, overwrite, written, skipped, dropped):
    """The loop of `write_results_to_header`: appends to ``written`` the targets written and
    to ``skipped`` ``(target, why, exception)`` for the files astropy cannot open or write
    back (the input's problem: the other files are still written), and adds to ``dropped``
    the keywords too long for a card."""
    from astropy.io import fits

    for k, (path, rows) in enumerate(items):
        target = targets[path]
        try:
            # raw data, and tile-compressed images as their binary tables: the pixels are
            # copied byte for byte (re-compressing floats would quantise them again)
            with catch_warnings():
                warnings.simplefilter("ignore", fits.verify.VerifyWarning)  # reported below
                hdul = fits.open(path, mode="readonly", memmap=True,
                                 do_not_scale_image_data=True, disable_image_compression=True)
        except Exception as exc:  # noqa: BLE001 - astropy raises OSError, ValueError...
            # the reader scored (or flagged) it, astropy cannot open it: e.g. a card it cannot
            # parse; an input problem, not an output one, so the other files still get theirs
            close_files_left_open(exc)  # (a zip file's extracted copy: `exc` is kept)
            skipped.append((target, "astropy cannot open the file", exc))
            continue
        try:
            # recorded as written as it is moved into place, an interruption (Ctrl-C, SIGTERM)
            # held meanwhile: the account of an interruption is never behind the files
            with hdul, atomic_output(target, overwrite=overwrite or target == path,
                                     on_replaced=lambda t=target: written.append(t)) as tmp:
                touched = set()
                for row, hdu, index in rows:
                    header = hdul[hdu].header
                    if hdu not in touched:
                        for key in [k for k in header.keys()
                                    if k.startswith(f"ASTROMORPH {name} ")
                                    or k == "ASTROMORPH VERSION"]:
                            header.remove(key, ignore_missing=True, remove_all=True)
                        for card in (
                                _card(f"ASTROMORPH {name} VERSION", str(model.version),
                                      "model version", dropped),
                                _card(f"ASTROMORPH {name} SHA256", model.sha256[:16],
                                      "model file sha256 prefix", dropped),
                                _card("ASTROMORPH VERSION", __version__, "astromorph version")):
                            if card is not None:  # (None would append a blank card)
                                header.append(card, end=True)
                        touched.add(hdu)
                    for card in _result_cards(model, table, row, index, dropped):
                        header.append(card, end=True)
                checksum = any("CHECKSUM" in h.header for h in hdul)
                # in the input's own container, whatever its name
                _write_in_container(hdul, tmp, path, checksum)
        except (OSError, AstromorphError) as exc:
            # a full disk, an unwritable folder...: the caller must know, and which files
            # have their keywords (complete: each file is written atomically) and which not
            # chained to the root cause (PermissionError, ENOSPC...), whose errno it has
            root = exc.__cause__ if isinstance(exc, OutputError) and isinstance(
                exc.__cause__, OSError) else exc
            rest = items[k + 1:] if written[-1:] == [target] else items[k:]  # (moved in)
            raise _part_way(exc, written, [targets[p] for p, _ in rest]) from root
        except Exception as exc:  # noqa: BLE001 - astropy cannot write this file back
            # (VerifyError...): the file is skipped (no copy, the original untouched), the
            # other files and the returned table are kept
            if written[-1:] != [target]:  # (not when it failed after the file was moved in)
                skipped.append((target, "astropy cannot write the file back", exc))
                continue
            # moved in (so counted as written, rightly), then something unexpected (syncing
            # its folder, closing the input): said, never dropped; the other files go on
            log.warning("results written to the header of %s (the new file is in place), "
                        "then an unexpected error: %s: %s", target, type(exc).__name__, exc,
                        exc_info=exc)
            continue
        log.debug("results written to the header of %s", target)


def _part_way(exc, written, not_written, *, shown=5):
    """`OutputError` for a header write that failed at ``not_written[0]``: its message names
    the files written before (kept, complete) and those not written; ``written`` and
    ``not_written`` are attributes too."""
    err = output_error(f"{exc}. Header results {_progress(written, not_written, shown=shown)}",
                       exc)
    err.written, err.not_written = list(written), list(not_written)
    return err


def _progress(written, not_written, *, shown=5):
    """``written: N (first names; complete, kept); not written: M (first names)``."""
    def names(paths):
        return first_few((repr(str(p)) for p in paths), ", ", shown=shown)

    done = f"{len(written)} ({names(written)}; complete, kept)" if written else "0"
    return (f"written: {done}; not written: {len(not_written)}"
            + (f" ({names(not_written)})" if not_written else ""))


def _warn_not_written(skipped, *, shown=5):
    """One warning for the files whose header results were not written (``(target, why,
    exception)`` each): how many, and why for the first ``shown``; none for none."""
    if not skipped:
        return
    listed = first_few((f"{str(target)!r}: {why} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())})" for target, why, exc in skipped),
                       "; ", shown=shown)
    warn(f"results not written to the header of {len(skipped)} file(s): {listed}; "
         "their rows are in the table", AstromorphWarning)

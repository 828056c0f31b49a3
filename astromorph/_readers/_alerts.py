"""Avro alert packets (extra ``alerts``): ZTF and Rubin triplets of FITS cutouts."""
import bz2
import copy
import io
import json
import logging
import lzma
import zlib

import numpy as np

from .._flags import Flag
from ..exceptions import MissingDependencyError
from ._fits import _e_exponents, parse_fits_bytes
from ._stamp import Stamp, common_pixel_scale

__all__ = ["ZTF_QUADRANT_SHAPE", "ZTF_STAMP_SIZE", "iter_avro_records", "read_alerts"]

log = logging.getLogger(__name__)

#: Side of ZTF alert cutouts; smaller ones were cut at the CCD edge.
ZTF_STAMP_SIZE = 63

_CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
_MEMBERS = ("science", "reference", "difference")


def _fastavro():
    try:
        import fastavro
    except ImportError as exc:
        raise MissingDependencyError(
            "reading Avro alert packets needs fastavro; install it with "
            "`pip install 'astromorph[alerts]'`") from exc
    return fastavro


def _read_long(buf, pos):
    """Zig-zag varint at ``pos``: (value, new position)."""
    shift = n = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated Avro data")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("corrupt Avro varint")


def _bytes_length(buf, pos):
    """The length of a byte string of the Avro header at ``pos``: (length, new position).
    A negative one, or one past the end, is corruption (a negative length would move the
    reader backwards, and it could loop for ever)."""
    n, after = _read_long(buf, pos)
    if n < 0 or after + n > len(buf):
        raise ValueError(f"corrupt Avro header: a metadata length of {n} bytes at byte {pos} "
                         f"of {len(buf)}")
    return n, after


class SchemalessMessage(ValueError):
    """An Avro message without its schema (Kafka's Confluent wire format), not a file."""


def confluent_schema_id(buf):
    """The schema-registry id of bytes that start like a Kafka message in the Confluent wire
    format, or None.

    What Rubin's Kafka alert stream delivers: magic byte 0, a 4-byte schema-registry id (a
    positive Java int: a zero-filled file is not one), then one record in Avro's binary
    encoding with no schema. (ZTF's messages are Avro files.)
    """
    schema_id = int.from_bytes(bytes(buf[1:5]), "big")
    if len(buf) > 5 and buf[0] == 0 and 0 < schema_id < 2**31:
        return schema_id
    return None


#: What to do with a Kafka message given as a file (the end of a reason).
SCHEMALESS_ADVICE = ("it holds no schema, so decode it with the alert schema and score its "
                     "cutouts with annotate_stamps (docs/predict.md, 'Alert streams')")


def _avro_header(buf):
    if buf[:4] != b"Obj\x01":
        schema_id = confluent_schema_id(buf)
        if schema_id is not None:
            raise SchemalessMessage(
                f"a Kafka message in the Confluent wire format (schema id "
                f"{schema_id}), not an Avro file: {SCHEMALESS_ADVICE}")
        raise ValueError("not an Avro object container file (no 'Obj\\x01' magic)")
    pos, meta = 4, {}
    while True:
        count, pos = _read_long(buf, pos)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, pos = _read_long(buf, pos)
        for _ in range(count):
            n, pos = _bytes_length(buf, pos)
            key = bytes(buf[pos:pos + n]).decode("utf-8")
            pos += n
            n, pos = _bytes_length(buf, pos)
            meta[key] = bytes(buf[pos:pos + n])
            pos += n
    if pos + 16 > len(buf):
        raise ValueError("truncated Avro header")
    return meta, bytes(buf[pos:pos + 16]), pos + 16


#: Fields decoded from alert packets; the rest (previous detections, ...) is skipped.
_KEEP_TOP = frozenset({"candid", "objectId", "candidate", "diaSource", "diaObject", "alertId",
                       *_CUTOUTS})
_KEEP_SUB = {"candidate": {"candid", "isdiffpos", "xpos", "ypos", "fid", "ra", "dec"},
             "diaSource": {"diaSourceId", "diaObjectId", "psfFlux", "isNegative", "band", "ra",
                           "dec"}}
_SCHEMAS = {}


def _pruned(writer):
    reader = copy.deepcopy(writer)
    if not (isinstance(reader, dict) and reader.get("type") == "record"):
        return None
    reader["fields"] = [f for f in reader["fields"] if f["name"] in _KEEP_TOP]
    for f in reader["fields"]:
        keep = _KEEP_SUB.get(f["name"])
        if keep and isinstance(f["type"], dict) and f["type"].get("type") == "record":
            f["type"]["fields"] = [g for g in f["type"]["fields"] if g["name"] in keep]
    return reader


def _schemas(text):
    """Parsed (writer, reader) schemas for a schema text, cached."""
    got = _SCHEMAS.get(text)
    if got is None:
        fastavro = _fastavro()
        writer = json.loads(text)
        parsed_writer = fastavro.parse_schema(writer)
        try:
            pruned = _pruned(writer)
            parsed_reader = fastavro.parse_schema(pruned) if pruned else None
        except Exception:  # noqa: BLE001 - a schema that cannot be pruned: decode all of it
            parsed_reader = None
        if len(_SCHEMAS) > 64:
            _SCHEMAS.clear()
        got = _SCHEMAS[text] = (parsed_writer, parsed_reader)
    return got


def _snappy_decompress():
    """The raw snappy decompressor fastavro uses: cramjam's, else python-snappy's."""
    try:
        from cramjam import snappy
        return snappy.decompress_raw
    except ImportError:
        pass
    try:
        import snappy
        return snappy.decompress
    except ImportError:
        raise MissingDependencyError(
            "reading Avro packets compressed with the 'snappy' codec needs cramjam (or "
            "python-snappy): pip install cramjam") from None


def _snappy_block(decompress):
    """Decoder of a snappy Avro block: raw snappy data, then the big-endian CRC32 of the
    uncompressed data, which is checked (fastavro skips it)."""
    def decode(block):
        if len(block) < 4:
            raise ValueError(f"a block of {len(block)} bytes has no room for its CRC32")
        data = bytes(decompress(bytes(block[:-4])))
        crc = int.from_bytes(block[-4:], "big")
        if zlib.crc32(data) != crc:
            raise ValueError(f"its CRC32 is {zlib.crc32(data):08x}, the block says {crc:08x}")
        return data
    return decode


def _block_decoder(codec):
    """The function that turns a block's data of ``codec`` into its records' bytes (None:
    as they are), or False for a codec left to fastavro."""
    if codec == "null":
        return None
    if codec == "deflate":
        return lambda block: zlib.decompress(block, -15)
    if codec == "bzip2":
        return bz2.decompress
    if codec == "xz":
        return lzma.decompress
    if codec == "snappy":
        return _snappy_block(_snappy_decompress())
    return False


def iter_avro_records(buf, *, lost=None):
    """Records of an Avro object container file held in bytes.

    Alert packets are decoded with a reader schema that keeps only what
    scoring needs (ids, cutouts, the difference sign, the candidate's
    position), which skips the previous-detection history cheaply; parsed
    schemas are cached across files. Codecs ``null``, ``deflate``,
    ``bzip2``, ``xz`` and ``snappy`` are read here block by block (the
    CRC32 of snappy blocks is checked), others (``zstandard``, ``lz4``)
    through ``fastavro.reader``.

    Parameters
    ----------
    buf : bytes
    lost : callable, optional
        ``lost(offset, count, why, resume)`` is called for a block of a file
        read here that cannot be read (``offset``: the byte at which it
        starts; ``count``: how many of its records are lost, None where
        unknown; ``why``: words; ``resume``: the byte at which reading goes
        on), and reading goes on: with the next block where the bad one is
        framed by its sync marker (its data cannot be decoded), else after
        the next occurrence of the file's sync marker. Where there is none (a
        truncated file), ValueError is raised as without ``lost``. Default:
        raise at the first bad block.

    Raises
    ------
    astromorph.exceptions.MissingDependencyError
        Without fastavro, or for a codec whose library is not installed
        (``snappy`` needs ``cramjam`` or ``python-snappy``; ``zstandard`` and
        ``lz4`` the libraries fastavro names).
    ValueError
        For data that is not Avro, or is truncated or corrupt (raised when
        the bad block is reached, after the good records before it).
    """
    fastavro = _fastavro()
    meta, sync, pos = _avro_header(buf)
    codec = meta.get("avro.codec", b"null").decode()
    schema_text = meta.get("avro.schema")
    if schema_text is None:
        raise ValueError("Avro header has no schema")
    decode = _block_decoder(codec)
    if decode is False:
        try:
            yield from fastavro.reader(io.BytesIO(bytes(buf)))
        except ValueError as exc:
            # fastavro knows zstandard, lz4 but decodes them only with a library it does not
            # require; without it the file is not corrupt
            if "need to install" in str(exc):
                raise MissingDependencyError(
                    f"reading Avro packets compressed with the {codec!r} codec: {exc}") from exc
            raise
        return
    writer, reader = _schemas(schema_text.decode("utf-8"))
    view = memoryview(buf)
    n = len(buf)
    while pos < n:
        start = pos
        try:
            count, pos = _read_long(buf, pos)
            size, pos = _read_long(buf, pos)
            if count < 0 or size < 0 or pos + size + 16 > n:
                raise ValueError("truncated Avro block")
            block = view[pos:pos + size]
            pos += size
            if bytes(view[pos:pos + 16]) != sync:
                raise ValueError("corrupt Avro block (sync marker mismatch)")
        except ValueError as exc:  # not framed: on after the next sync marker, if any
            pos = _resync(buf, sync, start, exc, lost)
            continue
        pos += 16
        if decode is not None:
            try:
                block = decode(block)
            except Exception as exc:  # noqa: BLE001 - zlib.error, OSError, LZMAError, ...
                if lost is None:
                    raise ValueError(f"corrupt {codec} Avro block: {exc}") from None
                lost(start, count, f"corrupt {codec} data: {exc}", pos)
                continue
        stream = io.BytesIO(block)
        for j in range(count):
            try:
                if reader is not None:
                    yield fastavro.schemaless_reader(stream, writer, reader)
                else:
                    yield fastavro.schemaless_reader(stream, writer)
            except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
                if lost is None:
                    raise ValueError(f"corrupt Avro record: {exc}") from None
                # the block's other records cannot be found without this one's length
                lost(start, count - j, f"corrupt Avro record {j + 1} of {count}: {exc}", pos)
                break


def _resync(buf, sync, start, exc, lost):
    """The position after the first sync marker after ``start``, once ``lost`` is told of the
    block at ``start`` that its framing ``exc`` made unreadable; ``exc`` raised where there is
    no such marker (a truncated file) or no ``lost``."""
    found = -1 if lost is None else bytes(buf).find(sync, start)
    if found < 0:
        raise exc
    lost(start, None, f"its count, size or sync marker is corrupt ({exc}); the next sync "
         f"marker ends at byte {found + 16}", found + 16)
    return found + 16


def read_alerts(path):
    """Stamps of the alerts of an Avro packet file, and one `Flag.BAD_INPUT` row for each
    stretch of it that cannot be read.

    A row's place in the file (`Stamp.index`, and its name where the alert has no id of its
    own) is its record's index. After a lost stretch whose number of records is unknown (a
    block that cannot be framed: up to the next sync marker), the places of the records
    after it are unknown too: they are named ``path[k after byte N]`` (the k-th record,
    from 0, of those read from byte N on) and have no index, rather than a number that
    claims a place in the file they may not have.
    """
    source = str(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        return [Stamp(source, path).flag(Flag.BAD_INPUT, f"cannot read file: {exc}")]
    stamps = []
    i = 0  # the record's index in the file, or, after a loss of unknown size, from `resumed`
    resumed = None  # the byte at which reading went on after the last such loss
    good = 0  # records decoded

    def place():  # the record's place: its index, or where it is after an unknown loss
        return i if resumed is None else f"{i} after byte {resumed}"

    def lost(offset, count, why, resume):  # one row for a block that cannot be read
        nonlocal i, resumed
        what = ("an unknown number of records" if count is None
                else f"{count} record{'s' if count != 1 else ''}")
        on = ("read on from the next block" if count is not None else
              f"the records after it are numbered from there ({path.name}[k after byte "
              f"{resume}]), their places in the file unknown")
        stamps.append(Stamp(source if not stamps else f"{source}[{place()}]", path,
                            index=_index(place())).flag(
            Flag.BAD_INPUT, f"Avro block at byte {offset} could not be read ({what} lost): "
            f"{why}; {on}"))
        if count is None:
            i, resumed = 0, resume
        else:
            i += count

    records = iter_avro_records(buf, lost=lost)
    while True:
        # only the decoding is guarded broadly (fastavro raises many kinds for bad data);
        # an error while interpreting a decoded record is not "corrupt Avro", and must not
        # drop the records after it
        try:
            rec = next(records)
        except StopIteration:
            break
        except MissingDependencyError:
            raise
        except SchemalessMessage as exc:
            stamps.append(Stamp(source, path).flag(Flag.BAD_INPUT, str(exc)))
            break
        except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds for bad data
            where = f" after {good} good record(s)" if good else ""
            stamps.append(Stamp(source if not stamps else f"{source}[{place()}]",
                                path).flag(Flag.BAD_INPUT,
                                           f"corrupt or truncated Avro{where}: {exc}"))
            break
        try:
            stamps.append(_alert_stamp(path, place(), rec))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            # a record of an unexpected layout (e.g. a field of another type)
            stamps.append(Stamp(f"{path}[{place()}]", path, index=_index(place())).flag(
                Flag.BAD_INPUT, f"alert record {place()} cannot be interpreted "
                f"({type(exc).__name__}: {exc})"))
        i += 1
        good += 1
    if not stamps:
        stamps.append(Stamp(source, path).flag(Flag.BAD_INPUT, "Avro file holds no records"))
    for stamp in stamps:
        stamp.alert = True
    return stamps


def _index(i):
    """`Stamp.index` of a record whose place `read_alerts` gives as ``i``: None where it is
    no index (text: a place after a loss of unknown size)."""
    return i if isinstance(i, int) else None


def _text(value):
    """An alert's identifier as text (ZTF objectIds are strings, Rubin's are longs), or None."""
    return None if value is None else str(value)


def _degrees(value):
    """An alert's coordinate (degrees) as a float, or None where it is null, no number or not
    finite."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


#: Pixels (nx, ny) of the CCD quadrant on which ZTF measures candidate.xpos, ypos (1-based).
ZTF_QUADRANT_SHAPE = (3072, 3080)

#: Pixels by which the WCS of a full ZTF cutout may put the candidate off the cutout's
#: centre (31, 31) before it is scored about the WCS's pixel (ZTF cuts its cutouts about the
#: candidate's own pixel, so within half a pixel of it).
ZTF_OFF_CENTRE_PIXELS = 1.0


def _edge_offset(pos, n, extent, axis):
    """``(offset, note)``: where a ZTF cutout of ``n`` pixels along an axis cut at the CCD
    edge goes in the 63 pixels of a whole one (the number of missing pixels before it), from
    the candidate's 1-based pixel ``pos`` on a quadrant of ``extent`` pixels along that axis;
    ``note`` (words, or None) says what was assumed where ``pos`` cannot tell."""
    size, half = ZTF_STAMP_SIZE, ZTF_STAMP_SIZE // 2
    missing = size - n
    if not missing:
        return 0, None
    pos = _degrees(pos)  # a finite float, or None
    if pos is None:
        return 0, f"no candidate {axis}pos: the missing {axis} part taken at the end"
    low = pos - 1 < half  # the cutout starts at the quadrant's first pixel
    high = pos - 1 > extent - 1 - half  # ... ends at its last
    if low != high:
        return (missing if low else 0), None
    return 0, (f"{axis}pos {pos:g} is more than {half} pixels from both edges of the "
               f"quadrant's {extent} (or near both): the missing {axis} part taken at the end")


def _pad_ztf(data, xpos, ypos, offsets=None):
    """A ZTF cutout cut at the CCD edge padded back to 63 x 63 with NaN, and notes (words).

    ``offsets``: ``(y0, x0)``, the missing pixels before the cutout along each axis (from
    the cutouts' WCS); default: from the candidate's quadrant pixel ``xpos``, ``ypos``
    (1-based, `ZTF_QUADRANT_SHAPE`): the missing part is at the start of an axis where the
    candidate is within 31 pixels of the quadrant's first pixel, at its end where within
    31 of its last.
    """
    ny, nx = data.shape
    size = ZTF_STAMP_SIZE
    if ny > size or nx > size:
        raise ValueError(f"ZTF cutout of {nx}x{ny} pixels is larger than {size}x{size}")
    notes = []
    if offsets is None:
        (x0, xnote), (y0, ynote) = (
            _edge_offset(pos, n, extent, axis) for pos, n, extent, axis in
            zip((xpos, ypos), (nx, ny), ZTF_QUADRANT_SHAPE, "xy"))
        notes = [note for note in (xnote, ynote) if note]
    else:
        y0, x0 = offsets
    out = np.full((size, size), np.nan, dtype=np.float32)
    out[y0:y0 + ny, x0:x0 + nx] = data
    return out, notes


def _ztf_wcs_pixel(blob, ra, dec):
    """``((y, x), None)``: the 0-based pixel of a ZTF cutout at which its WCS puts the
    candidate's ``ra``, ``dec``; or ``(None, why)`` (the real packets' cutouts carry no WCS:
    their headers hold SIMPLE, BITPIX, NAXISi and BUNIT only)."""
    try:
        if not _may_have_wcs(blob):  # the real packets: a cheap look at the header's start
            return None, "the difference cutout has no WCS (CRPIXi, CRVALi)"
        return _candidate_pixel(blob, ra, dec, what="the candidate")
    except Exception as exc:  # noqa: BLE001 - a header astropy cannot read as a WCS
        return None, f"its WCS cannot place it ({type(exc).__name__}: {exc})"


def _may_have_wcs(blob, blocks=4):
    """False where the primary header of the FITS cutout ``blob`` (compressed or not) ends
    within its first ``blocks`` 2880-byte blocks without a CRPIX1 card; True otherwise. Only
    those blocks are decompressed, one at a time: most ZTF cutouts carry no WCS, and the
    whole cutout was decompressed once already."""
    from ._compressed import compression_of, decompress

    gz = zlib.decompressobj(16 + zlib.MAX_WBITS) if blob[:2] == b"\x1f\x8b" else None
    if gz is None and compression_of(blob[:6]):  # bzip2, xz, zip (read whole once already)
        blob = decompress(blob)[0]
    for k in range(blocks):
        block = gz.decompress(gz.unconsumed_tail if k else blob, 2880) if gz is not None \
            else bytes(blob[2880 * k:2880 * (k + 1)])
        for pos in range(0, len(block) - 79, 80):
            key = block[pos:pos + 8]
            if key.startswith(b"CRPIX1"):
                return True
            if key == b"END     ":
                return False
        if len(block) < 2880:
            break
    return True


def _wcs_offsets(placed, shape):
    """``((y0, x0), None)``: the NaN padding before a cutout of ``shape`` cut at the CCD edge
    that puts the WCS's pixel ``placed`` ``(y, x)`` of the candidate on (31, 31); or ``(None,
    why)`` where no padding to 63 x 63 does (the WCS is not the cutouts', or wrong)."""
    size, half = ZTF_STAMP_SIZE, ZTF_STAMP_SIZE // 2
    offsets = [half - int(np.floor(p + 0.5)) for p in placed]
    if all(0 <= o <= size - n for o, n in zip(offsets, shape)):
        return tuple(offsets), None
    y, x = placed
    return None, (f"the cutouts' WCS puts the candidate at pixel (x, y = {x:.2f}, {y:.2f}; "
                  f"0-based) of the {shape[1]}x{shape[0]} cutouts, where no padding to "
                  f"{size}x{size} centres it")


def _flag_blank_cutouts(stamp, planes):
    """`Flag.BLANK` for a cutout cut at the CCD edge whose own pixels (not the padding,
    which is `Flag.EDGE`'s) are more than `BLANK_THRESHOLD` invalid, as preprocessing
    judges a whole stamp (the largest fraction of the three)."""
    from .._adapters import BLANK_THRESHOLD
    from ..preprocessing._checks import invalid_pixels

    fracs = [float(invalid_pixels(p).mean()) if p.size else 1.0 for p in planes]
    j = int(np.argmax(fracs))
    if fracs[j] > BLANK_THRESHOLD:
        stamp.flag(Flag.BLANK, f"{fracs[j]:.0%} of the pixels of the {_MEMBERS[j]} cutout "
                   "are NaN/inf/BLANK (filled)")


def _alert_stamp(path, i, rec):
    if not isinstance(rec, dict):
        return Stamp(f"{path}[{i}]", path).flag(Flag.BAD_INPUT, "Avro record is not a record")
    if "diaSource" in rec:
        return _rubin_stamp(path, i, rec)
    if "candid" in rec or "candidate" in rec:
        return _ztf_stamp(path, i, rec)
    return Stamp(f"{path}[{i}]", path).flag(
        Flag.BAD_INPUT, "Avro record is neither a ZTF alert (candid) nor a Rubin alert "
        "(diaSource)")


def _cutout_planes(stamp, blobs):
    """Decode three cutouts; flag the stamp and return None on failure."""
    missing = [k for k, b in zip(_CUTOUTS, blobs) if not b]
    if len(missing) == 3:
        stamp.flag(Flag.MISSING_BAND, "alert has no cutouts")
        return None
    if missing:
        stamp.flag(Flag.MISSING_BAND, f"alert lacks {', '.join(missing)}")
        return None
    planes, scales = [], []
    for key, blob in zip(_CUTOUTS, blobs):
        try:
            data, scale = parse_fits_bytes(blob)
        except Exception as exc:  # noqa: BLE001
            stamp.flag(Flag.BAD_INPUT, f"{key}: {exc}")
            return None
        planes.append(data)
        scales.append(scale)
    return planes, scales


def _ztf_stamp(path, i, rec):
    candid = rec.get("candid")
    cand = rec.get("candidate") or {}
    stamp = Stamp(str(candid) if candid is not None else f"{path}[{i}]", path, index=_index(i),
                  native_grid=True, object=_text(rec.get("objectId")),
                  ra=_degrees(cand.get("ra")), dec=_degrees(cand.get("dec")))
    cutouts = [rec.get(k) for k in _CUTOUTS]
    blobs = [c.get("stampData") if isinstance(c, dict) else None for c in cutouts]
    got = _cutout_planes(stamp, blobs)
    if got is None:
        return stamp
    planes, _ = got
    shapes = ", ".join("x".join(map(str, p.shape[::-1])) for p in planes)
    if len({p.shape for p in planes}) > 1:
        # cut at the CCD edge, all three are cut alike; cutouts that differ cannot be
        # aligned pixel for pixel (as for Rubin alerts and annotate_stamps)
        return stamp.flag(Flag.BAD_INPUT, f"cutouts differ in shape ({shapes})")
    size = ZTF_STAMP_SIZE
    placed, why = _ztf_wcs_pixel(blobs[2], cand.get("ra"), cand.get("dec"))
    if planes[0].shape != (size, size):
        offsets = None
        if placed is not None:
            offsets, why = _wcs_offsets(placed, planes[0].shape)
        try:
            padded = [_pad_ztf(p, cand.get("xpos"), cand.get("ypos"), offsets) for p in planes]
        except ValueError as exc:
            return stamp.flag(Flag.BAD_INPUT, str(exc))
        planes = [p for p, _ in padded]
        if offsets is not None:
            how = "the candidate placed by the cutouts' WCS on their centre"
        else:
            how = (f"the missing part placed by the candidate's xpos, ypos (1-based, on a "
                   f"{ZTF_QUADRANT_SHAPE[0]}x{ZTF_QUADRANT_SHAPE[1]} quadrant): {why}")
            how = "; ".join([how, *padded[0][1]])
        stamp.flag(Flag.EDGE, f"cutouts ({shapes}) cut at the CCD edge, padded to "
                   f"{size}x{size} with NaN, {how}")
        _flag_blank_cutouts(stamp, got[0])
    elif placed is not None \
            and max(abs(p - size // 2) for p in placed) > ZTF_OFF_CENTRE_PIXELS:
        # ZTF cuts about the candidate: a WCS that says otherwise is taken at its word, as
        # the Rubin cutouts' is (`_place_candidate`)
        if _off_cutouts(stamp, placed, planes[0].shape, "the candidate", "candidate"):
            return stamp
        y, x = placed
        stamp.centre = (y, x)
        stamp.reason.append(f"the cutouts' WCS puts the candidate at pixel (x, y = {x:.2f}, "
                            f"{y:.2f}; 0-based), not at the cutouts' centre ({size // 2}, "
                            f"{size // 2}) where ZTF cuts them: scored about that pixel")
    # ZTF stores the difference with the candidate positive: science - reference when
    # isdiffpos is 't' (file *_scimref*), reference - science when 'f' (*_refmsci*), which
    # is what the real-bogus preprocessing expects. Only a packet whose file name
    # contradicts its isdiffpos is flipped.
    isdiffpos = str(cand.get("isdiffpos", "t")).lower()[:1]
    diffname = str((cutouts[2] or {}).get("fileName") or "").lower()
    diff = planes[2]
    if (isdiffpos in ("f", "0") and "scimref" in diffname) \
            or (isdiffpos in ("t", "1") and "refmsci" in diffname):
        diff = -diff
    stamp.kind, stamp.data = "triplet", np.stack([planes[0], planes[1], diff])
    return stamp


def _rubin_stamp(path, i, rec):
    dia = rec.get("diaSource") or {}
    sid = dia.get("diaSourceId")
    obj = dia.get("diaObjectId")
    if obj is None and isinstance(rec.get("diaObject"), dict):
        obj = rec["diaObject"].get("diaObjectId")
    stamp = Stamp(str(sid) if sid is not None else f"{path}[{i}]", path, index=_index(i),
                  object=_text(obj), ra=_degrees(dia.get("ra")), dec=_degrees(dia.get("dec")))
    blobs = [rec.get(k) for k in _CUTOUTS]
    got = _cutout_planes(stamp, [b if isinstance(b, (bytes, bytearray)) else None
                                 for b in blobs])
    if got is None:
        return stamp
    planes, scales = got
    if len({p.shape for p in planes}) > 1:
        shapes = ", ".join("x".join(map(str, p.shape[::-1])) for p in planes)
        return stamp.flag(Flag.BAD_INPUT, f"cutouts differ in shape ({shapes})")
    scales = [_local_plane_scale(stamp, key, blob, dia.get("ra"), dia.get("dec"))
              if scale is None else scale for key, blob, scale in zip(_CUTOUTS, blobs, scales)]
    scale, problem = common_pixel_scale(scales)
    if problem:  # one size, different fields: not aligned pixel for pixel
        return stamp.flag(Flag.BAD_INPUT, f"cutouts {problem}")
    # Rubin difference images are science - template: a negative source (a fading or
    # negative-flux detection) is negated so that the candidate is positive, as in ZTF.
    # isNegative says so where the schema has it (and it is not null); psfFlux < 0 elsewhere.
    negative, flux = dia.get("isNegative"), dia.get("psfFlux")
    negative = negative is True if negative is not None else bool(
        flux is not None and np.isfinite(flux) and flux < 0)
    diff = -planes[2] if negative else planes[2]
    stamp.kind, stamp.data = "triplet", np.stack([planes[0], planes[1], diff])
    stamp.pixel_scale = scale
    _place_candidate(stamp, blobs[2], dia.get("ra"), dia.get("dec"))
    return stamp


#: Angle in degrees within which a WCS's reference point (CRVALi) is the candidate's own
#: position (Rubin writes the diaSource's ra/dec there): its pixel is then CRPIXi exactly.
_SAME_POINT_DEG = 1e-9


def _header_getter(blob):
    """``get(key, default=None)`` of the primary header of the FITS cutout ``blob``
    (compressed or not), its values parsed (`_card_value`), and the header's cards and end
    offset."""
    from ._compressed import decompress
    from ._fits import _card_value, _parse_header

    buf = decompress(blob)[0]  # (gzip, bzip2, xz, zip: as `parse_fits_bytes` reads it)
    cards, _, end = _parse_header(buf, 0)
    values = {}

    def get(key, default=None):
        if key not in values:  # each keyword parsed once
            values[key] = _card_value(cards[key]) if key in cards else None
        value = values[key]
        return default if value is None else value

    return get, cards, buf, end


def _same_point(lon, lat, ra, dec):
    """Whether (``lon``, ``lat``) is (``ra``, ``dec``) within `_SAME_POINT_DEG` (degrees)."""
    dra = abs((lon - ra + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec))
    return bool(dra < _SAME_POINT_DEG and abs(lat - dec) < _SAME_POINT_DEG)


def _local_plane_scale(stamp, key, blob, ra, dec):
    """Pixel scale (arcsec; `pixel_scales`: a pair for pixels that are not square) of a Rubin
    cutout whose WCS has no CTYPE, or None.

    ap_association's packageAlerts (``createCcdDataCutout``) writes each cutout's WCS as
    ``wcs.WCS(naxis=2)`` with only CRPIXi (the source's pixel), CRVALi (the diaSource's ra,
    dec) and a CD matrix (``makeLocalTransformMatrix``: degrees per pixel of a local tangent
    plane at the source, which ``CCDData.write`` writes as PCi_j with CDELTi = 1): astropy
    finds no celestial WCS in it. Where the header has no CTYPE1, CTYPE2 (nor CUNITi other
    than degrees), its reference point is the diaSource's ``ra``, ``dec`` within
    `_SAME_POINT_DEG` and its matrix gives a scale (none of `wcs_matrix_problem`'s
    problems), that matrix is read as degrees per pixel of the tangent plane at the source,
    as for the candidate's pixel (`_candidate_pixel`); otherwise the scale stays unknown
    (`Flag.NO_WCS`).
    """
    from ._fits import _linear_matrix, wcs_matrix_problem
    from ._stamp import pixel_scales

    try:
        ra, dec = float(ra), float(dec)
        get, _, _, _ = _header_getter(blob)
        if any(str(get(f"CTYPE{i}", "")).strip() for i in (1, 2)) or any(
                str(get(f"CUNIT{i}", "deg")).strip().lower() not in ("deg", "degree", "")
                for i in (1, 2)):
            return None
        crval = float(get("CRVAL1")), float(get("CRVAL2"))
        if not (np.isfinite(ra) and np.isfinite(dec)) or not _same_point(*crval, ra, dec) \
                or get("CRPIX1") is None or get("CRPIX2") is None:
            return None
        if wcs_matrix_problem(get):
            return None
        scale = pixel_scales(_linear_matrix(get)[0])
    except (TypeError, ValueError, zlib.error):  # absent or non-numeric keywords
        return None
    if not (np.all(np.isfinite(scale)) and np.all(np.asarray(scale) > 0)):
        return None
    log.debug("%s: %s has a WCS without CTYPE whose reference point is the diaSource's ra, "
              "dec: its matrix read as a local tangent plane's, %s arcsec/pixel",
              stamp.source, key, scale)
    return scale


def _place_candidate(stamp, blob, ra, dec):
    """Set ``stamp.centre`` to the pixel of the Rubin cutouts at which their WCS puts the
    diaSource's ``ra``, ``dec`` (the difference cutout's WCS: the three are cut alike),
    or leave it None (the central pixel ``n // 2``), saying why in the row's reason; flag
    `Flag.BAD_INPUT` a position off the cutouts."""
    ny, nx = stamp.data.shape[-2:]
    try:
        centre, why = _candidate_pixel(blob, ra, dec)
    except Exception as exc:  # noqa: BLE001 - a header astropy cannot read as a WCS
        centre, why = None, f"its WCS cannot place it ({type(exc).__name__}: {exc})"
    if centre is None:
        # the convention of ZTF's cutouts and of astropy's Cutout2D; Rubin's even-sided
        # cutouts put the source within half a pixel of (n - 1) / 2 instead
        stamp.reason.append(f"candidate taken at the cutouts' pixel n // 2 (x, y = "
                            f"{nx // 2}, {ny // 2}; 0-based) of {nx}x{ny}: {why}")
        log.debug("%s: candidate at pixel n // 2: %s", stamp.source, why)
        return
    if _off_cutouts(stamp, centre, (ny, nx), "the diaSource", "source"):
        return
    y, x = centre
    stamp.centre = (y, x)
    log.debug("%s: candidate at pixel (x, y = %.3f, %.3f) of the %dx%d cutouts, from their "
              "WCS", stamp.source, x, y, nx, ny)


def _off_cutouts(stamp, placed, shape, what, noun):
    """Flag `Flag.BAD_INPUT` and return True where the pixel ``placed`` ``(y, x)`` at which
    the cutouts' WCS puts ``what`` (the candidate, the diaSource) lies off cutouts of
    ``shape``: they are not cut about the ``noun``, or their WCS is wrong."""
    (y, x), (ny, nx) = placed, shape
    if -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5:
        return False
    stamp.flag(Flag.BAD_INPUT, f"{what}'s ra, dec lies at pixel (x, y = {x:.2f}, {y:.2f}; "
               f"0-based) of the cutouts' WCS, off the {nx}x{ny} cutouts: they are not cut "
               f"about the {noun}, or their WCS is wrong")
    return True


def _candidate_pixel(blob, ra, dec, what="the diaSource"):
    """``((y, x), None)``: the 0-based pixel at which the WCS of the FITS cutout ``blob``
    puts ``ra``, ``dec`` (degrees, ICRS); or ``(None, why)``.

    Rubin writes the diaSource's own ra/dec as the cutout WCS's reference point (CRVAL1,
    CRVAL2), and its pixel there as CRPIX1, CRPIX2 (a linear WCS without CTYPE, in the
    packets of ap_association's packageAlerts): a reference point within `_SAME_POINT_DEG`
    of ``ra``, ``dec`` is read from the keywords alone, exact for any projection (the
    reference point is the reference pixel's), without a WCS parse. Any other celestial
    WCS is asked by astropy (``world_to_pixel``). ``what``: the source, in the words of
    ``why`` (ZTF cutouts: "the candidate").
    """
    from ._fits import wcs_matrix_problem

    try:
        ra, dec = float(ra), float(dec)
    except (TypeError, ValueError):
        return None, f"{what} has no ra, dec"
    if not (np.isfinite(ra) and np.isfinite(dec)):
        return None, f"{what}'s ra, dec ({ra:g}, {dec:g}) are not finite"
    get, cards, buf, end = _header_getter(blob)
    if get("CRPIX1") is None or get("CRPIX2") is None or get("CRVAL1") is None \
            or get("CRVAL2") is None:
        return None, "the difference cutout has no WCS (CRPIXi, CRVALi)"
    problem = wcs_matrix_problem(get)
    if problem:
        return None, f"the difference cutout's WCS cannot place it ({problem})"
    ctype = [str(get(f"CTYPE{i}", "")).strip().upper() for i in (1, 2)]
    lon, lat = (2, 1) if ctype[0][:4] in ("DEC-", "DEC") else (1, 2)
    try:
        crval = float(get(f"CRVAL{lon}")), float(get(f"CRVAL{lat}"))
        crpix = float(get("CRPIX1")), float(get("CRPIX2"))
    except (TypeError, ValueError):
        return None, "the difference cutout's WCS keywords are no numbers"
    plain = all(c[:4] in ("", "RA--", "DEC-") for c in ctype) \
        and not any(k.startswith(("PV", "A_0_0", "B_0_0")) for k in cards) \
        and str(get("RADESYS", "ICRS")).strip().upper() in ("ICRS", "FK5", "")
    if plain and _same_point(*crval, ra, dec):
        return (crpix[1] - 1.0, crpix[0] - 1.0), None
    if not all(c[:4] in ("RA--", "DEC-", "GLON", "GLAT", "ELON", "ELAT") for c in ctype):
        return None, (f"the difference cutout's WCS is not celestial (CTYPE1, CTYPE2 = "
                      f"{ctype[0] or 'none'}, {ctype[1] or 'none'}) and its reference point "
                      f"is not {what}'s ra, dec")
    import warnings

    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from .._warnings import catch_warnings

    # (astromorph's lock: the reader thread of predict_files may be in such a block too)
    with catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        header = fits.Header.fromstring(bytes(buf[:end]).decode("ascii", "replace"))
        wcs = WCS(_e_exponents(header)).celestial  # (CDELT1 = -2.5D-04: wcslib reads -2.5)
        x, y = wcs.world_to_pixel(SkyCoord(ra, dec, unit="deg", frame="icrs"))
    x, y = float(x), float(y)
    if not (np.isfinite(x) and np.isfinite(y)):
        return None, f"the difference cutout's WCS puts {what}'s ra, dec nowhere"
    return (y, x), None

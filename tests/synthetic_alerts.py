"""Synthetic difference-imaging triplets and ZTF / Rubin alert packets.

Shared by the tests and by `benchmarks/bench_alerts.py` and `benchmarks/bench_stamp_table.py`
(which use them when no real packets are at hand), so this module imports neither pytest nor
anything from the tests.
"""
import gzip
import io

import numpy as np
from astropy.io import fits

__all__ = ["triplet", "fits_bytes", "celestial_header", "rubin_cutout_bytes", "ZTF_SCHEMA",
           "RUBIN_SCHEMA", "RUBIN_V11_SCHEMA", "rubin_v11_alert", "scene",
           "ztf_alert", "rubin_alert", "write_avro", "write_snappy_avro"]


def celestial_header(header, scale_arcsec, shape, *, centre=None, ctype=True):
    """A TAN WCS of ``scale_arcsec`` pixels whose reference point (150, 2) lies at the 0-based
    pixel ``centre`` ``(y, x)`` (default: the middle of the image, ``(n - 1) / 2``); with
    ``ctype=False`` no CTYPEi, as ap_association's packageAlerts writes Rubin cutouts."""
    ny, nx = shape[-2:]
    cy, cx = ((ny - 1) / 2, (nx - 1) / 2) if centre is None else centre
    if ctype:
        header.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"})
    header.update({"CRVAL1": 150.0,
                   "CRVAL2": 2.0, "CRPIX1": cx + 1, "CRPIX2": cy + 1,
                   "CD1_1": -scale_arcsec / 3600, "CD1_2": 0.0, "CD2_1": 0.0,
                   "CD2_2": scale_arcsec / 3600})
    return header


def triplet(n=63, seed=0, flux=300.0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] - n // 2
    psf = np.exp(-(x ** 2 + y ** 2) / (2 * 1.5 ** 2))
    ref = 200 + rng.normal(0, 5, (n, n)) + 500 * np.exp(-((x - 8) ** 2 + y ** 2) / 8)
    sci = ref + flux * psf + rng.normal(0, 5, (n, n))
    return np.stack([sci, ref, sci - ref]).astype(np.float32)


def fits_bytes(data, *, scale=None, extensions=False, gz=False, centre=None, ctype=True):
    header = fits.Header()
    if scale is not None:
        celestial_header(header, scale, data.shape, centre=centre, ctype=ctype)
    hdus = [fits.PrimaryHDU(np.asarray(data, np.float32), header=header)]
    if extensions:  # astropy CCDData layout (Rubin cutouts)
        hdus += [fits.ImageHDU(np.zeros(data.shape, np.int16), name="MASK"),
                 fits.ImageHDU(np.ones(data.shape, np.float32), name="UNCERT")]
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw


def rubin_cutout_bytes(data, *, scale=0.2, centre=None, ra=150.0, dec=2.0, cd=None,
                       variance=None, mask=None, cut_min=(1000, 2000)):
    """FITS bytes of one Rubin alert cutout, built as ap_association's packageAlerts builds
    them (``createCcdDataCutout``, then ``streamCcdDataToBytes``): an astropy CCDData in nJy
    with a `VarianceUncertainty` and the mask plane given as ``flags``, whose WCS is
    ``wcs.WCS(naxis=2)`` with only ``crpix`` (the source's 1-based pixel: ``centre`` ``(y, x)``
    0-based, default the middle ``(n - 1) / 2``), ``crval`` (``ra``, ``dec``, degrees) and
    ``cd`` (degrees per pixel of a local tangent plane at the source,
    ``makeLocalTransformMatrix``; default ``scale`` arcsec pixels, east left, north up) set:
    no CTYPE. ``CCDData.write`` writes the CD matrix as PCi_j with CDELTi = 1, the variance as
    an ``UNCERT`` extension, and not the flags (astropy writes no flags HDU): the packets hold
    no mask plane.
    """
    import astropy.units as u
    from astropy import wcs
    from astropy.nddata import CCDData, VarianceUncertainty

    data = np.asarray(data, np.float32)
    ny, nx = data.shape
    cy, cx = ((ny - 1) / 2, (nx - 1) / 2) if centre is None else centre
    cutout_wcs = wcs.WCS(naxis=2)
    cutout_wcs.array_shape = (nx, nx)  # (getWidth(), getWidth()), as packageAlerts sets it
    cutout_wcs.wcs.crpix = [cx + 1, cy + 1]
    cutout_wcs.wcs.crval = [ra, dec]
    cutout_wcs.wcs.cd = (np.array([[-scale, 0.0], [0.0, scale]]) / 3600 if cd is None
                         else np.asarray(cd, float))
    ccd = CCDData(data=data,
                  uncertainty=VarianceUncertainty(np.ones_like(data) if variance is None
                                                  else np.asarray(variance, np.float32)),
                  flags=np.zeros(data.shape, np.int32) if mask is None else mask,
                  wcs=cutout_wcs, meta={"cutMinX": cut_min[0], "cutMinY": cut_min[1]},
                  unit=u.nJy)
    with io.BytesIO() as streamer:
        ccd.write(streamer, format="fits")
        return streamer.getvalue()


ZTF_SCHEMA = {
    "type": "record", "name": "alert", "namespace": "ztf", "fields": [
        {"name": "schemavsn", "type": "string"},
        {"name": "objectId", "type": "string"},
        {"name": "candid", "type": "long"},
        {"name": "candidate", "type": {"type": "record", "name": "candidate",
                                       "namespace": "ztf.alert", "fields": [
            {"name": "candid", "type": "long"}, {"name": "isdiffpos", "type": "string"},
            {"name": "xpos", "type": ["null", "float"], "default": None},
            {"name": "ypos", "type": ["null", "float"], "default": None},
            {"name": "ra", "type": ["null", "double"], "default": None},
            {"name": "dec", "type": ["null", "double"], "default": None},
            {"name": "magpsf", "type": "float"}]}},
        {"name": "prv_candidates", "type": ["null", {"type": "array", "items": {
            "type": "record", "name": "prv_candidate", "namespace": "ztf.alert",
            "fields": [{"name": "jd", "type": "double"}, {"name": "magpsf",
                                                           "type": ["null", "float"]}]}}],
         "default": None},
        {"name": "cutoutScience", "type": ["null", {
            "type": "record", "name": "cutout", "namespace": "ztf.alert",
            "fields": [{"name": "fileName", "type": "string"},
                       {"name": "stampData", "type": "bytes"}]}], "default": None},
        {"name": "cutoutTemplate", "type": ["null", "ztf.alert.cutout"], "default": None},
        {"name": "cutoutDifference", "type": ["null", "ztf.alert.cutout"], "default": None},
    ]}

# Minimal Rubin schema with the field names of the published lsst.v7_0 alert schema.
RUBIN_SCHEMA = {
    "type": "record", "name": "alert", "namespace": "lsst.v7_0", "fields": [
        {"name": "alertId", "type": "long"},
        {"name": "diaSource", "type": {"type": "record", "name": "diaSource",
                                       "namespace": "lsst.v7_0", "fields": [
            {"name": "diaSourceId", "type": "long"}, {"name": "visit", "type": "long"},
            {"name": "detector", "type": "int"}, {"name": "midpointMjdTai", "type": "double"},
            {"name": "ra", "type": "double"}, {"name": "dec", "type": "double"},
            {"name": "x", "type": "float"}, {"name": "y", "type": "float"},
            {"name": "psfFlux", "type": ["null", "float"], "default": None},
            {"name": "flags", "type": "long"},
            {"name": "band", "type": ["null", "string"], "default": None}]}},
        {"name": "prvDiaSources", "type": ["null", {"type": "array",
                                                    "items": "lsst.v7_0.diaSource"}],
         "default": None},
        {"name": "diaObject", "type": ["null", {"type": "record", "name": "diaObject",
                                                "fields": [{"name": "diaObjectId",
                                                            "type": "long"}]}],
         "default": None},
        {"name": "cutoutDifference", "type": ["null", "bytes"], "default": None},
        {"name": "cutoutScience", "type": ["null", "bytes"], "default": None},
        {"name": "cutoutTemplate", "type": ["null", "bytes"], "default": None},
    ]}


# The layout of the published lsst.v11_1 alert schema (fields we read, plus the kinds of
# fields around them): the triggering diaSourceId at the top, isNegative in diaSource, a
# nullable diaObject, histories of named types, three nullable cutouts.
RUBIN_V11_SCHEMA = {
    "type": "record", "name": "alert", "namespace": "lsst.v11_1", "fields": [
        {"name": "diaSourceId", "type": "long"},
        {"name": "observation_reason", "type": ["null", "string"], "default": None},
        {"name": "diaSource", "type": {"type": "record", "name": "diaSource",
                                       "namespace": "lsst.v11_1", "fields": [
            {"name": "diaSourceId", "type": "long"}, {"name": "visit", "type": "long"},
            {"name": "detector", "type": "int"},
            {"name": "diaObjectId", "type": ["null", "long"], "default": None},
            {"name": "ra", "type": "double"}, {"name": "dec", "type": "double"},
            {"name": "isNegative", "type": ["null", "boolean"], "default": None},
            {"name": "snr", "type": ["null", "float"], "default": None},
            {"name": "psfFlux", "type": ["null", "float"], "default": None},
            {"name": "band", "type": ["null", "string"], "default": None}]}},
        {"name": "prvDiaSources", "type": ["null", {"type": "array",
                                                    "items": "lsst.v11_1.diaSource"}],
         "default": None},
        {"name": "prvDiaForcedSources", "type": ["null", {"type": "array", "items": {
            "type": "record", "name": "diaForcedSource", "namespace": "lsst.v11_1",
            "fields": [{"name": "diaForcedSourceId", "type": "long"},
                       {"name": "psfFlux", "type": ["null", "float"], "default": None}]}}],
         "default": None},
        {"name": "diaObject", "type": ["null", {"type": "record", "name": "diaObject",
                                                "namespace": "lsst.v11_1", "fields": [
            {"name": "diaObjectId", "type": "long"}, {"name": "ra", "type": "double"}]}],
         "default": None},
        {"name": "cutoutDifference", "type": ["null", "bytes"], "default": None},
        {"name": "cutoutScience", "type": ["null", "bytes"], "default": None},
        {"name": "cutoutTemplate", "type": ["null", "bytes"], "default": None},
    ]}


def rubin_v11_alert(source_id, trip, *, negative=False, psf_flux=1000.0, scale=0.2):
    """An alert of `RUBIN_V11_SCHEMA`; ``negative`` sets isNegative (psfFlux keeps its sign
    only if the caller gives it one), with a history of two earlier detections; cutouts as
    packageAlerts writes them (`rubin_cutout_bytes`: no CTYPE)."""
    dia = {"diaSourceId": source_id, "visit": 7, "detector": 3, "diaObjectId": source_id + 5000,
           "ra": 150.0, "dec": 2.0, "isNegative": negative, "snr": 12.0, "psfFlux": psf_flux,
           "band": "g"}
    rec = {"diaSourceId": source_id, "observation_reason": "wfd", "diaSource": dia,
           "prvDiaSources": [dict(dia, diaSourceId=source_id - k) for k in (1, 2)],
           "prvDiaForcedSources": [{"diaForcedSourceId": 1, "psfFlux": 3.0}],
           "diaObject": {"diaObjectId": source_id + 5000, "ra": 150.0}}
    for i, key in enumerate(("cutoutScience", "cutoutTemplate", "cutoutDifference")):
        rec[key] = rubin_cutout_bytes(trip[i], scale=scale)
    return rec


def ztf_alert(candid, trip=None, *, isdiffpos="t", diffname=None, drop=(), raw=None,
              xpos=1500.0, ypos=1500.0, ra=210.5, dec=-12.25):
    """A ZTF alert of `ZTF_SCHEMA` whose candidate is at ``ra``, ``dec`` (degrees; None for a
    null, which the real schema does not allow)."""
    trip = triplet(seed=candid % 1000) if trip is None else trip
    kinds = ("sci", "ref", "scimref" if isdiffpos == "t" else "refmsci")
    rec = {"schemavsn": "3.3", "objectId": f"ZTF{candid}", "candid": candid,
           "candidate": {"candid": candid, "isdiffpos": isdiffpos, "xpos": xpos, "ypos": ypos,
                         "ra": ra, "dec": dec, "magpsf": 18.0},
           "prv_candidates": [{"jd": 2459000.5 + i, "magpsf": 19.0} for i in range(5)]}
    for i, key in enumerate(("cutoutScience", "cutoutTemplate", "cutoutDifference")):
        name = f"candid{candid}_{kinds[i]}.fits.gz"
        if i == 2 and diffname:
            name = diffname
        data = (raw or {}).get(key) or fits_bytes(trip[i], gz=True)
        rec[key] = None if key in drop else {"fileName": name, "stampData": data}
    return rec


def scene(n, centre, *, seed=0, flux=300.0):
    """A triplet like `triplet`'s, of side ``n``, with the candidate at the 0-based pixel
    ``centre`` ``(y, x)`` (any real numbers) and the reference's galaxy 8 pixels right of
    it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n].astype(float)
    y, x = y - centre[0], x - centre[1]
    psf = np.exp(-(x ** 2 + y ** 2) / (2 * 1.5 ** 2))
    ref = 200 + rng.normal(0, 5, (n, n)) + 500 * np.exp(-((x - 8) ** 2 + y ** 2) / 8)
    sci = ref + flux * psf + rng.normal(0, 5, (n, n))
    return np.stack([sci, ref, sci - ref]).astype(np.float32)


def rubin_alert(source_id, trip=None, *, psf_flux=1000.0, drop=(), scale=0.2, centre=None,
                ctype=False, ra=150.0, dec=2.0):
    """A Rubin alert of `RUBIN_SCHEMA` whose cutouts' WCS puts (150, 2) at the 0-based pixel
    ``centre`` (default: their middle) and whose diaSource is at ``ra``, ``dec``.

    The cutouts are built as packageAlerts builds them (`rubin_cutout_bytes`: a CCDData
    with an UNCERT extension and a linear WCS without CTYPE); ``ctype=True`` gives the
    variant with a celestial TAN WCS (CTYPEi, CDi_j; MASK and UNCERT extensions)."""
    trip = triplet(n=31, seed=source_id % 1000) if trip is None else trip
    rec = {"alertId": source_id + 1, "prvDiaSources": None, "diaObject": None,
           "diaSource": {"diaSourceId": source_id, "visit": 1, "detector": 2,
                         "midpointMjdTai": 60000.0, "ra": ra, "dec": dec, "x": 10.0,
                         "y": 10.0, "psfFlux": psf_flux, "flags": 0, "band": "r"}}
    for i, key in enumerate(("cutoutScience", "cutoutTemplate", "cutoutDifference")):
        if key in drop:
            rec[key] = None
        elif ctype:
            rec[key] = fits_bytes(trip[i], scale=scale, extensions=True, centre=centre)
        else:
            rec[key] = rubin_cutout_bytes(trip[i], scale=scale, centre=centre)
    return rec


def write_avro(path, records, schema=ZTF_SCHEMA, codec="null"):
    import fastavro

    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(schema), records, codec=codec)
    return path


def _avro_long(n):
    n = (n << 1) ^ (n >> 63)  # zig-zag, then a base-128 varint
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _snappy_literal(data):
    """Snappy raw format holding ``data`` as one literal (valid, uncompressed)."""
    n, out = len(data), bytearray()
    while True:  # uncompressed length, base-128 varint
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    out.append(63 << 2)  # a literal whose length - 1 follows in 4 little-endian bytes
    return bytes(out) + (len(data) - 1).to_bytes(4, "little") + data


def write_snappy_avro(path, records, schema=ZTF_SCHEMA, *, per_block=None):
    """An Avro container with the ``snappy`` codec, written without a snappy library
    (fastavro needs one to write it): blocks of snappy literals + CRC32, one block of all
    the records, or of ``per_block`` records each."""
    import json
    import zlib

    import fastavro

    parsed = fastavro.parse_schema(schema)
    sync = bytes(range(16))
    meta = {"avro.schema": json.dumps(schema).encode(), "avro.codec": b"snappy"}
    head = b"Obj\x01" + _avro_long(len(meta)) + b"".join(
        _avro_long(len(k)) + k.encode() + _avro_long(len(v)) + v for k, v in meta.items())
    out = [head + _avro_long(0) + sync]
    step = per_block or max(len(records), 1)
    for at in range(0, len(records), step):
        body = io.BytesIO()
        for rec in records[at:at + step]:
            fastavro.schemaless_writer(body, parsed, rec)
        data = body.getvalue()
        block = _snappy_literal(data) + zlib.crc32(data).to_bytes(4, "big")
        out.append(_avro_long(len(records[at:at + step])) + _avro_long(len(block)) + block
                   + sync)
    with open(path, "wb") as f:
        f.write(b"".join(out))
    return path

"""Stand-ins for the files and objects that the examples of README.md and docs/ take from the
reader (``galaxies.ecsv``, ``g.fits``, ``alerts/*.avro``, ``candidates``...), so that
`test_docs.py` can run those examples as printed.

`FILES` maps each file name the docs use to a function that writes a small synthetic file of
that name at the path it is given (for a glob, a few files it matches); `OBJECTS` maps each
name the docs take as already defined to a function that returns a stand-in value.
"""
import io
import json

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import QTable, Table
from astropy.wcs import WCS

from synthetic_alerts import (RUBIN_V11_SCHEMA, celestial_header, fits_bytes, rubin_v11_alert,
                              triplet, write_avro, ztf_alert)

__all__ = ["FILES", "OBJECTS"]

#: The survey images: SDSS pixels, three galaxies at these pixel offsets from the centre.
_SCALE, _SIZE = 0.396, 600
_OFFSETS = [(0, 0), (60, -50), (-70, 55)]


def _image_header():
    return celestial_header(fits.Header(), _SCALE, (_SIZE, _SIZE))


def _band(amplitude):
    """A g, r or i image with WCS holding the three galaxies, in nanomaggies."""
    def write(path):
        y, x = np.mgrid[:_SIZE, :_SIZE] - _SIZE // 2
        image = sum(amplitude * np.exp(-((x - dx) ** 2 + (y - dy) ** 2) / (2 * (4 + 2 * k) ** 2))
                    for k, (dx, dy) in enumerate(_OFFSETS))
        image += np.random.default_rng(int(10 * amplitude)).normal(0, 0.01, image.shape)
        fits.PrimaryHDU(image.astype(np.float32), header=_image_header()).writeto(path)
    return write


def _galaxies(path):
    """The catalogue of the three galaxies: ra, dec, petroR90_r and the reader's labels."""
    sky = WCS(_image_header()).pixel_to_world([_SIZE // 2 + dx for dx, _ in _OFFSETS],
                                              [_SIZE // 2 + dy for _, dy in _OFFSETS])
    QTable({"ra": sky.ra.to(u.deg), "dec": sky.dec.to(u.deg),
            "petroR90_r": [6.0, 5.0, 7.0] * u.arcsec,
            "my_class": ["E", "spiral", "E"]}).write(path)


def _jpeg(path, seed=0):
    """A colour cutout of one elliptical blob."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:96, :96] - 48
    a, b = rng.uniform(4, 14, 2)
    blob = np.exp(-(x ** 2 / a ** 2 + y ** 2 / b ** 2))
    rgb = np.stack([blob * c for c in rng.uniform(0.5, 1, 3)], axis=-1) * 255
    Image.fromarray(rgb.astype(np.uint8)).save(path)


def _cutouts(path):
    path.mkdir()
    for k in range(3):
        _jpeg(path / f"{k}.jpeg", k)


def _gri_stamp(path):
    """One FITS cube of g, r, i planes (BANDn cards) with WCS."""
    y, x = np.mgrid[:128, :128] - 64
    planes = [a * np.exp(-(x ** 2 + y ** 2) / (2 * 12 ** 2)) for a in (0.5, 1.0, 1.5)]
    header = celestial_header(fits.Header(), _SCALE, (128, 128))
    header.update({"BAND1": "g", "BAND2": "r", "BAND3": "i"})
    fits.PrimaryHDU(np.stack(planes).astype(np.float32), header=header).writeto(path)


def _embedding_table(rows):
    """What ``astromorph predict embedding DIR -o PATH`` writes for ``rows`` cutouts, with
    ra/dec (row 0 at the position the docs query) and the reader's labels for 2 rows in 3."""
    def write(path):
        import astromorph

        folder = path.parent / f"{path.stem}_cutouts"
        folder.mkdir()
        for k in range(rows):
            _jpeg(folder / f"{k:03d}.jpeg", k)
        table = astromorph.predict_files("embedding", folder, progress=False)
        table["ra"] = np.linspace(187.70, 187.71, rows)
        table["dec"] = np.full(rows, 12.39)
        table["ra"][0], table["dec"][0] = 187.7058333, 12.3911111   # 12h30m49.4s +12d23m28s
        table["my_class"] = np.ma.masked_array(np.resize(["round", "elongated"], rows),
                                               mask=np.arange(rows) % 3 == 0)
        table.write(path)
    return write


def _alerts(path):
    """Three ZTF alert packets in the folder of ``alerts/*.avro``."""
    path.parent.mkdir()
    for candid in (1001, 1002, 1003):
        write_avro(path.parent / f"{candid}.avro", [ztf_alert(candid)])


def _candidates():
    """A table of candidates holding their ZTF-like stamps (gzipped FITS bytes with WCS)."""
    triplets = [triplet(seed=k) for k in range(6)]
    return Table({key: [fits_bytes(t[i], scale=1.0, gz=True) for t in triplets]
                  for i, key in enumerate(("cutoutScience", "cutoutTemplate",
                                           "cutoutDifference"))})


def _candidates_scored(path):
    """Candidates scored by ``real-bogus``, with the reader's truth column ``is_real``."""
    import astromorph

    table = astromorph.annotate_stamps(_candidates(), model="real-bogus", progress=False)
    table["is_real"] = [True, False, True, True, False, False]
    table.write(path)


def _rubin_schema(path):
    path.write_text(json.dumps(RUBIN_V11_SCHEMA))


def _kafka_messages():
    """Rubin alerts in the Confluent wire format (zero byte, schema id, schemaless record)."""
    import fastavro

    schema = fastavro.parse_schema(RUBIN_V11_SCHEMA)
    messages = []
    for k in range(3):
        record = rubin_v11_alert(5000 + k, triplet(n=31, seed=k), negative=k == 1)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, record)
        messages.append(b"\0" + (7).to_bytes(4, "big") + body.getvalue())
    return messages


FILES = {
    "galaxies.ecsv": _galaxies,
    "g.fits": _band(0.5),
    "r.fits": _band(1.0),
    "i.fits": _band(1.5),
    "alerts/*.avro": _alerts,
    "cutouts/": _cutouts,
    "extra.fits": _gri_stamp,
    "gz1_embedding.ecsv": _embedding_table(rows=45),   # the docs query row 42
    "other_embedding.ecsv": _embedding_table(rows=5),
    "my_galaxy.jpeg": _jpeg,
    "candidates_scored.ecsv": _candidates_scored,
    "lsst.v7_0.alert.avsc": _rubin_schema,
}

OBJECTS = {
    "candidates": _candidates,
    "messages": _kafka_messages,
}

"""The FITS ``INHERIT`` keyword: an image extension whose header says ``INHERIT = F`` does not
take the band, unit, saturation level or restoring beam of the file's primary header; with
``INHERIT = T``, or without the keyword, the primary header's are read where the extension
gives none (the FITS keyword inheritance convention)."""
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astromorph._images import closing_files, parse_sky_images
from astromorph._readers._fits import (band_of_header, flux_unit_note, header_facts,
                                       parse_fits_bytes, read_fits, read_fits_bytes,
                                       saturation_of_header)

#: What the primary header says: band r, pixels in counts, saturation 1000, a 45" beam.
INHERITED = {"band": "r", "flux_note": "BUNIT='count'", "saturation": 1000.0, "beam": 45.0}
NOT_INHERITED = {"band": None, "flux_note": None, "saturation": None, "beam": None}
CASES = [(None, INHERITED), (True, INHERITED), (False, NOT_INHERITED),
         # sloppy headers: a string or an integer for the logical
         ("F", NOT_INHERITED), ("false", NOT_INHERITED), (0, NOT_INHERITED),
         ("T", INHERITED), (1, INHERITED), ("maybe", INHERITED)]


def primary_hdu():
    hdu = fits.PrimaryHDU()
    hdu.header["FILTER"] = "HSC-R"
    hdu.header["BUNIT"] = "count"
    hdu.header["SATURATE"] = 1000.0
    hdu.header["BMAJ"] = hdu.header["BMIN"] = 45 / 3600
    return hdu


def image_header(inherit, extname="IMAGE"):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [32.5, 32.5]
    w.wcs.cdelt = [-0.5 / 3600, 0.5 / 3600]
    header = w.to_header()
    header["EXTNAME"] = extname
    if inherit is not None:
        header["INHERIT"] = inherit
    return header


def image(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    blob = 50 * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 20.0)
    return (blob + rng.normal(0, 1, (64, 64))).astype(np.float32)


def facts_of(stamp):
    return {"band": stamp.bands[0], "flux_note": stamp.flux_note,
            "saturation": None if stamp.saturation is None else float(stamp.saturation[0]),
            "beam": stamp.beam}


def approx(facts):
    return {k: (pytest.approx(v) if isinstance(v, float) else v) for k, v in facts.items()}


@pytest.mark.parametrize("inherit, expected", CASES)
def test_header_readers_honour_inherit(inherit, expected):
    primary = primary_hdu().header
    header = image_header(inherit)
    assert band_of_header(header, primary) == expected["band"]
    assert flux_unit_note(header, primary) == expected["flux_note"]
    assert saturation_of_header(header, primary) == expected["saturation"]
    facts = header_facts(header, primary)
    assert facts.beam == approx(expected)["beam"]
    assert (facts.flux_note, facts.saturation) == (expected["flux_note"],
                                                   expected["saturation"])
    # the extension's own keywords are read whatever INHERIT says
    header["FILTER"], header["BUNIT"] = "g", "adu"
    assert band_of_header(header, primary) == "g"
    assert flux_unit_note(header, primary) == "BUNIT='adu'"


@pytest.mark.parametrize("inherit, expected", CASES)
def test_stamp_of_one_image_extension_honours_inherit(tmp_path, inherit, expected):
    """A file (and its bytes) of a primary header and one image extension: `read_fits`,
    `read_fits_bytes` and `parse_fits_bytes`."""
    path = tmp_path / "ext.fits"
    fits.HDUList([primary_hdu(), fits.ImageHDU(image(), image_header(inherit))]).writeto(path)
    blob = path.read_bytes()
    for stamps in (read_fits(Path(path), want_scale=True, triplet_hint=False),
                   read_fits_bytes(blob, source="ext")):
        (stamp,) = stamps
        assert facts_of(stamp) == approx(expected)
    facts = parse_fits_bytes(blob, return_facts=True)[2]
    assert facts.beam == approx(expected)["beam"]
    assert (facts.flux_note, facts.saturation) == (expected["flux_note"],
                                                   expected["saturation"])


@pytest.mark.parametrize("inherit, expected", CASES)
def test_stamp_of_band_extensions_honours_inherit(tmp_path, inherit, expected):
    """A file of one image extension per band (G, R), stacked: the beam, unit note and
    saturation levels of each extension (the bands are the EXTNAMEs)."""
    path = tmp_path / "bands.fits"
    fits.HDUList([primary_hdu(),
                  fits.ImageHDU(image(1), image_header(inherit, "G")),
                  fits.ImageHDU(image(2), image_header(inherit, "R"))]).writeto(path)
    (stamp,) = read_fits(Path(path), want_scale=True, triplet_hint=False)
    assert stamp.bands == ("g", "r")
    assert stamp.beam == approx(expected)["beam"]
    note = expected["flux_note"]
    assert stamp.flux_note == (None if note is None else f"{note} (HDU 1)")
    if expected["saturation"] is None:
        assert stamp.saturation is None or np.isnan(stamp.saturation).all()
    else:
        np.testing.assert_allclose(stamp.saturation, expected["saturation"])


@pytest.mark.parametrize("inherit, expected", CASES)
def test_sky_image_of_an_image_extension_honours_inherit(tmp_path, inherit, expected):
    """`annotate`'s images (`parse_sky_images`) of an image extension."""
    path = tmp_path / "calexp.fits"
    fits.HDUList([primary_hdu(), fits.ImageHDU(image(), image_header(inherit))]).writeto(path)
    with closing_files(parse_sky_images(str(path))) as images:
        (im,) = images
        got = {"band": im.filter_band, "flux_note": im.flux_note,
               "saturation": im.saturation, "beam": im.beam}
    assert got == approx(expected)

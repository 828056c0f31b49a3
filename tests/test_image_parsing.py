"""`astromorph._images`, the parser of annotate's images, at the edges its other tests do not
reach: which members of a triplet keep their roles, images that are not 2D once squeezed, a
BLANK keyword on floating-point pixels, and the stream reader of a gzipped file's pixels (its
passes through the stream and the words for a stream that ends within the pixels)."""
import gzip
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astromorph._images import _lazy_stream, _StreamRows, closing_files, parse_sky_images
from astromorph.exceptions import InputError


def sky_wcs(naxis=2):
    w = WCS(naxis=naxis)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"] + ["FREQ"] * (naxis - 2)
    w.wcs.crval = [150.0, 2.2] + [1.4e9] * (naxis - 2)
    w.wcs.crpix = [25.0, 25.0] + [1.0] * (naxis - 2)
    w.wcs.cdelt = [-1e-4, 1e-4] + [1e6] * (naxis - 2)
    return w


def test_sci_beside_a_difference_alone_stays_a_triplet_member(tmp_path):
    """A SCI extension is read by its filter only where no reference nor difference is beside
    it: one beside a difference alone (its reference missing) stays the science member, so
    that a triplet model says which member is missing rather than a band being read."""
    w = sky_wcs()
    path = tmp_path / "sci_diff.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header([("FILTER", "r")]))]
                 + [fits.ImageHDU(np.full((50, 50), k + 1.0, np.float32), w.to_header(),
                                  name=role)
                    for k, role in enumerate(("SCI", "DIFF"))]).writeto(path)
    with closing_files(parse_sky_images(str(path), triplet=False)) as images:
        assert [im.band for im in images] == ["science", "difference"]


@pytest.mark.parametrize("shape", [(1, 50, 1), (1, 1, 50)])
def test_an_image_one_pixel_wide_once_squeezed_is_not_2d(shape):
    """A cube whose degenerate axes squeeze away to leave one axis is refused in words, not
    read as a 1D image."""
    with pytest.raises(InputError, match=r"expected a 2D image, got shape \(1, "):
        parse_sky_images((np.ones(shape, np.float32), sky_wcs(3)))


def test_blank_keyword_on_float_pixels_is_not_a_null_value():
    """BLANK is for integer pixels (floats mark nulls by NaN): on a floating-point image it
    is ignored, its pixels of that value kept, as astropy does."""
    w = sky_wcs()
    data = np.arange(2500, dtype=np.float32).reshape(50, 50)
    header = w.to_header()
    header["BLANK"] = 7
    hdu = fits.ImageHDU(data, header)
    [im] = parse_sky_images(hdu)
    np.testing.assert_array_equal(im.take(np.array([6, 7, 8])), [6.0, 7.0, 8.0])


def _gzipped_rows(tmp_path, rows=40, width=30):
    """A gzipped FITS file of big-endian int16 rows, and its pixels, header and data offset."""
    data = np.arange(rows * width, dtype=">i2").reshape(rows, width)
    path = tmp_path / "rows.fits.gz"
    hdu = fits.PrimaryHDU(data)
    with gzip.open(path, "wb") as f:
        hdu.writeto(f)
    return str(path), data, hdu.header, len(hdu.header.tostring())


def test_stream_rows_read_in_order_take_one_pass(tmp_path):
    """Whole rows asked for in increasing order (each starting where the last one ended) are
    read in one pass through the stream: it is opened once, not again for every row."""
    path, data, _, offset = _gzipped_rows(tmp_path)
    opened = []

    def opener(*args):
        opened.append(args)
        return gzip.open(*args)

    rows = _StreamRows("rows", path, opener, offset, data.shape, data.dtype)
    try:
        for y in range(data.shape[0]):
            np.testing.assert_array_equal(rows[y, 0:data.shape[1]], data[y])
        assert len(opened) == 1
        np.testing.assert_array_equal(rows[2, 3:9], data[2, 3:9])  # behind: opened anew
        assert len(opened) == 2
    finally:
        rows.release()


def test_stream_ending_within_the_pixels_is_said_truncated(tmp_path):
    """A stream that ends within the pixels (its header claiming more rows than it holds) is
    an InputError that says it is truncated, for a row read and for the pixels read whole,
    not pixels left short or unset."""
    path, data, header, offset = _gzipped_rows(tmp_path)
    rows = _StreamRows("rows", path, gzip.open, offset, (data.shape[0] * 2, data.shape[1]),
                       data.dtype)
    try:
        np.testing.assert_array_equal(rows[1, 0:5], data[1, :5])
        with pytest.raises(InputError, match="truncated"):
            rows[data.shape[0] * 2 - 1, 0:5]
    finally:
        rows.release()
    header["NAXIS2"] = data.shape[0] * 2  # (an HDU as astropy streamed it: header, shape)
    hdu = SimpleNamespace(header=header, shape=(data.shape[0] * 2, data.shape[1]))
    _, load, _ = _lazy_stream(hdu, "rows", (path, gzip.open, offset))
    with pytest.raises(InputError, match="the compressed file ends .* it is truncated"):
        load()



def test_decompression_warning_is_for_images_larger_than_the_limit(tmp_path, monkeypatch):
    """The decompressed-whole warning counts the image's own bytes (BITPIX / 8 each) and is
    given only above `DECOMPRESS_WARN_BYTES`, not at it."""
    from astromorph import _images
    from astromorph.exceptions import AstromorphWarning

    data = np.ones((50, 50), np.float32)
    path = tmp_path / "image.fits.gz"
    with gzip.open(path, "wb") as f:
        fits.PrimaryHDU(data, sky_wcs().to_header()).writeto(f)
    monkeypatch.setattr(_images, "DECOMPRESS_WARN_BYTES", data.nbytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstromorphWarning)
        with closing_files(parse_sky_images(str(path))):
            pass
    monkeypatch.setattr(_images, "DECOMPRESS_WARN_BYTES", data.nbytes - 1)
    with pytest.warns(AstromorphWarning, match="decompressed whole"):
        with closing_files(parse_sky_images(str(path))):
            pass


def test_a_file_of_mask_planes_only_reads_them(tmp_path):
    """Mask and weight planes are left out only beside an image plane: a file holding
    nothing else is read (its planes are what was given)."""
    path = tmp_path / "mask.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((50, 50), np.float32),
                                                   sky_wcs().to_header(), name="MASK")]
                 ).writeto(path)
    with closing_files(parse_sky_images(str(path))) as images:
        assert [im.name for im in images] == [f"{path}[1]"]


def test_the_callers_hdu_of_scaled_integers_keeps_its_pixels(tmp_path):
    """An HDU the caller opened is not the parser's to empty: its raw scaled integers stay in
    it (only an HDU of a file opened here lets go of them for the float32 copy)."""
    hdu = fits.PrimaryHDU(np.arange(2500.0).reshape(50, 50) * 2 + 10, sky_wcs().to_header())
    hdu.scale("int16", bscale=2.0, bzero=10.0)
    hdu.writeto(tmp_path / "scaled.fits")
    with fits.open(tmp_path / "scaled.fits", do_not_scale_image_data=True,
                   memmap=False) as hdul:
        raw = hdul[0].data
        [im] = parse_sky_images(hdul[0])
        np.testing.assert_array_equal(im.take(np.array([1, 2])), [12.0, 14.0])
        assert hdul[0].data is raw


def test_nddata_boolean_pixels_and_mask_are_read():
    """An NDData's boolean pixels are read as 0 and 1, and its masked pixels are NaN (only
    those)."""
    from astropy.nddata import NDData

    data = np.zeros((50, 50), bool)
    data[0, 1] = True
    mask = np.zeros((50, 50), bool)
    mask[0, 2] = True
    [im] = parse_sky_images(NDData(data, wcs=sky_wcs(), mask=mask))
    np.testing.assert_array_equal(im.take(np.array([0, 1, 2])), [0.0, 1.0, np.nan])


def test_a_band_given_is_the_images_filter_band_too(tmp_path):
    """A band given for an image (a dict key) replaces its header's filter as well: an image
    given as the science member keeps that role with triplet=False, not read by its FILTER."""
    path = tmp_path / "g.fits"
    header = sky_wcs().to_header()
    header["FILTER"] = "g"
    fits.writeto(path, np.ones((50, 50), np.float32), header)
    with closing_files(parse_sky_images({"science": str(path)}, triplet=False)) as images:
        assert [(im.band, im.filter_band) for im in images] == [("science", "science")]


def test_bands_given_by_list_are_lowercased(tmp_path):
    """Band names given by ``bands=`` are read as dict keys are, lowercased."""
    path = tmp_path / "r.fits"
    fits.writeto(path, np.ones((50, 50), np.float32), sky_wcs().to_header())
    with closing_files(parse_sky_images([str(path)], bands=["R"])) as images:
        assert [im.band for im in images] == ["r"]


@pytest.mark.parametrize("given", ["file", "gzip", "hdu", "array", "nddata"])
@pytest.mark.parametrize("shape", [(0, 20), (20, 0), (1, 0, 20)])
def test_an_image_with_an_axis_of_length_0_is_refused(tmp_path, given, shape):
    """An image with an axis of length 0 (NAXIS2 = 0) holds no pixel to sample: refused in
    words naming it, as `predict_files` refuses it ("no image HDU with data"), however
    given (it was read as a 20 x 0 `SkyImage`, with no error)."""
    from astropy.nddata import NDData

    w = sky_wcs(len(shape))
    data = np.zeros(shape, np.float32)
    path = tmp_path / "z0.fits"
    fits.PrimaryHDU(data, w.to_header()).writeto(path)
    assert fits.getheader(path)["NAXIS"] == len(shape)
    if given == "gzip":
        with gzip.open(tmp_path / "z0.fits.gz", "wb") as f:
            f.write(path.read_bytes())
        path = tmp_path / "z0.fits.gz"
    obj, name = {"file": (str(path), f"{path}[0]"), "gzip": (str(path), f"{path}[0]"),
                 "hdu": (fits.PrimaryHDU(data, w.to_header()), "HDU"),
                 "array": ((data, w), "array"),
                 "nddata": (NDData(data, wcs=w), "NDData")}[given]
    with pytest.raises(InputError, match=rf"^{re.escape(name)}: the image holds no pixels "
                                         rf"\(shape {re.escape(str(shape))}\)"):
        parse_sky_images(obj)

"""annotate(): WCS cutouts, mosaics, bands, flags, catalogue handling, CLI."""
import contextlib
import importlib.util
import json
import logging
import os
import re
import sys
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import Angle, SkyCoord
from astropy.io import fits
from astropy.nddata import NDData
from astropy.table import MaskedColumn, QTable, Table
from astropy.wcs import WCS, Sip

import astromorph
from astromorph import Flag, cli
from astromorph._cutouts import SkyImage, cut_stamps
from astromorph._images import closing_files, parse_sky_images
from astromorph.exceptions import (AmbiguousInputWarning, AstromorphWarning, InputDTypeError,
                                   InputError, InputNotFoundError, InvalidArgumentError,
                                   InvalidArgumentTypeError, LossyOutputWarning,
                                   UnusableInputWarning)

from conftest import assert_same_values, assert_scores
from tiny_models import make_card, tiny_classifier_onnx

SIZE = 16        # tiny model stamp side (pixels)
SCALE = 0.5      # tiny model pixel scale (arcsec)


def sky_wcs(n=200, *, rot=20.0, scale=0.4, flip=False, sip=False, crval=(150.0, 2.2), crpix=None,
            sip_strength=1.0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix or (n / 2, n / 2))
    t, s = np.radians(rot), scale / 3600
    cd = np.array([[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]])
    if flip:
        cd[:, 0] *= -1
    w.wcs.cd = cd
    if sip:
        a, b = np.zeros((4, 4)), np.zeros((4, 4))
        a[2, 0], a[0, 2], b[1, 1], a[3, 0] = 3e-5, -2e-5, 4e-5, 1e-8
        a, b = a * sip_strength, b * sip_strength
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def blobs(n=200, seed=0, count=40):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    img = np.full((n, n), 0.05, np.float32)
    for _ in range(count):
        cx, cy = rng.uniform(0, n, 2)
        s = rng.uniform(1.5, 5)
        img += rng.uniform(1, 5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return img.astype(np.float32)


@pytest.fixture
def optical_model(tmp_path):
    return make_optical_model(tmp_path / "opt")


def make_optical_model(d, name="opt", labels=("a", "b", "c")):
    d.mkdir()
    # spatial weights: every stamp, single-band ones too, gets its own probabilities
    tiny_classifier_onnx(d / "model.onnx", channels=3, size=SIZE, labels=labels, spatial=True)
    card = make_card(d / "model.onnx", name=name, channels=3, size=SIZE, labels=labels,
                     single_band="replicate", column_prefix=name)
    card["input"].update(family="optical", preprocessing="astromorph.preprocessing.preprocess_optical",
                         angular_size={"kind": "fixed", "pixel_scale_arcsec": SCALE, "size_pix": SIZE})
    (d / "card.json").write_text(json.dumps(card))
    return astromorph.load_model(d)


def _is_memory_mapped(a):
    import mmap

    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def catalogue(w, pix, *, unit="deg"):
    """A Table of the sources at the pixels ``pix`` of ``w``: ``id``, ``ra``, ``dec`` (in
    ``unit``: None for the numbers without a unit, read as degrees)."""
    c = w.pixel_to_world(*np.asarray(pix, float).T)
    cat = Table({"id": np.arange(len(pix)), "ra": c.ra.deg, "dec": c.dec.deg})
    cat["ra"].unit = cat["dec"].unit = unit
    return cat


def warns_bad_positions(n, total):
    """The one `UnusableInputWarning` of `annotate` for ``n`` of ``total`` sources without a
    usable position (the test gives them on purpose)."""
    return pytest.warns(UnusableInputWarning,
                        match=rf"^{n} of {total} row\(s\) have no usable position or size "
                              r"\(NaN, masked, unreadable or out of range; first: position\): "
                              r"flagged BAD_INPUT")


def image_hdu(img, w, dtype):
    """``img`` as a FITS HDU of ``dtype``: float as it is, "int16" scaled (BSCALE 1e-3,
    BZERO 10) as survey pipelines store images."""
    hdu = fits.PrimaryHDU(img.astype(np.float64) if dtype == "int16" else img.astype(dtype),
                          header=w.to_header())
    if dtype == "int16":
        hdu.scale("int16", bscale=1e-3, bzero=10.0)
    return hdu


def reprojected_stamps(img, w, coords):
    """Independent reference: ``reproject_interp`` (bilinear) of ``img`` onto a north-up
    TAN grid of 2 * SIZE pixels of SCALE arcsec centred on each of ``coords``."""
    reproject_interp = pytest.importorskip("reproject").reproject_interp
    out = []
    for ra, dec in zip(coords.ra.deg, coords.dec.deg):
        o = WCS(naxis=2)
        o.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        o.wcs.crval = [ra, dec]
        o.wcs.crpix = [(2 * SIZE + 1) / 2] * 2
        o.wcs.cdelt = [-SCALE / 3600, SCALE / 3600]
        out.append(reproject_interp((img, w), o, shape_out=(2 * SIZE, 2 * SIZE),
                                    order="bilinear")[0])
    return np.array(out)


# ------------------------------------------------------------------- cutouts
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("sip", [False, True])
def test_cutouts_match_reproject_interp(flip, sip):
    """Stated tolerance: 1e-4 of the image maximum (float32 coordinates)."""
    n = 300
    img = blobs(n, count=80)
    w = sky_wcs(n, flip=flip, sip=sip)
    rng = np.random.default_rng(3)
    src = w.pixel_to_world(rng.uniform(40, n - 40, 6), rng.uniform(40, n - 40, 6))
    res = cut_stamps(SkyImage(img, w), src.ra.deg, src.dec.deg, size=SIZE * 2, pixel_scale=SCALE,
                     antialias=False)
    np.testing.assert_allclose(res.stamps, reprojected_stamps(img, w, src),
                               atol=1e-4 * img.max())
    assert np.all(res.outside == 0) and np.all(res.blank == 0)
    np.testing.assert_allclose(res.zoom, SCALE / 0.4, rtol=0.02 if sip else 1e-3)


def test_sip_is_honoured():
    """A blob at a distorted position is centred only when SIP is applied."""
    n = 300
    yy, xx = np.mgrid[:n, :n]
    img = np.exp(-((xx - 260.0) ** 2 + (yy - 250.0) ** 2) / (2 * 2.0 ** 2)).astype(np.float32)
    w_sip, w_plain = sky_wcs(n, sip=True, sip_strength=10), sky_wcs(n, sip=False)
    src = w_sip.pixel_to_world([260.0], [250.0])
    px, py = w_plain.world_to_pixel(src)
    shift = float(np.hypot(px[0] - 260.0, py[0] - 250.0))
    assert shift > 2  # the distortion moves the source by pixels here
    a = cut_stamps(SkyImage(img, w_sip), src.ra.deg, src.dec.deg, size=SIZE + 1, pixel_scale=0.2)
    b = cut_stamps(SkyImage(img, w_plain), src.ra.deg, src.dec.deg, size=SIZE + 1, pixel_scale=0.2)
    c = SIZE // 2
    assert a.stamps[0, c, c] == pytest.approx(a.stamps[0].max()) and a.stamps[0, c, c] > 0.95
    assert b.stamps[0, c, c] < 0.8


def test_distortion_whose_inverse_diverges_puts_no_far_source_on_the_image(optical_model):
    """Far (a degree) from a SIP image the distortion polynomial has no inverse: astropy's
    iteration diverges and its 'best solution' may fall on the image. Such sources are off
    the image (OFF_IMAGE, masked), not scored from a stamp of the wrong sky, and astropy's
    'failed to converge' warning is not passed on."""
    import warnings

    img, w = blobs(), sky_wcs(sip=True)
    cat = catalogue(w, [(100, 100)])
    far = Table({"id": [1, 2], "ra": [149.0975, 151.2115], "dec": [2.5223, 1.7647]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = w.world_to_pixel_values(far["ra"], far["dec"])
    assert ((x > 0) & (x < 199) & (y > 0) & (y < 199)).all()   # astropy: on the image
    cat = Table({"id": [0, 1, 2], "ra": np.r_[cat["ra"], far["ra"]],
                 "dec": np.r_[cat["dec"], far["dec"]]}, units={"ra": "deg", "dec": "deg"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = astromorph.annotate(cat, (img, w), model=optical_model)
    assert out["opt_flags"].tolist() == [0, Flag.OFF_IMAGE, Flag.OFF_IMAGE]
    assert out["opt_p_a"].mask.tolist() == [False, True, True]


def test_wide_stamp_on_a_curved_mapping_is_placed_pixel_for_pixel():
    """A stamp 40 degrees wide (81 pixels of 0.5 deg) 40 degrees from the image's tangent
    point: the quadratic interpolation of its nodes misses by about a pixel, so it is mapped
    pixel by pixel and each stamp pixel samples the image where the WCS puts its sky position
    (here a ramp image: the value is the image column)."""
    n, size, scale = 600, 81, 0.5
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [180.0, 0.0], [n / 2 + 0.5] * 2, [-0.5, 0.5]
    img = np.tile(np.arange(n, dtype=np.float32), (n, 1))
    res = cut_stamps(SkyImage(img, w), [185.0], [40.0], size=size, pixel_scale=scale * 3600,
                     antialias=False)
    # the stamp grid: a TAN projection about the source, north up, east left, row 0 at the bottom
    stamp = WCS(naxis=2)
    stamp.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    stamp.wcs.crval, stamp.wcs.crpix = [185.0, 40.0], [(size + 1) / 2] * 2
    stamp.wcs.cdelt = [-scale, scale]
    rows, cols = np.mgrid[:size, :size]
    x, _ = w.world_to_pixel(stamp.pixel_to_world(cols, rows))
    assert np.isfinite(res.stamps[0]).all() and res.outside[0] == 0
    np.testing.assert_allclose(res.stamps[0], x, atol=0.01)


def test_antialiasing_preserves_mean():
    rng = np.random.default_rng(0)
    img = (10 + rng.normal(size=(400, 400))).astype(np.float32)
    w = sky_wcs(400, rot=0, scale=0.1)
    c = w.pixel_to_world(200, 200)
    res = cut_stamps(SkyImage(img, w), [c.ra.deg], [c.dec.deg], size=16, pixel_scale=1.0)
    assert res.zoom[0] == pytest.approx(10, rel=1e-3)
    # 10x10 block means: noise drops from 1 to ~0.1
    assert res.stamps.std() < 0.2 and res.stamps.mean() == pytest.approx(10, abs=0.05)


def test_edge_and_off_image_fractions():
    img = blobs(100)
    w = sky_wcs(100, rot=0)
    c = w.pixel_to_world([50.0, 0.0, 500.0], [50.0, 50.0, 50.0])
    res = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
    assert res.outside[0] == 0
    assert 0.3 < res.outside[1] < 0.7
    assert res.outside[2] == 1 and np.isnan(res.stamps[2]).all()


def test_edges_on_every_side_and_blank_counts_only_pixels_inside():
    """A stamp over any of the four image edges is part outside (NaN there); ``blank`` is the
    fraction of the pixels inside the image that are NaN, so a clean edge stamp has none."""
    img = blobs(100)
    img[40:60, 40:50] = np.nan
    w = sky_wcs(100, rot=0)
    c = w.pixel_to_world([0.0, 99.0, 50.0, 50.0, 45.0, 90.8], [50.0, 50.0, 0.0, 99.0, 50.0, 20.0])
    res = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
    # the last stamp column (1.25 image pixels apart) lies 0.7 pixel past the last pixel centre
    assert res.outside[5] == pytest.approx(1 / SIZE) and np.isnan(res.stamps[5][:, -1]).all()
    assert ((0.3 < res.outside[:4]) & (res.outside[:4] < 0.7)).all()
    assert np.isnan(res.stamps[:4]).sum(axis=(1, 2)).tolist() == \
        np.round(res.outside[:4] * SIZE ** 2).astype(int).tolist()
    assert (res.blank[:4] == 0).all()
    assert res.outside[4] == 0
    assert res.blank[4] == pytest.approx(np.isnan(res.stamps[4]).mean())
    assert 0 < res.blank[4] < 1


def test_block_averaged_stamps_stay_centred():
    """With block averaging (zoom 10 here) a linear ramp is sampled exactly: the stamp centre
    reads the ramp at the source position (block centres at f*k + (f-1)/2)."""
    yy, xx = np.mgrid[:400, :400].astype(np.float32)
    w = sky_wcs(400, rot=0, scale=0.1)
    px, py = np.array([200.3, 151.0, 260.5]), np.array([180.7, 222.2, 199.0])
    c = w.pixel_to_world(px, py)
    for img, want in ((xx, px), (yy, py)):
        res = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=17, pixel_scale=1.0)
        assert res.zoom == pytest.approx(10, rel=1e-3)
        np.testing.assert_allclose(res.stamps[:, 8, 8], want, atol=0.02)


def test_block_averaging_ignores_nan_and_starts_at_two_pixels():
    rng = np.random.default_rng(0)
    img = (10 + rng.normal(size=(400, 400))).astype(np.float32)
    w = sky_wcs(400, rot=0, scale=0.1)
    c = w.pixel_to_world([200.0], [200.0])
    # one NaN pixel under a 10 x 10 block: the block is the mean of the other 99
    img[203, 198] = np.nan
    res = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=16, pixel_scale=1.0)
    assert np.isfinite(res.stamps).all() and res.blank[0] == 0
    # stamp pixels covering fewer than 2 image pixels (zoom 1.6): plain bilinear sampling
    img[203, 198] = 10.0
    a = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=16, pixel_scale=0.16)
    b = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=16, pixel_scale=0.16,
                   antialias=False)
    assert a.zoom[0] == pytest.approx(1.6, rel=1e-3)
    np.testing.assert_array_equal(a.stamps, b.stamps)


def test_stamp_pixels_larger_than_the_image_average_it_whole_in_little_memory():
    """A stamp pixel wider than the whole image (an absurd size, e.g. a radius column in the
    wrong unit: 1e7 arcsec asked for 80 TiB) was block-averaged with that factor, padding
    the image to factor x factor pixels; the factors now stop at the image's size, with the
    same values (the mean of the image)."""
    import tracemalloc

    img, w = blobs(), sky_wcs()
    c = w.pixel_to_world(100, 100)
    image = SkyImage(img, w)
    tracemalloc.start()
    try:  # 1 arcdeg stamp pixels on 0.4" image pixels: blocks of 9000 x 9000 pixels
        res = cut_stamps(image, [c.ra.deg], [c.dec.deg], size=15, pixel_scale=3600.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * img.nbytes, (peak, img.nbytes)
    assert res.zoom[0] > 8000
    np.testing.assert_allclose(res.stamps[0, 7, 7], img.mean(), rtol=1e-5)
    assert np.isnan(res.stamps[0, 0, 0]) and res.outside[0] > 0.99

def test_chunks_with_mixed_block_factors():
    """Sources of one chunk sampled at different pyramid levels land in their own rows, in
    every chunk."""
    img, w = blobs(300, count=80), sky_wcs(300, scale=0.1)
    rng = np.random.default_rng(5)
    c = w.pixel_to_world(*rng.uniform(80, 220, (2, 11)))
    scale = np.where(np.arange(11) % 3 == 0, 0.6, 0.12)  # zoom 6 and 1.2
    one = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=scale)
    for k in range(11):
        alone = cut_stamps(SkyImage(img, w), c.ra.deg[k:k + 1], c.dec.deg[k:k + 1], size=SIZE,
                           pixel_scale=scale[k])
        np.testing.assert_array_equal(one.stamps[k], alone.stamps[0])
    parts = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=scale,
                       chunk=4)
    np.testing.assert_array_equal(parts.stamps, one.stamps)



def _take_bilinear_as_before(image, x, y, out=None, *, take=None):
    """`_cutouts._take_bilinear` as it was (int64 indices, a new array per operation): the
    values that the in-place, int32 version must give bit for bit."""
    ny, nx = image.shape
    xc, yc = np.clip(x, 0, nx - 1), np.clip(y, 0, ny - 1)
    x0 = np.minimum(np.floor(xc).astype(np.int64), max(nx - 2, 0))
    y0 = np.minimum(np.floor(yc).astype(np.int64), max(ny - 2, 0))
    fx, fy = (xc - x0).astype(np.float32), (yc - y0).astype(np.float32)
    base, step_x, step_y = y0 * nx + x0, 1 if nx > 1 else 0, nx if ny > 1 else 0
    take = image.take if take is None else take
    v00, v01 = take(base), take(base + step_x)
    v10, v11 = take(base + step_y), take(base + step_x + step_y)
    top = v00 + fx * (v01 - v00)
    value = top + fy * (v10 + fx * (v11 - v10) - top)
    if out is not None:
        out[...] = value
    return value


@pytest.mark.parametrize("where", [">f4", "int16", "native memmap", "in memory"])
def test_stamps_do_not_depend_on_the_sampling_budget(tmp_path, monkeypatch, where):
    """`cut_stamps` maps and samples as many stamps together as `SAMPLE_PIXELS` holds (at
    least one): any budget, one smaller than a stamp included, gives the stamps, bit for
    bit, of one chunk of all sources sampled the way it was before (int64 indices, new
    arrays), page by page (big-endian, scaled and native memory maps, with on-demand block
    means), or in memory."""
    from astromorph import _cutouts

    n = 600  # stamps at 1"/px on 0.4"/px (blocks of 2 x 2) stay sparse: block means on demand
    img, w = blobs(n, count=300), sky_wcs(n)
    if where != "int16":  # masked rows (int16: BLANK, below)
        img[300:310, :] = -1e30 if where == "native memmap" else np.nan
    rng = np.random.default_rng(11)
    c = w.pixel_to_world(*rng.uniform(-8, n + 8, (2, 23)))  # edges and off the image too
    scale = np.where(np.arange(23) % 4 == 0, 1.0, SCALE)  # two block factors in a chunk
    monkeypatch.setattr(_cutouts, "RESIDENT_MAX_BYTES", 0)  # never read whole
    if where == "native memmap":
        data = np.memmap(tmp_path / "img.raw", np.float32, "w+", shape=img.shape)
        data[:] = img
    elif where != "in memory":
        hdu = image_hdu(img, w, where)
        if where == "int16":
            hdu.header["BLANK"] = -32768
            hdu.data[300:310, :] = -32768
        hdu.writeto(tmp_path / "img.fits")

    def cut(budget, take=_cutouts._take_bilinear):
        monkeypatch.setattr(_cutouts, "SAMPLE_PIXELS", budget)
        monkeypatch.setattr(_cutouts, "_take_bilinear", take)
        if where == "native memmap":
            image = SkyImage(data, w)
        elif where == "in memory":
            image = SkyImage(img, w)
        else:
            [image] = parse_sky_images(str(tmp_path / "img.fits"))
        res = cut_stamps(image, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=scale)
        assert image._resident is (img if where == "in memory" else None)
        assert isinstance(image.level(2, 2), _cutouts._BinnedView) == (where != "in memory")
        return res

    before = cut(1 << 40, take=_take_bilinear_as_before)
    assert np.isfinite(before.stamps).any() and np.isnan(before.stamps).any()
    assert (before.outside > 0).any() and (before.blank > 0).any()
    for budget in (1, SIZE ** 2 - 1, 3 * SIZE ** 2 + 5, 1 << 40):
        res = cut(budget)
        np.testing.assert_array_equal(res.stamps, before.stamps)
        for key in ("outside", "blank", "zoom"):
            np.testing.assert_array_equal(getattr(res, key), getattr(before, key))

@pytest.mark.parametrize("dtype", [">f4", "int16"])
def test_a_stamp_does_not_depend_on_the_other_sources(tmp_path, dtype):
    """A source's stamp is the same bit for bit cut alone (its image gathered page by page,
    block means on demand) and with a dense catalogue (the image read whole, its
    block-averaged copy). They differed by a float32 step (``map_coordinates`` sampled the
    image in memory, `_take_bilinear` the pages), which the optical preprocessing's 8-bit
    quantisation can make one grey level: `annotate`'s probabilities for a row depended on
    the other rows of the call (3e-5 for a galaxy of the packaged Hubble Deep Field)."""
    n = 300
    img, w = blobs(n, count=120), sky_wcs(n)
    image_hdu(img, w, dtype).writeto(tmp_path / "img.fits")
    rng = np.random.default_rng(8)
    c = w.pixel_to_world(*np.hstack([[[151.3], [148.6]], rng.uniform(20, n - 20, (2, 400))]))
    from astromorph._cutouts import _BinnedView

    for scale, factor in ((SCALE, 1), (1.3, 3)):  # bilinear sampling; 3 x 3 block means
        [alone] = parse_sky_images(str(tmp_path / "img.fits"))
        one = cut_stamps(alone, c.ra.deg[:1], c.dec.deg[:1], size=SIZE, pixel_scale=scale)
        [dense] = parse_sky_images(str(tmp_path / "img.fits"))
        dense.plan_samples(len(c) * SIZE ** 2)  # as annotate announces its catalogue
        many = cut_stamps(dense, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=scale)
        if factor == 1:  # sampled page by page; read whole
            assert alone.resident(0) is None and dense.resident(0) is not None
        else:  # block means on demand; a block-averaged copy
            assert isinstance(alone.level(factor, factor), _BinnedView)
            assert not isinstance(dense.level(factor, factor), _BinnedView)
        assert np.isfinite(one.stamps).all()
        np.testing.assert_array_equal(many.stamps[0], one.stamps[0])


def test_page_by_page_sampling_of_a_non_square_scaled_image(tmp_path, monkeypatch):
    """Scaled integer data read page by page (`SkyImage.take`) give the stamps of the same
    image in memory, on a non-square image (rows are nx pixels apart)."""
    from astromorph import _cutouts

    img, w = blobs(), sky_wcs()
    img, w = img[:130], w[:130, :]
    path = tmp_path / "image.fits"
    hdu = fits.PrimaryHDU(img.astype(np.float64), header=w.to_header())
    hdu.scale("int16", bscale=1e-3, bzero=10.0)
    hdu.writeto(path)
    monkeypatch.setattr(_cutouts, "RESIDENT_MAX_BYTES", 0)
    [im] = parse_sky_images(str(path))
    assert im.shape == (130, 200) and not im.plain
    c = w.pixel_to_world(*np.random.default_rng(2).uniform(10, 120, (2, 20)))
    got = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
    assert im._resident is None
    ref = cut_stamps(SkyImage(fits.getdata(path).astype(np.float32), w), c.ra.deg, c.dec.deg,
                     size=SIZE, pixel_scale=SCALE)
    np.testing.assert_allclose(got.stamps, ref.stamps, rtol=1e-6, atol=1e-5, equal_nan=True)


# ------------------------------------------------- WCS conventions (independent references)
def gaussians(shape, w, coords, sigma_pix=1.5, amplitude=None):
    """Analytic circular Gaussians (peaks ``amplitude``, default 1, 1/2, 1/3...) centred
    where ``w`` puts ``coords``."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros(shape)
    x, y = w.world_to_pixel(coords)
    amplitude = 1 / np.arange(1, x.size + 1) if amplitude is None else amplitude
    for x, y, a in zip(np.ravel(x), np.ravel(y), np.broadcast_to(amplitude, np.shape(x))):
        img += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_pix ** 2))
    return img.astype(np.float32)


def peak(stamp):
    """(column, row) of the brightest pixel of a stamp."""
    row, col = np.unravel_index(np.nanargmax(stamp), stamp.shape)
    return int(col), int(row)


def test_stamp_over_the_limb_of_the_projection_is_outside(optical_model, tmp_path,
                                                          monkeypatch):
    """A source near the limb of a SIN image of a hemisphere has stamp pixels that the
    projection cannot place (NaN pixel coordinates): they count as outside the image (EDGE;
    the half of the stamp on the image is kept and scored; a stamp wholly past the limb
    is outside, whole), without a cast warning and without an IndexError from the
    page-by-page sampling of scaled integers that stopped the batch."""
    import warnings

    from astromorph import _cutouts

    n = 400
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval, w.wcs.crpix = [0.0, 0.0], [200.5, 200.5]
    w.wcs.cdelt = [-57.3 / 199, 57.3 / 199]
    img = blobs(n)
    cat = Table({"ra": [89.99, 45.0], "dec": [0.0, 0.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cut_stamps(SkyImage(img, w), [89.99, 45.0, 120.0], [0.0, 0.0, 0.0],
                         size=SIZE, pixel_scale=3600)
    assert res.outside.tolist() == [0.5, 0, 1] and res.blank.tolist() == [0, 0, 0]
    assert np.isfinite(res.stamps[0][:, SIZE // 2:]).all()
    assert np.isnan(res.stamps[0][:, :SIZE // 2]).all() and np.isnan(res.stamps[2]).all()
    path = tmp_path / "sin.fits"
    hdu = fits.PrimaryHDU(img.astype(np.float64), header=w.to_header())
    hdu.scale("int16", bscale=1e-3)
    hdu.writeto(path)
    monkeypatch.setattr(_cutouts, "RESIDENT_MAX_BYTES", 0)       # sampled page by page
    out = astromorph.annotate(cat, str(path), model=optical_model, stamp_size=16 * u.deg)
    flags = np.asarray(out["opt_flags"])
    assert flags[0] & Flag.EDGE and not flags[0] & Flag.unusable()
    assert not out["opt_p_a"].mask[0]
    assert not flags[1] & Flag.unusable() and not out["opt_p_a"].mask[1]


@pytest.mark.parametrize("ra0, dec0", [(84.0, 10.0), (86.0, -30.0), (40.0, 84.0)])
def test_stamp_cut_by_the_limb_of_a_sin_image_keeps_its_placed_pixels(ra0, dec0):
    """A stamp that the limb of a SIN image of a hemisphere cuts, some of its 3 x 3 nodes
    past the limb (NaN pixel coordinates), was blanked whole, though part of it lies on the
    image. Now it is mapped pixel by pixel: it equals ``reproject_interp``'s where that has
    values, its pixels past the limb are NaN and count as outside (EDGE), the others not."""
    reproject_interp = pytest.importorskip("reproject").reproject_interp
    n = 400
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval, w.wcs.crpix = [0.0, 0.0], [200.5, 200.5]
    w.wcs.cdelt = [-57.3 / 199, 57.3 / 199]
    yy, xx = np.mgrid[:n, :n]
    ra, dec = w.wcs_pix2world(xx, yy, 0)  # NaN off the disk of the hemisphere
    img = (2 + np.sin(np.radians(3 * ra)) * np.cos(np.radians(dec))).astype(np.float32)
    side, scale = 24, 2400.0
    res = cut_stamps(SkyImage(img, w), [ra0], [dec0], size=side, pixel_scale=scale,
                     antialias=False)
    o = WCS(naxis=2)
    o.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    o.wcs.crval, o.wcs.crpix = [ra0, dec0], [(side + 1) / 2] * 2
    o.wcs.cdelt = [-scale / 3600, scale / 3600]
    ref = reproject_interp((img, w), o, shape_out=(side, side), order="bilinear")[0]
    # the stamp pixels that the projection places
    sy, sx = np.mgrid[:side, :side]
    placed = np.isfinite(w.world_to_pixel(o.pixel_to_world(sx, sy))[0])
    assert 0.2 < placed.mean() < 0.9
    seen = np.isfinite(ref)
    assert seen.sum() > 0.5 * placed.sum()  # (near the limb: NaN neighbours off the disk)
    np.testing.assert_allclose(res.stamps[0][seen], ref[seen], rtol=0, atol=1e-4)
    assert np.isnan(res.stamps[0][~placed]).all()
    np.testing.assert_allclose(res.outside, 1 - placed.mean())
    assert np.isfinite(res.zoom).all()


def test_edge_stamps_are_blank_only_for_blank_pixels_inside_the_image(optical_model):
    """The filled part of a stamp over the image edge is EDGE, not BLANK: BLANK counts the
    invalid pixels inside the image (as for a stamp inside it)."""
    n = 200
    img = blobs(n) + np.random.default_rng(1).normal(0, 0.05, (n, n)).astype(np.float32)
    img[:, 190:] = np.nan  # a blank strip along the right edge
    w = sky_wcs(n)
    # half over the left edge (clean inside), half over the right edge (blank strip
    # inside), inside and clean
    cat = catalogue(w, [(1, 100), (198, 100), (100, 100)])
    flags = np.asarray(astromorph.annotate(cat, (img, w), model=optical_model)["opt_flags"])
    assert flags.tolist() == [Flag.EDGE, Flag.EDGE | Flag.BLANK, 0]


@pytest.mark.parametrize("flip", [False, True])
def test_native_scale_stamps_equal_cutout2d(flip):
    """At the image's own scale on a north-up grid, a stamp is `Cutout2D` (mirrored left to
    right for an image with east to the right, CDELT1 > 0): a source on a pixel centre with
    an odd side, on a pixel corner with an even side, and at a corner of the image (the part
    off the image NaN in both). Pixel centres are integers,
    0-based here, 1-based in FITS (CRPIX)."""
    from astropy.nddata import Cutout2D

    img = blobs(count=60)
    w = sky_wcs(rot=0, flip=flip)
    image = SkyImage(img, w)
    for x, y, side in ((100.0, 80.0, 15), (100.5, 80.5, 16), (3.0, 196.0, 15)):
        c = w.pixel_to_world(x, y)
        res = cut_stamps(image, [c.ra.deg], [c.dec.deg], size=side, pixel_scale=0.4)
        ref = Cutout2D(img, c, side, wcs=w, mode="partial", fill_value=np.nan).data
        # equal up to float32 rounding of the coordinates (NaN off the image in both)
        np.testing.assert_allclose(res.stamps[0], np.fliplr(ref) if flip else ref, rtol=0,
                                   atol=1e-6 * img.max())
    ra, dec = w.all_pix2world(101.0, 81.0, 1)   # FITS pixel (101, 81) = array [80, 100]
    res = cut_stamps(image, [ra], [dec], size=15, pixel_scale=0.4)
    assert res.stamps[0, 7, 7] == img[80, 100]


def test_annotate_on_a_dec_first_wcs_equals_the_ra_first_image(optical_model):
    """An image whose WCS has Dec as its first axis (the transpose of an RA-first one) had
    every source placed with RA and Dec swapped: all flagged OFF_IMAGE, with no word. It now
    gives the columns of the same pixels transposed with an RA-first WCS."""
    img, w = blobs(), sky_wcs()
    wt = WCS(naxis=2)
    wt.wcs.ctype = ["DEC--TAN", "RA---TAN"]
    wt.wcs.crval, wt.wcs.crpix = w.wcs.crval[::-1], w.wcs.crpix[::-1]
    wt.wcs.cd = w.wcs.cd[::-1, ::-1]
    cat = catalogue(w, np.random.default_rng(3).uniform(20, 180, (12, 2)))
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    out = astromorph.annotate(cat, (np.ascontiguousarray(img.T), wt), model=optical_model)
    np.testing.assert_array_equal(out["opt_flags"], ref["opt_flags"])
    assert not (ref["opt_flags"] & Flag.OFF_IMAGE).any()
    assert_scores(out["opt_p_a"], ref["opt_p_a"], atol=1e-5)

def _offsets_wcs(kind):
    """WCS of a 200 x 200 image for `test_north_up_east_left_on_every_wcs`."""
    if kind == "non-square":
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval, w.wcs.crpix = [150.0, 2.2], [100, 100]
        t = np.radians(25)
        w.wcs.cd = np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]]) * [0.3, 0.45] / 3600
        return w
    if kind == "dec-first":  # axis 1 Dec, axis 2 RA (a transposed image): legal FITS
        w, plain = WCS(naxis=2), sky_wcs(rot=30)
        w.wcs.ctype = ["DEC--TAN", "RA---TAN"]
        w.wcs.crval, w.wcs.crpix = plain.wcs.crval[::-1], plain.wcs.crpix
        w.wcs.cd = plain.wcs.cd[::-1]
        return w
    return {"rotated": lambda: sky_wcs(rot=130),
            "flipped": lambda: sky_wcs(flip=True),
            "sip": lambda: sky_wcs(sip=True, sip_strength=10),
            "ra-wrap": lambda: sky_wcs(crval=(0.0, 1.0)),
            "pole": lambda: sky_wcs(rot=70, crval=(0.0, 90.0))}[kind]()


@pytest.mark.parametrize("kind", ["rotated", "flipped", "non-square", "sip", "ra-wrap", "pole",
                                  "dec-first"])
def test_north_up_east_left_on_every_wcs(kind):
    """Analytic Gaussians at known sky offsets from a source land on the stamp pixels that
    the docs promise (north up, east left), whatever the WCS: rotated, flipped, non-square
    and SIP-distorted pixels, a field across RA = 0, one about the celestial pole, and a WCS
    whose first axis is Dec (its sources were placed with RA and Dec swapped: off the
    image, or on the wrong pixels)."""
    w = _offsets_wcs(kind)
    x0, y0 = {"pole": (100.0, 112.0), "ra-wrap": (100.3, 100.6)}.get(kind, (60.0, 130.0))
    centre = w.pixel_to_world(x0, y0)
    if kind == "ra-wrap":                                 # the stamp spans RA = 0
        assert min(centre.ra.deg, 360 - centre.ra.deg) < 2 / 3600
    if kind == "pole":
        assert centre.dec.deg > 89.99
    # 5" north, 4" east, 2.5" north and 2.5" west (0.5" stamp pixels): rows up, columns left
    spots = SkyCoord([centre,
                      centre.directional_offset_by(0 * u.deg, 5 * u.arcsec),
                      centre.directional_offset_by(90 * u.deg, 4 * u.arcsec),
                      centre.directional_offset_by(-45 * u.deg, 2.5 * np.sqrt(2) * u.arcsec)])
    want = [(12, 12), (12, 22), (4, 12), (17, 17)]          # (column, row)
    img = gaussians((200, 200), w, spots, sigma_pix=2.0, amplitude=1.0)
    res = cut_stamps(SkyImage(img, w), [centre.ra.deg], [centre.dec.deg], size=25,
                     pixel_scale=0.5)
    assert res.outside[0] == 0 and res.blank[0] == 0
    stamp = res.stamps[0]
    rows, cols = np.mgrid[:25, :25]
    for col, row in want:
        # each spot is the brightest pixel of its 3 x 3 neighbourhood...
        patch = stamp[row - 1:row + 2, col - 1:col + 2]
        assert patch[1, 1] == patch.max() and patch[1, 1] > 0.5
        # ...and is centred on it, to a small fraction of a stamp pixel
        weight = np.where((abs(cols - col) <= 2) & (abs(rows - row) <= 2), stamp, 0)
        assert abs((weight * cols).sum() / weight.sum() - col) < 0.05
        assert abs((weight * rows).sum() / weight.sum() - row) < 0.05


@pytest.mark.parametrize("kind", ["non-square", "ra-wrap", "pole"])
def test_cutouts_match_reproject_interp_on_unusual_wcs(kind):
    """Like `test_cutouts_match_reproject_interp`, for non-square pixels, a field across
    RA = 0 and one about the celestial pole."""
    img, w = blobs(count=60), _offsets_wcs(kind)
    src = w.pixel_to_world([60.0, 140.0, 100.0], [130.0, 70.0, 112.0])
    res = cut_stamps(SkyImage(img, w), src.ra.deg, src.dec.deg, size=2 * SIZE,
                     pixel_scale=SCALE, antialias=False)
    np.testing.assert_allclose(res.stamps, reprojected_stamps(img, w, src),
                               atol=1e-4 * img.max())


@pytest.mark.parametrize("ctype", ["CAR", "AIT"])
def test_stamps_across_the_longitude_seam_of_an_all_sky_map(ctype):
    """An all-sky map of CRVAL1 = 180 has RA = 0 at its left and right edges: a stamp across
    it has its pixels on both edges of the image. Its 3 x 3 nodes were interpolated across
    the seam, so that the stamp was sampled along the whole width of the map (values of RA
    56, 134, 236 degrees on a stamp at RA 0), a third of it 'off the image' (EDGE), and its
    block-averaging factor was the map's width. Now such a stamp is mapped pixel by pixel:
    it equals ``reproject_interp``'s (where that has values: it leaves the outer half pixel
    of the map NaN), with no pixel outside, and so does the stamp of a source on the seam
    of a Galactic map (GLON = 180)."""
    reproject_interp = pytest.importorskip("reproject").reproject_interp
    nx, ny = 720, 360
    w = WCS(naxis=2)
    w.wcs.ctype = [f"RA---{ctype}", f"DEC--{ctype}"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [180, 0], [nx / 2 + 0.5, ny / 2 + 0.5], [-0.5, 0.5]
    yy, xx = np.mgrid[:ny, :nx]
    ra, dec = w.wcs_pix2world(xx, yy, 0)
    # smooth on the sphere, so across the seam too (NaN off the AIT ellipse)
    img = (2 + np.sin(np.radians(3 * ra)) * np.cos(np.radians(dec))).astype(np.float32)
    image = SkyImage(img, w)
    side, scale = 15, 900.0
    ra0, dec0 = np.array([359.8, 0.3, 0.6, 180.0]), np.array([-20.0, 40.0, 5.0, 0.0])
    res = cut_stamps(image, ra0, dec0, size=side, pixel_scale=scale, antialias=False)
    for k in range(len(ra0)):
        o = WCS(naxis=2)
        o.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        o.wcs.crval, o.wcs.crpix = [ra0[k], dec0[k]], [(side + 1) / 2] * 2
        o.wcs.cdelt = [-scale / 3600, scale / 3600]
        ref = reproject_interp((img, w), o, shape_out=(side, side), order="bilinear")[0]
        # (reproject leaves the outer half pixel of the map's edges, along the seam, NaN;
        # the pixels of an AIT map off its ellipse are NaN, blank in both)
        seen = np.isfinite(ref)
        assert seen.mean() > 0.6
        np.testing.assert_allclose(res.stamps[k][seen], ref[seen], rtol=0, atol=1e-4)
    assert (res.outside == 0).all()
    if ctype == "CAR":
        assert (res.blank == 0).all()
        np.testing.assert_allclose(res.zoom, 0.5, rtol=1e-3)
    # the default block averaging: factors 1 at a zoom of 0.5 (not the map's width)
    again = cut_stamps(image, ra0, dec0, size=side, pixel_scale=scale)
    np.testing.assert_array_equal(again.stamps, res.stamps)
    # a Galactic map: a source on its seam, cut with `annotate`'s ICRS north up
    g = WCS(naxis=2)
    g.wcs.ctype = [f"GLON-{ctype}", f"GLAT-{ctype}"]
    g.wcs.crval, g.wcs.crpix, g.wcs.cdelt = [0, 0], w.wcs.crpix, w.wcs.cdelt
    glon, glat = g.wcs_pix2world(xx, yy, 0)
    gimg = (2 + np.sin(np.radians(3 * glon)) * np.cos(np.radians(glat))).astype(np.float32)
    src = SkyCoord(l=180.2 * u.deg, b=3.0 * u.deg, frame="galactic")
    from astromorph._annotate import _sky_positions

    (lon, lat, _, _, up), = _sky_positions([SkyImage(gimg, g)], SkyCoord(src.icrs.ra,
                                                                          src.icrs.dec))
    res = cut_stamps(SkyImage(gimg, g), lon, lat, size=side, pixel_scale=scale, up_angle=up)
    o = WCS(naxis=2)
    o.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    o.wcs.crval, o.wcs.crpix = [src.icrs.ra.deg, src.icrs.dec.deg], [(side + 1) / 2] * 2
    o.wcs.cdelt = [-scale / 3600, scale / 3600]
    ref = reproject_interp((gimg, g), o, shape_out=(side, side), order="bilinear")[0]
    seen = np.isfinite(ref)
    assert seen.mean() > 0.6
    np.testing.assert_allclose(res.stamps[0][seen], ref[seen], rtol=0, atol=1e-4)
    assert res.outside[0] == 0


def test_coarse_stamps_on_a_sip_image_are_interpolated_and_seam_stamps_mapped_exactly():
    """The check of the 3x3 nodes of `_pixel_maps` is in stamp pixels where these are
    coarser than the image's (what a stamp sampled from a level of blocks can resolve):
    stamps of 64 10"/pixel pixels on a 0.2"/pixel SIP image (a large nearby galaxy's) missed
    0.05 image pixel, a thousandth of a stamp pixel, and were all mapped pixel by pixel,
    20 times slower. Their interpolated pixels are within 0.01 stamp pixel of the WCS's;
    stamps across the seam of an all-sky map are still mapped pixel by pixel, however coarse."""
    from astromorph._cutouts import _pixel_maps

    n = 8000
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 2.0], [n / 2, n / 2], [-0.2 / 3600,
                                                                         0.2 / 3600]
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[2, 0], a[0, 2], b[1, 1], a[3, 0], b[0, 3] = 2e-6, -1e-6, 1.5e-6, 1e-10, -2e-10
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    image = SkyImage(np.zeros((8, 8), np.float32), w)  # (the WCS is all _pixel_maps reads)
    ra, dec = w.all_pix2world([500.0, 7500.0, 4000.0, 7000.0], [500.0, 7500.0, 4000.0, 800.0], 0)
    k, size = len(ra), 64
    for scale in (0.2, 2.0, 10.0):
        xy, zoom, exact = _pixel_maps(image, ra, dec, size, np.full(k, scale), np.zeros(k))
        assert not exact.any(), scale
        # every pixel by the WCS, as the exact path maps them
        c = (size - 1) / 2
        rows, cols = np.mgrid[:size, :size] - c
        for j in range(k):
            sky = SkyCoord(ra[j] * u.deg, dec[j] * u.deg).spherical_offsets_by(
                -cols * scale * u.arcsec, rows * scale * u.arcsec)
            x, y = w.world_to_pixel(sky)
            miss = np.hypot(xy[0, j] - x, xy[1, j] - y) / max(1.0, zoom[j].max())
            assert miss.max() < 0.01, (scale, j, miss.max())
    # an all-sky CAR map, stamps of 2.5 degree pixels (5 map pixels) across its seam
    car = WCS(naxis=2)
    car.wcs.ctype = ["RA---CAR", "DEC--CAR"]
    car.wcs.crval, car.wcs.crpix, car.wcs.cdelt = [180, 0], [360.5, 180.5], [-0.5, 0.5]
    _, zoom, exact = _pixel_maps(SkyImage(np.zeros((360, 720), np.float32), car),
                                 np.array([359.9, 0.5]), np.array([10.0, -40.0]), 15,
                                 np.full(2, 9000.0), np.zeros(2))
    assert exact.all()
    # 5 map pixels per stamp pixel (x: 5 / cos(dec)), not the map's width
    np.testing.assert_allclose(zoom[:, 0], 5.0, rtol=0.05)
    np.testing.assert_allclose(zoom[:, 1], 5.0 / np.cos(np.radians([10.0, 40.0])), rtol=0.05)


@pytest.mark.parametrize("scale", [0.2, 0.5, 1.3])
def test_resampling_conserves_surface_brightness(scale):
    """Stamps keep the image's surface brightness (values per image pixel, as
    ``reproject_interp`` and ``reproject_adaptive`` without flux conservation give), not its
    flux: a uniform image stays uniform, and the flux of a Gaussian is the stamp's sum times
    the stamp-to-image pixel area ratio, upsampled (EXTRAPOLATED, 0.2" on 0.4" pixels) or
    downsampled (block-averaged, 1.3" on 0.4" pixels)."""
    reproject_adaptive = pytest.importorskip("reproject").reproject_adaptive

    w = sky_wcs(400, rot=30)
    image = SkyImage(np.full((400, 400), 7.0, np.float32), w)
    centre = w.pixel_to_world(200.3, 199.6)
    res = cut_stamps(image, [centre.ra.deg], [centre.dec.deg], size=33, pixel_scale=scale)
    np.testing.assert_allclose(res.stamps, 7.0, rtol=1e-6)
    sigma = 8.0                                        # image pixels (3.2")
    img = gaussians((400, 400), w, SkyCoord([centre]), sigma_pix=sigma, amplitude=1.0)
    side = int(np.ceil(12 * sigma * 0.4 / scale)) | 1  # +-6 sigma
    res = cut_stamps(SkyImage(img, w), [centre.ra.deg], [centre.dec.deg], size=side,
                     pixel_scale=scale)
    flux = 2 * np.pi * sigma ** 2                      # in image pixel units
    assert res.stamps[0].sum() * (scale / 0.4) ** 2 == pytest.approx(flux, rel=2e-3)
    o = WCS(naxis=2)
    o.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    o.wcs.crval = [centre.ra.deg, centre.dec.deg]
    o.wcs.crpix = [(side + 1) / 2] * 2
    o.wcs.cdelt = [-scale / 3600, scale / 3600]
    ref, _ = reproject_adaptive((img, w), o, shape_out=(side, side), conserve_flux=False,
                                kernel="gaussian", boundary_mode="ignore")
    # the same surface brightness; the kernels differ (bilinear, or box then bilinear,
    # against a Gaussian), which shows at a few per cent of the peak once downsampled
    assert res.stamps[0].sum() == pytest.approx(ref.sum(), rel=2e-3)
    np.testing.assert_allclose(res.stamps[0], ref, atol=0.05 if scale > 1 else 0.01)


def test_stamps_of_galactic_frame_images_have_equatorial_north_up():
    """The stamp of an image whose WCS is in Galactic coordinates is oriented like that of an
    ICRS image of the same sky (north up, east left), not with Galactic north up."""
    from astromorph._annotate import _cut_band, _sky_positions

    centre = SkyCoord(269.3, 69.7, unit="deg")       # Galactic north is 90 deg from ICRS north
    north = centre.directional_offset_by(0 * u.deg, 4 * u.arcsec)
    east = centre.directional_offset_by(90 * u.deg, 2 * u.arcsec)
    gal = sky_wcs(rot=0, crval=(centre.galactic.l.deg, centre.galactic.b.deg))
    gal.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    gal.wcs.set()
    for w in (sky_wcs(rot=0, crval=(centre.ra.deg, centre.dec.deg)), gal):
        image = SkyImage(gaussians((200, 200), w, SkyCoord([north, east])), w)
        sky = _sky_positions([image], SkyCoord([centre]))
        stamps, flags, _ = _cut_band([image], sky, 31, np.array([0.4]), np.array([0]))
        assert flags[0] == 0
        # 4" north = 10 rows up; 2" east = 5 columns left
        assert peak(stamps[0]) == (15, 25)
        assert peak(np.where(np.arange(31)[:, None] < 20, stamps[0], 0)) == (10, 15)


def ecliptic_wcs(centre, *, n=200, scale=0.4, radesys=None, equinox=None):
    """A north-up ELON-TAN/ELAT-TAN WCS (ecliptic north up) centred on ``centre`` (ICRS),
    whose CRVAL is the J2000 mean ecliptic position of ``centre`` computed independently of
    astropy's frames: ICRS rotated about the x axis by the J2000 obliquity (to the 0.02"
    of the frame bias)."""
    eps = np.radians(23.4392911)
    ra, dec = np.radians(centre.ra.deg), np.radians(centre.dec.deg)
    x, y, z = np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)
    ye, ze = y * np.cos(eps) + z * np.sin(eps), -y * np.sin(eps) + z * np.cos(eps)
    w = WCS(naxis=2)
    w.wcs.ctype = ["ELON-TAN", "ELAT-TAN"]
    w.wcs.crval = [np.degrees(np.arctan2(ye, x)) % 360, np.degrees(np.arcsin(ze))]
    w.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]      # 0-based (n - 1) / 2: the centre pixel
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    if radesys:
        w.wcs.radesys = radesys
    if equinox:
        w.wcs.equinox = equinox
    w.wcs.set()
    return w


def test_ecliptic_frame_images_are_cut_where_the_sources_are(optical_model, tmp_path):
    """An image whose WCS is in ecliptic coordinates (ELON/ELAT; wcslib sets RADESYS = ICRS)
    was read as an ICRS image by astropy's ``wcs_to_celestial_frame``: ecliptic longitude
    and latitude taken for RA and Dec put every source degrees away, here off the image.
    Now the frame is the J2000 mean ecliptic: a source at the image centre is placed at its
    centre pixel, and the stamps (ICRS north up) are those of an RA/Dec image of the same
    sky; an FK5 ecliptic image of another equinox is read in that equinox."""
    from astropy.coordinates import BarycentricMeanEcliptic
    from astropy.time import Time

    from astromorph._annotate import _cut_band, _sky_positions

    centre = SkyCoord(20.0, 5.0, unit="deg")   # ecliptic north ~20 deg from ICRS north here
    north = centre.directional_offset_by(0 * u.deg, 4 * u.arcsec)
    east = centre.directional_offset_by(90 * u.deg, 2 * u.arcsec)
    ecl = ecliptic_wcs(centre)
    assert ecl.wcs.radesys == "ICRS"
    path = tmp_path / "ecliptic.fits"
    fits.PrimaryHDU(np.zeros((200, 200), np.float32), header=ecl.to_header()).writeto(path)
    [image] = parse_sky_images(str(path))
    [(_, _, px, py, _)] = _sky_positions([image], SkyCoord([centre]))
    assert abs(px[0] - 99.5) < 0.05 and abs(py[0] - 99.5) < 0.05     # 0.02", the frame bias
    spots = SkyCoord([north, east])
    ecl_lonlat = spots.transform_to(BarycentricMeanEcliptic())
    equatorial = sky_wcs(rot=0, crval=(centre.ra.deg, centre.dec.deg))
    cut = []
    for w, pix in ((equatorial, equatorial.world_to_pixel(spots)),
                   (ecl, ecl.world_to_pixel_values(ecl_lonlat.lon.deg, ecl_lonlat.lat.deg))):
        yy, xx = np.mgrid[:200, :200]
        img = sum(a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
                  for a, x, y in zip((1.0, 0.5), *pix)).astype(np.float32)
        image = SkyImage(img, w, name="ecliptic.fits")
        sky = _sky_positions([image], SkyCoord([centre]))
        stamps, flags, _ = _cut_band([image], sky, 31, np.array([0.4]), np.array([0]))
        assert flags[0] == 0
        # 4" north = 10 rows up; 2" east = 5 columns left
        assert peak(stamps[0]) == (15, 25)
        assert peak(np.where(np.arange(31)[:, None] < 20, stamps[0], 0)) == (10, 15)
        cut.append(stamps[0])
    np.testing.assert_allclose(cut[1], cut[0], atol=0.1)   # bilinear, turned by 20 deg
    cat = Table({"ra": [centre.ra.deg], "dec": [centre.dec.deg]})
    out = astromorph.annotate(cat, (img, ecl), model=optical_model)
    assert out["opt_flags"][0] == 0
    # FK5 ecliptic of equinox 1975: its CRVAL that of the centre in that equinox
    fk5 = ecliptic_wcs(centre, radesys="FK5", equinox=1975.0)
    at_1975 = centre.transform_to(BarycentricMeanEcliptic(equinox=Time(1975.0, format="jyear")))
    assert abs(at_1975.lon.deg - fk5.wcs.crval[0]) > 0.3          # 25 years of precession
    fk5.wcs.crval = [at_1975.lon.deg, at_1975.lat.deg]
    fk5.wcs.set()
    [(_, _, px, py, _)] = _sky_positions([SkyImage(img, fk5)], SkyCoord([centre]))
    assert abs(px[0] - 99.5) < 1e-6 and abs(py[0] - 99.5) < 1e-6


@pytest.mark.parametrize("ctype, keys, why", [
    (("HLON-TAN", "HLAT-TAN"), {}, "would read them as ICRS"),
    (("ELON-TAN", "ELAT-TAN"), {"EQUINOX": 1950.0}, "RADESYS = 'FK4'"),
    (("ELON-TAN", "ELAT-TAN"), {"RADESYS": "GAPPT"}, "RADESYS = 'GAPPT'"),
    (("SLON-TAN", "SLAT-TAN"), {}, "in no celestial frame astropy knows"),
    (("TLON-TAN", "TLAT-TAN"), {}, "Earth-fixed"),
])
def test_images_in_frames_astropy_cannot_place_are_refused(optical_model, tmp_path, ctype,
                                                           keys, why):
    """Helioecliptic axes (HLON/HLAT, for which wcslib sets RADESYS = ICRS) were read as
    ICRS RA/Dec, ecliptic axes of FK4 or apparent coordinates as FK4 or (GAPPT) not at all,
    supergalactic ones stopped `annotate` with astropy's bare ValueError, and Earth-fixed
    TLON/TLAT axes (astropy's ITRS of DATE-OBS) turned sky positions into terrestrial ones:
    each is now an `InputError` naming the image and its CTYPE."""
    h = fits.Header()
    h.update(CTYPE1=ctype[0], CTYPE2=ctype[1], CRVAL1=20.0, CRVAL2=5.0, CRPIX1=100.0,
             CRPIX2=100.0, CDELT1=-1e-4, CDELT2=1e-4, **keys)
    path = tmp_path / "odd_frame.fits"
    fits.PrimaryHDU(blobs(), header=h).writeto(path)
    cat = Table({"ra": [20.0], "dec": [5.0]})
    with pytest.raises(InputError, match=rf"odd_frame\.fits.*{re.escape(repr(list(ctype)))}.*"
                                         rf"{re.escape(why)}"):
        astromorph.annotate(cat, str(path), model=optical_model)


def test_every_images_frame_is_checked_before_any_row_is_read(optical_model, tmp_path,
                                                             monkeypatch):
    """A tile in a frame astropy cannot place, after a good one: its `InputError` came only
    once the whole catalogue's positions had been read (and transformed to the good tile's
    frame); every image's frame is now checked before any row of the catalogue is read."""
    import astromorph._annotate as annotate_module

    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "good.fits", img, w.to_header())
    h = fits.Header()
    h.update(CTYPE1="HLON-TAN", CTYPE2="HLAT-TAN", CRVAL1=20.0, CRVAL2=5.0, CRPIX1=100.0,
             CRPIX2=100.0, CDELT1=-1e-4, CDELT2=1e-4)
    fits.PrimaryHDU(img, header=h).writeto(tmp_path / "odd_frame.fits")
    read = []
    positions = annotate_module._positions

    def spy(table, *args):
        read.append(len(table))
        return positions(table, *args)

    monkeypatch.setattr(annotate_module, "_positions", spy)
    cat = catalogue(w, [(50, 50), (100, 100)])
    with pytest.raises(InputError, match=r"odd_frame\.fits.*HLON-TAN"):
        astromorph.annotate(cat, [str(tmp_path / "good.fits"), str(tmp_path / "odd_frame.fits")],
                            model=optical_model)
    assert read == [0]  # check_options' look at the columns (no row), not the catalogue


def test_block_averaged_stamps_reach_every_image_edge():
    """With block averaging (3 x 3 here) a stamp 3 pixels inside the right or top edge lies
    on the image, as one 3 pixels inside the left or bottom edge does, when the image side
    (103) is no multiple of the block; an image smaller than one block still gives its mean."""
    n = 103
    img = np.ones((n, n), np.float32)
    w = sky_wcs(n, rot=0, scale=0.1)
    c = w.pixel_to_world([3.0, 99.0, 51.0, 51.0], [51.0, 51.0, 3.0, 99.0])
    res = cut_stamps(SkyImage(img, w), c.ra.deg, c.dec.deg, size=3, pixel_scale=0.3)
    assert res.zoom == pytest.approx(3, rel=1e-6)
    assert (res.outside == 0).all() and (res.stamps == 1).all()
    small = sky_wcs(8, rot=0, scale=0.1)                  # 8 x 8 pixels, 0.8" wide
    c = small.pixel_to_world(3.5, 3.5)
    res = cut_stamps(SkyImage(np.full((8, 8), 2, np.float32), small), [c.ra.deg],
                     [c.dec.deg], size=3, pixel_scale=1.0)
    assert res.stamps[0, 1, 1] == 2 and res.outside[0] == pytest.approx(8 / 9)


def test_non_square_pixels_are_averaged_and_flagged_per_axis(optical_model):
    """Pixels of 0.1" x 0.6" under stamp pixels of 0.6": 6 columns but a single row per stamp
    pixel. Stripes along x (2 columns) average out; stripes along y (2 rows) are kept, as
    ``reproject_interp`` samples them (no averaging across rows); a stamp finer than half a
    row is EXTRAPOLATED, although its pixels cover five columns."""
    from reproject import reproject_interp

    n = 120
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [150.0, 2.2], [n / 2, n / 2]
    w.wcs.cdelt = [-0.1 / 3600, 0.6 / 3600]
    yy, xx = np.mgrid[:n, :n]
    c = w.pixel_to_world([60.0], [60.0])
    along_x = SkyImage((xx % 2).astype(np.float32), w)
    res = cut_stamps(along_x, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=0.61)
    assert res.zoom[0] == pytest.approx(0.61 / 0.6, rel=1e-3)  # rows, the finer axis
    np.testing.assert_allclose(res.stamps[0], 0.5, atol=1e-6)
    along_y = (yy % 2).astype(np.float32)
    res = cut_stamps(SkyImage(along_y, w), c.ra.deg, c.dec.deg, size=SIZE + 1, pixel_scale=0.6)
    o = WCS(naxis=2)
    o.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    o.wcs.crval, o.wcs.crpix = [c.ra.deg[0], c.dec.deg[0]], [(SIZE + 2) / 2] * 2
    o.wcs.cdelt = [-0.6 / 3600, 0.6 / 3600]
    ref, _ = reproject_interp((along_y, w), o, shape_out=(SIZE + 1, SIZE + 1), order="bilinear")
    np.testing.assert_allclose(res.stamps[0], ref, atol=1e-4)
    assert np.ptp(ref) > 0.99
    w.wcs.cdelt = [-0.1 / 3600, 1.2 / 3600]
    out = astromorph.annotate(catalogue(w, [(60, 60)]), (blobs(n), w), model=optical_model)
    assert out["opt_flags"][0] == Flag.EXTRAPOLATED                 # 0.5" stamp, 1.2" rows


def test_bands_with_different_wcs_give_a_colour_stamp_aligned_on_the_sky(optical_model):
    """g, r and i images that are not pixel-aligned (ICRS north up; rotated, flipped, finer
    and shifted; Galactic with SIP distortion) of the same analytic sources give the stamps,
    and the scores, of three images sharing one WCS; a 1" shift of one band does not."""
    from astromorph._annotate import _cut_band, _sky_positions

    common = sky_wcs(rot=0)
    rng = np.random.default_rng(7)
    spots = common.pixel_to_world(*rng.uniform(20, 180, (2, 60)))
    gal = sky_wcs(rot=-15, sip=True, scale=0.35)
    gal.wcs.ctype = ["GLON-TAN-SIP", "GLAT-TAN-SIP"]
    gal.wcs.crval = [spots[0].galactic.l.deg, spots[0].galactic.b.deg]
    gal.wcs.set()
    crval = (common.wcs.crval[0] + 2e-3, common.wcs.crval[1] - 1e-3)
    wcs = {"g": common, "r": sky_wcs(300, rot=40, flip=True, scale=0.3, crval=crval), "i": gal}
    amp = {b: np.random.default_rng(k).uniform(1, 5, len(spots)) for k, b in enumerate("gri")}

    def band(b, w, shape=(200, 200)):
        return gaussians(shape, w, spots, sigma_pix=1.2 / 3600 / np.sqrt(abs(
            np.linalg.det(w.pixel_scale_matrix))), amplitude=amp[b])

    aligned = {b: (band(b, common), common) for b in "gri"}
    mixed = {b: (band(b, w, (300, 300) if b == "r" else (200, 200)), w) for b, w in wcs.items()}
    cat = catalogue(common, [(100, 100), (60, 140), (150, 50)])
    coords = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    for b in "gri":
        cut = []
        for images in (aligned, mixed):
            im = SkyImage(*images[b])
            sky = _sky_positions([im], coords)
            cut.append(_cut_band([im], sky, SIZE, np.full(3, SCALE), np.arange(3))[0])
        np.testing.assert_allclose(cut[1], cut[0], atol=0.02 * cut[0].max())
    ref = astromorph.annotate(cat, aligned, model=optical_model)
    out = astromorph.annotate(cat, mixed, model=optical_model)
    assert (np.asarray(out["opt_flags"]) == 0).all()
    assert_scores(out["opt_p_a"], ref["opt_p_a"], atol=2e-3)
    shifted = dict(mixed)
    off = sky_wcs(300, rot=40, flip=True, scale=0.3, crval=(crval[0], crval[1] + 1 / 3600))
    shifted["r"] = (mixed["r"][0], off)
    bad = astromorph.annotate(cat, shifted, model=optical_model)
    assert np.abs(bad["opt_p_a"] - ref["opt_p_a"]).max() > 5 * np.abs(out["opt_p_a"] - ref["opt_p_a"]).max()


def test_big_endian_memory_map_is_not_copied_whole(tmp_path, monkeypatch):
    """A FITS float image (big-endian, memory-mapped) that is not read whole is sampled by
    gathering the pixels under the stamps, never copied whole (to native byte order, as
    ``scipy.ndimage.map_coordinates`` would at each call: GBs for a large image), and its
    stamps are those of the same pixels in memory, bit for bit."""
    import tracemalloc

    from astromorph import _cutouts

    n = 1000
    img, w = blobs(n), sky_wcs(n)
    path = tmp_path / "image.fits"
    fits.writeto(path, img.astype(">f4"), w.to_header())
    monkeypatch.setattr(_cutouts, "RESIDENT_MAX_BYTES", 0)
    [im] = parse_sky_images(str(path))
    assert _is_memory_mapped(im.data) and im.plain
    c = w.pixel_to_world(*np.random.default_rng(3).uniform(-5, n + 5, (2, 30)))
    tracemalloc.start()
    try:
        got = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert im.resident(0) is None and peak < img.nbytes // 8, (peak, img.nbytes)
    ref = cut_stamps(SkyImage(img.astype(np.float32), w), c.ra.deg, c.dec.deg, size=SIZE,
                     pixel_scale=SCALE)
    np.testing.assert_array_equal(got.stamps, ref.stamps)
    assert np.isfinite(got.stamps).any()


def test_gzipped_fits_read_whole_gives_its_pixels(tmp_path):
    """A gzipped FITS image read whole (a dense catalogue) gives its pixels, not the
    compressed bytes at the offset where the data would lie in the plain file."""
    import gzip

    img, w = blobs(), sky_wcs()
    plain = tmp_path / "two.fits"
    fits.HDUList([fits.PrimaryHDU(img, w.to_header()),
                  fits.ImageHDU(2 * img, w.to_header())]).writeto(plain)
    path = tmp_path / "two.fits.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    c = w.pixel_to_world(*np.random.default_rng(4).uniform(10, 190, (2, 30)))
    for k, im in enumerate(parse_sky_images(str(path))):
        im.plan_samples(im.data.size)  # dense: read whole
        got = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
        assert im._resident is not None
        ref = cut_stamps(SkyImage((1 + k) * img, w), c.ra.deg, c.dec.deg, size=SIZE,
                         pixel_scale=SCALE)
        np.testing.assert_allclose(got.stamps, ref.stamps, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_compressed_images_say_they_are_decompressed_whole(tmp_path, monkeypatch, caplog):
    """Gzipped files and tile-compressed HDUs cannot be memory-mapped: a log line says so,
    and a warning naming the HDU and size above DECOMPRESS_WARN_BYTES; plain files neither."""
    import gzip
    import logging
    import warnings

    from astromorph import _images
    from astromorph._images import closing_files
    from astromorph.exceptions import AstromorphWarning

    def parse(name):
        with closing_files(parse_sky_images(str(tmp_path / name))):
            pass

    img, w = blobs().astype(np.float32), sky_wcs()
    fits.writeto(tmp_path / "plain.fits", img, w.to_header())
    (tmp_path / "image.fits.gz").write_bytes(gzip.compress((tmp_path / "plain.fits").read_bytes()))
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(img, w.to_header())]).writeto(
        tmp_path / "tiles.fits.fz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.INFO, logger="astromorph"):
            for name in ("plain.fits", "image.fits.gz", "tiles.fits.fz"):
                parse(name)
    said = [r.getMessage() for r in caplog.records if "decompressed whole" in r.getMessage()]
    assert len(said) == 2 and "image.fits.gz[0]: a compressed file" in said[0]
    assert "tiles.fits.fz[1]: a tile-compressed image" in said[1]
    monkeypatch.setattr(_images, "DECOMPRESS_WARN_BYTES", img.nbytes - 1)
    for name, k in (("image.fits.gz", 0), ("tiles.fits.fz", 1)):
        with pytest.warns(AstromorphWarning, match=rf"{name}\[{k}\]: .*0.0 GiB of pixels are "
                                                   "decompressed whole into memory"):
            parse(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse("plain.fits")



def test_files_opened_before_a_bad_image_are_closed(tmp_path, monkeypatch):
    """An image list that fails part-way (a file without WCS, a missing file) closes the
    FITS files it had opened (they used to stay open, memory map and all, until the
    garbage collector found them)."""
    from astromorph import _images

    img, w = blobs().astype(np.float32), sky_wcs()
    fits.writeto(tmp_path / "good.fits", img, w.to_header())
    fits.writeto(tmp_path / "nowcs.fits", img)
    opened, closed = [], set()
    original_open, original_close = _images._open_fits, fits.HDUList.close

    def spy_open(name):
        hdul = original_open(name)
        opened.append(hdul)
        return hdul

    def spy_close(self, *args, **kwargs):
        closed.add(id(self))
        return original_close(self, *args, **kwargs)

    monkeypatch.setattr(_images, "_open_fits", spy_open)
    monkeypatch.setattr(fits.HDUList, "close", spy_close)
    for images in ([tmp_path / "good.fits", tmp_path / "nowcs.fits"],
                   {"g": tmp_path / "good.fits", "r": tmp_path / "missing.fits"},
                   tmp_path / "nowcs.fits"):
        opened.clear()
        with pytest.raises(InputError):
            parse_sky_images(images)
        assert opened and all(id(h) in closed for h in opened)


@pytest.mark.parametrize("dtype", [">f4", "int16"])
def test_sparse_downsampled_stamps_do_not_read_the_image_whole(tmp_path, monkeypatch, dtype):
    """Stamps coarser than the image (block-averaged first) of a few sources on a
    memory-mapped image average only the blocks under them: no block-averaged copy of the
    whole image (a pass over all of it, and a quarter of it held per tile); the stamps
    equal those from the copy, which a dense catalogue still gets."""
    from astromorph import _cutouts

    img, w = blobs(), sky_wcs()
    path = tmp_path / "image.fits"
    hdu = image_hdu(img, w, dtype)
    if dtype == "int16":
        hdu.header["BLANK"] = -32768
        hdu.data[40:60, 40:60] = -32768  # blank pixels
    else:
        hdu.data[40:60, 40:60] = np.nan
    hdu.writeto(path)
    copies = []
    original = _cutouts.SkyImage._strips

    def spy(self, fy=1, fx=1):
        copies.append((fy, fx))
        return original(self, fy, fx)

    monkeypatch.setattr(_cutouts.SkyImage, "_strips", spy)
    c = w.pixel_to_world([50.0, 120.0, 150.0], [50.0, 80.0, 160.0])
    stamps = {}
    for dense in (False, True):
        [im] = parse_sky_images(str(path))
        if dense:
            im.plan_samples(im.data.size)
        stamps[dense] = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=1.0)
        assert copies == ([(2, 2)] if dense else [])  # 1"/px on 0.4"/px: blocks of 2 x 2
    np.testing.assert_allclose(stamps[False].stamps, stamps[True].stamps, rtol=1e-5,
                               atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(stamps[False].blank, stamps[True].blank)
    assert np.isnan(stamps[False].stamps[0]).any() and stamps[False].blank[0] > 0



@pytest.mark.parametrize("fy, fx", [(2, 2), (2, 3), (3, 1), (4, 5)])
def test_binned_view_equals_the_block_averaged_copy(tmp_path, fy, fx):
    """The on-demand block means of a sparse catalogue are the block-averaged copy's, bit for
    bit (which of the two a stamp is sampled from depends on how many sources share the call,
    so a row's result would too), partial blocks at the top and right edges and NaN pixels
    included, for any pair of factors."""
    from astromorph._cutouts import _BinnedView

    img = np.random.default_rng(4).normal(size=(103, 97)).astype(">f4")
    img[10:13, 20:29] = np.nan
    img[-1, -1] = np.nan
    path = tmp_path / "odd.fits"
    fits.writeto(path, img, sky_wcs(97).to_header())
    [im] = parse_sky_images(str(path))
    view = _BinnedView(im, fy, fx)
    copy = im._strips(fy, fx)
    assert view.shape == copy.shape and view.extent == (103 / fy, 97 / fx)
    np.testing.assert_array_equal(view.take(np.arange(copy.size)), copy.ravel())

# ------------------------------------------------------------------ annotate
def test_annotate_columns_flags_and_meta(optical_model):
    n = 200
    img = blobs(n)
    img[150:180, 15:45] = np.nan
    w = sky_wcs(n)
    # stamps: clean, at the edge, partly NaN, off the image, clean, all NaN
    cat = catalogue(w, [(100, 100), (1, 100), (45, 165), (5000, 5000), (60, 60), (30, 165)])
    out = astromorph.annotate(cat, (img, w), model=optical_model)
    assert out is not cat and cat.colnames == ["id", "ra", "dec"]
    for name in ("opt_p_a", "opt_p_b", "opt_p_c", "opt_label", "opt_flags"):
        assert name in out.colnames
    flags = np.asarray(out["opt_flags"])
    assert flags[0] == 0 and flags[4] == 0
    assert flags[1] & Flag.EDGE
    assert flags[2] & Flag.BLANK and not flags[2] & Flag.BAD_INPUT
    assert flags[3] & Flag.OFF_IMAGE
    assert flags[5] & Flag.BLANK and flags[5] & Flag.BAD_INPUT  # nothing left to score
    assert out["opt_p_a"].mask.tolist() == [False, False, False, True, False, True]
    assert out["opt_label"].mask.tolist() == [False, False, False, True, False, True]
    p = np.stack([out[f"opt_p_{k}"].filled(np.nan) for k in "abc"], 1)
    np.testing.assert_allclose(p[[0, 1, 2, 4]].sum(1), 1, rtol=1e-5)
    assert out.meta["astromorph_model"] == "opt"
    assert out.meta["astromorph_model_sha256"] == optical_model.sha256
    assert out.meta["astromorph_preprocessing"] == "astromorph.preprocessing.preprocess_optical"
    assert out.meta["astromorph_crop_fraction"] == 1.0  # stamps cut to the network's field
    assert out["opt_p_a"].description


def test_annotate_matches_direct_prediction(optical_model):
    """annotate == cut_stamps + the model's preprocessing + predict."""
    from astromorph.preprocessing._optical import preprocess_single_band

    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (70, 120)])
    out = astromorph.annotate(cat, (img, w), model=optical_model)
    res = cut_stamps(SkyImage(img, w), cat["ra"], cat["dec"], size=SIZE, pixel_scale=SCALE)
    x = preprocess_single_band(res.stamps, size=SIZE, crop_fraction=1.0)
    ref = optical_model.predict(x)["probabilities"]
    got = np.stack([out[f"opt_p_{k}"].filled(np.nan) for k in "abc"], 1)
    assert np.abs(ref[0] - ref[1]).max() > 0.01  # the two sources score differently
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_rows_keep_catalogue_order_across_parts(optical_model):
    """annotate cuts sources in order of image row, in parts of STAMP_CHUNK; every output row
    must still belong to its catalogue row (several parts, rows off the image and a NaN row).
    Three different bands make the tiny model's output differ from source to source."""
    from astromorph._adapters import RawStamps, prepare
    from astromorph._cutouts import STAMP_CHUNK

    rng = np.random.default_rng(4)
    w = sky_wcs()
    bands = {b: blobs(seed=k, count=80) for k, b in enumerate("gri")}
    n = 2 * STAMP_CHUNK + 77
    cat = catalogue(w, rng.uniform(-30, 230, (n, 2)))   # some sources off the image
    cat["ra"][5] = np.nan                               # a bad position
    with warns_bad_positions(1, n):
        out = astromorph.annotate(cat, {b: (img, w) for b, img in bands.items()},
                                  model=optical_model)
    ok = np.flatnonzero(np.isfinite(cat["ra"]))
    cuts = [cut_stamps(SkyImage(bands[b], w), cat["ra"][ok], cat["dec"][ok], size=SIZE,
                       pixel_scale=SCALE) for b in "gri"]
    px, py = w.world_to_pixel_values(cat["ra"][ok], cat["dec"][ok])
    inside = (px > -0.5) & (px < 199.5) & (py > -0.5) & (py < 199.5)  # centre on the image
    raw = RawStamps("bands", np.stack([c.stamps[inside] for c in cuts], 1), bands=tuple("gri"))
    ref = optical_model.predict(prepare(optical_model, raw, crop_fraction=1.0)[0])["probabilities"]
    got = np.stack([out[f"opt_p_{k}"].filled(np.nan) for k in "abc"], 1)
    assert np.isnan(got[ok[~inside]]).all() and (~inside).sum() > 10
    assert np.ptp(ref[:, 0]) > 0.01                     # outputs differ between sources
    np.testing.assert_allclose(got[ok[inside]], ref, rtol=1e-5, atol=1e-7)
    assert out["opt_flags"][5] & Flag.BAD_INPUT


def test_mosaic_equals_single_image(optical_model):
    n = 240
    img = blobs(n, count=60)
    w = sky_wcs(n, rot=0)
    cat = catalogue(w, [(60, 60), (180, 60), (118, 120), (60, 200)])
    whole = astromorph.annotate(cat, (img, w), model=optical_model)
    tiles = []
    for y0 in (0, 110):
        for x0 in (0, 110):
            tw = w.deepcopy()
            tw.wcs.crpix = [w.wcs.crpix[0] - x0, w.wcs.crpix[1] - y0]
            tiles.append((img[y0:y0 + 130, x0:x0 + 130], tw))
    mosaic = astromorph.annotate(cat, tiles, model=optical_model)
    assert_scores(mosaic["opt_p_a"], whole["opt_p_a"], rtol=1e-5)
    assert np.all(np.asarray(mosaic["opt_flags"]) == 0)


def test_mosaic_tile_with_blank_padding_gives_way_to_one_with_data(optical_model):
    """A source in the NaN padding of one tile (e.g. the corner of a rotated exposure,
    far from that array's edge) is cut from an overlapping tile that has data there, even
    nearer that tile's edge, rather than flagged BLANK and masked."""
    n = 240
    img = blobs(n, count=60)
    w = sky_wcs(n, rot=0)
    cat = catalogue(w, [(60, 60), (150, 120), (60, 200)])
    whole = astromorph.annotate(cat, (img, w), model=optical_model)
    padded = img.copy()
    padded[90:, 130:] = np.nan                       # no data there in the big tile
    right = w.deepcopy()
    right.wcs.crpix = [w.wcs.crpix[0] - 120, w.wcs.crpix[1] - 80]
    tiles = [(padded, w), (img[80:, 120:], right)]    # the source at (150, 120) is 30 pixels
    mosaic = astromorph.annotate(cat, tiles, model=optical_model)  # inside the small tile
    assert np.asarray(mosaic["opt_flags"]).tolist() == [0, 0, 0]
    assert_scores(mosaic["opt_p_a"], whole["opt_p_a"], rtol=1e-5)


def test_mosaic_tiles_of_different_pixel_scales_compare_edges_on_the_sky(optical_model):
    """Of two overlapping tiles of different pixel scales, a source is cut from the one where
    it lies farthest from the edge on the sky, not in pixels: 10" inside a 0.4"/px tile (25
    pixels) beats 3" inside a 0.1"/px one (30 pixels), whose edge the 8" stamp would cross."""
    n = 240
    img = blobs(n, count=60)
    w = sky_wcs(n, rot=0)                                # 0.4"/px, 96" wide
    cat = catalogue(w, [(n - 0.5 - 25, 120), (60, 120)])  # 25 pixels (10") inside its edge
    coarse = astromorph.annotate(cat, (img, w), model=optical_model)
    fine = sky_wcs(400, rot=0, scale=0.1)                # 40" wide, its left edge 3" left of
    x, y = fine.world_to_pixel(w.pixel_to_world(n - 0.5 - 25, 120))  # the first source
    fine.wcs.crpix = [fine.wcs.crpix[0] - x + 29.5, fine.wcs.crpix[1] - y + 200]
    tiles = [(img, w), (blobs(400, seed=1), fine)]
    mosaic = astromorph.annotate(cat, tiles, model=optical_model)
    assert np.asarray(mosaic["opt_flags"]).tolist() == [0, 0]
    assert_scores(mosaic["opt_p_a"], coarse["opt_p_a"], rtol=0)
    # in the other order too, and a source farther inside the fine tile is cut from it
    cat = catalogue(w, [(n - 0.5 - 25, 120), (n - 0.5 - 5, 120)])  # 2" inside the coarse one
    mosaic = astromorph.annotate(cat, tiles[::-1], model=optical_model)
    alone = astromorph.annotate(cat, tiles[1], model=optical_model)
    assert np.asarray(mosaic["opt_flags"]).tolist() == [0, 0]
    assert mosaic["opt_p_a"][0] == coarse["opt_p_a"][0]
    assert mosaic["opt_p_a"][1] == alone["opt_p_a"][1]


def test_three_bands_by_dict_and_headers(optical_model, tmp_path):
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    by_dict = astromorph.annotate(cat, {"g": (img, w), "r": (img * 2, w), "i": (img * 3, w)},
                                  model=optical_model)
    paths = []
    for band, f in (("i", 3), ("g", 1), ("r", 2)):  # order must not matter
        hdr = w.to_header()
        hdr["FILTER"] = band
        paths.append(tmp_path / f"{band}.fits")
        fits.writeto(paths[-1], img * f, hdr)
    by_header = astromorph.annotate(cat, [str(p) for p in paths], model=optical_model)
    assert_scores(by_header["opt_p_a"], by_dict["opt_p_a"], rtol=1e-5)
    single = astromorph.annotate(cat, (img, w), model=optical_model)
    assert not np.allclose(single["opt_p_a"], by_dict["opt_p_a"])


def test_source_on_some_bands_only_is_a_missing_band(optical_model):
    """A source that the r and i images cover but the g image does not is MISSING_BAND
    (masked), not OFF_IMAGE, which stays for sources outside every image."""
    img, w = blobs(), sky_wcs()
    small = w.deepcopy()  # the g image covers only the lower-left 100 x 100 pixels
    cat = catalogue(w, [(50, 50), (150, 150), (5000, 5000)])
    out = astromorph.annotate(cat, {"g": (img[:100, :100], small), "r": (img, w), "i": (img, w)},
                              model=optical_model)
    flags = np.asarray(out["opt_flags"])
    assert flags[0] == 0
    assert flags[1] & Flag.MISSING_BAND and not flags[1] & Flag.OFF_IMAGE
    assert flags[2] & Flag.OFF_IMAGE and not flags[2] & Flag.MISSING_BAND
    assert out["opt_p_a"].mask.tolist() == [False, True, True]


def test_fits_scaled_integers_blank_and_big_endian(optical_model, tmp_path):
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (30, 40)])
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    scaled = tmp_path / "scaled.fits"
    hdu = fits.PrimaryHDU(img.astype(np.float64), header=w.to_header())
    hdu.scale("int16", bscale=1e-3, bzero=10.0)
    hdu.header["BLANK"] = -32768
    hdu.writeto(scaled)
    out = astromorph.annotate(cat, str(scaled), model=optical_model)
    # int16 steps of 1e-3 move a few pixels by one 8-bit display level: ~1e-3 in probability
    assert_scores(out["opt_p_a"], ref["opt_p_a"], atol=2e-3)
    assert np.abs(out["opt_p_a"] - ref["opt_p_a"]).max() > 0  # the data really were integers
    [im] = parse_sky_images(str(scaled))
    assert _is_memory_mapped(im.data)
    big = tmp_path / "big.fits"
    fits.writeto(big, img.astype(">f4"), w.to_header())
    out = astromorph.annotate(cat, str(big), model=optical_model)
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-6)


def test_positions_from_skycoord_and_quantities(optical_model):
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)], unit=None)
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    q = QTable({"RAJ2000": cat["ra"] * u.deg, "DEJ2000": (cat["dec"] * u.deg).to(u.arcmin)})
    assert_scores(astromorph.annotate(q, (img, w), model=optical_model)["opt_p_a"],
                  ref["opt_p_a"], rtol=1e-6)
    s = Table({"pos": SkyCoord(cat["ra"], cat["dec"], unit="deg").galactic})
    assert_scores(astromorph.annotate(s, (img, w), model=optical_model)["opt_p_a"],
                  ref["opt_p_a"], rtol=1e-5)
    named = Table({"alpha": cat["ra"], "delta": cat["dec"]})
    out = astromorph.annotate(named, NDData(img, wcs=w), model=optical_model, ra_col="alpha",
                              dec_col="delta")
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-6)


def test_text_columns_from_csv(optical_model, tmp_path):
    """Positions and sizes read as text (a CSV with sexagesimal angles or a stray word):
    sexagesimal RA is hours, Dec degrees, decimal text is degrees; what does not parse is a
    flagged row (BAD_INPUT only), never a crash."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90), (120, 60), (90, 90)])
    c = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    ra = [c[0].ra.to_string(u.hourangle, sep=":", precision=7),
          f"{cat['ra'][1]:.8f}", "not an angle", c[3].ra.to_string(u.hourangle, sep="hms", precision=7)]
    dec = [c[0].dec.to_string(u.deg, sep=":", precision=6, alwayssign=True),
           f"{cat['dec'][1]:.8f}", f"{cat['dec'][2]:.8f}", c[3].dec.to_string(u.deg, precision=6)]
    size = ["3", "3", "3", "n/a"]
    (tmp_path / "cat.csv").write_text("id,ra,dec,size\n" + "".join(
        f"{i},{r},{d},{z}\n" for i, r, d, z in zip(cat["id"], ra, dec, size)))
    text = Table.read(tmp_path / "cat.csv")
    assert text["ra"].dtype.kind == "U" and text["size"].dtype.kind == "U"
    with warns_bad_positions(1, 4):
        out = astromorph.annotate(text, (img, w), model=optical_model)
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    for i in (0, 1, 3):  # the same sources as from the numeric columns
        np.testing.assert_allclose(out["opt_p_a"][i], ref["opt_p_a"][i], rtol=1e-4)
    assert out["opt_flags"][2] == Flag.BAD_INPUT and out["opt_p_a"].mask[2]
    # sexagesimal RA is hours: '150:00:00' (degrees written as hours) is no position
    text["ra"][0] = "150:00:00"
    with warns_bad_positions(2, 4):
        out = astromorph.annotate(text, (img, w), model=optical_model)
    assert out["opt_flags"][0] == Flag.BAD_INPUT
    with warns_bad_positions(3, 4):  # and row 3's size
        sized = astromorph.annotate(text, (img, w), model="morphology", size_col="size",
                                    progress=False)
    assert sized["morph_flags"][3] == Flag.BAD_INPUT and sized["morph_label"].mask[3]


def test_size_column_scales_stamps_by_the_card_factor(optical_model, tmp_path):
    """size_col: the stamp side is the card's stamp_size_per_petro_r90 times the radius
    (arcsec when the column has no unit, else converted): the same as stamp_size= that side."""
    import shutil

    d = tmp_path / "petro"
    d.mkdir()
    shutil.copy(optical_model.path, d / "model.onnx")
    card = json.loads(json.dumps(optical_model.card))
    card["input"]["angular_size"] = {"kind": "petrosian", "stamp_size_per_petro_r90": 3.0}
    (d / "card.json").write_text(json.dumps(card))
    model = astromorph.load_model(d)
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (70, 120)])
    cat["r90"] = [2.0, 2.0]                             # arcsec
    cat["r90_arcmin"] = [2.0 / 60, 2.0 / 60] * u.arcmin
    cols = [f"opt_p_{k}" for k in "abc"]
    fixed = astromorph.annotate(cat, (img, w), model=model, stamp_size=6.0 * u.arcsec)
    other = astromorph.annotate(cat, (img, w), model=model, stamp_size=8.0 * u.arcsec)
    assert max(abs(fixed[c][0] - other[c][0]) for c in cols) > 1e-3  # the side matters
    for size_col in ("r90", "r90_arcmin"):
        sized = astromorph.annotate(cat, (img, w), model=model, size_col=size_col)
        for c in cols:
            assert_scores(sized[c], fixed[c], rtol=1e-5)
    # both: which was meant is unknown (stamp_size used to win, the column silently unused)
    with pytest.raises(InvalidArgumentError, match=r"size_col='r90' or stamp_size=6\.0 arcsec"):
        astromorph.annotate(cat, (img, w), model=model, size_col="r90", stamp_size=6.0 * u.arcsec)
    if importlib.util.find_spec("dask"):  # refused before any partition is made, as well
        fits.writeto(d / "image.fits", img, w.to_header())
        with pytest.raises(InvalidArgumentError, match="not both"):
            astromorph.annotate_dask(cat, str(d / "image.fits"), model=str(d), size_col="r90",
                                     stamp_size=6.0 * u.arcsec, compute=False)


def test_extrapolated_and_small_edge_overhang_are_flagged(optical_model):
    """EXTRAPOLATED where a stamp pixel covers less than half an image pixel (zoom < 0.5);
    EDGE for a stamp with a single column off the image."""
    img, w = blobs(), sky_wcs(rot=0)
    cat = catalogue(w, [(100, 100), (8.5, 100)])
    coarse = astromorph.annotate(cat, (img, w), model=optical_model)  # 0.5" on 0.4" pixels
    assert coarse["opt_flags"][0] == 0
    assert coarse["opt_flags"][1] & Flag.EDGE                         # 1 of 16 columns off
    fine = astromorph.annotate(cat, (img, w), model=optical_model, stamp_size=2 * u.arcsec)
    assert fine["opt_flags"][0] == Flag.EXTRAPOLATED                  # 0.125" on 0.4" pixels
    assert not fine["opt_p_a"].mask[0]


def test_declination_beyond_the_pole_is_a_flagged_row(optical_model):
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    cat["dec"][1] = 95.0
    with warns_bad_positions(1, 2):
        out = astromorph.annotate(cat, (img, w), model=optical_model)
    assert out["opt_flags"][1] == Flag.BAD_INPUT and out["opt_p_a"].mask[1]
    assert out["opt_flags"][0] == 0 and not out["opt_p_a"].mask[0]


def test_nan_positions_are_flagged_not_fatal(optical_model):
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    cat["ra"][1] = np.nan
    with warns_bad_positions(1, 2):
        out = astromorph.annotate(cat, (img, w), model=optical_model)
    assert out["opt_flags"][1] & Flag.BAD_INPUT and out["opt_p_a"].mask[1]
    assert not out["opt_p_a"].mask[0]


def test_skycoord_in_a_frame_that_cannot_reach_the_image_is_an_input_error(optical_model):
    """A SkyCoord column in a frame that cannot be transformed to the image's (AltAz without
    an observer's location and time) raised AttributeError ('NoneType' object has no
    attribute 'to_geodetic') from astropy's transform; it is an InputError naming both
    frames."""
    img, w = blobs(), sky_wcs()
    pos = SkyCoord(alt=[10, 20] * u.deg, az=[1, 2] * u.deg, frame="altaz")
    with pytest.raises(InputError, match="altaz.*icrs"):
        astromorph.annotate(Table({"pos": pos}), (img, w), model=optical_model)

def test_nan_or_masked_skycoord_positions_are_bad_input(optical_model):
    """A SkyCoord column with a NaN or masked position is BAD_INPUT (and nothing else), as
    RA/Dec columns are; it used to come out as OFF_IMAGE."""
    from astropy.utils.masked import Masked

    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90), (120, 60)], unit=None)
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    ra = np.array(cat["ra"], dtype=float)
    ra[1] = np.nan
    for pos in (SkyCoord(ra * u.deg, cat["dec"] * u.deg).galactic,
                SkyCoord(Masked(np.array(cat["ra"]) * u.deg, mask=[False, True, False]),
                         cat["dec"] * u.deg)):
        with warns_bad_positions(1, 3):
            out = astromorph.annotate(Table({"pos": pos}), (img, w), model=optical_model)
        assert out["opt_flags"][1] == Flag.BAD_INPUT and out["opt_p_a"].mask[1]
        assert_scores(out["opt_p_a"][[0, 2]], ref["opt_p_a"][[0, 2]], rtol=1e-5)
        assert list(out["opt_flags"][[0, 2]]) == list(ref["opt_flags"][[0, 2]])


def test_position_and_size_columns_of_no_number_kind_are_refused(optical_model):
    """A boolean RA/Dec column used to be read as degrees (True = 1 deg, the row scored at
    the wrong place without a flag), a complex one by its real part, dates as days since
    1970: an InputError naming the column, as for a column in a unit that is no angle."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (70, 120)])
    for col, values, kind in (("ra", [True, False], "booleans"),
                              ("dec", cat["dec"] + 0j, "complex numbers"),
                              ("ra", np.array(["2020-01-01", "2020-01-02"], "datetime64[D]"),
                               "dates")):
        bad = cat.copy()
        bad[col] = values
        with pytest.raises(InputError, match=f"position column '{col}' holds {kind}"):
            astromorph.annotate(bad, (img, w), model=optical_model)
    sized = cat.copy()
    sized["r90"] = [True, True]
    with pytest.raises(InputError, match="size column 'r90' holds booleans"):
        astromorph.annotate(sized, (img, w), model=optical_model, size_col="r90")
    # integer and unsigned columns are numbers: still accepted (rounded, off the image)
    ok = cat.copy()
    ok["dec"] = np.round(ok["dec"]).astype(np.int16)
    with pytest.warns(UnusableInputWarning, match="no source lies on the images"):
        out = astromorph.annotate(ok, (img, w), model=optical_model)
    assert (out["opt_flags"] == Flag.OFF_IMAGE).all()


def test_catalogue_errors(optical_model):
    img, w = blobs(), sky_wcs()
    with pytest.raises(InputError, match="no RA or Dec column"):
        astromorph.annotate(Table({"x": [1.0]}), (img, w), model=optical_model)
    with pytest.raises(InputError, match="no column 'nope'"):
        astromorph.annotate(catalogue(w, [(1, 1)], unit=None), (img, w),
                            model=optical_model, ra_col="nope")
    # an empty name (--ra-col "$UNSET") is a missing column, not "find the column by name"
    for option in ("ra_col", "dec_col"):
        with pytest.raises(InputError, match="no column ''"):
            astromorph.annotate(catalogue(w, [(1, 1)], unit=None), (img, w), model=optical_model,
                                **{option: ""})
    with pytest.raises(InputError, match="Table"):
        astromorph.annotate({"ra": [1]}, (img, w), model=optical_model)
    # position columns that are no angles, or a coord_col that is no SkyCoord: InputError
    # naming the column, not astropy's UnitConversionError / SkyCoord's ValueError
    bad_unit = QTable(catalogue(w, [(100, 100)], unit=None))
    bad_unit["ra"] = bad_unit["ra"] * u.mag
    with pytest.raises(InputError, match="position column 'ra' is in mag, not an angle"):
        astromorph.annotate(bad_unit, (img, w), model=optical_model)
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer"):
        astromorph.annotate(catalogue(w, [(100, 100)], unit=None), (img, w), model=optical_model,
                            batch_size=0)
    with pytest.raises(InputError, match="coord_col 'ra' is not a SkyCoord column"):
        astromorph.annotate(catalogue(w, [(100, 100)], unit=None), (img, w), model=optical_model,
                            coord_col="ra")
    # a position column of several values per row, or threads that are no whole number:
    # InputError / InvalidArgumentError, not numpy's broadcasting ValueError or int()'s
    wide = catalogue(w, [(100, 100), (70, 120)], unit=None)
    wide["ra"] = np.stack([wide["ra"]] * 2, axis=1)
    # (its values per row named: the check on no row said 'got shape (0, 2)')
    with pytest.raises(InputError, match=r"position column 'ra' must hold one value per row, "
                                         r"got 2 \(shape \(2,\) per row\)"):
        astromorph.annotate(wide, (img, w), model=optical_model)
    for bad in ("x", 1.5, -1):
        with pytest.raises(InvalidArgumentError, match="threads"):
            astromorph.annotate(catalogue(w, [(100, 100)], unit=None), (img, w),
                                model=optical_model,
                                threads=bad)
    # a stamp size that is no angle is a mistake in the call, not a flag on every row
    cat = catalogue(w, [(100, 100)], unit=None)
    for bad in (-3, 0, np.nan, "abc", 2 * u.kg):
        with pytest.raises(InvalidArgumentError, match="stamp_size"):
            astromorph.annotate(cat, (img, w), model=optical_model, stamp_size=bad)
    out = astromorph.annotate(cat, (img, w), model=optical_model, stamp_size=8 * u.arcsec)
    assert out["opt_flags"][0] == 0
    cat["r90"] = [2.0] * u.kg
    with pytest.raises(InputError, match="'r90' is in kg, not an angle"):
        astromorph.annotate(cat, (img, w), model=optical_model, size_col="r90")


def test_empty_catalogue(optical_model):
    img, w = blobs(), sky_wcs()
    out = astromorph.annotate(Table({"ra": np.zeros(0), "dec": np.zeros(0)}), (img, w),
                              model=optical_model)
    assert len(out) == 0 and "opt_p_a" in out.colnames


def test_image_pixel_types(optical_model):
    """float16 pixels are sampled like float32 ones (scipy refused them: RuntimeError "data
    type not supported"); complex, object or string pixels are an InputDTypeError (an
    InputError) naming the dtype
    (a complex image was scored on its real part without a word); an empty dict of images is
    an InputError (was an IndexError)."""
    from astropy.nddata import NDData

    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (70, 120)])
    ref = astromorph.annotate(cat, (img.astype(np.float16).astype(np.float32), w),
                              model=optical_model)
    out = astromorph.annotate(cat, (img.astype(np.float16), w), model=optical_model)
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-6)
    for bad in (img.astype(complex), img.astype(object), img.astype(str)):
        with pytest.raises(InputDTypeError, match=f"real numbers, got dtype {bad.dtype}"):
            astromorph.annotate(cat, (bad, w), model=optical_model)
    with pytest.raises(InputDTypeError, match="real numbers, got dtype complex"):
        astromorph.annotate(cat, NDData(img.astype(complex), wcs=w), model=optical_model)
    with pytest.raises(InputError, match="no images given"):
        astromorph.annotate(cat, {}, model=optical_model)


def test_missing_and_non_celestial_wcs(optical_model, tmp_path):
    img = blobs()
    cat = catalogue(sky_wcs(), [(100, 100)])
    fits.writeto(tmp_path / "nowcs.fits", img)
    with pytest.raises(InputError, match="no celestial WCS"):
        astromorph.annotate(cat, str(tmp_path / "nowcs.fits"), model=optical_model)
    lin = WCS(naxis=2)
    lin.wcs.ctype = ["LINEAR", "LINEAR"]
    fits.writeto(tmp_path / "linear.fits", img, lin.to_header())
    with pytest.raises(InputError, match="no celestial WCS"):
        astromorph.annotate(cat, str(tmp_path / "linear.fits"), model=optical_model)
    # in memory, the same words and the axes it has (were "needs a celestial
    # astropy.wcs.WCS, got WCS", and "NDData image needs a celestial FITS WCS")
    for images in ((img, lin), NDData(img, wcs=lin)):
        with pytest.raises(InputError, match=r"no celestial WCS \(CTYPE = \['LINEAR', 'LINEAR'\]"):
            astromorph.annotate(cat, images, model=optical_model)
    # a WCS that wcslib cannot set up (reference Dec 120 deg) raised astropy's
    # InvalidTransformError from deep inside; now an InputError with wcslib's reason
    bad = sky_wcs(crval=(150.0, 120.0))
    for images in ((img, bad), NDData(img, wcs=bad)):
        with pytest.raises(InputError, match="(?s)its WCS cannot be used.*Ill-conditioned"):
            astromorph.annotate(cat, images, model=optical_model)
    with pytest.raises(InputError, match="does not exist"):
        astromorph.annotate(cat, str(tmp_path / "missing.fits"), model=optical_model)
    (tmp_path / "corrupt.fits").write_bytes(b"SIMPLE  = T" + b"\0" * 100)
    with pytest.raises(InputError, match="corrupt.fits"):
        astromorph.annotate(cat, str(tmp_path / "corrupt.fits"), model=optical_model)
    # a celestial WCS that cannot place anything is an error, not every source OFF_IMAGE
    nan_ref = sky_wcs()
    nan_ref.wcs.crval = [np.nan, 0.0]
    with pytest.raises(InputError, match=r"cannot place sources: CRVAL = \[nan"):
        astromorph.annotate(cat, (img, nan_ref), model=optical_model)
    nan_pix = sky_wcs()  # a NaN reference pixel: every source off the image without a word
    nan_pix.wcs.crpix = [np.nan, 50.0]
    with pytest.raises(InputError, match=r"cannot place sources: CRPIX = \[nan"):
        astromorph.annotate(cat, (img, nan_pix), model=optical_model)
    header = sky_wcs().to_header()
    for key in ("CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2"):
        header.remove(key, ignore_missing=True)
    header.update(CD1_1=1e-4, CD1_2=1e-4, CD2_1=1e-4, CD2_2=1e-4)  # rank 1
    fits.writeto(tmp_path / "singular.fits", img, header)
    with pytest.raises(InputError, match="singular.fits.*singular pixel scale matrix"):
        astromorph.annotate(cat, str(tmp_path / "singular.fits"), model=optical_model)
    # the same matrix in a WCS object (no FITS header for the reader to refuse it by)
    singular = sky_wcs()
    singular.wcs.cd = [[1e-4, 1e-4], [2e-4, 2e-4]]
    with pytest.raises(InputError, match="singular pixel scale matrix"):
        astromorph.annotate(cat, (img, singular), model=optical_model)



@pytest.mark.parametrize("keys, named", [
    # zero row and column: wcslib filled in 1 degree/pixel and annotate cut its stamps so
    (dict(CD1_1=0.0, CD1_2=0.0, CD2_2=1e-4), r"CD1_1 = 0, CD1_2 = 0"),
    (dict(CD1_1=0.0, CD1_2=0.0, CD2_1=1e-4, CD2_2=1e-4), r"CD1_1 = 0, CD1_2 = 0"),
    (dict(CD1_1=-1e-4, CD1_2=0.0, CD2_1=0.0, CD2_2=0.0), r"CD2_1 = 0, CD2_2 = 0"),
    (dict(CDELT1=0.0, CDELT2=1e-4), r"CDELT1 = 0"),
    (dict(CDELT1=-1e-4, CDELT2=1e-4, PC2_1=0.0, PC2_2=0.0), r"PC2_1 = 0, PC2_2 = 0"),
    (dict(CDELT1=-1e-4, CDELT2=1e-4, PC1_1=1.0, PC1_2=1.0, PC2_1=2.0, PC2_2=2.0),
     r"CDELT1 = -0.0001, CDELT2 = 0.0001, PC1_1 = 1, PC1_2 = 1, PC2_1 = 2, PC2_2 = 2"),
    # no scale keyword (CTYPE, CRVAL, CRPIX alone): wcslib took FITS's default 1 degree/pixel
    (dict(), r"no CDELT1, CDELT2, CDi_j or PCi_j keyword: no pixel scale \(wcslib silently "
             r"takes FITS's default of 1 degree/pixel\)"),
    (dict(CDELT1=-1e-4), r"no CDELT2, CDi_j or PC2_j keyword: world axis 2 gets no pixel"),
], ids=["cd_zero_row_col", "cd_zero_row", "cd_zero_row2", "cdelt_zero", "pc_zero_row",
        "pc_singular", "no_scale", "no_cdelt2"])
def test_degenerate_wcs_is_an_input_error_naming_its_keywords(optical_model, tmp_path, keys,
                                                              named):
    """A CD matrix with a zero row and column (CD1_1 = CD1_2 = CD2_1 = 0) was silently
    repaired by wcslib, 1 degree/pixel filled in, and ``annotate`` cut its stamps through
    it, as through a header with no CDELTi, CDi_j or PCi_j at all (FITS's default CDELTi of
    1 degree); other singular matrices stopped it with wcslib's bare "ERROR 3 in wcsset()". Each
    is now an `InputError` naming the image and the keywords; in a multi-extension file the
    extension is skipped with a warning, as any other unusable one."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (70, 120)])
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=w.wcs.crval[0],
             CRVAL2=w.wcs.crval[1], CRPIX1=100.0, CRPIX2=100.0, **keys)
    fits.writeto(tmp_path / "degenerate.fits", img, h)
    with pytest.raises(InputError, match=rf"degenerate\.fits\[0\]: its WCS cannot place sources: "
                                         rf"{named}"):
        astromorph.annotate(cat, str(tmp_path / "degenerate.fits"), model=optical_model)
    with pytest.raises(InputError, match=rf"\(array, header\): its WCS cannot place sources: "
                                         rf"{named}"):
        astromorph.annotate(cat, (img, h), model=optical_model)
    good = w.to_header()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(img, good, name="r"),
                  fits.ImageHDU(img, h, name="bad")]).writeto(tmp_path / "mef.fits")
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    with pytest.warns(UnusableInputWarning, match=rf"mef\.fits\[2\]: .*{named}"):
        out = astromorph.annotate(cat, str(tmp_path / "mef.fits"), model=optical_model)
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-5)



def _default_scale_wcs(naxis=2, **set_):
    """An in-memory celestial WCS whose pixel scale was never set (CTYPE, CRVAL, CRPIX
    only), with the attributes ``set_`` of its ``wcs`` set."""
    w = WCS(naxis=naxis)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN", "FREQ"][:naxis]
    w.wcs.crval = [150.0, 2.2, 1.4e9][:naxis]
    w.wcs.crpix = [100.0, 100.0, 1.0][:naxis]
    for key, value in set_.items():
        setattr(w.wcs, key, value)
    return w


@pytest.mark.parametrize("set_", [dict(), dict(pc=[[1.0, 0.0], [0.0, 1.0]]),
                                  dict(pc=[[0.0, 1.0], [1.0, 0.0]]), dict(crota=[0.0, 30.0]),
                                  dict(naxis=3)],
                         ids=["nothing", "identity_pc", "swap_pc", "crota", "cube"])
def test_in_memory_wcs_without_a_pixel_scale_is_an_input_error(optical_model, set_):
    """An `astropy.wcs.WCS` built in memory whose cdelt, cd and pc were never set has
    wcslib's default of 1 degree/pixel: annotate cut its stamps through it, as it did for a
    header without CDELTi, CDi_j or PCi_j, which is refused; the WCS object is refused alike
    (in an (array, WCS) pair, in NDData, and by `pixel_scale_from_wcs`)."""
    from astromorph.preprocessing import pixel_scale_from_wcs, preprocess_radio_image

    set_ = dict(set_)
    w = _default_scale_wcs(set_.pop("naxis", 2), **set_)
    img = blobs()
    cat = catalogue(sky_wcs(), [(100, 100)])
    named = (r"its WCS cannot place sources: cdelt = \[1, 1\] and no cd or pc: no pixel "
             r"scale set \(wcslib silently takes its default of 1 degree/pixel\)")
    data = img if w.naxis == 2 else img[None]
    for images, name in (((data, w), "array"), (NDData(data, wcs=w), "NDData")):
        with pytest.raises(InputError, match=rf"^{name}: {named}"):
            astromorph.annotate(cat, images, model=optical_model)
    with pytest.raises(InputError, match=rf"^wcs: {named}"):
        pixel_scale_from_wcs(w)
    with pytest.raises(InputError, match=rf"^wcs: {named}"):
        preprocess_radio_image(np.zeros((300, 300)), wcs=w)


def test_in_memory_wcs_of_one_degree_pixels_given_explicitly_is_kept(optical_model):
    """1 degree/pixel said in so many words (a CD matrix, a negative CDELT1, a header with
    its CDELTi keywords) is no unset pixel scale: only wcslib's default of cdelt = [1, 1]
    without cd or pc is refused."""
    from astromorph._readers._fits import _header_scale
    from astromorph.preprocessing import pixel_scale_from_wcs

    for w in (_default_scale_wcs(cd=[[1.0, 0.0], [0.0, 1.0]]),
              _default_scale_wcs(cdelt=[-1.0, 1.0]),
              _default_scale_wcs(cdelt=[1.0, -1.0])):
        assert pixel_scale_from_wcs(w) == pytest.approx(3600.0)
    # the scale in pc (cdelt left at 1), as a header's PCi_j alone give it
    w = _default_scale_wcs(pc=[[-1e-4, 0.0], [0.0, 1e-4]])
    assert pixel_scale_from_wcs(w) == pytest.approx(0.36)
    h = _default_scale_wcs().to_header()
    assert h["CDELT1"] == 1.0 and h["CDELT2"] == 1.0  # the keywords, as written
    assert _header_scale(h) == pytest.approx(3600.0)
    img = blobs()
    cat = catalogue(sky_wcs(), [(100, 100)])
    astromorph.annotate(cat, (img, h), model=optical_model, stamp_size=8)


@pytest.mark.parametrize("keys", [
    dict(CDELT1=-1e-4, CDELT2=1e-4), dict(CDELT1=-1e-4, CDELT2=1e-4, PC1_2=0.1, PC2_1=-0.1),
    dict(CD1_1=-1e-4, CD2_2=1e-4), dict(CD1_1=-1e-4, CD1_2=1e-5, CD2_1=1e-5, CD2_2=1e-4),
    dict(PC1_1=-1e-4, PC2_2=1e-4),  # the scale in PC (CDELTi = 1): as wcslib reads it
], ids=["cdelt", "cdelt_pc", "cd_diagonal", "cd", "pc_only"])
def test_wcs_with_scale_keywords_places_sources(optical_model, keys):
    """Headers that give their pixel scale (CDELTi with or without PCi_j, CDi_j, or PCi_j
    holding it) are no degenerate WCS (`wcs_matrix_problem`): annotate scores from them, and
    the stamp readers take their pixel scale, by the fast parser and by astropy."""
    from astromorph._readers._fits import (_header_scale, _scale_from_cards,
                                           wcs_matrix_problem)

    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=w.wcs.crval[0],
             CRVAL2=w.wcs.crval[1], CRPIX1=100.0, CRPIX2=100.0, **keys)
    assert wcs_matrix_problem(h.get) is None
    scale = np.sqrt(abs(np.linalg.det(WCS(h).pixel_scale_matrix))) * 3600
    assert _scale_from_cards(h.get, h.keys()) == pytest.approx(scale)
    assert _header_scale(h) == pytest.approx(scale)
    out = astromorph.annotate(cat, (img, h), model=optical_model)
    assert not np.ma.getmaskarray(out["opt_p_a"]).any()


@pytest.mark.parametrize("cards", [
    ("CDELT1  = -2.5D-04", "CDELT2  = 2.5D-04"),
    ("CD1_1   = -2.5D-04", "CD1_2   = 0.0", "CD2_1   = 0.0", "CD2_2   = 2.5D-04"),
], ids=["cdelt", "cd"])
# (and no warning of a duplicate keyword from rewriting the card)
@pytest.mark.filterwarnings("error::astropy.utils.exceptions.AstropyUserWarning")
def test_fits_wcs_card_with_a_d_exponent_places_sources_at_its_scale(optical_model, tmp_path,
                                                                      monkeypatch, cards):
    """``CDELT1 = -2.5D-04`` (a D exponent, as FITS allows) is 2.5e-4 degrees: wcslib read
    the card as its digits before the D (-2.5 degrees/pixel), so annotate cut the source's
    stamp from the wrong pixels. A blob at a known pixel is now at the centre of its stamp,
    the image's pixel scale is 0.9 arcsec, and the scores are those of the same file written
    with E exponents."""
    from astromorph import _annotate

    n, (bx, by) = 200, (130.0, 70.0)
    yy, xx = np.mgrid[:n, :n]
    img = (0.05 + 3.0 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / 8.0)).astype(np.float32)
    common = ["CTYPE1  = 'RA---TAN'", "CTYPE2  = 'DEC--TAN'", "CRVAL1  = 150.0",
              "CRVAL2  = 2.2", "CRPIX1  = 100.0", "CRPIX2  = 100.0"]
    d_path, e_path = tmp_path / "d.fits", tmp_path / "e.fits"
    for path, exp in ((d_path, "D"), (e_path, "E")):
        h = fits.Header([fits.Card.fromstring(c.replace("D-", f"{exp}-"))
                         for c in common + list(cards)])
        fits.writeto(path, img, h)
    assert b"= -2.5D-04" in d_path.read_bytes()  # written as given
    right = WCS(fits.getheader(e_path))
    cat = catalogue(right, [(bx, by)])
    seen = []

    def spy(image, *args, **kwargs):
        res = cut(image, *args, **kwargs)
        seen.append((image.wcs.proj_plane_pixel_scales(), res.stamps))
        return res

    cut = _annotate.cut_stamps
    monkeypatch.setattr(_annotate, "cut_stamps", spy)
    out = astromorph.annotate(cat, str(d_path), model=optical_model)
    expected = astromorph.annotate(cat, str(e_path), model=optical_model)
    (scales, stamps), _ = seen
    assert [s.to_value("arcsec") for s in scales] == pytest.approx([0.9, 0.9])
    stamp = stamps[0]
    peak = np.unravel_index(np.nanargmax(stamp), stamp.shape)
    assert all(abs(p - (SIZE - 1) / 2) <= 1 for p in peak), peak
    assert np.nanmax(stamp) > 2.0  # the blob's peak, not the background
    assert out["opt_flags"][0] == 0
    assert_same_values(out, expected, out.colnames)


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # the NaN card under test
def test_nan_reference_point_in_a_fits_header_is_an_input_error(optical_model, tmp_path):
    """``CRVAL1 = NaN`` in a FITS file: wcslib reads the card as absent (0), and every
    source came out OFF_IMAGE (a catalogue near RA 0 would have been cut at the wrong
    place); it is now an `InputError` naming the keyword, as a NaN CRVAL of an in-memory
    WCS already was."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    h = w.to_header()
    h["CRVAL1"] = 123.25  # replaced by NaN in the file's bytes
    path = tmp_path / "nan_ref.fits"
    fits.writeto(path, img, h)
    path.write_bytes(path.read_bytes().replace(b" 123.25", b"    NaN", 1))
    with pytest.raises(InputError, match=r"nan_ref\.fits\[0\]: its WCS cannot place sources: "
                                         r"CRVAL1 = nan"):
        astromorph.annotate(cat, str(path), model=optical_model)


def test_wcs_with_one_celestial_axis_is_an_input_error_naming_its_ctype(optical_model,
                                                                        tmp_path):
    """RA---TAN with a LINEAR second axis: wcslib's "Unmatched celestial axes" said so
    without the axes; the error now names the CTYPEs."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="LINEAR", CRVAL1=20.0, CRVAL2=5.0, CRPIX1=100.0,
             CRPIX2=100.0, CDELT1=-1e-4, CDELT2=1e-4)
    fits.writeto(tmp_path / "half.fits", img, h)
    with pytest.raises(InputError, match=r"half\.fits\[0\]: .*CTYPE = \['RA---TAN', 'LINEAR'\]"
                                         r"(?s:.*)Unmatched celestial axes"):
        astromorph.annotate(cat, str(tmp_path / "half.fits"), model=optical_model)


def test_hdulist_and_multi_extension_files(optical_model, tmp_path):
    """An HDUList is one image source (not a list of HDUs); an unusable extension is skipped
    with a warning that says why, and a truncated file is an error, not fewer bands."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    hdus = [fits.PrimaryHDU()]
    for band, f in (("i", 3), ("r", 2), ("g", 1)):
        hdr = w.to_header()
        hdr["FILTER"] = band
        hdus.append(fits.ImageHDU(img * f, hdr, name=band))
    path = tmp_path / "gri.fits"
    fits.HDUList(hdus).writeto(path)
    ref = astromorph.annotate(cat, {"g": (img, w), "r": (img * 2, w), "i": (img * 3, w)},
                              model=optical_model)
    with fits.open(path) as hdul:
        for images in (hdul, {"g": hdul[3], "r": hdul[2], "i": hdul[1]}):
            out = astromorph.annotate(cat, images, model=optical_model)
            assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-5)
    out = astromorph.annotate(cat, str(path), model=optical_model)
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-5)
    # one extension without a celestial WCS: skipped, and the warning names it
    with fits.open(path) as hdul:
        hdul[2].header["CTYPE1"], hdul[2].header["CTYPE2"] = "LINEAR", "LINEAR"
        hdul.writeto(tmp_path / "bad_r.fits")
    with pytest.warns(UnusableInputWarning, match=r"bad_r.fits\[2\]: no celestial WCS") as rec:
        # images can be read in two ways (g+i, or one band): the category predict_files
        # uses for its own guesses, so one filter covers both
        with pytest.warns(AmbiguousInputWarning, match="using band"):
            astromorph.annotate(cat, str(tmp_path / "bad_r.fits"), model=optical_model)
    # attributed to the caller's line, not to astromorph/_images.py
    assert {w.filename for w in rec if w.category is UnusableInputWarning} == {__file__}
    # a truncated file loses its last extensions: an error, never a silent single band
    (tmp_path / "cut.fits").write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated"):
        astromorph.annotate(cat, str(tmp_path / "cut.fits"), model=optical_model)


@pytest.mark.parametrize("key, values", [("BSCALE", (2.0, 3.0)), ("BZERO", (1.0, 5.0))])
def test_repeated_scaling_keyword_with_two_values_is_an_input_error(optical_model, tmp_path,
                                                                    key, values):
    """An image whose header gives BSCALE (BZERO) twice with different values is an
    `InputError` naming the file, the keyword and both values (astropy scales by the last
    copy, reads the first: which is meant is unknown); two equal copies read as one."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    raw = np.round(img * 100).astype(np.int16)
    for given in (values, values[:1], values[:1] * 2):
        hdu = fits.PrimaryHDU(raw, w.to_header())
        for value in given:
            hdu.header.append((key, value), end=True)
        hdu.writeto(tmp_path / f"{len(set(given))}{len(given)}.fits", output_verify="ignore")
    with pytest.raises(InputError, match=re.escape(f"22.fits[0]: {key} is given 2 times, "
                                                   f"with different values {values}")):
        astromorph.annotate(cat, str(tmp_path / "22.fits"), model=optical_model)
    once = astromorph.annotate(cat, str(tmp_path / "11.fits"), model=optical_model)
    same = astromorph.annotate(cat, str(tmp_path / "12.fits"), model=optical_model)
    assert_scores(same["opt_p_a"], once["opt_p_a"], rtol=0)


def test_many_unusable_extensions_are_one_warning(optical_model, tmp_path):
    """A file with many extensions annotate cannot use (no celestial WCS: weight or mask
    planes): one warning for the file, how many and why (the first five), not one each."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    hdus = [fits.PrimaryHDU(img, w.to_header())] + [fits.ImageHDU(img) for _ in range(7)]
    fits.HDUList(hdus).writeto(tmp_path / "mef.fits")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate(cat, str(tmp_path / "mef.fits"), model=optical_model)
    texts = [str(w.message) for w in caught if w.category is UnusableInputWarning]
    assert len(texts) == 1, texts
    assert texts[0].startswith("skipping 7 image HDU(s) of ")
    assert "mef.fits[1]: no celestial WCS" in texts[0] and texts[0].endswith("; and 2 more")
    assert {w.filename for w in caught if w.category is UnusableInputWarning} == {__file__}
    assert np.all(out["opt_flags"] == 0)


def test_radio_style_4d_images_in_every_form(optical_model, tmp_path):
    """An image with degenerate FREQ and STOKES axes (shape (1, 1, ny, nx), as radio images
    come) is read alike from a path, an HDUList, a bare HDU, an (array, WCS) pair and an
    NDData; a bare HDU and an (array, WCS) pair were refused as "expected a 2D image"."""
    img, w2 = blobs(), sky_wcs()
    w = WCS(naxis=4)
    w.wcs.ctype = list(w2.wcs.ctype) + ["FREQ", "STOKES"]
    w.wcs.crval = list(w2.wcs.crval) + [1.4e9, 1]
    w.wcs.crpix = list(w2.wcs.crpix) + [1, 1]
    w.wcs.cd = np.diag([1.0, 1.0, 1e6, 1.0])
    w.wcs.cd[:2, :2] = w2.wcs.cd
    cube = img[None, None]
    hdu = fits.PrimaryHDU(cube, header=w.to_header())
    hdu.writeto(tmp_path / "cube.fits")
    cat = catalogue(w2, [(100, 100), (80, 90)])
    ref = astromorph.annotate(cat, (img, w2), model=optical_model)
    for images in (str(tmp_path / "cube.fits"), fits.HDUList([hdu]), hdu, (cube, w),
                   NDData(cube, wcs=w)):
        out = astromorph.annotate(cat, images, model=optical_model)
        assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-5)


def test_cube_with_a_degenerate_spectral_first_axis(optical_model, tmp_path):
    """A cube whose first axis is a degenerate FREQ axis (RA and Dec its second and third,
    shape (ny, nx, 1)) was refused with wcslib's "Non-zero off-diagonal matrix elements
    excluded from the subimage" (its WCS was read as its first two axes, FREQ and RA); its
    celestial axes are now found wherever they are, with the columns of the 2D image."""
    img, w2 = blobs(), sky_wcs()
    w = WCS(naxis=3)
    w.wcs.ctype = ["FREQ", *w2.wcs.ctype]
    w.wcs.crval, w.wcs.crpix = [1.4e9, *w2.wcs.crval], [1, *w2.wcs.crpix]
    w.wcs.cd = np.diag([1e6, 1.0, 1.0])
    w.wcs.cd[1:, 1:] = w2.wcs.cd
    fits.writeto(tmp_path / "cube.fits", img[:, :, None], w.to_header())
    cat = catalogue(w2, [(100, 100), (80, 90)])
    ref = astromorph.annotate(cat, (img, w2), model=optical_model)
    for images in (str(tmp_path / "cube.fits"), (img[:, :, None], w)):
        out = astromorph.annotate(cat, images, model=optical_model)
        np.testing.assert_array_equal(out["opt_flags"], ref["opt_flags"])
        assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-5)

def test_column_conflicts(optical_model):
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    cat["opt_label"] = ["mine"]
    with pytest.raises(InputError, match="opt_label"):
        astromorph.annotate(cat, (img, w), model=optical_model)
    out = astromorph.annotate(cat, (img, w), model=optical_model, on_conflict="suffix")
    assert out["opt_label"][0] == "mine" and "opt_label_2" in out.colnames
    # one suffix for the whole run, free for every one of its columns
    assert {"opt_p_a_2", "opt_flags_2"} <= set(out.colnames) and "opt_p_a" not in out.colnames
    cat["opt_flags_2"] = [0]
    out = astromorph.annotate(cat, (img, w), model=optical_model, on_conflict="suffix")
    assert {"opt_label_3", "opt_flags_3", "opt_p_a_3"} <= set(out.colnames)
    assert "opt_label_2" not in out.colnames
    del cat["opt_flags_2"]
    cat["after"] = [1]
    out = astromorph.annotate(cat, (img, w), model=optical_model, on_conflict="replace")
    assert out["opt_label"][0] in "abc"
    # a replaced column keeps its place; columns that were not there are appended
    assert out.colnames.index("opt_label") == cat.colnames.index("opt_label")
    assert out.colnames[-1] == "opt_flags"


def test_column_conflicts_compare_names_without_case(optical_model, tmp_path):
    """FITS compares column names (TTYPE) without regard to case, as do TOPCAT, cfitsio and
    SQL: a table with 'OPT_LABEL' gained 'opt_label' without a word, and its FITS file held
    two columns no other tool could tell apart. A name that differs only by case from a
    column of the table is now a clash like an exact one: refused (naming both), given a
    suffix free in any case, or replacing the column in its place."""
    from astromorph._io import write_table

    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    cat["OPT_LABEL"] = ["mine"]
    cat["after"] = [1]
    with pytest.raises(InputError, match="'OPT_LABEL'.*'opt_label'"):
        astromorph.annotate(cat, (img, w), model=optical_model)
    cat["Opt_Label_2"] = ["also mine"]
    out = astromorph.annotate(cat, (img, w), model=optical_model, on_conflict="suffix")
    assert out["OPT_LABEL"][0] == "mine" and out["Opt_Label_2"][0] == "also mine"
    assert {"opt_label_3", "opt_flags_3"} <= set(out.colnames)
    assert "opt_label" not in out.colnames and "opt_label_2" not in out.colnames
    write_table(out, tmp_path / "suffix.fits")
    assert Table.read(tmp_path / "suffix.fits")["OPT_LABEL"][0] == "mine"
    del cat["Opt_Label_2"]
    out = astromorph.annotate(cat, (img, w), model=optical_model, on_conflict="replace")
    assert "OPT_LABEL" not in out.colnames and out["opt_label"][0] in "abc"
    assert out.colnames.index("opt_label") == cat.colnames.index("OPT_LABEL")


def test_annotating_again_keeps_the_provenance_of_the_earlier_columns(optical_model,
                                                                      tmp_path):
    """Columns of another model (or the same model's again, with on_conflict="suffix") do not
    erase the provenance of the columns already there: the earlier run's keys are kept as
    ``astromorph_run1_*``, and every run names the columns it added."""
    from astromorph._io import write_table

    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (60, 60)])
    first = astromorph.annotate(cat, (img, w), model=optical_model)
    assert first.meta["astromorph_columns"] == "opt_p_a,opt_p_b,opt_p_c,opt_label,opt_flags"
    other = make_optical_model(tmp_path / "two", name="two", labels=("x", "y"))
    both = astromorph.annotate(first, (img, w), model=other)
    assert both.meta["astromorph_model"] == "two"
    assert both.meta["astromorph_model_sha256"] == other.sha256
    assert both.meta["astromorph_run1_model"] == "opt"
    assert both.meta["astromorph_run1_model_sha256"] == optical_model.sha256
    assert both.meta["astromorph_run1_columns"] == first.meta["astromorph_columns"]
    assert "astromorph_run1_model" not in first.meta  # the input's meta is left alone
    write_table(both, tmp_path / "both.fits")
    back = Table.read(tmp_path / "both.fits")
    assert back.meta["astromorph_run1_model_sha256"] == optical_model.sha256
    again = astromorph.annotate(both, (img, w), model=optical_model, on_conflict="suffix")
    assert again.meta["astromorph_columns"].startswith("opt_p_a_2,")
    assert again.meta["astromorph_run2_model"] == "two"
    # the same run once more, replacing its own columns: nothing earlier to keep
    same = astromorph.annotate(first, (img, w), model=optical_model, on_conflict="replace")
    assert not [k for k in same.meta if k.startswith("astromorph_run")]


def test_column_conflicts_are_refused_before_any_work(optical_model, monkeypatch):
    """on_conflict="error" refuses before any image is read or stamp scored, as the
    embedding tools do, not after the whole catalogue has been annotated."""
    cat = catalogue(sky_wcs(), [(100, 100)])
    cat["opt_flags"] = [0]
    monkeypatch.setattr(type(optical_model), "predict",
                        lambda *a, **k: pytest.fail("stamps scored before the clash was refused"))
    with pytest.raises(InputError, match="opt_flags"):
        astromorph.annotate(cat, "no-such-image.fits", model=optical_model)


def test_cli_annotate(optical_model, tmp_path):
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, [(100, 100), (5000, 0)])
    cat.write(tmp_path / "cat.ecsv")
    for ext in ("ecsv", "fits", "csv"):
        out = tmp_path / f"out.{ext}"
        # CSV holds values only: the command says what it leaves out
        with (pytest.warns(LossyOutputWarning, match="CSV keeps values only") if ext == "csv"
              else contextlib.nullcontext()):
            assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-i",
                             str(tmp_path / "img.fits"), "-m", str(optical_model.path), "-o",
                             str(out), "--no-progress", "--threads", "2"]) == 0
        t = Table.read(out)
        assert "opt_p_a" in t.colnames and len(t) == 2
        assert int(t["opt_flags"][1]) & Flag.OFF_IMAGE
    # an existing output is not overwritten silently
    assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-i", str(tmp_path / "img.fits"),
                     "-m", str(optical_model.path), "-o", str(tmp_path / "out.ecsv")]) != 0
    # a precision the model's card does not list is a clear error, not a crash
    assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-i", str(tmp_path / "img.fits"),
                     "-m", str(optical_model.path), "--precision", "int8",
                     "-o", str(tmp_path / "int8.ecsv")]) != 0
    assert not (tmp_path / "int8.ecsv").exists()


def test_cli_annotate_prints_every_row(optical_model, tmp_path, capsys):
    """Without -o the table is printed, every row of it (`astromorph annotate ... > out.txt`,
    a pipe): a catalogue of 100 rows or more printed 57 rows and '...' in the middle."""
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    catalogue(w, [(100, 100)] * 150, unit=None).write(tmp_path / "cat.ecsv")
    capsys.readouterr()
    assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-i", str(tmp_path / "img.fits"),
                     "-m", str(optical_model.path), "--no-progress", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == [str(k) for k in range(150)]


@pytest.mark.parametrize("where", ["scoring", "writing"])
def test_cli_annotate_ctrl_c_keeps_the_old_output(optical_model, tmp_path, capsys,
                                                  monkeypatch, where):
    """Ctrl-C while the stamps are scored (worker threads cutting them) or while the table
    is written: exit status 130 and one line; the file --overwrite would replace is left as
    it was, and no temporary folder is left beside it."""
    from astromorph import _io, _model

    def interrupted_predict(self, *args, **kwargs):
        raise KeyboardInterrupt

    def interrupted_write(table, path):
        with open(path, "w") as f:
            f.write("# %ECSV 1.0\n# partial")
        raise KeyboardInterrupt

    if where == "scoring":
        monkeypatch.setattr(_model.Model, "predict", interrupted_predict)
    else:
        monkeypatch.setattr(_io, "_write_ecsv", interrupted_write)
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    catalogue(w, [(100, 100)] * 50).write(tmp_path / "cat.ecsv")
    out = tmp_path / "out.ecsv"
    out.write_text("the old table")
    capsys.readouterr()
    assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-i", str(tmp_path / "img.fits"),
                     "-m", str(optical_model.path), "-o", str(out), "--overwrite",
                     "--no-progress", "--threads", "2"]) == 130
    assert capsys.readouterr().err == "astromorph: interrupted\n"
    assert out.read_text() == "the old table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.ecsv", "img.fits", "opt",
                                                          "out.ecsv"]


def test_cli_annotate_refuses_a_catalogue_fits_cannot_hold_before_any_work(
        optical_model, tmp_path, capsys, monkeypatch):
    """A catalogue with 'id' and 'ID' written to .fits: the run went to the end and wrote
    two columns FITS readers cannot tell apart; it is now refused before any image is
    read, naming both (and .ecsv, which keeps them apart, is written)."""
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, [(100, 100)])
    cat["id"], cat["ID"] = [1], [2]
    cat.write(tmp_path / "cat.ecsv")
    args = ["annotate", str(tmp_path / "cat.ecsv"), "-i", str(tmp_path / "img.fits"),
            "-m", str(optical_model.path), "--no-progress", "-o"]
    with monkeypatch.context() as m:
        m.setattr(type(optical_model), "predict", lambda *a, **k: pytest.fail("scored"))
        assert cli.main([*args, str(tmp_path / "out.fits")]) == 2
    assert "'id' and 'ID'" in capsys.readouterr().err
    assert not (tmp_path / "out.fits").exists()
    assert cli.main([*args, str(tmp_path / "out.ecsv")]) == 0
    assert {"id", "ID", "opt_label"} <= set(Table.read(tmp_path / "out.ecsv").colnames)


def test_cli_annotate_summary_line(optical_model, tmp_path, capsys):
    """`astromorph annotate` ends with the summary line `astromorph predict` gives (rows,
    model and version, how many were scored, flagged and unusable), not only "wrote N rows":
    a source off the image is otherwise not mentioned at all (it is no warning)."""
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    catalogue(w, [(100, 100), (5000, 0)]).write(tmp_path / "cat.ecsv")
    assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-i", str(tmp_path / "img.fits"),
                     "-m", str(optical_model.path), "-o", str(tmp_path / "out.ecsv"),
                     "--no-progress"]) == 0
    err = capsys.readouterr().err
    version = optical_model.card["version"]
    # (flagged: of the scored rows; the source off the image is unusable, not flagged too)
    assert re.search(rf"2 row\(s\), model \S+ {re.escape(version)}: 1 scored, 0 flagged, "
                     rf"1 unusable; table written to .*out\.ecsv", err), err


@pytest.mark.parametrize("option", [["--size-col", "r90"], ["--stamp-size", "10"],
                                    ["--band", "r"], ["--ra-col", "ra"], ["--dec-col", "dec"]])
def test_cli_image_options_without_image(tmp_path, capsys, option):
    """Options that only mean something with --image (a forgotten -i): one clear error,
    not a search for stamp columns the table does not have, nor options silently ignored."""
    Table({"ra": [1.0], "dec": [2.0], "r90": [3.0]}).write(tmp_path / "cat.ecsv")
    assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-m", "morphology",
                     *option]) == 2
    err = capsys.readouterr().err
    assert option[0] in err and "--image" in err and "stamp columns" not in err


def test_cli_table_without_stamp_columns_names_the_option(tmp_path, capsys):
    """Without --image and without stamp columns: the error says how to name them on the
    command line (--stamp-col), or to give images."""
    Table({"ra": [1.0], "dec": [2.0]}).write(tmp_path / "cat.ecsv")
    assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-m", "morphology"]) == 2
    err = capsys.readouterr().err
    assert "no stamp columns found" in err and "--stamp-col" in err and "--image" in err


@pytest.mark.parametrize("missing", ["pyarrow", "pandas"])
def test_cli_parquet_catalogue_without_its_extra(optical_model, tmp_path, monkeypatch, capsys,
                                                 missing):
    """astropy reads Parquet with pyarrow and pandas: without either, reading a .parquet
    catalogue names the module and the extra, as writing one does, instead of a traceback."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    catalogue(w, [(100, 100)]).write(tmp_path / "cat.parquet")
    monkeypatch.setitem(sys.modules, missing, None)
    for argv in (["annotate", str(tmp_path / "cat.parquet"), "-i", str(tmp_path / "img.fits"),
                  "-m", str(optical_model.path), "-o", str(tmp_path / "out.ecsv")],
                 ["similar", str(tmp_path / "cat.parquet"), "--query", "0"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"reading {str(tmp_path / 'cat.parquet')!r} needs {missing}" in err, err
        assert "astromorph[parquet]" in err
    assert not (tmp_path / "out.ecsv").exists()

def test_cli_annotate_int8_on_the_packaged_input(tmp_path):
    """--precision int8 with the shipped morphology model on the packaged HDF crop."""
    from importlib.resources import files

    data = files("astromorph") / "data"
    card = astromorph.model_card("morphology")
    if "int8" not in card.get("variants", {}):
        pytest.skip("no int8 variant")
    out = {}
    for precision in ("float32", "int8"):
        path = tmp_path / f"{precision}.ecsv"
        assert cli.main(["annotate", str(data / "hdf_sources.ecsv"), "-i", str(data / "hdf_crop.fits"),
                         "-m", "morphology", "--size-col", "r90", "--precision", precision,
                         "-o", str(path), "--no-progress"]) == 0
        out[precision] = Table.read(path)
        assert out[precision].meta["astromorph_model_precision"] == precision
    assert out["int8"].meta["astromorph_model_sha256"] == card["variants"]["int8"]["sha256"]
    # out-of-domain single-band HST data: most labels still agree with float32
    assert np.mean(out["int8"]["morph_label"] == out["float32"]["morph_label"]) > 0.9


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_annotate_dask_equals_annotate(optical_model, tmp_path, scheduler):
    pytest.importorskip("dask")
    img, w = blobs(), sky_wcs()
    img[120:140, 30:60] = np.nan  # blank rows
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    rng = np.random.default_rng(5)
    # the last source sits on the blank rows
    cat = catalogue(w, np.vstack([rng.uniform(-20, 220, (37, 2)), [[45, 130]]]))
    cat["ra"][[3, 17, 31]] = np.nan  # a row without a position in three partitions
    with warns_bad_positions(3, 38):
        ref = astromorph.annotate(cat, str(tmp_path / "img.fits"), model=optical_model)
    with warns_bad_positions(3, 38):  # one warning, counting every partition's rows
        out = astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                       model=str(optical_model.path), partition_size=10,
                                       scheduler=scheduler)
    assert len(out) == len(cat) and out.colnames == ref.colnames
    np.testing.assert_array_equal(out["opt_flags"], ref["opt_flags"])
    for flag in (Flag.BAD_INPUT, Flag.BLANK, Flag.EDGE, Flag.OFF_IMAGE):
        assert np.any(ref["opt_flags"] & flag), flag
    # bit for bit: a partition's rows are sampled as the whole table's (its image gathered
    # page by page, the whole table's read whole), and ONNX Runtime scores a row alike in
    # any batch
    np.testing.assert_array_equal(out["opt_p_a"].filled(-1), ref["opt_p_a"].filled(-1))
    assert out.meta["astromorph_model_sha256"] == optical_model.sha256
    parts = astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                     model=str(optical_model.path), partition_size=10,
                                     compute=False)
    assert len(parts) == 4
    for bad in (0, 2.5, "10"):
        with pytest.raises(InvalidArgumentError, match="partition_size"):
            astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                     model=str(optical_model.path), partition_size=bad)
    # options every partition would refuse are refused before any task is made
    for bad, match in ((dict(providers="quantum"), "quantum"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(InvalidArgumentError, match=match):
            astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                     model=str(optical_model.path), compute=False, **bad)


@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_annotate_dask_says_no_source_lies_on_the_images_past_a_partition_without_positions(
        optical_model, tmp_path, scheduler):
    """A partition whose rows all lack a position (NaN or masked RA/Dec) has no source on the
    images nor off them: it gave no "no source lies on the images" warning, so annotate_dask
    withheld that warning (given only where every partition gives it) where not one source
    of the whole table lies on the images. It now gives annotate's warning, once."""
    pytest.importorskip("dask")
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, [(-300.0 - 20 * i, 500.0 + 10 * i) for i in range(6)])  # off the image
    cat["ra"] = MaskedColumn(cat["ra"], mask=[False, True, False, False, False, False])
    cat["ra"][0] = np.nan  # the first partition: one NaN and one masked position

    def none_on_images(caught):
        return [str(x.message) for x in caught if issubclass(x.category, UnusableInputWarning)
                and str(x.message).startswith("no source lies on the images")]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = astromorph.annotate(cat, str(tmp_path / "img.fits"), model=optical_model)
    [expected] = none_on_images(caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                       model=str(optical_model.path), partition_size=2,
                                       scheduler=scheduler)
    got = none_on_images(caught)
    assert len(got) == 1 and got[0].startswith(expected), [str(x.message) for x in caught]
    assert got[0].endswith("(in 2 of 3 Dask partitions)")
    np.testing.assert_array_equal(out["opt_flags"], ref["opt_flags"])
    assert list(out["opt_flags"]) == [Flag.BAD_INPUT] * 2 + [Flag.OFF_IMAGE] * 4
    # a partition with a source on the images still keeps the warning from being given
    cat["ra"][5], cat["dec"][5] = w.pixel_to_world_values(100, 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                 model=str(optical_model.path), partition_size=2,
                                 scheduler=scheduler)
    assert not none_on_images(caught)


@pytest.mark.parametrize("ras, hint", [([5.0, 6.0, 100.0, 120.0], None),
                                       ([5.0, 6.0, 7.0, 23.0], "hours ('hourangle'),"),
                                       ([5.0, 6.0, 1.0, 2.0], "hours ('hourangle') or radians")])
def test_annotate_dask_no_source_on_the_images_with_partitions_hinting_apart(
        optical_model, tmp_path, ras, hint):
    """Where no source lies on the images, annotate adds a hint when the unitless RA values
    all look like hours (or radians, under 2 pi). Each partition decides it on its own rows,
    so the partitions' texts differed and the warning, matched by its text across the
    partitions, was withheld. It is now given once, with the hint true of the whole table."""
    pytest.importorskip("dask")
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = Table({"ra": ras, "dec": [2.2] * 4})  # unitless, all off the image (RA 150)

    def none_on_images(caught):
        return [str(x.message) for x in caught if issubclass(x.category, UnusableInputWarning)
                and str(x.message).startswith("no source lies on the images")]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate(cat, str(tmp_path / "img.fits"), model=optical_model)
    [expected] = none_on_images(caught)
    assert (hint is None) == ("hours" not in expected) and (hint is None or hint in expected)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate_dask(cat, str(tmp_path / "img.fits"), model=str(optical_model.path),
                                 partition_size=2, scheduler="synchronous")
    assert none_on_images(caught) == [expected + " (in 2 of 2 Dask partitions)"]


def test_annotate_dask_lazy_refuses_what_annotate_refuses(optical_model, tmp_path):
    """With compute=False a bad option (unknown model, column that is not there, bad
    on_conflict, threads or precision, a clash) only failed when the partitions were
    computed, inside Dask; annotate_dask now makes annotate's own checks when called, and
    raises annotate's error (same type, same message)."""
    pytest.importorskip("dask")
    from astromorph._stamp_table import annotate_stamps

    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, [(50, 50), (100, 100)])
    cat["r90"] = [2.0, 3.0]
    cat["ok"] = [True, False]
    clashing = cat.copy()
    clashing["opt_flags"] = 0
    path = str(optical_model.path)
    cases = [(cat, dict(model="no-such-model")), (cat, dict(model=path, size_col="nope")),
             (cat, dict(model=path, size_col="ok")), (cat, dict(model=path, ra_col="nope")),
             (cat, dict(model=path, coord_col="ra")), (cat, dict(model=path, on_conflict="x")),
             (cat, dict(model=path, threads=-1)), (cat, dict(model=path, precision="int3")),
             (cat, dict(model=path, stamp_size=-1.0)), (clashing, dict(model=path))]
    for table, kw in cases:
        with pytest.raises(astromorph.AstromorphError) as ref:
            astromorph.annotate(table, str(tmp_path / "img.fits"), **kw)
        with pytest.raises(type(ref.value)) as lazy:
            astromorph.annotate_dask(table, str(tmp_path / "img.fits"), compute=False, **kw)
        assert str(lazy.value) == str(ref.value), kw
    stamps = Table({"stamp": np.zeros((2, 3, SIZE, SIZE), np.float32)})
    for kw in (dict(columns="nope"), dict(pixel_scale="nope"), dict(on_conflict="x"),
               dict(pixel_scale=-1.0)):
        with pytest.raises(astromorph.AstromorphError) as ref:
            annotate_stamps(stamps, model=path, **kw)
        with pytest.raises(type(ref.value)) as lazy:
            astromorph.annotate_dask(stamps, model=path, compute=False, **kw)
        assert str(lazy.value) == str(ref.value), kw


def test_annotate_dask_keeps_dask_columns_of_the_catalogue(optical_model, tmp_path):
    """A Table with Dask array columns (astropy's ``DaskColumn``), which `annotate` takes:
    the partitions were scored and then lost, as astropy's vstack cannot join Dask columns
    (NotImplementedError); the columns come back as the catalogue holds them."""
    da = pytest.importorskip("dask.array")
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, np.random.default_rng(6).uniform(10, 190, (23, 2)))
    lazy = Table({"id": cat["id"], "ra": da.from_array(np.asarray(cat["ra"]), chunks=10),
                  "dec": da.from_array(np.asarray(cat["dec"]), chunks=10)})
    ref = astromorph.annotate(lazy, str(tmp_path / "img.fits"), model=optical_model)
    out = astromorph.annotate_dask(lazy, str(tmp_path / "img.fits"),
                                   model=str(optical_model.path), partition_size=10,
                                   scheduler="threads")
    assert out.colnames == ref.colnames
    for name in ref.colnames:
        assert type(out[name]) is type(ref[name]), name
        a, b = np.asarray(out[name]), np.asarray(ref[name])
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5)
        else:
            np.testing.assert_array_equal(a, b)


def test_annotate_dask_sends_absolute_image_paths(optical_model, tmp_path, monkeypatch):
    """A relative image path means the caller's folder: the partitions get it absolute, so
    they run wherever a worker's working folder is (here: computed after a chdir)."""
    dask = pytest.importorskip("dask")
    img, w = blobs(), sky_wcs()
    (tmp_path / "data").mkdir()
    fits.writeto(tmp_path / "data" / "img.fits", img, w.to_header())
    cat = catalogue(w, [(100, 100), (60, 80)])
    monkeypatch.chdir(tmp_path / "data")
    parts = astromorph.annotate_dask(cat, "img.fits", model=str(optical_model.path),
                                     compute=False)
    monkeypatch.chdir(tmp_path)  # another folder, as a worker's may be
    (out,) = dask.compute(*parts, scheduler="synchronous")
    ref = astromorph.annotate(cat, str(tmp_path / "data" / "img.fits"), model=optical_model)
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-6)


def test_annotate_dask_records_the_image_names_annotate_records(optical_model, tmp_path,
                                                                  monkeypatch):
    """A relative image path goes to the workers absolute, but the table's provenance
    (``astromorph_images``) names the images as the caller gave them, as `annotate` does;
    re-annotating an annotated table with the same images then keeps no stale ``run1`` keys
    (annotate_dask recorded the absolute path, which differed from the earlier run's)."""
    pytest.importorskip("dask")
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    monkeypatch.chdir(tmp_path)
    cat = catalogue(w, np.random.default_rng(7).uniform(10, 190, (9, 2)))
    for table, on_conflict in ((cat, "error"),
                               (astromorph.annotate(cat, "img.fits", model=optical_model),
                                "replace")):
        ref = astromorph.annotate(table, "img.fits", model=optical_model,
                                  on_conflict=on_conflict)
        out = astromorph.annotate_dask(table, "img.fits", model=str(optical_model.path),
                                       partition_size=4, scheduler="threads",
                                       on_conflict=on_conflict)
        assert dict(out.meta) == dict(ref.meta)
        assert out.meta["astromorph_images"] == "img.fits"


def test_annotate_dask_leaves_no_image_names_to_the_callers_next_annotate(optical_model,
                                                                           tmp_path):
    """The synchronous scheduler runs the partitions in the caller's own thread: the image
    names and files that a partition records in its provenance are its own, and a later
    `annotate` of the caller records the images it reads, not the mosaic of that call."""
    pytest.importorskip("dask")
    paths, w = _mosaic_files(tmp_path, tiles=2)
    cat = catalogue(w, np.random.default_rng(2).uniform(0, 119, (10, 2)))
    out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path), partition_size=4,
                                   scheduler="synchronous")
    assert out.meta["astromorph_images"] == ",".join(sorted(paths))
    one = astromorph.annotate(cat[:3], paths[0], model=optical_model)
    assert one.meta["astromorph_images"] == paths[0]


@pytest.mark.parametrize("tblib", [True, False])
def test_annotate_dask_raises_a_worker_process_error_as_annotate_does(
        optical_model, tmp_path, monkeypatch, tblib):
    """A bad image met in a worker process: the caller gets annotate's own error (its type,
    its message naming the file), not Dask's copy of it (a subclass made by
    dask.multiprocessing, whose message carries the worker's traceback). Without tblib (an
    optional package), Dask's ``"processes"`` scheduler raises a `RemoteException` subclass
    of the worker's error: the caller still gets annotate's own error."""
    pytest.importorskip("dask")
    if not tblib:
        import dask.multiprocessing

        def reraise(exc, tb=None):  # dask.multiprocessing's own, where tblib is not installed
            raise dask.multiprocessing.remote_exception(exc, tb)

        monkeypatch.setattr(dask.multiprocessing, "reraise", reraise)
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  = T" + b"x" * 3000)
    cat = catalogue(sky_wcs(), [(10, 10), (50, 50), (90, 90)])
    with pytest.raises(InputError) as ref:
        astromorph.annotate(cat, str(tmp_path / "bad.fits"), model=optical_model)
    with pytest.raises(InputError) as out:
        astromorph.annotate_dask(cat, str(tmp_path / "bad.fits"), model=str(optical_model.path),
                                 partition_size=2, scheduler="processes")
    assert type(out.value) is type(ref.value)
    assert str(out.value) == str(ref.value)


@pytest.mark.parametrize("interrupt", [False, True])
def test_annotate_dask_stops_its_running_partitions_before_raising(optical_model, tmp_path,
                                                                   monkeypatch, interrupt):
    """With the threaded scheduler, a partition's error (or Ctrl-C) reached the caller while
    its sibling partitions ran on in Dask's threads, entering and leaving
    `warnings.catch_warnings` blocks as the caller entered its own: the caller's warnings
    could be recorded by a partition's block, and its filters and ``showwarning`` left as a
    partition's. annotate_dask now stops the partitions it computes (each at its next part)
    and waits for them before it raises: none runs when the error reaches the caller, and the
    warning state is the caller's."""
    import threading
    import time
    import warnings

    import dask

    import astromorph._dask as adask

    fits.writeto(tmp_path / "img.fits", blobs(), sky_wcs().to_header())
    cat = catalogue(sky_wcs(), np.random.default_rng(1).uniform(0, 199, (8, 2)))
    real = adask._annotate_partition
    lock, started, running = threading.Lock(), [], []
    under_way, caller_has_it = threading.Event(), threading.Event()
    error = KeyboardInterrupt() if interrupt else InputError("a corrupt tile")

    def partition(table, *args, **kwargs):
        with lock:
            started.append(int(table["id"][0]))
            running.append(started[-1])
            second = len(started) == 2
        try:
            if second:  # fails once the first partition is under way
                assert under_way.wait(60)
                raise error
            # the first: annotate's own work (its warnings blocks and all), again and again,
            # until the caller has the error (or a minute has passed)
            end = time.monotonic() + 60
            while not caller_has_it.is_set() and time.monotonic() < end:
                out = real(table, *args, **kwargs)
                under_way.set()
            return out
        finally:
            with lock:
                running.remove(int(table["id"][0]))

    monkeypatch.setattr(adask, "_annotate_partition", partition)
    show, filters = warnings.showwarning, list(warnings.filters)
    try:
        with pytest.raises(type(error)), dask.config.set(num_workers=2):
            astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                     model=str(optical_model.path), partition_size=4,
                                     scheduler="threads", threads=1)
        still = list(running)
        state = (warnings.showwarning is show, warnings.filters == filters)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn("the caller's own", UserWarning)
    finally:
        caller_has_it.set()  # (the old code's partition stops here)
    assert len(started) == 2 and still == [], still
    assert state == (True, True)
    assert [str(w.message) for w in caught] == ["the caller's own"]
    assert warnings.showwarning is show and warnings.filters == filters


def test_annotate_dask_begins_no_queued_partition_and_waits_for_a_slow_one(optical_model,
                                                                          tmp_path,
                                                                          monkeypatch):
    """With Dask's ``chunksize=-1`` each thread is handed a queue of partitions: where one
    fails, those queued behind a running partition do not begin once it stops (the
    docstring's "those not begun do not begin"), and the caller gets the error only once the
    running one has wound down, however long that takes (not after one short wait)."""
    import threading
    import time

    import dask

    import astromorph._dask as adask

    fits.writeto(tmp_path / "img.fits", blobs(), sky_wcs().to_header())
    cat = catalogue(sky_wcs(), np.random.default_rng(1).uniform(0, 199, (8, 2)))
    real = adask._annotate_partition
    lock, started, running = threading.Lock(), [], []
    under_way = threading.Event()

    def partition(table, *args, **kwargs):
        with lock:
            started.append(int(table["id"][0]))
            n = len(started)
            running.append(n)
        try:
            if n == 1:  # annotate again and again until the call stops it, then a slow end
                try:
                    end = time.monotonic() + 60
                    while time.monotonic() < end:
                        real(table, *args, **kwargs)
                        under_way.set()
                finally:
                    time.sleep(0.5)
            if n == 2:  # the other thread's first: fails once the first is under way
                assert under_way.wait(60)
                raise InputError("a corrupt tile")
            return real(table, *args, **kwargs)  # its queue's second: done before the error
        finally:
            with lock:
                running.remove(n)

    monkeypatch.setattr(adask, "_annotate_partition", partition)
    start = time.monotonic()
    with pytest.raises(InputError, match="corrupt"), \
            dask.config.set(num_workers=2, chunksize=-1):
        astromorph.annotate_dask(cat, str(tmp_path / "img.fits"), model=str(optical_model.path),
                                 partition_size=2, scheduler="threads", threads=1)
    still, took = list(running), time.monotonic() - start
    time.sleep(0.5)  # (time for a queued partition to begin, were it let)
    assert still == [] and not adask._COMPUTING  # (the call's partitions forgotten)
    assert took < 30  # the running partition was stopped, not waited for to its end (60 s)
    # 4 partitions in two queues of two: the one queued behind the stopped one never began
    assert len(started) == 3, started


def test_annotate_dask_on_a_distributed_cluster(optical_model, tmp_path):
    """A ``dask.distributed`` cluster of worker processes (everything pickled both ways):
    the table of `annotate` (scores bit for bit, flags, meta), its one warning at the
    caller's line, and the errors of its partitions as annotate's own: a missing image was
    a bare ``Exception`` holding the repr of the InputNotFoundError, which tblib (as
    distributed uses it) could not rebuild."""
    pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    img, w = blobs(), sky_wcs()
    img[120:140, 30:60] = np.nan
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  = T" + b"x" * 3000)
    cat = catalogue(w, np.vstack([np.random.default_rng(5).uniform(-20, 220, (17, 2)),
                                  [[45, 130]]]))
    cat["ra"][[3, 12]] = np.nan
    cat.meta["survey"] = "synthetic"
    path = str(tmp_path / "img.fits")
    with warns_bad_positions(2, 18):
        ref = astromorph.annotate(cat, path, model=optical_model)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        with warns_bad_positions(2, 18) as found:
            out = astromorph.annotate_dask(cat, path, model=str(optical_model.path),
                                           partition_size=5)
        assert len(found) == 1 and found[0].filename == __file__
        assert out.colnames == ref.colnames and dict(out.meta) == dict(ref.meta)
        for name in ref.colnames:
            np.testing.assert_array_equal(np.ma.filled(out[name], -1),
                                          np.ma.filled(ref[name], -1), err_msg=name)
        for image, error in ((tmp_path / "nope.fits", InputNotFoundError),
                             (tmp_path / "bad.fits", InputError)):
            with pytest.raises(error) as expected:
                astromorph.annotate(cat, str(image), model=optical_model)
            with pytest.raises(error) as got:
                astromorph.annotate_dask(cat, str(image), model=str(optical_model.path),
                                         partition_size=5)
            assert type(got.value) is type(expected.value)
            assert str(got.value) == str(expected.value)


def test_annotate_dask_needs_paths(optical_model):
    pytest.importorskip("dask")
    img, w = blobs(), sky_wcs()
    with pytest.raises(InputError, match="paths"):
        astromorph.annotate_dask(catalogue(w, [(1, 1)]), (img, w), model=str(optical_model.path))
    # an opened file (an HDUList is a list of HDUs) is named as what it is, not as its first HDU
    hdul = fits.HDUList([fits.PrimaryHDU(img, w.to_header())])
    with pytest.raises(InputError, match="paths .*not HDUList"):
        astromorph.annotate_dask(catalogue(w, [(1, 1)]), hdul, model=str(optical_model.path))


def test_annotate_dask_says_how_to_pass_a_dataframe(optical_model, tmp_path):
    """A (Dask) DataFrame, the usual form of a large catalogue, is refused with the way to
    make the Table that annotate_dask takes, before any task is made."""
    dd = pytest.importorskip("dask.dataframe")
    cat = catalogue(sky_wcs(), [(1, 1), (5, 5)])
    for frame in (cat.to_pandas(), dd.from_pandas(cat.to_pandas(), npartitions=2)):
        with pytest.raises(InputError, match=r"got DataFrame.*Table\.from_pandas\(df"):
            astromorph.annotate_dask(frame, str(tmp_path / "img.fits"),
                                     model=str(optical_model.path), compute=False)


# ------------------------------------------------------------- threads, reads
def test_threads_give_the_same_table(optical_model, monkeypatch):
    """Stamps cut and preprocessed by several threads: the same table as one thread."""
    import warnings

    from astromorph import _annotate

    monkeypatch.setattr(_annotate, "STAMP_CHUNK", 7)  # many parts per chunk
    img, w = blobs(), sky_wcs()
    img[90:110, 90:110] = np.nan  # blank pixels: the NaN-median path runs in the threads
    rng = np.random.default_rng(5)
    cat = catalogue(w, rng.uniform(-10, 210, (60, 2)))
    one = astromorph.annotate(cat, (img, w), model=optical_model, threads=1)
    # (after a first call: modules it imports the first time may add filters of their own)
    filters = list(warnings.filters)
    many = astromorph.annotate(cat, (img, w), model=optical_model, threads=3)
    assert warnings.filters == filters  # no warning filter left behind by worker threads
    assert np.any(one["opt_flags"] & Flag.BLANK) and np.any(one["opt_flags"] & Flag.OFF_IMAGE)
    for name in one.colnames:
        np.testing.assert_array_equal(np.ma.filled(one[name], -1), np.ma.filled(many[name], -1))


@pytest.mark.parametrize("dtype", [">f4", "int16"])
def test_whole_image_read_gives_the_same_stamps(tmp_path, monkeypatch, dtype):
    """A memory-mapped image read whole once the stamps have sampled as many points
    as it has pixels (`SkyImage.resident`) gives the stamps of page-by-page reads."""
    from astromorph import _cutouts

    img, w = blobs(), sky_wcs()
    path = tmp_path / "image.fits"
    image_hdu(img, w, dtype).writeto(path)
    rng = np.random.default_rng(1)
    src = w.pixel_to_world(*rng.uniform(-5, 205, (2, 400)))
    stamps = {}
    for limit in (0, 1 << 30):  # never / as soon as worthwhile
        monkeypatch.setattr(_cutouts, "RESIDENT_MAX_BYTES", limit)
        [im] = parse_sky_images(str(path))
        stamps[limit] = cut_stamps(im, src.ra.deg, src.dec.deg, size=SIZE, pixel_scale=SCALE,
                                   chunk=50).stamps
        assert (im._resident is not None) == bool(limit)
    np.testing.assert_allclose(stamps[0], stamps[1 << 30], rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(stamps[0]).any() and np.isfinite(stamps[0]).any()


def test_whole_image_copies_share_one_budget(tmp_path, monkeypatch):
    """Tiles read whole share RESIDENT_MAX_BYTES; a collected image gives its share back."""
    import gc

    from astromorph import _cutouts

    img, w = blobs(), sky_wcs()
    path = tmp_path / "tile.fits"
    fits.writeto(path, img.astype(">f4"), w.to_header())
    monkeypatch.setattr(_cutouts, "RESIDENT_MAX_BYTES", int(1.5 * 4 * img.size))
    monkeypatch.setattr(_cutouts, "_resident_bytes", [0])
    [a], [b] = parse_sky_images(str(path)), parse_sky_images(str(path))
    assert a.resident(img.size) is not None and a.resident(0).dtype == np.float32
    assert b.resident(img.size) is None  # over the budget: gathered from the memory map
    del a
    gc.collect()
    assert _cutouts._resident_bytes == [0]
    [c] = parse_sky_images(str(path))
    assert c.resident(img.size) is not None and c.resident(0) is not c.data


def test_fits_opened_in_two_threads_leave_the_warning_filters_as_they_were(tmp_path, monkeypatch):
    """Dask partitions (and the reader thread of predict_files) open FITS files in parallel
    threads, inside `warnings.catch_warnings` (which records astropy's warnings on opening).
    That context manager is not thread-safe: entered by one thread, then by another, and
    left by the first before the second, it left the second's saved state in place for good:
    the process's filters set to "always" and every later warning recorded into a list
    nobody reads. astromorph's blocks now take turns."""
    import threading
    import warnings

    from astromorph import _images, _warnings

    fits.writeto(tmp_path / "img.fits", blobs(), sky_wcs().to_header())
    real_open = fits.open
    a_inside, b_arrived, a_left = threading.Event(), threading.Event(), threading.Event()

    def fake_open(*args, **kwargs):
        if threading.current_thread().name == "A":
            a_inside.set()
            b_arrived.wait()  # B is inside its block too, or waits for its turn
        else:
            b_arrived.set()
            a_left.wait()  # B leaves its block after A has left its own
        return real_open(*args, **kwargs)

    class ArrivalLock:  # says when B asks for its turn (where astromorph makes it wait)
        def __init__(self):
            self.lock = threading.RLock()

        def __enter__(self):
            if threading.current_thread().name == "B":
                b_arrived.set()
            self.lock.acquire()

        def __exit__(self, *exc):
            self.lock.release()

    monkeypatch.setattr(fits, "open", fake_open)
    monkeypatch.setattr(_warnings, "_CATCH_LOCK", ArrivalLock(), raising=False)
    errors = []

    def run(name):
        try:
            _images._open_fits(str(tmp_path / "img.fits")).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            if name == "A":
                a_left.set()

    filters, show = list(warnings.filters), warnings._showwarnmsg_impl
    a = threading.Thread(target=run, args=("A",), name="A")
    b = threading.Thread(target=run, args=("B",), name="B")
    a.start()
    a_inside.wait()
    b.start()
    a.join()
    b.join()
    assert not errors
    assert warnings.filters == filters
    assert warnings._showwarnmsg_impl is show  # later warnings are shown, not recorded away


def test_image_read_whole_by_another_thread_mid_sampling_gives_the_same_stamps(tmp_path):
    """A native memory map is sampled where it lies until a thread reads it whole
    (`SkyImage.resident`); stamps sampled from the memory map next to masking sentinels
    are sampled again with the sentinels as NaN. When another thread cutting stamps from
    the same image read it whole in between, that second pass was skipped, and the
    sentinel's weight leaked into the stamps as huge finite values."""
    img, w = blobs(), sky_wcs()
    img[95:105, :] = -1e30  # a masked band across the image
    data = np.memmap(tmp_path / "img.raw", np.float32, "w+", shape=img.shape)
    data[:] = img
    rng = np.random.default_rng(3)
    src = w.pixel_to_world(*rng.uniform(20, 180, (2, 300)))

    def stamps(interleave):
        image = SkyImage(data, w, name="memmap")
        if interleave:
            own = image.resident

            def resident(n_samples):  # as if another thread read the image whole just after
                source = own(n_samples)
                own(image.data.size)
                return source

            image.resident = resident
        return cut_stamps(image, src.ra.deg, src.dec.deg, size=SIZE, pixel_scale=SCALE,
                          chunk=50).stamps  # 50 stamps sample fewer points than the image has

    serial, interleaved = stamps(False), stamps(True)
    assert np.isnan(serial).any() and np.nanmax(np.abs(serial)) < 10
    assert np.nanmax(np.abs(interleaved)) < 10
    # (memory map and whole copy are sampled by different code: equal to float32 rounding)
    np.testing.assert_allclose(interleaved, serial, rtol=1e-6, atol=1e-6, equal_nan=True)



def test_threads_cutting_stamps_from_one_image_at_once_get_the_serial_stamps(tmp_path):
    """One `SkyImage` shared by threads (annotate's workers, Dask's threaded scheduler):
    each thread gets the stamps it gets alone, also when the image is read whole while the
    others sample its memory map (here: the four threads ask for their first samples
    together, and the fourth request makes the whole-image copy)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    img, w = blobs(), sky_wcs()
    img[95:105, :] = -1e30  # masked pixels
    img[50:60, 20:180] = np.nan
    data = np.memmap(tmp_path / "img.raw", np.float32, "w+", shape=img.shape)
    data[:] = img
    rng = np.random.default_rng(7)
    parts = [w.pixel_to_world(*rng.uniform(-5, 205, (2, 120))) for _ in range(4)]

    def cut(image, k):  # 40 stamps per chunk: the first chunks of the 4 threads read it whole
        return cut_stamps(image, parts[k].ra.deg, parts[k].dec.deg, size=SIZE,
                          pixel_scale=SCALE, chunk=40).stamps

    serial = [cut(SkyImage(data, w), k) for k in range(4)]
    shared = SkyImage(data, w)
    own, together, first = shared.resident, threading.Barrier(4), threading.local()

    def resident(n_samples):
        source = own(n_samples)
        if not getattr(first, "done", False):
            first.done = True
            together.wait()  # each thread's first request answered: then all sample
        return source

    shared.resident = resident
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda k: cut(shared, k), range(4)))
    assert shared._resident is not None
    for k in range(4):
        assert np.isfinite(serial[k]).any() and np.isnan(serial[k]).any()
        assert np.nanmax(np.abs(concurrent[k])) < 10, f"thread {k}"
        np.testing.assert_allclose(concurrent[k], serial[k], rtol=1e-6, atol=1e-6,
                                   equal_nan=True, err_msg=f"thread {k}")


def two_bands_one_padded(tmp_path):
    """g and r images of one field (two bands for a g, r, i model: a warning) and a
    40-row catalogue; the r file has extra padding (astropy warns on opening it)."""
    img, w = blobs(), sky_wcs()
    paths = []
    for band in "gr":
        header = w.to_header()
        header["FILTER"] = band
        fits.writeto(tmp_path / f"{band}.fits", img, header)
        paths.append(str(tmp_path / f"{band}.fits"))
    with open(paths[1], "ab") as f:
        f.write(bytes(2880))
    return paths, catalogue(w, np.random.default_rng(5).uniform(-20, 220, (40, 2)))


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_annotate_dask_gives_a_partition_warning_once_at_the_callers_line(optical_model,
                                                                            tmp_path, scheduler):
    """A warning that every partition gives (here: two bands for a g, r, i model, and
    astropy's on opening a file with extra padding) came once per partition (or fewer, as the threads' warnings got mixed
    up), each pointing into Dask's code; it now comes once, from the caller's line, saying how many partitions
    gave it. The flags are annotate's."""
    import warnings

    pytest.importorskip("dask")
    paths, cat = two_bands_one_padded(tmp_path)
    with pytest.warns(AmbiguousInputWarning), pytest.warns(UserWarning, match="padding"):
        ref = astromorph.annotate(cat, paths, model=optical_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                       partition_size=10, scheduler=scheduler)
    ambiguous = [x for x in caught if issubclass(x.category, AmbiguousInputWarning)]
    assert len(ambiguous) == 1, [str(x.message) for x in caught]
    assert ambiguous[0].filename == __file__
    assert "using band 'r' alone" in str(ambiguous[0].message)
    assert "(in 4 of 4 Dask partitions)" in str(ambiguous[0].message)
    padding = [x for x in caught if "extra padding" in str(x.message)]
    assert len(padding) == 1 and "(in 4 of 4 Dask partitions)" in str(padding[0].message)
    np.testing.assert_array_equal(out["opt_flags"], ref["opt_flags"])


def cut_read_whole_traced(im, coords):
    """Stamps at ``coords`` from the open image ``im`` read whole (a dense catalogue), and the
    peak of the memory traced (`tracemalloc`) while reading and cutting."""
    import tracemalloc

    tracemalloc.start()
    try:
        im.plan_samples(im.data.size)
        stamps = cut_stamps(im, coords.ra.deg, coords.dec.deg, size=SIZE, pixel_scale=SCALE).stamps
        return stamps, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def stamps_of_the_image_read_whole(path, coords):
    """Stamps at ``coords`` cut from the image at ``path`` read whole into memory (as a dense
    catalogue has it read: page-by-page sums differ in the last bits)."""
    from astromorph._images import closing_files

    with closing_files(parse_sky_images(str(path))) as [im]:
        im.plan_samples(im.data.size)
        return cut_stamps(im, coords.ra.deg, coords.dec.deg, size=SIZE, pixel_scale=SCALE).stamps


def test_gzipped_fits_is_sampled_where_it_was_decompressed(tmp_path):
    """A gzipped float32 image (decompressed whole into memory when first sampled,
    big-endian) annotated with a dense catalogue is sampled in the decompressed array itself, made native in place, not
    from a second whole-image float32 copy; its stamps (masking sentinels included) are
    those of the plain file read whole."""
    import gzip

    from astromorph._images import closing_files

    n = 1500  # 9 MB: far above what cutting a few stamps takes besides the image
    img, w = blobs(n).astype(np.float32), sky_wcs(n)
    img[50:53, 60:64] = -3.4e38  # a masking sentinel (ZTF's)
    plain = tmp_path / "plain.fits"
    fits.writeto(plain, img, w.to_header())
    path = tmp_path / "image.fits.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    x, y = np.random.default_rng(5).uniform(10, n - 10, (2, 40))
    c = w.pixel_to_world(np.append(x, 62), np.append(y, 51))  # the last on the sentinel
    ref = stamps_of_the_image_read_whole(plain, c)
    with closing_files(parse_sky_images(str(path))) as [im]:
        im.take(np.zeros(1, np.int64))  # decompressed (when first sampled), not traced
        decompressed = im.data
        got, peak = cut_read_whole_traced(im, c)
        source = im.resident(0)
        assert source is not None and np.shares_memory(source, decompressed)
        assert peak < img.nbytes // 2, (peak, img.nbytes)  # no second copy of the image
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("compressed", [True, False])
def test_scaled_integer_image_is_read_whole_into_one_float32_copy(tmp_path, compressed):
    """An int16 image with BZERO and BLANK (gzipped: decompressed whole into memory when
    first sampled; plain: read whole by one read call) sampled densely was scaled whole-image at a time: a float32
    cast, the scaled result, and the sentinel check's temporaries besides the float32 copy
    kept, over three times its size at the peak. It is now scaled in row strips into that
    one copy (BLANK -> NaN), with the stamps of the plain file read whole as before."""
    import gzip

    from astromorph._images import closing_files

    n = 1500
    raw = np.clip(np.round(blobs(n) * 1000), -30000, 30000).astype(np.int32)
    raw[50:53, 60:64] = -32768  # BLANK
    w = sky_wcs(n)
    hdu = fits.PrimaryHDU(raw + 32768, w.to_header())
    hdu.scale("int16", bzero=32768)
    hdu.header["BLANK"] = -32768
    plain = tmp_path / "plain.fits"
    hdu.writeto(plain)
    path = plain
    if compressed:
        path = tmp_path / "image.fits.gz"
        path.write_bytes(gzip.compress(plain.read_bytes()))
    x, y = np.random.default_rng(5).uniform(10, n - 10, (2, 40))
    c = w.pixel_to_world(np.append(x, 62), np.append(y, 51))  # the last on BLANK pixels
    ref = stamps_of_the_image_read_whole(plain, c)
    with closing_files(parse_sky_images(str(path))) as [im]:
        assert im.data.dtype.kind == "i" and im.blank == -32768 and im.bzero == 32768
        got, peak = cut_read_whole_traced(im, c)
        assert im.resident(0) is not None
    float32_image = 4 * n * n
    extra = raw.size * 2  # the raw pixels read from the file (decompressed when first sampled)
    assert peak < 1.25 * float32_image + extra, (peak, float32_image)
    assert np.isnan(got[-1]).any()
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("bitpix", [16, 32])
def test_tile_compressed_scaled_image_keeps_one_copy_once_read_whole(tmp_path, bitpix):
    """A tile-compressed integer image with BSCALE/BZERO is decompressed whole into memory;
    a dense catalogue then reads it whole into a float32 copy, and the raw integers were
    kept beside it (in the SkyImage and in the HDU): 1.5 times the float32 image for int16,
    twice for int32. The raw array is now let go once the copy exists, and the stamps
    (sparse ones, cut from the raw integers, and dense ones) are those of the plain file."""
    import gc
    import tracemalloc

    from astromorph._images import closing_files

    n = 1500
    w = sky_wcs(n)
    hdu = fits.PrimaryHDU(np.round(blobs(n) * 1000).astype(f"int{bitpix}"), w.to_header())
    hdu.header["BSCALE"], hdu.header["BZERO"] = 1e-3, 10.0
    plain = tmp_path / "plain.fits"
    hdu.writeto(plain)
    path = tmp_path / "tiled.fits"
    tiled = fits.CompImageHDU(hdu.data, w.to_header())
    tiled.header["BSCALE"], tiled.header["BZERO"] = 1e-3, 10.0  # the raw integers kept
    fits.HDUList([fits.PrimaryHDU(), tiled]).writeto(path)
    x, y = np.random.default_rng(5).uniform(10, n - 10, (2, 40))
    c = w.pixel_to_world(x, y)
    ref = stamps_of_the_image_read_whole(plain, c)
    float32_image = 4 * n * n
    tracemalloc.start()
    try:
        with closing_files(parse_sky_images(str(path))) as [im]:
            assert im.data.dtype.kind == "i" and im.bscale == 1e-3
            sparse = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE).stamps
            assert im.resident(0) is None  # not read whole yet: sampled from the integers
            im.plan_samples(im.data.size)
            dense = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE).stamps
            again = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE).stamps
            assert im.resident(0) is not None
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 1.25 * float32_image, (held, float32_image)
    np.testing.assert_allclose(sparse, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dense, ref)
    np.testing.assert_array_equal(again, ref)


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_annotate_dask_lazy_partitions_give_a_warning_once(optical_model, tmp_path, scheduler):
    """With compute=False, the partitions' warnings (two bands for a g, r, i model,
    astropy's on a file with extra padding) came once per partition when the graph was
    computed; each distinct one now comes once for the whole call (in one process), with
    the tables those of compute=True."""
    import warnings

    dask = pytest.importorskip("dask")
    paths, cat = two_bands_one_padded(tmp_path)
    with pytest.warns(AmbiguousInputWarning), pytest.warns(UserWarning, match="padding"):
        ref = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                       partition_size=10, scheduler=scheduler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                         partition_size=10, compute=False)
        assert not caught  # nothing computed yet
        tables = dask.compute(*parts, scheduler=scheduler)
    ambiguous = [x for x in caught if issubclass(x.category, AmbiguousInputWarning)]
    assert len(ambiguous) == 1, [str(x.message) for x in caught]
    assert "using band 'r' alone" in str(ambiguous[0].message)
    padding = [x for x in caught if "extra padding" in str(x.message)]
    assert len(padding) == 1, [str(x.message) for x in caught]
    assert len(caught) == 2, [str(x.message) for x in caught]
    assert [len(t) for t in tables] == [10, 10, 10, 10]
    for start, t in zip(range(0, 40, 10), tables):
        np.testing.assert_array_equal(t["opt_flags"], ref["opt_flags"][start:start + 10])


@pytest.mark.parametrize("name, field", [("real-bogus", "63 px at 1 arcsec/px"),
                                         ("radio-morphology", "128 px at 1.8 arcsec/px")])
def test_fixed_field_models_refuse_size_options(name, field, tmp_path, capsys):
    """size_col= and stamp_size= were silently ignored by the models whose card fixes their
    field; they are refused, naming the option, its value and the field, before any image is
    read (the image here does not exist), in the API, annotate_dask and the CLI."""
    from astromorph._demo import demo_paths
    from astromorph.exceptions import InvalidArgumentError

    cat = Table({"ra": [10.0], "dec": [20.0], "r90": [2.0]})
    missing = str(tmp_path / "none.fits")
    for kw, shown in ((dict(stamp_size=20), r"stamp_size=20 "),
                      (dict(stamp_size=20 * u.arcsec), r"stamp_size=20\.0 arcsec"),
                      (dict(size_col="r90"), r"size_col='r90'"),
                      (dict(size_col="r90", stamp_size=5.0), r"size_col='r90'.*stamp_size=5\.0")):
        with pytest.raises(InvalidArgumentError, match=shown) as exc:
            astromorph.annotate(cat, missing, model=name, **kw)
        assert name in str(exc.value) and field in str(exc.value)
    if name == "radio-morphology":  # on a real image it used to give 128 px stamps anyway
        image, catalogue = demo_paths()
        with pytest.raises(InvalidArgumentError, match="stamp_size=20"):
            astromorph.annotate(QTable.read(catalogue)[:3], str(image), model=name,
                                stamp_size=20)
    pytest.importorskip("dask")
    for compute in (True, False):  # refused before any task is sent
        with pytest.raises(InvalidArgumentError, match=r"stamp_size=20 .*" + field):
            astromorph.annotate_dask(cat, missing, model=name, stamp_size=20, compute=compute,
                                     scheduler="synchronous")
    cat.write(tmp_path / "cat.ecsv")
    for option, value in (("--stamp-size", "20"), ("--size-col", "r90")):
        assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-i", missing, "-m", name,
                         option, value]) == 2
        err = capsys.readouterr().err
        assert option in err and value in err and field in err


@pytest.mark.parametrize("kind", ["float32", "float64", "int16"])
def test_image_read_whole_gives_the_values_of_a_whole_image_pass(tmp_path, kind):
    """`SkyImage._read_whole` works in row strips (for speed); its values are bit for bit
    those of the straightforward whole-image pass (cast, BLANK -> NaN, BSCALE and BZERO,
    NaN, inf and masking sentinels -> NaN), in every strip, the last partial one included."""
    ny, nx = 2100, 2000  # two row strips of about 4 M pixels: 2097 rows, then 3
    rng = np.random.default_rng(6)
    w = sky_wcs()
    where = [(0, 0), (5, 7), (2096, 1999), (2097, 0), (2099, 1999), (2098, 1000)]
    if kind == "int16":
        raw = rng.integers(-32000, 32000, (ny, nx)).astype(np.int16)
        for k, (y, x) in enumerate(where):
            raw[y, x] = -32768 if k % 2 else 32767
        hdu = fits.PrimaryHDU(raw, w.to_header())
        hdu.header.update(BSCALE=4e25, BZERO=0.0, BLANK=-32768)  # |raw| >= 25000: sentinels
        hdu.writeto(tmp_path / "im.fits", output_verify="silentfix")
        with fits.open(tmp_path / "im.fits", do_not_scale_image_data=True) as hdul:
            stored = np.array(hdul[0].data)
        expected = stored.astype(np.float32)
        expected[stored == -32768] = np.nan
        expected = expected * np.float32(4e25) + np.float32(0.0)
    else:
        data = rng.normal(0, 1, (ny, nx)).astype(kind)
        for (y, x), v in zip(where, [np.nan, np.inf, -3.4e38, 1e30, -np.inf, 5e29]):
            data[y, x] = v
        fits.writeto(tmp_path / "im.fits", data, w.to_header())
        expected = data.astype(np.float32)
    expected[~(np.abs(expected) < 1e30)] = np.nan
    [im] = parse_sky_images(str(tmp_path / "im.fits"))
    assert im.plain == (kind != "int16") and (kind != "int16" or im.blank == -32768)
    got = im._read_whole()
    assert got is not None and got.dtype == np.float32 and got.shape == (ny, nx)
    assert np.isnan(got[-3:]).any() and np.isfinite(got[-3:]).any()  # the last strip too
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_band_choice_warning_says_what_the_model_takes():
    """Several bands for a one-band model (radio-morphology on the packaged g, r, i image):
    the warning said "the model takes g, r and i together, or one band", which is the galaxy
    models' rule, not this model's; it now says the model takes one band."""
    from astromorph._demo import demo_paths
    from astromorph.exceptions import AmbiguousInputWarning

    if "radio-morphology" not in astromorph.list_models():
        pytest.skip("radio-morphology is not shipped")
    image, catalogue = demo_paths()
    with pytest.warns(AmbiguousInputWarning, match="using band 'r' alone") as rec:
        astromorph.annotate(QTable.read(catalogue)[:2], str(image), model="radio-morphology")
    message = " ".join(str(w.message) for w in rec if w.category is AmbiguousInputWarning)
    assert "g, r and i" not in message
    assert "takes one band" in message


def test_unnamed_band_images_of_one_field_are_not_silently_read_as_tiles(tmp_path):
    """Three g, r, i files without BAND/FILTER headers (`-i g.fits -i r.fits -i i.fits`) were
    read as tiles of one unnamed band and scored as a single grey band, without a word (half
    of the demo's labels changed). Images that cover the same pixels cannot be tiles of one
    mosaic: a warning says how they were read and how to name the bands."""
    import warnings

    from astromorph._demo import demo_paths
    from astromorph.exceptions import AmbiguousInputWarning

    image, catalogue = demo_paths()
    paths = []
    with fits.open(image) as hdul:
        for band in "gri":
            header = hdul[band.upper()].header.copy()
            for key in ("BAND", "FILTER", "EXTNAME"):
                header.remove(key, ignore_missing=True)
            paths.append(str(tmp_path / f"{band}.fits"))
            fits.PrimaryHDU(hdul[band.upper()].data, header).writeto(paths[-1])
    cat = QTable.read(catalogue)[:3]
    with pytest.warns(AmbiguousInputWarning, match="cover the same pixels") as rec:
        astromorph.annotate(cat, paths, model="morphology", size_col="r90")
    message = str(next(w.message for w in rec if "same pixels" in str(w.message)))
    assert "g.fits" in message and "bands=" in message and "--band" in message
    # named, or real mosaic tiles, say nothing of the kind
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate(cat, paths, model="morphology", size_col="r90",
                            bands=["g", "r", "i"])
    assert not [w for w in caught if "same pixels" in str(w.message)]


def test_unnamed_all_sky_maps_of_one_grid_are_not_silently_read_as_tiles(tmp_path):
    """The same check for all-sky maps, whose corners lie off the projection (NaN sky
    coordinates, which never compare equal): two unnamed maps on one grid warn; two on
    different grids do not."""
    import warnings

    from astromorph.exceptions import AmbiguousInputWarning

    def all_sky(crval1):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---AIT", "DEC--AIT"]
        w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [crval1, 0.0], [90.5, 45.5], [-2.0, 2.0]
        img = np.random.default_rng(0).normal(1, 0.1, (90, 180)).astype(np.float32)
        return img, w

    img, w = all_sky(0.0)
    assert not np.isfinite(w.pixel_to_world_values(0, 0)).any()  # the corners are off the sky
    cat = Table({"ra": [10.0, 40.0], "dec": [5.0, -20.0]})
    with pytest.warns(AmbiguousInputWarning, match="cover the same pixels"):
        astromorph.annotate(cat, [(img, w), (img * 2, w)], model="morphology",
                            stamp_size=1 * u.deg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate(cat, [(img, w), all_sky(180.0)], model="morphology",
                            stamp_size=1 * u.deg)
    assert not [w for w in caught if "same pixels" in str(w.message)]


def test_big_stamps_are_cut_in_parts_of_bounded_memory():
    """radio-morphology cuts 300 x 300 stamps: a part of 512 of them held about 0.8 GB per
    thread (several float32 and float64 copies of the part's stamps); parts now hold at most
    PART_PIXELS stamp pixels, and the traced peak stays within a few times the stamps of
    the sources processed at once."""
    import tracemalloc

    from astromorph._annotate import _part_rows

    if "radio-morphology" not in astromorph.list_models():
        pytest.skip("radio-morphology is not shipped")
    model = astromorph.load_model("radio-morphology")
    n, side = 240, 400
    w = sky_wcs(side, rot=0.0, scale=1.8)
    img = np.random.default_rng(0).normal(0, 1e-4, (side, side)).astype(np.float32)
    img[190:210, 190:210] += 5e-3
    pix = np.random.default_rng(1).uniform(50, side - 50, (n, 2))
    ra, dec = w.pixel_to_world_values(pix[:, 0], pix[:, 1])
    table = Table({"ra": ra, "dec": dec})
    stamp_bytes = 300 * 300 * 4
    at_once = _part_rows(300 * 300)  # one thread: one part at a time
    assert at_once < n  # the catalogue spans several parts
    tracemalloc.start()
    try:
        out = astromorph.annotate(table, (img, w), model=model, threads=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) == n and np.count_nonzero(~out["radio_p_FRI"].mask) > 0
    assert peak < 12 * at_once * stamp_bytes, (peak, at_once)


@pytest.mark.parametrize("keys, said", [({"BUNIT": "count"}, "BUNIT='count'"),
                                        ({"BUNIT": "ELECTRONS/S"}, "BUNIT='ELECTRONS/S'"),
                                        ({"BUNIT": "uJy"}, "BUNIT='uJy'"),
                                        ({"MAGZERO": 30.0}, "MAGZERO=30"),
                                        ({"ZP": 27.0}, "ZP=27"),
                                        ({"FLUXMAG0": 10 ** (0.4 * 27)}, "zero point 27")])
def test_galaxy_model_on_images_not_in_nanomaggies_warns(optical_model, tmp_path, keys, said):
    """The galaxy models' stretch is set for SDSS nanomaggies (zero point 22.5): the same
    images in counts, uJy or at zero point 27 or 30 (DES, HSC) gave black or saturated
    stamps and another class, silently, although the headers said so. A header whose
    BUNIT or zero point contradicts nanomaggies now gives a warning naming the image, the
    keyword and the conversion."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    paths = []
    for band in "gri":
        hdr = w.to_header()
        hdr["FILTER"] = band
        hdr.update(keys)
        paths.append(str(tmp_path / f"{band}.fits"))
        fits.writeto(paths[-1], img, hdr)
    with pytest.warns(AstromorphWarning, match="nanomaggies") as rec:
        astromorph.annotate(cat, paths, model=optical_model)
    message = " ".join(str(r.message) for r in rec if "nanomaggies" in str(r.message))
    assert said in message and "g.fits" in message and "22.5" in message


def test_galaxy_model_on_nanomaggies_or_unitless_images_does_not_warn(optical_model, tmp_path):
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    for keys in ({"BUNIT": "nanomaggy", "MAGZERO": 30.0}, {"MAGZP": 22.5}, {"BUNIT": "nominal"},
                 {}):
        hdr = w.to_header()
        hdr.update(keys)
        path = tmp_path / "r.fits"
        fits.writeto(path, img, hdr, overwrite=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstromorphWarning)
            astromorph.annotate(cat, str(path), model=optical_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstromorphWarning)
        astromorph.annotate(cat, (img, w), model=optical_model)


def _flux_unit_mosaic(tmp_path):
    """A mosaic of three single-band tiles whose headers say they are not in nanomaggies:
    ``good.fits`` (MAGZERO=30) under the sources, ``nan.fits`` (BUNIT='uJy') over the
    same sky without a finite pixel, ``far.fits`` (BUNIT='count') on another part of the
    sky; and a catalogue of six sources on ``good.fits``."""
    img, w = blobs(), sky_wcs()
    paths = {}
    for name, data, keys, crval in (
            ("good", img, {"MAGZERO": 30.0}, (150.0, 2.2)),
            ("nan", np.full_like(img, np.nan), {"BUNIT": "uJy"}, (150.0, 2.2)),
            ("far", img, {"BUNIT": "count"}, (30.0, -40.0))):
        hdr = sky_wcs(crval=crval).to_header()
        hdr.update(keys)
        paths[name] = str(tmp_path / f"{name}.fits")
        fits.writeto(paths[name], data, hdr)
    return paths, catalogue(w, [(60 + 15 * i, 80 + 10 * i) for i in range(6)])


def _flux_unit_messages(caught):
    return [str(x.message) for x in caught if "nanomaggies" in str(x.message)]


def test_flux_unit_warning_names_only_the_images_cut_from(optical_model, tmp_path):
    """annotate's warning of headers not in nanomaggies named every image of the bands
    used, before any source was cut: a tile that no source lies on, or one without a finite
    pixel (the sources cut from another tile of the mosaic, or not scored), though their
    pixels were never used. It now names the images that a scored source was cut from."""
    paths, cat = _flux_unit_mosaic(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate(cat, [paths["far"], paths["nan"], paths["good"]],
                                  model=optical_model)
    assert not np.any(out["opt_flags"] & Flag.unusable())
    [message] = _flux_unit_messages(caught)
    assert "good.fits[0]: MAGZERO=30" in message, message
    assert "nan.fits" not in message and "far.fits" not in message, message
    # images whose every source is off them, or on no data: no such warning at all
    for images, said in (([paths["far"]], "no source lies on the images"),
                         ([paths["nan"]], "")):
        with pytest.warns(UnusableInputWarning, match=said) as caught:
            out = astromorph.annotate(cat, images, model=optical_model)
        flag = Flag.OFF_IMAGE if images == [paths["far"]] else Flag.BAD_INPUT | Flag.BLANK
        assert np.all(out["opt_flags"] & flag == flag), out["opt_flags"]
        assert not _flux_unit_messages(caught), _flux_unit_messages(caught)


@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_annotate_dask_flux_unit_warning_names_only_the_images_cut_from(
        optical_model, tmp_path, scheduler):
    """annotate_dask's partitions each named every image of the bands used in the warning
    of headers not in nanomaggies; it is now given once, naming the images that a scored
    source of any partition was cut from, whether computed here or lazily."""
    pytest.importorskip("dask")
    paths, cat = _flux_unit_mosaic(tmp_path)
    images = [paths["far"], paths["nan"], paths["good"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate_dask(cat, images, model=str(optical_model.path),
                                       partition_size=2, scheduler=scheduler)
    assert len(out) == 6 and not np.any(out["opt_flags"] & Flag.unusable())
    [message] = _flux_unit_messages(caught)
    assert "good.fits[0]: MAGZERO=30" in message, message
    assert "nan.fits" not in message and "far.fits" not in message, message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate_dask(cat, [paths["far"]], model=str(optical_model.path),
                                 partition_size=2, scheduler=scheduler)
    assert not _flux_unit_messages(caught), _flux_unit_messages(caught)
    if scheduler == "synchronous":  # lazily: the partitions name each image once
        import dask

        parts = astromorph.annotate_dask(cat, images, model=str(optical_model.path),
                                         partition_size=2, compute=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dask.compute(*parts, scheduler="synchronous")
        [message] = _flux_unit_messages(caught)
        assert "good.fits[0]: MAGZERO=30" in message and "far.fits" not in message, message


def test_provenance_names_only_the_images_of_the_bands_used(optical_model, tmp_path):
    """u, g, r, i, z files for a model that takes g, r, i: astromorph_images listed the u and
    z files too, as if they had been used; it now names the images of the bands scored."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100)])
    paths = []
    for band in "ugriz":
        hdr = w.to_header()
        hdr["FILTER"] = band
        paths.append(str(tmp_path / f"{band}.fits"))
        fits.writeto(paths[-1], img, hdr)
    out = astromorph.annotate(cat, paths, model=optical_model)
    assert out.meta["astromorph_images"] == ",".join(sorted(paths[1:4]))


@pytest.mark.parametrize("names", [("IMAGE", "MASK", "VARIANCE"), ("SCI", "WHT", "CTX"),
                                   ("SCI", "MSK", "WGT"), ("SCI", "CON", "VAR_POISSON"),
                                   ("SCI", "ERR", "VAR_RNOISE"), ("SCI", "WHT", "VAR_FLAT")])
def test_mask_and_weight_planes_of_a_file_are_not_read_as_tiles(optical_model, tmp_path, names):
    """HSC calexp (IMAGE, MASK, VARIANCE), HST drizzled (SCI, WHT, CTX), DES coadd (SCI,
    MSK, WGT) and JWST i2d (SCI, ERR, CON, WHT, VAR_POISSON...) files hold their mask and weight planes, with the same WCS, beside the image:
    they were read as tiles of the image's band, and a source on a blank (NaN) pixel of the
    image was cut from the mask or variance plane instead, and scored, silently. Those planes
    are now left out where the file has an image plane."""
    img, w = blobs(), sky_wcs()
    img[95:106, 95:106] = np.nan  # no data under the source (a masked core, a gap)
    cat = catalogue(w, [(100, 100), (60, 60)])
    hdr = w.to_header()
    rng = np.random.default_rng(3)
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(img, hdr, name=names[0]),
                         fits.ImageHDU(rng.integers(0, 64, img.shape).astype(np.int32), hdr,
                                       name=names[1]),
                         fits.ImageHDU(rng.random(img.shape).astype(np.float32), hdr,
                                       name=names[2])])
    hdul.writeto(tmp_path / "calexp.fits")
    alone = astromorph.annotate(cat, {"r": (img, w)}, model=optical_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmbiguousInputWarning)
        for images in ({"r": str(tmp_path / "calexp.fits")}, str(tmp_path / "calexp.fits")):
            out = astromorph.annotate(cat, images, model=optical_model)
            assert np.asarray(out["opt_flags"]).tolist() == np.asarray(alone["opt_flags"]).tolist()
            assert_scores(out["opt_p_a"], alone["opt_p_a"], rtol=1e-5)
            assert out.meta["astromorph_images"] == str(tmp_path / "calexp.fits")


def test_band_named_in_the_primary_header_of_an_image_extension(optical_model, tmp_path):
    """HSC calexp files keep FILTER in the primary header and the image in an IMAGE
    extension: a list of g, r, i such files was read as one unnamed band, scored grey (with
    the "cover the same pixels" warning). The primary header's band keywords are now read
    where the extension names no band, so the list scores as the same files in a dict."""
    w = sky_wcs()
    cat = catalogue(w, [(100, 100), (60, 60)])
    paths = {}
    for k, band in enumerate("gri"):
        hdr = w.to_header()
        hdul = fits.HDUList([fits.PrimaryHDU(header=fits.Header([("FILTER", f"HSC-{band.upper()}")])),
                             fits.ImageHDU(blobs(seed=k) * (1 + k), hdr, name="IMAGE"),
                             fits.ImageHDU(np.zeros((200, 200), np.int32), hdr, name="MASK")])
        paths[band] = str(tmp_path / f"calexp-{band}.fits")
        hdul.writeto(paths[band])
    named = astromorph.annotate(cat, paths, model=optical_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousInputWarning)
        out = astromorph.annotate(cat, list(paths.values()), model=optical_model)
    assert_scores(out["opt_p_a"], named["opt_p_a"], rtol=1e-5)
    assert out.meta["astromorph_images"] == ",".join(sorted(paths.values()))


@pytest.mark.parametrize("cards, band", [
    ({"FILTER1": "CLEAR1L", "FILTER2": "F814W"}, "f814w"),  # HST ACS
    ({"FILTER1": "F606W", "FILTER2": "CLEAR2L"}, "f606w"),
    ({"FILTNAM1": "", "FILTNAM2": "F555W"}, "f555w"),  # WFPC2
    ({"FILTER": "HSC-R2"}, "r")])
def test_band_of_header_reads_filter_wheels_and_the_primary_header(cards, band):
    from astromorph._readers._fits import band_of_header

    primary = fits.Header(list(cards.items()))
    assert band_of_header(fits.Header([("EXTNAME", "IMAGE")]), primary) == band
    assert band_of_header(primary) == band
    # the extension's own band comes first
    assert band_of_header(fits.Header([("FILTER", "g")]), primary) == "g"


def test_zero_point_in_the_primary_header_of_an_image_extension_warns(optical_model, tmp_path):
    """HSC calexp files keep FLUXMAG0 (zero point 27) in the primary header and the image
    in an IMAGE extension: the unit check read the extension only and said nothing."""
    w = sky_wcs()
    cat = catalogue(w, [(100, 100)])
    primary = fits.PrimaryHDU(header=fits.Header([("FILTER", "HSC-R"),
                                                  ("FLUXMAG0", 10 ** (0.4 * 27))]))
    fits.HDUList([primary, fits.ImageHDU(blobs(), w.to_header(), name="IMAGE")]).writeto(
        tmp_path / "calexp.fits")
    with pytest.warns(AstromorphWarning, match="zero point 27"):
        astromorph.annotate(cat, str(tmp_path / "calexp.fits"), model=optical_model)


@pytest.mark.filterwarnings("ignore::astropy.io.votable.exceptions.W50")  # the units under test
def test_catalogue_unit_strings_astropy_does_not_parse(optical_model, tmp_path):
    """VizieR's sexagesimal columns (unit 'h:m:s', 'd:m:s') and FITS TUNITs such as
    'DEGREES' or 'ARCSEC' are unit strings astropy does not recognise: they used to crash
    annotate with a bare ValueError; they are read as the angles they name, and a unit
    string that names no angle is an InputError naming it."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    c = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    viz = Table({"RAJ2000": c.ra.to_string(u.hourangle, sep=" ", precision=6, pad=True),
                 "DEJ2000": c.dec.to_string(u.deg, sep=" ", precision=5, alwayssign=True,
                                            pad=True)})
    viz["RAJ2000"].unit, viz["DEJ2000"].unit = "h:m:s", "d:m:s"
    viz.write(tmp_path / "viz.vot", format="votable")
    with warnings.catch_warnings():  # astropy's W50: invalid unit string 'h:m:s'
        warnings.simplefilter("ignore")
        viz = Table.read(tmp_path / "viz.vot", format="votable")
    assert isinstance(viz["RAJ2000"].unit, u.UnrecognizedUnit)
    assert_scores(astromorph.annotate(viz, (img, w), model=optical_model)["opt_p_a"],
                  ref["opt_p_a"], rtol=1e-4)
    cols = [fits.Column(name="RA", format="D", unit="DEGREES", array=cat["ra"]),
            fits.Column(name="DEC", format="D", unit="Degrees", array=cat["dec"]),
            fits.Column(name="R90", format="D", unit="ARCSEC", array=[2.0, 3.0])]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "cat.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        tab = QTable.read(tmp_path / "cat.fits")
    assert_scores(astromorph.annotate(tab, (img, w), model=optical_model)["opt_p_a"],
                  ref["opt_p_a"], rtol=1e-6)
    np.testing.assert_array_equal(astromorph._annotate._size_values(tab, "R90"), [2.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        tab = Table.read(tmp_path / "cat.fits")
    tab["DEC"].unit = u.Unit("furlongs", parse_strict="silent")
    with pytest.raises(InputError, match="position column 'DEC'.*'furlongs'"):
        astromorph.annotate(tab, (img, w), model=optical_model)
    tab["R90"].unit = u.Unit("PIXELS", parse_strict="silent")
    with pytest.raises(InputError, match="size column 'R90'.*'PIXELS'"):
        astromorph._annotate._size_values(tab, "R90")


def test_size_column_without_a_unit_is_read_in_arcsec():
    """A size column of plain numbers is in arcsec (the documented default: a catalogue's
    R90 or Petrosian radius), not degrees, which would make stamps 3600 times too wide;
    masked entries and text that is no number are NaN (no size)."""
    from astromorph._annotate import _size_values

    tab = Table({"r": MaskedColumn([2.0, 3.0, 4.0], mask=[False, False, True])})
    np.testing.assert_array_equal(_size_values(tab, "r"), [2.0, 3.0, np.nan])
    tab = Table({"r": ["1.5", "big"]})
    np.testing.assert_array_equal(_size_values(tab, "r"), [1.5, np.nan])


def test_ra_in_hours_of_time_is_converted(optical_model):
    """An RA column of decimal hours with the unit 'h' (an hour of time, as VizieR and
    astropy write it) used to be refused as 'not an angle'; it is hours of right
    ascension (15 degrees each). A Dec in hours is still refused."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    hours = Table({"RA": cat["ra"] / 15, "DEC": cat["dec"]})
    hours["RA"].unit = "h"
    assert_scores(astromorph.annotate(hours, (img, w), model=optical_model)["opt_p_a"],
                  ref["opt_p_a"], rtol=1e-6)
    hours["DEC"].unit = "h"
    with pytest.raises(InputError, match="position column 'DEC' is in h"):
        astromorph.annotate(hours, (img, w), model=optical_model)
    days = Table({"RA": cat["ra"] / 360, "DEC": cat["dec"]})
    days["RA"].unit = "d"  # a day is no unit of right ascension
    with pytest.raises(InputError, match="position column 'RA' is in d"):
        astromorph.annotate(days, (img, w), model=optical_model)


def test_several_position_columns_that_disagree_warn(optical_model):
    """A catalogue with two RA (or Dec) columns of the default names (RA and RAJ2000 of
    different epochs, ra and RA of different sources) used to be read from the first name
    in the list without a word: a warning names the columns and the one used, unless they
    agree (VizieR's computed _RAJ2000 beside its sexagesimal RAJ2000)."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    two = Table({"RA": cat["ra"], "DEC": cat["dec"], "RAJ2000": cat["ra"] + 1e-4,  # 0.36"
                 "DEJ2000": cat["dec"]})
    with pytest.warns(AmbiguousInputWarning, match=r"RA columns \['RA', 'RAJ2000'\].*'RA'"):
        astromorph.annotate(two, (img, w), model=optical_model)
    c = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    same = Table({"_RAJ2000": cat["ra"], "_DEJ2000": cat["dec"],
                  "RAJ2000": c.ra.to_string(u.hourangle, sep=" ", precision=2)})  # 0.01 s
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousInputWarning)
        out = astromorph.annotate(same, (img, w), model=optical_model)
    assert not out["opt_flags"].any()
    # VizieR's and Gaia's own names, and a name in other case, are found
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    for ra, dec in (("RA_ICRS", "DE_ICRS"), ("RAdeg", "DEdeg"), ("Ra", "DEc")):
        named = Table({ra: cat["ra"], dec: cat["dec"]})
        assert_scores(astromorph.annotate(named, (img, w), model=optical_model)[
            "opt_p_a"], ref["opt_p_a"], rtol=1e-6)


def test_ra_and_dec_of_one_naming_family_are_read_together(optical_model):
    """RA and Dec were found separately: a catalogue with an 'ra' of another epoch beside
    RAJ2000/DEJ2000 (and no 'dec') paired 'ra' with DEJ2000. The RA and Dec of one family
    are now read together (with the warning that the RA columns disagree)."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    mixed = Table({"ra": cat["ra"] - 0.3, "RAJ2000": cat["ra"], "DEJ2000": cat["dec"]})
    with pytest.warns(AmbiguousInputWarning, match=r"'RAJ2000' is used"):
        out = astromorph.annotate(mixed, (img, w), model=optical_model)
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-6)
    assert not out["opt_flags"].any()


def test_galactic_columns_are_never_read_as_ra_dec(optical_model):
    """A catalogue with Galactic columns only is refused with a word on how to give them
    (a SkyCoord column in the Galactic frame), and so are Galactic columns passed as
    ra_col=/dec_col=, which used to be read as RA/Dec without a word."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)])
    g = SkyCoord(cat["ra"], cat["dec"], unit="deg").galactic
    for lon, lat in (("GLON", "GLAT"), ("l", "b")):
        gal = Table({lon: g.l.deg, lat: g.b.deg})
        with pytest.raises(InputError, match=f"{lon}.*Galactic.*SkyCoord"):
            astromorph.annotate(gal, (img, w), model=optical_model)
        with pytest.raises(InputError, match=f"'{lon}'.*Galactic"):
            astromorph.annotate(gal, (img, w), model=optical_model, ra_col=lon, dec_col=lat)
    gal = Table({"coord": g})  # the way to give them
    assert_scores(astromorph.annotate(gal, (img, w), model=optical_model)["opt_p_a"],
                  astromorph.annotate(cat, (img, w), model=optical_model)["opt_p_a"],
                  rtol=1e-5)


def test_cli_reads_votable_and_ipac_catalogues(optical_model, tmp_path):
    """Catalogues as VizieR, SIMBAD and IRSA serve them: a VOTable (.vot, .xml) with
    sexagesimal RA/Dec in 'h:m:s'/'d:m:s', an IPAC table (.tbl); the command used to refuse
    their extensions. They are read (not written: the output formats are unchanged)."""
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, [(100, 100), (80, 90)])
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    c = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    simbad = Table({"MAIN_ID": ["a", "b"],
                    "RA": c.ra.to_string(u.hourangle, sep=" ", precision=6, pad=True),
                    "DEC": c.dec.to_string(u.deg, sep=" ", precision=5, alwayssign=True, pad=True)})
    simbad["RA"].unit, simbad["DEC"].unit = "h:m:s", "d:m:s"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simbad.write(tmp_path / "simbad.vot", format="votable")
        simbad.write(tmp_path / "simbad.xml", format="votable")
        cat.write(tmp_path / "irsa.tbl", format="ascii.ipac")
    for name in ("simbad.vot", "simbad.xml", "irsa.tbl"):
        out = tmp_path / f"out_{name}.ecsv"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert cli.main(["annotate", str(tmp_path / name), "-i", str(tmp_path / "img.fits"),
                             "-m", str(optical_model.path), "-o", str(out)]) == 0
        assert_scores(Table.read(out)["opt_p_a"], ref["opt_p_a"], rtol=1e-4)
    with pytest.raises(astromorph.exceptions.InvalidArgumentError, match="extension"):
        astromorph._io.table_format(tmp_path / "out.vot")  # writing: as before


def test_unitless_positions_are_read_as_degrees_and_logged(optical_model, caplog):
    """RA/Dec columns without a unit are read as degrees (the documented default, all a CSV
    catalogue can give) with no warning, the columns named in the log; the same values with
    a unit, as text or as a SkyCoord give the same result."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)], unit=None)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, "astromorph._annotate"):
        warnings.simplefilter("error", AstromorphWarning)
        out = astromorph.annotate(cat, (img, w), model=optical_model)
    said = [r.getMessage() for r in caplog.records if "have no unit" in r.getMessage()]
    assert said == ["the catalogue's position column(s) 'ra', 'dec' have no unit: read as "
                    "degrees (an RA in hours: table['ra'].unit = 'hourangle')"]
    with_units = cat.copy()
    with_units["ra"].unit = with_units["dec"].unit = u.deg
    hms = Table({"ra": [c.to_string(u.hourangle, sep=":", precision=6)
                        for c in Angle(cat["ra"], u.deg)],
                 "dec": [c.to_string(u.deg, sep=":", precision=6)
                         for c in Angle(cat["dec"], u.deg)]})
    caplog.clear()
    with caplog.at_level(logging.INFO, "astromorph._annotate"):
        ref = astromorph.annotate(with_units, (img, w), model=optical_model)
        by_text = astromorph.annotate(hms, (img, w), model=optical_model)
    assert not [r for r in caplog.records if "have no unit" in r.getMessage()]
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=0)
    assert_scores(by_text["opt_p_a"], ref["opt_p_a"], atol=1e-5)


def test_unitless_ra_from_minus_180_to_180_is_wrapped(optical_model):
    """A unitless RA column none of whose values exceeds 180 may be written from -180 to
    180 (as for plots): -10 is 350, the row is scored where a column in degrees puts it,
    not flagged."""
    img, w = blobs(), sky_wcs(crval=(0.0, 0.0))  # the image straddles RA 0
    cat = catalogue(w, [(100, 100), (80, 90), (120, 110)], unit=u.deg)
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    signed = cat.copy()
    signed["ra"] = np.where(cat["ra"] > 180, cat["ra"] - 360.0, cat["ra"])
    signed["ra"].unit = signed["dec"].unit = None
    assert (signed["ra"] < 0).any() and (signed["ra"] >= 0).any()
    out = astromorph.annotate(signed, (img, w), model=optical_model)
    assert np.asarray(out["opt_flags"]).tolist() == np.asarray(ref["opt_flags"]).tolist()
    assert_scores(out["opt_p_a"], ref["opt_p_a"], atol=1e-6)


@pytest.mark.parametrize("axis", ["ra", "dec"])
def test_unitless_positions_that_cannot_be_degrees_are_an_input_error(optical_model, axis):
    """A unitless RA column whose every value is outside [0, 360] (or Dec outside
    [-90, 90]) is in no unit astromorph can assume: arcsec written as plain numbers were
    read as degrees (RA wrapped, Dec flagged on every row). It is an InputError naming the
    column, the value and the range."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)], unit=None)
    cat[axis] = cat[axis] * 3600  # arcsec
    lo, hi = (0, 360) if axis == "ra" else (-90, 90)
    with pytest.raises(InputError, match=rf"^position column '{axis}' has no unit and is read "
                                         rf"as degrees, but no value of it is one \(from {lo} "
                                         rf"to {hi}\): first {cat[axis][0]:g};"):
        astromorph.annotate(cat, (img, w), model=optical_model)


def test_unitless_ra_out_of_range_on_some_rows_is_flagged(optical_model):
    """Unitless RA values outside [0, 360] on some rows (sentinels such as -999, or an RA
    taken 360 degrees off) were wrapped onto the sky (-999 deg is 81 deg) and scored there
    without a word; they are now flagged BAD_INPUT, as a Dec beyond the pole is. A column
    whose unit says degrees is wrapped, as astropy's Longitude does."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90), (90, 110), (110, 90)], unit=None)
    cat["ra"][1] -= 360.0
    cat["ra"][2] += 360.0
    cat["ra"][3] = -999.0
    with warns_bad_positions(3, 4):
        out = astromorph.annotate(cat, (img, w), model=optical_model)
    assert np.asarray(out["opt_flags"]).tolist() == [0] + [int(Flag.BAD_INPUT)] * 3
    cat["ra"].unit = cat["dec"].unit = u.deg
    out = astromorph.annotate(cat, (img, w), model=optical_model)
    assert np.asarray(out["opt_flags"]).tolist()[:3] == [0, 0, 0]


@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_annotate_dask_says_what_annotate_says_of_sources_on_blank_pixels(
        optical_model, tmp_path, scheduler):
    """A partition of sources off the image and one of sources on a blank (NaN) part of it:
    the second's rows are flagged BAD_INPUT, so annotate_dask took that partition for one
    without a usable position and gave the first's "no source lies on the images" as true of
    the table. It now gives annotate's warning on the same table: the sources on the images
    lie on blank pixels, counted over the table, once."""
    pytest.importorskip("dask")
    w = sky_wcs()
    img = blobs()
    img[:, :100] = np.nan
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, [(-300, 500), (-320, 510), (40, 100), (30, 120), (-340, 520)])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = astromorph.annotate(cat, str(tmp_path / "img.fits"), model=optical_model)
    [expected] = unusable_messages(caught)
    assert expected.startswith("no source on the images has data under it: the 2 source(s)")
    assert "3 other(s) lie off every image" in expected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                       model=str(optical_model.path), partition_size=2,
                                       scheduler=scheduler, sky_order=False)
    got = unusable_messages(caught)
    assert got == [expected + " (in 1 of 3 Dask partitions)"], got
    np.testing.assert_array_equal(out["opt_flags"], ref["opt_flags"])
    # one source on data, in a partition of its own: nothing said of the table
    cat = vstack_rows(cat, catalogue(w, [(150, 100)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusableInputWarning)
        astromorph.annotate_dask(cat, str(tmp_path / "img.fits"), model=str(optical_model.path),
                                 partition_size=2, scheduler=scheduler, sky_order=False)


def test_unitless_ra_under_24_with_no_source_on_the_images_says_hours(optical_model):
    """An RA column of decimal hours without a unit is read as degrees (the documented
    default): every source then lies off the images and the output was all masked without
    a word. When no source lies on any image and the unitless RA values are all under 24
    (or under 2 pi: radians), an UnusableInputWarning says how they were read and how to
    give hours; a catalogue that is simply elsewhere on the sky gets no such hint."""
    img, w = blobs(), sky_wcs()
    cat = catalogue(w, [(100, 100), (80, 90)], unit=None)
    hours = Table({"ra": cat["ra"] / 15, "dec": cat["dec"]})
    with pytest.warns(astromorph.exceptions.UnusableInputWarning,
                      match=r"no source.*'ra' has no unit.*under 24.*degrees.*hourangle"):
        out = astromorph.annotate(hours, (img, w), model=optical_model)
    assert (out["opt_flags"] == Flag.OFF_IMAGE).all()
    elsewhere = Table({"ra": cat["ra"] + 30, "dec": cat["dec"]})
    with pytest.warns(astromorph.exceptions.UnusableInputWarning) as record:
        astromorph.annotate(elsewhere, (img, w), model=optical_model)
    (unusable,) = [r for r in record if r.category is astromorph.exceptions.UnusableInputWarning]
    assert "hourangle" not in str(unusable.message)
    with warnings.catch_warnings():  # some sources on the image: nothing to say
        warnings.simplefilter("error", astromorph.exceptions.UnusableInputWarning)
        astromorph.annotate(vstack_rows(cat, elsewhere), (img, w), model=optical_model)


def unusable_messages(caught):
    return [str(x.message) for x in caught if issubclass(x.category, UnusableInputWarning)]


def test_sources_on_blank_pixels_are_not_said_to_lie_off_the_images(optical_model):
    """A source on a blank (all-NaN) part of the image and another off the image: annotate
    said "no source lies on the images: every source with a position is off every image",
    which is false (one lies on the image, on no data; flagged BLANK | BAD_INPUT) and sends
    the reader after a coordinate or WCS mistake, with the hours hint of a unitless RA under
    24. It now says that the sources on the images lie on blank pixels, without the hint."""
    w = sky_wcs(crval=(10.0, 2.2))
    img = blobs()
    img[:, :100] = np.nan  # the left half blank
    cat = catalogue(w, [(40, 100), (-300, 500)], unit=None)  # RA ~10: under 24, no unit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate(cat, (img, w), model=optical_model)
    assert [int(f) & int(Flag.BAD_INPUT | Flag.OFF_IMAGE) for f in out["opt_flags"]] == [
        int(Flag.BAD_INPUT), int(Flag.OFF_IMAGE)]
    assert int(out["opt_flags"][0]) & int(Flag.BLANK)
    [message] = unusable_messages(caught)
    assert message.startswith("no source on the images has data under it: the 1 source(s) on "
                              "the images lie on blank pixels"), message
    assert "BAD_INPUT" in message and "1 other(s) lie off every image" in message
    assert "hourangle" not in message and "no source lies on the images" not in message
    # every source on blank pixels, none off: said alike (the output is all masked)
    cat = catalogue(w, [(40, 100), (30, 120)], unit=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate(cat, (img, w), model=optical_model)
    [message] = unusable_messages(caught)
    assert message.startswith("no source on the images has data under it: the 2 source(s)")
    assert "off every image" not in message
    # one source on data: nothing to say of the table
    cat = catalogue(w, [(40, 100), (150, 100), (-300, 500)], unit=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusableInputWarning)
        out = astromorph.annotate(cat, (img, w), model=optical_model)
    assert int(out["opt_flags"][1]) == 0
    # no source on the image: the warning and its hours hint, as before
    cat = catalogue(w, [(-300, 500), (-320, 510)], unit=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate(cat, (img, w), model=optical_model)
    [message] = unusable_messages(caught)
    assert message.startswith("no source lies on the images") and "hourangle" in message


def vstack_rows(*tables):
    from astropy.table import vstack

    return vstack([t["ra", "dec"] for t in tables])


# ------------------------------------------------------------------ saturation
def _star_field(w, pix, peaks, n=200):
    """Blobs background with a Gaussian star (sigma 1.5 pixels) of each peak at each pixel
    position, clipped at 1000 as a detector saturating at 1000 records it."""
    img = blobs(n).astype(np.float64)
    yy, xx = np.mgrid[:n, :n]
    for (x, y), amp in zip(pix, peaks):
        img += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
    return np.minimum(img, 1000.0).astype(np.float32)


def test_saturated_cores_are_flagged_from_the_header_level(optical_model, tmp_path):
    """A FITS image whose header gives a saturation level (SATURATE; the smaller of DECam's
    SATURATA/SATURATB; SATLEVEL; the primary header's for an extension) flags SATURATED the
    sources whose core reaches it, not the faint ones; outputs are still computed. A file
    with no such keyword never gets the flag, whatever its pixels; NaN and masking
    sentinels (+1e30) near the centre are no data, never saturated."""
    w = sky_wcs()
    pix = [(100, 100), (60, 60), (140, 60)]
    img = _star_field(w, pix, [20000.0, 20.0, 20.0])
    img[59:62, 59:62] = np.nan       # a masked core on the faint source...
    img[60, 140] = 1e30              # ...and a masking sentinel on the other
    cat = catalogue(w, pix)

    def run(name, img=img, extension=False, **cards):
        header = w.to_header()
        header.update(cards)
        if extension:  # the level in the primary header only
            hdus = [fits.PrimaryHDU(header=fits.Header(cards)), fits.ImageHDU(img, w.to_header())]
        else:
            hdus = [fits.PrimaryHDU(img, header=header)]
        fits.HDUList(hdus).writeto(tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstromorphWarning)  # BLANK pixels
            out = astromorph.annotate(cat, str(tmp_path / name), model=optical_model)
        return np.asarray(out["opt_flags"]) & int(Flag.SATURATED), out

    sat, out = run("saturate.fits", SATURATE=1000.0)
    assert sat.tolist() == [Flag.SATURATED, 0, 0]
    assert not out["opt_p_a"].mask.any()  # informative: every row is scored
    assert run("amps.fits", SATURATA=5000.0, SATURATB=1000)[0].tolist() == [Flag.SATURATED, 0, 0]
    assert run("amps_high.fits", SATURATA=5000.0, SATURATB=2000.0)[0].tolist() == [0, 0, 0]
    assert run("satlevel.fits", SATLEVEL=1000.0)[0].tolist() == [Flag.SATURATED, 0, 0]
    assert run("primary.fits", extension=True, SATURATE=1000.0)[0].tolist() \
        == [Flag.SATURATED, 0, 0]
    assert run("none.fits")[0].tolist() == [0, 0, 0]
    assert run("text.fits", SATURATE="high")[0].tolist() == [0, 0, 0]  # no number: no level
    # the level is that of the pixels' values: a star just below it is not saturated
    below = _star_field(w, pix, [20000.0, 20.0, 20.0]) * np.float32(0.999)
    assert run("below.fits", img=below, SATURATE=1000.0)[0].tolist() == [0, 0, 0]


def test_saturation_is_tested_on_the_pixels_of_the_data_not_the_resampled_stamp(
        optical_model):
    """A single saturated pixel at the source is flagged although the stamp, resampled to
    coarser pixels (block-averaged 4 x 4), never reaches the level; one 5 pixels from the
    source (outside the 3-pixel radius) is not; a source whose core is a plateau at the
    level is."""
    w = sky_wcs(scale=0.1)  # 0.1" pixels, model 0.5": stamps average blocks of pixels
    img = blobs()
    pix = [(100, 100), (60, 60), (140, 140)]
    img[100, 100] = 1000.0
    img[60, 65] = 1000.0
    img[138:143, 138:143] = 1000.0
    header = w.to_header()
    header["SATURATE"] = 1000.0
    out = astromorph.annotate(catalogue(w, pix), fits.PrimaryHDU(img, header=header),
                              model=optical_model)
    sat = np.asarray(out["opt_flags"]) & int(Flag.SATURATED)
    assert sat.tolist() == [Flag.SATURATED, 0, Flag.SATURATED]


def _drizzled(path, w, img, cards):
    """An HST-like drizzled file: the filter in the primary header, SCI, WHT and CTX."""
    hdr = w.to_header()
    fits.HDUList([fits.PrimaryHDU(header=fits.Header(cards)),
                  fits.ImageHDU(img, hdr, name="SCI"),
                  fits.ImageHDU(np.ones(img.shape, np.float32), hdr, name="WHT"),
                  fits.ImageHDU(np.ones(img.shape, np.int32), hdr, name="CTX")]).writeto(path)
    return str(path)


def test_a_lone_sci_extension_is_read_by_its_filter(optical_model, tmp_path):
    """EXTNAME SCI (HST and JWST drizzled files, DES coadds) was read as the science member
    of a real/bogus triplet: a list of g, r, i (or F435W, F606W, F814W) drizzled files was
    one band 'science', its files read as tiles of one mosaic, and every source cut from
    whichever file came first, silently. For a model that takes no triplet, a SCI extension
    with no reference or difference beside it is now read by its filter band; real triplets
    (SCI, REF, DIFF) are read as before."""
    w = sky_wcs()
    cat = catalogue(w, [(100, 100), (60, 60)])
    imgs = [blobs(seed=k) * (1 + k) for k in range(3)]
    paths = [_drizzled(tmp_path / f"{b}_drz.fits", w, img, [("FILTER", b)])
             for b, img in zip("gri", imgs)]
    named = astromorph.annotate(cat, dict(zip("gri", [(img, w) for img in imgs])),
                                model=optical_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousInputWarning)
        out = astromorph.annotate(cat, paths, model=optical_model)
    assert_scores(out["opt_p_a"], named["opt_p_a"], rtol=1e-5)
    hst = [_drizzled(tmp_path / f"{k}_drz.fits", w, img, cards) for k, (img, cards) in enumerate(
        zip(imgs, ([("FILTER1", "F435W"), ("FILTER2", "CLEAR2L")],
                   [("FILTER1", "F606W"), ("FILTER2", "CLEAR2L")],
                   [("FILTER1", "CLEAR1L"), ("FILTER2", "F814W")])))]
    with pytest.warns(AmbiguousInputWarning, match=r"\['f435w', 'f606w', 'f814w'\].*'f435w'"):
        out = astromorph.annotate(cat, hst, model=optical_model)
    alone = astromorph.annotate(cat, (imgs[0], w), model=optical_model)
    assert_scores(out["opt_p_a"], alone["opt_p_a"], rtol=1e-5)
    # a triplet model still reads SCI as the science image, and says what is missing
    with pytest.raises(InputError, match=r"missing \['reference', 'difference'\]"):
        astromorph.annotate(cat, hst[0], model="real-bogus")
    # real triplets, with a filter named too: read as triplets, in one file or three
    w1 = sky_wcs(scale=1.0)
    cat1 = catalogue(w1, [(100, 100), (60, 60)])
    planes = {role: blobs(seed=5 + k) for k, role in enumerate(("SCI", "REF", "DIFF"))}
    mef = tmp_path / "triplet.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header([("FILTER", "r")]))]
                 + [fits.ImageHDU(img, w1.to_header(), name=role)
                    for role, img in planes.items()]).writeto(mef)
    files = []
    for role, img in planes.items():
        hdr = w1.to_header()
        hdr["EXTNAME"], hdr["FILTER"] = role, "r"
        files.append(str(tmp_path / f"{role}.fits"))
        fits.writeto(files[-1], img, hdr)
    ref = astromorph.annotate(cat1, dict(zip(("science", "reference", "difference"),
                                             [(img, w1) for img in planes.values()])),
                              model="real-bogus")
    for images in (str(mef), files):
        out = astromorph.annotate(cat1, images, model="real-bogus")
        assert_scores(out["rb_score"], ref["rb_score"], rtol=1e-5)
        with pytest.warns(AmbiguousInputWarning, match="using band 'science'"):
            astromorph.annotate(cat1, images, model=optical_model)


@pytest.mark.parametrize("name, band", [
    ("SDSS r", "r"), ("r_SDSS", "r"), ("r'", "r"), ("F606W", "f606w"), ("HSC-R2", "r"),
    ("DECam r", "r"), ("g DECam SDSS c0001 4720.0 1520.0", "g"), ("ZTF_r", "r"),
    ("zr", "r"), ("zg", "g"), ("zi", "i"),  # ZTF filter codes
    ("SDSS/r", "r"), ("r(SDSS)", "r"), ("SDSS:g", "g"), ("HSC-I2", "i"), ("g.MP9401", "g"),
    ("CLEAR", "clear"), ("Ks", "ks"), ("  ", None),
    # Gaia's G (330-1050 nm), BP and RP are not SDSS bands: the name itself, no letter
    ("Gaia G", "gaia g"), ("GAIA-G", "gaia-g"), ("Gaia BP", "gaia bp")])
def test_one_band_normaliser_for_images_and_stamps(name, band, tmp_path):
    """annotate (`band_of_header`, its own pattern) and the stamp readers (`normalise_band`)
    read filter names with two patterns: 'SDSS/r' or 'r(SDSS)' were band r for stamps and
    bands 'sdss/r', 'r(sdss)' for annotate, and ZTF's filter codes (zg, zr, zi) were no
    band at all for either. One function now serves both."""
    from astromorph._readers import read_file
    from astromorph._readers._fits import normalise_band

    assert normalise_band(name) == band
    w = sky_wcs()
    hdr = w.to_header()
    hdr["FILTER"] = name
    fits.writeto(tmp_path / "im.fits", blobs(), hdr)
    with closing_files(parse_sky_images(str(tmp_path / "im.fits"))) as [im]:
        assert im.band == band
    (stamp,) = read_file(tmp_path / "im.fits", want_scale=False, triplet_hint=False)
    assert stamp.bands == (band,)


def test_extname_names_the_band_of_an_image_extension_for_annotate(optical_model, tmp_path):
    """A file of one image extension per band named by EXTNAME (G, R, I) was read as g, r, i
    by predict_files but as three unnamed tiles of one band by annotate (scored grey, with
    the "cover the same pixels" warning): both read the band the same way now."""
    w = sky_wcs()
    cat = catalogue(w, [(100, 100), (60, 60)])
    imgs = [blobs(seed=k) * (1 + k) for k in range(3)]
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(img, w.to_header(), name=b)
                                        for b, img in zip("GRI", imgs)]).writeto(
        tmp_path / "gri.fits")
    named = astromorph.annotate(cat, dict(zip("gri", [(img, w) for img in imgs])),
                                model=optical_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousInputWarning)
        out = astromorph.annotate(cat, str(tmp_path / "gri.fits"), model=optical_model)
    assert_scores(out["opt_p_a"], named["opt_p_a"], rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_integer_images_give_their_own_values(tmp_path, dtype):
    """A uint32 or uint64 image, stored as FITS stores unsigned integers (signed, with
    BZERO = 2**(BITPIX - 1)), gives its own values where annotate reads its pixels (by
    index, in row strips, read whole): in float32, raw + 2**31 made every value below 128
    a 0, and a 64-bit image was all zeros."""
    w = sky_wcs()
    raw = np.arange(40 * 30).reshape(40, 30).astype(dtype)
    raw[-1, -1] = 2**15 + 3 if dtype == np.uint16 else 2**31 + 256
    path = tmp_path / "u.fits"
    fits.PrimaryHDU(raw, header=w.to_header(), uint=True).writeto(path)
    assert fits.getheader(path)["BZERO"] == 2 ** (fits.getheader(path)["BITPIX"] - 1)
    expected = raw.astype(np.float32)
    with closing_files(parse_sky_images(str(path))) as [im]:
        np.testing.assert_array_equal(im.take(np.arange(raw.size)), expected.ravel())
        np.testing.assert_array_equal(im._strips(), expected)
        np.testing.assert_array_equal(im._read_whole(), expected)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("unscaled", [False, True])
@pytest.mark.parametrize("dtype", ["uint16", "int8"])
def test_open_hdus_of_scaled_integer_images_give_the_pixels_of_the_file(tmp_path, compressed,
                                                                        unscaled, dtype):
    """HDUs and HDULists that the caller opened (scaled by astropy, as `fits.open` does by
    default, or with ``do_not_scale_image_data``) give the stamps of the file's path: a
    uint16 image (int16 with BZERO = 32768, as raw frames and some coadds store them) was
    shifted by BZERO again when given as an HDUList, and its BLANK pixels were values; an
    image opened unscaled (uint16, or int8: bytes with BZERO = -128) was taken as its raw
    integers when given as an HDU."""
    n, w = 200, sky_wcs()
    raw = np.round(blobs(n) * 20).clip(0, 100).astype(dtype) + np.array(20, dtype)
    bzero = 32768 if dtype == "uint16" else -128
    # (astropy itself cannot scale bytes with a BLANK: no BLANK in the int8 image)
    blank = dtype == "uint16"
    if blank:
        raw[100:103, 100:104] = 7
    path = tmp_path / ("image.fits.fz" if compressed else "image.fits")
    hdu = (fits.CompImageHDU if compressed else fits.PrimaryHDU)(raw, w.to_header())
    if blank:
        hdu.header["BLANK"] = 7 - bzero  # the stored value
    if compressed:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    else:
        hdu.writeto(path)
    assert fits.getheader(path, ext=-1)["BZERO"] == bzero
    x, y = np.random.default_rng(2).uniform(20, n - 20, (2, 20))
    c = w.pixel_to_world(np.append(x, 101.5), np.append(y, 101))  # the last on BLANK pixels
    with closing_files(parse_sky_images(str(path))) as [im]:
        ref = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
    assert np.nanmin(ref.stamps[:-1]) >= 20 and np.nanmax(ref.stamps) <= 120
    assert (ref.blank[-1] > 0) == blank
    with fits.open(path, do_not_scale_image_data=unscaled) as hdul:
        for images in (hdul, hdul[-1]):
            with closing_files(parse_sky_images(images)) as [im]:
                got = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
            np.testing.assert_array_equal(got.stamps, ref.stamps)
            np.testing.assert_array_equal(got.blank, ref.blank)


@pytest.mark.parametrize("compressed", [False, True])
def test_pan_starrs_asinh_compressed_stacks_are_read_as_linear_fluxes(tmp_path, compressed):
    """Pan-STARRS1 stack images (skycells) store alpha * asinh((L - BOFFSET) / (2 BSOFTEN)),
    alpha = 2.5 log10(e), of the linear fluxes L, as BSCALE/BZERO-scaled integers in a
    tile-compressed HDU: they were sampled as if linear (a galaxy's core flattened to a few
    units, the sky at -BOFFSET's luptitude); annotate and predict_files now read L."""
    from astromorph._readers import read_file

    n, w = 200, sky_wcs()
    linear = blobs(n) * 100 - 3.0  # sky-subtracted, some pixels negative
    offset, soften = 2.0, 1.5
    alpha = 2.5 * np.log10(np.e)
    stored = alpha * np.arcsinh((linear - offset) / (2 * soften))
    header = w.to_header()
    header["BSOFTEN"], header["BOFFSET"] = soften, offset
    path = tmp_path / ("skycell.fits.fz" if compressed else "skycell.fits")
    if compressed:
        hdu = fits.CompImageHDU(stored.astype(np.float32), header, compression_type="RICE_1",
                                quantize_level=1000.0)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    else:
        fits.PrimaryHDU(stored.astype(np.float32), header).writeto(path)
    x, y = np.random.default_rng(3).uniform(20, n - 20, (2, 20))
    c = w.pixel_to_world(x, y)
    ref = cut_stamps(SkyImage(linear, w), c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
    with closing_files(parse_sky_images(str(path))) as [im]:
        got = cut_stamps(im, c.ra.deg, c.dec.deg, size=SIZE, pixel_scale=SCALE)
    np.testing.assert_allclose(got.stamps, ref.stamps, rtol=1e-3, atol=1e-3 * linear.max())
    (stamp,) = read_file(path)
    np.testing.assert_allclose(stamp.data[0], linear, rtol=1e-3, atol=1e-3 * linear.max())


def test_sources_without_a_usable_position_are_said_once(optical_model):
    """Rows whose position is unreadable text, out of range (24 h, Dec 95) or NaN were
    flagged BAD_INPUT without a word of astromorph's (astropy's IllegalHourWarning was the
    only one, for '24:00:00', and is kept: `parse_angles` keeps astropy's warnings); one
    UnusableInputWarning now counts them and names the first."""
    w = sky_wcs()
    good = catalogue(w, [(100, 100)])
    ra, dec = good["ra"][0], good["dec"][0]
    hms = Angle(ra, u.deg).to_string(u.hourangle, sep=":")
    dms = Angle(dec, u.deg).to_string(u.deg, sep=":")
    cat = Table({"ra": [hms, "xx", "24:00:00", hms], "dec": [dms, dms, dms, "95:00:00"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate(cat, (blobs(), w), model=optical_model, stamp_size=8)
    assert np.asarray(out["opt_flags"]).tolist() == [0, 32, 32, 32]
    ours = [str(c.message) for c in caught if issubclass(c.category, UnusableInputWarning)]
    assert len(ours) == 1, [str(c.message) for c in caught]
    assert ("3 of 4 row(s) have no usable position or size (NaN, masked, unreadable or out "
            "of range; first: position)") in ours[0]
    with warnings.catch_warnings():  # a clean catalogue: not a word
        warnings.simplefilter("error")
        astromorph.annotate(good, (blobs(), w), model=optical_model, stamp_size=8)


def test_bad_input_warning_says_what_it_counts(optical_model):
    """With one row off the image (flagged OFF_IMAGE, logged only) and one with a NaN
    position, two rows are masked but the warning said "1 of 3 source(s) could not be
    scored", undercounting what the user sees; it now says what it counts: the rows
    without a usable position or size, flagged BAD_INPUT."""
    w = sky_wcs()
    cat = catalogue(w, [(100, 100), (100, 100), (5000, 5000)])
    cat["ra"][1] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate(cat, (blobs(), w), model=optical_model, stamp_size=8)
    assert np.asarray(out["opt_flags"]).tolist() == [0, int(Flag.BAD_INPUT),
                                                      int(Flag.OFF_IMAGE)]
    ours = [str(c.message) for c in caught if issubclass(c.category, UnusableInputWarning)]
    assert len(ours) == 1, ours
    assert ours[0].startswith("1 of 3 row(s) have no usable position or size (NaN, masked, "
                              "unreadable or out of range; first: position): flagged "
                              "BAD_INPUT (32), outputs masked"), ours[0]
    assert "could not be scored" not in ours[0]
    assert "OFF_IMAGE" in ours[0]  # says that rows off every image are not counted here


def _votable_xml(ra, dec, *, ra_name="RAJ2000", dec_name="DEJ2000"):
    """A VOTable as a TAP service or VizieR serves it: variable-length text (ids, names:
    ``char``/``unicodeChar`` ``arraysize="*"``, with an empty cell and non-ASCII text),
    variable-length numbers (an empty cell), a null flux, units, UCDs and descriptions."""
    rows = []
    cells = [("NGC 1", "Åström", "1 2 3", "1.5"), ("", "", "", ""), ("M 31 ünï", "天体", "4", "NaN")]
    for r, d, (name, uname, epochs, flux) in zip(ra, dec, cells):
        rows.append(f"<TR><TD>{name}</TD><TD>{uname}</TD><TD>{float(r)!r}</TD>"
                    f"<TD>{float(d)!r}</TD><TD>{flux}</TD><TD>{epochs}</TD></TR>")
    return f"""<?xml version="1.0" encoding="utf-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE type="results"><TABLE name="results">
<DESCRIPTION>a test catalogue</DESCRIPTION>
<FIELD name="name" datatype="char" arraysize="*" ucd="meta.id;meta.main">
<DESCRIPTION>Source name</DESCRIPTION></FIELD>
<FIELD name="uname" datatype="unicodeChar" arraysize="*"/>
<FIELD name="{ra_name}" datatype="double" unit="deg" ucd="pos.eq.ra;meta.main">
<DESCRIPTION>Right ascension</DESCRIPTION></FIELD>
<FIELD name="{dec_name}" datatype="double" unit="deg" ucd="pos.eq.dec;meta.main"/>
<FIELD name="flux" datatype="float" unit="mJy"><VALUES null="NaN"/></FIELD>
<FIELD name="epochs" datatype="int" arraysize="*"/>
<DATA><TABLEDATA>
{chr(10).join(rows)}
</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>
"""


def test_votable_text_and_variable_length_columns_are_read_as_plain_columns(tmp_path):
    """astropy reads a VOTable ``char arraysize="*"`` column as an object column of Python
    str, which FITS and Parquet cannot hold, and an ``int arraysize="*"`` column with an
    empty cell as int arrays beside an empty float64 array. astromorph's table reader
    makes them unicode string columns (astropy's mask kept) and arrays of one dtype,
    keeping units, descriptions, UCDs and the table meta; other columns are untouched."""
    from astromorph._cli_annotate import _read_catalogue

    path = tmp_path / "cat.vot"
    path.write_text(_votable_xml([150.1, 150.2, 150.3], [2.2, 2.3, 2.4]), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = QTable.read(path, format="votable")
    t = _read_catalogue(path)
    assert t.colnames == raw.colnames and t.meta == raw.meta
    assert t.meta["description"] == "a test catalogue"
    for name, text in (("name", ["NGC 1", "", "M 31 ünï"]), ("uname", ["Åström", "", "天体"])):
        assert t[name].dtype.kind == "U", name
        assert t[name].filled("").tolist() == text
        # the empty cell is a null text cell: masked (astropy gives it as '', unmasked)
        assert not np.ma.getmaskarray(raw[name]).any()
        assert np.ma.getmaskarray(t[name]).tolist() == [False, True, False], name
    assert t["name"].info.description == "Source name"
    assert t["name"].info.meta["ucd"] == "meta.id;meta.main"
    assert {c.dtype for c in t["epochs"]} == {np.asarray(raw["epochs"][0]).dtype}
    assert [list(c) for c in t["epochs"]] == [[1, 2, 3], [], [4]]
    assert t["RAJ2000"].unit == u.deg and t["RAJ2000"].info.description == "Right ascension"
    assert t["RAJ2000"].info.meta["ucd"] == "pos.eq.ra;meta.main"
    assert t["flux"].unit == u.mJy and t["flux"].mask.tolist() == [False, True, False]
    for name in ("RAJ2000", "DEJ2000", "flux"):  # fine as astropy reads them: the same
        assert type(t[name]) is type(raw[name]) and t[name].dtype == raw[name].dtype
    # a masked text cell stays masked (whatever its data), a column of another object
    # than str (or of arrays of mixed types) is left as it is
    from astromorph._io import plain_votable_columns

    odd = Table({"name": np.ma.MaskedArray(np.array(["a", None, "ccc"], object),
                                           mask=[False, True, False]),
                 "mixed": np.array(["a", 1, None], object),
                 "arrays": np.array([np.arange(2), np.ones(2), np.zeros(0)], object)})
    odd["name"].unit, odd["name"].description = "", "Name"
    plain = plain_votable_columns(odd.copy())
    assert plain["name"].dtype.kind == "U" and plain["name"].description == "Name"
    assert plain["name"].mask.tolist() == [False, True, False]
    assert plain["name"].filled("?").tolist() == ["a", "?", "ccc"]
    for name in ("mixed", "arrays"):
        assert plain[name].dtype == object
        assert [str(c) for c in plain[name]] == [str(c) for c in odd[name]]
    assert [c.dtype for c in plain["arrays"]] == [c.dtype for c in odd["arrays"]]
    # other formats: as astropy reads them
    raw.remove_columns(["name", "uname", "epochs"])
    raw.write(tmp_path / "cat.ecsv")
    assert _read_catalogue(tmp_path / "cat.ecsv").colnames == raw.colnames


def test_votable_null_text_cells_are_masked(tmp_path):
    """astropy masks a VOTable's null numbers but gives a null text cell as its declared
    null text (``<VALUES null="N/A"/>``) or as ``''`` (an empty ``<TD/>``, as astropy itself
    writes a masked text cell), unmasked: a missing id or label was read as the id or label
    "N/A" or "". astromorph's table reader now masks them, in ``char`` and ``unicodeChar``
    columns of fixed and variable width; other text, and numbers, are read as before."""
    from astropy.io.votable import from_table, writeto

    from astromorph._cli_annotate import _read_catalogue

    rows = [("NGC 1", "a", "Å", "1"), ("N/A", "none", "-", "-1"), ("", "", "", ""),
            ("n/a", "nonen", "--", "2")]
    (tmp_path / "null.vot").write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE type="results"><TABLE name="results">
<FIELD name="id" datatype="char" arraysize="*"><VALUES null="N/A"/></FIELD>
<FIELD name="fixed" datatype="char" arraysize="6"><VALUES null="none"/></FIELD>
<FIELD name="uname" datatype="unicodeChar" arraysize="*"><VALUES null="-"/></FIELD>
<FIELD name="n" datatype="int"><VALUES null="-1"/></FIELD>
<DATA><TABLEDATA>
{"".join("<TR>" + "".join(f"<TD>{c}</TD>" for c in row) + "</TR>" for row in rows)}
</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>
""", encoding="utf-8")
    t = _read_catalogue(tmp_path / "null.vot")
    for name, text in (("id", "NGC 1"), ("fixed", "a"), ("uname", "Å")):
        assert t[name].dtype.kind == "U", name
        assert t[name].mask.tolist() == [False, True, True, False], name
        assert t[name][0] == text, name
    assert t["id"][3] == "n/a" and t["fixed"][3] == "nonen" and t["uname"][3] == "--"
    assert t["n"].mask.tolist() == [False, True, True, False]
    # a masked text column written by astropy (an empty cell) reads back masked
    masked = Table({"label": MaskedColumn(["spiral", "elliptical", "merger"],
                                          mask=[False, True, False]),
                    "name": MaskedColumn(["x", "y", "z"], mask=[True, False, False])})
    vot = from_table(masked)
    vot.get_first_table().get_field_by_id("name").arraysize = "*"  # as TAP serves ids
    writeto(vot, str(tmp_path / "masked.vot"))
    back = _read_catalogue(tmp_path / "masked.vot")
    for name in ("label", "name"):
        assert back[name].mask.tolist() == masked[name].mask.tolist(), name
        assert back[name].filled("?").tolist() == masked[name].filled("?").tolist(), name


def test_cli_annotates_a_votable_of_text_ids_to_fits_parquet_and_ecsv(optical_model, tmp_path):
    """``astromorph annotate cat.vot -i img.fits -o out.fits`` with the ids and names of a
    TAP or VizieR VOTable (``char arraysize="*"``) and variable-length arrays with an empty
    cell: refused before any work ("FITS cannot hold the column(s) name"); now written to
    FITS, Parquet and ECSV, the text read back as it was."""
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, [(100, 100), (80, 90), (120, 60)])
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    (tmp_path / "cat.vot").write_text(_votable_xml(cat["ra"], cat["dec"]), encoding="utf-8")
    outputs = ["out.fits", "out.ecsv"]
    if importlib.util.find_spec("pyarrow"):
        outputs.append("out.parquet")
    for name in outputs:
        out = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert cli.main(["annotate", str(tmp_path / "cat.vot"), "-i",
                             str(tmp_path / "img.fits"), "-m", str(optical_model.path),
                             "-o", str(out)]) == 0
            back = Table.read(out)
        assert not np.ma.getmaskarray(back["opt_p_a"]).any(), name
        assert_scores(back["opt_p_a"], ref["opt_p_a"], rtol=1e-4)
        # (astropy reads an empty ECSV text cell back masked)
        names, unames = (np.ma.filled(back[c], "").tolist() for c in ("name", "uname"))
        if name.endswith(".fits"):  # FITS text is ASCII: astromorph writes escapes
            assert names[0] == "NGC 1" and names[1] == "" and names[2].startswith("M 31 ")
        else:
            assert names == ["NGC 1", "", "M 31 ünï"], name
            assert unames == ["Åström", "", "天体"], name
        assert [list(c) for c in back["epochs"]] == [[1, 2, 3], [], [4]], name
        assert back["RAJ2000"].unit == u.deg and back["flux"].unit == u.mJy, name
        if not name.endswith(".parquet"):
            assert back["RAJ2000"].description == "Right ascension", name


def test_ra_dec_columns_found_by_their_ucd_where_no_name_matches(optical_model, tmp_path):
    """A VOTable's RA and Dec columns of names astromorph does not know (``RA_x``,
    ``DE_x``) but of UCDs ``pos.eq.ra;meta.main`` and ``pos.eq.dec;meta.main``: the
    catalogue had "no RA or Dec column"; they are now found by their UCDs, from the Python
    API and the command. Known names come first; a UCD without ``meta.main`` is not used."""
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, [(100, 100), (80, 90), (120, 60)])
    ref = astromorph.annotate(cat, (img, w), model=optical_model)
    (tmp_path / "cat.vot").write_text(
        _votable_xml(cat["ra"], cat["dec"], ra_name="RA_x", dec_name="DE_x"), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vot = QTable.read(tmp_path / "cat.vot")
    out = astromorph.annotate(vot, (img, w), model=optical_model)
    assert not np.ma.getmaskarray(out["opt_p_a"]).any()
    assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["annotate", str(tmp_path / "cat.vot"), "-i", str(tmp_path / "img.fits"),
                         "-m", str(optical_model.path), "-o", str(tmp_path / "out.fits")]) == 0
    back = Table.read(tmp_path / "out.fits")
    assert not np.ma.getmaskarray(back["opt_p_a"]).any()
    assert_scores(back["opt_p_a"], ref["opt_p_a"], rtol=1e-4)
    named = vot.copy()  # a column of a known name is used before a UCD
    named["ra"], named["dec"] = named["RA_x"] + 1 * u.deg, named["DE_x"]
    named["ra"].info.meta = named["dec"].info.meta = {}
    with warnings.catch_warnings():  # (every source off the image)
        warnings.simplefilter("ignore")
        moved = astromorph.annotate(named, (img, w), model=optical_model)
    assert not np.allclose(np.ma.filled(moved["opt_p_a"], -1), ref["opt_p_a"])
    vot["RA_x"].info.meta["ucd"] = "pos.eq.ra"  # not the main position: not guessed
    with pytest.raises(InputError, match="no RA column"):
        astromorph.annotate(vot, (img, w), model=optical_model)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_image_with_bscale_bzero_is_scaled(tmp_path, dtype):
    """FITS allows BSCALE/BZERO on floating-point images too (physical = BSCALE * stored +
    BZERO, as astropy reads them). annotate opens images unscaled and applies the scaling
    itself: it did so for integers only, and scored float images from their stored values
    (predict_files and astropy scale both)."""
    img = blobs(seed=3).astype(dtype)
    w = sky_wcs()
    hdu = fits.PrimaryHDU(img, header=w.to_header())
    hdu.header["BSCALE"], hdu.header["BZERO"] = 4.0, -0.25  # stored as they are
    hdu.writeto(tmp_path / "scaled.fits")
    assert fits.getdata(tmp_path / "scaled.fits")[5, 5] == pytest.approx(4.0 * img[5, 5] - 0.25)
    fits.writeto(tmp_path / "plain.fits", 4.0 * img - np.asarray(0.25, dtype), w.to_header())
    [scaled], [plain] = (parse_sky_images(str(tmp_path / f"{n}.fits")) for n in ("scaled", "plain"))
    idx = np.arange(0, img.size, 97)
    np.testing.assert_allclose(scaled.take(idx), plain.take(idx), rtol=1e-6)
    coords = w.pixel_to_world([60, 100, 140], [80, 100, 120])
    cat = Table({"ra": coords.ra.deg, "dec": coords.dec.deg, "r90": [5.0, 4.0, 6.0]})
    out = [astromorph.annotate(cat, str(tmp_path / f"{n}.fits"), model="morphology",
                               size_col="r90") for n in ("scaled", "plain")]
    assert_scores(out[0]["morph_p_spiral"], out[1]["morph_p_spiral"], atol=1e-5)


@pytest.mark.parametrize("function", ["annotate", "annotate_stamps", "annotate_dask"])
def test_a_file_name_for_the_table_gets_the_hint_to_read_it(function, tmp_path):
    """A catalogue given by file name was refused without the hint that `check_table`
    gives (annotate's own check came first): every annotate function now says to read it."""
    if function == "annotate_dask":
        pytest.importorskip("dask")
    args = ("cat.fits", str(tmp_path / "img.fits")) if function != "annotate_stamps" \
        else ("cat.fits",)
    with pytest.raises(InputError, match=rf"{function} needs an astropy Table or QTable, got "
                                         r"str \(read the file with Table.read first\)"):
        getattr(astromorph, function)(*args, model="morphology")


def _mosaic_files(d, tiles=3, n=60, band=None):
    """``tiles`` x ``tiles`` adjacent FITS tiles of ``n`` pixels (the WCS of `sky_wcs`,
    unrotated), and that WCS over the whole mosaic."""
    w = sky_wcs(tiles * n, rot=0)
    img = blobs(tiles * n, count=80)
    paths = []
    for j in range(tiles):
        for i in range(tiles):
            tw = w.deepcopy()
            tw.wcs.crpix = [w.wcs.crpix[0] - i * n, w.wcs.crpix[1] - j * n]
            header = tw.to_header()
            if band:
                header["FILTER"] = band
            paths.append(str(d / f"{band or 't'}{j}{i}.fits"))
            fits.writeto(paths[-1], img[j * n:(j + 1) * n, i * n:(i + 1) * n], header)
    return paths, w


def _record_partition_images(monkeypatch):
    """The images each annotate_dask partition is sent, recorded as it runs (a list)."""
    from astromorph import _dask as adask

    sent = []
    partition = adask._annotate_partition

    def recording(table, images, *args, **kw):
        sent.append(images)
        return partition(table, images, *args, **kw)
    monkeypatch.setattr(adask, "_annotate_partition", recording)
    return sent


@pytest.mark.parametrize("how", ["list", "dict"])
def test_annotate_dask_sends_each_partition_its_tiles(optical_model, tmp_path, monkeypatch,
                                                      how):
    """Each partition is sent only the tiles of a mosaic its sources can lie on (their
    headers read once by annotate_dask, not every tile's by every partition), with the same
    result, bit for bit, as annotate on the whole table: columns, flags and provenance;
    sources on a tile boundary, off every tile, without a position, and (dict) on a band
    that covers only part of the sky (MISSING_BAND)."""
    dask = pytest.importorskip("dask")

    paths, w = _mosaic_files(tmp_path)
    rng = np.random.default_rng(3)
    pix = rng.uniform(0, 179, (40, 2))
    # in rows of tiles (as a catalogue sorted by declination: a partition's sources lie on a
    # few tiles), then boundaries and off
    pix = np.vstack([pix[np.argsort(pix[:, 1])], [[59.5, 30], [119.5, 119.5], [400, 400],
                                                   [30, 30]]])
    cat = catalogue(w, pix)
    cat["ra"][-1] = np.nan
    if how == "dict":  # r: the first row of tiles only
        images = {"g": paths, "r": paths[:3], "i": paths[::-1]}
    else:
        images = paths
    cat.meta["astromorph_model"] = "earlier"  # an earlier run's provenance is kept as run1
    with warns_bad_positions(1, len(cat)):
        ref = astromorph.annotate(cat, images, model=optical_model)
    sent = _record_partition_images(monkeypatch)
    for scheduler in ("synchronous", "threads"):
        with warns_bad_positions(1, len(cat)):
            out = astromorph.annotate_dask(cat, images, model=str(optical_model.path),
                                           partition_size=8, scheduler=scheduler)
        assert out.colnames == ref.colnames and out.meta == ref.meta
        assert_same_values(out, ref, ref.colnames)
    flags = np.asarray(ref["opt_flags"])
    for flag in (Flag.OFF_IMAGE, Flag.BAD_INPUT, Flag.EDGE) + (
            (Flag.MISSING_BAND,) if how == "dict" else ()):
        assert np.any(flags & flag), flag
    # the partitions got fewer files than the 9 (27) given
    count = (lambda s: sum(map(len, s.values()))) if how == "dict" else len
    assert max(map(count, sent)) < count(images)
    parts = astromorph.annotate_dask(cat, images, model=str(optical_model.path),
                                     partition_size=8, compute=False)
    with warns_bad_positions(1, 4):  # the lazy partitions: the same rows
        lazy = dask.compute(*parts, scheduler="synchronous")
    np.testing.assert_array_equal(np.concatenate([t["opt_flags"] for t in lazy]), flags)


def test_annotate_dask_reads_compressed_tiles_for_their_footprints_one_at_a_time(
        optical_model, tmp_path):
    """annotate_dask places the tiles of a mosaic by their headers on the caller's machine:
    the pixels of compressed tiles (decompressed whole when read) are let go file by file,
    not held for the whole mosaic (100 fpacked 64 MB tiles would take 6.4 GB)."""
    import tracemalloc

    from astromorph._dask import _partition_images

    n, paths = 1000, []
    for k in range(6):
        w = sky_wcs(n, rot=0, scale=1.0, crval=(150.0 + k * 0.27, 2.2))
        path = tmp_path / f"tile{k}.fits.fz"
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
            np.random.default_rng(k).normal(size=(n, n)).astype(np.float32), w.to_header(),
            compression_type="GZIP_1")]).writeto(path)
        paths.append(str(path))
    cat = catalogue(sky_wcs(n, rot=0, scale=1.0), [(500, 500), (500, 500)])
    tracemalloc.start()
    try:
        shares = _partition_images(cat, paths, optical_model, {}, [0, 1], 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(images) for images, _ in shares[0]] == [1, 1]  # the first tile alone
    assert peak < 2.5 * n * n * 4, peak / 1e6          # about one tile's pixels, not six


@pytest.mark.parametrize("compute", [True, False])
def test_annotate_dask_sends_large_compressed_tiles_only_to_their_sources(
        optical_model, tmp_path, monkeypatch, compute):
    """Tile-compressed tiles of over `DECOMPRESS_WARN_BYTES` (1 GiB: large survey tiles)
    each give a warning when their headers are read: annotate_dask took it for a file whose
    reading warns (astropy's, on a bad header), sent every such tile to every partition
    (each parsing the whole mosaic), and said each warning "in 9 of 9 Dask partitions". The
    note is about the file, read once here: each tile goes to the partitions of its sources
    and its note comes once, as annotate gives it, whether or not a partition gets it."""
    dask = pytest.importorskip("dask")
    from astropy.table import vstack

    import astromorph._images as aimages

    monkeypatch.setattr(aimages, "DECOMPRESS_WARN_BYTES", 1000)  # the 60x60 tiles: "large"
    paths, w = _mosaic_files(tmp_path)
    packed = []
    for path in paths:
        with fits.open(path) as hdul:
            packed.append(path + ".fz")
            fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
                hdul[0].data, hdul[0].header, compression_type="RICE_1",
                quantize_level=0)]).writeto(packed[-1])
    rng = np.random.default_rng(3)
    pix = rng.uniform(0, 119, (30, 2))  # the first two rows and columns of tiles only
    cat = catalogue(w, pix[np.argsort(pix[:, 1])])

    def notes(caught):
        return sorted(str(x.message) for x in caught
                      if "decompressed whole into memory" in str(x.message))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = astromorph.annotate(cat, packed, model=optical_model)
    expected = notes(caught)
    assert len(expected) == 9
    sent = _record_partition_images(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if compute:
            out = astromorph.annotate_dask(cat, packed, model=str(optical_model.path),
                                           partition_size=5, scheduler="synchronous")
        else:
            parts = astromorph.annotate_dask(cat, packed, model=str(optical_model.path),
                                             partition_size=5, compute=False)
            out = vstack(dask.compute(*parts, scheduler="synchronous"),
                         metadata_conflicts="silent")
    assert notes(caught) == expected, notes(caught)
    assert len(sent) == 6 and max(map(len, sent)) < 9, list(map(len, sent))
    assert not any(packed[-1] in images for images in sent)  # no source on the last tile
    for name in ref.colnames:
        np.testing.assert_array_equal(np.ma.filled(out[name], -1), np.ma.filled(ref[name], -1))
    assert out.meta["astromorph_images"] == ref.meta["astromorph_images"]


@pytest.mark.parametrize("how", ["tan", "sip", "galactic"])
def test_annotate_dask_sends_rotated_tiles_to_the_sources_at_their_corners(optical_model,
                                                                          tmp_path,
                                                                          monkeypatch, how):
    """A tile rotated on the sky and not square (its border curved by SIP distortion, or
    not; in Galactic coordinates for an ICRS catalogue, or not) goes to the partitions of
    the sources just inside each of its corners, not to those of sources just outside a
    corner (a tenth of a pixel out: off it for annotate too) or far off it; placed by the
    tiles' footprints, without transforming every source into every tile on the caller's
    machine; the same result, bit for bit, as annotate."""
    pytest.importorskip("dask")
    import astromorph._dask as adask

    w = sky_wcs(200, rot=35, sip=how == "sip")
    if how == "galactic":
        w.wcs.ctype, w.wcs.crval = ["GLON-TAN", "GLAT-TAN"], [236.0, 42.0]
    img = blobs(200, count=60)
    paths = [str(tmp_path / "far.fits"), str(tmp_path / "tile.fits")]
    far = sky_wcs(60, crval=(10.0, 2.2))  # the first file: sent to every partition
    fits.writeto(paths[0], blobs(60), far.to_header())
    tile = w.deepcopy()  # rows 70-109, columns 50-139 of the rotated (distorted) image
    tile.wcs.crpix = [w.wcs.crpix[0] - 50, w.wcs.crpix[1] - 70]
    tile = WCS(tile.to_header(relax=True))  # (its SIP about its own CRPIX, as read)
    fits.writeto(paths[1], img[70:110, 50:140], tile.to_header(relax=True))
    corners = [(-0.4, -0.4), (89.4, 39.4), (-0.4, 39.4), (89.4, -0.4)]  # on the tile
    outside = [(-0.6, -0.6), (89.6, 39.6), (-1.4, -1.4), (-2.0, 40.0)]  # off, just
    pix = np.array(corners + outside + [(-30.0, -30.0), (45.0, 20.0)])
    sky = tile.pixel_to_world(*pix.T).icrs
    cat = Table({"id": np.arange(len(pix)), "ra": sky.ra.deg, "dec": sky.dec.deg})
    ref = astromorph.annotate(cat, paths, model=optical_model)
    flags = np.asarray(ref["opt_flags"])
    assert not np.any(flags[:4] & Flag.OFF_IMAGE) and np.all(flags[4:9] & Flag.OFF_IMAGE)
    transformed = []

    def world_to_pixel(self, lon, lat):
        transformed.append(np.size(lon))
        return to_pixel(self, lon, lat)
    to_pixel = SkyImage.world_to_pixel
    monkeypatch.setattr(SkyImage, "world_to_pixel", world_to_pixel)
    per_partition, files, order, _ = adask._partition_images(cat, paths, optical_model, {},
                                                             list(range(len(cat))), 1)
    assert order is None  # (sky_order: not asked)
    assert transformed == [] and files == set(paths)  # no source placed here
    for k, (images, bands) in enumerate(per_partition):
        assert bands is None and images[0] == paths[0]
        # the sources on it, not those just off its corners (annotate's OFF_IMAGE)
        assert (paths[1] in images) == (k < 4 or k == 9), k
    with warnings.catch_warnings(record=True) as given:
        warnings.simplefilter("always")
        out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                       partition_size=1, scheduler="threads")
    # 5 of the 10 one-source partitions hold no source on the images; the table does
    assert not [w for w in given if "no source lies" in str(w.message)]
    assert out.colnames == ref.colnames and out.meta == ref.meta
    assert_same_values(out, ref, ref.colnames)


def test_annotate_dask_sends_all_sky_and_wide_tiles_to_every_partition():
    """An image whose border does not bound it on the sky (an all-sky map: its corners off
    the projection, or a cone wider than `CONE_MAX_RADIUS_DEG`) has no usable cone: it goes
    to every partition, which places its sources exactly; a small tile has one, holding
    its corners."""
    from astropy.coordinates import ICRS

    import astromorph._dask as adask

    def image(ctype, shape, cdelt, crval=(150.0, 2.2)):
        w = WCS(naxis=2)
        w.wcs.ctype, w.wcs.crval = [f"RA---{ctype}", f"DEC--{ctype}"], list(crval)
        w.wcs.cdelt, w.wcs.crpix = [-cdelt, cdelt], [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
        return SkyImage(np.zeros(shape, np.float32), w)
    images = [image("CAR", (180, 360), 1.0, (0, 0)), image("AIT", (180, 360), 1.0, (0, 0)),
              image("TAN", (400, 400), 0.1), image("TAN", (400, 400), 1e-4)]
    coords = SkyCoord([150.0], [2.2], unit="deg")
    centres, cos_radius, usable = adask._tile_footprints(images, [ICRS()] * 4, coords)[:3]
    assert usable.tolist() == [False, False, False, True]
    corner = images[3].wcs.pixel_to_world(-1.4, -1.4)  # within the margin of a pixel
    vector = adask._unit_vectors(corner.ra.deg, corner.dec.deg)
    assert vector @ centres[3] >= cos_radius[3]
    # and not much wider than the tile: 400 pixels of 1e-4 deg, a half-diagonal of 0.028 deg
    assert np.degrees(np.arccos(cos_radius[3])) < 1.05 * 0.04 * np.sqrt(2) / 2


@pytest.mark.parametrize("ctype, shape, cdelt, crpix, points", [
    ("CAR", (300, 600), 0.04, (300, -1500), 64), ("CAR", (300, 600), 0.04, (300, -1500), 9),
    ("CAR", (300, 600), 0.04, (300, -1500), 5), ("CAR", (300, 600), 0.04, (300, -1500), 4),
    ("STG", (50, 2000), 0.01, (1000, -4000), 64), ("STG", (50, 2000), 0.01, (1000, -4000), 4),
    ("AIT", (50, 2000), 0.01, (1000, -4000), 64), ("ARC", (100, 300), 0.08, (-600, 900), 9)])
def test_annotate_dask_footprint_holds_a_curved_border_a_twentieth_of_a_pixel_out_all_along(
        monkeypatch, ctype, shape, cdelt, crpix, points):
    """A tile's footprint holds its border pushed out by `FOOTPRINT_MARGIN_PIXELS` all along,
    not only at the `CONE_BORDER_POINTS` sampled on it: a tile many degrees from its
    projection's reference point (its sides curved on the sky) left a few dozen of 12,000
    points of that border off its footprint at 64 points a side (the walls widened by a guess
    at the bow that missed a bow peaking halfway between two points), and a thousand at 4
    (every other point taken as the corners); the walls are widened by the sag that the
    points' second differences bound: at 64 points a side, by a fifth of a pixel at most."""
    from astropy.coordinates import ICRS

    import astromorph._dask as adask

    monkeypatch.setattr(adask, "CONE_BORDER_POINTS", points)
    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval = [f"RA---{ctype}", f"DEC--{ctype}"], [0.0, 0.0]
    w.wcs.cdelt, w.wcs.crpix = [-cdelt, cdelt], list(crpix)
    image = SkyImage(np.zeros(shape, np.float32), w)
    centres, cos_radius, usable, walls, sin_grow = adask._tile_footprints(
        [image], [ICRS()], SkyCoord([0.0], [0.0], unit="deg"))
    assert usable.tolist() == [True]
    (ny, nx), m, t = shape, adask.FOOTPRINT_MARGIN_PIXELS + 0.5, np.linspace(0, 1, 3000)
    across, up = -m + t * (nx - 1 + 2 * m), -m + t * (ny - 1 + 2 * m)
    x = np.concatenate([across, np.full_like(t, nx - 1 + m), across, np.full_like(t, -m)])
    y = np.concatenate([np.full_like(t, -m), up, np.full_like(t, ny - 1 + m), up])
    border = adask._unit_vectors(*w.all_pix2world(x, y, 0))
    on = adask._on_tiles(border, centres, cos_radius, walls, sin_grow)[:, 0]
    assert on.all(), f"{np.count_nonzero(~on)} of {len(on)} points of the border off"
    if points == 64:  # the walls widened by little: a fifth of a pixel
        assert np.degrees(np.arcsin(sin_grow[0])) < 0.2 * cdelt


@pytest.mark.parametrize("points", [3, 0, -64, 8.5, 64.0 + 1e-9])
def test_annotate_dask_refuses_too_few_border_points(monkeypatch, points):
    """`CONE_BORDER_POINTS` below 4 (or not whole) is refused, naming it: 3 points a side
    gave a footprint from one second difference a side, and fewer none."""
    from astropy.coordinates import ICRS

    import astromorph._dask as adask

    monkeypatch.setattr(adask, "CONE_BORDER_POINTS", points)
    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.cdelt = ["RA---TAN", "DEC--TAN"], [-1e-4, 1e-4]
    image = SkyImage(np.zeros((40, 40), np.float32), w)
    with pytest.raises(InvalidArgumentError, match=r"CONE_BORDER_POINTS.*>= 4.*got "
                       + re.escape(repr(points))):
        adask._tile_footprints([image], [ICRS()], SkyCoord([0.0], [0.0], unit="deg"))
    with pytest.raises(InvalidArgumentTypeError, match="CONE_BORDER_POINTS.*'64'"):
        monkeypatch.setattr(adask, "CONE_BORDER_POINTS", "64")
        adask._tile_footprints([image], [ICRS()], SkyCoord([0.0], [0.0], unit="deg"))


@pytest.mark.parametrize("partition_size", [1, 5, 7, 40])
def test_annotate_dask_cones_of_a_catalogue_read_in_chunks(monkeypatch, partition_size):
    """A catalogue of more rows than one chunk of `CONE_CHUNK_ELEMENTS` (half a million
    rows for a mosaic of 9 tiles) is compared with the tiles chunk by chunk, where a chunk
    may begin inside a partition: each partition is found on the tiles its rows lie on,
    as in one chunk (here chunks of 7 rows, against the tiles' footprints row by row)."""
    import astromorph._dask as adask

    rng = np.random.default_rng(4)
    vectors = adask._unit_vectors(rng.uniform(0, 40, 40), rng.uniform(-20, 20, 40))
    centres = adask._unit_vectors(rng.uniform(0, 40, 3), rng.uniform(-20, 20, 3))
    cos_radius = np.cos(np.radians([8.0, 12.0, 5.0]))
    walls = np.zeros((3, 4, 3))  # no wall cuts the cones: the footprints are the cones
    sin_grow = np.ones(3)
    inside = adask._on_tiles(vectors, centres, cos_radius, walls, sin_grow)
    assert 0 < inside.sum() < inside.size
    expected = np.array([inside[start:start + partition_size].any(axis=0)
                         for start in range(0, len(vectors), partition_size)])
    monkeypatch.setattr(adask, "CONE_CHUNK_ELEMENTS", 7 * len(centres))
    hit = adask._cones_hit(vectors, centres, cos_radius, partition_size, walls, sin_grow)
    np.testing.assert_array_equal(hit, expected)


@pytest.mark.parametrize("case", ["masked", "sexagesimal", "skycoord", "partial_band",
                                  "duplicates", "empty"])
def test_annotate_dask_share_of_tiles_keeps_annotates_result(optical_model, tmp_path,
                                                            monkeypatch, case):
    """With each partition sent only its share of a mosaic's tiles, annotate_dask gives
    annotate's table bit for bit (every column, its mask, the flags and the table meta)
    for a catalogue with masked RA/Dec, sexagesimal text positions, a SkyCoord column
    (``coord_col``), bands of which one has a single tile over part of the sky,
    duplicate rows, and no rows; and the same warnings."""
    pytest.importorskip("dask")

    paths, w = _mosaic_files(tmp_path, tiles=2)
    rng = np.random.default_rng(5)
    pix = rng.uniform(-5, 125, (14, 2))
    cat = catalogue(w, pix[np.argsort(pix[:, 1])])
    images, kwargs = paths, {}
    if case == "masked":
        for name, rows in (("ra", [1, 6]), ("dec", [6, 11])):
            cat[name] = MaskedColumn(cat[name])
            cat[name].mask[rows] = True
    elif case == "sexagesimal":
        sky = SkyCoord(cat["ra"], cat["dec"], unit="deg")
        cat["ra"] = sky.ra.to_string(unit=u.hourangle, sep=":", precision=2, pad=True)
        cat["dec"] = sky.dec.to_string(sep=":", precision=1, alwayssign=True, pad=True)
        assert re.fullmatch(r"10:00:\d\d\.\d\d", cat["ra"][0])
        assert re.fullmatch(r"\+02:\d\d:\d\d\.\d", cat["dec"][0])
    elif case == "skycoord":
        cat["pos"] = SkyCoord(cat["ra"], cat["dec"], unit="deg")
        cat.rename_columns(["ra", "dec"], ["x_ra", "x_dec"])
        kwargs["coord_col"] = "pos"
    elif case == "partial_band":  # r: one tile, the last, over a quarter of the sky
        images = {"g": paths, "r": paths[3:], "i": paths[::-1]}
    elif case == "duplicates":
        cat = cat[[0, 0, 3, 9, 9, 9, 3, 13, 13]]
    else:
        cat = cat[:0]
    cat.meta["survey"] = "test"

    def run(function, **kw):
        with warnings.catch_warnings(record=True) as found:
            warnings.simplefilter("always")
            out = function(cat, images, **kwargs, **kw)
        # annotate's warnings, each given once (the partitions' count of them cut off); a
        # partition whose sources are all off the images does not say so of the table
        return out, sorted({(x.category.__name__, re.sub(r" \(in \d+ of \d+ Dask partitions\)$",
                                                          "", str(x.message)))
                            for x in found})
    ref, ref_warnings = run(astromorph.annotate, model=optical_model)
    sent = _record_partition_images(monkeypatch)
    out, out_warnings = run(astromorph.annotate_dask, model=str(optical_model.path),
                            partition_size=3, scheduler="synchronous")
    # each partition got its share of the tiles, not every one
    count = (lambda s: sum(map(len, s.values()))) if isinstance(images, dict) else len
    assert len(sent) == max(1, -(-len(cat) // 3)) and min(map(count, sent)) < count(images)
    assert out_warnings == ref_warnings
    assert len(out) == len(cat) and out.colnames == ref.colnames and out.meta == ref.meta
    for name in ref.colnames:
        if isinstance(ref[name], SkyCoord):
            assert isinstance(out[name], SkyCoord) and out[name].frame.name == \
                ref[name].frame.name
            for a, b in ((out[name].ra, ref[name].ra), (out[name].dec, ref[name].dec)):
                np.testing.assert_array_equal(a.deg, b.deg)
            continue
        assert out[name].dtype == ref[name].dtype, name
        assert_same_values(out, ref, [name])
    if len(cat):
        flags = np.asarray(ref["opt_flags"])
        assert np.any(flags & Flag.OFF_IMAGE)
        if case == "masked":
            assert np.all(flags[[1, 6, 11]] & Flag.BAD_INPUT)
        if case == "partial_band":
            assert np.any(flags & Flag.MISSING_BAND)


def test_annotate_dask_sends_every_image_where_they_cannot_be_read_here(optical_model,
                                                                         tmp_path):
    """An image that this machine cannot read (or place) goes to every partition, which
    refuses it with annotate's own error, as before."""
    pytest.importorskip("dask")
    paths, w = _mosaic_files(tmp_path, tiles=2)
    fits.writeto(tmp_path / "nowcs.fits", np.ones((10, 10), np.float32))
    cat = catalogue(w, [(10, 10), (100, 100)])
    for bad in (str(tmp_path / "missing.fits"), str(tmp_path / "nowcs.fits")):
        with pytest.raises(InputError, match=re.escape(os.path.basename(bad))):
            astromorph.annotate_dask(cat, paths + [bad], model=str(optical_model.path),
                                     partition_size=1, scheduler="synchronous")


def test_annotate_dask_takes_a_model_object(optical_model, tmp_path):
    """A loaded `Model` is taken (it pickles as its name or path and the options it was
    loaded with, its checksum checked where it is unpickled), as annotate takes it."""
    pytest.importorskip("dask")
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, np.random.default_rng(2).uniform(0, 200, (12, 2)))
    ref = astromorph.annotate(cat, str(tmp_path / "img.fits"), model=optical_model)
    for scheduler in ("threads", "processes"):
        out = astromorph.annotate_dask(cat, str(tmp_path / "img.fits"), model=optical_model,
                                       partition_size=5, scheduler=scheduler)
        assert_scores(out["opt_p_a"], ref["opt_p_a"], rtol=0)
        assert out.meta == ref.meta
    # a precision other than the model's is refused as annotate refuses it
    with pytest.raises(InvalidArgumentError, match="precision"):
        astromorph.annotate_dask(cat, str(tmp_path / "img.fits"), model=optical_model,
                                 precision="int8")
    with pytest.raises(InputError, match="not int"):
        astromorph.annotate_dask(cat, str(tmp_path / "img.fits"), model=3)


def _assert_same_table(out, ref):
    assert out.colnames == ref.colnames and out.meta == ref.meta
    for name in ref.colnames:
        assert out[name].dtype == ref[name].dtype, name
    assert_same_values(out, ref, ref.colnames)


def test_annotate_dask_groups_a_shuffled_catalogue_by_tile(optical_model, tmp_path,
                                                          monkeypatch):
    """A catalogue in random sky order sent every tile of a mosaic to every partition; its
    rows are now grouped by the tile they fall on (``sky_order="auto"``), so that each
    partition gets a few tiles, and the table comes back in the caller's order, bit for bit
    annotate's (the warning's first unusable row too: a size, before the positions);
    ``sky_order=False`` keeps the rows in partitions as given."""
    pytest.importorskip("dask")
    paths, w = _mosaic_files(tmp_path, tiles=3)
    rng = np.random.default_rng(11)
    cat = catalogue(w, rng.uniform(0, 179, (72, 2)))  # in random order over the 9 tiles
    cat["r90"] = rng.uniform(1.0, 3.0, len(cat))
    cat["r90"][5] = np.nan  # the first unusable row: its size
    cat["ra"][[40, 66]] = np.nan
    with pytest.warns(UnusableInputWarning, match=r"^3 of 72 .*first: size\)"):
        ref = astromorph.annotate(cat, paths, model=optical_model, size_col="r90")
    sent = _record_partition_images(monkeypatch)
    for scheduler in ("synchronous", "threads"):
        sent.clear()
        with pytest.warns(UnusableInputWarning, match=r"^3 of 72 .*first: size\)"):
            out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                           size_col="r90", partition_size=8,
                                           scheduler=scheduler)
        _assert_same_table(out, ref)
        # 9 partitions of 8 rows: about one tile's sources each (a partition's rows may
        # end one tile's group and begin the next), and the first tile (every partition
        # keeps it); not the neighbours that each tile's bounding circle reached into
        assert len(sent) == 9 and max(map(len, sent)) <= 4, list(map(len, sent))
        assert sum(map(len, sent)) <= 28, list(map(len, sent))
    sent.clear()
    with pytest.warns(UnusableInputWarning, match=r"^3 of 72 .*first: size\)"):
        out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                       size_col="r90", partition_size=8, sky_order=False,
                                       scheduler="synchronous")
    _assert_same_table(out, ref)
    # in random order: the tiles of 8 random sources (about 5.5 of the 9), every partition
    assert min(map(len, sent)) >= 4 and sum(map(len, sent)) > 40, list(map(len, sent))
    for bad in ("yes", 2):
        with pytest.raises(InvalidArgumentError, match="sky_order"):
            astromorph.annotate_dask(cat, paths, model=str(optical_model.path), sky_order=bad)
    with pytest.raises(InvalidArgumentError, match="sky_order"):  # lazy partitions: in order
        astromorph.annotate_dask(cat, paths, model=str(optical_model.path), sky_order=True,
                                 compute=False)


def test_annotate_dask_regroups_by_tile_with_sky_order_auto_only_where_that_sends_fewer_tiles(
        optical_model, tmp_path, caplog):
    """``sky_order="auto"`` was passed on as True (``bool("auto")``), so the rows were
    always regrouped by tile, never only "where that cuts the tiles sent by more than 10%"
    (`SKY_ORDER_GAIN`). A catalogue grouped by tile already (the tiles in reverse order:
    regrouping changes the order, not the tiles sent) is now kept in its order with
    "auto" and regrouped with True; a shuffled one is regrouped with "auto". The table is
    annotate's in every case."""
    import logging

    pytest.importorskip("dask")
    paths, w = _mosaic_files(tmp_path, tiles=3)
    rng = np.random.default_rng(5)
    centres = [(60 * i + 30, 60 * j + 30) for j in range(3) for i in range(3)][::-1]
    grouped = catalogue(w, np.concatenate([rng.uniform(-15, 15, (8, 2)) + c for c in centres]))
    shuffled = grouped[rng.permutation(len(grouped))]
    for cat, sky_order, regrouped in [(grouped, "auto", False), (grouped, True, True),
                                      (shuffled, "auto", True)]:
        ref = astromorph.annotate(cat, paths, model=optical_model)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="astromorph._dask"):
            out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                           partition_size=8, sky_order=sky_order,
                                           scheduler="synchronous")
        _assert_same_table(out, ref)
        said = [r.getMessage() for r in caplog.records if "image files" in r.getMessage()]
        assert len(said) == 1
        assert ("the rows grouped by tile" in said[0]) is regrouped, (sky_order, said)


def test_annotate_dask_sky_order_groups_each_source_by_its_nearest_tile_stably():
    """`_sky_order` puts each source with the footprint whose centre lies nearest it among
    those that hold it (a source in the overlap of two tiles goes with the nearer one), those
    on no footprint last, and keeps the table's order within a group (a stable sort: each
    partition takes consecutive rows of a tile's group)."""
    import astromorph._dask as adask

    centres = adask._unit_vectors(np.array([10.0, 14.0]), np.array([0.0, 0.0]))
    cos_radius = np.cos(np.radians([3.0, 3.0]))
    walls, sin_grow = np.zeros((2, 4, 3)), np.ones(2)  # no wall cuts: the cones
    rng = np.random.default_rng(2)
    lon = rng.choice([8.0, 11.5, 12.5, 16.0, 40.0], 200)  # A only, both (nearer A, nearer
    tile = {8.0: 0, 11.5: 0, 12.5: 1, 16.0: 1, 40.0: 2}  # B), B only, neither
    vectors = adask._unit_vectors(lon + rng.uniform(-0.2, 0.2, 200), rng.uniform(-1, 1, 200))
    order = adask._sky_order(vectors, centres, cos_radius, walls, sin_grow)
    expected = sorted(range(200), key=lambda i: (tile[lon[i]], i))
    assert order.tolist() == expected


def test_annotate_dask_sky_order_puts_a_source_with_a_tile_that_holds_it():
    """`_sky_order` groups a source with the nearest centre among the footprints that hold
    it, not the nearest of all: a source on a wide tile near a small tile it is not on goes
    with the wide tile (grouped with the small one, its partition would need both)."""
    import astromorph._dask as adask

    centres = adask._unit_vectors(np.array([10.0, 14.0]), np.array([0.0, 0.0]))
    cos_radius = np.cos(np.radians([5.0, 1.0]))  # A wide, B small
    walls, sin_grow = np.zeros((2, 4, 3)), np.ones(2)  # no wall cuts: the cones
    lon = np.array([14.0, 12.5, 10.0, 12.6, 14.2])  # B, A only (B's centre nearer), A...
    vectors = adask._unit_vectors(lon, np.zeros(len(lon)))
    order = adask._sky_order(vectors, centres, cos_radius, walls, sin_grow)
    assert order.tolist() == [1, 2, 3, 0, 4]


def test_annotate_dask_sky_order_regroups_a_catalogue_of_two_partitions(optical_model,
                                                                        tmp_path):
    """A catalogue of two partitions (16 rows, ``partition_size=8``) in random order over
    two tiles is regrouped by tile with ``sky_order=True`` (each partition then needs one
    tile): only a catalogue of one partition is kept as it is."""
    import astromorph._dask as adask

    paths, w = _mosaic_files(tmp_path, tiles=2)
    rng = np.random.default_rng(1)
    pix = np.concatenate([rng.uniform(5, 55, (8, 2)), rng.uniform(5, 55, (8, 2)) + [60, 0]])
    cat = catalogue(w, pix[rng.permutation(16)])
    for size, regrouped in ((8, True), (16, False)):
        order = adask._partition_images(cat, paths, optical_model, {},
                                        list(range(0, 16, size)), size, sky_order=True)[2]
        assert (order is not None) is regrouped, size


def test_annotate_dask_lazy_partitions_of_a_shuffled_catalogue_keep_annotates_result(
        optical_model, tmp_path):
    """With ``compute=False`` the partitions hold the rows in the table's order: the tiles
    each is sent are those of its own rows (not those of the rows grouped by tile, which
    would leave its sources off the tiles it gets), and the partitions give annotate's
    values for a catalogue in random sky order."""
    dask = pytest.importorskip("dask")
    from astropy.table import vstack

    paths, w = _mosaic_files(tmp_path, tiles=3)
    cat = catalogue(w, np.random.default_rng(11).uniform(0, 179, (48, 2)))
    ref = astromorph.annotate(cat, paths, model=optical_model)
    parts = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                     partition_size=8, compute=False)
    out = vstack(dask.compute(*parts, scheduler="synchronous"), metadata_conflicts="silent")
    assert not np.any(ref["opt_flags"] & Flag.OFF_IMAGE)
    assert_same_values(out, ref, ref.colnames)


def test_annotate_dask_gives_each_partition_the_bands_of_its_share_of_tiles(optical_model,
                                                                            tmp_path):
    """``bands=`` naming the band of each file of a list of tiles: each partition, sent only
    the tiles of its sources, gets the bands of those tiles (not another partition's), and
    the table is annotate's."""
    pytest.importorskip("dask")
    paths, w = _mosaic_files(tmp_path, tiles=3)
    rng = np.random.default_rng(3)
    pix = rng.uniform(0, 179, (40, 2))
    cat = catalogue(w, pix[np.argsort(pix[:, 1])])  # by row of tiles: 3 to 6 tiles each
    bands = ["r"] * len(paths)
    ref = astromorph.annotate(cat, paths, model=optical_model, bands=bands)
    out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path), bands=bands,
                                   partition_size=8, scheduler="synchronous")
    _assert_same_table(out, ref)


def test_annotate_dask_sends_tiles_without_a_cone_to_every_partition(optical_model, tmp_path,
                                                                     monkeypatch):
    """Tiles whose cone is not used (here every tile, `CONE_MAX_RADIUS_DEG` made smaller
    than them: as an all-sky map or a wide tile) go to every partition, which places its
    sources on them exactly: the table is annotate's."""
    pytest.importorskip("dask")
    import astromorph._dask as adask

    paths, w = _mosaic_files(tmp_path, tiles=2)
    rng = np.random.default_rng(6)
    pix = rng.uniform(0, 119, (24, 2))
    cat = catalogue(w, pix[np.argsort(pix[:, 1])])
    ref = astromorph.annotate(cat, paths, model=optical_model)
    monkeypatch.setattr(adask, "CONE_MAX_RADIUS_DEG", 1e-3)  # the tiles: 0.005 deg
    sent = _record_partition_images(monkeypatch)
    out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path), partition_size=6,
                                   scheduler="synchronous")
    assert sent == [paths] * 4
    _assert_same_table(out, ref)


def test_annotate_dask_keeps_the_tile_selection_past_one_tiles_warning(optical_model,
                                                                       tmp_path, monkeypatch):
    """A warning on reading one tile (astropy's, on a file with extra padding) sent every
    tile to every partition; that tile now goes to every partition (each gives its warning,
    given once to the caller, as annotate gives it) and the others to those whose sources
    lie on them."""
    pytest.importorskip("dask")
    paths, w = _mosaic_files(tmp_path, tiles=3)
    with open(paths[4], "ab") as f:
        f.write(bytes(2880))
    rng = np.random.default_rng(3)
    pix = rng.uniform(0, 179, (40, 2))
    cat = catalogue(w, pix[np.argsort(pix[:, 1])])
    with pytest.warns(UserWarning, match="padding"):
        ref = astromorph.annotate(cat, paths, model=optical_model)
    sent = _record_partition_images(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                       partition_size=8, scheduler="synchronous")
    padding = [x for x in caught if "padding" in str(x.message)]
    assert len(padding) == 1 and "(in 5 of 5 Dask partitions)" in str(padding[0].message)
    _assert_same_table(out, ref)
    assert all(paths[4] in s for s in sent) and max(map(len, sent)) < len(paths)


@pytest.mark.parametrize("where", ["reading", "planning"])
def test_annotate_dask_sends_a_tile_with_a_plain_warning_to_every_partition(
        optical_model, tmp_path, monkeypatch, where):
    """A plain warning (not one of astromorph's) on reading one tile sends that tile to
    every partition, and one while planning the bands sends every tile to every partition,
    as for astromorph's own: otherwise a partition without a source on that tile would not
    give the warning, or (planning) the warning, caught here, would be lost."""
    pytest.importorskip("dask")
    from astropy.utils.exceptions import AstropyUserWarning

    from astromorph import _annotate

    paths, w = _mosaic_files(tmp_path, tiles=3)
    middle = w.wcs.crpix[0] - 60
    frames, plan = _annotate._image_frames, _annotate._band_plan

    def noisy_frames(found, *args, **kw):
        if any(im.wcs.wcs.crpix[0] == middle and im.wcs.wcs.crpix[1] == w.wcs.crpix[1] - 60
               for im in found):
            warnings.warn("plain warning on the middle tile", AstropyUserWarning)
        return frames(found, *args, **kw)

    def noisy_plan(*args, **kw):
        warnings.warn("plain warning while planning", AstropyUserWarning)
        return plan(*args, **kw)
    if where == "reading":
        monkeypatch.setattr(_annotate, "_image_frames", noisy_frames)
    else:
        monkeypatch.setattr(_annotate, "_band_plan", noisy_plan)
    rng = np.random.default_rng(3)
    pix = rng.uniform(0, 179, (40, 2))
    cat = catalogue(w, pix[np.argsort(pix[:, 1])])
    sent = _record_partition_images(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate_dask(cat, paths, model=str(optical_model.path), partition_size=8,
                                 scheduler="synchronous")
    assert any("plain warning" in str(x.message) for x in caught)
    if where == "reading":
        assert all(paths[4] in s for s in sent) and max(map(len, sent)) < len(paths)
    else:
        assert all(len(s) == len(paths) for s in sent)


def test_annotate_dask_uses_the_cones_for_per_row_frame_attributes(optical_model, tmp_path,
                                                                   monkeypatch):
    """A SkyCoord column with one obstime per row (FK4) got every tile in every partition
    (the tiles' borders could not be transformed into its frame); the cones are now drawn
    in ICRS, the sources' positions transformed there, with annotate's result."""
    pytest.importorskip("dask")
    from astropy.coordinates import FK4
    from astropy.time import Time

    paths, w = _mosaic_files(tmp_path, tiles=3)
    rng = np.random.default_rng(3)
    pix = rng.uniform(0, 179, (40, 2))
    cat = catalogue(w, pix[np.argsort(pix[:, 1])])
    obstime = Time(rng.uniform(1950, 2000, len(cat)), format="jyear")
    cat["pos"] = SkyCoord(cat["ra"], cat["dec"], unit="deg").transform_to(
        FK4(obstime=obstime))
    assert cat["pos"].obstime.shape == (len(cat),)
    ref = astromorph.annotate(cat, paths, model=optical_model, coord_col="pos")
    sent = _record_partition_images(monkeypatch)
    out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path), coord_col="pos",
                                   partition_size=8, scheduler="synchronous")
    assert max(map(len, sent)) < len(paths)
    assert out.colnames == ref.colnames
    for name in ref.colnames:
        if name != "pos":
            np.testing.assert_array_equal(np.ma.getdata(out[name]), np.ma.getdata(ref[name]))
    np.testing.assert_array_equal(out["pos"].obstime.jyear, obstime.jyear)
    np.testing.assert_array_equal(out["pos"].ra.deg, cat["pos"].ra.deg)
    assert np.all(ref["opt_flags"] & Flag.OFF_IMAGE == 0)


@pytest.mark.parametrize("how", ["tan", "rotated_sip"])
def test_annotate_dask_sends_a_tile_only_to_the_sources_on_it(optical_model, tmp_path,
                                                             monkeypatch, how):
    """A tile was sent to the partitions of every source in its bounding circle, which
    spills into its neighbours: a partition of one tile's sources near its edges got all
    the tiles around it (up to 9). A tile now goes only to the sources on its footprint
    (its border, one pixel out, on the sky), the cone a pre-filter: each partition of a
    4x4 mosaic gets its own tile and the first one; sources just off the mosaic keep their
    flags, and the table is annotate's, bit for bit."""
    pytest.importorskip("dask")
    tiles, n = 4, 60
    if how == "tan":
        paths, w = _mosaic_files(tmp_path, tiles=tiles, n=n)
    else:  # rotated, with SIP distortion: the tiles' borders curved on the sky
        w = sky_wcs(tiles * n, rot=35, sip=True)
        img = blobs(tiles * n, count=80)
        paths = []
        for j in range(tiles):
            for i in range(tiles):
                paths.append(str(tmp_path / f"s{j}{i}.fits"))
                header = w.to_header(relax=True)  # (SIP about CRPIX: the tile's own)
                header["CRPIX1"] = w.wcs.crpix[0] - i * n
                header["CRPIX2"] = w.wcs.crpix[1] - j * n
                fits.writeto(paths[-1], img[j * n:(j + 1) * n, i * n:(i + 1) * n], header)
    # on each tile, 3 pixels in from its edges and corners, and its centre; grouped by tile
    local = [(a, b) for a in (2.5, 29.5, 56.5) for b in (2.5, 29.5, 56.5)]
    pix = [(i * n + x, j * n + y) for j in range(tiles) for i in range(tiles)
           for x, y in local]
    off = [(-3.0, 100.0), (100.0, tiles * n + 2.0), (tiles * n + 0.7, 30.0), (-1.2, -1.2)]
    cat = catalogue(w, pix + off)
    ref = astromorph.annotate(cat, paths, model=optical_model)
    flags = np.asarray(ref["opt_flags"])
    assert not np.any(flags[:len(pix)] & Flag.OFF_IMAGE) and np.all(flags[len(pix):]
                                                                     & Flag.OFF_IMAGE)
    from astromorph import _dask as adask

    sent, partition = {}, adask._annotate_partition

    def recording(table, images, *args, **kw):  # by its first row (Dask picks the order)
        sent[table["id"][0] // len(local)] = images
        return partition(table, images, *args, **kw)
    monkeypatch.setattr(adask, "_annotate_partition", recording)
    out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                   partition_size=len(local), scheduler="synchronous",
                                   sky_order=False)
    _assert_same_table(out, ref)
    assert sorted(sent) == list(range(tiles * tiles + 1))
    for k in range(tiles * tiles):  # its own tile, and the first (every partition)
        assert set(sent[k]) == {paths[0], paths[k]}, (k, len(sent[k]))
    # the sources off the mosaic: only the tiles within a pixel and a half of them
    assert len(sent[tiles * tiles]) <= 3, len(sent[tiles * tiles])


def test_annotate_dask_keeps_list_metadata_of_the_catalogue_once(optical_model, tmp_path):
    """The catalogue's list-valued metadata (an ECSV's ``comments``) comes back as the
    catalogue holds it, not once per partition (astropy's vstack joins lists of the tables
    it stacks: 4 partitions gave 4 copies of each comment)."""
    pytest.importorskip("dask")
    img, w = blobs(), sky_wcs()
    fits.writeto(tmp_path / "img.fits", img, w.to_header())
    cat = catalogue(w, np.random.default_rng(2).uniform(10, 190, (20, 2)))
    cat.meta["comments"] = ["made by hand", "second line"]
    cat.meta["history"] = ("run 1",)
    ref = astromorph.annotate(cat, str(tmp_path / "img.fits"), model=optical_model)
    out = astromorph.annotate_dask(cat, str(tmp_path / "img.fits"),
                                   model=str(optical_model.path), partition_size=5,
                                   scheduler="synchronous")
    assert out.meta["comments"] == ["made by hand", "second line"]
    assert out.meta["history"] == ("run 1",)
    assert out.meta == ref.meta


def test_annotate_dask_sends_a_multi_extension_file_to_the_sources_on_any_of_its_tiles(
        optical_model, tmp_path, monkeypatch):
    """A file holding several tiles of a mosaic (one per extension) goes to every partition
    whose sources lie on any of its tiles, not only on its last one: the sources of the
    first extension's tile would be OFF_IMAGE in their partition."""
    pytest.importorskip("dask")
    n = 60
    w = sky_wcs(3 * n, rot=0.0)
    img = blobs(3 * n, count=60)
    hdus = []
    for i in range(3):
        tw = w.deepcopy()
        tw.wcs.crpix = [w.wcs.crpix[0] - i * n, w.wcs.crpix[1]]
        hdus.append((img[:n, i * n:(i + 1) * n], tw.to_header()))
    paths = [str(tmp_path / "t0.fits"), str(tmp_path / "t12.fits")]
    fits.writeto(paths[0], *hdus[0])
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(d, h) for d, h in hdus[1:]]).writeto(
        paths[1])
    rng = np.random.default_rng(4)
    # partition 0: on tile 0; 1: on tile 1 (the file's first extension); 2: on tile 2
    pix = np.concatenate([rng.uniform(5, 55, (4, 2)) + [i * n, 0] for i in range(3)])
    cat = catalogue(w, pix)
    ref = astromorph.annotate(cat, paths, model=optical_model)
    assert not np.any(ref["opt_flags"] & Flag.OFF_IMAGE)
    from astromorph import _dask as adask

    sent, partition = {}, adask._annotate_partition

    def recording(table, images, *args, **kw):  # by its first row (Dask picks the order)
        sent[table["id"][0] // 4] = images
        return partition(table, images, *args, **kw)
    monkeypatch.setattr(adask, "_annotate_partition", recording)
    out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path), partition_size=4,
                                   scheduler="synchronous", sky_order=False)
    assert sent == {0: [paths[0]], 1: paths, 2: paths}, sent
    _assert_same_table(out, ref)


def test_annotate_dask_names_the_tables_first_unusable_row_after_regrouping(optical_model,
                                                                           tmp_path):
    """With the rows regrouped by tile (``sky_order``), the warning's "first:" reason is
    that of the table's first unusable row, as annotate says it: here row 0, without a
    position (regrouped last, with the rows on no tile), not row 50, whose size is NaN
    but which lies on a tile (regrouped into an early partition)."""
    pytest.importorskip("dask")
    paths, w = _mosaic_files(tmp_path, tiles=3)
    rng = np.random.default_rng(11)
    cat = catalogue(w, rng.uniform(0, 179, (72, 2)))
    cat["r90"] = rng.uniform(1.0, 3.0, len(cat))
    cat["ra"][0] = np.nan
    cat["r90"][50] = np.nan
    match = r"^2 of 72 .*first: position\)"
    with pytest.warns(UnusableInputWarning, match=match):
        ref = astromorph.annotate(cat, paths, model=optical_model, size_col="r90")
    with pytest.warns(UnusableInputWarning, match=match):
        out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path),
                                       size_col="r90", partition_size=8, sky_order=True,
                                       scheduler="synchronous")
    _assert_same_table(out, ref)


def test_annotate_dask_footprint_holds_a_tile_a_twentieth_of_a_pixel_past_its_edge():
    """A TAN tile of coarse pixels (1 arcmin: the 1 mas widening is 3e-5 pixel) holds the
    points 0.045 pixel past the outer pixels' edges (annotate takes a source there for the
    tile within its inverse WCS's 1e-4 pixel), and not those a quarter of a pixel past
    them: without the margin a source on the border could be sent no tile."""
    from astropy.coordinates import ICRS

    import astromorph._dask as adask

    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval = ["RA---TAN", "DEC--TAN"], [150.0, 2.2]
    w.wcs.cdelt, w.wcs.crpix = [-1 / 60, 1 / 60], [20.0, 12.0]
    ny, nx = 30, 50
    image = SkyImage(np.zeros((ny, nx), np.float32), w)
    footprint = adask._tile_footprints([image], [ICRS()], SkyCoord([150.0], [2.2],
                                                                   unit="deg"))
    centres, cos_radius, usable, walls, sin_grow = footprint
    assert usable.tolist() == [True]
    t = np.linspace(0, 1, 501)
    for out, expected in ((0.045, True), (0.25, False)):
        m = 0.5 + out
        across, up = -m + t * (nx - 1 + 2 * m), -m + t * (ny - 1 + 2 * m)
        x = np.concatenate([across, np.full_like(t, nx - 1 + m), across, np.full_like(t, -m)])
        y = np.concatenate([np.full_like(t, -m), up, np.full_like(t, ny - 1 + m), up])
        on = adask._on_tiles(adask._unit_vectors(*w.all_pix2world(x, y, 0)), centres,
                             cos_radius, walls, sin_grow)[:, 0]
        if expected:
            assert on.all(), f"{np.count_nonzero(~on)} of {len(on)} points {out} pixel out off"
        else:  # off, past the corners' neighbourhood (where the walls meet at a slant)
            assert not on.any(), f"{np.count_nonzero(on)} points {out} pixel out on"


def test_annotate_dask_places_tiles_whose_first_axis_is_declination(optical_model, tmp_path,
                                                                    monkeypatch):
    """Tiles whose WCS gives declination first (CTYPE1 = DEC--TAN, CTYPE2 = RA---TAN) are
    placed on the sky by their own axes: each partition of one tile's sources is sent that
    tile (and the first), not those where RA and Dec swapped would put it, and the table
    is annotate's."""
    pytest.importorskip("dask")
    n, tiles = 60, 2
    w = sky_wcs(tiles * n, rot=0.0)
    img = blobs(tiles * n, count=60)
    paths = []
    for j in range(tiles):
        for i in range(tiles):
            tw = w.deepcopy()
            tw.wcs.crpix = [w.wcs.crpix[0] - i * n, w.wcs.crpix[1] - j * n]
            swapped = tw.swapaxes(0, 1)
            assert swapped.wcs.lat == 0
            paths.append(str(tmp_path / f"t{j}{i}.fits"))
            fits.writeto(paths[-1], img[j * n:(j + 1) * n, i * n:(i + 1) * n].T.copy(),
                         swapped.to_header())
    rng = np.random.default_rng(8)
    pix = [rng.uniform(5, 55, (5, 2)) + [i * n, j * n] for j in range(tiles)
           for i in range(tiles)]
    cat = catalogue(w, np.concatenate(pix))
    ref = astromorph.annotate(cat, paths, model=optical_model)
    assert not np.any(ref["opt_flags"] & Flag.OFF_IMAGE)
    from astromorph import _dask as adask

    sent, partition = {}, adask._annotate_partition

    def recording(table, images, *args, **kw):  # by its first row (Dask picks the order)
        sent[table["id"][0] // 5] = images
        return partition(table, images, *args, **kw)
    monkeypatch.setattr(adask, "_annotate_partition", recording)
    out = astromorph.annotate_dask(cat, paths, model=str(optical_model.path), partition_size=5,
                                   scheduler="synchronous", sky_order=False)
    assert {k: set(v) for k, v in sent.items()} == {
        k: {paths[0], paths[k]} for k in range(tiles * tiles)}, sent
    _assert_same_table(out, ref)


def test_annotate_dask_footprint_of_a_curved_tile_cuts_its_corners():
    """A tile far from its projection's reference point (CAR, 60 degrees off: its sides
    curved on the sky) has a footprint that leaves out the border pushed 10 pixels out all
    along, corners included: the `FOOTPRINT_DIRECTIONS` walls cut the corners that the four
    sides' walls (through the bow of each side) leave on it (362 of those 12,000 points),
    so that the tile is not sent to the sources beyond its corners."""
    from astropy.coordinates import ICRS

    import astromorph._dask as adask

    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval = ["RA---CAR", "DEC--CAR"], [0.0, 0.0]
    w.wcs.cdelt, w.wcs.crpix = [-0.04, 0.04], [300.0, -1500.0]
    (ny, nx) = shape = (300, 600)
    footprint = adask._tile_footprints([SkyImage(np.zeros(shape, np.float32), w)], [ICRS()],
                                       SkyCoord([0.0], [0.0], unit="deg"))
    centres, cos_radius, usable, walls, sin_grow = footprint
    assert usable.tolist() == [True]
    m, t = 10.5, np.linspace(0, 1, 3000)
    across, up = -m + t * (nx - 1 + 2 * m), -m + t * (ny - 1 + 2 * m)
    x = np.concatenate([across, np.full_like(t, nx - 1 + m), across, np.full_like(t, -m)])
    y = np.concatenate([np.full_like(t, -m), up, np.full_like(t, ny - 1 + m), up])
    on = adask._on_tiles(adask._unit_vectors(*w.all_pix2world(x, y, 0)), centres, cos_radius,
                         walls, sin_grow)[:, 0]
    assert not on.any(), f"{np.count_nonzero(on)} of {len(on)} points 10 pixels out on"


def test_band_given_against_the_header_is_said(tmp_path):
    """bands= (--band) or a dict key naming another band than the image's FILTER keyword
    relabelled the image silently (g, r, i files given as i, r, g were scored as such)."""
    w = sky_wcs(40, rot=0.0)
    paths = []
    for band in "gri":
        header = w.to_header()
        header["FILTER"] = f"SDSS {band}"
        paths.append(tmp_path / f"{band}.fits")
        fits.writeto(paths[-1], np.zeros((40, 40), np.float32), header)
    with pytest.warns(AmbiguousInputWarning, match=r"'i' \(bands=, --band\).*"
                      r"g\.fits.*FILTER.*'g'.*'g' \(bands=, --band\).*i\.fits.*'i'") as rec:
        with closing_files(parse_sky_images(paths, bands=["i", "r", "g"])) as images:
            assert [im.band for im in images] == ["i", "r", "g"]  # the given band is used
    assert len([r for r in rec if issubclass(r.category, AmbiguousInputWarning)]) == 1
    with pytest.warns(AmbiguousInputWarning, match=r"'r' \(the dict key\).*g\.fits"):
        with closing_files(parse_sky_images({"r": paths[0]})):
            pass
    with warnings.catch_warnings():  # agreeing, or naming a triplet role: nothing to say
        warnings.simplefilter("error")
        with closing_files(parse_sky_images(paths, bands=["G", "r", "SDSS i"])):
            pass
        with closing_files(parse_sky_images({"science": paths[0], "ref": paths[1],
                                             "diff": paths[2]})):
            pass


def test_tile_compressed_mosaic_is_decompressed_one_tile_at_a_time(optical_model, tmp_path,
                                                                   monkeypatch):
    """annotate reads a mosaic of tile-compressed files by their headers and decompresses
    each tile once, when its sources are cut, letting it go before the next: all the tiles
    were decompressed when parsed and held for the whole call. A source in the overlap of
    four tiles, on the BLANK padding of the one it lies farthest inside, is read (by rows of
    the compressed tiles, not whole) and cut from one with data there. The result is that of
    the same tiles uncompressed, bit for bit."""
    import gc
    import weakref

    from astropy.io.fits.hdu.compressed import section

    n, step = 150, 120
    big = np.round(blobs(n + step, count=80) * 1000).astype(np.int16)
    w = sky_wcs(n + step, rot=0)
    plain, packed = [], []
    for y0 in (0, step):
        for x0 in (0, step):
            tw = w.deepcopy()
            tw.wcs.crpix = [w.wcs.crpix[0] - x0, w.wcs.crpix[1] - y0]
            data = big[y0:y0 + n, x0:x0 + n].copy()
            if not x0 and not y0:
                data[125:, 125:] = -32768                # padding under the overlap
            for kind, hdus in ((fits.PrimaryHDU, plain), (fits.CompImageHDU, packed)):
                hdu = kind(data, tw.to_header())
                hdu.header["BSCALE"], hdu.header["BLANK"] = 1e-3, -32768  # raw integers kept
                hdus.append(str(tmp_path / f"t{y0}_{x0}.fits{'.fz' * (hdus is packed)}"))
                fits.HDUList([fits.PrimaryHDU(), hdu] if hdus is packed else [hdu]).writeto(
                    hdus[-1])
    grid = [(x, y) for x in range(10, n + step, 23) for y in range(10, n + step, 29)]
    cat = catalogue(w, [(132, 132), *grid, (-50, 100)])
    expected = astromorph.annotate(cat, plain, model=optical_model, threads=1)
    alive, whole = [], []
    decompress = section.decompress_image_data_section

    def counted(*args, **kwargs):
        out = decompress(*args, **kwargs)
        if out.shape == (n, n):  # a tile decompressed whole
            gc.collect()
            whole.append(sum(ref() is not None for ref in alive))
            alive.append(weakref.ref(out))
        return out

    monkeypatch.setattr(section, "decompress_image_data_section", counted)
    out = astromorph.annotate(cat, packed, model=optical_model, threads=1)
    assert whole == [0, 0, 0, 0]  # each tile once, none held when the next is read
    assert out["opt_flags"][0] == 0 and out["opt_flags"][-1] == Flag.OFF_IMAGE
    assert_same_values(out, expected, out.colnames)


def test_gzipped_mosaic_is_decompressed_one_tile_at_a_time(optical_model, tmp_path,
                                                           monkeypatch):
    """annotate reads a mosaic of gzipped (and bzip2ed) files by their headers and
    decompresses each tile's pixels when its sources are cut, letting them go before the
    next: a compressed file cannot be memory-mapped, and all the tiles were decompressed
    when parsed and held for the whole call. A tile may be an extension after an empty
    primary HDU. A source in the overlap of four tiles, on the NaN padding of the one it
    lies farthest inside, is read (by rows, not whole) and cut from one with data there.
    The result is that of the same tiles uncompressed, bit for bit."""
    import gc
    import weakref

    from astromorph import _annotate

    n, step = 150, 120
    big = blobs(n + step, count=80).astype(np.float32)
    w = sky_wcs(n + step, rot=0)
    plain, packed = [], []
    for k, (y0, x0) in enumerate([(0, 0), (0, step), (step, 0), (step, step)]):
        tw = w.deepcopy()
        tw.wcs.crpix = [w.wcs.crpix[0] - x0, w.wcs.crpix[1] - y0]
        data = big[y0:y0 + n, x0:x0 + n].copy()
        if not x0 and not y0:
            data[125:, 125:] = np.nan                # padding under the overlap
        plain.append(str(tmp_path / f"t{k}.fits"))
        fits.PrimaryHDU(data, tw.to_header()).writeto(plain[-1])
        packed.append(str(tmp_path / f"t{k}.fits.{'bz2' if k == 3 else 'gz'}"))
        hdus = [fits.PrimaryHDU(data, tw.to_header())]
        if k == 1:
            hdus = [fits.PrimaryHDU(), fits.ImageHDU(data, tw.to_header())]
        fits.HDUList(hdus).writeto(packed[-1])
    grid = [(x, y) for x in range(10, n + step, 23) for y in range(10, n + step, 29)]
    cat = catalogue(w, [(132, 132), *grid, (-50, 100)])
    expected = astromorph.annotate(cat, plain, model=optical_model, threads=1)
    pixels, held = {}, []
    cut = _annotate.cut_stamps

    def root(array):
        while isinstance(getattr(array, "base", None), np.ndarray):
            array = array.base
        return array

    def counted(image, *args, **kwargs):
        stamps = cut(image, *args, **kwargs)
        data = root(image.data)
        if data.size >= n * n:  # the tile's pixels in hand
            pixels.setdefault(image.name, {})[id(data)] = weakref.ref(data)
        gc.collect()
        held.append(sum(ref() is not None for name, refs in pixels.items()
                        if name != image.name for ref in refs.values()))
        return stamps

    monkeypatch.setattr(_annotate, "cut_stamps", counted)
    out = astromorph.annotate(cat, packed, model=optical_model, threads=1)
    assert sorted(pixels) == sorted(f"{p}[{1 if k == 1 else 0}]" for k, p in enumerate(packed))
    assert [len(refs) for refs in pixels.values()] == [1, 1, 1, 1]  # each decompressed once
    assert max(held) == 0, held  # no other tile's pixels held while one is cut
    assert out["opt_flags"][0] == 0 and out["opt_flags"][-1] == Flag.OFF_IMAGE
    assert_same_values(out, expected, out.colnames)


def test_mosaic_of_another_band_is_decompressed_one_tile_at_a_time(optical_model, tmp_path,
                                                                monkeypatch):
    """The sources are grouped by the tile they are cut from in every band, not in the first
    band alone: where g is one tile-compressed image and r a mosaic of two gzipped tiles side
    by side, the r tiles are taken one after the other (by the rows of g, both were held
    from the first rows to the last). Each tile is decompressed once; the result is that of
    the same images uncompressed, bit for bit."""
    from astromorph import _annotate

    n, half = 150, 80
    w = sky_wcs(n, rot=0)
    plain, packed = {}, {}
    for band, seed in (("g", 1), ("r", 2), ("i", 3)):
        big = np.round(blobs(n, seed=seed, count=60) * 1000).astype(np.int16)
        tiles = [(0, half + 10), (half - 10, n)] if band == "r" else [(0, n)]
        for x0, x1 in tiles:
            tw = w.deepcopy()
            tw.wcs.crpix = [w.wcs.crpix[0] - x0, w.wcs.crpix[1]]
            data, header = big[:, x0:x1].copy(), tw.to_header()
            header["BSCALE"] = 1e-3
            name = str(tmp_path / f"{band}{x0}.fits")
            fits.PrimaryHDU(data, header).writeto(name)
            plain.setdefault(band, []).append(name)
            if band == "g":
                name += ".fz"
                fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)]).writeto(name)
            elif band == "r":
                name += ".gz"
                fits.PrimaryHDU(data, header).writeto(name)
            packed.setdefault(band, []).append(name)
    cat = catalogue(w, [(x, y) for x in range(8, n - 8, 9) for y in range(8, n - 8, 9)])
    monkeypatch.setattr(_annotate, "STAMP_CHUNK", 16)  # parts of 16 sources
    expected = astromorph.annotate(cat, plain, model=optical_model, threads=1)
    seen, held = {}, []
    cut = _annotate.cut_stamps

    def counted(image, *args, **kwargs):
        seen[image.name] = image
        held.append(sum(im._loaded for im in seen.values() if im.band == "r"))
        return cut(image, *args, **kwargs)

    monkeypatch.setattr(_annotate, "cut_stamps", counted)
    out = astromorph.annotate(cat, packed, model=optical_model, threads=1)
    assert {name.rsplit("/")[-1]: im.decompressions for name, im in seen.items()
            if im.band != "i"} == {"g0.fits.fz[1]": 1, "r0.fits.gz[0]": 1, "r70.fits.gz[0]": 1}
    assert max(held) == 1, held  # one r tile's pixels in hand at a time
    assert_same_values(out, expected, out.colnames)


@pytest.mark.parametrize("how", ["ZIP_STORED", "ZIP_DEFLATED"])
def test_zipped_fits_read_whole_gives_its_pixels(optical_model, tmp_path, how):
    """A zip archive of a FITS file read whole (a dense catalogue) gives its pixels: astropy
    memory-maps the FITS file it extracts into a temporary file, and the one read call of
    `SkyImage.resident` read the archive's bytes at the offset of the pixels in that file
    (a stored, uncompressed archive gave other pixels, silently)."""
    import zipfile

    n = 100
    w = sky_wcs(n, rot=0)
    hdu = fits.PrimaryHDU(np.round(blobs(n) * 1000).astype(np.int16), w.to_header())
    hdu.header["BSCALE"] = 1e-3  # (scaled integers: converted whole into float32)
    plain, path = tmp_path / "image.fits", tmp_path / "image.fits.zip"
    hdu.writeto(plain)
    with zipfile.ZipFile(path, "w", getattr(zipfile, how)) as archive:
        archive.write(plain, "image.fits")
    cat = catalogue(w, [(x, y) for x in range(5, n - 5, 4) for y in range(5, n - 5, 4)])
    expected = astromorph.annotate(cat, str(plain), model=optical_model)
    out = astromorph.annotate(cat, str(path), model=optical_model)
    assert_scores(out["opt_p_a"], expected["opt_p_a"], rtol=0)
    np.testing.assert_array_equal(out["opt_flags"], expected["opt_flags"])


def test_corrupt_zipped_fits_is_an_input_error(tmp_path):
    """A zip archive of a FITS file whose compressed bytes are damaged is an `InputError`
    naming it (zipfile's BadZipFile, which astropy lets through, escaped), saying its
    stream is corrupt (`test_a_corrupt_stream_is_said_corrupt_not_truncated`)."""
    import zipfile

    plain = tmp_path / "image.fits"
    fits.PrimaryHDU(blobs(100), sky_wcs(100).to_header()).writeto(plain)
    path = tmp_path / "image.fits.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(plain, "image.fits")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the deflated FITS file
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"^corrupt zip stream in FITS file .*image\.fits\.zip: "
                                         r".*CRC"):
        parse_sky_images(str(path))


@pytest.mark.parametrize("threads", [1, 2])
def test_memory_mapped_mosaic_holds_one_converted_tile_at_a_time(optical_model, tmp_path,
                                                                 monkeypatch, threads):
    """The float32 copy that a dense catalogue makes of each memory-mapped tile (scaled
    integers, converted whole: `SkyImage.resident`) is let go after the tile's last source,
    and the sources are taken tile by tile: each tile is converted once, and (one thread) no
    other tile's copy is held when the next is made. All four copies were held for the
    whole call. The result is that of the tiles sampled page by page, bit for bit."""
    import gc
    import weakref

    from astromorph import _cutouts

    n, step = 150, 120
    big = np.round(blobs(n + step, count=80) * 1000).astype(np.int16)
    w = sky_wcs(n + step, rot=0)
    paths = []
    for y0 in (0, step):
        for x0 in (0, step):
            tw = w.deepcopy()
            tw.wcs.crpix = [w.wcs.crpix[0] - x0, w.wcs.crpix[1] - y0]
            hdu = fits.PrimaryHDU(big[y0:y0 + n, x0:x0 + n].copy(), tw.to_header())
            hdu.header["BSCALE"], hdu.header["BLANK"] = 1e-3, -32768
            paths.append(str(tmp_path / f"t{y0}_{x0}.fits"))
            hdu.writeto(paths[-1])
    grid = [(x, y) for x in range(5, n + step, 11) for y in range(5, n + step, 13)]
    cat = catalogue(w, [*grid, (-50, 100)])
    monkeypatch.setattr(_cutouts, "RESIDENT_MAX_BYTES", 0)  # page by page: no copies
    expected = astromorph.annotate(cat, paths, model=optical_model, threads=threads)
    monkeypatch.setattr(_cutouts, "RESIDENT_MAX_BYTES", 1 << 30)
    copies, held = [], []
    read_whole = _cutouts.SkyImage._read_whole

    def counted(self):
        out = read_whole(self)
        assert out is not None and out.shape == (n, n)  # (one read call, converted)
        gc.collect()
        held.append(sum(ref() is not None for ref in copies))
        copies.append(weakref.ref(out))
        return out

    monkeypatch.setattr(_cutouts.SkyImage, "_read_whole", counted)
    out = astromorph.annotate(cat, paths, model=optical_model, threads=threads)
    assert len(held) == 4  # each tile converted once, none again after it was let go
    assert max(held) <= (0 if threads == 1 else 1), held
    gc.collect()
    assert not any(ref() is not None for ref in copies)
    assert out["opt_flags"][-1] == Flag.OFF_IMAGE
    assert_same_values(out, expected, out.colnames)


def test_whole_image_copies_are_let_go_after_the_last_source(monkeypatch):
    """After the last of the sources announced (`SkyImage.expect_sources`), an image lets go
    of the float32 copy of its scaled pixels and of its block-averaged copies, and gives
    their share of the budget back; its pixels, as `take` gives them, are kept. Neither
    was let go before."""
    from astromorph import _cutouts

    monkeypatch.setattr(_cutouts, "_resident_bytes", [0])
    raw = np.round(blobs() * 1000).astype(np.int16)
    image = SkyImage(raw, sky_wcs(), bscale=1e-3)
    values = image.resident(raw.size).copy()
    assert image.level(2, 2).resident(raw.size) is not None  # a dense block-averaged copy
    image.expect_sources(3)
    image.done_sources(2)
    assert image.resident(0) is not None and _cutouts._resident_bytes == [4 * raw.size]
    image.done_sources(1)
    assert image._resident is None and image._levels == {}
    assert _cutouts._resident_bytes == [0]
    np.testing.assert_array_equal(image.take(np.arange(raw.size)), values.ravel())


@pytest.mark.parametrize("threads", [1, 2])
def test_parts_are_prepared_at_most_one_per_thread_ahead_of_the_model(optical_model,
                                                                      monkeypatch, threads):
    """The network inputs of a chunk's parts are not all prepared ahead of a slower model:
    while the model scores one part, each thread prepares at most one more (a chunk of 4096
    sources of 64 x 64 held some 67 MB of finished inputs waiting to be scored)."""
    import threading
    import time

    from astromorph import _annotate

    monkeypatch.setattr(_annotate, "STAMP_CHUNK", 4)     # 15 parts in one chunk
    counts, lock, ahead = [0, 0], threading.Lock(), []
    prepare, predict = _annotate.prepare, optical_model.predict

    def counted_prepare(*args, **kw):
        out = prepare(*args, **kw)
        with lock:
            counts[0] += 1
            ahead.append(counts[0] - counts[1])
        return out

    def slow_predict(*args, **kw):
        time.sleep(0.03)
        out = predict(*args, **kw)
        with lock:
            counts[1] += 1
        return out

    monkeypatch.setattr(_annotate, "prepare", counted_prepare)
    monkeypatch.setattr(optical_model, "predict", slow_predict)
    rng = np.random.default_rng(7)
    w = sky_wcs()
    cat = catalogue(w, rng.uniform(20, 180, (60, 2)))
    out = astromorph.annotate(cat, (blobs(), w), model=optical_model, threads=threads)
    assert counts == [15, 15] and np.all(np.asarray(out["opt_flags"]) == 0)
    assert max(ahead) <= threads + 1, ahead


@pytest.mark.parametrize("suffix", ["gz", "fz"])
def test_pixels_let_go_after_their_float32_copy_are_read_anew(tmp_path, suffix):
    """A compressed tile of scaled integers whose raw pixels `resident` dropped for their
    float32 copy, then let go after its last source (`done_sources`), is read anew when
    sampled again: its placeholder kept the float32 copy's dtype, so the raw int16 pixels
    read again were refused as 'not those its header gives'."""
    raw = np.round(blobs(40) * 1000).astype(np.int16)
    header = sky_wcs(40).to_header()
    path = tmp_path / f"t.fits.{suffix}"
    hdu = (fits.CompImageHDU if suffix == "fz" else fits.PrimaryHDU)(raw, header)
    hdu.header["BSCALE"], hdu.header["BLANK"] = 1e-3, -32768
    fits.HDUList([fits.PrimaryHDU(), hdu] if suffix == "fz" else [hdu]).writeto(path)
    with closing_files(parse_sky_images([str(path)])) as images:
        image = images[0]
        image.expect_sources(1)
        values = image.resident(raw.size).copy()
        image.done_sources(1)
        assert not image._loaded
        np.testing.assert_array_equal(image.take(np.arange(raw.size)), values.ravel())


def _flat_blocks_image(n=200, seed=1):
    """Blobs on noise (sigma 0.05) with a flat block at 100 (left) and one at -5 (right)."""
    img = blobs(n) + np.random.default_rng(seed).normal(0, 0.05, (n, n)).astype(np.float32)
    img[:, :70], img[:, 130:] = 100.0, -5.0
    return img.astype(np.float32)


@pytest.mark.parametrize("level,method", [(16, 1), (16, 2), (4, 1), (4, 2), (64, 2)])
def test_flat_block_of_a_lossily_compressed_image_is_constant(optical_model, tmp_path,
                                                              level, method):
    """A flat block of a non-zero value (a mosaic's fill, a saturated or masked block) of a
    float image tile-compressed with quantisation (fpack's default, subtractive dither)
    reads back as values that differ by up to one quantisation step (ZSCALE) of their
    tiles: its stamps are CONSTANT, as those of the same image uncompressed, or compressed
    without loss, are; the stamps on the noise are not."""
    n, w = 200, sky_wcs(200, rot=0)
    img = _flat_blocks_image(n)
    cat = catalogue(w, [(x, y) for x in (30, 40, 165, 175, 90, 110) for y in (50, 150)])
    flat = np.repeat([True, True, True, True, False, False], 2)
    paths = {}
    for name, hdu in (
            ("plain", fits.PrimaryHDU(img, w.to_header())),
            ("lossless", fits.CompImageHDU(img, w.to_header(), compression_type="GZIP_2",
                                           quantize_level=0)),
            ("lossy", fits.CompImageHDU(img, w.to_header(), quantize_level=level,
                                        quantize_method=method))):
        paths[name] = tmp_path / f"{name}.fits"
        (fits.HDUList([fits.PrimaryHDU(), hdu]) if name != "plain" else hdu).writeto(
            paths[name])
    lossy = fits.getdata(paths["lossy"], 1)
    assert np.ptp(lossy[:, 5:65]) > 0 and np.ptp(lossy[:, 135:195]) > 0  # not flat
    flags = {name: np.asarray(astromorph.annotate(cat, str(p), model=optical_model)[
        "opt_flags"]) for name, p in paths.items()}
    np.testing.assert_array_equal((flags["plain"] & Flag.CONSTANT) != 0, flat)
    np.testing.assert_array_equal(flags["lossless"], flags["plain"])
    np.testing.assert_array_equal(flags["lossy"], flags["plain"])


@pytest.mark.parametrize("axes", ["freq_stokes", "freq", "stokes_v_then_i"])
def test_flat_block_of_a_lossily_compressed_cube_is_constant(optical_model, tmp_path, axes):
    """A lossily tile-compressed float image stored as a degenerate cube ((1, H, W) with a
    FREQ axis, (1, 1, H, W) radio data with FREQ and STOKES axes) is read by its Stokes I
    plane's quantisation steps, as a 2-D image is: its flags equal the uncompressed file's.
    The steps were read only for NAXIS = 2 (the exact test for any cube: the flat block's
    stamps were not CONSTANT). With a STOKES axis of V then I, the steps are those of the I
    plane's tiles, not the V plane's (whose noise, 1000 times the I plane's, gives steps
    that would pass I's noise stamps for CONSTANT)."""
    n, w = 200, sky_wcs(200, rot=0)
    img = _flat_blocks_image(n)
    cat = catalogue(w, [(x, y) for x in (30, 40, 165, 175, 90, 110) for y in (50, 150)])
    flat = np.repeat([True, True, True, True, False, False], 2)
    header = w.to_header()
    header["WCSAXES"] = 3 if axes == "freq" else 4
    header.update({"CTYPE3": "FREQ", "CRVAL3": 1.4e9, "CDELT3": 1e6, "CRPIX3": 1.0,
                   "CUNIT3": "Hz"})
    if axes == "freq":
        cube = img[None]
    else:
        header.update({"CTYPE4": "STOKES", "CRPIX4": 1.0, "CDELT4": -3.0 if axes.endswith(
            "i") else 1.0, "CRVAL4": 4.0 if axes.endswith("i") else 1.0})
        cube = img[None, None]
        if axes.endswith("i"):  # V (noise 1000 times I's), then I
            v = np.random.default_rng(5).normal(0, 50, img.shape).astype(np.float32)
            cube = np.stack([v[None], img[None]])
    paths = {}
    for name, hdu in (("plain", fits.PrimaryHDU(cube, header)),
                      ("lossy", fits.CompImageHDU(cube, header, quantize_level=16,
                                                  quantize_method=1))):
        paths[name] = tmp_path / f"{name}.fits"
        (fits.HDUList([fits.PrimaryHDU(), hdu]) if name != "plain" else hdu).writeto(
            paths[name])
    lossy = fits.getdata(paths["lossy"], 1)
    assert lossy.shape == cube.shape and np.ptp(lossy[..., :, 5:65]) > 0  # not flat
    flags = {name: np.asarray(astromorph.annotate(cat, str(p), model=optical_model)[
        "opt_flags"]) for name, p in paths.items()}
    np.testing.assert_array_equal((flags["plain"] & Flag.CONSTANT) != 0, flat)
    np.testing.assert_array_equal(flags["lossy"], flags["plain"])


@pytest.mark.parametrize("method", [-1, 1])
def test_noise_of_a_finely_sampled_lossy_image_is_not_constant(optical_model, tmp_path, method):
    """Noise on pixels 10 times finer than the stamp's, quantised at fpack's level 4: each
    stamp pixel averages 10 x 10 image pixels, so the noise of a stamp spans far less than a
    quantisation step of the image. Without dither (NO_DITHER, astropy's default) a whole
    step let 5 of these 400 noise stamps pass for CONSTANT; the allowance now shrinks with
    the block for every quantisation method, as it did for dithered files."""
    factor = 10
    n = SIZE * factor * 2 + 40
    w = sky_wcs(n, rot=0, scale=SCALE / factor)
    img = (50 + np.random.default_rng(0).normal(0, 1, (n, n))).astype(np.float32)
    edge = SIZE * factor / 2 + 10
    grid = np.linspace(edge, n - edge, 20)
    cat = catalogue(w, [(x, y) for x in grid for y in grid])
    path = tmp_path / "noise.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
        img, w.to_header(), quantize_level=4, quantize_method=method)]).writeto(path)
    flags = np.asarray(astromorph.annotate(cat, str(path), model=optical_model)["opt_flags"])
    assert not np.any(flags & Flag.CONSTANT)


def test_stamp_pixels_on_the_image_edge_are_inside():
    """A stamp is sampled on the closed interval [-0.5, n - 0.5] of the image (astropy's
    pixel edges): a stamp pixel exactly on the outer edge of the first or last pixel takes
    that pixel's value and counts as inside; one a hair beyond it is NaN and outside."""
    from astromorph._cutouts import _bilinear

    image = SkyImage(np.arange(20, dtype=np.float32).reshape(4, 5), None)  # 4 rows, 5 columns
    x = [[[-0.5, 4.5], [-0.5001, 4.5001]], [[1.0, 2.0], [1.0, 2.0]]]
    y = [[[-0.5, 3.5], [1.0, 1.0]], [[-0.5001, -0.5], [3.5, 3.5001]]]
    out, n_inside = _bilinear(image, np.array([x, y], np.float32))
    np.testing.assert_array_equal(out[0], [[0.0, 19.0], [np.nan, np.nan]])
    np.testing.assert_array_equal(out[1], [[np.nan, 2.0], [16.0, np.nan]])
    assert n_inside.tolist() == [2, 2]


def test_stamp_quantum_reaches_the_tiles_under_its_blocks():
    """A block-averaged stamp samples blocks of image pixels around each stamp pixel, and its
    bilinear neighbour blocks: the quantisation it allows for is the largest step of every
    compression tile those blocks touch, past the stamp pixels' own coordinates, and no
    more."""
    from astromorph._cutouts import _block_quantum, _stamp_quantum

    steps = np.array([[1.0], [8.0], [1.0], [1.0]])  # tiles of 16 rows x 64 columns
    image = SkyImage(np.zeros((64, 64), np.float32), None, quantisation=((16, 64), steps))
    # stamp pixels on rows 6..14 (blocks of 4 x 4: row 14 reads the block of rows 16..19, in
    # the second tile), and on rows 2..6 (blocks of rows 0..11 alone, in the first)
    xx = np.array([20.0, 24.0, 28.0])
    xy = np.array([np.broadcast_to(xx, (2, 3, 3)),
                   [np.broadcast_to(r[:, None], (3, 3)) for r in (np.array([6.0, 10.0, 14.0]),
                                                                  np.array([2.0, 4.0, 6.0]))]])
    quantum = _stamp_quantum(image, xy, np.array([[4, 4], [4, 4]]))
    assert quantum.tolist() == [_block_quantum(8.0, 16), _block_quantum(1.0, 16)]


def test_median_step_is_the_lower_middle_finite_step():
    """`_median_step` (the zoom of a stamp mapped pixel by pixel): the median of the finite
    step lengths, for an even count the lower of the two middle ones (a step of the map
    itself); NaN steps left out, a map without finite steps NaN."""
    from astromorph._cutouts import _median_step

    v = np.array([[[0.0, 1.0, 2.0], [0.0, 2.0, 4.0], [0.0, 0.0, 0.0]],   # 1, sqrt 2, 2, 2 sqrt 2
                  [[0.0, 1.0, np.nan], [0.0, 3.0, np.nan], [0.0, 0.0, 0.0]],  # 1, 3, NaN, NaN
                  np.full((3, 3), np.nan)])
    got = _median_step(v)
    assert got[0] == np.sqrt(2.0) and got[1] == 1.0 and np.isnan(got[2])



# --- the image each source is cut from, and the saturation disk, tested directly --------------

def _sin_tile(nx, ny, crpix, *, scale=(1.0, 1.0), data=None, **kwargs):
    """A SkyImage of ``nx`` x ``ny`` SIN pixels of ``scale`` arcsec (along x, y), its reference
    point (150, 2) deg at 1-based pixel ``crpix``: a source there lies at 0-based pixel
    ``crpix - 1`` exactly (SIN: TAN's puts it 1e-11 pixel beside)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = list(crpix)
    w.wcs.cdelt = [-scale[0] / 3600, scale[1] / 3600]
    return SkyImage(np.ones((ny, nx), np.float32) if data is None else data, w, **kwargs)


def _choice(images):
    """`_choose_images` of one source at (150, 2) deg: ``(best, off)`` of it."""
    from astromorph._annotate import _choose_images, _sky_positions

    sky = _sky_positions(images, SkyCoord([150.0] * u.deg, [2.0] * u.deg))
    best, off = _choose_images(images, sky, np.arange(1))
    return int(best[0]), bool(off[0])


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("pixel, off", [(-0.5, False), (-1.0, True), ("n - 0.5", False),
                                        ("n", True)])
def test_a_source_on_the_outer_border_of_an_image_is_on_it(axis, pixel, off):
    """A source lies on an image from pixel -0.5 to ``n - 0.5`` (0-based, the outer borders
    of its edge pixels) inclusive, on each axis; half a pixel further it is off
    (`Flag.OFF_IMAGE`). (An image 40 x 30 pixels.)"""
    n = (40, 30)[axis]
    at = {"n - 0.5": n - 0.5, "n": float(n)}.get(pixel, pixel)
    crpix = [20.0, 15.0]
    crpix[axis] = at + 1
    assert _choice([_sin_tile(40, 30, crpix)])[1] is off


@pytest.mark.parametrize("swap", [False, True])
def test_tiles_of_non_square_pixels_compare_each_axis_in_its_own_pixel_side(swap):
    """Pixels 1" along x, 0.25" along y: the source lies 10.5" inside tile A (10 pixels from
    its left edge; 200 rows, 50", from its bottom) and 5.1" inside tile B (20 rows from its
    bottom; 50 pixels from its sides): it is cut from A, whichever comes first (each axis's
    pixels on the sky; with the sides swapped B's margin is the larger)."""
    a = _sin_tile(100, 400, (11.0, 201.0), scale=(1.0, 0.25))
    b = _sin_tile(100, 400, (51.0, 21.0), scale=(1.0, 0.25))
    assert _choice([b, a] if swap else [a, b]) == (1 if swap else 0, False)


@pytest.mark.parametrize("value", [1.0, np.nan])
def test_of_tiles_where_a_source_lies_equally_far_inside_the_first_is_taken(value):
    """Two tiles of one grid, both with data under the source or both blank there: the
    first of equals."""
    tiles = [_sin_tile(40, 30, (20.0, 15.0), data=np.full((30, 40), value * k, np.float32))
             for k in (1.0, 2.0)]
    assert _choice(tiles) == (0, False)


@pytest.mark.parametrize("blank, best", [((15, 11), 1), ((15, 10), 0)])
def test_the_pixel_whose_data_decides_between_tiles_is_the_nearest(blank, best):
    """The source at 0-based pixel (10.6, 15) of tile A (farthest inside) lies on its pixel
    (11, 15): a NaN there gives way to tile B, which has data under it; a NaN at pixel
    (10, 15), beside it, does not."""
    data = np.ones((30, 40), np.float32)
    data[blank] = np.nan
    a = _sin_tile(40, 30, (11.6, 16.0), data=data)
    b = _sin_tile(40, 30, (6.0, 16.0))
    assert _choice([a, b]) == (best, False)


def test_a_position_outside_the_wcs_has_no_margin():
    """A position that the WCS cannot place (NaN pixels) lies off the image: margin -inf."""
    from astromorph._annotate import _margins

    image = _sin_tile(40, 30, (20.0, 15.0))
    margins = _margins(image, np.array([np.nan, 10.0, 5.0]), np.array([5.0, np.nan, 5.0]))
    assert margins.tolist() == [-np.inf, -np.inf, 5.5]


def test_saturation_disk_is_centred_on_the_nearest_pixel_and_ends_at_the_image():
    """`_saturated` looks at the pixels within 3 of the pixel under the source (rounded,
    half to even as `numpy.rint`), and not beyond the image: a saturated pixel 3 rows from
    the rounded position is found; one reached only from a disk point beyond the image's
    edge (clipped back onto the edge) is not."""
    from astromorph._annotate import _saturated

    def flagged(pixel, px, py):
        data = np.zeros((40, 40), np.float32)
        data[pixel] = 100.0
        image = _sin_tile(40, 40, (20.0, 20.0), data=data, saturation=100.0)
        return bool(_saturated(image, np.array([px]), np.array([py]))[0])

    # y 10.6 lies on row 11: row 14 is 3 rows away (from row 10 it would be 4)
    assert flagged((14, 20), 20.0, 10.6)
    # x 39.5 rounds to 40, beyond the last column (39): pixel (23, 39) is sqrt(10) away
    assert not flagged((23, 39), 39.5, 20.0)
    assert flagged((22, 39), 39.5, 20.0)  # sqrt(5) away
    # y 39.5 rounds to 40, beyond the last row: pixel (39, 23) is sqrt(10) away
    assert not flagged((39, 23), 20.0, 39.5)
    assert flagged((39, 22), 20.0, 39.5)


def test_images_in_one_frame_of_two_equinoxes_get_their_own_positions():
    """`_sky_positions` transforms the positions once per frame: FK5 at J2000 and at J1950
    are two (some 0.7 deg apart), each image's pixels those its own WCS gives."""
    from astromorph._annotate import _sky_positions

    coords = SkyCoord([150.0, 150.01] * u.deg, [2.0, 2.01] * u.deg)
    images = []
    for equinox in (2000.0, 1950.0):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval, w.wcs.crpix = [150.0, 2.0], [100.0, 100.0]
        w.wcs.cdelt = [-1 / 3600, 1 / 3600]
        w.wcs.radesys, w.wcs.equinox = "FK5", equinox
        images.append(SkyImage(np.ones((200, 200), np.float32), w))
    sky = _sky_positions(images, coords)
    for image, (_, _, px, py, _) in zip(images, sky):
        x, y = image.wcs.world_to_pixel(coords)
        np.testing.assert_allclose(px, x, atol=1e-6)
        np.testing.assert_allclose(py, y, atol=1e-6)


def test_a_name_that_two_columns_differ_from_by_case_clashes_with_the_first():
    """`_same_column`: of two columns whose names differ only by case, a new name clashes
    with the one of them it equals, else with the first (the one `on_conflict='replace'`
    then replaces)."""
    from astromorph._annotate import _same_column

    table = Table({"OPT_LABEL": [1], "opt_label": [2], "x": [3]})
    assert _same_column(table, ["Opt_Label", "opt_label", "y"]) == {
        "Opt_Label": "OPT_LABEL", "opt_label": "opt_label"}


@pytest.mark.parametrize("pixel, native", [(1.7981, True), (1.7983, False), (1.8, False)])
def test_radio_stamps_are_cut_on_the_image_pixels_only_finer_than_firsts(pixel, native):
    """`_native_grids`: an image of known beam is cut on its own pixels where they are finer
    than FIRST's 1.8" by more than 1 part in 1000 (1.7982")."""
    from astromorph._annotate import _native_grids

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval, w.wcs.crpix = [150.0, 2.0], [50.0, 50.0]
    w.wcs.cdelt = [-pixel / 3600, pixel / 3600]
    image = SkyImage(np.ones((100, 100), np.float32), w, beam=5.4)
    scale = np.full(1, 1.8)
    sides, out = _native_grids([image], (np.zeros(1, int), np.zeros(1, bool)), scale, 300)
    assert bool(out[0] != 1.8) is native
    assert bool(sides[0] != 300) is native
    if native:
        assert out[0] == pytest.approx(pixel)


def _stokes_header(w, n, stokes, *, naxis=True):
    """The header of ``w`` (2D, ``n`` pixels a side) with a third, STOKES axis of the
    Stokes parameters ``stokes`` (1: I, 2: Q...; CDELT3 = 1), with NAXISn (``naxis``) or
    only WCSAXES (as `WCS.to_header` writes it)."""
    h = w.to_header()
    h["WCSAXES"] = 3
    h.update({"CTYPE3": "STOKES", "CRVAL3": float(stokes[0]), "CDELT3": 1.0, "CRPIX3": 1.0})
    if naxis:
        h.update({"NAXIS": 3, "NAXIS1": n, "NAXIS2": n, "NAXIS3": len(stokes)})
    return h


def test_an_array_with_a_header_of_more_axes_is_read_as_the_file_would_be(tmp_path):
    """A 2D array paired with a header (or a WCS) that gives a third axis: the STOKES axis
    of a radio image was not looked at (only the array's two axes were), so a Stokes Q
    plane was scored as total intensity where its file is refused; a header whose third
    axis is longer than 1 (a plane of a cube) was taken without a word, which plane it is
    unknown. Now a header whose extra axes are one pixel long is read as its file's data
    would be (Stokes Q refused in the file's words, Stokes I read), one with a longer STOKES
    axis is an `InputError` naming it, and a plane of a FREQ cube is read."""
    n = 64
    w = sky_wcs(n, rot=15)
    img = blobs(n, seed=3, count=30)
    path = tmp_path / "q.fits"
    fits.PrimaryHDU(img[None], _stokes_header(w, n, [2])).writeto(path)
    with pytest.raises(InputError) as info:
        parse_sky_images(str(path))
    words = str(info.value).split(": ", 1)[1]
    assert "holds Stokes Q: no Stokes I" in words, words
    for pair in ((img, _stokes_header(w, n, [2])),
                 (img, _stokes_header(w, n, [2], naxis=False)),
                 (img, WCS(_stokes_header(w, n, [2], naxis=False))),
                 NDData(img, wcs=WCS(_stokes_header(w, n, [2], naxis=False)))):
        with pytest.raises(InputError) as info:
            parse_sky_images(pair)
        assert str(info.value).split(": ", 1)[1] == words, str(info.value)
    for header in (_stokes_header(w, n, [1]), _stokes_header(w, n, [1], naxis=False)):
        (image,) = parse_sky_images((img, header))
        np.testing.assert_array_equal(image.data, img)
    # a plane of a cube along FREQ has the cube's celestial WCS: read; a plane of four
    # Stokes parameters may not be Stokes I: refused
    cube = _stokes_header(w, n, [1])
    cube.update({"CTYPE3": "FREQ", "CRVAL3": 1.4e9, "CDELT3": 1e6, "NAXIS3": 5})
    (image,) = parse_sky_images((img, cube))
    np.testing.assert_array_equal(image.data, img)
    # ... but not where its one STOKES plane is Q (a FREQ axis of 5 beside it)
    cube = _stokes_header(w, n, [2])
    cube.update({"NAXIS": 4, "NAXIS4": 5, "WCSAXES": 4, "CTYPE4": "FREQ", "CRVAL4": 1.4e9,
                 "CDELT4": 1e6, "CRPIX4": 1.0})
    with pytest.raises(InputError) as info:
        parse_sky_images((img, cube))
    assert str(info.value).split(": ", 1)[1] == words, str(info.value)
    with pytest.raises(InputError, match=r"^array: the header gives 3 axes "
                       r"\(NAXIS3 = 4: STOKES\), the array 2 \(shape \(64, 64\)\)"):
        parse_sky_images((img, _stokes_header(w, n, [1, 2, 3, 4])))

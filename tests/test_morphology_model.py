"""The optical galaxy morphology model (``morphology``) and its preprocessing.

* preprocessing: shapes and dtypes for colour cutouts, stacks, single bands
  (8-bit and flux) and g, r, i flux images (also through a FITS file); exact
  area averaging; the training cache geometry equals the inference geometry;
  the Petrosian angular size convention;
* the shipped model's sha256 matches its card, the card describes the input;
* raw JPEG-like uint8 input -> preprocessing -> torch checkpoint == shipped
  ONNX through astromorph (skipped without torch or the checkpoint);
* the card's test accuracy, macro recall, per-class recall and precision, ECE
  (before and after temperature scaling, and its noise floor), grey-input
  numbers and the int8 variant's are reproduced from the raw GZ1 JPEGs with the
  shipped ONNX (skipped without the real data or torch).
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.visualization import make_lupton_rgb

import astromorph
from conftest import shipped_torch_module
from astromorph.preprocessing import _optical as opt

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "morphology"
CHECKPOINT = REPO / "training" / "checkpoints" / "morphology" / "last.pt"
METRICS = REPO / "training" / "reports" / "morphology" / "metrics.json"
DATA_DIR = Path(__import__("os").environ.get("ASTROMORPH_DATA", REPO.parent / "shared" / "data"))
LABELS = ["elliptical", "spiral", "edge_on", "merger", "artifact"]

requires_model = pytest.mark.skipif(not (MODEL_DIR / "model.onnx").is_file(),
                                    reason="models/morphology not exported yet")


def galaxy_flux(size=423, seed=0, *, q=0.5, angle=0.6, peak=(2.0, 4.0, 5.5), noise=0.01):
    """Synthetic g, r, i images in nanomaggies: a Sersic-like disc plus sky noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * xx + s * yy, (-s * xx + c * yy) / q
    r = np.hypot(u, v) / (size / 20)
    profile = np.exp(-r)
    return [p * profile + noise * rng.standard_normal((size, size)) for p in peak]


def jpeg_like(size=423, seed=0, **kw):
    """An SDSS-like 8-bit colour cutout (what a GZ1 JPEG decodes to)."""
    return opt.gri_to_rgb(*galaxy_flux(size, seed, **kw))


# ----------------------------------------------------------------------- preprocessing
def test_constants_and_all():
    assert set(opt.__all__) <= set(dir(opt))
    assert opt.STAMP_SIZE == 64 and 0 < opt.CROP_FRACTION <= 1
    assert opt.GZ1_CUTOUT_PIXELS == 423
    assert opt.cutout_size_from_petrosian(1.0) == pytest.approx(423 * 0.024)
    assert opt.stamp_size_from_petrosian(2.0) == pytest.approx(2 * opt.CROP_FRACTION * 423 * 0.024)
    np.testing.assert_allclose(opt.stamp_size_from_petrosian([1.0, 3.0]),
                               [opt.CROP_FRACTION * 10.152, opt.CROP_FRACTION * 30.456], rtol=1e-6)


def test_petrosian_sizes_take_angles():
    import astropy.units as u

    assert opt.cutout_size_from_petrosian(1 * u.arcmin) == pytest.approx(609.12)
    assert opt.stamp_size_from_petrosian(2.0) == pytest.approx(opt.CROP_FRACTION * 20.304)
    np.testing.assert_allclose(opt.stamp_size_from_petrosian([1.0, np.nan]),
                               [opt.CROP_FRACTION * 10.152, np.nan])  # a row's problem


def test_band_inputs_are_checked():
    """Complex or boolean bands, missing band scales, a zero stretch: errors, not pictures."""
    from astromorph.exceptions import InputError, InvalidArgumentError

    band = np.ones((8, 8))
    with pytest.raises(InputError, match="real numbers"):
        opt.preprocess_gri(band, band, band.astype(complex))
    with pytest.raises(InputError, match="real numbers"):
        opt.preprocess_single_band(band > 0)
    with pytest.raises(InvalidArgumentError, match="band_scales"):
        opt.preprocess_gri(band, band, band, band_scales={"g": 1.0})
    with pytest.raises(InvalidArgumentError, match="stretch"):
        opt.preprocess_single_band(band, stretch=0)
    # sizes and crop fractions that are no numbers: InvalidArgumentError naming them, not
    # int()'s ValueError/OverflowError or a comparison's TypeError
    for bad in (np.nan, np.inf, "64", None, [64], True):
        with pytest.raises(InvalidArgumentError, match="size"):
            opt.preprocess_single_band(band, size=bad)
        with pytest.raises(InvalidArgumentError, match="n_out"):
            opt.area_resample(8, bad)
    for bad in ("0.35", None, [0.5], np.nan):
        with pytest.raises(InvalidArgumentError, match="crop_fraction"):
            opt.preprocess_single_band(band, crop_fraction=bad)


def test_colour_shapes_dtypes_and_range():
    img = jpeg_like()
    assert img.dtype == np.uint8 and img.shape == (423, 423, 3)
    x = opt.preprocess_colour_cutout(img)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    stack = opt.preprocess_colour_cutout(np.stack([img, jpeg_like(seed=1)]))
    assert stack.shape == (2, 3, 64, 64) and stack.dtype == np.float32
    np.testing.assert_allclose(stack[0], x, atol=1e-6)
    # floats are display values in [0, 1]
    np.testing.assert_allclose(opt.preprocess_colour_cutout(img / 255.0), x, atol=1e-6)
    # the galaxy is in the middle: the centre is brighter than the corners
    assert x[:, 28:36, 28:36].mean() > 3 * x[:, :8, :8].mean()
    # other cutout sizes work (GZ2 cutouts are 424 pixels)
    assert opt.preprocess_colour_cutout(jpeg_like(size=424)).shape == (3, 64, 64)
    with pytest.raises(ValueError):
        opt.preprocess_colour_cutout(np.zeros((4, 4)))
    # 8-bit values in any integer type are 8-bit values; floats above 1 are not display
    # values in [0, 1] (they used to be scored as such: every galaxy an 'artifact')
    for dtype in (np.int16, np.int64, np.uint16):
        np.testing.assert_array_equal(opt.preprocess_colour_cutout(img.astype(dtype)), x)
    from astromorph.exceptions import InputError

    for bad in (img.astype(np.float64), img.astype(np.int16) * 4, img.astype(complex)):
        with pytest.raises(InputError):
            opt.preprocess_colour_cutout(bad)


def test_area_averaging_is_exact():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)
    x = opt.preprocess_colour_cutout(img, crop_fraction=1.0)
    ref = img.reshape(64, 3, 64, 3, 3).mean(axis=(1, 3)).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(x, ref, atol=1e-6)
    w = opt.area_resample(423, 64, crop_fraction=0.45)
    np.testing.assert_allclose(w.sum(1), 1.0)
    flat = opt.preprocess_colour_cutout(np.full((423, 423, 3), 100, np.uint8))
    np.testing.assert_allclose(flat, 100 / 255.0, atol=1e-6)


def test_training_cache_geometry_matches_inference():
    """Training cuts its stamps from 96 px stamps with 1.5 x the field of view:
    their central 64 pixels are exactly the inference input."""
    img = jpeg_like(seed=2)
    big = opt.preprocess_colour_cutout(img, size=96, crop_fraction=opt.CROP_FRACTION * 1.5)
    np.testing.assert_allclose(big[:, 16:80, 16:80], opt.preprocess_colour_cutout(img), atol=1e-6)


def test_single_band_paths():
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (423, 423), dtype=np.uint8)
    x = opt.preprocess_single_band(grey)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[0], x[2])
    # one channel and three go through differently shaped BLAS products, which some builds
    # (numpy 1.26's OpenBLAS) sum in another order: equal to a few float32 ulps
    np.testing.assert_allclose(x, opt.preprocess_colour_cutout(np.repeat(grey[..., None], 3, -1)),
                               rtol=0, atol=1e-6)
    # a flux image: asinh stretch, grey, same as using it for g, r and i at unit scale
    r = galaxy_flux()[1]
    xf = opt.preprocess_single_band(r)
    assert xf.shape == (3, 64, 64) and xf.dtype == np.float32 and xf.max() > 0.2
    np.testing.assert_array_equal(xf[0], xf[2])
    unit = {"g": 1.0, "r": 1.0, "i": 1.0}
    np.testing.assert_allclose(xf, opt.preprocess_gri(r, r, r, band_scales=unit), atol=1e-6)
    stack = opt.preprocess_single_band(np.stack([r, r]))
    assert stack.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(stack[1], xf, atol=1e-6)
    # the dispatcher
    np.testing.assert_allclose(opt.preprocess_optical(grey), x)
    np.testing.assert_allclose(opt.preprocess_optical(np.stack([r, r])), stack)
    img = jpeg_like()
    np.testing.assert_allclose(opt.preprocess_optical(img), opt.preprocess_colour_cutout(img))


def test_gri_path_uses_documented_lupton_stretch():
    g, r, i = galaxy_flux(seed=4)
    rgb = opt.gri_to_rgb(g, r, i)
    s = opt.LUPTON_BAND_SCALES
    ref = make_lupton_rgb(i * s["i"], r * s["r"], g * s["g"], minimum=opt.LUPTON_MINIMUM,
                          stretch=opt.LUPTON_STRETCH, Q=opt.LUPTON_Q)
    np.testing.assert_array_equal(rgb, ref)
    x = opt.preprocess_gri(g, r, i)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x, opt.preprocess_colour_cutout(ref), atol=1e-6)
    # red galaxy (i brighter than g) -> red channel brighter than blue in the centre
    assert x[0, 24:40, 24:40].mean() > x[2, 24:40, 24:40].mean()
    stack = opt.preprocess_gri(np.stack([g, g]), np.stack([r, r]), np.stack([i, i]))
    assert stack.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(stack[0], x, atol=1e-6)
    g[0, 0] = np.nan  # masked pixels do not poison the stamp
    assert np.isfinite(opt.preprocess_gri(g, r, i)).all()


@pytest.mark.parametrize("q, stretch, minimum", [(8.0, 0.5, 0.0), (3.0, 0.1, -0.02),
                                                  (0.0, 2.0, 0.0), (1e12, 5.0, 0.01),
                                                  (8.0, 0.5, (0.01, -0.03, 0.0))])
def test_fast_lupton_is_make_lupton_rgb_bit_for_bit(q, stretch, minimum):
    """The chunked stretch used for batches equals astropy's make_lupton_rgb exactly,
    including its guards on Q, per-channel minima, negative and zero intensity,
    saturated pixels and the truncating uint8 cast."""
    rng = np.random.default_rng(7)
    g, r, i = (b * 3 for b in galaxy_flux(96, seed=8))
    r = r + rng.normal(0, 0.05, r.shape)
    g[:4] = 0.0                       # zero intensity
    i[4:8] = -1.0                     # negative intensity
    r[10:12] = 1e6                    # saturated
    ref = make_lupton_rgb(i, r, g, minimum=minimum, stretch=stretch, Q=q)
    got = opt._lupton_uint8(i, r, g, q=q, stretch=stretch, minimum=minimum, chunk=1000)
    np.testing.assert_array_equal(got, ref)
    # the same stamps as a batch, and the single-band (grey) path
    batch = opt._lupton_uint8(*(np.stack([b, b[::-1]]) for b in (i, r, g)), q=q,
                              stretch=stretch, minimum=minimum)
    np.testing.assert_array_equal(batch[0], ref)
    if np.ndim(minimum) == 0:
        grey_ref = make_lupton_rgb(r, r, r, minimum=minimum, stretch=stretch, Q=q)
        np.testing.assert_array_equal(opt.single_band_to_rgb(r, q=q, stretch=stretch,
                                                             minimum=minimum), grey_ref)
        x = opt.preprocess_single_band(np.stack([r, r]), q=q, stretch=stretch, minimum=minimum)
        # the 8-bit pictures above are equal; the resampling sums may differ in the last bits
        np.testing.assert_allclose(x[1], opt.preprocess_colour_cutout(grey_ref), rtol=0,
                                   atol=1e-6)


@pytest.mark.parametrize("q, stretch, minimum, scale", [(8.0, 0.5, 0.0, 1.0), (3.0, 0.1, -0.02, 1.0),
                                                         (8.0, 0.5, 0.01, 1.7), (1e12, 5.0, 0.0, 1.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # astropy, flux 0
def test_float32_grey_stretch_is_exact_at_level_boundaries(q, stretch, minimum, scale, dtype):
    """The grey (single-band) stretch runs in float32 but must truncate every pixel to the
    same 8-bit level as astropy's float64 make_lupton_rgb, including fluxes a few float32
    steps either side of each level's threshold, where the two precisions could disagree."""
    soften, slope = opt._lupton_constants(q, stretch)
    levels = np.arange(1, 256)
    threshold = (np.sinh(levels / (255.0 * slope)) / soften + minimum) / scale  # flux of level k
    with np.errstate(over="ignore", invalid="ignore"):  # thresholds beyond float32 -> inf
        t32 = threshold.astype(np.float32)
        near = np.nextafter(t32, np.float32(np.inf)) - t32      # one float32 step
    steps = np.arange(-3, 4, dtype=np.float32)[:, None]
    flux = (t32[None, :] + steps * near[None, :]).ravel()
    rng = np.random.default_rng(11)
    flux = np.concatenate([flux, rng.normal(0, 0.3, 5000).astype(np.float32),
                           np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e-30])])
    flux = flux.astype(dtype)
    exact = opt._lupton_uint8_float64(flux, None, None, q=q, stretch=stretch,
                                      minimum=np.full(3, minimum), scales=(scale,) * 3, chunk=999)
    got = opt._lupton_uint8(flux, q=q, stretch=stretch, minimum=minimum, scales=(scale,) * 3,
                            chunk=999)
    np.testing.assert_array_equal(got, exact)
    assert got.dtype == np.uint8 and got.shape == flux.shape
    # and astropy itself, on the values it handles without overflow
    ok = np.isfinite(flux) & (np.abs(flux.astype(np.float64)) < 1e30)
    band = (flux[ok].astype(np.float64) * scale)[None, :]
    ref = make_lupton_rgb(band, band, band, minimum=minimum, stretch=stretch, Q=q)[0, :, 0]
    np.testing.assert_array_equal(got[ok], ref)
    # every level whose threshold is a float32 number was reached (fluxes of 1e30 or more
    # are masking sentinels, read as 0 like NaN)
    assert set(np.unique(got).tolist()) >= set(levels[t32 < 1e30].tolist())
    f64 = flux.astype(np.float64)
    assert (got[np.isfinite(f64) & (np.abs(f64) >= 1e30)] == got[np.isnan(f64)][0]).all()


def test_identity_resampling_shortcut_is_exact():
    """Stamps already on the network grid skip the resampling products, same values."""
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    rows = opt.area_resample(64, 64, crop_fraction=1.0).astype(np.float32) / np.float32(255)
    ref = np.matmul(np.matmul(rows, np.moveaxis(u8.astype(np.float32), 3, 1)), np.eye(64, dtype=np.float32))
    np.testing.assert_array_equal(opt.preprocess_colour_cutout(u8, crop_fraction=1.0), ref)
    f = rng.random((64, 64, 3)).astype(np.float64)
    np.testing.assert_array_equal(opt.preprocess_colour_cutout(f, crop_fraction=1.0),
                                  np.moveaxis(f.astype(np.float32), 2, 0))


def test_gri_path_through_fits_files(tmp_path):
    bands = dict(zip("gri", galaxy_flux(seed=5)))
    for b, data in bands.items():
        hdu = fits.PrimaryHDU(data.astype(">f4"))
        hdu.header["BUNIT"] = "nanomaggy"
        hdu.header["FILTER"] = b
        hdu.writeto(tmp_path / f"{b}.fits")
    read = {}
    for b in "gri":
        with fits.open(tmp_path / f"{b}.fits") as hdul:
            read[b] = hdul[0].data.copy()
    assert read["g"].dtype.byteorder == ">"
    x = opt.preprocess_gri(read["g"], read["r"], read["i"])
    ref = opt.preprocess_gri(*(bands[b].astype(np.float32) for b in "gri"))
    np.testing.assert_allclose(x, ref, atol=1e-6)


# ----------------------------------------------------------------------- shipped model
@requires_model
def test_sha256_matches_card():
    card = json.loads((MODEL_DIR / "card.json").read_text())
    digest = hashlib.sha256((MODEL_DIR / "model.onnx").read_bytes()).hexdigest()
    assert card["sha256"] == digest
    assert (MODEL_DIR / "model.onnx").stat().st_size < 20e6



@pytest.mark.parametrize("name", ["morphology", "morphology-gz2", "embedding"])
def test_card_lupton_block_is_the_module_constants(name):
    """Every optical card states the stretch its model was trained with; the module's
    constants (what `preprocess_gri` applies) must be that stretch, all of it: Q, stretch,
    minimum and each band's scale (a changed stretch or swapped g/r scales would feed the
    network colours it never saw)."""
    card = REPO / "models" / name / "card.json"
    if not card.is_file():
        pytest.skip(f"models/{name} not exported")
    lupton = json.loads(card.read_text())["input"]["preprocessing_options"]["lupton"]
    assert lupton["Q"] == opt.LUPTON_Q
    assert lupton["stretch"] == opt.LUPTON_STRETCH
    assert lupton["minimum"] == opt.LUPTON_MINIMUM
    assert lupton["band_scales"] == opt.LUPTON_BAND_SCALES
    assert lupton["mapping"].startswith("R = i, G = r, B = g")

@requires_model
def test_card_and_model_io():
    card = json.loads((MODEL_DIR / "card.json").read_text())
    spec = card["input"]
    assert spec["shape"] == [3, opt.STAMP_SIZE, opt.STAMP_SIZE]
    assert spec["single_band"] == "replicate"
    assert spec["preprocessing_options"]["crop_fraction"] == opt.CROP_FRACTION
    assert spec["preprocessing_options"]["lupton"]["Q"] == opt.LUPTON_Q
    assert spec["angular_size"]["kind"] == "petrosian"
    assert spec["angular_size"]["stamp_size_per_petro_r90"] == pytest.approx(
        opt.stamp_size_from_petrosian(1.0), abs=1e-4)
    func = spec["preprocessing"].rsplit(".", 1)[-1]
    assert func in opt.__all__
    assert card["outputs"][0]["name"] == "probabilities"
    assert card["outputs"][0]["labels"] == LABELS
    assert "Lintott" in card["training"]["terms"] and "SDSS" in card["training"]["terms"]

    model = astromorph.load_model("morphology", providers="cpu")
    x = opt.preprocess_colour_cutout(np.stack([jpeg_like(seed=s) for s in range(3)]))
    p = np.asarray(model.predict(x, progress=False)["probabilities"])
    assert p.shape == (3, 5) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    # single-band network input (N, H, W) is replicated by the model
    grey = opt.preprocess_single_band(galaxy_flux()[1])[0]
    pg = np.asarray(model.predict(grey[None], progress=False)["probabilities"])
    np.testing.assert_allclose(pg.sum(1), 1.0, atol=1e-5)


@requires_model
def test_int8_variant(tmp_path):
    """The quantised variant: checked sha256, its own metrics, close to float32.

    Stated tolerance on SDSS-like cutouts: the same label, probabilities within
    0.1 (the card gives the held-out agreement, 99 per cent of test galaxies).
    """
    import shutil

    from astropy.table import Table

    from astromorph.exceptions import ChecksumMismatchError, InvalidArgumentError, ModelNotFoundError

    card = json.loads((MODEL_DIR / "card.json").read_text())
    spec = card["variants"]["int8"]
    path = MODEL_DIR / spec["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec["sha256"]
    assert path.stat().st_size < (MODEL_DIR / "model.onnx").stat().st_size
    m8 = astromorph.load_model("morphology", precision="int8", providers="cpu")
    m32 = astromorph.load_model("morphology", precision="float32", providers="cpu")
    assert m8.precision == "int8" and m32.precision == "float32"
    assert m8.sha256 == spec["sha256"] and m32.sha256 == card["sha256"]
    assert m8.card["metrics"]["accuracy"] == spec["metrics"]["accuracy"]
    assert m8.card["metrics"]["reference"]["accuracy"] == card["metrics"]["accuracy"]
    assert "int8" in repr(m8)
    x = opt.preprocess_colour_cutout(np.stack([jpeg_like(seed=s, q=0.2 + 0.15 * s, angle=s)
                                               for s in range(6)]))
    p8 = np.asarray(m8.predict(x)["probabilities"])
    p32 = np.asarray(m32.predict(x)["probabilities"])
    np.testing.assert_array_equal(p8.argmax(1), p32.argmax(1))
    np.testing.assert_allclose(p8, p32, atol=0.1)
    assert spec["metrics"]["label_agreement_with_float32"] >= 0.97
    # a modified variant file is refused; unknown variants are typed errors
    copy = tmp_path / "morphology"
    shutil.copytree(MODEL_DIR, copy)
    data = bytearray((copy / spec["file"]).read_bytes())
    data[-1] ^= 1
    (copy / spec["file"]).write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        astromorph.load_model(copy, precision="int8")
    astromorph.load_model(copy)  # the float32 file is untouched
    with pytest.raises(ModelNotFoundError, match="no 'int8' variant"):
        astromorph.load_model("real-bogus", precision="int8")
    with pytest.raises(ValueError, match="float16"):
        astromorph.load_model("morphology", precision="float16")
    with pytest.raises(InvalidArgumentError, match="precision"):
        astromorph.annotate(Table({"ra": [0.0], "dec": [0.0]}), [], model=m32, precision="int8")


def test_single_band_graph(tmp_path, monkeypatch):
    """The folded single-band graph: checked sha256, used for one-band input only, and the
    same outputs as model.onnx fed the band in R, G and B (stated tolerance 1e-5, the limit
    `fold_single_band` enforces at export)."""
    import shutil

    from astromorph import cli
    from astromorph._registry import resolve_single_band_graph
    from astromorph.exceptions import ChecksumMismatchError

    card = json.loads((MODEL_DIR / "card.json").read_text())
    spec = card["single_band_graph"]
    assert hashlib.sha256((MODEL_DIR / spec["file"]).read_bytes()).hexdigest() == spec["sha256"]
    assert spec["input_shape"] == [1, 64, 64] and spec["max_abs_diff_vs_replicated_band"] <= 1e-5
    m = astromorph.load_model("morphology", providers="cpu")
    rng = np.random.default_rng(2)
    flux = rng.normal(0, 0.05, (40, 64, 64)).astype(np.float32) + galaxy_flux(64, seed=3)[1]
    plane = opt.preprocess_single_band(flux, crop_fraction=1.0)[:, :1]   # (N, 1, 64, 64)
    colour = np.repeat(plane, 3, axis=1)
    p3 = np.asarray(m.predict(colour)["probabilities"])
    assert m._single_band is None                                        # not needed yet
    p1 = np.asarray(m.predict(plane)["probabilities"])
    assert m._single_band                                                # now in use
    np.testing.assert_allclose(p1, p3, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(m.predict(plane[:, 0])["probabilities"]), p1)
    # the int8 variant has no folded graph: it replicates the band
    assert resolve_single_band_graph(*astromorph._registry.resolve_model(
        "morphology", precision="int8")) is None
    # a modified single-band file is refused when first needed, and by `models --verify`
    copy = tmp_path / "models" / "morphology"
    shutil.copytree(MODEL_DIR, copy)
    data = bytearray((copy / spec["file"]).read_bytes())
    data[-1] ^= 1
    (copy / spec["file"]).write_bytes(bytes(data))
    tampered = astromorph.load_model(copy)
    tampered.predict(colour[:2])                                         # colour input: fine
    with pytest.raises(ChecksumMismatchError):
        tampered.predict(plane[:2])
    monkeypatch.setenv("ASTROMORPH_MODELS_DIR", str(copy.parent))
    assert cli.main(["models", "--verify"]) == 1


def _training_module():
    pytest.importorskip("torch")
    try:
        from astromorph_training import morphology
    except ImportError:
        sys.path.insert(0, str(REPO / "training"))
        from astromorph_training import morphology
    return morphology


@requires_model
def test_torch_onnx_parity():
    """Raw 8-bit colour cutouts -> preprocessing -> torch checkpoint vs shipped ONNX.

    Without the checkpoint (CI), the torch side is the card's architecture with the weights
    read back from the shipped file. Tolerance: 1e-5 absolute on probabilities (float32
    round-off of two implementations of the same graph; measured differences are ~1e-7).
    """
    morphology = _training_module()
    import torch

    if CHECKPOINT.is_file() and METRICS.is_file():
        state = torch.load(CHECKPOINT, map_location="cpu", weights_only=False)
        widths, stem = morphology.network_of(state)
        net = morphology.MorphologyNet(widths=widths, stem=stem)
        net.load_state_dict(state["ema"])
        calibration = json.loads(METRICS.read_text())["calibration"]
        module = morphology.build_deployed(net.eval(), calibration)
    else:
        module = shipped_torch_module("morphology")
    rng = np.random.default_rng(0)
    raw = np.concatenate([np.stack([jpeg_like(seed=s, q=0.3 + 0.2 * s) for s in range(4)]),
                          rng.integers(0, 256, (4, 423, 423, 3), dtype=np.uint8)])
    images = sorted((DATA_DIR / "gz1" / "images").glob("*.jpeg"))[:8]
    if images:
        raw = np.concatenate([raw, morphology.load_jpegs(images)])
    x = opt.preprocess_colour_cutout(raw)
    model = astromorph.load_model("morphology", providers="cpu")
    onnx_p = np.asarray(model.predict(x, progress=False)["probabilities"])
    with torch.no_grad():
        torch_p = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-5)


@pytest.fixture(scope="module")
def gz1_test_predictions():
    """The GZ1 test split through the shipped ONNX (float32, int8 where the card has it, and
    colour stamps replaced by their channel mean), from the raw JPEGs: predicted once for
    every test of the card's numbers."""
    if not (MODEL_DIR / "model.onnx").is_file():
        pytest.skip("models/morphology not exported yet")
    if not (DATA_DIR / "gz1" / "labels.csv").is_file():
        pytest.skip(f"no GZ1 data at {DATA_DIR}")
    morphology = _training_module()
    ids, labels = morphology.read_labels(DATA_DIR)
    test = morphology.stratified_split(labels)[2]
    files = [DATA_DIR / "gz1" / "images" / f"{i}.jpeg" for i in ids[test]]
    x = np.concatenate([opt.preprocess_colour_cutout(morphology.load_jpegs(files[k:k + 200]))
                        for k in range(0, len(files), 200)])
    grey = np.repeat(x.mean(axis=1, keepdims=True), 3, axis=1)  # as `evaluate` scores grey input
    model = astromorph.load_model("morphology", providers="cpu")
    out = {"labels": labels[test],
           "float32": np.asarray(model.predict(x, progress=False)["probabilities"]),
           "grey": np.asarray(model.predict(grey, progress=False)["probabilities"])}
    if (MODEL_DIR / "model.int8.onnx").is_file():
        out["int8"] = np.asarray(astromorph.load_model("morphology", precision="int8", providers="cpu")
                                 .predict(x, progress=False)["probabilities"])
    return out


def test_card_accuracy_reproduced(gz1_test_predictions):
    """The card's test accuracy, from the raw JPEGs of the test split."""
    card = json.loads((MODEL_DIR / "card.json").read_text())
    if "accuracy" not in card["metrics"]:
        pytest.skip("card has no metrics yet")
    labels, p = gz1_test_predictions["labels"], gz1_test_predictions["float32"]
    assert len(labels) == card["metrics"]["n"]
    assert (p.argmax(1) == labels).mean() == pytest.approx(card["metrics"]["accuracy"], abs=1e-4)
    if "int8" in card.get("variants", {}):
        m8 = card["variants"]["int8"]["metrics"]
        p8 = gz1_test_predictions["int8"]
        assert (p8.argmax(1) == labels).mean() == pytest.approx(m8["accuracy"], abs=1e-4)
        assert (p8.argmax(1) == p.argmax(1)).mean() == pytest.approx(
            m8["label_agreement_with_float32"], abs=1e-4)


def test_card_test_metrics_reproduced(gz1_test_predictions):
    """Every other test-split number of the card that needs no training, as `evaluate`
    computes it (`_common.classification_report`, `expected_calibration_error`,
    `ece_noise_floor`): macro recall, per-class recall / precision / support, ECE after and
    before temperature scaling, the ECE noise floor, the grey-input accuracy and macro
    recall, and the int8 variant's numbers. The card rounds them to 4 decimals: they must
    round to the card's value."""
    morphology = _training_module()
    common = morphology._common
    card = json.loads((MODEL_DIR / "card.json").read_text())
    m = card["metrics"]
    if "macro_recall" not in m:
        pytest.skip("card has no metrics yet")
    labels, p = gz1_test_predictions["labels"], gz1_test_predictions["float32"]

    def check(report, expected):
        assert round(report["macro_recall"], 4) == expected["macro_recall"]
        assert report["per_class"] == expected["per_class"]  # rounded to 4 by the report

    rep = common.classification_report(p, labels, morphology.CLASS_NAMES)
    check(rep, m)
    assert round(rep["ece"], 4) == m["ece_after_temperature"]
    uncal = common.softmax(m["temperature"] * np.log(np.clip(p, 1e-30, None)))
    assert round(common.expected_calibration_error(uncal, labels), 4) == m["ece_before_temperature"]
    floor = common.ece_noise_floor(p)
    assert (round(floor["mean"], 4), round(floor["p95"], 4)) == (
        m["ece_noise_floor_mean"], m["ece_noise_floor_p95"])
    grey = common.classification_report(gz1_test_predictions["grey"], labels, morphology.CLASS_NAMES)
    assert (round(grey["accuracy"], 4), round(grey["macro_recall"], 4)) == (
        m["greyscale_accuracy"], m["greyscale_macro_recall"])
    if "int8" in card.get("variants", {}):
        m8 = card["variants"]["int8"]["metrics"]
        p8 = gz1_test_predictions["int8"]
        rep8 = common.classification_report(p8, labels, morphology.CLASS_NAMES)
        check(rep8, m8)
        assert round(rep8["ece"], 4) == m8["ece_after_temperature"]
        diff = np.abs(p8 - p)
        assert {"mean": round(float(diff.mean()), 4), "p99": round(float(np.quantile(diff, 0.99)), 4),
                "max": round(float(diff.max()), 4)} == m8["probability_abs_diff_vs_float32"]


def test_label_resampling(tmp_path):
    """Unanimous votes survive every re-vote; a 50/50 split survives about half of them."""
    morphology = _training_module()
    assert morphology.label_resampling(tmp_path) is None  # no gz2/votes.csv
    (tmp_path / "gz2").mkdir()
    rows = ["GalaxyID,Class1.1,Class1.2,Class1.3"]
    rows += [f"{i},0.9,0.0,0.0" for i in range(50)]      # unanimous (fractions need not sum to 1)
    rows += [f"{i},0.4,0.4,0.0" for i in range(50, 100)]  # a tie
    rows += ["100,0,0,0"]                                  # nobody answered: left out
    (tmp_path / "gz2" / "votes.csv").write_text("\n".join(rows) + "\n")
    out = morphology.label_resampling(tmp_path, sizes=(41,), n_draws=400)
    assert out["n_galaxies"] == 100
    kept = out["plurality_kept_by_a_revote_of_n_volunteers"]["41"]
    assert kept == pytest.approx(0.5 + 0.5 * 0.5, abs=0.02)
    assert out["fraction_with_plurality_below_0.6"] == pytest.approx(0.5)
    assert "five_class_leaf" not in out  # needs the edge-on and merger columns

    # the five-class leaf label: unanimous ellipticals, and discs split evenly between
    # edge-on and not (a tie between spiral and edge_on)
    rows = ["GalaxyID,Class1.1,Class1.2,Class1.3,Class2.1,Class2.2,Class8.6"]
    rows += [f"{i},1.0,0.0,0.0,0.0,0.0,0.0" for i in range(50)]
    rows += [f"{i},0.0,1.0,0.0,0.5,0.5,0.0" for i in range(50, 100)]
    (tmp_path / "gz2" / "votes.csv").write_text("\n".join(rows) + "\n")
    leaf = morphology.label_resampling(tmp_path, sizes=(41,), n_draws=400)["five_class_leaf"]
    assert leaf["class_counts"]["elliptical"] == 50
    assert leaf["accuracy_of_a_perfect_predictor_against_a_revote_of_n"]["41"] == pytest.approx(0.75, abs=0.02)
    recall = leaf["recall_of_a_perfect_predictor_against_a_revote_of_n"]["41"]
    assert recall["elliptical"] == 1.0 and set(recall) == {"elliptical", "spiral", "edge_on"}


def test_error_gallery(tmp_path):
    morphology = _training_module()
    from astromorph_training import _common

    rng = np.random.default_rng(0)
    images = rng.random((12, 3, 16, 16)).astype(np.float32)
    labels = np.arange(12) % 5
    probs = np.full((12, 5), 0.05)
    probs[np.arange(12), (labels + (np.arange(12) % 3 == 0)) % 5] = 0.8  # 4 errors
    path = _common.plot_error_gallery(images, probs, labels, morphology.CLASS_NAMES,
                                      tmp_path / "errors.png", "test")
    assert path.stat().st_size > 1000
    _common.plot_error_gallery(images[:, :1], probs, labels, morphology.CLASS_NAMES,
                               tmp_path / "grey.png")  # one channel
    _common.plot_error_gallery(images, np.eye(5)[labels], labels, morphology.CLASS_NAMES,
                               tmp_path / "none.png")  # no errors: an empty gallery, no crash
    assert (tmp_path / "none.png").is_file()


def test_network_stems():
    """Both ways to 16x16 give the same feature map sizes; the 2.x one is cheaper; bad stems refused."""
    morphology = _training_module()
    import torch

    x = torch.zeros(2, 3, 64, 64)
    new = morphology.MorphologyNet().eval()  # the shipped 2.x network
    old = morphology.MorphologyNet(widths=morphology.WIDTHS_1X, stem=morphology.STEM_1X).eval()
    # stem (conv, BN, ReLU) then the way to 16x16: conv, BN, ReLU (+ max pooling for conv-pool)
    for net, n_layers in ((new, 6), (old, 7)):
        assert net(x).shape == (2, len(morphology.CLASS_NAMES))
        assert net.features[:n_layers](x).shape == (2, net.features[3].out_channels, 16, 16)

    def multiply_adds(net):
        total, h = 0, x[:1]
        for layer in net.features:
            out = layer(h)
            if isinstance(layer, torch.nn.Conv2d):
                total += out.numel() * layer.in_channels * 9
            h = out
        return total

    assert multiply_adds(new) < 0.6 * multiply_adds(old)
    assert sum(p.numel() for p in new.parameters()) < sum(p.numel() for p in old.parameters())
    with pytest.raises(ValueError, match="stem"):
        morphology.MorphologyNet(stem="avgpool")
    # RECIPE_1X is a valid command line for the 1.x network
    parser = __import__("argparse").ArgumentParser()
    morphology.add_arguments(parser)
    args = parser.parse_args(morphology.RECIPE_1X.split())
    assert (tuple(args.widths), args.stem, args.label_smoothing, args.threads) == (
        morphology.WIDTHS_1X, "conv-pool", 0.0, 1)


def test_stride3_stem_and_96_pixel_views():
    """``--stamp-size 96 --stem stride3``: the 5x5 stride-3 stem brings 96 px stamps to the
    16x16 stage of a 64 px stamp; training views of 96 px come from 144 px cached stamps of
    1.5 x the field, whose central 96 pixels are exactly the inference stamp."""
    morphology = _training_module()
    import torch

    net = morphology.MorphologyNet(stem="stride3").eval()
    x = torch.zeros(2, 3, 96, 96)
    assert net(x).shape == (2, len(morphology.CLASS_NAMES))
    assert net.features[:6](x).shape == (2, net.features[3].out_channels, 16, 16)
    assert net.features[0].kernel_size == (5, 5) and net.features[0].stride == (3, 3)

    img = jpeg_like(seed=3)
    big = opt.preprocess_colour_cutout(img, size=144, crop_fraction=opt.CROP_FRACTION * 1.5)
    stamp = opt.preprocess_colour_cutout(img, size=96)
    np.testing.assert_allclose(big[:, 24:120, 24:120], stamp, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    views = morphology.random_views(torch.from_numpy(np.stack([big] * 64)), gen, size=96,
                                    zoom=0.0, shift=0.0)
    assert views.shape == (64, 3, 96, 96)
    aug = morphology.augment(torch.from_numpy(np.stack([big] * 4)), gen, size=96)
    assert aug.shape == (4, 3, 96, 96) and 0 <= float(aug.min()) and float(aug.max()) <= 1
    parser = __import__("argparse").ArgumentParser()
    morphology.add_arguments(parser)
    assert parser.parse_args(["--stamp-size", "96"]).stamp_size == 96


def test_ece_noise_floor():
    """Finite-sample ECE of a perfectly calibrated model: zero when certain, ~1/sqrt(n) at 50/50."""
    _training_module()
    from astromorph_training import _common

    certain = np.eye(3)[np.arange(300) % 3]
    assert _common.ece_noise_floor(certain, n_sim=20)["p95"] == 0.0
    coin = np.full((1000, 2), 0.5)
    floor = _common.ece_noise_floor(coin, n_sim=200)
    # |binomial(1000, 0.5) / 1000 - 0.5| has mean sqrt(2 / pi) * 0.5 / sqrt(1000) = 0.0126
    assert floor["mean"] == pytest.approx(0.0126, abs=0.003)
    assert floor["p95"] > floor["mean"]


def test_synthetic_mergers_add_an_offset_companion():
    """A synthetic merger keeps the primary, adds light only (no pasted background edges) and
    puts the companion 10-25 per cent of the stamp away from the centre."""
    morphology = _training_module()
    import torch

    n = morphology.CACHE_SIZE
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    blob = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 5.0 ** 2)
    background = 0.08
    primary = torch.from_numpy(np.broadcast_to(background + 0.8 * blob, (6, 3, n, n)).astype(np.float32))
    out = morphology.synthetic_mergers(primary, primary.clone(), torch.Generator().manual_seed(3))
    assert out.shape == primary.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    added = (out - primary).numpy()
    assert added.min() > -1e-6  # light is only added
    far = np.hypot(xx, yy) > 0.45 * n  # the stamp's outskirts: the companion's background is removed
    assert np.abs(added[..., far]).max() < 1e-3
    for img in added[:, 0]:
        cy, cx = np.unravel_index(np.argmax(img), img.shape)
        sep = np.hypot(cy - (n - 1) / 2, cx - (n - 1) / 2) / n
        assert 0.08 <= sep <= 0.27, sep


def test_gz2_leaf_labels_follow_the_largest_mapped_fraction():
    """GZ2 vote fractions -> GZ1 leaf classes: merger (Class8.6) against the other four
    scaled by (1 - Class8.6), then the largest wins."""
    morphology = _training_module()
    columns = ["Class1.1", "Class1.2", "Class1.3", "Class2.1", "Class2.2", "Class8.6"]

    def row(c11, c13, c21, c22, c86):
        return [c11, c21 + c22, c13, c21, c22, c86]

    fractions = np.array([
        row(0.8, 0.0, 0.0, 0.2, 0.0),   # smooth -> elliptical
        row(0.2, 0.0, 0.1, 0.7, 0.1),   # features, not edge-on -> spiral
        row(0.1, 0.0, 0.8, 0.1, 0.0),   # edge-on
        row(0.6, 0.0, 0.0, 0.4, 0.55),  # merger 0.55 beats 0.45 * 0.6 = 0.27
        row(0.6, 0.0, 0.0, 0.4, 0.35),  # 0.35 < 0.65 * 0.6 = 0.39 -> elliptical
        row(0.1, 0.7, 0.0, 0.2, 0.0),   # star or artifact
    ])
    got = morphology.gz2_leaf_labels(fractions, columns)
    assert [morphology.CLASS_NAMES[i] for i in got] == [
        "elliptical", "spiral", "edge_on", "merger", "elliptical", "artifact"]
    # spiral="arms": only featured discs with arms (Class4.1) are spirals, the rest elliptical
    columns += ["Class4.1", "Class4.2"]
    arms = np.array([[0.2, 0.8, 0.0, 0.0, 0.8, 0.0, 0.7, 0.1],    # arms -> spiral
                     [0.3, 0.7, 0.0, 0.0, 0.7, 0.0, 0.1, 0.6]])   # no arms: 0.3 + 0.6 -> elliptical
    got = morphology.gz2_leaf_labels(arms, columns, spiral="arms")
    assert [morphology.CLASS_NAMES[i] for i in got] == ["spiral", "elliptical"]
    assert [morphology.CLASS_NAMES[i] for i in morphology.gz2_leaf_labels(arms, columns)] == [
        "spiral", "spiral"]
    with pytest.raises(ValueError, match="spiral must be one of"):
        morphology.gz2_leaf_labels(arms, columns, spiral="bars")


def test_sampling_weights_keep_class_shares_when_the_pool_grows():
    """Extra examples of a class share its draws; the class shares stay sqrt(n_c) of the
    given counts, and without counts the weights are the GZ1-only ones."""
    morphology = _training_module()
    labels = np.array([0] * 16 + [1] * 4 + [2] * 1)
    base = morphology.sampling_weights(labels, n_classes=3)
    shares = np.bincount(labels, weights=base, minlength=3)
    np.testing.assert_allclose(shares, np.sqrt([16, 4, 1]) / 7)
    pooled = np.concatenate([labels, [1] * 12])  # 12 extra members of class 1
    w = morphology.sampling_weights(pooled, n_classes=3, counts=[16, 4, 1])
    np.testing.assert_allclose(np.bincount(pooled, weights=w, minlength=3), shares)
    np.testing.assert_allclose(w[pooled == 1], shares[1] / 16)  # uniform within the class

"""predict_files / `astromorph predict`: files of stamps -> one row each."""
import bz2
import errno
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import lzma
import os
import re
import shutil
import struct
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from astromorph.preprocessing import radio as _radio_pre

RADIO_STAMP = _radio_pre.STAMP_SIZE
from astropy.io import fits
from astropy.table import Table

import astromorph
from astromorph import Flag, cli
from astromorph._adapters import RawStamps, prepare, result_columns
from astromorph._io import write_table
from astromorph._readers import parse_fits_bytes, read_file
from astromorph._readers._fits import _read_fits_astropy
from astromorph.exceptions import (AmbiguousInputWarning, AstromorphWarning, InputError,
                                   InputNotFoundError, InvalidArgumentError,
                                   MissingDependencyError, ModelNotFoundError, OutputExistsError,
                                   DuplicateSourceWarning, OutputError, UnusableInputWarning)
from astropy.utils.exceptions import AstropyUserWarning

from conftest import DATA_DIR, assert_scores, requires_data, without_extend
from tiny_models import sha256, tiny_classifier_onnx
from synthetic_alerts import (RUBIN_SCHEMA, celestial_header, fits_bytes, rubin_alert, triplet,
                              write_avro, write_snappy_avro, ztf_alert)

ALERTS = DATA_DIR / "alerts"
RNG = np.random.default_rng(42)


# ----------------------------------------------------------------------------- tiny models
def _score_onnx(path, *, channels=3, size=63):
    """ONNX graph: sigmoid of the mean of the input -> ``rb_score`` (N,)."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])
    out = helper.make_tensor_value_info("rb_score", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=0),
             helper.make_node("Sigmoid", ["m"], ["rb_score"])]
    graph = helper.make_graph(nodes, "rb", [inp], [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _card(path, name, prefix, shape, family, preprocessing, outputs, task="classification"):
    return {"name": name, "version": "0.0.1", "task": task, "column_prefix": prefix,
            "input": {"name": "input", "shape": list(shape), "dtype": "float32",
                      "family": family, "preprocessing": preprocessing,
                      "single_band": "invalid"},
            "outputs": outputs, "training": {"data": "test fixture"}, "metrics": {},
            "sha256": sha256(path)}


@pytest.fixture
def models(tmp_path_factory, monkeypatch):
    """Registry with three tiny models, one per preprocessing family."""
    root = tmp_path_factory.mktemp("models")
    specs = {
        "morphology": dict(prefix="morph", shape=(3, 64, 64), family="optical",
                           pre="astromorph.preprocessing.preprocess_colour_cutout",
                           labels=("red", "green", "blue")),
        "radio-morphology": dict(prefix="radio", shape=(1, RADIO_STAMP, RADIO_STAMP), family="radio",
                                 pre="astromorph.preprocessing.preprocess_first_cutout",
                                 labels=("FRI", "FRII", "compact", "bent")),
    }
    for name, s in specs.items():
        d = root / name
        d.mkdir(parents=True)
        tiny_classifier_onnx(d / "model.onnx", channels=s["shape"][0], size=s["shape"][1],
                             labels=s["labels"])
        card = _card(d / "model.onnx", name, s["prefix"], s["shape"], s["family"], s["pre"],
                     [{"name": "probabilities", "kind": "probabilities",
                       "labels": list(s["labels"])}])
        (d / "card.json").write_text(json.dumps(card))
    d = root / "real-bogus"
    d.mkdir()
    _score_onnx(d / "model.onnx")
    card = _card(d / "model.onnx", "real-bogus", "rb", (3, 63, 63), "triplet",
                 "astromorph.preprocessing.preprocess_triplet",
                 [{"name": "rb_score", "kind": "score"}], task="score")
    (d / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("ASTROMORPH_MODELS_DIR", str(root))
    astromorph.clear_session_cache()
    yield root
    astromorph.clear_session_cache()


# ----------------------------------------------------------------------------- file makers
def test_wcs_keyword_that_is_no_number_is_no_wcs_not_an_unreadable_file(models, tmp_path):
    """CDELT1 = 'abc' or CD1_1 = 'abc': the image is scored as one without a WCS (NO_WCS,
    the model's pixel scale assumed), as for any other unusable WCS; the fast reader used to
    flag the whole file BAD_INPUT ("could not convert string to float")."""
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1.5e-4, (200, 200)).astype(np.float32)
    img[90:110, 90:110] += 0.01
    write_fits(tmp_path / "good.fits", img)  # no WCS at all
    tan = dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=100.5,
               CRPIX2=100.5)
    write_fits(tmp_path / "cdelt.fits", img, **tan, CDELT1="abc", CDELT2=0.0005)
    write_fits(tmp_path / "cd.fits", img, **tan, CD1_1="abc", CD2_2=0.0005)
    table = quiet(astromorph.predict_files, "radio-morphology", tmp_path)
    good = row(table, tmp_path / "good.fits")
    for name in ("cdelt.fits", "cd.fits"):
        r = row(table, tmp_path / name)
        assert r["radio_flags"] == good["radio_flags"] and r["radio_flags"] & Flag.NO_WCS
        assert r["reason"] == good["reason"]
        assert r["radio_p_FRI"] == pytest.approx(good["radio_p_FRI"], abs=1e-6)



@pytest.mark.parametrize("keys", [
    dict(CD1_1=0.0, CD1_2=0.0, CD2_2=0.0005),   # wcslib filled in 1 degree/pixel: 60"
    dict(CD1_1=0.0005, CD1_2=0.0005, CD2_1=0.0005, CD2_2=0.0005),  # singular: was 2.5"
    dict(),  # no CDELTi, CDi_j or PCi_j: FITS's default 1 degree/pixel, in both readers
], ids=["cd_zero_row", "cd_singular", "no_scale"])
def test_degenerate_wcs_is_no_wcs_in_every_reader(models, tmp_path, keys):
    """A CD matrix with a zero row and column was silently repaired by wcslib (1 degree on
    the diagonal) and a singular one given a pixel scale from its column lengths, where the
    image is read by astropy (an image extension), and a header without any scale keyword
    got FITS's default of 1 degree/pixel in both readers: the stamp was resampled at a
    made-up pixel scale. Each is now no usable WCS (NO_WCS, the model's pixel scale
    assumed), as the fast reader of a lone primary HDU already had the first two."""
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1.5e-4, (200, 200)).astype(np.float32)
    img[90:110, 90:110] += 0.01
    write_fits(tmp_path / "good.fits", img)  # no WCS at all
    cards = dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0,
                 CRPIX1=100.5, CRPIX2=100.5, **keys)
    write_fits(tmp_path / "primary.fits", img, **cards)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(img, fits.Header(cards))]).writeto(
        tmp_path / "extension.fits")
    table = quiet(astromorph.predict_files, "radio-morphology", tmp_path)
    good = row(table, tmp_path / "good.fits")
    for name in ("primary.fits", "extension.fits"):
        r = row(table, tmp_path / name)
        assert r["radio_flags"] == good["radio_flags"] and r["radio_flags"] & Flag.NO_WCS
        assert r["reason"] == good["reason"]
        assert r["radio_p_FRI"] == pytest.approx(good["radio_p_FRI"], abs=1e-6)


_TAN = dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0, CDELT1=-5e-4,
            CDELT2=5e-4)
#: Headers wcslib refuses (or reads otherwise than the fast reader did), each as a primary
#: image and as an image extension: the cards to change in `_TAN`.
_BROKEN_WCS = {
    "plain": {},  # the control: a WCS both read
    "unknown_projection": dict(CTYPE1="RA---XYZ", CTYPE2="DEC--XYZ"),
    "latitude_over_90": dict(CRVAL2=95.0),
    "latitude_under_minus_90": dict(CRVAL2=-95.0),
    "mismatched_frames": dict(CTYPE2="GLAT-TAN"),
    "mismatched_projections": dict(CTYPE2="DEC--SIN"),
    "two_longitudes": dict(CTYPE2="RA---TAN"),
    "dashes_missing": dict(CTYPE1="RA--TAN", CTYPE2="DEC-TAN"),
    "lone_celestial_axis": dict(CTYPE2="LINEAR"),
    "no_projection_code": dict(CTYPE1="RA", CTYPE2="DEC"),
    "celestial_third_axis": dict(WCSAXES=3, CTYPE3="RA---TAN"),
    "singular_frequency_axis": dict(WCSAXES=3, CTYPE3="FREQ", CRVAL3=1.4e9, CDELT3=0.0),
    "unknown_spectral_code": dict(WCSAXES=3, CTYPE3="VELO-XYZ"),
    "unknown_cunit": dict(CUNIT1="foo", CUNIT2="foo"),
    "zpn_without_parameters": dict(CTYPE1="RA---ZPN", CTYPE2="DEC--ZPN"),
    "azp_bad_parameter": dict(CTYPE1="RA---AZP", CTYPE2="DEC--AZP", PV2_1=-1.0),
    "cylindrical_lonpole": dict(CTYPE1="RA---CAR", CTYPE2="DEC--CAR", CRVAL2=60.0,
                                LONPOLE=90.0),
    "sip_order_alone": dict(CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", A_ORDER=2),
    "scale_keyword_text": dict(CDELT1="abc"),
    "nan_lonpole": dict(LONPOLE="NaN"),
    "nan_reference": dict(CRVAL2="NaN"),
    "inf_scale": dict(CDELT2="-Inf"),
}


def _broken_wcs_files(tmp_path, planes, names, cards):
    """``primary.fits`` (``planes`` as one image, a cube of planes named PLANEi where
    ``names`` are given) and ``extension.fits`` (each plane an image extension, EXTNAME from
    ``names``), every image with the header ``cards``; the string ``"NaN"`` or ``"-Inf"``
    is written as the bare card value, which astropy cannot write."""
    bare = {k: v for k, v in cards.items() if v in ("NaN", "-Inf")}
    header = fits.Header({k: (12345.0 if k in bare else v) for k, v in cards.items()})
    primary = fits.PrimaryHDU(planes if names else planes[0], header=header.copy())
    for i, name in enumerate(names or (), 1):
        primary.header[f"PLANE{i}"] = name
    exts = [fits.ImageHDU(p, header=header.copy(), name=n)
            for p, n in zip(planes, names or [None])]
    for name, hdul in (("primary", [primary]), ("extension", [fits.PrimaryHDU()] + exts)):
        buf = io.BytesIO()
        fits.HDUList(hdul).writeto(buf)
        raw = buf.getvalue()
        for k, v in bare.items():
            raw = raw.replace(f"{k:8s}=              12345.0".encode(),
                              f"{k:8s}= {v:>20s}".encode())
        (tmp_path / f"{name}.fits").write_bytes(raw)


@pytest.mark.parametrize("case", list(_BROKEN_WCS))
def test_broken_wcs_is_read_alike_in_a_primary_hdu_and_an_extension(models, tmp_path, case):
    """The fast reader of a lone primary image read the pixel scale of any CTYPE pair whose
    first four characters were celestial, where astropy's WCS (an image extension, read by
    astropy) refuses the header (an unknown projection, a latitude beyond the pole,
    mismatched axes, a celestial or broken third axis...): the one image got a 1.8" scale
    as a primary HDU and NO_WCS as an extension. Both now give the same flags, reason and
    scores, for the radio (one image) and real-bogus (a cube, or one extension per triplet
    member) models."""
    cards = dict(_TAN, CRPIX1=100.5, CRPIX2=100.5, **_BROKEN_WCS[case])
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1.5e-4, (200, 200)).astype(np.float32)
    img[90:110, 90:110] += 0.01
    radio = tmp_path / "radio"
    radio.mkdir()
    _broken_wcs_files(radio, img[None], None, cards)
    rb = tmp_path / "rb"
    rb.mkdir()
    _broken_wcs_files(rb, triplet(51), ["SCIENCE", "REFERENCE", "DIFFERENCE"],
                      dict(cards, CRPIX1=26.0, CRPIX2=26.0))
    for model, prefix, folder in (("radio-morphology", "radio", radio), ("real-bogus", "rb", rb)):
        table = quiet(astromorph.predict_files, model, folder)
        first, ext = row(table, folder / "primary.fits"), row(table, folder / "extension.fits")
        assert first[f"{prefix}_flags"] == ext[f"{prefix}_flags"], (model, first["reason"],
                                                                    ext["reason"])
        assert first["reason"] == ext["reason"]
        for column in table.colnames:
            if column.startswith(prefix + "_") and column != f"{prefix}_flags":
                assert first[column] == pytest.approx(ext[column], abs=1e-6), column
        if case in ("unknown_projection", "latitude_over_90", "mismatched_frames"):
            assert first[f"{prefix}_flags"] & Flag.NO_WCS


#: Valid WCSs with a distortion: each is read like the plain `_TAN` (the same pixel scale).
_DISTORTED_WCS = {
    "tpv": dict(CTYPE1="RA---TPV", CTYPE2="DEC--TPV", PV1_1=1.0, PV2_1=1.0, PV1_4=1e-4,
                PV2_4=1e-4),
    "sip": dict(CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", A_ORDER=2, B_ORDER=2,
                A_2_0=1e-6, B_0_2=1e-6),
}


@pytest.mark.parametrize("case", list(_DISTORTED_WCS))
def test_distorted_wcs_gives_the_scale_of_its_linear_part(models, tmp_path, case):
    """A TPV or SIP header (DES, HSC, ZTF science images) has the pixel scale of its linear
    part, as a lone image, a cube of triplet planes and image extensions alike. The fast
    reader leaves such headers to astropy, whose WCS of a cube (three axes) refuses SIP and
    cannot take the celestial part of TPV: the cubes were flagged NO_WCS, scored at the
    model's 1"/pixel."""
    cards = dict(_TAN, CRPIX1=100.5, CRPIX2=100.5)
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1.5e-4, (200, 200)).astype(np.float32)
    img[90:110, 90:110] += 0.01
    for model, prefix in (("radio-morphology", "radio"), ("real-bogus", "rb")):
        rows = {}
        for kind, extra in (("plain", {}), (case, _DISTORTED_WCS[case])):
            folder = tmp_path / f"{prefix}_{kind}"
            folder.mkdir()
            if model == "radio-morphology":
                _broken_wcs_files(folder, img[None], None, dict(cards, **extra))
            else:
                _broken_wcs_files(folder, triplet(51), ["SCIENCE", "REFERENCE", "DIFFERENCE"],
                                  dict(cards, CRPIX1=26.0, CRPIX2=26.0, **extra))
            table = quiet(astromorph.predict_files, model, folder)
            rows[kind] = [row(table, folder / f"{name}.fits")
                          for name in ("primary", "extension")]
        for plain, distorted in zip(rows["plain"], rows[case]):
            assert not distorted[f"{prefix}_flags"] & Flag.NO_WCS, distorted["reason"]
            assert distorted[f"{prefix}_flags"] == plain[f"{prefix}_flags"]
            for column in table.colnames:
                if column.startswith(prefix + "_p") or column == "rb_score":
                    assert distorted[column] == pytest.approx(plain[column], abs=1e-4), column


def write_fits(path, data, *, scale=None, **cards):
    header = fits.Header()
    if scale is not None:
        celestial_header(header, scale, np.shape(data))
    header.update(cards)
    fits.PrimaryHDU(np.asarray(data), header=header).writeto(path, overwrite=True)
    return path


def write_mef(path, planes, names, *, key="EXTNAME", scale=None):
    hdus = [fits.PrimaryHDU()]
    for plane, name in zip(planes, names):
        h = fits.Header()
        if scale is not None:
            celestial_header(h, scale, plane.shape)
        hdu = fits.ImageHDU(np.asarray(plane, np.float32), header=h)
        hdu.header[key] = name
        if key != "EXTNAME":
            hdu.header["EXTNAME"] = f"IMG{len(hdus)}"
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def galaxy(n=192, seed=0):
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    rng = np.random.default_rng(seed)
    return (np.exp(-(x ** 2 + y ** 2) / (2 * (n / 8) ** 2)) * 5
            + rng.normal(0, 0.05, (n, n))).astype(np.float32)


def write_picture(path, arr):
    from PIL import Image

    Image.fromarray(np.asarray(arr, np.uint8)).save(path)
    return path


def colour_picture(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, n, 3), dtype=np.uint8)


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def row(table, source):
    idx = [i for i, s in enumerate(table["source"]) if s == str(source)]
    assert len(idx) == 1, (source, list(table["source"]))
    return table[idx[0]]


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusableInputWarning)
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- table layout
def test_columns_meta_and_values_match_adapters(models, tmp_path):
    pic = colour_picture()
    write_picture(tmp_path / "a.png", pic)
    table = astromorph.predict_files("morphology", tmp_path / "a.png")
    model = astromorph.load_model("morphology")
    x, flags = prepare(model, RawStamps("colour", pic[None]))
    expected = result_columns(model, model.predict(x), flags, np.ones(1, bool))
    assert table.colnames == ["source", *expected.colnames, "reason"]
    for name in expected.colnames:
        assert np.allclose(table[name], expected[name]) if table[name].dtype.kind == "f" \
            else list(table[name]) == list(expected[name])
        assert table[name].description == expected[name].description
    assert table["source"][0] == str(tmp_path / "a.png") and table["reason"][0] == ""
    assert table.meta["model"] == "morphology" and table.meta["model_version"] == "0.0.1"
    assert table.meta["model_sha256"] == model.sha256
    assert table.meta["providers"] == ["CPUExecutionProvider"]
    assert table.meta["astromorph_version"] == astromorph.__version__
    # the same provenance keys as annotate/annotate_stamps tables
    from astromorph._annotate import _provenance

    for key, value in _provenance(model).items():
        assert table.meta[key] == value
    assert table.meta["astromorph_model"] == "morphology"
    assert table.meta["astromorph_providers"] == "CPUExecutionProvider"



def test_numpy_array_file_says_how_to_score_its_arrays(tmp_path):
    """A NumPy ``.npz``/``.npy`` file of stamps (as survey stamp sets are shared) was only
    "unrecognised file format (first bytes b'PK\\x03\\x04...')": the reason now says what
    it is and how to score its arrays."""
    x = np.zeros((2, 3, 8, 8), np.float32)
    np.savez(tmp_path / "stamps.npz", X=x)
    np.save(tmp_path / "stamps.npy", x)
    (tmp_path / "archive.zip").write_bytes((tmp_path / "stamps.npz").read_bytes())
    table = quiet(astromorph.predict_files, "real-bogus",
                  [tmp_path / "stamps.npz", tmp_path / "stamps.npy", tmp_path / "archive.zip"])
    assert list(table["rb_flags"]) == [Flag.BAD_INPUT] * 3
    for reason in table["reason"][:2]:
        assert reason.startswith("unrecognised file format"), reason
        assert "NumPy" in reason and "annotate_stamps" in reason, reason
    assert "NumPy" not in table["reason"][2]  # a zip file of another kind is not one


def test_accepts_loaded_model(models, tmp_path):
    write_picture(tmp_path / "a.png", colour_picture())
    model = astromorph.load_model("morphology")
    assert len(astromorph.predict_files(model, [tmp_path / "a.png"])) == 1


# ----------------------------------------------------------------------------- optical inputs
def test_optical_inputs(models, tmp_path):
    write_fits(tmp_path / "single.fits", galaxy())
    write_picture(tmp_path / "colour.jpg", colour_picture())
    write_picture(tmp_path / "colour.png", colour_picture(seed=1))
    write_picture(tmp_path / "grey.png", colour_picture()[..., 0])
    g, r, i = galaxy(seed=1), galaxy(seed=2) * 1.5, galaxy(seed=3) * 2
    cube = write_fits(tmp_path / "cube.fits", np.stack([g, r, i]), BAND1="g", BAND2="r",
                      BAND3="i")
    write_mef(tmp_path / "mef.fits", [i, g, r], ["SDSS i", "SDSS g", "SDSS r"], key="FILTER")
    write_mef(tmp_path / "ugriz.fits", [g * 0, g, r, i, i * 0], list("ugriz"))
    table = astromorph.predict_files("morphology", sorted(tmp_path.iterdir()))
    assert len(table) == 7
    assert not table["morph_flags"].any() and not any(table["reason"])
    assert not np.any(table["morph_p_red"].mask)
    # The same bands in any HDU order, or with extra bands, give the same result.
    ref = row(table, cube)["morph_p_red"]
    assert row(table, tmp_path / "mef.fits")["morph_p_red"] == pytest.approx(ref, abs=1e-6)
    assert row(table, tmp_path / "ugriz.fits")["morph_p_red"] == pytest.approx(ref, abs=1e-6)
    # A grey picture is grey: equal channel means.
    grey = row(table, tmp_path / "grey.png")
    assert grey["morph_p_red"] == pytest.approx(grey["morph_p_blue"], abs=1e-6)


def test_missing_band_and_wrong_number_of_planes(models, tmp_path):
    write_mef(tmp_path / "gr.fits", [galaxy(), galaxy(seed=1)], ["g", "r"], key="FILTER")
    write_fits(tmp_path / "five.fits", np.stack([galaxy(seed=s) for s in range(5)]))
    write_fits(tmp_path / "two.fits", np.stack([galaxy(), galaxy(seed=1)]))
    write_mef(tmp_path / "grz.fits", [galaxy(), galaxy(seed=1), galaxy(seed=2)], list("grz"))
    with pytest.warns(UnusableInputWarning, match="2 of 4"):
        with pytest.warns(AmbiguousInputWarning, match="2 stamp"):
            table = astromorph.predict_files("morphology", tmp_path)
    # named bands without all of g, r, i: the one band annotate would take, scored alone
    for name in ("gr", "grz"):
        r = row(table, tmp_path / f"{name}.fits")
        assert r["morph_flags"] == 0 and not np.ma.is_masked(r["morph_p_red"]), r["reason"]
        assert "no i band: band r scored alone" in r["reason"], r["reason"]
    # two planes without band names: which would be which? still refused
    assert row(table, tmp_path / "two.fits")["morph_flags"] == Flag.MISSING_BAND
    five = row(table, tmp_path / "five.fits")
    assert five["morph_flags"] == Flag.BAD_INPUT and "5 planes: " in five["reason"]
    assert "?" not in five["reason"]  # no band is named: no list of unknowns
    assert "2 planes: " in row(table, tmp_path / "two.fits")["reason"]
    for name in ("two", "five"):
        r = row(table, tmp_path / f"{name}.fits")
        assert np.ma.is_masked(r["morph_p_red"]) and np.ma.is_masked(r["morph_label"])


@pytest.mark.parametrize("model,data", [
    ("morphology", np.moveaxis(np.stack([galaxy(64, seed=s) for s in range(3)]), 0, -1)),
    ("real-bogus", np.moveaxis(triplet(), 0, -1)),
])
def test_cube_with_planes_on_the_last_axis_says_so(models, tmp_path, model, data):
    """A cube written planes-last (numpy (H, W, 3), so NAXIS1 = 3) was refused as "64 planes"
    with no word of why; the reason now says the planes look like the first FITS axis."""
    write_fits(tmp_path / "hwc.fits", data.astype(np.float32))
    table = quiet(astromorph.predict_files, model, tmp_path / "hwc.fits")
    flags = next(c for c in table.colnames if c.endswith("_flags"))
    assert table[flags][0] == Flag.BAD_INPUT
    n = data.shape[0]
    assert f"{n} planes" in table["reason"][0]
    assert "NAXIS1 = 3" in table["reason"][0] and "(3, " in table["reason"][0], \
        table["reason"][0]


@pytest.mark.parametrize("model, prefix, family", [
    ("morphology", "morph", "optical"), ("radio-morphology", "radio", "radio")])
def test_triplet_fed_to_a_galaxy_or_radio_model_is_refused_for_what_it_is(
        models, tmp_path, model, prefix, family):
    """A difference-imaging triplet (a ZTF alert packet, a FITS file of SCIENCE, REFERENCE and
    DIFFERENCE extensions) given to a galaxy or radio model is refused as it is read, its row
    saying that a triplet cannot feed that model; without that check the preprocessing
    refused it with words of its own ("cannot be preprocessed: model ... not triplet
    stamps"), which do not say what the file is."""
    write_avro(tmp_path / "alert.avro", [ztf_alert(7)])
    write_mef(tmp_path / "triplet.fits", list(triplet()), ["SCIENCE", "REFERENCE", "DIFFERENCE"])
    with pytest.warns(UnusableInputWarning, match="2 of 2"):
        table = astromorph.predict_files(model, [tmp_path / "alert.avro",
                                                 tmp_path / "triplet.fits"])
    assert list(table["source"]) == ["7", str(tmp_path / "triplet.fits")]
    assert list(table[f"{prefix}_flags"]) == [Flag.BAD_INPUT] * 2
    assert list(table["reason"]) == [
        f"a difference-imaging triplet cannot feed {model} ({family} model)"] * 2
    assert table[f"{prefix}_label"].mask.all()


def test_two_plane_image_is_refused_by_the_radio_model(models, tmp_path):
    """A cube of two planes (two frequency channels, say; no STOKES axis that names an I
    plane) is not one radio image: refused as it is read, its row saying that the radio
    model takes a single image, as for three planes; without that check, the preprocessing
    refused it with words of its own ("cannot be preprocessed: ... got bands stamps of shape
    (2, 300, 300)")."""
    rng = np.random.default_rng(1)
    cube = rng.normal(0, 1.5e-4, (3, RADIO_STAMP, RADIO_STAMP)).astype(np.float32)
    cube[:, 140:160, 140:160] += 0.01
    write_fits(tmp_path / "two.fits", cube[:2])
    write_fits(tmp_path / "three.fits", cube)
    write_fits(tmp_path / "one.fits", cube[0])
    with pytest.warns(UnusableInputWarning, match="2 of 3"):
        table = astromorph.predict_files("radio-morphology", tmp_path)
    for n, name in ((2, "two.fits"), (3, "three.fits")):
        r = row(table, tmp_path / name)
        assert r["radio_flags"] == Flag.BAD_INPUT and np.ma.is_masked(r["radio_label"])
        assert r["reason"] == f"{n} planes: radio-morphology takes a single radio image"
    one = row(table, tmp_path / "one.fits")
    assert not one["radio_flags"] & Flag.unusable() and not np.ma.is_masked(one["radio_label"])


@pytest.mark.parametrize("model", ["morphology", "radio-morphology"])
def test_pictures_get_the_quality_flags(models, tmp_path, model):
    """JPEG/PNG stamps are checked as FITS ones are: a constant picture is flagged, and one
    far smaller than the field the network sees is flagged as upsampled (extrapolated)."""
    write_picture(tmp_path / "black.png", np.zeros((300, 300, 3), np.uint8))
    write_picture(tmp_path / "tiny.png", colour_picture(3))
    write_picture(tmp_path / "fine.png", colour_picture(300))
    table = quiet(astromorph.predict_files, model, tmp_path)
    prefix = "morph" if model == "morphology" else "radio"
    assert row(table, tmp_path / "black.png")[f"{prefix}_flags"] == Flag.CONSTANT
    assert "all zero" in row(table, tmp_path / "black.png")["reason"]
    tiny = row(table, tmp_path / "tiny.png")
    assert tiny[f"{prefix}_flags"] == Flag.EXTRAPOLATED and "coarser" in tiny["reason"]
    # how far the network's field is upsampled: the central 0.35 of 3 pixels onto 64
    # (galaxy model), 3 pixels onto the radio data set's 300
    expect = ("the network's field (the central 0.35 of the 3x3 stamp) is 1.05 pixels "
              "across, upsampled 61x onto its 64x64 grid" if model == "morphology" else
              "the network's field (the 3x3 stamp) is 3 pixels across, upsampled 100x onto "
              "its 300x300 grid")
    assert expect in tiny["reason"], tiny["reason"]
    # (random colours fill the radio network's field, unlike any FIRST data-set image)
    assert row(table, tmp_path / "fine.png")[f"{prefix}_flags"] == (
        0 if model == "morphology" else Flag.OUT_OF_DISTRIBUTION)
    assert not table[f"{prefix}_p_{'red' if model == 'morphology' else 'FRI'}"].mask.any()


def test_nan_and_constant_stamps_are_flagged_but_scored(models, tmp_path):
    """NaN pixels are filled and flagged, a constant stamp is flagged, both still scored;
    a stamp with no finite pixel at all has nothing to score: BAD_INPUT, outputs masked."""
    img = galaxy()
    img[:48] = np.nan  # 25 per cent
    img[48, :4] = np.inf
    write_fits(tmp_path / "nan.fits", img)
    write_fits(tmp_path / "zero.fits", np.zeros_like(img))
    write_fits(tmp_path / "allnan.fits", np.full_like(img, np.nan))
    table = quiet(astromorph.predict_files, "morphology", tmp_path)
    nan = row(table, tmp_path / "nan.fits")
    assert nan["morph_flags"] == Flag.BLANK and "25%" in nan["reason"]
    assert not np.ma.is_masked(nan["morph_p_red"])
    zero = row(table, tmp_path / "zero.fits")
    assert zero["morph_flags"] == Flag.CONSTANT and "all zero" in zero["reason"]
    assert not np.ma.is_masked(zero["morph_p_red"])
    allnan = row(table, tmp_path / "allnan.fits")
    assert allnan["morph_flags"] & Flag.BLANK and allnan["morph_flags"] & Flag.BAD_INPUT
    assert "image has no finite pixel: not scored" in allnan["reason"]
    assert np.ma.is_masked(allnan["morph_p_red"]) and np.ma.is_masked(allnan["morph_label"])


@pytest.mark.parametrize("dtype,bscale,bzero", [
    (np.uint8, 1.0, 0.0), (np.int16, 1.0, 0.0), (np.int16, 0.5, 100.0),
    (np.int16, 1.0, 32768.0), (np.int32, 2.0, -3.0), (np.float32, 1.0, 0.0),
    (np.float64, 1.0, 0.0), (np.float32, 2.0, 1.0)])
def test_fits_scaling_blank_and_byte_order(tmp_path, dtype, bscale, bzero):
    raw = np.arange(12 * 10).reshape(12, 10).astype(dtype)
    hdu = fits.PrimaryHDU(raw)  # scaling keywords set after the data: raw values stored
    hdu.header["BSCALE"], hdu.header["BZERO"] = bscale, bzero
    blank = None
    if np.dtype(dtype).kind in "iu":
        blank = int(raw[3, 4])
        hdu.header["BLANK"] = blank
    hdu.writeto(tmp_path / "s.fits")
    assert fits.getheader(tmp_path / "s.fits")["BZERO"] == bzero
    expected = raw.astype(np.float64) * bscale + bzero
    if blank is not None:
        expected[3, 4] = np.nan
    for stamps in (read_file(tmp_path / "s.fits"),
                   _read_fits_astropy(tmp_path / "s.fits", want_scale=True, triplet_hint=False)):
        (stamp,) = stamps
        assert stamp.data.dtype == np.float32 and stamp.data.dtype.isnative
        np.testing.assert_allclose(stamp.data[0], expected, rtol=1e-6, equal_nan=True)
    if blank is not None:
        # the same integers tile-compressed (fpack's Rice, as DES, DECaLS and PS1 ship them):
        # astropy hands over the raw integers here too (the file is opened unscaled), so the
        # scaling and BLANK are applied as for the plain file, not left out
        tiled = fits.CompImageHDU(raw, compression_type="RICE_1")
        tiled.header["BSCALE"], tiled.header["BZERO"], tiled.header["BLANK"] = bscale, bzero, blank
        fits.HDUList([fits.PrimaryHDU(), tiled]).writeto(tmp_path / "s.fits.fz")
        with open(tmp_path / "s.fits.fz", "rb") as f:
            blob = f.read()
        for data in (read_file(tmp_path / "s.fits.fz")[0].data[0],
                     parse_fits_bytes(blob, want_scale=False)[0]):
            np.testing.assert_allclose(data, expected, rtol=1e-6, equal_nan=True)


def test_fits_bytes_read_unsigned_over_their_whole_range(tmp_path):
    """BITPIX = 8 pixels are unsigned bytes, 0 to 255 (the FITS standard): a pixel of 128 or
    more is read as itself, never as a signed byte (200 as -56), by the fast reader, by
    astropy's path and from bytes in memory (alert cutouts)."""
    raw = np.arange(256).reshape(16, 16).astype(np.uint8)
    path = write_fits(tmp_path / "u8.fits", raw)
    assert fits.getheader(path)["BITPIX"] == 8
    expected = raw.astype(np.float32)
    for data in (read_file(path)[0].data[0],
                 _read_fits_astropy(path, want_scale=True, triplet_hint=False)[0].data[0],
                 parse_fits_bytes(path.read_bytes(), want_scale=False)[0]):
        np.testing.assert_array_equal(data, expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_integer_images_read_exactly_by_every_path(tmp_path, dtype):
    """Unsigned 16-, 32- and 64-bit images, stored as FITS stores them (signed integers with
    BZERO = 2**(BITPIX - 1), BSCALE = 1), read as their own values by the fast reader, by
    astropy's path and from bytes: small values are not lost to the offset (a 64-bit image
    read through float64 arithmetic gave 0 for every value below 1024, a 32-bit one read
    through float32 the same)."""
    raw = np.arange(12).reshape(3, 4).astype(dtype)
    raw[2, 3] = 2**15 + 3 if dtype == np.uint16 else 2**31 + 5
    path = tmp_path / "u.fits"
    fits.PrimaryHDU(raw, uint=True).writeto(path)
    header = fits.getheader(path)
    assert header["BZERO"] == 2 ** (header["BITPIX"] - 1) and header["BSCALE"] == 1
    expected = raw.astype(np.float32)
    for data in (read_file(path)[0].data[0],
                 _read_fits_astropy(path, want_scale=True, triplet_hint=False)[0].data[0],
                 parse_fits_bytes(path.read_bytes(), want_scale=False)[0]):
        np.testing.assert_array_equal(data, expected)


def test_float_image_with_bzero_alone_is_offset(tmp_path):
    """A float image with BZERO but BSCALE = 1 is offset by BZERO in every reader (the scaling
    is applied where either keyword is not its default, not only where BSCALE is not)."""
    raw = np.arange(12, dtype=np.float32).reshape(3, 4)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BZERO"] = 10.0
    path = tmp_path / "f.fits"
    hdu.writeto(path)
    for data in (read_file(path)[0].data[0],
                 _read_fits_astropy(path, want_scale=True, triplet_hint=False)[0].data[0],
                 parse_fits_bytes(path.read_bytes(), want_scale=False)[0]):
        np.testing.assert_array_equal(data, raw + 10)


def test_fast_and_astropy_fits_paths_read_the_first_of_a_repeated_card(tmp_path):
    """A header that repeats a keyword (two SATURATE cards, 100 then 5; the FITS standard allows
    one): the fast reader takes the first card, as astromorph's astropy path does (astropy's
    ``header.get``), so a file scores the same whichever path reads it. (This test had two
    BSCALE cards read as the first; a scaling keyword repeated with two values, which
    astropy applies by its last copy, is now refused by every path:
    `test_repeated_scaling_keyword_with_two_values_is_refused`.)"""
    hdu = fits.PrimaryHDU(np.arange(12, dtype=np.int16).reshape(3, 4))
    hdu.header["SATURATE"] = 100.0
    hdu.header.append(("SATURATE", 5.0), end=True)
    path = tmp_path / "twice.fits"
    hdu.writeto(path)
    assert path.read_bytes()[:2880].count(b"SATURATE=") == 2
    expected = np.arange(12, dtype=np.float32).reshape(3, 4)
    fast, astropy_read = read_file(path)[0], _read_fits_astropy(path, want_scale=True,
                                                                triplet_hint=False)[0]
    data, _, facts = parse_fits_bytes(path.read_bytes(), return_facts=True)
    assert list(fast.saturation) == list(astropy_read.saturation) == [100.0]
    assert facts.saturation == 100.0
    for data in (fast.data[0], data, astropy_read.data[0]):
        np.testing.assert_array_equal(data, expected)


def test_saturation_level_of_zero_or_below_is_no_level():
    """A saturation keyword of 0 or less (SATURATE = 0, as pipelines write "unknown") is no
    level: the next keyword's (SATLEVEL) is read, else the primary header's for an
    extension, else none; a level of 0 would flag every stamp with a positive pixel
    SATURATED."""
    from astromorph._readers._fits import saturation_of_header

    assert saturation_of_header(fits.Header({"SATURATE": 0, "SATLEVEL": 5000.0})) == 5000.0
    assert saturation_of_header(fits.Header({"SATURATE": 0.0})) is None
    assert saturation_of_header(fits.Header({"SATURATA": -1.0, "SATURATB": 0})) is None
    assert saturation_of_header(fits.Header({"SATURATE": 0}),
                                fits.Header({"SATURATE": 1000.0})) == 1000.0


def test_two_triplet_members_named_are_a_triplet_missing_its_third(tmp_path):
    """Planes that name two of a triplet's three members (EXTNAME SCIENCE and REFERENCE; a
    cube's PLANE1 = SCI, PLANE2 = DIFF) are a triplet that lacks the third, flagged
    MISSING_BAND naming it, even for a model that is not a triplet model: not two bands of
    unknown names scored as an image."""
    plane = np.ones((8, 8), np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(plane, name="SCIENCE"),
                  fits.ImageHDU(plane, name="REFERENCE")]).writeto(tmp_path / "mef.fits")
    cube = fits.PrimaryHDU(np.stack([plane, plane]))
    cube.header["PLANE1"], cube.header["PLANE2"] = "SCI", "DIFF"
    cube.writeto(tmp_path / "cube.fits")
    for name, lacking, keyword in (("mef.fits", "difference", "EXTNAME"),
                                   ("cube.fits", "reference", "PLANEi")):
        (stamp,) = read_file(tmp_path / name)
        assert stamp.flags == Flag.MISSING_BAND and stamp.kind is None, name
        assert stamp.reason[0].startswith(f"no {lacking} image"), stamp.reason
        # the reason names the keyword that named the members, not EXTNAME for a cube
        assert f"come from {keyword} SCIENCE" in stamp.reason[0], stamp.reason


def test_cube_plane_names_read_bandi_before_filteri(tmp_path):
    """A cube that names its planes twice, BANDi and FILTERi (filter wheel slots): the
    bands are the BANDi (`_plane_names` reads BAND, FILTER, PLANE, EXTNAME in that order)."""
    cube = fits.PrimaryHDU(np.ones((3, 8, 8), np.float32))
    for i, (band, name) in enumerate(zip("gri", ("slot 4", "slot 5", "slot 6")), 1):
        cube.header[f"BAND{i}"], cube.header[f"FILTER{i}"] = band, name
    cube.writeto(tmp_path / "cube.fits")
    (stamp,) = read_file(tmp_path / "cube.fits")
    assert stamp.bands == ("g", "r", "i")


def test_fast_and_astropy_fits_paths_agree_on_wcs(tmp_path):
    data = galaxy(40)
    h = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": -5.0,
                     "CRPIX1": 20, "CRPIX2": 20, "CDELT1": -0.5 / 3600, "CDELT2": 0.5 / 3600,
                     "PC1_1": 0.8, "PC1_2": -0.6, "PC2_1": 0.6, "PC2_2": 0.8})
    fits.PrimaryHDU(data, header=h).writeto(tmp_path / "pc.fits")
    write_fits(tmp_path / "cd.fits", data, scale=1.8)
    write_fits(tmp_path / "none.fits", data)
    # PCi_j and CDi_j both given: wcslib reads PC (the fast reader read CD, 2")
    fits.PrimaryHDU(data, header=h).writeto(tmp_path / "pc_and_cd.fits")
    with fits.open(tmp_path / "pc_and_cd.fits", mode="update") as hdul:
        hdul[0].header.update(CD1_1=-2 / 3600, CD2_2=2 / 3600)
    # a degenerate matrix is no WCS in both (astropy's path: 60" from wcslib's 1 degree)
    h0 = fits.Header({k: h[k] for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1",
                                         "CRPIX2")})
    fits.PrimaryHDU(data, header=h0 + fits.Header({"CD1_1": 0.0, "CD2_2": 1 / 3600})).writeto(
        tmp_path / "zero_row.fits")
    # CRVAL1 = NaN: no usable WCS either (wcslib reads the card as 0; the fast reader as NaN)
    fits.PrimaryHDU(data, header=h0 + fits.Header({"CDELT1": 1e-4, "CDELT2": 1e-4})).writeto(
        tmp_path / "nan_ref.fits")
    raw = (tmp_path / "nan_ref.fits").read_bytes()
    (tmp_path / "nan_ref.fits").write_bytes(raw.replace(b"CRVAL1  =                 10.0",
                                                        b"CRVAL1  =                  NaN", 1))
    for name, expected in (("pc", 0.5), ("cd", 1.8), ("none", None), ("pc_and_cd", 0.5),
                           ("zero_row", None), ("nan_ref", None)):
        fast = read_file(tmp_path / f"{name}.fits")[0]
        slow = _read_fits_astropy(tmp_path / f"{name}.fits", want_scale=True,
                                  triplet_hint=False)[0]
        assert fast.pixel_scale == pytest.approx(expected, rel=1e-6) if expected else \
            fast.pixel_scale is None
        assert slow.pixel_scale == pytest.approx(expected, rel=1e-6) if expected else \
            slow.pixel_scale is None
        np.testing.assert_array_equal(fast.data, slow.data)


def test_fast_reader_reads_d_exponents_and_doubled_quotes_as_astropy_does(tmp_path):
    """Header values written as FITS allows: a D exponent (``CDELT1 = -2.5D-04``, Fortran's
    double precision, as IRAF and AIPS write it) and a quote doubled inside a string
    (``FILTER = 'Sloan''s r'``). The fast reader reads them as astropy does: the pixel scale
    of the D-exponent CDELT (not "no WCS"), the BSCALE applied, and the band of the whole
    string (not of ``'Sloan'``, cut at the doubled quote)."""
    data = np.arange(20 * 20, dtype=np.int16).reshape(20, 20)
    h = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 5.0,
                     "CRPIX1": 10.0, "CRPIX2": 10.0, "CDELT1": -2.5e-04, "CDELT2": 2.5e-04,
                     "FILTER": "Sloan's r"})
    hdu = fits.PrimaryHDU(data, header=h)
    hdu.header["BSCALE"] = 2.0
    path = tmp_path / "d.fits"
    hdu.writeto(path)
    raw = path.read_bytes()
    for key, value in (("CDELT1", "-2.5D-04"), ("CDELT2", "2.5D-04"), ("BSCALE", "2.0D+00")):
        start = raw.index(key.encode().ljust(8) + b"=")
        raw = raw[:start] + f"{key:8}= {value:>20}".ljust(80).encode() + raw[start + 80:]
    path.write_bytes(raw)
    assert raw.count(b"D-04") == 2 and b"2.0D+00" in raw and b"'Sloan''s r'" in raw
    assert fits.getheader(path)["CDELT1"] == -2.5e-4 and fits.getheader(path)["BSCALE"] == 2
    for stamp in (read_file(path)[0], parse_fits_bytes(path.read_bytes(), want_scale=True),
                  _read_fits_astropy(path, want_scale=True, triplet_hint=False)[0]):
        if isinstance(stamp, tuple):  # parse_fits_bytes: (data, pixel scale)
            np.testing.assert_array_equal(stamp[0], data * 2.0)
            assert stamp[1] == pytest.approx(0.9, rel=1e-6)
            continue
        np.testing.assert_array_equal(stamp.data[0], data * 2.0)
        assert stamp.pixel_scale == pytest.approx(0.9, rel=1e-6)
        assert stamp.bands == ("r",)


@pytest.mark.filterwarnings("error::astropy.io.fits.verify.VerifyWarning")
def test_d_exponent_card_with_a_long_comment_read_without_a_warning():
    """A D-exponent card whose comment fills its 80 characters (``CDELT1 = -2.5D-04 / a
    long comment ...``, the value not right-justified): its value is read with an E
    exponent as it is written, the comment kept, not formatted anew in the fixed layout,
    where astropy warned "Card is too long, comment will be truncated". A HIERARCH card is
    judged by its value, not by the D of its keyword (``ESO DET DIT``: rewritten, with
    astropy's warning that "a HIERARCH card will be created", in every header of ESO's)."""
    from astromorph._readers._fits import _e_exponents, _header_scale

    cards = ["CTYPE1  = 'RA---TAN'", "CTYPE2  = 'DEC--TAN'", "CRVAL1  = 10.0",
             "CRVAL2  = 10.0", "CRPIX1  = 5.0", "CRPIX2  = 5.0",
             "CDELT1  = -2.5D-04 / a long comment that fills the rest of the card to its end",
             "CDELT2  = 2.5D-04 / and another one on the second axis, also up to the end...."]
    h = fits.Header.fromstring("".join(c.ljust(80) for c in cards))
    assert _header_scale(h) == pytest.approx(0.9, rel=1e-6)
    e = _e_exponents(h)
    assert e["CDELT1"] == -2.5e-4 and e["CDELT2"] == 2.5e-4
    assert e.cards["CDELT1"].comment == h.cards["CDELT1"].comment
    assert e.cards["CDELT1"].image == cards[6].replace("D-", "E-").ljust(80)
    assert e.cards["CDELT2"].image == cards[7].replace("D-", "E-").ljust(80)
    # a HIERARCH card whose keyword has a D past column 10 (ESO's DET DIT) is no D exponent:
    # the header as it is, no warning of "a HIERARCH card will be created"
    eso = fits.Header.fromstring("HIERARCH ESO DET DIT = 1.5 / exposure".ljust(80))
    assert _e_exponents(eso) is eso
    # a HIERARCH card (its keyword past column 10, a D in it) keeps its keyword
    h.append(fits.Card.fromstring("HIERARCH ESO DET DIT = 1.5D+00 / exposure".ljust(80)))
    e = _e_exponents(h)
    assert e["HIERARCH ESO DET DIT"] == 1.5 and "ESO DET DIT" in e


def test_memmapped_multi_extension_and_compressed(tmp_path):
    g = galaxy()
    write_mef(tmp_path / "m.fits", [g, g * 2, g * 3], ["SCIENCE", "REFERENCE", "DIFFERENCE"])
    (stamp,) = read_file(tmp_path / "m.fits")
    assert stamp.kind == "triplet" and stamp.header_hdu == 0
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(g)]).writeto(tmp_path / "c.fits.fz")
    (stamp,) = read_file(tmp_path / "c.fits.fz")
    np.testing.assert_allclose(stamp.data[0], g, atol=0.05)  # lossy float quantisation


def test_four_d_stack_gives_one_row_per_stamp(models, tmp_path):
    stack = np.stack([colour_picture(seed=s).transpose(2, 0, 1).astype(np.float32)
                      for s in range(3)])
    write_fits(tmp_path / "stack.fits", stack)
    # the planes carry no band names: read as g, r, i, and the warning says so
    with pytest.warns(AmbiguousInputWarning, match=r"3 stamp\(s\) .*without band names read as g, r, i"):
        table = astromorph.predict_files("morphology", tmp_path / "stack.fits")
    assert list(table["source"]) == [f"{tmp_path / 'stack.fits'}[{i}]" for i in range(3)]
    write_fits(tmp_path / "named.fits", stack[0], BAND1="g", BAND2="r", BAND3="i")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousInputWarning)
        astromorph.predict_files("morphology", tmp_path / "named.fits")


@pytest.mark.parametrize("case", ["truncated", "garbage", "empty", "gzip", "one_d", "table",
                                  "jpeg", "png", "unknown", "six_d", "tiny"])
def test_bad_files_give_flagged_rows_and_the_run_goes_on(models, tmp_path, case):
    write_picture(tmp_path / "good.png", colour_picture())
    good = fits.PrimaryHDU(galaxy(64))
    raw = good.copy()
    if case == "truncated":
        good.writeto(tmp_path / "bad.fits")
        data = (tmp_path / "bad.fits").read_bytes()
        (tmp_path / "bad.fits").write_bytes(data[:len(data) // 2])
    elif case == "garbage":
        (tmp_path / "bad.fits").write_bytes(b"not a fits file at all" * 50)
    elif case == "empty":
        (tmp_path / "bad.fits").write_bytes(b"")
    elif case == "gzip":
        buf = io.BytesIO()
        good.writeto(buf)
        (tmp_path / "bad.fits.gz").write_bytes(gzip.compress(buf.getvalue())[:3000])
    elif case == "one_d":
        write_fits(tmp_path / "bad.fits", np.arange(100.0))
    elif case == "table":
        fits.BinTableHDU(Table({"a": [1, 2]})).writeto(tmp_path / "bad.fits")
    elif case == "jpeg":
        write_picture(tmp_path / "full.jpg", colour_picture(64))
        (tmp_path / "bad.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:600])
        (tmp_path / "full.jpg").unlink()
    elif case == "png":
        write_picture(tmp_path / "full.png", colour_picture(64))
        (tmp_path / "bad.png").write_bytes((tmp_path / "full.png").read_bytes()[:200])
        (tmp_path / "full.png").unlink()
    elif case == "unknown":
        (tmp_path / "bad.dat").write_bytes(b"\x00\x01\x02" * 100)
    elif case == "six_d":
        write_fits(tmp_path / "bad.fits", np.ones((2, 2, 2, 2, 4, 4), np.float32))
    elif case == "tiny":
        write_fits(tmp_path / "bad.fits", np.ones((1, 5), np.float32))
    del raw
    bad = next(p for p in tmp_path.iterdir() if p.name.startswith("bad"))
    with pytest.warns(UnusableInputWarning, match="1 of 2"):
        table = astromorph.predict_files("morphology", [tmp_path / "good.png", bad])
    assert len(table) == 2
    assert table["morph_flags"][0] == 0 and not np.ma.is_masked(table["morph_p_red"][0])
    assert table["morph_flags"][1] == Flag.BAD_INPUT
    assert np.ma.is_masked(table["morph_p_red"][1]) and table["reason"][1]


@pytest.mark.parametrize("fmt, name", [("PNG", "anim.png"), ("GIF", "anim.png"),
                                       ("GIF", "anim.jpg")])
def test_animated_picture_is_flagged_with_its_frame_count(models, tmp_path, fmt, name):
    """An animated PNG (APNG), or an animated GIF under a name astromorph accepts, holds
    several pictures, and which one is the stamp is unknown (as for several FITS files
    joined in one): its row is flagged BAD_INPUT with a reason naming the format and the
    frame count (it was scored from its first frame, without a word). A still GIF named
    ``.png`` and a one-frame APNG are still pictures and are scored, and so is a
    multi-picture JPEG (MPO), whose first picture is its primary image by its standard."""
    from PIL import Image

    frames = [Image.fromarray(colour_picture(64, seed=i)) for i in range(3)]
    frames[0].save(tmp_path / name, format=fmt, save_all=True, append_images=frames[1:])
    (stamp,) = read_file(tmp_path / name)
    assert stamp.flags == Flag.BAD_INPUT and stamp.data is None
    assert f"animated {fmt} of 3 frames" in stamp.reason[0], stamp.reason
    with pytest.warns(UnusableInputWarning, match="1 of 1"):
        table = astromorph.predict_files("morphology", tmp_path / name)
    assert table["morph_flags"][0] == Flag.BAD_INPUT and "3 frames" in table["reason"][0]
    for still, options in (("still.png", dict(format="GIF")),
                           ("one.png", dict(format="PNG", save_all=True, append_images=[]))):
        frames[0].save(tmp_path / still, **options)
        (stamp,) = read_file(tmp_path / still)
        assert stamp.flags == 0 and stamp.data.shape == (64, 64, 3), (still, stamp.reason)
    frames[0].save(tmp_path / "camera.jpg", format="MPO", save_all=True,
                   append_images=frames[1:])
    with Image.open(tmp_path / "camera.jpg") as im:
        assert (im.format, im.n_frames) == ("MPO", 3)
        primary = np.asarray(im.convert("RGB"))
    (stamp,) = read_file(tmp_path / "camera.jpg")
    assert stamp.flags == 0 and np.array_equal(stamp.data, primary), stamp.reason


@pytest.mark.parametrize("kind", ["compressed", "image"])
@pytest.mark.parametrize("how", ["file", "gzip", "memmap", "bytes"])
def test_truncated_extension_reason_says_truncated(tmp_path, monkeypatch, kind, how):
    """A tile-compressed HDU, or an image extension, whose data the file ends inside of: the
    reason says the file is truncated, the bytes of data its header gives and the bytes the
    file holds (it was astropy's "TypeError: buffer is too small for requested array"),
    whether the file is read in memory, gzipped, memory-mapped (a large file) or as bytes."""
    image = galaxy(64)
    hdu = fits.CompImageHDU(image) if kind == "compressed" else fits.ImageHDU(image)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "full.fits")
    with fits.open(tmp_path / "full.fits", disable_image_compression=True) as hdul:
        start = hdul[1].fileinfo()["datLoc"]
        header = hdul[1].header
        expected = header["NAXIS1"] * header["NAXIS2"] * abs(header["BITPIX"]) // 8 \
            + header.get("PCOUNT", 0)
    blob = (tmp_path / "full.fits").read_bytes()[:start + 1000]
    name = "t.fits.gz" if how == "gzip" else "t.fits"
    (tmp_path / name).write_bytes(gzip.compress(blob) if how == "gzip" else blob)
    if how == "memmap":
        monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    label = "HDU 1, EXTNAME 'COMPRESSED_IMAGE'" if kind == "compressed" else "HDU 1"
    _assert_truncated(blob, tmp_path / name, how, label, expected)


def _assert_truncated(blob, path, how, label, expected):
    """The FITS ``blob`` (also written as ``path``), cut 1000 bytes into the data of its HDU
    ``label`` of ``expected`` bytes: refused as truncated, as bytes or as a file."""
    from astromorph._readers._fits import read_fits_bytes

    words = f"the header of {label} gives {expected} bytes of data, the"
    if how == "bytes":
        with pytest.raises(ValueError) as info:
            parse_fits_bytes(blob)
        assert str(info.value) == f"truncated FITS data: {words} bytes hold 1000"
        (stamp,) = read_fits_bytes(blob, source="cell")  # (a FITS bytes cell of a table)
        assert stamp.flags == Flag.BAD_INPUT
        assert stamp.reason == [f"truncated FITS data: {words} bytes hold 1000"]
        return
    (stamp,) = read_file(path)
    assert stamp.flags == Flag.BAD_INPUT
    assert stamp.reason == [f"truncated FITS file {path.name}: {words} file holds 1000"]


def _zipped(data, name="x.fits"):
    """A zip archive (deflated) of the one file ``name`` holding ``data``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buf.getvalue()


#: Suffix and compressor of each whole-file compression astropy reads.
PACKERS = {"gzip": (".gz", gzip.compress), "bzip2": (".bz2", bz2.compress),
           "xz": (".xz", lzma.compress), "zip": (".zip", _zipped)}


@pytest.mark.parametrize("extend", [True, False])
@pytest.mark.parametrize("layout", ["primary", "extension"])
@pytest.mark.parametrize("how", ["file", "gzip", "bzip2", "xz", "zip", "memmap", "gzip-large",
                                 "bzip2-large", "xz-large", "zip-large", "bytes"])
def test_truncated_mask_after_a_whole_image_is_truncated_as_bytes_as_a_file(
        tmp_path, monkeypatch, layout, how, extend):
    """A stamp whose image is whole (in the primary HDU, or in an extension after an empty
    primary) followed by a MASK extension (as Rubin's cutouts have) that the stream ends
    inside of: the file is damaged, and bytes and files say so alike. A file was refused as
    truncated, while the same bytes through `parse_fits_bytes` (alert cutouts, FITS bytes
    cells) gave the image without a word; and a compressed file over the fast reader's
    16 MB (read by astropy, which does not read the MASK's data: `-large`, the limit
    lowered) still gave it, in every compression. A primary header without EXTEND
    (``extend`` False) changes nothing: a file of it under 16 MB (and a FITS bytes cell,
    `read_fits_bytes`) gave the primary image without a word, the MASK lost, where a larger
    one was refused."""
    image = galaxy(64)
    mask = fits.ImageHDU(np.zeros((64, 64), np.int32), name="MASK")
    hdus = [fits.PrimaryHDU(image), mask] if layout == "primary" else \
        [fits.PrimaryHDU(), fits.ImageHDU(image), mask]
    fits.HDUList(hdus).writeto(tmp_path / "full.fits")
    with fits.open(tmp_path / "full.fits") as hdul:
        start = hdul[-1].fileinfo()["datLoc"]
    blob = (tmp_path / "full.fits").read_bytes()[:start + 1000]
    if not extend:
        blob = without_extend(blob)
    packing = how.split("-")[0]
    suffix, pack = PACKERS.get(packing, ("", bytes))
    name = "t.fits" + suffix
    (tmp_path / name).write_bytes(pack(blob))
    if how == "memmap" or how.endswith("-large"):
        monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    label = f"HDU {len(hdus) - 1}, EXTNAME 'MASK'"
    _assert_truncated(blob, tmp_path / name, how, label, 64 * 64 * 4)
    if how == "bytes":  # the compressed bytes too
        for _, pack in PACKERS.values():
            with pytest.raises(ValueError, match=f"^truncated FITS data: the header of {label}"):
                parse_fits_bytes(pack(blob))


@pytest.mark.parametrize("large", [False, True])
def test_file_without_extend_cut_inside_an_extension_is_refused_whole_ones_read(
        models, tmp_path, monkeypatch, large):
    """A primary image whose header has no EXTEND card, followed by an extension (a MASK, a
    band) that the file ends inside of: `predict_files` scored a file of it under 16 MB,
    plain or compressed, from the primary image without a word (the fast reader walked the
    HDUs after it only where EXTEND = T), where a larger one (``large``: the limit
    lowered, astropy's path) was refused as truncated; now both are, in the same words.
    Whole, such a file is read as before, as one with EXTEND = T is."""
    def fits_bytes(name):
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(galaxy(64)),
                      fits.ImageHDU(np.zeros((64, 64), np.int32), name=name)]).writeto(buf)
        return buf.getvalue()

    whole = fits_bytes("MASK")
    cut = {"MASK": without_extend(whole[:-17280 + 1000]),
           "R": without_extend(fits_bytes("R")[:-17280 + 1000])}
    files = {"mask.fits": cut["MASK"], "mask.fits.gz": gzip.compress(cut["MASK"]),
             "mask.fits.bz2": bz2.compress(cut["MASK"]), "band.fits": cut["R"]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "whole.fits").write_bytes(without_extend(whole))
    (tmp_path / "whole_extend.fits").write_bytes(whole)
    if large:
        monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    with pytest.warns(UnusableInputWarning, match="4 of 6"):
        table = astromorph.predict_files("morphology", tmp_path)
    for name in files:
        r = row(table, tmp_path / name)
        extname = "R" if name.startswith("band") else "MASK"
        assert r["morph_flags"] == Flag.BAD_INPUT and np.ma.is_masked(r["morph_p_red"])
        assert r["reason"] == (f"truncated FITS file {name}: the header of HDU 1, EXTNAME "
                               f"'{extname}' gives 16384 bytes of data, the file holds 1000")
    read, ref = row(table, tmp_path / "whole.fits"), row(table, tmp_path / "whole_extend.fits")
    assert read["morph_flags"] == ref["morph_flags"] and read["reason"] == ref["reason"]
    assert not read["morph_flags"] & Flag.BAD_INPUT
    assert read["morph_p_red"] == pytest.approx(ref["morph_p_red"], abs=1e-6)


def _extend_false(blob):
    """The FITS bytes ``blob`` with its primary header's EXTEND card saying F (the layout
    unchanged)."""
    at = next(i for i in range(0, 2880, 80) if blob[i:i + 8] == b"EXTEND  ")
    return blob[:at] + b"EXTEND  =                    F".ljust(80) + blob[at + 80:]


def _bands_in_hdus(images, bands, *, mask=False):
    """FITS bytes of ``images`` one HDU each (the first the primary one), their FILTER the
    ``bands``; with ``mask``, a MASK extension after them."""
    hdus = [fits.PrimaryHDU(images[0])] + [fits.ImageHDU(image) for image in images[1:]]
    for hdu, band in zip(hdus, bands):
        hdu.header["FILTER"] = band
    if mask:
        hdus.append(fits.ImageHDU(np.zeros(images[0].shape, np.int32), name="MASK"))
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


@pytest.mark.parametrize("large", [False, True])
def test_file_without_extend_has_its_band_extensions_read(models, tmp_path, monkeypatch,
                                                          large):
    """A g image in the primary HDU, whose header has no EXTEND card (or EXTEND = F), and the
    r and i images in extensions after it: astropy reads the extensions all the same, and
    so did `predict_files` for a file over 16 MB (``large``: the limit lowered), where the
    fast reader of a smaller one read the primary image alone (the r and i bands silently
    lost: the g band scored by itself, unflagged). Now each is read as the file with
    EXTEND = T is, plain or compressed, with a MASK after the bands or not."""
    images = [galaxy(64, seed=s) for s in range(3)]
    ref = _bands_in_hdus(images, "gri")
    masked = _bands_in_hdus(images, "gri", mask=True)
    files = {"none.fits": without_extend(ref), "false.fits": _extend_false(ref),
             "none.fits.gz": gzip.compress(without_extend(ref)),
             "none_mask.fits": without_extend(masked), "extend.fits": ref}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    if large:
        monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    table = astromorph.predict_files("morphology", tmp_path)
    expected = row(table, tmp_path / "extend.fits")
    assert not expected["morph_flags"] & (Flag.BAD_INPUT | Flag.MISSING_BAND)
    assert not np.ma.is_masked(expected["morph_p_red"])
    for name in files:
        r = row(table, tmp_path / name)
        assert (r["morph_flags"], r["reason"]) == (expected["morph_flags"],
                                                   expected["reason"]), name
        assert r["morph_p_red"] == pytest.approx(expected["morph_p_red"], abs=1e-6), name


def test_fits_bytes_without_extend_have_their_extensions_read():
    """FITS bytes (a table's FITS bytes cell, `read_fits_bytes`) of a g primary image
    without an EXTEND card (or with EXTEND = F) and an r image extension gave the g band
    alone, without a word, as did a file of them under 16 MB; a larger file (astropy's
    path) gave both. Now all give both, as for EXTEND = T. Bytes after such a primary
    image that are no HDU (a block of blanks, an END card missing) are refused alike too
    (they were ignored, where a larger file, or EXTEND = T, was refused)."""
    from astromorph._readers._fits import read_fits_bytes

    g, r = galaxy(64), galaxy(64, seed=1)
    blob = _bands_in_hdus([g, r], "gr")
    for cell in (blob, without_extend(blob), _extend_false(blob),
                 gzip.compress(without_extend(blob))):
        (stamp,) = read_fits_bytes(cell, source="cell")
        assert (stamp.bands, stamp.data.shape, stamp.flags) == (("g", "r"), (2, 64, 64), 0)
        np.testing.assert_array_equal(stamp.data, np.stack([g, r]))
    lone = _bands_in_hdus([g], "g")
    for cell in (lone, without_extend(lone)):
        (stamp,) = read_fits_bytes(cell + b" " * 2880, source="cell")
        assert stamp.flags == Flag.BAD_INPUT
        assert stamp.reason == ["cannot read FITS: Header missing END card."]


@pytest.mark.parametrize("large", [False, True])
def test_file_without_extend_and_blanks_after_its_image_is_refused_as_a_larger_one(
        tmp_path, monkeypatch, large):
    """A primary image without an EXTEND card followed by a block of blanks (no HDU): a
    file of it under 16 MB was read from the primary image, one over 16 MB (``large``)
    refused; now both are, as with EXTEND = T."""
    blob = _bands_in_hdus([galaxy(64)], "g") + b" " * 2880
    for name, data in {"extend.fits": blob, "none.fits": without_extend(blob)}.items():
        (tmp_path / name).write_bytes(data)
        if large:
            monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
        (stamp,) = read_file(tmp_path / name)
        assert stamp.flags == Flag.BAD_INPUT, name
        assert stamp.reason == ["cannot read FITS: Header missing END card."], name


@pytest.mark.parametrize("keep", [400, 2879])
@pytest.mark.parametrize("layout", ["primary", "extension"])
def test_a_stamp_whose_mask_header_is_cut_short_is_refused_as_bytes(layout, keep):
    """Stamp bytes (an alert's cutout) whose image is whole and whose MASK extension's
    header the stream ends inside of, without its END card: the image was given without a
    word (the fast reader does not read the HDUs after the primary one, astropy drops the
    cut one with a warning only), where a file of it is refused; now the bytes are refused
    in `cut_header`'s words, plain or compressed."""
    image = galaxy(64)
    mask = fits.ImageHDU(np.zeros((64, 64), np.int32), name="MASK")
    hdus = [fits.PrimaryHDU(image), mask] if layout == "primary" else \
        [fits.PrimaryHDU(), fits.ImageHDU(image), mask]
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    with fits.open(io.BytesIO(buf.getvalue())) as hdul:
        start = hdul[-1].fileinfo()["hdrLoc"]
    blob = buf.getvalue()[:start + keep]
    words = (f"^truncated FITS data: the header of HDU {len(hdus) - 1} ends after {keep} "
             "bytes, without its END card$")
    for pack in (bytes,) + tuple(pack for _, pack in PACKERS.values()):
        with pytest.raises(ValueError, match=words):
            parse_fits_bytes(pack(blob))
    parse_fits_bytes(buf.getvalue() + b"junk" * 100)  # (trailing bytes that begin no header)


def test_truncated_mask_of_a_gzipped_file_over_16_mb_is_refused(tmp_path):
    """The same, with a real .fits.gz over 16 MB (random pixels gzip hardly shrinks; about
    1.5 s): it gave the image without a word, where a smaller file was refused."""
    image = np.random.default_rng(0).random((2300, 2300), dtype=np.float32)
    mask = fits.ImageHDU(np.zeros((64, 64), np.int32), name="MASK")
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(image), mask]).writeto(buf)
    start = len(buf.getvalue()) - 17280  # the MASK's data: 16384 bytes, padded to 6 blocks
    path = tmp_path / "big.fits.gz"
    path.write_bytes(gzip.compress(buf.getvalue()[:start + 1000], compresslevel=1))
    assert path.stat().st_size > 16 << 20
    (stamp,) = read_file(path)
    assert stamp.flags == Flag.BAD_INPUT
    assert stamp.reason == ["truncated FITS file big.fits.gz: the header of HDU 1, EXTNAME "
                            "'MASK' gives 16384 bytes of data, the file holds 1000"]


#: Two values of each scaling keyword (BLANK: of int16 pixels).
_TWICE = {"BSCALE": (2.0, 3.0), "BZERO": (1.0, 5.0), "BLANK": (7, 9)}


def _scaled_twice(key, values, layout="primary"):
    """FITS bytes of int16 pixels whose image header holds the keyword ``key`` once per
    value of ``values``, in that order (astropy writes such a header as it is given)."""
    raw = (np.arange(64 * 64) % 300).reshape(64, 64).astype(np.int16)
    hdu = fits.PrimaryHDU(raw) if layout == "primary" else fits.ImageHDU(raw)
    for value in values:
        hdu.header.append((key, value), end=True)
    buf = io.BytesIO()
    hdus = [hdu] if layout == "primary" else [fits.PrimaryHDU(), hdu]
    fits.HDUList(hdus).writeto(buf, output_verify="ignore")
    return buf.getvalue()


@pytest.mark.parametrize("layout", ["primary", "extension"])
@pytest.mark.parametrize("key", sorted(_TWICE))
def test_repeated_scaling_keyword_with_two_values_is_refused(tmp_path, monkeypatch, key,
                                                             layout):
    """An image header with two BSCALE (BZERO, BLANK) cards of different values: astropy
    scales the pixels by the last and gives the first as the header's value (and says
    nothing), the fast reader took the first; which is meant cannot be told, so the image
    is refused (BAD_INPUT, naming the keyword and both values), as a file (plain, gzipped,
    over 16 MB) and as bytes (`parse_fits_bytes`, `read_fits_bytes`). Two cards of the same
    value read as one."""
    from astromorph._readers._fits import read_fits_bytes

    a, b = _TWICE[key]
    blob = _scaled_twice(key, (a, b), layout)
    if key != "BLANK":  # (astropy: the last scales, the first is the header's)
        with fits.open(io.BytesIO(blob)) as hdul:
            assert hdul[-1].data[0, 1] == (b if key == "BSCALE" else 1 + b)
        with fits.open(io.BytesIO(blob), do_not_scale_image_data=True) as hdul:
            assert hdul[-1].header[key] == a
    words = f"{key} is given 2 times, with different values ({a!r}, {b!r})"
    (tmp_path / "twice.fits").write_bytes(blob)
    (tmp_path / "twice.fits.gz").write_bytes(gzip.compress(blob))
    once = _scaled_twice(key, (a,), layout)
    for large in (False, True):
        if large:
            monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
        for name in ("twice.fits", "twice.fits.gz"):
            (stamp,) = read_file(tmp_path / name)
            assert stamp.flags == Flag.BAD_INPUT and words in stamp.reason[0], (name, stamp.reason)
    (stamp,) = read_fits_bytes(blob, source="cell")
    assert stamp.flags == Flag.BAD_INPUT and words in stamp.reason[0], stamp.reason
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_fits_bytes(blob)
    same = _scaled_twice(key, (a, a), layout)
    np.testing.assert_array_equal(parse_fits_bytes(same)[0], parse_fits_bytes(once)[0])
    (tmp_path / "same.fits").write_bytes(same)
    (stamp,) = read_file(tmp_path / "same.fits")
    assert stamp.flags == 0
    np.testing.assert_array_equal(stamp.data[0], parse_fits_bytes(once)[0])


@pytest.mark.parametrize("how", ["file", "gzip", "bytes"])
def test_truncated_primary_reason_is_worded_as_an_extensions(tmp_path, how):
    """A single-image FITS file cut short inside its data, read by the fast reader, said
    "cannot read FITS: truncated FITS data: 1000 of 16384 bytes present"; it now says what
    astropy's reader says of a truncated extension: the file, the HDU, the bytes of data its
    header gives and the bytes the file holds."""
    image = galaxy(64)
    fits.PrimaryHDU(image).writeto(tmp_path / "full.fits")
    blob = (tmp_path / "full.fits").read_bytes()[:2880 + 1000]
    name = "t.fits.gz" if how == "gzip" else "t.fits"
    (tmp_path / name).write_bytes(gzip.compress(blob) if how == "gzip" else blob)
    _assert_truncated(blob, tmp_path / name, how, "HDU 0", image.nbytes)


@pytest.mark.parametrize("how", ["file", "bytes"])
def test_primary_data_one_byte_short_is_truncated_and_unpadded_data_is_whole(tmp_path, how):
    """The boundary of the fast reader's truncation check: a single-image file that lacks
    only the last byte of its data is refused as truncated (with the bytes it holds), and
    one that holds all its data but not the padding to a whole 2880-byte block after it
    (as some writers leave it) is read whole."""
    image = galaxy(64)
    fits.PrimaryHDU(image).writeto(tmp_path / "full.fits")
    full = (tmp_path / "full.fits").read_bytes()
    short = full[:2880 + image.nbytes - 1]
    words = f"the header of HDU 0 gives {image.nbytes} bytes of data, the"
    if how == "bytes":
        with pytest.raises(ValueError) as info:
            parse_fits_bytes(short)
        assert str(info.value) == f"truncated FITS data: {words} bytes hold {image.nbytes - 1}"
        np.testing.assert_array_equal(parse_fits_bytes(full[:2880 + image.nbytes])[0], image)
        return
    (tmp_path / "short.fits").write_bytes(short)
    (stamp,) = read_file(tmp_path / "short.fits")
    assert stamp.flags == Flag.BAD_INPUT
    assert stamp.reason == [f"truncated FITS file short.fits: {words} file holds "
                            f"{image.nbytes - 1}"]
    (tmp_path / "unpadded.fits").write_bytes(full[:2880 + image.nbytes])
    (stamp,) = read_file(tmp_path / "unpadded.fits")
    assert not stamp.flags
    np.testing.assert_array_equal(stamp.data[0], image)


def _set_card(blob, key, value, *, hdu=0):
    """FITS bytes with the card ``key`` of the ``hdu``-th header rewritten to ``value``
    (the raw value field, e.g. ``"'abc'"``), as a broken writer would leave it."""
    blob, seen = bytearray(blob), -1
    for pos in range(0, len(blob), 80):
        card = bytes(blob[pos:pos + 8])
        if card in (b"SIMPLE  ", b"XTENSION"):
            seen += 1
        if seen == hdu and card == key.encode().ljust(8):
            blob[pos:pos + 80] = (key.encode().ljust(8) + b"= " + value.encode().rjust(20)).ljust(80)
            return bytes(blob)
    raise KeyError(key)


@pytest.mark.parametrize("key, value", [("BUNIT", "'unterminated"), ("BUNIT", "1.2.3e"),
                                        ("BAND", "1.2.3e"), ("INHERIT", "'x"),
                                        ("SATURATE", "1.2.3e")])
def test_unparsable_card_of_an_extension_is_read_as_the_fast_reader_reads_it(models, tmp_path,
                                                                             key, value):
    """A card whose value astropy cannot parse (a byte flipped in BUNIT, BAND...) in one HDU
    of a file of one image HDU per band: astropy's VerifyError used to escape predict_files
    (it parses cards when they are read, after the file's reading was guarded), losing the
    run. Now the card reads as the fast reader of single-HDU files reads it (the raw text),
    and the other files are scored too (a band of no known name flags MISSING_BAND)."""
    buf = io.BytesIO()
    planes = [galaxy(seed=s) for s in range(3)]
    fits.HDUList([fits.PrimaryHDU()] + [
        fits.ImageHDU(p, header=fits.Header([(key, "x"), ("BAND", b)]), name=b.upper())
        for p, b in zip(planes, "gri")]).writeto(buf)
    (tmp_path / "bands.fits").write_bytes(_set_card(buf.getvalue(), key, value, hdu=2))
    write_picture(tmp_path / "good.png", colour_picture())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstromorphWarning)
        table = astromorph.predict_files("morphology", tmp_path)
    assert len(table) == 2
    r = row(table, tmp_path / "bands.fits")
    if key == "BAND":  # bands of no known name (x, 1.2.3e, x): the first, as annotate takes
        assert r["morph_flags"] == 0 and "1.2.3e" in r["reason"], r["reason"]
        assert "no g, r, i band: band x scored alone (named more than once" in r["reason"], \
            r["reason"]
    else:
        assert r["morph_flags"] == 0 and not np.ma.is_masked(r["morph_p_red"]), r["reason"]
    assert row(table, tmp_path / "good.png")["morph_flags"] == 0


@pytest.mark.parametrize("key, value, words", [
    ("NAXIS", "999", "NAXIS = 999 but there is no NAXIS3 keyword"),
    ("NAXIS", "'two'", "NAXIS = 'two' is not a whole number"),
    ("NAXIS1", "'abc'", "NAXIS1 = 'abc' is not a whole number"),
    ("NAXIS1", "64.5", "NAXIS1 = 64.5 is not a whole number"),
    ("NAXIS1", "-64", "NAXIS1 = -64 is negative"),
    ("BITPIX", "12", "BITPIX = 12 is not a FITS pixel type"),
])
def test_malformed_header_reason_says_which_keyword(models, tmp_path, key, value, words):
    """A header keyword that gives the data's layout and holds nonsense used to give astropy's
    words as the reason ("'NAXIS3'", "unsupported operand type(s) for +: 'int' and 'str'",
    "[Errno 22] Invalid argument"), and a gzipped file with NAXIS1 = -64 hung fits.open for
    good: now the keyword, its value and what is wrong with it, in the file and HDU named,
    found before astropy is asked (files astropy has failed on first keep its exception)."""
    buf = io.BytesIO()
    fits.PrimaryHDU(galaxy(64)).writeto(buf)
    primary = _set_card(buf.getvalue(), key, value)
    (tmp_path / "primary.fits").write_bytes(primary)
    (tmp_path / "primary.fits.gz").write_bytes(gzip.compress(primary))
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(galaxy(64), name="SCI")]).writeto(buf)
    (tmp_path / "ext.fits").write_bytes(_set_card(buf.getvalue(), key, value, hdu=1))
    with pytest.warns(UnusableInputWarning, match=r"3 of 3.*malformed FITS header"):
        table = astromorph.predict_files("morphology", tmp_path)
    for name, hdu in (("primary.fits", "HDU 0 (primary)"), ("primary.fits.gz", "HDU 0 (primary)"),
                      ("ext.fits", "HDU 1, EXTNAME 'SCI'")):
        r = row(table, tmp_path / name)
        assert r["morph_flags"] == Flag.BAD_INPUT
        assert r["reason"].startswith(f"malformed FITS header in {name} {hdu}: {words}"), \
            r["reason"]
    # a file astropy reads first (larger than the fast reader's limit): astropy's exception,
    # type and words, follows the explanation
    if (key, value) != ("NAXIS1", "-64"):  # (a plain file: astropy raises, no hang)
        (stamp,) = _read_fits_astropy(tmp_path / "ext.fits", want_scale=False, triplet_hint=False)
        assert stamp.reason[0].startswith(f"malformed FITS header in ext.fits HDU 1, EXTNAME "
                                          f"'SCI': {words}") and "(astropy: " in stamp.reason[0]
    # a FITS stamp in bytes (alert cutouts, annotate_stamps cells): the same words, as the
    # ValueError its callers catch (astropy's KeyError/TypeError used to escape them)
    with pytest.raises(ValueError, match=f"malformed FITS header in HDU 0 \\(primary\\): {words}"
                       ".*astropy: "):
        parse_fits_bytes(primary)


def test_unexplained_astropy_error_keeps_its_type(tmp_path, monkeypatch):
    """An astropy failure the header check cannot explain says its exception type (a bare
    KeyError reads only as the key)."""
    from astropy.io import fits as _fits

    path = write_fits(tmp_path / "ok.fits", galaxy(64))

    def broken(*args, **kwargs):
        raise KeyError("SOMETHING")
    monkeypatch.setattr(_fits, "open", broken)
    (stamp,) = _read_fits_astropy(path, want_scale=False, triplet_hint=False)
    assert stamp.flags == Flag.BAD_INPUT
    assert stamp.reason == ["cannot read FITS: KeyError: 'SOMETHING'"]


def test_files_joined_one_after_the_other_are_refused_gzip_blocks_are_read(models, tmp_path):
    """A .fits.gz of two gzip members holding two FITS files (`cat a.fits.gz b.fits.gz`) used
    to be scored from the first file without a word, and the same files joined uncompressed
    were read as two band planes: which image is meant is unknown, so the row is flagged
    BAD_INPUT and says so. A single FITS file gzipped in several members (bgzip, pigz -i)
    used to read as truncated: it is one file, read whole, as gzip -d reads it."""
    first, second = io.BytesIO(), io.BytesIO()
    fits.PrimaryHDU(galaxy(64)).writeto(first)
    fits.PrimaryHDU(galaxy(64, seed=1) * 3).writeto(second)
    a, b = first.getvalue(), second.getvalue()
    (tmp_path / "one.fits").write_bytes(a)
    (tmp_path / "joined.fits.gz").write_bytes(gzip.compress(a) + gzip.compress(b))
    (tmp_path / "joined.fits").write_bytes(a + b)
    no_extend = fits.PrimaryHDU(galaxy(64))
    del no_extend.header["EXTEND"]
    buf = io.BytesIO()
    no_extend.writeto(buf)
    (tmp_path / "joined_noextend.fits").write_bytes(buf.getvalue() + b)
    (tmp_path / "blocks.fits.gz").write_bytes(gzip.compress(a[:5760]) + gzip.compress(a[5760:]))
    with pytest.warns(UnusableInputWarning, match="3 of 5"):
        table = astromorph.predict_files("morphology", tmp_path)
    for name, where in (("joined.fits.gz", f"byte {len(a)} of the uncompressed data"),
                        ("joined.fits", f"byte {len(a)},"),
                        ("joined_noextend.fits", f"byte {len(buf.getvalue())},")):
        r = row(table, tmp_path / name)
        assert r["morph_flags"] == Flag.BAD_INPUT and np.ma.is_masked(r["morph_p_red"])
        assert r["reason"].startswith("holds more than one FITS file") and where in r["reason"]
    one, blocks = row(table, tmp_path / "one.fits"), row(table, tmp_path / "blocks.fits.gz")
    assert blocks["morph_flags"] == one["morph_flags"] and blocks["reason"] == one["reason"]
    assert blocks["morph_p_red"] == pytest.approx(one["morph_p_red"], abs=1e-6)
    # a file too large for the fast reader goes to astropy, which reads all gzip members
    (stamp,) = _read_fits_astropy(tmp_path / "joined.fits.gz", want_scale=False,
                                  triplet_hint=False)
    assert stamp.flags == Flag.BAD_INPUT and "of the uncompressed data" in stamp.reason[0]
    # a FITS stamp in bytes gzipped in blocks is read whole too
    np.testing.assert_array_equal(parse_fits_bytes(gzip.compress(a[:5760]) + gzip.compress(a[5760:]))[0],
                                  parse_fits_bytes(a)[0])


# ----------------------------------------------------------------------------- radio
def test_stamp_one_pixel_across_is_refused_two_pixels_are_scored(models, tmp_path):
    """A stamp one pixel across along either axis is BAD_INPUT ("stamp is only WxH pixels",
    not scored); two pixels are enough to resample: scored, flagged EXTRAPOLATED."""
    rng = np.random.default_rng(0)
    shapes = [(1, 40), (40, 1), (2, 40), (40, 2)]
    for h, w in shapes:
        write_fits(tmp_path / f"s{h}x{w}.fits", rng.normal(0, 1, (h, w)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.predict_files("radio-morphology",
                                       [tmp_path / f"s{h}x{w}.fits" for h, w in shapes])
    flags = [int(f) for f in out["radio_flags"]]
    assert flags[:2] == [Flag.BAD_INPUT] * 2
    assert out["reason"][0] == "stamp is only 40x1 pixels"
    assert out["reason"][1] == "stamp is only 1x40 pixels"
    assert out["radio_p_FRI"].mask.tolist() == [True, True, False, False]
    for f, r, (h, w) in zip(flags[2:], out["reason"][2:], shapes[2:]):
        assert not f & Flag.unusable() and f & Flag.EXTRAPOLATED, (f, r)
        assert f"the {w}x{h} stamp spans" in r


def test_image_in_tiny_units_is_not_constant(models, tmp_path):
    """An image whose values span less than 1e-9 (fluxes in erg/s/cm2/A or Jy/beam scaled
    down) carries as much as the same image in larger units: not CONSTANT, the same flags
    and scores. (A stamp without a quantisation step has none: only equal values are one.)"""
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1.5e-4, (300, 300)).astype(np.float32)
    img[140:160, 140:160] += 0.01
    write_fits(tmp_path / "jy.fits", img)
    write_fits(tmp_path / "tiny.fits", img * np.float32(1e-12))
    table = quiet(astromorph.predict_files, "radio-morphology",
                  [tmp_path / "jy.fits", tmp_path / "tiny.fits"])
    assert np.ptp(img * np.float32(1e-12)) < 1e-9
    assert list(table["radio_flags"]) == [0, 0], list(table["reason"])
    np.testing.assert_allclose(table["radio_p_FRI"][1], table["radio_p_FRI"][0], rtol=1e-4)


def test_pixel_scales_a_few_parts_in_ten_thousand_apart_are_each_judged_by_their_own(
        models, tmp_path):
    """Files are scored in groups of one pixel scale: 128 px of 1.8" span the radio model's
    230.4" field, 128 px of 1.7996" do not (EXTRAPOLATED), read after the other or alone;
    neither spans the 540" FIRST field (EDGE, as `annotate` flags it)."""
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1.5e-4, (128, 128)).astype(np.float32)
    img[60:68, 60:68] += 0.01
    write_fits(tmp_path / "a.fits", img, scale=1.8)
    write_fits(tmp_path / "b.fits", img, scale=1.7996)
    both = quiet(astromorph.predict_files, "radio-morphology",
                 [tmp_path / "a.fits", tmp_path / "b.fits"])
    alone = quiet(astromorph.predict_files, "radio-morphology", tmp_path / "b.fits")
    assert list(both["radio_flags"]) == [Flag.EDGE, Flag.EDGE | Flag.EXTRAPOLATED] \
        == [Flag.EDGE, alone["radio_flags"][0]]
    assert both["reason"][1] == alone["reason"][0]
    assert "does not cover the model's 230.4\" field" in both["reason"][1]


def test_radio_inputs_and_pixel_scales(models, tmp_path):
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1.5e-4, (300, 300)).astype(np.float32)
    img[140:160, 140:160] += 0.01
    write_fits(tmp_path / "first.fits", img)                  # FIRST grid, no WCS: fine
    coarse = rng.normal(0, 1.5e-4, (170, 170)).astype(np.float32)
    coarse[80:90, 80:90] += 0.01
    write_fits(tmp_path / "coarse.fits", coarse, scale=3.4)    # resampled by its WCS
    write_fits(tmp_path / "nowcs.fits", img[90:210, 90:210])  # other size, no WCS
    write_picture(tmp_path / "dataset.png", _radio_pre.first_cutout_to_uint8(img))
    # the same sky scaled without the data-set's 3-sigma threshold: half the field is grey
    write_picture(tmp_path / "unclipped.png", (img / img.max() * 255).clip(0, 255))
    write_fits(tmp_path / "cube.fits", np.stack([img, img, img]))
    table = quiet(astromorph.predict_files, "radio-morphology", tmp_path)
    assert table.colnames[1:5] == ["radio_p_FRI", "radio_p_FRII", "radio_p_compact",
                                   "radio_p_bent"]
    assert row(table, tmp_path / "first.fits")["radio_flags"] == 0
    assert row(table, tmp_path / "coarse.fits")["radio_flags"] == 0
    assert row(table, tmp_path / "dataset.png")["radio_flags"] == 0
    assert row(table, tmp_path / "unclipped.png")["radio_flags"] == Flag.OUT_OF_DISTRIBUTION
    nowcs = row(table, tmp_path / "nowcs.fits")
    # 120 pixels at the assumed 1.8": 216", short of the network's 230" field, and of the
    # FIRST field (540"): EDGE, as `annotate` flags a source whose field runs off its image
    assert nowcs["radio_flags"] == Flag.NO_WCS | Flag.EXTRAPOLATED | Flag.EDGE
    assert "120x120" in nowcs["reason"] and "FIRST field" in nowcs["reason"]
    assert ('the 120x120 stamp spans 216" x 216" and does not cover the model\'s 230.4" '
            'field: 93.8% x 93.8% of it') in nowcs["reason"], nowcs["reason"]
    assert not np.ma.is_masked(nowcs["radio_p_FRI"])
    assert row(table, tmp_path / "cube.fits")["radio_flags"] == Flag.BAD_INPUT


def test_radio_degenerate_axes_squeezed(models, tmp_path):
    img = np.random.default_rng(2).normal(0, 1e-4, (1, 1, 300, 300)).astype(np.float32)
    img[..., 148:153, 148:153] += 5e-3  # a source, else the stamp is NO_SOURCE
    write_fits(tmp_path / "vlass.fits", img)
    table = astromorph.predict_files("radio-morphology", tmp_path / "vlass.fits")
    assert table["radio_flags"][0] == 0


# ----------------------------------------------------------------------------- triplets (FITS)
def _reader_waits(thread):
    """Whether ``thread`` is blocked in a `threading.Condition` wait (a full read-ahead)."""
    frame = sys._current_frames().get(thread.ident) if thread is not None else None
    return (frame is not None and frame.f_code.co_name == "wait"
            and frame.f_code.co_filename.endswith("threading.py"))


@pytest.mark.parametrize("budget_files", [3.5, 0.5])
def test_read_ahead_is_bounded_in_bytes(models, tmp_path, monkeypatch, budget_files):
    """The reader thread of predict_files holds at most the byte budget of stamps queued (or
    one file, when a file is bigger) plus the file in hand, however many files it may queue:
    big stamps no longer pile up `_READ_AHEAD` (256) files ahead of the model. Every file is
    still read, in order, and the table is the one read with no byte bound."""
    import threading

    from astromorph import _predict

    n, size = 12, 200
    img = np.random.default_rng(3).normal(0, 1e-3, (size, size)).astype(np.float32)
    paths = [write_fits(tmp_path / f"c{i:02d}.fits", img + i * 1e-4, scale=1.8)
             for i in range(n)]
    one_file = img.nbytes
    budget = int(budget_files * one_file)
    monkeypatch.setattr(_predict, "_READ_AHEAD_BYTES", budget, raising=False)
    read_sizes, consumed, outstanding = [], [0], []
    lock = threading.Lock()

    def counting_read_file(path, **kwargs):  # runs in the reader thread
        stamps = read_file(path, **kwargs)
        with lock:
            read_sizes.append(sum(s.data.nbytes for s in stamps if s.data is not None))
            outstanding.append(sum(read_sizes[consumed[0]:]))  # queued + the one in hand
        return stamps

    monkeypatch.setattr(_predict, "read_file", counting_read_file)
    model = astromorph.load_model("radio-morphology")
    stream = _predict._read_all(paths, "radio", model.card)
    got = [next(stream)]
    reader = next((t for t in threading.enumerate() if t.name == "astromorph-reader"), None)
    # hold the first file until the reader has read everything or waits for room
    while len(read_sizes) < n and not _reader_waits(reader):
        reader.join(0.005)
    with lock:
        consumed[0] = 1
        ahead = sum(read_sizes[1:])  # queued + in hand while the model holds the first file
    for stamps in stream:
        got.append(stamps)
        with lock:
            consumed[0] += 1
    assert [s[0].source for s in got] == [str(p) for p in paths]
    assert read_sizes == [one_file] * n
    bound = max(budget, one_file) + one_file
    assert ahead <= bound, (ahead / one_file, bound / one_file)
    # later, a file handed out may be counted as consumed only after the reader's next read
    assert max(outstanding) <= bound + one_file, (max(outstanding) / one_file, bound / one_file)

    monkeypatch.setattr(_predict, "read_file", read_file)
    bounded = quiet(astromorph.predict_files, model, paths, batch_size=5)
    monkeypatch.setattr(_predict, "_READ_AHEAD_BYTES", 2**62)
    unbounded = quiet(astromorph.predict_files, model, paths, batch_size=5)
    assert (bounded.pformat(max_lines=-1, max_width=-1)
            == unbounded.pformat(max_lines=-1, max_width=-1))
    for name in bounded.colnames:
        assert np.array_equal(bounded[name], unbounded[name]), name


@pytest.mark.parametrize("budget_files, extra_bytes, queued", [(3, 0, 3), (3, -1, 2)])
def test_read_ahead_byte_budget_is_inclusive(models, tmp_path, monkeypatch, budget_files,
                                             extra_bytes, queued):
    """`_READ_AHEAD_BYTES` is what may be queued: a budget of exactly three files' stamp bytes
    queues three files behind the one the model holds (the reader then holds a fourth, read,
    waiting for room), and one byte less queues two."""
    import threading

    from astromorph import _predict

    n, size = 8, 64
    img = np.random.default_rng(3).normal(0, 1e-3, (size, size)).astype(np.float32)
    paths = [write_fits(tmp_path / f"c{i:02d}.fits", img, scale=1.8) for i in range(n)]
    one_file = img.nbytes
    monkeypatch.setattr(_predict, "_READ_AHEAD_BYTES", budget_files * one_file + extra_bytes)
    read_sizes = []
    lock = threading.Lock()

    def counting_read_file(path, **kwargs):  # runs in the reader thread
        stamps = read_file(path, **kwargs)
        with lock:
            read_sizes.append(sum(s.data.nbytes for s in stamps if s.data is not None))
        return stamps

    monkeypatch.setattr(_predict, "read_file", counting_read_file)
    stream = _predict._read_all(paths, "radio", astromorph.load_model("radio-morphology").card)
    first = next(stream)  # held: the reader fills the queue behind it, then waits
    reader = next(t for t in threading.enumerate() if t.name == "astromorph-reader")
    # it can read no further than the held file, the queued ones and one in hand: wait for
    # that many reads (or a reader stuck short of them, past a generous deadline)
    deadline = time.monotonic() + 30
    while len(read_sizes) < 2 + queued and time.monotonic() < deadline:
        reader.join(0.005)
    while not _reader_waits(reader) and time.monotonic() < deadline:
        reader.join(0.005)
    assert _reader_waits(reader)
    with lock:
        assert read_sizes == [one_file] * (2 + queued), len(read_sizes)
    rest = list(stream)
    assert [s[0].source for s in [first, *rest]] == [str(p) for p in paths]


def test_triplet_fits_layouts(models, tmp_path):
    t = triplet()
    write_fits(tmp_path / "cube.fits", t)
    write_mef(tmp_path / "shuffled.fits", [t[2], t[0], t[1]],
              ["DIFFERENCE", "SCIENCE", "TEMPLATE"])
    write_mef(tmp_path / "nodiff.fits", [t[0], t[1]], ["SCIENCE", "REFERENCE"])
    write_mef(tmp_path / "shapes.fits", [t[0], t[1], t[2][:50, :50]],
              ["SCIENCE", "REFERENCE", "DIFFERENCE"])
    write_fits(tmp_path / "two.fits", t[:2])
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    cube = row(table, tmp_path / "cube.fits")
    assert cube["rb_flags"] == 0
    assert row(table, tmp_path / "shuffled.fits")["rb_score"] == pytest.approx(cube["rb_score"])
    nodiff = row(table, tmp_path / "nodiff.fits")
    assert nodiff["rb_flags"] == Flag.MISSING_BAND and "difference" in nodiff["reason"]
    assert np.ma.is_masked(nodiff["rb_score"])
    assert row(table, tmp_path / "shapes.fits")["rb_flags"] == Flag.BAD_INPUT
    assert row(table, tmp_path / "two.fits")["rb_flags"] == Flag.MISSING_BAND


def test_band_named_planes_are_no_silent_triplet(models, tmp_path):
    """A cube whose planes are named as bands (BAND1..3 = g, r, r) used to be read as a
    science/reference/difference triplet without a word. Planes of different bands are a
    multi-band image, never a triplet (whose images are of one band): BAD_INPUT, as a colour
    picture is. Names that say no member and no second band (r, r, r; unknown words) are
    read in the documented order, with the AmbiguousInputWarning unnamed optical cubes get.
    For morphology, a band named twice among g, r, i is read from its first plane, warned."""
    t = triplet()
    write_fits(tmp_path / "plain.fits", t)
    write_fits(tmp_path / "grr.fits", t, BAND1="g", BAND2="r", BAND3="r")
    write_mef(tmp_path / "gri_mef.fits", list(t), ["SDSS g", "SDSS r", "SDSS i"], key="FILTER")
    write_fits(tmp_path / "rrr.fits", t, FILTER1="r", FILTER2="r", FILTER3="r")
    write_fits(tmp_path / "words.fits", t, BAND1="foo", BAND2="bar", BAND3="baz")
    with pytest.warns(AmbiguousInputWarning, match=r"2 stamp\(s\) read by assumption .*"
                      "none SCIENCE, REFERENCE or DIFFERENCE.*name the planes"):
        table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    plain = row(table, tmp_path / "plain.fits")
    assert plain["rb_flags"] == 0
    for name, shown in (("grr.fits", "g, r, r"), ("gri_mef.fits", "g, r, i")):
        r = row(table, tmp_path / name)
        assert r["rb_flags"] == Flag.BAD_INPUT and np.ma.is_masked(r["rb_score"])
        assert r["reason"].startswith(f"planes named as bands {shown}: real-bogus needs "
                                      "science, reference and difference images of one band")
    for name in ("rrr.fits", "words.fits"):
        assert row(table, tmp_path / name)["rb_score"] == pytest.approx(plain["rb_score"])
    with warnings.catch_warnings():  # unnamed planes: the documented order, no warning
        warnings.simplefilter("error", AmbiguousInputWarning)
        astromorph.predict_files("real-bogus", tmp_path / "plain.fits")
    g, r, i = galaxy(seed=1), galaxy(seed=2) * 1.5, galaxy(seed=3) * 2
    write_fits(tmp_path / "gri.fits", np.stack([g, r, i]), BAND1="g", BAND2="r", BAND3="i")
    write_fits(tmp_path / "grri.fits", np.stack([g, r, g * 9, i]), BAND1="g", BAND2="r",
               BAND3="r", BAND4="i")
    with pytest.warns(AmbiguousInputWarning, match="r named more than once, the first plane"):
        table = astromorph.predict_files("morphology", [tmp_path / "gri.fits",
                                                        tmp_path / "grri.fits"])
    assert table["morph_p_red"][1] == pytest.approx(table["morph_p_red"][0], abs=1e-6)


def test_triplet_pixel_scale_and_no_wcs(models, tmp_path):
    t = triplet(51)
    write_fits(tmp_path / "des_wcs.fits", t, scale=0.27)
    write_fits(tmp_path / "des_nowcs.fits", t)
    table = astromorph.predict_files("real-bogus", tmp_path)
    wcs = row(table, tmp_path / "des_wcs.fits")
    # 51 x 0.27" covers a fraction of the 63" field: the rest is filled, EXTRAPOLATED's
    # to report, not BLANK's (only pixels of the data count)
    assert wcs["rb_flags"] == Flag.EXTRAPOLATED
    # the fill is the area outside the stamp, not NaN pixels of it: one reason, not "0% NaN"
    assert "does not cover" in wcs["reason"] and "NaN" not in wcs["reason"]
    # and says how much of it: 51 x 0.27" = 13.8", 21.9% of the field along each axis
    # (0.05 of its area, as resample_triplet measures it)
    assert ('the 51x51 stamp spans 13.8" x 13.8" and does not cover the model\'s 63" '
            'field: 21.9% x 21.9% of it') in wcs["reason"], wcs["reason"]
    nowcs = row(table, tmp_path / "des_nowcs.fits")
    assert nowcs["rb_flags"] & Flag.NO_WCS and "51x51" in nowcs["reason"]


def test_blank_counts_the_pixels_of_a_resampled_triplet_not_the_uncovered_field(models,
                                                                               tmp_path):
    """`Flag.BLANK` of a triplet resampled from a stamp that does not cover the model's 63"
    field counts only the part of the field that the stamp covers (the documented "only
    pixels of the data count"): the rest, NaN after resampling, is EXTRAPOLATED's to report.
    A clean 30 x 30 cutout of 0.2"/px (Rubin's default: 6", 9.52% of the field along each
    axis) was BLANK | EXTRAPOLATED with no BLANK reason of its own; it is EXTRAPOLATED only.
    One whose own pixels are half NaN is still BLANK, with the NaN fraction as its reason;
    ZTF-native 63 x 63 stamps are judged as before (all 3969 pixels)."""
    pytest.importorskip("fastavro")
    t = triplet(30)
    half = t.copy()
    half[:, :, :15] = np.nan  # half of each member's own pixels
    few = t.copy()
    few[0, :2, :] = np.nan  # 2 rows of 30 of the science cutout: 6.7% of its pixels
    write_fits(tmp_path / "clean.fits", t, scale=0.2)
    write_fits(tmp_path / "half.fits", half, scale=0.2)
    write_fits(tmp_path / "few.fits", few, scale=0.2)
    ztf = triplet(63)
    ztf_blank = ztf.copy()
    ztf_blank[1, :4] = np.nan  # 4 rows of 63 of the reference: 6.3% of its pixels
    write_fits(tmp_path / "ztf.fits", ztf)
    write_fits(tmp_path / "ztf_blank.fits", ztf_blank)
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    clean = row(table, tmp_path / "clean.fits")
    assert clean["rb_flags"] == Flag.EXTRAPOLATED, clean["reason"]
    assert "does not cover" in clean["reason"] and "NaN" not in clean["reason"]
    halfrow = row(table, tmp_path / "half.fits")
    assert halfrow["rb_flags"] == Flag.EXTRAPOLATED | Flag.BLANK
    assert ("50% of the science stamp's pixels within the model's field (resampled to its "
            "1\"/pixel grid) are NaN/inf/BLANK (filled)") in halfrow["reason"]
    assert row(table, tmp_path / "few.fits")["rb_flags"] == Flag.EXTRAPOLATED | Flag.BLANK
    assert row(table, tmp_path / "ztf.fits")["rb_flags"] == 0
    assert row(table, tmp_path / "ztf_blank.fits")["rb_flags"] == Flag.BLANK
    # the same through a Rubin packet, its WCS placing the source off the middle pixel
    c = (14.3, 14.6)
    write_avro(tmp_path / "rubin.avro", [rubin_alert(1, t, centre=c),
                                         rubin_alert(2, half, centre=c)], schema=RUBIN_SCHEMA)
    rubin = quiet(astromorph.predict_files, "real-bogus", tmp_path / "rubin.avro")
    assert [int(f) for f in rubin["rb_flags"]] == [Flag.EXTRAPOLATED,
                                                   Flag.EXTRAPOLATED | Flag.BLANK]
    assert "NaN" not in rubin["reason"][0]
    assert "50% of the science stamp's pixels within the model's field" in rubin["reason"][1]


def test_blank_reason_of_a_resampled_triplet_states_the_flags_measure(models, tmp_path):
    """The BLANK reason of a triplet resampled to the model's grid quotes the fraction that
    the flag was judged on: invalid pixels among the model-grid pixels that the stamp covers
    within the model's field, not among the stamp's own pixels. A 30 x 30 cutout at 0.2"/px
    with 2 NaN rows of science (6.7% of its pixels) covers 6 x 6 model pixels, of which the
    NaN rows spoil 1 row (17%): it is BLANK and said 17%, where it was said "7%" (under the
    5% threshold the flag is not even judged on). A stamp larger than the field (80 x 80 at
    1"/px) with NaN only outside the field is not BLANK and has no blank reason; with NaN
    inside, the reason gives the fraction of the field, not of the whole stamp."""
    t = triplet(30)
    few = t.copy()
    few[0, :2, :] = np.nan  # 2 rows of 30 of the science cutout: 6.7% of its pixels
    write_fits(tmp_path / "few.fits", few, scale=0.2)
    big = triplet(80)
    outside = big.copy()
    outside[0, :9, :] = np.nan  # rows 0-8: outside the 63 x 63 field about pixel 40 (9-71)
    inside = big.copy()
    inside[2, 9:17, :] = np.nan  # 8 rows of the field, 63 x 8 of its 3969 pixels (12.7%);
    # 640 of the stamp's 6400 pixels (10%)
    write_fits(tmp_path / "outside.fits", outside, scale=1.0)
    write_fits(tmp_path / "inside.fits", inside, scale=1.0)
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    words = "of the science stamp's pixels within the model's field"
    r = row(table, tmp_path / "few.fits")
    assert r["rb_flags"] == Flag.EXTRAPOLATED | Flag.BLANK
    assert f"17% {words}" in r["reason"] and "7% of the pixels" not in r["reason"], r["reason"]
    assert r["reason"].count("NaN/inf/BLANK") == 1
    r = row(table, tmp_path / "outside.fits")
    assert r["rb_flags"] == 0 and "NaN" not in r["reason"], r["reason"]
    r = row(table, tmp_path / "inside.fits")
    assert r["rb_flags"] == Flag.BLANK
    assert "13% of the difference stamp's pixels within the model's field" in r["reason"], \
        r["reason"]
    assert "10%" not in r["reason"]


def test_blank_reasons_of_optical_and_radio_stamps_state_the_flags_measure(tmp_path):
    """The optical and radio families judge `Flag.BLANK` on the input stamp's own pixels,
    as their reasons count them; a stamp of several bands is judged on all of them together
    (`_clean`), and its reason says so: g and r each 10.4% NaN, i clean, is 6.9% of the
    pixels together (BLANK), where the reason said "10% of the pixels of the band g"; g
    alone 10.4% NaN is 3.5% together: not BLANK, no reason. A radio image resampled from
    3"/px is judged on its own pixels (6% NaN: BLANK, and said 6%; 4%: neither)."""
    g, r, i = galaxy(seed=1), galaxy(seed=2) * 1.5, galaxy(seed=3) * 2
    two = np.stack([g, r, i])
    two[:2, :20] = np.nan  # 20 of 192 rows of g and r: 10.4% of each, 6.9% of the three
    one = np.stack([g, r, i])
    one[0, :20] = np.nan  # 3.5% of the three
    single = g.copy()
    single[:20] = np.nan
    bands = dict(BAND1="g", BAND2="r", BAND3="i")
    write_fits(tmp_path / "two.fits", two, scale=0.396, **bands)
    write_fits(tmp_path / "one.fits", one, scale=0.396, **bands)
    write_fits(tmp_path / "single.fits", single, scale=0.396)
    table = quiet(astromorph.predict_files, "morphology", sorted(tmp_path.glob("*.fits")))
    r2 = row(table, tmp_path / "two.fits")
    assert r2["morph_flags"] & Flag.BLANK
    assert r2["reason"].startswith(
        "7% of the pixels of the 3 bands together are NaN/inf/BLANK (filled)"), r2["reason"]
    r1 = row(table, tmp_path / "one.fits")
    assert not r1["morph_flags"] & Flag.BLANK and "NaN" not in r1["reason"]
    r0 = row(table, tmp_path / "single.fits")
    assert r0["reason"].startswith("10% of the pixels are NaN/inf/BLANK (filled)")
    if "radio-morphology" not in astromorph.list_models():
        return
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1.5e-4, (300, 300))
    image[145:155, 140:160] += 0.01
    paths = []
    for name, nrows in (("six", 18), ("four", 12)):  # 6% and 4% of the 300 rows
        blank = image.copy()
        blank[:nrows] = np.nan
        paths.append(write_fits(tmp_path / f"radio_{name}.fit", blank, scale=3.0))
    rad = quiet(astromorph.predict_files, "radio-morphology", paths)
    six, four = row(rad, paths[0]), row(rad, paths[1])
    assert six["radio_flags"] & Flag.BLANK
    assert six["reason"].startswith("6% of the pixels are NaN/inf/BLANK (filled)"), \
        six["reason"]
    assert not four["radio_flags"] & Flag.BLANK and "NaN" not in four["reason"]


def test_non_square_stamps_short_of_the_field_say_so_per_axis(models, tmp_path):
    """A triplet or radio image whose WCS gives pixels that are not square and that does not
    cover the model's field is flagged EXTRAPOLATED with words for each axis: the words took
    one pixel scale and raised a TypeError for the pair, ending the whole call."""
    t = triplet(51)
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=26, CRPIX2=26, CRVAL1=10.0,
             CRVAL2=20.0, CDELT1=-0.27 / 3600, CDELT2=0.4 / 3600)
    fits.PrimaryHDU(t, header=h).writeto(tmp_path / "oblong.fits")
    rng = np.random.default_rng(5)
    img = rng.normal(0, 1.5e-4, (120, 120)).astype(np.float32)
    img[55:65, 55:65] += 0.01
    h.update(CRPIX1=60, CRPIX2=60, CDELT1=-1.8 / 3600, CDELT2=1.2 / 3600)
    fits.PrimaryHDU(img, header=h).writeto(tmp_path / "radio.fits")
    rb = quiet(astromorph.predict_files, "real-bogus", tmp_path / "oblong.fits")[0]
    assert rb["rb_flags"] & Flag.EXTRAPOLATED and not np.ma.is_masked(rb["rb_score"])
    # 51 x 0.27" = 13.8" across, 51 x 0.4" = 20.4" down
    assert ('the 51x51 stamp spans 13.8" x 20.4" and does not cover the model\'s 63" '
            'field: 21.9% x 32.4% of it') in rb["reason"], rb["reason"]
    radio = quiet(astromorph.predict_files, "radio-morphology", tmp_path / "radio.fits")[0]
    assert radio["radio_flags"] & Flag.EXTRAPOLATED
    # 120 x 1.8" = 216" across, 120 x 1.2" = 144" down, of the 230.4" field
    assert ('the 120x120 stamp spans 216" x 144" and does not cover the model\'s 230.4" '
            'field: 93.8% x 62.5% of it') in radio["reason"], radio["reason"]


def test_bad_templates(models, tmp_path):
    t = triplet()
    neg, zero = t.copy(), t.copy()
    neg[1] = -np.abs(neg[1]) - 1
    zero[1] = 0
    write_fits(tmp_path / "neg.fits", neg)
    write_fits(tmp_path / "zero.fits", zero)
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    neg_row = row(table, tmp_path / "neg.fits")
    assert neg_row["rb_flags"] == Flag.BAD_INPUT and "no positive pixel" in neg_row["reason"]
    zero_row = row(table, tmp_path / "zero.fits")
    assert zero_row["rb_flags"] == Flag.CONSTANT
    assert "reference stamp is all zero" in zero_row["reason"]


def test_template_check_ignores_masking_sentinels(models, tmp_path):
    # masking sentinels (|value| >= 1e30) are blank pixels, not template values: a +1e30
    # pixel does not make a negative template usable, ZTF's -3.4e38 does not make an
    # all-zero one a template "without a positive pixel (max 0)"
    t = triplet()
    neg, zero = t.copy(), t.copy()
    neg[1] = -np.abs(neg[1]) - 1
    neg[1, :3] = 1e30
    zero[1] = 0
    zero[1, :3] = -3.4e38
    write_fits(tmp_path / "neg.fits", neg)
    write_fits(tmp_path / "zero.fits", zero)
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    neg_row = row(table, tmp_path / "neg.fits")
    assert neg_row["rb_flags"] == Flag.BAD_INPUT, neg_row["reason"]
    assert "no positive pixel (max -" in neg_row["reason"]
    zero_row = row(table, tmp_path / "zero.fits")
    assert zero_row["rb_flags"] == Flag.CONSTANT, zero_row["reason"]
    assert "reference stamp is all zero" in zero_row["reason"]


def test_triplet_stamp_without_valid_pixel_is_not_scored(models, tmp_path):
    """A triplet member with no valid pixel (all NaN, or all ZTF's -3.4e38 mask value)
    carries no information: BAD_INPUT (as well as BLANK), the score masked (never a number
    above the threshold), and the reason names it; no RuntimeWarning from all-NaN reductions."""
    t = triplet()
    blank, masked = t.copy(), t.copy()
    blank[1] = np.nan
    masked[0] = -3.4e38
    write_fits(tmp_path / "blank.fits", blank)
    write_fits(tmp_path / "masked.fits", masked)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    for name, member in (("blank", "reference"), ("masked", "science")):
        r = row(table, tmp_path / f"{name}.fits")
        assert r["rb_flags"] == Flag.BLANK | Flag.BAD_INPUT, name
        assert f"{member} stamp has no finite pixel: not scored" in r["reason"], r["reason"]
        assert np.ma.is_masked(r["rb_score"])
    assert len(table) == 2


def test_colour_picture_cannot_feed_triplet_model(models, tmp_path):
    write_picture(tmp_path / "a.png", colour_picture())
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "a.png")
    assert table["rb_flags"][0] == Flag.BAD_INPUT and "colour" in table["reason"][0]


# ----------------------------------------------------------------------------- alert packets
def test_ztf_packets(models, tmp_path):
    pytest.importorskip("fastavro")
    good = [ztf_alert(1000 + i) for i in range(3)]
    write_avro(tmp_path / "many.avro", good)                         # 3 alerts in one file
    write_avro(tmp_path / "deflate.avro", [ztf_alert(2000)], codec="deflate")
    write_avro(tmp_path / "notmpl.avro", [ztf_alert(3000, drop=("cutoutTemplate",))])
    write_avro(tmp_path / "none.avro", [ztf_alert(4000, drop=(
        "cutoutScience", "cutoutTemplate", "cutoutDifference"))])
    corrupt = {"cutoutDifference": gzip.compress(b"x" * 5000)[:100]}
    write_avro(tmp_path / "corrupt.avro", [ztf_alert(5000, raw=corrupt)])
    write_avro(tmp_path / "trunc.avro", [ztf_alert(6000)])
    data = (tmp_path / "trunc.avro").read_bytes()
    (tmp_path / "trunc.avro").write_bytes(data[:len(data) - 3000])
    nan = triplet(seed=7)
    nan[2, :20] = np.nan
    write_avro(tmp_path / "nan.avro", [ztf_alert(7000, nan)])
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    assert len(table) == 9
    for i in range(3):
        assert row(table, 1000 + i)["rb_flags"] == 0
    assert row(table, 2000)["rb_flags"] == 0
    r = row(table, 3000)
    assert r["rb_flags"] == Flag.MISSING_BAND and "lacks cutoutTemplate" in r["reason"]
    r = row(table, 4000)
    assert r["rb_flags"] == Flag.MISSING_BAND and "no cutouts" in r["reason"]
    r = row(table, 5000)
    assert r["rb_flags"] == Flag.BAD_INPUT and "cutoutDifference" in r["reason"]
    r = row(table, tmp_path / "trunc.avro")
    assert r["rb_flags"] == Flag.BAD_INPUT and "Avro" in r["reason"]
    r = row(table, 7000)
    assert r["rb_flags"] == Flag.BLANK and "difference stamp" in r["reason"]


def test_alert_record_that_cannot_be_interpreted_flags_only_itself(models, tmp_path,
                                                                    monkeypatch):
    """An error while interpreting one decoded record is reported as such on its row; it is
    not "corrupt or truncated Avro" and the records after it are still scored."""
    pytest.importorskip("fastavro")
    from astromorph._readers import _alerts

    write_avro(tmp_path / "many.avro", [ztf_alert(1000 + i) for i in range(3)])
    real = _alerts._ztf_stamp

    def picky(path, i, rec):
        if rec["candid"] == 1001:
            raise TypeError("candidate is a list")  # e.g. a field of an unexpected type
        return real(path, i, rec)

    monkeypatch.setattr(_alerts, "_ztf_stamp", picky)
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "many.avro")
    assert len(table) == 3
    assert table["rb_flags"][0] == 0 and table["rb_flags"][2] == 0
    assert table["rb_flags"][1] == Flag.BAD_INPUT
    assert "cannot be interpreted (TypeError: candidate is a list)" in table["reason"][1]
    assert "corrupt" not in table["reason"][1]

    # a genuine bug (not a content error) is not hidden behind a flag
    monkeypatch.setattr(_alerts, "_ztf_stamp", lambda *a: undefined_name)  # noqa: F821
    with pytest.raises(NameError):
        astromorph.predict_files("real-bogus", tmp_path / "many.avro", progress=False)


def test_ztf_difference_orientation(tmp_path):
    pytest.importorskip("fastavro")
    t = triplet()
    t_f = t.copy()
    t_f[2] = -t_f[2]  # as stored by a (mislabelled) sci-minus-ref packet with isdiffpos 'f'
    write_avro(tmp_path / "a.avro", [
        ztf_alert(1, t, isdiffpos="t"),
        ztf_alert(2, t, isdiffpos="f"),  # file *_refmsci: stored positive already
        ztf_alert(3, t_f, isdiffpos="f", diffname="candid3_pid3_scimref.fits.gz"),
        ztf_alert(4, t_f, isdiffpos="t", diffname="candid4_pid4_refmsci.fits.gz"),
        ztf_alert(5, t, isdiffpos=""),  # no sign given: nothing contradicts the file name
        ztf_alert(6, t_f, isdiffpos="0", diffname="candid6_pid6_scimref.fits.gz")])  # 0 = f
    stamps = read_file(tmp_path / "a.avro")
    assert len(stamps) == 6
    for s in stamps:
        np.testing.assert_allclose(s.data, t)
        assert s.data[2, 31, 31] > 0


def test_ztf_edge_cutouts_are_padded(models, tmp_path):
    pytest.importorskip("fastavro")
    t = triplet()[:, :, 10:]  # 63 x 53: cut at the left CCD edge
    write_avro(tmp_path / "edge.avro", [ztf_alert(9, t, xpos=20.0)])
    (stamp,) = read_file(tmp_path / "edge.avro")
    assert stamp.data.shape == (3, 63, 63) and stamp.flags == Flag.EDGE
    assert np.isnan(stamp.data[:, :, :10]).all()
    np.testing.assert_allclose(stamp.data[:, :, 10:], t)
    table = astromorph.predict_files("real-bogus", tmp_path / "edge.avro")
    # the NaN padding is the edge's: BLANK is for invalid pixels of the cutouts themselves
    assert table["rb_flags"][0] == Flag.EDGE and "CCD edge" in table["reason"][0]


def test_ztf_edge_cutout_padding_side_at_the_last_pixels_near_an_edge(tmp_path):
    """The side on which an edge cutout is padded, at the boundary: a candidate at 1-based
    pixel 31 (0-based 30) lies 30 pixels from the quadrant's first, so its 63-pixel cutout
    lost 1 pixel before it (62 wide: padded at the start); at 3042 of 3072 (0-based 3041,
    30 pixels from the last, 3071) it lost 1 after it (padded at the end). No note: the
    side is known. Where it is not (the cutout is cut but the candidate 31 pixels from both
    edges), the reason says so."""
    from astromorph._readers._alerts import read_alerts

    pytest.importorskip("fastavro")
    t = triplet()
    write_avro(tmp_path / "edge.avro", [ztf_alert(1, t[:, :, 1:], xpos=31.0),
                                        ztf_alert(2, t[:, :, :-1], xpos=3042.0),
                                        ztf_alert(3, t[:, 1:, :], ypos=31.0),
                                        ztf_alert(4, t[:, :, :-1], xpos=3041.0),
                                        ztf_alert(5, t[:, :, 1:], xpos=32.0)])
    first, last, low, inside, inside_low = read_alerts(tmp_path / "edge.avro")
    # 0-based 3040 is 31 pixels from the last: its cutout is whole, so this one's xpos does
    # not say which side was cut, and the reason says what was assumed; so for 0-based 31,
    # 31 pixels from the first
    assert inside.flags == Flag.EDGE
    assert "xpos 3041 is more than 31 pixels from both edges" in inside.reason[0]
    assert inside_low.flags == Flag.EDGE
    assert "xpos 32 is more than 31 pixels from both edges" in inside_low.reason[0]
    assert np.isnan(inside_low.data[:, :, 62]).all()
    for stamp in (first, last, low):
        assert stamp.flags == Flag.EDGE and stamp.data.shape == (3, 63, 63), stamp.reason
        assert "taken at the end" not in stamp.reason[0], stamp.reason
    assert np.isnan(first.data[:, :, 0]).all()
    np.testing.assert_array_equal(first.data[:2, :, 1:], t[:2, :, 1:])
    assert np.isnan(last.data[:, :, 62]).all()
    np.testing.assert_array_equal(last.data[:2, :, :62], t[:2, :, :62])
    assert np.isnan(low.data[:, 0, :]).all()
    np.testing.assert_array_equal(low.data[:2, 1:, :], t[:2, 1:, :])


def test_ztf_edge_cutouts_with_blank_pixels_are_blank(models, tmp_path):
    """BLANK of a padded edge cutout counts the cutout's own invalid pixels (the largest
    fraction of the three), not the padding, and says so once."""
    pytest.importorskip("fastavro")
    t = triplet()[:, :, 10:]  # 63 x 53
    holed = t.copy()
    holed[1, :10, :] = np.nan  # 530 of 3,339 reference pixels (16 %)
    few = t.copy()
    few[0, :2, :] = np.nan  # 106 pixels (3 %): under the threshold
    write_avro(tmp_path / "edge.avro", [ztf_alert(9, holed, xpos=20.0),
                                        ztf_alert(10, few, xpos=20.0)])
    table = astromorph.predict_files("real-bogus", tmp_path / "edge.avro")
    assert table["rb_flags"].tolist() == [Flag.EDGE | Flag.BLANK, Flag.EDGE]
    assert "16% of the pixels of the reference cutout" in table["reason"][0]
    assert table["reason"][0].count("NaN/inf/BLANK") == 1
    assert not np.ma.is_masked(table["rb_score"][0])


@pytest.mark.parametrize("edge", ["left", "right", "bottom", "top"])
def test_ztf_edge_cutouts_are_padded_on_the_missing_side(tmp_path, edge):
    """The NaN padding goes on the side of the CCD edge the candidate is near (1-based
    xpos/ypos), so that the candidate stays on the central pixel."""
    pytest.importorskip("fastavro")
    t = triplet()
    keep = {"left": np.s_[:, :, 10:], "right": np.s_[:, :, :53],
            "bottom": np.s_[:, 10:, :], "top": np.s_[:, :53, :]}[edge]
    pos = {"left": {"xpos": 20.0}, "right": {"xpos": 3060.0},
           "bottom": {"ypos": 20.0}, "top": {"ypos": 3070.0}}[edge]
    write_avro(tmp_path / "edge.avro", [ztf_alert(9, np.ascontiguousarray(t[keep]), **pos)])
    (stamp,) = read_file(tmp_path / "edge.avro")
    assert stamp.data.shape == (3, 63, 63) and stamp.flags == Flag.EDGE
    np.testing.assert_allclose(stamp.data[keep], t[keep])
    assert np.isnan(stamp.data).sum() == 3 * 63 * 10


def test_ztf_candidate_coordinates_that_are_not_finite_are_unknown(tmp_path):
    """A candidate's ra, dec, xpos that are NaN or infinite are no coordinates: the row has
    no position (None, as for a null), and the side of an edge cutout's padding is said to
    be assumed for want of an xpos, not worked out from a NaN."""
    pytest.importorskip("fastavro")
    t = triplet()[:, :, 10:]  # 63 x 53: cut at a CCD edge
    write_avro(tmp_path / "a.avro", [ztf_alert(9, t, xpos=float("nan"), ra=float("nan"),
                                               dec=float("inf"))])
    (stamp,) = read_file(tmp_path / "a.avro")
    assert stamp.ra is None and stamp.dec is None
    assert stamp.flags == Flag.EDGE
    assert "no candidate xpos: the missing x part taken at the end" in stamp.reason[0]
    np.testing.assert_allclose(stamp.data[:, :, :53], t)


def _multi_block_avro(path, records):
    """An Avro file with one block per record (ZTF_SCHEMA)."""
    import fastavro

    from synthetic_alerts import ZTF_SCHEMA

    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(ZTF_SCHEMA), records, sync_interval=1)
    return path.read_bytes()


def test_avro_good_records_before_a_bad_block_are_kept(tmp_path):
    pytest.importorskip("fastavro")
    data = _multi_block_avro(tmp_path / "a.avro", [ztf_alert(100 + i) for i in range(3)])
    (tmp_path / "a.avro").write_bytes(data[:len(data) - 3000])  # the third block truncated
    stamps = read_file(tmp_path / "a.avro")
    assert [s.source for s in stamps[:2]] == ["100", "101"] and len(stamps) == 3
    assert stamps[0].flags == 0 and stamps[1].flags == 0
    assert stamps[2].flags == Flag.BAD_INPUT and "after 2 good record(s)" in stamps[2].reason[0]


def test_avro_file_cut_inside_its_last_sync_marker_is_truncated(tmp_path):
    """A packet file that ends 8 bytes into the sync marker after its last block: the block
    is said truncated (the file is short), not corrupt (a sync marker mismatch); the records
    before it are kept."""
    pytest.importorskip("fastavro")
    data = _multi_block_avro(tmp_path / "a.avro", [ztf_alert(100 + i) for i in range(3)])
    (tmp_path / "a.avro").write_bytes(data[:-8])
    stamps = read_file(tmp_path / "a.avro")
    assert [s.flags for s in stamps] == [0, 0, Flag.BAD_INPUT]
    assert stamps[2].reason == ["corrupt or truncated Avro after 2 good record(s): truncated "
                                "Avro block"]


def test_avro_header_with_a_negative_length_is_corrupt_not_a_hang(models, tmp_path):
    """A length in the Avro header's metadata read as negative (one corrupt byte) moved the
    reader backwards, so that it could loop for ever and hang the whole batch (found by
    mutating a real ZTF packet); now the file is a flagged row ("corrupt Avro header")."""
    import threading

    pytest.importorskip("fastavro")
    # one metadata entry: key 'a', then a value length of -4, which led back to the count
    (tmp_path / "bad.avro").write_bytes(b"Obj\x01\x02\x02a\x07" + bytes(40))
    got = []
    worker = threading.Thread(target=lambda: got.append(read_file(tmp_path / "bad.avro")),
                              daemon=True)
    worker.start()
    worker.join(120)  # a guard against the hang, not a timing: a sound reader takes ms
    assert not worker.is_alive(), "the reader hangs on a corrupt Avro header"
    (stamp,) = got[0]
    assert stamp.flags == Flag.BAD_INPUT and "corrupt Avro header" in stamp.reason[0]


def _zigzag(n):
    """Avro's encoding of the long ``n``: zig-zag, then a base-128 varint."""
    n, out = (n << 1) ^ (n >> 63), bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def test_avro_varint_longer_than_a_long_is_corrupt():
    """A long is at most 10 varint bytes (64 bits): an 11th continuation byte is a corrupt
    varint, said so at once, not read on as a number of any size."""
    from astromorph._readers._alerts import _read_long

    assert _read_long(b"\xfe" + b"\xff" * 8 + b"\x01", 0) == (2**63 - 1, 10)
    with pytest.raises(ValueError, match="corrupt Avro varint"):
        _read_long(b"\x80" * 11 + b"\x01", 0)


def test_avro_header_map_block_with_a_negative_count_reads_as_the_usual_one(tmp_path):
    """The Avro spec lets a map block give its count negated, followed by the block's size in
    bytes (fastavro never writes one): a packet file whose header metadata is such a block
    reads as the same file written with a positive count."""
    pytest.importorskip("fastavro")
    data = _multi_block_avro(tmp_path / "plain.avro", [ztf_alert(100 + i) for i in range(2)])
    from astromorph._readers._alerts import _avro_header

    meta, sync, end = _avro_header(data)
    entries = b"".join(_zigzag(len(k)) + k.encode() + _zigzag(len(v)) + v
                       for k, v in meta.items())
    # the positive-count header as rebuilt here is the file's own: the layout is known
    assert b"Obj\x01" + _zigzag(len(meta)) + entries + b"\x00" + sync == data[:end]
    header = b"Obj\x01" + _zigzag(-len(meta)) + _zigzag(len(entries)) + entries + b"\x00"
    (tmp_path / "negative.avro").write_bytes(header + data[end - 16:])
    plain, negative = read_file(tmp_path / "plain.avro"), read_file(tmp_path / "negative.avro")
    assert [s.source for s in negative] == ["100", "101"] and not any(s.flags for s in negative)
    for a, b in zip(plain, negative):
        np.testing.assert_array_equal(a.data, b.data)
    # a block of one entry each, the first negative: several blocks are read on to the 0
    k, v = next(iter(meta.items()))
    one = _zigzag(len(k)) + k.encode() + _zigzag(len(v)) + v
    rest = entries[len(one):]
    header = (b"Obj\x01" + _zigzag(-1) + _zigzag(len(one)) + one
              + _zigzag(len(meta) - 1) + rest + b"\x00")
    (tmp_path / "blocks.avro").write_bytes(header + data[end - 16:])
    assert [s.source for s in read_file(tmp_path / "blocks.avro")] == ["100", "101"]


def _block_starts(data):
    """Byte offsets of the blocks of an Avro file: each follows a copy of the header's sync
    marker (the file's last 16 bytes)."""
    from astromorph._readers._alerts import _read_long

    sync, starts = data[-16:], []
    pos = data.find(sync) + 16
    while pos < len(data):
        starts.append(pos)
        _, after = _read_long(data, pos)
        size, after = _read_long(data, after)
        pos = after + size + 16
    return starts


def test_avro_sync_marker_mismatch_loses_only_up_to_the_next_marker(tmp_path):
    """A block whose sync marker is corrupt cannot be framed: the reader scans on to the
    next marker and reads the blocks after it. The lost stretch (the first block and the
    second, whose end is that next marker) is one flagged row at the first block's offset,
    its number of records unknown; the third record is read. Before, one flagged row and the
    rest of the file was lost."""
    pytest.importorskip("fastavro")
    data = bytearray(_multi_block_avro(tmp_path / "a.avro", [ztf_alert(100 + i) for i in range(3)]))
    starts = _block_starts(bytes(data))
    data[starts[1] - 16] ^= 0xFF  # the marker after the first block
    (tmp_path / "a.avro").write_bytes(bytes(data))
    stamps = read_file(tmp_path / "a.avro")
    assert [s.source for s in stamps[1:]] == ["102"] and stamps[1].flags == 0
    assert stamps[0].flags == Flag.BAD_INPUT and stamps[0].alert
    assert "sync marker" in stamps[0].reason[0]
    assert f"Avro block at byte {starts[0]}" in stamps[0].reason[0]
    assert "an unknown number of records" in stamps[0].reason[0]


def _literal_snappy():
    """A stand-in for cramjam (``cramjam.snappy.decompress_raw``) that decodes the raw
    snappy of one literal that `write_snappy_avro` writes, and nothing else, for tests
    where cramjam is not installed."""
    import types

    def decompress_raw(data):
        data = bytes(data)
        n = shift = pos = 0
        while True:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if data[pos] != 63 << 2 or int.from_bytes(data[pos + 1:pos + 5], "little") + 1 != n \
                or len(data) != pos + 5 + n:
            raise ValueError("not one snappy literal")
        return data[pos + 5:]

    return types.SimpleNamespace(snappy=types.SimpleNamespace(decompress_raw=decompress_raw))


@pytest.fixture
def snappy_library(monkeypatch):
    """cramjam where it is installed, else `_literal_snappy` in its place."""
    pytest.importorskip("fastavro")  # imported before: it looks for cramjam as it loads
    if importlib.util.find_spec("cramjam") is None:
        monkeypatch.setitem(sys.modules, "cramjam", _literal_snappy())


def _four_alerts_one_per_block(path, codec):
    """Write ZTF alerts 100-103 to ``path``, one per Avro block, with ``codec`` (snappy as
    snappy literals: fastavro needs cramjam to write it)."""
    import fastavro

    from synthetic_alerts import ZTF_SCHEMA

    records = [ztf_alert(100 + i) for i in range(4)]
    if codec == "snappy":
        write_snappy_avro(path, records, per_block=1)
    else:
        with open(path, "wb") as f:
            fastavro.writer(f, fastavro.parse_schema(ZTF_SCHEMA), records, sync_interval=1,
                            codec=codec)


@pytest.mark.parametrize("codec", ["null", "deflate", "bzip2", "xz", "snappy"])
def test_avro_corrupt_block_in_the_middle_loses_only_that_block(models, tmp_path, codec,
                                                                 snappy_library):
    """A block that is framed (its sync marker where its size says) but cannot be decoded
    (a corrupt record; corrupt deflate, bzip2 or xz data; snappy data whose CRC32 is not
    the block's) is one flagged row that says how many records it held and at which byte it
    starts; the blocks after it are read and scored. Before, the rest of the file was lost
    (bzip2, xz and snappy until they were read block by block here: fastavro stops at the
    first bad block, and does not check snappy's CRC). A healthy file of the same blocks
    reads whole."""
    _four_alerts_one_per_block(tmp_path / "a.avro", codec)
    data = bytearray((tmp_path / "a.avro").read_bytes())
    assert [s.source for s in read_file(tmp_path / "a.avro")] == ["100", "101", "102", "103"]
    starts = _block_starts(bytes(data))
    assert len(starts) == 4
    from astromorph._readers._alerts import _read_long

    _, after = _read_long(bytes(data), starts[1])
    size, after = _read_long(bytes(data), after)
    if codec in ("null", "deflate"):  # the second block's first record (raw deflate has
        data[after:after + 12] = b"\xff" * 12  # no checksum to catch a change further on)
    else:  # the middle of the second block's data, which its checksums catch
        at = after + size // 2
        data[at:at + 12] = bytes(b ^ 0xFF for b in data[at:at + 12])
    (tmp_path / "a.avro").write_bytes(bytes(data))
    stamps = read_file(tmp_path / "a.avro")
    assert [s.source for s in stamps] == ["100", f"{tmp_path / 'a.avro'}[1]", "102", "103"]
    lost = stamps[1]
    assert lost.flags == Flag.BAD_INPUT and lost.alert and lost.index == 1
    assert f"Avro block at byte {starts[1]} could not be read (1 record lost)" in lost.reason[0]
    why = {"null": "corrupt Avro record", "snappy": "corrupt snappy data: its CRC32"}
    assert why.get(codec, f"corrupt {codec} data") in lost.reason[0]
    assert all(s.flags == 0 for s in stamps[::2] + stamps[3:])
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "a.avro")
    assert table["rb_flags"].tolist() == [0, Flag.BAD_INPUT, 0, 0]
    assert table["object"].mask.tolist() == [False, True, False, False]
    # without a place to report it, the bad block is raised after the good records
    from astromorph._readers import iter_avro_records

    got = iter_avro_records(bytes(data))
    assert next(got)["candid"] == 100
    with pytest.raises(ValueError, match="corrupt"):
        next(got)


@pytest.mark.parametrize("codec", ["bzip2", "xz", "snappy"])
def test_avro_compressed_block_whose_marker_is_corrupt_resyncs(tmp_path, codec,
                                                               snappy_library):
    """bzip2, xz and snappy files resynchronise at the next sync marker, as null and
    deflate ones do: a corrupt marker loses its block and the next (one row, its number
    of records unknown), and the blocks after that are read."""
    _four_alerts_one_per_block(tmp_path / "a.avro", codec)
    data = bytearray((tmp_path / "a.avro").read_bytes())
    starts = _block_starts(bytes(data))
    data[starts[1] - 16] ^= 0xFF  # the marker after the first block
    (tmp_path / "a.avro").write_bytes(bytes(data))
    stamps = read_file(tmp_path / "a.avro")
    assert [s.source for s in stamps[1:]] == ["102", "103"]
    assert stamps[0].flags == Flag.BAD_INPUT and "an unknown number of records" in \
        stamps[0].reason[0] and f"Avro block at byte {starts[0]}" in stamps[0].reason[0]


def test_avro_indices_after_a_loss_of_unknown_size_are_not_claimed(tmp_path):
    """After a stretch whose number of records is unknown (a corrupt sync marker: up to the
    next marker), the records' places in the file are unknown too. Before, they were
    numbered by the records read, as if the stretch had held none: a row named
    ``a.avro[1]`` (index 1) was the file's fourth record. Now such rows are numbered from
    the byte at which reading went on (``a.avro[1 after byte N]``) and have no index; the
    lost row's reason says so. Rows before the stretch keep their indices."""
    pytest.importorskip("fastavro")
    from astromorph._readers._alerts import _read_long

    data = bytearray(_multi_block_avro(tmp_path / "a.avro",
                                       [ztf_alert(100 + i) for i in range(6)]))
    starts = _block_starts(bytes(data))
    data[starts[2] - 16] ^= 0xFF  # the marker after the second block: blocks 1, 2 lost
    _, after = _read_long(bytes(data), starts[4])
    _, after = _read_long(bytes(data), after)
    data[after:after + 12] = b"\xff" * 12  # a corrupt record in the fifth block
    (tmp_path / "a.avro").write_bytes(bytes(data))
    stamps = read_file(tmp_path / "a.avro")
    path = tmp_path / "a.avro"
    assert [s.source for s in stamps] == ["100", f"{path}[1]", "103",
                                          f"{path}[1 after byte {starts[3]}]", "105"]
    assert [s.index for s in stamps] == [0, 1, None, None, None]
    assert [s.flags for s in stamps] == [0, Flag.BAD_INPUT, 0, Flag.BAD_INPUT, 0]
    assert (f"the next sync marker ends at byte {starts[3]}; the records after it are "
            f"numbered from there (a.avro[k after byte {starts[3]}])") in stamps[1].reason[0]
    assert f"Avro block at byte {starts[4]} could not be read (1 record lost)" \
        in stamps[3].reason[0]


def test_avro_corrupt_record_loses_the_rest_of_its_block_only(tmp_path):
    """A corrupt record in a block of three: the one before it is read, the rest of the
    block (whose records cannot be found without its length) is one row saying so, and the
    next block is read."""
    import fastavro

    from astromorph._readers._alerts import _read_long
    from synthetic_alerts import ZTF_SCHEMA

    cutouts = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
    records = [ztf_alert(100 + i, drop=cutouts) for i in range(3)]
    schema = fastavro.parse_schema(ZTF_SCHEMA)
    with open(tmp_path / "a.avro", "wb") as f:  # one block of three records, then one
        w = fastavro.write.Writer(f, schema)
        for rec in records:
            w.write(rec)
        w.flush()
        w.write(ztf_alert(103, drop=cutouts))
        w.flush()
    data = bytearray((tmp_path / "a.avro").read_bytes())
    starts = _block_starts(bytes(data))
    assert len(starts) == 2
    first = io.BytesIO()
    fastavro.schemaless_writer(first, schema, records[0])
    _, after = _read_long(bytes(data), starts[0])
    _, after = _read_long(bytes(data), after)
    data[after + len(first.getvalue()):after + len(first.getvalue()) + 12] = b"\xff" * 12
    (tmp_path / "a.avro").write_bytes(bytes(data))
    stamps = read_file(tmp_path / "a.avro")
    assert [s.source for s in stamps] == ["100", f"{tmp_path / 'a.avro'}[1]", "103"]
    assert [s.index for s in stamps] == [0, 1, 3]
    assert stamps[1].flags == Flag.BAD_INPUT
    assert (f"Avro block at byte {starts[0]} could not be read (2 records lost): corrupt Avro "
            "record 2 of 3") in stamps[1].reason[0]


def test_avro_file_of_no_records_is_said_empty_not_truncated(tmp_path):
    """An Avro file of its header only (sync marker last: fastavro writes one for no
    records) is whole: its row says it holds no records, not that it is truncated."""
    pytest.importorskip("fastavro")
    write_avro(tmp_path / "empty.avro", [])
    (stamp,) = read_file(tmp_path / "empty.avro")
    assert stamp.flags == Flag.BAD_INPUT and stamp.alert
    assert stamp.reason == ["Avro file holds no records"]


def test_avro_block_of_a_negative_size_is_lost_not_read_again_for_ever(tmp_path):
    """A block whose size is negative (a corrupt varint) is not framed: reading goes on after
    the next sync marker. Read as given, the size led back onto the previous block's sync
    marker, whose end is this block's start, so that the block was read again for ever."""
    pytest.importorskip("fastavro")
    from astromorph._readers import iter_avro_records
    from astromorph._readers._alerts import _read_long

    data = _multi_block_avro(tmp_path / "a.avro", [ztf_alert(100 + i) for i in range(3)])
    starts = _block_starts(data)
    count, after = _read_long(data, starts[1])
    _, after = _read_long(data, after)
    # count 1, then a size that ends the block on the sync marker before it
    back = _zigzag(1) + _zigzag(-(16 + 2))
    assert len(back) == 2
    bad = data[:starts[1]] + back + data[after:]
    calls = []

    def lost(offset, count, why, resume):
        calls.append((offset, count, why, resume))
        if len(calls) > 3:
            raise RuntimeError("the same block is lost again and again")

    records = list(iter_avro_records(bad, lost=lost))
    assert [r["candid"] for r in records] == [100, 102]
    ((offset, count, why, resume),) = calls
    assert offset == starts[1] and count is None and "truncated Avro block" in why
    with pytest.raises(ValueError, match="truncated Avro block"):
        list(iter_avro_records(bad))


def test_rubin_packets(models, tmp_path):
    pytest.importorskip("fastavro")
    t = triplet(31)
    first = rubin_alert(11, t)
    first["diaObject"] = {"diaObjectId": 990011}
    write_avro(tmp_path / "rubin.avro", [
        first, rubin_alert(12, t * np.array([1, 1, -1])[:, None, None], psf_flux=-500.0),
        rubin_alert(13, t, drop=("cutoutScience",))], schema=RUBIN_SCHEMA)
    stamps = read_file(tmp_path / "rubin.avro")
    assert [s.source for s in stamps] == ["11", "12", "13"]
    assert stamps[0].pixel_scale == pytest.approx(0.2)
    np.testing.assert_allclose(stamps[0].data, t)
    np.testing.assert_allclose(stamps[1].data, t)  # negative source: difference negated
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "rubin.avro")
    assert table["rb_score"][0] == pytest.approx(table["rb_score"][1])
    assert table["rb_flags"][0] == Flag.EXTRAPOLATED  # 31 x 0.2" << 63"
    assert table["rb_flags"][2] == Flag.MISSING_BAND
    assert "lacks cutoutScience" in table["reason"][2]
    # the object each alert belongs to, where the packet says it
    assert table["object"][0] == "990011" and table["object"].mask.tolist() == [False, True, True]


def test_rubin_difference_of_a_zero_or_nan_flux_source_is_not_negated(tmp_path):
    """Without isNegative, only a psfFlux below 0 negates a Rubin difference cutout: a
    psfFlux of exactly 0, or NaN (no measurement), leaves it as it is."""
    pytest.importorskip("fastavro")
    t = triplet(31)
    write_avro(tmp_path / "rubin.avro", [rubin_alert(1, t, psf_flux=0.0),
                                         rubin_alert(2, t, psf_flux=float("nan")),
                                         rubin_alert(3, t, psf_flux=-1e-3)], schema=RUBIN_SCHEMA)
    zero, nan, negative = read_file(tmp_path / "rubin.avro")
    np.testing.assert_allclose(zero.data, t)
    np.testing.assert_allclose(nan.data, t)
    np.testing.assert_allclose(negative.data[2], -t[2])


def test_rubin_v11_layout(models, tmp_path):
    """Packets laid out as the published lsst.v11_1 schema (triggering diaSourceId at the top,
    isNegative, a nullable diaObject, named-type histories): a detection flagged isNegative
    with a positive psfFlux is negated all the same, ids and objects are read, and the
    histories are skipped."""
    pytest.importorskip("fastavro")
    from synthetic_alerts import RUBIN_V11_SCHEMA, rubin_v11_alert

    t = triplet(31)
    neg = t * np.array([1, 1, -1])[:, None, None]
    write_avro(tmp_path / "v11.avro", [rubin_v11_alert(101, t),
                                       rubin_v11_alert(102, neg, negative=True, psf_flux=800.0)],
               schema=RUBIN_V11_SCHEMA, codec="deflate")
    stamps = read_file(tmp_path / "v11.avro")
    assert [s.source for s in stamps] == ["101", "102"]
    assert [s.object for s in stamps] == ["5101", "5102"]
    np.testing.assert_allclose(stamps[1].data, t)  # isNegative: the difference is negated
    assert stamps[0].pixel_scale == pytest.approx(0.2)
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "v11.avro")
    assert table["rb_score"][0] == pytest.approx(table["rb_score"][1])


def test_rubin_isnegative_decides_the_sign_where_it_is_given(models, tmp_path):
    """Where the diaSource has isNegative (lsst.v11), it alone says whether the difference
    holds the candidate negative; psfFlux decides only where it is missing or null, as the
    annotate_stamps recipe of docs/predict.md ('Alert streams') decides. Before, a negative
    psfFlux negated the difference of a detection whose isNegative is False as well."""
    pytest.importorskip("fastavro")
    from synthetic_alerts import RUBIN_V11_SCHEMA, rubin_v11_alert

    t = triplet(31)
    neg = t * np.array([1, 1, -1])[:, None, None]
    positive = rubin_v11_alert(101, t, negative=False, psf_flux=-800.0)
    unknown = rubin_v11_alert(102, neg, psf_flux=-800.0)
    unknown["diaSource"]["isNegative"] = None
    write_avro(tmp_path / "v11.avro", [positive, unknown], schema=RUBIN_V11_SCHEMA)
    stamps = read_file(tmp_path / "v11.avro")
    np.testing.assert_allclose(stamps[0].data, t)  # isNegative False: as given
    np.testing.assert_allclose(stamps[1].data, t)  # isNegative null: psfFlux < 0 negates


def test_rubin_object_from_the_diasource(models, tmp_path):
    """A Rubin packet whose diaObject is null but whose diaSource names its diaObjectId
    (lsst.v7 and later) has that object in the `object` column. Before, the pruned reader
    schema dropped diaSource.diaObjectId: the object was lost (no `object` column at
    all where no packet had a diaObject)."""
    pytest.importorskip("fastavro")
    from synthetic_alerts import RUBIN_V11_SCHEMA, rubin_v11_alert

    rec = rubin_v11_alert(101, triplet(31))
    rec["diaObject"] = None
    write_avro(tmp_path / "v11.avro", [rec], schema=RUBIN_V11_SCHEMA)
    assert read_file(tmp_path / "v11.avro")[0].object == "5101"
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "v11.avro")
    assert list(table["object"]) == ["5101"]


def test_rubin_cutouts_as_packagealerts_writes_them(models, tmp_path, capsys):
    """ap_association's packageAlerts writes each cutout as an astropy CCDData whose WCS has
    no CTYPE: only CRPIX (the source's pixel), CRVAL (the diaSource's ra, dec) and a CD
    matrix (degrees per pixel of a local tangent plane at the source), which CCDData.write
    turns into PCi_j with CDELTi = 1. Such a cutout's pixel scale is read from that matrix
    where CRVAL is the diaSource's ra, dec (each axis its own); a 30 x 30 triplet (the
    default minCutoutSize) at 0.2"/px, given to `astromorph predict`, is scored at 0.2"/px
    about its source, EXTRAPOLATED (6" of the model's 63" field) and not NO_WCS.
    Before, its scale was unknown: NO_WCS, scored as 1"/px (rb_score 1.0 against 0.07 at
    its true scale). A cutout without CTYPE whose CRVAL is not the diaSource's position, or
    whose matrix gives no scale, stays NO_WCS. The UNCERT extension is no triplet member."""
    pytest.importorskip("fastavro")
    from synthetic_alerts import rubin_cutout_bytes, scene

    c = (14.3, 14.6)  # within half a pixel of (n - 1) / 2, as makeCenteredBox leaves it
    t = scene(30, c)
    rotated = 0.2 / 3600 * np.array([[-np.cos(0.5), np.sin(0.5)], [np.sin(0.5), np.cos(0.5)]])
    skewed = rubin_alert(3, t, centre=c)
    for key, plane in zip(("cutoutScience", "cutoutTemplate", "cutoutDifference"), t):
        skewed[key] = rubin_cutout_bytes(plane, centre=c, cd=[[-0.2 / 3600, 0.0],
                                                              [0.0, 0.3 / 3600]])
    degenerate = rubin_alert(5, t, centre=c)
    for key in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
        with fits.open(io.BytesIO(degenerate[key])) as hdus:
            hdus[0].header["PC1_1"] = 0.0  # a zero row (CCDData.write refuses to write one)
            buf = io.BytesIO()
            hdus.writeto(buf)
        degenerate[key] = buf.getvalue()
    records = [rubin_alert(1, t, centre=c), rubin_alert(2, t, centre=c, ctype=True), skewed,
               rubin_alert(4, t, centre=c, dec=2.0 + 1e-6),  # CRVAL is not the diaSource
               degenerate]
    rotated_alert = rubin_alert(6, t, centre=c)
    for key, plane in zip(("cutoutScience", "cutoutTemplate", "cutoutDifference"), t):
        rotated_alert[key] = rubin_cutout_bytes(plane, centre=c, cd=rotated)
    records.append(rotated_alert)
    header = fits.getheader(io.BytesIO(records[0]["cutoutDifference"]))
    assert "CTYPE1" not in header and "CD1_1" not in header and header["CDELT1"] == 1.0
    assert [h.name for h in fits.open(io.BytesIO(records[0]["cutoutScience"]))] == [
        "PRIMARY", "UNCERT"]
    write_avro(tmp_path / "packet.avro", records, schema=RUBIN_SCHEMA)
    stamps = read_file(tmp_path / "packet.avro")
    np.testing.assert_array_equal(stamps[0].data, t)  # the primary images, not UNCERT
    assert stamps[0].pixel_scale == pytest.approx(0.2)
    assert stamps[0].pixel_scale == pytest.approx(stamps[1].pixel_scale)
    assert stamps[2].pixel_scale == pytest.approx((0.3, 0.2))  # (scale_y, scale_x)
    assert stamps[3].pixel_scale is None and stamps[4].pixel_scale is None
    assert stamps[5].pixel_scale == pytest.approx(0.2)
    for stamp in stamps[:3] + stamps[5:]:
        assert stamp.centre == pytest.approx(c, abs=1e-9)
    out = tmp_path / "scores.ecsv"
    assert cli.main(["predict", "real-bogus", str(tmp_path / "packet.avro"), "-o", str(out),
                     "--no-progress"]) == 0
    table = Table.read(out)
    capsys.readouterr()
    flags = [int(f) for f in table["rb_flags"]]
    assert flags[0] == flags[1] == flags[5] == Flag.EXTRAPOLATED
    assert table["rb_score"][0] == pytest.approx(table["rb_score"][1], abs=1e-6)
    assert table["rb_score"][5] == pytest.approx(table["rb_score"][0], abs=0.05)
    assert 'spans 6" x 6" and does not cover the model\'s 63" field' in table["reason"][0]
    assert not flags[2] & Flag.NO_WCS
    assert flags[3] & Flag.NO_WCS and flags[4] & Flag.NO_WCS
    assert "assumed 1 arcsec/pixel" in table["reason"][3]


def _rubin_scenes(tmp_path, cases, **kwargs):
    """predict_files of Rubin packets, one per ``(n, (y, x))``: the same scene cut ``n`` x
    ``n`` with the source at the 0-based pixel ``(y, x)``, where the cutouts' WCS puts the
    diaSource's ra, dec."""
    from synthetic_alerts import scene

    records = [rubin_alert(300 + k, scene(n, c), scale=1.0, centre=c, **kwargs)
               for k, (n, c) in enumerate(cases)]
    write_avro(tmp_path / "scenes.avro", records, schema=RUBIN_SCHEMA)
    return read_file(tmp_path / "scenes.avro"), quiet(astromorph.predict_files, "real-bogus",
                                                      tmp_path / "scenes.avro")


@pytest.mark.parametrize("ctype", [True, False])
def test_rubin_cutouts_are_resampled_about_the_diasource(tmp_path, ctype):
    """Rubin cuts its cutouts about the diaSource's pixel with lsst.geom's makeCenteredBox:
    of an even side n, the source lies within half a pixel of (n - 1) / 2, not on n // 2
    (at n / 2 - 1 for a whole-pixel position), and the cutouts' WCS puts the diaSource's
    ra, dec there (CRVAL = ra, dec; CRPIX its pixel; no CTYPE in packageAlerts' packets).
    The triplet is resampled about that pixel: the same scene cut with the source off
    n // 2 scores as the one cut with the source on the grid centre. Resampled about
    n // 2 (before), a source 3 or 4 pixels off scored 0.0 against 1.0; even-sided cutouts
    are marked with nothing, one off its centre is flagged EDGE (the model's field runs
    over its edge)."""
    pytest.importorskip("fastavro")
    cases = [(63, (31.0, 31.0)), (64, (31.5, 31.5)), (64, (31.0, 31.0)), (64, (28.0, 35.0)),
             (66, (30.0, 36.0)), (30, (14.5, 14.5))]
    stamps, table = _rubin_scenes(tmp_path, cases, ctype=ctype)
    for stamp, (n, c) in zip(stamps, cases):
        assert stamp.centre == pytest.approx(c, abs=1e-9)
    score = np.asarray(table["rb_score"])
    assert score[0] > 0.9
    np.testing.assert_allclose(score[1:5], score[0], atol=0.02)
    # without CTYPE (packageAlerts' cutouts) the matrix is read as the local tangent plane's
    # at the diaSource, whose ra, dec is CRVAL: the same scale, no NO_WCS (docs/predict.md)
    for stamp in stamps:
        assert stamp.pixel_scale == pytest.approx(1.0)
    assert list(table["rb_flags"][:3]) == [0, 0, 0]
    assert table["reason"][0] == "" and table["reason"][1] == ""
    for j in (3, 4):
        assert table["rb_flags"][j] & Flag.EDGE
        assert "off their centre" in table["reason"][j]


def test_rubin_candidate_without_a_position_or_off_the_cutouts(tmp_path):
    """Without the diaSource's ra, dec (NaN) the cutouts are resampled about n // 2, and the
    reason says so; a diaSource whose ra, dec the WCS puts off the cutouts is BAD_INPUT; one
    elsewhere on them (a WCS whose reference point is not the source) is placed by astropy's
    world_to_pixel."""
    pytest.importorskip("fastavro")
    from synthetic_alerts import scene

    t = scene(64, (31.5, 31.5))
    step = 1.0 / 3600  # degrees in one 1" pixel
    # cutouts with a celestial WCS (CTYPE): astropy places a source off the reference point
    records = [rubin_alert(1, t, scale=1.0, centre=(31.5, 31.5), ra=float("nan"), ctype=True),
               rubin_alert(2, t, scale=1.0, centre=(31.5, 31.5), dec=2.0 + 70 * step,
                           ctype=True),
               rubin_alert(3, t, scale=1.0, centre=(29.5, 31.5), dec=2.0 + 2 * step,
                           ctype=True)]
    write_avro(tmp_path / "r.avro", records, schema=RUBIN_SCHEMA)
    stamps = read_file(tmp_path / "r.avro")
    assert stamps[0].centre is None
    assert "candidate taken at the cutouts' pixel n // 2 (x, y = 32, 32" in stamps[0].reason[0]
    assert "ra, dec (nan, 2) are not finite" in stamps[0].reason[0]
    assert stamps[1].flags == Flag.BAD_INPUT and "off the 64x64 cutouts" in stamps[1].reason[0]
    assert stamps[2].centre == pytest.approx((31.5, 31.5), abs=1e-3)


def test_rubin_candidate_on_the_cutouts_edge_is_on_them_at_the_start_only(tmp_path):
    """Pixel k spans [k - 0.5, k + 0.5): a diaSource at x = -0.5 (the cutouts' first edge)
    lies on pixel 0, one at x = n - 0.5 (their last edge) on none, and is BAD_INPUT."""
    pytest.importorskip("fastavro")
    t = triplet(31)
    records = [rubin_alert(1, t, centre=(15.0, -0.5)), rubin_alert(2, t, centre=(15.0, 30.5)),
               rubin_alert(3, t, centre=(30.5, 15.0))]
    write_avro(tmp_path / "r.avro", records, schema=RUBIN_SCHEMA)
    first, last_x, last_y = read_file(tmp_path / "r.avro")
    assert first.centre == pytest.approx((15.0, -0.5)) and not first.flags & Flag.BAD_INPUT
    for stamp in (last_x, last_y):
        assert stamp.flags == Flag.BAD_INPUT and "off the 31x31 cutouts" in stamp.reason[0]


def test_rubin_cutouts_of_an_fk4_wcs_are_not_read_as_icrs(tmp_path):
    """The shortcut that reads a reference point equal to the diaSource's ra, dec as its
    pixel (CRPIXi) holds for ICRS (and FK5) only: cutouts whose WCS is in FK4 (B1950) with
    those very numbers as CRVALi are put where astropy puts the diaSource's ICRS ra, dec,
    about half a degree away, off the cutouts."""
    pytest.importorskip("fastavro")
    t = triplet(31)
    rec = rubin_alert(1, t, ctype=True)
    for key, plane in zip(("cutoutScience", "cutoutTemplate", "cutoutDifference"), t):
        header = celestial_header(fits.Header(), 0.2, plane.shape)
        header.update({"RADESYS": "FK4", "EQUINOX": 1950.0})
        buf = io.BytesIO()
        fits.PrimaryHDU(plane, header=header).writeto(buf)
        rec[key] = buf.getvalue()
    write_avro(tmp_path / "r.avro", [rec, rubin_alert(2, t, ctype=True)], schema=RUBIN_SCHEMA)
    fk4, icrs = read_file(tmp_path / "r.avro")
    assert icrs.centre == pytest.approx((15.0, 15.0)) and not icrs.flags
    assert fk4.flags == Flag.BAD_INPUT and "off the 31x31 cutouts" in fk4.reason[0]


def test_rubin_cutouts_of_a_dec_first_wcs(tmp_path):
    """A WCS whose first axis is DEC (CTYPE1 = 'DEC--TAN', CRVAL1 the declination): its
    reference point is (CRVAL2, CRVAL1). A diaSource there lies on CRPIXi; one at the
    numbers of CRVAL1, CRVAL2 taken as (ra, dec), 28 degrees away, lies off the cutouts."""
    pytest.importorskip("fastavro")
    t = triplet(31)

    def dec_first(source_id, ra, dec):
        rec = rubin_alert(source_id, t, ctype=True, ra=ra, dec=dec)
        for key, plane in zip(("cutoutScience", "cutoutTemplate", "cutoutDifference"), t):
            header = fits.Header({"CTYPE1": "DEC--TAN", "CTYPE2": "RA---TAN", "CRVAL1": 20.0,
                                  "CRVAL2": 40.0, "CRPIX1": 13.0, "CRPIX2": 17.0,
                                  "CD1_1": 0.2 / 3600, "CD1_2": 0.0, "CD2_1": 0.0,
                                  "CD2_2": -0.2 / 3600})
            buf = io.BytesIO()
            fits.PrimaryHDU(plane, header=header).writeto(buf)
            rec[key] = buf.getvalue()
        return rec

    write_avro(tmp_path / "r.avro", [dec_first(1, 40.0, 20.0), dec_first(2, 20.0, 40.0)],
               schema=RUBIN_SCHEMA)
    on, swapped = read_file(tmp_path / "r.avro")
    assert on.centre == pytest.approx((16.0, 12.0), abs=1e-6) and not on.flags, on.reason
    assert swapped.flags == Flag.BAD_INPUT and "off the 31x31 cutouts" in swapped.reason[0]


def _d_exponent_cards(raw):
    """The FITS bytes ``raw`` with the CDi_j cards of their first header written with a D
    exponent (``CD1_1 = -5.5555555555555556D-05``, as FITS allows and Fortran writers
    print), the same numbers (wcslib reads such a card as the digits before its D)."""
    end = raw.index(b"END" + b" " * 77)
    cards = [raw[i:i + 80] for i in range(0, end, 80)]
    for k, card in enumerate(cards):
        if card.startswith(b"CD"):
            key = card[:8].decode()
            value = float(fits.Card.fromstring(card.decode()).value)
            cards[k] = f"{key}= {f'{value:.16E}'.replace('E', 'D'):>20}".ljust(80).encode()
            assert fits.Card.fromstring(cards[k].decode()).value == value
    return b"".join(cards) + raw[end:]


def test_alert_cutouts_whose_wcs_has_d_exponents_place_the_source_as_with_e(tmp_path):
    """Cutouts whose CD matrix is written with D exponents (CD1_1 = -2.8...D-04) place the
    source where those written with E do: a ZTF cutout cut at the CCD edge (padded where
    its WCS puts the candidate) and a Rubin cutout whose reference point is not the
    diaSource (resampled about the pixel its WCS gives). wcslib reads such a card as the
    digits before its D (-2.8 degree pixels), which put the source on the reference pixel,
    3 to 4 pixels off."""
    from astropy.wcs import WCS

    from astromorph._readers._alerts import _ztf_wcs_pixel

    pytest.importorskip("fastavro")
    keys = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
    # ZTF: 53 x 63 cutouts (cut 10 columns short on the left), the WCS's reference point
    # (150, 2) at the 0-based pixel (28, 17), the candidate at (31, 21), where it lies
    trip = triplet(seed=3)
    header = celestial_header(fits.Header(), 1.01, (63, 53), centre=(28, 17))
    ra, dec = (float(v) for v in WCS(header).pixel_to_world_values(21, 31))
    stamps = {}
    for how, cards in (("e", lambda raw: raw), ("d", _d_exponent_cards)):
        raw = {key: gzip.compress(cards(fits_bytes(trip[i][:, 10:], scale=1.01,
                                                   centre=(28, 17))))
               for i, key in enumerate(keys)}
        assert (b"D-04" in gzip.decompress(raw[keys[2]])) == (how == "d")
        placed, why = _ztf_wcs_pixel(raw[keys[2]], ra, dec)
        assert placed == pytest.approx((31.0, 21.0), abs=1e-6), (how, placed, why)
        write_avro(tmp_path / f"ztf-{how}.avro", [ztf_alert(9, raw=raw, ra=ra, dec=dec,
                                                            xpos=21.0)])
        (stamps["ztf", how],) = read_file(tmp_path / f"ztf-{how}.avro")
    # Rubin: a celestial TAN WCS whose reference point lies at (12, 12), the diaSource at
    # (15, 15)
    t = triplet(31)
    header = celestial_header(fits.Header(), 0.2, (31, 31), centre=(12, 12))
    ra, dec = (float(v) for v in WCS(header).pixel_to_world_values(15, 15))
    for how, cards in (("e", lambda raw: raw), ("d", _d_exponent_cards)):
        rec = rubin_alert(1, t, ctype=True, centre=(12, 12), ra=ra, dec=dec)
        rec.update({key: cards(rec[key]) for key in keys})
        write_avro(tmp_path / f"rubin-{how}.avro", [rec], schema=RUBIN_SCHEMA)
        (stamps["rubin", how],) = read_file(tmp_path / f"rubin-{how}.avro")
    assert stamps["rubin", "e"].centre == pytest.approx((15.0, 15.0), abs=1e-6)
    for kind in ("ztf", "rubin"):
        want, got = stamps[kind, "e"], stamps[kind, "d"]
        assert (got.flags, got.reason, got.centre) == (want.flags, want.reason, want.centre)
        np.testing.assert_array_equal(got.data, want.data)


def test_ztf_packets_are_not_resampled(models, tmp_path):
    """ZTF cutouts are on the model's grid, the candidate on pixel 31: no centre, no
    resampling, the network gets the preprocessed stamps as they are."""
    from astromorph.preprocessing import triplet as tri

    pytest.importorskip("fastavro")
    t = triplet()
    write_avro(tmp_path / "z.avro", [ztf_alert(7, t)])
    stamp, = read_file(tmp_path / "z.avro")
    assert stamp.centre is None and stamp.native_grid
    model = astromorph.load_model("real-bogus")
    direct = model.predict(tri.preprocess_triplet(t[None])[0], progress=False)
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "z.avro")
    assert table["rb_score"][0] == pytest.approx(float(np.ravel(direct["rb_score"])[0]), abs=1e-6)


def test_kafka_messages(models, tmp_path):
    """Kafka messages (Confluent wire format: 0, a 4-byte schema id, a schemaless record) are
    not Avro files: flagged with a reason naming the format and the schema id. Decoded as
    docs/predict.md ('Alert streams') shows and scored with annotate_stamps, they give what
    predict_files gives for the same records in an Avro file."""
    import io

    fastavro = pytest.importorskip("fastavro")
    from astropy.table import Table

    t = triplet(31)
    records = [rubin_alert(21, t), rubin_alert(22, t * np.array([1, 1, -1])[:, None, None],
                                                 psf_flux=-500.0)]
    schema = fastavro.parse_schema(RUBIN_SCHEMA)
    messages = []
    for rec in records:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, rec)
        messages.append(b"\x00" + (4021).to_bytes(4, "big") + body.getvalue())
    (tmp_path / "message.avro").write_bytes(messages[0])
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "message.avro")
    assert table["rb_flags"][0] == Flag.BAD_INPUT
    assert "Confluent wire format (schema id 4021)" in table["reason"][0]
    # saved under another name (a consumer's offset, '.bin'): the format is not claimed from
    # five bytes, but the reason still says what the file may be and what to do with it
    for name in ("message.bin", "offset-0000011"):
        (tmp_path / name).write_bytes(messages[0])
    table = quiet(astromorph.predict_files, "real-bogus",
                  [tmp_path / "message.bin", tmp_path / "offset-0000011"])
    assert list(table["rb_flags"]) == [Flag.BAD_INPUT] * 2
    for reason in table["reason"]:
        assert reason.startswith("unrecognised file format"), reason
        assert "Confluent wire format (schema id 4021)" in reason, reason
        assert "annotate_stamps" in reason, reason
    from astropy.wcs import WCS

    rows = []
    for message in messages:  # the recipe of docs/predict.md
        rec = fastavro.schemaless_reader(io.BytesIO(message[5:]), schema)
        dia = rec["diaSource"]
        negative = dia.get("isNegative")
        if negative is None:
            negative = (dia.get("psfFlux") or 0.0) < 0
        matrix = WCS(fits.getheader(io.BytesIO(rec["cutoutDifference"]))).pixel_scale_matrix
        rows.append({"diaSourceId": dia["diaSourceId"], "negative": negative,
                     "pixel_scale": 3600 * np.hypot(*matrix)[::-1],
                     **{k: rec[k] for k in ("cutoutScience", "cutoutTemplate",
                                            "cutoutDifference")}})
    out = quiet(astromorph.annotate_stamps, Table(rows=rows), model="real-bogus",
                negative="negative", pixel_scale="pixel_scale")
    bare = quiet(astromorph.annotate_stamps, Table(rows=rows), model="real-bogus",
                 negative="negative")  # packageAlerts' cutouts give no scale alone
    assert all(f & Flag.NO_WCS for f in bare["rb_flags"])
    write_avro(tmp_path / "rubin.avro", records, schema=RUBIN_SCHEMA)
    files = quiet(astromorph.predict_files, "real-bogus", tmp_path / "rubin.avro")
    assert_scores(out["rb_score"], files["rb_score"], rtol=1e-6)
    assert list(out["rb_flags"]) == list(files["rb_flags"])
    assert out["rb_score"][0] == pytest.approx(out["rb_score"][1])  # the sign was undone


def test_a_file_that_starts_with_a_zero_byte_is_not_taken_for_a_kafka_message(models, tmp_path):
    """Any .avro file longer than 5 bytes that started with a zero byte was reported as "a
    Kafka message in the Confluent wire format": a zero-filled file (what a crash can leave
    of a file being written) as one with schema id 0, a dump with a negative id too. Schema
    registry ids are positive 32-bit ints; other files are said to be no Avro files."""
    pytest.importorskip("fastavro")
    files = {"zeros.avro": bytes(4096),  # schema id 0
             "negative.avro": b"\x00\xff\xff\xff\xfe" + bytes(64),  # -2 as a Java int
             "short.avro": b"\x00\x00\x00\x0f\xb5"}  # a 5-byte header, no record
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    table = quiet(astromorph.predict_files, "real-bogus", [tmp_path / n for n in files])
    assert list(table["rb_flags"]) == [Flag.BAD_INPUT] * 3
    for reason in table["reason"]:
        assert "Confluent" not in reason and "no 'Obj\\x01' magic" in reason, reason
    (tmp_path / "message.avro").write_bytes(b"\x00" + (1).to_bytes(4, "big") + b"\x02")
    reason = quiet(astromorph.predict_files, "real-bogus", tmp_path / "message.avro")["reason"][0]
    assert reason.startswith("a Kafka message in the Confluent wire format (schema id 1)")


def test_alert_files_without_the_avro_extension_are_read_by_content(models, tmp_path):
    """A Rubin or ZTF packet saved without '.avro' (as a Kafka consumer names it by offset)
    is read by its content, given by name or found in a directory; a directory's files of
    no supported extension and no recognised content (notes) are still left out."""
    pytest.importorskip("fastavro")
    write_avro(tmp_path / "rubin-0000011", [rubin_alert(11)], schema=RUBIN_SCHEMA)
    write_avro(tmp_path / "ztf_alert.bin", [ztf_alert(5)])
    (tmp_path / "notes.txt").write_text("not a stamp")
    (tmp_path / "README").write_text("Obj but no Avro magic")
    direct = quiet(astromorph.predict_files, "real-bogus",
                   [tmp_path / "rubin-0000011", tmp_path / "ztf_alert.bin"])
    assert list(direct["source"]) == ["11", "5"] and not direct["rb_score"].mask.any()
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    assert list(table["source"]) == ["11", "5"]
    assert_scores(table["rb_score"], direct["rb_score"], rtol=0)


@requires_data
def test_real_ztf_packet_without_extension_in_a_directory(models, tmp_path):
    paths = sorted(ALERTS.glob("*.avro"))
    if not paths:
        pytest.skip("no ZTF alert packets")
    (tmp_path / "packet").write_bytes(paths[0].read_bytes())
    table = astromorph.predict_files("real-bogus", tmp_path)
    expected = astromorph.predict_files("real-bogus", paths[0])
    assert list(table["source"]) == list(expected["source"])
    assert not table["rb_flags"].any()


def test_directory_leaves_out_hidden_and_backup_files(models, tmp_path):
    """A directory's backups (x.fits.bak, x.fits~) and hidden files (.x.fits, macOS ._x.fits)
    are not more inputs (were scored, and modified by in_place=True); a file without an
    extension, or with a numeric one (a Kafka offset), is still read by its content."""
    data = fits_bytes(triplet())
    for name in ("a.fits", "a.fits.bak", "a.fits~", ".hidden.fits", "._a.fits", "b",
                 "c.000017", "d.BIN"):
        (tmp_path / name).write_bytes(data)
    from astromorph._readers import expand_inputs

    found = [p.name for p in expand_inputs(tmp_path)]
    assert found == ["a.fits", "b", "c.000017", "d.BIN"]
    before = (tmp_path / "a.fits.bak").read_bytes()
    quiet(astromorph.predict_files, "real-bogus", tmp_path, in_place=True)
    assert (tmp_path / "a.fits.bak").read_bytes() == before


def test_extension_and_content_that_disagree_are_named(models, tmp_path):
    """A file whose extension names one format and whose bytes another is read by its bytes;
    the row says both (and one AmbiguousInputWarning), or, when the bytes cannot be read
    either, the flagged row's reason names both formats."""
    pytest.importorskip("fastavro")
    write_avro(tmp_path / "alert.fits", [ztf_alert(5)])
    (tmp_path / "stamp.avro").write_bytes(fits_bytes(triplet()))
    (tmp_path / "broken.fits").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    files = [tmp_path / n for n in ("alert.fits", "stamp.avro", "broken.fits")]
    with pytest.warns(AmbiguousInputWarning, match=r"2 file\(s\).*content"):
        table = quiet(astromorph.predict_files, "real-bogus", files)
    assert list(table["rb_flags"][:2]) == [0, 0] and not table["rb_score"].mask[:2].any()
    assert "Avro" in table["reason"][0] and "'.fits'" in table["reason"][0]
    assert "FITS" in table["reason"][1] and "'.avro'" in table["reason"][1]
    assert table["rb_flags"][2] == Flag.BAD_INPUT
    assert "PNG" in table["reason"][2] and "'.fits'" in table["reason"][2]


@pytest.mark.parametrize("name", ["alert.avro.gz", "alert.fits.gz"])
def test_gzipped_avro_is_named_not_called_a_bad_fits(models, tmp_path, name):
    pytest.importorskip("fastavro")
    write_avro(tmp_path / "a.avro", [ztf_alert(5)])
    (tmp_path / name).write_bytes(gzip.compress((tmp_path / "a.avro").read_bytes()))
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / name)
    assert table["rb_flags"][0] == Flag.BAD_INPUT
    assert "gzip-compressed Avro" in table["reason"][0], table["reason"][0]


def test_alert_rows_carry_their_object(models, tmp_path):
    """ZTF packets: objectId (the name brokers and catalogues use) next to the candid in
    `source`; other inputs of the same call get a masked object."""
    pytest.importorskip("fastavro")
    write_avro(tmp_path / "a.avro", [ztf_alert(5), ztf_alert(6)])
    (tmp_path / "b.fits").write_bytes(fits_bytes(triplet()))
    table = astromorph.predict_files("real-bogus", [tmp_path / "a.avro", tmp_path / "b.fits"],
                                     progress=False)
    assert list(table["source"][:2]) == ["5", "6"]
    assert list(table["object"][:2]) == ["ZTF5", "ZTF6"] and table["object"].mask[2]
    assert "objectId" in table["object"].description
    # a packet that cannot be read is still an alert packet: the column is there, masked
    (tmp_path / "broken.avro").write_bytes((tmp_path / "a.avro").read_bytes()[:3000])
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "broken.avro")
    assert table["object"].mask.tolist() == [True]
    # FITS stamps only: no object column
    assert "object" not in astromorph.predict_files("real-bogus", tmp_path / "b.fits",
                                                    progress=False).colnames


def test_alert_rows_carry_their_position(models, tmp_path, capsys):
    """Alert rows give the candidate's sky position, ``ra`` and ``dec`` in degrees (ZTF
    candidate.ra/dec, Rubin diaSource.ra/dec), masked where the record could not be read or
    gives none and for other inputs, as ``object`` is; the unit survives the table formats."""
    pytest.importorskip("fastavro")
    write_avro(tmp_path / "a.avro", [ztf_alert(5, ra=10.5, dec=-3.25),
                                     ztf_alert(6, ra=None, dec=None)])
    write_avro(tmp_path / "r.avro", [rubin_alert(11, ra=150.0, dec=2.0)], schema=RUBIN_SCHEMA)
    (tmp_path / "b.fits").write_bytes(fits_bytes(triplet()))
    (tmp_path / "broken.avro").write_bytes((tmp_path / "a.avro").read_bytes()[:3000])
    inputs = [tmp_path / n for n in ("a.avro", "r.avro", "b.fits", "broken.avro")]
    table = quiet(astromorph.predict_files, "real-bogus", inputs, progress=False)
    assert table.colnames[:4] == ["source", "object", "ra", "dec"]
    assert table["ra"].tolist() == [10.5, None, 150.0, None, None]
    assert table["dec"].tolist() == [-3.25, None, 2.0, None, None]
    for name in ("ra", "dec"):
        assert table[name].unit == "deg" and table[name].dtype == np.float64
        assert f"candidate.{name}" in table[name].description
        assert f"diaSource.{name}" in table[name].description
    assert (table["ra"].quantity[0] == 10.5 * table["ra"].unit)
    # FITS stamps only: no position columns, as no object column
    assert not {"ra", "dec"} & set(astromorph.predict_files("real-bogus", tmp_path / "b.fits",
                                                            progress=False).colnames)
    for ext in (".ecsv", ".fits", ".parquet"):
        if ext == ".parquet" and importlib.util.find_spec("pyarrow") is None:
            continue
        out = tmp_path / f"scores{ext}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert cli.main(["predict", "real-bogus", *map(str, inputs), "-o", str(out),
                             "--no-progress"]) == 0
        back = Table.read(out)
        for name in ("ra", "dec"):
            assert back[name].unit == "deg", (ext, name)
            assert np.ma.getmaskarray(back[name]).tolist() == [False, True, False, True, True]
        assert back["ra"][0] == 10.5 and back["dec"][2] == 2.0
    capsys.readouterr()


def test_alert_without_fastavro(models, tmp_path, monkeypatch):
    pytest.importorskip("fastavro")
    write_avro(tmp_path / "a.avro", [ztf_alert(1)])
    monkeypatch.setitem(sys.modules, "fastavro", None)
    with pytest.raises(MissingDependencyError, match=r"astromorph\[alerts\]"):
        astromorph.predict_files("real-bogus", tmp_path / "a.avro")


def test_avro_codec_without_its_library_is_a_missing_dependency(models, tmp_path,
                                                              monkeypatch):
    # snappy blocks are decoded with cramjam (or python-snappy): without either a snappy
    # packet is no "corrupt or truncated Avro" row but a MissingDependencyError naming the
    # package
    pytest.importorskip("fastavro")
    write_snappy_avro(tmp_path / "a.avro", [ztf_alert(1), ztf_alert(2)])
    monkeypatch.setitem(sys.modules, "cramjam", None)
    monkeypatch.setitem(sys.modules, "snappy", None)
    with pytest.raises(MissingDependencyError, match="'snappy' codec.*pip install cramjam"):
        astromorph.predict_files("real-bogus", tmp_path / "a.avro")


def test_avro_snappy_packet_reads(models, tmp_path, snappy_library):
    pytest.importorskip("fastavro")
    write_snappy_avro(tmp_path / "a.avro", [ztf_alert(1), ztf_alert(2)])
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path / "a.avro")
    assert list(table["source"]) == ["1", "2"] and not table["rb_flags"].any()


def test_picture_without_pillow(models, tmp_path, monkeypatch):
    write_picture(tmp_path / "a.png", colour_picture())
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingDependencyError, match=r"astromorph\[images\]"):
        astromorph.predict_files("morphology", tmp_path / "a.png")


@requires_data
def test_real_ztf_alerts(models):
    import fastavro

    paths = sorted(ALERTS.glob("*.avro"))
    if not paths:
        pytest.skip("no ZTF alert packets")
    table = astromorph.predict_files("real-bogus", ALERTS)
    candids, objects, positions = [], {}, {}
    for p in paths:
        with open(p, "rb") as f:
            for rec in fastavro.reader(f):
                candids.append(str(rec["candid"]))
                objects[str(rec["candid"])] = rec["objectId"]
                positions[str(rec["candid"])] = (rec["candidate"]["ra"], rec["candidate"]["dec"])
                # The fast FITS parser agrees with astropy on every real cutout.
                for key in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
                    blob = rec[key]["stampData"]
                    fast, _ = parse_fits_bytes(blob)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        slow = fits.getdata(io.BytesIO(gzip.decompress(blob)))
                    np.testing.assert_array_equal(fast, slow)
    assert sorted(table["source"]) == sorted(candids)
    assert [objects[s] for s in table["source"]] == list(table["object"])
    # the candidate's position, kept by the reader schema that drops most of the record
    assert [positions[s] for s in table["source"]] == list(zip(table["ra"], table["dec"]))
    assert table["ra"].unit == "deg" and not np.any(table["ra"].mask)
    assert not table["rb_flags"].any() and not np.any(table["rb_score"].mask)
    # The candidate is positive in the difference fed to the model, whatever isdiffpos.
    for s in read_file(paths[0]) + read_file(paths[-1]):
        assert s.data[2, 31, 31] > 0


# ----------------------------------------------------------------------------- batching
def test_stamps_of_many_files_are_batched(models, tmp_path, monkeypatch):
    for i in range(40):
        write_fits(tmp_path / f"t{i:02d}.fits", triplet(seed=i))
    model = astromorph.load_model("real-bogus")
    calls = []
    run = model._run
    monkeypatch.setattr(model, "_run", lambda batch, session=None:
                        calls.append(len(batch)) or run(batch, session))
    table = astromorph.predict_files(model, tmp_path, batch_size=16)
    assert calls == [16, 16, 8]
    one = astromorph.predict_files("real-bogus", tmp_path, batch_size=1)
    assert_scores(table["rb_score"], one["rb_score"], rtol=1e-6)
    assert list(table["source"]) == sorted(str(p) for p in tmp_path.iterdir())


def test_mixed_shapes_keep_input_order(models, tmp_path):
    for i in range(6):
        write_fits(tmp_path / f"t{i}.fits", triplet(63 if i % 2 else 51, seed=i), scale=1.0)
    table = astromorph.predict_files("real-bogus", tmp_path, batch_size=2)
    assert list(table["source"]) == [str(tmp_path / f"t{i}.fits") for i in range(6)]
    for i in range(6):
        single = astromorph.predict_files("real-bogus", tmp_path / f"t{i}.fits")
        assert table["rb_score"][i] == pytest.approx(single["rb_score"][0], rel=1e-6)


# ----------------------------------------------------------------------------- inputs & misuse
def test_directories_and_globs(models, tmp_path):
    sub = tmp_path / "d"
    sub.mkdir()
    for name in ("b.png", "a.png", "c.jpg"):
        write_picture(sub / name, colour_picture())
    (sub / "notes.txt").write_text("ignored")
    table = astromorph.predict_files("morphology", sub)
    assert [Path(s).name for s in table["source"]] == ["a.png", "b.png", "c.jpg"]
    table = astromorph.predict_files("morphology", str(sub / "*.png"))
    assert [Path(s).name for s in table["source"]] == ["a.png", "b.png"]
    table = astromorph.predict_files("morphology", [str(tmp_path / "**" / "*.jpg"), sub / "a.png",
                                                    sub / "a.png"])
    assert [Path(s).name for s in table["source"]] == ["c.jpg", "a.png"]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(model="nope"), ModelNotFoundError, "nope"),
    (dict(inputs="missing.fits"), InputNotFoundError, "missing.fits"),
    (dict(inputs="*.nothing"), InputNotFoundError, r"\*\.nothing"),
    (dict(inputs=[]), InputNotFoundError, "no inputs"),
    (dict(inputs=3), InvalidArgumentError, "int"),
    (dict(batch_size=0), InvalidArgumentError, "batch_size"),
    (dict(batch_size=2.5), InvalidArgumentError, "2.5"),
    (dict(write_header="out", in_place=True), InvalidArgumentError, "exclude"),
    (dict(crop_fraction=1.5), InvalidArgumentError, "crop_fraction"),
    (dict(crop_fraction="abc"), InvalidArgumentError, "crop_fraction"),  # was a ValueError
    (dict(crop_fraction=[0.5]), InvalidArgumentError, "crop_fraction"),  # was a TypeError
])
def test_misuse_raises_typed_errors(models, tmp_path, monkeypatch, kwargs, error, match):
    monkeypatch.chdir(tmp_path)
    write_picture(tmp_path / "a.png", colour_picture())
    (tmp_path / "empty").mkdir()
    args = dict(model="morphology", inputs="a.png")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        astromorph.predict_files(args.pop("model"), args.pop("inputs"), **args)
    with pytest.raises(InputNotFoundError, match="empty"):
        astromorph.predict_files("morphology", tmp_path / "empty")


# ----------------------------------------------------------------------------- headers
def test_write_header_copies(models, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    raw = np.arange(32 * 32, dtype=np.int16).reshape(32, 32)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.01, 5.0
    hdu.writeto(src / "int.fits")
    write_fits(src / "g.fits", galaxy())
    write_picture(src / "p.png", colour_picture())
    write_fits(src / "bad.fits", np.arange(10.0))
    before = {p.name: digest(p) for p in src.iterdir()}
    out = tmp_path / "out"
    with pytest.warns(AstromorphWarning, match="1 of 4 input.* not FITS"):
        table = quiet(astromorph.predict_files, "morphology", src, write_header=out)
    assert {p.name: digest(p) for p in src.iterdir()} == before  # originals untouched
    # No copy of the PNG (not FITS) nor of the unreadable 1-D FITS file.
    assert sorted(p.name for p in out.iterdir()) == ["g.fits", "int.fits"]
    model = astromorph.load_model("morphology")
    with fits.open(out / "g.fits") as hdul:
        h = hdul[0].header
        r = row(table, src / "g.fits")
        assert h["HIERARCH ASTROMORPH MORPHOLOGY P_RED"] == pytest.approx(r["morph_p_red"],
                                                                          rel=1e-6)
        assert h["HIERARCH ASTROMORPH MORPHOLOGY LABEL"] == r["morph_label"]
        assert h["HIERARCH ASTROMORPH MORPHOLOGY FLAGS"] == 0
        assert h["HIERARCH ASTROMORPH MORPHOLOGY VERSION"] == "0.0.1"
        assert h["HIERARCH ASTROMORPH MORPHOLOGY SHA256"] == model.sha256[:16]
        assert h["HIERARCH ASTROMORPH VERSION"] == astromorph.__version__
        np.testing.assert_array_equal(hdul[0].data, galaxy())
    with fits.open(out / "int.fits", do_not_scale_image_data=True) as hdul:
        np.testing.assert_array_equal(hdul[0].data, raw)  # raw integers and scaling kept
        assert hdul[0].header["BSCALE"] == 0.01
    with pytest.raises(OutputExistsError, match="g.fits"):
        astromorph.predict_files("morphology", src / "g.fits", write_header=out)
    astromorph.predict_files("morphology", src / "g.fits", write_header=out, overwrite=True)
    with pytest.raises(InvalidArgumentError, match="originals"):
        astromorph.predict_files("morphology", src / "g.fits", write_header=src)


def test_cli_header_option_errors_name_the_options(models, tmp_path, capsys):
    """On the command line the header-writing errors name --write-header and --in-place,
    not only the Python arguments; the input is untouched."""
    write_fits(tmp_path / "t.fits", triplet())
    before = digest(tmp_path / "t.fits")
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "--write-header",
                     str(tmp_path), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--write-header" in err and "--in-place" in err and "originals" in err
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "--write-header",
                     str(tmp_path / "h"), "--in-place", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--write-header" in err and "--in-place" in err
    assert digest(tmp_path / "t.fits") == before and not (tmp_path / "h").exists()


def test_write_header_folder_that_cannot_be_made(models, tmp_path, capsys):
    """A --write-header folder that cannot be created (under a file, say) is an OutputError
    naming it, one line from the command, not a NotADirectoryError traceback."""
    from astromorph.exceptions import OutputError

    write_fits(tmp_path / "t.fits", triplet())
    target = tmp_path / "t.fits" / "headers"
    with pytest.raises(OutputError, match="headers"):
        astromorph.predict_files("real-bogus", tmp_path / "t.fits", write_header=target)
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "--write-header",
                     str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astromorph: error: ") and "headers" in err and err.count("\n") == 1


def test_cli_output_table_is_not_one_of_the_header_copies(models, tmp_path, capsys):
    """-o naming the file a --write-header copy goes to: refused before any work (with
    --overwrite the table replaced the copy, exit 0)."""
    write_fits(tmp_path / "t.fits", triplet())
    hdr = tmp_path / "hdr"
    hdr.mkdir()
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "--write-header",
                     str(hdr), "-o", str(hdr / "t.fits"), "--overwrite", "--no-progress"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert list(hdr.iterdir()) == []


def test_cli_output_table_is_not_the_header_folder(models, tmp_path, capsys):
    """-o naming the --write-header folder itself: refused before any work (the folder was
    made and the copies written, then the table could not be written over it: exit 2 with
    the results lost)."""
    write_fits(tmp_path / "t.fits", triplet())
    out = tmp_path / "out.fits"
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "--write-header",
                     str(out), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "given twice" in err and "--write-header" in err and err.count("\n") == 1
    assert not out.exists()


def test_write_header_name_collision(models, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_fits(tmp_path / d / "x.fits", galaxy())
    with pytest.raises(InvalidArgumentError, match="same file name"):
        astromorph.predict_files("morphology", [tmp_path / "a" / "x.fits",
                                                tmp_path / "b" / "x.fits"],
                                 write_header=tmp_path / "out")


def test_in_place_update_and_rerun(models, tmp_path):
    write_fits(tmp_path / "t.fits", triplet())
    os.chmod(tmp_path / "t.fits", 0o640)
    table = astromorph.predict_files("real-bogus", tmp_path / "t.fits", in_place=True)
    astromorph.predict_files("real-bogus", tmp_path / "t.fits", in_place=True)
    with fits.open(tmp_path / "t.fits") as hdul:
        h = hdul[0].header
        assert h["HIERARCH ASTROMORPH REAL-BOGUS SCORE"] == pytest.approx(table["rb_score"][0],
                                                                          rel=1e-6)
        assert list(h.keys()).count("ASTROMORPH REAL-BOGUS SCORE") == 1  # replaced, not added
        np.testing.assert_array_equal(hdul[0].data, triplet())
    assert (tmp_path / "t.fits").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.fits"]


def test_in_place_failure_leaves_original(models, tmp_path, monkeypatch):
    write_fits(tmp_path / "t.fits", triplet())
    before = digest(tmp_path / "t.fits")
    real = fits.HDUList.writeto

    def broken(self, fileobj, *args, **kwargs):
        real(self, fileobj, *args, **kwargs)
        with open(fileobj, "r+b") as f:  # a half-written file, then a crash
            f.truncate(5000)
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", broken)
    with pytest.raises(OSError, match="disk full"):
        astromorph.predict_files("real-bogus", tmp_path / "t.fits", in_place=True)
    assert digest(tmp_path / "t.fits") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.fits"]  # no temp file left


def test_in_place_interrupted_says_which_files_were_updated(models, tmp_path, monkeypatch,
                                                            capsys, caplog):
    """Ctrl-C part-way through `predict --in-place`: the one error line (exit status 130)
    and the log (INFO, shown with -v) say which files have their keywords, complete, and which not (it said only
    "astromorph: interrupted"); the first file has them, the second is untouched."""
    import logging

    for name in ("a.fits", "b.fits", "c.fits"):
        write_fits(tmp_path / name, triplet())
    before = digest(tmp_path / "b.fits")
    real = fits.HDUList.writeto

    def writeto(self, *args, **kwargs):
        if str(self.filename()).endswith("b.fits"):  # Ctrl-C while the second is written
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(fits.HDUList, "writeto", writeto)
    with caplog.at_level(logging.INFO, logger="astromorph"):
        status = cli.main(["predict", "real-bogus", str(tmp_path), "--in-place",
                           "--no-progress", "-v", "-o", str(tmp_path / "out.ecsv")])
    assert status == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    a, b, c = (repr(str(tmp_path / n)) for n in ("a.fits", "b.fits", "c.fits"))
    said = (f"header results written: 1 ({a}; complete, kept); not written: 2 ({b}, {c})")
    assert err == f"astromorph: interrupted; {said}", err
    assert f"interrupted; {said}" in caplog.messages
    with fits.open(tmp_path / "a.fits") as hdul:
        assert "HIERARCH ASTROMORPH REAL-BOGUS SCORE" in hdul[0].header
    assert digest(tmp_path / "b.fits") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fits", "b.fits", "c.fits"]


@pytest.fixture
def python_sigint():
    """Ctrl-C handled by Python's own handler (`KeyboardInterrupt`) during the test, as in
    an interactive run: a process that a non-interactive shell starts in the background
    (``cmd &``, as CI may run the tests) inherits SIGINT ignored, and Python then installs
    no handler for it, so a raised SIGINT would do nothing."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("signum, status, said", [("SIGINT", 130, "interrupted"),
                                                  ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_in_place_interrupt_just_after_a_file_is_replaced_counts_it(models, tmp_path,
                                                                    monkeypatch, capsys,
                                                                    signum, status, said,
                                                                    python_sigint):
    """Ctrl-C (or SIGTERM) arriving while ``b.fits`` is moved into place (`os.replace` has
    done it, the bookkeeping not yet): the line says b.fits is written, as it is (it said
    "not written: 2 ('b.fits', 'c.fits')" while b.fits had its keywords: the signal was
    handled between the replace and the record). The signal is real (`signal.raise_signal`),
    handled by Python's own handler (or the command line's SIGTERM one) where it would be."""
    import signal

    from astromorph import _io

    for name in ("a.fits", "b.fits", "c.fits"):
        write_fits(tmp_path / name, triplet())
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if Path(dst).name == "b.fits":
            signal.raise_signal(getattr(signal, signum))

    monkeypatch.setattr(_io.os, "replace", replace)
    got = cli.main(["predict", "real-bogus", str(tmp_path), "--in-place", "--no-progress",
                    "-o", str(tmp_path / "out.ecsv")])
    assert got == status
    err = capsys.readouterr().err.strip().splitlines()[-1]
    a, b, c = (repr(str(tmp_path / n)) for n in ("a.fits", "b.fits", "c.fits"))
    assert err == (f"astromorph: {said}; header results written: 2 ({a}, {b}; complete, "
                   f"kept); not written: 1 ({c})"), err
    for name, has in (("a.fits", True), ("b.fits", True), ("c.fits", False)):
        with fits.open(tmp_path / name) as hdul:
            assert ("HIERARCH ASTROMORPH REAL-BOGUS SCORE" in hdul[0].header) == has, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fits", "b.fits", "c.fits"]


def test_header_copies_interrupt_just_after_a_copy_is_moved_in_counts_it(models, tmp_path,
                                                                         monkeypatch,
                                                                         python_sigint):
    """`write_header` copies: Ctrl-C arriving as the copy of b.fits is moved into place
    (a real signal): the interruption's account lists that copy as written, as it is (it
    said "not written", and a second run without overwrite then refused the copy as
    existing); no temporary folder is left."""
    import signal

    from astromorph import _io

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a.fits", "b.fits", "c.fits"):
        write_fits(src / name, triplet())
    real = os.replace

    def replace(source, dst, *args, **kwargs):
        real(source, dst, *args, **kwargs)
        if Path(dst) == out / "b.fits":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(_io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt) as info:
        astromorph.predict_files("real-bogus", src, write_header=out, progress=False)
    a, b, c = (repr(str(out / n)) for n in ("a.fits", "b.fits", "c.fits"))
    assert info.value.astromorph_note == (f"header results written: 2 ({a}, {b}; complete, "
                                          f"kept); not written: 1 ({c})")
    assert sorted(p.name for p in out.iterdir()) == ["a.fits", "b.fits"]


def test_header_file_astropy_cannot_write_back_is_skipped_with_a_warning(models, tmp_path,
                                                                        monkeypatch):
    """A file the reader scores but astropy refuses to write back (VerifyError): that file
    gets no header copy and a warning; the other files get theirs and the table is returned
    (it used to raise VerifyError after some copies were written, losing the table). The
    vehicle was a gzip of two concatenated FITS files, now refused by the reader (flagged
    BAD_INPUT, so it has no results to write): astropy's refusal is simulated."""
    src = tmp_path / "in"
    src.mkdir()
    write_fits(src / "g.fits", galaxy())
    write_fits(src / "twice.fits", galaxy(seed=1))
    one = (src / "g.fits").read_bytes()
    (src / "joined.fits.gz").write_bytes(gzip.compress(one) + gzip.compress(one))
    before = {p.name: digest(p) for p in src.iterdir()}
    real_writeto = fits.HDUList.writeto

    def writeto(self, *args, **kwargs):
        if str(self.filename()).endswith("twice.fits"):
            raise fits.verify.VerifyError("HDU 1: the file holds a second primary HDU")
        return real_writeto(self, *args, **kwargs)
    monkeypatch.setattr(fits.HDUList, "writeto", writeto)
    out = tmp_path / "out"
    with pytest.warns(AstromorphWarning, match="twice.fits.*cannot write the file back"):
        table = quiet(astromorph.predict_files, "morphology", src, write_header=out)
    assert len(table) == 3
    assert not np.ma.getmaskarray(row(table, src / "twice.fits")["morph_label"])
    assert row(table, src / "joined.fits.gz")["morph_flags"] == Flag.BAD_INPUT
    assert sorted(p.name for p in out.iterdir()) == ["g.fits"]  # no temporary file left
    assert {p.name: digest(p) for p in src.iterdir()} == before
    with pytest.warns(AstromorphWarning, match="cannot write the file back"):
        quiet(astromorph.predict_files, "morphology", src / "twice.fits", in_place=True)
    assert {p.name: digest(p) for p in src.iterdir()} == before
    assert sorted(p.name for p in src.iterdir()) == ["g.fits", "joined.fits.gz", "twice.fits"]


def test_header_file_astropy_cannot_open_is_skipped_with_a_warning(models, tmp_path):
    """A card astropy cannot parse (BSCALE = NAN): the fast reader flags the file, astropy
    refuses to open it for the header copy ("Empty or corrupt FITS file", an OSError). That
    is the input's problem: a warning, and the other copies and the table are kept (it used
    to abort the run with OutputError after some copies were written)."""
    src = tmp_path / "in"
    src.mkdir()
    write_fits(src / "g.fits", galaxy())
    write_fits(src / "nan.fits", galaxy(), EXPTIME=2.0)
    raw = (src / "nan.fits").read_bytes()
    card = b"EXPTIME = " + b"2.0".rjust(20)
    assert card in raw
    (src / "nan.fits").write_bytes(raw.replace(card, b"BSCALE  = " + b"NAN".rjust(20)))
    before = {p.name: digest(p) for p in src.iterdir()}
    out = tmp_path / "out"
    with pytest.warns(AstromorphWarning, match="nan.fits.*astropy cannot open the file"):
        table = quiet(astromorph.predict_files, "morphology", src, write_header=out)
    assert len(table) == 2
    assert sorted(p.name for p in out.iterdir()) == ["g.fits"]
    assert {p.name: digest(p) for p in src.iterdir()} == before


def test_header_files_not_written_are_one_warning_and_the_log_one_line(models, tmp_path,
                                                                        caplog):
    """Many files whose header copy cannot be written: one warning for the batch (how many,
    the first five named), not one per file; and the files written are one INFO line, each
    file at DEBUG (with -v, a folder of alerts gave a line per file)."""
    import logging

    src = tmp_path / "in"
    src.mkdir()
    write_fits(src / "g.fits", galaxy())
    write_fits(src / "h.fits", galaxy())
    card = b"EXPTIME = " + b"2.0".rjust(20)
    for i in range(7):
        write_fits(src / f"nan{i}.fits", galaxy(), EXPTIME=2.0)
        raw = (src / f"nan{i}.fits").read_bytes()
        (src / f"nan{i}.fits").write_bytes(raw.replace(card, b"BSCALE  = " + b"NAN".rjust(20)))
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught, \
            caplog.at_level(logging.INFO, logger="astromorph"):
        warnings.simplefilter("always")
        table = astromorph.predict_files("morphology", src, write_header=out, progress=False)
    texts = [str(w.message) for w in caught if "results not written" in str(w.message)]
    assert len(texts) == 1, texts
    assert texts[0].startswith("results not written to the header of 7 file(s): ")
    assert "nan0.fits" in texts[0] and "astropy cannot open the file" in texts[0]
    assert "; and 2 more; their rows are in the table" in texts[0]
    assert len(table) == 9
    assert sorted(p.name for p in out.iterdir()) == ["g.fits", "h.fits"]
    lines = [r.getMessage() for r in caplog.records if "header" in r.getMessage()]
    assert lines == ["results written to the headers of 2 file(s)"], lines


def test_in_place_keeps_compressed_pixels_and_follows_links(models, tmp_path):
    """Header keywords only: a tile-compressed float image keeps its compressed bytes
    (re-compressing would quantise the pixels again), and an input reached through a
    symbolic link is updated where it lives, the link kept."""
    data = triplet()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(tmp_path / "c.fits.fz")
    with fits.open(tmp_path / "c.fits.fz", disable_image_compression=True) as hdul:
        before = bytes(hdul[1].data.tobytes())
    pixels = fits.getdata(tmp_path / "c.fits.fz", 1)
    (tmp_path / "real").mkdir()
    write_fits(tmp_path / "real" / "t.fits", data)
    (tmp_path / "link.fits").symlink_to(tmp_path / "real" / "t.fits")
    table = astromorph.predict_files("real-bogus", [tmp_path / "c.fits.fz", tmp_path / "link.fits"],
                                     in_place=True)
    with fits.open(tmp_path / "c.fits.fz", disable_image_compression=True) as hdul:
        assert bytes(hdul[1].data.tobytes()) == before
    with fits.open(tmp_path / "c.fits.fz") as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU)
        np.testing.assert_array_equal(hdul[1].data, pixels)
        assert hdul[1].header["HIERARCH ASTROMORPH REAL-BOGUS SCORE"] == \
            pytest.approx(table["rb_score"][0], rel=1e-6)
    assert (tmp_path / "link.fits").is_symlink()
    assert "HIERARCH ASTROMORPH REAL-BOGUS SCORE" in fits.getheader(tmp_path / "real" / "t.fits")


def test_header_options_warn_for_inputs_without_headers(models, tmp_path):
    write_picture(tmp_path / "a.png", colour_picture())
    with pytest.warns(AstromorphWarning, match="nothing will be written"):
        astromorph.predict_files("morphology", tmp_path / "a.png", write_header=tmp_path / "h")
    assert not (tmp_path / "h").exists()


def test_cli_output_never_replaces_an_input(models, tmp_path, capsys):
    write_fits(tmp_path / "t.fits", triplet())
    before = digest(tmp_path / "t.fits")
    assert cli.main(["predict", "real-bogus", str(tmp_path), "-o", str(tmp_path / "t.fits"),
                     "--overwrite"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    assert digest(tmp_path / "t.fits") == before
    (tmp_path / "dir.ecsv").mkdir()
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "-o",
                     str(tmp_path / "dir.ecsv"), "--overwrite"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_write_errors_are_typed_and_leave_the_old_file(tmp_path):
    """A failing write (full disk, say) is an OutputError naming the file; the old file stays."""
    from astromorph._io import atomic_output
    from astromorph.exceptions import OutputError

    out = tmp_path / "t.ecsv"
    out.write_text("old")
    with pytest.raises(OutputError, match=r"t.ecsv.*No space left.*old file is unchanged"):
        with atomic_output(out, overwrite=True) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.ecsv"]


def test_atomic_output_fsyncs_the_file_before_moving_it_into_place(tmp_path, monkeypatch):
    """The new file's content is fsync'ed before `os.replace` moves it over the destination,
    and the folder after: after a crash, the destination is the old file or the whole new
    one, never a new name over data still in the page cache (an empty or partial file)."""
    import os

    from astromorph._io import atomic_output

    out = tmp_path / "t.ecsv"
    out.write_text("old")
    events, fsync, replace = [], os.fsync, os.replace

    def fsynced(fd):
        events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")
                       or os.path.isdir(os.readlink(f"/proc/self/fd/{fd}"))))
        return fsync(fd)

    def replaced(src, dst):
        events.append(("replace", open(src).read()))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsynced)
    monkeypatch.setattr(os, "replace", replaced)
    with atomic_output(out, overwrite=True) as tmp:
        tmp.write_text("new")
    # the file (not a folder) first, then the move, then the folder
    assert events == [("fsync", False), ("replace", "new"), ("fsync", True)]
    assert out.read_text() == "new"


def test_atomic_output_replaces_the_file_instead_of_writing_into_it(tmp_path):
    """The old file is replaced by a new one (a new inode), not written over: a reader that
    opened it before still reads the old content whole, never a mix of old and new."""
    from astromorph._io import atomic_output

    out = tmp_path / "t.ecsv"
    out.write_text("old content")
    with open(out) as reader:
        before = out.stat().st_ino
        with atomic_output(out, overwrite=True) as tmp:
            tmp.write_text("new")
        assert reader.read() == "old content"
    assert out.stat().st_ino != before and out.read_text() == "new"


def test_atomic_output_syncs_the_destination_folder(tmp_path, monkeypatch):
    """The folder fsync'ed after the move is the destination's (where the new name was
    made), not the private temporary folder about to be removed: only the former makes
    the new name survive a crash."""
    from astromorph import _io

    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "t.ecsv"
    target.write_text("old")
    link = tmp_path / "link.ecsv"
    link.symlink_to(target)
    synced, fsync_dir = [], _io._fsync_dir

    def recorded(directory):
        synced.append(Path(directory))
        return fsync_dir(directory)

    monkeypatch.setattr(_io, "_fsync_dir", recorded)
    with _io.atomic_output(tmp_path / "new.ecsv") as tmp:
        tmp.write_text("new")
    with _io.atomic_output(link, overwrite=True) as tmp:  # the folder of the link's target
        tmp.write_text("new")
    assert synced == [tmp_path, tmp_path / "real"]


def test_atomic_output_gives_the_new_file_its_mode_before_it_is_in_place(tmp_path,
                                                                         monkeypatch):
    """The replaced file's permission bits are set on the new file before it is moved in:
    a private file (0600) is never visible under its name with the process default (0644
    with umask 022, readable by all), not even for an instant."""
    from astromorph import _io

    out = tmp_path / "private.ecsv"
    out.write_text("old")
    os.chmod(out, 0o600)
    modes, replace = [], os.replace

    def replaced(src, dst):
        modes.append(os.stat(src).st_mode & 0o7777)
        return replace(src, dst)

    monkeypatch.setattr(_io.os, "replace", replaced)
    with _io.atomic_output(out, overwrite=True) as tmp:
        tmp.write_text("new")
    assert modes == [0o600]
    assert out.stat().st_mode & 0o7777 == 0o600 and out.read_text() == "new"


def test_atomic_output_through_a_link_keeps_the_target_mode(tmp_path):
    """Through a symbolic link the new file takes the mode of the file the link points to
    (0640), not the link's own (0777 for a link: the new file was writable by all)."""
    target = tmp_path / "t.ecsv"
    write_table(Table({"a": [1]}), target)
    os.chmod(target, 0o640)
    link = tmp_path / "link.ecsv"
    link.symlink_to(target)
    write_table(Table({"b": [2]}), link, overwrite=True)
    assert link.is_symlink() and Table.read(target).colnames == ["b"]
    assert target.stat().st_mode & 0o7777 == 0o640


def test_atomic_output_keeps_special_mode_bits_and_takes_an_explicit_mode(tmp_path):
    """All of the replaced file's mode bits are kept, the set-group-ID bit too (a shared
    folder's files); an explicit ``mode`` wins over the old file's."""
    from astromorph._io import atomic_output

    out = tmp_path / "t.ecsv"
    out.write_text("old")
    os.chmod(out, 0o2640)
    if out.stat().st_mode & 0o7777 != 0o2640:
        pytest.skip("this file system or user cannot set the set-group-ID bit")
    with atomic_output(out, overwrite=True) as tmp:
        tmp.write_text("new")
    assert out.stat().st_mode & 0o7777 == 0o2640
    with atomic_output(out, overwrite=True, mode=0o600) as tmp:
        tmp.write_text("newer")
    assert out.stat().st_mode & 0o7777 == 0o600 and out.read_text() == "newer"


def test_atomic_output_into_a_missing_folder_is_refused_naming_it(tmp_path):
    """An output in a folder that does not exist is an `InvalidArgumentError` naming the
    folder, before any work (`check_output`) and when written: not an `OutputError` that
    blames permissions or a read-only file system."""
    from astromorph._io import check_output

    missing = tmp_path / "missing"
    said = rf"output directory '{re.escape(str(missing))}' does not exist"
    with pytest.raises(InvalidArgumentError, match=said):
        check_output(missing / "t.ecsv", table=True)
    with pytest.raises(InvalidArgumentError, match=said):
        write_table(Table({"a": [1]}), missing / "t.ecsv")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_with_nothing_written_keeps_the_old_file(tmp_path):
    """A writer that wrote nothing to the temporary path (a bug, or a library writing to
    another name) is an `OutputError` saying so, not "No such file or directory" (which
    reads as if the destination were missing); the old file is kept."""
    from astromorph._io import atomic_output

    out = tmp_path / "t.ecsv"
    out.write_text("old")
    with pytest.raises(OutputError, match=r"nothing was written to the temporary file for "
                       r".*t\.ecsv.*the old file is unchanged"):
        with atomic_output(out, overwrite=True):
            pass
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.ecsv"]


def test_atomic_output_errors_of_astromorph_pass_through_unwrapped(tmp_path, monkeypatch):
    """An astromorph error raised in the block keeps its type and message (an input found
    missing while the output is written stays an `InputNotFoundError`, not an OutputError),
    and the folder that cannot take the temporary file is named once, with its errno, not
    wrapped in a second "cannot write" message."""
    from astromorph import _io
    from astromorph.exceptions import InputNotFoundError

    out = tmp_path / "t.ecsv"
    with pytest.raises(InputNotFoundError, match="^image 'gone.png' does not exist$"):
        with _io.atomic_output(out) as tmp:
            tmp.write_text("half")
            raise InputNotFoundError("image 'gone.png' does not exist")
    assert list(tmp_path.iterdir()) == []

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_io.tempfile, "mkdtemp", denied)
    with pytest.raises(OutputError) as info:
        write_table(Table({"a": [1]}), out)
    assert str(info.value) == f"cannot write into {str(tmp_path)!r}: Permission denied"
    assert info.value.errno == errno.EACCES
    assert list(tmp_path.iterdir()) == []


def test_check_output_refuses_a_folder_it_cannot_write_into(tmp_path, monkeypatch):
    """`check_output` refuses, before any work, an output in a folder the process cannot
    write into (no permission, a read-only file system), naming the folder. As root every
    folder is writable by permission, so there an unwritable folder is simulated."""
    from astromorph import _io
    from astromorph._io import check_output

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root
            access = os.access
            monkeypatch.setattr(_io.os, "access", lambda p, m, *a, **k: (
                False if Path(p) == folder else access(p, m, *a, **k)))
        with pytest.raises(OutputError, match=rf"cannot write into {re.escape(repr(str(folder)))}"
                           r" \(permission denied or a read-only file system\)"):
            check_output(folder / "t.ecsv", table=True)
        check_output(tmp_path / "t.ecsv", table=True)  # a writable folder passes
    finally:
        folder.chmod(0o755)


def test_interrupt_while_the_temporary_folder_is_removed_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C arriving while the private temporary folder is being removed (after the file
    was moved into place, or after a failed write) still removes it: no ``.astromorph-tmp-*``
    folder is left beside the output (in the inputs' own folder, with in_place)."""
    import shutil

    from astromorph import _io

    rmtree, calls = shutil.rmtree, []

    def interrupted(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(_io.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_table(Table({"a": [1, 2]}), tmp_path / "t.ecsv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.ecsv"]


def test_interrupt_while_the_temporary_folder_is_made_or_removed_leaves_nothing(
        tmp_path, monkeypatch, python_sigint):
    """Ctrl-C arriving just as the private temporary folder is made (before the code that
    removes it is entered: it was left behind), or twice while it is removed (the second
    cut the retry short): the signals (real ones, `signal.raise_signal`) are held until the
    step is done, then `KeyboardInterrupt` is raised once, and no folder is left."""
    import signal
    import tempfile

    from astromorph import _io

    mkdtemp = tempfile.mkdtemp

    def made(*args, **kwargs):
        folder = mkdtemp(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return folder

    monkeypatch.setattr(_io.tempfile, "mkdtemp", made)
    with pytest.raises(KeyboardInterrupt):
        write_table(Table({"a": [1, 2]}), tmp_path / "t.ecsv")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    rmtree = shutil.rmtree

    def removed(path, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(_io.shutil, "rmtree", removed)
    with pytest.raises(KeyboardInterrupt):
        write_table(Table({"a": [1, 2]}), tmp_path / "t.ecsv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.ecsv"]


def test_interrupts_deferred_holds_the_signal_until_the_block_is_done(python_sigint):
    """`interrupts_deferred`: a Ctrl-C raised in the block is handled after it (the whole
    block ran), once; the handlers are restored; outside the main thread it is a no-op."""
    import signal
    import threading

    from astromorph._io import interrupts_deferred

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            steps.append("after")
    assert steps == ["after"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    ran = []

    def elsewhere():
        with interrupts_deferred():
            ran.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    assert ran == [before[0]]


def test_gzipped_output_records_its_own_name(tmp_path):
    """A ``.fits.gz`` table written atomically names itself, not a temporary file, in
    the gzip header (what ``gunzip -N`` restores)."""
    out = tmp_path / "cat.fits.gz"
    write_table(Table({"a": [1, 2]}), out)
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[3] & 0x08  # gzip with an FNAME field
    name = raw[10:raw.index(b"\0", 10)].decode()
    assert name == "cat.fits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.fits.gz"]
    assert list(Table.read(out)["a"]) == [1, 2]


def test_replacing_a_file_never_writes_into_the_old_one(tmp_path):
    """The new file is moved over the old one (os.replace): a reader that has the old file
    open keeps reading all of its old content."""
    out = tmp_path / "t.ecsv"
    write_table(Table({"a": [1, 2, 3]}), out)
    old = out.read_bytes()
    with open(out, "rb") as f:
        write_table(Table({"b": [4.0]}), out, overwrite=True)
        assert f.read() == old
    assert Table.read(out).colnames == ["b"]


def test_multi_stamp_file_header_keywords(models, tmp_path):
    write_fits(tmp_path / "s.fits", np.stack([triplet(seed=s) for s in range(2)]))
    table = astromorph.predict_files("real-bogus", tmp_path / "s.fits", in_place=True)
    h = fits.getheader(tmp_path / "s.fits")
    for i in range(2):
        assert h[f"HIERARCH ASTROMORPH REAL-BOGUS S{i} SCORE"] == \
            pytest.approx(table["rb_score"][i], rel=1e-6)


# ----------------------------------------------------------------------------- output tables
@pytest.mark.parametrize("ext", [".ecsv", ".fits", ".csv", ".parquet"])
def test_output_formats_round_trip(models, tmp_path, ext):
    if ext == ".parquet":
        pytest.importorskip("pyarrow")
        pytest.importorskip("pandas")
    write_picture(tmp_path / "a.png", colour_picture())
    write_fits(tmp_path / "b.fits", np.arange(5.0))
    table = quiet(astromorph.predict_files, "morphology", tmp_path)
    out = tmp_path / f"out{ext}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if ext == ".csv" else "error")  # CSV: meta lost
        write_table(table, out)
    back = Table.read(out)
    assert back.colnames == table.colnames
    assert list(back["source"]) == list(table["source"])
    assert list(back["morph_flags"]) == list(table["morph_flags"])
    assert back["morph_p_red"][0] == pytest.approx(table["morph_p_red"][0])
    assert np.ma.is_masked(back["morph_p_red"][1]) or np.isnan(back["morph_p_red"][1])
    assert str(back["reason"][1]) == str(table["reason"][1])
    if ext in (".ecsv", ".fits"):
        assert back.meta["model_sha256"] == table.meta["model_sha256"]
    with pytest.raises(OutputExistsError):
        write_table(table, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_table(table, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.fits", f"out{ext}"]


def test_csv_output_warns_that_it_drops_provenance_units_and_descriptions(tmp_path):
    """CSV holds values only: the provenance in meta, units and descriptions are not written,
    so writing one says so (naming what is lost) instead of dropping them silently."""
    from astropy import units as u

    from astromorph.exceptions import LossyOutputWarning

    table = Table({"a": [1.0, 2.0], "b": [3, 4]}, meta={"astromorph_model": "morphology"})
    table["a"].unit = u.arcsec
    table["b"].description = "bits"
    with pytest.warns(LossyOutputWarning, match=r"astromorph_model.*units \(a\).*"
                                                r"descriptions \(b\).*\.ecsv"):
        write_table(table, tmp_path / "out.csv")
    assert list(Table.read(tmp_path / "out.csv")["b"]) == [3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to lose, nothing said
        write_table(Table({"a": [1, 2]}), tmp_path / "plain.csv")


def test_csv_output_keeps_values_of_columns_with_a_display_format(tmp_path):
    """CSV keeps values: a column's display format (the packaged catalogue's RA and Dec have
    ``.6f``, a FITS catalogue's TDISP ``F8.3``) is not applied to what is written, as astropy's
    CSV writer applies it: positions rounded to 1e-6 deg (up to 1.8 mas) gave other stamps and
    scores when the CSV was annotated again. Formats are named among what CSV does not keep."""
    from astromorph.exceptions import LossyOutputWarning

    ra = np.array([53.16633658483819, 53.16138619716071])
    table = Table({"ra": ra, "mag": np.array([21.123456, 22.5], np.float32),
                   "n": np.array([1, 2])})
    table["ra"].info.format = ".6f"
    table["mag"].info.format = "8.3f"
    table["n"].info.format = "05d"
    with pytest.warns(LossyOutputWarning, match=r"display formats \(ra, mag, n\)"):
        write_table(table, tmp_path / "out.csv")
    back = Table.read(tmp_path / "out.csv")
    assert back["ra"].tolist() == ra.tolist()
    assert back["mag"].astype(np.float32).tolist() == table["mag"].tolist()
    assert back["n"].tolist() == [1, 2]
    assert table["ra"].info.format == ".6f"  # the caller's table is unchanged


def test_fits_output_warns_that_it_unmasks_boolean_columns(tmp_path):
    """astropy writes a masked boolean column to FITS without its mask (masked entries come
    back as real True/False): writing one says so, naming the column."""
    from astropy.table import MaskedColumn

    from astromorph.exceptions import LossyOutputWarning

    from astropy.coordinates import SkyCoord

    table = Table({"neg": MaskedColumn([True, False], mask=[True, False]),
                   "ok": MaskedColumn([True, False], mask=[False, False]),
                   "pos": SkyCoord([1, 2], [3, 4], unit="deg")})
    with pytest.warns(LossyOutputWarning, match=r"masked entries of boolean column\(s\) neg\b"):
        write_table(table, tmp_path / "out.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing masked, nothing lost
        write_table(table[1:], tmp_path / "clean.fits")
        write_table(table, tmp_path / "out.ecsv")


def test_write_table_rejects_unknown_extension(tmp_path):
    with pytest.raises(InvalidArgumentError, match="out.xlsx"):
        write_table(Table({"a": [1]}), tmp_path / "out.xlsx")
    with pytest.raises(InvalidArgumentError, match="multidimensional"):
        write_table(Table({"e": np.ones((2, 3))}), tmp_path / "out.csv")


@pytest.mark.parametrize("ext", [".ecsv", ".fits", ".parquet"])
def test_write_table_zero_rows_with_multidimensional_columns_reads_back(tmp_path, ext):
    """A zero-row table with an embedding column (every catalogue row off the images, an
    empty stamp table) was written as ECSV that astropy cannot read back ("shape mismatch
    between value and column specifier"): each format now reads back with the columns,
    dtypes, (0, D) shapes, units, descriptions and meta."""
    import astropy.units as u
    from astropy.table import MaskedColumn, QTable

    if ext == ".parquet":
        pytest.importorskip("pyarrow")
    table = QTable({"id": np.zeros(0, np.int64), "embedding": np.zeros((0, 4), np.float32),
                    "cube": np.zeros((0, 2, 3), np.int16), "label": np.zeros((0, 2), "U5"),
                    "q": np.zeros((0, 3)) * u.mJy},
                   meta={"astromorph_model": "embedding", "n": 3})
    table["embedding"].unit = "pix"
    table["embedding"].info.description = "unit vector"
    table["m"] = MaskedColumn(np.zeros((0, 2)), mask=np.zeros((0, 2), bool))
    if ext != ".ecsv":  # FITS and Parquet hold no string arrays
        del table["label"]
    if ext == ".parquet":  # astropy flattens the rows of 3-D columns in Parquet, at any length
        del table["cube"]
    write_table(table, tmp_path / f"out{ext}")
    back = Table.read(tmp_path / f"out{ext}")
    assert back.colnames == table.colnames
    assert dict(back.meta) == table.meta
    for name in table.colnames:
        assert back[name].shape == table[name].shape, name
        assert back[name].dtype.newbyteorder("=") == table[name].dtype, name
    assert back["embedding"].unit == "pix" and back["q"].unit == u.mJy
    if ext != ".fits":
        assert back["embedding"].description == "unit vector"
    assert isinstance(QTable.read(tmp_path / f"out{ext}")["q"], u.Quantity)


def test_cli_annotate_empty_stamp_table_with_embedding_reads_back(tmp_path):
    """`astromorph annotate` of a stamp table with no rows, with the embedding model, wrote
    an ECSV that Table.read refused; it now reads back with the (0, 256) embedding."""
    Table({"id": np.zeros(0, np.int64), "stamp": np.zeros((0, 64, 64), np.float32)}).write(
        tmp_path / "in.fits")
    out = tmp_path / "out.ecsv"
    assert cli.main(["annotate", str(tmp_path / "in.fits"), "-m", "embedding",
                     "--pixel-scale", "0.262", "-o", str(out), "--no-progress"]) == 0
    back = Table.read(out)
    assert back["embedding"].shape == (0, 256) and back["embedding"].dtype == np.float32
    assert back["stamp"].shape == (0, 64, 64)
    assert back.meta["astromorph_model"] == "embedding"


def test_write_table_parquet_warns_it_flattens_stamp_cubes(tmp_path):
    """astropy's Parquet holds an array column as fixed-size lists without their shape: a
    (N, 4, 4) stamp column came back (N, 16) without a word. write_table now says so."""
    pytest.importorskip("pyarrow")
    from astromorph.exceptions import LossyOutputWarning

    table = Table({"stamp": np.ones((2, 4, 4), np.float32), "vec": np.ones((2, 3))})
    with pytest.warns(LossyOutputWarning, match=r"stamp \(4, 4\).*rows of 16.*\.ecsv or \.fits"):
        write_table(table, tmp_path / "out.parquet")
    assert Table.read(tmp_path / "out.parquet")["stamp"].shape == (2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2-D columns are kept as they are
        write_table(table[["vec"]], tmp_path / "vec.parquet")


def _ecsv_kinds_table(n=40):
    """A table with a column of each kind ECSV writes (masked and not)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import MaskedColumn, QTable
    from astropy.time import Time

    rng = np.random.default_rng(5)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e16, 1e-5, 1 / 3, -np.nan, 5e-324])
    floats = rng.normal(size=n) * 10.0 ** rng.integers(-8, 9, n)
    floats[:special.size] = special

    def masked(data, fraction=0.3):
        return MaskedColumn(data, mask=rng.random(np.shape(data)) < fraction, fill_value=0)

    table = QTable(meta={"astromorph_model": "m", "note": "é, \"quoted\""})
    table["f8"] = masked(floats)
    table["f8"].unit, table["f8"].description, table["f8"].format = "mag", "a float", ".3f"
    table["f4"] = masked(floats.astype(np.float32))
    with np.errstate(over="ignore"):  # (1e16 is inf in float16)
        table["f2"] = masked(floats.astype(np.float16))
    table["big"] = masked(floats.astype(">f8"))
    table["none"] = masked(floats, fraction=0)
    table["all"] = masked(floats, fraction=1)
    table["i8"] = masked(rng.integers(-2**62, 2**62, n))
    table["u1"] = masked(rng.integers(0, 256, n).astype(np.uint8))
    table["b"] = masked(rng.random(n) < 0.5)
    table["s"] = masked(np.array(["", "a b", 'q"t', "é", "x"] * (n // 5)))
    table["plain"] = floats
    table["vec"] = masked(np.tile(floats[:, None], 3).astype(np.float32))
    table["q"] = floats * u.Jy
    table["t"] = Time(60000 + np.arange(n), format="mjd")
    table["c"] = SkyCoord(np.arange(n) * u.deg, np.zeros(n) * u.deg)
    return table


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # float16
@pytest.mark.parametrize("rows", [slice(None), slice(0, 1), slice(0, 0)])
def test_write_table_ecsv_bytes_are_astropys(tmp_path, rows):
    """write_table formats masked numeric columns of ECSV itself (astropy formats them
    entry by entry, ~10x slower than plain columns): the file is astropy's byte for byte,
    with NaN, inf, -0.0, subnormals, float16/32, big-endian, ints, bools, strings, 2-D
    columns, mixins, all- and never-masked columns."""
    table = _ecsv_kinds_table()[rows]
    if not len(table):
        del table["vec"]  # a zero-row 2-D column: astropy's own ECSV does not read back
    table.write(tmp_path / "astropy.ecsv", format="ascii.ecsv")
    write_table(table, tmp_path / "fast.ecsv")
    expected = (tmp_path / "astropy.ecsv").read_bytes()
    assert (tmp_path / "fast.ecsv").read_bytes() == expected
    assert expected.count(b"\n") == len(table) + expected.count(b"\n#") + 2  # the data


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # float16
def test_write_table_ecsv_formats_masked_numbers_as_arrays(tmp_path, monkeypatch):
    """The values of masked numeric ECSV columns are formatted as one array operation, not
    through MaskedColumn.__getitem__ entry by entry (astropy's way, ~10x slower)."""
    from astropy.table import MaskedColumn

    getitem = MaskedColumn.__getitem__

    def one_by_one(self, item):
        if isinstance(item, (int, np.integer)):
            raise AssertionError(f"{self.info.name}[{item}] formatted alone")
        return getitem(self, item)

    table = _ecsv_kinds_table()
    keep = [c for c in table.colnames if isinstance(table[c], MaskedColumn)
            and table[c].ndim == 1 and table[c].dtype.kind in "biuf"]
    table = table[keep]
    table.write(tmp_path / "astropy.ecsv", format="ascii.ecsv")
    monkeypatch.setattr(MaskedColumn, "__getitem__", one_by_one)
    write_table(table, tmp_path / "fast.ecsv")
    assert (tmp_path / "fast.ecsv").read_bytes() == (tmp_path / "astropy.ecsv").read_bytes()


def _random_table(seed, *, rows=None, objects=False):
    """A seeded random table of the column kinds astromorph writes or passes through: floats
    of 16 to 64 bits (NaN, +-inf, -0.0, subnormals, extreme exponents, full-precision
    values, big-endian), integers of every width with their extremes, booleans, text with
    quotes, commas, '#', newlines and non-ASCII, bytes, (N, D) and (N, H, W) columns,
    each plain or masked (none, some or all entries); units, descriptions, formats and
    column meta; table meta with nested dicts, lists and an OrderedDict; Quantity, Time and
    SkyCoord columns; with ``objects``, a column of Python objects (None, numbers, text,
    lists, dicts)."""
    from collections import OrderedDict

    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Column, MaskedColumn, QTable
    from astropy.time import Time

    rng = np.random.default_rng(seed)
    n = int(rng.choice([0, 1, 2, 9])) if rows is None else rows
    texts = np.array(["", " ", "a b", 'q"t', "'s'", "a,b", "#h", "x\ny", "é", "日本", "nan",
                      "--", "\\", "t "])
    meta = OrderedDict(astromorph_model="m", nested={"a": [1, 2.5, None],
                                                     "b": OrderedDict(x="é \"q\"")})
    table = (QTable if seed % 2 else Table)(meta=meta if rng.random() < 0.7 else {})
    for j in range(int(rng.integers(3, 9))):
        kind = str(rng.choice(["f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4",
                               "u8", "?", "U", "S"]))
        shape = (n,) if kind == "S" else [(n,), (n,), (n, 3), (n, 2, 3)][rng.integers(4)]
        size = int(np.prod(shape))
        dtype = np.dtype(kind)
        if dtype.kind == "f":
            info = np.finfo(dtype)
            pool = np.array([np.nan, np.inf, -np.inf, -0.0, 1 / 3, 0.1, 1e16, 5e-324, 1e308,
                             float(info.max), float(info.tiny), float(info.smallest_subnormal)])
            with np.errstate(over="ignore"):
                data = (rng.normal(size=size) * 10.0 ** rng.integers(-40, 40, size)).astype(dtype)
                pick = rng.random(size) < 0.4
                data[pick] = pool[rng.integers(0, pool.size, pick.sum())].astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            data = rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)
            data[rng.random(size) < 0.4] = info.max if rng.random() < 0.5 else info.min
        elif kind == "?":
            data = rng.random(size) < 0.5
        else:
            data = texts[rng.integers(0, texts.size, size)]
            data = np.char.encode(data, "ascii", "replace") if kind == "S" else data
        data = data.reshape(shape)
        if dtype.kind in "iuf" and dtype.itemsize > 1 and rng.random() < 0.2:
            data = data.astype(dtype.newbyteorder(">"))
        masking = rng.integers(4)  # plain, none, some or all entries masked
        col = Column(data) if not masking else MaskedColumn(
            data, mask=[np.zeros, rng.random, np.ones][masking - 1](shape) > 0.6)
        if rng.random() < 0.3 and dtype.kind in "iuf":
            col.unit = str(rng.choice(["deg", "mag", "nmgy", "erg / (s cm2)"]))
        if rng.random() < 0.3:
            col.info.description = str(rng.choice(["d", "with 'q' and \"dq\"", "é: x, y"]))
        if rng.random() < 0.3 and dtype.kind in "iuf":
            col.info.format = "{:>9}" if dtype.kind in "iu" else ".3e"
        if rng.random() < 0.2:
            col.info.meta = {"ucd": "phot.mag", "n": [1, {"a": None}]}
        table[str(rng.choice(["c", "a b", "é", "x,y", "#n", 'q"t'])) + str(j)] = col
    extra = rng.integers(4)
    if extra == 1:
        table["flux"] = rng.normal(size=n) * u.Unit("nmgy")
    elif extra == 2 and n:
        table["time"] = Time(60000 + rng.random(n), format="mjd")
        table["time"][0] = np.ma.masked
    elif extra == 3 and n:
        table["coord"] = SkyCoord(rng.random(n) * u.deg, rng.random(n) * u.deg)
    if objects:
        values = [None, 1, 2.5, "é,\"", [1, [2]], {"k": None}]
        column = np.empty(n, object)
        column[:] = [values[i] for i in rng.integers(0, len(values), n)]
        table["object"] = column
    return table


def _table_state(table):
    """What of ``table`` a writer must not change: column order, classes, values, masks,
    units, descriptions, formats, meta."""
    import copy

    return (table.colnames, copy.deepcopy(dict(table.meta)),
            [(type(col), getattr(col, "unit", None), col.info.description, col.info.format,
              copy.deepcopy(col.info.meta), repr(col) if not hasattr(col, "dtype")
              else np.ma.getdata(getattr(col, "value", col)).tobytes(),
              np.ma.getmaskarray(col).tobytes()
              if hasattr(col, "dtype") else None)
             for col in table.itercols()])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # float16
@pytest.mark.parametrize("seed", range(16))
def test_write_table_ecsv_bytes_are_astropys_seeded(tmp_path, seed):
    """Seeded random tables of every column kind (`_random_table`): write_table writes
    astropy's ECSV byte for byte (its own formatting of masked numbers included), the file
    reads back as astropy's does, and the caller's table is not changed. A zero-row table
    with multidimensional columns, which astropy writes as ECSV it cannot read back, reads
    back with their shapes."""
    table = _random_table(seed, objects=True)
    before = _table_state(table)
    write_table(table, tmp_path / "fast.ecsv")
    assert _table_state(table) == before
    back = Table.read(tmp_path / "fast.ecsv")
    if not len(table) and any(col.ndim > 1 for col in table.itercols()):
        assert [back[c].shape for c in back.colnames] == [table[c].shape for c in table.colnames]
        return
    table.write(tmp_path / "astropy.ecsv", format="ascii.ecsv")
    assert (tmp_path / "fast.ecsv").read_bytes() == (tmp_path / "astropy.ecsv").read_bytes()
    expected = Table.read(tmp_path / "astropy.ecsv")
    assert back.pformat(max_lines=-1, max_width=-1) == expected.pformat(max_lines=-1, max_width=-1)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # float16
@pytest.mark.parametrize("ext", [".ecsv", ".fits", ".csv", ".parquet"])
def test_write_table_leaves_the_callers_table_alone(tmp_path, ext):
    """write_table changes nothing of the table it is given, in any format (values, masks,
    meta, column order, units, descriptions), though it adapts what each format cannot hold
    (FITS: non-ASCII text, list meta, case; ECSV: zero-row arrays)."""
    if ext == ".parquet":
        pytest.importorskip("pyarrow")
    for seed in range(4):
        table = _random_table(seed, rows=seed % 2 * 5)
        if ext == ".csv":
            table = table[[c for c in table.colnames if table[c].ndim == 1]]
        table.meta.update({"list": [1, 2], "survey": "é"})
        before = _table_state(table)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_table(table, tmp_path / f"{seed}{ext}")
        assert _table_state(table) == before, seed



def test_write_table_csv_refuses_object_columns_of_arrays(tmp_path):
    """A column of Python objects holding arrays, lists or dicts (a VOTable's
    variable-length arrays) crashed astropy's CSV writer with "TypeError: unhashable type:
    'numpy.ndarray'"; CSV is now refused as for a multidimensional column, naming it, and
    nothing is written. Objects that CSV holds (text, numbers, None) are written."""
    cells = np.empty(3, object)
    cells[:] = [np.array([1.0, 2.0]), np.array([3.0]), np.array([], float)]
    with pytest.raises(InvalidArgumentError, match=r"column\(s\) spectrum .*\.ecsv"):
        write_table(Table({"id": [1, 2, 3], "spectrum": cells}), tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    cells[:] = ["a", 1, None]
    write_table(Table({"id": [1, 2, 3], "note": cells}), tmp_path / "out.csv")
    assert Table.read(tmp_path / "out.csv")["note"].tolist()[:2] == ["a", "1"]

def _objects(*cells):
    column = np.empty(len(cells), object)
    column[:] = cells
    return column


@pytest.mark.parametrize("ext, table, held_by", [
    # mixed types: astropy's FITS writer raised "unsupported object types" after the run
    (".fits", Table({"id": [1, 2, 3], "note": _objects(1, "x", 2.5)}), ".ecsv"),
    # scalars, and arrays of two types, are no variable-length array column either
    (".fits", Table({"id": [1, 2], "note": _objects(1, 2)}), ".ecsv"),
    (".fits", Table({"spec": _objects(np.arange(3.0), np.arange(2))}), ".ecsv"),
    # pyarrow: "Cannot serialize zero-length table with object column", AttributeError
    (".parquet", Table({"note": _objects()}), ".ecsv"),
    (".parquet", Table({"id": [1, 2], "note": _objects(1, 2)}), ".ecsv"),
    # ECSV writes arrays as JSON: "Object of type bytes is not JSON serializable"
    (".ecsv", Table({"id": [1, 2], "codes": np.array([[b"a", b"bb"], [b"c", b"d"]])}),
     ".fits"),
    (".ecsv", Table({"id": [1, 2], "note": _objects(b"x", {1, 2})}), None),
    # written, but pyarrow cannot read it back ("Expected all lists to be of size=0")
    (".parquet", Table({"id": [1, 2, 3], "empty": np.zeros((3, 2, 0))}), ".ecsv"),
    # ECSV writes (N, 0, 2) as [], read back as a shape mismatch
    (".ecsv", Table({"id": [1, 2], "empty": np.zeros((2, 0, 2))}), ".fits"),
    # "ArrowNotImplementedError: Unsupported numpy type 15"; "Illegal format"
    (".parquet", Table({"id": [1, 2], "z": np.array([1j, 2 + 1j])}), ".ecsv"),
    (".fits", Table({"id": [1], "t": np.array(["2020-01-01"], "M8[s]")}), ".ecsv"),
])
def test_write_table_refuses_columns_the_format_cannot_hold(tmp_path, ext, table, held_by):
    """Columns a format cannot hold (object columns of mixed types, a zero-row object
    column, bytes arrays in ECSV, rows of no values in Parquet) failed with astropy's or
    pyarrow's own untyped exception, or wrote a file that cannot be read back; they are
    now refused with InvalidArgumentError naming the column, what the format holds and
    (when one does) the format that holds it, which then writes and reads it back.
    Nothing is written."""
    if "parquet" in (ext, held_by):
        pytest.importorskip("pyarrow")
    column = table.colnames[-1]
    path = tmp_path / f"out{ext}"
    with pytest.raises(InvalidArgumentError, match=rf"column\(s\) {column}\b") as info:
        write_table(table, path)
    assert not path.exists() and os.listdir(tmp_path) == []
    if held_by is None:
        assert "no format astromorph writes holds" in str(info.value)
        return
    assert held_by in str(info.value).split("; write ")[-1], info.value
    with warnings.catch_warnings():  # (complex and datetime64: not in ECSV's standard types)
        warnings.simplefilter("ignore", AstropyUserWarning)
        back = Table.read(write_table(table, tmp_path / f"out{held_by}"))
    assert back.colnames == table.colnames and len(back) == len(table)
    for got, want in zip(back[column], table[column]):
        np.testing.assert_array_equal(np.asarray(got, dtype=np.asarray(want).dtype), want)


def test_write_table_keeps_the_object_columns_each_format_holds(tmp_path):
    """A VOTable's variable-length arrays (an object column of 1-D arrays of one type) are
    held by FITS, Parquet and ECSV, and objects of JSON values by ECSV: still written."""
    spectra = Table({"id": [1, 2], "spec": _objects(np.arange(3.0), np.arange(0.0))})
    for ext in (".fits", ".parquet", ".ecsv"):
        if ext == ".parquet" and importlib.util.find_spec("pyarrow") is None:
            continue
        back = Table.read(write_table(spectra, tmp_path / f"s{ext}"))
        np.testing.assert_array_equal(back["spec"][0], [0.0, 1.0, 2.0])
    notes = Table({"note": _objects(1, "x", [1, 2], {"a": None})})
    assert Table.read(write_table(notes, tmp_path / "n.ecsv"))["note"].tolist() == [
        1, "x", [1, 2], {"a": None}]


@pytest.mark.parametrize("ext", [".ecsv", ".parquet"])
@pytest.mark.parametrize("rows", [0, 2])
def test_write_table_refuses_astropys_own_meta_key(tmp_path, ext, rows):
    """ECSV and Parquet keep astropy's description of its mixin columns in the meta key
    ``__serialized_columns__``: a table with a key of that name of its own crashed the
    zero-row ECSV writer (AttributeError) or wrote a file astropy cannot read back; it is
    now refused with InputError, and nothing is written."""
    if ext == ".parquet":
        pytest.importorskip("pyarrow")
    table = Table({"e": np.zeros((rows, 2))}, meta={"__serialized_columns__": {"x": 1}})
    with pytest.raises(InputError, match="meta key '__serialized_columns__'.*rename it"):
        write_table(table, tmp_path / f"x{ext}")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- command line
def test_cli_predict(models, tmp_path, capsys):
    for i in range(3):
        write_fits(tmp_path / f"t{i}.fits", triplet(seed=i))
    out = tmp_path / "res" / "scores.ecsv"
    out.parent.mkdir()
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t*.fits"), "-o", str(out),
                     "--batch-size", "2", "--no-progress"]) == 0
    table = Table.read(out)
    assert len(table) == 3 and table.meta["model"] == "real-bogus"
    assert "3 row(s)" in capsys.readouterr().err
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t0.fits"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "rb_score" in printed and "t0.fits" in printed
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t0.fits"), "-o",
                     str(tmp_path / "x.xlsx")]) == 2
    assert "x.xlsx" in capsys.readouterr().err
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t0.fits"), "-o", str(out)]) == 2
    assert cli.main(["predict", "nope", str(tmp_path / "t0.fits")]) == 2
    hdr = tmp_path / "hdr"
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t1.fits"), "--write-header",
                     str(hdr), "--no-progress"]) == 0
    assert "ASTROMORPH REAL-BOGUS SCORE" in fits.getheader(hdr / "t1.fits")


def test_cli_predict_summary_counts_scored_flagged_and_unusable_rows(models, tmp_path, capsys,
                                                                   caplog):
    """The summary line counts each kind of row: of three stamps, one with NaN pixels
    (flagged, scored), one that is no FITS file (unusable, its flags say so) and a clean one,
    two are scored, one of them flagged, and one is unusable: ``flagged`` counts the scored
    rows that carry flags (an unusable row always does), so that scored + unusable = rows,
    as the log line of `predict_files` (-v) says: 1 of 2 scored stamps carry flags."""
    write_fits(tmp_path / "a.fits", triplet(seed=0))
    blank = triplet(seed=1)
    blank[:, :20] = np.nan
    write_fits(tmp_path / "b.fits", blank)
    (tmp_path / "c.fits").write_bytes(b"not a FITS file")
    with caplog.at_level(logging.INFO, logger="astromorph"):
        assert cli.main(["predict", "real-bogus", str(tmp_path), "-o",
                         str(tmp_path / "s.ecsv"), "--no-progress", "-v"]) == 0
    table = Table.read(tmp_path / "s.ecsv")
    assert [bool(f & Flag.unusable()) for f in table["rb_flags"]] == [False, False, True]
    assert table["rb_flags"][1] != 0 and table["rb_flags"][0] == 0
    assert "3 row(s), model real-bogus 0.0.1: 2 scored, 1 flagged, 1 unusable" \
        in capsys.readouterr().err
    said = [r.getMessage() for r in caplog.records if "carry quality flags" in r.getMessage()]
    assert said == ["1 of 2 scored stamp(s) carry quality flags"]


def test_cli_prints_each_warning_once(models, tmp_path):
    # astropy's logger prints AstropyUserWarnings itself; the command's root log handler
    # printed them a second time ("WARNING astropy: ...")
    import subprocess

    fits.PrimaryHDU(RNG.random((3, 64, 64)).astype(np.float32)).writeto(tmp_path / "c.fits")
    run = subprocess.run([sys.executable, "-m", "astromorph.cli", "predict", "morphology",
                          str(tmp_path / "c.fits"), "--no-progress"],
                         capture_output=True, text=True, check=True)
    assert run.stderr.count("AmbiguousInputWarning") == 1, run.stderr


def test_cli_verbosity_options_after_the_command(models, tmp_path):
    """-q/--quiet (errors only: no warning, no summary line) and -v/--verbose are taken
    after the command as well as before it; asking for both is a usage error."""
    import subprocess

    fits.PrimaryHDU(RNG.random((3, 64, 64)).astype(np.float32)).writeto(tmp_path / "c.fits")

    def run(before, after):
        return subprocess.run([sys.executable, "-m", "astromorph.cli", *before, "predict",
                               "morphology", str(tmp_path / "c.fits"), "--no-progress",
                               *after], capture_output=True, text=True)

    for before, after in [(["-q"], []), ([], ["-q"]), ([], ["--quiet"])]:
        done = run(before, after)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert "morph_p_red" in done.stdout
    done = run([], ["-v"])
    assert done.returncode == 0, done.stderr
    assert "AmbiguousInputWarning" in done.stderr and "1 row(s)" in done.stderr
    done = run([], ["-q", "-v"])
    assert done.returncode == 2 and "exclude each other" in done.stderr


def test_cli_threads(models, tmp_path, capsys):
    """--threads N reaches ONNX Runtime (as threads= does); a bad count is one error line."""
    write_fits(tmp_path / "t.fits", triplet())
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "--threads", "1",
                     "--no-progress"]) == 0
    assert "rb_score" in capsys.readouterr().out
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "--threads", "-2",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astromorph: error: --threads must be >= 0") and err.count("\n") == 1


def test_cli_predict_crop_fraction(models, tmp_path):
    # a 64 x 64 stamp already cut to the network's field: with the default crop (0.35) the
    # network would see 22 of its pixels upsampled (EXTRAPOLATED); --crop-fraction 1 keeps all
    hdr = fits.Header({"BAND1": "g", "BAND2": "r", "BAND3": "i"})
    fits.PrimaryHDU(RNG.random((3, 64, 64)).astype(np.float32), hdr).writeto(tmp_path / "s.fits")
    for extra, flags in (([], int(Flag.EXTRAPOLATED)), (["--crop-fraction", "1"], 0)):
        out = tmp_path / f"o{len(extra)}.ecsv"
        assert cli.main(["predict", "morphology", str(tmp_path / "s.fits"), "-o", str(out),
                         "--no-progress", *extra]) == 0
        back = Table.read(out)
        assert back["morph_flags"][0] == flags
        # the preprocessing, and the crop it used, are recorded with the model
        assert back.meta["astromorph_preprocessing"] == \
            "astromorph.preprocessing.preprocess_colour_cutout"
        assert back.meta["astromorph_crop_fraction"] == (1.0 if extra else 0.35)
    assert cli.main(["predict", "morphology", str(tmp_path / "s.fits"),
                     "--crop-fraction", "1.5"]) == 2


@pytest.mark.parametrize("name", ["real-bogus", "radio-morphology"])
def test_crop_fraction_is_refused_by_fixed_field_models(name, tmp_path, capsys):
    # a crop fraction these models cannot honour was silently ignored; now refused, naming
    # the value and the model, before any input is read (the path does not exist)
    from astromorph.exceptions import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=rf"crop_fraction=0\.5.*'{name}'"):
        astromorph.predict_files(name, str(tmp_path / "none.fits"), crop_fraction=0.5)
    with pytest.raises(InvalidArgumentError, match=rf"crop_fraction=1\.0.*'{name}'"):
        astromorph.annotate_stamps(Table({"stamp": np.ones((2, 63, 63), np.float32)}),
                                   model=name, crop_fraction=1.0)
    assert cli.main(["predict", name, str(tmp_path / "none.fits"), "--crop-fraction",
                     "1"]) == 2
    assert "--crop-fraction" in capsys.readouterr().err


# ----------------------------------------------------------------------------- rough edges
def test_duplicate_alert_ids_keep_every_row_and_warn_once(models, tmp_path):
    """An alert id given twice (twice in one file, or one packet under two file names) keeps
    all its rows, and one DuplicateSourceWarning names how many ids repeat and which."""
    pytest.importorskip("fastavro")
    write_avro(tmp_path / "a.avro", [ztf_alert(7), ztf_alert(7), ztf_alert(8)])
    (tmp_path / "copy.avro").write_bytes((tmp_path / "a.avro").read_bytes())
    write_avro(tmp_path / "b.avro", [ztf_alert(9)])
    with pytest.warns(DuplicateSourceWarning) as caught:
        table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    dup = [w for w in caught if issubclass(w.category, DuplicateSourceWarning)]
    assert len(dup) == 1 and issubclass(DuplicateSourceWarning, AstropyUserWarning)
    assert "2 source id(s)" in str(dup[0].message) and "'7'" in str(dup[0].message) \
        and "'8'" in str(dup[0].message) and "'9'" not in str(dup[0].message)
    assert sorted(table["source"]) == ["7", "7", "7", "7", "8", "8", "9"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateSourceWarning)  # distinct ids: no warning
        quiet(astromorph.predict_files, "real-bogus", tmp_path / "b.avro")


def test_duplicate_source_warning_lists_repeated_ids_in_table_order():
    """The warning names the repeated ids in the order the table first gives them (the
    first five), not sorted: the ids a user meets first in the table are those named."""
    from astromorph._predict import warn_duplicates

    sources = ["z9", "a1", "q5", "z9", "m3", "a1", "q5", "b2", "b2", "k7", "k7", "m3", "c0",
               "c0"]
    with pytest.warns(DuplicateSourceWarning) as caught:
        warn_duplicates(sources)
    (message,) = [str(w.message) for w in caught]
    assert "7 source id(s) repeat, in 14 rows: 'z9' (2 rows), 'a1' (2 rows), 'q5' (2 rows), " \
        "'m3' (2 rows), 'b2' (2 rows)" in message, message


@pytest.mark.parametrize("bands, pick", [("gr", "r"), ("gi", "i"), ("ri", "r"), ("rg", "r"),
                                         ("gz", "g"), ("iz", "i")])
@pytest.mark.parametrize("layout", ["mef", "cube"])
def test_two_named_bands_score_the_band_annotate_takes(models, tmp_path, bands, pick, layout):
    """Two named bands, not g, r and i: predict_files refused the file (MISSING_BAND) where
    annotate scores one band alone (r, else i, else g; `single_band`). It now scores that
    band, as a file of that band alone is scored, and says so in the row's reason and an
    AmbiguousInputWarning."""
    from astromorph._predict import single_band

    planes = {b: galaxy(seed=k) * (1 + k) for k, b in enumerate(bands)}
    if layout == "mef":
        write_mef(tmp_path / "two.fits", list(planes.values()), list(bands), key="FILTER")
    else:
        write_fits(tmp_path / "two.fits", np.stack(list(planes.values())),
                   **{f"BAND{k + 1}": b for k, b in enumerate(bands)})
    write_fits(tmp_path / "one.fits", planes[pick])
    with pytest.warns(AmbiguousInputWarning, match=re.escape(
            f"1 stamp(s) read by assumption (first: {tmp_path / 'two.fits'}: bands "
            f"{', '.join(bands)}: no ")) as rec:
        table = astromorph.predict_files("morphology", tmp_path)
    assert f"band {pick} scored alone" in str(rec[-1].message)
    assert single_band(list(bands)) == pick
    two, one = row(table, tmp_path / "two.fits"), row(table, tmp_path / "one.fits")
    assert two["morph_flags"] == one["morph_flags"] == 0, two["reason"]
    assert f"band {pick} scored alone" in two["reason"] and not one["reason"]
    for label in ("red", "green", "blue"):
        assert two[f"morph_p_{label}"] == pytest.approx(one[f"morph_p_{label}"], abs=1e-6)


def test_annotate_and_predict_files_take_the_same_band_of_two(models, tmp_path):
    """The same g + r file (one HDU per band, with a WCS): annotate cuts band r alone and
    says so; predict_files scores band r alone (as it scores the r plane on its own file),
    not MISSING_BAND."""
    from astropy.table import QTable

    g, r = galaxy(seed=1), galaxy(seed=2) * 2
    path = write_mef(tmp_path / "gr.fits", [g, r], ["g", "r"], key="FILTER", scale=0.4)
    write_mef(tmp_path / "r.fits", [r], ["r"], key="FILTER", scale=0.4)
    cat = QTable({"ra": [150.0], "dec": [2.0]})
    with pytest.warns(AmbiguousInputWarning, match="using band 'r' alone"):
        by_annotate = astromorph.annotate(cat, str(path), model="morphology", stamp_size=64)
    alone = astromorph.annotate(cat, str(tmp_path / "r.fits"), model="morphology",
                                stamp_size=64)
    with pytest.warns(AmbiguousInputWarning, match="band r scored alone"):
        table = astromorph.predict_files("morphology", [path, tmp_path / "r.fits"])
    two, one = row(table, path), row(table, tmp_path / "r.fits")
    assert two["morph_flags"] == 0, two["reason"]
    for label in ("red", "green", "blue"):
        column = f"morph_p_{label}"
        assert by_annotate[column][0] == pytest.approx(alone[column][0], abs=1e-6)
        assert two[column] == pytest.approx(one[column], abs=1e-6)


def test_single_band_order_is_annotates():
    """predict_files and annotate take one band of several by one helper: r, i, g, else the
    first named."""
    from astromorph._predict import single_band

    assert single_band(["g", "r", "z"]) == "r"
    assert single_band(["g", "i"]) == "i"
    assert single_band(["z", "g"]) == "g"
    assert single_band(["z", "u"]) == "z"


def test_band_hdu_without_data_is_named_as_empty(models, tmp_path):
    """One image HDU per band with the R HDU empty: the row says the R HDU holds no data,
    not merely that there is no r band."""
    g = galaxy()
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(g, name="G"), fits.ImageHDU(name="R"),
            fits.ImageHDU(g, name="I")]
    fits.HDUList(hdus).writeto(tmp_path / "gri.fits")
    table = quiet(astromorph.predict_files, "morphology", tmp_path / "gri.fits")
    r = table[0]
    assert r["morph_flags"] == Flag.MISSING_BAND and np.ma.is_masked(r["morph_p_red"])
    assert "no r band" in r["reason"], r["reason"]
    assert "HDU 2 (EXTNAME 'R') has no data" in r["reason"], r["reason"]
    # only one band holds data: not read as a single grey band (the others were meant)
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(g, name="G"), fits.ImageHDU(name="R"),
            fits.ImageHDU(name="I")]
    fits.HDUList(hdus).writeto(tmp_path / "g_only.fits")
    r = quiet(astromorph.predict_files, "morphology", tmp_path / "g_only.fits")[0]
    assert r["morph_flags"] == Flag.MISSING_BAND and np.ma.is_masked(r["morph_p_red"])
    assert ("band g alone: no r, i band: HDU 2 (EXTNAME 'R') has no data; HDU 3 (EXTNAME "
            "'I') has no data") in r["reason"], r["reason"]
    # g and r hold data, the I HDU none: the file meant three bands, one is blank; refused
    # as the file of one filled band is, not scored on r alone
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(g, name="G"), fits.ImageHDU(g, name="R"),
            fits.ImageHDU(name="I")]
    fits.HDUList(hdus).writeto(tmp_path / "gr_only.fits")
    r = quiet(astromorph.predict_files, "morphology", tmp_path / "gr_only.fits")[0]
    assert r["morph_flags"] == Flag.MISSING_BAND and np.ma.is_masked(r["morph_p_red"])
    assert "bands g, r: no i band: HDU 3 (EXTNAME 'I') has no data" in r["reason"], r["reason"]
    t = triplet()
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(t[0], name="SCIENCE"),
            fits.ImageHDU(name="REFERENCE"), fits.ImageHDU(t[2], name="DIFFERENCE")]
    fits.HDUList(hdus).writeto(tmp_path / "trip.fits")
    r = quiet(astromorph.predict_files, "real-bogus", tmp_path / "trip.fits")[0]
    assert r["rb_flags"] == Flag.MISSING_BAND
    assert "no reference image: HDU 2 (EXTNAME 'REFERENCE') has no data" in r["reason"], \
        r["reason"]


@pytest.mark.parametrize("planes", [1, 3])
@pytest.mark.parametrize("n", [64, 192])
def test_stamp_without_finite_pixel_gives_the_one_reason_that_matters(models, tmp_path, planes,
                                                                      n):
    """An all-NaN stamp is not scored, and its reason says only that: no "(filled)" NaN
    fraction, "constant stamp" or "pixels much coarser" words for a stamp never scored
    (a 64-pixel stamp is EXTRAPOLATED for the galaxy models)."""
    shape = (n, n) if planes == 1 else (3, n, n)
    write_fits(tmp_path / "allnan.fits", np.full(shape, np.nan, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmbiguousInputWarning)  # 3 unnamed planes
        r = quiet(astromorph.predict_files, "morphology", tmp_path / "allnan.fits")[0]
    assert r["morph_flags"] & Flag.BAD_INPUT and np.ma.is_masked(r["morph_p_red"])
    assert r["reason"] == ("image has no finite pixel: not scored" if planes == 1 else
                           "plane 1 and plane 2 and plane 3 have no finite pixel: not scored"), \
        r["reason"]


@pytest.mark.parametrize("in_place", [False, True])
def test_header_writing_recognises_fits_by_content_as_the_readers_do(models, tmp_path,
                                                                     in_place):
    """A gzipped FITS file named x.avro is read (by content) and gets its header keywords,
    still gzipped; an Avro packet named y.fits is no FITS file and gets none."""
    pytest.importorskip("fastavro")
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.avro").write_bytes(fits_bytes(triplet(), gz=True))
    write_avro(src / "y.fits", [ztf_alert(5)])
    out = tmp_path / "out"
    options = dict(in_place=True) if in_place else dict(write_header=out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = quiet(astromorph.predict_files, "real-bogus", [src / "x.avro", src / "y.fits"],
                      **options)
    texts = [str(w.message) for w in caught if issubclass(w.category, AstromorphWarning)]
    assert any("1 of 2 input(s) are not FITS" in t for t in texts), texts
    assert not any("results not written" in t for t in texts), texts
    assert list(table["rb_flags"]) == [0, 0]
    written = src / "x.avro" if in_place else out / "x.avro"
    assert written.read_bytes()[:2] == b"\x1f\x8b"  # still gzipped, as the input was
    with fits.open(written) as hdul:
        assert hdul[0].header["HIERARCH ASTROMORPH REAL-BOGUS SCORE"] == pytest.approx(
            float(table["rb_score"][0]), rel=1e-6)
        np.testing.assert_array_equal(hdul[0].data, triplet())
    if not in_place:
        assert sorted(p.name for p in out.iterdir()) == ["x.avro"]


@pytest.mark.parametrize("in_place", [False, True])
def test_header_results_are_written_into_compressed_files_in_their_container(models, tmp_path,
                                                                          in_place):
    """bzip2, xz and zip files (named for it or not) get their header keywords as gzipped
    ones do, each still in its own container (a zip archive keeps its member's name and
    compression), and plain FITS files named .fits.gz, .bz2, .xz or .zip stay plain. They
    were skipped with a warning ("read, not written"), a plain file named .fits.bz2 or .xz
    came back compressed (astropy compresses by name), and one named .fits.zip was an
    `OutputError` after the run, the files after it left unwritten."""
    from astromorph._readers._compressed import compression_of

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    plain = fits_bytes(triplet())
    files = {}
    for packing, (suffix, pack) in PACKERS.items():
        files[f"a.fits{suffix}"] = pack(plain)  # named for its compression
        files[f"b-{packing}.fits"] = pack(plain)  # named as plain FITS
        files[f"c-plain.fits{suffix}"] = plain  # plain FITS named as compressed
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("stored/cutout.fits", plain)
    files["d-stored.zip"] = buf.getvalue()
    paths = [src / name for name in files]
    for path, data in zip(paths, files.values()):
        path.write_bytes(data)
    options = dict(in_place=True) if in_place else dict(write_header=out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = quiet(astromorph.predict_files, "real-bogus", paths, **options)
    texts = [str(w.message) for w in caught if issubclass(w.category, AstromorphWarning)]
    assert not any("not FITS" in t or "not written" in t for t in texts), texts
    assert list(table["rb_flags"]) == [0] * len(paths)
    for k, (name, data) in enumerate(files.items()):
        written = (src if in_place else out) / name
        got = written.read_bytes()
        assert compression_of(got[:6]) == compression_of(data[:6]), name
        with fits.open(written) as hdul:
            assert hdul[0].header["HIERARCH ASTROMORPH REAL-BOGUS SCORE"] == pytest.approx(
                float(table["rb_score"][k]), rel=1e-6), name
            np.testing.assert_array_equal(hdul[0].data, triplet())
        if compression_of(data[:6]) == "zip":
            with zipfile.ZipFile(io.BytesIO(data)) as before, zipfile.ZipFile(written) as after:
                assert [(i.filename, i.compress_type) for i in after.infolist()] \
                    == [(i.filename, i.compress_type) for i in before.infolist()], name
        if not in_place:
            assert (src / name).read_bytes() == data, name  # the input untouched
    assert sorted(p.name for p in (src if in_place else out).iterdir()) == sorted(files)


def test_header_results_keep_a_small_zip_archive_readable_without_zip64(models, tmp_path):
    """A zip archive rewritten with the header keywords holds no ZIP64 record where its file
    needs none: its member is read by tools that know no ZIP64 (version needed to extract
    2.0, as the input's). It was written with ``force_zip64`` whatever its size (4.5)."""
    path = tmp_path / "x.fits.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.fits", fits_bytes(triplet()))
    path.write_bytes(buf.getvalue())
    quiet(astromorph.predict_files, "real-bogus", [path], in_place=True)
    with zipfile.ZipFile(path) as archive:
        (info,) = archive.infolist()
        assert info.extract_version == 20
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.file_size == len(archive.read(info))
    with fits.open(path) as hdul:
        assert "HIERARCH ASTROMORPH REAL-BOGUS SCORE" in hdul[0].header


#: An extended-timestamp extra field (0x5455, "UT": its modification time, 2001-01-01 UTC)
#: and a field of a tag no one knows (0xCAFE), as another zip tool writes them.
_OLD_UT = 978307200
_EXTRA = (struct.pack("<HHBl", 0x5455, 5, 1, _OLD_UT)
          + struct.pack("<HH", 0xCAFE, 6) + b"astro!")


@pytest.mark.parametrize("in_place", [False, True])
def test_header_results_in_a_zip_archive_date_the_member_now_and_keep_its_extra_fields(
        models, tmp_path, in_place):
    """A zip archive whose FITS file gets its header keywords: the member, modified, is
    dated when it was written (in its DOS date and in its extended-timestamp field, which
    ``unzip`` restores in preference; it kept its old date, as if unmodified, for make,
    rsync and backups), and keeps its extra fields (the timestamp's other bytes, one of a
    tag zipfile knows nothing of), which were dropped."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    path = src / "x.fits.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        member = zipfile.ZipInfo("d/x.fits", (2001, 1, 1, 0, 0, 0))
        member.compress_type, member.extra = zipfile.ZIP_DEFLATED, _EXTRA
        archive.writestr(member, fits_bytes(triplet()))
    before = time.time()
    quiet(astromorph.predict_files, "real-bogus", [path],
          **(dict(in_place=True) if in_place else dict(write_header=out)))
    after = time.time()
    with zipfile.ZipFile(path if in_place else out / path.name) as archive:
        (member,) = archive.infolist()
        assert member.filename == "d/x.fits"
        dated = time.mktime(member.date_time + (0, 0, -1))  # (local time, 2 s steps)
        assert before - 2 <= dated <= after + 2, (member.date_time, before, after)
        ut = member.extra[:9]
        assert ut[:5] == _EXTRA[:5]
        assert before - 1 <= struct.unpack("<l", ut[5:])[0] <= after + 1
        assert member.extra[9:] == _EXTRA[9:]
        header = fits.getheader(io.BytesIO(archive.read(member)))
        assert "HIERARCH ASTROMORPH REAL-BOGUS SCORE" in header


def test_a_rewritten_zip_members_zip64_extra_field_is_written_by_zipfile_alone():
    """The extra fields of a rewritten zip member: its ZIP64 field (0x0001) left out,
    which zipfile writes where the file needs one (kept, it would be there twice, or
    where none is needed); the others kept in order; the modification times of the
    extended-timestamp (0x5455) and NTFS (0x000a) fields set to ``when``."""
    from astromorph._headers import _rewritten_extra

    zip64 = struct.pack("<HHQQ", 1, 16, 5, 5)
    unknown = struct.pack("<HH", 0xCAFE, 2) + b"ok"
    ntfs = (struct.pack("<HHI", 0x000A, 32, 0) + struct.pack("<HH", 1, 24)
            + struct.pack("<QQQ", 11, 22, 33))
    ut = struct.pack("<HHBll", 0x5455, 9, 3, 111, 222)  # modification and access times
    when = 1_700_000_000
    filetime = (when + 11644473600) * 10 ** 7
    assert _rewritten_extra(zip64 + unknown + ntfs + ut, when) == (
        unknown + ntfs[:12] + struct.pack("<QQQ", filetime, 22, 33)
        + struct.pack("<HHBll", 0x5455, 9, 3, when, 222))
    assert _rewritten_extra(b"", when) == b""
    assert _rewritten_extra(b"\x01\x02\x03", when) == b"\x01\x02\x03"  # (malformed: kept)


@pytest.mark.parametrize("pad", [1, 3, 6])
def test_a_rewritten_zip_members_extra_fields_are_read_up_to_their_padding(pad):
    """Extra fields that end in zero bytes of padding (zipalign's, aligning the member's
    data): they were all kept as they were, unparsed, the ZIP64 field with them (written
    twice, zipfile adding its own) and the modification time not set; now the fields are
    read up to the padding, which is kept after them."""
    from astromorph._headers import _rewritten_extra

    zip64 = struct.pack("<HHQQ", 1, 16, 5, 5)
    ut = struct.pack("<HHBl", 0x5455, 5, 1, 111)
    when = 1_700_000_000
    assert _rewritten_extra(zip64 + ut + bytes(pad), when) == (
        struct.pack("<HHBl", 0x5455, 5, 1, when) + bytes(pad))
    assert _rewritten_extra(ut + b"\x00\x01", when) == ut + b"\x00\x01"  # (not padding)


def test_header_results_in_a_zip_archive_whose_extra_fields_end_in_padding(models, tmp_path):
    """The same, end to end: a zip archive whose member's extra fields end in three zero
    bytes of padding, rewritten in place, has its member dated now in its timestamp field,
    its other fields and the padding kept."""
    path = tmp_path / "x.fits.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        member = zipfile.ZipInfo("x.fits", (2001, 1, 1, 0, 0, 0))
        member.compress_type, member.extra = zipfile.ZIP_DEFLATED, _EXTRA + bytes(3)
        archive.writestr(member, fits_bytes(triplet()))
    before = time.time()
    quiet(astromorph.predict_files, "real-bogus", [path], in_place=True)
    after = time.time()
    with zipfile.ZipFile(path) as archive:
        (member,) = archive.infolist()
        assert member.extra[:5] == _EXTRA[:5]
        assert before - 1 <= struct.unpack("<l", member.extra[5:9])[0] <= after + 1
        assert member.extra[9:] == _EXTRA[9:] + bytes(3)
        header = fits.getheader(io.BytesIO(archive.read(member)))
        assert "HIERARCH ASTROMORPH REAL-BOGUS SCORE" in header


@pytest.mark.parametrize("cause", [PermissionError(errno.EACCES, "Permission denied"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_header_write_failure_keeps_its_cause(models, tmp_path, monkeypatch, cause):
    """An in-place header write that fails is an OutputError whatever the cause; it is an
    OSError, but its errno was None and its __cause__ another OutputError, so a program could
    not tell a read-only file from a full disk but by parsing the message. Now the errno is
    the cause's, the cause is chained directly, and the message says it."""
    src = tmp_path / "in"
    src.mkdir()
    write_fits(src / "a.fits", triplet())
    before = digest(src / "a.fits")

    def failing(self, fileobj, *args, **kwargs):
        raise cause

    monkeypatch.setattr(fits.HDUList, "writeto", failing)
    with pytest.raises(OutputError) as info:
        astromorph.predict_files("real-bogus", src, in_place=True, progress=False)
    assert info.value.errno == cause.errno
    assert info.value.__cause__ is cause
    assert cause.strerror in str(info.value) and "a.fits" in str(info.value)
    assert digest(src / "a.fits") == before


@pytest.mark.parametrize("in_place", [False, True])
def test_header_write_failing_part_way_names_the_copies_and_keeps_the_table(
        models, tmp_path, monkeypatch, in_place):
    """A write that fails on the 2nd of 3 files (a full disk) raises an OutputError naming
    the file written, the one that failed and the one not tried; the finished copy is kept
    whole, no half-written or temporary file is left, and the results are on the error
    (``table``); from the shell, -o still receives the table."""
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("a.fits", "b.fits", "c.fits")):
        write_fits(src / name, triplet(seed=i))
    before = {p.name: digest(p) for p in src.iterdir()}
    real, calls = fits.HDUList.writeto, []

    def full_disk(self, fileobj, *args, **kwargs):
        calls.append(fileobj)
        if len(calls) == 2:
            real(self, fileobj, *args, **kwargs)
            with open(fileobj, "r+b") as f:  # half written, then the disk is full
                f.truncate(3000)
            raise OSError(28, "No space left on device")
        return real(self, fileobj, *args, **kwargs)

    monkeypatch.setattr(fits.HDUList, "writeto", full_disk)
    out = tmp_path / "out"
    options = dict(in_place=True) if in_place else dict(write_header=out)
    with pytest.raises(OutputError) as info:
        astromorph.predict_files("real-bogus", src, **options)
    message = str(info.value)
    assert "No space left on device" in message and "b.fits" in message
    assert "written: 1" in message and "a.fits" in message, message
    assert "not written: 2" in message and "c.fits" in message, message
    table = info.value.table
    assert list(table["source"]) == [str(src / n) for n in ("a.fits", "b.fits", "c.fits")]
    assert not table["rb_score"].mask.any()
    assert [str(p) for p in info.value.written] == [str((src if in_place else out) / "a.fits")]
    assert [p.name for p in info.value.not_written] == ["b.fits", "c.fits"]
    done = src / "a.fits" if in_place else out / "a.fits"
    with fits.open(done) as hdul:
        assert "HIERARCH ASTROMORPH REAL-BOGUS SCORE" in hdul[0].header
    if in_place:
        assert digest(src / "b.fits") == before["b.fits"]
        assert digest(src / "c.fits") == before["c.fits"]
        assert sorted(p.name for p in src.iterdir()) == ["a.fits", "b.fits", "c.fits"]
    else:
        assert {p.name: digest(p) for p in src.iterdir()} == before
        assert sorted(p.name for p in out.iterdir()) == ["a.fits"]
        # the command line writes the table all the same, then fails (exit 2)
        calls.clear()
        shutil.rmtree(out)
        status = cli.main(["predict", "real-bogus", str(src), "--write-header", str(out),
                           "-o", str(tmp_path / "t.ecsv"), "--no-progress"])
        assert status == 2
        assert len(Table.read(tmp_path / "t.ecsv")) == 3


def _three_header_inputs(tmp_path, in_place):
    """a.fits, b.fits and c.fits in ``in/``, their digests, the options of a header write
    (in place, or copies into ``out/``) and the folder the results go to."""
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("a.fits", "b.fits", "c.fits")):
        write_fits(src / name, triplet(seed=i))
    before = {p.name: digest(p) for p in src.iterdir()}
    out = tmp_path / "out"
    options = dict(in_place=True) if in_place else dict(write_header=out)
    return src, before, options, src if in_place else out


def _has_keywords(path):
    with fits.open(path) as hdul:
        return "HIERARCH ASTROMORPH REAL-BOGUS SCORE" in hdul[0].header


@pytest.mark.parametrize("in_place", [False, True])
def test_header_write_whose_replace_fails_names_the_file_and_keeps_it(models, tmp_path,
                                                                      monkeypatch, in_place):
    """`os.replace` itself fails for the 2nd of 3 files (a file made immutable, a busy
    mount: EPERM): an OutputError naming that file, with the errno; the 1st file is
    written (complete, listed in ``written``), the 2nd and 3rd are not (``not_written``),
    left byte for byte as they were, and no temporary folder is left."""
    from astromorph import _io

    src, before, options, dest = _three_header_inputs(tmp_path, in_place)
    real, calls = os.replace, []

    def replace(source, target, *args, **kwargs):
        calls.append(Path(target).name)
        if len(calls) == 2:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(_io.os, "replace", replace)
    with pytest.raises(OutputError) as info:
        astromorph.predict_files("real-bogus", src, progress=False, **options)
    assert calls == ["a.fits", "b.fits"]
    message = str(info.value)
    b = repr(str(dest / "b.fits"))
    assert message.startswith(f"cannot write {b}: Operation not permitted; "), message
    assert ("the old file is unchanged" if in_place else "nothing was written") in message
    assert "written: 1" in message and "not written: 2" in message, message
    assert info.value.errno == errno.EPERM
    assert [str(p) for p in info.value.written] == [str(dest / "a.fits")]
    assert [str(p) for p in info.value.not_written] == [str(dest / n)
                                                        for n in ("b.fits", "c.fits")]
    assert len(info.value.table) == 3 and not info.value.table["rb_score"].mask.any()
    assert _has_keywords(dest / "a.fits")
    if in_place:
        assert {n: digest(src / n) for n in ("b.fits", "c.fits")} == \
            {n: before[n] for n in ("b.fits", "c.fits")}
    else:
        assert {p.name: digest(p) for p in src.iterdir()} == before
    assert sorted(p.name for p in dest.iterdir()) == (["a.fits", "b.fits", "c.fits"]
                                                      if in_place else ["a.fits"])


@pytest.mark.parametrize("in_place", [False, True])
def test_header_write_failing_after_a_replace_counts_that_file_written(models, tmp_path,
                                                                       monkeypatch, in_place):
    """An OSError after the 2nd file was moved into place (syncing its folder fails, EIO):
    the error says that file is in place, not that it is unchanged, and counts it among
    the files written (it has all its keywords); only the 3rd is not written (left as it
    was); no temporary folder is left."""
    from astromorph import _io

    src, before, options, dest = _three_header_inputs(tmp_path, in_place)
    real, calls = _io._fsync_dir, []

    def fsync_dir(directory):
        calls.append(directory)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(directory)

    monkeypatch.setattr(_io, "_fsync_dir", fsync_dir)
    with pytest.raises(OutputError) as info:
        astromorph.predict_files("real-bogus", src, progress=False, **options)
    message = str(info.value)
    b = repr(str(dest / "b.fits"))
    assert message.startswith(f"error after writing {b}: Input/output error; the new file "
                              "is in place"), message
    assert "unchanged" not in message and "nothing was written" not in message, message
    assert info.value.errno == errno.EIO
    assert [str(p) for p in info.value.written] == [str(dest / n) for n in ("a.fits", "b.fits")]
    assert [str(p) for p in info.value.not_written] == [str(dest / "c.fits")]
    assert "written: 2" in message and "not written: 1" in message, message
    assert _has_keywords(dest / "a.fits") and _has_keywords(dest / "b.fits")
    if in_place:
        assert digest(src / "c.fits") == before["c.fits"]
    else:
        assert {p.name: digest(p) for p in src.iterdir()} == before
    assert sorted(p.name for p in dest.iterdir()) == (["a.fits", "b.fits", "c.fits"]
                                                      if in_place else ["a.fits", "b.fits"])


def test_header_write_unexpected_error_after_a_replace_keeps_the_file_counted(
        models, tmp_path, monkeypatch):
    """An error that is no OSError after the 2nd copy was moved into place: that copy is
    complete and kept, so it is not among the files reported not written (a warning said
    so), and the 3rd copy is still written."""
    from astromorph import _io

    src, before, options, dest = _three_header_inputs(tmp_path, False)
    real, calls = _io._fsync_dir, []

    def fsync_dir(directory):
        calls.append(directory)
        if len(calls) == 2:
            raise RuntimeError("unexpected")
        return real(directory)

    monkeypatch.setattr(_io, "_fsync_dir", fsync_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstromorphWarning)  # no "results not written"
        table = astromorph.predict_files("real-bogus", src, progress=False, **options)
    assert len(table) == 3
    assert sorted(p.name for p in dest.iterdir()) == ["a.fits", "b.fits", "c.fits"]
    assert all(_has_keywords(dest / n) for n in ("a.fits", "b.fits", "c.fits"))
    assert {p.name: digest(p) for p in src.iterdir()} == before


def test_header_keywords_too_long_for_a_card_are_named_not_dropped_silently(models, tmp_path):
    """A model name of up to 64 characters is valid, but ``HIERARCH ASTROMORPH <NAME> ...``
    then leaves no room for the value in an 80-character card. Such keywords were left out
    without a word, the VERSION and SHA256 cards became blank cards, and cards that astropy
    cut at 80 characters (keyword and all) made a copy that astropy could not open again
    ("Header missing END card"). Now one `LossyOutputWarning` names them, and the copy
    opens, with no blank card."""
    from astromorph.exceptions import LossyOutputWarning

    name = "m" * 56
    d = models / name
    d.mkdir()
    tiny_classifier_onnx(d / "model.onnx", channels=3, size=64, labels=("red", "green", "blue"))
    card = _card(d / "model.onnx", name, "morph", (3, 64, 64), "optical",
                 "astromorph.preprocessing.preprocess_colour_cutout",
                 [{"name": "probabilities", "kind": "probabilities",
                   "labels": ["red", "green", "blue"]}])
    (d / "card.json").write_text(json.dumps(card))
    src = tmp_path / "in"
    src.mkdir()
    write_fits(src / "g.fits", galaxy())
    with pytest.warns(LossyOutputWarning,
                      match=r"not written \(no room.*\): .*M{56} (LABEL|P_|SHA256)") as rec:
        table = quiet(astromorph.predict_files, name, src, write_header=tmp_path / "out")
    message = str(next(w.message for w in rec if issubclass(w.category, LossyOutputWarning)))
    assert "values are in the table" in message
    assert not np.ma.is_masked(table["morph_p_red"][0])
    with fits.open(tmp_path / "out" / "g.fits") as hdul:
        cards = hdul[0].header.cards
        assert all(c.keyword for c in cards)  # no blank card
        assert not any(c.keyword == "CONTINUE" for c in cards)
        assert hdul[0].header["HIERARCH ASTROMORPH VERSION"] == astromorph.__version__


def test_fits_escaped_text_columns_keep_unit_description_meta_and_mask(tmp_path):
    """A text column rebuilt with backslash escapes for FITS (a source name with 'é') keeps
    what the column says of itself, as the ASCII columns beside it do: its unit,
    description, meta (a UCD) and mask."""
    from astropy.table import MaskedColumn

    from astromorph.exceptions import LossyOutputWarning

    table = Table({"name": MaskedColumn(["café", "x"], mask=[False, True], unit="m",
                                        description="source name", meta={"ucd": "meta.id"})})
    with pytest.warns(LossyOutputWarning, match="backslash escapes"):
        write_table(table, tmp_path / "out.fits")
    back = Table.read(tmp_path / "out.fits")["name"]
    assert back.info.description == "source name" and back.unit == "m"
    assert back.info.meta == {"ucd": "meta.id"} and list(back.mask) == [False, True]
    assert back[0] == "caf\\xe9"


# astropy's own advice on the escaped column name (backslash u0394mag) is expected here
@pytest.mark.filterwarnings("ignore:It is strongly recommended that column names")
def test_fits_output_escapes_non_ascii_text_and_names_what_it_cannot_keep(tmp_path):
    """FITS holds ASCII only: a source name or reason with 'é' made astropy raise
    UnicodeEncodeError after the whole run (a traceback, the results lost), and a meta key
    too long for a card a VerifyError. Now the text is written with backslash escapes, the
    meta entries no card can hold are left out, and one LossyOutputWarning names both."""
    from astropy.table import MaskedColumn

    from astromorph.exceptions import LossyOutputWarning

    table = Table({"source": ["gal_é.fits", "b.fits"],
                   "reason": MaskedColumn(["", "ß"], mask=[True, False]),
                   "score": [0.5, 0.25], "Δmag": [1.0, 2.0]},
                  meta={"astromorph_images": "gal_é.fits", "k" * 75: 1.5, "model": "m"})
    out = tmp_path / "out.fits"
    with pytest.warns(LossyOutputWarning, match=r"(?s)source, reason.*astromorph_images, column name Δmag.*\\xe9"
                                                r".*kkkk.*not written"):
        write_table(table, out)
    back = Table.read(out)
    assert list(back["source"]) == ["gal_\\xe9.fits", "b.fits"]
    assert list(back["reason"].mask) == [True, False] and back["reason"][1] == "\\xdf"
    assert list(back["score"]) == [0.5, 0.25] and list(back["\\u0394mag"]) == [1.0, 2.0]
    assert back.meta["astromorph_images"] == "gal_\\xe9.fits" and back.meta["model"] == "m"
    assert list(table["source"]) == ["gal_é.fits", "b.fits"]  # the caller's table unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fits"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ASCII only: nothing lost, nothing said
        write_table(Table({"source": ["b.fits"]}, meta={"model": "m"}), tmp_path / "a.fits")


@pytest.mark.parametrize("names", [("score", "SCORE"), ("Δmag", "\\u0394MAG")])
def test_fits_output_refuses_column_names_that_differ_only_by_case(tmp_path, names):
    """FITS compares column names (TTYPE) without regard to case: a table with 'score' and
    'SCORE' (or 'Δmag' and the name it is written as, in another case) was written as two
    columns that TOPCAT, cfitsio and fitsio cannot tell apart. write_table now refuses it
    before writing anything, naming both; .ecsv keeps them apart and is written."""
    from astromorph.exceptions import InputError

    table = Table({names[0]: [1.0, 2.0], names[1]: [3.0, 4.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the escaped name's LossyOutputWarning)
        with pytest.raises(InputError, match=f"{re.escape(repr(names[0]))}.*"
                                             f"{re.escape(repr(names[1]))}"):
            write_table(table, tmp_path / "out.fits")
    assert list(tmp_path.iterdir()) == []
    write_table(table, tmp_path / "out.ecsv")
    assert Table.read(tmp_path / "out.ecsv").colnames == list(names)


def test_fits_output_refuses_meta_keys_that_differ_only_by_case(tmp_path):
    """FITS header keywords are compared without regard to case: meta 'model' and 'MODEL'
    were written as two cards and read back as one ({'model': 'M'}: a value lost without
    a word). write_table now refuses it before writing, naming both keys; the commands
    check their input's meta before any work."""
    from astromorph.exceptions import InputError

    table = Table({"x": [1.0]}, meta={"model": "m", "MODEL": "M", "comments": ["a"],
                                      "COMMENT": ["b"]})
    with pytest.raises(InputError, match=r"meta key\(s\) 'model' and 'MODEL'"):
        write_table(table, tmp_path / "out.fits")
    assert list(tmp_path.iterdir()) == []
    write_table(table, tmp_path / "out.ecsv")
    assert Table.read(tmp_path / "out.ecsv").meta["MODEL"] == "M"
    table.meta.pop("MODEL")  # comments beside COMMENT: both are comment cards, not values
    write_table(table, tmp_path / "out.fits")
    assert Table.read(tmp_path / "out.fits").meta["model"] == "m"


def test_header_card_of_a_value_no_card_holds_is_dropped_and_named():
    """A NaN result (FITS headers hold no NaN) is left out and named, not a ValueError that
    stops the header copies."""
    from astromorph._headers import _card

    dropped = set()
    assert _card("ASTROMORPH MORPH P_RED", float("nan"), "x", dropped) is None
    assert dropped == {"ASTROMORPH MORPH P_RED"}
    assert _card("ASTROMORPH MORPH P_RED", 0.5, "x", dropped).value == 0.5


@pytest.mark.parametrize("cards, band", [({"FILTER": "HSC-R"}, "r"),  # HSC calexp
                                         ({"FILTER1": "CLEAR1L", "FILTER2": "F814W"}, "f814w")])
def test_band_of_an_image_extension_falls_back_to_the_primary_header(tmp_path, cards, band):
    """HSC calexp and HST drizzled files keep FILTER (or FILTER1/FILTER2, one of them
    CLEAR) in the primary header and the image in an extension: the band was read as
    unnamed; it now comes from the primary header where the extension names none."""
    hdul = fits.HDUList([fits.PrimaryHDU(header=fits.Header(list(cards.items()))),
                         fits.ImageHDU(galaxy(64), name="SCI"),
                         fits.ImageHDU(np.ones((64, 64), np.float32), name="WHT")])
    hdul.writeto(tmp_path / "drz.fits")
    (stamp,) = read_file(tmp_path / "drz.fits", want_scale=False, triplet_hint=False)
    assert stamp.bands == (band,)
    hdul[1].header["FILTER"] = "g"  # the extension's own band comes first
    hdul.writeto(tmp_path / "own.fits")
    (stamp,) = read_file(tmp_path / "own.fits", want_scale=False, triplet_hint=False)
    assert stamp.bands == ("g",)


def test_galaxy_model_on_fits_not_in_nanomaggies_says_so(models, tmp_path):
    """annotate warned of FITS headers whose unit or zero point is not SDSS nanomaggies;
    predict_files, with its own reader, said nothing: a stamp in counts was scored as
    nanomaggies (another class, flag 0) without a word. Its row's reason now says what the
    header gives, and one AstromorphWarning names the files; the pixels are not converted
    and the flags do not change."""
    g, r, i = galaxy(seed=1), galaxy(seed=2), galaxy(seed=3)
    write_mef(tmp_path / "nmgy.fits", [g, r, i], list("gri"))
    counts = write_mef(tmp_path / "counts.fits", [g, r, i], list("gri"))
    with fits.open(counts, mode="update") as hdul:
        for hdu in hdul[1:]:
            hdu.header["MAGZERO"] = 30.0
    write_fits(tmp_path / "single.fits", galaxy() * 200, BUNIT="count")
    write_fits(tmp_path / "stated.fits", galaxy(), BUNIT="nanomaggy")
    with pytest.warns(AstromorphWarning, match="nanomaggies") as rec:
        table = astromorph.predict_files("morphology", tmp_path)
    message = " ".join(str(w.message) for w in rec if "nanomaggies" in str(w.message))
    assert "counts.fits" in message and "single.fits" in message and "MAGZERO=30" in message
    assert "nmgy.fits" not in message and "stated.fits" not in message
    assert "BUNIT='count'" in row(table, tmp_path / "single.fits")["reason"]
    said = row(table, counts)["reason"]
    assert "MAGZERO=30" in said and "nanomaggies" in said
    assert row(table, tmp_path / "nmgy.fits")["reason"] == ""
    assert row(table, tmp_path / "stated.fits")["reason"] == ""
    assert not table["morph_flags"].any()
    # said, not converted: the pixels score as those without the keyword
    assert row(table, counts)["morph_p_red"] == pytest.approx(
        row(table, tmp_path / "nmgy.fits")["morph_p_red"], abs=1e-6)


def test_flux_unit_warning_names_only_the_images_that_are_scored(models, tmp_path):
    """The warning of headers not in nanomaggies names the files whose pixels are used: an
    image in counts refused as it is read (one pixel high: BAD_INPUT) is left out of it."""
    write_fits(tmp_path / "single.fits", galaxy() * 200, BUNIT="count")
    write_fits(tmp_path / "thin.fits", galaxy()[:1], BUNIT="count")
    with pytest.warns(UnusableInputWarning, match=r"1 of 2 stamp\(s\) could not be scored"), \
            pytest.warns(AstromorphWarning, match="nanomaggies") as rec:
        table = astromorph.predict_files("morphology", tmp_path)
    message = " ".join(str(w.message) for w in rec if "but the headers say" in str(w.message))
    assert "single.fits" in message and "thin.fits" not in message
    assert row(table, tmp_path / "thin.fits")["morph_flags"] & Flag.BAD_INPUT


def test_run_warnings_name_only_images_scored_not_those_refused_later(models, tmp_path):
    """The per-run warnings that name images (flux units other than nanomaggies, bands read
    by assumption, a file named as another format than its content) name those whose pixels
    were scored: an image refused only at preprocessing (no finite pixel: BAD_INPUT) is left
    out, as one refused as it is read is; its row says why, and UnusableInputWarning counts
    it. The reason of such a row does not say its pixels are scored as they are."""
    nan = np.full((192, 192), np.nan, dtype=np.float32)
    write_fits(tmp_path / "single.fits", galaxy() * 200, BUNIT="count")
    write_fits(tmp_path / "nan.fits", nan, BUNIT="count")
    write_fits(tmp_path / "cube.fits", np.stack([galaxy()] * 3))
    write_fits(tmp_path / "nancube.fits", np.stack([nan] * 3))
    write_fits(tmp_path / "good.png", galaxy(), BAND="r")
    write_fits(tmp_path / "nangood.png", nan, BAND="r")
    paths = [*sorted(tmp_path.glob("*.fits")), tmp_path / "good.png",
             tmp_path / "nangood.png"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        table = astromorph.predict_files("morphology", paths)

    def said(words):
        found = [str(w.message) for w in rec if words in str(w.message)]
        assert len(found) == 1, (words, [str(w.message) for w in rec])
        return found[0]

    units = said("but the headers say")
    assert "single.fits" in units and "nan.fits" not in units
    assert said("read by assumption").startswith(
        f"1 stamp(s) read by assumption (first: {tmp_path / 'cube.fits'}:")
    misnamed = said("rename them")
    assert misnamed.startswith("1 file(s) whose extension")
    assert "good.png" in misnamed and "nangood.png" not in misnamed
    assert said("could not be scored").startswith("3 of 6 stamp(s) could not be scored")
    for name in ("nan.fits", "nancube.fits", "nangood.png"):
        r = row(table, tmp_path / name)
        assert r["morph_flags"] & Flag.BAD_INPUT and "no finite pixel" in r["reason"]
        assert "scored as they are" not in r["reason"]
    assert "scored as they are" in row(table, tmp_path / "single.fits")["reason"]


def test_radio_model_ignores_the_flux_unit(models, tmp_path):
    img = galaxy(RADIO_STAMP)
    write_fits(tmp_path / "radio.fits", img, scale=1.8, BUNIT="JY/BEAM")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstromorphWarning)
        table = astromorph.predict_files("radio-morphology", tmp_path)
    assert "nanomagg" not in table["reason"][0]


def test_zero_point_in_the_primary_header_of_an_image_extension_is_said(models, tmp_path):
    """HSC calexp: FLUXMAG0 in the primary header, the image in an IMAGE extension."""
    primary = fits.PrimaryHDU(header=fits.Header([("FLUXMAG0", 10 ** (0.4 * 27))]))
    fits.HDUList([primary, fits.ImageHDU(galaxy(), name="IMAGE")]).writeto(
        tmp_path / "calexp.fits")
    with pytest.warns(AstromorphWarning, match="zero point 27"):
        table = astromorph.predict_files("morphology", tmp_path)
    assert "zero point 27" in table["reason"][0]


# ----------------------------------------------------------------------------- saturation
def test_saturated_triplet_member_is_flagged_with_a_reason(models, tmp_path):
    """A triplet whose science (or reference) image's header gives a saturation level
    (SATURATE, DECam's SATURATA/SATURATB) and whose core reaches it is SATURATED, with a
    reason naming the member; it is still scored. No keyword, a core below the level, or
    NaN and masking sentinels (+1e30) at the centre: no flag. A 4-D stack of triplets
    sharing one header is tested stamp by stamp."""
    t = triplet()
    sat = t.copy()
    sat[0, 30:34, 30:34] = 1000.0  # science core clipped at the detector's level
    sat[2] = sat[0] - sat[1]
    masked = t.copy()
    masked[0, 31, 31] = np.nan
    masked[0, 30, 31] = 1e30
    write_mef(tmp_path / "sci.fits", sat, ["SCIENCE", "REFERENCE", "DIFFERENCE"])
    with fits.open(tmp_path / "sci.fits", mode="update") as hdul:
        hdul["SCIENCE"].header["SATURATE"] = 1000.0
        hdul["REFERENCE"].header["SATURATE"] = 5000.0
    write_mef(tmp_path / "ref.fits", sat[[1, 0, 2]], ["SCIENCE", "REFERENCE", "DIFFERENCE"])
    with fits.open(tmp_path / "ref.fits", mode="update") as hdul:
        hdul[0].header["SATURATA"], hdul[0].header["SATURATB"] = 3000.0, 1000.0  # primary
    write_mef(tmp_path / "nokey.fits", sat, ["SCIENCE", "REFERENCE", "DIFFERENCE"])
    write_fits(tmp_path / "high.fits", sat, SATURATE=1000.5)
    write_fits(tmp_path / "masked.fits", masked, SATURATE=1000.0)
    write_fits(tmp_path / "stack.fits", np.stack([t, sat, masked]), SATURATE=1000.0)
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path)
    sci = row(table, tmp_path / "sci.fits")
    assert sci["rb_flags"] == Flag.SATURATED and not np.ma.is_masked(sci["rb_score"])
    assert "science stamp reaches its header's saturation level (1000)" in sci["reason"]
    assert "reference" not in sci["reason"]
    ref = row(table, tmp_path / "ref.fits")
    assert ref["rb_flags"] == Flag.SATURATED and "reference stamp" in ref["reason"]
    for name in ("nokey.fits", "high.fits", "masked.fits"):
        assert row(table, tmp_path / name)["rb_flags"] == 0, name
    assert [row(table, f"{tmp_path / 'stack.fits'}[{i}]")["rb_flags"] for i in range(3)] \
        == [0, Flag.SATURATED, 0]


def test_saturated_band_image_is_flagged_for_galaxy_models(models, tmp_path):
    """The optical path: a single-band image with SATURATE and a clipped core is SATURATED;
    a g, r, i cube whose header gives the level flags through any band; of five bands, only
    the g, r, i planes the model uses count."""
    g = galaxy()
    clipped = g.copy()
    clipped[94:98, 94:98] = 50.0
    write_fits(tmp_path / "single.fits", clipped, SATURATE=50)
    write_fits(tmp_path / "cube.fits", np.stack([g, clipped, g]), BAND1="g", BAND2="r",
               BAND3="i", SATURATE=50.0)
    write_mef(tmp_path / "ugriz.fits", [clipped, g, g, g, clipped], list("ugriz"), key="FILTER")
    with fits.open(tmp_path / "ugriz.fits", mode="update") as hdul:
        hdul[0].header["SATURATE"] = 50.0
    write_fits(tmp_path / "free.fits", clipped)
    table = quiet(astromorph.predict_files, "morphology", tmp_path)
    assert row(table, tmp_path / "single.fits")["morph_flags"] & Flag.SATURATED
    cube = row(table, tmp_path / "cube.fits")
    assert cube["morph_flags"] & Flag.SATURATED and "band r reaches" in cube["reason"]
    assert not row(table, tmp_path / "ugriz.fits")["morph_flags"] & Flag.SATURATED
    assert not row(table, tmp_path / "free.fits")["morph_flags"] & Flag.SATURATED


def test_auxiliary_extensions_keep_the_fast_fits_path(tmp_path, monkeypatch):
    """A primary image followed by auxiliary extensions only (MASK, UNCERT: Rubin cutouts,
    astropy CCDData) gives the primary image alone, as astropy's path does, without
    astropy: table cells of such bytes are read as files now and must not cost an
    astropy open each. Other trailing HDUs (an image extension of its own, a truncated
    or malformed auxiliary one) are left to astropy."""
    from astromorph._readers._fits import _fast_fits, read_fits_bytes

    data = triplet()[0]
    blob = fits_bytes(data, scale=0.2, extensions=True)
    (tmp_path / "ccd.fits").write_bytes(blob)
    slow = _read_fits_astropy(tmp_path / "ccd.fits", want_scale=True, triplet_hint=False)
    with monkeypatch.context() as m:
        m.setattr(fits, "open", lambda *a, **k: pytest.fail("astropy opened the file"))
        for stamps in (read_file(tmp_path / "ccd.fits"), read_fits_bytes(blob, source="c")):
            (stamp,) = stamps
            np.testing.assert_array_equal(stamp.data, slow[0].data)
            assert stamp.pixel_scale == pytest.approx(slow[0].pixel_scale)
            assert (stamp.kind, stamp.bands, stamp.flags) == (slow[0].kind, slow[0].bands, 0)
    hdul = fits.HDUList.fromfile(io.BytesIO(blob))
    own = fits.HDUList([*hdul, fits.ImageHDU(data, name="R")])
    buf = io.BytesIO()
    own.writeto(buf)
    bad = bytearray(blob)
    at = bad.index(b"NAXIS1  =", 2880 * 3)  # in the MASK header
    bad[at:at + 80] = b"NAXIS1  = 'abc'".ljust(80)
    for other in (buf.getvalue(), blob[:-2880], bytes(bad)):
        assert _fast_fits(other, primary_only=False, want_scale=True) is None


def _sky_scene_triplet(path, scale_x, scale_y, nx, ny):
    """A triplet FITS cube of ``ny`` x ``nx`` pixels of ``scale_x`` by ``scale_y`` arcsec
    (CDELT1 < 0, CDELT2 > 0), drawn from one scene on the sky: elongated Gaussians off the
    centre (the candidate's pixel ``n // 2``), placed by their offsets in arcsec."""
    y, x = np.mgrid[:ny, :nx]
    dx, dy = (x - nx // 2) * scale_x, (y - ny // 2) * scale_y  # arcsec west-east, north
    g = lambda x0, y0, sx, sy: np.exp(-((dx - x0) ** 2 / (2 * sx ** 2)  # noqa: E731
                                        + (dy - y0) ** 2 / (2 * sy ** 2)))
    sci = 100 * g(4.0, -6.0, 3.0, 5.0) + 40 * g(-12.0, 9.0, 4.0, 2.5) + 1.0
    ref = 60 * g(-12.0, 9.0, 4.0, 2.5) + 1.0
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0,
             CRPIX1=nx // 2 + 1, CRPIX2=ny // 2 + 1, CDELT1=-scale_x / 3600,
             CDELT2=scale_y / 3600)
    fits.PrimaryHDU(np.stack([sci, ref, sci - ref]).astype(np.float32), header=h).writeto(path)


def _resampled_triplets(models, monkeypatch, paths):
    """The triplets the real-bogus preprocessing gets (on the model grid) for each file."""
    from astromorph.preprocessing import _triplet as tri

    seen = []
    real = tri.preprocess_triplet
    monkeypatch.setattr(tri, "preprocess_triplet", lambda x, **kw: seen.append(x) or real(x, **kw))
    for p in paths:
        quiet(astromorph.predict_files, "real-bogus", p)
    return seen


def test_non_square_pixels_are_resampled_along_each_axis_by_its_own_scale(
        models, tmp_path, monkeypatch):
    """A stamp whose WCS gives pixels of 0.5" by 0.75" (CDELT1 = -0.5", CDELT2 = 0.75") was
    resampled with one scale, sqrt|det| = 0.61", along both axes: its scene squashed on the
    model grid. Each axis now has its own scale, and the stamp regridded matches the same
    scene drawn on square 0.5" pixels; the square stamp's regridding is unchanged."""
    from astromorph._readers._stamp import pixel_scales
    from astromorph.preprocessing._triplet import resample_triplet

    square, oblong = tmp_path / "square.fits", tmp_path / "oblong.fits"
    _sky_scene_triplet(square, 0.5, 0.5, 151, 151)
    _sky_scene_triplet(oblong, 0.5, 0.75, 151, 101)
    assert read_file(oblong, want_scale=True)[0].pixel_scale == pytest.approx((0.75, 0.5))
    scale = read_file(square, want_scale=True)[0].pixel_scale
    assert isinstance(scale, float) and scale == pytest.approx(0.5)
    a, b = _resampled_triplets(models, monkeypatch, [square, oblong])
    peak = np.abs(a).max()
    # the same scene on the model grid, up to the averaging of 0.5" or 0.75" pixels into
    # 1" ones (0.4 per cent of the peak; the old code: 34 per cent apart)
    np.testing.assert_allclose(b, a, rtol=0, atol=0.01 * peak)
    # square pixels: as before, the one scale sqrt|det| along both axes, bit for bit
    data = fits.getdata(square)[None]
    assert np.array_equal(a, resample_triplet(data, scale)[0], equal_nan=True)
    assert pixel_scales([[-0.5 / 3600, 0], [0, 0.5 / 3600]]) == \
        float(np.sqrt(abs(np.linalg.det([[-0.5 / 3600, 0], [0, 0.5 / 3600]]))) * 3600)


# ------------------------------------------------- ZTF cutouts cut at the CCD edge, by WCS
REAL_ZTF_PACKET = DATA_DIR / "alerts" / "472263571115115000.avro"


def _real_ztf_cutouts():
    """The candidate (ra, dec) and the three 63 x 63 cutouts (data, header) of a real ZTF
    packet; skipped without it. Its cutouts' headers hold no WCS (SIMPLE, BITPIX, NAXISi,
    BUNIT only)."""
    fastavro = pytest.importorskip("fastavro")
    if not REAL_ZTF_PACKET.is_file():
        pytest.skip(f"no real ZTF packet at {REAL_ZTF_PACKET}")
    with open(REAL_ZTF_PACKET, "rb") as f:
        (rec,) = list(fastavro.reader(f))
    planes = []
    for key in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
        with warnings.catch_warnings():  # their SIMPLE card is not in the standard's format
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            with fits.open(io.BytesIO(gzip.decompress(rec[key]["stampData"]))) as hdul:
                planes.append((hdul[0].data.astype(np.float32), hdul[0].header.copy()))
    return rec["candidate"]["ra"], rec["candidate"]["dec"], planes


def _edge_packet(path, keep, *, wcs_centre=(31, 31), wcs=True, **pos):
    """An alert of the real packet's cutouts cut to ``keep`` (slices of the 63 x 63 planes),
    with a ZTF-like TAN WCS (1.01 arcsec pixels) putting the candidate's ra, dec at the
    0-based pixel ``wcs_centre`` (y, x) of the uncut cutouts, CRPIXi shifted by the cut
    (``wcs=False``: the headers as they are, without WCS); returns the uncut planes."""
    ra, dec, planes = _real_ztf_cutouts()
    raw, full = {}, []
    ys, xs = keep
    for key, (data, header) in zip(("cutoutScience", "cutoutTemplate", "cutoutDifference"),
                                   planes):
        full.append(data)
        if wcs:
            header.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": ra,
                           "CRVAL2": dec, "CRPIX1": wcs_centre[1] + 1 - (xs.start or 0),
                           "CRPIX2": wcs_centre[0] + 1 - (ys.start or 0),
                           "CD1_1": -1.01 / 3600, "CD1_2": 0.0, "CD2_1": 0.0,
                           "CD2_2": 1.01 / 3600})
        buf = io.BytesIO()
        fits.PrimaryHDU(np.ascontiguousarray(data[keep]), header=header).writeto(buf)
        raw[key] = gzip.compress(buf.getvalue())
    write_avro(path, [ztf_alert(9, raw=raw, ra=ra, dec=dec, **pos)])
    return np.stack(full)


@pytest.mark.parametrize("packing", ["bzip2", "xz", "zip"])
def test_alert_cutouts_in_any_compression_read_as_gzipped_ones(tmp_path, packing):
    """Alert cutouts whose FITS bytes are compressed by bzip2, xz or zip give the stamps of
    gzipped ones, bit for bit: a ZTF alert cut at the CCD edge (placed by its cutouts' WCS)
    and a Rubin alert (whose cutouts' WCS gives the pixel scale); a broken archive is the
    alert's BAD_INPUT reason, naming the cutout and what is wrong, as a file of it says.
    (`parse_fits_bytes` read gzip only: the others were 'stamp is not FITS'.)"""
    pytest.importorskip("fastavro")
    keys = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
    trip = triplet(seed=3)
    stamps = {}
    for how, pack in (("gzip", gzip.compress), (packing, PACKERS[packing][1])):
        ztf = ztf_alert(9, raw={key: pack(fits_bytes(trip[i][:, 10:], scale=1.01,
                                                     centre=(31, 21)))
                                for i, key in enumerate(keys)},
                        ra=150.0, dec=2.0, xpos=21.0)
        rubin = rubin_alert(5)
        rubin.update({key: pack(rubin[key]) for key in keys})
        write_avro(tmp_path / f"ztf-{how}.avro", [ztf])
        write_avro(tmp_path / f"rubin-{how}.avro", [rubin], RUBIN_SCHEMA)
        stamps[how] = [read_file(tmp_path / f"{kind}-{how}.avro")[0] for kind in ("ztf", "rubin")]
    for want, got in zip(stamps["gzip"], stamps[packing]):
        assert (got.flags, got.reason, got.pixel_scale) == (want.flags, want.reason,
                                                            want.pixel_scale)
        np.testing.assert_array_equal(got.data, want.data)
    assert "placed by" in " ".join(stamps[packing][0].reason), stamps[packing][0].reason
    assert stamps[packing][1].flags == 0 and stamps[packing][1].pixel_scale == pytest.approx(0.2)
    broken = PACKERS[packing][1](fits_bytes(trip[2]))[:300]
    write_avro(tmp_path / "broken.avro", [ztf_alert(10, raw={"cutoutDifference": broken})])
    (stamp,) = read_file(tmp_path / "broken.avro")
    (tmp_path / "broken.fits").write_bytes(broken)
    (alone,) = read_file(tmp_path / "broken.fits")
    assert stamp.flags == Flag.BAD_INPUT
    # the file's reason, but for the file named (a cut stream's, or a cut HDU's: "the file
    # holds" its bytes, the cutout's "the bytes hold")
    said = alone.reason[0].replace(" in FITS file broken.fits:", ":").replace(
        "FITS file broken.fits:", "FITS data:").replace("the file holds", "the bytes hold")
    assert stamp.reason == [f"cutoutDifference: {said}"], (stamp.reason, alone.reason)
    assert alone.reason[0].startswith({
        "bzip2": "truncated bzip2 stream in FITS file broken.fits: Compressed file ended",
        "xz": "truncated FITS file broken.fits: the header of HDU 0 (primary) gives ",
        "zip": "corrupt or truncated zip"}[packing]), alone.reason


_EDGES = {"left": (np.s_[:, 10:], {"xpos": 21.0}), "right": (np.s_[:, :53], {"xpos": 3062.0}),
          "bottom": (np.s_[10:, :], {"ypos": 21.0}), "top": (np.s_[:53, :], {"ypos": 3070.0})}


@pytest.mark.parametrize("edge", sorted(_EDGES))
@pytest.mark.parametrize("know_pos", [True, False])
def test_ztf_edge_cutouts_are_placed_by_their_wcs(tmp_path, edge, know_pos):
    """A cut cutout with a WCS is padded so that the WCS's pixel of the candidate's ra, dec
    lands on (31, 31), whether or not xpos/ypos are known (null: the heuristic cannot
    tell the side), and the row says so."""
    keep, pos = _EDGES[edge]
    full = _edge_packet(tmp_path / "edge.avro", keep,
                        **(pos if know_pos else {"xpos": None, "ypos": None}))
    (stamp,) = read_file(tmp_path / "edge.avro")
    assert stamp.data.shape == (3, 63, 63) and stamp.flags == Flag.EDGE
    sl = (slice(None),) + keep
    np.testing.assert_array_equal(stamp.data[sl][:2], full[sl][:2])
    assert np.isnan(stamp.data).sum() == 3 * 63 * 10
    assert stamp.centre is None
    assert "placed by the cutouts' WCS" in " ".join(stamp.reason)


@pytest.mark.parametrize("edge, centre",
                         [(e, 30.6) for e in ("left", "bottom")]
                         + [(e, 30.5) for e in sorted(_EDGES)])
def test_ztf_edge_cutouts_placed_by_a_wcs_pixel_between_pixel_centres(tmp_path, edge, centre):
    """The WCS's pixel of the candidate is rounded to the nearest, not floored: a candidate
    0.4 pixel below and left of (31, 31) of the uncut cutout (ZTF cuts about the pixel the
    candidate lies in) is padded as one on it, without xpos/ypos to fall back on. A WCS
    pixel half way between two pixel centres lies in the upper one (pixel k spans
    [k - 0.5, k + 0.5), as for a pixel off the cutouts): a candidate at (30.5, 30.5) is
    padded as one on (31, 31), whatever the parity of its pixel in the cut one (rounding
    half to even would put it one pixel off, or find no padding)."""
    keep, _ = _EDGES[edge]
    full = _edge_packet(tmp_path / "edge.avro", keep, wcs_centre=(centre, centre), xpos=None,
                        ypos=None)
    (stamp,) = read_file(tmp_path / "edge.avro")
    assert stamp.data.shape == (3, 63, 63) and stamp.flags == Flag.EDGE
    sl = (slice(None),) + keep
    np.testing.assert_array_equal(stamp.data[sl][:2], full[sl][:2])
    assert "placed by the cutouts' WCS" in " ".join(stamp.reason)


@pytest.mark.parametrize("edge", sorted(_EDGES))
def test_ztf_edge_cutouts_without_wcs_are_placed_by_xpos_ypos(tmp_path, edge):
    """The real packets' cutouts carry no WCS: the candidate's CCD pixel (xpos, ypos,
    1-based, on a 3072 x 3080 quadrant) says which side is missing, and the row says so."""
    keep, pos = _EDGES[edge]
    full = _edge_packet(tmp_path / "edge.avro", keep, wcs=False, **pos)
    (stamp,) = read_file(tmp_path / "edge.avro")
    assert stamp.data.shape == (3, 63, 63) and stamp.flags == Flag.EDGE
    sl = (slice(None),) + keep
    np.testing.assert_array_equal(stamp.data[sl][:2], full[sl][:2])
    reason = " ".join(stamp.reason)
    assert "no WCS" in reason and "placed by the candidate's xpos, ypos" in reason


def test_ztf_edge_cutouts_whose_wcs_cannot_centre_them_use_xpos(tmp_path):
    """A WCS that puts the candidate where no padding to 63 x 63 centres it (here 20 pixels
    off) is not used: xpos decides, and the row says why."""
    keep, pos = _EDGES["left"]
    full = _edge_packet(tmp_path / "edge.avro", keep, wcs_centre=(31, 51), **pos)
    (stamp,) = read_file(tmp_path / "edge.avro")
    sl = (slice(None),) + keep
    np.testing.assert_array_equal(stamp.data[sl][:2], full[sl][:2])
    reason = " ".join(stamp.reason)
    assert "no padding to 63x63 centres" in reason
    assert "placed by the candidate's xpos, ypos" in reason


def test_ztf_edge_cutouts_with_xpos_far_from_both_edges_say_so(tmp_path):
    """A cutout cut in x whose xpos is more than 31 pixels from both edges of the 3072-pixel
    quadrant cannot be placed by xpos: the missing part is taken at the end, and said."""
    pytest.importorskip("fastavro")
    t = triplet()[:, :, 10:]
    write_avro(tmp_path / "edge.avro", [ztf_alert(9, np.ascontiguousarray(t), xpos=1500.0)])
    (stamp,) = read_file(tmp_path / "edge.avro")
    assert stamp.flags == Flag.EDGE and np.isnan(stamp.data[:, :, 53:]).all()
    assert "xpos 1500 is more than 31 pixels from both edges of the quadrant's 3072" \
        in " ".join(stamp.reason)


def test_ztf_full_cutouts_whose_wcs_puts_the_candidate_off_centre(models, tmp_path):
    """As for Rubin cutouts: a 63 x 63 cutout whose WCS puts the candidate more than a pixel
    from (31, 31) is scored about the WCS's pixel, said in its reason (and EDGE where the
    model's field then runs over the edge); one off the cutouts is BAD_INPUT; within a
    pixel of the centre nothing changes."""
    whole = (np.s_[:, :], {})
    _edge_packet(tmp_path / "near.avro", whole[0], wcs_centre=(31.2, 30.7))
    (near,) = read_file(tmp_path / "near.avro")
    assert near.centre is None and near.flags == 0 and not near.reason
    # 1.5 pixels off (more than ZTF_OFF_CENTRE_PIXELS, 1): scored about the WCS's pixel
    _edge_packet(tmp_path / "beyond.avro", whole[0], wcs_centre=(31, 32.5))
    (beyond,) = read_file(tmp_path / "beyond.avro")
    assert beyond.centre == pytest.approx((31, 32.5), abs=1e-6)
    _edge_packet(tmp_path / "off.avro", whole[0], wcs_centre=(31, 40))
    (off,) = read_file(tmp_path / "off.avro")
    assert off.centre == pytest.approx((31, 40), abs=1e-6)
    assert "not at the cutouts' centre" in " ".join(off.reason)
    table = astromorph.predict_files("real-bogus", tmp_path / "off.avro")
    assert table["rb_flags"][0] & Flag.EDGE
    _edge_packet(tmp_path / "gone.avro", whole[0], wcs_centre=(31, 140))
    (gone,) = read_file(tmp_path / "gone.avro")
    assert gone.flags == Flag.BAD_INPUT and "off the 63x63 cutouts" in " ".join(gone.reason)
def test_overwrite_through_a_symbolic_link_replaces_its_target(tmp_path):
    """An output path that is a symbolic link: with overwrite the file it points to is
    replaced (atomically, the temporary file beside the target) and the link stays; without
    overwrite it is refused, and so is a dangling link, which overwrite writes through
    (its target created), as ``>`` in a shell does."""
    from astromorph._io import atomic_output
    from astromorph.exceptions import OutputExistsError

    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "t.ecsv"
    write_table(Table({"a": [1.0]}), target)
    link = tmp_path / "link.ecsv"
    link.symlink_to(os.path.relpath(target, tmp_path))  # a relative link
    with pytest.raises(OutputExistsError, match="link.ecsv"):
        write_table(Table({"b": [2.0]}), link)
    assert Table.read(target).colnames == ["a"]
    write_table(Table({"b": [2.0]}), link, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, tmp_path)
    assert Table.read(target).colnames == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.ecsv", "real"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.ecsv"]

    made = []  # the temporary file lies in the target's folder (os.replace stays there)
    with atomic_output(link, overwrite=True) as tmp:
        made.append(tmp)
        tmp.write_text("x")
    assert made[0].parent.parent == target.parent and target.read_text() == "x"

    dangling = tmp_path / "dangling.ecsv"
    dangling.symlink_to(tmp_path / "real" / "new.ecsv")
    with pytest.raises(OutputExistsError, match="dangling.ecsv.*new.ecsv"):
        write_table(Table({"c": [3.0]}), dangling)
    assert not (tmp_path / "real" / "new.ecsv").exists()
    write_table(Table({"c": [3.0]}), dangling, overwrite=True)
    assert dangling.is_symlink() and Table.read(tmp_path / "real" / "new.ecsv").colnames == ["c"]
    loop = tmp_path / "loop.ecsv"
    loop.symlink_to(loop)
    with pytest.raises(InvalidArgumentError, match="loop.ecsv.*a loop"):
        write_table(Table({"d": [4.0]}), loop, overwrite=True)
    assert loop.is_symlink()


def test_cli_overwrite_through_a_symbolic_link_keeps_the_link(models, tmp_path, capsys):
    """``-o LINK --overwrite`` replaces the file the link points to; the link stays; a
    dangling link into a missing folder is refused, naming that folder; without
    ``--overwrite`` a link is refused before any work."""
    write_fits(tmp_path / "t.fits", triplet())
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "r.ecsv"
    target.write_text("old")
    link = tmp_path / "r.ecsv"
    link.symlink_to(target)
    args = ["predict", "real-bogus", str(tmp_path / "t.fits"), "-o", str(link),
            "--no-progress"]
    assert cli.main(args) == 2
    assert "exists" in capsys.readouterr().err and target.read_text() == "old"
    assert cli.main(args + ["--overwrite"]) == 0
    assert link.is_symlink() and len(Table.read(target)) == 1
    gone = tmp_path / "gone.ecsv"
    gone.symlink_to(tmp_path / "missing" / "r.ecsv")
    assert cli.main(["predict", "real-bogus", str(tmp_path / "t.fits"), "-o", str(gone),
                     "--overwrite", "--no-progress"]) == 2
    assert "missing" in capsys.readouterr().err and gone.is_symlink()


# ----------------------------------------------------------------------------- lossy FITS
#: How the FITS stamps of the lossy-compression tests are written: as they are, without loss
#: (GZIP_2 of the floats themselves) and quantised (fpack's levels, dither 1, 2, NO_DITHER).
_COMPRESSIONS = {"plain": None, "lossless": dict(compression_type="GZIP_2", quantize_level=0)}
_COMPRESSIONS.update({f"q{q}_m{m}": dict(compression_type="RICE_1", quantize_level=q,
                                         quantize_method=m)
                      for q in (4, 16) for m in (1, 2, -1)})


def _write_compressed(path, data, how, *, tile=None, header=None):
    """``data`` as a FITS file at ``path``: a primary image (``how`` None) or a CompImageHDU
    (``how``: its options; ``tile``: its tile shape, else astropy's rows)."""
    if how is None:
        fits.PrimaryHDU(data, header=header).writeto(path)
    else:
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
            data, header=header, **how, **({} if tile is None else {"tile_shape": tile}))]
        ).writeto(path)
    return path


def test_losslessly_stored_tiles_have_no_quantisation_step(tmp_path):
    """A tile that fpack could not quantise (constant, or all NaN) is stored without loss in
    GZIP_COMPRESSED_DATA: its step is 0 whatever its ZSCALE says (astropy writes 0 there;
    here 0.5, as another writer may leave), and a quantised tile keeps its own."""
    from astromorph._readers._fits import _quantisation_steps

    img = np.random.default_rng(0).normal(0, 1, (3, 16)).astype(np.float32)
    img[1], img[2] = 5.0, np.nan
    path = _write_compressed(tmp_path / "q.fits", img,
                             dict(compression_type="RICE_1", quantize_level=4),
                             tile=(1, 16))
    with fits.open(path, mode="update", disable_image_compression=True) as hdul:
        assert [len(c) > 0 for c in hdul[1].data.field("GZIP_COMPRESSED_DATA")] == \
            [False, True, True]
        hdul[1].data["ZSCALE"][1:] = 0.5
    with fits.open(path) as hdul:
        tile, steps = _quantisation_steps(hdul[1], 2.0)
    assert tile == (1, 16) and steps[0, 0] > 0
    assert steps[1:, 0].tolist() == [0.0, 0.0]


def test_quantum_of_a_plane_is_the_largest_step_of_its_tiles(tmp_path):
    """An image whose tiles were quantised with different steps (quiet rows, then rows 100
    times noisier): its `Stamp.quantum` is the largest step (a flat part may read back as
    values that far apart), not the smallest."""
    from astromorph._readers._fits import _quantisation_steps

    img = np.random.default_rng(0).normal(0, 1, (16, 16)).astype(np.float32)
    img[8:] *= 100
    path = _write_compressed(tmp_path / "q.fits", img,
                             dict(compression_type="RICE_1", quantize_level=4), tile=(8, 16))
    with fits.open(path) as hdul:
        _, steps = _quantisation_steps(hdul[1], 1.0)
    assert steps[1, 0] > 50 * steps[0, 0] > 0
    (stamp,) = read_file(path)
    np.testing.assert_allclose(stamp.quantum, [steps.max()])


def _flat_triplet(n=63):
    t = triplet(n)
    t[1] = 200.0  # a flat reference (a masked or filled template)
    return t

def test_lossily_compressed_bands_beyond_gri_keep_the_steps_of_the_gri_planes(models, tmp_path):
    """Five lossily compressed bands (u, g, r, i, z, one quantised HDU each: a quantisation
    step per band) are scored on their g, r, i planes with those planes' steps, as the same
    three planes in a file of their own: the steps of u and z are dropped with their planes
    (were they kept, five steps for three planes)."""
    hdus = [fits.PrimaryHDU()]
    for k, band in enumerate("ugriz"):
        hdu = fits.CompImageHDU(galaxy(64, seed=k) * (k + 1), compression_type="RICE_1",
                                quantize_level=4)
        hdu.header["FILTER"] = band
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(tmp_path / "ugriz.fits")
    (stamp,) = read_file(tmp_path / "ugriz.fits")
    assert stamp.bands == tuple("ugriz") and len(stamp.quantum) == 5
    write_mef(tmp_path / "gri.fits", stamp.data[1:4], list("gri"))
    table = astromorph.predict_files("morphology", [tmp_path / "ugriz.fits", tmp_path / "gri.fits"],
                                     progress=False)
    assert table["morph_flags"][0] == table["morph_flags"][1]
    assert not table["morph_flags"][0] & Flag.unusable()
    assert table["reason"][0] == table["reason"][1]
    np.testing.assert_allclose(table["morph_p_red"][0], table["morph_p_red"][1], rtol=1e-6)



@pytest.mark.parametrize("case", ["triplet", "triplet_resampled", "optical_stack",
                                  "radio_stack"])
def test_flat_stamp_of_a_lossily_compressed_fits_is_constant(models, tmp_path, case):
    """A flat plane (a triplet's reference) or a flat stamp of a stack, in a tile that also
    holds noise, reads back from a float FITS file tile-compressed with quantisation (fpack's
    default) as values up to one quantisation step (ZSCALE) apart: it is CONSTANT as in the
    same file uncompressed, or compressed without loss; every other row's flags are those
    of the uncompressed file too. (A tile that is flat throughout is stored without loss.)"""
    rng = np.random.default_rng(3)
    header, flat_rows = None, [0]
    if case == "triplet":
        model, data = "real-bogus", _flat_triplet()
    elif case == "triplet_resampled":  # 0.25"/pixel: blocks of 4 x 4 on the 1"/pixel grid
        model, data = "real-bogus", _flat_triplet(252)
        header = celestial_header(fits.Header(), 0.25, data.shape)
    elif case == "optical_stack":
        model = "morphology"
        data = np.stack([galaxy(64, seed=s)[None] for s in range(4)])
        data[2], flat_rows = 5.0, [2]
    else:
        model, n = "radio-morphology", RADIO_STAMP
        data = rng.normal(0, 1.5e-4, (3, 1, n, n)).astype(np.float32)
        data[:, :, n // 2 - 5:n // 2 + 5, n // 2 - 5:n // 2 + 5] += 0.01
        data[1], flat_rows = 2e-3, [1]
    flags = {}
    for name, how in _COMPRESSIONS.items():
        path = _write_compressed(tmp_path / f"{name}.fits", data.astype(np.float32), how,
                                 tile=data.shape, header=header)
        table = quiet(astromorph.predict_files, model, path)
        flags[name] = np.asarray(table[[c for c in table.colnames if c.endswith("_flags")][0]])
        flat = np.isin(np.arange(len(table)), flat_rows)
        np.testing.assert_array_equal((flags[name] & Flag.CONSTANT) != 0, flat, err_msg=name)
        for r in np.flatnonzero(flat):
            words = table["reason"][r]
            # (NO_DITHER reads a flat tile back exactly: said as for the uncompressed file)
            assert ("quantisation step" in words) == (name.startswith("q")
                                                      and not name.endswith("m-1")), words
    for name in _COMPRESSIONS:
        np.testing.assert_array_equal(flags[name], flags["plain"], err_msg=name)


@pytest.mark.parametrize("method", [1, 2, -1])
def test_noise_stamps_of_a_lossily_compressed_fits_are_not_constant(models, tmp_path, method):
    """1,000 stamps of noise (levels from 1e-4 to 100, on offsets) and 1,000 noise triplets
    on 0.25"/pixel (resampled onto the model's 1"/pixel grid: blocks of 4 x 4 pixels, whose
    means' quantisation errors are a quarter of a pixel's), quantised at fpack's level 4
    with each method, tiles of one row and of one stamp: none is CONSTANT."""
    rng = np.random.default_rng(7)
    n = 1000
    sigma = 10.0 ** rng.uniform(-4, 2, (n, 1, 1, 1))
    noise = (rng.uniform(-50, 50, (n, 1, 1, 1)) * sigma
             + rng.normal(0, 1, (n, 1, 16, 16)) * sigma).astype(np.float32)
    noise_triplets = ((rng.uniform(0, 50, (n, 1, 1, 1)) + rng.normal(0, 1, (n, 3, 32, 32)))
                      * sigma).astype(np.float32)
    header = celestial_header(fits.Header(), 0.25, noise_triplets.shape)
    how = dict(compression_type="RICE_1", quantize_level=4, quantize_method=method)
    for tile in (None, (1, 1, 16, 16)):
        path = _write_compressed(tmp_path / f"noise{tile is None}.fits", noise, how, tile=tile)
        flags = np.asarray(quiet(astromorph.predict_files, "morphology", path)["morph_flags"])
        assert len(flags) == n and not np.any(flags & Flag.CONSTANT)
    for tile in (None, (1, 3, 32, 32)):
        path = _write_compressed(tmp_path / f"triplets{tile is None}.fits", noise_triplets,
                                 how, tile=tile, header=header)
        flags = np.asarray(quiet(astromorph.predict_files, "real-bogus", path)["rb_flags"])
        assert len(flags) == n and not np.any(flags & Flag.CONSTANT)


@pytest.mark.parametrize("border", [False, True])
def test_reason_of_a_constant_resampled_triplet_says_what_decided(models, tmp_path, border):
    """A triplet on 0.25"/pixel is CONSTANT on the model's 1"/pixel grid, where its
    reference plane, flat (200) under the quantisation of a lossily compressed file, spans
    less than the step averaged over blocks of 4 x 4 pixels (10 / sqrt(12 x 16) of it): the
    reason names that plane and that allowance, not the file's step (which the raw plane
    was compared with) and, where the raw plane is not flat (a ramp in a border outside the
    model's field), not a 'constant stamp' without a plane."""
    n = 300  # 75": the model's 63" field is the middle 252 pixels
    data = _flat_triplet(n)
    if border:
        ramp = np.linspace(0, 50, n, dtype=np.float32)
        data[1, :20] += ramp
        data[1, -20:] += ramp
    header = celestial_header(fits.Header(), 0.25, data.shape)
    path = _write_compressed(tmp_path / "t.fits", data, _COMPRESSIONS["q16_m1"],
                             tile=data.shape, header=header)
    with fits.open(path) as hdul:
        step = float(np.max(hdul[1].compressed_data["ZSCALE"]))
    row = quiet(astromorph.predict_files, "real-bogus", path)[0]
    assert row["rb_flags"] & Flag.CONSTANT, row["reason"]
    words = row["reason"]
    allowance = step * 10 / np.sqrt(12 * 16)
    assert "reference stamp is constant (200" in words, words
    assert f"to {allowance:.2g}" in words and f"step {step:.2g}" in words, words


@pytest.mark.parametrize("name,raw", [
    ("morphology", lambda: RawStamps("bands", np.zeros((0, 3, 64, 64), np.float32),
                                     quantum=np.zeros((0, 3)))),
    ("morphology", lambda: RawStamps("colour", np.zeros((0, 64, 64, 3), np.uint8))),
    ("radio-morphology", lambda: RawStamps("bands", np.zeros((0, 1, 150, 150), np.float32),
                                           pixel_scale=1.0, beam_shape=np.zeros((0, 3)),
                                           quantum=np.zeros(0))),
    ("radio-morphology", lambda: RawStamps("bands", np.zeros((0, 1, 150, 150), np.uint8))),
    ("real-bogus", lambda: RawStamps("triplet", np.zeros((0, 3, 252, 252), np.float32),
                                     pixel_scale=0.25, quantum=np.zeros((0, 3)))),
    ("real-bogus", lambda: RawStamps("triplet", np.zeros((0, 3, 63, 63), np.float32)))])
def test_prepare_of_an_empty_batch_is_empty(models, name, raw):
    """`prepare` of a batch of no stamps, of each family and kind (resampled or not, with
    quantisation steps), is an empty network input and no flags: the families' own code
    (the radio family's np.stack of the resampled images, the triplets' reshape in
    `_empty_or_constant`) is never given zero rows. No public path builds such a batch
    (predict_files, annotate and annotate_stamps skip a group without a usable row); this
    holds if one ever does."""
    model = astromorph.load_model(name)
    x, flags = prepare(model, raw())
    assert x.shape == (0, *model.input_shape) and x.dtype == np.float32
    assert flags.shape == (0,) and flags.dtype == np.int32


def test_quantum_of_a_resampled_triplet_shrinks_with_its_blocks(models):
    """A triplet on pixels 10 times finer than the model's is resampled onto its grid by
    means of 10 x 10 pixels, whose quantisation errors are a tenth of a pixel's: noise one
    step deep spans less than a step there (0.7 of it) but far more than the flat plane's
    allowance of 10 / sqrt(12 x 100) steps: not CONSTANT; the flat reference, dithered
    over a whole step, is."""
    rng = np.random.default_rng(5)
    step, n = 0.01, 630
    data = np.stack([rng.normal(100, step, (n, n)),  # noise: 1 step deep
                     100 + step * rng.uniform(-0.5, 0.5, (n, n)),  # flat, dithered
                     rng.normal(0, step, (n, n))]).astype(np.float32)[None]
    model = astromorph.load_model("real-bogus")
    raw = RawStamps("triplet", data, pixel_scale=0.1, quantum=np.full((1, 3), step))
    _, flags = prepare(model, raw)
    assert flags[0] & Flag.CONSTANT  # the reference plane
    data[0, 1] = rng.normal(100, 0.2, (n, n))  # a template of noise: only the science's
    _, flags = prepare(model, RawStamps("triplet", data, pixel_scale=0.1,
                                        quantum=np.full((1, 3), step)))
    assert not flags[0] & Flag.CONSTANT


# ------------------------------------------------- header keywords, card by card (mutants)
def _header_model(name="toy"):
    """The attributes of a model that `write_results_to_header` reads."""
    from types import SimpleNamespace

    return SimpleNamespace(name=name, version="1.2.3", sha256="ab" * 32,
                           card={"column_prefix": "toy"})


def _header_table(reason=("",), **columns):
    t = Table({"source": ["x"] * len(reason), "toy_score": np.full(len(reason), 0.25),
               **columns})
    t["reason"] = list(reason)
    return t


def test_header_keywords_of_an_unflagged_row_have_no_empty_reason(tmp_path):
    """An unflagged row (empty reason) gets no REASON card; a flagged one gets its reason."""
    from astromorph._headers import write_results_to_header

    paths = [tmp_path / "a.fits", tmp_path / "b.fits"]
    for p in paths:
        fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(p)
    table = _header_table(reason=("", "saturated"))
    origins = [(paths[0], 0, None), (paths[1], 0, None)]
    write_results_to_header(_header_model(), table, origins, {p: p for p in paths})
    with fits.open(paths[0]) as hdul:
        assert "HIERARCH ASTROMORPH TOY SCORE" in hdul[0].header
        assert "HIERARCH ASTROMORPH TOY REASON" not in hdul[0].header
    with fits.open(paths[1]) as hdul:
        assert hdul[0].header["HIERARCH ASTROMORPH TOY REASON"] == "saturated"


def test_header_keywords_leave_out_array_columns(tmp_path):
    """An (N, D) column (an embedding) gets no header card; one number per row does."""
    from astromorph._headers import write_results_to_header

    p = tmp_path / "a.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(p)
    table = _header_table(toy_embedding=np.ones((1, 3)))
    write_results_to_header(_header_model(), table, [(p, 0, None)], {p: p})
    with fits.open(p) as hdul:
        keys = [k for k in hdul[0].header if k.startswith("ASTROMORPH TOY")]
    assert "ASTROMORPH TOY SCORE" in keys
    assert not [k for k in keys if "EMBEDDING" in k]


def test_rewriting_header_keywords_keeps_one_astromorph_version_card(tmp_path):
    """Written twice (a rerun in place): one ``ASTROMORPH VERSION`` card, not two."""
    from astromorph._headers import write_results_to_header

    p = tmp_path / "a.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(p)
    for _ in range(2):
        write_results_to_header(_header_model(), _header_table(), [(p, 0, None)], {p: p})
    with fits.open(p) as hdul:
        keys = list(hdul[0].header.keys())
    assert keys.count("ASTROMORPH VERSION") == 1
    assert keys.count("ASTROMORPH TOY SCORE") == 1


def test_header_keywords_keep_an_input_checksum_valid(tmp_path):
    """A file written with CHECKSUM/DATASUM cards gets them recomputed: the copy verifies."""
    from astromorph._headers import write_results_to_header

    p, out = tmp_path / "a.fits", tmp_path / "out.fits"
    fits.PrimaryHDU(np.arange(16, dtype=np.float32).reshape(4, 4)).writeto(p, checksum=True)
    write_results_to_header(_header_model(), _header_table(), [(p, 0, None)], {p: out})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # astropy warns of a checksum that does not verify
        with fits.open(out, checksum=True) as hdul:
            assert hdul[0].header["HIERARCH ASTROMORPH TOY SCORE"] == 0.25
            assert hdul[0].verify_checksum() == 1 and hdul[0].verify_datasum() == 1


def test_a_header_card_whose_comment_no_card_holds_keeps_its_value():
    """A comment no card holds (a column description with a non-ASCII character): the
    comment goes, the value stays (and nothing is named as dropped)."""
    from astromorph._headers import _card

    dropped = set()
    card = _card("ASTROMORPH TOY ANGLE", 12.5, "position angle in \u00b0", dropped)
    assert card is not None and card.value == 12.5 and card.comment == "" and not dropped


def test_header_targets_of_fits_inputs_only_warn_of_nothing(tmp_path):
    """Every input a FITS file: no warning of inputs that are not FITS."""
    from astromorph._headers import header_targets

    p = tmp_path / "a.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert header_targets([p], tmp_path / "out", False, False) == {p: tmp_path / "out"
                                                                       / "a.fits"}


def _hand_header(*cards):
    """A FITS header block of ``cards`` (strings, END added), padded to 2880 bytes."""
    text = "".join(c.ljust(80) for c in (*cards, "END"))
    return text.ljust(-(-len(text) // 2880) * 2880).encode()


def test_integer_image_whose_bzero_cancels_large_raw_values_reads_them_exactly(tmp_path):
    """int32 pixels stored as raw - 1e9 with BZERO = 1e9: the physical values are the small
    integers k, read exactly by the fast reader, astropy's path and from bytes (scaled in
    float64: float32 spaces values near 1e9 by 64, and every k came out 0 or 64)."""
    k = np.arange(20 * 20).reshape(20, 20)
    hdu = fits.PrimaryHDU((k - 1_000_000_000).astype(np.int32))
    hdu.header["BZERO"] = 1e9  # set after the data: the raw values are stored
    hdu.writeto(tmp_path / "z.fits")
    assert fits.getheader(tmp_path / "z.fits")["BZERO"] == 1e9
    for data in (read_file(tmp_path / "z.fits")[0].data[0],
                 _read_fits_astropy(tmp_path / "z.fits", want_scale=False,
                                    triplet_hint=False)[0].data[0],
                 parse_fits_bytes((tmp_path / "z.fits").read_bytes(), want_scale=False)[0]):
        np.testing.assert_array_equal(data, k.astype(np.float32))


def test_groups_header_and_zero_length_axis_are_refused_alike_by_both_fits_paths(tmp_path):
    """A primary header with GROUPS = T (random groups, even with NAXIS1 > 0) and an image
    with an axis of length 0 hold no image to score: the fast reader leaves both to astropy,
    and both paths refuse them with one reason (an empty image was read as a 0 x 20 stamp
    with no flag)."""
    raw = np.arange(20 * 20, dtype=">f4").reshape(20, 20)
    common = ["SIMPLE  =                    T", "BITPIX  =                  -32",
              "NAXIS   =                    2", "NAXIS1  =                   20"]
    (tmp_path / "groups.fits").write_bytes(
        _hand_header(*common, "NAXIS2  =                   20", "GROUPS  =                    T",
                     "PCOUNT  =                    0", "GCOUNT  =                    1")
        + raw.tobytes().ljust(2880, b"\0"))
    (tmp_path / "empty.fits").write_bytes(_hand_header(*common, "NAXIS2  =                    0"))
    for name in ("groups.fits", "empty.fits"):
        for (stamp,) in (read_file(tmp_path / name),
                         _read_fits_astropy(tmp_path / name, want_scale=True,
                                            triplet_hint=False)):
            assert stamp.data is None and stamp.flags & Flag.BAD_INPUT, name
            assert stamp.reason == ["no image HDU with data"], name
        with pytest.raises(ValueError, match="no image data in stamp"):
            parse_fits_bytes((tmp_path / name).read_bytes())


def test_rotated_pc_matrix_with_non_square_pixels_gives_their_scales(tmp_path):
    """CDELTi scale the rows of PCi_j (wcslib: CDi_j = CDELTi PCi_j): a PC rotation of 30
    degrees with CDELT1 = -1e-4, CDELT2 = 2e-4 gives pixels of 0.36" x 0.72"... as astropy
    reads them, on the fast path and astropy's (scaling the columns gave other sides)."""
    from astropy.wcs import WCS

    from astromorph._readers._fits import _header_scale, pixel_scales

    t = np.radians(30.0)
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=10.0, CRVAL2=5.0, CRPIX1=16.0,
             CRPIX2=16.0, CDELT1=-1e-4, CDELT2=2e-4, PC1_1=np.cos(t), PC1_2=-np.sin(t),
             PC2_1=np.sin(t), PC2_2=np.cos(t))
    expected = pixel_scales(WCS(h).celestial.pixel_scale_matrix)
    assert np.ptp(expected) > 0.1  # not square
    assert _header_scale(h) == pytest.approx(expected)
    fits.PrimaryHDU(galaxy(32), header=h).writeto(tmp_path / "pc.fits")
    for stamp in (read_file(tmp_path / "pc.fits")[0],
                  _read_fits_astropy(tmp_path / "pc.fits", want_scale=True,
                                     triplet_hint=False)[0]):
        assert stamp.pixel_scale == pytest.approx(expected), stamp.pixel_scale
    _, scale = parse_fits_bytes((tmp_path / "pc.fits").read_bytes())
    assert scale == pytest.approx(expected)


@pytest.mark.parametrize("layout", ["stokes_first", "stokes_pc"])
def test_stokes_axis_not_last_or_stepped_by_pc_gives_the_i_plane(tmp_path, layout):
    """A Stokes axis that is not the last FITS axis (CTYPE3 = STOKES of a 4-axis cube whose
    FREQ is axis 4), and one whose step is CDELT3 x PC3_3 (CDELT3 = 2, PC3_3 = 0.5: the
    planes are I, Q, U): the I plane is read, not another (wrong axis, or the step read as
    2 and the planes as I, U, ...)."""
    planes = np.stack([galaxy(24, seed=s) * (s + 1) for s in range(3)])  # I, Q, U
    h = fits.Header()
    h.update(CTYPE1="RA---SIN", CTYPE2="DEC--SIN", CRVAL1=10.0, CRVAL2=5.0, CRPIX1=12.0,
             CRPIX2=12.0, CDELT1=-1e-4, CDELT2=1e-4)
    if layout == "stokes_first":  # FITS axes: RA, DEC, STOKES (3 planes), FREQ (1)
        data = planes[None]
        h.update(CTYPE3="STOKES", CRVAL3=1.0, CRPIX3=1.0, CDELT3=1.0, CTYPE4="FREQ",
                 CRVAL4=1.4e9, CRPIX4=1.0, CDELT4=1e6)
    else:  # STOKES last, stepped 2 x 0.5, reference on the third plane (U = 3)
        data = planes
        h.update(CTYPE3="STOKES", CRVAL3=3.0, CRPIX3=3.0, CDELT3=2.0, PC3_3=0.5)
    fits.PrimaryHDU(data, header=h).writeto(tmp_path / "s.fits")
    for stamp in (read_file(tmp_path / "s.fits")[0],
                  _read_fits_astropy(tmp_path / "s.fits", want_scale=True,
                                     triplet_hint=False)[0]):
        assert not stamp.flags, stamp.reason
        np.testing.assert_array_equal(stamp.data[0], planes[0])
    np.testing.assert_array_equal(
        parse_fits_bytes((tmp_path / "s.fits").read_bytes(), want_scale=False)[0], planes[0])


def test_triplet_role_given_twice_takes_its_first_plane(tmp_path):
    """Two SCIENCE HDUs (then REFERENCE, DIFFERENCE): the triplet's science member is the
    first of them, as `_triplet_stamp` documents, not the last."""
    g = galaxy(32)
    write_mef(tmp_path / "t.fits", [g, g * 7, g * 2, g * 3],
              ["SCIENCE", "SCIENCE", "REFERENCE", "DIFFERENCE"])
    (stamp,) = read_file(tmp_path / "t.fits")
    assert stamp.kind == "triplet"
    np.testing.assert_array_equal(stamp.data[0], g)
    np.testing.assert_array_equal(stamp.data[1], g * 2)


def test_band_hdus_of_different_shapes_are_refused_with_a_reason(tmp_path):
    """g, r, i HDUs of 32 x 32, 32 x 32 and 24 x 32 pixels: no stack of bands, a stamp
    flagged BAD_INPUT naming the shapes (not numpy's stacking error)."""
    write_mef(tmp_path / "b.fits", [galaxy(32), galaxy(32, 1), galaxy(32, 2)[:24]], "gri",
              key="FILTER")
    (stamp,) = read_file(tmp_path / "b.fits")
    assert stamp.data is None and stamp.flags & Flag.BAD_INPUT
    assert stamp.reason == ["band images differ in shape: 32x32, 32x32, 24x32"]


def test_extension_with_gcount_above_one_is_sized_for_all_its_groups(tmp_path):
    """A MASK extension with GCOUNT = 2 (PCOUNT = 0) holds twice its NAXIS product (8192
    bytes of 32 x 32 float32): whole, the primary image is read; cut after one group (5760
    bytes, one group padded), the file is refused as truncated, by the fast reader, astropy's
    path and from bytes alike (sized for one group, the fast reader found it whole)."""
    img = galaxy(32)
    one = img.astype(">f4").tobytes()
    ext = _hand_header("XTENSION= 'IMAGE   '", "BITPIX  =                  -32",
                       "NAXIS   =                    2", "NAXIS1  =                   32",
                       "NAXIS2  =                   32", "PCOUNT  =                    0",
                       "GCOUNT  =                    2", "EXTNAME = 'MASK    '")
    prim = fits.PrimaryHDU(img)
    prim.header["EXTEND"] = True
    buf = io.BytesIO()
    prim.writeto(buf)
    (tmp_path / "whole.fits").write_bytes(buf.getvalue() + ext + (one + one).ljust(8640, b"\0"))
    (tmp_path / "cut.fits").write_bytes(buf.getvalue() + ext + one.ljust(5760, b"\0"))
    for read in (read_file, lambda p: _read_fits_astropy(p, want_scale=False,
                                                          triplet_hint=False)):
        (stamp,) = read(tmp_path / "whole.fits")
        assert not stamp.flags, stamp.reason
        np.testing.assert_array_equal(stamp.data[0], img)
        (stamp,) = read(tmp_path / "cut.fits")
        assert stamp.data is None and stamp.flags & Flag.BAD_INPUT
        assert stamp.reason == ["truncated FITS file cut.fits: the header of "
                                "HDU 1, EXTNAME 'MASK' gives 8192 bytes of data, the file "
                                "holds 5760"]
    np.testing.assert_array_equal(
        parse_fits_bytes((tmp_path / "whole.fits").read_bytes(), want_scale=False)[0], img)
    with pytest.raises(ValueError, match="HDU 1, EXTNAME 'MASK' gives 8192 bytes of data, "
                                         "the bytes hold 5760"):
        parse_fits_bytes((tmp_path / "cut.fits").read_bytes(), want_scale=False)


def test_quantisation_step_of_a_lossily_compressed_image_is_scaled_by_bscale(tmp_path):
    """A lossily tile-compressed image with BSCALE = 2: its pixels are twice what the tiles
    hold, and so is its quantisation step (`Stamp.quantum`)."""
    from astromorph._readers._fits import _quantisation_steps

    img = np.random.default_rng(0).normal(0, 1, (16, 16)).astype(np.float32)
    tiled = fits.CompImageHDU(img, compression_type="RICE_1", quantize_level=4)
    tiled.header["BSCALE"] = 2.0  # set after the data: the tiles hold img
    path = tmp_path / "q.fits"
    fits.HDUList([fits.PrimaryHDU(), tiled]).writeto(path)
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        assert hdul[1].header["BSCALE"] == 2.0
        raw = np.asarray(hdul[1].data, np.float32)
        _, steps = _quantisation_steps(hdul[1], 1.0)
    (stamp,) = read_file(path)
    np.testing.assert_allclose(stamp.data[0], raw * 2, rtol=1e-6)
    np.testing.assert_allclose(stamp.quantum, [2 * steps.max()])


def test_an_error_after_a_header_file_is_moved_in_is_logged_not_swallowed(tmp_path, caplog,
                                                                          monkeypatch):
    """An unexpected error (not an OSError) after a header file was moved into place (its
    folder's sync, closing the input): the file is written and counted so, and the other
    files are still written, but the error was dropped without a word; it is now logged
    as a warning naming the file and the error, with its traceback."""
    import astromorph._io as io_module
    from astromorph._headers import write_results_to_header

    paths = [tmp_path / "a.fits", tmp_path / "b.fits"]
    for p in paths:
        fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(p)
    outs = {p: tmp_path / f"out_{p.name}" for p in paths}

    def sync(directory):
        raise RuntimeError("a surprise")

    monkeypatch.setattr(io_module, "_fsync_dir", sync)
    table = _header_table(reason=("", ""))
    with caplog.at_level(logging.DEBUG, logger="astromorph"):
        write_results_to_header(_header_model(), table, [(p, 0, None) for p in paths], outs)
    for out in outs.values():
        with fits.open(out) as hdul:
            assert "HIERARCH ASTROMORPH TOY SCORE" in hdul[0].header
    said = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in said] == [
        f"results written to the header of {out} (the new file is in place), then an "
        "unexpected error: RuntimeError: a surprise" for out in outs.values()]
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in said)
    assert "results written to the headers of 2 file(s)" in caplog.messages


# ----------------------------------------------------------------------------- mutation tests
def test_scored_rows_of_a_batch_with_an_unscored_row_keep_their_own_scores(models, tmp_path):
    """A stamp refused only at preprocessing (a member with no finite pixel) sharing a batch
    with a good one: the good row's score is its own, as scored alone. Scoring the refused
    row's filled input too would shift the batch's outputs onto the wrong rows."""
    bad = triplet(seed=3)
    bad[1] = np.nan
    write_fits(tmp_path / "a_bad.fits", bad)
    write_fits(tmp_path / "b_good.fits", triplet(seed=4))
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path, batch_size=2)
    alone = astromorph.predict_files("real-bogus", tmp_path / "b_good.fits")
    assert table["rb_flags"][0] & Flag.BAD_INPUT and np.ma.is_masked(table["rb_score"][0])
    assert table["rb_score"][1] == pytest.approx(alone["rb_score"][0], rel=1e-6)


def test_template_whose_largest_value_is_zero_is_refused(models, tmp_path):
    """A reference stamp of negative values whose largest is exactly 0 has no positive pixel:
    BAD_INPUT, as an all-negative one (not scored as a template it cannot be)."""
    t = triplet()
    t[1] = -np.abs(t[1]) - 1
    t[1, 0, 0] = 0.0
    write_fits(tmp_path / "zero_max.fits", t)
    r = quiet(astromorph.predict_files, "real-bogus", tmp_path / "zero_max.fits")[0]
    assert r["rb_flags"] == Flag.BAD_INPUT and "no positive pixel (max 0)" in r["reason"]
    assert np.ma.is_masked(r["rb_score"])


def test_unusable_warning_quotes_the_first_unusable_rows_reason(models, tmp_path):
    """The UnusableInputWarning's "first:" is the reason of the first row that was not
    scored, not that of the first row (here flagged BLANK, scored)."""
    blank = triplet(seed=1)
    blank[:, :20] = np.nan
    write_fits(tmp_path / "a.fits", blank)
    (tmp_path / "b.fits").write_bytes(b"not a FITS file")
    with pytest.warns(UnusableInputWarning) as said:
        table = astromorph.predict_files("real-bogus", tmp_path)
    assert table["reason"][0] and not np.ma.is_masked(table["rb_score"][0])
    message = str(next(w.message for w in said if w.category is UnusableInputWarning))
    assert f"(first: {table['reason'][1]})" in message, message


def test_progress_bar_advances_one_step_per_file(models, tmp_path, monkeypatch):
    """The progress bar counts files: one step per file read, multi-stamp files included,
    up to its total."""
    import contextlib

    from astromorph import _predict

    steps, totals = [], []

    class Bar:
        def update(self, n):
            steps.append(n)

    @contextlib.contextmanager
    def bar(total, **kwargs):
        totals.append(total)
        yield Bar()

    monkeypatch.setattr(_predict, "progress_bar", bar)
    for i in range(3):
        write_fits(tmp_path / f"t{i}.fits", triplet(seed=i))
    write_fits(tmp_path / "t3.fits", np.stack([triplet(seed=5)] * 2))  # two stamps
    table = quiet(astromorph.predict_files, "real-bogus", tmp_path, progress=False)
    assert len(table) == 5 and totals == [4] and steps == [1, 1, 1, 1]

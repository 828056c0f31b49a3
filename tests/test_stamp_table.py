"""`annotate_stamps`: tables whose rows hold their own stamps (array columns, cubes, FITS bytes).

Scores must equal those of the array path (`preprocess_triplet` + `Model.predict`); bad
cells give flagged rows with masked outputs and a reason, never an exception for the batch.
"""
import gzip
import io
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Column, MaskedColumn, QTable, Table

import astromorph
from astromorph import Flag
from astromorph._adapters import RawStamps, prepare
from astromorph.exceptions import InputError, InvalidArgumentError, UnusableInputWarning
from astromorph.preprocessing import preprocess_triplet

from conftest import assert_same_values, assert_scores


def _triplets(n, size=63, seed=0):
    """Sky + a star in science and reference, a point source in the difference."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size // 2
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.1**2))
    x = rng.normal(0, 5, (n, 3, size, size)).astype(np.float32)
    x[:, :2] += 100
    amp = rng.uniform(20, 400, n)[:, None, None]
    x[:, 0] += amp * psf
    x[:, 2] += amp * psf
    return x


@pytest.fixture(scope="module")
def rb():
    return astromorph.load_model("real-bogus")


def _direct(model, x):
    return np.asarray(model.predict(preprocess_triplet(x)[0])["rb_score"])


def _cells(images):
    """An object column: one array (or bytes, or None) per row."""
    out = np.empty(len(images), dtype=object)
    for i, im in enumerate(images):
        out[i] = im
    return out


def _fits_bytes(image, *, gz=True, cdelt_deg=None):
    hdu = fits.PrimaryHDU(np.asarray(image, np.float32))
    if cdelt_deg is not None:
        hdu.header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=1, CRPIX2=1, CRVAL1=10.0,
                          CRVAL2=20.0, CDELT1=-cdelt_deg, CDELT2=cdelt_deg)
    buf = io.BytesIO()
    hdu.writeto(buf)
    return gzip.compress(buf.getvalue()) if gz else buf.getvalue()


def test_array_columns_and_cube_column_score_like_the_array_path(rb):
    x = _triplets(9)
    t = Table({"id": np.arange(9), "science": x[:, 0], "reference": x[:, 1],
               "difference": x[:, 2]})
    before = t.copy()
    out = astromorph.annotate_stamps(t, model=rb)
    assert_scores(out["rb_score"], _direct(rb, x), rtol=0, atol=1e-6)
    assert not out["rb_flags"].any() and not any(out["rb_reason"])
    assert out.meta["astromorph_model"] == "real-bogus"
    assert out.meta["astromorph_stamp_columns"] == "science,reference,difference"
    assert t.colnames == before.colnames and np.array_equal(t["science"], before["science"])
    cube = astromorph.annotate_stamps(Table({"stamps": x}), model=rb)
    assert_scores(cube["rb_score"], out["rb_score"], rtol=0)
    named = astromorph.annotate_stamps(Table({"s": x[:, 0], "r": x[:, 1], "d": x[:, 2]}),
                                       model=rb, columns=("s", "r", "d"))
    assert_scores(named["rb_score"], out["rb_score"], rtol=0)


def test_gzipped_fits_bytes_as_in_alert_packets(rb):
    x = _triplets(4, seed=1)
    cols = {k: _cells([_fits_bytes(im, gz=j != 1) for im in x[:, j]])
            for j, k in enumerate(("cutoutScience", "cutoutTemplate", "cutoutDifference"))}
    cols["cutoutScience"][3] = {"stampData": cols["cutoutScience"][3]}  # as Avro readers give it
    out = astromorph.annotate_stamps(Table(cols), model=rb)
    assert_scores(out["rb_score"], _direct(rb, x), rtol=0, atol=1e-6)
    # Table(rows=...) stores bytes in a fixed-width column, whose elements lose their
    # trailing NUL bytes (gzip's size field ends in them) and come back as str
    rows = [{k: _fits_bytes(im) for k, im in zip(("science", "reference", "difference"), trip)}
            for trip in x]
    fixed = Table(rows=rows)
    assert fixed["science"].dtype.kind == "S" and rows[0]["science"].endswith(b"\0")
    out = astromorph.annotate_stamps(fixed, model=rb)
    assert not out["rb_flags"].any(), list(out["rb_reason"])
    assert_scores(out["rb_score"], _direct(rb, x), rtol=0, atol=1e-6)


def test_copy_false_shares_the_stamp_columns_and_leaves_the_input_alone(rb):
    """copy=False: the result's stamp columns share the input's memory (no second copy of
    what is most of a stamp table's memory); the input keeps its columns and meta; the
    scores equal those of the default copy."""
    x = _triplets(5)
    t = Table({"id": np.arange(5), "stamps": x}, meta={"survey": "ZTF"})
    copied = astromorph.annotate_stamps(t, model=rb)
    shared = astromorph.annotate_stamps(t, model=rb, copy=False)
    assert_scores(shared["rb_score"], copied["rb_score"], rtol=0)
    assert np.shares_memory(shared["stamps"], t["stamps"])
    assert not np.shares_memory(copied["stamps"], t["stamps"])
    assert t.colnames == ["id", "stamps"] and dict(t.meta) == {"survey": "ZTF"}
    assert shared.meta["astromorph_model"] == "real-bogus"
    with pytest.raises(InvalidArgumentError, match="copy"):
        astromorph.annotate_stamps(t, model=rb, copy="no")


def test_bad_rows_are_flagged_never_fatal(rb):
    x = _triplets(7, seed=2)
    sci, ref, diff = (_cells(list(x[:, j])) for j in range(3))
    sci[1] = None                                   # missing stamp
    ref[2] = b"\x1f\x8b" + b"\0" * 40               # corrupt gzip
    diff[3] = x[3, 2, :40, :40]                     # wrong shape
    ref[4] = -np.abs(x[4, 1]) - 1                   # no positive template pixel
    sci[5] = x[5, 0].copy()
    sci[5][:30] = np.nan                            # half NaN: flagged, still scored
    t = Table({"science": sci, "reference": ref, "difference": diff})
    with pytest.warns(UnusableInputWarning, match="4 of 7 row") as rec:
        out = astromorph.annotate_stamps(t, model=rb)
    # the summary points at the caller's line, not into astromorph
    assert {w.filename for w in rec if w.category is UnusableInputWarning} == {__file__}
    flags = np.asarray(out["rb_flags"])
    assert flags[1] & Flag.MISSING_BAND and "science" in out["rb_reason"][1]
    assert flags[2] & Flag.BAD_INPUT and "gzip" in out["rb_reason"][2]
    assert flags[3] & Flag.BAD_INPUT and "differ in shape" in out["rb_reason"][3]
    assert flags[4] & Flag.BAD_INPUT and "template" in out["rb_reason"][4]
    assert list(out["rb_score"].mask) == [False, True, True, True, True, False, False]
    assert flags[5] == Flag.BLANK and "NaN" in out["rb_reason"][5]
    good = [0, 6]
    np.testing.assert_allclose(np.asarray(out["rb_score"])[good], _direct(rb, x[good]),
                               rtol=0, atol=1e-6)


def test_a_masked_object_cell_is_a_missing_stamp(rb):
    """A masked cell of an object column (a row without a stamp, as a join leaves it) is a
    missing stamp, flagged MISSING_BAND as an empty cell or a masked cell of FITS bytes are;
    a masked cell holding an array was read as an all-NaN stamp (BLANK | BAD_INPUT,
    'science stamp has no finite pixel')."""
    x = _triplets(4, seed=3)
    bytes_cells = _cells([_fits_bytes(im) for im in x[:, 0]])
    empty = _cells(list(x[:, 0]))
    empty[1] = None
    expected = None
    for sci in (MaskedColumn(_cells(list(x[:, 0])), mask=[False, True, False, False]),
                MaskedColumn(bytes_cells, mask=[False, True, False, False]), empty):
        t = Table({"science": sci, "reference": x[:, 1], "difference": x[:, 2]})
        with pytest.warns(UnusableInputWarning, match="1 of 4 row"):
            out = astromorph.annotate_stamps(t, model=rb)
        assert list(out["rb_flags"]) == [0, Flag.MISSING_BAND, 0, 0]
        assert out["rb_reason"][1] == "no stamp in science"
        assert list(out["rb_score"].mask) == [False, True, False, False]
        expected = out["rb_score"] if expected is None else expected
        assert_scores(out["rb_score"], expected, rtol=0, atol=1e-6, masked=[1])


def test_fits_cell_with_a_malformed_header_flags_its_row(rb):
    """A FITS cell whose NAXIS1 is text used to stop the whole table with astropy's
    TypeError ("unsupported operand type(s) for +: 'int' and 'str'"): its row is flagged
    and says which keyword is wrong, the other rows are scored."""
    x = _triplets(2, seed=4)
    bad = _fits_bytes(x[0, 0], gz=False)
    at = bad.index(b"NAXIS1  =")
    bad = bad[:at] + b"NAXIS1  = 'abc'".ljust(80) + bad[at + 80:]
    sci = _cells([gzip.compress(bad), _fits_bytes(x[1, 0])])
    ref, diff = (_cells([_fits_bytes(x[i, j]) for i in range(2)]) for j in (1, 2))
    with pytest.warns(UnusableInputWarning, match="1 of 2 row"):
        out = astromorph.annotate_stamps(
            Table({"science": sci, "reference": ref, "difference": diff}), model=rb)
    assert out["rb_flags"][0] == Flag.BAD_INPUT and out["rb_score"].mask[0]
    # the file's reason (the header is checked before astropy sees it), after the column name
    assert out["rb_reason"][0] == ("science: malformed FITS header in HDU 0 (primary): "
                                   "NAXIS1 = 'abc' is not a whole number")
    assert out["rb_flags"][1] == 0 and not out["rb_score"].mask[1]


def test_masked_multidimensional_column_counts_as_nan(rb):
    x = _triplets(3, seed=3)
    mask = np.zeros(x[:, 0].shape, bool)
    mask[1, :, :25] = True
    t = Table({"science": MaskedColumn(x[:, 0], mask=mask), "reference": x[:, 1],
               "difference": x[:, 2]})
    out = astromorph.annotate_stamps(t, model=rb)
    y = x.copy()
    y[1, 0, :, :25] = np.nan
    assert_scores(out["rb_score"], _direct(rb, y), rtol=0, atol=1e-6)
    assert out["rb_flags"][1] & Flag.BLANK and not out["rb_flags"][0]


def test_negative_rows_are_negated(rb):
    x = _triplets(4, seed=4)
    flipped = x.copy()
    flipped[[1, 3], 2] *= -1
    t = Table({"triplet": flipped, "isNegative": [False, True, False, True]})
    out = astromorph.annotate_stamps(t, model=rb, negative="isNegative")
    assert_scores(out["rb_score"], _direct(rb, x), rtol=0, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="boolean"):
        astromorph.annotate_stamps(Table({"triplet": x, "f": ["t", "f", "t", "f"]}), model=rb,
                                   negative="f")


def test_pixel_scale_resamples_and_flags(rb):
    x = _triplets(2, size=127, seed=5)
    t = QTable({"triplet": x, "scale": [0.5, 0.5] * u.arcsec})
    with_scale = astromorph.annotate_stamps(t, model=rb, pixel_scale="scale")
    raw = RawStamps("triplet", x, pixel_scale=0.5)
    expected = np.asarray(rb.predict(prepare(rb, raw)[0])["rb_score"])
    assert_scores(with_scale["rb_score"], expected, rtol=0, atol=1e-6)
    assert not with_scale["rb_flags"].any()
    same = astromorph.annotate_stamps(t, model=rb, pixel_scale=0.5 * u.arcsec / u.pixel)
    assert_scores(same["rb_score"], with_scale["rb_score"], rtol=0)
    # FITS bytes carry their own scale (WCS); without any scale the grid is assumed and flagged
    wcs_cols = {k: _cells([_fits_bytes(im, cdelt_deg=0.5 / 3600) for im in x[:, j]])
                for j, k in enumerate(("science", "reference", "difference"))}
    from_wcs = astromorph.annotate_stamps(Table(wcs_cols), model=rb)
    assert_scores(from_wcs["rb_score"], expected, rtol=0, atol=1e-5)
    assumed = astromorph.annotate_stamps(Table({"triplet": x}), model=rb)
    assert (np.asarray(assumed["rb_flags"]) & Flag.NO_WCS).all()
    # pixels more than twice as coarse as the model's 1"/px grid are upsampled: flagged,
    # even where the stamp covers the model's field
    coarse = astromorph.annotate_stamps(QTable({"triplet": _triplets(2, size=31, seed=6)}),
                                        model=rb, pixel_scale=3 * u.arcsec)
    assert (np.asarray(coarse["rb_flags"]) == Flag.EXTRAPOLATED).all()
    fine = astromorph.annotate_stamps(QTable({"triplet": _triplets(2, size=35, seed=6)}),
                                      model=rb, pixel_scale=1.9 * u.arcsec)
    assert (np.asarray(fine["rb_flags"]) == 0).all()  # 35 x 1.9" covers 63", 1.9 <= 2x


@pytest.mark.parametrize("layout", ["array", "object"])
def test_masked_pixel_scale_counts_as_unknown(rb, layout):
    """A masked value of a ``pixel_scale`` column means no scale, as NaN does (the stamp is
    assumed to be on the model's grid and flagged NO_WCS); the value under the mask was used
    as the row's scale, here resampling the stamp from 2.5"/px without a word."""
    from astropy.utils.masked import Masked

    x = _triplets(3, size=65, seed=3)
    stamps = x if layout == "array" else _cells(list(x))
    nan = astromorph.annotate_stamps(Table({"triplet": stamps, "scale": [1.0, np.nan, 1.0]}),
                                     model=rb, pixel_scale="scale")
    assert list(nan["rb_flags"]) == [0, Flag.NO_WCS, 0]
    for scale in (MaskedColumn([1.0, 2.5, 1.0], mask=[False, True, False]),
                  MaskedColumn([1.0, 2.5, 1.0], mask=[False, True, False], unit="arcsec"),
                  Masked([1.0, 2.5, 1.0] * u.arcsec, mask=[False, True, False])):
        t = QTable({"triplet": stamps, "scale": scale})
        out = astromorph.annotate_stamps(t, model=rb, pixel_scale="scale")
        assert list(out["rb_flags"]) == list(nan["rb_flags"]), type(scale)
        assert list(out["rb_reason"]) == list(nan["rb_reason"])
        assert_scores(out["rb_score"], nan["rb_score"], rtol=0)
        out = astromorph.annotate_stamps(Table({"triplet": stamps}), model=rb,
                                         pixel_scale=scale)
        assert list(out["rb_flags"]) == list(nan["rb_flags"]), type(scale)


@pytest.mark.parametrize("layout", ["array", "object"])
def test_an_infinite_pixel_scale_flags_its_row(rb, layout):
    """A per-row pixel scale of inf is nonsense, as 0 or -1 are: the row is flagged
    BAD_INPUT, not taken for a row without a scale and scored on an assumed grid (a scalar
    inf is refused)."""
    x = _triplets(3, seed=3)
    stamps = x if layout == "array" else _cells(list(x))
    with pytest.warns(UnusableInputWarning):
        out = astromorph.annotate_stamps(Table({"triplet": stamps}), model=rb,
                                         pixel_scale=[1.0, np.inf, -1.0])
    assert list(out["rb_flags"]) == [0, Flag.BAD_INPUT, Flag.BAD_INPUT]
    assert "got inf" in out["rb_reason"][1]
    assert list(out["rb_score"].mask) == [False, True, True]
    with pytest.raises(InvalidArgumentError, match="inf"):
        astromorph.annotate_stamps(Table({"triplet": stamps}), model=rb, pixel_scale=np.inf)


def test_optical_model_takes_colour_and_band_columns():
    model = astromorph.load_model("morphology")
    rng = np.random.default_rng(6)
    colour = rng.integers(0, 255, (3, 80, 80, 3), dtype=np.uint8)
    out = astromorph.annotate_stamps(Table({"cutout": colour}), model=model)
    x, _ = prepare(model, RawStamps("colour", colour))
    assert_scores(out["morph_p_spiral"],
                  model.predict(x)["probabilities"][:, model.labels.index("spiral")],
                  rtol=0, atol=1e-6)
    bands = rng.normal(10, 2, (2, 3, 64, 64)).astype(np.float32)
    out = astromorph.annotate_stamps(Table({"g": bands[:, 0], "r": bands[:, 1],
                                            "i": bands[:, 2]}), model=model)
    x, _ = prepare(model, RawStamps("bands", bands, bands=("g", "r", "i")))
    assert_scores(out["morph_p_spiral"],
                  model.predict(x)["probabilities"][:, model.labels.index("spiral")],
                  rtol=0, atol=1e-6)


def test_misuse_raises_typed_errors(rb):
    x = _triplets(2)
    t = Table({"triplet": x})
    with pytest.raises(InputError, match="Table"):
        astromorph.annotate_stamps(x, model=rb)
    with pytest.warns(UnusableInputWarning, match="text"):
        text = astromorph.annotate_stamps(Table({"triplet": ["abc", "def"]}), model=rb)
    assert (np.asarray(text["rb_flags"]) == Flag.BAD_INPUT).all()
    with pytest.raises(InputError, match="no stamp columns"):
        astromorph.annotate_stamps(Table({"a": x}), model=rb)
    with pytest.raises(InputError, match=r"\['nope'\]"):
        astromorph.annotate_stamps(t, model=rb, columns="nope")
    with pytest.raises(InvalidArgumentError, match="columns must be a column name"):
        astromorph.annotate_stamps(t, model=rb, columns=5)  # was TypeError: not iterable
    with pytest.raises(InvalidArgumentError, match="threads must be a whole number"):
        astromorph.annotate_stamps(t, model="real-bogus", threads="x")  # was ValueError
    with pytest.raises(InvalidArgumentError, match="1 or 3 column"):
        astromorph.annotate_stamps(Table({"a": x[:, 0], "b": x[:, 1]}), model=rb,
                                   columns=["a", "b"])
    # the radio model scores one image a row: three columns are refused, not each row flagged
    with pytest.raises(InvalidArgumentError, match=r"radio model takes its stamps from 1 "):
        astromorph.annotate_stamps(Table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}),
                                   model="radio-morphology", columns=["a", "b", "c"])
    # one plane named three times is no triplet nor a g, r, i set (was scored as one)
    with pytest.raises(InvalidArgumentError, match="more than once"):
        astromorph.annotate_stamps(Table({"a": x[:, 0]}), model=rb, columns=["a"] * 3)
    with pytest.raises(InvalidArgumentError, match="more than once"):
        astromorph.annotate_stamps(Table({"image": x[:, 0]}), model="morphology",
                                   columns=["image", "image", "image"])
    with pytest.raises(InvalidArgumentError, match="negative"):
        astromorph.annotate_stamps(Table({"stamp": x[:, 0]}), model="morphology",
                                   negative=[True, False])
    with pytest.raises(InvalidArgumentError, match="2 rows"):
        astromorph.annotate_stamps(t, model=rb, pixel_scale=[1.0, 1.0, 1.0])
    out = astromorph.annotate_stamps(t, model=rb)
    with pytest.raises(InputError, match="rb_score"):
        astromorph.annotate_stamps(out, model=rb)
    scored = []
    predict = type(rb).predict
    with pytest.MonkeyPatch.context() as mp:  # refused before any stamp is scored
        mp.setattr(type(rb), "predict", lambda *a, **k: scored.append(1) or predict(*a, **k))
        with pytest.raises(InputError, match="rb_reason"):
            astromorph.annotate_stamps(Table({"triplet": x, "rb_reason": ["", ""]}), model=rb)
    assert not scored
    again = astromorph.annotate_stamps(out, model=rb, on_conflict="suffix")
    assert_scores(again["rb_score_2"], out["rb_score"], rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean table warns nothing
        astromorph.annotate_stamps(t, model=rb)


def test_cli_annotate_without_images_scores_the_rows_stamps(rb, tmp_path, capsys):
    from astromorph import cli

    x = _triplets(3, seed=7)
    Table({"candid": [11, 12, 13], "science": x[:, 0], "reference": x[:, 1],
           "difference": x[:, 2]}).write(tmp_path / "cands.fits")
    assert cli.main(["annotate", str(tmp_path / "cands.fits"), "-m", "real-bogus",
                     "-o", str(tmp_path / "scored.fits"), "--no-progress"]) == 0
    scored = Table.read(tmp_path / "scored.fits")
    np.testing.assert_allclose(scored["rb_score"], _direct(rb, x), rtol=0, atol=1e-6)
    assert list(scored["candid"]) == [11, 12, 13]
    assert cli.main(["annotate", str(tmp_path / "cands.fits"), "-m", "real-bogus",
                     "--stamp-col", "science", "--stamp-col", "reference", "--stamp-col",
                     "difference", "--pixel-scale", "1.0", "--no-progress"]) == 0
    assert "rb_score" in capsys.readouterr().out
    rc = cli.main(["annotate", str(tmp_path / "cands.fits"), "-m", "real-bogus", "-i",
                   str(tmp_path / "cands.fits"), "--stamp-col", "science"])
    assert rc != 0 and "--stamp-col" in capsys.readouterr().err




def test_cli_annotate_prints_the_table_without_its_stamps(rb, tmp_path, capsys, monkeypatch):
    """Without -o, `astromorph annotate TABLE -m real-bogus` printed every column, the
    stamps too: for cells of gzipped FITS bytes (a Parquet file of alerts) a screenful of
    binary garbage per row. The stamp columns are now left out of the printed table (a
    status line names them); they are kept in a written one."""
    x = _triplets(2, seed=11)
    cells = {k: [_fits_bytes(x[i, j], gz=True) for i in range(2)]
             for j, k in enumerate(("science", "reference", "difference"))}
    table = Table({"candid": [31, 32], **{k: Column(v, dtype=object) for k, v in cells.items()}})
    from astromorph import _cli_annotate, cli

    # (as read from a Parquet file of alerts; read here without pyarrow)
    monkeypatch.setattr(_cli_annotate, "_read_catalogue", lambda path: table)
    assert cli.main(["annotate", str(tmp_path / "cands.ecsv"), "-m", "real-bogus",
                     "--no-progress"]) == 0
    out, err = capsys.readouterr()
    header = out.splitlines()[0].split()
    assert header == ["candid", "rb_score", "rb_flags", "rb_reason"], out[:300]
    assert "science, reference, difference" in err


def test_cli_annotate_reads_back_its_own_ecsv_of_stamps(rb, tmp_path, capsys):
    """An ECSV table whose rows hold (3, 63, 63) triplets, as ``astromorph annotate -o
    x.ecsv`` writes it, has cells longer than the 131072 characters Python's csv reader takes
    by default: reading it back as a catalogue crashed with ``_csv.Error: field larger than
    field limit``; it is now read (and the process-wide csv limit left as it was)."""
    import csv

    from astromorph import cli

    x = _triplets(2, seed=9)
    Table({"candid": [21, 22], "triplet": x}).write(tmp_path / "cands.ecsv")
    limit = csv.field_size_limit()
    assert cli.main(["annotate", str(tmp_path / "cands.ecsv"), "-m", "real-bogus",
                     "-o", str(tmp_path / "scored.fits"), "--no-progress"]) == 0
    assert csv.field_size_limit() == limit
    scored = Table.read(tmp_path / "scored.fits")
    np.testing.assert_allclose(scored["rb_score"], _direct(rb, x), rtol=0, atol=1e-6)


def test_dask_partitions_of_a_stamp_table(rb):
    pytest.importorskip("dask")
    x = _triplets(7, seed=8)
    t = Table({"id": np.arange(7), "triplet": x})
    out = astromorph.annotate_dask(t, model="real-bogus", partition_size=3, scheduler="threads")
    assert list(out["id"]) == list(range(7))
    assert_scores(out["rb_score"], _direct(rb, x), rtol=0, atol=1e-6)



def test_dask_says_once_how_many_rows_of_the_table_could_not_be_scored(rb):
    """Rows that cannot be scored in two partitions: one warning, annotate_stamps's, with
    the whole table's counts (each partition gave its own, "1 of 3 row(s)", "2 of 3
    row(s)", distinct messages that were all given)."""
    pytest.importorskip("dask")
    x = _triplets(7, seed=8)
    x[[1, 4, 5]] = np.nan
    t = Table({"id": np.arange(7), "triplet": x})
    with pytest.warns(UnusableInputWarning) as ref:
        astromorph.annotate_stamps(t, model=rb)
    for scheduler in ("synchronous", "processes"):
        with pytest.warns(UnusableInputWarning) as out:
            astromorph.annotate_dask(t, model="real-bogus", partition_size=3,
                                     scheduler=scheduler)
        assert [str(w.message) for w in out] == [str(w.message) for w in ref]
        assert str(out[0].message).startswith("3 of 7 row(s) could not be scored")
        assert out[0].filename == __file__

def test_dask_slices_per_row_options_to_each_partition(rb):
    """``negative=`` and ``pixel_scale=`` given as one value per row of the whole table:
    each partition gets its rows' values (every partition refused them, as having the
    whole table's length), and the scores equal `annotate_stamps`'s."""
    pytest.importorskip("dask")
    x = _triplets(7, seed=8)
    neg = np.array([0, 1, 0, 0, 1, 0, 0], bool)
    x[neg, 2] *= -1
    scale = np.array([1.0, 1.0, np.nan, 1.2, 1.0, 0.9, 1.0]) * u.arcsec
    t = Table({"id": np.arange(7), "triplet": x})
    before = t.copy()
    ref = astromorph.annotate_stamps(t, model=rb, negative=neg, pixel_scale=scale)
    out = astromorph.annotate_dask(t, model="real-bogus", partition_size=3,
                                   scheduler="synchronous", negative=list(neg),
                                   pixel_scale=scale)
    assert_scores(out["rb_score"], ref["rb_score"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["rb_flags"], ref["rb_flags"])
    assert list(out["rb_reason"]) == list(ref["rb_reason"])
    assert np.array_equal(t["triplet"], before["triplet"])
    # the whole table's length, or it is refused before any task, naming both
    for compute in (True, False):
        with pytest.raises(InvalidArgumentError, match=r"negative has \(6,\) values for a "
                                                       r"table of 7 rows"):
            astromorph.annotate_dask(t, model="real-bogus", partition_size=3,
                                     negative=neg[:6], compute=compute)


def test_array_columns_take_the_stacked_path_with_per_row_results(rb, monkeypatch):
    """Numeric array columns are stacked many rows at a time (no `Stamp` per row); scores,
    flags and reasons equal those of the per-row path, on masked values, NaN, ZTF's
    -3.4e38 sentinels, unusable templates, all-NaN and constant planes, negated rows and
    pixel scales that split the rows into groups, with batches straddling the blocks."""
    from astromorph import _stamp_table

    n = 40
    x = _triplets(n, seed=9)
    mask = np.zeros(x[:, 0].shape, bool)
    mask[3, :20] = True                    # masked -> NaN, flagged BLANK
    mask[4] = True                         # all masked: no stamp (MISSING_BAND)
    x[4, 1] = -np.abs(x[4, 1]) - 1         # its template not checked: no stamp to score
    x[5, 0, :5] = np.nan
    x[6, 2, 10:20] = -3.4e38               # masking sentinels
    x[7, 1] = -np.abs(x[7, 1]) - 1         # no positive template pixel
    x[8, 1] = -np.abs(x[8, 1]) - 1
    x[8, 1, 0, 0] = 1e30                   # a sentinel is no positive pixel
    x[9, 1] = 0.0                          # all-zero template: constant, not "no positive"
    x[9, 1, :3] = -3.4e38
    x[10, 0] = 7.0                         # constant plane
    x[11, 2] = np.nan                      # all-NaN difference
    x[13, 1] = -np.abs(x[13, 1]) - 1       # no positive template pixel: its largest is 0
    x[13, 1, 5, 5] = 0.0
    negative = np.zeros(n, bool)
    negative[[2, 7, 12, 30]] = True
    x[negative, 2] *= -1
    scale = np.full(n, 1.0)
    scale[20:25] = np.nan                  # no scale: assumed grid (63x63: no flag)
    scale[25:28] = 1.2
    tables = {
        "columns": Table({"science": MaskedColumn(x[:, 0], mask=mask), "reference": x[:, 1],
                          "difference": x[:, 2], "neg": negative, "scale": scale}),
        "cube": Table({"triplet": MaskedColumn(x, mask=np.stack([mask] * 3, axis=1)),
                       "neg": negative, "scale": scale}),
        # not the model's grid: resampled by the row's scale, NO_WCS where it has none
        "resampled": Table({"triplet": _triplets(n, size=65, seed=11), "neg": negative,
                            "scale": scale}),
    }
    calls = []
    real = _stamp_table._array_blocks
    monkeypatch.setattr(_stamp_table, "_BLOCK_ROWS", 7)

    def annotate(table, stacked, **kw):
        monkeypatch.setattr(_stamp_table, "_array_blocks",
                            lambda *a: calls.append(real(*a)) or calls[-1] if stacked else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusableInputWarning)
            return astromorph.annotate_stamps(table, model=rb, batch_size=6, **kw)

    for name, table in tables.items():
        for kw in ({"negative": "neg"}, {"negative": "neg", "pixel_scale": "scale"}, {}):
            before = table.copy()
            fast, slow = annotate(table, True, **kw), annotate(table, False, **kw)
            assert calls[-1] is not None and fast.meta == slow.meta  # it was stacked
            _assert_same_outputs(fast, slow, ("rb_score", "rb_flags", "rb_reason"),
                                 err_msg=f"{name} {kw}")
            for c in table.colnames:  # the input is not modified (negated rows included)
                np.testing.assert_array_equal(table[c], before[c])
        flags = np.asarray(fast["rb_flags"])
        if name == "resampled":
            assert (flags == Flag.NO_WCS).all()
            continue
        assert flags[3] == Flag.BLANK and flags[7] == flags[8] == flags[13] == Flag.BAD_INPUT
        assert flags[9] & Flag.CONSTANT and flags[4] == Flag.MISSING_BAND
        assert not flags[[0, 1, 2, 12, 30]].any()
    # g, r, i columns of an optical model, one of them masked
    model = astromorph.load_model("morphology")
    bands = np.random.default_rng(10).normal(10, 2, (9, 3, 64, 64)).astype(np.float32)
    bands[2, 1, :8] = -3.4e38
    t = Table({"g": bands[:, 0], "r": MaskedColumn(bands[:, 1], mask=bands[:, 1] > 13),
               "i": bands[:, 2]})
    outs = []
    for stacked in (True, False):
        monkeypatch.setattr(_stamp_table, "_array_blocks",
                            lambda *a, s=stacked: real(*a) if s else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusableInputWarning)
            outs.append(astromorph.annotate_stamps(t, model=model, batch_size=4))
    _assert_same_outputs(outs[0], outs[1], outs[1].colnames)
    # a masked 8-bit colour picture column (rows with and without masked pixels in a block),
    # and a masked 8-bit grey radio image column: both paths alike
    for name, t in (("morphology", Table({"stamp": _masked_colour(9)})),
                    ("radio-morphology", Table({"image": _masked_grey(6, blank=4)}))):
        outs = []
        for stacked in (True, False):
            monkeypatch.setattr(_stamp_table, "_array_blocks",
                                lambda *a, s=stacked: calls.append(real(*a)) or calls[-1]
                                if s else None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnusableInputWarning)
                outs.append(astromorph.annotate_stamps(t, model=name, batch_size=2))
            if stacked:
                assert calls[-1] is not None
        _assert_same_outputs(outs[0], outs[1], outs[1].colnames, err_msg=name)


def _assert_same_outputs(out, ref, names, *, err_msg=""):
    """The columns ``names`` of ``out`` hold ``ref``'s values bit for bit; the float outputs
    of the model (``<prefix>_...``) are masked in the rows that ``ref``'s flags call
    unusable (`Flag.unusable`) and in no other, in both tables."""
    flags = [c for c in ref.colnames if c.endswith("_flags")]
    assert len(flags) == 1, ref.colnames
    prefix = flags[0][:-len("flags")]
    unread = (np.asarray(ref[flags[0]]) & int(Flag.unusable())) != 0
    for name in names:
        if name.startswith(prefix) and ref[name].dtype.kind == "f":
            assert_scores(out[name], ref[name], rtol=0, masked=unread, err_msg=f"{err_msg} {name}")
        assert_same_values(out, ref, [name])


def _masked_colour(n, seed=12):
    """A MaskedColumn of ``n`` 8-bit (64, 64, 3) colour pictures: row 2 with a masked edge
    (a few per cent of its pixels), row 3 with a masked centre (over 5%: BLANK), row 6 all
    masked (no stamp), the others without a masked pixel."""
    x = np.random.default_rng(seed).integers(0, 255, (n, 64, 64, 3)).astype(np.uint8)
    mask = np.zeros(x.shape, bool)
    mask[2, :2] = True
    mask[3, 24:40, 24:40] = True
    mask[6] = True
    return MaskedColumn(x, mask=mask)


def _masked_grey(n, seed=13, blank=None):
    """A MaskedColumn of ``n`` 8-bit data-set style radio images, row 2 partly masked (3%
    of its pixels), row ``blank`` too, more (20%: BLANK)."""
    yy, xx = np.mgrid[:150, :150] - 75
    x = np.round(200 * np.exp(-(xx**2 / 60 + yy**2 / 20)))
    x = (x + np.random.default_rng(seed).integers(0, 3, (n, 150, 150))).astype(np.uint8)
    mask = np.zeros(x.shape, bool)
    mask[2, :5] = True
    if blank is not None:
        mask[blank, 60:90] = True
    return MaskedColumn(x, mask=mask)


@pytest.mark.parametrize("layout", ["array", "object"])
def test_a_masked_colour_picture_column_keeps_its_clean_rows(layout, monkeypatch):
    """A masked 8-bit colour picture column: one masked pixel in a block of rows made the
    whole block unscaled float (every row BAD_INPUT, 'the largest is 254'), and a masked
    cell of an object column was read as a 64-plane image (BAD_INPUT). The cells stay
    colour pictures: rows without a masked pixel get, bit for bit, the results of an
    unmasked column; masked pixels are missing ones, like NaN: filled, counted in BLANK."""
    from astromorph import _stamp_table

    monkeypatch.setattr(_stamp_table, "_BLOCK_ROWS", 4)  # blocks of clean and masked rows
    col = _masked_colour(9)
    cells = col if layout == "array" else Column(_cells([col[i] for i in range(len(col))]))
    with pytest.warns(UnusableInputWarning, match="1 of 9 row"):
        out = astromorph.annotate_stamps(Table({"stamp": cells}), model="morphology",
                                         batch_size=2)
    ref = astromorph.annotate_stamps(Table({"stamp": np.ma.getdata(col)}), model="morphology",
                                     batch_size=2)
    clean = [0, 1, 4, 5, 7, 8]
    for c in ref.colnames[1:]:
        assert_scores(out[c][clean], ref[c][clean], err_msg=c, rtol=0)
    base = int(ref["morph_flags"][0])  # 64 px cutouts at crop 0.35: EXTRAPOLATED
    assert list(out["morph_flags"][[2, 3, 6]]) == [base, base | Flag.BLANK, Flag.MISSING_BAND]
    assert out["morph_reason"][3].startswith("6% of the pixels are NaN/inf/BLANK (filled)")
    assert out["morph_reason"][6] == "no stamp in stamp"
    assert list(out["morph_p_spiral"].mask) == [i == 6 for i in range(9)]
    # the masked pixels are missing pixels: the row is scored as its picture with them
    # given as NaN display values (filled with the picture's median)
    shown = np.where(col.mask[3], np.nan, col.data[3] / 255.0)
    model = astromorph.load_model("morphology")
    x, flags = prepare(model, RawStamps("colour", shown[None], flags=np.array([0], np.int32)))
    assert flags[0] & Flag.BLANK
    direct = model.predict(x)["probabilities"][0]
    scored = [out[c][3] for c in out.colnames if c.startswith("morph_p_")]
    np.testing.assert_allclose(scored, direct, rtol=0, atol=1e-6)


def test_masked_colour_pictures_become_float32_display_values():
    """Blocks of masked 8-bit colour pictures became float64 display values (plus a float64
    temporary): 16 bytes a pixel, 1.6 GB and more for a block of 1024 pictures of 256 x 256.
    They are float32 now (4 bytes a pixel), with the values the float64 ones had once
    `preprocess_colour_cutout` rounds them to float32, so its outputs are unchanged."""
    import tracemalloc

    from astromorph import _stamp_table
    from astromorph.preprocessing import preprocess_colour_cutout

    col = _masked_colour(16)
    block = col[:16]  # as `_array_blocks` slices it
    expected = np.where(col.mask, np.nan, col.data / 255.0)
    tracemalloc.start()
    try:
        got = _stamp_table._unmasked(block, colour=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.dtype == np.float32
    assert peak < 5 * col.data.size, peak  # float32 values: 4 bytes a pixel
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    for crop in (1.0, 0.35):  # both paths of the preprocessing: the same values, bit for bit
        np.testing.assert_array_equal(preprocess_colour_cutout(block, crop_fraction=crop),
                                      preprocess_colour_cutout(expected, crop_fraction=crop))
    # other integer types are checked for 8-bit values, as before
    with pytest.raises(InputError, match="0-255; got 2 to 300"):
        preprocess_colour_cutout(np.ma.masked_array(np.array([[[0, 300, 2]]] * 2, np.int16),
                                                    mask=[[[True, False, False]]] * 2))


def test_colour_pictures_in_stampdata_dicts_stay_colour_pictures():
    """A ``{"stampData": array}`` cell holding an 8-bit (H, W, 3) picture (masked or not) is
    a colour picture, as the same array in a plain cell: the colour test looked at the dict
    (no shape), so the picture was read as a 64-plane image (BAD_INPUT) in every row."""
    col = _masked_colour(7)
    cells = [col[i] for i in range(len(col))]
    with pytest.warns(UnusableInputWarning, match="1 of 7 row"):  # the fully masked one
        plain = astromorph.annotate_stamps(Table({"stamp": Column(_cells(cells))}),
                                           model="morphology")
        out = astromorph.annotate_stamps(
            Table({"stamp": Column(_cells([{"stampData": c} for c in cells]))}),
            model="morphology")
    assert list(out["morph_flags"] & Flag.BAD_INPUT) == [0] * 7
    _assert_same_outputs(out, plain, plain.colnames[1:])


@pytest.mark.parametrize("layout", ["array", "object", "dict"])
def test_a_masked_grey_radio_column_keeps_its_clean_rows(layout, monkeypatch):
    """A masked 8-bit radio image column: one masked pixel in a block made every row of the
    block float, scored as a FIRST image in Jy/beam rather than on the data-set scale, without
    a flag (FRII became FRI); the rows with masked pixels still were (on both paths). Rows
    without a masked pixel get the unmasked column's results, bit for bit; masked pixels are
    missing ones on the data-set scale: filled with the image's median (to an 8-bit level),
    counted in BLANK. The same in ``{"stampData": array}`` cells (the 8-bit test looked at
    the dict, not the array in it: their masked rows were scored on the FIRST scale)."""
    from astromorph import _stamp_table

    monkeypatch.setattr(_stamp_table, "_BLOCK_ROWS", 4)
    col = _masked_grey(6, blank=4)
    cells = col if layout == "array" else Column(_cells(
        [{"stampData": col[i]} if layout == "dict" else col[i] for i in range(len(col))]))

    def annotate(stamps):
        return astromorph.annotate_stamps(Table({"image": stamps}), model="radio-morphology",
                                          batch_size=2)

    out = annotate(cells)
    ref = annotate(np.ma.getdata(col))
    clean = [0, 1, 3, 5]
    for c in ref.colnames[1:]:
        assert_scores(out[c][clean], ref[c][clean], err_msg=c, rtol=0)
    filled = np.ma.getdata(col).copy()
    for j in (2, 4):
        filled[j][col.mask[j]] = np.round(np.median(filled[j][~col.mask[j]]))
    ref = annotate(filled)
    assert list(out["radio_label"]) == list(ref["radio_label"])
    for c in ref.colnames[1:]:
        if c.startswith("radio_p_"):
            assert_scores(out[c], ref[c], err_msg=c, rtol=0)
    blank = np.array([0, 0, 0, 0, int(Flag.BLANK), 0])
    assert list(out["radio_flags"]) == list(ref["radio_flags"] | blank)
    assert out["radio_reason"][4].startswith("20% of the pixels are NaN/inf/BLANK (filled); ")
    assert out["radio_reason"][2] == ref["radio_reason"][2]
    if layout != "array":
        return
    # as (H, W, 3) grey pictures: the masked pixels are missing ones (filled with the
    # picture's median) on the data-set scale; they were scored as display values 0-1
    # read on the 0-255 scale, a black picture
    col = _masked_grey(6)
    pictures = np.repeat(np.ma.getdata(col)[..., None], 3, axis=-1)
    mask = np.repeat(col.mask[..., None], 3, axis=-1)
    out = annotate(MaskedColumn(pictures, mask=mask))
    filled = pictures.copy()
    filled[mask] = np.median(pictures[2][~mask[2]])
    ref = annotate(filled)
    for c in ref.colnames[1:]:
        if c.startswith("radio_p_"):
            assert_scores(out[c], ref[c], rtol=0, atol=1e-5, err_msg=c)
        else:
            assert_scores(out[c], ref[c], err_msg=c, rtol=0)


@pytest.mark.parametrize("layout", ["array", "planes", "object", "dict"])
@pytest.mark.parametrize("name", ["morphology-gz2", "embedding"])
def test_grey_8bit_pictures_are_display_images_for_the_galaxy_models(name, layout,
                                                                     monkeypatch):
    """An 8-bit grey (H, W) or (1, H, W) cell is a grey picture for the galaxy models, as
    `preprocess_single_band` and `predict_files` (a grey PNG) read it: its display values
    0-255, the cell scored as the colour picture of that grey. It was read as a flux image
    in nanomaggies and sent through the asinh stretch (a near white picture, no flag).
    Masked pixels are missing ones, as in 8-bit colour pictures."""
    from astromorph import _stamp_table
    from astromorph.preprocessing import preprocess_single_band

    monkeypatch.setattr(_stamp_table, "_BLOCK_ROWS", 4)  # blocks of clean and masked rows
    colour = _masked_colour(7)
    grey = MaskedColumn(np.ma.getdata(colour)[..., 0], mask=colour.mask[..., 0])
    model = astromorph.load_model(name)
    key = model.card["outputs"][0]["name"]
    if layout == "planes":
        grey = MaskedColumn(np.ma.getdata(grey)[:, None], mask=grey.mask[:, None])
    cells = grey if layout in ("array", "planes") else Column(_cells(
        [{"stampData": grey[i]} if layout == "dict" else grey[i] for i in range(len(grey))]))

    def scored(out):
        cols = ["embedding"] if key == "embedding" else [
            c for c in out.colnames if c.startswith("gz2_Class")]
        return np.ma.column_stack([out[c] for c in cols])

    with pytest.warns(UnusableInputWarning, match="1 of 7 row"):  # row 6: all masked
        out = astromorph.annotate_stamps(Table({"stamp": cells}), model=model, batch_size=2)
    pictures = np.repeat(np.ma.getdata(colour)[..., :1], 3, axis=-1)
    with pytest.warns(UnusableInputWarning, match="1 of 7 row"):
        ref = astromorph.annotate_stamps(Table({"stamp": MaskedColumn(
            pictures, mask=np.repeat(colour.mask[..., :1], 3, axis=-1))}), model=model,
            batch_size=2)
    _assert_same_outputs(out, ref, ref.colnames[1:])
    clean = [0, 1, 4, 5]  # as the arrays' own preprocessing reads them
    direct = model.predict(preprocess_single_band(np.ma.getdata(grey)[clean].reshape(
        len(clean), 64, 64)))[key]
    np.testing.assert_allclose(np.ma.getdata(scored(out))[clean], direct, rtol=0, atol=1e-5)
    assert list(out[out.colnames[-2]] & Flag.BLANK) == [0, 0, 0, Flag.BLANK, 0, 0, 0]


def test_masks_on_integer_columns_and_boolean_stamps(rb, monkeypatch):
    """Masked pixels of an integer stamp column count as NaN (BLANK), as in float columns,
    on the stacked and the per-row path; a boolean stamp column gives BAD_INPUT rows (it
    crashed the whole call with negative=) instead of being scored as 0/1 pixels."""
    from astropy.table import MaskedColumn

    x = np.round(_triplets(2)).astype(np.int32)
    mask = np.zeros(x.shape, bool)
    mask[0, 0, :30] = True
    t = Table({"triplet": MaskedColumn(x, mask=mask)})
    out = astromorph.annotate_stamps(t, model=rb)
    assert out["rb_flags"][0] & Flag.BLANK and not out["rb_flags"][1] & Flag.BLANK
    from astromorph import _stamp_table

    with monkeypatch.context() as m:  # the per-row path gives the same
        m.setattr(_stamp_table, "_array_blocks", lambda *a: None)
        per_row = astromorph.annotate_stamps(t, model=rb)
    np.testing.assert_array_equal(per_row["rb_flags"], out["rb_flags"])
    assert_scores(per_row["rb_score"], out["rb_score"], rtol=0)
    with pytest.warns(UnusableInputWarning):
        flagged = astromorph.annotate_stamps(Table({"triplet": x > 100, "neg": [True, False]}),
                                             model=rb, negative="neg")
    assert (np.asarray(flagged["rb_flags"]) & Flag.BAD_INPUT).all()
    assert "booleans" in flagged["rb_reason"][0]


def test_crop_fraction_for_stamps_cut_to_the_network_field(monkeypatch, tmp_path):
    """``crop_fraction`` as in `predict_files`: the central fraction of each stamp the galaxy
    models see (stamps already cut to their field need 1.0), on the stacked and the per-row
    paths, recorded in the table's provenance; checked as `predict_files` checks it."""
    from astropy.table import Column

    from astromorph import _stamp_table, cli

    model = astromorph.load_model("morphology")
    stamps = np.random.default_rng(11).normal(10, 2, (5, 80, 80)).astype(np.float32)
    real = _stamp_table._array_blocks
    for crop, flag in ((None, Flag.EXTRAPOLATED), (1.0, 0), (0.6, 0)):
        x, flags = prepare(model, RawStamps("bands", stamps[:, None]), crop_fraction=crop)
        ref = model.predict(x)["probabilities"][:, model.labels.index("spiral")]
        assert (flags == flag).all()
        outs = []
        for stacked in (True, False):
            monkeypatch.setattr(_stamp_table, "_array_blocks",
                                lambda *a, s=stacked: real(*a) if s else None)
            kw = {} if crop is None else {"crop_fraction": crop}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnusableInputWarning)
                out = astromorph.annotate_stamps(Table({"image": stamps}), model=model, **kw)
            assert_scores(out["morph_p_spiral"], ref, rtol=0, atol=1e-6)
            assert (np.asarray(out["morph_flags"]) == flag).all()
            assert out.meta["astromorph_crop_fraction"] == (0.35 if crop is None else crop)
            outs.append(out)
        for col in outs[0].colnames:
            assert_scores(outs[0][col], outs[1][col], err_msg=col, rtol=0)
    monkeypatch.setattr(_stamp_table, "_array_blocks", real)
    # an object column (one array per row) takes the per-row path
    cells = Table({"image": Column(_cells(list(stamps)), dtype=object)})
    out = astromorph.annotate_stamps(cells, model=model, crop_fraction=1.0)
    assert not np.asarray(out["morph_flags"]).any()
    for bad in (1.5, 0, "abc", [0.5], True):
        with pytest.raises(InvalidArgumentError, match="crop_fraction"):
            astromorph.annotate_stamps(Table({"image": stamps}), model=model, crop_fraction=bad)
    # the command line, as for predict
    Table({"image": stamps}).write(tmp_path / "stamps.fits")
    assert cli.main(["annotate", str(tmp_path / "stamps.fits"), "-m", "morphology", "-o",
                     str(tmp_path / "out.ecsv"), "--crop-fraction", "1", "--no-progress"]) == 0
    back = Table.read(tmp_path / "out.ecsv")
    assert back.meta["astromorph_crop_fraction"] == 1.0
    assert not np.asarray(back["morph_flags"]).any()
    assert cli.main(["annotate", str(tmp_path / "stamps.fits"), "-m", "morphology",
                     "--crop-fraction", "1.5", "--no-progress"]) == 2
    # annotate cuts the network's field itself: no crop fraction with --image
    assert cli.main(["annotate", str(tmp_path / "stamps.fits"), "-m", "morphology", "-i",
                     str(tmp_path / "stamps.fits"), "--crop-fraction", "1"]) == 2


def test_dask_refuses_a_crop_fraction_before_any_task(rb):
    # real-bogus cannot honour crop_fraction: refused by annotate_dask itself, even lazily
    pytest.importorskip("dask")
    t = Table({"triplet": _triplets(2)})
    for compute in (True, False):
        with pytest.raises(InvalidArgumentError, match=r"crop_fraction=1\.0.*'real-bogus'"):
            astromorph.annotate_dask(t, model="real-bogus", crop_fraction=1.0, compute=compute,
                                     scheduler="synchronous")


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
@pytest.mark.parametrize("layout", ["array", "object"])
def test_negative_rows_of_integer_stamps_are_negated_without_wrapping(rb, dtype, layout):
    """Negating the difference of integer stamps (uint16 counts, int16 with its -32768)
    wrapped around (-5 became 65531 in uint16) and was scored without a word; the
    difference is negated in float, as it is for float stamps."""
    x = np.clip(np.round(_triplets(4, seed=7)), 0, None)
    x[:, 2, 0, 0] = 32767 if dtype == np.int16 else 65535
    if dtype == np.int16:
        x[:, 2, 0, 1] = -32768
    ints = x.astype(dtype)
    neg = [False, True, False, True]
    cells = ints if layout == "array" else _cells(list(ints))
    out = astromorph.annotate_stamps(Table({"triplet": cells, "neg": neg}), model=rb,
                                     negative="neg")
    ref = astromorph.annotate_stamps(Table({"triplet": ints.astype(np.float32), "neg": neg}),
                                     model=rb, negative="neg")
    assert_scores(out["rb_score"], ref["rb_score"], rtol=0, atol=1e-6)
    assert list(out["rb_flags"]) == list(ref["rb_flags"])


@pytest.mark.parametrize("layout", ["array", "object"])
def test_a_masked_negative_is_read_as_positive_and_said(rb, layout, monkeypatch):
    """A masked ``negative`` value (e.g. ZTF's isdiffpos unknown) was read as False without
    a word: the row is still scored as positive, and its reason says so (one
    AmbiguousInputWarning names the rows), on the stacked and the per-row paths."""
    from astromorph import _stamp_table
    from astromorph.exceptions import AmbiguousInputWarning

    x = _triplets(3, seed=7)
    positive = x.copy()
    x[1, 2] *= -1
    stamps = x if layout == "array" else _cells(list(x))
    neg = MaskedColumn([False, True, False], mask=[False, False, True])
    for blocks in (True, False):
        with monkeypatch.context() as m:
            if not blocks:
                m.setattr(_stamp_table, "_array_blocks", lambda *a: None)
            with pytest.warns(AmbiguousInputWarning, match=r"1 row\(s\) .*negative.*masked"):
                out = astromorph.annotate_stamps(Table({"triplet": stamps, "neg": neg}),
                                                 model=rb, negative="neg")
        assert list(out["rb_flags"]) == [0, 0, 0]
        assert not out["rb_score"].mask.any()  # never lost: scored as a positive candidate
        assert list(out["rb_reason"][:2]) == ["", ""]
        assert out["rb_reason"][2] == ("negative unknown (masked in 'neg'): the difference "
                                       "read as holding a positive candidate")
        assert_scores(out["rb_score"], _direct(rb, positive), rtol=0, atol=1e-6)


@pytest.mark.parametrize("blocks", [True, False])
def test_a_fully_masked_array_cell_is_a_missing_stamp(rb, blocks, monkeypatch):
    """A fully masked cell of a multidimensional MaskedColumn (a row without a stamp) is a
    missing stamp, MISSING_BAND 'no stamp in <column>', as a masked cell of an object column
    is; it was read as an all-NaN stamp (BLANK | BAD_INPUT, 'no finite pixel'). A partly
    masked cell still counts its masked pixels as NaN."""
    from astromorph import _stamp_table

    if not blocks:
        monkeypatch.setattr(_stamp_table, "_array_blocks", lambda *a: None)
    x = _triplets(4, seed=3)
    mask = np.zeros(x[:, 0].shape, bool)
    mask[1] = True
    mask[2, :, :25] = True
    t = Table({"science": MaskedColumn(x[:, 0], mask=mask), "reference": x[:, 1],
               "difference": x[:, 2]})
    with pytest.warns(UnusableInputWarning, match="1 of 4 row"):
        out = astromorph.annotate_stamps(t, model=rb)
    assert list(out["rb_flags"]) == [0, Flag.MISSING_BAND, Flag.BLANK, 0]
    assert out["rb_reason"][1] == "no stamp in science"
    assert list(out["rb_score"].mask) == [False, True, False, False]
    cube = np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    cube.mask[3] = True
    with pytest.warns(UnusableInputWarning, match="1 of 4 row"):
        out = astromorph.annotate_stamps(Table({"triplet": MaskedColumn(cube)}), model=rb)
    assert list(out["rb_flags"]) == [0, 0, 0, Flag.MISSING_BAND]
    assert out["rb_reason"][3] == "no stamp in triplet"


def test_a_difference_negative_at_the_candidate_is_said(rb, tmp_path):
    """Difference stamps given as reference - science (the candidate negative), with no sign
    information: scored as given (flags unchanged), and the reason says that the difference
    is negative at the centre and that the model takes the candidate positive. Rows given
    the right way round, or negated by ``negative=``, carry no such words."""
    x = _triplets(4, seed=11)
    x[:, [0, 2]] += 600 * np.exp(-(np.mgrid[:63, :63] - 31) ** 2 / 2.4).prod(axis=0)
    flipped = x.copy()
    flipped[[1, 3], 2] *= -1
    out = astromorph.annotate_stamps(Table({"triplet": flipped}), model=rb)
    np.testing.assert_array_equal(out["rb_flags"], 0)
    for i in (1, 3):
        assert "difference stamp is negative at the centre" in out["rb_reason"][i]
        assert "takes the candidate positive" in out["rb_reason"][i]
    assert out["rb_reason"][0] == out["rb_reason"][2] == ""
    fixed = astromorph.annotate_stamps(Table({"triplet": flipped}),
                                       model=rb, negative=np.array([0, 1, 0, 1], bool))
    assert not any(fixed["rb_reason"])
    # the same words from files (one FITS cube per triplet)
    fits.PrimaryHDU(flipped[1]).writeto(tmp_path / "flipped.fits")
    table = astromorph.predict_files(rb, tmp_path / "flipped.fits")
    assert table["rb_flags"][0] == 0
    assert "difference stamp is negative at the centre" in table["reason"][0]



def test_an_unscored_triplet_is_not_said_to_be_scored_as_given(rb):
    """The words on a difference negative at the centre ("scored as given") are for scored
    rows: a triplet whose science or reference stamp has no finite pixel (BAD_INPUT, not
    scored) says only why, though its difference is negative at the centre."""
    x = _triplets(3, seed=11)
    x[:, [0, 2]] += 600 * np.exp(-(np.mgrid[:63, :63] - 31) ** 2 / 2.4).prod(axis=0)
    x[:, 2] *= -1
    x[1, 0] = np.nan
    x[2, 1] = np.nan
    with pytest.warns(UnusableInputWarning, match="2 of 3 row"):
        out = astromorph.annotate_stamps(Table({"triplet": x}), model=rb)
    assert "difference stamp is negative at the centre" in out["rb_reason"][0]
    assert list(out["rb_flags"][1:]) == [Flag.BAD_INPUT | Flag.BLANK] * 2
    assert out["rb_reason"][1] == "science stamp has no finite pixel: not scored"
    assert out["rb_reason"][2] == "reference stamp has no finite pixel: not scored"

# ----------------------------------------------------------------------------- header facts
def _hdul_bytes(hdul):
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


def _as_files(tmp_path, cells):
    """The cells' FITS bytes written as files (gunzipped), in row order."""
    paths = []
    for k, cell in enumerate(cells):
        path = tmp_path / f"row{k}.fits"
        path.write_bytes(gzip.decompress(cell) if cell[:2] == b"\x1f\x8b" else cell)
        paths.append(str(path))
    return paths


def _galaxy(n=96, seed=0):
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    rng = np.random.default_rng(seed)
    return (np.exp(-(x ** 2 + y ** 2) / (2 * (n / 8) ** 2)) * 5
            + rng.normal(0, 0.05, (n, n))).astype(np.float32)


def test_fits_cells_not_in_nanomaggies_are_said_as_for_files(tmp_path):
    """A galaxy stamp whose header says counts (BUNIT='count', MAGZERO=30, or FLUXMAG0 in the
    primary header of an image extension) got a reason and an AstromorphWarning from
    predict_files but nothing as FITS bytes in a table cell: the header's unit was never
    read. The row now gets the file's reason and flags, and one warning names the rows."""
    from astromorph.exceptions import AstromorphWarning

    g = _galaxy()
    counts = fits.PrimaryHDU(g * 200, header=fits.Header([("BUNIT", "count")]))
    cells = [_hdul_bytes(fits.HDUList([counts])),
             gzip.compress(_hdul_bytes(fits.HDUList([counts]))),
             _hdul_bytes(fits.HDUList([fits.PrimaryHDU(g, header=fits.Header(
                 [("MAGZERO", 30.0)]))])),
             _hdul_bytes(fits.HDUList([fits.PrimaryHDU(header=fits.Header(
                 [("FLUXMAG0", 10 ** (0.4 * 27))])), fits.ImageHDU(g, name="IMAGE")])),
             _hdul_bytes(fits.HDUList([fits.PrimaryHDU(g, header=fits.Header(
                 [("BUNIT", "nanomaggy")]))])),
             _hdul_bytes(fits.HDUList([fits.PrimaryHDU(g)]))]
    with pytest.warns(AstromorphWarning, match="nanomaggies"):
        files = astromorph.predict_files("morphology", _as_files(tmp_path, cells),
                                         progress=False)
    with pytest.warns(AstromorphWarning, match="nanomaggies") as rec:
        out = astromorph.annotate_stamps(Table({"stamp": _cells(cells)}), model="morphology",
                                         progress=False)
    assert list(out["morph_reason"]) == list(files["reason"])
    assert list(out["morph_flags"]) == list(files["morph_flags"])
    said = [str(w.message) for w in rec if "nanomaggies" in str(w.message)]
    assert len(said) == 1
    for shown in ("BUNIT='count'", "MAGZERO=30", "zero point 27"):
        assert shown in said[0]
    assert "BUNIT='count'" in out["morph_reason"][0] and "MAGZERO=30" in out["morph_reason"][2]
    assert out["morph_reason"][4] == out["morph_reason"][5] == ""
    assert_scores(out["morph_p_spiral"], files["morph_p_spiral"], atol=1e-6)


def test_saturated_triplet_member_in_fits_cells_is_flagged_as_for_files(rb, tmp_path):
    """A triplet member held as FITS bytes whose header gives a saturation level (SATURATE;
    the primary header's for an image extension) that its core reaches was flagged
    SATURATED by predict_files but not in a table cell: the level was never read. The row
    now gets the flags and reason of the same stamps in one file."""
    x = _triplets(3, seed=4)
    x[:2, 0, 30:34, 30:34] = 1000.0  # science cores clipped at the detector's level
    x[2, 1, 30:34, 30:34] = 1000.0  # and a reference core
    x[:, 2] = x[:, 0] - x[:, 1]
    levels = [(1000.0, 5000.0, None), (None, None, None), (5000.0, 1000.0, None)]
    names = ("SCIENCE", "REFERENCE", "DIFFERENCE")
    cols, paths = {n: [] for n in names}, []
    for k, (trip, lv) in enumerate(zip(x, levels)):
        hdus = [fits.PrimaryHDU()]
        for name, plane, level in zip(names, trip, lv):
            header = fits.Header([("SATURATE", level)] if level else [])
            hdus.append(fits.ImageHDU(plane, header=header, name=name))
            if k == 0:  # the level in the primary header of an extension: astropy's path
                cols[name].append(_hdul_bytes(fits.HDUList([fits.PrimaryHDU(header=header),
                                                            fits.ImageHDU(plane)])))
            else:
                cols[name].append(gzip.compress(_hdul_bytes(fits.HDUList(
                    [fits.PrimaryHDU(plane, header=header)]))))
        fits.HDUList(hdus).writeto(tmp_path / f"row{k}.fits")
        paths.append(str(tmp_path / f"row{k}.fits"))
    files = astromorph.predict_files(rb, paths, progress=False)
    out = astromorph.annotate_stamps(Table({n.lower(): _cells(c) for n, c in cols.items()}),
                                     model=rb, progress=False)
    assert list(files["rb_flags"]) == [Flag.SATURATED, 0, Flag.SATURATED]
    assert list(out["rb_flags"]) == list(files["rb_flags"])
    assert list(out["rb_reason"]) == list(files["reason"])
    assert "science stamp reaches its header's saturation level (1000)" in out["rb_reason"][0]
    assert "reference stamp" in out["rb_reason"][2]
    assert_scores(out["rb_score"], files["rb_score"], atol=1e-6)


# ----------------------------------------------------------------------------- cubes in cells
def _parity(model, cells, tmp_path, column="stamp", unread=(), **kw):
    """annotate_stamps on one column of FITS-byte cells, and predict_files on the same bytes
    written as files, checked to give the same flags, reasons and outputs (``unread``: rows
    whose bytes hold no stamp, whose reason names the column first, as that of every cell
    that cannot be read does): (table, files, prefix)."""
    m = astromorph.load_model(model) if isinstance(model, str) else model
    prefix = m.card.get("column_prefix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = astromorph.predict_files(m, _as_files(tmp_path, cells), progress=False, **kw)
        out = astromorph.annotate_stamps(Table({column: _cells(cells)}), model=m,
                                         progress=False, **kw)
    assert len(files) == len(out)
    assert list(out[f"{prefix}_flags"]) == list(files[f"{prefix}_flags"])
    assert list(out[f"{prefix}_reason"]) == [f"{column}: {r}" if k in unread else r
                                             for k, r in enumerate(files["reason"])]
    for name in astromorph._adapters.result_names(m):
        if name != f"{prefix}_flags":
            a, b = np.ma.asarray(out[name]), np.ma.asarray(files[name])
            np.testing.assert_array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b))
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a.filled(0), b.filled(0), atol=1e-6)
            else:  # a class name
                assert list(a.filled(a.fill_value)) == list(b.filled(a.fill_value))
    return out, files, prefix


def test_fits_cube_cells_read_as_the_same_bytes_as_files(rb, tmp_path):
    """A (3, H, W) FITS cube held as bytes in one cell was refused ("stamp has shape (3, 64,
    64), not a 2-D image"), and one HDU per triplet member (SCI/REF/DIFF) gave its first
    image only ("1 plane(s): a triplet needs ..."), while predict_files reads the same
    bytes as a file as a triplet. A cell is now read as the file: same flags, reasons and
    scores, header facts (saturation) included."""
    from synthetic_alerts import celestial_header, triplet

    trip = [triplet(seed=s) for s in range(4)]
    named = fits.PrimaryHDU(trip[1][::-1].copy())  # planes named, in another order
    named.header.update(PLANE1="DIFFERENCE", PLANE2="REFERENCE", PLANE3="SCIENCE")
    wcs = fits.PrimaryHDU(trip[2], header=celestial_header(fits.Header(), 1.01, (63, 63)))
    sat = trip[3].copy()
    sat[0, 29:34, 29:34] = 900.0
    mef = [fits.PrimaryHDU()] + [
        fits.ImageHDU(p, name=n, header=fits.Header([("SATURATE", 900.0)] if n == "SCI" else []))
        for p, n in zip(sat, ("SCI", "REF", "DIFF"))]
    cells = [_hdul_bytes(fits.HDUList([fits.PrimaryHDU(np.zeros((3, 64, 64), "f4"))])),
             gzip.compress(_hdul_bytes(fits.HDUList([fits.PrimaryHDU(trip[0])]))),
             _hdul_bytes(fits.HDUList([named])),
             _hdul_bytes(fits.HDUList([wcs])),
             _hdul_bytes(fits.HDUList(mef)),
             gzip.compress(_hdul_bytes(fits.HDUList(mef[:3])))]  # no difference image
    out, files, _ = _parity(rb, cells, tmp_path, unread=(5,))
    assert [int(f) for f in out["rb_flags"]] == [
        Flag.CONSTANT | Flag.NO_WCS, 0, 0, 0, Flag.SATURATED, Flag.MISSING_BAND]
    assert out["rb_score"][1] > 0.5 and out["rb_score"][2] > 0.5
    assert "science stamp reaches its header's saturation level (900)" in out["rb_reason"][4]
    # the same pixels in three 2-D columns score the same
    three = astromorph.annotate_stamps(
        Table({n: _cells([_fits_bytes(t[j]) for t in trip]) for j, n in
               enumerate(("science", "reference", "difference"))}), model=rb, progress=False)
    one = astromorph.annotate_stamps(
        Table({"stamp": _cells([_fits_bytes(t) for t in trip])}), model=rb, progress=False)
    assert_scores(one["rb_score"], three["rb_score"], atol=1e-6)
    assert list(one["rb_flags"]) == list(three["rb_flags"])


def test_fits_band_cube_cells_read_as_the_same_bytes_as_files(tmp_path):
    """A g, r, i cube in one cell (bands named by BANDn where present; BUNIT and SATURATE
    in its header) and one HDU per band are read as predict_files reads the same bytes."""
    g = _galaxy()
    gri = np.stack([g * 0.6, g, g * 1.3])
    named = fits.PrimaryHDU(gri[::-1].copy(), header=fits.Header(
        [("BAND1", "i"), ("BAND2", "r"), ("BAND3", "g"), ("BUNIT", "count")]))
    sat = gri.copy()
    sat[1, 46:50, 46:50] = 50.0
    bands = fits.HDUList([fits.PrimaryHDU()] + [
        fits.ImageHDU(p, name=b.upper(), header=fits.Header([("SATURATE", 50.0)]))
        for p, b in zip(sat, "gri")])
    cells = [_hdul_bytes(fits.HDUList([fits.PrimaryHDU(gri)])),
             gzip.compress(_hdul_bytes(fits.HDUList([named]))),
             _hdul_bytes(bands),
             _hdul_bytes(fits.HDUList([fits.PrimaryHDU(gri[:2])]))]  # two planes
    out, files, _ = _parity("morphology", cells, tmp_path)
    assert [int(f) for f in out["morph_flags"]] == [0, 0, Flag.SATURATED, Flag.MISSING_BAND]
    assert "BUNIT='count'" in out["morph_reason"][1]
    # the same pixels in g, r, i columns (2-D FITS bytes) score the same
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        three = astromorph.annotate_stamps(
            Table({b: _cells([_fits_bytes(gri[j])]) for j, b in enumerate("gri")}),
            model="morphology", progress=False)
    np.testing.assert_allclose(out["morph_p_spiral"][0], three["morph_p_spiral"][0], atol=1e-6)


def test_a_stack_of_stamps_or_a_cube_among_plane_columns_flags_its_row(rb):
    """A 4-D stack in one cell (a file of several stamps) and a cube where one plane is
    expected flag their row, naming the column; the other rows are scored."""
    x = _triplets(2, seed=5)
    stack = _hdul_bytes(fits.HDUList([fits.PrimaryHDU(x)]))
    with pytest.warns(UnusableInputWarning):
        out = astromorph.annotate_stamps(Table({"stamp": _cells([stack, _fits_bytes(x[0])])}),
                                         model=rb, progress=False)
    assert out["rb_reason"][0] == "stamp: a stack of 2 stamps (a 4-D image), not one stamp"
    assert list(out["rb_flags"]) == [Flag.BAD_INPUT, 0]
    sci = _cells([_fits_bytes(x[0]), _fits_bytes(x[1, 0])])
    with pytest.warns(UnusableInputWarning):
        out = astromorph.annotate_stamps(Table(
            {"science": sci, "reference": _cells([_fits_bytes(p[1]) for p in x]),
             "difference": _cells([_fits_bytes(p[2]) for p in x])}), model=rb, progress=False)
    assert out["rb_reason"][0] == "science: shape (3, 63, 63), not a 2-D image"
    assert list(out["rb_flags"]) == [Flag.BAD_INPUT, 0]


@pytest.mark.parametrize("ext", [".ecsv", ".fits", ".parquet"])
def test_annotated_stamp_table_round_trips_through_each_output_format(tmp_path, ext):
    """`annotate` output (stamps, an embedding vector masked on a blank row, flags, reasons,
    positions in deg with descriptions, a masked label, the model's provenance in meta)
    written by `write_table` and read back by the reader every command uses (`annotate`,
    `similar`, `cluster`, `classify`, `evaluate`) keeps each column's shape, dtype, unit,
    description and mask, and the meta. Parquet flattened the (64, 64) stamps to rows of
    4096 values: the table read back could not be annotated again (every row flagged
    BAD_INPUT, "shape (4096,), not an image"); the reader now restores the shape the file's
    header records."""
    from astromorph import cli
    from astromorph._cli_annotate import _read_catalogue
    from astromorph._io import write_table
    from astromorph.exceptions import LossyOutputWarning

    if ext == ".parquet":
        pytest.importorskip("pyarrow")
        pytest.importorskip("pandas")
    n = 4
    yy, xx = np.mgrid[:64, :64]
    stamps = np.stack([np.exp(-((xx - 32) ** 2 / (2 * (3 + i) ** 2) + (yy - 32) ** 2 / 8))
                       for i in range(n)]).astype(np.float32)
    stamps[2] = np.nan  # a blank row: a masked embedding
    table = QTable({"id": np.arange(n),
                    "ra": np.linspace(10, 11, n) * u.deg,
                    "dec": MaskedColumn(np.linspace(-5, -4, n), mask=[0, 1, 0, 0], unit="deg",
                                        description="Declination (J2000)"),
                    "label": MaskedColumn(["E", "S", "E", "S"], mask=[0, 1, 0, 0]),
                    "stamp": stamps}, meta={"survey": "test"})
    table["ra"].info.description = "Right ascension (J2000)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusableInputWarning)
        out = astromorph.annotate_stamps(table, model="embedding", pixel_scale=0.262,
                                         progress=False)
    assert np.ma.getmaskarray(out["embedding"])[2].all() and out["emb_flags"][2]
    path = tmp_path / f"out{ext}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LossyOutputWarning)  # Parquet: the file's own layout
        write_table(out, path)
    back = _read_catalogue(path, "table")
    assert back.colnames == out.colnames
    assert dict(back.meta) == dict(out.meta)  # the model's provenance: similar --image
    for name in out.colnames:
        a, b = out[name], back[name]
        assert b.shape == a.shape, name
        if a.dtype.kind == "U" and ext == ".fits":  # FITS text is ASCII bytes
            assert b.dtype.kind == "S" and b.dtype.itemsize * 4 == a.dtype.itemsize, name
        else:
            assert b.dtype.newbyteorder("=") == a.dtype, name
        assert getattr(b, "unit", None) == getattr(a, "unit", None), name
        assert b.info.description == a.info.description, name
        mask = np.ma.getmaskarray(a) if np.ma.isMaskedArray(a) else getattr(a, "mask", None)
        if mask is not None:
            np.testing.assert_array_equal(np.asarray(getattr(b, "mask")), mask, err_msg=name)
        fill = np.nan if a.dtype.kind == "f" else 0  # FITS reads NaN back as masked
        values = np.ma.filled(getattr(b, "value", b), fill)
        values = np.char.decode(values, "ascii") if values.dtype.kind == "S" else values
        np.testing.assert_array_equal(values, np.ma.filled(getattr(a, "value", a), fill),
                                      err_msg=name)
    # the table read back is annotated again, as the first time
    again = tmp_path / f"again{ext}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LossyOutputWarning)
        warnings.simplefilter("ignore", UnusableInputWarning)
        assert cli.main(["annotate", str(path), "-m", "embedding", "--pixel-scale", "0.262",
                         "--on-conflict", "replace", "-o", str(again), "--no-progress",
                         "-q"]) == 0
    again = _read_catalogue(again, "table")
    if ext == ".fits":  # FITS reads the NaN stamp back masked: a missing stamp, not a blank one
        np.testing.assert_array_equal(again["emb_flags"] != 0, out["emb_flags"] != 0)
    else:
        np.testing.assert_array_equal(again["emb_flags"], out["emb_flags"])
    np.testing.assert_allclose(np.ma.filled(again["embedding"], 0),
                               np.ma.filled(out["embedding"], 0), rtol=0, atol=1e-5)


def test_cli_annotate_refuses_a_column_the_output_format_cannot_hold_before_any_work(
        rb, tmp_path, capsys, monkeypatch):
    """A catalogue column of mixed Python objects (as ECSV, pandas or user code give) is kept
    in the output, which FITS cannot hold: astropy's writer raised "unsupported object
    types" after every row was scored. It is now refused before any work, naming the
    column and the format that holds it."""
    from astromorph import _stamp_table, cli

    note = np.empty(2, object)
    note[:] = [1, "bright"]
    Table({"candid": [21, 22], "note": note, "triplet": _triplets(2, seed=3)}).write(
        tmp_path / "cands.ecsv")
    monkeypatch.setattr(_stamp_table, "annotate_stamps",
                        lambda *a, **k: pytest.fail("scored before the output was refused"))
    assert cli.main(["annotate", str(tmp_path / "cands.ecsv"), "-m", "real-bogus",
                     "-o", str(tmp_path / "out.fits"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "FITS cannot hold the column(s) note (values that are no arrays (int, str))" in err
    assert "as .ecsv instead" in err and not (tmp_path / "out.fits").exists()


def test_cli_annotate_refuses_csv_for_a_table_of_stamps_before_any_work(rb, tmp_path, capsys,
                                                                         monkeypatch):
    """`astromorph annotate cands.ecsv -m real-bogus -o out.csv`: the stamps (and any other
    multidimensional column of the table) are kept in the output, which CSV cannot hold;
    the command scored every row and only then refused to write. It is now refused before
    any work, naming the columns."""
    from astromorph import _stamp_table, cli

    Table({"candid": [21, 22], "triplet": _triplets(2, seed=3)}).write(tmp_path / "cands.ecsv")
    monkeypatch.setattr(_stamp_table, "annotate_stamps",
                        lambda *a, **k: pytest.fail("scored before the output was refused"))
    assert cli.main(["annotate", str(tmp_path / "cands.ecsv"), "-m", "real-bogus",
                     "-o", str(tmp_path / "out.csv"), "--no-progress"]) == 2
    assert "CSV cannot hold the multidimensional column(s) triplet" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def _scene(size, scale):
    """An asymmetric scene (a point source on an offset elliptical galaxy, a star off to one
    side, a sky gradient) as exact pixel integrals (flux per pixel) on a ``size`` x ``size``
    grid of ``scale`` arcsec/pixel with the candidate at pixel ``size // 2``: science,
    reference, difference."""
    from scipy.special import erf

    edges = (np.arange(size + 1) - size // 2 - 0.5) * scale
    centres = (edges[:-1] + edges[1:]) / 2

    def gauss(mu, sigma):  # the fraction of a 1-D Gaussian in each pixel
        return np.diff(0.5 * (1 + erf((edges - mu) / (np.sqrt(2) * sigma))))

    sky = scale ** 2 * (10 + 0.05 * centres[:, None] + 0.08 * centres[None, :])
    galaxy = 5000 * np.outer(gauss(4.0, 3.0), gauss(-2.0, 5.0))
    star = 300 * np.outer(gauss(-10.0, 1.0), gauss(15.0, 1.0))
    source = 800 * np.outer(gauss(0.0, 1.0), gauss(0.0, 1.0))
    return np.stack([sky + galaxy + star + source, sky + galaxy + star,
                     sky + source]).astype(np.float32)


@pytest.mark.parametrize("size", [315, 320])
def test_rubin_scale_stamps_give_the_network_what_the_model_grid_gives(rb, size, monkeypatch):
    """A scene at 0.2"/px (5 x 5 pixels per model pixel, odd and even sizes, candidate at
    pixel size // 2), given a pixel scale or a WCS, reaches the network as the same scene
    rendered on the model's 63 x 63 grid at 1"/px: surface brightness averaged (the stamp
    normalisation takes out the 1/25), centred, not flipped or transposed, unflagged."""
    seen = []
    predict = rb.predict
    monkeypatch.setattr(rb, "predict", lambda x, **kw: seen.append(np.array(x)) or
                        predict(x, **kw))
    direct = preprocess_triplet(_scene(63, 1.0))[0][0]
    fine = _scene(size, 0.2)
    given = astromorph.annotate_stamps(Table({"triplet": fine[None]}), model=rb,
                                       pixel_scale=0.2)
    wcs = astromorph.annotate_stamps(Table({k: _cells([_fits_bytes(p, cdelt_deg=0.2 / 3600)])
                                            for k, p in zip(("science", "reference",
                                                             "difference"), fine)}), model=rb)
    assert len(seen) == 2
    for x, out in zip(seen, (given, wcs)):
        np.testing.assert_allclose(x[0], direct, rtol=0, atol=2e-6)
        assert out["rb_flags"][0] == 0


# ------------------------------------------------------------ non-square pixels (y, x)
def _expected(model, x, scale):
    """Scores of triplets ``x`` resampled by ``scale`` (one value or (y, x)) as predict's
    own preprocessing does it."""
    return np.asarray(model.predict(prepare(model, RawStamps("triplet", x,
                                                             pixel_scale=scale))[0])["rb_score"])


def _fits_pair_bytes(image, scale_y, scale_x):
    """FITS bytes of ``image`` with a WCS of pixels ``scale_x`` by ``scale_y`` arcsec."""
    hdu = fits.PrimaryHDU(np.asarray(image, np.float32))
    hdu.header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=1, CRPIX2=1, CRVAL1=10.0,
                      CRVAL2=20.0, CDELT1=-scale_x / 3600, CDELT2=scale_y / 3600)
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


@pytest.mark.parametrize("layout", ["array", "object"])
def test_a_pixel_scale_pair_resamples_each_axis_by_its_own_scale(rb, layout):
    """``pixel_scale`` given as (scale_y, scale_x), in any of its forms (a tuple, two values
    with a unit, a column of (N, 2) with or without a unit, angle per pixel), scores each
    stamp as predict's preprocessing of that pair does: was refused ("has (2,) values for a
    table of 3 rows")."""
    x = _triplets(3, size=131, seed=21)
    stamps = x if layout == "array" else _cells(list(x))
    expected = _expected(rb, x, (0.75, 0.5))
    assert not np.allclose(expected, _expected(rb, x, float(np.sqrt(0.75 * 0.5))), atol=1e-4)
    pairs = np.array([[0.75, 0.5]] * 3)
    for given in ((0.75, 0.5), [0.75, 0.5] * u.arcsec, (0.75 * u.arcsec, 500 * u.mas),
                  pairs, pairs * u.arcsec / u.pixel, "scale", "qscale"):
        t = QTable({"triplet": stamps, "scale": Column(pairs),
                    "qscale": pairs / 3600 * u.deg})
        out = astromorph.annotate_stamps(t, model=rb, pixel_scale=given)
        assert_scores(out["rb_score"], expected, rtol=0, atol=1e-6, err_msg=given)
        assert not np.asarray(out["rb_flags"]).any(), given
    # a square pair is the one scale, bit for bit
    square = astromorph.annotate_stamps(Table({"triplet": stamps}), model=rb, pixel_scale=0.5)
    same = astromorph.annotate_stamps(Table({"triplet": stamps}), model=rb,
                                      pixel_scale=(0.5, 0.5))
    assert_scores(same["rb_score"], square["rb_score"], rtol=0)


@pytest.mark.parametrize("layout", ["array", "object"])
def test_rows_of_different_pixel_pairs_are_never_scored_as_one_group(rb, layout):
    """A column of (N, 2) scales whose rows differ (one axis or the other longer, square,
    unknown): each row is scored with its own pair, none merged with another's group."""
    x = _triplets(5, size=131, seed=22)
    scale = np.array([[0.75, 0.5], [0.5, 0.75], [0.5, 0.5], [np.nan, np.nan], [0.75, 0.5]])
    stamps = x if layout == "array" else _cells(list(x))
    out = astromorph.annotate_stamps(Table({"triplet": stamps, "scale": scale}), model=rb,
                                     pixel_scale="scale", batch_size=2)
    for i, s in enumerate([(0.75, 0.5), (0.5, 0.75), 0.5, None, (0.75, 0.5)]):
        np.testing.assert_allclose(out["rb_score"][i], _expected(rb, x[i:i + 1], s)[0],
                                   rtol=0, atol=1e-6, err_msg=str(s))
    assert list(out["rb_flags"]) == [0, 0, 0, Flag.NO_WCS, 0]
    # one axis known and not the other: that row cannot be resampled, and says why
    half = scale.copy()
    half[1] = [np.nan, 0.75]
    with pytest.warns(UnusableInputWarning):
        out = astromorph.annotate_stamps(Table({"triplet": stamps, "scale": half}), model=rb,
                                         pixel_scale="scale")
    assert out["rb_flags"][1] == Flag.BAD_INPUT and "nan" in out["rb_reason"][1]
    assert list(out["rb_score"].mask) == [False, True, False, False, False]


def test_every_row_of_a_group_that_cannot_be_preprocessed_says_why(rb):
    """A group of rows that preprocessing refuses as a whole (here: two rows whose pixel
    pair knows one axis only, scored together) is retried row by row, so that each row,
    not only the group's first, is flagged with its own reason; the rows of other groups
    are scored."""
    x = _triplets(3, size=131, seed=24)
    scale = np.array([[np.nan, 0.75], [0.5, 0.5], [np.nan, 0.75]])
    with pytest.warns(UnusableInputWarning):
        out = astromorph.annotate_stamps(Table({"triplet": x, "scale": scale}), model=rb,
                                         pixel_scale="scale")
    assert list(out["rb_flags"]) == [Flag.BAD_INPUT, 0, Flag.BAD_INPUT]
    assert list(out["rb_score"].mask) == [True, False, True]
    for i in (0, 2):
        assert out["rb_reason"][i].startswith("cannot be preprocessed: "), out["rb_reason"][i]
        assert "nan" in out["rb_reason"][i]
    assert out["rb_reason"][0] == out["rb_reason"][2]


def test_a_pixel_pair_from_fits_cells_and_a_given_pair_agree(rb):
    """FITS bytes whose WCS gives pixels of 0.5" by 0.75" carry the pair (scale_y, scale_x)
    through a stamp table as through files, and a ``pixel_scale`` pair given for the same
    stamps scores them alike."""
    x = _triplets(2, size=131, seed=23)
    cols = {k: _cells([_fits_pair_bytes(im, 0.75, 0.5) for im in x[:, j]])
            for j, k in enumerate(("science", "reference", "difference"))}
    from_wcs = astromorph.annotate_stamps(Table(cols), model=rb)
    assert_scores(from_wcs["rb_score"], _expected(rb, x, (0.75, 0.5)), rtol=0,
                  atol=1e-5)
    assert not np.asarray(from_wcs["rb_flags"]).any()


def test_rubin_packets_with_non_square_pixels_carry_the_pair(tmp_path):
    """Rubin alert packets whose cutouts' WCS gives pixels of 0.5" by 0.75": read with the
    pair (scale_y, scale_x), scored as a ``pixel_scale`` pair scores the same triplet, by
    predict_files and by annotate_stamps of a table of the packets' cutouts."""
    pytest.importorskip("fastavro")
    from synthetic_alerts import RUBIN_SCHEMA, rubin_alert, write_avro

    from astromorph._readers import read_file

    rb = astromorph.load_model("real-bogus")
    x = _triplets(1, size=131, seed=24)
    rec = rubin_alert(41, x[0])
    for key, plane in zip(("cutoutScience", "cutoutTemplate", "cutoutDifference"), x[0]):
        rec[key] = _fits_pair_bytes(plane, 0.75, 0.5)
    write_avro(tmp_path / "rubin.avro", [rec], schema=RUBIN_SCHEMA)
    stamp, = read_file(tmp_path / "rubin.avro")
    assert stamp.pixel_scale == pytest.approx((0.75, 0.5))
    expected = _expected(rb, x, (0.75, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = astromorph.predict_files("real-bogus", tmp_path / "rubin.avro", progress=False)
    assert_scores(files["rb_score"], expected, rtol=0, atol=1e-5)
    t = Table({k: _cells([rec[k]]) for k in ("cutoutScience", "cutoutTemplate",
                                             "cutoutDifference")})
    out = astromorph.annotate_stamps(t, model=rb)
    assert_scores(out["rb_score"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("given, words", [
    ((0.75, 0.0), r"\(0\.75, 0\.0\)"), ((np.nan, 0.5), r"\(nan, 0\.5\)"),
    ((-1.0, 0.5), r"\(-1\.0, 0\.5\)"), ((0.5, np.inf), r"\(0\.5, inf\)"),
    (np.nan, "nan"), (0.0, "0.0"),
    ([1.0, 1.0, 1.0, 1.0], r"\(4,\) values for a table of 3 rows"),
    (np.ones((3, 3)), r"\(3, 3\) values for a table of 3 rows"),
    (np.ones((2, 2)), r"\(2, 2\) values for a table of 3 rows"),
    ((0.5 * u.m, 0.5 * u.m), r"pixel_scale=\(<Quantity 0\.5 m>.*'m' is neither an angle"),
    (0.5 * u.s, "pixel_scale=<Quantity 0.5 s> cannot be used: unit 's'"),
    ("bad", "pixel_scale column 'bad'"),
    ("metres", "pixel_scale column 'metres' .*'m' is neither an angle"),
    ("wide", r"pixel_scale column 'wide' has \(3, 3\) values"),
])
def test_bad_pixel_scales_are_refused_naming_the_value(rb, given, words):
    t = QTable({"triplet": _triplets(3), "metres": [1, 2, 3] * u.m, "wide": np.ones((3, 3))})
    error = InputError if isinstance(given, str) and given == "bad" else InvalidArgumentError
    with pytest.raises(error, match=words):
        astromorph.annotate_stamps(t, model=rb, pixel_scale=given)


def test_a_pair_or_per_row_values_in_a_table_of_two_rows(rb):
    """Two values for a table of two rows stay one per row, as before; a tuple is the pair
    (scale_y, scale_x) whatever the table's length."""
    x = _triplets(2, size=131, seed=25)
    t = Table({"triplet": x})
    rows = astromorph.annotate_stamps(t, model=rb, pixel_scale=[0.75, 0.5])
    assert_scores(rows["rb_score"], [_expected(rb, x[:1], 0.75)[0],
                                     _expected(rb, x[1:], 0.5)[0]], atol=1e-6)
    pair = astromorph.annotate_stamps(t, model=rb, pixel_scale=(0.75, 0.5))
    assert_scores(pair["rb_score"], _expected(rb, x, (0.75, 0.5)), atol=1e-6)


def test_group_key_keeps_per_axis_scales_apart():
    from astromorph._predict import _group_key

    stamp = np.zeros((3, 8, 8), np.float32)
    key = lambda s: _group_key("triplet", stamp, None, s)  # noqa: E731
    assert key((0.75, 0.5)) != key((0.5, 0.75)) != key(0.5)
    assert key((0.5, 0.5)) == key(0.5) and key(np.array([0.5, 0.5])) == key(0.5)
    assert key(np.nan) == key((np.nan, np.nan))
    assert key((np.nan, 0.5)) not in (key(np.nan), key(0.5))
    assert key((np.nan, 0.5)) == key((np.nan, 0.5))


def test_cli_pixel_scale_takes_a_pair_y_then_x(rb, tmp_path, capsys):
    from astromorph import cli

    x = _triplets(2, size=131, seed=26)
    Table({"triplet": x, "scale": np.array([[0.75, 0.5]] * 2) * u.arcsec}).write(
        tmp_path / "c.ecsv")
    expected = _expected(rb, x, (0.75, 0.5))
    for given in ("0.75,0.5", "0.75, 0.5", "scale"):
        out = tmp_path / f"s{len(given)}.fits"
        assert cli.main(["annotate", str(tmp_path / "c.ecsv"), "-m", "real-bogus",
                         "--pixel-scale", given, "-o", str(out), "--no-progress"]) == 0, given
        np.testing.assert_allclose(Table.read(out)["rb_score"], expected, atol=1e-6)
    capsys.readouterr()
    for bad, words in (("1,2,3", "1,2,3"), ("0,0.5", "0.0, 0.5"), ("nan", "nan"),
                       ("0.5,nan", "nan"), ("0.5,", "'0.5,'")):
        assert cli.main(["annotate", str(tmp_path / "c.ecsv"), "-m", "real-bogus",
                         f"--pixel-scale={bad}", "--no-progress"]) != 0
        err = capsys.readouterr().err
        assert "--pixel-scale" in err and words in err, (bad, err)
    with pytest.raises(SystemExit):
        cli.main(["annotate", "--help"])
    assert "scale_y,scale_x" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["array", "object"])
def test_a_pixel_pair_that_does_not_cover_the_field_says_how_much_per_axis(rb, layout):
    """Stamps of pixels that are not square that fall short of the model's 63" field, or whose
    pixels are more than twice as coarse along one axis, are scored and flagged EXTRAPOLATED,
    their reason giving each axis by its own scale: the words for it took one float and
    raised a TypeError for every such pair (docs/predict.md's ``--pixel-scale 0.75,0.5`` on
    63x63 ZTF triplets)."""
    x = _triplets(2, size=63, seed=28)
    stamps = x if layout == "array" else _cells(list(x))
    out = astromorph.annotate_stamps(Table({"triplet": stamps}), model=rb,
                                     pixel_scale=(0.75, 0.5))
    assert_scores(out["rb_score"], _expected(rb, x, (0.75, 0.5)), atol=1e-6)
    assert all(f & Flag.EXTRAPOLATED for f in out["rb_flags"])
    # 63 x 0.5" = 31.5" across, 63 x 0.75" = 47.2" down: 50% x 75% of the 63" field
    assert ('the 63x63 stamp spans 31.5" x 47.2" and does not cover the model\'s 63" field: '
            '50% x 75% of it') in out["rb_reason"][0], out["rb_reason"][0]
    coarse = astromorph.annotate_stamps(Table({"triplet": stamps}), model=rb,
                                        pixel_scale=(2.5, 1.0))
    assert all(f & Flag.EXTRAPOLATED for f in coarse["rb_flags"])
    assert 'the stamp\'s 1" x 2.5" pixels are more than twice as coarse as the model\'s ' \
        '1"/pixel grid' in coarse["rb_reason"][0], coarse["rb_reason"][0]


def test_cli_pixel_pair_on_ztf_sized_triplets_as_docs_predict_shows(rb, tmp_path, capsys):
    """``astromorph annotate TABLE -m real-bogus --pixel-scale 0.75,0.5`` on 63x63 triplets
    (docs/predict.md) writes the table: it ended in a traceback."""
    from astromorph import cli

    Table({"triplet": _triplets(2, size=63, seed=29)}).write(tmp_path / "c.ecsv")
    assert cli.main(["annotate", str(tmp_path / "c.ecsv"), "-m", "real-bogus",
                     "--pixel-scale", "0.75,0.5", "-o", str(tmp_path / "o.fits"),
                     "--no-progress"]) == 0
    assert all(f & Flag.EXTRAPOLATED for f in Table.read(tmp_path / "o.fits")["rb_flags"])


def test_dask_takes_a_pixel_scale_pair_and_an_n_by_2_column(rb):
    pytest.importorskip("dask")
    x = _triplets(7, size=131, seed=27)
    t = Table({"id": np.arange(7), "triplet": x})
    per_row = np.array([[0.75, 0.5], [0.5, 0.75], [np.nan, np.nan], [0.5, 0.5], [1.0, 0.8],
                        [0.75, 0.5], [0.6, 0.6]]) * u.arcsec
    for given in ((0.75, 0.5), per_row, list(per_row.value)):
        ref = astromorph.annotate_stamps(t, model=rb, pixel_scale=given)
        out = astromorph.annotate_dask(t, model="real-bogus", partition_size=2,
                                       scheduler="synchronous", pixel_scale=given)
        assert_scores(out["rb_score"], ref["rb_score"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(out["rb_flags"], ref["rb_flags"])
    np.testing.assert_allclose(ref["rb_score"][0], _expected(rb, x[:1], (0.75, 0.5))[0],
                               atol=1e-6)


def test_dask_gives_a_pair_that_is_no_tuple_to_a_partition_of_two_rows_as_a_pair(rb):
    """A pair (scale_y, scale_x) given as two values other than a tuple (an array, a list,
    two angles as one Quantity) for a table of other than two rows is one pair for every
    row: a last partition of two rows read it as one value per row (0.75 for the first row,
    0.5 for the second), scoring those rows on square pixels of the wrong scale."""
    pytest.importorskip("dask")
    x = _triplets(7, size=131, seed=30)
    t = Table({"id": np.arange(7), "triplet": x})
    for given in (np.array([0.75, 0.5]), [0.75, 0.5], [0.75, 0.5] * u.arcsec,
                  [0.75 * u.arcsec, 0.5 * u.arcsec], [0.6 * u.arcsec] * 7):
        ref = astromorph.annotate_stamps(t, model=rb, pixel_scale=given)
        out = astromorph.annotate_dask(t, model="real-bogus", partition_size=5,
                                       scheduler="synchronous", pixel_scale=given)
        assert_scores(out["rb_score"], ref["rb_score"], rtol=0, atol=1e-6,
                      err_msg=repr(given))


# ----------------------------------------------------------------- the candidate's pixel
def _edge_cut_table():
    """Two rows of a triplet cut at the left CCD edge (63 x 53: the first 10 columns of a
    63 x 63 scene centred on (31, 31) missing), the candidate at 0-based (x, y) = (21, 31)."""
    from synthetic_alerts import scene

    cut = scene(63, (31, 31), seed=3)[:, :, 10:]
    return Table({"science": [cut[0]] * 2, "reference": [cut[1]] * 2,
                  "difference": [cut[2]] * 2})


@pytest.mark.parametrize("how", ["column", "columns", "array"])
def test_centre_places_the_candidate_of_edge_cut_stamps(rb, how):
    """Stamps cut at the CCD edge hold the candidate off their middle: centre= gives its
    0-based (x, y) pixel and the model's field is centred there, as predict_files pads ZTF
    packets; without it the stamp is resampled about n // 2 and the candidate is lost."""
    t = _edge_cut_table()
    t["cand_xy"] = [[21.0, 31.0], [np.nan, np.nan]]  # NaN: none (n // 2)
    t["cx"], t["cy"] = [21.0, np.nan], [31.0, np.nan]
    centre = {"column": "cand_xy", "columns": ("cx", "cy"),
              "array": np.array([[21.0, 31.0], [np.nan, np.nan]])}[how]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.annotate_stamps(t, model=rb, centre=centre, pixel_scale=1.0)
    assert out["rb_score"][0] > 0.9 and out["rb_score"][1] < 0.1, list(out["rb_score"])
    assert "candidate at pixel (x, y = 21.00, 31.00; 0-based), given by centre= " \
        "(--centre-col): the model's field centred there" in out["rb_reason"][0]


def test_centre_off_the_stamp_or_far_off_its_middle_is_flagged(rb):
    t = _edge_cut_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.annotate_stamps(t, model=rb, pixel_scale=1.0,
                                         centre=np.array([[80.0, 31.0], [2.0, 31.0]]))
    assert out["rb_flags"][0] == Flag.BAD_INPUT and "off the 53x63 stamp" in out["rb_reason"][0]
    assert "the candidate's pixel given by centre= (--centre-col) (x, y = 80.00" \
        in out["rb_reason"][0]
    assert np.ma.is_masked(out["rb_score"][0])
    assert out["rb_flags"][1] & Flag.EDGE and "off their centre" in out["rb_reason"][1]


def test_off_centre_edge_flag_starts_beyond_one_pixel_on_odd_cutouts_smaller_than_the_field(rb):
    """`Flag.EDGE` is for a candidate whose field runs over the cutouts' edge by more than
    `OFF_CENTRE_PIXELS` (1) beyond what it does about their centre. The 53x63 cutouts are
    odd-sized and narrower than the model's 63" field: centred at x = 26 (n // 2 and
    (n - 1) / 2 alike), the field runs 5 px over each side whichever way it is measured; a
    candidate exactly 1 px off runs 1.0 px further (not flagged), 1.25 px off 1.25 px
    (flagged: the half pixel of an odd n is not taken off it)."""
    from astromorph._predict import OFF_CENTRE_PIXELS

    assert OFF_CENTRE_PIXELS == 1.0
    xs = [26.0, 27.0, 25.0, 27.25, 24.75]
    t = _edge_cut_table()
    t = Table({k: [t[k][0]] * len(xs) for k in t.colnames})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.annotate_stamps(t, model=rb, pixel_scale=1.0,
                                         centre=np.array([[x, 31.0] for x in xs]))
    edge = [bool(f & Flag.EDGE) for f in out["rb_flags"]]
    assert edge == [False, False, False, True, True], list(zip(xs, out["rb_reason"]))
    assert ["off their centre" in r for r in out["rb_reason"]] == edge


def test_centre_bad_values_are_refused(rb):
    t = _edge_cut_table()
    with pytest.raises(InputError, match="'nope'"):
        astromorph.annotate_stamps(t, model=rb, centre="nope")
    with pytest.raises(InvalidArgumentError, match=r"centre has \(2, 3\) values"):
        astromorph.annotate_stamps(t, model=rb, centre=np.zeros((2, 3)))
    with pytest.raises(InvalidArgumentError, match="difference-imaging"):
        astromorph.annotate_stamps(Table({"stamp": np.zeros((2, 3, 64, 64))}),
                                   model="morphology", centre=np.zeros((2, 2)))


@pytest.mark.parametrize("centre", [np.array([[21.0, 31.0], [np.nan, np.nan]]), ("cx", "cy")])
def test_annotate_dask_splits_centre_by_partition(centre):
    """annotate_dask hands each partition its rows of a per-row centre= array (two column
    names are names, not two rows' values)."""
    pytest.importorskip("dask")
    t = _edge_cut_table()
    t["cx"], t["cy"] = [21.0, np.nan], [31.0, np.nan]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = astromorph.annotate_stamps(t, model="real-bogus", centre=centre,
                                           pixel_scale=1.0)
        parts = astromorph.annotate_dask(t, model="real-bogus", centre=centre,
                                         pixel_scale=1.0, partition_size=1,
                                         scheduler="synchronous")
    np.testing.assert_allclose(np.asarray(parts["rb_score"]), np.asarray(whole["rb_score"]))
    assert list(parts["rb_reason"]) == list(whole["rb_reason"])


def test_cli_centre_col_places_the_candidate_as_centre_does(rb, tmp_path, capsys):
    """`astromorph annotate` had no option for centre=: stamps cut at the CCD edge could be
    scored about their candidate from Python only. --centre-col takes a column of (x, y)
    pairs, or an x and a y column (given twice), and scores as annotate_stamps(centre=)."""
    from astromorph import cli

    t = _edge_cut_table()
    t["cand_xy"] = [[21.0, 31.0], [np.nan, np.nan]]
    t["cx"], t["cy"] = [21.0, np.nan], [31.0, np.nan]
    t.write(tmp_path / "edge.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = astromorph.annotate_stamps(t, model=rb, centre="cand_xy", pixel_scale=1.0)
    for k, given in enumerate((["cand_xy"], ["cx", "cy"])):
        out = tmp_path / f"scored{k}.fits"
        typed = [a for name in given for a in ("--centre-col", name)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert cli.main(["annotate", str(tmp_path / "edge.fits"), "-m", "real-bogus",
                             "--pixel-scale", "1", *typed, "-o", str(out), "-q"]) == 0
        scored = Table.read(out)
        assert_scores(scored["rb_score"], ref["rb_score"], rtol=0, atol=1e-6)
        assert scored["rb_score"][0] > 0.9 and scored["rb_score"][1] < 0.1
        assert list(scored["rb_reason"]) == list(ref["rb_reason"])
        # (the reason names the option typed, as the API's errors do: "centre= (--centre-col)")
        assert "given by centre= (--centre-col):" in scored["rb_reason"][0]
    with pytest.raises(SystemExit):
        cli.main(["annotate", "--help"])
    assert "--centre-col" in capsys.readouterr().out


def test_annotate_dask_refuses_a_bad_centre_before_any_task(rb):
    """annotate_dask checked centre= only in its partitions: with compute=False an unknown
    centre column, or centre= with a model that is not difference imaging, was refused
    nowhere until the lazy table was computed. Now before any task, as the other options."""
    pytest.importorskip("dask")
    t = _edge_cut_table()
    with pytest.raises(InputError, match="'nope'"):
        astromorph.annotate_dask(t, model="real-bogus", centre="nope", compute=False)
    with pytest.raises(InvalidArgumentError, match="difference-imaging"):
        astromorph.annotate_dask(Table({"stamp": np.zeros((2, 3, 64, 64))}),
                                 model="morphology", centre=np.zeros((2, 2)), compute=False)


def test_annotate_dask_takes_centre_as_one_column_of_pairs():
    pytest.importorskip("dask")
    t = _edge_cut_table()
    t["cand_xy"] = [[21.0, 31.0], [np.nan, np.nan]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = astromorph.annotate_stamps(t, model="real-bogus", centre="cand_xy",
                                           pixel_scale=1.0)
        parts = astromorph.annotate_dask(t, model="real-bogus", centre="cand_xy",
                                         pixel_scale=1.0, partition_size=1,
                                         scheduler="synchronous")
    np.testing.assert_allclose(np.asarray(parts["rb_score"]), np.asarray(whole["rb_score"]))
    assert list(parts["rb_reason"]) == list(whole["rb_reason"])


@pytest.mark.parametrize("method", [1, 2, -1])
def test_lossily_compressed_fits_bytes_keep_their_flags(rb, method):
    """Cells of FITS bytes read as files of those bytes are, lossy tile compression
    (fpack's quantisation, level 4, a tile over the whole cube) too: a triplet whose
    reference is flat (read back as values up to a quantisation step apart) is CONSTANT as
    in the uncompressed bytes; the others' flags are those of the uncompressed bytes."""
    x = _triplets(4)
    x[1, 1] = 150.0

    def blob(cube, **how):
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(cube, tile_shape=cube.shape,
                                                           **how)] if how else
                     [fits.PrimaryHDU(cube)]).writeto(buf)
        return buf.getvalue()

    flags = [np.asarray(astromorph.annotate_stamps(Table({"stamp": _cells(
        [blob(c, **how) for c in x])}), model=rb)["rb_flags"]) for how in (
        {}, dict(compression_type="RICE_1", quantize_level=4, quantize_method=method))]
    np.testing.assert_array_equal((flags[0] & Flag.CONSTANT) != 0, [0, 1, 0, 0])
    np.testing.assert_array_equal(flags[1], flags[0])


# ----------------------------------------------------------------- mutation-testing gaps
def test_centre_with_one_coordinate_not_finite_is_centred_on_the_middle(rb):
    """A row whose centre has one finite coordinate and one NaN (an x column with a value,
    the y column masked) has no centre: it is scored about ``n // 2`` as a row whose both
    coordinates are NaN, not flagged as a pixel off the stamp."""
    t = _edge_cut_table()
    t["cx"] = [21.0, 21.0]
    t["cy"] = MaskedColumn([31.0, 31.0], mask=[False, True])
    none = _edge_cut_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.annotate_stamps(t, model=rb, centre=("cx", "cy"), pixel_scale=1.0)
        ref = astromorph.annotate_stamps(none, model=rb, pixel_scale=1.0)
    assert out["rb_score"][0] > 0.9 and not out["rb_flags"][0] & Flag.BAD_INPUT
    assert out["rb_flags"][1] == ref["rb_flags"][1], out["rb_reason"][1]
    assert out["rb_reason"][1] == ref["rb_reason"][1]
    np.testing.assert_allclose(out["rb_score"][1], ref["rb_score"][1], rtol=0, atol=1e-6)


def test_an_unusable_row_is_not_named_in_the_flux_unit_warning(tmp_path):
    """Galaxy models: the warning of headers not in nanomaggies names the rows scored in
    those units, as predict_files names such files; a row that is not scored (an image of
    one pixel's height) is flagged, and named in no warning, as for a file of its bytes."""
    from astromorph.exceptions import AstromorphWarning

    g = _galaxy()
    cells = [_hdul_bytes(fits.HDUList([fits.PrimaryHDU(g[:1], header=fits.Header(
                 [("BUNIT", "count")]))])),
             _hdul_bytes(fits.HDUList([fits.PrimaryHDU(g)]))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstromorphWarning)
        warnings.simplefilter("ignore", UnusableInputWarning)
        files = astromorph.predict_files("morphology", _as_files(tmp_path, cells),
                                         progress=False)
        out = astromorph.annotate_stamps(Table({"stamp": _cells(cells)}), model="morphology",
                                         progress=False)
    assert out["morph_flags"][0] == files["morph_flags"][0] == Flag.BAD_INPUT
    assert list(out["morph_reason"]) == list(files["reason"])


def test_dask_names_the_rows_of_the_whole_table_in_the_flux_unit_warning():
    """annotate_dask without images: the flux-unit warning named each partition's rows by
    their place in the partition ("row 1" for rows 3 and 5 of a table cut in partitions of
    two rows); it now names the rows of the whole table, in annotate_stamps's one warning,
    computed or lazy. The unusable-rows warning is annotate_stamps's too."""
    import dask

    from astromorph.exceptions import AstromorphWarning

    g = _galaxy()
    unit = fits.Header([("BUNIT", "count")])
    cells = [_hdul_bytes(fits.HDUList([fits.PrimaryHDU(
        g[:1] if k == 4 else g * 200 if k in (3, 5) else g,
        header=unit if k in (3, 4, 5) else None)])) for k in range(6)]
    t = Table({"stamp": _cells(cells)})

    def said(rec):
        return [(type(w.message), str(w.message)) for w in rec
                if isinstance(w.message, (AstromorphWarning, UnusableInputWarning))]

    with warnings.catch_warnings(record=True) as ref:
        warnings.simplefilter("always")
        astromorph.annotate_stamps(t, model="morphology", progress=False)
    with warnings.catch_warnings(record=True) as out:
        warnings.simplefilter("always")
        astromorph.annotate_dask(t, model="morphology", partition_size=2,
                                 scheduler="synchronous")
    flux = [m for _, m in said(ref) if "but the headers say" in m]
    assert len(flux) == 1 and "row 3: BUNIT='count'; row 5: BUNIT='count'" in flux[0]
    assert "row 1" not in flux[0] and "row 4" not in flux[0]
    assert said(out) == said(ref)
    with warnings.catch_warnings(record=True) as lazy:  # each partition's rows, once each
        warnings.simplefilter("always")
        dask.compute(*astromorph.annotate_dask(t, model="morphology", partition_size=2,
                                               compute=False), scheduler="synchronous")
    # (in the order Dask runs the partitions, which its keys decide: not the table's)
    flux = sorted(m for _, m in said(lazy) if "but the headers say" in m)
    assert len(flux) == 2 and "row 3: BUNIT='count'." in flux[0]
    assert "row 5: BUNIT='count'." in flux[1]


@pytest.mark.parametrize("layout", ["array", "object"])
def test_dask_says_the_masked_negative_values_of_the_whole_table_once(rb, layout):
    """annotate_dask without images: each partition said how many of its own rows had a
    masked ``negative`` value, so the table's count was never given, and partitions of
    different counts gave one warning each ("2 row(s)..." in 1 of 4 Dask partitions, "1
    row(s)..." in 3 of 4). Computed, it now gives annotate_stamps's one warning, with the
    whole table's count; lazily, each partition says its own rows, named as the table's
    (identical counts are no longer merged into one partition's warning)."""
    import dask

    from astromorph.exceptions import AmbiguousInputWarning

    x = _triplets(7, seed=11)
    stamps = x if layout == "array" else _cells(list(x))
    masked = [True, True, True, False, True, False, True]  # 2 + 1 + 1 + 1 in 4 partitions
    t = Table({"triplet": stamps,
               "neg": MaskedColumn([False] * 7, mask=masked)})

    def said(rec):
        return [str(w.message) for w in rec if issubclass(w.category, AmbiguousInputWarning)]

    with warnings.catch_warnings(record=True) as ref:
        warnings.simplefilter("always")
        one = astromorph.annotate_stamps(t, model=rb, negative="neg", progress=False)
    assert said(ref) == ["5 row(s) whose negative value is masked (in 'neg') scored as "
                         "positive candidates; their rb_reason says so"]
    for scheduler in ("synchronous", "threads"):
        with warnings.catch_warnings(record=True) as out:
            warnings.simplefilter("always")
            got = astromorph.annotate_dask(t, model=rb, negative="neg", partition_size=2,
                                           scheduler=scheduler)
        assert said(out) == said(ref)
        assert list(got["rb_reason"]) == list(one["rb_reason"])
    with warnings.catch_warnings(record=True) as lazy:
        warnings.simplefilter("always")
        dask.compute(*astromorph.annotate_dask(t, model=rb, negative="neg", partition_size=2,
                                               compute=False), scheduler="synchronous")
    # (in the order Dask runs the partitions, which its keys decide: not the table's)
    assert sorted(said(lazy)) == sorted(
        f"{k} row(s) whose negative value is masked (in 'neg') scored as positive "
        f"candidates; their rb_reason says so (in {rows} of the table, a Dask partition)"
        for k, rows in [(2, "rows 0 to 1"), (1, "rows 2 to 3"), (1, "rows 4 to 5"),
                        (1, "row 6")])


def test_a_row_refused_at_preprocessing_is_not_named_in_the_flux_unit_warning(tmp_path):
    """As a row refused as it is read: a row of FITS bytes in counts whose image has no
    finite pixel (refused only at preprocessing, BAD_INPUT) is named in no flux-unit
    warning, and its reason does not say its pixels are scored as they are; as for a file
    of its bytes."""
    from astromorph.exceptions import AstromorphWarning

    unit = fits.Header([("BUNIT", "count")])
    cells = [_hdul_bytes(fits.HDUList([fits.PrimaryHDU(np.full((96, 96), np.nan, np.float32),
                                                       header=unit)])),
             _hdul_bytes(fits.HDUList([fits.PrimaryHDU(_galaxy() * 200, header=unit)]))]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        files = astromorph.predict_files("morphology", _as_files(tmp_path, cells),
                                         progress=False)
        out = astromorph.annotate_stamps(Table({"stamp": _cells(cells)}), model="morphology",
                                         progress=False)
    said = [str(w.message) for w in rec if isinstance(w.message, AstromorphWarning)
            and "but the headers say" in str(w.message)]
    assert len(said) == 2
    assert "row 1: BUNIT='count'" in said[1] and "row 0" not in said[1]
    assert out["morph_flags"][0] == files["morph_flags"][0]
    assert out["morph_flags"][0] & Flag.BAD_INPUT and not out["morph_flags"][1]
    assert list(out["morph_reason"]) == list(files["reason"])
    assert "scored as they are" not in out["morph_reason"][0]
    assert "no finite pixel" in out["morph_reason"][0]
    assert "scored as they are" in out["morph_reason"][1]


def test_a_partial_default_column_set_is_passed_over():
    """Without columns=, only a complete set of default names is taken: a table holding a
    ``diff`` column of numbers (a magnitude difference) and its stamps in ``triplet`` is
    scored from ``triplet``; one holding ``science`` alone names the sets it looked for."""
    x = _triplets(3, seed=4)
    t = Table({"diff": [0.1, -0.2, 0.3], "triplet": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusableInputWarning)
        out = astromorph.annotate_stamps(t, model="real-bogus", progress=False)
    assert out.meta["astromorph_stamp_columns"] == "triplet"
    np.testing.assert_allclose(out["rb_score"], _direct(astromorph.load_model("real-bogus"), x),
                               rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="no stamp columns found"):
        astromorph.annotate_stamps(Table({"science": x[:, 0]}), model="real-bogus")


def test_an_angle_per_pixel_in_degrees_is_converted_to_arcsec(rb):
    """pixel_scale given as an angle per pixel in other units than arcsec (deg / pixel, as a
    WCS's CDELT) scores as the same scale in arcsec per pixel: given, per row, and as a
    column."""
    x = _triplets(3, size=129, seed=6)  # 64.5 arcsec at 0.5: the model's whole field
    t = Table({"triplet": x})
    t["deg"] = np.full(3, 0.5 / 3600) * u.deg / u.pixel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusableInputWarning)
        ref = astromorph.annotate_stamps(t, model=rb, pixel_scale=0.5)
        outs = [astromorph.annotate_stamps(t, model=rb, pixel_scale=given)
                for given in (0.5 / 3600 * u.deg / u.pixel,
                              np.full(3, 0.5 / 3600) * u.deg / u.pixel, "deg")]
    assert not np.asarray(ref["rb_flags"]).any(), list(ref["rb_reason"])
    for out in outs:
        np.testing.assert_allclose(out["rb_score"], ref["rb_score"], rtol=0, atol=1e-6)
        assert list(out["rb_flags"]) == list(ref["rb_flags"])


def test_centre_on_the_stamp_is_half_a_pixel_either_side_of_its_pixels(rb):
    """A centre is on the stamp from the outer edge of its first pixel (-0.5) to just short
    of the outer edge of its last (n - 0.5): a pixel there is placed (its field may be
    flagged EDGE), one beyond is flagged BAD_INPUT, along x and along y."""
    t = _edge_cut_table()  # 53 x 63 (x, y)
    t = Table({c: [t[c][0]] * 8 for c in t.colnames})
    xy = np.array([[-0.5, 31], [-0.51, 31], [52.49, 31], [52.5, 31],
                   [26, -0.5], [26, -0.51], [26, 62.49], [26, 62.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.annotate_stamps(t, model=rb, pixel_scale=1.0, centre=xy)
    off = [bool(f & Flag.BAD_INPUT) for f in out["rb_flags"]]
    assert off == [False, True, False, True] * 2, list(out["rb_reason"])
    assert all("off the 53x63 stamp" in r for r in out["rb_reason"][off])


def test_an_empty_bytes_cell_is_a_missing_stamp(rb):
    """A cell of zero bytes (an alert without that cutout) has no stamp, as an empty (None)
    cell: MISSING_BAND, 'no stamp in ...', not a corrupt FITS file (BAD_INPUT)."""
    x = _triplets(3, seed=5)
    for empty in (b"", {"stampData": b""}, None):
        sci = _cells([_fits_bytes(im) for im in x[:, 0]])
        sci[1] = empty
        t = Table({"science": sci, "reference": x[:, 1], "difference": x[:, 2]})
        with pytest.warns(UnusableInputWarning, match="1 of 3 row"):
            out = astromorph.annotate_stamps(t, model=rb)
        assert list(out["rb_flags"]) == [0, Flag.MISSING_BAND, 0], repr(empty)
        assert out["rb_reason"][1] == "no stamp in science"


def test_float_cells_of_three_values_a_pixel_are_no_colour_pictures():
    """Only 8-bit (H, W, 3) cells are colour pictures: float ones are read as cubes of W
    planes and flagged BAD_INPUT with the words on the axis order, in an array column
    (stacked) and in an object column (row by row)."""
    x = np.random.default_rng(0).uniform(0, 1, (3, 64, 64, 3)).astype(np.float32)
    for col in (x, _cells(list(x))):
        with pytest.warns(UnusableInputWarning, match="3 of 3 row"):
            out = astromorph.annotate_stamps(Table({"stamp": col}), model="morphology",
                                             progress=False)
        assert list(out["morph_flags"]) == [Flag.BAD_INPUT] * 3
        assert all(r.startswith("64 planes: morphology takes 1 band or 3") and
                   "NAXIS1 = 3 looks like the planes" in r for r in out["morph_reason"])


@pytest.mark.parametrize("stacked", [True, False])
def test_a_constant_grey_radio_image_with_a_few_masked_pixels_reads_as_unmasked(stacked,
                                                                               monkeypatch):
    """An 8-bit grey radio image, constant but for a few masked pixels (3%: no BLANK), is
    filled with its median, the same constant: its flags and reason (words in the same
    order) are those of the unmasked image, stacked and row by row."""
    from astromorph import _stamp_table

    if not stacked:
        monkeypatch.setattr(_stamp_table, "_array_blocks", lambda *a: None)
    x = np.full((2, 150, 150), 40, np.uint8)
    mask = np.zeros(x.shape, bool)
    mask[0, :5] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.annotate_stamps(Table({"image": MaskedColumn(x, mask=mask)}),
                                         model="radio-morphology", progress=False)
    flags, reasons = list(out["radio_flags"]), list(out["radio_reason"])
    assert flags[0] == flags[1] and flags[0] & Flag.CONSTANT and not flags[0] & Flag.BLANK
    assert reasons[0] == reasons[1] and "image is constant (40)" in reasons[0]


def test_stacked_blocks_after_the_first_keep_their_rows_options_and_flags(rb, monkeypatch):
    """Stacked blocks after the first give each row its own ``negative`` reason (a masked
    value in row 2 is said in row 2), and a fully masked cell of stamps off the model's
    grid without a pixel scale is MISSING_BAND alone (no NO_WCS of a stamp it has not),
    as row by row. The stacked path said a masked negative after the NO_WCS words, the
    per-row path before them: the reasons of one table differed by path."""
    from astromorph import _stamp_table

    x = _triplets(5, size=65, seed=8)
    mask = np.zeros(x.shape, bool)
    mask[1] = True
    neg = MaskedColumn([False] * 5, mask=[False, True, True, False, False])
    t = Table({"triplet": MaskedColumn(x, mask=mask), "neg": neg})
    monkeypatch.setattr(_stamp_table, "_BLOCK_ROWS", 2)  # blocks of rows 0-1, 2-3, 4
    outs = []
    for stacked in (True, False):
        with monkeypatch.context() as m:
            if not stacked:
                m.setattr(_stamp_table, "_array_blocks", lambda *a: None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs.append(astromorph.annotate_stamps(t, model=rb, negative="neg",
                                                       batch_size=1))
    for out in outs:
        assert list(out["rb_flags"]) == [Flag.NO_WCS, Flag.MISSING_BAND] + [Flag.NO_WCS] * 3
        said = ["negative unknown" in r for r in out["rb_reason"]]
        assert said == [False, True, True, False, False], list(out["rb_reason"])
    # the words in the same order too: the negative's before the checks' (NO_WCS), after
    # a missing stamp's
    assert list(outs[0]["rb_reason"]) == list(outs[1]["rb_reason"])
    assert outs[0]["rb_reason"][1].startswith("no stamp in triplet; negative unknown")
    assert outs[0]["rb_reason"][2].startswith("negative unknown")


@pytest.mark.parametrize("method", [1, 2, -1])
def test_lossy_fits_cells_of_one_plane_each_are_constant_as_the_file(rb, tmp_path, method):
    """Three columns of FITS bytes, one plane each (science, reference, difference), each
    lossily compressed (fpack's quantisation, level 4, a tile over the plane) on 0.25"/pixel:
    a reference flat (200) across the model's field, noisy in its border rows, reads back
    as values up to a quantisation step apart. On the model's 1"/pixel grid it is CONSTANT
    to the step averaged over 4 x 4 pixels, with the reason and score of the same three
    HDUs in one file through predict_files; the uncompressed bytes are CONSTANT too."""
    from synthetic_alerts import celestial_header, triplet

    n = 300  # 75": the model's 63" field is the middle 252 pixels
    rng = np.random.default_rng(1)
    data = triplet(n)
    data[1] = 200.0
    data[1, :20] += rng.normal(0, 5, (20, n))
    data[1, -20:] += rng.normal(0, 5, (20, n))
    data = data.astype(np.float32)
    header = celestial_header(fits.Header(), 0.25, data.shape[1:])
    # (a fixed dither seed: the cells' planes read back as the file's, not as another draw)
    how = dict(compression_type="RICE_1", quantize_level=4, quantize_method=method,
               dither_seed=7)
    names = ("science", "reference", "difference")

    def hdu(plane, extname=None, lossy=True):
        h = header.copy()
        if extname:
            h["EXTNAME"] = extname
        return fits.CompImageHDU(plane, header=h, tile_shape=plane.shape, **how) if lossy \
            else fits.PrimaryHDU(plane, header=h)

    lossy = Table({c: _cells([_hdul_bytes(fits.HDUList([fits.PrimaryHDU(), hdu(p)]))])
                   for c, p in zip(names, data)})
    plain = Table({c: _cells([_hdul_bytes(fits.HDUList([hdu(p, lossy=False)]))])
                   for c, p in zip(names, data)})
    fits.HDUList([fits.PrimaryHDU()] + [hdu(p, e) for p, e in zip(data, ("SCI", "REF", "DIFF"))]
                 ).writeto(tmp_path / "t.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.annotate_stamps(lossy, model=rb, progress=False)
        ref = astromorph.annotate_stamps(plain, model=rb, progress=False)
        files = astromorph.predict_files(rb, [tmp_path / "t.fits"], progress=False)
    assert ref["rb_flags"][0] & Flag.CONSTANT, ref["rb_reason"][0]
    assert out["rb_flags"][0] == files["rb_flags"][0] == ref["rb_flags"][0], out["rb_reason"][0]
    assert out["rb_reason"][0] == files["reason"][0]
    if method != -1:  # (NO_DITHER reads the flat field back as one value)
        assert "quantisation step" in out["rb_reason"][0], out["rb_reason"][0]
    np.testing.assert_allclose(out["rb_score"][0], files["rb_score"][0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cells", ["array", "fits"])
def test_band_columns_named_in_another_order_are_scored_as_g_r_i(cells):
    """Galaxy models: columns g, r and i given in another order (``columns=["i", "r",
    "g"]``) are matched to the bands by their names, numeric array columns (stacked) and
    FITS bytes (row by row) alike: the outputs of ``["g", "r", "i"]``, not those of the i
    plane read as g (a redder galaxy than it is)."""
    yy, xx = np.mgrid[:96, :96] - 47.5
    disc = np.exp(-np.hypot(xx, yy / 0.5) / 8)
    rng = np.random.default_rng(0)
    planes = [(a * disc + rng.normal(0, 0.01, disc.shape)).astype(np.float32)
              for a in (0.5, 2.0, 4.0)]
    table = Table({b: p[None] if cells == "array" else _cells([_fits_bytes(p)])
                   for b, p in zip("gri", planes)})
    outs = [astromorph.annotate_stamps(table, model="morphology", columns=cols,
                                       progress=False) for cols in (list("gri"), list("irg"))]
    probs = [c for c in outs[0].colnames if c.startswith("morph_p_")]
    assert probs and not outs[0]["morph_flags"][0]
    for c in probs:
        np.testing.assert_allclose(outs[1][c], outs[0][c], rtol=0, atol=1e-6, err_msg=c)


def test_band_cells_of_different_units_name_the_first_band_as_a_file_does(tmp_path):
    """Galaxy models: g, r and i columns of FITS bytes whose headers say different units
    (g MAGZERO=30, i BUNIT='count') name the first band's in the row's reason, as
    predict_files names the first HDU's of a file holding those three HDUs."""
    planes = [_galaxy(seed=k) for k in range(3)]
    heads = [fits.Header([("MAGZERO", 30.0)]), fits.Header(), fits.Header([("BUNIT", "count")])]
    table = Table({b: _cells([_hdul_bytes(fits.HDUList([fits.PrimaryHDU(p, header=h)]))])
                   for b, p, h in zip("gri", planes, heads)})
    hdus = [fits.PrimaryHDU()]
    for b, p, h in zip("gri", planes, heads):
        hdus.append(fits.ImageHDU(p, header=fits.Header([*h.cards, ("FILTER", b)])))
    fits.HDUList(hdus).writeto(tmp_path / "gri.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.annotate_stamps(table, model="morphology", progress=False)
        files = astromorph.predict_files("morphology", [tmp_path / "gri.fits"], progress=False)
    assert files["reason"][0].startswith("header gives MAGZERO=30 (HDU 1), not SDSS")
    assert out["morph_reason"][0] == files["reason"][0].replace("(HDU 1)", "(g)")
    assert out["morph_flags"][0] == files["morph_flags"][0]


def test_fits_cells_naming_one_triplet_member_are_read_as_files_for_real_bogus(rb, tmp_path):
    """``real-bogus``: FITS bytes whose planes name one triplet member only (three HDUs of
    which the last is EXTNAME DIFFERENCE; a cube with PLANE3 = 'DIFFERENCE') are a triplet
    missing its other members (`Flag.MISSING_BAND`, unscored), as predict_files reads a
    file of those bytes for a triplet model, not three unnamed planes scored in order."""
    x = _triplets(1)[0]
    cells = [_hdul_bytes(fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(x[0], name="A"),
                                       fits.ImageHDU(x[1], name="B"),
                                       fits.ImageHDU(x[2], name="DIFFERENCE")])),
             _hdul_bytes(fits.HDUList([fits.PrimaryHDU(x, header=fits.Header(
                 [("PLANE3", "DIFFERENCE")]))]))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusableInputWarning)
        out = astromorph.annotate_stamps(Table({"stamp": _cells(cells)}), model=rb,
                                         progress=False)
        files = astromorph.predict_files(rb, _as_files(tmp_path, cells), progress=False)
    assert list(out["rb_flags"]) == list(files["rb_flags"]) == [Flag.MISSING_BAND] * 2
    assert out["rb_score"].mask.all()
    for said, file_said in zip(out["rb_reason"], files["reason"]):
        assert said == f"stamp: {file_said}" and "no science or reference image" in said


def test_8bit_band_cells_are_bands_not_grey_pictures():
    """Galaxy models: 8-bit g, r and i cells (object columns, read row by row) are three
    bands, as the same numeric array columns (stacked) are, not three grey pictures (only a
    single column of 8-bit grey images is a grey picture): the same flags, score and
    reason."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:64, :64] - 31.5
    disc = np.exp(-np.hypot(xx, yy) / 6)
    planes = [np.clip(a * disc + rng.normal(10, 2, disc.shape), 0, 255).astype(np.uint8)
              for a in (60, 120, 200)]
    outs = [astromorph.annotate_stamps(t, model="morphology", crop_fraction=1.0,
                                       progress=False)
            for t in (Table({b: p[None] for b, p in zip("gri", planes)}),
                      Table({b: _cells([p]) for b, p in zip("gri", planes)}))]
    assert not outs[1]["morph_flags"][0] & Flag.unusable(), outs[1]["morph_reason"][0]
    assert outs[1]["morph_flags"][0] == outs[0]["morph_flags"][0]
    assert outs[1]["morph_reason"][0] == outs[0]["morph_reason"][0]
    np.testing.assert_allclose(outs[1]["morph_p_spiral"], outs[0]["morph_p_spiral"],
                               rtol=0, atol=1e-6)


def test_blocks_of_rows_fill_batches_of_batch_size_across_blocks(rb, monkeypatch):
    """Rows added block by block are scored ``batch_size`` at a time across the blocks: 6
    rows in blocks of 3 with ``batch_size=2`` make 3 model calls of 2, not a short call at
    the end of each block, and the scores are those of the rows alone."""
    from astromorph import _stamp_table

    x = _triplets(6)
    monkeypatch.setattr(_stamp_table, "_BLOCK_ROWS", 3)
    calls = []
    run = rb._run
    monkeypatch.setattr(rb, "_run", lambda batch, session=None:
                        calls.append(len(batch)) or run(batch, session))
    out = astromorph.annotate_stamps(Table({"stamps": x}), model=rb, batch_size=2)
    assert calls == [2, 2, 2]
    assert_scores(out["rb_score"], _direct(rb, x), rtol=0, atol=1e-6)


def test_fits_bytes_of_two_named_bands_score_the_band_annotate_takes():
    """A cell of FITS bytes holding a g, r cube (BAND1 = 'g', BAND2 = 'r') for a galaxy
    model: scored on band r alone, as annotate takes it and predict_files reads such a file,
    the row's reason saying so; equal to a cell of the r plane alone. Two unnamed planes are
    still refused (which would be which?)."""
    rng = np.random.default_rng(3)
    g, r = (rng.normal(1, 0.3, (64, 64)).astype(np.float32) for _ in range(2))

    def cube(planes, **cards):
        hdu = fits.PrimaryHDU(np.stack(planes))
        hdu.header.update(cards)
        buf = io.BytesIO()
        hdu.writeto(buf)
        return buf.getvalue()

    cells = _cells([cube([g, r], BAND1="g", BAND2="r"), _fits_bytes(r, gz=False),
                    cube([g, r])])
    with pytest.warns(UnusableInputWarning, match="1 of 3 row"):
        out = astromorph.annotate_stamps(Table({"stamp": Column(cells)}), model="morphology")
    assert out["morph_flags"][0] == out["morph_flags"][1], out["morph_reason"][0]
    assert "bands g, r: no i band: band r scored alone" in out["morph_reason"][0]
    for c in out.colnames:
        if c.startswith("morph_p_"):
            assert out[c][0] == pytest.approx(out[c][1], abs=1e-6), c
    assert out["morph_flags"][2] == Flag.MISSING_BAND and "2 planes" in out["morph_reason"][2]

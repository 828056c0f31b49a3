"""`expand_inputs` and `read_file`: globs, folders, names and magic bytes.

Each test here was written against a mutant of ``astromorph/_readers/_inputs.py`` that the
rest of the suite let pass (a mutation-testing round): it fails on that mutant and passes on
the code as it is. No model is loaded.
"""
import builtins
import gzip

import numpy as np
import pytest
from astropy.io import fits

from astromorph._readers import _inputs, expand_inputs, read_file
from astromorph.exceptions import InputNotFoundError, InvalidArgumentTypeError

from synthetic_alerts import fits_bytes, triplet

FITS = fits_bytes(triplet(n=8))


def names(paths):
    return [p.name for p in paths]


def test_bracket_pattern_is_a_glob(tmp_path):
    """``img[12].fits`` is a glob pattern (``[...]`` as ``*`` and ``?``), not a missing
    file."""
    for name in ("img1.fits", "img2.fits", "img3.fits"):
        (tmp_path / name).write_bytes(FITS)
    assert names(expand_inputs(str(tmp_path / "img[12].fits"))) == ["img1.fits", "img2.fits"]


def test_glob_matches_are_sorted(tmp_path):
    """A pattern's matches come sorted, whatever order the folder lists them in."""
    wanted = [f"s{i:02d}.fits" for i in range(30)]
    for name in reversed(wanted):
        (tmp_path / name).write_bytes(FITS)
    assert names(expand_inputs(str(tmp_path / "s*.fits"))) == wanted


def test_double_star_recurses(tmp_path):
    """``**`` matches any depth of folders, not one."""
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "x.fits").write_bytes(FITS)
    (tmp_path / "a" / "y.fits").write_bytes(FITS)
    assert names(expand_inputs(str(tmp_path / "**" / "*.fits"))) == ["x.fits", "y.fits"]


def test_glob_leaves_out_folders(tmp_path):
    """A pattern that matches a folder as well as files gives the files only (the folder
    would be one more, unreadable, input)."""
    (tmp_path / "sub.fits").mkdir()
    (tmp_path / "a.fits").write_bytes(FITS)
    assert names(expand_inputs(str(tmp_path / "*.fits"))) == ["a.fits"]


def test_folder_leaves_out_its_subfolders(tmp_path):
    """A folder's sub-folder named like an input (``sub.fits``) is not an input."""
    (tmp_path / "sub.fits").mkdir()
    (tmp_path / "a.fits").write_bytes(FITS)
    assert names(expand_inputs(tmp_path)) == ["a.fits"]


def test_folder_takes_extensions_in_any_case(tmp_path):
    """``A.FITS`` or ``C.FZ`` (as some archives and cameras name files) is picked up from a
    folder as ``a.fits`` is; so is ``d.fz`` (a tile-compressed image)."""
    for name in ("A.FITS", "b.Fit", "C.FZ", "d.fz"):
        (tmp_path / name).write_bytes(FITS)
    (tmp_path / "notes.TXT").write_text("not an input")
    assert names(expand_inputs(tmp_path)) == ["A.FITS", "C.FZ", "b.Fit", "d.fz"]


def test_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """``~`` is the home folder in a file, a folder and a pattern (quoted in a shell, or
    given from Python)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.fits").write_bytes(FITS)
    expected = [tmp_path / "d" / "a.fits"]
    assert expand_inputs("~/d/a.fits") == expected
    assert expand_inputs("~/d") == expected
    assert expand_inputs("~/d/*.fits") == expected


def test_a_file_and_a_link_to_it_are_one_input(tmp_path):
    """Duplicates are the same file, however named: a symbolic link to a file already given
    adds no row (it would be scored, and its header written, twice)."""
    (tmp_path / "a.fits").write_bytes(FITS)
    (tmp_path / "link.fits").symlink_to(tmp_path / "a.fits")
    assert names(expand_inputs([tmp_path / "a.fits", tmp_path / "link.fits"])) == ["a.fits"]


def test_extension_disagreeing_in_capitals_is_named(tmp_path):
    """The ending is compared whatever its case: FITS bytes in ``x.AVRO`` are read as FITS,
    and the row says the name said Avro."""
    (tmp_path / "x.AVRO").write_bytes(FITS)
    [stamp] = read_file(tmp_path / "x.AVRO")
    assert stamp.usable and stamp.misnamed and "'.avro' says Avro" in stamp.misnamed


def test_gzipped_fits_named_fits_is_no_disagreement(tmp_path):
    """A gzip-compressed FITS file named ``x.fits`` is FITS, as its name says: no note of
    a disagreement (compressed and plain FITS are one format)."""
    (tmp_path / "x.fits").write_bytes(gzip.compress(FITS))
    [stamp] = read_file(tmp_path / "x.fits")
    assert stamp.usable and stamp.misnamed is None
    assert not any("content is" in r for r in stamp.reason), stamp.reason


def test_numpy_archive_in_capitals_is_named(tmp_path):
    """``STAMPS.NPZ`` (a zip archive) is said to be a NumPy file, as ``stamps.npz`` is, not
    read as zip-compressed FITS."""
    with open(tmp_path / "STAMPS.NPZ", "wb") as f:  # (a name np.savez would extend)
        np.savez(f, X=np.zeros((1, 3, 8, 8), np.float32))
    [stamp] = read_file(tmp_path / "STAMPS.NPZ")
    assert not stamp.usable
    assert any("NumPy array file" in r for r in stamp.reason), stamp.reason


def test_disagreement_is_the_first_reason(tmp_path):
    """Where the bytes say one format and the name another and the file cannot be read, the
    disagreement (the likely cause) opens the reason."""
    (tmp_path / "broken.fits").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    [stamp] = read_file(tmp_path / "broken.fits")
    assert not stamp.usable and len(stamp.reason) > 1
    assert stamp.reason[0].startswith("content is PNG"), stamp.reason



def test_bytes_input_is_refused_naming_the_bytes():
    """A path given as bytes is refused by name (``b'a.fits'``), not iterated into its
    byte values and refused as ``input 97``."""
    with pytest.raises(InvalidArgumentTypeError, match=r"b'a\.fits'"):
        expand_inputs(b"a.fits")


def test_folder_leaves_out_a_file_without_extension_it_cannot_open(tmp_path, monkeypatch):
    """A file without extension is taken from a folder only when its first bytes are of an
    accepted format: one that cannot be opened is not confirmed, and left out."""
    (tmp_path / "alert-1").write_bytes(FITS)
    (tmp_path / "alert-2").write_bytes(FITS)
    locked = str(tmp_path / "alert-2")

    def fake_open(file, *args, **kwargs):
        if str(file) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(_inputs, "open", fake_open, raising=False)
    assert names(expand_inputs(tmp_path)) == ["alert-1"]
    (tmp_path / "alert-1").unlink()
    with pytest.raises(InputNotFoundError, match="holds no supported files"):
        expand_inputs(tmp_path)


def test_empty_file_says_it_is_empty(tmp_path):
    """An empty ``x.fits`` is flagged as an empty file, not read as a broken FITS file."""
    (tmp_path / "x.fits").write_bytes(b"")
    [stamp] = read_file(tmp_path / "x.fits")
    assert not stamp.usable and stamp.reason == ["empty file"]


def test_unreadable_misnamed_file_is_not_marked_misnamed(tmp_path):
    """``misnamed`` is for a usable stamp read by its content: a misnamed file that cannot be
    read keeps the disagreement in its reason only."""
    (tmp_path / "broken.fits").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    [stamp] = read_file(tmp_path / "broken.fits")
    assert not stamp.usable and stamp.misnamed is None
    assert stamp.reason[0].startswith("content is PNG"), stamp.reason


def test_pixel_scale_is_read_only_when_wanted(tmp_path):
    """``want_scale=False`` skips the WCS: no pixel scale; the default reads it."""
    (tmp_path / "x.fits").write_bytes(fits_bytes(triplet(n=8), scale=0.25))
    [wanted] = read_file(tmp_path / "x.fits")
    [skipped] = read_file(tmp_path / "x.fits", want_scale=False)
    assert wanted.pixel_scale == pytest.approx(0.25) and skipped.pixel_scale is None


def test_triplet_hint_makes_one_named_role_a_triplet(tmp_path):
    """One triplet role among the HDU names (``SCI`` beside a band ``R``) is a triplet with
    members missing for a triplet model (``triplet_hint=True``), and bands otherwise."""
    path = tmp_path / "sci_r.fits"
    planes = triplet(n=8)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(planes[0], name="SCI"),
                  fits.ImageHDU(planes[1], name="R")]).writeto(path)
    [bands] = read_file(path)
    assert bands.kind == "bands" and bands.bands == (None, "r")
    [hinted] = read_file(path, triplet_hint=True)
    assert not hinted.usable
    assert "no reference or difference image" in hinted.reason[0], hinted.reason

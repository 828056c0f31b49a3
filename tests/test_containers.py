"""One image in every container astromorph reads gives the results of the plain file.

astromorph reads pixel bytes itself at file offsets in three places: `SkyImage._read_whole`
(one read call at the HDU's data offset, for a dense catalogue on a memory-mapped image),
the loader and `_StreamRows` of a gzipped, bzip2 or xz file (the data offset in the
decompressed stream) and the fast FITS parser of `predict_files` (offsets into the FITS
bytes). Each is reached here through every container and layout of the same image: a zip
archive once gave the archive's own bytes, a Stokes cube the wrong plane.
"""
import bz2
import gc
import gzip
import importlib.util
import io
import lzma
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import astromorph
from astromorph._cutouts import SkyImage
from astromorph.exceptions import (AmbiguousInputWarning, InputError, MissingDependencyError,
                                   UnusableInputWarning)

from conftest import without_extend
from test_annotate import blobs, catalogue, make_optical_model, sky_wcs

N = 64  # image side (pixels): 4096 pixels, 256 samples a source (16 x 16 stamps)
SCALING = ("BSCALE", "BZERO", "BLANK")
COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
            "zip0": zipfile.ZIP_STORED, "zip8": zipfile.ZIP_DEFLATED}
#: (layout, compression) of each file: every compression for the image as the primary HDU
#: and beside another image; those whose offsets differ from the plain file's for the others
CONTAINERS = ([(layout, c) for layout in ("primary", "beside") for c in (None, *COMPRESS)]
              + [(layout, c) for layout in ("extension", "stokes", "fpack")
                 for c in (None, "gz", "zip0")])


def _pixels(dtype):
    """``(raw pixels, scaling keywords)`` of the test image as ``dtype`` stores it: blank
    pixels (NaN, BLANK) near one edge, under a source."""
    img = blobs(N, seed=3, count=30)
    if dtype == "float32":
        img[:6, 20:30] = np.nan
        return img, {}
    if dtype == "int16":
        raw = np.round((img - 10.0) / 1e-3).clip(-32767, 32767).astype(np.int16)
        raw[:6, 20:30] = -32768
        return raw, {"BSCALE": 1e-3, "BZERO": 10.0, "BLANK": -32768}
    # uint16: int16 on disk with BZERO = 32768 (astropy writes it so); (the tiny model's
    # stretch saturates above a few tens) a corner of values beyond 32767
    raw = np.round(img * 10).astype(np.uint16)
    raw[-4:, -4:] = 60000
    return raw, {}


def _raw_plane(dtype, header):
    """Raw (unscaled, as on disk) pixels and header of the plain file of ``dtype``."""
    data, scaling = _pixels(dtype)
    hdu = fits.PrimaryHDU(data, header)
    hdu.header.update(scaling)  # (after: astropy drops scaling keywords given with data)
    buf = io.BytesIO()
    hdu.writeto(buf)
    with fits.open(io.BytesIO(buf.getvalue()), do_not_scale_image_data=True) as hdul:
        return buf.getvalue(), np.array(hdul[0].data), hdul[0].header.copy()


def _scaled_as(hdu, header):
    hdu.header.update({k: header[k] for k in SCALING if k in header})
    return hdu


def _layout(layout, raw, header):
    """The FITS bytes of ``raw`` (with ``header``) in ``layout``."""
    image = {k: v for k, v in header.items() if k not in ("SIMPLE", "EXTEND")}
    if layout == "extension":
        hdus = [fits.PrimaryHDU(), _scaled_as(fits.ImageHDU(raw, fits.Header(image)), header)]
    elif layout == "beside":  # the primary HDU holds another image, far away on the sky
        far = sky_wcs(N, crval=(30.0, -40.0)).to_header()
        hdus = [_scaled_as(fits.PrimaryHDU(raw[::-1].copy(), far), header),
                _scaled_as(fits.ImageHDU(raw, fits.Header(image)), header)]
    elif layout == "stokes":  # Stokes U, Q, I: the I plane is the last one
        cube = fits.Header(image)
        cube.update(CTYPE3="STOKES", CRVAL3=3.0, CRPIX3=1.0, CDELT3=-1.0)
        hdus = [_scaled_as(fits.PrimaryHDU(np.stack([raw[::-1], raw[:, ::-1], raw]), cube),
                           header)]
    else:  # fpack: tile-compressed without loss
        kind = dict(compression_type="GZIP_1", quantize_level=0.0) \
            if raw.dtype.kind == "f" else dict(compression_type="RICE_1")
        hdus = [fits.PrimaryHDU(),
                _scaled_as(fits.CompImageHDU(raw, fits.Header(image), **kind), header)]
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


def _compressed(data, how, name):
    if how is None:
        return data
    if how.startswith("zip"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", COMPRESS[how]) as archive:
            archive.writestr(name, data)
        return buf.getvalue()
    return COMPRESS[how](data)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_optical_model(tmp_path_factory.mktemp("containers") / "opt")


def _files(tmp_path, dtype):
    """The plain file of ``dtype`` and the same image in every container: names to paths."""
    w = sky_wcs(N, rot=15)
    plain, raw, header = _raw_plane(dtype, w.to_header())
    files = {"plain": tmp_path / f"{dtype}.fits"}
    files["plain"].write_bytes(plain)
    for layout, how in CONTAINERS:
        data = plain if layout == "primary" else _layout(layout, raw, header)
        suffix = ".fits.fz" if layout == "fpack" else ".fits"
        name = f"{dtype}-{layout}{suffix}"
        if how is not None:
            name += f".{how[:3]}"
        files[layout, how] = tmp_path / f"{how or 'none'}-{name}"
        files[layout, how].write_bytes(_compressed(data, how, name))
    return w, files


def _columns(table):
    """The result columns, as arrays (masked values filled: compared with their mask)."""
    return {c: (np.ma.getdata(table[c]), np.ma.getmaskarray(table[c])) for c in table.colnames}


def _assert_same(out, expected, label):
    assert out.colnames == expected.colnames, label
    got, want = _columns(out), _columns(expected)
    for c in want:
        np.testing.assert_array_equal(got[c][1], want[c][1], err_msg=f"{label} {c} mask")
        np.testing.assert_array_equal(got[c][0], want[c][0], err_msg=f"{label} {c}")


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint16"])
def test_annotate_gives_the_plain_files_results_in_every_container(model, tmp_path,
                                                                    monkeypatch, dtype):
    """A dense catalogue (the image read whole by one read call, `SkyImage._read_whole`,
    checked to be taken for the plain file) and a sparse one (the pixels under the stamps)
    give bit for bit the probabilities and flags of the plain file, whatever the container
    (gzip, bzip2, xz, zip stored or deflated, fpack, fpack in gzip or zip) and layout (the
    image in an extension, beside another image in the primary HDU, the last plane of a
    Stokes cube), given as a str or a pathlib.Path."""
    w, files = _files(tmp_path, dtype)
    rng = np.random.default_rng(7)
    dense = catalogue(w, np.r_[rng.uniform(2, N - 3, (20, 2)),  # some near and over edges
                               [[0, 10], [N - 1, 30], [25, -1], [40, N], [24, 3], [27, 1]]])
    sparse = catalogue(w, [(25, 2), (1, 33), (40, 40)])
    whole = []
    read_whole = SkyImage._read_whole
    monkeypatch.setattr(SkyImage, "_read_whole",
                        lambda self: whole.append(self.name) or read_whole(self))

    def annotate(cat, path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (sources off the image, compressed files)
            return astromorph.annotate(cat, path, model=model)

    for label, cat in (("dense", dense), ("sparse", sparse)):
        whole.clear()
        expected = annotate(cat, str(files["plain"]))
        assert whole == ([f"{files['plain']}[0]"] if label == "dense" else []), whole
        blank = (np.asarray(expected["opt_flags"]) & int(astromorph.Flag.BLANK)).any()
        assert blank == (dtype != "uint16")  # (NaN, BLANK pixels under sources)
        for k, key in enumerate(files):
            path = files[key] if k % 2 else str(files[key])  # a pathlib.Path or a str
            _assert_same(annotate(cat, path), expected, f"{label} {key}")


def test_annotate_of_unix_compress_without_uncompresspy_is_a_missing_dependency(tmp_path,
                                                                              capsys):
    """A ``.fits.Z`` file (Unix compress), which astropy reads with the optional package
    uncompresspy, is a `MissingDependencyError` naming the file and the package where it is
    not installed (astropy's ModuleNotFoundError escaped as it was, a traceback from the
    command line); `predict_files` gives a BAD_INPUT row (a format it does not read)."""
    if importlib.util.find_spec("uncompresspy") is not None:
        pytest.skip("uncompresspy is installed")
    from astromorph import cli

    model = make_optical_model(tmp_path / "opt")
    w = sky_wcs(N)
    catalogue(w, [(30, 30)]).write(tmp_path / "cat.ecsv")
    path = tmp_path / "image.fits.Z"
    path.write_bytes(b"\x1f\x9d\x90" + b"SIMPLE  =" * 40)  # (astropy stops at the magic)
    with pytest.raises(MissingDependencyError, match=r"image\.fits\.Z.*uncompresspy"):
        astromorph.annotate(catalogue(w, [(30, 30)]), path, model=model)
    assert cli.main(["annotate", str(tmp_path / "cat.ecsv"), "-i", str(path), "-m",
                     str(tmp_path / "opt"), "-o", str(tmp_path / "out.ecsv")]) == 2
    err = capsys.readouterr().err
    assert "image.fits.Z" in err and "uncompresspy" in err and "Traceback" not in err, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.predict_files(model, [path], progress=False)
    assert out["opt_flags"][0] & int(astromorph.Flag.BAD_INPUT)


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint16"])
def test_predict_files_gives_the_plain_files_results_in_every_container(model, tmp_path,
                                                                         dtype):
    """`predict_files` reads the plain file, one compressed by gzip, bzip2 or xz or in a zip
    archive (stored or deflated), one image extension, a Stokes cube's I plane and fpack
    files (plain, gzipped, in a zip archive) to the same probabilities, flags and reasons.
    FITS bytes in `annotate_stamps` likewise (compressed or not). (bzip2, xz and zip were
    rows flagged BAD_INPUT, 'unrecognised file format', while `annotate` read them.)"""
    _, files = _files(tmp_path, dtype)
    keys = [k for k in files if k == "plain" or k[0] != "beside"]  # (beside: two bands)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = astromorph.predict_files(model, [files[k] for k in keys], progress=False)
        stamps = astromorph.annotate_stamps(
            Table({"stamp": [files[k].read_bytes() for k in keys]}), model=model)
    assert len(out) == len(stamps) == len(keys)
    assert {k[1] for k in keys if k != "plain"} == {None, *COMPRESS}
    for table in (out, stamps):
        table = table[[c for c in table.colnames if c not in ("source", "path", "stamp")]]
        for k, key in enumerate(keys):
            _assert_same(table[k:k + 1], table[0:1], str(key))
    assert not np.ma.getmaskarray(out["opt_p_a"])[0]
    assert not out["opt_flags"][0] and not out["reason"][0]


def _zip_of(members):
    """A zip archive holding ``members`` (name: bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _rows(model, paths, monkeypatch, large):
    """`predict_files` of ``paths``, read as files over the fast reader's 16 MB (``large``:
    by astropy, a compressed one's primary header checked first) or under it."""
    from astromorph._readers import _fits

    if large:
        monkeypatch.setattr(_fits, "_FAST_MAX_BYTES", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return astromorph.predict_files(model, paths, progress=False)


@pytest.mark.parametrize("large", [False, True], ids=["in-memory", "over-16MB"])
def test_predict_files_reads_compressed_files_whatever_their_size_and_name(model, tmp_path,
                                                                         monkeypatch, large):
    """A file over 16 MB (the fast reader's limit: then read by astropy) is read as one
    under it: a bzip2, xz or zip file named ``.fits`` was handed to astropy, which reads it
    by content, when large, while a small one was 'not a FITS file (no SIMPLE card)'; now
    both are read, to the plain file's results (a name that says another format gets the
    usual note), and ``.fits.bz2`` etc. are picked up from a folder."""
    _, files = _files(tmp_path, "float32")
    plain = files["plain"].read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()
    paths = [files["plain"]]
    for how in COMPRESS:
        for name in (f"a-{how}.fits", f"b-{how}.fits.{how[:3]}"):
            paths.append(folder / name)
            paths[-1].write_bytes(_compressed(plain, how, "x.fits"))
    out = _rows(model, paths, monkeypatch, large)
    table = out[[c for c in out.colnames if c not in ("source", "path")]]
    for k, path in enumerate(paths):
        _assert_same(table[k:k + 1], table[0:1], path.name)
    assert not out["opt_flags"][0] and not np.ma.getmaskarray(out["opt_p_a"])[0]
    assert sorted(astromorph.predict_files(model, folder, progress=False)["source"]) \
        == sorted(map(str, paths[1:]))


@pytest.mark.parametrize("large", [False, True], ids=["in-memory", "over-16MB"])
def test_predict_files_refuses_broken_archives_in_a_row(model, tmp_path, monkeypatch, large):
    """A corrupt or truncated bzip2, xz or zip file (gzip as before), a zip archive of two
    files or none, and an archive that holds no FITS file are each one row flagged
    BAD_INPUT whose reason names the problem, never an exception, small or large; FITS
    bytes in `annotate_stamps` likewise."""
    _, files = _files(tmp_path, "float32")
    cases = _broken_archives(files["plain"].read_bytes())
    paths = []
    for name, (data, _) in cases.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    out = _rows(model, paths, monkeypatch, large)
    assert list(out["opt_flags"]) == [int(astromorph.Flag.BAD_INPUT)] * len(cases)
    for reason, (name, (data, words)) in zip(out["reason"], cases.items()):
        assert reason.startswith(words.format(name=name)), (name, reason)
    if not large:
        with pytest.warns(UnusableInputWarning, match="10 of 10 row"):
            stamps = astromorph.annotate_stamps(
                Table({"stamp": [data for data, _ in cases.values()]}), model=model)
        assert list(stamps["opt_flags"]) == [int(astromorph.Flag.BAD_INPUT)] * len(cases)
        for reason, (name, (data, words)) in zip(stamps["opt_reason"], cases.items()):
            words = words.format(name=name).replace(f" in FITS file {name}", "")
            if name == "gz-truncated.fits.gz":  # (the NUL bytes after it inflate to more
                # bytes than the HDU's data: only its stream is said cut short)
                words = ("truncated gzip stream: Compressed file ended before the "
                         "end-of-stream marker was reached")
            if name in ("bz2-truncated.fits.bz2", "xz-truncated.fits.xz"):
                # (the table's fixed-width cell pads the cut stream with NUL bytes, which
                # bzip2's and xz's decompressors take for bad data, not for its end)
                words = ("corrupt bzip2 stream: Invalid data stream" if name.startswith("bz2")
                         else "corrupt xz stream: Corrupt input data")
            assert words in reason, reason


def _half(data):
    return data[:len(data) // 2]


def _broken_archives(plain):
    """File name: (bytes, the start of the reason, ``{name}`` the file's) of broken archives
    of the FITS ``plain``: a stream cut short is said so in the same words small or large
    (a small one's were "corrupt or truncated xz: incomplete or truncated stream"), as a
    stream cut inside an HDU's data where the bytes before the cut show it (gzip, xz: the
    HDU named; a bzip2 file this small is one block, none of it decompressed)."""
    cut = "truncated FITS file {name}: the header of HDU 0 (primary) gives "
    return {
        "gz-truncated.fits.gz": (_half(gzip.compress(plain)), cut),
        "bz2-truncated.fits.bz2": (_half(bz2.compress(plain)),
                                   "truncated bzip2 stream in FITS file {name}: Compressed "
                                   "file ended before the end-of-stream marker was reached"),
        "bz2-corrupt.fits.bz2": (b"BZh9" + bytes(range(256)) * 20, "corrupt bzip2 stream"),
        "xz-truncated.fits.xz": (_half(lzma.compress(plain)), cut),
        "zip-truncated.fits.zip": (_half(_zip_of({"a.fits": plain})),
                                   "corrupt or truncated zip"),
        "zip-two.fits.zip": (_zip_of({"a.fits": plain, "b.fits": plain}),
                             "zip archive holds 2 files ('a.fits', 'b.fits'); expected one "
                             "FITS file"),
        "zip-none.fits.zip": (_zip_of({}), "zip archive holds 0 files; expected one FITS "
                              "file"),
        "zip-folder.fits.zip": (_zip_of({"d/": b""}), "zip archive holds 0 files; expected "
                                "one FITS file"),
        "bz2-text.fits.bz2": (bz2.compress(b"hello " * 2000), "bzip2-compressed data, not FITS"),
        "xz-empty.fits.xz": (lzma.compress(b""), "xz-compressed file that holds no data"),
    }


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint16"])
def test_parse_fits_bytes_reads_every_compression_as_the_file(tmp_path, dtype):
    """`parse_fits_bytes` (the cutouts of alert packets) reads the bytes of a gzip, bzip2,
    xz or zip file (stored or deflated) of every layout to the pixels, pixel scale and
    header facts of the plain bytes, bit for bit, as `read_file` reads the files; broken
    archives are a `ValueError` whose message starts as the file's BAD_INPUT reason does
    (which names the file in a corrupt stream's: "corrupt bzip2 stream in FITS file ...").
    (It read gzip only: bzip2, xz and zip bytes were 'stamp is not FITS'.)"""
    from astromorph._readers import parse_fits_bytes, read_file

    _, files = _files(tmp_path, dtype)
    want = parse_fits_bytes(files["plain"].read_bytes(), return_facts=True)
    (stamp,) = read_file(files["plain"])
    np.testing.assert_array_equal(want[0], stamp.data[0])
    keys = [k for k in files if k != "plain" and k[0] != "beside"]  # (beside: another image)
    assert {k[1] for k in keys} == {None, *COMPRESS}
    for key in keys:
        data, scale, facts = parse_fits_bytes(files[key].read_bytes(), return_facts=True)
        assert data.dtype == want[0].dtype and scale == want[1] and facts == want[2], key
        np.testing.assert_array_equal(data, want[0], err_msg=str(key))
    for name, (data, words) in _broken_archives(files["plain"].read_bytes()).items():
        (stamp,) = read_file(_written(tmp_path / name, data))
        with pytest.raises(ValueError) as info:
            parse_fits_bytes(data)
        assert str(info.value).startswith(words.format(name=name).replace(
            f"FITS file {name}", "FITS data").replace(" in FITS data:", ":")), \
            (name, str(info.value))
        # the file's reason, word for word, but for the file named in a corrupt (truncated)
        # stream's, or a cut HDU's ("the file holds" its bytes, "the bytes hold")
        assert [r.replace(f" in FITS file {name}:", ":").replace(f"FITS file {name}:", "FITS "
                          "data:").replace("the file holds", "the bytes hold")
                for r in stamp.reason] == [str(info.value)], name


def _written(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_annotate_of_hdulists_gives_the_plain_files_results(model, tmp_path, dtype):
    """HDULists the caller opened (scaled by astropy or not, memory-mapped or not) of the
    containers and layouts whose offsets differ, and an HDU of native-endian pixels in
    memory, give the plain file's results for a dense catalogue (no read by offset: an
    HDUList given is read through its arrays)."""
    w, files = _files(tmp_path, dtype)
    cat = catalogue(w, np.random.default_rng(7).uniform(-1, N, (26, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = astromorph.annotate(cat, str(files["plain"]), model=model)
        for key in ("plain", ("primary", "gz"), ("primary", "zip0"), ("beside", "gz"),
                    ("stokes", None), ("fpack", "gz")):
            for how in ({}, {"do_not_scale_image_data": True}, {"memmap": False}):
                with fits.open(files[key], **how) as hdul:
                    _assert_same(astromorph.annotate(cat, hdul, model=model), expected,
                                 f"{key} {how}")
        with fits.open(files["plain"]) as hdul:
            native = fits.PrimaryHDU(hdul[0].data.astype(hdul[0].data.dtype.newbyteorder("=")),
                                     hdul[0].header)
        assert native.data.dtype.isnative
        _assert_same(astromorph.annotate(cat, native, model=model), expected, "native")


def test_annotate_refuses_file_objects_and_bytes(model, tmp_path):
    """An open file or FITS bytes given as an image are an `InputError` (annotate reads
    paths, HDUs, HDULists, NDData and (array, WCS) pairs)."""
    _, files = _files(tmp_path, "float32")
    cat = catalogue(sky_wcs(N, rot=15), [(30, 30)])
    with open(files["plain"], "rb") as f:
        for image in (f, files["plain"].read_bytes()):
            with pytest.raises(InputError, match="cannot use"):
                astromorph.annotate(cat, image, model=model)


def _with_cut_mask(image, w, layout, *, extend=True):
    """FITS bytes of ``image`` (WCS ``w``; in the primary HDU, or in an extension after an
    empty primary) followed by a MASK extension (as Rubin's images have) that they end
    1000 bytes inside of, and the label of that HDU; without ``extend``, the primary
    header has no EXTEND card (`without_extend`)."""
    mask = fits.ImageHDU(np.zeros((64, 64), np.int32), name="MASK")
    hdus = [fits.PrimaryHDU(image, w.to_header()), mask] if layout == "primary" else \
        [fits.PrimaryHDU(), fits.ImageHDU(image, w.to_header()), mask]
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    start = len(buf.getvalue()) - 17280  # the MASK's data: 16384 bytes, padded to 6 blocks
    blob = buf.getvalue()[:start + 1000]
    return blob if extend else without_extend(blob), f"HDU {len(hdus) - 1}, EXTNAME 'MASK'"


def _refused_alike(model, path, w, label, monkeypatch=None):
    """`annotate` of ``path`` is an `InputError` in the words of `predict_files`' reason
    for it (the file named as it was given), which names the cut HDU ``label``; the reason
    is the same whether the stamp reader reads the file in memory or (``monkeypatch``: its
    limit lowered) through astropy."""
    from astromorph._readers import read_file

    (stamp,) = read_file(path)
    assert stamp.reason == [f"truncated FITS file {path.name}: the header of {label} gives "
                            "16384 bytes of data, the file holds 1000"], stamp.reason
    if monkeypatch is not None:
        with monkeypatch.context() as m:
            m.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
            assert read_file(path)[0].reason == stamp.reason
    words = stamp.reason[0].replace(path.name, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (compressed files are decompressed whole: noted)
        with pytest.raises(InputError) as info:
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value) == words


@pytest.mark.parametrize("extend", [True, False])
@pytest.mark.parametrize("layout", ["primary", "extension"])
@pytest.mark.parametrize("how", [None, *COMPRESS])
def test_annotate_refuses_a_truncated_mask_in_every_container(model, tmp_path, monkeypatch,
                                                              how, layout, extend):
    """An image whose MASK extension the file ends inside of: `annotate` refuses it in the
    words `predict_files` gives, whatever the container. A gzip, bzip2, xz or zip file of it
    gave the image without a word (astropy does not read the MASK's data, nor knows the size
    of a compressed stream), where the plain file was refused. Without an EXTEND card in
    the primary header (``extend`` False), `predict_files`' reader of a file under 16 MB
    gave the image without a word, where `annotate` refused it."""
    w = sky_wcs(N, rot=15)
    blob, label = _with_cut_mask(blobs(N, seed=3, count=30), w, layout, extend=extend)
    path = tmp_path / f"cut.fits{'' if how is None else '.' + how[:3]}"
    path.write_bytes(_compressed(blob, how, "cut.fits"))
    _refused_alike(model, path, w, label, monkeypatch)


@pytest.mark.parametrize("large", [False, True])
def test_annotate_and_predict_files_read_the_extensions_of_a_file_without_extend(
        model, tmp_path, monkeypatch, large):
    """A g image in the primary HDU, whose header has no EXTEND card, and an r image in an
    extension: `annotate` reads both (astropy reads extensions whatever EXTEND says), as it
    does with EXTEND = T, and so does `predict_files`, for a file under 16 MB as over it
    (``large``: the limit lowered). Its fast reader of a small file read the g image
    alone, without a word, where a larger file, and `annotate`, had the g and r bands: now
    both files are scored, at either size, on the band `annotate` takes from such a pair (r,
    `single_band`), the choice in the row's reason."""
    w = sky_wcs(N, rot=15)
    hdus = [fits.PrimaryHDU(blobs(N, seed=3, count=30), w.to_header()),
            fits.ImageHDU(blobs(N, seed=4, count=30), w.to_header())]
    for hdu, band in zip(hdus, "gr"):
        hdu.header["FILTER"] = band
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    (tmp_path / "extend.fits").write_bytes(buf.getvalue())
    (tmp_path / "none.fits").write_bytes(without_extend(buf.getvalue()))
    if large:
        monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    cat = catalogue(w, [(30, 30)])
    with pytest.warns(AmbiguousInputWarning, match=r"bands \['g', 'r'\] given; using band 'r'"):
        ref = astromorph.annotate(cat, str(tmp_path / "extend.fits"), model=model)
    with pytest.warns(AmbiguousInputWarning, match=r"bands \['g', 'r'\] given; using band 'r'"):
        got = astromorph.annotate(cat, str(tmp_path / "none.fits"), model=model)
    assert got["opt_flags"][0] == ref["opt_flags"][0] == 0
    assert got["opt_p_a"][0] == pytest.approx(ref["opt_p_a"][0], abs=1e-6)
    with pytest.warns(AmbiguousInputWarning, match="read by assumption"):
        table = astromorph.predict_files(model, tmp_path)
    for r in table:
        assert r["opt_flags"] == 0, r["source"]
        assert "band r scored alone" in r["reason"], r["reason"]
    assert table["opt_p_a"][0] == pytest.approx(table["opt_p_a"][1], abs=1e-6)


def test_annotate_refuses_a_truncated_mask_of_a_gzipped_file_over_16_mb(model, tmp_path):
    """The same with a real .fits.gz over 16 MB (random pixels gzip hardly shrinks)."""
    w = sky_wcs(2300, rot=15)
    image = np.random.default_rng(0).random((2300, 2300), dtype=np.float32)
    blob, label = _with_cut_mask(image, w, "primary")
    path = tmp_path / "big.fits.gz"
    path.write_bytes(gzip.compress(blob, compresslevel=1))
    assert path.stat().st_size > 16 << 20
    _refused_alike(model, path, w, label)


def test_annotate_walks_no_whole_gzip_bzip2_or_xz_stream_again(model, tmp_path, monkeypatch):
    """The truncation walk costs one more decompression of the file (doubling the time of a
    bzip2 file through `annotate`): a whole gzip, bzip2 or xz file, whose stream astropy
    read to the end of its last HDU's data, is not walked; a zip archive's file is (astropy
    extracts it: its reader says nothing of the stream's size), and so is a cut one."""
    import astromorph._images as images

    walked, walk = [], images.truncated_file
    monkeypatch.setattr(images, "truncated_file", lambda name: walked.append(name) or walk(name))
    w = sky_wcs(N, rot=15)
    blob, _ = _with_cut_mask(blobs(N, seed=3, count=30), w, "primary")
    whole = blob[:-1000] + bytes(17280)  # the MASK's data whole (zeros), padding and all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for how in COMPRESS:
            path = _written(tmp_path / f"whole.fits.{how[:3]}",
                            _compressed(whole, how, "whole.fits"))
            walked.clear()
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
            assert walked == ([str(path)] if how.startswith("zip") else []), how
            path = _written(tmp_path / f"cut.fits.{how[:3]}", _compressed(blob, how, "cut.fits"))
            walked.clear()
            with pytest.raises(InputError, match="^truncated FITS file"):
                astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
            assert walked == [str(path)], how


@pytest.mark.parametrize("large", [False, True])
def test_read_fits_flags_a_zip_member_that_fails_its_crc(tmp_path, monkeypatch, large):
    """A zip archive whose one FITS file fails its CRC check is a BAD_INPUT stamp, small or
    large (the astropy path, whose stream is walked for truncation first). The large one's
    walk let zipfile's `BadZipFile` ("Bad CRC-32") escape `read_fits` as a traceback."""
    from astromorph import Flag
    from astromorph._readers._fits import read_fits

    plain = io.BytesIO()
    fits.PrimaryHDU(np.arange(64 * 64, dtype=np.float32).reshape(64, 64)).writeto(plain)
    plain = plain.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.fits", plain)
    data = bytearray(buf.getvalue())
    data[data.find(plain[:80]) + 2880 + 100] ^= 0xFF  # a pixel byte: the CRC fails
    path = tmp_path / "x.fits.zip"
    path.write_bytes(bytes(data))
    if large:
        monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    (stamp,) = read_fits(path, want_scale=False, triplet_hint=False)
    assert stamp.flags & Flag.BAD_INPUT, stamp.reason


def _corrupt(how, w):
    """A FITS file (an image and a MASK of random values) compressed as ``how``, one of
    whose bytes is flipped in the MASK's part: an xz stream that is corrupt there ("Corrupt
    input data"), a stored zip member that fails its CRC, a gzip stream that fails its CRC;
    and the decompressor's words."""
    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(rng.random((N, N), dtype=np.float32), w.to_header()),
                  fits.ImageHDU(rng.integers(0, 2 ** 31, (64, 64), dtype=np.int32),
                                name="MASK")]).writeto(buf)
    plain = buf.getvalue()
    data = bytearray(_compressed(plain, how, "x.fits"))
    at = data.find(plain[:80]) + len(plain) - 5000 if how == "zip0" else int(len(data) * 0.9)
    data[at] ^= 0xFF
    return bytes(data), {"xz": "Corrupt input data", "zip0": "Bad CRC-32 for file 'x.fits'",
                         "gz": "CRC check failed", "bz2": "Invalid data stream"}[how]


@pytest.mark.parametrize("how", ["xz", "bz2", "zip0", "gz"])
def test_a_corrupt_stream_is_said_corrupt_not_truncated(model, tmp_path, monkeypatch, how):
    """A compressed FITS file whose stream is corrupt (bad data, a bad CRC), read through
    astropy (over 16 MB) and walked for truncation: `predict_files` said "truncated FITS
    file ..." of the xz one (its stream ended there), nothing of the gzip one (scored), and
    `annotate` let xz's LZMAError escape; both now say the stream is corrupt, in the words
    a small file's reason gives, and keep a truly truncated file's words
    (`test_annotate_refuses_a_truncated_mask_in_every_container`). A small one was
    "corrupt or truncated xz: ..." (bzip2, zip): now one wording on every path, as a gzip
    file failing its CRC check was made.
    `annotate` accepted the gzip one: astropy takes gzip's "CRC check failed" at the end of
    the stream for its end, so no walk ran."""
    w = sky_wcs(N, rot=15)
    data, said = _corrupt(how, w)
    kind = {"zip0": "zip", "gz": "gzip", "bz2": "bzip2"}.get(how, how)
    suffix = {"zip0": "zip"}.get(how, how)
    path = _written(tmp_path / f"x.fits.{suffix}", data)
    small = _rows(model, [str(path)], monkeypatch, large=False)["reason"][0]
    (reason,) = _rows(model, [str(path)], monkeypatch, large=True)["reason"]
    assert reason.startswith(f"corrupt {kind} stream in FITS file {path.name}: {said}"), \
        reason
    assert small == reason  # (one wording on every path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as info:
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value).startswith(f"corrupt {kind} stream in FITS file {path}: {said}")


def _first_card_flipped(how):
    """A FITS file compressed as ``how`` (``"gz"``: gzip, stored blocks, so that its bytes
    lie in the stream as they are; ``"zip0"``: a stored zip member), whose ``=`` of the
    SIMPLE card is flipped to ``<`` in the compressed bytes: the stream decompresses, to
    data that start ``SIMPLE  <``, and fails its CRC check at its end."""
    buf = io.BytesIO()
    fits.PrimaryHDU(np.arange(64 * 64, dtype=np.float32).reshape(64, 64)).writeto(buf)
    plain = buf.getvalue()
    data = bytearray(gzip.compress(plain, compresslevel=0, mtime=0) if how == "gz"
                     else _compressed(plain, how, "x.fits"))
    at = data.find(b"SIMPLE  =") + 8
    assert data.find(b"SIMPLE  =", at) < 0  # (the one card flipped is the file's)
    data[at] ^= ord("=") ^ ord("<")
    return bytes(data)


@pytest.mark.parametrize("how", ["gz", "zip0"])
@pytest.mark.parametrize("large", [False, True], ids=["in-memory", "over-16MB"])
def test_a_stream_corrupt_in_its_first_card_is_said_corrupt(tmp_path, monkeypatch, how, large):
    """A bit flipped in the first block of a compressed FITS file: over 16 MB (its first
    bytes read, not the whole stream) it was "gzip-compressed data, not FITS (the
    uncompressed data start with b'SIMPLE  ')", eight bytes of the nine compared, and the
    stream not said corrupt; now it is said corrupt, in the same words small or large (a
    small zip file's were "corrupt or truncated zip: ...")."""
    from astromorph import Flag
    from astromorph._readers._fits import read_fits

    path = _written(tmp_path / f"x.fits.{how[:3]}", _first_card_flipped(how))
    if large:
        monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    (stamp,) = read_fits(path, want_scale=False, triplet_hint=False)
    assert stamp.flags == Flag.BAD_INPUT
    said = "corrupt gzip stream in FITS file x.fits.gz: CRC check failed " if how == "gz" \
        else "corrupt zip stream in FITS file x.fits.zip: Bad CRC-32 for file 'x.fits'"
    assert stamp.reason[0].startswith(said), stamp.reason
    assert "not FITS" not in stamp.reason[0], stamp.reason


def test_a_large_stream_that_is_not_fits_is_refused_without_being_read_to_its_end(
        tmp_path, monkeypatch):
    """A compressed file over 16 MB whose data start nothing like FITS (a misnamed
    ``.tar.gz``): it was decompressed to its end (every byte of a multi-GB archive) only to
    word its refusal; now it is refused as not FITS, in the same words, having read no more
    than the first bytes of its stream (the limit lowered here to 1 MiB, the stream 8 MiB).
    A stream whose first bytes are a byte away from ``SIMPLE  =`` (a FITS file it may be,
    corrupt) is still read to its end, and said corrupt where it is
    (`test_a_stream_corrupt_in_its_first_card_is_said_corrupt`)."""
    from astromorph import Flag
    from astromorph._readers import _compressed
    from astromorph._readers._fits import read_fits

    path = _written(tmp_path / "x.fits.gz", gzip.compress(b"ustar\0" + bytes(8 << 20)))
    monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    monkeypatch.setattr("astromorph._readers._fits._NOT_FITS_READ_BYTES", 1 << 20,
                        raising=False)  # (no limit before)
    read = []
    opened = _compressed.open_stream

    class Counting:  # the decompressed bytes read from each stream opened
        def __init__(self, stream):
            self._stream = stream

        def read(self, n=-1):
            got = self._stream.read(n)
            read.append(len(got))
            return got

        def __getattr__(self, attr):
            return getattr(self._stream, attr)

    monkeypatch.setattr(_compressed, "open_stream",
                        lambda path: (lambda f, name: (Counting(f), name))(*opened(path)))
    (stamp,) = read_fits(path, want_scale=False, triplet_hint=False)
    assert stamp.flags == Flag.BAD_INPUT
    assert stamp.reason == ["gzip-compressed data, not FITS (the uncompressed data start "
                            "with b'ustar\\x00\\x00\\x00\\x00')"], stamp.reason
    assert 0 < sum(read) <= (1 << 20) + 16, read
    read.clear()
    path = _written(tmp_path / "y.fits.gz", gzip.compress(b"SIMPLE  <" + bytes(8 << 20)))
    (stamp,) = read_fits(path, want_scale=False, triplet_hint=False)
    assert stamp.reason == ["gzip-compressed data, not FITS (the uncompressed data start "
                            "with b'SIMPLE  <')"], stamp.reason
    assert sum(read) >= 9 + (8 << 20), read  # (read to its end: whole, not corrupt)


@pytest.mark.parametrize("large", [False, True], ids=["in-memory", "over-16MB"])
def test_not_fits_shows_the_bytes_compared(tmp_path, monkeypatch, large):
    """Compressed data (whole, not corrupt) that start as a FITS file does but for the
    ``=`` of its SIMPLE card: the reason shows the nine bytes compared with ``SIMPLE  =``
    (it showed eight: ``b'SIMPLE  '``, as if the data were FITS); so do FITS bytes."""
    from astromorph._readers import parse_fits_bytes
    from astromorph._readers._fits import read_fits

    blob = b"SIMPLE  < T" + b" " * 2869
    path = _written(tmp_path / "x.fits.gz", gzip.compress(blob))
    if large:
        monkeypatch.setattr("astromorph._readers._fits._FAST_MAX_BYTES", 0)
    (stamp,) = read_fits(path, want_scale=False, triplet_hint=False)
    assert stamp.reason == ["gzip-compressed data, not FITS (the uncompressed data start "
                            "with b'SIMPLE  <')"], stamp.reason
    with pytest.raises(ValueError, match=r"^stamp is not FITS \(starts with b'SIMPLE  <'\)"):
        parse_fits_bytes(blob)


def _unix_compress(data):
    """``data`` as Unix ``compress`` writes it: LZW in block mode with codes of 9 bits only,
    the table cleared (code 256) before it needs wider codes, the codes after a clear
    starting a new group of eight codes, as ``compress`` writes them and its readers
    (``gzip -d``, uncompresspy) skip to."""
    codes, table, word = [], None, b""

    def clear():
        nonlocal table
        table = {bytes([i]): i for i in range(256)}
        table[None] = 256  # (the clear code's place: the next entry is 257)

    clear()
    for byte in data:
        longer = word + bytes([byte])
        if longer in table:
            word = longer
            continue
        codes.append(table[word])
        if len(table) < 500:
            table[longer] = len(table)
        else:
            codes.append(256)
            codes.extend([0] * (-len(codes) % 8))
            clear()
        word = bytes([byte])
    if word:
        codes.append(table[word])
    bits = sum(code << (9 * i) for i, code in enumerate(codes))
    return b"\x1f\x9d\x90" + bits.to_bytes((9 * len(codes) + 7) // 8, "little")


def test_annotate_refuses_a_unix_compressed_file_whose_mask_is_cut(model, tmp_path):
    """A ``.fits.Z`` file (Unix compress, read by astropy with the optional package
    uncompresspy) whose MASK extension the stream ends inside of: `annotate` refuses it
    as truncated, as it does a gzip, bzip2, xz or zip file of it (its stream is walked);
    it gave the image without a word (astropy does not read the MASK's data). The whole
    file is read."""
    pytest.importorskip("uncompresspy")
    w = sky_wcs(N, rot=15)
    blob, label = _with_cut_mask(blobs(N, seed=3, count=30), w, "primary")
    path = _written(tmp_path / "cut.fits.Z", _unix_compress(blob))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as info:
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value) == (f"truncated FITS file {path}: the header of {label} gives "
                               "16384 bytes of data, the file holds 1000")
    whole = _written(tmp_path / "whole.fits.Z", _unix_compress(blob[:-1000] + bytes(17280)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = astromorph.annotate(catalogue(w, [(30, 30)]), str(whole), model=model)
    assert not np.ma.getmaskarray(table["opt_p_a"])[0]


def test_predict_files_says_a_unix_compressed_file_is_not_read(tmp_path):
    """`predict_files` reads no ``.fits.Z`` file (Unix compress), uncompresspy installed or
    not: its row says so and how to read it, where it said only 'unrecognised file format
    (first bytes ...)'."""
    from astromorph import Flag
    from astromorph._readers import read_file

    path = _written(tmp_path / "x.fits.Z", _unix_compress(b"SIMPLE  =" + b" " * 2871))
    (stamp,) = read_file(path)
    assert stamp.flags == Flag.BAD_INPUT
    assert "Unix-compressed (.Z)" in stamp.reason[0], stamp.reason
    assert "uncompress it (uncompress, gzip -d)" in stamp.reason[0], stamp.reason


@pytest.mark.parametrize("how", [None, "gz", "bz2", "xz", "zip8"])
def test_open_stream_and_first_bytes_start_at_the_files_first_byte(tmp_path, how):
    """`open_stream` gives the decompressed content from its first byte, and `first_bytes`
    its first bytes, for a plain file as for a compressed one (the compression is sniffed
    from the file's first bytes: the stream of a plain file is rewound after that); no
    file is left open once the stream is closed."""
    from astromorph._readers._compressed import first_bytes, open_stream

    plain = bytes(range(256)) * 4
    name = {None: "x.bin", "zip8": "x.zip"}.get(how, f"x.{how}")
    if how is None:
        data = plain
    elif how.startswith("zip"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", COMPRESS[how]) as archive:
            archive.writestr("x.bin", plain)
        data = buf.getvalue()
    else:
        data = COMPRESS[how](plain)
    (tmp_path / name).write_bytes(data)
    kind = {None: None, "gz": "gzip", "bz2": "bzip2", "xz": "xz", "zip8": "zip"}[how]
    gc.collect()  # (files other tests left to the collector are not this one's)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert first_bytes(tmp_path / name, 16) == (plain[:16], kind)
        f, got = open_stream(tmp_path / name)
        try:
            assert got == kind and f.read() == plain
        finally:
            f.close()
        del f
        gc.collect()
    # no file is left open (the one the compression was sniffed from, a zip archive's)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)
                and str(tmp_path) in str(w.message)], [str(w.message) for w in caught]


def test_a_corrupt_zip_file_leaves_no_temporary_file_open(model, tmp_path, monkeypatch):
    """astropy extracts a zip archive's FITS file into a temporary file, and leaves it open
    (and on disk) when the extraction fails (a bad CRC): the error `annotate` and
    `write_results_to_header` keep (chained, or to be reported) held it until the garbage
    collector came (a ResourceWarning "unclosed file ... tmpXXXX.fits" in a later test).
    Now it is closed, and so removed, before the error is raised or reported."""
    from astromorph._headers import write_results_to_header
    from astromorph.exceptions import AstromorphWarning

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # where astropy extracts to
    w = sky_wcs(N, rot=15)
    path = _written(tmp_path / "x.fits.zip", _corrupt("zip0", w)[0])
    gc.collect()  # (files other tests left to the collector are not this one's)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="corrupt zip stream") as info:
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
        assert info.value.__cause__ is not None  # (astropy's error, its traceback kept)
        assert not list(scratch.iterdir())  # closed and removed while the error is held
        table = Table({"source": ["x"], "toy_score": [0.25], "reason": [""]})
        model_ = type("M", (), {"name": "toy", "version": "1", "sha256": "ab" * 32,
                                "card": {"column_prefix": "toy"}})()
        write_results_to_header(model_, table, [(path, 0, None)],
                                {path: tmp_path / "out.fits"})
        assert not list(scratch.iterdir())
        del info
        gc.collect()
    assert [w for w in caught if issubclass(w.category, AstromorphWarning)
            and "astropy cannot open the file" in str(w.message)], \
        [str(w.message) for w in caught]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], \
        [str(w.message) for w in caught]


def _with_cut_header(image, w, keep):
    """FITS bytes of ``image`` (WCS ``w``) in the primary HDU, followed by the first
    ``keep`` bytes of a MASK extension (its header cut short where ``keep`` < 2880), and
    the size of the primary HDU."""
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(image, w.to_header()),
                  fits.ImageHDU(np.zeros((64, 64), np.int32), name="MASK")]).writeto(buf)
    first = 2880 * (1 + -(-image.nbytes // 2880))
    return buf.getvalue()[:first + keep], first


@pytest.mark.parametrize("keep", [400, 2879])
@pytest.mark.parametrize("how", [None, "gz", "bz2", "xz", "zip0"])
def test_annotate_refuses_a_file_whose_last_header_is_cut_short(model, tmp_path, how, keep):
    """A file that ends inside the header of its MASK extension: astropy warns only that it
    could not validate that header ("There may be extra bytes after the last HDU") and drops
    the HDU, so `annotate` gave the image without its MASK; now it is refused as a file cut
    inside an HDU's data is, an `InputError` naming the file and the HDU."""
    w = sky_wcs(N, rot=15)
    blob, _ = _with_cut_header(blobs(N, seed=3, count=30).astype(np.float32), w, keep)
    path = tmp_path / f"cut.fits{'' if how is None else '.' + how[:3]}"
    path.write_bytes(_compressed(blob, how, "cut.fits"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as info:
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value) == (f"truncated FITS file {path}: the header of HDU 1 ends after "
                               f"{keep} bytes, without its END card"), str(info.value)


@pytest.mark.parametrize("large", [False, True], ids=["in-memory", "over-16MB"])
@pytest.mark.parametrize("how", [None, "gz", "bz2", "xz", "zip0"])
def test_predict_files_refuses_a_file_whose_last_header_is_cut_short(model, tmp_path,
                                                                    monkeypatch, how, large):
    """A file that ends inside the header of its MASK extension: `predict_files` read its
    image, the MASK silently dropped (its fast reader, and astropy's, which only warns that
    it could not validate that header), and flagged nothing; now it is a BAD_INPUT row whose
    reason is `annotate`'s error word for word, in memory or over 16 MB, plain or
    compressed. Bytes after the last HDU that begin no header are still read past."""
    w = sky_wcs(N, rot=15)
    image = blobs(N, seed=3, count=30).astype(np.float32)
    suffix = "" if how is None else "." + how[:3]
    paths = []
    for keep in (400, 2879):
        blob, _ = _with_cut_header(image, w, keep)
        paths.append(_written(tmp_path / f"cut{keep}.fits{suffix}",
                              _compressed(blob, how, "cut.fits")))
    whole, _ = _with_cut_header(image, w, 2 * 2880 + 17280 - 2880)
    paths.append(_written(tmp_path / f"junk.fits{suffix}",
                          _compressed(whole + b"junk" * 100, how, "junk.fits")))
    out = _rows(model, paths, monkeypatch, large)
    bad = int(astromorph.Flag.BAD_INPUT)
    assert list(out["opt_flags"][:2]) == [bad, bad], list(out["reason"])
    for reason, path, keep in zip(out["reason"], paths, (400, 2879)):
        assert reason == (f"truncated FITS file {path.name}: the header of HDU 1 ends after "
                          f"{keep} bytes, without its END card"), reason
    assert not out["opt_flags"][2] & bad and not np.ma.getmaskarray(out["opt_p_a"])[2], \
        out["reason"][2]


def test_annotate_refuses_a_file_cut_in_its_last_padding_but_not_after_it(model, tmp_path):
    """A file whose last HDU's data are whole but their padding (to 2880 bytes) is cut:
    astropy warns that it "may have been truncated", which alone refuses it (as
    `predict_files` flags it); bytes after the last HDU that begin no header (not
    ``XTENSION``) are read past, with astropy's warning (its words for a cut header)."""
    w = sky_wcs(N, rot=15)
    image = blobs(N, seed=3, count=30).astype(np.float32)
    blob, first = _with_cut_header(image, w, 2880 + 64 * 64 * 4)  # MASK data, no padding
    path = _written(tmp_path / "cut.fits", blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as info:
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value).startswith(f"{path}: the FITS file is truncated (File may have "
                                      "been truncated: actual file length"), str(info.value)
    whole, _ = _with_cut_header(image, w, 2 * 2880 + 17280 - 2880)
    path = _written(tmp_path / "junk.fits", whole + b"junk" * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert not np.ma.getmaskarray(table["opt_p_a"])[0]
    assert any("extra bytes after the last HDU" in str(c.message) for c in caught)


def _gzip_failing_its_crc(plain, where):
    """The gzip file of the FITS bytes ``plain``, its CRC check failing: a byte of the CRC32
    in its trailer flipped (``"trailer"``), or a byte of its deflate data flipped where they
    still inflate to as many bytes, other ones (``"payload"``)."""
    data = bytearray(gzip.compress(plain))
    if where == "trailer":
        data[-6] ^= 0x10
        return bytes(data)
    for at in range(len(data) // 2, len(data) - 8):  # (stored blocks of random pixels)
        data[at] ^= 0x01
        try:
            out = zlib.decompressobj(-15).decompress(bytes(data[10:]))
        except zlib.error:
            out = b""
        if len(out) == len(plain) and out != plain:
            return bytes(data)
        data[at] ^= 0x01
    raise AssertionError("no byte of the deflate data flips to other data of the same size")


@pytest.mark.parametrize("how", ["gz", "bz2", "xz"])
@pytest.mark.parametrize("tail", ["junk", "zeros-then-junk", "zeros", "another-stream",
                                  "zeros-then-stream"])
def test_bytes_after_the_last_stream_are_one_rule_everywhere(model, tmp_path, monkeypatch,
                                                             how, tail):
    """Bytes after the last member of a .fits.gz, or the last stream of a .fits.bz2 or
    .fits.xz, that are neither another member (stream) nor zero padding (a member whose first
    bytes are damaged may hold a MASK) are refused in the same words by `annotate`, by
    `predict_files` in memory and over 16 MB: the first two took them for nothing
    (``gzip -d``'s "trailing garbage ignored"), the third said Python's "Not a gzipped
    file"; bzip2 and xz files took them for nothing on every path (Python's readers ignore
    them; ``xz -d`` refuses them). Zero padding (of tape blocks) is read as nothing by all
    three, and a file of several streams (pbzip2, ``cat a.xz b.xz``) as one. A bzip2 or xz
    stream after zero padding is refused, in words that say so (not "neither another stream
    nor zero padding"): Python's readers of them, astropy's, stop at the padding (the HDUs
    after it would be lost); a gzip member after zero padding is read, small or large, as
    Python's gzip reader, astropy's, reads it (`decompress` refused a small file of it;
    ``gzip -d`` drops it with "trailing garbage ignored", reading it loses no HDU)."""
    w = sky_wcs(N, rot=15)
    plain = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(blobs(N, seed=3, count=30), w.to_header()),
                  fits.ImageHDU(np.zeros((N, N), np.uint8), name="MASK")]).writeto(plain)
    plain = plain.getvalue()
    pack = COMPRESS[how]
    if tail.endswith("stream"):  # the file in two streams, split inside the primary HDU
        zeros = b"\0" * 2000 if tail.startswith("zeros") else b""
        data = pack(plain[:2880 * 3 + 100]) + zeros + pack(plain[2880 * 3 + 100:])
    else:
        data = pack(plain) + {"junk": b"junk after it\n", "zeros": b"\0" * 2000,
                              "zeros-then-junk": b"\0" * 2000 + b"xyz"}[tail]
    path = _written(tmp_path / f"x.fits.{how}", data)
    reasons = [_rows(model, [str(path)], monkeypatch, large=large)["reason"][0]
               for large in (False, True)]
    if tail in ("zeros", "another-stream") or (how, tail) == ("gz", "zeros-then-stream"):
        assert reasons == ["", ""], reasons
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert len(astromorph.annotate(catalogue(w, [(30, 30)]), str(path),
                                           model=model)) == 1
        return
    kind, unit = {"gz": ("gzip", "member"), "bz2": ("bzip2", "stream"),
                  "xz": ("xz", "stream")}[how]
    begin = data[len(pack(plain)):].strip(bytes(1))[:2] if tail != "zeros-then-stream" \
        else pack(b"")[:2]
    said = (f"corrupt {kind} stream in FITS file x.fits.{how}: bytes after its last {unit} "
            f"that are neither another {kind} {unit} nor zero padding (they begin {begin!r})")
    if tail == "zeros-then-stream":
        said = (f"corrupt {kind} stream in FITS file x.fits.{how}: another {kind} stream "
                f"after zero padding, which Python's {kind} reader (astropy's) stops at, "
                f"leaving out the HDUs in it (it begins {begin!r})")
    assert reasons == [said, said], reasons
    with pytest.raises(InputError) as info:
        astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value) == said.replace(f"x.fits.{how}", str(path))


@pytest.mark.parametrize("where", ["trailer", "payload"])
def test_annotate_refuses_a_gzip_file_failing_its_crc(model, tmp_path, monkeypatch, where):
    """A .fits.gz whose CRC check fails (a flipped CRC32, or deflate data that inflate to
    other bytes) is refused by `annotate` in the words of `predict_files`, in memory and over
    16 MB ("corrupt gzip stream in FITS file ...: CRC check failed ..."): it was scored (astropy
    takes gzip's error at the end of the stream for the end of the file, and the walk for
    truncation did not run). A sound file is still not decompressed again to tell."""
    import astromorph._images as images

    w = sky_wcs(N, rot=15)
    plain = io.BytesIO()
    fits.PrimaryHDU(np.random.default_rng(1).random((N, N), dtype=np.float32),
                    w.to_header()).writeto(plain)
    path = _written(tmp_path / "x.fits.gz", _gzip_failing_its_crc(plain.getvalue(), where))
    (small,) = _rows(model, [str(path)], monkeypatch, large=False)["reason"]
    (reason,) = _rows(model, [str(path)], monkeypatch, large=True)["reason"]
    assert reason.startswith("corrupt gzip stream in FITS file x.fits.gz: CRC check failed "), \
        reason
    # in memory (under 16 MB) it was "corrupt or truncated gzip: Error -3 while decompressing
    # data: incorrect data check": now the same words on every path
    assert small == reason
    with pytest.raises(InputError) as info:
        astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value) == reason.replace("x.fits.gz", str(path))
    walked, walk = [], images.truncated_file
    monkeypatch.setattr(images, "truncated_file", lambda name: walked.append(name) or walk(name))
    sound = _written(tmp_path / "sound.fits.gz", gzip.compress(plain.getvalue()))
    astromorph.annotate(catalogue(w, [(30, 30)]), str(sound), model=model)
    assert walked == []


@pytest.mark.parametrize("byte", [0, 1])
def test_a_damaged_gzip_signature_is_said_in_short(model, tmp_path, monkeypatch, byte):
    """A .fits.gz whose first or second byte is damaged is neither gzip nor FITS: `annotate`
    said astropy's "No SIMPLE card found, this file does not appear to be a valid FITS file.
    If this is really a FITS file, try with ignore_missing_simple=True", `predict_files`
    "not a FITS file (no SIMPLE card)" (or astropy's words, over 16 MB); all now say what
    the first bytes are, and that they are neither."""
    w = sky_wcs(N, rot=15)
    plain = io.BytesIO()
    fits.PrimaryHDU(blobs(N, seed=3, count=30), w.to_header()).writeto(plain)
    data = bytearray(gzip.compress(plain.getvalue(), mtime=0))
    data[byte] ^= 0x40
    path = _written(tmp_path / "x.fits.gz", bytes(data))
    # (nine bytes, as many as are compared with a FITS file's b'SIMPLE  =', as the reason
    # of a compressed file that holds no FITS shows them)
    words = (f"neither gzip nor FITS: its first bytes are {bytes(data[:9])!r} (gzip starts "
             "with b'\\x1f\\x8b', FITS with b'SIMPLE  =')")
    with pytest.raises(InputError) as info:
        astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value) == f"{path}: {words}"
    for large in (False, True):
        assert list(_rows(model, [str(path)], monkeypatch, large)["reason"]) == [words]


def _damaged(plain, how):
    """The FITS bytes ``plain`` (an image and a MASK) with a header damaged: BITPIX of HDU 0
    or 1 renamed, NAXIS1 of the MASK -64, or the MASK's first card unparsable (a string
    left open: an HDU astropy calls corrupted)."""
    data = bytearray(plain)
    if how.startswith("no-bitpix"):
        at = data.find(b"BITPIX", 2880 * int(how[-1]))
        data[at:at + 6] = b"BXTPIX"
    elif how == "naxis1":
        at = data.find(b"NAXIS1", data.find(b"XTENSION"))
        data[at + 10:at + 30] = b"%20d" % -64
    else:
        at = data.find(b"XTENSION")
        data[at:at + 80] = b"XTENSION= 'IMAGE".ljust(80)
    return bytes(data)


@pytest.mark.parametrize("how", [None, "gz", "bz2", "xz"])
@pytest.mark.parametrize("damage", ["no-bitpix0", "no-bitpix1", "naxis1", "unparsable"])
def test_annotate_names_a_damaged_header_in_every_container(model, tmp_path, monkeypatch,
                                                            damage, how):
    """A damaged header is an `InputError` naming the file and the keyword, in the words of
    `predict_files`, whatever the container: a missing BITPIX let astropy's bare
    ``KeyError: 'BITPIX'`` out of `annotate`; NAXIS1 = -64, and (in a compressed file) a
    header astropy cannot parse, made astropy read the file from an earlier byte again
    and again (an HDU of negative size), its list of HDUs growing without end: stopped
    here after a few hundred reads, not held by `annotate` to one. A header astropy cannot
    parse is refused in a plain file too (astropy dropped that HDU, a MASK, with a warning),
    by `predict_files` small and large alike (over 16 MB a compressed one hung it)."""
    from astropy.io.fits.hdu.hdulist import HDUList

    w = sky_wcs(N, rot=15)
    plain = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(blobs(N, seed=3, count=30), w.to_header()),
                  fits.ImageHDU(np.zeros((N, N), np.int16), name="MASK")]).writeto(plain)
    data = _damaged(plain.getvalue(), damage)
    path = _written(tmp_path / f"x.fits{'' if how is None else '.' + how}",
                    _compressed(data, how, "x.fits"))
    reads, read = [], HDUList._read_next_hdu

    def read_next(self):
        reads.append(1)
        if len(reads) > 300:
            raise RuntimeError("astropy reads HDUs without end")
        return read(self)

    monkeypatch.setattr(HDUList, "_read_next_hdu", read_next)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as info:
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    said = str(info.value)
    assert str(path) in said and "astropy reads HDUs without end" not in said, said
    label = "HDU 0 (primary)" if damage == "no-bitpix0" else "HDU 1, EXTNAME 'MASK'"
    for large in (False, True):  # (astropy's reads still counted: over 16 MB it hung)
        reads.clear()
        (reason,) = _rows(model, [str(path)], monkeypatch, large=large)["reason"]
        assert reason.startswith(f"malformed FITS header in {path.name} {label}: "), reason
        assert said.startswith(reason.replace(path.name, str(path))), said
    if damage == "unparsable":  # (a plain file: the image was scored, the MASK dropped
        # with astropy's warning; compressed: "the header of HDU 1 is damaged: astropy
        # finds the HDUs after it at earlier bytes", naming no keyword)
        assert said == reason.replace(path.name, str(path)) and said.endswith(
            "XTENSION = 'IMAGE is a string without its closing quote"), said


def test_a_bzip2_file_whose_first_block_is_corrupt_does_not_abort_annotate(tmp_path):
    """A .fits.bz2 whose first block is corrupt (a byte flipped in it: found by fuzzing)
    aborted the interpreter in `annotate` ("stack smashing detected"): astropy reads a
    header again where its quick parser failed, from the same bzip2 decompressor, which
    libbz2 cannot be fed after its error. It is an `InputError` saying the stream is corrupt
    (run in a child process, which the old code killed)."""
    import subprocess
    import sys

    w = sky_wcs(48, rot=15)
    plain = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(blobs(48, seed=3, count=10), w.to_header()),
                  fits.ImageHDU(np.zeros((48, 48), np.int16), name="MASK")]).writeto(plain)
    data = bytearray(bz2.compress(plain.getvalue()))
    data[63] ^= 0xFF
    path = _written(tmp_path / "x.fits.bz2", bytes(data))
    child = subprocess.run(
        [sys.executable, "-c", "import sys, warnings\n"
         "from astromorph._images import parse_sky_images\n"
         "from astromorph.exceptions import InputError\n"
         "warnings.simplefilter('ignore')\n"
         "try:\n    parse_sky_images(sys.argv[1])\n"
         "except InputError as exc:\n    print(exc)\n", str(path)],
        capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout == (f"corrupt bzip2 stream in FITS file {path}: Invalid data "
                            "stream\n"), child.stdout


def _annotate_refuses_in_words(model, w, path, words):
    """`annotate` of a source at (30, 30) of ``w`` on the file ``path`` raises `InputError`
    of exactly ``words``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as info:
            astromorph.annotate(catalogue(w, [(30, 30)]), str(path), model=model)
    assert str(info.value) == words


@pytest.mark.parametrize("how", ["gz", "bz2", "xz"])
def test_annotate_refuses_a_stream_cut_after_the_last_hdus_data(model, tmp_path, monkeypatch,
                                                               how):
    """A gzip, bzip2 or xz file cut at its end (its trailer or end marker missing, every HDU
    whole: found by fuzzing, where a damaged byte there made the stream end) was scored by
    `annotate`, and by `predict_files` over 16 MB, while a small one was refused
    ("corrupt or truncated gzip: incomplete or truncated stream"); all now refuse it, in one
    wording on every path (a small one's was that, a large one's "truncated gzip stream in
    FITS file x.fits.gz: Compressed file ended before the end-of-stream marker was
    reached")."""
    w = sky_wcs(N, rot=15)
    plain = io.BytesIO()
    fits.PrimaryHDU(blobs(N, seed=3, count=30), w.to_header()).writeto(plain)
    whole = _compressed(plain.getvalue(), how, "x.fits")
    path = _written(tmp_path / f"x.fits.{how}", whole[:-{"gz": 8, "bz2": 4, "xz": 12}[how]])
    kind = {"gz": "gzip", "bz2": "bzip2"}.get(how, how)
    small = _rows(model, [str(path)], monkeypatch, large=False)["reason"][0]
    (reason,) = _rows(model, [str(path)], monkeypatch, large=True)["reason"]
    assert reason == (f"truncated {kind} stream in FITS file x.fits.{how}: Compressed file "
                      "ended before the end-of-stream marker was reached"), reason
    assert small == reason  # (one wording on every path)
    _annotate_refuses_in_words(model, w, path, reason.replace(f"x.fits.{how}", str(path)))


@pytest.mark.parametrize("how", ["gz", "bz2", "xz"])
def test_annotate_of_a_damaged_start_or_end_of_a_compressed_file(model, tmp_path, how):
    """Each of the first and last 16 bytes of a gzip, bzip2 or xz file of an image and a MASK
    flipped in turn (the headers and trailers of the streams: found by fuzzing): `annotate`
    raises an `InputError` naming the file and saying more than astropy's "Empty or corrupt
    FITS file" or "No SIMPLE card found" (given of a damaged gzip header or bzip2 end
    marker), never another exception; only the bytes of a gzip header that no reader checks
    (MTIME, XFL, OS: bytes 4 to 9) leave the file read as it was."""
    w = sky_wcs(N, rot=15)
    plain = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(blobs(N, seed=3, count=30), w.to_header()),
                  fits.ImageHDU(np.zeros((N, N), np.int16), name="MASK")]).writeto(plain)
    good = _compressed(plain.getvalue(), how, "x.fits")
    path = tmp_path / f"x.fits.{how}"
    cat = catalogue(w, [(30, 30)])
    scored = []
    for at in [*range(16), *range(len(good) - 16, len(good))]:
        data = bytearray(good)
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                astromorph.annotate(cat, str(path), model=model)
            except InputError as exc:
                said = str(exc)
                assert str(path) in said, (at, said)
                assert "Empty or corrupt FITS file" not in said, (at, said)
                assert "No SIMPLE card found" not in said, (at, said)
            else:
                scored.append(at)
    assert scored == ([4, 5, 6, 7, 8, 9] if how == "gz" else []), scored


@pytest.mark.parametrize("opener", [bz2.compress, lzma.compress], ids=["bz2", "xz"])
def test_a_clean_bzip2_or_xz_file_is_not_walked_again(opener, tmp_path, monkeypatch):
    """``annotate`` tells that a clean .fits.bz2 / .fits.xz ended on its last stream from
    the state of the reader astropy used (`_images._last_stream_last`, a private attribute of
    Python's readers), so it is not decompressed a second time. Were that attribute renamed
    in a later Python, the answer would stay right but every such file would be read twice:
    this test says so at once."""
    from astromorph import _images

    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(np.arange(64 * 64, dtype=np.float32).reshape(64, 64)),
                  fits.ImageHDU(np.zeros((64, 64), np.uint8), name="MASK")]).writeto(buf)
    path = tmp_path / f"clean.fits.{'bz2' if opener is bz2.compress else 'xz'}"
    path.write_bytes(opener(buf.getvalue()))
    walks = []
    real = _images.truncated_file
    monkeypatch.setattr(_images, "truncated_file",
                        lambda *a, **k: walks.append(a) or real(*a, **k))
    hdul = _images._open_fits(str(path))
    try:
        assert _images._last_stream_last(hdul) is True
        assert [h.name for h in hdul] == ["PRIMARY", "MASK"]
    finally:
        hdul.close()
    assert walks == []


@pytest.mark.parametrize("how", ["gz", "xz", "bz2"])
def test_a_stream_cut_inside_an_hdus_data_is_one_reason_everywhere(model, tmp_path, monkeypatch,
                                                                  how):
    """A gzip, bzip2 or xz file cut inside the data of an HDU (a MASK) is refused in one
    wording by `predict_files` in memory and over 16 MB and by `annotate`: in memory it was
    "corrupt or truncated xz: incomplete or truncated stream", over 16 MB and by `annotate`
    "truncated FITS file x.fits.xz: the header of HDU 1, EXTNAME 'MASK' gives 8192 bytes of
    data, the file holds 0", the bytes decompressed before the cut dropped by the buffered
    reader's error; now all say how many it holds. (A bzip2 file this small is one block,
    none of which decompresses before the cut: its stream is said truncated, alike.)"""
    w = sky_wcs(N, rot=15)
    plain = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(blobs(N, seed=3, count=30), w.to_header()),
                  fits.ImageHDU(np.random.default_rng(2).integers(0, 2**15, (N, N), np.int16),
                                name="MASK")]).writeto(plain)
    whole = COMPRESS[how](plain.getvalue())
    path = _written(tmp_path / f"x.fits.{how}", whole[:len(whole) * 3 // 4])
    small = _rows(model, [str(path)], monkeypatch, large=False)["reason"][0]
    (reason,) = _rows(model, [str(path)], monkeypatch, large=True)["reason"]
    kind = {"gz": "gzip", "bz2": "bzip2"}.get(how, how)
    said = (f"truncated FITS file x.fits.{how}: the header of HDU 1, EXTNAME 'MASK' gives "
            f"{N * N * 2} bytes of data, the file holds " if how != "bz2" else
            f"truncated {kind} stream in FITS file x.fits.{how}: Compressed file ended before "
            "the end-of-stream marker was reached")
    assert reason.startswith(said) and not reason.endswith("holds 0"), reason
    assert small == reason  # (one wording on every path)
    _annotate_refuses_in_words(model, w, path, reason.replace(f"x.fits.{how}", str(path)))

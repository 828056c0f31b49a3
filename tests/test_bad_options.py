"""Bad option values of the public functions raise typed errors that name the value
(`InvalidArgumentError`; `InvalidArgumentTypeError`, also a TypeError, for a value of the
wrong type), never a numpy, astropy or Python error from deep inside."""
import re
import sys

import numpy as np
import pytest
from astropy.table import Table

import astromorph
from astromorph import preprocessing as pp
from astromorph.exceptions import InvalidArgumentError, InvalidArgumentTypeError

IMG = np.random.default_rng(0).normal(0, 1, (64, 64)).astype(np.float32)
RADIO = np.random.default_rng(1).normal(0, 1e-4, (300, 300))
TRIP = np.random.default_rng(2).normal(0, 1, (3, 63, 63))
TYPE, VALUE = InvalidArgumentTypeError, InvalidArgumentError

PREPROCESSING = [
    (lambda: pp.sigma_clipped_rms(RADIO, sigma="x"), TYPE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=None), TYPE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=[1, 2]), TYPE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=-1), VALUE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=0), VALUE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, sigma=np.nan), VALUE, "sigma"),
    (lambda: pp.sigma_clipped_rms(RADIO, maxiters="x"), TYPE, "maxiters"),
    (lambda: pp.sigma_clipped_rms(RADIO, maxiters=2.5), VALUE, "maxiters"),
    (lambda: pp.sigma_clipped_rms(RADIO, maxiters=-1), VALUE, "maxiters"),
    (lambda: pp.pixel_scale_from_wcs(None), TYPE, "None"),
    (lambda: pp.pixel_scale_from_wcs("x"), TYPE, "'x'"),
    (lambda: pp.preprocess_radio_image(RADIO, wcs=3), TYPE, "wcs"),
    (lambda: pp.peak_significance(RADIO, rms="x"), TYPE, "rms"),
    (lambda: pp.peak_significance(RADIO, rms=-1), VALUE, "rms"),
    (lambda: pp.first_cutout_to_uint8(RADIO, rms="x"), TYPE, "rms"),
    (lambda: pp.first_cutout_to_uint8(RADIO, threshold_sigma="x"), TYPE, "threshold_sigma"),
    (lambda: pp.first_cutout_to_uint8(RADIO, threshold_sigma=np.nan), VALUE, "threshold_sigma"),
    (lambda: pp.first_cutout_to_uint8(RADIO, threshold_sigma=-1), VALUE, "threshold_sigma"),
    (lambda: pp.first_cutout_to_uint8(RADIO, size=0), VALUE, "size"),
    (lambda: pp.first_cutout_to_uint8(RADIO, size=-5), VALUE, "size"),
    (lambda: pp.first_cutout_to_uint8(RADIO, size=2.5), VALUE, "size"),
    (lambda: pp.first_cutout_to_uint8(RADIO, size="x"), TYPE, "size"),
    (lambda: pp.first_cutout_to_uint8(RADIO, quantize="no"), TYPE, "quantize"),
    (lambda: pp.preprocess_first_cutout(RADIO, rms="x"), TYPE, "rms"),
    (lambda: pp.preprocess_radio_image(RADIO, rms="x"), TYPE, "rms"),
    (lambda: pp.resample_to_first_grid(RADIO, 1.0, size=0), VALUE, "size"),
    (lambda: pp.resample_to_first_grid(RADIO, 1.0, size="x"), TYPE, "size"),
    (lambda: pp.resample_to_first_grid(RADIO, "x"), TYPE, "pixel_scale_arcsec"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, q="x"), TYPE, "q"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, stretch="x"), TYPE, "stretch"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, stretch=np.nan), VALUE, "stretch"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, minimum="x"), TYPE, "minimum"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, minimum=[1, 2]), VALUE, "minimum"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, band_scales="x"), TYPE, "band_scales"),
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, band_scales={"g": "a", "r": 1, "i": 1}), TYPE,
     "band_scales['g']"),
    # a band missing beside one that is no band (a typo, "I" for "i"): named, not KeyError
    (lambda: pp.gri_to_rgb(IMG, IMG, IMG, band_scales={"g": 1, "r": 1, "I": 1}), VALUE,
     "band_scales needs g, r and i"),
    (lambda: pp.preprocess_gri(IMG, IMG, IMG, band_scales={"g": 1, "r": 1, "z": 1}), VALUE,
     "band_scales needs g, r and i"),
    (lambda: pp.single_band_to_rgb(IMG, q="x"), TYPE, "q"),
    (lambda: pp.single_band_to_rgb(IMG, minimum="x"), TYPE, "minimum"),
    (lambda: pp.preprocess_single_band(IMG, stretch="x"), TYPE, "stretch"),
    (lambda: pp.preprocess_gri(IMG, IMG, IMG, q=None), TYPE, "q"),
    (lambda: pp.preprocess_triplet(TRIP, return_flags="no"), TYPE, "return_flags"),
]


def _check(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert text in str(info.value)


@pytest.mark.parametrize("call, error, text", PREPROCESSING)
def test_preprocessing_bad_options(call, error, text):
    _check(call, error, text)


def test_type_errors_are_type_errors():
    assert issubclass(InvalidArgumentTypeError, TypeError)
    assert issubclass(InvalidArgumentTypeError, InvalidArgumentError)


def _emb():
    x = np.random.default_rng(3).normal(size=(40, 8))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fits(tmp_path):
    from astropy.io import fits
    from synthetic_alerts import celestial_header

    path = tmp_path / "a.fits"
    fits.PrimaryHDU(IMG, header=celestial_header(fits.Header(), 0.396, IMG.shape)).writeto(path)
    return str(path)


CAT = Table({"ra": [150.0], "dec": [2.0], "r90": [5.0]})
RB = Table({"rb_score": [0.2, 0.9], "rb_flags": [0, 0], "real": [False, True]})
STAMPS = Table({"image": np.random.default_rng(4).normal(0.02, 0.01, (2, 64, 64))})

TOP_LEVEL = [
    (lambda p: astromorph.load_model(None), TYPE, "None"),
    (lambda p: astromorph.load_model(3), TYPE, "3"),
    (lambda p: astromorph.model_card(None), TYPE, "None"),
    (lambda p: astromorph.load_model("morphology", providers=3), TYPE, "providers"),
    (lambda p: astromorph.load_model("morphology", providers=[3]), TYPE, "3"),
    (lambda p: astromorph.load_model("morphology").predict(np.zeros((1, 3, 64, 64), np.float32),
                                                           progress="yes"), TYPE, "progress"),
    (lambda p: astromorph.load_model("morphology").predict(np.zeros((1, 3, 64, 64), np.float32),
                                                           batch_size="8"), TYPE, "'8'"),
    (lambda p: astromorph.load_model("morphology").predict(np.zeros((1, 3, 64, 64), np.float32),
                                                           batch_size=0), VALUE, "0"),
    (lambda p: astromorph.annotate_stamps(STAMPS, model="morphology", batch_size=None), TYPE,
     "batch_size"),
    (lambda p: astromorph.predict_files("morphology", _fits(p), batch_size=True), TYPE,
     "batch_size"),
    (lambda p: astromorph.annotate(CAT, _fits(p), model=None, size_col="r90"), TYPE, "None"),
    (lambda p: astromorph.annotate(CAT, _fits(p), model="morphology", size_col="r90", bands=3),
     TYPE, "bands"),
    (lambda p: astromorph.annotate(CAT, _fits(p), model="morphology", size_col="r90",
                                   progress="x"), TYPE, "progress"),
    (lambda p: astromorph.annotate_stamps(STAMPS, model="morphology", progress="x"), TYPE,
     "progress"),
    # where no bar is drawn (no rows; Dask partitions run without one) all the same
    (lambda p: astromorph.load_model("morphology").predict(np.zeros((0, 3, 64, 64), np.float32),
                                                           progress="x"), TYPE, "progress"),
    (lambda p: astromorph.annotate_dask(CAT, _fits(p), model="morphology", size_col="r90",
                                        progress="x"), TYPE, "progress"),
    (lambda p: astromorph.predict_files("morphology", _fits(p), write_header=3), TYPE,
     "write_header"),
    # bytes are no path: they were iterated, 'input 47 is not a path or a glob pattern'
    (lambda p: astromorph.predict_files("morphology", b"/x.fits"), TYPE, "b'/x.fits'"),
    # a number, or a list holding one, is no path: a TypeError too (was InvalidArgumentError)
    (lambda p: astromorph.predict_files("morphology", 3), TYPE, "int"),
    (lambda p: astromorph.predict_files("morphology", [_fits(p), 3]), TYPE, "input 3"),
    (lambda p: astromorph.predict_files("morphology", _fits(p), in_place="no"), TYPE, "in_place"),
    (lambda p: astromorph.predict_files("morphology", _fits(p), overwrite="no"), TYPE,
     "overwrite"),
    (lambda p: astromorph.annotate_dask(CAT, _fits(p), model="morphology", size_col="r90",
                                        scheduler="x"), VALUE, "'x'"),
    # a value Dask cannot use as a scheduler: was Dask's ValueError, from dask.compute
    (lambda p: astromorph.annotate_dask(CAT, _fits(p), model="morphology", size_col="r90",
                                        scheduler=3), TYPE, "3"),
    # "distributed" without a Client: was Dask's RuntimeError
    (lambda p: astromorph.annotate_dask(CAT, _fits(p), model="morphology", size_col="r90",
                                        scheduler="distributed"), VALUE, "'distributed'"),
    (lambda p: astromorph.annotate_dask(CAT, _fits(p), model="morphology", size_col="r90",
                                        compute="no"), TYPE, "compute"),
    (lambda p: astromorph.annotate_dask(None, _fits(p), model="morphology"),
     astromorph.AstromorphError, "NoneType"),
    (lambda p: astromorph.annotate_dask(CAT, _fits(p), model="morphology", size_col="r90",
                                        partition_size=True), VALUE, "partition_size"),
    (lambda p: astromorph.annotate_dask(CAT, _fits(p), model="morphology", size_col="r90",
                                        bogus=1), TYPE, "bogus"),
    (lambda p: astromorph.annotate(CAT, _fits(p), model="morphology", stamp_size=True), VALUE,
     "stamp_size"),  # was read as 1 arcsec
    (lambda p: astromorph.predict_files("morphology", _fits(p), crop_fraction=True), VALUE,
     "crop_fraction"),  # was read as 1.0
    (lambda p: astromorph.describe_flags("x"), TYPE, "'x'"),
    (lambda p: astromorph.describe_flags(None), TYPE, "None"),
    (lambda p: astromorph.describe_flags(-1), VALUE, "-1"),
    (lambda p: astromorph.describe_flags(2.5), VALUE, "2.5"),
    (lambda p: astromorph.SimilarityIndex(_emb(), chunk_elements=0), VALUE, "chunk_elements"),
    (lambda p: astromorph.SimilarityIndex(_emb(), chunk_elements="x"), TYPE, "chunk_elements"),
    (lambda p: astromorph.SimilarityIndex(_emb(), table=3), TYPE, "table"),
    (lambda p: astromorph.LabelHead(Cs=[]), TYPE, "Cs"),
    (lambda p: astromorph.LabelHead(Cs="x"), TYPE, "Cs"),
    (lambda p: astromorph.LabelHead(Cs=[1, -1]), VALUE, "Cs"),
    (lambda p: astromorph.LabelHead(cv=0), VALUE, "cv"),
    (lambda p: astromorph.LabelHead(cv="x"), TYPE, "cv"),
    (lambda p: astromorph.LabelHead(max_iter=0), VALUE, "max_iter"),
    (lambda p: astromorph.GaussianMixture("x"), TYPE, "n_components"),
    (lambda p: astromorph.GaussianMixture(2.5), VALUE, "n_components"),
    (lambda p: astromorph.GaussianMixture(k_range="x"), TYPE, "k_range"),
    (lambda p: astromorph.GaussianMixture(n_pca="x"), TYPE, "n_pca"),
    (lambda p: astromorph.GaussianMixture(max_iter=0), VALUE, "max_iter"),  # was UnboundLocalError
    (lambda p: astromorph.GaussianMixture(tol=-1), VALUE, "tol"),
    (lambda p: astromorph.GaussianMixture(tol="x"), TYPE, "tol"),
    (lambda p: astromorph.GaussianMixture(reg_covar=-1), VALUE, "reg_covar"),  # was LinAlgError
    (lambda p: astromorph.GaussianMixture(seed="x"), TYPE, "seed"),
    (lambda p: astromorph.cluster_table(Table({"embedding": _emb()}), n_components=2, prefix=3),
     TYPE, "prefix"),
    # a prefix that makes awkward column names (a space, a comma...) was taken as given
    (lambda p: astromorph.cluster_table(Table({"embedding": _emb()}), n_components=2,
                                        prefix="a b"), VALUE, "prefix 'a b'"),
    (lambda p: astromorph.evaluate_labels(RB, "real", model="real-bogus", threshold="0.5"),
     TYPE, "'0.5'"),
    (lambda p: astromorph.evaluate_labels(RB, "real", model="real-bogus", threshold=2), VALUE,
     "2"),
    (lambda p: astromorph.evaluate_labels(RB, "real", model="real-bogus", keep_flagged="no"),
     TYPE, "'no'"),
    (lambda p: astromorph.evaluate_labels(RB, "real", model="real-bogus", labels="x"), TYPE,
     "labels"),
    (lambda p: astromorph.evaluate_labels(RB, 3, model="real-bogus"), TYPE, "3"),
    (lambda p: astromorph.evaluate_labels(None, "real", model="real-bogus"), TYPE, "None"),
]


@pytest.mark.parametrize("call, error, text", TOP_LEVEL)
def test_top_level_bad_options(tmp_path, call, error, text):
    if "annotate_dask" in str(call.__code__.co_names):
        pytest.importorskip("dask")
    _check(lambda: call(tmp_path), error, text)


@pytest.fixture(scope="module")
def fitted():
    emb = _emb()
    table = Table({"embedding": emb, "y": np.arange(len(emb)) % 2})
    return (emb, table, astromorph.SimilarityIndex.from_table(table),
            astromorph.LabelHead(C=1.0).fit(emb, table["y"]),
            astromorph.GaussianMixture(2).fit(emb))


METHODS = [
    # chunk_rows=-1 used to return uninitialised rows (np.empty) or all NaN without a word
    (lambda e, t, i, h, g: h.decision_function(e, chunk_rows=-1), VALUE, "chunk_rows"),
    (lambda e, t, i, h, g: h.decision_function(e, chunk_rows=0), VALUE, "chunk_rows"),
    (lambda e, t, i, h, g: g.predict_proba(e, chunk_rows=-1), VALUE, "chunk_rows"),
    (lambda e, t, i, h, g: g.predict_proba(e, chunk_rows="x"), TYPE, "chunk_rows"),
    (lambda e, t, i, h, g: h.annotate(t, prefix=3), TYPE, "prefix"),
    (lambda e, t, i, h, g: h.annotate(t, prefix="x,y"), VALUE, "prefix 'x,y'"),
    (lambda e, t, i, h, g: g.annotate(t, prefix="a/b"), VALUE, "prefix 'a/b'"),
    (lambda e, t, i, h, g: g.annotate(t, prefix="_c"), VALUE, "prefix '_c'"),
    (lambda e, t, i, h, g: g.annotate(t, prefix="c\n"), VALUE, "prefix 'c\\n'"),
    (lambda e, t, i, h, g: i.search(e[:2], k=3, exclude=0), TYPE, "exclude"),
    (lambda e, t, i, h, g: i.search(e[:2], k=3, exclude=[1, 2]), TYPE, "exclude"),
    (lambda e, t, i, h, g: i.query(row=0, include_query="no"), TYPE, "include_query"),
    (lambda e, t, i, h, g: i.query(row=0, columns=3), TYPE, "columns"),
    (lambda e, t, i, h, g: i.query(row=0, columns=["nope"]), astromorph.AstromorphError, "nope"),
    (lambda e, t, i, h, g: i.query(vector="x"), TYPE, "vector"),
    (lambda e, t, i, h, g: astromorph.embeddings.embedding_map(e, perplexity="x"), TYPE,
     "perplexity"),
    (lambda e, t, i, h, g: astromorph.embeddings.embedding_map(e, seed="x"), TYPE, "seed"),
    (lambda e, t, i, h, g: astromorph.embeddings.display_image("x"), astromorph.AstromorphError,
     "dtype"),
]


@pytest.mark.parametrize("call, error, text", METHODS)
def test_method_bad_options(fitted, call, error, text):
    _check(lambda: call(*fitted), error, text)


def test_plot_bad_options(tmp_path):
    pytest.importorskip("matplotlib")
    from astromorph.embeddings import plot_map

    _check(lambda: plot_map(_emb(), tmp_path / "m.png", max_points="x"), TYPE, "max_points")
    _check(lambda: plot_map(_emb(), tmp_path / "m.png", dpi="x"), TYPE, "dpi")
    _check(lambda: plot_map(_emb(), tmp_path / "m.png", max_points=1), VALUE, "max_points")
    _check(lambda: plot_map(_emb(), tmp_path / "m.png", max_points=2.5), VALUE, "2.5")
    # labels that are no sequence of one label per row (a number, a string) used to leak
    # TypeError / IndexError from inside
    _check(lambda: plot_map(_emb(), tmp_path / "m.png", labels=5), TYPE, "labels")
    _check(lambda: plot_map(_emb(), tmp_path / "m.png", labels="a" * 40), TYPE, "labels")
    _check(lambda: plot_map(_emb(), tmp_path / "m.png", labels=np.zeros((40, 2))), TYPE,
           "labels")
    # "no" is a true value for Python: it must not replace an existing picture
    (tmp_path / "old.png").write_bytes(b"keep")
    _check(lambda: plot_map(_emb(), tmp_path / "old.png", overwrite="no"), TYPE, "'no'")
    assert (tmp_path / "old.png").read_bytes() == b"keep"
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("argv, option", [
    (["annotate", "cat.ecsv", "-i", "g.fits", "-m", "morphology", "--stamp-size", "inf"],
     "--stamp-size"),
    (["annotate", "cat.ecsv", "-i", "g.fits", "-m", "morphology", "--stamp-size", "nan"],
     "--stamp-size"),
    (["predict", "real-bogus", "t.fits", "--crop-fraction", "nan"], "--crop-fraction"),
    (["similar", "emb.ecsv", "--ra", "1", "--dec", "2", "--max-separation", "inf"],
     "--max-separation"),
    (["evaluate", "t.ecsv", "--model", "real-bogus", "--truth", "y", "--threshold", "nan"],
     "--threshold"),
])
def test_cli_refuses_infinite_and_nan_numbers(capsys, argv, option):
    """``float()`` reads 'inf' and 'nan': the command line refuses them in one line naming
    the option (an infinite --stamp-size passed the '> 0' check and was refused later, as
    the Python parameter stamp_size)."""
    from astromorph import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"astromorph: error: {option} must be a finite number"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("output", ["out.ecsv/", "results/"])
def test_cli_output_naming_a_folder(tmp_path, monkeypatch, capsys, output):
    """An output ending with a path separator names a folder: refused in one line before any
    work (``Path`` dropped the separator, so 'out.ecsv/' wrote a file 'out.ecsv', and
    'results/' was 'cannot tell the table format of results')."""
    from astromorph import cli

    from astropy.io import fits

    monkeypatch.chdir(tmp_path)
    fits.PrimaryHDU(TRIP.astype(np.float32)).writeto("t.fits")
    assert cli.main(["predict", "real-bogus", "t.fits", "-o", output]) == 2
    err = capsys.readouterr().err
    assert err == f"astromorph: error: output {output!r} names a folder: give a file name in it\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.fits"]


def test_write_table_refuses_a_folder_name(tmp_path):
    """write_table('out.ecsv/') wrote a file 'out.ecsv' (Path drops the separator)."""
    from astromorph._io import write_table

    with pytest.raises(InvalidArgumentError, match="names a folder"):
        write_table(Table({"a": [1]}), f"{tmp_path}/out.ecsv/")
    assert list(tmp_path.iterdir()) == []


NOT_AN_IMAGE = "not an image"  # work done before the keywords are checked fails on it
NO_EMBEDDING = Table({"x": [1.0, 2.0]})  # as does a table without the embedding column

# every public function with ``**options`` (see the test after this one), called with an
# unknown keyword and arguments that fail if any work is done before the keywords are checked;
# the keyword is a near miss of one it takes, which "did you mean" names
UNKNOWN_KEYWORD = [
    (lambda p: pp.preprocess_gri(NOT_AN_IMAGE, NOT_AN_IMAGE, NOT_AN_IMAGE, strech=2),
     "preprocess_gri", "strech", "stretch"),
    (lambda p: pp.preprocess_single_band(NOT_AN_IMAGE, strech=2), "preprocess_single_band",
     "strech", "stretch"),
    (lambda p: pp.preprocess_first_cutout(NOT_AN_IMAGE, bin_fator=2), "preprocess_first_cutout",
     "bin_fator", "bin_factor"),
    (lambda p: pp.preprocess_radio_image(NOT_AN_IMAGE, pixel_scale_arcsec=3.0, crop_pixel=2),
     "preprocess_radio_image", "crop_pixel", "crop_pixels"),
    (lambda p: astromorph.cluster_table(NO_EMBEDDING, covariance="diag"), "cluster_table",
     "covariance", "covariance_type"),
    # was "SimilarityIndex._build() got an unexpected keyword argument 'backnd'", after the
    # embeddings were read
    (lambda p: astromorph.SimilarityIndex.from_table(NO_EMBEDDING, backnd="exact"),
     "SimilarityIndex.from_table", "backnd", "backend"),
    # was "annotate has no option(s) batchsize", naming a function the caller did not call
    (lambda p: astromorph.annotate_dask(NO_EMBEDDING, str(p / "none.fits"), model="no-such",
                                        batchsize=8), "annotate_dask", "batchsize", "batch_size"),
    (lambda p: astromorph.annotate_dask(NO_EMBEDDING, model="no-such", pixelscale=0.4),
     "annotate_dask", "pixelscale", "pixel_scale"),
]


@pytest.mark.parametrize("call, name, keyword, meant", UNKNOWN_KEYWORD)
def test_unknown_keywords_name_the_public_function(tmp_path, call, name, keyword, meant):
    """An unknown keyword passed through ``**options`` named a private helper
    (``_gri_to_rgb() got an unexpected keyword argument 'foo'``, ``_grey_uint8()``,
    ``SimilarityIndex._build()``), or a function the caller did not call (``annotate has no
    option(s)``), after the work was done: it is now astromorph's InvalidArgumentTypeError (a
    TypeError) from `check_options`, naming the public function, the keyword, the one meant
    and those it takes, before any work."""
    with pytest.raises(InvalidArgumentTypeError,
                       match=rf"^{re.escape(name)}\(\) got an unexpected keyword argument "
                             rf"'{keyword}'; did you mean '{meant}'\? "
                             r"\(it also takes: .+\)$") as caught:
        call(tmp_path)
    assert isinstance(caught.value, TypeError)


def _public_callables():
    """(name, function) of every public function and method in astromorph's ``__all__``s."""
    import inspect

    from astromorph import embeddings

    found = {}

    def add(name, obj):
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                member = getattr(member, "__func__", member)
                if inspect.isfunction(member):
                    found[f"{name}.{attr}"] = member
        elif inspect.isfunction(obj):
            found[name] = obj

    for module in (astromorph, embeddings, pp):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):  # preprocessing.optical...: their public functions
                for attr in getattr(obj, "__all__", ()):
                    add(attr, getattr(obj, attr))
            else:
                add(name, obj)
    return found


def test_unknown_keyword_cases_cover_every_public_var_keyword_function():
    """Every public function or method taking ``**options`` is in UNKNOWN_KEYWORD, so that a
    new one is checked too (the others get Python's own TypeError naming themselves)."""
    import inspect

    with_options = {name.replace(".__init__", "") for name, function in
                    _public_callables().items()
                    if any(p.kind is p.VAR_KEYWORD
                           for p in inspect.signature(function).parameters.values())}
    assert with_options == {case[1] for case in UNKNOWN_KEYWORD}


POSITION_TABLE = Table({"embedding": _emb(), "ra": np.linspace(10, 11, 40),
                        "dec": np.zeros(40)})


@pytest.mark.parametrize("option", ["ra_col", "dec_col", "coord_col"])
@pytest.mark.parametrize("value", [3, True, 2.5, ["ra"]])
def test_column_name_options_of_the_wrong_type(tmp_path, option, value):
    """A column-name option that is no string was an AttributeError ('int' object has no
    attribute 'lower') from inside (ra_col/dec_col) or 'no column 3' (coord_col): it is
    now an InvalidArgumentTypeError naming the option and the value, in `annotate` and
    `SimilarityIndex.row_of_position` alike."""
    index = astromorph.SimilarityIndex.from_table(POSITION_TABLE)
    text = f"{option} must be a column name (str), got {value!r}"
    _check(lambda: index.row_of_position((10.0, 0.0), **{option: value}), TYPE, text)
    _check(lambda: astromorph.annotate(CAT, _fits(tmp_path), model="morphology",
                                       size_col="r90", **{option: value}), TYPE, text)


@pytest.mark.parametrize("value", [True, False, "2", None, [2]])
def test_threads_of_the_wrong_type(value):
    """threads=True or "2" was an InvalidArgumentError that is no TypeError, unlike
    batch_size=True or "8": a value of the wrong type is now an InvalidArgumentTypeError
    for both."""
    if value is None:  # None is the default: ONNX Runtime's own choice
        astromorph.load_model("morphology", threads=value)
        return
    _check(lambda: astromorph.load_model("morphology", threads=value), TYPE,
           f"threads must be a whole number of threads, got {value!r}")


def test_bools_are_no_seed_or_angle(fitted):
    """seed=True was taken as the seed 1, max_separation=True as 1 arcsec: a boolean is
    refused where a number is needed, as batch_size=True is."""
    from astromorph.embeddings import GaussianMixture, embedding_map

    _check(lambda: GaussianMixture(2, seed=True), TYPE, "seed")
    _check(lambda: embedding_map(_emb(), method="pca", seed=True), TYPE, "seed")
    index = fitted[2]
    _check(lambda: index.row_of_position((10.0, 0.0), max_separation=True), TYPE,
           "max_separation")


@pytest.mark.parametrize("value", ["3", None, [3]])
def test_k_that_is_no_number(fitted, value):
    """k="3" or None was a plain InvalidArgumentError while k=True was an
    InvalidArgumentTypeError: something that is no number is now the latter, as for
    chunk_rows, batch_size and threads."""
    emb, _, index, _, _ = fitted
    _check(lambda: index.search(emb[:2], k=value), TYPE, f"k must be a whole number, got "
           f"{value!r}")
    _check(lambda: index.query(0, k=value), TYPE, f"k must be a whole number, got {value!r}")


@pytest.mark.parametrize("value, error, text", [
    ([3], TYPE, "providers must be execution provider names (str), got 3 in [3]"),
    (["cpu", None], TYPE, "providers must be execution provider names (str), got None in "
                          "['cpu', None]"),
    ("quantum", VALUE, "unknown execution provider 'quantum' in providers='quantum'"),
    (["cpu", "quantum"], VALUE, "unknown execution provider 'quantum' in providers=['cpu', "
                                "'quantum']"),
])
def test_bad_providers_name_the_option(value, error, text):
    """The errors for a bad entry of ``providers`` did not name the option (``execution
    provider names must be strings, got 3``): they now name it and the whole value, as
    every other option's errors do."""
    _check(lambda: astromorph.load_model("morphology", providers=value), error, text)


def test_dpi_too_small_to_draw_text(tmp_path, fitted):
    """dpi=3 passed the 'positive' check and failed inside matplotlib with
    ``RuntimeError: FT_Set_Char_Size ... invalid ppem value``: it is now an
    InvalidArgumentError naming dpi, and no picture is left behind."""
    pytest.importorskip("matplotlib")
    emb, _, index, _, _ = fitted
    result = index.query(0, k=3)
    _check(lambda: index.gallery(result, tmp_path / "g.png", images=np.zeros((40, 8, 8)),
                                 dpi=3), VALUE, "dpi=3")
    _check(lambda: astromorph.evaluate_labels(RB, "real", model="real-bogus").plot(
        tmp_path / "e.png", dpi=3), VALUE, "dpi=3")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_labels_takes_a_loaded_model():
    """``model=`` takes a name, a path or a loaded `Model` in annotate, annotate_stamps,
    predict_files and SimilarityIndex.query; evaluate_labels refused a `Model`
    (InvalidArgumentTypeError 'model must be a name or a path')."""
    by_name = astromorph.evaluate_labels(RB, "real", model="real-bogus")
    loaded = astromorph.evaluate_labels(RB, "real", model=astromorph.load_model("real-bogus"))
    assert loaded.summary() == by_name.summary()
    assert loaded.metrics == by_name.metrics


CHOICES = [  # (call with the choice option set to `value`, the option's name)
    (lambda v: astromorph.annotate_stamps(STAMPS, model="morphology", on_conflict=v),
     "on_conflict"),
    (lambda v: astromorph.load_model("morphology", precision=v), "precision"),
    (lambda v: astromorph.LabelHead(class_weight=v), "class_weight"),
    (lambda v: astromorph.SimilarityIndex(_emb(), backend=v), "backend"),
    (lambda v: astromorph.GaussianMixture(covariance_type=v), "covariance_type"),
    (lambda v: astromorph.embeddings.embedding_map(_emb(), method=v), "method"),
    (lambda v: pp.preprocess_radio_image(RADIO, pixel_scale_arcsec=1.8, stretch=v), "stretch"),
    (lambda v: astromorph.evaluate_labels(RB, "real", model="real-bogus").plot("e.png", kind=v),
     "kind"),
]


@pytest.mark.parametrize("value", [1, ["error"], b"error"])
@pytest.mark.parametrize("call, option", CHOICES)
def test_choice_options_given_no_string(call, option, value):
    """An option that takes one of a few names, given something that is no string
    (``on_conflict=1``, ``precision=["int8"]``), was a plain InvalidArgumentError, while
    ``annotate_dask(scheduler=3)`` was an InvalidArgumentTypeError: every choice option
    now raises the latter (also an InvalidArgumentError and a TypeError), naming the
    option and the value."""
    with pytest.raises(InvalidArgumentTypeError) as info:
        call(value)
    assert str(info.value).startswith(f"{option} must be ")
    assert str(info.value).endswith(f", got {value!r}")


@pytest.mark.parametrize("call, option", CHOICES)
def test_choice_options_given_an_unknown_name(call, option):
    """An unknown name stays an InvalidArgumentError that is no TypeError."""
    with pytest.raises(InvalidArgumentError) as info:
        call("bogus")
    assert not isinstance(info.value, TypeError)
    assert option in str(info.value) and "'bogus'" in str(info.value)


def test_every_command_names_its_model_with_dash_m():
    """The model was MODEL in predict, -m/--model in annotate, evaluate and demo, and only
    --model in similar: every command that takes a model now takes -m/--model."""
    from astromorph import cli

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    with_model = {name: next((a.option_strings for a in p._actions if a.dest == "model"), None)
                  for name, p in sub.choices.items()}
    assert {n for n, o in with_model.items() if o} == {"annotate", "predict", "demo", "similar",
                                                       "evaluate"}
    assert all(o == ["-m", "--model"] for o in with_model.values() if o), with_model


def _stamp_files(directory, n=2):
    from astropy.io import fits

    for i in range(n):
        fits.PrimaryHDU((TRIP + i).astype(np.float32)).writeto(directory / f"t{i}.fits")
    return [str(directory / f"t{i}.fits") for i in range(n)]


@pytest.mark.parametrize("form", [
    ["real-bogus", "{0}", "{1}"],
    ["-m", "real-bogus", "{0}", "{1}"],
    ["{0}", "--model", "real-bogus", "{1}"],
    ["-m", "real-bogus", "real-bogus", "{0}", "{1}"],  # the same model both ways
    ["real-bogus", "{0}", "-o", "{out}", "{1}"],  # an input after an option: was refused
    ["real-bogus", "{0}", "-o", "{out}", "--", "{1}"],  # '--' after an option: was refused
])
def test_predict_takes_the_model_either_way(tmp_path, capsys, form):
    """``astromorph predict -m MODEL INPUT...`` was 'unrecognized arguments: -m'; an input
    after an option (``predict M a.fits -o OUT b.fits``) was 'unrecognized arguments:
    b.fits'. Every form now scores both files, in the order given."""
    from astromorph import cli

    files, out = _stamp_files(tmp_path), str(tmp_path / "out.ecsv")
    argv = [w.format(*files, out=out) for w in form]
    assert cli.main(["predict", "-q", *argv, *([] if "-o" in argv else ["-o", out])]) == 0
    table = Table.read(out)
    assert len(table) == 2 and table.meta["model"] == "real-bogus"
    assert [str(s).rsplit("/", 1)[-1] for s in table["source"]] == ["t0.fits", "t1.fits"]


@pytest.mark.parametrize("argv, message", [
    (["-m", "real-bogus", "morphology", "t.fits"],
     "the model is given twice and differs: MODEL 'morphology' and -m/--model 'real-bogus'"),
    (["-m", "real-bogus"], "the following arguments are required: INPUT"),
    (["t.fits"], "the following arguments are required: MODEL (or -m/--model) and INPUT"),
    (["real-bogus", "t.fits", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_predict_model_usage_errors(capsys, argv, message):
    """A model given both as MODEL and -m/--model that differ is a usage error (exit status
    2) naming both, as are a missing model or input and an unknown option."""
    from astromorph import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["predict", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"astromorph predict: error: {message}" in err, err


def test_predict_input_with_a_name_too_long_for_the_system(tmp_path, capsys):
    """``predict -m M NAME`` with a NAME too long for the file system (or under a folder
    that cannot be searched) crashed with a traceback, OSError 'File name too long', while
    looking whether NAME is a model folder; NAME is now an input, refused as such."""
    from astromorph import cli

    name = str(tmp_path / ("a" * 300 + ".fits"))
    assert cli.main(["predict", "-m", "real-bogus", name, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astromorph: error: ") and "a" * 300 in err, err


@pytest.mark.parametrize("argv", [["predict"], ["predict", "--help"]])
def test_predict_usage_says_how_it_is_called(capsys, argv):
    """The usage line read ``[-m MODEL] ... [MODEL] [INPUT ...]`` (both positional
    arguments optional to argparse since -m/--model was added), as if ``astromorph
    predict`` alone were a call; it now says a model and an input are needed. With no
    arguments: that usage line and the usage error (exit status 2)."""
    from astromorph import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    usage = " ".join((out if "--help" in argv else err).split())  # unwrapped
    assert info.value.code == (0 if "--help" in argv else 2)
    assert usage.startswith("usage: astromorph predict [-h] [-o OUT] "), usage
    assert "[-q] (MODEL | -m MODEL) INPUT [INPUT ...]" in usage, usage
    assert "[MODEL]" not in usage and "[-m MODEL]" not in usage, usage
    if "--help" in argv:  # the help still lists both ways
        assert "-m MODEL, --model MODEL" in usage and "  MODEL " in out, out
    else:
        assert usage.endswith("astromorph predict: error: the following arguments are "
                              "required: MODEL (or -m/--model) and INPUT"), usage


def test_similar_takes_dash_m(capsys):
    """``similar -m`` was 'unrecognized arguments: -m' (only --model was taken)."""
    from astromorph import cli

    assert cli.main(["similar", "emb.ecsv", "--query", "0", "-m", "embedding"]) == 2
    assert capsys.readouterr().err == ("astromorph: error: -m/--model applies only with "
                                       "--image\n")


@pytest.mark.parametrize("argv, metavar", [
    (["annotate", "-m", "morphology"], "CATALOG"), (["predict"], "MODEL"),
    (["predict", "-m", "morphology"], "INPUT"), (["similar"], "TABLE"),
    (["evaluate", "--truth", "y", "-m", "morphology"], "TABLE")])
def test_missing_positional_named_in_capitals(capsys, argv, metavar):
    """The usage errors of a missing positional argument named it as the usage line and
    the docs do (TABLE, INPUT), but annotate's was 'the following arguments are required:
    catalog' (its usage line said 'catalog' too, the README CATALOG)."""
    from astromorph import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: the following arguments are required: {metavar}" in err, err


def _cli_inputs(path):
    """Small input files for the command-line tests below, written in the folder ``path``."""
    from astropy.io import fits

    fits.PrimaryHDU(TRIP.astype(np.float32)).writeto(path / "t.fits")
    (path / "e.fits").touch()
    (path / "d").mkdir()
    STAMPS.write(path / "stamps.ecsv")
    rng = np.random.default_rng(5)
    Table({"science": rng.normal(size=(2, 63, 63)), "reference": rng.normal(size=(2, 63, 63)),
           "difference": rng.normal(size=(2, 63, 63)), "neg": [0.0, 1.0]}).write(
        path / "triplets.ecsv")
    Table({"embedding": _emb(), "lab": ["a", "b"] * 20}).write(path / "emb.ecsv")
    Table({"morph_label": ["spiral", "elliptical"], "morph_p_spiral": [0.9, 0.1],
           "morph_p_elliptical": [0.1, 0.9], "morph_flags": [0, 0], "y": ["s", "e"]}).write(
        path / "morph.ecsv")


@pytest.mark.parametrize("argv, message", [
    (["predict", "real-bogus", "t.fits", "--write-header", "e.fits"],
     "--write-header 'e.fits' is not a directory"),
    (["predict", "real-bogus", "t.fits", "--providers", ""],
     "--providers '' names no execution provider; use"),
    (["predict", "real-bogus", "t.fits", "--providers", "cpu,quantum"],
     "unknown execution provider 'quantum' in --providers 'cpu,quantum'; use"),
    (["demo", "--providers", ","], "--providers ',' names no execution provider"),
    (["annotate", "stamps.ecsv", "-m", "morphology", "--providers", ""],
     "--providers '' names no execution provider"),
    (["similar", "emb.ecsv", "--image", "t.fits", "--providers", ""],
     "--providers '' names no execution provider"),
    (["annotate", "stamps.ecsv", "-m", "morphology", "--pixel-scale", "-1"],
     "--pixel-scale must be positive, got -1.0"),
    (["annotate", "stamps.ecsv", "-m", "morphology", "--pixel-scale", "nope"],
     "--pixel-scale column 'nope' not in the table"),
    (["annotate", "stamps.ecsv", "-m", "morphology", "--stamp-col", "image", "--stamp-col",
      "image"], "--stamp-col names a column more than once: ['image', 'image']; a single band "
                "is given as one column (--stamp-col 'name')"),
    (["annotate", "triplets.ecsv", "-m", "real-bogus", "--negative-col", "neg"],
     "--negative-col must be boolean"),
    (["annotate", "triplets.ecsv", "-m", "real-bogus", "--centre-col", "nope"],
     "--centre-col column(s) ['nope'] not in the table"),
    (["annotate", "triplets.ecsv", "-m", "real-bogus", "--centre-col", "neg", "--centre-col",
      "nope"], "--centre-col column(s) ['nope'] not in the table"),
    (["annotate", "triplets.ecsv", "-m", "real-bogus", "--centre-col", "neg"],
     "--centre-col has (2,) values for a table of 2 rows"),
    (["annotate", "triplets.ecsv", "-m", "real-bogus", "--centre-col", "neg", "--centre-col",
      "neg", "--centre-col", "neg"],
     "--centre-col takes one column of (x, y) pairs or two columns, x then y; got 3"),
    (["annotate", "stamps.ecsv", "-m", "morphology", "--centre-col", "nope"],
     "centre= (--centre-col) applies to difference-imaging models; 'morphology' is an "
     "optical model"),
    (["annotate", "triplets.ecsv", "-m", "real-bogus", "-i", "t.fits", "--centre-col", "neg"],
     "--centre-col: for tables that hold their own stamps, not with --image"),
    (["cluster", "emb.ecsv", "--map", "m.png", "--map-method", "umap"],
     "--map-method 'umap' needs umap-learn"),
    (["cluster", "emb.ecsv", "--prefix", ""], "--prefix must be a non-empty string, got ''"),
    (["classify", "emb.ecsv", "--labels", "lab", "--prefix", ""],
     "--prefix must be a non-empty string, got ''"),
    (["cluster", "emb.ecsv", "--prefix", "a b"], "--prefix 'a b' cannot start column names"),
    (["classify", "emb.ecsv", "--labels", "lab", "--prefix", "a b"],
     "--prefix 'a b' cannot start column names"),
    (["similar", "emb.ecsv", "--query", "0", "--gallery", "g.png", "--source-column", "nope"],
     "--source-column 'nope' names no column of the table"),
    (["evaluate", "morph.ecsv", "--truth", "y", "-m", "morphology", "--map", "s=nope"],
     "--map maps 's' to 'nope', which is none of the values"),
    (["evaluate", "morph.ecsv", "--truth", "y", "-m", "morphology", "--threshold", "0.5"],
     "--threshold is for scores (real-bogus)"),
    (["evaluate", "morph.ecsv", "--truth", "y", "-m", "morphology", "--target-fnr", "0.1"],
     "--target-fnr is for scores (real-bogus)"),
    (["evaluate", "morph.ecsv", "--truth", "y", "-m", "morphology", "--suffix", "_2"],
     "--suffix names the columns of a run"),
    # the TABLE of these commands is no catalogue
    (["similar", "d", "--query", "0"], "table 'd' is a directory, not a file"),
    (["cluster", "d"], "table 'd' is a directory, not a file"),
    (["classify", "d", "--labels", "lab"], "table 'd' is a directory, not a file"),
    (["evaluate", "d", "--truth", "y", "-m", "real-bogus"], "table 'd' is a directory, not a file"),
    (["annotate", "d", "-m", "morphology"], "catalogue 'd' is a directory, not a file"),
])
def test_cli_errors_name_the_options_typed(tmp_path, monkeypatch, capsys, argv, message):
    """The one-line errors of the commands named the Python parameter an option is passed on
    as (``write_header='e.fits' is not a directory``, ``method='umap' needs umap-learn``
    for --map-method) and called the TABLE of similar, cluster, classify and evaluate a
    catalogue: they now name the option as typed. The Python functions' errors still name
    their parameters."""
    from astromorph import cli

    monkeypatch.chdir(tmp_path)
    _cli_inputs(tmp_path)
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not installed
    assert cli.main([*argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astromorph: error: ") and message in err, err
    assert err.count("\n") == 1


def test_cli_error_of_an_option_not_given(tmp_path, monkeypatch, capsys):
    """Without --providers, providers= came from $ASTROMORPH_PROVIDERS: it is not named
    --providers (which the user did not type)."""
    from astromorph import cli

    monkeypatch.chdir(tmp_path)
    _cli_inputs(tmp_path)
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", ",")
    assert cli.main(["predict", "real-bogus", "t.fits", "-q"]) == 2
    assert capsys.readouterr().err == (
        "astromorph: error: providers=',' names no execution provider; use 'auto', 'cpu', "
        "'cuda' (or 'gpu'), 'tensorrt' or an ONNX Runtime provider name (from "
        "$ASTROMORPH_PROVIDERS)\n")


def test_python_errors_still_name_the_parameters(tmp_path):
    """The renaming is the command line's: the functions' errors name their parameters."""
    (tmp_path / "e.fits").touch()
    _check(lambda: astromorph.predict_files("morphology", _fits(tmp_path),
                                            write_header=tmp_path / "e.fits"),
           VALUE, "write_header=")
    _check(lambda: astromorph.load_model("morphology", providers=""), VALUE, "providers=''")
    _check(lambda: astromorph.annotate_stamps(STAMPS, model="morphology", pixel_scale=-1),
           VALUE, "pixel_scale must be positive")

"""Inference core: registry, checksums, sessions, providers, predict, CLI."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import astromorph
from astromorph import cli
from astromorph.exceptions import (AmbiguousInputWarning, ChecksumMismatchError, InputError, InputShapeError,
                                   InvalidArgumentError, InvalidArgumentTypeError,
                                   InvalidModelNameError, ModelLoadError,
                                   MissingRuntimeError, ModelCardError, ModelNotFoundError,
                                   ProviderFallbackWarning, AstromorphWarning,
                                   InputNotFoundError)
from astropy.utils.exceptions import AstropyUserWarning
from astropy.table import Table

from conftest import REPO, cuda_available, traced_peak
from tiny_models import make_card, sha256, tiny_classifier_onnx, tiny_model_with_variants


def test_warning_hierarchy():
    assert issubclass(ProviderFallbackWarning, AstromorphWarning)
    assert issubclass(AstromorphWarning, AstropyUserWarning)


# ---------------------------------------------------------------------- registry
def test_list_and_load_by_name(tiny_registry):
    assert astromorph.list_models() == ["tiny"]
    model = astromorph.load_model("tiny", providers="cpu")
    assert model.name == "tiny" and model.version == "0.0.1"
    assert model.input_shape == (2, 4, 4)
    assert model.labels == ["a", "b"]
    assert model.providers == ["CPUExecutionProvider"]
    assert re.fullmatch(r"[0-9a-f]{64}", model.sha256)
    assert "tiny" in repr(model)


def test_incomplete_model_dir_not_listed(tiny_registry):
    (tiny_registry / "half").mkdir()
    tiny_classifier_onnx(tiny_registry / "half" / "model.onnx")  # no card
    assert astromorph.list_models() == ["tiny"]


def test_file_card_beside_it_comes_before_the_folders_card(tmp_path):
    """``<stem>.json`` beside an ONNX file is its card, even where the folder also holds a
    ``card.json`` (of the folder's model.onnx); a file without its own card takes the
    folder's."""
    tiny_classifier_onnx(tmp_path / "model.onnx")
    (tmp_path / "card.json").write_text(json.dumps(make_card(tmp_path / "model.onnx",
                                                             name="folder")))
    tiny_classifier_onnx(tmp_path / "other.onnx", spatial=True)
    (tmp_path / "other.json").write_text(json.dumps(make_card(tmp_path / "other.onnx",
                                                              name="other")))
    assert astromorph.load_model(tmp_path / "other.onnx").name == "other"
    assert astromorph.load_model(tmp_path / "model.onnx").name == "folder"


def test_load_by_directory_and_file(tmp_path):
    tiny_classifier_onnx(tmp_path / "net.onnx")
    (tmp_path / "net.json").write_text(json.dumps(make_card(tmp_path / "net.onnx", name="mine")))
    by_file = astromorph.load_model(tmp_path / "net.onnx")
    by_str = astromorph.load_model(str(tmp_path / "net.onnx"))
    assert by_file.name == by_str.name == "mine"
    d = tmp_path / "dir"
    d.mkdir()
    tiny_classifier_onnx(d / "model.onnx")
    (d / "card.json").write_text(json.dumps(make_card(d / "model.onnx", name="dirmodel")))
    assert astromorph.load_model(d).name == "dirmodel"



def test_variant_file_loaded_by_path_is_that_variant(tmp_path):
    """A card's variant (or single-band graph) file given by path was checked against the
    main file's sha256: 'modified or corrupted' for an intact file."""
    tiny_classifier_onnx(tmp_path / "model.onnx")
    tiny_classifier_onnx(tmp_path / "model.int8.onnx", spatial=True)
    int8 = sha256(tmp_path / "model.int8.onnx")
    card = make_card(tmp_path / "model.onnx",
                     variants={"int8": {"file": "model.int8.onnx", "sha256": int8}},
                     single_band_graph={"file": "model.grey.onnx", "sha256": int8,
                                        "input_shape": [1, 4, 4]})
    (tmp_path / "card.json").write_text(json.dumps(card))
    model = astromorph.load_model(tmp_path / "model.int8.onnx")
    assert (model.precision, model.sha256) == ("int8", int8)
    with pytest.raises(InvalidArgumentError, match="model.int8.onnx.*int8.*float32"):
        astromorph.load_model(tmp_path / "model.int8.onnx", precision="float32")
    tiny_classifier_onnx(tmp_path / "model.grey.onnx", channels=1)
    with pytest.raises(InvalidArgumentError, match="model.grey.onnx.*single-band graph"):
        astromorph.load_model(tmp_path / "model.grey.onnx")

def test_loaded_model_of_another_precision_is_refused(tmp_path):
    """A loaded int8 Model given where float32 is asked for (``precision="float32"``, as
    every entry point passes it on) is refused, not run as if it were the float32 file;
    the precision it has, or none, is taken."""
    from astromorph._model import as_model

    tiny_classifier_onnx(tmp_path / "model.onnx")
    tiny_classifier_onnx(tmp_path / "model.int8.onnx", spatial=True)
    card = make_card(tmp_path / "model.onnx", variants={"int8": {
        "file": "model.int8.onnx", "sha256": sha256(tmp_path / "model.int8.onnx")}})
    (tmp_path / "card.json").write_text(json.dumps(card))
    int8 = astromorph.load_model(tmp_path, precision="int8")
    assert as_model(int8) is as_model(int8, precision="int8") is int8
    with pytest.raises(InvalidArgumentError, match="precision='float32'.*'int8'"):
        as_model(int8, precision="float32")
    plain = astromorph.load_model(tmp_path)
    assert as_model(plain, precision="float32") is plain
    with pytest.raises(InvalidArgumentError, match="precision='int8'.*'float32'"):
        as_model(plain, precision="int8")


def test_variant_runs_single_bands_through_its_own_graph(tmp_path):
    """The card's single-band graph is folded from the float32 file: an int8 variant given
    single bands replicates them into its own graph, and its card lists no single-band
    graph; the float32 model runs them through the single-band graph."""
    labels = ("a", "b", "c")
    tiny_model_with_variants(tmp_path, labels=labels, spatial_int8=True)
    grey = np.random.default_rng(2).normal(size=(4, 4, 4)).astype(np.float32)
    colour = np.repeat(grey[:, None], 3, axis=1)
    int8 = astromorph.load_model(tmp_path, precision="int8")
    assert "single_band_graph" not in int8.card
    np.testing.assert_allclose(int8.predict(grey)["probabilities"],
                               int8.predict(colour)["probabilities"], rtol=1e-5)
    plain = astromorph.load_model(tmp_path)
    np.testing.assert_allclose(plain.predict(grey)["probabilities"],
                               plain.predict(colour)["probabilities"], rtol=1e-5)
    assert plain._single_band


def test_variant_card_has_its_metrics_and_the_main_files_as_reference(tmp_path):
    """The card of a variant (model_card(..., precision="int8"), Model.card) has the
    variant's sha256, precision and held-out metrics, with the float32 file's metrics under
    metrics["reference"] for comparison."""
    tiny_classifier_onnx(tmp_path / "model.onnx")
    tiny_classifier_onnx(tmp_path / "model.int8.onnx", spatial=True)
    int8_digest = sha256(tmp_path / "model.int8.onnx")
    card = make_card(tmp_path / "model.onnx", metrics={"accuracy": 0.9},
                     variants={"int8": {"file": "model.int8.onnx", "sha256": int8_digest,
                                        "metrics": {"accuracy": 0.89}}})
    (tmp_path / "card.json").write_text(json.dumps(card))
    seen = astromorph.model_card(tmp_path, precision="int8")
    assert (seen["sha256"], seen["precision"]) == (int8_digest, "int8")
    assert seen["metrics"] == {"accuracy": 0.89, "reference": {"accuracy": 0.9}}
    assert "variants" not in seen
    assert astromorph.load_model(tmp_path, precision="int8").card["metrics"] == seen["metrics"]
    assert astromorph.model_card(tmp_path)["metrics"] == {"accuracy": 0.9}


def test_tampered_file_refused(tiny_registry):
    path = tiny_registry / "tiny" / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ChecksumMismatchError, match="sha256") as info:
        astromorph.load_model("tiny")
    assert info.value.actual != info.value.expected
    assert cli.main(["models", "--verify"]) == 1


@pytest.mark.parametrize("where", [0, 31, 63])
def test_card_sha256_wrong_in_one_digit_is_refused(tiny_registry, where):
    """The whole digest is compared: a card whose sha256 differs from the file's in one hex
    digit (first, middle or last) is a ChecksumMismatchError, from load_model and from
    `astromorph models --verify`."""
    card_path = tiny_registry / "tiny" / "card.json"
    card = json.loads(card_path.read_text())
    digest = card["sha256"]
    card["sha256"] = digest[:where] + ("0" if digest[where] != "0" else "1") + digest[where + 1:]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ChecksumMismatchError) as info:
        astromorph.load_model("tiny")
    assert (info.value.expected, info.value.actual) == (card["sha256"], digest)
    assert cli.main(["models", "--verify"]) == 1


def test_model_file_replaced_with_its_card_gets_a_new_session(tiny_registry):
    """A model file and card replaced together (a new version at the same path) are
    verified and run as the new model: the cached session of the old file is not reused."""
    old = astromorph.load_model("tiny")
    x = _inputs(3)
    before = old.predict(x)["probabilities"]
    path = tiny_registry / "tiny" / "model.onnx"
    tiny_classifier_onnx(path, spatial=True)
    (tiny_registry / "tiny" / "card.json").write_text(json.dumps(make_card(path)))
    new = astromorph.load_model("tiny")
    assert new.sha256 == sha256(path) != old.sha256
    assert new._session is not old._session
    assert not np.allclose(new.predict(x)["probabilities"], before)


def test_file_changed_after_a_first_load_is_refused(tiny_registry):
    """The sha256 is cached per file version: a model file replaced after a first load in the
    same process is hashed again, and refused."""
    astromorph.load_model("tiny")
    path = tiny_registry / "tiny" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(ChecksumMismatchError):
        astromorph.load_model("tiny")


def test_flag_bits_and_names():
    """The bit values are a file format (they are written to catalogues and documented)."""
    from astromorph import Flag, describe_flags

    assert {f.name: int(f) for f in Flag} == {
        "OFF_IMAGE": 1, "EDGE": 2, "BLANK": 4, "NO_WCS": 8, "EXTRAPOLATED": 16,
        "BAD_INPUT": 32, "CONSTANT": 64, "MISSING_BAND": 128, "NO_SOURCE": 256,
        "SATURATED": 512, "OUT_OF_DISTRIBUTION": 1024}
    assert describe_flags(0) == ""
    assert describe_flags(Flag.EDGE | Flag.BLANK) == "EDGE|BLANK"
    assert describe_flags(2 | 2048) == "EDGE|0x800"  # a bit from a newer astromorph
    from astromorph._adapters import FLAGS_DESCRIPTION  # the flags columns' description
    assert all(f"{int(f)} {f.name}" in FLAGS_DESCRIPTION for f in Flag)


def test_unusable_flags_are_the_three_that_leave_no_stamp():
    """`Flag.unusable` decides which rows get masked outputs: a source off every image, an
    unreadable input or a missing band leaves nothing to score; a row flagged only EDGE,
    BLANK, NO_WCS... is scored. Dropping one of the three would hand users scores of a
    stamp that does not exist."""
    from astromorph import Flag, describe_flags

    assert Flag.unusable() == Flag.OFF_IMAGE | Flag.BAD_INPUT | Flag.MISSING_BAND
    assert describe_flags(Flag.unusable()) == "OFF_IMAGE|BAD_INPUT|MISSING_BAND"


@pytest.mark.parametrize("name", ["..", "../tiny", "tiny/../../etc", "Tiny", "a b", "", "x" * 80])
def test_names_cannot_traverse(tiny_registry, name):
    with pytest.raises((InvalidModelNameError, ModelNotFoundError)):
        astromorph.load_model(name)


@pytest.mark.parametrize("name", ["Tiny", "tiny\n"])
def test_plain_invalid_name_is_name_error(tiny_registry, name):
    """A name with a final newline (``$`` of a regular expression lets one through) is no
    model name either."""
    with pytest.raises(InvalidModelNameError, match="not a valid model name"):
        astromorph.load_model(name)


def test_unknown_name_lists_available(tiny_registry):
    with pytest.raises(ModelNotFoundError, match="available: tiny"):
        astromorph.load_model("nonexistent")


def test_bad_cards(tmp_path):
    tiny_classifier_onnx(tmp_path / "model.onnx")
    with pytest.raises(ModelCardError, match="no model card"):
        astromorph.load_model(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ModelCardError, match="cannot be read"):
        astromorph.load_model(tmp_path)
    card = make_card(tmp_path / "model.onnx")
    del card["sha256"], card["metrics"]
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match="metrics, sha256"):
        astromorph.load_model(tmp_path)
    card = make_card(tmp_path / "model.onnx")
    card["outputs"][0]["name"] = "nope"
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match="nope"):
        astromorph.load_model(tmp_path)



def test_card_listing_an_output_twice_is_refused(tmp_path):
    """Each graph output was appended once per listing: two rows per input row."""
    tiny_classifier_onnx(tmp_path / "model.onnx")
    card = make_card(tmp_path / "model.onnx")
    card["outputs"] = card["outputs"] * 2
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match=r"outputs\[1\]\.name.*listed once.*'probabilities'"):
        astromorph.load_model(tmp_path)


@pytest.mark.parametrize("metrics", [[1], "x", 3])
def test_variant_metrics_that_are_no_object_are_a_card_error(tmp_path, metrics):
    tiny_classifier_onnx(tmp_path / "model.onnx")
    digest = sha256(tmp_path / "model.onnx")
    card = make_card(tmp_path / "model.onnx",
                     variants={"int8": {"file": "model.onnx", "sha256": digest, "metrics": metrics}})
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match=r"variants\.int8\.metrics"):
        astromorph.load_model(tmp_path, precision="int8")

def test_local_folder_named_like_a_model_gets_a_hint(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tiny_model_dir)  # holds the folder tiny/, not a shipped model
    with pytest.raises(ModelNotFoundError, match="pass it with a directory part: './tiny'"):
        astromorph.load_model("tiny")
    assert astromorph.load_model("./tiny").labels == ["a", "b"]


def test_model_must_be_name_or_path():
    with pytest.raises(TypeError):
        astromorph.load_model(3)


# ----------------------------------------------------------------------- predict
def _inputs(n, rng=np.random.default_rng(1)):
    return rng.normal(size=(n, 2, 4, 4)).astype(np.float32)


def test_predict_values_and_labels(tiny_registry):
    model = astromorph.load_model("tiny")
    x = np.zeros((3, 2, 4, 4), np.float32)
    x[0, 0] = 5  # channel 0 brightest -> class "a"
    x[1, 1] = 5
    out = model.predict(x)
    assert set(out) == {"probabilities"} and out["probabilities"].shape == (3, 2)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(out["probabilities"][2], [0.5, 0.5], rtol=1e-6)
    assert list(out.label[:2]) == ["a", "b"]
    assert out.labels == ["a", "b"]


@pytest.mark.parametrize("dtype", ["<f8", ">f8", ">f4", "f2", "i2", ">i4", "u1", "bool"])
def test_predict_any_real_dtype_and_byte_order(tiny_registry, dtype):
    model = astromorph.load_model("tiny")
    x = (np.random.default_rng(0).normal(size=(5, 2, 4, 4)) * 10).astype(dtype)
    expected = model.predict(x.astype(np.float32))["probabilities"]
    np.testing.assert_allclose(model.predict(x)["probabilities"], expected, rtol=1e-6)


def test_predict_rejects_complex(tiny_registry):
    from astromorph.exceptions import InputDTypeError

    for err in (TypeError, InputError, InputDTypeError):  # typed, and what numpy would raise
        with pytest.raises(err, match="complex"):
            astromorph.load_model("tiny").predict(np.zeros((1, 2, 4, 4), complex))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -3.4e38])
def test_predict_non_finite_rows_are_named(tiny_registry, bad):
    model = astromorph.load_model("tiny")
    x = _inputs(7)
    x[2, 1, 0, 3] = bad
    x[5, 0, 2, 2] = bad
    with pytest.raises(InputError, match=r"row\(s\) 2, 5;") as info:
        model.predict(x)
    assert "network-ready" in str(info.value)
    with pytest.raises(InputError, match=r"row\(s\) 2, 5;"):
        model.predict(x, batch_size=3)  # every such row, not only the first batch's
    x[2] = 0.0
    with pytest.raises(InputError, match=r"row\(s\) 5;"):
        model.predict(x, batch_size=3)  # numbered in the whole input, not in its batch
    x[[2, 5]] = 0.0
    assert np.isfinite(model.predict(x)["probabilities"]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30, -3.4e38])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_names_every_bad_row_before_running_any_batch(tiny_registry, bad, dtype):
    """NaN, infinite and sentinel rows are all named before any batch is run, as the
    docstring promises: before, with batch_size < N the batches ahead of the first bad one
    were run (wasted time on a GPU), and only that batch's bad rows were named, so a user
    fixed one row per call."""
    model = astromorph.load_model("tiny")
    runs = []
    real_run = model._run
    model._run = lambda batch, session=None: runs.append(len(batch)) or real_run(batch, session)
    x = _inputs(8).astype(dtype)
    x[3, 1, 0, 2] = bad  # batch 1 of batch_size=2
    x[7, 0, 3, 3] = bad  # batch 3
    with pytest.raises(InputError, match=r"row\(s\) 3, 7;"):
        model.predict(x, batch_size=2)
    assert runs == []


def test_predict_bad_rows_beyond_ten_are_counted(tiny_registry, monkeypatch):
    """More than ten bad rows: the first ten are named with the count of them all, found in
    every block of the input (the check reads it a few rows at a time)."""
    from astromorph import _model

    monkeypatch.setattr(_model, "_CHECK_ELEMENTS", 2 * 2 * 4 * 4)  # two rows per block
    x = _inputs(40)
    bad = [1, 2, 5, 8, 13, 20, 21, 22, 30, 31, 33, 39]
    x[bad, 1, 2, 0] = np.nan
    with pytest.raises(InputError, match=r"row\(s\) 1, 2, 5, 8, 13, 20, 21, 22, 30, 31, "
                                         r"\.\.\. \(12 rows\);"):
        astromorph.load_model("tiny").predict(x, batch_size=3)


def test_predict_checks_bad_rows_without_a_float_copy_of_the_input(tiny_registry, monkeypatch):
    """The check ahead of the run reads the input a block of rows at a time: a large input
    with bad rows at both ends is refused without a float64 copy of all of it (twice its
    size for float32 input)."""
    from astromorph import _model

    monkeypatch.setattr(_model, "_CHECK_ELEMENTS", 2 * 2 * 4 * 4 * 500)
    x = _inputs(20000)
    x[[0, 19999], 0, 1, 1] = -np.inf
    model = astromorph.load_model("tiny")

    def refused():
        with pytest.raises(InputError, match=r"row\(s\) 0, 19999;"):
            model.predict(x, batch_size=20000)

    _, peak = traced_peak(refused)
    assert peak < x.nbytes / 2


def test_range_warning_names_the_whole_range_and_the_first_row_beyond_it(tmp_path,
                                                                        monkeypatch):
    """The range warning, given before any batch runs, gives the smallest and largest values
    of the whole input and the first row beyond the range, wherever the blocks the check
    reads fall."""
    from astromorph import _model
    from astromorph.exceptions import InputRangeWarning

    monkeypatch.setattr(_model, "_CHECK_ELEMENTS", 3 * 2 * 4 * 4)  # three rows per block
    tiny_classifier_onnx(tmp_path / "model.onnx")
    card = make_card(tmp_path / "model.onnx")
    card["input"]["family"] = "optical"
    (tmp_path / "card.json").write_text(json.dumps(card))
    x = np.full((10, 2, 4, 4), 0.5, np.float32)
    x[7, 1, 3, 0], x[9, 0, 0, 0], x[1, 0, 0, 1] = 1.5, 4.0, -0.005
    with pytest.warns(InputRangeWarning, match=r"from -0.005 to 4 \(float32\), from row 7 on"):
        astromorph.load_model(tmp_path).predict(x, batch_size=2)


def test_predict_non_finite_error_names_card_preprocessing(tmp_path):
    tiny_classifier_onnx(tmp_path / "model.onnx")
    card = make_card(tmp_path / "model.onnx")
    card["input"]["preprocessing"] = "astromorph.preprocessing.preprocess_triplet"
    (tmp_path / "card.json").write_text(json.dumps(card))
    x = _inputs(2)
    x[1] = np.nan
    with pytest.raises(InputError, match="row\\(s\\) 1; .*preprocess_triplet"):
        astromorph.load_model(tmp_path).predict(x)


@pytest.mark.parametrize("shape", [(3, 4, 4), (1, 3, 4, 4), (1, 2, 5, 4), (4, 4), (1, 1, 2, 4, 4)])
def test_shape_errors_state_expected_and_received(tiny_registry, shape):
    model = astromorph.load_model("tiny")
    with pytest.raises(InputShapeError) as info:
        model.predict(np.zeros(shape))
    assert "(N, 2, 4, 4)" in str(info.value) and str(shape) in str(info.value)



def test_ragged_stamp_list_is_a_shape_error(tiny_registry):
    """A list of stamps of unequal shapes: numpy's raw ValueError leaked."""
    model = astromorph.load_model("tiny")
    with pytest.raises(InputShapeError, match=r"\(N, 2, 4, 4\).*inhomogeneous"):
        model.predict([np.zeros((2, 4, 4)), np.zeros((2, 4, 3))])

def test_model_pickles_as_a_reload(tiny_registry):
    """A Model goes to Dask / multiprocessing workers as the way to load it again."""
    import pickle

    model = astromorph.load_model("tiny", threads=1)
    again = pickle.loads(pickle.dumps(model))
    assert again.name == "tiny" and again.sha256 == model.sha256
    x = _inputs(3)
    np.testing.assert_array_equal(again.predict(x)["probabilities"],
                                  model.predict(x)["probabilities"])


def test_model_unpickles_with_the_threads_it_was_loaded_with(tiny_registry):
    """The session of an unpickled Model (a Dask worker's) runs on the ``threads`` the
    pickled one was loaded with, as that one does (the cached session is shared)."""
    import pickle

    model = astromorph.load_model("tiny", threads=1)
    assert model._session.get_session_options().intra_op_num_threads == 1
    again = pickle.loads(pickle.dumps(model))
    assert again._session.get_session_options().intra_op_num_threads == 1
    assert again._session is model._session


def test_model_by_relative_path_unpickles_in_another_folder(tiny_registry, monkeypatch, tmp_path):
    """A worker whose working folder differs from the client's still finds the model."""
    import pickle

    monkeypatch.chdir(tiny_registry)
    data = pickle.dumps(astromorph.load_model("./tiny"))
    monkeypatch.chdir(tmp_path)
    assert pickle.loads(data).sha256 == sha256(tiny_registry / "tiny" / "model.onnx")



def test_model_unpickled_where_its_name_is_another_model_is_refused(tiny_registry):
    """A worker whose registry holds another file under the same name (another astromorph
    or $ASTROMORPH_MODELS_DIR) must not predict with it in the pickled model's place."""
    import pickle

    model = astromorph.load_model("tiny")
    data = pickle.dumps(model)
    d = tiny_registry / "tiny"
    tiny_classifier_onnx(d / "model.onnx", spatial=True)  # other weights, same name
    (d / "card.json").write_text(json.dumps(make_card(d / "model.onnx")))
    other = sha256(d / "model.onnx")
    with pytest.raises(ChecksumMismatchError, match=f"(?s){model.sha256}.*{other}") as info:
        pickle.loads(data)
    assert (info.value.expected, info.value.actual) == (model.sha256, other)

def test_one_stamp_without_batch_axis(tiny_registry):
    """(C, H, W), as a preprocessing function returns it for one image, is one stamp; the
    (stamps, flags) tuple of preprocess_triplet is refused with a word on what to pass."""
    model = astromorph.load_model("tiny")
    x = _inputs(1)
    np.testing.assert_array_equal(model.predict(x[0])["probabilities"],
                                  model.predict(x)["probabilities"])
    with pytest.raises(InputError, match="return_flags=False"):
        model.predict((x, np.zeros(1, np.int32)))


@pytest.fixture
def replicating_model(tmp_path):
    """A tiny 3-band classifier whose card says a single band is replicated."""
    tiny_classifier_onnx(tmp_path / "model.onnx", channels=3, labels=("a", "b", "c"))
    card = make_card(tmp_path / "model.onnx", channels=3, labels=("a", "b", "c"),
                     single_band="replicate")
    (tmp_path / "card.json").write_text(json.dumps(card))
    return astromorph.load_model(tmp_path)


def test_one_colour_stamp_without_batch_axis_warns(replicating_model):
    """(3, H, W) for a 3-band model that also takes single bands: read as one colour stamp
    (what the preprocessing returns for one image), with a warning that says how to pass
    three grey stamps instead."""
    model = replicating_model
    rgb = np.random.default_rng(1).normal(size=(3, 4, 4))
    with pytest.warns(AmbiguousInputWarning, match=r"read as one 3-band stamp.*\(3, 1, 4, 4\)"):
        one = model.predict(rgb)["probabilities"]
    assert one.shape == (1, 3)
    np.testing.assert_array_equal(one, model.predict(rgb[None])["probabilities"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.predict(rgb[None])["probabilities"].shape == (1, 3)
        assert model.predict(np.zeros((4, 4, 4)))["probabilities"].shape == (4, 3)
        assert model.predict(rgb[:, None])["probabilities"].shape == (3, 3)  # unambiguous


def test_shape_error_names_the_shape_given(replicating_model):
    """A shape refused by a model that takes single bands names the shape passed, not the
    one with a band axis added (before: one channels-last stamp (4, 4, 3) was reported as
    (4, 1, 4, 3)), and says how to move a channels-last axis."""
    model = replicating_model
    with pytest.raises(InputShapeError, match=r"got \(4, 4, 3\).*channels-last.*"
                                              r"np\.moveaxis\(x, -1, 0\)"):
        model.predict(np.zeros((4, 4, 3)))
    with pytest.raises(InputShapeError, match=r"got \(2, 5, 4\)$"):
        model.predict(np.zeros((2, 5, 4)))
    with pytest.raises(InputShapeError, match=r"got \(2, 4, 4, 3\).*np\.moveaxis\(x, -1, 1\)"):
        model.predict(np.zeros((2, 4, 4, 3)))


def test_single_band_replicated_where_card_says_so(replicating_model):
    model = replicating_model
    grey = np.random.default_rng(0).normal(size=(4, 4, 4))
    rgb = np.repeat(grey[:, None], 3, axis=1)
    np.testing.assert_allclose(model.predict(grey)["probabilities"],
                               model.predict(rgb)["probabilities"])
    np.testing.assert_allclose(model.predict(grey[:, None])["probabilities"],
                               model.predict(rgb)["probabilities"])


def test_one_channel_model_accepts_nhw(tmp_path):
    tiny_classifier_onnx(tmp_path / "model.onnx", channels=1)
    (tmp_path / "card.json").write_text(json.dumps(make_card(tmp_path / "model.onnx", channels=1)))
    out = astromorph.load_model(tmp_path).predict(np.ones((3, 4, 4)))
    assert out["probabilities"].shape == (3, 2)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 8, 16, 256])
def test_batching_gives_same_result(tiny_registry, batch_size):
    model = astromorph.load_model("tiny")
    x = _inputs(17)
    ref = model.predict(x, batch_size=17)["probabilities"]
    np.testing.assert_array_equal(model.predict(x, batch_size=batch_size)["probabilities"], ref)


def test_progress_bar_counts_every_row(tiny_registry, monkeypatch):
    """The bar of predict advances by the rows of each batch and ends at N (a bar that
    counted one row short per batch stopped at 13/17 here)."""
    from astromorph import _model

    seen = []

    class Bar:
        def __init__(self, total, **kwargs):
            seen.append(("total", total))

        def update(self, n):
            seen.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(_model, "progress_bar", Bar)
    astromorph.load_model("tiny").predict(_inputs(17), batch_size=5, progress=True)
    assert seen == [("total", 17), 5, 5, 5, 2]


def test_outputs_are_named_as_the_card_lists_them(tmp_path):
    """With several graph outputs, each Prediction entry is the graph output of that name,
    in every batch and for empty input (the card lists them in another order than the
    graph)."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 4, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2])
            for n in ("mean", "probabilities")]
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
         helper.make_node("Softmax", ["mean"], ["probabilities"], axis=1)],
        "two", [inp], outs, initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "model.onnx"))
    card = make_card(tmp_path / "model.onnx")
    card["outputs"].append({"name": "mean", "kind": "values"})
    (tmp_path / "card.json").write_text(json.dumps(card))
    loaded = astromorph.load_model(tmp_path)
    assert loaded.output_names == ["probabilities", "mean"]
    x = _inputs(5)
    out = loaded.predict(x, batch_size=2)
    assert list(out) == ["probabilities", "mean"]
    mean = x.mean(axis=(2, 3))
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"],
                               np.exp(mean) / np.exp(mean).sum(axis=1, keepdims=True), rtol=1e-5)
    assert list(out.label) == list(np.array(["a", "b"])[mean.argmax(axis=1)])
    empty = loaded.predict(np.zeros((0, 2, 4, 4)))
    assert [(k, v.shape) for k, v in empty.items()] == [("probabilities", (0, 2)),
                                                          ("mean", (0, 2))]


def test_empty_input(tiny_registry):
    out = astromorph.load_model("tiny").predict(np.zeros((0, 2, 4, 4)))
    assert out["probabilities"].shape == (0, 2)


def test_bad_batch_size(tiny_registry):
    with pytest.raises(ValueError, match="batch_size"):
        astromorph.load_model("tiny").predict(_inputs(2), batch_size=0)
    # the same rule as predict_files/annotate_stamps: a float is not silently truncated,
    # a string or a bool is not a batch size
    from astromorph.exceptions import InvalidArgumentError

    for bad in (2.5, "8", True, -1):
        with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer"):
            astromorph.load_model("tiny").predict(_inputs(2), batch_size=bad)


def test_allocation_failure_halves_batch(tiny_registry):
    model = astromorph.load_model("tiny")
    x = _inputs(20)
    ref = model.predict(x)["probabilities"]
    real_run, sizes = model._run, []

    def flaky(batch, session=None):
        sizes.append(len(batch))
        if len(batch) > 4:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : "
                               "CUDA failure 2: out of memory ; BFCArena::AllocateRawInternal")
        return real_run(batch, session)

    model._run = flaky
    out = model.predict(x, batch_size=16)["probabilities"]
    np.testing.assert_array_equal(out, ref)
    assert sizes[:3] == [16, 8, 4] and max(sizes[2:]) <= 4


def test_other_errors_are_not_retried(tiny_registry):
    model = astromorph.load_model("tiny")
    calls = []

    def broken(batch, session=None):
        calls.append(len(batch))
        raise RuntimeError("invalid argument")

    model._run = broken
    with pytest.raises(RuntimeError, match="invalid argument"):
        model.predict(_inputs(8), batch_size=8)
    assert calls == [8]


def test_allocation_failure_at_batch_one_raises(tiny_registry):
    model = astromorph.load_model("tiny")

    def oom(batch, session=None):
        raise RuntimeError("Failed to allocate memory for requested buffer")

    model._run = oom
    with pytest.raises(RuntimeError, match="allocate"):
        model.predict(_inputs(4), batch_size=4)


# --------------------------------------------------------------------- sessions
def test_sessions_are_cached(tiny_registry):
    a = astromorph.load_model("tiny", providers="cpu")
    b = astromorph.load_model("tiny", providers="cpu")
    assert a._session is b._session
    c = astromorph.load_model("tiny", providers="cpu", threads=1)
    assert c._session is not a._session


def test_auto_is_silent_without_gpu(tiny_registry):
    if cuda_available():
        pytest.skip("a GPU provider is present")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = astromorph.load_model("tiny", providers="auto")
    assert model.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("providers", ["cuda", "gpu", "tensorrt", ["CUDAExecutionProvider", "cpu"]])
def test_missing_gpu_provider_warns_and_falls_back(tiny_registry, providers):
    if cuda_available():
        pytest.skip("a GPU provider is present")
    with pytest.warns(ProviderFallbackWarning, match="not available"):
        model = astromorph.load_model("tiny", providers=providers)
    assert model.providers == ["CPUExecutionProvider"]


def test_fallback_warning_names_the_model_not_only_its_file(tiny_registry):
    """Every shipped model's file is ``model.onnx``: the warning said "not used for
    model.onnx", which does not tell which model of a pipeline (morphology, real-bogus)
    fell back. It names the model's folder too: ``tiny/model.onnx``."""
    if cuda_available():
        pytest.skip("a GPU provider is present")
    with pytest.warns(ProviderFallbackWarning, match=r"not used for tiny/model\.onnx:"):
        astromorph.load_model("tiny", providers="cuda")


def test_missing_provider_warns_once_per_session(tiny_registry):
    """The fallback warning comes when the session is made, not on every reuse of the cached
    session (each annotate call, each annotate_dask partition); a "cuda" request never reuses
    the CPU session made for "cpu" without its warning."""
    if cuda_available():
        pytest.skip("a GPU provider is present")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.load_model("tiny", providers="cpu")
        for _ in range(3):
            model = astromorph.load_model("tiny", providers="cuda")
        model.predict(_inputs(8), batch_size=2)
    fallbacks = [w for w in caught if issubclass(w.category, ProviderFallbackWarning)]
    assert len(fallbacks) == 1
    assert "CUDAExecutionProvider" in str(fallbacks[0].message)
    assert "falling back to CPUExecutionProvider" in str(fallbacks[0].message)
    assert model.providers == ["CPUExecutionProvider"]


def test_providers_from_environment(tiny_registry, monkeypatch):
    if cuda_available():
        pytest.skip("a GPU provider is present")
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", "cuda")
    with pytest.warns(ProviderFallbackWarning):
        astromorph.load_model("tiny")
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", " ")  # set but empty: as if unset ('auto')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert astromorph.load_model("tiny").providers == ["CPUExecutionProvider"]


def test_failing_gpu_session_falls_back(tiny_registry, monkeypatch):
    """A provider listed as available whose session creation fails -> warning + CPU."""
    import onnxruntime
    from astromorph import _session

    real = onnxruntime.InferenceSession

    def fake_session(path, sess_options=None, providers=None):
        if providers and providers[0] == "CUDAExecutionProvider":
            raise RuntimeError("CUDA driver version is insufficient")
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", fake_session)
    _session.clear_session_cache()
    with pytest.warns(ProviderFallbackWarning, match="insufficient"):
        model = astromorph.load_model("tiny", providers="cuda")
    assert model.providers == ["CPUExecutionProvider"]


def test_fallback_warning_points_at_the_callers_line():
    """Through annotate_stamps/predict_files the provider warning is raised deeper than
    through load_model; it must still name the caller's line, not astromorph/_model.py
    (where the default filter would also show it once per session only)."""
    import warnings

    from astropy.table import Table

    if cuda_available():
        pytest.skip("a GPU provider is present")
    astromorph.clear_session_cache()
    table = Table({"triplet": np.random.default_rng(0).normal(size=(1, 3, 63, 63))})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        astromorph.annotate_stamps(table, model="real-bogus", providers="cuda", progress=False)
    astromorph.clear_session_cache()
    fallback = [w for w in caught if issubclass(w.category, ProviderFallbackWarning)]
    assert fallback and {w.filename for w in fallback} == {__file__}


def test_unknown_provider_name(tiny_registry):
    with pytest.raises(InvalidArgumentError, match="unknown execution provider 'quantum'"):
        astromorph.load_model("tiny", providers="quantum")
    # a name that names nothing ('' from an empty --providers, or ',') was read as 'auto'
    for empty in ("", " ", ","):
        with pytest.raises(InvalidArgumentError, match="names no execution provider"):
            astromorph.load_model("tiny", providers=empty)



@pytest.mark.parametrize("name", ["CUDAExecutionProvdier", "CUDAExecProvider",
                                  "FooExecutionProvider"])
def test_misspelt_full_provider_name_is_a_typed_error(tiny_registry, name):
    """A full name that ONNX Runtime does not know (a typo) passed as a
    provider that is merely missing from this build: a CPU session and a warning telling the
    user to install the GPU build, which a user with the GPU build already has."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderFallbackWarning)
        with pytest.raises(InvalidArgumentError, match=f"unknown execution provider '{name}'"):
            astromorph.load_model("tiny", providers=["cpu", name])


def test_provider_with_options_says_how_to_choose_the_device(tiny_registry):
    """ONNX Runtime takes (name, options) pairs; astromorph does not, and said only that
    names must be strings, leaving a user choosing a GPU (device_id) without a way."""
    pair = ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(InvalidArgumentTypeError,
                       match=r"\('CUDAExecutionProvider', \{'device_id': 1\}\).*CUDA_VISIBLE_DEVICES"):
        astromorph.load_model("tiny", providers=[pair, "cpu"])


def test_full_provider_names_take_any_case(tiny_registry):
    """As the short names do ('CUDA', 'cpu'): 'CudaExecutionProvider' was asked of ONNX
    Runtime as it was, so the GPU build fell back to the CPU and told the user to install
    the GPU build."""
    from astromorph._session import resolve_providers

    model = astromorph.load_model("tiny", providers="cpuexecutionprovider")
    assert model.providers == ["CPUExecutionProvider"]
    requested, _ = resolve_providers(["CudaExecutionProvider", "cuda"])
    assert requested == ["CUDAExecutionProvider"]


def test_short_provider_names_take_any_case(tiny_registry, monkeypatch):
    """'CPU', 'Cuda', 'TensorRT', 'GPU' are the short names, as the docstring says ("any
    case"), from an argument and from $ASTROMORPH_PROVIDERS."""
    from astromorph._session import provider_names

    assert provider_names(" TensorRT, Cuda ,GPU,CPU") == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert astromorph.load_model("tiny", providers="CPU").providers == ["CPUExecutionProvider"]
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", "Cpu")
    assert astromorph.load_model("tiny").providers == ["CPUExecutionProvider"]


def test_bad_option_values_are_typed_errors(tiny_registry, monkeypatch, capsys, tmp_path):
    """Misuse raises InvalidArgumentError naming the value (so the command line prints one
    line, not a traceback), whether it comes from an argument or an environment variable."""
    with pytest.raises(InvalidArgumentError, match="'fp16'"):
        astromorph.load_model("tiny", precision="fp16")
    with pytest.raises(InvalidArgumentError, match="-3"):
        astromorph.load_model("tiny", threads=-3)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        astromorph.load_model("tiny").predict(_inputs(2), batch_size=0)
    monkeypatch.setenv("ASTROMORPH_NUM_THREADS", "abc")
    with pytest.raises(InvalidArgumentError, match=r"\$ASTROMORPH_NUM_THREADS .*'abc'"):
        astromorph.load_model("tiny", threads=None)
    monkeypatch.setenv("ASTROMORPH_NUM_THREADS", "-2")
    with pytest.raises(InvalidArgumentError, match=r"-2 \(from \$ASTROMORPH_NUM_THREADS\)"):
        astromorph.load_model("tiny", threads=None)
    monkeypatch.delenv("ASTROMORPH_NUM_THREADS")
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", "quantum")
    with pytest.raises(InvalidArgumentError, match=r"'quantum'.*\$ASTROMORPH_PROVIDERS"):
        astromorph.load_model("tiny")
    assert cli.main(["predict", "tiny", str(Path(__file__)), "-o", str(tmp_path / "x.ecsv")]) == 2
    assert "astromorph: error: unknown execution provider 'quantum'" in capsys.readouterr().err



def test_threads_beyond_what_onnx_runtime_takes_are_a_typed_error(tiny_registry, monkeypatch):
    """ONNX Runtime takes a C int: a larger count leaked its pybind TypeError. Below that,
    it starts every thread asked for: ``--threads 1000000`` had the process killed (exit
    137, no message); more than `MAX_THREADS` (1024) is refused, naming the bound."""
    from astromorph._session import MAX_THREADS

    assert MAX_THREADS == 1024
    for n in (2 ** 31, 1_000_000, MAX_THREADS + 1):
        with pytest.raises(InvalidArgumentError, match=rf"<= 1024, got {n}\b"):
            astromorph.load_model("tiny", threads=n)
    monkeypatch.setenv("ASTROMORPH_NUM_THREADS", "99999999999999999999")
    with pytest.raises(InvalidArgumentError,
                       match=r"99999999999999999999 \(from \$ASTROMORPH_NUM_THREADS\)"):
        astromorph.load_model("tiny", threads=None)


def test_threads_bounds_are_inclusive(tiny_registry, monkeypatch):
    """``threads`` from 0 (ONNX Runtime's default) to `MAX_THREADS` (1024), both included,
    as the error message says, reach the session options (no session of 1024 threads is
    made here: what would be made is recorded); -1 and 1025 are refused."""
    from astromorph import _session

    made = []
    monkeypatch.setattr(_session, "_make_session",
                        lambda ort, path, requested, usable, threads, cpu_key:
                        made.append(threads))
    path = tiny_registry / "tiny" / "model.onnx"
    for n in (0, 1, _session.MAX_THREADS):
        _session.get_session(path, providers="cpu", threads=n)
    assert made == [0, 1, 1024]
    for n in (-1, _session.MAX_THREADS + 1):
        with pytest.raises(InvalidArgumentError, match=rf">= 0 .* <= 1024, got {n}\b"):
            _session.get_session(path, providers="cpu", threads=n)


def test_provider_lists_name_the_bad_entry(tiny_registry, monkeypatch):
    """'auto' among other names was called an unknown provider (while the message offered
    'auto'); bytes were iterated and named as the integer 99."""
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", "auto,cuda")
    with pytest.raises(InvalidArgumentError, match=r"'auto' .*alone.*'auto,cuda' \(from \$ASTROMORPH_PROVIDERS\)"):
        astromorph.load_model("tiny")
    monkeypatch.delenv("ASTROMORPH_PROVIDERS")
    with pytest.raises(InvalidArgumentTypeError, match=r"b'cpu'"):
        astromorph.load_model("tiny", providers=b"cpu")

def test_masked_array_input_is_not_data(tiny_registry):
    """Model.predict on a masked array: masked pixels are not scored as their fill values;
    the rows holding them are named, as NaN rows are."""
    x = np.ma.masked_array(_inputs(4), mask=False)
    x[1, 0, 0, 0] = np.ma.masked
    with pytest.raises(InputError, match=r"row\(s\) 1;"):
        astromorph.load_model("tiny").predict(x)
    clean = astromorph.load_model("tiny").predict(np.ma.masked_array(_inputs(4), mask=False))
    assert clean["probabilities"].shape == (4, 2)


def test_masked_array_rows_named_without_copying(tiny_registry):
    """A masked array with masked pixels: every row holding one is named at once, from the
    mask, without first copying the whole input to float32 twice (2.2 GB traced for a
    246 MB uint8 input of 20000 rows before the fix, which then named only the rows of the
    first batch holding one)."""
    x = np.ma.masked_array(np.zeros((2000, 2, 4, 4), np.uint8), mask=False)
    x[3, 1, 0, 0] = np.ma.masked
    x[1999, 0, 2, 2] = np.ma.masked
    model = astromorph.load_model("tiny")

    def refused():
        with pytest.raises(InputError, match=r"masked pixels in input row\(s\) 3, 1999;"):
            model.predict(x, batch_size=100)

    _, peak = traced_peak(refused)
    assert peak < x.data.nbytes  # no float copy of the input (one is 4 times its size)


@pytest.mark.parametrize("dtype", [complex, object])
def test_masked_array_of_bad_dtype_names_the_dtype(tiny_registry, dtype):
    """A complex or object masked array is refused for its dtype, as the plain array is:
    not cast to float32 first (dropping the imaginary part) and then refused for its mask."""
    from astromorph.exceptions import InputDTypeError

    x = np.ma.masked_array(_inputs(3).astype(dtype), mask=False)
    x[1, 0, 0, 0] = np.ma.masked
    with pytest.raises(InputDTypeError, match=np.dtype(dtype).name):
        astromorph.load_model("tiny").predict(x)


@pytest.mark.parametrize("shape, move", [((5, 4, 4, 2), r"np\.moveaxis\(x, -1, 1\)"),
                                         ((4, 4, 2), r"np\.moveaxis\(x, -1, 0\)")])
def test_channels_last_input_is_named(tiny_registry, shape, move):
    """Channels-last stamps (as images are read) are refused with the transposition to make."""
    with pytest.raises(InputShapeError, match=r"channels-last.*" + move):
        astromorph.load_model("tiny").predict(np.zeros(shape, np.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs the CUDA execution provider")
def test_cuda_session_matches_cpu(tiny_registry):
    gpu = astromorph.load_model("tiny", providers="cuda")
    cpu = astromorph.load_model("tiny", providers="cpu")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    x = _inputs(64)
    np.testing.assert_allclose(gpu.predict(x)["probabilities"], cpu.predict(x)["probabilities"],
                               atol=1e-5)


def test_missing_runtime_names_both_extras(tiny_registry, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    astromorph.clear_session_cache()
    with pytest.raises(MissingRuntimeError) as info:
        astromorph.load_model("tiny")
    assert "astromorph[cpu]" in str(info.value) and "astromorph[gpu]" in str(info.value)


def test_broken_runtime_is_not_called_missing(tiny_registry, monkeypatch):
    """An ONNX Runtime that is installed but fails to import (a shared library it cannot
    load) was reported as "not installed"; the error now says so and quotes the cause."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("libonnxruntime.so.1: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    astromorph.clear_session_cache()
    with pytest.raises(MissingRuntimeError) as info:
        astromorph.load_model("tiny")
    message = str(info.value)
    assert "not installed" not in message
    assert "installed but cannot be imported" in message and "libonnxruntime.so.1" in message


def test_import_without_onnxruntime_or_torch():
    code = ("import sys; sys.modules['onnxruntime'] = None; import astromorph, astromorph.cli; "
            "assert 'torch' not in sys.modules; print(astromorph.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == astromorph.__version__



def test_import_is_light_and_silent():
    """``import astromorph`` (and its command line) imports no optional dependency, nor scipy,
    ONNX Runtime or astropy's coordinates and WCS (a third of the import time): the functions
    that need them import them; and it warns about nothing."""
    lazy = ("onnxruntime", "scipy", "matplotlib", "fastavro", "dask", "pandas", "pyarrow", "PIL",
            "tqdm", "reproject", "torch", "astropy.coordinates", "astropy.wcs", "astropy.table",
            "astropy.units", "astropy.io.fits")
    code = ("import sys, astromorph, astromorph.cli; astromorph.cli.build_parser(); "
            f"print(' '.join(m for m in {lazy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""

def test_public_names_are_imported_on_first_use():
    """The names of ``astromorph.__all__`` (imported on first use) are all there: as
    attributes, in ``dir()`` and with ``from astromorph import *``; another name is an
    AttributeError."""
    code = ("import astromorph, sys; assert 'astromorph._annotate' not in sys.modules; "
            "from astromorph import *; "
            "missing = [n for n in astromorph.__all__ if n not in globals()"
            " or n not in dir(astromorph)]; print(missing, annotate.__module__, "
            "SimilarityIndex.__module__, 'astromorph._annotate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "astromorph._annotate", "astromorph.embeddings._index",
                                  "True"]
    assert astromorph.annotate is astromorph._annotate.annotate
    with pytest.raises(AttributeError, match="no_such_name"):
        astromorph.no_such_name


def test_package_never_imports_torch():
    offenders = [str(p) for p in (REPO / "astromorph").rglob("*.py")
                 if re.search(r"^\s*(import torch|from torch)", p.read_text(), re.M)]
    assert offenders == []


# -------------------------------------------------------------------------- CLI
def test_cli_prints_each_warning_once():
    """astropy's logger prints the warnings it captures; the command line's own logging set-up
    must not print them a second time."""
    code = ("import sys, warnings\n"
            "from astromorph import cli\n"
            "from astromorph.exceptions import UnusableInputWarning\n"
            "def fake(args):\n"
            "    warnings.warn('a warning for the test', UnusableInputWarning)\n"
            "    return 0\n"
            "cli._cmd_models = fake\n"
            "sys.exit(cli.main(['models']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("a warning for the test") == 1, run.stderr


def test_cli_verbosity_is_astromorph_s_own_and_holds_on_every_call():
    """-v/-vv raise astromorph's log level, not every library's (-vv printed the debug
    lines of whatever was imported, e.g. numcodecs registering its codecs); and -q, -v hold
    in a second call of main() in the same process (logging.basicConfig sets the level
    only once)."""
    code = ("import logging, sys\n"
            "from astromorph import cli\n"
            "def fake(args):\n"
            "    logging.getLogger('otherlib').debug('other debug')\n"
            "    logging.getLogger('otherlib').info('other info')\n"
            "    logging.getLogger('astromorph.x').debug('own debug')\n"
            "    logging.getLogger('astromorph.x').info('own info')\n"
            "    logging.getLogger('astromorph.x').warning('own warning')\n"
            "    return 0\n"
            "cli._cmd_models = fake\n"
            "for argv in sys.argv[1:]:\n"
            "    print('--', argv, file=sys.stderr)\n"
            "    cli.main(argv.split() + ['models'])\n")
    run = subprocess.run([sys.executable, "-c", code, "-vv", "-v", "-q", ""],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    calls = [c.rstrip("\n").split("\n") for c in run.stderr.split("-- ")[1:]]
    assert calls == [
        ["-vv", "DEBUG astromorph.x: own debug", "INFO astromorph.x: own info",
         "WARNING astromorph.x: own warning"],
        ["-v", "INFO astromorph.x: own info", "WARNING astromorph.x: own warning"],
        ["-q"],
        ["", "WARNING astromorph.x: own warning"]], run.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="closes file descriptor 2")
@pytest.mark.parametrize("fail", [False, True])
def test_cli_with_standard_error_closed_keeps_stdout_clean(fail):
    """``astromorph ... 2>&-``: Python starts with sys.stderr None, and print(file=None)
    writes on stdout: the status and error lines went into the table printed there."""
    code = ("import sys\n"
            "from astromorph import cli\n"
            "from astromorph.exceptions import InputError\n"
            "def fake(args):\n"
            "    print('the table')\n"
            "    cli.report(args, 'a status line')\n"
            f"    if {fail}: raise InputError('bad input')\n"
            "    return 0\n"
            "cli._cmd_models = fake\n"
            "sys.exit(cli.main(['models']))\n")
    run = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=REPO, timeout=120, preexec_fn=lambda: os.close(2))
    assert run.returncode == (2 if fail else 0)
    assert run.stdout == "the table\n"


def test_cli_ctrl_c_while_the_commands_are_set_up(monkeypatch, capsys):
    """Ctrl-C while the command line is built and parsed (the commands' modules imported,
    the model names listed): exit status 130 and one line, as during the command, not a
    KeyboardInterrupt traceback."""
    from astromorph import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_extra_commands", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err == "astromorph: interrupted\n"


def test_cli_sigterm_leaves_no_partial_output(tmp_path):
    """SIGTERM while an output is being written: exit status 143, a message, and neither the
    output nor the temporary folder holding its partial file is left behind."""
    out = tmp_path / "out.fits"
    code = ("import os, signal, sys, time\n"
            "from astromorph import cli\n"
            "from astromorph._io import atomic_output\n"
            "def fake(args):\n"
            f"    with atomic_output({str(out)!r}) as tmp:\n"
            "        tmp.write_bytes(b'partial' * 100)\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(30)\n"
            "    return 0\n"
            "cli._cmd_models = fake\n"
            "sys.exit(cli.main(['models']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert run.returncode == 143, run.stderr
    assert "astromorph: terminated" in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_output_piped_into_a_closed_reader(tiny_registry):
    """`astromorph models | head -1`: the reader goes away; the command ends quietly with
    the status of a process ended by SIGPIPE (141) instead of a BrokenPipeError traceback."""
    import os

    read, write = os.pipe()
    os.close(read)  # every write to the pipe fails (EPIPE)
    try:
        run = subprocess.run([sys.executable, "-m", "astromorph.cli", "models"], stdout=write,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert run.returncode == 141, run.stderr
    assert run.stderr == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("lines, unbuffered", [(1, False), (5000, False), (1, True)])
def test_cli_output_that_cannot_be_written_is_one_error_line(lines, unbuffered):
    """``astromorph predict ... > file`` on a full disk (or a failing device): the printed
    output cannot be written. One error line naming standard output, exit status 2 (a
    refused output), not an OSError traceback (exit status 1) nor, for output still
    buffered at exit, Python's "Exception ignored" (exit status 120)."""
    code = ("import sys\n"
            "from astromorph import cli\n"
            "def fake(args):\n"
            f"    for k in range({lines}):\n"
            "        print('a row of the table', k)\n"
            "    return 0\n"
            "cli._cmd_models = fake\n"
            "sys.exit(cli.main(['models']))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:  # each print fails; else the last lines fail when flushed at exit
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-c", code], stdout=full, env=env,
                             stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("astromorph: error: cannot write to standard output: ")
    assert "No space left on device" in run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


def test_cli_leaves_an_ignored_sigterm_ignored(tmp_path):
    """A process started with SIGTERM ignored (nohup-like supervisors, a parent's choice)
    keeps ignoring it: the command only turns the default action into an orderly exit."""
    out = tmp_path / "out.txt"
    code = ("import os, signal, sys, time\n"
            "from astromorph import cli\n"
            "from astromorph._io import atomic_output\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "def fake(args):\n"
            f"    with atomic_output({str(out)!r}) as tmp:\n"
            "        tmp.write_text('complete')\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(0.2)\n"
            "    return 0\n"
            "cli._cmd_models = fake\n"
            "status = cli.main(['models'])\n"
            "assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN\n"
            "sys.exit(status)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    assert out.read_text() == "complete"


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert astromorph.__version__ in capsys.readouterr().out


def test_version_is_the_installed_distributions():
    """``__version__`` (which ``--version`` prints) is the version in the installed package's
    metadata: the build reads it from the same file."""
    from importlib import metadata

    try:
        dist = metadata.distribution("astromorph")
    except metadata.PackageNotFoundError:
        pytest.skip("astromorph is not installed")
    installed = Path(dist.locate_file("astromorph/__init__.py")).resolve()
    if installed != Path(astromorph.__file__).resolve():
        pytest.skip("the astromorph imported is not the installed one")
    assert dist.version == astromorph.__version__


def test_cli_models_table(tiny_registry, capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^tiny\s+0\.0\.1\s+classification\s+2x4x4", out, re.M)
    assert "CPUExecutionProvider" in out
    assert re.search(r"^default providers: .*CPUExecutionProvider \(auto\)$", out, re.M)


def test_cli_models_reports_the_providers_setting(tiny_registry, capsys, monkeypatch):
    """`astromorph models` says what $ASTROMORPH_PROVIDERS gives: a fallback, or why it is
    unusable, before any model is loaded with it."""
    if cuda_available():
        pytest.skip("a GPU provider is present")
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", "cuda")
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert ("default providers: CPUExecutionProvider ($ASTROMORPH_PROVIDERS=cuda; "
            "CUDAExecutionProvider not available in this ONNX Runtime build)") in out
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", "quantum")
    assert cli.main(["models"]) == 0
    assert "default providers: none: unknown execution provider 'quantum'" in \
        capsys.readouterr().out


def test_cli_models_shows_why_a_card_is_bad(tiny_registry, capsys):
    """Without --verify, a bad card's row held its reason in a column the header did not
    have, so the reason was never printed (only '? ? ? ?')."""
    bad = tiny_registry / "broken"
    bad.mkdir()
    (bad / "model.onnx").write_bytes((tiny_registry / "tiny" / "model.onnx").read_bytes())
    (bad / "card.json").write_text("{not json")
    assert cli.main(["models"]) == 1
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[-1] == "problem"
    row = next(line for line in out.splitlines() if line.startswith("broken"))
    assert "BAD CARD" in row and "card.json" in row, out
    (bad / "model.onnx").unlink()  # an incomplete folder says why too
    assert cli.main(["models"]) == 1
    out = capsys.readouterr().out
    assert "MISSING model.onnx" in out and "\ntiny " in out  # the good model still listed


def test_cli_verify_ok(tiny_registry, capsys):
    assert cli.main(["models", "--verify"]) == 0
    assert "sha256 OK" in capsys.readouterr().out


@pytest.mark.parametrize("broken", ["model.int8.onnx", "model.grey.onnx"])
def test_cli_verify_checks_the_variants_and_the_single_band_graph(tiny_registry, capsys,
                                                                 broken):
    """`astromorph models --verify` checks every file the card lists, not only model.onnx:
    a modified int8 variant or single-band graph fails it, naming the file."""
    d = tiny_registry / "tiny"
    tiny_model_with_variants(d)
    assert cli.main(["models", "--verify"]) == 0
    assert "sha256 OK" in capsys.readouterr().out
    (d / broken).write_bytes((d / broken).read_bytes() + b"\0")
    assert cli.main(["models", "--verify"]) == 1
    assert f"SHA256 MISMATCH {broken}" in capsys.readouterr().out


def test_cli_verify_fails_on_a_broken_install(tiny_registry, monkeypatch, tmp_path, capsys):
    """A model folder missing its ONNX file, an empty or missing models folder: not a pass."""
    (tiny_registry / "half").mkdir()
    (tiny_registry / "half" / "card.json").write_text("{}")
    assert cli.main(["models", "--verify"]) == 1
    assert "MISSING model.onnx" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ASTROMORPH_MODELS_DIR", str(tmp_path / "empty"))
    assert cli.main(["models", "--verify"]) == 1
    assert "no model found" in capsys.readouterr().out
    # the plain listing says so too, where a table with no rows said nothing
    assert cli.main(["models"]) == 0
    assert f"no model found in {tmp_path / 'empty'}\n" in capsys.readouterr().out
    monkeypatch.setenv("ASTROMORPH_MODELS_DIR", str(tmp_path / "nowhere"))
    assert cli.main(["models", "--verify"]) == 2
    assert "is not a directory" in capsys.readouterr().err



def test_models_dir_with_a_quoted_tilde(tiny_model_dir, monkeypatch):
    """ASTROMORPH_MODELS_DIR="~/..." (quoted, so the shell leaves the ~) was 'not a
    directory'."""
    monkeypatch.setenv("HOME", str(tiny_model_dir.parent))
    monkeypatch.setenv("ASTROMORPH_MODELS_DIR", "~/" + tiny_model_dir.name)
    assert astromorph.list_models() == ["tiny"]

def test_unloadable_onnx_file_is_a_typed_error(tmp_path):
    """A file whose sha256 matches its card but that is no ONNX graph (a user's folder)."""
    (tmp_path / "model.onnx").write_bytes(b"not an onnx graph")
    tiny_classifier_onnx(tmp_path / "real.onnx")
    card = make_card(tmp_path / "real.onnx")
    card["sha256"] = sha256(tmp_path / "model.onnx")
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="cannot load"):
        astromorph.load_model(tmp_path).predict(_inputs(1))


def test_cli_console_script(tiny_registry):
    out = subprocess.run([sys.executable, "-m", "astromorph.cli", "models", "--verify"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "tiny" in out.stdout


@pytest.mark.parametrize("how", ["console script", "python -m astromorph",
                                 "python -m astromorph.cli"])
def test_ctrl_c_while_importing_exits_130_without_a_traceback(how):
    """Ctrl-C in the first moments of ``astromorph``, while numpy and astropy are imported
    (before `astromorph.cli.main` catches it), printed a traceback: the console script of
    pyproject.toml imported them before calling anything, and ``python -m astromorph.cli``
    imported astropy at the top of the module it runs. Simulated without timing: a
    finder that raises KeyboardInterrupt on the first import of numpy or astropy, then what
    the script pip writes does (or ``python -m astromorph``, ``python -m astromorph.cli``)."""
    import tomllib

    script = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = script["astromorph"].split(":")
    run = (f"from {module} import {function}; sys.exit({function}())" if how == "console script"
           else f"import runpy; runpy.run_module({how.split()[-1]!r}, run_name='__main__')")
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] in ('numpy', 'astropy'):\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['astromorph', 'models']\n" + run)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (out.returncode, out.stderr) == (130, "astromorph: interrupted\n")
    assert out.stdout == ""


# ------------------------------------------------------------------ shipped models
@pytest.mark.parametrize("name", astromorph.list_models())
def test_shipped_model_cards(name):
    card = astromorph.model_card(name)
    for key in ("task", "input", "outputs", "training", "metrics", "sha256", "version"):
        assert card[key], f"{name}: empty {key}"
    assert card["name"] == name
    assert card["metrics"].get("command"), f"{name}: card does not say how metrics were measured"
    model = astromorph.load_model(name, providers="cpu")
    assert Path(model.path).stat().st_size < 20e6
    x = np.zeros((2, *model.input_shape), np.float32)
    out = model.predict(x)
    assert all(len(v) == 2 and np.all(np.isfinite(v)) for v in out.values())


def test_every_model_in_the_repository_is_shipped():
    """In CI astromorph is installed from a wheel: its registry must hold every model."""
    in_repo = sorted(d.name for d in (REPO / "models").iterdir()
                     if (d / "model.onnx").is_file() and (d / "card.json").is_file())
    assert astromorph.list_models() == in_repo
    for name in in_repo:
        assert astromorph.model_card(name)["sha256"] == \
            json.loads((REPO / "models" / name / "card.json").read_text())["sha256"]


def test_progress_bar_opt_out_and_without_tqdm(monkeypatch, caplog):
    """Bars are opt-out ($ASTROMORPH_PROGRESS=0, enabled=False); without tqdm the work runs
    without one, and an explicit progress=True says why in the log."""
    import logging

    from astromorph import _progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv(_progress.PROGRESS_ENV, "0")
    assert isinstance(_progress.progress_bar(100), _progress._NoBar)
    monkeypatch.delenv(_progress.PROGRESS_ENV)
    assert isinstance(_progress.progress_bar(100, enabled=False), _progress._NoBar)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with caplog.at_level(logging.WARNING, logger="astromorph"):
        with _progress.progress_bar(100) as bar:  # automatic: silent
            bar.update(5)
        assert not caplog.records
        with _progress.progress_bar(100, enabled=True) as bar:
            bar.update(5)
    assert [r.getMessage() for r in caplog.records] == [
        "progress=True, but tqdm is not installed: no progress bar "
        "(pip install 'astromorph[progress]')"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="astromorph"):
        with _progress.progress_bar(100) as bar:  # automatic: a word at DEBUG (-vv) only
            bar.update(5)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "tqdm is not installed: no progress bar "
                        "(pip install 'astromorph[progress]')")]


def test_progress_bar_without_a_usable_stderr(monkeypatch):
    """No standard error (None: a process started with fd 2 closed, ``2>&-``, or pythonw),
    or a closed one: no bar, not an AttributeError or ValueError from isatty in the middle
    of the work."""
    import io

    from astromorph import _progress

    for stderr in (None, io.StringIO()):
        if stderr is not None:
            stderr.close()
        monkeypatch.setattr(sys, "stderr", stderr)
        with _progress.progress_bar(100) as bar:
            bar.update(5)
        assert isinstance(bar, _progress._NoBar)


@pytest.mark.parametrize("value", ["0", "false", "No", "off", " OFF "])
def test_progress_env_takes_the_usual_words_for_off(monkeypatch, value):
    """$ASTROMORPH_PROGRESS=false (or no, off) silences the bars as 0 does; it used to be
    taken as on."""
    from astromorph import _progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv(_progress.PROGRESS_ENV, value)
    assert isinstance(_progress.progress_bar(100), _progress._NoBar)
    monkeypatch.setenv(_progress.PROGRESS_ENV, "1")
    bar = _progress.progress_bar(100)
    bar.close()
    assert not isinstance(bar, _progress._NoBar)


def test_progress_bar_shows_only_for_enough_work(monkeypatch):
    """An automatic bar appears from ``min_total`` units (2 by default) on: a single stamp
    or file draws no bar that would flash and vanish."""
    from astromorph import _progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv(_progress.PROGRESS_ENV, "1")
    assert isinstance(_progress.progress_bar(1), _progress._NoBar)
    assert isinstance(_progress.progress_bar(9, min_total=10), _progress._NoBar)
    for bar in (_progress.progress_bar(2), _progress.progress_bar(10, min_total=10)):
        bar.close()
        assert not isinstance(bar, _progress._NoBar)


def test_progress_bar_shows_the_callers_total_label_and_unit(monkeypatch):
    """The tqdm bar counts towards the caller's total in its unit, under its label, and is
    cleared when done (``leave=False``): no finished bars left between the log lines."""
    pytest.importorskip("tqdm")
    from astromorph import _progress

    bar = _progress.progress_bar(7, desc="stamps", unit="stamp", enabled=True)
    bar.close()
    assert (bar.total, bar.desc, bar.unit, bar.leave) == (7, "stamps", "stamp", False)


def test_progress_bar_refuses_a_word_for_enabled():
    """``enabled="no"`` (a string Python takes as true) is refused, naming it, rather than
    drawing the bar the caller meant to turn off."""
    from astromorph import _progress
    from astromorph.exceptions import InvalidArgumentTypeError

    with pytest.raises(InvalidArgumentTypeError, match="'no'"):
        _progress.progress_bar(100, enabled="no")


def test_session_cache_keeps_the_recently_used_sessions_only(tiny_registry, monkeypatch):
    """Every (model file, providers, threads) made a session that the cache held for the
    life of the process (a service loading many model files, or a sweep over threads=,
    kept them all, with their weights and thread pools); it now holds the
    SESSION_CACHE_SIZE most recently used. A Model keeps its own session."""
    import gc
    import weakref

    from astromorph import _session

    monkeypatch.setattr(_session, "SESSION_CACHE_SIZE", 3, raising=False)
    first = astromorph.load_model("tiny", threads=1)
    gone = weakref.ref(first._session)
    kept = astromorph.load_model("tiny", threads=2)
    del first
    for threads in (3, 4):
        astromorph.load_model("tiny", threads=threads)
        # the most recently used sessions are reused
        assert astromorph.load_model("tiny", threads=2)._session is kept._session
    astromorph.load_model("tiny", threads=5)
    gc.collect()
    assert gone() is None  # least recently used, and no Model holds it: freed
    assert astromorph.load_model("tiny", threads=2)._session is kept._session
    x = _inputs(5)
    np.testing.assert_array_equal(kept.predict(x)["probabilities"],
                                  astromorph.load_model("tiny", threads=1).predict(x)["probabilities"])


def test_a_session_being_made_holds_up_only_the_threads_that_wait_for_it(tiny_registry,
                                                                         monkeypatch):
    """Making a session (minutes for a TensorRT engine) held the cache's lock, so every
    other thread waited, even for a session already cached; now only the threads asking
    for that very session wait, and it is made once. The block is forced with events; the
    timeout only bounds how long a regression takes to fail."""
    import threading

    from astromorph import _session

    ort = _session.onnxruntime()
    cached = astromorph.load_model("tiny", threads=1)._session
    real = ort.InferenceSession
    entered, release, made = threading.Event(), threading.Event(), []

    def slow(*args, **kwargs):
        made.append(kwargs["sess_options"].intra_op_num_threads)
        entered.set()
        release.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", slow)
    results = {}
    builders = [threading.Thread(target=lambda k=k: results.setdefault(
        k, astromorph.load_model("tiny", threads=2)._session)) for k in ("a", "b")]
    builders[0].start()
    assert entered.wait(60)
    builders[1].start()  # asks for the session being made: waits for it
    reuser = threading.Thread(target=lambda: results.setdefault(
        "cached", astromorph.load_model("tiny", threads=1)._session))
    reuser.start()
    reuser.join(60)
    done_before_release = "cached" in results
    release.set()
    for t in builders + [reuser]:
        t.join(60)
    assert done_before_release, "a cached session waited for another session being made"
    assert results["cached"] is cached
    assert results["a"] is results["b"] and made == [2]  # made once


def test_concurrent_loads_of_one_file_hash_it_once(tiny_registry, monkeypatch):
    """Threads loading the same model at once (a web service's workers, Dask's threaded
    scheduler) each read and hashed the whole file, as none found the others' digest yet;
    now the first hashes it and the others wait for its digest. The first thread is held
    inside the hash with events; the timeout only bounds how long a regression takes to
    show (the second thread starting its own hash)."""
    import hashlib
    import threading

    from astromorph import _registry

    _registry._HASHES.clear()
    expected = sha256(tiny_registry / "tiny" / "model.onnx")
    real = hashlib.sha256
    inside, release, started = threading.Event(), threading.Event(), []

    class Held:
        def __init__(self):
            self._h = real()
            started.append(threading.current_thread().name)
            inside.set()

        def update(self, data):
            release.wait(60)
            self._h.update(data)

        def hexdigest(self):
            return self._h.hexdigest()

    monkeypatch.setattr(_registry.hashlib, "sha256", Held)
    models = {}
    loaders = [threading.Thread(target=lambda k=k: models.setdefault(
        k, astromorph.load_model("tiny", threads=1)), name=k) for k in ("first", "second")]
    loaders[0].start()
    assert inside.wait(60)
    inside.clear()
    loaders[1].start()
    inside.wait(5)  # set again only if the second thread hashes the file too
    release.set()
    for t in loaders:
        t.join(60)
    assert started == ["first"], started
    assert models["first"].sha256 == models["second"].sha256 == expected


def test_cli_every_option_is_documented():
    """Each argument of each sub-command has a help text, and the help of an option with a
    default value states it (`astromorph COMMAND --help` is the whole reference)."""
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    problems = []
    for name, command in sub.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                problems.append(f"{what}: no help")
            elif (action.default not in (None, False, 0, argparse.SUPPRESS)
                  and "default" not in action.help):
                problems.append(f"{what}: default {action.default!r} not stated")
    assert not problems, problems


@pytest.mark.parametrize("argv", [
    ["predict", "tiny", ""], ["predict", "tiny", "x.fits", "-o", ""],
    ["predict", "tiny", "x.fits", "--write-header", ""],
    ["annotate", "", "-m", "tiny"], ["annotate", "c.ecsv", "-m", "tiny", "-i", ""],
    ["annotate", "c.ecsv", "-m", "tiny", "-o", ""],
    ["similar", "t.ecsv", "--query", "0", "-o", ""], ["similar", "t.ecsv", "--image", ""],
    ["similar", "t.ecsv", "--query", "0", "--gallery", ""], ["cluster", ""],
    ["cluster", "t.ecsv", "--map", ""], ["classify", "t.ecsv", "--labels", "a", "-o", ""],
    ["demo", "-o", ""], ["demo", "--gallery", ""],
    ["evaluate", "t.ecsv", "--truth", "a", "-m", "tiny", "--plot", ""]])
def test_cli_empty_path_is_a_usage_error(argv, capsys, tmp_path, monkeypatch):
    """An empty file argument (an unset shell variable: -o "$OUT") is a usage error, not the
    working directory scanned as the input or the table printed instead of written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "empty path" in capsys.readouterr().err


@pytest.mark.parametrize("argv, command", [
    (["predict", "tiny", "a.fits", "--bogus"], "predict"),
    (["annotate", "c.ecsv", "-m", "tiny", "--bogus"], "annotate"),
    (["cluster", "t.ecsv", "--bogus", "1"], "cluster")])
def test_cli_unknown_option_gives_the_command_usage(argv, command, capsys):
    """An option the command does not take is answered with that command's usage, which
    shows how it takes its arguments, not with the top-level ``astromorph [-h] ... COMMAND``
    usage."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: astromorph {command} " in err
    assert f"astromorph {command}: error: unrecognized arguments: " in err


_DATA = REPO / "astromorph" / "data"


@pytest.mark.parametrize("argv, option, typed", [
    (["cluster", "{emb}", "-k", "0"], "-k", "0"),
    (["cluster", "{emb}", "--k-max", "1"], "--k-max", "1"),
    (["cluster", "{emb}", "--pca", "0"], "--pca", "0"),
    (["cluster", "{emb}", "-k", "2", "--seed", "-1"], "--seed", "-1"),
    (["similar", "{emb}", "--query", "0", "-k", "0"], "-k", "0"),
    (["similar", "{emb}", "--ra", "1", "--dec", "1", "--max-separation", "-3"],
     "--max-separation", "-3"),
    (["similar", "{emb}", "--ra", "1", "--dec", "1", "--max-separation", "nan"],
     "--max-separation", "nan"),
    (["classify", "{emb}", "--labels", "label", "-C", "0"], "-C", "0"),
    (["annotate", "{cat}", "-i", "{img}", "-m", "morphology", "--stamp-size", "-3"],
     "--stamp-size", "-3"),
    (["annotate", "{cat}", "-i", "{img}", "-m", "morphology", "--size-col", "r90",
      "--batch-size", "0"], "--batch-size", "0"),
    (["annotate", "{cat}", "-i", "{img}", "-m", "morphology", "--size-col", "r90",
      "--threads", "-1"], "--threads", "-1"),
    (["predict", "morphology", "{img}", "--batch-size", "0"], "--batch-size", "0"),
    (["predict", "morphology", "{img}", "--threads", "-1"], "--threads", "-1"),
    (["predict", "morphology", "{img}", "--crop-fraction", "1.5"], "--crop-fraction", "1.5"),
])
def test_cli_number_out_of_range_names_the_option(argv, option, typed, tmp_path, capsys):
    """A number out of range on the command line: one line naming the option and the value
    as typed (was: the Python parameter, ``n_components``/``n_pca``/``k_range``, or
    ``<Quantity -3. arcsec>``), exit 2, before any work or output."""
    emb = tmp_path / "emb.ecsv"
    Table({"ra": [1.0, 2.0, 3.0], "dec": [1.0, 2.0, 3.0], "label": ["a", "b", ""],
           "embedding": np.eye(3, 4)}).write(emb)
    paths = dict(emb=emb, cat=_DATA / "hdf_sources.ecsv", img=_DATA / "hdf_crop.fits")
    argv = [a.format(**paths) for a in argv] + ["-o", str(tmp_path / "out.ecsv")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"astromorph: error: {option} must be ") and err.count("\n") == 1, err
    assert err.rstrip().endswith(f"got {typed}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ecsv"]


def test_empty_input_path_is_refused(tiny_registry):
    with pytest.raises(InputNotFoundError, match="empty"):
        astromorph.predict_files("tiny", "")


def _fake_gpu_runtime(monkeypatch, available, raise_with=(), dropped=()):
    """ONNX Runtime offering ``available``; a session asked for any provider in
    ``raise_with`` raises (as for a missing libcudnn), providers in ``dropped`` are left
    out of ``get_providers()`` silently (as ORT does when one fails to start)."""
    import onnxruntime
    from astromorph import _session

    real = onnxruntime.InferenceSession
    calls = []

    class Session:
        def __init__(self, inner, providers):
            self._inner, self._providers = inner, providers

        def get_providers(self):
            return list(self._providers)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    def fake_session(path, sess_options=None, providers=None):
        calls.append(list(providers))
        bad = [p for p in providers if p in raise_with]
        if bad:
            raise RuntimeError(f"{bad[0]}: libcudnn.so.9: cannot open shared object file")
        inner = real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        return Session(inner, [p for p in providers if p not in dropped])

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(onnxruntime, "InferenceSession", fake_session)
    _session.clear_session_cache()
    return calls


def _fallback_warnings(caught):
    return [w for w in caught if issubclass(w.category, ProviderFallbackWarning)]


def test_failing_tensorrt_falls_back_to_cuda_not_cpu(tiny_registry, monkeypatch):
    """TensorRT offered but failing at session creation (no TensorRT libraries, engine cache
    not writable): the session falls back to the next provider that works (CUDA), not
    straight to the CPU, with one warning naming the failed provider and the ones used."""
    trt, cuda = "TensorrtExecutionProvider", "CUDAExecutionProvider"
    _fake_gpu_runtime(monkeypatch, [trt, cuda, "CPUExecutionProvider"], raise_with=[trt])
    for providers in ("auto", "tensorrt,cuda"):
        astromorph.clear_session_cache()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = astromorph.load_model("tiny", providers=providers)
        assert model.providers == [cuda, "CPUExecutionProvider"]
        fallbacks = _fallback_warnings(caught)
        assert len(fallbacks) == 1
        assert trt in str(fallbacks[0].message) and "libcudnn" in str(fallbacks[0].message)
        assert "running on CUDAExecutionProvider, CPUExecutionProvider" in str(fallbacks[0].message)


def test_one_fallback_warning_per_session(tiny_registry, monkeypatch):
    """TensorRT missing from the build and CUDA dropped by ONNX Runtime: one warning that
    names both, not two."""
    cuda = "CUDAExecutionProvider"
    _fake_gpu_runtime(monkeypatch, [cuda, "CPUExecutionProvider"], dropped=[cuda])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = astromorph.load_model("tiny", providers="tensorrt,cuda")
        astromorph.load_model("tiny", providers="tensorrt,cuda")  # cached: no new warning
    assert model.providers == ["CPUExecutionProvider"]
    fallbacks = _fallback_warnings(caught)
    assert len(fallbacks) == 1
    message = str(fallbacks[0].message)
    assert "TensorrtExecutionProvider" in message and cuda in message


def test_named_non_gpu_provider_dropped_by_ort_warns(tiny_registry, monkeypatch):
    """Any provider asked for by name that the session does not get gives the warning, not
    only the CUDA and TensorRT ones (e.g. OpenVINO dropped silently by ONNX Runtime)."""
    ov = "OpenVINOExecutionProvider"
    _fake_gpu_runtime(monkeypatch, [ov, "CPUExecutionProvider"], dropped=[ov])
    with pytest.warns(ProviderFallbackWarning, match=ov):
        model = astromorph.load_model("tiny", providers=[ov])
    assert model.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("case", ["missing", "failing", "dropped"])
def test_one_cpu_session_per_model_file_after_a_fallback(tiny_registry, monkeypatch, case):
    """A GPU request that ends on the CPU (provider missing from the build, failing to make
    a session, or dropped by ONNX Runtime) made a CPU session of its own beside the one of
    ``providers="cpu"``, so the model was in memory twice (and once more for "auto"); every
    request that ends on the CPU now shares one session per (file, checksum, threads), and
    each request still gives its one fallback warning when it is first made."""
    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    available = [cpu] if case == "missing" else [cuda, cpu]
    calls = _fake_gpu_runtime(monkeypatch, available,
                              raise_with=[cuda] if case == "failing" else (),
                              dropped=[cuda] if case == "dropped" else ())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = astromorph.load_model("tiny", providers="cpu")._session
        for _ in range(2):
            fell_back = astromorph.load_model("tiny", providers="cuda")
        tensorrt = astromorph.load_model("tiny", providers="tensorrt")._session
    assert fell_back.providers == [cpu]
    assert fell_back._session is plain and tensorrt is plain
    # one InferenceSession made on the CPU alone (plus a "cuda" attempt where CUDA is offered)
    assert calls.count([cpu]) == 1, calls
    assert len(_fallback_warnings(caught)) == 2  # "cuda" once, "tensorrt" once
    assert astromorph.load_model("tiny", providers="cpu", threads=1)._session is not plain
    # the other way round: the CPU request reuses the session the fallback made
    astromorph.clear_session_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProviderFallbackWarning)
        first = astromorph.load_model("tiny", providers="cuda")._session
        assert astromorph.load_model("tiny", providers="cpu")._session is first
        assert astromorph.load_model("tiny", providers="auto")._session is first


def test_bytes_providers_are_named_as_given(tiny_registry):
    """``providers=b"cpu"`` (bytes read from a file or a socket) is refused naming the value
    the user gave; without its own check the bytes were iterated and the error named the
    integer 99 (the byte 'c') instead."""
    for value in (b"cpu", bytearray(b"cpu")):
        with pytest.raises(InvalidArgumentTypeError) as info:
            astromorph.load_model("tiny", providers=value)
        assert str(info.value) == ("providers must be a name such as 'cpu' or a list of names "
                                   f"(str), got {value!r}")


@pytest.mark.parametrize("short, full", [
    ("cpu", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider"),
    ("gpu", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"),
    ("trt", "TensorrtExecutionProvider")])
def test_each_short_provider_name_asks_for_its_provider(short, full):
    """Each short name asks for the provider the docs give it: ``"gpu"`` (the name of the
    install extra) is CUDA, not TensorRT (which fails without its libraries, and builds an
    engine for minutes), and ``"trt"`` is TensorRT, not CUDA."""
    from astromorph._session import provider_names

    assert provider_names(short) == [full]
    assert provider_names(short.upper()) == [full]


def test_unknown_full_provider_name_from_the_environment_names_the_variable(tiny_registry,
                                                                             monkeypatch):
    """A full provider name that ONNX Runtime does not know, set in
    $ASTROMORPH_PROVIDERS, says where it came from: the user did not pass it."""
    monkeypatch.setenv("ASTROMORPH_PROVIDERS", "FooExecutionProvider")
    with pytest.raises(InvalidArgumentError,
                       match=r"'FooExecutionProvider'.*\(from \$ASTROMORPH_PROVIDERS\)"):
        astromorph.load_model("tiny")
    monkeypatch.delenv("ASTROMORPH_PROVIDERS")
    with pytest.raises(InvalidArgumentError, match="'FooExecutionProvider'") as info:
        astromorph.load_model("tiny", providers="FooExecutionProvider")
    assert "ASTROMORPH_PROVIDERS" not in str(info.value)


@pytest.mark.parametrize("threads", [2.5, float("inf"), float("-inf"), float("nan"),
                                     np.float64(1.5)])
def test_threads_that_are_no_whole_number_are_refused(tiny_registry, threads):
    """``threads=2.5`` was not cut to 2 threads silently, and an infinite count did not leak
    int()'s OverflowError: an InvalidArgumentError naming the value, as the docs say."""
    with pytest.raises(InvalidArgumentError,
                       match=re.escape(f"threads must be a whole number of threads, "
                                       f"got {threads!r}")):
        astromorph.load_model("tiny", threads=threads)


def test_cpu_sessions_of_two_model_files_are_not_shared(tiny_registry, tmp_path):
    """Every request that ends on the CPU shares one session per model file: two files
    (here without a checksum given) get a session each, not the first file's graph for
    both (the second would run the wrong model)."""
    from astromorph import _session

    other = tmp_path / "other.onnx"
    tiny_classifier_onnx(other, channels=3, labels=("a", "b", "c"))
    first = _session.get_session(tiny_registry / "tiny" / "model.onnx", providers="cpu")
    second = _session.get_session(other, providers="cpu")
    assert second is not first
    assert second.get_inputs()[0].shape[1] == 3
    assert first.get_inputs()[0].shape[1] == 2


def test_sessions_run_with_every_graph_optimisation(tiny_registry):
    """Sessions are made with all of ONNX Runtime's graph optimisations (operator fusion,
    constant folding): without them a model runs the same numbers, only slower."""
    ort = pytest.importorskip("onnxruntime")
    session = astromorph.load_model("tiny", providers="cpu", threads=1)._session
    assert (session.get_session_options().graph_optimization_level
            == ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def test_a_provider_that_cannot_make_a_session_is_not_also_said_to_fail_to_start(
        tiny_registry, monkeypatch):
    """A provider whose session raised is named with its error, once: the warning did not
    also list it among those that ONNX Runtime dropped silently ("failed to initialise"),
    which sent users after a second, non-existent problem."""
    cuda = "CUDAExecutionProvider"
    _fake_gpu_runtime(monkeypatch, [cuda, "CPUExecutionProvider"], raise_with=[cuda])
    with pytest.warns(ProviderFallbackWarning, match="could not create a session") as caught:
        astromorph.load_model("tiny", providers="cuda")
    message = str(_fallback_warnings(caught)[0].message)
    assert "failed to initialise" not in message, message


def test_fallback_with_only_the_cpu_build_says_to_install_the_gpu_build(tiny_registry,
                                                                       monkeypatch):
    """With only the CPU build of ONNX Runtime installed, the warning tells the user to
    install astromorph[gpu]; it does not claim that onnxruntime-gpu is installed and
    shadowed (advice to uninstall a package they do not have)."""
    import importlib.metadata

    real = importlib.metadata.distribution

    def distribution(name):
        if name == "onnxruntime-gpu":
            raise importlib.metadata.PackageNotFoundError(name)
        return real("onnxruntime") if name == "onnxruntime" else real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    _fake_gpu_runtime(monkeypatch, ["CPUExecutionProvider"])
    with pytest.warns(ProviderFallbackWarning, match=r"install `astromorph\[gpu\]`") as caught:
        astromorph.load_model("tiny", providers="cuda")
    assert "onnxruntime-gpu is installed" not in str(_fallback_warnings(caught)[0].message)


def test_clear_session_cache_forgets_the_sessions(tiny_registry):
    """`astromorph.clear_session_cache` (docs/gpu.md) makes the next load build a new
    session, e.g. after the GPU's drivers or $CUDA_VISIBLE_DEVICES changed; a Model loaded
    before keeps its own."""
    first = astromorph.load_model("tiny", providers="cpu")
    astromorph.clear_session_cache()
    again = astromorph.load_model("tiny", providers="cpu")
    assert again._session is not first._session
    assert astromorph.load_model("tiny", providers="cpu")._session is again._session


# ------------------------------------------------------- cards of models of one's own
def _folder_with_card(tmp_path, change):
    d = tmp_path / "mine"
    d.mkdir()
    tiny_classifier_onnx(d / "model.onnx")
    card = make_card(d / "model.onnx")
    change(card, d)
    (d / "card.json").write_text(json.dumps(card))
    return d


def _set(path, value):
    """A change to a card: set the value at a dotted ``path`` (list indices as digits)."""
    def change(card, _):
        *parents, last = path.split(".")
        node = card
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value
    return change


@pytest.mark.parametrize("change, match", [
    (_set("sha256", None), "sha256.*None"),
    (_set("sha256", ""), "sha256.*''"),
    (_set("sha256", 5), "sha256.*5"),
    (_set("sha256", "abc"), "sha256.*'abc'"),
    (_set("input.shape", [2, -4, 4]), r"input.shape.*\[2, -4, 4\]"),
    (_set("input.shape", [0, 4, 4]), r"input.shape.*\[0, 4, 4\]"),
    (_set("input.shape", [True, 4, 4]), r"input.shape.*\[True, 4, 4\]"),
    (_set("outputs", ["probabilities"]), "outputs.*'probabilities'"),
    (lambda card, _: card["outputs"][0].pop("name"), "outputs.*name"),
    (_set("outputs.0.labels", "ab"), "labels.*'ab'"),
    (_set("outputs.0.kind", "probability"), r"outputs\[0\].kind.*'probability'"),
    (lambda card, _: card["outputs"][0].pop("labels"), r"outputs\[0\].labels.*None"),
    (_set("input.single_band", "replicated"), "input.single_band.*'replicated'"),
    # a family astromorph has no preprocessing for: every file row would be BAD_INPUT
    (_set("input.family", "foo"), "input.family.*'foo'"),
    (_set("input.family", "Optical"), "input.family.*'Optical'"),
    (_set("input.family", ["optical"]), r"input.family.*\['optical'\]"),
    # class names and the prefix name columns, the comma-separated astromorph_columns
    # meta and FITS keywords: a comma, space or slash would break them
    (_set("outputs.0.labels", ["edge,on", "b"]), r"outputs\[0\].labels.*'edge,on'"),
    (_set("outputs.0.labels", ["a", "edge on"]), r"outputs\[0\].labels.*'edge on'"),
    (_set("outputs.0.labels", ["E/S0", "b"]), r"outputs\[0\].labels.*'E/S0'"),
    (_set("outputs.0.labels", ["a", ""]), r"outputs\[0\].labels.*''"),
    # two classes with one column name: one probability column would be lost
    (_set("outputs.0.labels", ["a", "a"]), r"outputs\[0\].labels.*no other label.*'a'"),
    (_set("outputs.0.labels", ["Spiral", "spiral"]), r"labels.*in any case.*'spiral'"),
    (_set("column_prefix", "my morph"), "column_prefix.*'my morph'"),
    (_set("column_prefix", 3), "column_prefix.*3"),
    # two outputs naming one column: one would silently replace the other
    (lambda card, _: card["outputs"].append({"name": "extra", "kind": "values",
                                             "labels": ["flags"]}), r"column '\w+_flags'"),
    (lambda card, _: card["outputs"].append({"name": "extra", "kind": "values",
                                             "labels": ["label"]}), r"column '\w+_label'"),
    # ...in any case: FITS (TTYPE), TOPCAT and cfitsio compare column names so
    (lambda card, _: card["outputs"].append({"name": "extra", "kind": "values",
                                             "labels": ["FLAGS"]}), r"column '\w+_FLAGS'"),
    (lambda card, _: card["outputs"].append({"name": "extra", "kind": "values",
                                             "labels": ["Label"]}), r"column '\w+_Label'"),
    (lambda card, _: card["outputs"].extend([{"name": "s1", "kind": "score"},
                                             {"name": "s2", "kind": "score"}]),
     r"column '\w+_score'"),
    (lambda card, _: card["outputs"].append({"name": "extra", "kind": "values",
                                             "size": "3"}), r"outputs\[1\].size.*'3'"),
    (_set("name", 3), "name.*3"),
    (_set("version", None), "version.*None"),
    (_set("version", 1.0), "version.*1.0"),
    (_set("task", 3), "task.*3"),
    (_set("task", " "), "task.*' '"),
    (_set("precision", "weird"), "precision.*'weird'"),
    (_set("name", "../x"), r"name.*'\.\./x'"),
    (_set("variants", ["int8"]), r"variants.*\['int8'\]"),
    (_set("variants", {"int8": {"sha256": "0" * 64}}), "variants.*int8.*file"),
    (_set("variants", {"int8": {"file": "model.onnx"}}), "variants.*int8.*sha256"),
    (_set("variants", {"int8": {"file": "../other/model.onnx", "sha256": "0" * 64}}),
     r"variants.*'\.\./other/model\.onnx'"),
    (_set("single_band_graph", {"file": "g.onnx", "sha256": "0" * 64}),
     "single_band_graph.*input_shape"),
    (_set("single_band_graph", {"file": "g.onnx", "sha256": "0" * 64, "input_shape": [2, 4, 4]}),
     r"single_band_graph.input_shape.*\[1, 4, 4\].*\[2, 4, 4\]"),
    # required fields that were only checked for presence
    (_set("metrics", None), "metrics.*None"),
    (_set("metrics", []), r"metrics.*\[\]"),
    (_set("metrics", "good"), "metrics.*'good'"),
    (_set("training", None), "training.*None"),
    (_set("training", "data"), "training.*'data'"),
    (_set("input", None), "input must.*None"),
    (_set("input", [2, 4, 4]), r"input must.*\[2, 4, 4\]"),
    (_set("input.name", 3), "input.name.*3"),
    (_set("input.name", ""), "input.name.*''"),
    (_set("input.dtype", "int64"), "input.dtype.*'int64'"),
    (_set("input.channels", "ab"), "input.channels.*'ab'"),
    (_set("input.channels", ["c0"]), r"input.channels.*\['c0'\]"),
    (_set("input.channels", ["c0", 1]), r"input.channels.*\['c0', 1\]"),
    (_set("input.preprocessing", 5), "input.preprocessing.*5"),
    (_set("input.preprocessing_options", ["size"]), r"input.preprocessing_options.*\['size'\]"),
    (_set("input.angular_size", "1 arcsec"), "input.angular_size.*'1 arcsec'"),
    (_set("input.angular_size.kind", "galaxy"), "input.angular_size.kind.*'galaxy'"),
    (_set("input.angular_size.size_pix", 4.5), r"input.angular_size.size_pix.*4\.5"),
    (_set("input.angular_size.pixel_scale_arcsec", "1"),
     "input.angular_size.pixel_scale_arcsec.*'1'"),
    (_set("input.angular_size.pixel_scale_arcsec", -1.0),
     r"input.angular_size.pixel_scale_arcsec.*-1\.0"),
    # zero is no pixel scale nor stamp size (a division by it later)
    (_set("input.angular_size.pixel_scale_arcsec", 0), r"pixel_scale_arcsec must be a positive "
     r"number, got 0\b"),
    (_set("input.angular_size.size_pix", 0), r"size_pix must be a positive integer, got 0\b"),
    # the number of classes is the output's size where the card gives both
    (_set("outputs.0.size", 3), r"outputs\[0\].size.*labels \(2\).*got 3"),
    (_set("outputs.0.description", 5), r"outputs\[0\].description.*5"),
    (_set("recommended_threshold", "0.5"), "recommended_threshold.*'0.5'"),
    (_set("recommended_threshold", True), "recommended_threshold.*True"),
    (_set("recommended_threshold", float("nan")), "recommended_threshold.*nan"),
    (_set("limitations", "slow"), "limitations.*'slow'"),
    (_set("limitations", [3]), r"limitations.*\[3\]"),
    (_set("summary", 3), "summary.*3"),
    (_set("licence", ["CC-BY"]), r"licence.*\['CC-BY'\]"),
])
def test_malformed_cards_are_card_errors(tmp_path, change, match):
    """A card written by hand for a model of one's own: every malformed field is a
    `ModelCardError` naming the field and its value, never a TypeError/KeyError or a model
    that loads with a nonsensical card."""
    d = _folder_with_card(tmp_path, change)
    with pytest.raises(ModelCardError, match=match) as info:
        astromorph.load_model(d, providers="cpu")
    assert "card.json" in str(info.value)


@pytest.mark.parametrize("field", ["recommended_threshold", "input.angular_size.size_pix"])
def test_card_integer_too_large_for_a_float_is_no_overflow(tmp_path, field):
    """A JSON integer beyond a float's range (10**400) escaped the card check as Python's
    OverflowError (`math.isfinite` of it); a whole number is finite, so it is judged as
    any other (a threshold that large loads; a stamp of that many pixels too)."""
    d = _folder_with_card(tmp_path, _set(field, 10 ** 400))
    assert astromorph.load_model(d, providers="cpu").name == "tiny"


@pytest.mark.parametrize("digest", [str.upper, lambda s: f" {s}\n"])
def test_card_sha256_in_upper_case_or_with_spaces_is_accepted(tmp_path, digest):
    d = _folder_with_card(tmp_path, lambda card, _: card.update(sha256=digest(card["sha256"])))
    assert astromorph.load_model(d, providers="cpu").sha256 == sha256(d / "model.onnx")


def test_card_with_a_byte_order_mark_is_read(tmp_path):
    """Editors on Windows save UTF-8 with a BOM; the card is the same JSON."""
    d = _folder_with_card(tmp_path, lambda card, _: None)
    (d / "card.json").write_text("\ufeff" + (d / "card.json").read_text(), encoding="utf-8")
    assert astromorph.load_model(d, providers="cpu").name == "tiny"


def _fixed_batch(path, batch):
    """Rewrite an ONNX file with a fixed batch size (as torch.onnx.export without
    dynamic_axes writes it)."""
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(path))


@pytest.mark.parametrize("change, match", [
    (lambda card, _: card["input"].update(shape=[3, 4, 4], channels=["c0", "c1", "c2"]),
     r"input.shape \[3, 4, 4\].*\['batch', 2, 4, 4\]"),
    (_set("input.shape", [2, 8, 8]), r"input.shape \[2, 8, 8\].*\['batch', 2, 4, 4\]"),
    (_set("outputs.0.labels", ["a", "b", "c"]), r"3 labels.*'probabilities'.*\['batch', 2\]"),
    (_set("outputs.0.labels", ["a"]), r"1 labels.*'probabilities'.*\['batch', 2\]"),
    (_set("outputs.0.kind", "score"), r"'probabilities' a score.*\['batch', 2\]"),
    # the card's input name was never compared with the graph's (`models --verify` said OK)
    (_set("input.name", "pixels"), r"input.name 'pixels'.*input is named 'input'"),
])
def test_card_that_does_not_describe_the_graph_is_refused(tmp_path, change, match):
    """A card whose input shape or class count differs from the graph's would load and then
    fail in ONNX Runtime at the first predict (or label columns wrongly); it is refused at
    load, naming both."""
    d = _folder_with_card(tmp_path, change)
    with pytest.raises(ModelCardError, match=match):
        astromorph.load_model(d, providers="cpu")


def test_score_output_of_more_than_one_value_per_row_is_refused(tmp_path):
    """A card calling a (batch, 4, 1) graph output a score (one value per row) is refused at
    load, as a (batch, 2) one is."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 4, 4])
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4, 1])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "a1"], ["rows"], keepdims=0),
         helper.make_node("ReduceMean", ["rows", "a2"], ["score"], keepdims=1)],
        "score3", [inp], [out],
        initializer=[helper.make_tensor("a1", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("a2", TensorProto.INT64, [1], [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "model.onnx"))
    card = make_card(tmp_path / "model.onnx", task="score",
                     outputs=[{"name": "score", "kind": "score"}])
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match=r"'score' a score.*\['batch', 4, 1\]"):
        astromorph.load_model(tmp_path, providers="cpu")


def test_labelled_output_that_is_not_one_row_of_classes_is_refused(tmp_path):
    """A card giving labels to a (batch, 2, 1) graph output is refused at load: the label
    columns (argmax over axis 1 of each row) would not be one probability per class."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 4, 4])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2, 1])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
         helper.make_node("Softmax", ["mean"], ["soft"], axis=1),
         helper.make_node("Unsqueeze", ["soft", "last"], ["probabilities"])],
        "rank3", [inp], [out],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
                     helper.make_tensor("last", TensorProto.INT64, [1], [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "model.onnx"))
    (tmp_path / "card.json").write_text(json.dumps(make_card(tmp_path / "model.onnx")))
    with pytest.raises(ModelCardError, match=r"2 labels.*\['batch', 2, 1\].*\(batch, 2\)"):
        astromorph.load_model(tmp_path, providers="cpu")


def test_graph_with_a_fixed_batch_size_is_refused(tmp_path):
    def fixed(card, d):
        _fixed_batch(d / "model.onnx", 1)
        card["sha256"] = sha256(d / "model.onnx")

    d = _folder_with_card(tmp_path, fixed)
    with pytest.raises(ModelCardError, match=r"fixed batch size 1.*dynamic"):
        astromorph.load_model(d, providers="cpu")


def test_cli_verify_reports_every_broken_model(tiny_registry, capsys):
    """--verify names each broken model on its own line (not only the first): a file that
    is no ONNX graph or does not match its card counts, though its sha256 matches."""
    def add(name, change):
        d = tiny_registry / name
        d.mkdir()
        tiny_classifier_onnx(d / "model.onnx")
        card = make_card(d / "model.onnx", name=name)
        change(card, d)
        (d / "card.json").write_text(json.dumps(card))

    def not_onnx(card, d):
        (d / "model.onnx").write_bytes(b"not an onnx graph")
        card["sha256"] = sha256(d / "model.onnx")

    add("badsha", lambda card, d: card.update(sha256="0" * 64))
    add("badcard", lambda card, d: card.update(outputs=["x"]))
    add("notonnx", not_onnx)
    add("othershape", lambda card, d: card["input"].update(shape=[3, 4, 4],
                                                           channels=["c0", "c1", "c2"]))
    add("renamed", lambda card, d: card.update(name="tiny"))
    d = tiny_registry / "Capitals"
    d.mkdir()
    tiny_classifier_onnx(d / "model.onnx")
    (d / "card.json").write_text(json.dumps(make_card(d / "model.onnx", name="capitals")))
    assert cli.main(["models", "--verify"]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "SHA256 MISMATCH" in lines["badsha"]
    assert "outputs[0]" in lines["badcard"]
    assert "cannot load" in lines["notonnx"]
    assert "input.shape [3, 4, 4]" in lines["othershape"]
    assert "'renamed'" in lines["renamed"] and "'tiny'" in lines["renamed"]
    assert "not a valid model name" in lines["Capitals"]
    assert "sha256 OK" in lines["tiny"]
    assert "6 model(s) FAILED verification" in out


def test_folder_and_card_name_must_agree(tiny_registry):
    """A registry folder copied without renaming its card would load a model under another
    name than the one asked for (and write that name's columns)."""
    (tiny_registry / "tiny").rename(tiny_registry / "copy")
    with pytest.raises(ModelCardError, match=r"'copy'.*'tiny'"):
        astromorph.load_model("copy")


def test_unknown_name_names_the_models_directory_variable(tiny_registry):
    """$ASTROMORPH_MODELS_DIR replaces the packaged models: a packaged name is not found
    there, and the error says where it looked."""
    with pytest.raises(ModelNotFoundError, match=r"ASTROMORPH_MODELS_DIR.*available: tiny"):
        astromorph.load_model("morphology")


def _graph(path, inputs, dtype):
    """Write an ONNX graph adding its ``inputs`` (all ``(batch, 2, 4, 4)`` of ``dtype``), with
    the output ``probabilities``."""
    import onnx
    from onnx import helper

    shape = ["batch", 2, 4, 4]
    values = [helper.make_tensor_value_info(n, dtype, shape) for n in inputs]
    out = helper.make_tensor_value_info("probabilities", dtype, shape)
    node = (helper.make_node("Sum", list(inputs), ["probabilities"]))
    model = helper.make_model(helper.make_graph([node], "g", values, [out]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


@pytest.mark.parametrize("inputs, dtype, match", [
    (("input", "other"), 1, r"2 inputs \['input', 'other'\]"),
    (("input",), 11, r"tensor\(double\)"),
])
def test_graph_astromorph_cannot_feed_is_refused(tmp_path, inputs, dtype, match):
    """A graph with a second input, or taking doubles, loaded and then failed in ONNX Runtime
    (ValueError / a bare ONNX Runtime error) at the first predict."""
    def graph(card, d):
        _graph(d / "model.onnx", inputs, dtype)
        card["sha256"] = sha256(d / "model.onnx")

    d = _folder_with_card(tmp_path, graph)
    with pytest.raises(ModelCardError, match=match):
        astromorph.load_model(d, providers="cpu")


def test_a_missing_file_is_the_same_error_everywhere(tmp_path, capsys):
    """A missing image raised InputError in `annotate` (and ``astromorph annotate``), a
    missing catalogue InputError too, while `predict_files` raised InputNotFoundError, with
    other words each time. Every entry point that reads a file it is given now raises
    InputNotFoundError with one message naming the path; it is still an InputError (and a
    ValueError) for the handlers written for the old error, and a FileNotFoundError. Every
    command exits 2 with that message."""
    from astromorph.embeddings import GaussianMixture, LabelHead, SimilarityIndex

    missing = tmp_path / "missing.fits"
    cat = Table({"ra": [10.0], "dec": [20.0], "r90": [2.0]})
    index = SimilarityIndex(np.eye(4))
    result = index.query(vector=np.eye(4)[0], k=2)
    calls = [
        lambda: astromorph.annotate(cat, str(missing), model="morphology", size_col="r90"),
        lambda: astromorph.annotate(cat, missing, model="morphology", size_col="r90"),
        lambda: astromorph.annotate(cat, {"g": missing, "r": missing, "i": missing},
                                    model="morphology", size_col="r90"),
        lambda: astromorph.predict_files("morphology", missing),
        lambda: astromorph.predict_files("morphology", [str(missing)]),
        lambda: index.embed_image(missing),
        lambda: LabelHead.load(missing),
        lambda: GaussianMixture.load(missing),
    ]
    if importlib.util.find_spec("matplotlib"):
        calls.append(lambda: index.gallery(result, tmp_path / "g.png",
                                           images=np.zeros((4, 8, 8, 3)), query_image=missing))
    said = rf"'{re.escape(str(missing))}' does not exist$"
    for call in calls:
        with pytest.raises(InputNotFoundError, match=said) as exc:
            call()
        assert isinstance(exc.value, InputError) and isinstance(exc.value, FileNotFoundError)
    cat.write(tmp_path / "cat.ecsv")
    nocat = tmp_path / "none.ecsv"
    for argv, path in (
            (["annotate", str(nocat), "-i", str(missing), "-m", "morphology",
              "--size-col", "r90"], nocat),
            (["annotate", str(tmp_path / "cat.ecsv"), "-i", str(missing), "-m", "morphology",
              "--size-col", "r90"], missing),
            (["predict", "morphology", str(missing)], missing),
            (["similar", str(nocat), "--query", "0"], nocat),
            (["cluster", str(nocat)], nocat),
            (["classify", str(nocat), "--labels", "label"], nocat)):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.fullmatch(rf"astromorph: error: \w+ '{re.escape(str(path))}' does not exist\n",
                            err), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.ecsv"]


def test_an_input_path_may_start_with_the_home_folder(tmp_path, monkeypatch):
    """The one input check took '~/t.ecsv' literally, so a table path under the home
    folder, which evaluate_labels read before that check (astropy expands '~'), raised
    "catalogue '~/t.ecsv' does not exist"; predict_files expanded it. Every input path is
    now expanded as predict_files does, and a missing one is named as expanded. A table
    path is checked before its extension: a missing 'x.txt' or a folder was "cannot tell
    the table format" (an InvalidArgumentError), not the missing file or the folder."""
    from astromorph._io import check_input_file
    from astromorph.embeddings import LabelHead

    monkeypatch.setenv("HOME", str(tmp_path))
    Table({"rb_score": [0.9, 0.1], "rb_flags": [0, 0], "real": [True, False]}).write(
        tmp_path / "t.ecsv")
    ev = astromorph.evaluate_labels("~/t.ecsv", "real", model="real-bogus", threshold=0.5)
    assert ev.metrics["n_used"] == 2
    LabelHead().fit(np.eye(4)[[0, 0, 1, 1]] + 0.1, ["a", "a", "b", "b"]).save(tmp_path / "h.json")
    assert LabelHead.load("~/h.json").classes_.tolist() == ["a", "b"]
    assert check_input_file("~/t.ecsv") == tmp_path / "t.ecsv"
    with pytest.raises(InputNotFoundError,
                       match=rf"^table '{re.escape(str(tmp_path / 'none.ecsv'))}' does not"):
        astromorph.evaluate_labels("~/none.ecsv", "real", model="real-bogus")
    # the file is checked before its extension: a missing file or a folder is said so
    with pytest.raises(InputNotFoundError, match=r"table '.*none\.txt' does not exist"):
        astromorph.evaluate_labels(tmp_path / "none.txt", "real", model="real-bogus")
    with pytest.raises(InputError, match=r"table '.*' is a directory, not a file"):
        astromorph.evaluate_labels(tmp_path, "real", model="real-bogus")


def test_python_dash_m_astromorph_runs_the_command_line():
    """`python -m astromorph ...` is the same entry point as the `astromorph` script (for
    environments where the script is not on PATH)."""
    run = subprocess.run([sys.executable, "-m", "astromorph", "--version"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("astromorph ")


@pytest.mark.parametrize("case", ["missing", "dropped"])
def test_single_band_graph_does_not_repeat_the_models_fallback_warning(monkeypatch, case):
    """A model asked to run on CUDA that fell back gave its warning at load, and the same
    one again, for model.grey.onnx, at its first single-band predict: one fallback, two
    warnings. The single-band graph now warns only where it got other providers than the
    model's session."""
    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    _fake_gpu_runtime(monkeypatch, [cpu] if case == "missing" else [cuda, cpu],
                      dropped=[cuda] if case == "dropped" else ())
    grey = np.random.default_rng(0).normal(size=(5, 64, 64)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = astromorph.load_model("morphology", providers="cuda")
        model.predict(grey, batch_size=2)
    astromorph.clear_session_cache()
    assert model._single_band_session() is not None
    assert model.providers == [cpu]
    fallbacks = _fallback_warnings(caught)
    assert len(fallbacks) == 1 and "model.onnx" in str(fallbacks[0].message), \
        [str(w.message) for w in fallbacks]


def test_fallback_with_both_onnx_runtime_builds_installed_says_to_remove_one(tiny_registry,
                                                                           monkeypatch):
    """onnxruntime installed beside onnxruntime-gpu (e.g. pulled in by another package)
    shadows the GPU build: CUDA is not offered, and the warning told the user to install
    astromorph[gpu], which they had. It now names the conflict and the fix."""
    import importlib.metadata

    real = importlib.metadata.distribution

    def distribution(name):
        if name == "onnxruntime-gpu":
            return real("onnxruntime")  # installed, as far as the check can tell
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    _fake_gpu_runtime(monkeypatch, ["CPUExecutionProvider"])
    with pytest.warns(ProviderFallbackWarning,
                      match=r"onnxruntime-gpu is installed.*pip uninstall onnxruntime "):
        astromorph.load_model("tiny", providers="cuda")


def test_every_error_pickles_with_its_attributes():
    """ChecksumMismatchError (path, expected, actual) could not be unpickled: its args are
    the message alone, which its __init__ cannot take, so a process pool or Dask worker
    that raised it failed again with a TypeError. Every astromorph error and warning now
    comes back from pickle as the same class, message and attributes."""
    import pickle

    import astromorph.exceptions as ex

    made = {ex.ChecksumMismatchError: ex.ChecksumMismatchError("m.onnx", "ab", "cd"),
            ex.ProvenanceMismatchError: ex.ProvenanceMismatchError("other model",
                                                                   {"model": "a"}, {"model": "b"})}
    for name in ex.__all__:
        cls = getattr(ex, name)
        error = made.get(cls) or cls(f"{name} message")
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is cls and str(again) == str(error)
        assert vars(again) == vars(error)
    custom = ex.ChecksumMismatchError("m.onnx", "ab", "cd", message="pickled elsewhere")
    again = pickle.loads(pickle.dumps(custom))
    assert (again.path, again.expected, again.actual, str(again)) == \
        ("m.onnx", "ab", "cd", "pickled elsewhere")


def test_every_error_survives_the_pickling_dask_distributed_uses():
    """dask.distributed sends a worker's error back pickled by tblib, which rebuilds an
    error whose class has a custom ``__init__`` but the built-in ``__reduce__`` as
    ``cls.__new__(cls)``: for InputNotFoundError (a ValueError and a FileNotFoundError)
    that is ``ValueError.__new__``, which cannot make an OSError, so a missing image met on
    a cluster reached the caller as a bare ``Exception`` holding its repr. Every astromorph
    error and warning now comes back as the same class, message and attributes."""
    import copyreg
    import io
    import pickle
    from types import TracebackType

    pickling_support = pytest.importorskip("tblib.pickling_support")
    import astromorph.exceptions as ex

    made = {ex.ChecksumMismatchError: ex.ChecksumMismatchError("m.onnx", "ab", "cd"),
            ex.ProvenanceMismatchError: ex.ProvenanceMismatchError("other model",
                                                                   {"model": "a"}, {"model": "b"})}
    for name in ex.__all__:
        cls = getattr(ex, name)
        try:  # raised, so that it carries a traceback, as a worker's error does
            raise made.get(cls) or cls(f"{name} message")
        except Exception as exc:
            error = exc
        # tblib's reducers, as pickling_support.install() sets them, in this pickler only
        table = {**copyreg.dispatch_table, TracebackType: pickling_support.pickle_traceback,
                 cls: pickling_support.pickle_exception}
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer)
        pickler.dispatch_table = table
        pickler.dump(error)
        again = pickle.loads(buffer.getvalue())
        assert type(again) is cls and str(again) == str(error), name
        assert vars(again) == vars(error), name
        assert again.__traceback__ is not None, name


def test_prediction_flag_and_fitted_heads_pickle(tiny_registry):
    """What a user sends to (or gets back from) Dask or multiprocessing workers besides a
    Model: a Prediction, Flag values, a fitted LabelHead and GaussianMixture come back from
    pickle equal, answering as before."""
    import pickle

    from astromorph.embeddings import GaussianMixture, LabelHead

    prediction = astromorph.load_model("tiny").predict(_inputs(4))
    again = pickle.loads(pickle.dumps(prediction))
    assert type(again) is astromorph.Prediction and list(again) == list(prediction)
    assert again.labels == prediction.labels and list(again.label) == list(prediction.label)
    np.testing.assert_array_equal(again["probabilities"], prediction["probabilities"])
    for flag in (astromorph.Flag(0), astromorph.Flag.EDGE,
                 astromorph.Flag.EDGE | astromorph.Flag.BLANK):
        assert pickle.loads(pickle.dumps(flag)) is flag
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (30, 4)), rng.normal(5, 1, (30, 4))]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few rows: not what this test is about
        fitted = (LabelHead(C=1.0).fit(x, np.repeat(["a", "b"], 30)), GaussianMixture(2).fit(x))
    for obj in fitted:
        again = pickle.loads(pickle.dumps(obj))
        assert type(again) is type(obj)
        np.testing.assert_array_equal(again.predict_proba(x), obj.predict_proba(x))
        assert again.to_dict() == obj.to_dict()


@pytest.mark.parametrize("family", ["optical", "radio"])
def test_range_warning_allows_the_margin_only(tmp_path, family):
    """Display values a hair beyond [0, 1] (within the 0.01 margin, e.g. from resampling)
    do not warn; values beyond the margin, on either side, do."""
    from astromorph.exceptions import InputRangeWarning

    tiny_classifier_onnx(tmp_path / "model.onnx")
    card = make_card(tmp_path / "model.onnx")
    card["input"]["family"] = family
    (tmp_path / "card.json").write_text(json.dumps(card))
    model = astromorph.load_model(tmp_path)
    x = np.full((2, 2, 4, 4), 0.5, np.float32)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -0.009, 1.009
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        model.predict(x)
    for value in (-0.02, 1.02):
        x[1, 0, 0, 0] = value
        with pytest.warns(InputRangeWarning, match="from row 1 on"):  # the first such row
            model.predict(x)


def test_predict_warns_once_on_values_beyond_the_preprocessing_range():
    """A raw 8-bit stamp (0-255) given to a model that takes display values in [0, 1] was
    scored without a word (a blank-looking 'artifact' at probability 1): it warns now,
    once per call, naming the range found and the card's preprocessing; network-ready
    input and the real-bogus model's unbounded normalised stamps do not warn."""
    from astromorph.exceptions import InputRangeWarning
    from astromorph.preprocessing import preprocess_colour_cutout

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(6, 100, 100, 3), dtype=np.uint8)
    ready = preprocess_colour_cutout(raw)
    morph = astromorph.load_model("morphology")
    with pytest.warns(InputRangeWarning, match=r"\[0, 1\].*preprocess.*from 0 to 255 "
                                               r"\(uint8\).*divide by 255") as record:
        morph.predict(np.moveaxis(raw[:, 18:82, 18:82], -1, 1), batch_size=2)
    assert len(record) == 1  # once, though every batch is out of range
    radio = astromorph.load_model("radio-morphology")
    with pytest.warns(InputRangeWarning, match="from row 1 on"):
        radio.predict(np.concatenate([np.zeros((1, 128, 128)), np.full((1, 128, 128), 3.0)]),
                      batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        morph.predict(ready)
        astromorph.load_model("real-bogus").predict(rng.normal(0, 5, (2, 3, 63, 63)))


# ------------------------------------------------- mutation testing of _model.py (predict)
@pytest.mark.parametrize("message", [
    "CUDA failure 2: out of memory", "Failed to allocate memory for requested buffer",
    "std::bad_alloc", "CUDNN_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation",
    "BFCArena::AllocateRawInternal"])
def test_each_kind_of_allocation_failure_halves_the_batch(tiny_registry, message, caplog):
    """Every allocation-failure message ONNX Runtime's providers give (any case) makes
    predict halve the batch and go on, with a logged warning saying so; one kind missing
    from the pattern would end a long GPU run with an error at the first large batch."""
    model = astromorph.load_model("tiny")
    x = _inputs(8)
    ref = model.predict(x)["probabilities"]
    real_run, sizes = model._run, []

    def flaky(batch, session=None):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise RuntimeError(f"[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : {message}")
        return real_run(batch, session)

    model._run = flaky
    with caplog.at_level("WARNING", logger="astromorph"):
        out = model.predict(x, batch_size=8)["probabilities"]
    np.testing.assert_array_equal(out, ref)
    assert sizes == [8, 4, 2, 2, 2, 2]
    assert [r.levelname for r in caplog.records if "retrying with batch_size=" in r.message] \
        == ["WARNING", "WARNING"]


def test_stamps_larger_than_a_check_block_are_checked_a_row_at_a_time(tiny_registry,
                                                                     monkeypatch):
    """A stamp of more values than the check reads at a time (a 3 x 2048 x 2048 stamp is
    12.6 million) is checked one row at a time, not refused with a ValueError from a block
    of zero rows."""
    from astromorph import _model

    monkeypatch.setattr(_model, "_CHECK_ELEMENTS", 5)  # fewer than the 32 values of a row
    model = astromorph.load_model("tiny")
    x = _inputs(4)
    np.testing.assert_array_equal(model.predict(x)["probabilities"],
                                  model.predict(x, batch_size=4)["probabilities"])
    x[2, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"row\(s\) 2;"):
        model.predict(x)


def test_float64_input_beyond_float32_is_refused_without_a_numpy_warning(tiny_registry):
    """float64 values beyond float32's range (1e300) are sentinel-sized: refused as such,
    with no 'overflow encountered in cast' RuntimeWarning from checking them."""
    x = _inputs(3).astype(np.float64)
    x[1, 0, 0, 0] = -1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"row\(s\) 1;"):
            astromorph.load_model("tiny").predict(x)


@pytest.mark.parametrize("low, high, hint", [(0, 2.0, False), (0, 2.5, True), (0, 255, True),
                                             (0, 256, False), (-0.5, 255, False)])
def test_divide_by_255_hint_only_for_values_that_look_8_bit(tmp_path, low, high, hint):
    """The range warning says "8-bit images: divide by 255" for values from 0 up to 255
    reaching beyond 2 (a dark 8-bit stamp too), not for values a little beyond [0, 1]
    (up to 2: an overshooting stretch), 16-bit ones or negative ones, where dividing by
    255 would be wrong advice."""
    from astromorph.exceptions import InputRangeWarning

    tiny_classifier_onnx(tmp_path / "model.onnx")
    card = make_card(tmp_path / "model.onnx")
    card["input"]["family"] = "optical"
    (tmp_path / "card.json").write_text(json.dumps(card))
    x = np.full((2, 2, 4, 4), 0.5)
    x[0, 0, 0, 0], x[1, 1, 1, 1] = low, high
    with pytest.warns(InputRangeWarning, match=f"from {low:.4g} to {high:.4g}") as record:
        astromorph.load_model(tmp_path).predict(x)
    assert ("divide by 255" in str(record[0].message)) is hint


def _tiny_with_grey_graph(folder, grey):
    """``tiny_model_with_variants`` with its single-band graph replaced by ``grey`` (a
    function writing an ONNX file) after the card was written."""
    tiny_model_with_variants(folder)
    grey(folder / "model.grey.onnx")
    return astromorph.load_model(folder)


def test_single_band_graph_replaced_after_the_card_is_refused(tmp_path):
    """The single-band graph's sha256 is checked before its first use: a file replaced
    since the card was written is a ChecksumMismatchError, not run in the model's name."""
    model = _tiny_with_grey_graph(tmp_path, lambda p: tiny_classifier_onnx(
        p, channels=1, labels=("a", "b", "c"), spatial=True))
    with pytest.raises(ChecksumMismatchError, match="model.grey.onnx"):
        model.predict(np.zeros((2, 4, 4), np.float32))


def test_single_band_graph_that_does_not_fit_the_card_is_refused(tmp_path):
    """A single-band graph with another number of classes than the card's labels is a
    ModelCardError at its first use, not two-column probabilities labelled with three
    classes."""
    tiny_model_with_variants(tmp_path)
    tiny_classifier_onnx(tmp_path / "model.grey.onnx", channels=1, labels=("a", "b"))
    card = json.loads((tmp_path / "card.json").read_text())
    card["single_band_graph"]["sha256"] = sha256(tmp_path / "model.grey.onnx")
    (tmp_path / "card.json").write_text(json.dumps(card))
    model = astromorph.load_model(tmp_path)
    assert model.predict(np.zeros((2, 3, 4, 4)))["probabilities"].shape == (2, 3)
    with pytest.raises(ModelCardError, match="model.grey.onnx.*3 labels"):
        model.predict(np.zeros((2, 4, 4), np.float32))


def test_card_without_a_single_band_graph_is_looked_up_once(replicating_model, monkeypatch):
    """A model whose card lists no single-band graph remembers that: single-band batches
    after the first do not look the card up again."""
    from astromorph import _model

    calls = []
    real = _model.resolve_single_band_graph
    monkeypatch.setattr(_model, "resolve_single_band_graph",
                        lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        replicating_model.predict(np.zeros((2, 4, 4)))
    assert len(calls) == 1


def test_exactly_ten_bad_rows_are_all_named_without_a_count(tiny_registry):
    """Ten bad rows are the ten shown: named without '...' or a count (which would say
    rows were left out)."""
    x = _inputs(12)
    x[:10, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"row\(s\) 0, 1, 2, 3, 4, 5, 6, 7, 8, 9;"):
        astromorph.load_model("tiny").predict(x)

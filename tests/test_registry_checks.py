"""Model registry and `Model` checks that mutation testing found unguarded.

Each test fails on a hand-made mutant of ``astromorph/_registry.py`` or ``astromorph/_model.py``
that weakens a check, and passes on the code as it is.
"""
import json

import numpy as np
import pytest

import astromorph
from astromorph import _registry
from astromorph.exceptions import InputShapeError, ModelCardError, ModelNotFoundError
from tiny_models import make_card, sha256, tiny_classifier_onnx


def _folder_with_card(tmp_path, change):
    """A model folder ``mine`` holding the tiny classifier and its card, as ``change``
    (called with the card dict) leaves it."""
    d = tmp_path / "mine"
    d.mkdir()
    tiny_classifier_onnx(d / "model.onnx")
    card = make_card(d / "model.onnx")
    change(card)
    (d / "card.json").write_text(json.dumps(card))
    return d


def test_card_sha256_longer_than_64_digits_is_a_card_error(tmp_path):
    """A card sha256 of 65 hex digits (a pasted digest with a stray digit) is a malformed
    card, named as such, not a file 'modified or corrupted': users would otherwise be told
    to re-download an intact model file, and ``astromorph models`` would list the bad card
    as fine."""
    d = _folder_with_card(tmp_path, lambda card: card.update(sha256=card["sha256"] + "0"))
    with pytest.raises(ModelCardError, match=r"sha256 must be 64 hexadecimal digits"):
        astromorph.load_model(d, providers="cpu")


def test_variant_sha256_longer_than_64_digits_is_a_card_error(tmp_path):
    """The same for a variant's sha256: the card is refused when read, for every precision."""
    def change(card):
        card["variants"] = {"int8": {"file": "model.onnx", "sha256": card["sha256"] + "f"}}

    d = _folder_with_card(tmp_path, change)
    with pytest.raises(ModelCardError, match=r"variants\.int8\.sha256"):
        astromorph.model_card(d)


def test_card_input_shape_of_four_numbers_is_a_card_error(tmp_path):
    """input.shape is (C, H, W): a card giving four numbers (e.g. with a batch size) loaded,
    the graph check comparing only the first three with the graph's, and every predict call
    then failed with a bare ValueError unpacking the shape."""
    d = _folder_with_card(tmp_path, lambda card: card["input"].update(shape=[2, 4, 4, 1]))
    with pytest.raises(ModelCardError, match=r"input\.shape.*\[2, 4, 4, 1\]"):
        astromorph.load_model(d, providers="cpu")


def test_card_without_outputs_is_a_card_error(tmp_path):
    """A card listing no outputs would load a model whose predict returns nothing (no
    column in annotated tables, no error): refused, naming ``outputs``."""
    d = _folder_with_card(tmp_path, lambda card: card.update(outputs=[]))
    with pytest.raises(ModelCardError, match=r"outputs must be a non-empty list.*\[\]"):
        astromorph.load_model(d, providers="cpu")


def test_single_band_graph_of_another_stamp_size_is_a_card_error(tmp_path):
    """The single-band graph must take the model's own stamp size, (1, H, W): one for
    (1, 5, 5) stamps beside a (2, 4, 4) model would get the single bands of the model's
    stamps it cannot take (or, with symbolic sizes, run at the wrong scale)."""
    def change(card):
        card["single_band_graph"] = {"file": "model.onnx", "sha256": card["sha256"],
                                     "input_shape": [1, 5, 5]}

    d = _folder_with_card(tmp_path, change)
    with pytest.raises(ModelCardError, match=r"single_band_graph\.input_shape.*\[1, 4, 4\]"
                                             r".*\[1, 5, 5\]"):
        astromorph.model_card(d)


def test_dot_is_the_current_folder_not_a_model_name(tmp_path, monkeypatch):
    """``load_model(".")`` inside a model folder loads that folder: a leading dot makes a
    path, as ``./mine`` does; without that rule "." is an invalid registry name."""
    d = _folder_with_card(tmp_path, lambda card: None)
    monkeypatch.chdir(d)
    model = astromorph.load_model(".", providers="cpu")
    assert (model.name, model.sha256) == ("tiny", sha256(d / "model.onnx"))


def test_packaged_models_come_before_a_models_folder_beside_the_package(tmp_path,
                                                                         monkeypatch):
    """An installed wheel's models are ``astromorph/models/``; a ``models/`` folder beside the
    package (``site-packages/models``, left there by another package) is used only in a
    source checkout, where the package holds none: never in place of the packaged ones."""
    package = tmp_path / "site-packages" / "astromorph"
    (package / "models").mkdir(parents=True)
    (package.parent / "models").mkdir()
    monkeypatch.delenv(_registry.MODELS_ENV, raising=False)
    monkeypatch.setattr(_registry, "__file__", str(package / "_registry.py"))
    assert _registry.models_dir() == package / "models"
    (package / "models").rmdir()  # a source checkout: models/ beside the package
    assert _registry.models_dir() == package.parent / "models"


def test_variant_whose_file_is_missing_is_model_not_found(tmp_path):
    """A card listing an int8 variant whose file is not there (a partial copy of a model
    folder): `ModelNotFoundError` naming the file, not a bare FileNotFoundError from hashing
    it, which ``astromorph models --verify`` does not report as a broken model."""
    def change(card):
        card["variants"] = {"int8": {"file": "model.int8.onnx", "sha256": "0" * 64}}

    d = _folder_with_card(tmp_path, change)
    with pytest.raises(ModelNotFoundError, match=r"'model\.int8\.onnx', which is missing"):
        astromorph.load_model(d, precision="int8", providers="cpu")


def test_single_band_input_is_refused_by_a_model_that_does_not_replicate(tmp_path):
    """A card whose ``input.single_band`` is ``invalid`` (the default) takes only stamps of
    all its channels: (N, 1, H, W) stamps are an `InputShapeError`, never copied silently
    into every channel (outputs for data the model was not trained on)."""
    d = _folder_with_card(tmp_path, lambda card: None)
    model = astromorph.load_model(d, providers="cpu")
    with pytest.raises(InputShapeError, match=r"\(N, 2, 4, 4\), got \(3, 1, 4, 4\)"):
        model.predict(np.zeros((3, 1, 4, 4), np.float32))

"""The model registry: shipped models, their cards, and sha256 verification."""
import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

from ._once import OnceCache
from .exceptions import (ChecksumMismatchError, InvalidArgumentError, InvalidArgumentTypeError,
                         InvalidModelNameError,
                         ModelCardError, ModelNotFoundError)

__all__ = ["list_models", "model_card", "models_dir", "resolve_model", "verify_checksum",
           "resolve_single_band_graph", "REQUIRED_CARD_KEYS", "PRECISIONS"]

log = logging.getLogger(__name__)

#: A registry name: lower-case letters, digits, ``-`` and ``_``; never a path.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")  # \Z: no final newline
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
#: A class name or column prefix of a card: it becomes part of table column names
#: (``<prefix>_p_<label>``), of the comma-separated ``astromorph_columns`` meta and of FITS
#: header keywords, so no commas, spaces, slashes, quotes or ``=``.
_COLUMN_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")  # \Z: no final newline
#: A character that `_COLUMN_PART` does not allow after the first (user labels that name
#: columns, e.g. a `LabelHead`'s classes, get ``_`` in its place).
_NOT_COLUMN_CHAR = re.compile(r"[^A-Za-z0-9_.+-]")

#: Keys every card must have (see ``docs/model-cards.md``).
REQUIRED_CARD_KEYS = ("name", "version", "task", "input", "outputs", "training", "metrics",
                      "sha256")

#: Numeric precisions a model file may have: the card's main file is float32;
#: ``card["variants"]`` may list others (e.g. a statically quantised int8 copy).
PRECISIONS = ("float32", "int8")

#: Kinds of model outputs (``card["outputs"][i]["kind"]``; default ``values``).
OUTPUT_KINDS = ("probabilities", "score", "embedding", "values")

#: Environment variable naming an extra directory of models (``<dir>/<name>/model.onnx``).
MODELS_ENV = "ASTROMORPH_MODELS_DIR"


def models_dir():
    """Directory that holds the shipped models.

    In an installed wheel the models live in ``astromorph/models/``; in a
    source checkout (editable install) in ``models/`` beside the package.
    ``$ASTROMORPH_MODELS_DIR`` overrides both.
    """
    env = os.environ.get(MODELS_ENV)
    if env:
        if not Path(env).expanduser().is_dir():
            raise ModelNotFoundError(f"${MODELS_ENV}={env!r} is not a directory")
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent
    for candidate in (here / "models", here.parent / "models"):
        if candidate.is_dir():
            return candidate
    return here / "models"


def _read_card(path):
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8-sig"))  # a BOM is no error
    except FileNotFoundError:
        raise ModelCardError(f"model card {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ModelCardError(f"model card {path} cannot be read: {exc}") from exc
    if not isinstance(card, dict):
        raise ModelCardError(f"model card {path} is not a JSON object")
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ModelCardError(f"model card {path} lacks required field(s): {', '.join(missing)}")
    _check_card(card, path)
    card["sha256"] = _digest(card["sha256"])
    return card


def _digest(value):
    """A card's sha256 as 64 lower-case hex digits, or None when it is not one."""
    text = value.strip().lower() if isinstance(value, str) else None
    return text if text is not None and _SHA256.match(text) else None


#: ``input.angular_size`` entries that are numbers: (key, an integer pixel count).
_ANGULAR_NUMBERS = (("size_pix", True), ("stamp_size_pix", True),
                    ("pixel_scale_arcsec", False), ("stamp_pixel_scale_arcsec", False),
                    ("stamp_angular_size_arcsec", False), ("stamp_size_per_petro_r90", False),
                    ("cutout_size_per_petro_r90", False))


def _check_card(card, path):
    """Raise `ModelCardError` naming the first field of ``card`` whose value astromorph
    cannot use (the fields it reads: name, input, outputs, checksums, files; the mappings
    and texts it shows: training, metrics, threshold, summary, limitations)."""
    def bad(field, value, want):
        raise ModelCardError(f"model card {path}: {field} must be {want}, got {value!r}")

    def mapping(field, value):
        if not isinstance(value, dict):
            bad(field, value, "an object (JSON {...})")

    def text(field, value):  # an optional text: a string, or left out (None)
        if not (value is None or isinstance(value, str)):
            bad(field, value, "a string")

    def positive(field, value, integer=False):
        number = isinstance(value, int) if integer else isinstance(value, (int, float))
        # (a whole number is finite: math.isfinite overflows on one beyond a float's range)
        if not (number and not isinstance(value, bool)
                and (isinstance(value, int) or math.isfinite(value)) and value > 0):
            bad(field, value, "a positive integer" if integer else "a positive number")

    def shape(field, value):
        if not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value)):
            bad(field, value, "[C, H, W] (three positive integers)")

    def file_spec(field, spec):
        if not isinstance(spec, dict):
            bad(field, spec, "an object with 'file' and 'sha256'")
        name = spec.get("file")
        if not (isinstance(name, str) and name and Path(name).name == name
                and name not in (".", "..")):
            bad(f"{field}.file", name, "a file name beside model.onnx (no folder part)")
        if _digest(spec.get("sha256")) is None:
            bad(f"{field}.sha256", spec.get("sha256"), "64 hexadecimal digits")

    if not (isinstance(card["name"], str) and _NAME.match(card["name"])):
        bad("name", card["name"], "lower-case letters, digits, '-' and '_'")
    if _digest(card["sha256"]) is None:
        bad("sha256", card["sha256"], "64 hexadecimal digits (the sha256 of model.onnx)")
    for field in ("version", "task"):  # shown by `astromorph models`, written to tables' meta
        if not (isinstance(card[field], str) and card[field].strip()):
            bad(field, card[field], "a non-empty string (e.g. '1.0.0', 'classification')")
    if card.get("precision", PRECISIONS[0]) not in PRECISIONS:
        bad("precision", card["precision"], f"one of {PRECISIONS} (that of model.onnx)")
    for field in ("input", "training", "metrics"):
        mapping(field, card[field])
    inp = card["input"]
    shape("input.shape", inp.get("shape"))
    name = inp.get("name")
    if name is not None and not (isinstance(name, str) and name):
        bad("input.name", name, "the ONNX graph's input name (a non-empty string)")
    if inp.get("dtype", "float32") != "float32":
        bad("input.dtype", inp["dtype"], "'float32' (astromorph feeds float32 input)")
    channels = inp.get("channels")
    if channels is not None and not (isinstance(channels, list)
                                     and all(isinstance(c, str) for c in channels)
                                     and len(channels) == inp["shape"][0]):
        bad("input.channels", channels, f"a list of {inp['shape'][0]} strings (one per "
            "channel of input.shape)")
    text("input.preprocessing", inp.get("preprocessing"))
    for field in ("preprocessing_options", "angular_size"):
        if inp.get(field) is not None:
            mapping(f"input.{field}", inp[field])
    size = inp.get("angular_size") or {}
    if size.get("kind", "fixed") not in ("fixed", "petrosian"):
        bad("input.angular_size.kind", size["kind"], "'fixed' or 'petrosian'")
    for key, integer in _ANGULAR_NUMBERS:
        if key in size:
            positive(f"input.angular_size.{key}", size[key], integer)
    outputs = card["outputs"]
    if not (isinstance(outputs, list) and outputs):
        bad("outputs", outputs, "a non-empty list of {name, kind, labels, description}")
    for i, spec in enumerate(outputs):
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]):
            bad(f"outputs[{i}]", spec, "an object with a 'name'")
        if any(o.get("name") == spec["name"] for o in outputs[:i]):
            bad(f"outputs[{i}].name", spec["name"], "a name no earlier output has (each "
                "graph output is listed once)")
        if spec.get("kind", "values") not in OUTPUT_KINDS:
            bad(f"outputs[{i}].kind", spec.get("kind"), f"one of {OUTPUT_KINDS}")
        labels = spec.get("labels")
        if (labels is not None or spec.get("kind") == "probabilities") and not (
                isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            bad(f"outputs[{i}].labels", labels, "a list of strings (class names)")
        for label in labels or ():
            if not _COLUMN_PART.match(label):
                bad(f"outputs[{i}].labels", label, "class names of letters, digits, '_', '.', "
                    "'-' and '+' (they name table columns and FITS keywords)")
        folded = [label.lower() for label in labels or ()]
        for j, label in enumerate(folded):
            if label in folded[:j]:
                bad(f"outputs[{i}].labels", labels[j], "a class name no other label of the "
                    "output has, in any case (each names its own column)")
        size = spec.get("size")
        if size is not None and not (isinstance(size, int) and not isinstance(size, bool)
                                     and size > 0):
            bad(f"outputs[{i}].size", size, "a positive integer (the output's length)")
        if size is not None and labels is not None and size != len(labels):
            bad(f"outputs[{i}].size", size, f"the number of its labels ({len(labels)})")
        text(f"outputs[{i}].description", spec.get("description"))
    threshold = card.get("recommended_threshold")
    if threshold is not None and not (isinstance(threshold, (int, float))
                                      and not isinstance(threshold, bool)
                                      and (isinstance(threshold, int)
                                           or math.isfinite(threshold))):
        bad("recommended_threshold", threshold, "a number (the score's threshold)")
    for field in ("summary", "description", "licence", "threshold_note"):
        text(field, card.get(field))
    limitations = card.get("limitations")
    if limitations is not None and not (isinstance(limitations, list)
                                        and all(isinstance(x, str) for x in limitations)):
        bad("limitations", limitations, "a list of strings")
    prefix = card.get("column_prefix")
    if prefix is not None and not (isinstance(prefix, str) and _COLUMN_PART.match(prefix)):
        bad("column_prefix", prefix, "letters, digits, '_', '.', '-' and '+' (it starts "
            "the names of table columns)")
    _check_columns(card, path)
    if card["input"].get("single_band", "invalid") not in ("replicate", "invalid"):
        bad("input.single_band", card["input"]["single_band"], "'replicate' or 'invalid'")
    from ._adapters import _FAMILIES  # the preprocessing of files, stamp tables and images

    family = card["input"].get("family")
    if family and family not in tuple(_FAMILIES):  # (a list is unhashable)
        bad("input.family", family, f"one of {tuple(_FAMILIES)} (or left out: read from "
            "input.preprocessing)")
    variants = card.get("variants")
    if variants is not None:
        if not isinstance(variants, dict):
            bad("variants", variants, "an object mapping a precision to its file")
        for precision, spec in variants.items():
            file_spec(f"variants.{precision}", spec)
            if not isinstance(spec.get("metrics", {}), dict):
                bad(f"variants.{precision}.metrics", spec["metrics"],
                    "an object (the variant's held-out metrics)")
    grey = card.get("single_band_graph")
    if grey:
        file_spec("single_band_graph", grey)
        value = grey.get("input_shape")
        shape("single_band_graph.input_shape", value)
        if value != [1, *card["input"]["shape"][1:]]:
            bad("single_band_graph.input_shape", value,
                f"[1, H, W] of input.shape: {[1, *card['input']['shape'][1:]]}")


def _check_columns(card, path):
    """`ModelCardError` when two of the card's outputs would make the same table column
    (e.g. a ``values`` output labelled ``flags`` or ``label``, or two ``score`` outputs):
    one would silently replace the other."""
    from types import SimpleNamespace

    from ._adapters import result_names

    try:
        result_names(SimpleNamespace(card=card, name=card["name"]))
    except ModelCardError as exc:
        raise ModelCardError(f"model card {path}: {exc}") from None


def _folders():
    """``(folder, has model.onnx, has card.json, error)`` for every folder of the models
    directory (``error``: why it cannot be read, or None)."""
    root = models_dir()
    try:
        entries = sorted(root.iterdir()) if root.is_dir() else []
    except OSError as exc:
        raise ModelNotFoundError(f"models directory {root} cannot be listed: {exc}") from exc
    out = []
    for d in entries:
        try:
            if d.is_dir():
                out.append((d, (d / "model.onnx").is_file(), (d / "card.json").is_file(), None))
        except OSError as exc:  # e.g. a folder without read/search permission
            out.append((d, False, False, exc))
    return out


def _shipped():
    """Mapping name -> model directory of every complete shipped model."""
    return {d.name: d for d, onnx, card, _ in _folders() if _NAME.match(d.name) and onnx and card}


def incomplete_models():
    """Mapping folder name -> what is wrong (``"MISSING card.json"``...), for folders of
    the models directory that hold a model file or card but are no usable model: one of
    ``model.onnx`` and ``card.json`` missing (a broken install), a folder name that is no
    valid model name (see `load_model`), or a folder that cannot be read."""
    out = {}
    for d, onnx, card, error in _folders():
        if error is not None:
            out[d.name] = f"UNREADABLE ({error})"
        elif (onnx or card) and not _NAME.match(d.name):
            out[d.name] = (f"{d.name!r} is not a valid model name (lower-case letters, digits, "
                           "'-' and '_'): not listed")
        elif onnx != card:
            out[d.name] = "MISSING " + ("model.onnx" if not onnx else "card.json")
    return out


def list_models():
    """Names of the shipped models.

    Returns
    -------
    list of str
        Sorted names; each can be passed to `load_model`.
    """
    return list(_shipped())


def model_card(name_or_path, *, precision=None):
    """The card (a dict) of a shipped model or of a model file/directory.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A shipped model name (see `list_models`), a model directory or an ONNX file.
    precision : {None, "float32", "int8"}, optional
        A variant listed in the card (e.g. ``"int8"``): the card as seen by that variant.

    Returns
    -------
    dict

    Raises
    ------
    astromorph.exceptions.ModelNotFoundError, astromorph.exceptions.ModelCardError,
    astromorph.exceptions.InvalidModelNameError, astromorph.exceptions.InvalidArgumentError
    """
    return resolve_model(name_or_path, precision=precision)[1]


def _is_path_like(value):
    if isinstance(value, os.PathLike):
        return True
    text = str(value)
    return (os.sep in text or (os.altsep and os.altsep in text) or text.endswith(".onnx")
            or text.startswith("."))


def resolve_model(name_or_path, *, precision=None):
    """Find a model file and its card.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A registry name (``"morphology"``), a directory holding ``model.onnx``
        and ``card.json``, or an ``.onnx`` file whose card is ``card.json`` or
        ``<stem>.json`` beside it. Strings containing a path separator or
        ending in ``.onnx`` are paths; anything else must be a registry name.
    precision : {None, "float32", "int8"}, optional
        A variant the card lists under ``variants`` (default: the main file, or
        the variant whose file ``name_or_path`` names).

    Returns
    -------
    path : pathlib.Path
        The ONNX file.
    card : dict
        For a variant, a copy of the card whose ``sha256``, ``precision`` and
        ``metrics`` are the variant's (the main file's metrics under
        ``metrics["reference"]``).
    """
    from .preprocessing._checks import check_choice

    check_choice(precision, "precision", PRECISIONS, optional=True)
    path, card = _resolve(name_or_path)
    main = card.get("precision", PRECISIONS[0])
    precision = _precision_of_file(path, card, precision, main)
    if precision is None or precision == main:
        return path, card
    variants = card.get("variants") or {}
    if precision not in variants:
        raise ModelNotFoundError(
            f"model {card['name']!r} has no {precision!r} variant (precisions: "
            f"{', '.join([main, *variants])})")
    spec = variants[precision]
    variant_path = (path.parent / spec["file"]).resolve()
    if not variant_path.is_file():
        raise ModelNotFoundError(f"the {precision} variant of {card['name']!r} lists file "
                                 f"{spec['file']!r}, which is missing from {path.parent}")
    variant = dict(card, sha256=spec["sha256"], precision=precision,
                   metrics=dict(spec.get("metrics", {}), reference=card["metrics"]))
    variant.pop("variants", None)
    variant.pop("single_band_graph", None)  # folded from the float32 file only
    return variant_path, variant


def _precision_of_file(path, card, precision, main):
    """The precision to load where ``path`` (resolved) is a file that ``card`` lists as a
    variant (that variant's, which ``precision`` must not contradict), else ``precision``;
    `InvalidArgumentError` for the card's single-band graph, which is no model by itself."""
    listed = {(path.parent / spec["file"]).resolve(): key
              for key, spec in (card.get("variants") or {}).items()}
    if path in listed and listed[path] != main:
        if precision not in (None, listed[path]):
            raise InvalidArgumentError(f"{path} is the {listed[path]} variant of model "
                                       f"{card['name']!r}, not its {precision} file")
        return listed[path]
    grey = card.get("single_band_graph")
    if grey and path == (path.parent / grey["file"]).resolve():
        raise InvalidArgumentError(
            f"{path} is the single-band graph of model {card['name']!r}, which a Model "
            f"runs by itself on one-band input: load {path.parent} instead")
    return precision


def resolve_single_band_graph(path, card):
    """The single-band copy of a model listed in its card, if any.

    Cards of models that replicate one band into their colour channels may
    list ``single_band_graph``: a file beside the model whose first
    convolution is folded over the channels (same outputs, one input plane).

    Returns
    -------
    (path, card) or None
        The file and a copy of the card with that file's ``sha256`` and input
        shape; None when the card lists no such file.
    """
    spec = card.get("single_band_graph")
    if not spec:
        return None
    grey_path = (Path(path).parent / spec["file"]).resolve()
    if not grey_path.is_file():
        raise ModelNotFoundError(f"the single-band graph of {card['name']!r} lists file "
                                 f"{spec['file']!r}, which is missing from {Path(path).parent}")
    return grey_path, dict(card, sha256=spec["sha256"],
                           input=dict(card["input"], shape=list(spec["input_shape"])))


def _resolve(name_or_path):
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"model must be a name or a path, got {name_or_path!r}")
    if _is_path_like(name_or_path):
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            onnx_path, cards = path / "model.onnx", [path / "card.json"]
        else:
            onnx_path = path
            cards = [path.with_suffix(".json"), path.parent / "card.json"]
        if not onnx_path.is_file():
            raise ModelNotFoundError(f"no ONNX model file at {str(onnx_path)!r}")
        card_path = next((c for c in cards if c.is_file()), None)
        if card_path is None:
            raise ModelCardError(
                f"no model card beside {onnx_path} (looked for {', '.join(str(c) for c in cards)})")
        return onnx_path.resolve(), _read_card(card_path)

    name = str(name_or_path)
    if not _NAME.match(name):
        raise InvalidModelNameError(
            f"{name!r} is not a valid model name (lower-case letters, digits, '-' and '_'); "
            "pass a path (with a directory part or an .onnx suffix) to load a file")
    shipped = _shipped()
    if name not in shipped:
        available = ", ".join(shipped) or "none"
        hint = f"; to load the folder {name!r} here, pass it with a directory part: './{name}'" \
            if Path(name).is_dir() else ""
        where = (f" in ${MODELS_ENV}={os.environ[MODELS_ENV]!r} (which replaces the packaged "
                 "models)" if os.environ.get(MODELS_ENV) else "")
        raise ModelNotFoundError(f"no shipped model named {name!r}{where}; available: "
                                 f"{available}{hint}")
    directory = shipped[name]
    card = _read_card(directory / "card.json")
    if card["name"] != name:
        raise ModelCardError(f"model folder {name!r} ({directory}) holds the card of model "
                             f"{card['name']!r}: rename the folder or the card's name")
    return (directory / "model.onnx").resolve(), card


#: Hex digests by (path, mtime, size): a model file is read once, not once per thread (the
#: others wait for its digest); the most recent versions of files are kept.
_HASHES = OnceCache(size=lambda: 256)


def _sha256(path):
    """The hex digest of ``path``, hashed once per version of the file whichever threads
    ask at once (the others wait for it: a model file is read once, not once per thread)."""
    stat = path.stat()

    def digest():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    return _HASHES.get((str(path), stat.st_mtime_ns, stat.st_size), digest)


def verify_checksum(path, card):
    """Raise `ChecksumMismatchError` unless ``path`` has the card's sha256.

    Returns
    -------
    str
        The verified hex digest.
    """
    expected = _digest(card.get("sha256")) or str(card.get("sha256"))
    actual = _sha256(Path(path))
    if actual != expected:
        raise ChecksumMismatchError(path, expected, actual)
    return actual

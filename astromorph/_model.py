"""`Model`: one packaged ONNX network, its card, and batched prediction."""
import logging
import os
import re
from collections.abc import Mapping

import numpy as np

from ._registry import _is_path_like, resolve_model, resolve_single_band_graph, verify_checksum
from ._session import get_session
from ._progress import check_progress, progress_bar
from .preprocessing._checks import SENTINEL
from ._warnings import collecting, warn
from .exceptions import (AmbiguousInputWarning, ChecksumMismatchError, InputDTypeError,
                         InputError, InputShapeError, InvalidArgumentError,
                         InputRangeWarning, InvalidArgumentTypeError, ModelCardError,
                         ProviderFallbackWarning)

__all__ = ["Model", "Prediction", "load_model", "as_model"]

log = logging.getLogger(__name__)

#: Input elements that `Model.predict` checks at a time (a block of rows) before it runs
#: any: 16 MB of float32, with a float64 copy of one block where it holds bad values.
_CHECK_ELEMENTS = 1 << 22

#: Substrings of ONNX Runtime errors that mean "not enough device memory".
_OOM = re.compile(r"out of memory|failed to allocate|bad_alloc|alloc_failed|"
                  r"cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED|BFCArena", re.I)


def load_model(name_or_path, *, providers=None, threads=None, precision=None):
    """Load a shipped model (by name) or a model file with its card (by path).

    The file's sha256 is checked against its card before any session is made.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A name from `list_models` or a path; see `astromorph.model_card`.
    providers : None, str or list of str, optional
        Execution providers: ``"auto"`` (TensorRT, CUDA, then CPU, among those
        available), ``"cpu"``, ``"cuda"``, ``"tensorrt"``, or a list in order
        of preference. ``None`` reads ``$ASTROMORPH_PROVIDERS`` (default
        ``"auto"``). A requested provider that is unavailable or fails gives a
        `~astromorph.exceptions.ProviderFallbackWarning` and a CPU session.
    threads : int, optional
        ONNX Runtime intra-op threads (default: ``$ASTROMORPH_NUM_THREADS`` or
        ONNX Runtime's own choice).
    precision : {None, "float32", "int8"}, optional
        Load a variant listed in the card's ``variants`` instead of the main
        (float32) file, e.g. ``"int8"``: a statically quantised copy that is
        faster on CPUs, with its own held-out metrics in ``card["metrics"]``.

    Returns
    -------
    Model

    Raises
    ------
    astromorph.exceptions.ModelNotFoundError
    astromorph.exceptions.InvalidModelNameError
    astromorph.exceptions.ModelCardError
    astromorph.exceptions.ChecksumMismatchError
    astromorph.exceptions.MissingRuntimeError
    astromorph.exceptions.ModelLoadError
        ONNX Runtime cannot load the file.
    astromorph.exceptions.InvalidArgumentError
        An unknown ``precision`` or provider name, or negative ``threads``.
    astromorph.exceptions.InvalidArgumentTypeError
        ``name_or_path`` is neither a string nor a path (a `TypeError` too).
    """
    return Model(name_or_path, providers=providers, threads=threads, precision=precision)


def as_model(model, *, providers=None, threads=None, precision=None):
    """A loaded `Model` from a shipped name, a path or a `Model`.

    Names and paths are loaded with the options of `load_model`; a `Model` is returned as it
    is, and must already have the ``precision`` asked for (it cannot be changed after loading).
    """
    if not isinstance(model, Model):
        return load_model(model, providers=providers, threads=threads, precision=precision)
    if precision not in (None, model.precision):
        raise InvalidArgumentError(f"precision={precision!r} asked for, but the model passed is "
                                   f"loaded with precision {model.precision!r}; pass its name "
                                   "instead")
    return model


class Prediction(Mapping):
    """Named outputs of one `Model.predict` call.

    Behaves as a read-only mapping from output name to array (first axis =
    input rows). For classification outputs, `labels` gives the class names
    and `label` the most probable class of each row.

    Parameters
    ----------
    arrays : mapping of str to numpy.ndarray
        The outputs, by name (copied into a new dict; the arrays are not copied).
    outputs : list of dict
        The model card's ``outputs`` entries (``name``, ``kind``, ``labels``...).
    """

    def __init__(self, arrays, outputs):
        self._arrays = dict(arrays)
        self._outputs = {o["name"]: o for o in outputs}

    def __getitem__(self, key):
        return self._arrays[key]

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        shapes = ", ".join(f"{k}: {v.shape}" for k, v in self._arrays.items())
        return f"<Prediction {shapes}>"

    def _probabilities(self):
        for name, spec in self._outputs.items():
            if spec.get("kind") == "probabilities":
                return name, spec
        raise AttributeError("this model has no class-probability output")

    @property
    def labels(self):
        """Class names of the probability output, in column order (``None`` for models
        without one, as `Model.labels`)."""
        try:
            return list(self._probabilities()[1]["labels"])
        except AttributeError:
            return None

    @property
    def label(self):
        """Most probable class name of each row (numpy array of str)."""
        name, spec = self._probabilities()
        return np.asarray(spec["labels"])[np.argmax(self._arrays[name], axis=1)]


def _check_graph(session, path, card):
    """Raise `ModelCardError` where the graph of ``session`` (file ``path``) is not the one
    ``card`` describes: not one float32 input, another input name or shape, a fixed batch size,
    missing outputs, another number of classes than of labels or a labelled output that is
    not ``(batch, classes)``. Dimensions the graph
    leaves symbolic are not checked; an output of unknown rank is taken as it comes."""
    shape = card["input"]["shape"]
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise ModelCardError(f"the ONNX graph {path} has {len(inputs)} inputs "
                             f"{[i.name for i in inputs]} of types {[i.type for i in inputs]}; "
                             "astromorph feeds one float32 input, (batch, C, H, W)")
    name = card["input"].get("name")
    if name is not None and name != inputs[0].name:
        raise ModelCardError(f"card of {path} gives input.name {name!r}, but the ONNX graph's "
                             f"input is named {inputs[0].name!r}")
    graph_input = inputs[0].shape
    dims = list(graph_input) if graph_input is not None else []
    if len(dims) != 4 or any(isinstance(g, int) and g != c for g, c in zip(dims[1:], shape)):
        raise ModelCardError(f"card of {path} gives input.shape {list(shape)}, but the ONNX "
                             f"graph's input is {dims} (batch first)")
    if isinstance(dims[0], int):
        raise ModelCardError(f"the ONNX graph {path} has a fixed batch size {dims[0]} (input "
                             f"{dims}); astromorph needs a dynamic batch axis: export it with "
                             "one (e.g. torch.onnx.export(..., dynamic_axes={'input': {0: "
                             "'batch'}}))")
    graph = {o.name: o.shape for o in session.get_outputs()}
    missing = [o["name"] for o in card["outputs"] if o["name"] not in graph]
    if missing:
        raise ModelCardError(f"card of {path} lists outputs {missing} that the ONNX "
                             f"graph lacks (graph outputs: {list(graph)})")
    for spec in card["outputs"]:
        out = graph[spec["name"]] or []
        labels = spec.get("labels")
        if labels is not None and (len(out) not in (0, 2) or len(out) == 2 and isinstance(
                out[1], int) and out[1] != len(labels)):
            raise ModelCardError(f"card of {path} gives {len(labels)} labels for output "
                                 f"{spec['name']!r}, but the ONNX graph's output is {out} "
                                 "(astromorph takes one value per label and row: (batch, "
                                 f"{len(labels)}))")
        if spec.get("kind") == "score" and (len(out) > 2 or len(out) == 2 and isinstance(
                out[1], int) and out[1] != 1):
            raise ModelCardError(f"card of {path} calls output {spec['name']!r} a score (one "
                                 f"value per row), but the ONNX graph's output is {out}")


def _reload(name_or_path, providers, threads, precision, sha256=None):
    """Unpickle a `Model`: load it again, refusing a file other than the one pickled
    (``sha256``), e.g. a worker whose registry holds another version under that name."""
    if sha256 is not None:
        path, card = resolve_model(name_or_path, precision=precision)
        if card["sha256"] != sha256:
            raise ChecksumMismatchError(path, sha256, card["sha256"], message=(
                f"model {name_or_path!r} was pickled with file sha256 {sha256}, but here it "
                f"is {path} (version {card['version']}) with sha256 {card['sha256']}: "
                "another model, refusing to predict with it in its place; give every "
                "process the same model files"))
    return Model(name_or_path, providers=providers, threads=threads, precision=precision)


class Model:
    """A packaged ONNX model with its card.

    Use `load_model` to make one. Attributes: ``name``, ``version``, ``task``,
    ``card`` (dict), ``path`` (ONNX file), ``sha256`` (verified),
    ``input_shape`` ``(C, H, W)``, ``output_names``, ``labels`` (class names
    or ``None``), ``precision`` (``"float32"`` or a variant such as
    ``"int8"``) and ``providers`` (the execution providers the session
    actually uses).

    A Model pickles (e.g. to Dask or multiprocessing workers) as the way to load it again:
    where it is unpickled the model is resolved by its name or absolute path and its file's
    sha256 checked against the pickled model's (another file is a
    `~astromorph.exceptions.ChecksumMismatchError`), and a session is made there (ONNX
    Runtime sessions do not pickle). `annotate_dask` takes the model by name or path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A shipped model name, a model directory or an ONNX file with its card.
    providers : None, str or list of str, optional
        As for `load_model`.
    threads : int, optional
        As for `load_model`.
    precision : {None, "float32", "int8"}, optional
        As for `load_model`.
    """

    def __init__(self, name_or_path, *, providers=None, threads=None, precision=None):
        if not isinstance(name_or_path, (str, os.PathLike)):
            raise InvalidArgumentTypeError(f"model must be a name or a path, got "
                                           f"{name_or_path!r}")
        origin = name_or_path if isinstance(name_or_path, str) else os.fspath(name_or_path)
        if _is_path_like(origin):  # absolute, so that a worker in another folder loads it too
            origin = os.path.abspath(os.path.expanduser(origin))
        self._origin = (origin, precision)
        self.path, self.card = resolve_model(name_or_path, precision=precision)
        self.sha256 = verify_checksum(self.path, self.card)
        self._session_options = {"providers": providers, "threads": threads}
        self._session = get_session(self.path, sha256=self.sha256, **self._session_options)
        self._single_band = None  # session of the card's single-band graph, made when needed
        self.providers = list(self._session.get_providers())
        self._input_name = self._session.get_inputs()[0].name
        self.output_names = [o["name"] for o in self.card["outputs"]]
        _check_graph(self._session, self.path, self.card)

    def __reduce__(self):
        """Pickle as the way to load it again (e.g. for Dask or multiprocessing workers):
        the model is re-resolved and its checksum verified where it is unpickled (a file
        other than the one pickled is a `ChecksumMismatchError`); the ONNX Runtime
        session, which cannot be pickled, is made (or reused) there."""
        name_or_path, precision = self._origin
        return (_reload, (name_or_path, self._session_options["providers"],
                          self._session_options["threads"], precision, self.sha256))

    # -- card shortcuts --------------------------------------------------------
    name = property(lambda self: self.card["name"], doc="Model name (the card's ``name``).")
    version = property(lambda self: self.card["version"], doc="Model version (the card's).")
    task = property(lambda self: self.card["task"],
                    doc="Task, e.g. ``classification``, ``score`` or ``embedding``.")
    input_shape = property(lambda self: tuple(self.card["input"]["shape"]),
                           doc="``(C, H, W)`` of one network-ready stamp.")
    precision = property(lambda self: self.card.get("precision", "float32"),
                         doc="``float32`` or the variant loaded (e.g. ``int8``).")

    @property
    def labels(self):
        """Class names of the probability output, or ``None``."""
        for o in self.card["outputs"]:
            if o.get("kind") == "probabilities":
                return list(o["labels"])
        return None

    def __repr__(self):
        precision = "" if self.precision == "float32" else f" {self.precision}"
        return (f"<Model {self.name} v{self.version}{precision} ({self.task}) input "
                f"{self.input_shape} on {', '.join(self.providers)}>")

    # -- prediction ------------------------------------------------------------
    def _as_input(self, x):
        """Validate ``x`` against the card; return it as ``(N, C, H, W)`` (maybe a view)."""
        if isinstance(x, tuple) and len(x) == 2 and np.ndim(x[1]) == 1 and np.ndim(x[0]) >= 3:
            raise InputError("got a tuple (stamps, flags), as preprocess_triplet returns by "
                             "default: pass its first element, or return_flags=False")
        mask = np.ma.nomask
        if np.ma.isMaskedArray(x):
            # masked pixels are not data: the rows holding them are named below, from the
            # mask (no float copy of the whole input), once dtype and shape are checked
            x, mask = np.ma.getdata(x), np.ma.getmask(x)
        c, h, w = self.input_shape
        try:
            x = np.asarray(x)
        except ValueError as exc:  # a list of stamps of unequal shapes
            raise InputShapeError(f"model {self.name!r} expects input of shape (N, {c}, {h}, "
                                  f"{w}); got stamps of unequal shapes: {exc}") from None
        if x.dtype.kind not in "biuf":
            raise InputDTypeError(f"model input must be a real numeric array, got dtype {x.dtype}")
        given = x.shape
        single = self.card["input"].get("single_band", "invalid")
        if x.ndim == 3 and c > 1 and x.shape == (c, h, w):
            # one stamp, as the card's preprocessing returns it for one image
            if single == "replicate":
                warn(f"model {self.name!r}: input of shape {x.shape} is read as one {c}-band "
                     f"stamp; for {c} single-band stamps pass shape ({c}, 1, {h}, {w}), for one "
                     f"{c}-band stamp x[None], to silence this warning",
                     AmbiguousInputWarning)
            x = x[None]
        elif x.ndim == 3 and (c == 1 or single == "replicate"):
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] not in ((c, h, w),
                                              (1, h, w) if single == "replicate" else ()):
            accepted = f"(N, {c}, {h}, {w})"
            if c == 1 or single == "replicate":
                accepted += f" or (N, {h}, {w})"
            hint = ""
            if len(given) in (3, 4) and given[-3:] in ((h, w, c), (h, w, 1)) \
                    and (given[-1] == c or single == "replicate"):
                hint = (f"; it looks channels-last ({'N, ' if len(given) == 4 else ''}H, W, C): "
                        f"pass np.moveaxis(x, -1, {len(given) - 3})")
            raise InputShapeError(f"model {self.name!r} expects input of shape {accepted}, "
                                  f"got {given}{hint}")
        if mask is not np.ma.nomask and mask.any():
            rows = np.flatnonzero(np.reshape(mask, (len(x), -1)).any(axis=1))
            raise InputError(self._bad_rows_message("masked pixels", rows))
        return x

    def _single_band_session(self):
        """Session of the card's single-band graph (checksum verified), or None."""
        if self._single_band is None:
            found = resolve_single_band_graph(self.path, self.card)
            if found is None:
                self._single_band = False
            else:
                path, card = found
                # the model's fallback warning, given at load, covers this graph where it
                # runs on the same providers: not given a second time for it
                with collecting() as fallbacks:
                    session = get_session(path, sha256=verify_checksum(path, card),
                                          **self._session_options)
                for message, category in fallbacks:
                    if list(session.get_providers()) != self.providers \
                            or not issubclass(category, ProviderFallbackWarning):
                        warn(message, category)
                _check_graph(session, path, card)
                self._single_band = session
        return self._single_band or None

    def _run(self, batch, session=None):
        # astype handles any real dtype and either byte order (">f4" -> native "<f4").
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return (session or self._session).run(self.output_names, {self._input_name: batch})

    #: Magnitude from which network-ready input values are masking sentinels (ZTF stores
    #: masked pixels as -3.4e38, others +-1e30), never real pixel values: the `SENTINEL`
    #: of every other path.
    _MAX_ABS_INPUT = SENTINEL

    #: Value range of the network input that each preprocessing family makes (display
    #: values: the optical colour stamps and the stretched radio stamps), with the margin
    #: beyond which `predict` warns (`InputRangeWarning`); the triplet family's normalised
    #: stamps have no fixed range.
    _INPUT_RANGE = {"optical": (0.0, 1.0), "radio": (0.0, 1.0)}
    _RANGE_MARGIN = 0.01

    def _check_values(self, x):
        """Check the whole input ``x`` (at least one row) before any batch is run, a block of
        rows at a time (no copy of the whole input): raise `InputError` naming every row
        with NaN, infinite or masking-sentinel values; else warn (`InputRangeWarning`) where
        values lie beyond the range the card's preprocessing makes."""
        bounds = self._input_range()  # None: no range to check
        step = max(1, _CHECK_ELEMENTS // x[0].size)
        bad, lo, hi, first = [], np.inf, -np.inf, None
        for start in range(0, len(x), step):
            block = x[start:start + step]
            b_lo, b_hi = float(block.min()), float(block.max())  # NaN propagates
            if block.dtype.kind == "f" and not (np.isfinite(b_lo) and np.isfinite(b_hi)
                                                and max(-b_lo, b_hi) < self._MAX_ABS_INPUT):
                values = block.reshape(len(block), -1).astype(np.float64)  # no overflow
                with np.errstate(invalid="ignore"):
                    ok = np.abs(values, out=values) < self._MAX_ABS_INPUT
                bad.append(start + np.flatnonzero(~ok.all(axis=1)))
                del values, ok  # not held while the next block is read
            if bad or not bounds:
                continue
            lo, hi = min(lo, b_lo), max(hi, b_hi)
            if first is None and (b_lo < bounds[0] - self._RANGE_MARGIN
                                  or b_hi > bounds[1] + self._RANGE_MARGIN):
                rows = block.reshape(len(block), -1)
                beyond = (rows.min(axis=1) < bounds[0] - self._RANGE_MARGIN) \
                    | (rows.max(axis=1) > bounds[1] + self._RANGE_MARGIN)
                first = start + int(np.argmax(beyond))
        if bad:
            raise InputError(self._bad_rows_message(
                "NaN, infinite or masking-sentinel (|x| >= 1e30) values", np.concatenate(bad)))
        if first is not None:
            self._warn_range((lo, hi), bounds, x.dtype, first)

    def _bad_rows_message(self, what, rows):
        """The message of the `InputError` for input ``rows`` holding ``what``."""
        shown = ", ".join(str(int(i)) for i in rows[:10]) + (
            f", ... ({len(rows)} rows)" if len(rows) > 10 else "")
        prep = self.card["input"].get("preprocessing")
        hint = (f"; prepare raw stamps with {prep} (the card's input.preprocessing)"
                if prep else "")
        hint += ("; predict_files, annotate and annotate_stamps preprocess for you and flag "
                 "such rows instead")
        return (f"model {self.name!r} got {what} in input row(s) {shown}; predict() takes "
                f"network-ready arrays{hint}")

    def _input_range(self):
        """The value range the card's preprocessing family makes, or None (a family without
        one, or a card that names no preprocessing astromorph knows)."""
        from ._adapters import known_family

        return self._INPUT_RANGE.get(known_family(self.card))

    def _warn_range(self, found, bounds, dtype, start):
        """`InputRangeWarning`: values ``found`` (smallest, largest) beyond the range
        ``bounds`` that the card's preprocessing makes, the first such row being ``start``."""
        lo, hi = bounds
        prep = self.card["input"].get("preprocessing")
        eight_bit = found[1] > 2 and found[1] <= 255 and found[0] >= 0
        warn(f"model {self.name!r} takes network-ready values in [{lo:g}, {hi:g}]"
             + (f" (as {prep} makes them)" if prep else "")
             + f"; got values from {found[0]:.4g} to {found[1]:.4g} ({dtype}), from row "
             f"{start} on" + ("; 8-bit images: divide by 255" if eight_bit else "")
             + "; predict_files, annotate and annotate_stamps preprocess for you",
             InputRangeWarning)

    def predict(self, x, *, batch_size=256, progress=None):
        """Run the model on network-ready arrays.

        Parameters
        ----------
        x : array_like
            ``(N, C, H, W)`` with ``(C, H, W)`` the card's input shape, or
            ``(N, H, W)`` / ``(N, 1, H, W)`` where the model has one channel or
            its card says a single band is replicated (through the card's
            ``single_band_graph`` where it lists one: the same outputs without
            copying the band). Any real dtype and byte order. One stamp
            ``(C, H, W)`` (as the card's preprocessing returns it for one
            image) is read as a batch of one; for a model that also takes
            single bands this comes with an
            `~astromorph.exceptions.AmbiguousInputWarning` (pass ``x[None]``
            for one ``C``-band stamp, ``(C, 1, H, W)`` for ``C`` single-band
            stamps).
        batch_size : int, optional
            Rows per session call. After an out-of-memory or allocation error
            from the execution provider, the batch is halved and retried down
            to one row before the error is re-raised.
        progress : bool or None, optional
            Show a progress bar (default: on a terminal, for many batches).

        Returns
        -------
        Prediction
            Mapping of output name to array with ``N`` rows.

        Raises
        ------
        astromorph.exceptions.InputShapeError
            ``x`` does not have the card's input shape (for channels-last stamps, the
            message says to pass ``np.moveaxis(x, -1, 1)``).
        astromorph.exceptions.InputError
            Rows holding NaN, infinite or masking-sentinel values (magnitude 1e30
            or more, such as ZTF's -3.4e38), which would give undefined outputs, or
            masked pixels of a `numpy.ma.MaskedArray`. The whole input is checked before
            any batch is run, and the message names such rows (all of them up to ten, else
            the first ten and how many there are). Raw stamps go through the card's
            ``input.preprocessing`` function first (e.g.
            `astromorph.preprocessing.preprocess_triplet`), or through
            `astromorph.predict_files` / `astromorph.annotate`, which flag such rows.
        astromorph.exceptions.InputDTypeError
            ``x`` is not a real numeric array (complex, object, strings); a `TypeError`
            and an `InputError` both.
        astromorph.exceptions.InvalidArgumentError
            ``batch_size`` is not a positive integer, or ``progress`` not a boolean or
            ``None`` (an `~astromorph.exceptions.InvalidArgumentTypeError`).

        Warns
        -----
        astromorph.exceptions.InputRangeWarning
            Once per call, where values lie beyond the range the card's preprocessing makes
            (display values in [0, 1] for the galaxy and radio models; e.g. a raw 8-bit
            stamp), naming the range of the whole input and the first row beyond it: the
            model is run, its outputs meaning little.
        """
        from ._predict import check_batch_size

        check_batch_size(batch_size)
        check_progress(progress)
        x = self._as_input(x)
        n = len(x)
        if n == 0:
            empty = self._run(np.zeros((1, *self.input_shape), np.float32))
            return Prediction({k: v[:0] for k, v in zip(self.output_names, empty)},
                              self.card["outputs"])
        self._check_values(x)  # every row, before any is run (the un-replicated band)
        session = None
        if x.shape[1] != self.input_shape[0]:  # one band for a model that replicates it
            session = self._single_band_session()
            if session is None:
                # a view: the replicated planes are materialised one batch at a time
                x = np.broadcast_to(x, (n, *self.input_shape))
        batch_size = int(batch_size)
        chunks = {k: [] for k in self.output_names}
        start = 0
        with progress_bar(n, desc=self.name, unit="stamp", enabled=progress,
                          min_total=4 * batch_size) as bar:
            while start < n:
                stop = min(start + batch_size, n)
                try:
                    outs = self._run(x[start:stop], session)
                except Exception as exc:  # noqa: BLE001 - ORT raises generic errors
                    if not _OOM.search(str(exc)) or batch_size == 1:
                        raise
                    batch_size = max(1, batch_size // 2)
                    log.warning("%s: allocation failure (%s); retrying with batch_size=%d",
                                self.name, str(exc).splitlines()[0][:200], batch_size)
                    continue
                for k, v in zip(self.output_names, outs):
                    chunks[k].append(v)
                bar.update(stop - start)
                start = stop
        return Prediction({k: np.concatenate(v) for k, v in chunks.items()},
                          self.card["outputs"])

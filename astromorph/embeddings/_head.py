"""`LabelHead`: a few-label classifier (multinomial logistic regression) on embeddings."""
import logging

import numpy as np

from ._common import embedding_matrix, masked_column
from ._state import Saved, as_provenance
from ._state import check_provenance as _check_provenance
from ..exceptions import InvalidArgumentError, InvalidArgumentTypeError
from ..preprocessing._checks import check_bool, check_choice, check_number, check_whole

__all__ = ["LabelHead"]

log = logging.getLogger(__name__)

#: Inverse regularisation strengths tried by cross-validation when ``C`` is not given.
DEFAULT_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)

#: Rows made float64 at a time by the predictions (16 MB of float64 at 256-d, and the
#: float32 rows chosen beside them: 65,536 rows took 192 MB)
BLOCK_ROWS = 8192


def _missing_labels(labels):
    """Rows of ``labels`` with no label: masked, None, NaN or an empty string."""
    values = np.asarray(np.ma.getdata(labels))
    missing = np.ma.getmaskarray(labels).reshape(-1) if hasattr(labels, "mask") \
        else np.zeros(len(values), bool)
    if values.ndim != 1:
        return np.zeros(len(values), bool)
    if values.dtype.kind == "f":
        missing = missing | np.isnan(values)
    elif values.dtype.kind in "US":
        missing = missing | (np.char.strip(values.astype(str)) == "")
    elif values.dtype.kind == "O":  # mixed Python objects (e.g. None among strings)
        missing = missing | np.array([v is None or (isinstance(v, (float, np.floating)) and
                                                    np.isnan(v))
                                      or (isinstance(v, (str, bytes)) and not str(v).strip())
                                      for v in values.tolist()], dtype=bool)
    return missing


def _warn_similar_classes(classes):
    """`SimilarLabelsWarning` naming the groups of ``classes`` that differ only by case or
    surrounding whitespace (they stay separate classes)."""
    from .._warnings import warn
    from ..exceptions import SimilarLabelsWarning

    names = np.array([str(c) for c in classes.tolist()], dtype=str)
    keys = np.char.lower(np.char.strip(names))
    _, group, counts = np.unique(keys, return_inverse=True, return_counts=True)
    similar = np.flatnonzero(counts > 1)
    if not len(similar):
        return
    groups = [names[group == g].tolist() for g in similar]
    shown = "; ".join(", ".join(map(repr, g)) for g in groups[:10])
    warn(f"{len(groups)} group(s) of labels differ only by case or surrounding whitespace "
         f"and are fitted as separate classes: {shown}{'; ...' if len(groups) > 10 else ''}"
         " (normalise the labels first, e.g. strip and lower-case them, if they mean one "
         "class)", SimilarLabelsWarning)


def _join_classes(classes):
    """The class names as one CSV record: comma-separated, a name with a comma, a quote or a
    line break in double quotes (``next(csv.reader([text]))`` reads the names back); names
    without such characters give the plain ``a,b,c`` of tables written before."""
    import csv
    import io

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow([str(c) for c in classes.tolist()])
    return text.getvalue()[:-1]


def _class_columns(prefix, classes):
    """The probability columns of ``classes``: ``<prefix>_p_<class>``, each character of the
    class name that a column name cannot hold (`astromorph._registry._COLUMN_PART`: a space,
    a comma, a slash, a ``?``, ...) replaced by ``_`` (``'Sa/Sb'`` -> ``<prefix>_p_Sa_Sb``).

    Raises `InvalidArgumentError` naming the classes (and the columns) when two of them would
    give one column, e.g. ``'Sa/Sb'`` and ``'Sa Sb'``, or ``'Spiral'`` and ``'spiral'``
    (column names are compared without regard to case, as FITS compares its TTYPEs: see
    `astromorph._annotate.check_clashes`).
    """
    from .._registry import _NOT_COLUMN_CHAR

    labels = np.array([str(c) for c in np.asarray(classes).tolist()], dtype=str)
    names = np.array([f"{prefix}_p_{_NOT_COLUMN_CHAR.sub('_', c)}" for c in labels.tolist()],
                     dtype=str)
    _, group, counts = np.unique(np.char.lower(names), return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts > 1)
    if len(shared):
        shown = "; ".join(", ".join(map(repr, labels[group == g].tolist())) + " -> "
                          + ", ".join(map(repr, np.unique(names[group == g]).tolist()))
                          for g in shared[:10])
        raise InvalidArgumentError(
            f"{len(shared)} group(s) of classes would share one probability column, as a "
            "column name holds only letters, digits, '_', '.', '-' and '+' (any other "
            "character becomes '_') and names that differ only by case are one column (in "
            f"FITS, TOPCAT, cfitsio): {shown}{'; ...' if len(shared) > 10 else ''}; relabel "
            "them so that they differ in those characters, or merge them if they are one "
            "class")
    return names.tolist()


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _fit_logistic(x, y, k, weights, c, init=None, max_iter=500):
    """Minimise ``sum_i w_i CE_i + ||W||^2 / (2 C)`` (bias not penalised) with L-BFGS."""
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0

    def objective(theta):
        w = theta[:d * k].reshape(d, k)
        b = theta[d * k:]
        logp = _log_softmax(x @ w + b)
        loss = -np.sum(weights * np.sum(onehot * logp, axis=1)) + 0.5 / c * np.sum(w * w)
        g = (np.exp(logp) - onehot) * weights[:, None]
        grad_w = x.T @ g + w / c
        return loss, np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    theta0 = np.zeros(d * k + k) if init is None else init
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": 1e-5})
    return res.x


class LabelHead(Saved):
    """Few-label classifier: multinomial logistic regression on embedding vectors.

    Fit it on the embeddings of a handful of labelled rows and apply it to a
    whole table (`annotate`). Features are standardised with the labelled
    rows' mean and spread; the L2 strength is chosen by stratified
    cross-validation (log-loss) unless ``C`` is given.

    Parameters
    ----------
    C : float, optional
        Inverse L2 regularisation strength (as in scikit-learn), positive and finite. Default:
        chosen among `DEFAULT_CS` by cross-validation.
    Cs : sequence of float, optional
        Candidates for the cross-validation.
    cv : int, optional
        Folds of the cross-validation, at least 2 (fewer when a class has fewer members).
    class_weight : None or "balanced", optional
        ``"balanced"`` weights each class by ``n / (k * n_c)``, which favours
        macro recall over accuracy when classes are unequal.
    max_iter : int, optional
        L-BFGS iterations.

    Attributes
    ----------
    classes_ : numpy.ndarray
        The labels seen in `fit`, in column order of `predict_proba`.
    C_ : float
        The regularisation strength used.
    cv_scores_ : dict
        Mean held-out log-loss per candidate ``C`` (when cross-validated).
    provenance_ : dict or None
        The embedding model whose vectors the head was fitted on (``model``, ``version``,
        ``sha256``; from ``fit(..., provenance=)``), or None when not given. `annotate`
        refuses a table whose vectors another model made.

    Examples
    --------
    >>> head = LabelHead().fit(table["embedding"][labelled], table["my_class"][labelled],
    ...                        provenance=table)          # doctest: +SKIP
    >>> head.save("my_head.json")                          # doctest: +SKIP
    >>> out = LabelHead.load("my_head.json").annotate(other_table, prefix="mine")  # doctest: +SKIP
    """

    def __init__(self, *, C=None, Cs=DEFAULT_CS, cv=5, class_weight=None, max_iter=300):
        check_choice(class_weight, "class_weight", ("balanced",), optional=True)
        if C is not None and (isinstance(C, (bool, np.bool_)) or not (
                isinstance(C, (int, float, np.integer, np.floating)) and np.isfinite(C)
                and C > 0)):  # inf: an unregularised fit, and a head that cannot be saved
            raise InvalidArgumentError(f"C must be a finite positive number, got {C!r}")
        if C is None:
            if isinstance(Cs, (str, bytes)) or not np.iterable(Cs) or not len(Cs):
                raise InvalidArgumentTypeError(f"Cs must be a non-empty sequence of positive "
                                               f"numbers, got {Cs!r}")
            Cs = [check_number(c, "Cs values", positive=True) for c in Cs]
        self.C = C
        self.Cs = tuple(float(c) for c in Cs)
        self.cv = check_whole(cv, "cv", minimum=2)
        self.class_weight = class_weight
        self.max_iter = check_whole(max_iter, "max_iter")
        self.classes_ = None
        self.provenance_ = None

    def __repr__(self):
        state = (f"{len(self.classes_)} classes, C={self.C_:.3g}" if self.classes_ is not None
                 else "not fitted")
        return f"<LabelHead {state}>"

    # ------------------------------------------------------------------ fitting
    def _weights(self, y, k):
        if self.class_weight != "balanced":
            return np.ones(len(y))
        counts = np.bincount(y, minlength=k).astype(float)
        return len(y) / (k * counts[y])

    def _n_folds(self, counts):
        """The folds of the cross-validation of C, from the rows of each class."""
        return min(self.cv, max(2, counts.max()))

    def _warn_few_rows(self, classes, counts):
        """`FewRowsWarning` naming the classes with fewer rows than the cross-validation of
        C has folds (a class of one row is never in the training part of the fold that holds
        it out, so C is chosen blind to it), or, with C given, the classes of one row."""
        from .._warnings import warn
        from ..exceptions import FewRowsWarning

        need = self._n_folds(counts) if self.C is None else 2
        few = np.flatnonzero(counts < need)
        if not len(few):
            return
        shown = ", ".join(f"{str(classes[i])!r} ({counts[i]} row{'' if counts[i] == 1 else 's'})"
                          for i in few[:10])
        why = (f"fewer than the {need} folds of the cross-validation that chooses C, so it is "
               "chosen with some folds holding no row of these classes" if self.C is None
               else "one example cannot describe a class")
        warn(f"{len(few)} class(es) have too few labelled rows to be learnt reliably: {shown}"
             f"{', ...' if len(few) > 10 else ''} ({why}); the head is fitted, but its "
             f"probabilities for these classes mean little: label at least {max(need, 5)} "
             "rows of each class, or merge or drop these classes", FewRowsWarning)

    def _folds(self, y, rng):
        """Stratified fold number of every row (classes dealt round-robin after a shuffle)."""
        folds = np.empty(len(y), dtype=int)
        n_folds = self._n_folds(np.bincount(y))
        start = 0
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            folds[idx] = (start + np.arange(len(idx))) % n_folds
            start += len(idx)
        return folds, n_folds

    def fit(self, embeddings, labels, *, provenance=None):
        """Fit on labelled rows.

        Parameters
        ----------
        embeddings : array_like, (N, D)
            Embedding vectors (e.g. a table's ``embedding`` column).
        labels : array_like, (N,)
            Class of each row (strings, integers or booleans; bytes, as in a string
            column read from FITS, are decoded to text). Masked or empty labels
            are not allowed here: select the labelled rows first.
        provenance : astropy.table.Table, Model or dict, optional
            The embedding model that made ``embeddings``, recorded as `provenance_`
            (then `annotate` refuses tables whose vectors another model made): the
            table they come from (the provenance of its ``embedding`` column), a model
            from `astromorph.load_model`, or a dict with ``model``, ``version`` and
            ``sha256``.

        Returns
        -------
        LabelHead
            ``self``.

        Warns
        -----
        astromorph.exceptions.SimilarLabelsWarning
            Some labels differ only by case or surrounding whitespace (e.g. ``"Spiral"``
            and ``"spiral "``): they are fitted as separate classes, as given (`annotate`
            refuses classes that differ only by case: their columns would be one).
        astromorph.exceptions.FewRowsWarning
            Some classes have fewer labelled rows than the cross-validation of ``C`` has
            folds (``min(cv, rows of the largest class)``, at least 2), or, with ``C``
            given, a single row: the message names them with their counts.

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            Fewer than two classes, labels that are masked, empty, None or NaN, or
            (without ``C``) every class a single row: the cross-validation cannot choose
            ``C`` (give ``C``).
        """
        provenance = as_provenance(provenance)
        x = embedding_matrix(embeddings, allow_masked=False)
        missing = _missing_labels(labels)
        labels = np.asarray(labels)
        if labels.dtype.kind == "S":  # e.g. a string column read from FITS: the text
            labels = np.char.decode(labels, "utf-8", errors="replace")
        if labels.ndim != 1 or len(labels) != len(x):
            raise InvalidArgumentError(f"labels must be 1-d with one entry per embedding row "
                                       f"({len(x)}), got shape {labels.shape}")
        if missing.any():
            rows = np.flatnonzero(missing)
            raise InvalidArgumentError(
                f"{len(rows)} label(s) are masked, empty, None or NaN (rows "
                f"{', '.join(map(str, rows[:10]))}{', ...' if len(rows) > 10 else ''}): select "
                "the labelled rows first")
        # the fitted state is set at the end only: a failed fit leaves the head as it was
        try:
            classes, y = np.unique(labels, return_inverse=True)
        except TypeError:  # Python objects that cannot be ordered, e.g. 1 and "a"
            kinds = sorted({type(v).__name__ for v in labels.tolist()})
            raise InvalidArgumentTypeError(
                f"labels must be of one kind (all strings, or all numbers), got a mix of "
                f"{', '.join(kinds)}: {labels.tolist()[:5]}") from None
        k = len(classes)
        if k < 2:
            raise InvalidArgumentError(f"need at least two classes to fit a head, got {k}"
                                       + "".join(f": {c!r}" for c in classes.tolist()))
        counts = np.bincount(y, minlength=k)
        if self.C is None and counts.max() < 2:
            # each held-out row's class is missing from its training part: every C scores
            # alike (the smallest wins), after minutes of fits for hundreds of classes
            raise InvalidArgumentError(
                f"{k} classes in {len(y)} labelled rows, one row each (e.g. "
                f"{', '.join(repr(c) for c in classes.tolist()[:3])}"
                f"{', ...' if k > 3 else ''}: identifiers rather than classes?): the "
                "cross-validation cannot choose C without a class of two rows; label more "
                "rows of each class, or give C= (-C on the command line) to fit one "
                "exemplar per class")
        _warn_similar_classes(classes)
        self._warn_few_rows(classes, counts)
        mean = x.mean(axis=0)
        scale = np.maximum(x.std(axis=0), 1e-6)
        z = (x - mean) / scale
        weights = self._weights(y, k)
        cv_scores = {}
        if self.C is not None:
            C = float(self.C)
        else:
            rng = np.random.default_rng(0)
            folds, n_folds = self._folds(y, rng)
            warm = {}  # each fold starts from its solution for the previous (smaller) C
            for c in sorted(self.Cs):
                losses = []
                for f in range(n_folds):
                    tr, te = folds != f, folds == f
                    if not te.any():
                        continue
                    theta = _fit_logistic(z[tr], y[tr], k, weights[tr], c, init=warm.get(f),
                                          max_iter=self.max_iter)
                    warm[f] = theta
                    w = theta[:z.shape[1] * k].reshape(-1, k)
                    logp = _log_softmax(z[te] @ w + theta[z.shape[1] * k:])
                    losses.append(-np.sum(weights[te] * np.maximum(logp[np.arange(te.sum()), y[te]],
                                                                   np.log(1e-6))))
                cv_scores[c] = float(np.sum(losses) / np.sum(weights))
            C = min(cv_scores, key=cv_scores.get)
        theta = _fit_logistic(z, y, k, weights, C, max_iter=self.max_iter)
        d = z.shape[1]
        self.classes_, self.mean_, self.scale_, self.C_, self.cv_scores_ = \
            classes, mean, scale, C, cv_scores
        self.coef_ = theta[:d * k].reshape(d, k)
        self.intercept_ = theta[d * k:]
        self.provenance_ = provenance
        log.debug("LabelHead: %d rows, %d classes, C=%.3g", len(y), k, self.C_)
        return self

    # --------------------------------------------------------------- prediction
    def _check(self):
        if self.classes_ is None:
            raise InvalidArgumentError("this LabelHead is not fitted yet; call fit() first")

    def decision_function(self, embeddings, *, chunk_rows=BLOCK_ROWS):
        """Logits ``(N, K)`` for embedding rows.

        Parameters
        ----------
        embeddings : array_like, (N, D)
            Embedding vectors (a table's ``embedding`` column or an array).
        chunk_rows : int, optional
            Rows per block (bounds the memory).

        Returns
        -------
        numpy.ndarray, (N, K)
        """
        self._check()
        chunk_rows = check_whole(chunk_rows, "chunk_rows")
        # float32 vectors stay float32: each block of rows is made float64 in turn
        x = embedding_matrix(embeddings, allow_masked=False, dim=len(self.mean_), dtype=None)
        return self._logits(x, None, chunk_rows)

    def _logits(self, x, rows, chunk_rows=BLOCK_ROWS):
        """Logits of the rows ``rows`` of ``x`` (all rows: None), a block of rows at a time
        in float64 (no float64 copy of the whole matrix, nor a copy of the rows chosen)."""
        if x.shape[1] != len(self.mean_):
            raise InvalidArgumentError(f"embeddings have {x.shape[1]} dimensions; this head was "
                                       f"fitted on {len(self.mean_)}")
        n = len(x) if rows is None else len(rows)
        out = np.empty((n, len(self.classes_)))
        for s in range(0, n, chunk_rows):
            block = x[s:s + chunk_rows] if rows is None else x[rows[s:s + chunk_rows]]
            z = block.astype(np.float64)  # (in place: one block of float64 at a time)
            z -= self.mean_
            z /= self.scale_
            out[s:s + chunk_rows] = z @ self.coef_ + self.intercept_
        return out

    def predict_proba(self, embeddings):
        """Class probabilities ``(N, K)``, columns in the order of `classes_`.

        Parameters
        ----------
        embeddings : array_like, (N, D)
            Embedding vectors (a table's ``embedding`` column or an array).

        Returns
        -------
        numpy.ndarray, (N, K)
        """
        return np.exp(_log_softmax(self.decision_function(embeddings)))

    def predict(self, embeddings):
        """Most probable class (values of `classes_`) of each row.

        Parameters
        ----------
        embeddings : array_like, (N, D)
            Embedding vectors (a table's ``embedding`` column or an array).

        Returns
        -------
        numpy.ndarray, (N,)
        """
        return self.classes_[np.argmax(self.decision_function(embeddings), axis=1)]

    def annotate(self, table, *, column="embedding", prefix="head", on_conflict="error",
                 check_provenance=True):
        """A copy of ``table`` with ``<prefix>_p_<class>`` and ``<prefix>_label`` columns.

        Rows whose embedding is masked or not finite get masked outputs. A class name
        becomes part of a column name with each character that column names cannot
        hold (anything but letters, digits, ``_``, ``.``, ``-`` and ``+``) replaced by
        ``_``: class ``"Sa/Sb"`` gives ``<prefix>_p_Sa_Sb``. The label column holds the
        classes as given (``"Sa/Sb"``), and each probability column's description names
        its class as given.

        Parameters
        ----------
        table : astropy.table.Table or QTable
            A table with an embedding column; it is not modified.
        column : str, optional
            The embedding column.
        prefix : str, optional
            Prefix of the new columns: letters, digits, ``_``, ``.``, ``-`` and ``+``,
            starting with a letter or digit (as a model card's ``column_prefix``).
        on_conflict : {"error", "suffix", "replace"}, optional
            What to do when a new column name already exists in ``table``: raise
            `~astromorph.exceptions.InputError` (default), add ``_2``, ``_3``... to the new
            name, or replace the existing column (as in `astromorph.annotate`).
        check_provenance : bool, optional
            When the head records the embedding model it was fitted on (`provenance_`),
            refuse a table whose ``column`` another model made (default); False skips
            the check.

        Returns
        -------
        astropy.table.Table or QTable
            Of ``table``'s class: a copy of ``table`` (sharing its data) with the new
            columns, and in its
            meta ``<label>_classes`` (the classes as given, in the order of the
            probability columns, comma-separated; a name holding a comma or a
            quote in double quotes, as in CSV), ``<label>_C`` (the
            regularisation), ``<label>_input`` (the embedding column) and, when
            recorded, ``<label>_embedding_model``, ``_version`` and ``_sha256`` (the
            model the head was fitted on), ``<label>`` being the name the label column
            got (``<prefix>_label``, or e.g. ``<prefix>_label_2`` with
            ``on_conflict="suffix"``).

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            The head is not fitted yet, ``on_conflict`` is not a known policy,
            ``prefix`` is not made of the characters above, or two classes would
            name one column (e.g. ``"Sa/Sb"`` and ``"Sa Sb"``, or ``"Spiral"`` and
            ``"spiral"``, as column names are compared without regard to case: the
            message names them).
        astromorph.exceptions.InputError
            ``table`` has no such column, or already has a column of a new name, in any
            case (``on_conflict="error"``).
        astromorph.exceptions.ProvenanceMismatchError
            Another embedding model made the table's vectors (``check_provenance=True``).

        Warns
        -----
        astromorph.exceptions.MissingProvenanceWarning
            The head records its embedding model but the table does not say which made
            its vectors.
        """
        from .._annotate import check_clashes, check_on_conflict
        from ._common import add_columns, check_prefix, table_embeddings

        self._check()
        check_on_conflict(on_conflict)
        check_prefix(prefix)
        check_provenance = check_bool(check_provenance, "check_provenance")
        names = _class_columns(prefix, self.classes_) + [f"{prefix}_label"]
        check_clashes(table, names, on_conflict)  # before any work
        # masked rows left as the column holds them (no filled copy): only valid rows are used
        x, valid = table_embeddings(table, column, dtype=None, fill_masked=False)
        _check_provenance(self.provenance_, table, column, "this LabelHead", check_provenance)
        probs = np.exp(_log_softmax(self._logits(x, np.flatnonzero(valid))))
        columns = {name: masked_column(probs[:, j].astype(np.float32), valid,
                                       f"LabelHead probability of class {str(c)!r}")
                   for j, (name, c) in enumerate(zip(names, self.classes_))}
        best = self.classes_[np.argmax(probs, axis=1)] if len(probs) else self.classes_[:0]
        columns[names[-1]] = masked_column(best, valid, "LabelHead most probable class")
        out, used = add_columns(table, columns, on_conflict)
        label = used[names[-1]]  # provenance, flat for FITS: what made these columns
        out.meta[f"{label}_classes"] = _join_classes(self.classes_)
        out.meta[f"{label}_C"] = float(self.C_)
        out.meta[f"{label}_input"] = column
        for key, value in (self.provenance_ or {}).items():
            out.meta[f"{label}_embedding_{key}"] = value
        return out

    # ------------------------------------------------------------- persistence
    def to_dict(self):
        """JSON-serialisable state (for `from_dict`).

        Returns
        -------
        dict
            Classes, regularisation, standardisation and weights of the fitted head, and
            its `provenance_`.
        """
        self._check()
        return {"classes": self.classes_.tolist(), "C": self.C_, "mean": self.mean_.tolist(),
                "scale": self.scale_.tolist(), "coef": self.coef_.tolist(),
                "intercept": self.intercept_.tolist(), "class_weight": self.class_weight,
                "provenance": self.provenance_}

    @classmethod
    def from_dict(cls, state):
        """A fitted head from the output of `to_dict`.

        Parameters
        ----------
        state : dict
            What `to_dict` returned (e.g. read back from JSON).

        Returns
        -------
        LabelHead

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            ``state`` lacks one of the fitted quantities, their shapes disagree, a value is
            not finite (or a scale not positive), or a class is repeated.
        """
        from collections.abc import Mapping

        if not isinstance(state, Mapping):
            raise InvalidArgumentError(f"not a LabelHead state (a dict from to_dict): got "
                                       f"{type(state).__name__} {str(state)[:60]!r}")
        missing = [k for k in ("classes", "C", "mean", "scale", "coef", "intercept")
                   if k not in state]
        if missing:
            raise InvalidArgumentError(f"not a LabelHead state (from to_dict): no {missing}")
        head = cls(C=state["C"], class_weight=state.get("class_weight"))
        head.classes_ = np.asarray(state["classes"])
        head.C_ = float(state["C"])
        try:
            for name in ("mean", "scale", "coef", "intercept"):
                setattr(head, f"{name}_", np.asarray(state[name], dtype=float))
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"not a LabelHead state: {name!r} is not an array of "
                                       f"numbers ({exc})") from None
        k, d = len(head.classes_), head.mean_.size
        expected = {"classes": (k,), "mean": (d,), "scale": (d,), "coef": (d, k),
                    "intercept": (k,)}
        for name, shape in expected.items():
            got = np.shape(head.classes_ if name == "classes" else getattr(head, f"{name}_"))
            if got != shape or (name == "classes" and k < 2):
                raise InvalidArgumentError(
                    f"not a consistent LabelHead state: {name!r} has shape {got}, expected "
                    f"{shape} for {k} classes and {d} dimensions")
        # (NaN or a zero scale would give NaN probabilities for every row; a repeated class
        # two columns of one name)
        for name in ("mean", "scale", "coef", "intercept"):
            values = getattr(head, f"{name}_")
            if not np.all(np.isfinite(values)) or (name == "scale" and not np.all(values > 0)):
                raise InvalidArgumentError(
                    f"not a consistent LabelHead state: {name!r} holds values that are not "
                    f"finite{' and positive' if name == 'scale' else ''}")
        if len(np.unique(head.classes_)) < k:
            raise InvalidArgumentError(f"not a consistent LabelHead state: 'classes' repeats a "
                                       f"class: {head.classes_.tolist()[:10]}")
        try:
            head.provenance_ = as_provenance(state.get("provenance"))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"not a LabelHead state: {exc}") from None
        head.cv_scores_ = {}
        return head

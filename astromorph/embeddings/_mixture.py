"""Gaussian-mixture clustering in embedding space (numpy EM, number of clusters by BIC)."""
import inspect
import logging
import numbers

import numpy as np

from ._common import (_matrix_and_mask, add_columns, check_prefix, check_seed, finite_rows,
                      masked_column, table_embeddings)
from ._state import Saved, as_provenance, table_provenance
from ._state import check_provenance as _check_provenance
from .._blas import single_threaded_blas
from .._warnings import warn
from ..exceptions import (FewRowsWarning, InputError, InvalidArgumentError,
                          InvalidArgumentTypeError)
from ..preprocessing._checks import (check_bool, check_choice, check_number, check_options,
                                     check_whole)

__all__ = ["GaussianMixture", "cluster_table"]

log = logging.getLogger(__name__)

_LOG_2PI = np.log(2 * np.pi)


def _logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


#: Rows made float64 at a time by the predictions (a block of 65,536 256-d float32 rows and
#: its float64 copy took 192 MB)
BLOCK_ROWS = 8192


def _usable(x, masked):
    """The rows of ``x`` finite throughout and not masked (``masked``: None, or a bool per
    row, as `_matrix_and_mask` gives)."""
    usable = finite_rows(x)
    if masked is not None:
        usable &= ~masked
    return usable


class GaussianMixture(Saved):
    """Gaussian mixture model of embedding vectors, fitted by EM.

    The vectors are first projected on their ``n_pca`` leading principal
    components (embeddings are unit vectors in 64-256 dimensions; a mixture
    with full covariances needs fewer dimensions than that). The number of
    components is the one with the lowest Bayesian information criterion
    among ``k_range`` unless ``n_components`` is given.

    Parameters
    ----------
    n_components : int, optional
        Number of clusters; default: chosen by BIC over ``k_range``.
    k_range : sequence of int, optional
        Candidates for the BIC choice (default 2 to 12).
    covariance_type : {"full", "diag"}, optional
    n_pca : int or None, optional
        Principal components kept before the mixture (``None``: all dimensions).
    n_init : int, optional
        EM runs from different k-means++ starts; the best likelihood is kept.
    max_iter : int, optional
        Most EM iterations of each fit.
    tol : float, optional
        EM stopping rule: the change of the mean log-likelihood per row below which a fit
        stops.
    reg_covar : float, optional
        Added to the covariance diagonals (in units of the mean variance); positive, so
        that repeated vectors do not give a singular covariance.
    max_fit_rows : int, optional
        Fit on a random subset of at most this many rows (all rows are
        assigned afterwards).
    max_select_rows : int, optional
        Without ``n_components``: choose the number of components by BIC on a
        random subset of at most this many of the fitted rows, then fit that number
        on all of them, starting from its best fit to the subset (a BIC sweep over 11
        values of k, ``n_init`` starts each, is most of the time of a fit: 14 s on
        20,000 rows of 8 clusters on 2 cores, about 5 times that on 100,000).
    seed : int, optional

    Attributes
    ----------
    n_components_ : int
    bic_ : dict
        BIC of every number of components tried (on the rows the choice was made on,
        at most ``max_select_rows``).
    weights_, means_, covariances_ : numpy.ndarray
        Mixture parameters in the PCA space.
    provenance_ : dict or None
        The embedding model whose vectors the mixture was fitted on (``model``,
        ``version``, ``sha256``; from ``fit(..., provenance=)`` or `cluster_table`), or
        None when not given. `annotate` refuses a table whose vectors another model made.
    """

    def __init__(self, n_components=None, *, k_range=range(2, 13), covariance_type="full",
                 n_pca=16, n_init=3, max_iter=300, tol=1e-5, reg_covar=1e-3,
                 max_fit_rows=100_000, max_select_rows=20_000, seed=0):
        check_choice(covariance_type, "covariance_type", ("full", "diag"))
        self.n_components = None if n_components is None else check_whole(n_components,
                                                                           "n_components")
        if isinstance(k_range, (str, bytes)) or not np.iterable(k_range):
            raise InvalidArgumentTypeError(f"k_range must be a range or a list of numbers of "
                                           f"clusters, got {k_range!r}")
        self.k_range = [check_whole(k, "k_range values") for k in k_range]
        if n_components is None and not self.k_range:
            raise InvalidArgumentError(f"k_range must hold numbers of clusters >= 1, got "
                                       f"{list(k_range)} (e.g. k_max >= 2)")
        self.covariance_type = covariance_type
        self.n_pca = None if n_pca is None else check_whole(n_pca, "n_pca (or None: no "
                                                                     "projection)")
        self.n_init = check_whole(n_init, "n_init")
        self.max_iter = check_whole(max_iter, "max_iter")
        self.tol = check_number(tol, "tol", minimum=0)
        # 0: a singular covariance (and LinAlgError) for repeated vectors
        self.reg_covar = check_number(reg_covar, "reg_covar", positive=True)
        self.max_fit_rows = check_whole(max_fit_rows, "max_fit_rows")
        self.max_select_rows = check_whole(max_select_rows, "max_select_rows")
        check_seed(seed)
        self.seed = seed
        self.n_components_ = None
        self.provenance_ = None

    def __repr__(self):
        if self.n_components_ is None:
            return "<GaussianMixture not fitted>"
        return (f"<GaussianMixture {self.n_components_} components in "
                f"{self.mean_.size}->{self.dim_} dims>")

    # ------------------------------------------------------------------ helpers
    def _project(self, x):
        z = x - self.mean_
        return z @ self.components_.T if self.components_ is not None else z

    def _log_prob(self, z, weights, means, covs):
        """log(w_j N(z | mu_j, S_j)) for every row and component, (N, K).

        Full covariances: all components at once, a block of rows at a time
        (`_component_blocks`), the differences ``z - mu_j`` times the inverse of the
        transposed Cholesky factor of ``S_j`` (one batched matrix product instead of a
        triangular solve per component; equal to rounding, 1e-13 on log-densities ~100).
        """
        n, d = z.shape
        out = np.empty((n, len(weights)))
        if self.covariance_type == "diag":
            for j in range(len(weights)):
                var = covs[j]
                diff = z - means[j]
                maha = np.sum(diff * diff / var, axis=1)
                logdet = np.sum(np.log(var))
                out[:, j] = np.log(weights[j]) - 0.5 * (d * _LOG_2PI + logdet + maha)
            return out
        chol = np.linalg.cholesky(covs)
        logdet = 2 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
        # |L^-1 diff^T|^2 row by row: diff @ (L^-1)^T
        inv_t = np.stack([_solve_lower(c, np.eye(d)).T for c in chol])
        const = (np.log(weights) - 0.5 * (d * _LOG_2PI + logdet))[:, None]
        for s, diff in _component_blocks(z, means):
            sol = np.matmul(diff, inv_t)
            out[s:s + diff.shape[1]] = (const - 0.5 * np.einsum("knd,knd->kn", sol, sol)).T
        return out

    def _m_step(self, z, resp, reg):
        nk = resp.sum(axis=0) + 1e-10
        weights = nk / nk.sum()
        means = (resp.T @ z) / nk[:, None]
        if self.covariance_type == "diag":
            covs = np.stack([(resp[:, j] @ (z - means[j]) ** 2) / nk[j] + reg
                             for j in range(len(nk))])
            return weights, means, covs
        # sum over the rows of resp_ij (z - mu_j)(z - mu_j)^T: all components at once, as
        # one batched matrix product a block of rows at a time
        k, d = means.shape
        scatter = np.zeros((k, d, d))
        for s, diff in _component_blocks(z, means):
            weighted = diff * resp[s:s + diff.shape[1]].T[:, :, None]
            scatter += np.matmul(weighted.transpose(0, 2, 1), diff)
        return weights, means, scatter / nk[:, None, None] + np.eye(d) * reg

    def _kmeans_pp(self, z, k, rng, iters=10):
        centres = [z[rng.integers(len(z))]]
        d2 = np.sum((z - centres[0]) ** 2, axis=1)
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else None
            centres.append(z[rng.choice(len(z), p=p)])
            d2 = np.minimum(d2, np.sum((z - centres[-1]) ** 2, axis=1))
        centres = np.array(centres)
        dist = np.empty((len(z), k))
        for _ in range(iters):
            lab = _squared_distances(z, centres, out=dist).argmin(1)
            for j in range(k):
                if np.any(lab == j):
                    centres[j] = z[lab == j].mean(0)
        resp = np.zeros((len(z), k))
        resp[np.arange(len(z)), lab] = 1.0
        return resp

    def _em(self, z, k, rng, start=None):
        """EM from k-means++ responsibilities, or from the parameters ``start``."""
        reg = self.reg_covar * float(np.mean(np.var(z, axis=0)))
        params = self._m_step(z, self._kmeans_pp(z, k, rng), reg) if start is None else start
        prev = -np.inf
        for it in range(self.max_iter):
            logp = self._log_prob(z, *params)
            norm = _logsumexp(logp, axis=1)
            ll = float(norm.mean())
            resp = np.exp(logp - norm[:, None])
            params = self._m_step(z, resp, reg)
            if abs(ll - prev) < self.tol:
                break
            prev = ll
        ll = float(_logsumexp(self._log_prob(z, *params), axis=1).sum())
        return params, ll, it + 1

    def _n_parameters(self, k, d):
        cov = k * d if self.covariance_type == "diag" else k * d * (d + 1) // 2
        return k - 1 + k * d + cov

    # --------------------------------------------------------------------- fit
    def fit(self, embeddings, *, provenance=None):
        """Fit the mixture (and the PCA) to embedding vectors.

        Parameters
        ----------
        embeddings : array_like, (N, D)
            Masked or non-finite rows are ignored.
        provenance : astropy.table.Table, Model or dict, optional
            The embedding model that made ``embeddings``, recorded as `provenance_`
            (then `annotate` refuses tables whose vectors another model made): the
            table they come from (the provenance of its ``embedding`` column), a model
            from `astromorph.load_model`, or a dict with ``model``, ``version`` and
            ``sha256``.

        Returns
        -------
        GaussianMixture
            ``self``.

        Warns
        -----
        astromorph.exceptions.FewRowsWarning
            Full covariances fitted on fewer rows per component (on average) than the
            dimensions after the PCA + 1: each is then set by ``reg_covar`` more than by
            the rows (use ``covariance_type="diag"``, fewer components or more rows).
        """
        provenance = as_provenance(provenance)
        # the rows fitted (the usable ones, at most max_fit_rows drawn among them) are chosen
        # first, then only they are made float64 (not a float64 copy of every row, twice)
        # (masked rows left as the column holds them, not a filled copy of it: left out)
        x, masked = _matrix_and_mask(embeddings, allow_masked=True, dtype=None, dim=None)
        rows = np.flatnonzero(_usable(x, masked))
        rng = np.random.default_rng(self.seed)
        if len(rows) > self.max_fit_rows:
            rows = rows[np.sort(rng.choice(len(rows), self.max_fit_rows, replace=False))]
        x = x[rows].astype(np.float64, copy=False)
        if self.n_components:
            candidates = [self.n_components]
        else:  # the BIC choice: only as many clusters as the rows can support
            candidates = [k for k in self.k_range if 2 * k <= len(x)]
            if not candidates:
                raise InvalidArgumentError(
                    f"{len(x)} usable rows are too few to choose a number of clusters "
                    f"(at least {2 * min(self.k_range)} needed)")
            if len(candidates) < len(self.k_range):
                log.info("%d usable rows: BIC choice among %d to %d clusters", len(x),
                         min(candidates), max(candidates))
        if len(x) < 2 * max(candidates):
            raise InvalidArgumentError(f"{len(x)} usable rows are too few for "
                                       f"{max(candidates)} clusters")
        # the fitted state is set at the end only: a failed fit leaves the mixture as it was
        mean = x.mean(axis=0)
        if self.n_pca is not None and self.n_pca < x.shape[1]:
            components, explained = _pca(x - mean, self.n_pca)
            z = (x - mean) @ components.T
        else:
            components, explained = None, 1.0
            z = x - mean
        n, d = z.shape
        # rows equal to the first: the spread of z alone is rounding when their mean rounds
        if (x == x[:1]).all() or not np.mean(np.var(z, axis=0)) > 0:
            raise InputError(f"the {n} usable embeddings are all the same vector (e.g. blank "
                             "stamps): there is nothing to cluster")
        bics = {}
        best = None
        # the BIC choice on at most max_select_rows of the rows, then the chosen k on all
        select = z
        if len(candidates) > 1 and n > self.max_select_rows:
            select = z[np.sort(rng.choice(n, self.max_select_rows, replace=False))]
            log.info("GaussianMixture: number of components chosen on %d of the %d rows",
                     len(select), n)
        # EM's matrix products are small (d = n_pca columns): a multi-threaded BLAS only
        # waits for its threads there, many times slower on busy cores (same values)
        _load_scipy_blas()
        with single_threaded_blas():
            for k in candidates:
                runs = [self._em(select, k, rng) for _ in range(self.n_init)]
                params, ll, iters = max(runs, key=lambda r: r[1])
                bic = -2 * ll + self._n_parameters(k, d) * np.log(len(select))
                bics[k] = float(bic)
                log.info("GaussianMixture k=%d: log-likelihood %.1f, BIC %.1f (%d EM "
                         "iterations)", k, ll, bic, iters)
                if best is None or bic < best[0]:
                    best = (bic, k, params)
            if select is not z:  # the chosen k on all the rows, from its fit to the subset
                best = (best[0], best[1], self._em(z, best[1], rng, start=best[2])[0])
        self.mean_, self.components_, self.explained_variance_ratio_ = mean, components, explained
        self.dim_, self.bic_ = d, bics
        _, self.n_components_, (self.weights_, self.means_, self.covariances_) = best
        self.provenance_ = provenance
        self._warn_few_rows(n, d)
        return self

    def _warn_few_rows(self, n, d):
        """Warn where full covariances were fitted on fewer rows per component (on average)
        than dimensions + 1: each component's sample covariance is then singular, and its
        d (d + 1) / 2 parameters are set by ``reg_covar`` more than by the rows."""
        k = self.n_components_
        if self.covariance_type != "full" or n / k >= d + 1:
            return
        warn(f"GaussianMixture fitted {k} components with full covariances on {n} rows in "
             f"{d} dimensions: {n / k:.1f} rows per component, fewer than the {d + 1} a "
             f"{d}-d covariance ({d * (d + 1) // 2} parameters) needs not to be singular, so "
             "the covariances are mostly regularisation (reg_covar); use "
             "covariance_type='diag' (--covariance diag), fewer components (-k), a smaller "
             "n_pca (--pca) or more rows",
             FewRowsWarning)

    # ----------------------------------------------------------------- predict
    def _check(self):
        if self.n_components_ is None:
            raise InvalidArgumentError("this GaussianMixture is not fitted yet; call fit() first")

    def predict_proba(self, embeddings, *, chunk_rows=BLOCK_ROWS):
        """Membership probabilities ``(N, K)`` (NaN rows for masked/non-finite input).

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
        x, masked = _matrix_and_mask(embeddings, allow_masked=True, dim=self.mean_.size,
                                     dtype=None)
        out = np.full((len(x), self.n_components_), np.nan)
        ok = np.flatnonzero(_usable(x, masked))
        out[ok] = self._proba_rows(x, ok, chunk_rows)
        return out

    def _proba_rows(self, x, rows, chunk_rows=BLOCK_ROWS):
        """Membership probabilities of the rows ``rows`` of ``x`` (len(rows), K), a block
        of rows at a time in float64."""
        if x.shape[1] != self.mean_.size:
            raise InvalidArgumentError(f"embeddings have {x.shape[1]} dimensions; this mixture "
                                       f"was fitted on {self.mean_.size}")
        out = np.empty((len(rows), self.n_components_))
        _load_scipy_blas()
        for s in range(0, len(rows), chunk_rows):
            z = self._project(x[rows[s:s + chunk_rows]].astype(np.float64, copy=False))
            with single_threaded_blas():  # small products (see fit)
                logp = self._log_prob(z, self.weights_, self.means_, self.covariances_)
            out[s:s + chunk_rows] = np.exp(logp - _logsumexp(logp, axis=1)[:, None])
        return out

    def predict(self, embeddings):
        """Most probable component of each row (-1 for unusable rows).

        Parameters
        ----------
        embeddings : array_like, (N, D)
            Embedding vectors (a table's ``embedding`` column or an array).

        Returns
        -------
        numpy.ndarray of int, (N,)
        """
        p = self.predict_proba(embeddings)
        ok = np.all(np.isfinite(p), axis=1)
        return np.where(ok, np.argmax(np.nan_to_num(p, nan=-1.0), axis=1), -1)

    def annotate(self, table, *, column="embedding", prefix="cluster", on_conflict="error",
                 check_provenance=True):
        """A copy of ``table`` with ``<prefix>`` (cluster id) and ``<prefix>_prob`` columns.

        ``<prefix>_prob`` is the membership probability of the assigned
        cluster. Rows without a usable embedding get masked values.

        Parameters
        ----------
        table : astropy.table.Table or QTable
            A table with an embedding column; it is not modified.
        column : str, optional
            The embedding column.
        prefix : str, optional
            Name of the cluster-id column, and prefix of ``<prefix>_prob``: letters,
            digits, ``_``, ``.``, ``-`` and ``+``, starting with a letter or digit.
        on_conflict : {"error", "suffix", "replace"}, optional
            What to do when a new column name already exists in ``table``: raise
            `~astromorph.exceptions.InputError` (default), add ``_2``, ``_3``... to the new
            name, or replace the existing column (as in `astromorph.annotate`).
        check_provenance : bool, optional
            When the mixture records the embedding model it was fitted on
            (`provenance_`), refuse a table whose ``column`` another model made
            (default); False skips the check.

        Returns
        -------
        astropy.table.Table or QTable
            Of ``table``'s class: a copy of ``table`` (sharing its data) with the two
            columns,
            ``meta["<name>_n_components"]`` and, when recorded,
            ``<name>_embedding_model``, ``_version`` and ``_sha256`` (the model the
            mixture was fitted on), ``<name>`` being the name the cluster-id column got
            (``<prefix>``, or e.g. ``<prefix>_2`` with ``on_conflict="suffix"``).

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            The mixture is not fitted yet, ``on_conflict`` is not a known policy, or
            ``prefix`` is not made of the characters above.
        astromorph.exceptions.InputError
            ``table`` has no such column, or already has a column of a new name
            (``on_conflict="error"``).
        astromorph.exceptions.ProvenanceMismatchError
            Another embedding model made the table's vectors (``check_provenance=True``).

        Warns
        -----
        astromorph.exceptions.MissingProvenanceWarning
            The mixture records its embedding model but the table does not say which
            made its vectors.
        """
        return self._annotate(table, column, prefix, on_conflict, check_provenance)[0]

    def _annotate(self, table, column, prefix, on_conflict, check_provenance=True):
        """`annotate`, and the name the cluster-id column got."""
        from .._annotate import check_clashes, check_on_conflict

        self._check()
        check_on_conflict(on_conflict)
        check_prefix(prefix)
        check_provenance = check_bool(check_provenance, "check_provenance")
        check_clashes(table, [prefix, f"{prefix}_prob"], on_conflict)  # before any work
        # masked rows left as the column holds them (no filled copy): only valid rows used
        x, valid = table_embeddings(table, column, dtype=None, fill_masked=False)
        _check_provenance(self.provenance_, table, column, "this GaussianMixture",
                          check_provenance)
        p = self._proba_rows(x, np.flatnonzero(valid))
        columns = {
            prefix: masked_column(np.argmax(p, axis=1).astype(np.int16), valid,
                                  f"Gaussian-mixture cluster of the {column!r} vector "
                                  f"({self.n_components_} clusters)"),
            f"{prefix}_prob": masked_column(p.max(axis=1).astype(np.float32) if len(p) else
                                            np.zeros(0, np.float32), valid,
                                            "membership probability of that cluster")}
        out, used = add_columns(table, columns, on_conflict)
        out.meta[f"{used[prefix]}_n_components"] = int(self.n_components_)
        for key, value in (self.provenance_ or {}).items():
            out.meta[f"{used[prefix]}_embedding_{key}"] = value
        return out, used[prefix]

    # ------------------------------------------------------------- persistence
    def to_dict(self):
        """JSON-serialisable state (for `from_dict`).

        Returns
        -------
        dict
            Options, PCA and mixture parameters of the fitted mixture, its BIC values
            and its `provenance_`.
        """
        self._check()
        return {
            "n_components": int(self.n_components_), "covariance_type": self.covariance_type,
            "n_pca": self.n_pca, "seed": int(self.seed) if isinstance(self.seed, (int, np.integer))
            and not isinstance(self.seed, bool) else None,
            "bic": {str(k): v for k, v in self.bic_.items()},
            "mean": self.mean_.tolist(),
            "components": None if self.components_ is None else self.components_.tolist(),
            "explained_variance_ratio": float(self.explained_variance_ratio_),
            "weights": self.weights_.tolist(), "means": self.means_.tolist(),
            "covariances": self.covariances_.tolist(), "provenance": self.provenance_}

    @classmethod
    def from_dict(cls, state):
        """A fitted mixture from the output of `to_dict`.

        Parameters
        ----------
        state : dict
            What `to_dict` returned (e.g. read back from JSON).

        Returns
        -------
        GaussianMixture

        Raises
        ------
        astromorph.exceptions.InvalidArgumentError
            ``state`` lacks one of the fitted quantities, their shapes disagree, a value is
            not finite, the weights are not positive or do not sum to 1, or a covariance
            is not symmetric positive definite; the message names the offending value.
        """
        from collections.abc import Mapping

        keys = ("n_components", "covariance_type", "mean", "components", "weights", "means",
                "covariances")
        if not isinstance(state, Mapping) or any(k not in state for k in keys):
            missing = [k for k in keys if k not in state] if isinstance(state, Mapping) \
                else keys
            raise InvalidArgumentError(f"not a GaussianMixture state (from to_dict): no "
                                       f"{list(missing)}")
        field = None  # the field being read, named where its values are no numbers
        try:
            mixture = cls(state["n_components"], covariance_type=state["covariance_type"],
                          n_pca=state.get("n_pca"), seed=state.get("seed"))
            arrays = {}
            for field in ("mean", "weights", "means", "covariances"):
                arrays[field] = np.asarray(state[field], dtype=float)
            field = "components"
            components = None if state["components"] is None else \
                np.asarray(state["components"], dtype=float)
            field = "bic"
            bic = {int(k): float(v) for k, v in (state.get("bic") or {}).items()}
            field = None
            provenance = as_provenance(state.get("provenance"))
        except (TypeError, ValueError, AttributeError) as exc:
            where = "" if field is None else f"{field!r}: "
            raise InvalidArgumentError(f"not a GaussianMixture state: {where}{exc}") from None
        k, d_in = mixture.n_components, arrays["mean"].size
        d = d_in if components is None else len(components)
        cov = (k, d) if mixture.covariance_type == "diag" else (k, d, d)
        expected = {"mean": (d_in,), "weights": (k,), "means": (k, d), "covariances": cov}
        if components is not None:
            expected["components"] = (d, d_in)
            arrays["components"] = components
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise InvalidArgumentError(
                    f"not a consistent GaussianMixture state: {name!r} has shape "
                    f"{arrays[name].shape}, expected {shape} for {k} components, {d_in} "
                    f"input and {d} mixture dimensions")
            if not np.all(np.isfinite(arrays[name])):
                shown = np.array2string(arrays[name], threshold=20, separator=", ")
                raise InvalidArgumentError(
                    f"not a consistent GaussianMixture state: {name!r} holds values that are "
                    f"not finite: {shown}")
        weights, covs = arrays["weights"], arrays["covariances"]
        if not np.all(weights > 0) or abs(weights.sum() - 1.0) > 1e-6:
            raise InvalidArgumentError(
                f"not a consistent GaussianMixture state: the weights must be positive and "
                f"sum to 1, got {weights.tolist()} (sum {weights.sum():.6g})")
        if mixture.covariance_type == "full":
            asymmetric = np.abs(covs - covs.transpose(0, 2, 1)).max(axis=(1, 2)) \
                > 1e-8 * np.abs(covs).max(axis=(1, 2))
            if asymmetric.any():
                i = int(np.argmax(asymmetric))
                raise InvalidArgumentError(
                    f"not a consistent GaussianMixture state: covariance {i} is not "
                    f"symmetric: {covs[i].tolist()}")
            # eigenvalues of the symmetric matrices: the least of each must be positive
            least = np.linalg.eigvalsh(covs)[:, 0]
        else:
            least = covs.min(axis=1)
        if not np.all(least > 0):
            i = int(np.argmin(least))
            raise InvalidArgumentError(
                f"not a consistent GaussianMixture state: covariance {i} is not positive "
                f"definite (least "
                f"{'eigenvalue' if mixture.covariance_type == 'full' else 'variance'}"
                f" {least[i]:.6g}): {covs[i].tolist()}")
        ratio = state.get("explained_variance_ratio", 1.0)
        if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, numbers.Real) \
                or not 0.0 <= ratio <= 1.0 + 1e-9:
            raise InvalidArgumentError(
                f"not a consistent GaussianMixture state: explained_variance_ratio must be "
                f"a number in [0, 1], got {ratio!r}")
        ratio = float(ratio)
        mixture.n_components_, mixture.dim_, mixture.components_ = k, d, components
        mixture.mean_, mixture.weights_ = arrays["mean"], arrays["weights"]
        mixture.means_, mixture.covariances_ = arrays["means"], covs
        mixture.explained_variance_ratio_ = ratio
        mixture.bic_, mixture.provenance_ = bic, provenance
        return mixture



def _pca(xc, n):
    """Leading ``n`` principal axes ``(n, D)`` of centred rows ``xc`` and the fraction of the
    variance they hold.

    From the eigenvectors of the ``D x D`` scatter matrix: one matrix product over the rows
    instead of an SVD of the whole ``(N, D)`` matrix, which also forms its ``N x D`` left
    singular vectors (100,000 x 256: 0.55 s against 9.7 s; the same axes to 1e-15 in
    float64, the variances being squared singular values far above rounding). Each axis
    is signed so that its largest coordinate is positive (an SVD's signs are arbitrary).
    """
    scatter = xc.T @ xc
    values, vectors = np.linalg.eigh(scatter)  # ascending
    values = np.clip(values[::-1], 0.0, None)
    axes = vectors[:, ::-1].T[:n]
    big = np.argmax(np.abs(axes), axis=1)
    axes = axes * np.sign(axes[np.arange(len(axes)), big])[:, None]
    total = float(np.sum(values))
    return np.ascontiguousarray(axes), float(np.sum(values[:n]) / total) if total > 0 else 1.0


#: Elements of the (rows, k, d) block of differences that `_squared_distances` forms at a
#: time (2 MiB of float64).
_BLOCK_ELEMENTS = 1 << 18


def _squared_distances(z, centres, *, out=None):
    """Squared Euclidean distances ``(N, K)`` of rows ``z`` to ``centres``, memory O(N K).

    The differences are formed in blocks of rows (at most `_BLOCK_ELEMENTS` at a time), not
    as one ``(N, K, D)`` array, nor through ``|z|^2 - 2 z.c + |c|^2``, which rounds
    differently: every distance is the same sum of the same squares, in the same order, as
    ``((z[:, None] - centres) ** 2).sum(-1)``, so the k-means labels (and the fit of a
    given seed) do not change.
    """
    n, k, d = len(z), len(centres), z.shape[1]
    out = np.empty((n, k)) if out is None else out
    step = max(1, _BLOCK_ELEMENTS // max(1, k * d))
    block = np.empty((min(step, n), k, d))
    for s in range(0, n, step):
        diff = block[:min(step, n - s)]
        np.subtract(z[s:s + step, None, :], centres[None], out=diff)
        np.square(diff, out=diff)
        diff.sum(axis=-1, out=out[s:s + step])
    return out


#: Elements of the (k, rows, d) block of differences of rows to every component mean that
#: the E- and M-steps form at a time (2 MiB of float64).
_COMPONENT_BLOCK_ELEMENTS = 1 << 18


def _component_blocks(z, means):
    """``(start, z[start:start + m] - means[:, None])`` for successive blocks of ``m`` rows
    of ``z``: the differences ``(K, m, D)`` of a block of rows to every mean, at most
    `_COMPONENT_BLOCK_ELEMENTS` at a time (memory O(K D), not O(N K D))."""
    n = len(z)
    k, d = means.shape
    step = max(1, _COMPONENT_BLOCK_ELEMENTS // max(1, k * d))
    for s in range(0, n, step):
        yield s, z[None, s:s + step] - means[:, None]


def _load_scipy_blas():
    """Import scipy.linalg (and load its BLAS) before `single_threaded_blas`: the
    threadpoolctl controller that it builds on first use knows only the BLAS libraries
    loaded by then, and would never limit one that `_solve_lower` loads later."""
    import importlib

    importlib.import_module("scipy.linalg")


def _solve_lower(chol, b):
    from scipy.linalg import solve_triangular

    return solve_triangular(chol, b, lower=True, check_finite=False)


def cluster_table(table, *, column="embedding", n_components=None, prefix="cluster",
                  on_conflict="error", **kwargs):
    """Cluster a table's embedding vectors with a `GaussianMixture`.

    Parameters
    ----------
    table : astropy.table.Table or QTable
        A table with an embedding column; it is not modified.
    column : str, optional
        Embedding column.
    n_components : int, optional
        Number of clusters (default: by BIC).
    prefix : str, optional
        Names of the new columns: ``<prefix>`` and ``<prefix>_prob`` (letters, digits,
        ``_``, ``.``, ``-`` and ``+``, starting with a letter or digit).
    on_conflict : {"error", "suffix", "replace"}, optional
        What to do when a new column name already exists in ``table``: raise
        `~astromorph.exceptions.InputError` (default; before the mixture is fitted), add
        ``_2``, ``_3``... to the new name, or replace the existing column (as in
        `astromorph.annotate`).
    **kwargs
        Other `GaussianMixture` options (``k_range``, ``covariance_type``, ``n_pca``...).

    Returns
    -------
    table : astropy.table.Table or QTable
        Of ``table``'s class: a copy with the cluster columns (see
        `GaussianMixture.annotate`).
    mixture : GaussianMixture
        The fitted mixture (``bic_`` holds the BIC of each k tried; ``provenance_`` the
        embedding model that made ``column``, when the table's meta says).

    Raises
    ------
    astromorph.exceptions.InputError
        ``table`` has no such column, or already has a column of a new name
        (``on_conflict="error"``).
    astromorph.exceptions.InvalidArgumentError
        A bad option, or too few usable rows for the clusters asked for.
    astromorph.exceptions.InvalidArgumentTypeError
        A keyword that is none of these or `GaussianMixture`'s (a `TypeError` too; the
        message names it, and the one meant where one is close).
    """
    out, mixture, _ = _cluster_table(table, column, n_components, prefix, on_conflict, kwargs)
    return out, mixture


#: The `GaussianMixture` options `cluster_table` passes on (all but ``n_components``).
_MIXTURE_OPTIONS = tuple(p for p in inspect.signature(GaussianMixture).parameters
                         if p != "n_components")


def _cluster_table(table, column, n_components, prefix, on_conflict, kwargs):
    """`cluster_table`, and the name the cluster-id column got (for the command line)."""
    from .._annotate import check_clashes, check_on_conflict

    # the mixture's options by name, before any work: Python's error named
    # GaussianMixture.__init__, which the caller did not call
    check_options(kwargs, ("column", "n_components", "prefix", "on_conflict",
                           *_MIXTURE_OPTIONS), "cluster_table")
    check_on_conflict(on_conflict)
    check_prefix(prefix)
    check_clashes(table, [prefix, f"{prefix}_prob"], on_conflict)  # before the fit
    x, _ = table_embeddings(table, column, dtype=None, fill_masked=False)
    col = table[column]  # (fit leaves out unusable rows: a masked column's by its mask)
    mixture = GaussianMixture(n_components, **kwargs).fit(
        col if np.ma.isMaskedArray(col) else x, provenance=table_provenance(table.meta, column))
    out, name = mixture._annotate(table, column, prefix, on_conflict)
    return out, mixture, name

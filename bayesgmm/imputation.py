"""Imputing missing values from a fitted mixture: conditional means and multiple imputations.

Under a Gaussian mixture, a row's missing coordinates ``m`` given its observed ones ``o`` follow
the mixture of the components' conditional Gaussians, weighted by the responsibilities of the
observed part:

* ``p(z = k | x_o) ∝ pi_k N(x_o | mu_k,o, Sigma_k,oo)``,
* ``x_m | x_o, z = k ~ N(mu_k,m + Sigma_k,mo Sigma_k,oo^-1 (x_o - mu_k,o), Sigma_k,mm - Sigma_k,mo
  Sigma_k,oo^-1 Sigma_k,om)``.

:func:`impute` returns the conditional mean ``E[x_m | x_o]`` (averaged over posterior draws for
Bayesian fits) or ``m`` draws of ``x_m`` for multiple imputation: for a Bayesian fit each draw
first picks a posterior draw of the parameters, so the imputations carry the parameters'
uncertainty, as Rubin's rules require (Little & Rubin 2019, chapter 10). Everything runs on the
host in float64, one missingness pattern at a time.
"""

from __future__ import annotations

import numpy as np

from . import _numerics
from .params import check_data_seed

__all__ = ["impute"]


def _square_roots(cov):
    """Factors ``F`` with ``F F^T = cov`` of symmetric (K, m, m) covariances: their Cholesky
    factors, or where rounding left one not positive definite (a nearly singular component),
    ``V sqrt(max(lambda, 0))`` from its eigenvalues."""
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(cov)
        return vectors * np.sqrt(np.maximum(values, 0.0))[..., None, :]


def _conditionals(x_rows, cols, miss, weights, means, covariances, *, factors: bool = False):
    """For rows of one pattern (observed ``cols``, missing ``miss``) and one parameter set (full
    covariances (K, D, D)): responsibilities (n, K), conditional means (n, K, |m|) and, with
    ``factors``, square roots of the conditional covariances (K, |m|, |m|; :func:`_square_roots`)."""
    s_oo = covariances[:, cols][:, :, cols]
    s_mo = covariances[:, miss][:, :, cols]
    s_mm = covariances[:, miss][:, :, miss]
    diff = x_rows[None] - means[:, None, cols]  # (K, n, |o|)
    try:  # Sigma_oo^-1 Sigma_om: (K, |o|, |m|); a numerically singular Sigma_oo by its pseudo-inverse
        gain = np.linalg.solve(s_oo, np.swapaxes(s_mo, -1, -2))
    except np.linalg.LinAlgError:
        gain = np.linalg.pinv(s_oo, hermitian=True) @ np.swapaxes(s_mo, -1, -2)
    cond_means = means[:, None, miss] + diff @ gain  # (K, n, |m|)
    cond_cov = s_mm - s_mo @ gain
    if len(cols):  # in the mixture's frame, with the limit for rows too far for float64 (score_rows)
        resp = np.exp(_numerics.score_rows(x_rows, weights, means[:, cols], s_oo, "full", responsibilities=True).log_resp)
    else:  # nothing observed: the components' probabilities are the weights
        resp = np.broadcast_to(weights, (x_rows.shape[0], weights.shape[0]))
    return resp, np.swapaxes(cond_means, 0, 1), _square_roots(cond_cov) if factors else None


def impute(result, x, *, num_draws: int | None = None, seed=0):
    """Fill the NaN entries of ``x`` from a fitted mixture (see the module docstring).

    Parameters
    ----------
    result : FitResult
        A fitted mixture, from any engine; a result with posterior draws (Bayesian engines)
        averages over, or draws from, its draws of the parameters.
    x : array-like (N, D)
        Rows with the features the result was fitted on (a DataFrame's columns are matched by
        name), NaN where a value is missing. A row with nothing observed is filled from the
        mixture itself (its mean, or draws from it).
    num_draws : int, optional

        None: the conditional means, shape (N, D). An int ``m``: ``m`` imputations drawn from
        the (posterior) predictive of the missing entries given the observed ones, shape
        (m, N, D). For a point estimate (EM) the draws ignore the parameters' uncertainty.
    seed : int
        Seeds the draws, an integer in [0, 2**64) (the same seed gives the same imputations).

    Returns
    -------
    np.ndarray or pandas.DataFrame
        ``x`` with its missing entries filled (observed entries unchanged), its columns in
        ``x``'s order: a DataFrame (same index and columns) for a DataFrame ``x`` and
        ``num_draws=None``, an array otherwise.
    """
    filled = _impute(result, result._check(x, allow_empty_rows=True), num_draws, seed)
    columns = getattr(x, "columns", None)
    if columns is not None and list(map(str, columns)) != list(result.feature_names):
        # a DataFrame in another column order than the fit's: back to its own
        filled = filled[..., [result.feature_names.index(str(c)) for c in columns]]
    if columns is not None and num_draws is None:
        return type(x)(filled, index=x.index, columns=columns)
    return filled


def _impute(result, arr, num_draws, seed) -> np.ndarray:
    """:func:`impute` on validated rows in the fit's feature order."""
    if num_draws is not None and (isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer))
                                  or num_draws < 1):
        raise ValueError(f"num_draws must be None or a positive integer, got {num_draws!r}.")
    seed = check_data_seed(seed)  # NumPy's generator: None would not repeat, a string fails inside NumPy
    k, d = result.num_components, result.num_features
    if result._has_draws():
        flat = result._flat_draws(200 if num_draws is None else 10**9)  # every draw for imputations
        params = [(w, m, _numerics.expand_covariances(c, result.covariance_type, k, d)) for w, m, c in zip(*flat)]
    else:
        params = [(result.weights, result.means, result.full_covariances)]
    params = [tuple(np.asarray(a, np.float64) for a in p) for p in params]
    rng = np.random.default_rng(seed)
    draws = 1 if num_draws is None else int(num_draws)
    out = np.repeat(np.asarray(arr, np.float64)[None], draws, axis=0)
    observed = ~np.isnan(arr)
    patterns, inverse = np.unique(observed, axis=0, return_inverse=True)
    # one parameter draw per imputed data set, for every row: drawn per pattern of missing entries,
    # rows of other patterns got independent draws, and the between-imputation variance of a
    # statistic over them (Rubin's rules) came out too small (0.75 of the right one, 15 patterns)
    which = rng.integers(len(params), size=draws) if len(params) > 1 else np.zeros(draws, int)
    for p, pattern in enumerate(patterns):
        if pattern.all():
            continue
        rows = np.flatnonzero(inverse.ravel() == p)
        cols, miss = np.flatnonzero(pattern), np.flatnonzero(~pattern)
        x_rows = arr[np.ix_(rows, cols)].astype(np.float64)
        if num_draws is None:  # E[x_m | x_o], averaged over the parameter draws
            total = np.zeros((len(rows), len(miss)))
            for w, m, c in params:
                resp, cond_means, _ = _conditionals(x_rows, cols, miss, w, m, c)
                total += np.einsum("nk,nkj->nj", resp, cond_means)
            out[0][np.ix_(rows, miss)] = total / len(params)
            continue
        for j in range(draws):
            resp, cond_means, chol = _conditionals(x_rows, cols, miss, *params[which[j]], factors=True)
            u = rng.uniform(size=(len(rows), 1))
            z = np.minimum((np.cumsum(resp, axis=1) < u).sum(axis=1), k - 1)
            noise = rng.standard_normal((len(rows), len(miss)))
            sample = cond_means[np.arange(len(rows)), z] + np.einsum("nij,nj->ni", chol[z], noise)
            out[j][np.ix_(rows, miss)] = sample
    return out[0] if num_draws is None else out

r"""Simulation-based calibration (SBC) of the Bayesian engines (Talts et al. 2018, arXiv:1804.06788).

If an engine returns draws from the exact posterior, then for parameters drawn from the prior and
data simulated from the model at them, the rank of any test quantity of the prior draw among
``L`` posterior draws is uniform on ``0..L``:

.. code-block:: text

    for r = 1..R:
        theta_r ~ p(theta)                              bayesgmm.model.sample_prior
        x_r ~ p(x | theta_r)                            bayesgmm.model.simulate (N observations)
        theta_r^(1..L) ~ engine posterior given x_r     fit_vb / fit_svi / fit_mcmc, same Prior
        rank_r = #{l : f(theta_r^(l)) < f(theta_r)}     ties broken at random

A non-uniform rank histogram shows a miscalibrated posterior: a U shape a posterior that is too
narrow, a hump one that is too wide, a slope a biased one. The prior, the model and the engine are
checked together; an exact engine passes whatever the prior, so choose a prior whose draws give
data sets the engine can handle.

Test quantities
---------------
A mixture's posterior is invariant to relabelling the components, so component-wise parameters
are not test quantities; label-invariant functions of the parameters are
(:func:`bayesgmm.labels.invariant_summaries`):

``sorted_means[k]``
    the component means of feature ``feature`` in ascending order, ``k = 0..K-1``;
``sorted_weights[k]``
    the weights in ascending order, ``k = 0..K-2`` (the largest is one minus the others, and for
    ``K = 1`` there is none);
``log_likelihood``
    ``log p(x_r | theta)``, the total log-likelihood of the simulated data set (z summed out),
    evaluated at the prior draw and at each posterior draw (a data-dependent test quantity, as
    Talts et al. recommend);
``mixture_mean[j]``, ``mixture_variance[j]``
    mean and variance of feature ``j`` under the mixture distribution of ``theta``.

Uniformity tests
----------------
Per quantity, on the ranks of the R replications:

* a chi-square test on the rank histogram with the bins of :func:`rank_bins` (at most 20 bins,
  with about ``R / 10`` or more replications expected per bin, so at least 5 when R >= 50);
* the ECDF test of Säilynoja, Bürkner & Vehtari (2022, *Statistics and Computing* 32:32): the
  statistic is the smallest two-sided binomial tail probability of the rank ECDF over the
  evaluation points ``z_i = i / (L + 1)``; its null distribution is simulated (``num_simulations``
  draws), and the same simulation gives the simultaneous confidence band of :func:`ecdf_band`.

Several quantities are tested at once; a small p-value for one of Q quantities is expected with
probability about ``Q`` times the nominal level (compare the smallest p-value with ``level / Q``).

Engines compile once per data shape; every replication has the same shapes, so one SBC run
compiles each engine program once, and the prior draw and data simulation one more program
(compiled once per K, structure and N, whatever the number of replications).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from . import _numerics
from .labels import invariant_summaries
from .model import sample_prior, simulate
from .params import (
    ConvergenceWarning,
    GMMParams,
    Prior,
    check_covariance_type,
    check_num_components,
    seed_to_key,
)

__all__ = [
    "ECDFBand",
    "METHODS",
    "QUANTITIES",
    "SBCResult",
    "ecdf_band",
    "rank_bins",
    "sbc",
    "uniformity_tests",
]

METHODS = ("vb", "svi", "mcmc")
QUANTITIES = ("sorted_means", "sorted_weights", "log_likelihood", "mixture_mean", "mixture_variance")
_ENGINE_DEFAULTS = {
    "vb": {},
    "svi": {},
    "mcmc": {"num_warmup": 500, "num_samples": 500, "num_chains": 2},
}
_RESERVED = ("x", "num_components", "prior", "covariance_type", "seed")
_INFO_FACTS = ("num_divergences", "max_rhat", "min_ess_bulk", "elbo", "label_switch_fraction")
#: Evaluation points of the ECDF test and band: at most this many.
_MAX_ECDF_POINTS = 200
_NUM_SIMULATIONS = 10_000
_RECORDED_ERRORS = (ValueError, FloatingPointError, np.linalg.LinAlgError)

# Incremented when the simulation program is traced; tests use it to prove "compile once per shape".
_TRACE_COUNT = {"simulate": 0}


# ----------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class SBCResult:
    """The outcome of :func:`sbc`: ranks, uniformity tests and per-replication facts.

    Attributes
    ----------
    ranks : pandas.DataFrame
        One row per successful replication (index ``replication``), one integer column per test
        quantity (module docstring), values in ``0..num_ranks``.
    tests : pandas.DataFrame
        One row per quantity (index ``quantity``): ``chi2`` statistic, ``df``, ``chi2_pvalue``,
        ``ecdf_gamma`` (Säilynoja et al.'s statistic) and ``ecdf_pvalue``.
    replications : pandas.DataFrame
        One row per replication (index ``replication``): ``converged``, ``n_iter``,
        ``fit_seconds``, ``min_component_count`` (observations of the smallest simulated
        component), ``num_warnings``, ``warnings`` (the engine's warning messages, joined by
        ``" | "``), ``error`` (empty unless the fit failed, with ``on_error="record"``) and
        engine facts where the engine reports them (``num_divergences``, ``max_rhat``,
        ``min_ess_bulk`` for MCMC; ``elbo`` for VB and SVI; ``label_switch_fraction``).
    true_values : pandas.DataFrame
        The test quantities at the prior draws, same layout as ``ranks``.
    prior_draws : dict of np.ndarray
        The prior draws: ``weights`` (R, K), ``means`` (R, K, D), ``covariances`` (R, ...).
    settings : dict
        The arguments of the run (JSON-serialisable), with ``bin_edges`` (the chi-square bins)
        and ``null_seed`` (of the simulated ECDF null distribution, reused by the plots).
    """

    ranks: Any
    tests: Any
    replications: Any
    true_values: Any
    prior_draws: Mapping[str, np.ndarray]
    settings: Mapping[str, Any]

    @property
    def p_values(self):
        """p-values of the uniformity tests: DataFrame, index quantity, columns ``chi2``, ``ecdf``."""
        return self.tests[["chi2_pvalue", "ecdf_pvalue"]].rename(columns={"chi2_pvalue": "chi2", "ecdf_pvalue": "ecdf"})

    @property
    def quantities(self) -> tuple:
        """Names of the test quantities (the columns of ``ranks``)."""
        return tuple(self.ranks.columns)

    @property
    def num_ranks(self) -> int:
        """L, the posterior draws per replication; ranks lie in ``0..L``."""
        return int(self.settings["num_ranks"])

    @property
    def num_failed(self) -> int:
        """Replications whose fit failed (recorded with ``on_error="record"``)."""
        return int((self.replications["error"] != "").sum())

    @property
    def bin_edges(self) -> np.ndarray:
        """Integer edges of the chi-square bins over ``0..L+1`` (bin ``b`` holds ranks in ``[e_b, e_{b+1})``)."""
        return np.asarray(self.settings["bin_edges"], dtype=np.int64)

    def summary(self) -> str:
        """A short text report: settings, failures, warnings and the p-values per quantity."""
        s = self.settings
        lines = [
            f"SBC of {s['method']} ({s['covariance_type']}, K={s['num_components']}, D={s['num_features']}, "
            f"N={s['num_obs']}): {len(self.ranks)} of {s['num_replications']} replications, L={s['num_ranks']} draws each",
        ]
        warned = int((self.replications["num_warnings"] > 0).sum())
        if warned:
            lines.append(f"{warned} replication(s) raised engine warnings")
        if self.num_failed:
            lines.append(f"{self.num_failed} replication(s) failed and are left out")
        p = self.p_values
        width = max(len(q) for q in p.index)
        lines.append(f"{'quantity':<{width}}  chi2 p   ECDF p")
        lines += [f"{q:<{width}}  {row.chi2:7.4f}  {row.ecdf:7.4f}" for q, row in p.iterrows()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.settings
        pmin = float(np.nanmin(self.p_values.to_numpy())) if len(self.tests) else float("nan")
        return (
            f"SBCResult(method={s['method']!r}, K={s['num_components']}, D={s['num_features']}, N={s['num_obs']}, "
            f"replications={len(self.ranks)}/{s['num_replications']}, L={s['num_ranks']}, "
            f"quantities={len(self.quantities)}, min p-value={pmin:.3g})"
        )

    # ------------------------------------------------------------------ persistence (JSON)
    def to_json(self, path=None) -> str:
        """JSON text of the whole result; also written to ``path`` when given (no pickle)."""
        doc = {
            "format": "bayesgmm.SBCResult/1",
            "ranks": _frame_to_dict(self.ranks),
            "tests": _frame_to_dict(self.tests),
            "replications": _frame_to_dict(self.replications),
            "true_values": _frame_to_dict(self.true_values),
            "prior_draws": {k: np.asarray(v).tolist() for k, v in self.prior_draws.items()},
            "settings": dict(self.settings),
        }
        text = json.dumps(doc, indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, source) -> "SBCResult":
        """Rebuild a result from :meth:`to_json` text or a path to it."""
        text = source
        if not str(source).lstrip().startswith("{"):
            with open(source) as f:
                text = f.read()
        doc = json.loads(text)
        if doc.get("format") != "bayesgmm.SBCResult/1":
            raise ValueError("not an SBCResult JSON document (missing format 'bayesgmm.SBCResult/1').")
        return cls(
            ranks=_frame_from_dict(doc["ranks"]),
            tests=_frame_from_dict(doc["tests"]),
            replications=_frame_from_dict(doc["replications"]),
            true_values=_frame_from_dict(doc["true_values"]),
            prior_draws={k: np.asarray(v, dtype=np.float64) for k, v in doc["prior_draws"].items()},
            settings=doc["settings"],
        )


def _frame_to_dict(frame) -> dict:
    return {
        "index_name": frame.index.name,
        "index": frame.index.tolist(),
        "columns": {str(c): {"dtype": str(frame[c].dtype), "values": frame[c].tolist()} for c in frame.columns},
    }


def _frame_from_dict(d: dict):
    import pandas as pd

    cols = {c: pd.Series(v["values"], dtype=v["dtype"]) for c, v in d["columns"].items()}
    frame = pd.DataFrame(cols)
    frame.index = pd.Index(d["index"], name=d["index_name"])
    return frame


# ----------------------------------------------------------------------------------------------
# Uniformity tests and bands (usable on their own)
# ----------------------------------------------------------------------------------------------
class ECDFBand(NamedTuple):
    """A confidence band of the rank ECDF under uniformity (see :func:`ecdf_band`).

    z : (J,) evaluation points ``i / (L + 1)``
    lower, upper : (J,) band limits as ECDF values (counts divided by R)
    gamma : pointwise level: each limit is a ``gamma / 2`` / ``1 - gamma / 2`` binomial quantile
    coverage : simulated probability that the whole ECDF of uniform ranks lies inside the band
    simultaneous : whether ``gamma`` was adjusted for simultaneous coverage
    """

    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    gamma: float
    coverage: float
    simultaneous: bool


def rank_bins(num_ranks: int, num_replications: int, num_bins: int | None = None) -> np.ndarray:
    """Integer bin edges over the rank values ``0..L`` for the rank histogram and chi-square test.

    Parameters
    ----------
    num_ranks : int
        L; ranks take the L + 1 values ``0..L``.
    num_replications : int
        R.
    num_bins : int, optional
        Default: ``min(20, R // 10)`` (at least 2, at most L + 1), so about 10 replications are
        expected per bin (at least 5: the chi-square rule of thumb). When a divisor of ``L + 1``
        is close (within a factor 2) the bins are of equal width, as Talts et al. advise;
        otherwise widths differ by at most one rank value and the test uses the exact expected
        count of each bin.

    Returns
    -------
    np.ndarray of int, shape (B + 1,)
        ``edges[0] = 0``, ``edges[-1] = L + 1``; bin ``b`` holds ranks ``edges[b] <= r < edges[b + 1]``.
    """
    n_values = int(num_ranks) + 1
    if num_bins is None:
        target = int(np.clip(min(20, int(num_replications) // 10), 2, n_values))
        divisors = [b for b in range(1, target + 1) if n_values % b == 0]
        num_bins = divisors[-1] if divisors[-1] * 2 >= target else target
    num_bins = int(num_bins)
    if not 1 <= num_bins <= n_values:
        raise ValueError(f"num_bins must be between 1 and L + 1 = {n_values}, got {num_bins}.")
    return np.round(np.linspace(0, n_values, num_bins + 1)).astype(np.int64)


def _ecdf_points(num_ranks: int) -> np.ndarray:
    """Rank thresholds j (the ECDF at z = j / (L + 1) counts ranks < j), at most 200 of them."""
    num_ranks = int(num_ranks)
    if num_ranks < 1:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(1, num_ranks, min(num_ranks, _MAX_ECDF_POINTS))).astype(np.int64))


@functools.lru_cache(maxsize=16)
def _tail_tables(num_replications: int, num_ranks: int):
    """2 * binomial lower and upper tail probabilities of every count at every evaluation point."""
    from scipy import stats

    j = _ecdf_points(num_ranks)
    z = j / (num_ranks + 1.0)
    counts = np.arange(num_replications + 1)
    low = 2.0 * stats.binom.cdf(counts[None], num_replications, z[:, None])  # P(C <= c)
    up = 2.0 * stats.binom.sf(counts[None] - 1, num_replications, z[:, None])  # P(C >= c)
    return j, z, low, up


def _gamma_statistic(counts, num_replications: int, num_ranks: int) -> np.ndarray:
    """Säilynoja et al.'s statistic: min over points of the two-sided binomial tail probability."""
    _, _, low, up = _tail_tables(num_replications, num_ranks)
    idx = np.arange(low.shape[0])
    t = np.minimum(low[idx, counts], up[idx, counts])
    return np.minimum(t.min(axis=-1), 1.0)


@functools.lru_cache(maxsize=4)
def _null_counts(num_replications: int, num_ranks: int, num_simulations: int, seed: tuple) -> np.ndarray:
    """ECDF counts at the evaluation points for ``num_simulations`` sets of uniform ranks, (M, J).

    Drawn point by point: C_1 ~ Bin(R, z_1), C_{i+1} - C_i ~ Bin(R - C_i, (z_{i+1} - z_i) / (1 - z_i)).
    """
    rng = np.random.default_rng(list(seed))
    j = _ecdf_points(num_ranks)
    z = np.concatenate([[0.0], j / (num_ranks + 1.0)])
    counts = np.zeros((num_simulations, j.size), dtype=np.int64)
    c = np.zeros(num_simulations, dtype=np.int64)
    for i in range(j.size):
        p = (z[i + 1] - z[i]) / (1.0 - z[i])
        c = c + rng.binomial(num_replications - c, p)
        counts[:, i] = c
    counts.setflags(write=False)
    return counts


def _null_gamma(num_replications, num_ranks, num_simulations, seed) -> np.ndarray:
    counts = _null_counts(int(num_replications), int(num_ranks), int(num_simulations), _seed_tuple(seed))
    return _gamma_statistic(counts, int(num_replications), int(num_ranks))


def _seed_tuple(seed) -> tuple:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return (int(seed),)
    arr = np.asarray(seed)
    if arr.dtype.kind not in "iu" or arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}.")
    return tuple(int(a) for a in arr)


def _band_limits(num_replications: int, z: np.ndarray, gamma: float):
    from scipy import stats

    if gamma <= 0:
        return np.zeros_like(z), np.full_like(z, float(num_replications))
    lo = stats.binom.ppf(gamma / 2.0, num_replications, z)
    hi = stats.binom.ppf(1.0 - gamma / 2.0, num_replications, z)
    return lo, hi


def ecdf_band(
    num_replications: int,
    num_ranks: int,
    *,
    prob: float = 0.95,
    simultaneous: bool = True,
    num_simulations: int = _NUM_SIMULATIONS,
    seed,
) -> ECDFBand:
    """Confidence band of the ECDF of R uniform ranks on ``0..L`` (Säilynoja et al. 2022).

    At each evaluation point ``z_i = j_i / (L + 1)`` the ECDF times R (the number of ranks below
    ``j_i``) is Binomial(R, z_i) under uniformity. The band holds, at each point, the
    ``gamma / 2`` and ``1 - gamma / 2`` binomial quantiles divided by R.

    * ``simultaneous=True``: ``gamma`` is the largest level at which at least ``prob`` of
      ``num_simulations`` simulated ECDFs of uniform ranks lie inside the band at *every* point
      (Säilynoja et al.'s simulation method), so the whole ECDF of a calibrated engine stays
      inside with probability about ``prob``.
    * ``simultaneous=False``: pointwise, ``gamma = 1 - prob`` at each point; the whole ECDF then
      leaves the band somewhere much more often than ``1 - prob`` (``coverage`` says how often).

    Parameters
    ----------
    num_replications, num_ranks : int
        R and L.
    prob : float in (0, 1)
    simultaneous : bool
    num_simulations : int
        Simulated ECDFs of uniform ranks.
    seed : int or sequence of int
        Seed of the simulation (NumPy ``default_rng``); same seed, same band.

    Returns
    -------
    ECDFBand
    """
    r, num_ranks = int(num_replications), int(num_ranks)
    if r < 1 or num_ranks < 1:
        raise ValueError(f"num_replications and num_ranks must be positive, got {num_replications} and {num_ranks}.")
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob!r}.")
    j, z, _, _ = _tail_tables(r, num_ranks)
    counts = _null_counts(r, num_ranks, int(num_simulations), _seed_tuple(seed))

    def coverage(gamma):
        lo, hi = _band_limits(r, z, gamma)
        return float(np.mean(np.all((counts >= lo) & (counts <= hi), axis=1)))

    if simultaneous:
        cands = np.concatenate([[0.0], np.unique(_gamma_statistic(counts, r, num_ranks))])
        lo_i, hi_i = 0, cands.size - 1  # coverage(cands[0] = 0) = 1 >= prob
        while lo_i < hi_i:  # largest candidate with coverage >= prob (coverage falls as gamma grows)
            mid = (lo_i + hi_i + 1) // 2
            if coverage(cands[mid]) >= prob:
                lo_i = mid
            else:
                hi_i = mid - 1
        gamma = float(cands[lo_i])
    else:
        gamma = 1.0 - float(prob)
    lo, hi = _band_limits(r, z, gamma)
    return ECDFBand(z, lo / r, hi / r, gamma, coverage(gamma), bool(simultaneous))


def uniformity_tests(ranks, num_ranks: int, *, bin_edges=None, num_simulations: int = _NUM_SIMULATIONS, seed):
    """Chi-square and ECDF tests of uniformity of ranks on ``0..L``, one row per quantity.

    Parameters
    ----------
    ranks : pandas.DataFrame or array (R, Q)
        Integer ranks in ``0..num_ranks``, one column per quantity.
    num_ranks : int
        L.
    bin_edges : array of int, optional
        Chi-square bins (default :func:`rank_bins`).
    num_simulations : int
        Simulations of the ECDF statistic's null distribution.
    seed : int or sequence of int
        Seed of that simulation.

    Returns
    -------
    pandas.DataFrame
        Index ``quantity``; columns ``chi2``, ``df``, ``chi2_pvalue``, ``ecdf_gamma``, ``ecdf_pvalue``.
        The ECDF p-value is ``(1 + #{simulated gamma <= observed}) / (1 + num_simulations)``.
    """
    import pandas as pd
    from scipy import stats

    frame = ranks if isinstance(ranks, pd.DataFrame) else pd.DataFrame(np.asarray(ranks))
    values = frame.to_numpy()
    num_ranks = int(num_ranks)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"ranks must be a 2-D table (replications, quantities), got shape {values.shape}.")
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or values.min() < 0 or values.max() > num_ranks:
        raise ValueError(f"ranks must be integers in 0..num_ranks={num_ranks}.")
    values = values.astype(np.int64)
    r = values.shape[0]
    edges = rank_bins(num_ranks, r) if bin_edges is None else np.asarray(bin_edges, dtype=np.int64)
    if edges[0] != 0 or edges[-1] != num_ranks + 1 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin_edges must increase strictly from 0 to L + 1 = {num_ranks + 1}.")
    expected = r * np.diff(edges) / (num_ranks + 1.0)
    j = _ecdf_points(num_ranks)
    null = _null_gamma(r, num_ranks, num_simulations, seed)
    rows = []
    for q in range(values.shape[1]):
        v = values[:, q]
        observed = np.bincount(np.searchsorted(edges, v, side="right") - 1, minlength=edges.size - 1)
        chi2 = float(np.sum((observed - expected) ** 2 / expected))
        df = edges.size - 2
        p_chi2 = float(stats.chi2.sf(chi2, df)) if df > 0 else float("nan")
        gamma = float(_gamma_statistic(np.sum(v[:, None] < j[None], axis=0), r, num_ranks))
        p_ecdf = (1.0 + np.sum(null <= gamma)) / (1.0 + null.size)
        rows.append((chi2, df, p_chi2, gamma, float(p_ecdf)))
    out = pd.DataFrame(rows, columns=["chi2", "df", "chi2_pvalue", "ecdf_gamma", "ecdf_pvalue"], index=pd.Index([str(c) for c in frame.columns], name="quantity"))
    return out


# ----------------------------------------------------------------------------------------------
# Test quantities
# ----------------------------------------------------------------------------------------------
def _total_log_likelihood(x: np.ndarray, weights, means, covariances, covariance_type: str) -> np.ndarray:
    """log p(x | theta_p) summed over observations for P parameter sets, float64 NumPy, shape (P,)."""
    return _numerics.draws_log_density(x, weights, means, covariances, covariance_type).sum(axis=-1)


def _quantity_names(quantities, k: int, d: int) -> list:
    names = []
    for q in QUANTITIES:
        if q not in quantities:
            continue
        if q == "sorted_means":
            names += [f"sorted_means[{i}]" for i in range(k)]
        elif q == "sorted_weights":
            names += [f"sorted_weights[{i}]" for i in range(k - 1)]
        elif q == "log_likelihood":
            names.append("log_likelihood")
        elif q == "mixture_mean":
            names += [f"mixture_mean[{j}]" for j in range(d)]
        else:
            names += [f"mixture_variance[{j}]" for j in range(d)]
    return names


def _test_quantities(x, weights, means, covariances, covariance_type, quantities, feature) -> np.ndarray:
    """Test quantities of P parameter sets, shape (P, Q), in the order of :func:`_quantity_names`."""
    draws = {"weights": weights, "means": means, "covariances": covariances}
    summ = invariant_summaries(draws, covariance_type, feature=feature)
    cols = []
    for q in QUANTITIES:
        if q not in quantities:
            continue
        if q == "sorted_means":
            cols.append(summ["sorted_means"])
        elif q == "sorted_weights":
            cols.append(summ["sorted_weights"][:, :-1])
        elif q == "log_likelihood":
            cols.append(_total_log_likelihood(x, weights, means, covariances, covariance_type)[:, None])
        elif q == "mixture_mean":
            cols.append(summ["mixture_mean"])
        else:
            cols.append(np.diagonal(summ["mixture_cov"], axis1=-2, axis2=-1))
    return np.concatenate(cols, axis=1)


def _ranks(post: np.ndarray, at_truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each quantity's true value among its L posterior values (``post`` (L, Q)), in ``0..L``.

    ``#{l : post[l] < truth}`` plus, for the ``e`` draws equal to the truth, a uniform integer in
    ``0..e`` (random tie-breaking keeps the ranks of a calibrated engine uniform).
    """
    less = np.sum(post < at_truth[None], axis=0)
    equal = np.sum(post == at_truth[None], axis=0)
    return less + rng.integers(0, equal + 1)


# ----------------------------------------------------------------------------------------------
# Simulation of each replication: one compiled program per shape
# ----------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("num_components", "covariance_type", "num_obs"))
def _simulate_replication(key, replication, prior, *, num_components: int, covariance_type: str, num_obs: int):
    """Replication ``replication``'s prior draw, data set and keys, as one compiled program.

    The replication's key is ``fold_in(key, replication)``, so replication r is the same whatever
    the number of replications. Returns ``(params, x (N, D), z (N,), fit_key, tie_key)``.
    """
    _TRACE_COUNT["simulate"] += 1
    k_prior, k_data, k_fit, k_tie = jax.random.split(jax.random.fold_in(key, replication), 4)
    params = sample_prior(k_prior, prior, num_components, covariance_type)
    x, z = simulate(k_data, params, num_obs, covariance_type)
    return params, x, z, k_fit, k_tie


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------
def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _engine(method, covariance_type: str, num_ranks: int, engine_kwargs):
    """The fit function, its keyword arguments and the method's name."""
    if engine_kwargs is None:
        engine_kwargs = {}
    if not isinstance(engine_kwargs, Mapping):
        raise ValueError(f"engine_kwargs must be a dict of keyword arguments for the engine, got {engine_kwargs!r}.")
    reserved = sorted(set(engine_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"engine_kwargs must not set {reserved}: sbc passes the simulated data, num_components, "
            "the prior, covariance_type and a per-replication seed itself. Give them as sbc's own arguments."
        )
    if callable(method):
        return method, dict(engine_kwargs), getattr(method, "__name__", repr(method))
    if method == "em":
        raise ValueError(
            "method='em' gives a point estimate, not posterior draws, so it cannot be calibrated "
            "by SBC; use method='vb', 'svi' or 'mcmc'."
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or a fit function, got {method!r}.")
    kwargs = {**_ENGINE_DEFAULTS[method], **engine_kwargs}
    if method == "vb":
        from . import vb

        if covariance_type not in vb.VB_COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type={covariance_type!r} is not supported by closed-form VB "
                f"(it covers {vb.VB_COVARIANCE_TYPES}); use method='mcmc' or 'svi' for it."
            )
        fit = vb.fit_vb
    elif method == "svi":
        from . import svi

        fit = svi.fit_svi
    else:
        from . import mcmc

        fit = mcmc.fit_mcmc
    if method in ("vb", "svi"):
        kwargs.setdefault("num_draws", num_ranks)
        available, what = kwargs["num_draws"], "num_draws"
    else:
        available = kwargs["num_samples"] * kwargs["num_chains"]
        what = "num_samples * num_chains"
    if isinstance(available, (int, np.integer)) and available < num_ranks:
        raise ValueError(
            f"engine_kwargs give {what} = {available} posterior draws per fit, fewer than "
            f"num_ranks={num_ranks}; raise {what} or lower num_ranks."
        )
    return fit, kwargs, method


def _jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(a) for a in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(a) for k, a in v.items()}
    return repr(v)


def _key_data(key) -> np.ndarray:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, dtype=np.uint32)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
def sbc(
    num_components: int,
    num_obs: int,
    *,
    prior: Prior | None = None,
    method: str | Callable = "vb",
    covariance_type: str = "full",
    num_replications: int = 100,
    num_ranks: int = 99,
    quantities=QUANTITIES,
    feature: int = 0,
    engine_kwargs: Mapping | None = None,
    seed=0,
    on_error: str = "raise",
    progress_bar: bool = False,
) -> SBCResult:
    r"""Simulation-based calibration of a Bayesian engine on the model (Talts et al. 2018).

    Each replication draws mixture parameters from ``prior`` with the model's own sample sites
    (:func:`bayesgmm.model.sample_prior`), simulates ``num_obs`` observations through the model
    (:func:`bayesgmm.model.simulate`), fits them with the engine given the *same* ``prior``, and
    ranks label-invariant test quantities of the prior draw among ``num_ranks`` posterior draws
    (evenly thinned from the engine's draws; ties broken at random). The ranks of an exact
    posterior are uniform on ``0..num_ranks``; see the module docstring for the quantities and
    the tests.

    Parameters
    ----------
    num_components : int
        K, of the simulating model and of the fits.
    num_obs : int
        N, observations per simulated data set.
    prior : Prior
        Required. The data-dependent default of the engines (``Prior.default(x, K)``) cannot be
        used: SBC draws the parameters from the prior *before* there are data. A prior whose
        draws give data sets an engine can fit is, for D features::

            Prior(weight_concentration=5.0, mean=np.zeros(D), mean_precision=0.2,
                  degrees_of_freedom=D + 4.0, scale=(D + 3.0) * np.eye(D))

        (Dirichlet concentration of 5: no near-empty components; ``E[Sigma_k] = I``; the means
        spread about 2.2 standard deviations of a component, so components overlap moderately.)
        The number of features D is that of the prior.
    method : {"vb", "svi", "mcmc"} or callable
        Engine: :func:`bayesgmm.fit_vb`, :func:`bayesgmm.fit_svi` or :func:`bayesgmm.fit_mcmc`.
        A callable ``fit(x, num_components, *, covariance_type, prior, seed, **engine_kwargs)``
        returning a :class:`~bayesgmm.FitResult` with ``draws`` calibrates any other engine
        (or a deliberately broken one).
    covariance_type : {"full", "diag", "spherical", "tied"}
        Of the simulating model and the fits (VB covers ``full`` and ``diag``).
    num_replications : int
        R (at least 2; 100-1000 in practice, the tests' power grows with R).
    num_ranks : int
        L, posterior draws kept per replication; ranks lie in ``0..L``. L + 1 with many small
        divisors (e.g. 99, 199) gives equal-width histogram bins.
    quantities : sequence of str
        Any of ``"sorted_means"``, ``"sorted_weights"``, ``"log_likelihood"``,
        ``"mixture_mean"``, ``"mixture_variance"`` (default: all).
    feature : int
        The feature whose component means are sorted for ``"sorted_means"``.
    engine_kwargs : dict, optional
        Extra keyword arguments of the engine, e.g. ``{"reg_covar": 0.0}`` (VB) or
        ``{"num_warmup": 1000, "num_samples": 1000, "num_chains": 4}`` (MCMC). Defaults here:
        ``num_draws = num_ranks`` (VB, SVI); ``num_warmup=500, num_samples=500, num_chains=2``
        (MCMC). ``x``, ``num_components``, ``prior``, ``covariance_type`` and ``seed`` are set
        by sbc and may not appear.
    seed : int or jax key
        Same seed, same ranks, bit for bit. Replication r's prior draw, data, fit and tie-breaking
        use keys split from ``fold_in(key, r)``, so the first replications of a longer run are
        those of a shorter one; a further key seeds the ECDF test's simulated null distribution.
    on_error : {"raise", "record"}
        A fit that fails (ValueError, e.g. a non-finite ELBO) stops the run (``"raise"``), or
        is recorded in ``replications["error"]`` and left out of the ranks (``"record"``; this
        biases SBC if failures depend on the parameters, and a warning says how many failed).
    progress_bar : bool
        Show a tqdm progress bar over the replications.

    Returns
    -------
    SBCResult
        ``ranks`` (DataFrame, replication x quantity), ``tests`` / ``p_values`` (per quantity),
        ``replications`` (per-replication facts), ``true_values``, ``prior_draws``, ``settings``.

    Warns
    -----
    ConvergenceWarning, DegenerateComponentWarning, ...
        The engines' warnings are collected per replication (``replications["warnings"]``);
        once the run ends, one summary warning per category says in how many replications it
        occurred. Failed replications (``on_error="record"``) give one ``ConvergenceWarning``.

    Raises
    ------
    ValueError
        No prior, an unknown method (or ``"em"``), a covariance type the engine does not cover,
        engine_kwargs that set reserved arguments or give fewer draws than ``num_ranks``, a
        ``weight_concentration`` whose length is not K, or invalid counts.

    Examples
    --------
    >>> import numpy as np
    >>> import bayesgmm as bg
    >>> D = 1
    >>> prior = bg.Prior(weight_concentration=5.0, mean=np.zeros(D), mean_precision=0.2,
    ...                  degrees_of_freedom=D + 4.0, scale=(D + 3.0) * np.eye(D))
    >>> res = bg.sbc(2, 100, prior=prior, method="mcmc", num_replications=200, seed=0)  # doctest: +SKIP
    >>> res.p_values  # doctest: +SKIP
    """
    import pandas as pd
    from tqdm.auto import tqdm

    k = check_num_components(num_components)
    n = _positive_int("num_obs", num_obs, 2)
    if n < k:
        raise ValueError(f"num_obs={n} is smaller than num_components={k}; simulate at least K observations.")
    check_covariance_type(covariance_type)
    r_total = _positive_int("num_replications", num_replications, 2)
    num_ranks = _positive_int("num_ranks", num_ranks, 1)
    if prior is None:
        raise ValueError(
            "sbc needs an explicit prior: the engines' data-dependent default Prior.default(x, K) does "
            "not exist before the data are simulated. Pass e.g. prior=bg.Prior(weight_concentration=5.0, "
            "mean=np.zeros(D), mean_precision=0.2, degrees_of_freedom=D + 4.0, scale=(D + 3.0) * np.eye(D))."
        )
    if not isinstance(prior, Prior):
        raise ValueError(f"prior must be a bayesgmm.Prior, got {type(prior).__name__}.")
    alpha = np.asarray(prior.weight_concentration)
    if alpha.ndim == 1 and alpha.shape[0] != k:
        raise ValueError(
            f"prior.weight_concentration has {alpha.shape[0]} entries but num_components={k}; "
            f"give a scalar or a vector of length {k}."
        )
    d = prior.num_features
    if isinstance(quantities, str):
        quantities = (quantities,)
    quantities = tuple(quantities)
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown or not quantities:
        raise ValueError(f"quantities must be a non-empty selection of {QUANTITIES}, got {quantities!r}.")
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < d:
        raise ValueError(f"feature must index one of the prior's {d} feature(s), got {feature!r}.")
    names = _quantity_names(quantities, k, d)
    if not names:
        raise ValueError(
            f"no test quantity is defined for {quantities!r} with K={k} (sorted_weights needs K >= 2); "
            "add 'sorted_means' or 'log_likelihood'."
        )
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}.")
    fit, kwargs, method_name = _engine(method, covariance_type, num_ranks, engine_kwargs)

    # ---- keys: replication r (prior draw, data, fit, ties) from fold_in(k_reps, r); the ECDF null
    k_reps, k_null = jax.random.split(seed_to_key(seed))
    null_seed = [int(a) for a in _key_data(k_null).ravel()]
    dtype = np.dtype(jax.dtypes.canonicalize_dtype(np.float64))  # float32 unless jax_enable_x64
    prior_arrays = prior.arrays(k, covariance_type, dtype=dtype)
    true_w, true_m, true_c = [], [], []

    rank_rows, true_rows, facts, ok = [], [], [], []
    caught_by_category: dict = {}
    for r in tqdm(range(r_total), disable=not progress_bar, desc=f"SBC ({method_name})", unit="fit"):
        params, x, z, fit_key, tie_key = _simulate_replication(
            k_reps, np.int32(r), prior_arrays, num_components=k, covariance_type=covariance_type, num_obs=n
        )
        theta = GMMParams(*(np.asarray(a, dtype=np.float64) for a in jax.device_get(params)))
        for store, a in zip((true_w, true_m, true_c), theta):
            store.append(a)
        x = np.asarray(x)
        fact = {
            "converged": False,
            "n_iter": 0,
            "fit_seconds": float("nan"),
            "min_component_count": int(np.bincount(np.asarray(z), minlength=k).min()),
            "num_warnings": 0,
            "warnings": "",
            "error": "",
        }
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = fit(x, k, covariance_type=covariance_type, prior=prior, seed=fit_key, **kwargs)
            fact["fit_seconds"] = time.perf_counter() - start
            fact["converged"] = bool(res.converged)
            fact["n_iter"] = int(res.n_iter)
            for name in _INFO_FACTS:
                if name in res.info:
                    fact[name] = _jsonable(res.info[name])
            if caught:
                fact["num_warnings"] = len(caught)
                fact["warnings"] = " | ".join(f"{w.category.__name__}: {w.message}" for w in caught)
                for w in caught:
                    caught_by_category.setdefault(w.category, {}).setdefault(r, str(w.message))
            if res.draws is None:
                raise ValueError(
                    f"the engine ({method_name}) returned no posterior draws; SBC needs an engine whose "
                    "FitResult carries draws."
                )
            w_d, m_d, c_d = (np.asarray(res.draws[name], dtype=np.float64) for name in ("weights", "means", "covariances"))
            total = w_d.shape[0] * w_d.shape[1]
            if total < num_ranks:
                raise ValueError(
                    f"the engine returned {total} posterior draws but num_ranks={num_ranks}; ask the "
                    "engine for more draws (engine_kwargs) or lower num_ranks."
                )
            idx = (np.arange(num_ranks) * total) // num_ranks  # evenly thinned over chains and draws
            flat = [a.reshape((total,) + a.shape[2:])[idx] for a in (w_d, m_d, c_d)]
            x64 = np.asarray(x, dtype=np.float64)
            post = _test_quantities(x64, *flat, covariance_type, quantities, feature)
            at_truth = _test_quantities(x64, *(a[None] for a in theta), covariance_type, quantities, feature)[0]
            if not (np.all(np.isfinite(post)) and np.all(np.isfinite(at_truth))):
                raise ValueError("a test quantity is not finite (a posterior draw with a singular covariance?).")
        except _RECORDED_ERRORS as err:
            if on_error == "raise":
                err.add_note(f"(in SBC replication {r} of {r_total}, method {method_name!r})")
                raise
            fact["error"] = f"{type(err).__name__}: {err}"
            facts.append(fact)
            continue
        rank_rows.append(_ranks(post, at_truth, np.random.default_rng(_key_data(tie_key).tolist())))
        true_rows.append(at_truth)
        ok.append(r)
        facts.append(fact)

    index = pd.Index(ok, name="replication")
    ranks = pd.DataFrame(np.asarray(rank_rows, dtype=np.int64).reshape(len(ok), len(names)), index=index, columns=names)
    true_values = pd.DataFrame(np.asarray(true_rows, dtype=np.float64).reshape(len(ok), len(names)), index=index, columns=names)
    replications = pd.DataFrame(facts, index=pd.Index(range(r_total), name="replication"))
    failed = replications.index[replications["error"] != ""]

    # ---- summary warnings (one per category) instead of one per replication
    for category, first in caught_by_category.items():
        r0, msg = next(iter(first.items()))
        warnings.warn(
            f"{category.__name__} in {len(first)} of {r_total} SBC replications ({method_name}); first, "
            f"replication {r0}: {msg} See SBCResult.replications['warnings'].",
            category,
            stacklevel=2,
        )
    if len(failed):
        warnings.warn(
            f"{len(failed)} of {r_total} SBC replications failed and are left out of the ranks (first, "
            f"replication {failed[0]}: {replications.loc[failed[0], 'error']}). Leaving out failures biases "
            "SBC when they depend on the parameters.",
            ConvergenceWarning,
            stacklevel=2,
        )
    if len(ok) < 2:
        raise ValueError(f"only {len(ok)} of {r_total} SBC replications succeeded; no uniformity test is possible.")

    edges = rank_bins(num_ranks, len(ok))
    tests = uniformity_tests(ranks, num_ranks, bin_edges=edges, num_simulations=_NUM_SIMULATIONS, seed=null_seed)
    settings = {
        "method": method_name,
        "covariance_type": covariance_type,
        "num_components": k,
        "num_features": d,
        "num_obs": n,
        "num_replications": r_total,
        "num_ranks": num_ranks,
        "quantities": list(quantities),
        "feature": int(feature),
        "prior": prior.to_dict(),
        "engine_kwargs": _jsonable(kwargs),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
        "dtype": str(dtype),
        "bin_edges": edges.tolist(),
        "null_seed": null_seed,
        "num_simulations": _NUM_SIMULATIONS,
    }
    prior_draws = {"weights": np.stack(true_w), "means": np.stack(true_m), "covariances": np.stack(true_c)}
    return SBCResult(ranks, tests, replications, true_values, prior_draws, settings)

"""Rank statistics of simulation-based calibration: the result record, uniformity tests, bands.

:class:`SBCResult` holds the ranks of an SBC run (:func:`bayesgmm.sbc`) with their tests;
:func:`rank_bins`, :func:`uniformity_tests` (chi-square on rank bins and the simultaneous ECDF
test of Säilynoja, Bürkner and Vehtari, 2022) and :func:`ecdf_band` work on any ranks, and are
what :mod:`bayesgmm.plotting` draws. Nothing here fits a model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Mapping, NamedTuple

import numpy as np

from ._files import from_strict_json, strict_json, write_text

__all__ = ["ECDFBand", "SBCResult", "chi_square_test", "ecdf_band", "rank_bins", "uniformity_tests"]

#: Evaluation points of the ECDF test and band: at most this many.
_MAX_ECDF_POINTS = 200
#: Simulated null data sets of the ECDF test's calibration.
NUM_SIMULATIONS = 10_000


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
        """JSON text of the whole result; also written to ``path`` when given (no pickle).

        Parameters
        ----------
        path : str or path-like, optional
            File to write the text to (overwritten); None: only return it.

        Returns
        -------
        str
            The JSON document (format ``"bayesgmm.SBCResult/1"``), which :meth:`from_json` reads.
        """
        doc = {
            "format": "bayesgmm.SBCResult/1",
            "ranks": _frame_to_dict(self.ranks),
            "tests": _frame_to_dict(self.tests),
            "replications": _frame_to_dict(self.replications),
            "true_values": _frame_to_dict(self.true_values),
            "prior_draws": {k: np.asarray(v).tolist() for k, v in self.prior_draws.items()},
            "settings": dict(self.settings),
        }
        text = json.dumps(strict_json(doc), indent=1, allow_nan=False)  # NaN (a failed fit's row) as "NaN"
        if path is not None:
            write_text(path, text)  # atomically: an interrupted write keeps the earlier file
        return text

    @classmethod
    def from_json(cls, source) -> "SBCResult":
        """Rebuild a result from :meth:`to_json` text or a path to it.

        Parameters
        ----------
        source : str or path-like
            The JSON text itself (recognised by its leading ``{``), or the path of a file
            holding it.

        Returns
        -------
        SBCResult
            The result :meth:`to_json` wrote: the same tables, prior draws and settings.

        Raises
        ------
        ValueError
            When the text is not an SBCResult document.
        """
        text = source
        if not str(source).lstrip().startswith("{"):
            with open(source) as f:
                text = f.read()
        doc = from_strict_json(json.loads(text))
        if not isinstance(doc, dict) or doc.get("format") != "bayesgmm.SBCResult/1":
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

    Attributes
    ----------
    z : np.ndarray (J,)
        Evaluation points ``i / (L + 1)``.
    lower, upper : np.ndarray (J,)
        Band limits as ECDF values (counts divided by R).
    gamma : float
        Pointwise level: each limit is a ``gamma / 2`` / ``1 - gamma / 2`` binomial quantile.
    coverage : float
        Simulated probability that the whole ECDF of uniform ranks lies inside the band.
    simultaneous : bool
        Whether ``gamma`` was adjusted for simultaneous coverage.
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
        divisors = [b for b in range(2, target + 1) if n_values % b == 0]  # one bin tests nothing (df 0, p NaN)
        num_bins = divisors[-1] if divisors and divisors[-1] * 2 >= target else target
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
    num_simulations: int = NUM_SIMULATIONS,
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
        Probability that the band is meant to hold: the whole ECDF (simultaneous) or each point
        (pointwise).
    simultaneous : bool
        Adjust ``gamma`` for simultaneous coverage (True) or use ``1 - prob`` at each point.
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


def _checked_ranks(values, num_ranks: int) -> np.ndarray:
    """``values`` as int64 ranks, refused unless every one is an integer in ``0..num_ranks``."""
    values = np.asarray(values)
    numeric = values.dtype.kind in "iuf" and values.size > 0
    if not numeric or not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or values.min() < 0 \
            or values.max() > num_ranks:
        raise ValueError(f"ranks must be integers in 0..num_ranks={num_ranks}.")
    return values.astype(np.int64)


def _checked_bin_edges(bin_edges, num_ranks: int) -> np.ndarray:
    """``bin_edges`` as int64, refused unless integers increasing strictly from 0 to L + 1."""
    edges = np.asarray(bin_edges)
    if (edges.ndim != 1 or edges.size < 2 or edges.dtype.kind not in "iuf" or np.any(edges != np.round(edges))
            or edges[0] != 0 or edges[-1] != num_ranks + 1 or np.any(np.diff(edges) <= 0)):
        raise ValueError(f"bin_edges must be integers increasing strictly from 0 to L + 1 = {num_ranks + 1}.")
    return edges.astype(np.int64)


def chi_square_test(ranks, num_ranks: int, bin_edges) -> tuple[float, int, float]:
    """The chi-square test of uniformity of ranks over given bins.

    Parameters
    ----------
    ranks : array of int (R,)
        Ranks in ``0..num_ranks``.
    num_ranks : int
        L.
    bin_edges : array of int
        Bins, from 0 to L + 1 (:func:`rank_bins`).

    Returns
    -------
    tuple
        ``(chi2, df, p_value)``; the p-value is NaN with one bin.
    """
    from scipy import stats

    if isinstance(num_ranks, bool) or not isinstance(num_ranks, (int, np.integer)) or num_ranks < 1:
        raise ValueError(f"num_ranks must be a positive integer (L), got {num_ranks!r}.")
    num_ranks = int(num_ranks)
    ranks = _checked_ranks(np.ravel(np.asarray(ranks)), num_ranks)
    edges = _checked_bin_edges(bin_edges, num_ranks)
    expected = ranks.size * np.diff(edges) / (num_ranks + 1.0)
    observed = np.bincount(np.searchsorted(edges, ranks, side="right") - 1, minlength=edges.size - 1)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    df = edges.size - 2
    return chi2, df, float(stats.chi2.sf(chi2, df)) if df > 0 else float("nan")


def uniformity_tests(ranks, num_ranks: int, *, bin_edges=None, num_simulations: int = NUM_SIMULATIONS, seed):
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

    frame = ranks if isinstance(ranks, pd.DataFrame) else pd.DataFrame(np.asarray(ranks))
    values = frame.to_numpy()
    num_ranks = int(num_ranks)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"ranks must be a 2-D table (replications, quantities), got shape {values.shape}.")
    values = _checked_ranks(values, num_ranks)
    r = values.shape[0]
    edges = rank_bins(num_ranks, r) if bin_edges is None else _checked_bin_edges(bin_edges, num_ranks)
    j = _ecdf_points(num_ranks)
    null = _null_gamma(r, num_ranks, num_simulations, seed)
    rows = []
    for q in range(values.shape[1]):
        v = values[:, q]
        chi2, df, p_chi2 = chi_square_test(v, num_ranks, edges)
        gamma = float(_gamma_statistic(np.sum(v[:, None] < j[None], axis=0), r, num_ranks))
        p_ecdf = (1.0 + np.sum(null <= gamma)) / (1.0 + null.size)
        rows.append((chi2, df, p_chi2, gamma, float(p_ecdf)))
    index = pd.Index([str(c) for c in frame.columns], name="quantity")
    out = pd.DataFrame(rows, columns=["chi2", "df", "chi2_pvalue", "ecdf_gamma", "ecdf_pvalue"], index=index)
    return out



"""Label switching: relabel posterior draws to a pivot, and label-invariant summaries.

A mixture's likelihood and (exchangeable) prior are invariant to the K! relabellings of its
components, so a sampler that mixes well visits all of them, and per-component posterior means,
R-hat and ESS are meaningless until the draws are brought to one labelling. :func:`align_draws`
does this by matching each draw to a *pivot* (e.g. the MAP solution) with the optimal
permutation (Hungarian algorithm; Stephens 2000 uses the same pivotal idea).

The cost of giving draw component ``j`` the pivot label ``k`` is, by default (``cost="kl"``), the
Kullback-Leibler divergence ``KL(N(mu_j, Sigma_j) || N(mu_k^*, Sigma_k^*))`` from the draw's
component to the pivot's, up to terms that are the same for every permutation::

    cost[j, k] = (mu_j - mu_k^*)^T P_k^* (mu_j - mu_k^*) + tr(P_k^* Sigma_j),   P_k^* = (Sigma_k^*)^{-1}

(``-D``, ``log|Sigma_j|`` and ``log|Sigma_k^*|`` add the same amount to every assignment, since
each ``j`` and each ``k`` appears once, so they are dropped.) Why this cost:

* it is the squared Mahalanobis distance of the draw's mean in the pivot component's own metric,
  so it does not depend on the data's units, and it
* also separates components that share a mean but differ in spread (a scale mixture), where a
  distance between means alone cannot tell the labels apart;
* it needs only the K pivot precisions, computed once; everything else is one batched ``einsum``
  over all draws.

``cost="mahalanobis"`` keeps the first term only. ``cost="joint_kl"`` weighs each component by
its weight: the KL divergence between the joint distributions of label and point, ``sum_j w_j
(log(w_j / w_k^*) + KL(N_j || N_k^*))``, up to terms that are the same for every permutation::

    cost[j, k] = w_j (cost_kl[j, k] / 2 + log|Sigma_k^*| / 2 - log w_k^*)

A component's cost scales with its weight, so an empty component of a draw (its parameters are
draws from the prior) costs little wherever it goes, and a filled one is kept from an empty label
of the pivot (a weight of exactly 0 counts as ``exp(-1e5)``: a filled component goes there only
when it must). Little is not nothing: a component of weight ``w`` a Mahalanobis distance ``d``
from a label costs about ``w d^2 / 2``, so a prior draw far from the data (weight 1e-3, tens of
units away) can outweigh moving a filled cluster to another label; a review found that in 0-5% of
the draws of overfitted fits (15-29 of 600 on the galaxies). Given ``num_obs`` (N), a component
of expected count ``w N`` below one, no observation's worth of data, costs nothing anywhere
(10-15 of 600 then). The samplers use this cost, with N, where components may be empty (sparse or
stick-breaking weight priors), aligning to their draw of highest log posterior. Tied covariances are shared by all components:
they are never permuted, and the trace term is the same for every assignment.

Everything here is plain NumPy/SciPy on arrays with leading (chain, draw) dimensions.
"""

from __future__ import annotations

import numpy as np

from ._numerics import expand_covariances
from .params import GMMParams, check_covariance_type

__all__ = [
    "align_draws",
    "assignment_costs",
    "invariant_summaries",
    "mixture_moments",
    "permute_draws",
    "sort_components",
]

_COSTS = ("kl", "mahalanobis", "joint_kl")


def _check_draws(draws, covariance_type: str):
    missing = [n for n in ("weights", "means", "covariances") if n not in draws]
    if missing:
        raise ValueError(f"draws lacks {missing}; pass a mapping with 'weights', 'means' and 'covariances'.")
    w = np.asarray(draws["weights"], dtype=np.float64)
    m = np.asarray(draws["means"], dtype=np.float64)
    c = np.asarray(draws["covariances"], dtype=np.float64)
    if m.ndim < 2 or w.shape != m.shape[:-1]:
        raise ValueError(
            f"draws['weights'] must have shape (..., K) and draws['means'] (..., K, D) with the same "
            f"leading dimensions; got {w.shape} and {m.shape}."
        )
    k, d = m.shape[-2:]
    lead = m.shape[:-2]
    expected = {"full": (k, d, d), "diag": (k, d), "spherical": (k,), "tied": (d, d)}[covariance_type]
    if c.shape != lead + expected:
        raise ValueError(
            f"draws['covariances'] for covariance_type={covariance_type!r} must have shape "
            f"{lead + expected}, got {c.shape}."
        )
    return w, m, c


def assignment_costs(draws, pivot: GMMParams, covariance_type: str, *, cost: str = "kl",
                     num_obs: int | None = None) -> np.ndarray:
    """Cost of giving each draw component each pivot label, shape (..., K, K) = [..., j, k].

    Parameters
    ----------
    draws : mapping
        ``{"weights": (..., K), "means": (..., K, D), "covariances": (..., <structure>)}``.
    pivot : GMMParams
        The reference labelling (one parameter set, no leading dimensions).
    covariance_type : {"full", "diag", "spherical", "tied"}
        The layout of the draws' and the pivot's covariances.
    cost : {"kl", "mahalanobis", "joint_kl"}
        See the module docstring.
    num_obs : int, optional
        With ``cost="joint_kl"``: the number of observations N; a draw component of expected
        count ``w_j N`` below one (no observation's worth of data: a draw from the prior) then
        costs nothing wherever it goes.

    Returns
    -------
    np.ndarray (..., K, K)
        ``[..., j, k]``: the cost of giving draw component ``j`` the pivot label ``k``.
    """
    check_covariance_type(covariance_type)
    if cost not in _COSTS:
        raise ValueError(f"cost must be one of {_COSTS}, got {cost!r}.")
    w, m, c = _check_draws(draws, covariance_type)
    k, d = m.shape[-2:]
    pm = np.asarray(pivot.means, dtype=np.float64)
    if pm.shape != (k, d):
        raise ValueError(f"pivot.means must have shape ({k}, {d}) like the draws, got {pm.shape}.")
    pc = expand_covariances(pivot.covariances, covariance_type, k, d, dtype=np.float64)
    # in units of the pivot's spread per feature, which leaves both costs unchanged: data of scale
    # 1e-160 have precisions of 1e320, beyond float64 (every cost inf, every draw left as it was)
    scale = np.sqrt(np.mean(np.einsum("kaa->ka", pc), axis=0))
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    per_pair = np.outer(scale, scale)
    pc, pm, m = pc / per_pair, pm / scale, m / scale
    chol = np.linalg.cholesky(pc)  # raises LinAlgError for a non-PD pivot
    chol_inv = np.linalg.solve(chol, np.broadcast_to(np.eye(d), pc.shape))
    prec = np.swapaxes(chol_inv, -1, -2) @ chol_inv  # (K, D, D)
    diff = m[..., :, None, :] - pm  # (..., j, k, D)
    out = np.einsum("...jka,kab,...jkb->...jk", diff, prec, diff)
    if cost in ("kl", "joint_kl") and covariance_type != "tied":
        draw_covariances = expand_covariances(c, covariance_type, k, d, dtype=np.float64) / per_pair
        out = out + np.einsum("kab,...jba->...jk", prec, draw_covariances)
    if cost == "joint_kl":
        log_det = 2.0 * np.sum(np.log(np.einsum("kaa->ka", chol)), axis=-1)  # log|Sigma_k^*| in the scaled units
        pivot_w = np.asarray(pivot.weights, np.float64)
        log_w = np.where(pivot_w > 0, np.log(np.where(pivot_w > 0, pivot_w, 1.0)), -1e5)  # finite: Hungarian needs it
        out = w[..., :, None] * (0.5 * out + 0.5 * log_det - log_w)
        if num_obs is not None:
            out = np.where(w[..., :, None] * num_obs < 1.0, 0.0, out)
    return out


def permute_draws(draws, permutations, covariance_type: str) -> dict:
    """Relabel draws: component ``k`` of the result is component ``permutations[..., k]`` of ``draws``.

    Parameters
    ----------
    draws : mapping
        ``{"weights": (..., K), "means": (..., K, D), "covariances": (..., <structure>)}``; other
        keys are passed through unchanged.
    permutations : int array (..., K)
        One permutation of ``0 .. K-1`` per draw: the draws' leading shape plus (K,).
    covariance_type : {"full", "diag", "spherical", "tied"}
        The layout of the covariances. Tied covariances are shared, so they are not permuted.

    Returns
    -------
    dict
        The relabelled draws, same keys and shapes.
    """
    check_covariance_type(covariance_type)
    w, m, c = _check_draws(draws, covariance_type)
    perm = np.asarray(permutations)
    if perm.shape != w.shape:
        raise ValueError(f"permutations must have shape {w.shape} (one permutation per draw), got {perm.shape}.")
    k = w.shape[-1]
    if perm.dtype.kind not in "iu" or not np.array_equal(np.sort(perm, axis=-1), np.broadcast_to(np.arange(k), perm.shape)):
        raise ValueError(f"permutations must hold a permutation of 0 .. {k - 1} for every draw (component k of the "
                         "result is component permutations[..., k]); some do not.")
    out = dict(draws)
    out["weights"] = np.take_along_axis(w, perm, axis=-1)
    out["means"] = np.take_along_axis(m, perm[..., None], axis=-2)
    if covariance_type == "full":
        out["covariances"] = np.take_along_axis(c, perm[..., None, None], axis=-3)
    elif covariance_type == "diag":
        out["covariances"] = np.take_along_axis(c, perm[..., None], axis=-2)
    elif covariance_type == "spherical":
        out["covariances"] = np.take_along_axis(c, perm, axis=-1)
    else:
        out["covariances"] = c
    return out


def align_draws(draws, pivot: GMMParams, covariance_type: str, *, cost: str = "kl", num_obs: int | None = None):
    """Relabel every draw by the permutation that best matches the pivot (all K! permutations
    tried up to :data:`ENUMERATE_MAX_K`, the Hungarian algorithm above).

    Parameters
    ----------
    draws : mapping
        ``{"weights": (C, S, K), "means": (C, S, K, D), "covariances": (C, S, ...)}``; any
        number of leading dimensions works.
    pivot : GMMParams
        Reference labelling, e.g. the MAP solution, on the same scale as the draws.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The layout of the draws' and the pivot's covariances.
    cost : {"kl", "mahalanobis", "joint_kl"}
        Assignment cost (module docstring): the KL divergence from each draw component to each
        pivot component up to permutation-invariant terms (default), the squared Mahalanobis
        distance of the means in the pivot's metric, or the weighted KL divergence of the joint
        distributions of label and point (for draws with empty components).
    num_obs : int, optional
        For ``cost="joint_kl"``: N, below which a component's expected count makes it free
        (:func:`assignment_costs`).

    Returns
    -------
    aligned : dict
        The draws relabelled (same shapes); other keys of ``draws`` are passed through.
    permutations : np.ndarray of int, shape (..., K)
        ``aligned[..., k] = draws[..., permutations[..., k]]``.
    """
    costs = assignment_costs(draws, pivot, covariance_type, cost=cost, num_obs=num_obs)  # (..., j, k)
    lead, k = costs.shape[:-2], costs.shape[-1]
    flat = costs.reshape(-1, k, k)
    perms = _all_permutations_best(flat) if k <= ENUMERATE_MAX_K else _hungarian_best(flat)
    perms = perms.reshape(lead + (k,))
    return permute_draws(draws, perms, covariance_type), perms


#: Up to this K, :func:`align_draws` tries all K! permutations of every draw at once (NumPy);
#: above it, one Hungarian assignment per draw (SciPy, whose ``scipy.optimize`` takes 0.25-0.4 s
#: to import: a tenth of a first NUTS fit's sampling on Old Faithful).
ENUMERATE_MAX_K = 5
_DRAWS_PER_BLOCK = 4096


def _all_permutations_best(costs: np.ndarray) -> np.ndarray:
    """For every (K, K) cost matrix ``costs[i, j, k]`` (draw component j to pivot label k), the
    permutation ``p`` minimising ``sum_k costs[i, p[k], k]``; ties go to the first permutation in
    lexicographic order, so the identity wins a tie."""
    import itertools

    k = costs.shape[-1]
    candidates = np.array(list(itertools.permutations(range(k))), dtype=np.int64).reshape(-1, k)  # (K!, K)
    best = np.empty((costs.shape[0],), dtype=np.int64)
    for lo in range(0, costs.shape[0], _DRAWS_PER_BLOCK):  # (draws, K!) totals, a block of draws at a time
        block = costs[lo:lo + _DRAWS_PER_BLOCK]
        totals = sum(block[:, candidates[:, label], label] for label in range(k))
        best[lo:lo + _DRAWS_PER_BLOCK] = np.argmin(totals, axis=-1)
    return candidates[best]


def _hungarian_best(costs: np.ndarray) -> np.ndarray:
    """:func:`_all_permutations_best` by one Hungarian assignment per draw (~10 us each)."""
    from scipy.optimize import linear_sum_assignment  # imported here: scipy.optimize takes 0.25-0.4 s to import

    perms = np.empty(costs.shape[:2], dtype=np.int64)
    for i, cm in enumerate(costs):
        rows, cols = linear_sum_assignment(cm)
        perms[i, cols] = rows  # pivot label cols[r] gets draw component rows[r]
    return perms


def match_result(result, reference, *, cost: str = "kl"):
    """``result`` with its components reordered to match ``reference``'s (e.g. the same colours
    in figures of several engines): :meth:`bayesgmm.FitResult.align_to`.

    Parameters
    ----------
    result, reference : FitResult
        Fits with the same number of components and features, of any covariance structures.
    cost : {"kl", "mahalanobis"}

    Returns
    -------
    FitResult
        ``result`` itself when its order already matches.
    """
    return result.align_to(reference, cost=cost)


def sort_components(draws, covariance_type: str, *, by: str = "means", feature: int = 0) -> dict:
    """Relabel each draw by sorting its components (a label-invariant canonical order).

    ``by="means"`` sorts by the mean of ``feature``; ``by="weights"`` by weight. Such an
    identifiability constraint is a poor alignment when components overlap in that coordinate,
    but every statistic of the sorted draws is invariant to relabelling, which is what
    simulation-based calibration needs.

    Parameters
    ----------
    draws : mapping
        ``{"weights": (..., K), "means": (..., K, D), "covariances": (..., <structure>)}``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The layout of the covariances.
    by : {"means", "weights"}
        Sort by the mean of ``feature`` or by the weight, ascending (ties keep their order).
    feature : int
        The feature whose means are sorted when ``by="means"`` (negative indices count from
        the end).

    Returns
    -------
    dict
        The relabelled draws, as :func:`permute_draws` returns them.
    """
    w, m, _ = _check_draws(draws, covariance_type)
    if by == "means":
        _check_feature(feature, m.shape[-1])
        key = m[..., feature]
    elif by == "weights":
        key = w
    else:
        raise ValueError(f"by must be 'means' or 'weights', got {by!r}.")
    return permute_draws(draws, np.argsort(key, axis=-1, kind="stable"), covariance_type)


def _check_feature(feature, num_features: int) -> None:
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not -num_features <= feature < num_features:
        raise ValueError(f"feature must index one of the {num_features} features, got {feature!r}.")


def mixture_moments(draws, covariance_type: str):
    """Mean (..., D) and covariance (..., D, D) of the mixture distribution of each draw.

    ``E x = sum_k pi_k mu_k`` and ``Cov x = sum_k pi_k (Sigma_k + mu_k mu_k^T) - E x E x^T``:
    both are invariant to relabelling.

    Parameters
    ----------
    draws : mapping
        ``{"weights": (..., K), "means": (..., K, D), "covariances": (..., <structure>)}``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The layout of the covariances.

    Returns
    -------
    mean : np.ndarray (..., D)
        The mixture's mean for each draw.
    cov : np.ndarray (..., D, D)
        The mixture's covariance for each draw.
    """
    w, m, c = _check_draws(draws, covariance_type)
    k, d = m.shape[-2:]
    mean = np.einsum("...k,...kd->...d", w, m)
    full = expand_covariances(c, covariance_type, k, d, dtype=np.float64)
    second = np.einsum("...k,...kab->...ab", w, full + m[..., :, None] * m[..., None, :])
    return mean, second - mean[..., :, None] * mean[..., None, :]


def invariant_summaries(draws, covariance_type: str, *, feature: int = 0) -> dict:
    """Label-invariant scalar and vector summaries of each draw (for SBC and diagnostics).

    Parameters
    ----------
    draws : mapping
        ``{"weights": (..., K), "means": (..., K, D), "covariances": (..., <structure>)}``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The layout of the covariances.
    feature : int
        The feature whose component means are summarised in ``sorted_means``.

    Returns
    -------
    dict
        Arrays with the draws' leading dimensions: ``sorted_weights`` (..., K) ascending;
        ``sorted_means`` (..., K) means of ``feature`` ascending; ``mixture_mean`` (..., D);
        ``mixture_cov`` (..., D, D); ``max_weight`` (...).
    """
    w, m, _ = _check_draws(draws, covariance_type)
    _check_feature(feature, m.shape[-1])
    mean, cov = mixture_moments(draws, covariance_type)
    return {
        "sorted_weights": np.sort(w, axis=-1),
        "sorted_means": np.sort(m[..., feature], axis=-1),
        "mixture_mean": mean,
        "mixture_cov": cov,
        "max_weight": w.max(axis=-1),
    }

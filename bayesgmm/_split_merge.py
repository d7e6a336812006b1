"""Split-and-merge moves for EM's default search at many components (SMEM; Ueda, Nakano,
Ghahramani & Hinton 2000, Neural Computation 12: 2109-2128).

With many components the local optima EM meets are mostly of one kind: two components share
one cluster while one component covers two clusters. No single EM step leaves such an optimum,
and the default search's starts become too few to avoid it where the data are large (measured:
K = 64 separated clusters on 40,000 rows in D = 4 ended 344-371 nats short, converged, in 3 data
sets of 4 with the 16 starts the budget allows). A *move* merges two components ``i`` and ``j``
into slot ``i`` and splits a third, ``k``, into slots ``j`` and ``k``; EM then runs from there.

Everything here but the full runs is host NumPy in float64 on the standardised data, at a
converged fit:

* candidates (:func:`candidates`): merges ranked by the cosine of the two components'
  responsibility vectors (Ueda's merge criterion, normalised), splits by the log-likelihood a
  component's own rows gain from two Gaussians in place of one, its rows cut in two across their
  principal axis (:func:`split_gain`); moves paired by the sum of the two ranks;
* each move is first run as a *partial EM* (:func:`partial_em`): only its three components
  updated, sharing their rows' present responsibility, the others fixed, which costs a few
  passes over its rows (about 3 N / K, at most :data:`PARTIAL_ROWS` of them); its exact
  log-likelihood gain over all rows (:func:`move_gain`) decides which moves run as full EM;
* :func:`improve` runs them, every component free, in one call of the search's own compiled
  program (``SearchResult.run_from``), keeps the best if it raises the objective, and goes on
  from there: :func:`bayesgmm.fit_em` after its default search, :func:`bayesgmm.streaming.fit_em_stream`
  after its subsample's.

A fit already at its optimum pays the candidates' partial runs only (no full run); every move
kept raises the objective, so the loop ends.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from . import _numerics
from .params import GMMParams

#: Merges and splits ranked; moves are their pairs (disjoint), ordered by the sum of ranks.
NUM_RANKED = 5
#: Moves given a partial EM per round.
MOVES_PER_ROUND = 4
#: Iterations of a move's partial EM (its three components only), at most; it stops earlier
#: when its objective gains less than :data:`PARTIAL_TOL` per unit of its rows' weight.
PARTIAL_ITERATIONS = 30
PARTIAL_TOL = 1e-6
#: A move's partial EM runs on at most this many of its rows (evenly spaced); its gain is still
#: over every row (:func:`move_gain`). All of them made the moves 3 times a fit's own time at
#: N = 1e5, D = 8, K = 10 (a review).
PARTIAL_ROWS = 4096
#: Rows whose present responsibility for a move's three components is below this are left out
#: of its partial EM (their share changes nothing measurable); its gain is still over every row.
ROW_SHARE_FLOOR = 1e-6
#: Responsibilities below this count as 0 in the criteria (:func:`responsibilities`): their
#: products stay normal numbers.
NEGLIGIBLE = 1e-100


class Move(NamedTuple):
    """Merge components ``merge`` (two) into the first's slot, split ``split`` into the
    second's slot and its own; ``params`` the start after the move's partial EM (standardised),
    ``gain`` its exact log-likelihood gain over the fit (weighted, float64)."""

    merge: tuple[int, int]
    split: int
    params: GMMParams
    gain: float


def _layout_covariance(scatter, covariance_type: str, tied):
    """A component's covariance in its layout from its full weighted scatter (D, D)."""
    if covariance_type == "full":
        return scatter
    if covariance_type == "diag":
        return np.diagonal(scatter).copy()
    if covariance_type == "spherical":
        return np.float64(np.mean(np.diagonal(scatter)))
    return tied  # tied: every component keeps the shared covariance


def _floored(cov, covariance_type: str, reg_covar: float):
    """``cov`` with ``reg_covar`` on its diagonal (EM's M-step does the same, standardised units)."""
    if covariance_type in ("full", "tied"):
        return cov + reg_covar * np.eye(cov.shape[-1])
    return cov + reg_covar


def _weighted_moments(x, r):
    """Weight sum, mean (D,) and scatter about it (D, D) of rows ``x`` under weights ``r``
    (matrix products: ``einsum``'s own loops took 3-6 times as long on a few thousand rows)."""
    total = float(np.sum(r))
    mean = r @ x / total
    centred = x - mean
    return total, mean, (centred * r[:, None]).T @ centred / total


def _halves(x, r):
    """The rows' weights ``r`` cut in two across their principal axis: ``(r_a, r_b)``, or None
    where one half is empty."""
    total, mean, scatter = _weighted_moments(x, r)
    axis = np.linalg.eigh(scatter)[1][:, -1]
    side = np.einsum("nd,d->n", x - mean, axis) >= 0
    r_a, r_b = np.where(side, r, 0.0), np.where(side, 0.0, r)
    if min(np.sum(r_a), np.sum(r_b)) <= 1e-3 * total:
        return None
    return r_a, r_b


def _component(x, r, covariance_type, tied, reg_covar, total_weight):
    """Weight, mean and covariance (layout, floored) of the rows ``x`` under weights ``r``."""
    nk, mean, scatter = _weighted_moments(x, r)
    cov = _floored(_layout_covariance(scatter, covariance_type, tied), covariance_type, reg_covar)
    return nk / total_weight, mean, cov


def _log_density(x, means, covs, covariance_type):
    """``log N(x_n | mu_c, Sigma_c)`` (N, C) of a few components (tied: one shared ``covs``)."""
    return _numerics.component_log_density(x, np.asarray(means), np.asarray(covs), covariance_type)


def split_gain(x, resp, sample_weight, params: GMMParams, k: int, covariance_type: str, reg_covar: float):
    """Log-likelihood (weighted by component ``k``'s responsibilities ``resp`` (N,) times the row
    weights) that component ``k``'s rows gain from two Gaussians fitted to the halves across
    their principal axis, in place of ``k`` itself; -inf where the rows do not split. Rows of a
    responsibility below :data:`ROW_SHARE_FLOOR` are left out (whatever the weights' scale)."""
    keep = np.flatnonzero(resp > ROW_SHARE_FLOOR)
    x, r = x[keep], resp[keep] * (1.0 if sample_weight is None else sample_weight[keep])
    halves = None if x.shape[0] < 2 else _halves(x, r)
    if halves is None:
        return -np.inf
    tied = params.covariances if covariance_type == "tied" else None
    parts = [_component(x, h, covariance_type, tied, reg_covar, np.sum(r)) for h in halves]
    two = _numerics.logsumexp(np.log([p[0] for p in parts]) + _log_density(
        x, [p[1] for p in parts], [p[2] for p in parts] if tied is None else tied, covariance_type), axis=1)
    one = _log_density(x, params.means[k : k + 1],
                       params.covariances if tied is not None else params.covariances[k : k + 1], covariance_type)[:, 0]
    return float(np.sum(r * (two - one)))


def _merged(params: GMMParams, i: int, j: int, covariance_type: str):
    """Weight, mean and covariance (layout) of components ``i`` and ``j`` as one (moment matched)."""
    w, m, c = params
    weight = w[i] + w[j]
    mean = (w[i] * m[i] + w[j] * m[j]) / weight
    if covariance_type == "tied":
        return weight, mean, c
    spread = [_layout_covariance(np.outer(m[a] - mean, m[a] - mean), covariance_type, None) for a in (i, j)]
    return weight, mean, (w[i] * (c[i] + spread[0]) + w[j] * (c[j] + spread[1])) / weight


def _with_components(params: GMMParams, slots, weights, means, covs, covariance_type: str) -> GMMParams:
    w, m, c = (np.array(a, np.float64, copy=True) for a in params)
    for slot, weight, mean, cov in zip(slots, weights, means, covs):
        w[slot], m[slot] = weight, mean
        if covariance_type != "tied":
            c[slot] = cov
    return GMMParams(w, m, c)


def responsibilities(log_resp):
    """``exp(log_resp)`` with values below :data:`NEGLIGIBLE` set to 0: subnormal numbers, and
    products that underflow to them, slow NumPy's matrix products a hundredfold (a (K, N) by
    (N, K) product took 2 s at N = 4e4, K = 64)."""
    resp = np.exp(log_resp)
    resp[resp < NEGLIGIBLE] = 0.0
    return resp


def ranked_moves(x, sample_weight, params: GMMParams, resp, covariance_type: str, reg_covar: float):
    """Candidate moves ``((i, j), k)``, best first: the :data:`NUM_RANKED` best merges by the
    cosine of the responsibility vectors ``resp`` (N, K), the :data:`NUM_RANKED` best splits by
    :func:`split_gain`, paired (disjoint) in the order of their rank sums."""
    weighted = resp if sample_weight is None else resp * sample_weight[:, None]
    gram = weighted.T @ resp  # sum_n w_n r_ni r_nj
    norms = np.sqrt(np.maximum(np.diagonal(gram), np.finfo(np.float64).tiny))
    cosine = gram / np.outer(norms, norms)
    k = params.means.shape[0]
    upper = np.triu_indices(k, 1)
    order = np.argsort(-cosine[upper], kind="stable")[:NUM_RANKED]
    merges = [(int(upper[0][o]), int(upper[1][o])) for o in order]
    gains = np.array([split_gain(x, resp[:, c], sample_weight, params, c, covariance_type, reg_covar) for c in range(k)])
    splits = [int(c) for c in np.argsort(-gains, kind="stable")[:NUM_RANKED] if np.isfinite(gains[c])]
    pairs = [(a + b, a, b) for a in range(len(merges)) for b in range(len(splits)) if splits[b] not in merges[a]]
    return [(merges[a], splits[b]) for _, a, b in sorted(pairs)]


def move_gain(x, sample_weight, log_density, resp, params: GMMParams, moved: GMMParams, slots, covariance_type: str):
    """Log-likelihood gain (weighted, float64) over every row of ``moved`` against ``params``,
    which differ in components ``slots`` only: each row's density keeps the other components'
    share, ``1 - sum_{slots} r_nk`` of it (``resp`` (N, K)), and takes the new components' in
    place of the old. (Where the slots hold all but 1e-12 of a row, the others' share is
    imprecise and negligible beside theirs.)"""
    share = np.minimum(resp[:, slots].sum(1), 1.0)
    with np.errstate(divide="ignore"):
        log_others = np.log1p(-share) + log_density  # log sum_{l not moved} pi_l N_l
    tied = covariance_type == "tied"
    cov = moved.covariances if tied else moved.covariances[list(slots)]
    new = np.log(moved.weights[list(slots)]) + _log_density(x, moved.means[list(slots)], cov, covariance_type)
    log_new = _numerics.logsumexp(np.concatenate([new, log_others[:, None]], axis=1), axis=1)
    change = log_new - log_density
    return float(np.sum(change) if sample_weight is None else sample_weight @ change)


def partial_em(x, sample_weight, resp, params: GMMParams, merge, split, covariance_type: str, reg_covar: float):
    """A move's start (:class:`GMMParams`, standardised) after :data:`PARTIAL_ITERATIONS` EM
    iterations on its three components only, sharing their rows' present responsibility
    (``resp`` (N, K)); None where component ``split``'s rows do not split in two."""
    i, j = merge
    slots = [i, j, split]
    total_weight = float(resp.shape[0] if sample_weight is None else np.sum(sample_weight))
    share = resp[:, slots].sum(1)
    rows = np.flatnonzero(share > ROW_SHARE_FLOOR)
    if rows.size > PARTIAL_ROWS:  # evenly spaced in the data's order: the start needs no more
        rows = rows[np.linspace(0, rows.size - 1, PARTIAL_ROWS).round().astype(np.int64)]
    xr, mass = x[rows], share[rows] * (1.0 if sample_weight is None else sample_weight[rows])
    r_split = resp[rows, split] * (1.0 if sample_weight is None else sample_weight[rows])
    halves = None if rows.size < 2 else _halves(xr, r_split)
    if halves is None:
        return None
    tied = params.covariances if covariance_type == "tied" else None
    merged = _merged(params, i, j, covariance_type)
    parts = [_component(xr, h, covariance_type, tied, reg_covar, total_weight) for h in halves]
    scale = params.weights[split] / (parts[0][0] + parts[1][0])  # the halves share the split component's weight
    weights = [merged[0], parts[0][0] * scale, parts[1][0] * scale]
    means, covs = [merged[1], parts[0][1], parts[1][1]], [merged[2], parts[0][2], parts[1][2]]
    previous = -np.inf
    for _ in range(PARTIAL_ITERATIONS):
        log_joint = np.log(weights) + _log_density(xr, means, covs if tied is None else tied, covariance_type)
        log_rows = _numerics.logsumexp(log_joint, axis=1)
        objective = float(np.sum(mass * log_rows))
        if objective - previous <= PARTIAL_TOL * np.sum(mass):
            break
        previous = objective
        q = np.exp(log_joint - log_rows[:, None]) * mass[:, None]
        if np.any(np.sum(q, axis=0) <= 1e-3 * np.sum(mass)):  # a component lost its rows: not a move
            return None
        fitted = [_component(xr, q[:, c], covariance_type, tied, reg_covar, total_weight) for c in range(3)]
        weights, means, covs = (list(a) for a in zip(*fitted))
    # the three share the weight the three had: the other components keep theirs, weights too
    weights = np.array(weights) * (np.sum(params.weights[slots]) / np.sum(weights))
    return _with_components(params, slots, weights, means, covs, covariance_type)


def candidates(x, sample_weight, params: GMMParams, covariance_type: str, reg_covar: float) -> tuple[list[Move], int]:
    """``(moves, tried)``: the moves from a fit ``params`` (standardised, float64) on rows ``x``
    (standardised; any float dtype) with a positive gain after their partial EM, best first, and
    the number of partial EM runs (at most :data:`MOVES_PER_ROUND`)."""
    x = np.asarray(x, np.float64)
    weight = None if sample_weight is None else np.asarray(sample_weight, np.float64)
    scored = _numerics.score_rows(x, *params, covariance_type, responsibilities=True)
    resp = responsibilities(scored.log_resp)
    moves = []
    ranked = ranked_moves(x, weight, params, resp, covariance_type, reg_covar)[:MOVES_PER_ROUND]
    for merge, split in ranked:
        moved = partial_em(x, weight, resp, params, merge, split, covariance_type, reg_covar)
        if moved is None:
            continue
        gain = move_gain(x, weight, scored.log_density, resp, params, moved, [*merge, split], covariance_type)
        if np.isfinite(gain) and gain > 0:
            moves.append(Move(merge, split, moved, gain))
    return sorted(moves, key=lambda m: -m.gain), len(ranked)


#: Fits of more components than this take split-and-merge moves after the default search
#: (:func:`improve`; :func:`bayesgmm.fit_em`, and :func:`bayesgmm.streaming.fit_em_stream`'s start).
SPLIT_MERGE_ABOVE = 4
#: Full EM runs per round of moves, at least: the best moves by their partial EM's gain (as many
#: more as the search's program runs in one call for the same cost).
SPLIT_MERGE_FULL_RUNS = 2


def applies(num_components: int) -> bool:
    """Whether a default search of ``num_components`` takes the moves (above :data:`SPLIT_MERGE_ABOVE`)."""
    return num_components > SPLIT_MERGE_ABOVE


def improve(xs, sample_weight, found, best: int, covariance_type: str, *, tol: float, reg_covar: float):
    """Split-and-merge moves from a search's best run ``best`` (``found``, a
    :class:`bayesgmm._em_core.SearchResult` with ``run_from``) on the standardised rows ``xs``.

    Each round's best moves by their partial EM (:data:`SPLIT_MERGE_FULL_RUNS`, or as many as one
    call of the search's program runs at that cost) run as full EM in one such call. Moves leave
    converged fits only (a run stopped by ``max_iter`` is left as it is, so that ``max_iter``
    bounds the work); the best run is kept when its objective beats the fit's by more than
    ``tol`` per observation, converged and non-degenerate (the moves look for regular optima:
    with ``allow_degenerate`` a split onto two points of galaxies, K = 5, emptied three
    components for a higher likelihood); rounds go on until none is. Returns ``(output, index,
    record)``: the output holding the fit kept, its lane, and a record of the moves kept
    (``[i, j, k, gain]``: components ``i`` and ``j`` merged, ``k`` split; the objective's gain in
    the compute precision), the partial and full runs and their seconds."""
    k = np.shape(found.output.lanes.params.means)[-2]
    return improve_cells(xs, sample_weight, found, [(0, best, k)], covariance_type, tol=tol, reg_covar=reg_covar)[0]


def _first_components(params: GMMParams, k: int, covariance_type: str) -> GMMParams:
    cov = params.covariances if covariance_type == "tied" else params.covariances[:k]
    return GMMParams(params.weights[:k], params.means[:k], cov)


def _padded(params: GMMParams, k_max: int, covariance_type: str) -> GMMParams:
    """``params`` of k components as a program of ``k_max`` takes them: the others inactive, as
    its M-step leaves them (weight 0, mean 0, unit covariance)."""
    k, d = params.means.shape
    extra = k_max - k
    if extra == 0:
        return params
    unit = {"full": np.tile(np.eye(d), (extra, 1, 1)), "diag": np.ones((extra, d)), "spherical": np.ones(extra)}
    cov = params.covariances if covariance_type == "tied" else np.concatenate([params.covariances,
                                                                                 unit[covariance_type]])
    return GMMParams(np.r_[params.weights, np.zeros(extra)], np.r_[params.means, np.zeros((extra, d))], cov)


def improve_cells(xs, sample_weight, found, cells, covariance_type: str, *, tol: float, reg_covar: float):
    """:func:`improve` for several fits of one search at once: ``cells`` lists ``(group, lane, k)``,
    a group's run at ``lane`` of ``found.output`` fitting its first ``k`` components (a
    model-selection grid: every K a group of one program, :func:`bayesgmm.selection.select`).
    Every round gathers each cell's moves and runs them all in the same calls of the search's
    program (``run_from`` with the cells' groups), so the grid compiles nothing more. Returns
    :func:`improve`'s ``(output, index, record)`` for every cell, in order."""
    start = time.perf_counter()
    k_max = np.shape(found.output.lanes.params.means)[-2]
    n_eff = xs.shape[0] if sample_weight is None else float(np.sum(sample_weight))
    threshold = max(tol, 1e-7) * n_eff
    state = [(found.output, lane) for _, lane, _ in cells]
    records = [{"moves": [], "partial_runs": 0, "full_runs": 0, "compile_seconds": 0.0, "run_seconds": 0.0}
               for _ in cells]
    live = list(range(len(cells)))
    width = max(SPLIT_MERGE_FULL_RUNS, found.run_width)
    for _ in range(k_max):  # every move kept raises the objective: few rounds
        tried, owners = [], []
        for c in live:
            out, index = state[c]
            if not bool(out.lanes.converged[index]):  # the moves leave optima: a run short of one is left as it is
                continue
            group, _, k = cells[c]
            params = _first_components(GMMParams(*(np.asarray(a[index], np.float64) for a in out.lanes.params)), k,
                                       covariance_type)
            moves, num_partial = candidates(xs, sample_weight, params, covariance_type, reg_covar)
            records[c]["partial_runs"] += num_partial
            tried += moves[:width]
            owners += [c] * len(moves[:width])
        if not tried:
            break
        # one call a round where one group's moves fit its lanes (fit_em); every cell's moves together
        run = found.run_from([_padded(GMMParams(*move.params), k_max, covariance_type) for move in tried],
                             [cells[c][0] for c in owners])
        lanes = run.output.lanes
        usable = np.asarray(lanes.converged) & ~np.asarray(run.output.degenerate).any(axis=-1)
        kept_any = []
        for c in dict.fromkeys(owners):
            mine = [i for i, owner in enumerate(owners) if owner == c]
            records[c]["full_runs"] += len(mine)
            records[c]["compile_seconds"] += run.compile_seconds / len(set(owners))
            records[c]["run_seconds"] += run.run_seconds / len(set(owners))
            out, index = state[c]
            gains = np.asarray(lanes.objective, np.float64)[mine] - float(out.lanes.objective[index])
            good = usable[mine] & (gains > threshold)
            if good.any():
                best = int(np.argmax(np.where(good, gains, -np.inf)))
                move = tried[mine[best]]
                state[c] = (run.output, mine[best])
                records[c]["moves"].append([*move.merge, move.split, float(gains[best])])
                kept_any.append(c)
        live = kept_any
        if not live:
            break
    seconds = time.perf_counter() - start
    for record in records:  # the host's share: the cells' candidates, and the calls' outside their programs
        record["seconds"] = seconds / len(cells)
        record["host_seconds"] = record["seconds"] - record["compile_seconds"] - record["run_seconds"]
    return [(out, index, record) for (out, index), record in zip(state, records)]

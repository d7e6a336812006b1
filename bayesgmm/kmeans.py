"""k-means and k-means++ in JAX: EM's initialiser and a baseline to compare mixtures against."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _sharding
from ._compile import jit
from .params import (
    check_data,
    check_nonnegative,
    check_num_components,
    check_positive_integers,
    compute_dtype,
    refuse_vast_columns,
    seed_to_key,
    standardisation,
)

__all__ = ["INIT_METHODS", "KMeansResult", "kmeans", "kmeans_plusplus"]


class KMeansResult(NamedTuple):
    """Result of :func:`kmeans`.

    Attributes
    ----------
    centers : np.ndarray (K, D)
        The cluster centres, in the data's units.
    labels : np.ndarray (N,)
        Index of the nearest centre of each training row.
    inertia : float
        Sum of squared Euclidean distances of the training rows to their nearest centre.
    n_iter : int
        Lloyd iterations of the best run (the run kept).
    converged : bool
        Whether the best run's centres stopped moving (squared shift below the tolerance, or no
        row changed its cluster) within ``max_iter`` iterations.
    feature_names : tuple of str, optional
        The training data's column names (a DataFrame's, else ``x0``, ``x1``, ...): :meth:`predict`
        matches a DataFrame's columns to them by name.
    """

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    feature_names: tuple | None = None

    def predict(self, x) -> np.ndarray:
        """Index of the nearest centre for each row of ``x``, shape (N,).

        Parameters
        ----------
        x : array-like (N, D)
            Rows to assign, with the features (and units) of the data the centres were fitted
            on; a DataFrame's columns are matched to :attr:`feature_names` by name (reordered; other
            names are an error).

        Returns
        -------
        np.ndarray (N,)
            Index into ``centers`` of each row's nearest centre (Euclidean distance).
        """
        arr, _ = check_data(x, num_features=self.centers.shape[1], allow_constant=True, takes_missing=False,
                            feature_names=self.feature_names)
        shift, scale = _centre_and_scale(np.asarray(self.centers, np.float64))
        xs = ((arr.astype(np.float64) - shift) / scale).astype(compute_dtype())
        centers = ((np.asarray(self.centers, np.float64) - shift) / scale).astype(compute_dtype())
        return np.asarray(jnp.argmin(sq_distances(jnp.asarray(xs), jnp.asarray(centers)), axis=1))


def _centre_and_scale(arr: np.ndarray):
    """Column means and one common scale (the spherical standardisation; 1 for constant data),
    float64: Euclidean nearest-centre geometry is invariant to both, and the one-product
    distance ``|x|^2 - 2 x.c + |c|^2`` then loses nothing to cancellation."""
    shift, sd = standardisation(arr, "spherical")
    return shift, float(sd[0]) if sd[0] > 0 else 1.0


def sq_distances(x, centers):
    """Squared Euclidean distances, shape (N, K), as one matrix product."""
    d2 = jnp.sum(x * x, 1)[:, None] - 2.0 * x @ centers.T + jnp.sum(centers * centers, 1)[None]
    return jnp.maximum(d2, 0.0)


def num_trials(num_components: int) -> int:
    """Candidates per new centre in greedy k-means++: ``2 + log K`` (scikit-learn's choice)."""
    return 2 + int(math.log(num_components))


def kmeans_plusplus(u, x, num_components: int, *, sample_weight=None, active=None):
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007), as scikit-learn does it.

    Each new centre is the best of ``num_trials(K)`` candidates drawn with probability
    proportional to the (weighted) squared distance to the nearest chosen centre.

    Parameters
    ----------
    u : array (K, num_trials(K))
        Uniform numbers in [0, 1): every draw the seeding makes. Passed in rather than drawn, so
        that the compiled programs hold no random-number generator (whose compilation costs more
        than the seeding itself); :func:`init_noise` draws them on the host from the fit's key.
    x : array (N, D)
        The rows to choose the centres from (the callers pass standardised data); distances
        are Euclidean in these units.
    num_components : int

        K (static).
    sample_weight : array (N,), optional
        Non-negative row weights (bootstrap counts; 0 for padding rows, which are never chosen).
        With 0/1 weights and the zero rows at the end the seeding equals that of the unpadded data.
    active : bool array (K,), optional
        Components to seed; inactive ones (a traced mask, so one program serves every K up to
        ``num_components``) keep a placeholder centre and never influence the others.

    Returns
    -------
    centers : (K, D)
    indices : (K,) rows of ``x`` chosen as centres
    """
    n, d = x.shape
    k = num_components
    u = u.astype(x.dtype)
    if sample_weight is None:
        first = jnp.minimum((u[0, 0] * n).astype(jnp.int32), n - 1)
    else:
        cdf_w = jnp.cumsum(sample_weight)
        first = jnp.searchsorted(cdf_w, u[0, 0] * cdf_w[-1], side="right", method="compare_all")
        first = jnp.minimum(first, n - 1).astype(jnp.int32)
    last_counted = n - 1 if sample_weight is None else n - 1 - jnp.argmax(sample_weight[::-1] > 0)
    closest = jnp.sum((x - x[first]) ** 2, 1)
    centers = jnp.zeros((k, d), x.dtype).at[0].set(x[first])
    indices = jnp.zeros((k,), first.dtype).at[0].set(first)

    def body(c, carry):
        centers, indices, closest = carry
        # inverse-CDF draws of the candidates with probability proportional to w * `closest`
        cdf = jnp.cumsum(closest if sample_weight is None else closest * sample_weight)
        cand = jnp.searchsorted(cdf, u[c] * cdf[-1], side="right", method="compare_all")
        # every distance 0 (K above the distinct points): the last counted row, as scikit-learn
        # takes its last row; the last row itself may be padding (a centre at the data's medians)
        cand = jnp.minimum(cand, last_counted).astype(first.dtype)
        d_cand = jnp.minimum(sq_distances(x, x[cand]).T, closest[None])  # (trials, N)
        best = jnp.argmin(jnp.sum(d_cand, 1) if sample_weight is None else d_cand @ sample_weight)
        new = (centers.at[c].set(x[cand[best]]), indices.at[c].set(cand[best]), d_cand[best])
        if active is None:
            return new
        return jax.tree_util.tree_map(lambda a, b: jnp.where(active[c], a, b), new, carry)

    centers, indices, _ = jax.lax.fori_loop(1, k, body, (centers, indices, closest))
    return centers, indices


def lloyd(x, centers, max_iter: int, tol, *, sample_weight=None, active=None):
    """Lloyd iterations until the squared centre shift is at most ``tol`` or no (weighted) row
    changes its label (scikit-learn's strict convergence: the centres are then a fixed point; at
    ``tol=0`` the shift test alone never stopped, the compiled shift of a fixed point being
    about 1e-32, not 0).

    ``sample_weight`` (N,) weights the rows; ``active`` (K,) masks out centres (see
    :func:`kmeans_plusplus`). Returns ``(centers, labels, inertia, n_iter, converged)``.
    """
    k = centers.shape[0]

    def assign(c):
        d2 = sq_distances(x, c)
        if active is not None:
            d2 = jnp.where(active[None], d2, jnp.inf)
        return jnp.argmin(d2, 1), jnp.min(d2, 1)

    def update(c, labels):
        onehot = jax.nn.one_hot(labels, k, dtype=x.dtype)
        if sample_weight is not None:
            onehot = onehot * sample_weight[:, None]
        counts = jnp.sum(onehot, 0)
        new = (onehot.T @ x) / jnp.maximum(counts, jnp.finfo(x.dtype).tiny)[:, None]
        return jnp.where(counts[:, None] > 0, new, c)  # an empty cluster keeps its centre

    counted = None if sample_weight is None else sample_weight > 0

    def settled(state):  # the shift is small enough, or the last step moved no counted row
        _, _, _, shift, moved = state
        return (shift <= tol) | ~moved

    def cond(state):
        return (state[2] < max_iter) & ~settled(state)

    def body(state):
        c, previous, it, _, _ = state
        labels, _ = assign(c)
        labels = labels.astype(jnp.int32)
        changed = labels != previous
        moved = jnp.any(changed if counted is None else changed & counted)
        new = update(c, labels)
        return new, labels, it + 1, jnp.sum((new - c) ** 2), moved

    start = (centers, jnp.full((x.shape[0],), -1, jnp.int32), jnp.int32(0), jnp.asarray(jnp.inf, x.dtype), jnp.bool_(True))
    final = jax.lax.while_loop(cond, body, start)
    c, n_iter = final[0], final[2]
    labels, d2 = assign(c)
    inertia = jnp.sum(d2) if sample_weight is None else d2 @ sample_weight
    return c, labels, inertia, n_iter, settled(final)


@functools.partial(jit, static_argnames=("num_components",))
def _kmeans_restarts(u, x, row_weight, tol, max_iter, *, num_components):
    """One k-means++ seeding and Lloyd run per row of ``u`` (vmapped). ``x`` holds the data's
    rows padded to their bucket (:func:`bayesgmm._sharding.row_bucket`) and ``row_weight`` is 1
    on the data's rows and 0 on the padding, so with ``max_iter`` traced one program serves
    every N of the bucket and every ``max_iter``."""
    def one(u_one):
        centers, _ = kmeans_plusplus(u_one, x, num_components, sample_weight=row_weight)
        return lloyd(x, centers, max_iter, tol, sample_weight=row_weight)

    return jax.vmap(one)(u)


#: Seedings EM's default search screens (:func:`screened_seedings`) for its 16 starts or fewer, and
#: the rows they are drawn on. Fixed, so that one compiled program serves every N and start count:
#: 32 seedings took 38-46 ms at K = D = 16 (two cores), 128 took 0.63-0.67 s.
SCREEN_CANDIDATES = 32
SCREEN_ROWS = 8192


@functools.partial(jit, static_argnames=("num_components",))
def _seeding_potentials(u, x, sample_weight, *, num_components):
    def one(u_one):
        centers, _ = kmeans_plusplus(u_one, x, num_components, sample_weight=sample_weight)
        nearest_of_first = jax.lax.cummin(sq_distances(x, centers), axis=1)  # (N, K): among the first m
        return sample_weight @ nearest_of_first, centers

    return jax.vmap(one)(u)


def screened_seedings(u, x, num_keep: int, *, sample_weight=None, num_seeded=None) -> np.ndarray:
    """The greedy k-means++ seedings of lowest k-means potential among those ``u`` draws.

    A seeding that leaves a cluster without a centre pays for that cluster's rows in the
    potential (the weighted sum of squared distances to the nearest centre): on 1e5 rows of 16
    well-separated clusters in 16-D about 30% of seedings cover every cluster, and the 10 of
    lowest potential among 64 all did. EM's and VB's default searches screen their starts so
    where they run few of them (:func:`bayesgmm.fit_em`, ``n_init="auto"`` on larger data).

    Parameters
    ----------
    u : array (M, K, num_trials(K))
        Uniform numbers of M seedings (:func:`kmeans_plusplus`).
    x : array (N, D)
        The rows; every row up to :data:`SCREEN_ROWS`, that many evenly spaced rows beyond, are
        seeded and scored (always :data:`SCREEN_ROWS` rows, padded with rows of weight 0, so
        that one compiled program serves every N).
    num_keep : int
        Seedings kept for each entry of ``num_seeded``.
    sample_weight : array (N,), optional
        Non-negative row weights (for the draws and the potential).
    num_seeded : sequence of int, optional
        Numbers m of components seeded (default: all K). A seeding's first m centres are the
        seeding of m components from the same draws (what :func:`kmeans_plusplus` gives with the
        first m components active), scored by their own potential.

    Returns
    -------
    np.ndarray (len(num_seeded), num_keep, K, D)
        For each m, the kept seedings' K centres (the first m of them seeded) in ``x``'s units
        and dtype, lowest potential first (ties in draw order).
    """
    x = np.asarray(x)
    n = x.shape[0]
    k = u.shape[1]
    # always SCREEN_ROWS rows, so that one compiled program serves every N: evenly spaced rows of
    # larger data, or all rows and zero-weight padding (never chosen, not counted) after them
    take = (np.arange(SCREEN_ROWS) * n) // SCREEN_ROWS if n >= SCREEN_ROWS else np.arange(n)
    weight = np.ones(n, x.dtype) if sample_weight is None else np.asarray(sample_weight, x.dtype)
    rows = np.zeros((SCREEN_ROWS, x.shape[1]), x.dtype)
    rows[: take.size] = x[take]
    row_weight = np.zeros(SCREEN_ROWS, x.dtype)
    row_weight[: take.size] = weight[take]
    potential, centers = _seeding_potentials(np.asarray(u, x.dtype), rows, row_weight, num_components=k)
    potential, centers = np.asarray(potential), np.asarray(centers)
    seeded = [k] if num_seeded is None else [int(m) for m in num_seeded]
    return np.stack([centers[np.argsort(potential[:, m - 1], kind="stable")[:num_keep]] for m in seeded])


def screens(init_method: str, num_starts: int, num_kept: int) -> bool:
    """Whether an em-EM search screens its starts (:func:`screened_starts`): k-means++ starts,
    one run continued, and at most half of :data:`SCREEN_CANDIDATES` of them (larger data)."""
    return init_method == "k-means++" and num_kept == 1 < num_starts <= SCREEN_CANDIDATES // 2


def screened_starts(key, x, num_keep: int, num_components: int, num_seeded, *, sample_weight=None) -> np.ndarray:
    """EM's and VB's screened starts: :data:`SCREEN_CANDIDATES` seedings drawn from ``key`` on the
    rows ``x`` (:func:`init_noise`), the ``num_keep`` of lowest potential kept for each entry of
    ``num_seeded`` (:func:`screened_seedings`), as centres (len(num_seeded), num_keep, K, D)."""
    x = np.asarray(x)
    candidates = init_noise(key, "k-means++", SCREEN_CANDIDATES, x.shape[0], num_components, x.dtype)
    return screened_seedings(candidates, x, num_keep, sample_weight=sample_weight, num_seeded=num_seeded)


def kmeans_labels(u, x, num_components: int, max_iter: int = 300, tol: float = 1e-4, *, sample_weight=None, active=None):
    """One k-means++ + Lloyd run inside jit (EM's ``init_params="kmeans"``); returns labels (N,).

    ``u``, ``sample_weight`` and ``active`` as in :func:`kmeans_plusplus`.
    """
    centers, _ = kmeans_plusplus(u, x, num_components, sample_weight=sample_weight, active=active)
    if sample_weight is None:
        var = jnp.var(x, 0)
    else:
        total = jnp.sum(sample_weight)
        mean = (sample_weight @ x) / total
        var = (sample_weight @ (x - mean) ** 2) / total
    tol_abs = tol * jnp.mean(var)
    return lloyd(x, centers, max_iter, tol_abs, sample_weight=sample_weight, active=active)[1]


#: Starting-centre methods of EM's and VB's starts (``init_params``); :func:`kmeans` itself seeds
#: by k-means++ only.
INIT_METHODS = ("k-means++", "kmeans", "random", "random_from_data")


def init_noise_shape(method: str, num_obs: int, num_components: int) -> tuple:
    """Shape of the uniform numbers one start of ``method`` consumes (see :func:`initial_responsibilities`)."""
    if method in ("kmeans", "k-means++"):
        return (num_components, num_trials(num_components))
    if method == "random":
        return (num_obs, num_components)
    return (num_obs,)


def host_rng(key) -> np.random.Generator:
    """A NumPy generator seeded from the bits of a JAX key: the host side of a fit's randomness."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def init_noise(key, method: str, num_starts: int, num_obs: int, num_components: int, dtype,
               num_padded: int | None = None) -> np.ndarray:
    """The uniform numbers of ``num_starts`` starts, shape (num_starts, *init_noise_shape(...)),
    drawn on the host from ``key`` (the same key, the same starts, bit for bit).

    ``num_padded``: rows of the data as the program sees them (a sharded fit pads with weight-0
    rows); per-row numbers are drawn for the ``num_obs`` real rows only and padded with 0.5, so a
    sharded fit starts exactly where the unsharded one does.
    """
    u = host_rng(key).random((num_starts,) + init_noise_shape(method, num_obs, num_components)).astype(dtype)
    pad = 0 if num_padded is None else num_padded - num_obs
    if pad and method in ("random", "random_from_data"):
        u = np.concatenate([u, np.full((num_starts, pad) + u.shape[2:], 0.5, dtype)], axis=1)
    return u


def initial_responsibilities(u, x, num_components: int, method: str, *, sample_weight=None, active=None):
    """Starting responsibilities (N, K) for EM and VB: scikit-learn's four ``init_params``.

    ``"k-means++"``: every row one-hot on its nearest seed (one assignment step: what EM's first
    E-step does from scikit-learn's one-point starts, without their near-singular covariances);
    ``"kmeans"``: one-hot k-means labels (the seeds refined by Lloyd's algorithm); ``"random"``:
    uniform random, normalised; ``"centres"``: one-hot on the nearest of the K centres ``u``
    (K, D) holds (:func:`screened_seedings`); ``"random_from_data"``:
    one-hot on K random points (drawn with probability proportional to ``sample_weight`` when
    given, by the Gumbel-top-k trick). Inactive components (``active``, a traced (K,) mask) get no
    responsibility. ``u`` holds the uniform numbers of the start (:func:`init_noise_shape`).
    """
    n = x.shape[0]
    k = num_components
    dtype = x.dtype
    hot = jnp.arange(k) if active is None else jnp.where(active, jnp.arange(k), k)  # k: dropped
    if method == "kmeans":
        labels = kmeans_labels(u, x, k, sample_weight=sample_weight, active=active)
        return jax.nn.one_hot(labels, k, dtype=dtype)
    if method in ("k-means++", "centres"):  # every row to its nearest seed (what EM's first E-step
        # does from one-point starts, whose covariances are only reg_covar; done here without those
        # near-singular covariances, which cost precision, and an iteration); "centres": the seeds
        # given in u (K, D), screened k-means++ seedings (screened_seedings)
        if method == "centres":
            centers = u.astype(dtype)
        else:
            centers, _ = kmeans_plusplus(u, x, k, sample_weight=sample_weight, active=active)
        d2 = sq_distances(x, centers)
        if active is not None:
            d2 = jnp.where(active[None], d2, jnp.inf)
        return jax.nn.one_hot(jnp.argmin(d2, axis=1), k, dtype=dtype)
    if method == "random":
        r = u.astype(dtype)
        if active is not None:
            r = r * active
        return r / jnp.sum(r, 1, keepdims=True)
    # Gumbel-top-k: K distinct rows drawn with probability proportional to the weights, in order
    weight = jnp.ones(n, dtype) if sample_weight is None else sample_weight
    gumbel = -jnp.log(-jnp.log(jnp.clip(u.astype(dtype), jnp.finfo(dtype).tiny, 1.0 - jnp.finfo(dtype).epsneg)))
    score = jnp.where(weight > 0, jnp.log(jnp.where(weight > 0, weight, 1.0)) + gumbel, -jnp.inf)
    _, idx = jax.lax.top_k(score, k)
    return jnp.zeros((n, k), dtype).at[idx, hot].set(1.0, mode="drop")


def kmeans(x, num_components: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, seed: int = 0) -> KMeansResult:
    """k-means clustering: ``n_init`` k-means++ seedings refined by Lloyd's algorithm, run as one
    vmapped compiled call; the run of lowest inertia is kept.

    A cluster that loses every row keeps its centre (scikit-learn moves it to the farthest rows)
    and is warned about; k-means++ seedings rarely leave one.

    Parameters
    ----------
    x : array (N, D)
        Data.
    num_components : int
        Number of clusters K.
    n_init : int
        Number of seedings.
    max_iter : int
        Lloyd iterations per run.
    tol : float
        Convergence when the squared centre shift is below ``tol`` times the mean feature
        variance (scikit-learn's convention), or when no row changes its cluster.
    seed : int or jax key
        Same seed, same result, bit for bit.

    Returns
    -------
    KMeansResult
    """
    arr, names = check_data(x, allow_constant=True, takes_missing=False)
    refuse_vast_columns(np.ptp(arr.astype(np.float64), axis=0), names)  # distances beyond float64 (NaN centres)
    k = check_num_components(num_components, arr.shape[0])
    check_positive_integers(n_init=n_init, max_iter=max_iter)
    check_nonnegative(tol=tol)
    u = init_noise(seed_to_key(seed), "k-means++", n_init, arr.shape[0], k, np.float64)
    # centred and scaled in float64 first (as EM does): in float32 data far from zero, or on a
    # tiny or huge scale, would lose the distances to cancellation, underflow or overflow
    shift, scale = _centre_and_scale(arr.astype(np.float64))
    xs64 = (arr.astype(np.float64) - shift) / scale
    xs = xs64.astype(compute_dtype())
    # rows padded to their bucket with weight 0: data of another N in the bucket reuse the program
    num_rows = arr.shape[0]
    xj, row_weight = _sharding.shard_rows(_sharding.resolve(None, num_rows), xs, np.ones(num_rows, xs.dtype))
    tol_abs = np.asarray(tol * float(np.mean(np.var(xs64, 0))), xs.dtype)  # in the scaled units (no under/overflow)
    centers, labels, inertia, n_iter, converged = jax.device_get(_kmeans_restarts(
        u.astype(xs.dtype), xj, row_weight, tol_abs, np.int32(max_iter), num_components=k
    ))
    best = int(np.argmin(inertia))
    labels = labels[:, :num_rows]
    found = np.unique(labels[best]).size
    if found < k:  # as scikit-learn: say so when some clusters are left empty
        import warnings

        distinct = np.unique(arr, axis=0).shape[0]
        why = (f"x has only {distinct} distinct point(s)" if distinct < k else "k-means left the rest empty")
        warnings.warn(f"k-means found {found} non-empty cluster(s), fewer than num_components={k}: {why}. Use fewer "
                      "clusters.", UserWarning, stacklevel=2)
    centres, assigned = np.asarray(centers[best], np.float64) * scale + shift, np.asarray(labels[best])
    # the inertia in float64 from the returned centres and labels (the run's own sum is in the
    # compute precision: 75 units off on the galaxy velocities at K = 3 in float32)
    inertia_64 = float(np.sum((arr.astype(np.float64) - centres[assigned]) ** 2))
    return KMeansResult(
        centres,
        assigned,
        inertia_64,
        int(n_iter[best]),
        bool(converged[best]),
        tuple(names),
    )

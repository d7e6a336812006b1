"""Gibbs sampling of the one model by conjugate data augmentation.

The classic sampler for mixtures (Diebolt & Robert 1994): the labels ``z`` are sampled along with
the parameters, and every full conditional of :func:`bayesgmm.model.gmm_model` is a known
distribution, so each sweep draws exactly from them:

.. code-block:: text

    z_n | theta, x        ~ Categorical(pi_k N(x_n | mu_k, Sigma_k) / sum_j ...)
    pi | z                ~ Dirichlet(alpha + N_k)
                            (stick-breaking: v_k | z ~ Beta(a_k + N_k, b_k + sum_{j>k} N_j))
    Sigma_k | z, x        ~ Inverse-Wishart(nu0 + N_k, Psi0 + S_k + kappa0 N_k/kappa_k (xbar_k - m0)(...)^T)
    mu_k | Sigma_k, z, x  ~ N((kappa0 m0 + N_k xbar_k) / kappa_k, Sigma_k / kappa_k),   kappa_k = kappa0 + N_k

(``S_k`` the scatter of the rows labelled k about their mean ``xbar_k``; ``Sigma_k`` is drawn
with ``mu_k`` integrated out, then ``mu_k`` given it: a blocked draw of the pair.) The other
structures use the same prior's analogues: ``diag`` draws each variance from an inverse gamma with
shape ``(nu0 + N_k)/2``, ``spherical`` one variance per component with shape
``(nu0 + N_k D)/2``, and ``tied`` one covariance from ``IW(nu0 + N, Psi0 + sum_k ...)``.
The stationary distribution is the model's posterior, the one NUTS samples with ``z`` summed out
(:mod:`bayesgmm.mcmc`); the tests compare the two, check the K = 1 case against the closed-form
posterior, and run simulation-based calibration.

Two compiled programs per row bucket (the data padded with rows of weight 0, as EM and VB do, so
a new N in the bucket reuses them; the samplers' buckets are
:func:`bayesgmm._sharding.sampler_row_bucket`), D, K, structure and sampler settings: the MAP
start (k-means and MAP-EM, as NUTS) with the chains' starts, and every chain's sweeps as one
``lax.fori_loop`` over a pure step function (``num_warmup`` and ``num_samples`` traced, the draws
written to a buffer of ``num_samples``' power-of-two bucket, so other lengths reuse the program),
the chains ``vmap``-ed. As for NUTS, the starts'
program compiles on a second thread while the chains' program is traced and compiled (a first fit
on Old Faithful takes about a second less); on a machine with several cores, disjoint sets of
chains run on as many threads at once (:func:`bayesgmm._chains.run_chain_groups`, the same draws
bit for bit when each thread runs two or more chains; with one chain a thread, within a unit in
the last place). Each sweep evaluates the mixture density once: the component log densities that
give the next labels also give this draw's ``log p(x, theta)``. Afterwards, in NumPy: back to the
original scale, relabelling to the MAP pivot
(:func:`bayesgmm.labels.align_draws`) and R-hat/ESS.

Precision: float32 unless ``jax_enable_x64`` is on, whatever ``x``'s dtype; results are NumPy
float64 on the original scale.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from . import _missing, _numerics, _stats, _sticks
from . import _numpyro_common as shared
from ._chains import carry_shapes, chain_starts, concurrent_runs, finish_draws, lapack_flops_per_chain, run_chain_groups, sampler_result
from ._compile import (
    CompiledProgram,
    length_bucket,
    progress,
    small_rows_once,
    step_buffers,
    tick_every,
    tick_interval,
    write_step,
)
from ._sharding import RowSharding, pad_observed, sampler_row_bucket, shard_rows
from .params import (
    GMMParams,
    Prior,
    PriorArrays,
    check_bool,
    check_covariance_type,
    check_data,
    check_int,
    check_num_components,
    check_prior,
    mark_missing,
    observed_entry_counts,
    seed_to_key,
)
from .results import FitResult

__all__ = ["fit_gibbs", "gibbs_sweep", "sample_assignments", "sample_parameters"]


# ----------------------------------------------------------------------------------------------
# The full conditionals (pure JAX, standardised scale)
# ----------------------------------------------------------------------------------------------
def sample_assignments(key, log_joint):
    """Draw ``z_n`` from its full conditional, given ``log pi_k + log N(x_n | mu_k, Sigma_k)`` (N, K).

    Parameters
    ----------
    key : jax key
        Random key.
    log_joint : array (N, K)
        Each row's unnormalised log probabilities of the components, ``log pi_k + log N(x_n |
        mu_k, Sigma_k)``; the normalisation over ``k`` is done here.

    Returns
    -------
    int array (N,)
        One component per row, drawn independently.
    """
    return jax.random.categorical(key, log_joint, axis=-1)


def _log_gamma_draws(key, shapes):
    """``log Gamma(shape, 1)`` draws for every array in ``shapes``, in one call.

    One ``jax.random.loggamma`` over all of them: each call of JAX's gamma sampler (a rejection
    loop) costs seconds of compilation, and the log scale keeps shapes far below 1 (a sparse
    Dirichlet) from underflowing to zero.
    """
    flat = jnp.concatenate([jnp.ravel(a) for a in shapes])
    draws = jax.random.loggamma(key, flat, dtype=flat.dtype)
    out, start = [], 0
    for a in shapes:
        out.append(draws[start : start + a.size].reshape(a.shape))
        start += a.size
    return out


def inverse_wishart_draw(log_gamma, key, scale):
    """``IW(df, scale)`` draws by Bartlett's decomposition, ``scale`` (..., D, D), given
    ``log_gamma`` (..., D): ``log Gamma((df - i)/2)`` draws, i = 0..D-1 (so ``2 exp(.)`` are the
    chi-square variates ``A_ii^2``).

    With ``W = A A^T ~ Wishart(df, I)`` (A lower triangular, ``A_ii^2 ~ chi2(df - i)``,
    ``A_ij ~ N(0, 1)`` below the diagonal), ``W^-1 ~ IW(df, I)`` and for ``scale = C C^T``,
    ``C W^-1 C^T = M^T M ~ IW(df, scale)`` with ``M = A^-1 C^T``. Returns the draw and ``M``
    (a square root of it: ``M^T u``, u standard normal, has the draw as its covariance).
    """
    d = scale.shape[-1]
    a = jnp.tril(jax.random.normal(key, scale.shape, dtype=scale.dtype), -1)
    a = a + jnp.sqrt(2.0 * jnp.exp(log_gamma))[..., None] * jnp.eye(d, dtype=scale.dtype)
    c = jnp.linalg.cholesky(scale)
    m = solve_triangular(a, jnp.swapaxes(c, -1, -2), lower=True)
    return _stats.symmetrise(jnp.swapaxes(m, -1, -2) @ m), m


def _half_dfs(df, d: int, dtype):
    """``(df - i)/2`` for i = 0..D-1: the shapes of the Bartlett chi-square variates."""
    return 0.5 * (df[..., None] - jnp.arange(d, dtype=dtype))


def sample_parameters(key, xs, z, prior: PriorArrays, num_components: int, covariance_type: str,
                      row_weight=None) -> GMMParams:
    """Draw ``(pi, mu, Sigma)`` from their full conditional given the labels ``z`` (N,).

    Parameters
    ----------
    key : jax key
        Random key (split here for the weights, the covariances and the means).
    xs : array (N, D)
        Data (standardised in :func:`fit_gibbs`).
    z : int array (N,)
        Component labels.
    prior : PriorArrays
        The conjugate prior on the scale of ``xs``.
    num_components : int
        K (static).
    covariance_type : str
        Structure (static).
    row_weight : array (N,), optional
        1 for the data's rows, 0 for padding rows (which then count for nothing).

    Returns
    -------
    GMMParams
        An exact draw; an empty component's parameters come from the prior.
    """
    alpha, m0, kappa0, nu0, psi = prior
    k, ct = num_components, covariance_type
    dtype = xs.dtype
    labels = jax.nn.one_hot(z, k, dtype=dtype, axis=0)  # (K, N), as the E-step's responsibilities
    if row_weight is not None:
        labels = labels * row_weight[None]
    nk = jnp.sum(labels, axis=1)
    _, xbar, scatter = _stats.stats_precise(labels, xs, ct)
    kappa_n = kappa0 + nk
    centre = (kappa0 * m0[None] + nk[:, None] * xbar) / kappa_n[:, None]
    dev = xbar - m0[None]
    shrink = kappa0 * nk / kappa_n
    d = xs.shape[1]
    key_gamma, key_lower, key_mu = jax.random.split(key, 3)
    if _sticks.is_sticks(alpha):  # Beta sticks: two gamma shapes each
        sticks = _sticks.posterior(alpha, nk)
        weight_shapes = [sticks[:, 0], sticks[:, 1]]
    else:
        weight_shapes = [jnp.broadcast_to(alpha, (k,)) + nk]
    if ct == "full":
        shapes = _half_dfs(nu0 + nk, d, dtype)
    elif ct == "tied":
        shapes = _half_dfs(jnp.reshape(nu0 + jnp.sum(nk), (1,)), d, dtype)
    elif ct == "diag":
        shapes = 0.5 * (nu0 + nk)[:, None] * jnp.ones_like(xbar)
    else:
        shapes = 0.5 * (nu0 + nk * d)
    *log_w, log_g = _log_gamma_draws(key_gamma, weight_shapes + [shapes])
    if k == 1:
        weights = jnp.ones(1, dtype)
    elif len(log_w) == 2:  # v_k = G_a / (G_a + G_b) ~ Beta(a, b), composed into weights
        weights = _sticks.weights_from_log_gammas(*log_w)
    else:
        weights = jax.nn.softmax(log_w[0])  # a Dirichlet draw
    if ct in ("full", "tied"):
        spread = scatter + shrink[:, None, None] * dev[:, :, None] * dev[:, None, :]
        # the means through the draw's own square root M (cov = M^T M): a Cholesky factor of the
        # drawn covariance was NaN in float32 where it was nearly singular (features correlated at
        # 0.9999: non-finite draws, and a crash in the float64 recomputation of their lp)
        if ct == "full":
            cov, root = inverse_wishart_draw(log_g, key_lower, psi[None] + spread)
        else:
            cov, root = inverse_wishart_draw(log_g[0], key_lower, psi + jnp.sum(spread, axis=0))
            root = jnp.broadcast_to(root, (k, d, d))
        noise = jax.random.normal(key_mu, xbar.shape, dtype) / jnp.sqrt(kappa_n)[:, None]
        means = centre + jnp.einsum("kji,kj->ki", root, noise)
        return GMMParams(weights, means, cov)
    if ct == "diag":
        cov = 0.5 * (psi[None] + scatter + shrink[:, None] * dev**2) * jnp.exp(-log_g)  # inverse gamma
        sd_mean = jnp.sqrt(cov / kappa_n[:, None])
    else:
        cov = 0.5 * (psi + scatter + shrink * jnp.sum(dev**2, axis=-1)) * jnp.exp(-log_g)
        sd_mean = jnp.sqrt(cov / kappa_n)[:, None]
    means = centre + sd_mean * jax.random.normal(key_mu, xbar.shape, dtype)
    return GMMParams(weights, means, cov)


class SweepState(NamedTuple):
    """A chain's state between sweeps: the parameters and their component log joint (N, K)."""

    params: GMMParams
    log_joint: jax.Array


def _log_joint(xs, params: GMMParams, covariance_type: str, observed=None):
    """``log pi_k + log N(x_n | k)`` (N, K); with ``observed`` (missing values), of each row's
    observed columns."""
    if observed is None:
        return _numerics.log_joint_components(xs, *params, covariance_type)
    return _missing.observed_log_density(xs, observed, params, covariance_type) + jnp.log(params.weights)[None]


def start_state(xs, params: GMMParams, covariance_type: str, observed=None) -> SweepState:
    return SweepState(params, _log_joint(xs, params, covariance_type, observed))


def sample_missing(key, xs, observed, z, params: GMMParams, covariance_type: str):
    """Draw the missing entries from ``p(x_m | x_o, z, theta)`` (the conditional Gaussian of each
    row's component): the data augmentation step of the missing values. Observed entries stay."""
    _, completed, conditional = _missing.conditional_components(xs, observed, params, covariance_type)
    rows = jnp.arange(xs.shape[0])
    mean, cond = completed[rows, z], conditional[rows, z]
    noise = jax.random.normal(key, xs.shape, xs.dtype)
    o = observed.astype(xs.dtype)
    if covariance_type in ("diag", "spherical"):
        return mean + jnp.sqrt(cond) * noise * (1.0 - o)
    # the conditional covariance is zero on the observed block: the identity there keeps its
    # Cholesky factor defined, and the observed entries get no noise
    chol = jnp.linalg.cholesky(cond + o[:, :, None] * jnp.eye(xs.shape[1], dtype=xs.dtype))
    return mean + (1.0 - o) * jnp.einsum("nij,nj->ni", chol, noise)


def gibbs_sweep(key, state: SweepState, xs, prior: PriorArrays, num_components: int, covariance_type: str,
                row_weight=None, observed=None):
    """One sweep: labels given the parameters, then the parameters given the labels.

    With missing values (``observed``) the labels are drawn given the observed entries, the
    missing entries given the labels (data augmentation), and the parameters given both: a
    blocked Gibbs sweep of ``(z, x_m)`` and ``theta``.

    Parameters
    ----------
    key : jax key
        Random key of this sweep.
    state : SweepState
        The chain's state after the previous sweep: the parameters and their component log
        joint ``log pi_k + log N(x_n | k)`` (N, K), from which the labels are drawn.
    xs : array (N, D)
        Data (standardised in :func:`fit_gibbs`); placeholders where ``observed`` is False.
    prior : PriorArrays
        The conjugate prior on the scale of ``xs``.
    num_components : int
        K (static).
    covariance_type : str
        Structure (static).
    row_weight : array (N,), optional
        1 for the data's rows, 0 for padding rows (which then count for nothing).
    observed : bool array (N, D), optional
        False marks a missing entry; None: every entry is observed.

    Returns
    -------
    tuple
        ``(new_state, (params, log_posterior, num_nonempty))``: the state for the next sweep;
        the new parameters; ``log p(x, theta)`` of the new parameters (z summed out); and the
        number of components the sampled labels occupy.
    """
    from . import model  # NumPyro's distributions (the prior): imported when the sweep is traced

    key_z, key_theta = jax.random.split(key)
    if observed is not None:
        key_z, key_x = jax.random.split(key_z)
    z = sample_assignments(key_z, state.log_joint)
    completed = xs if observed is None else sample_missing(key_x, xs, observed, z, state.params, covariance_type)
    params = sample_parameters(key_theta, completed, z, prior, num_components, covariance_type, row_weight)
    # every later batched LAPACK call after the draw's last (the means' factor; _numerics.in_turn)
    log_joint = _log_joint(xs, _numerics.in_turn(params.means, params), covariance_type, observed)
    per_row = jax.nn.logsumexp(log_joint, axis=-1)
    log_lik = jnp.sum(per_row if row_weight is None else row_weight * per_row)
    # the prior's batched LAPACK calls after the likelihood's (_numerics.in_turn; chains x K
    # factorisations are split over XLA's thread pool, and two such calls at once can hang)
    # weights that underflowed to 0 (a sparse Dirichlet's empty components) floored: lp stays finite
    floored = params._replace(weights=_numerics.floored_weights(params.weights))
    lp = log_lik + model.log_prior(_numerics.in_turn(log_lik, floored), prior, covariance_type)
    num_nonempty = jnp.sum(jnp.bincount(z, weights=row_weight, length=num_components) > 0)
    # the draw recorded with those floored weights (as NUTS records them), so that its lp and the lp
    # ArviZ's conversion computes from it agree (the conversion floors at float64's tiny: 620 nats
    # apart per empty component); the chain itself goes on from the weights drawn
    return SweepState(params, log_joint), (floored, lp, num_nonempty)


# ----------------------------------------------------------------------------------------------
# The compiled sampler
# ----------------------------------------------------------------------------------------------
class _Config(NamedTuple):
    """Static choices of one sampler program."""

    num_components: int
    covariance_type: str
    sample_len: int  # the draws' buffer (_compile.length_bucket); num_warmup and num_samples are traced
    num_chains: int
    progress_bar: bool
    chains_per_run: int | None = None  # chains of one run (runs go on threads, _chains.run_chain_groups); None: all


class _StartConfig(NamedTuple):
    """Static choices of the starting program (shared by sampler settings that differ in the rest)."""

    num_components: int
    covariance_type: str
    reorder: bool = True  # the start to the weight prior's most probable labelling (shared.weights_ordered)
    prune: bool = False  # the chains start from shared.pruned_start (Dirichlet-process weights)


@shared.without_validation
def _start_program(xs, row_weight, prior, key, use_user_init, user_init, *, config: _StartConfig):
    """The MAP pivot and every chain's start (the user's, or the pivot): a program of its own, which
    compiles on a second thread while the chains' program is traced and compiled
    (:func:`bayesgmm._chains.run_chain_groups`)."""
    k, ct = config.num_components, config.covariance_type
    key_map = jax.random.split(key)[0]
    pivot = shared.map_start(shared.map_start_noise(key_map, k, xs.dtype), xs, prior, k, ct, row_weight,
                             reorder=config.reorder)
    start = pivot
    if config.prune:  # only the components the data support occupied (the pivot keeps all K)
        start = shared.best_labelling(shared.pruned_start(pivot, xs, prior, ct, row_weight), prior.concentration, ct)
    starts = jax.tree_util.tree_map(
        lambda p, u: jnp.where(use_user_init, u, jnp.broadcast_to(p, u.shape)), start, user_init
    )
    return pivot, starts


def _start_shapes(xs, row_weight, prior, key, use_user_init, user_init, *, config: _StartConfig):
    """:func:`_start_program`'s outputs' shapes and dtypes without tracing it, so that the chains'
    program compiles first."""
    starts = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, xs.dtype), user_init)
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), starts), starts


def _fresh_chain(chain_key, params0, xs, prior, row_weight, observed, config: _Config):
    """A chain's carry before its first sweep: its state at ``params0`` and empty draw buffers."""
    state = start_state(xs, params0, config.covariance_type, observed)
    shapes = jax.eval_shape(lambda: gibbs_sweep(chain_key, state, xs, prior, config.num_components,
                                                config.covariance_type, row_weight, observed)[1])
    return state, step_buffers(shapes, config.sample_len)


def _chain_keys(key, config: _Config):
    return jax.random.split(jax.random.split(key)[1], config.num_chains)


def _carry_shapes(xs, row_weight, prior, key, observed, num_warmup, num_samples, starts, *, config: _Config):
    """The shapes of a run's carry (:func:`_chains_program`), from a trace of a chain's start once
    (:func:`bayesgmm._chains.carry_shapes`)."""
    c = config.chains_per_run or config.num_chains

    def trace():
        def fresh(key, starts, xs, prior, row_weight, observed):
            keys = _chain_keys(key, config)[:c]
            return jax.vmap(lambda k, p: tuple(jax.tree_util.tree_leaves(
                _fresh_chain(k, p, xs, prior, row_weight, observed, config))))(keys, starts)

        each = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((c,) + tuple(a.shape[1:]), a.dtype), starts)
        return jax.eval_shape(fresh, key, each, xs, prior, row_weight, observed)

    return carry_shapes("gibbs", config, (xs, row_weight, prior, key, observed, num_warmup, starts), trace)


@shared.without_validation
def _chains_program(xs, row_weight, prior, key, observed, num_warmup, num_samples, starts, first_chain, carry, begin,
                    end, *, config: _Config):
    """Sweeps ``begin`` to ``end`` (traced) of every chain (``vmap``-ed) from its ``carry`` (the
    first call, ``begin`` 0, starts afresh from ``starts``, :func:`_start_program`'s); with
    ``config.chains_per_run`` only the chains from ``first_chain`` (traced) on, with the starts and
    keys of the run of every chain. Returns the carry (its leaves) and the draw buffers: a run
    goes in calls of about a second (:func:`bayesgmm._chains.in_segments`), with the same draws
    as in one call, as NUTS's.

    ``num_warmup`` and ``num_samples`` are traced: one loop runs every sweep (sweep ``i`` draws
    with the chain's key folded with ``i``) and writes the kept ones to buffers of
    ``config.sample_len`` draws (the first ``num_samples`` are the draws), so that other lengths
    in the bucket reuse the program."""
    total = num_warmup + num_samples
    every = tick_interval(total)

    def one_chain(chain_key, params0, carry):
        fresh = _fresh_chain(chain_key, params0, xs, prior, row_weight, observed, config)
        treedef = jax.tree_util.tree_structure(fresh)  # the carry passes the program's boundary as its leaves
        carry = jax.tree_util.tree_map(lambda a, b: jnp.where(begin == 0, a, b), fresh,
                                       jax.tree_util.tree_unflatten(treedef, carry))

        def step(i, carry):
            state, draws = carry
            state, out = gibbs_sweep(jax.random.fold_in(chain_key, i), state, xs, prior, config.num_components,
                                     config.covariance_type, row_weight, observed)
            if config.progress_bar:
                tick_every("gibbs", i, every)
            # a warmup sweep writes the first slot, which the first kept sweep overwrites
            return state, write_step(draws, jnp.maximum(i - num_warmup, 0), out)

        carry = jax.lax.fori_loop(begin, end, step, carry)
        return tuple(jax.tree_util.tree_leaves(carry)), carry[1]

    chain_keys = _chain_keys(key, config)
    if config.chains_per_run is not None:  # this run's chains
        starts, chain_keys = jax.tree_util.tree_map(
            lambda a: jax.lax.dynamic_slice_in_dim(a, first_chain, config.chains_per_run), (starts, chain_keys))
    carry, draws = jax.vmap(one_chain)(chain_keys, starts, carry)
    return (carry, *draws)


#: The starts and the sampler, each compiled ahead of time once per data shape, dtype and settings.
START_PROGRAM = CompiledProgram(_start_program, static_argnames=("config",), fast_compile=small_rows_once,
                                out_shapes=_start_shapes)
PROGRAM = CompiledProgram(
    _chains_program, static_argnames=("config",), fast_compile=False,  # sampling runs faster with XLA's default emitters
    memory_advice="Use fewer chains or draws, or a subsample (every sweep evaluates every row).",
)


def fit_gibbs(
    x,
    num_components: int,
    *,
    covariance_type: str = "full",
    prior: Prior | None = None,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    init="map",
    seed=0,
    progress_bar: bool = False,
    align: bool = True,
    missing: str = "error",
) -> FitResult:
    """Sample the posterior of the Bayesian Gaussian mixture by conjugate Gibbs sampling.

    Parameters
    ----------
    x : array-like (N, D) or (N,)
        Data; DataFrame column names become feature names.
    num_components : int
        K.
    covariance_type : {"full", "diag", "spherical", "tied"}
        Covariance structure; every one has a conjugate full conditional (module docstring).
    prior : Prior, optional
        The conjugate prior; ``Prior.default(x, K)`` (mclust's weak prior) when None.

    num_warmup, num_samples : int
        Sweeps discarded as burn-in and sweeps kept, per chain. A sweep is cheap (one pass over
        the rows) but its draws are more autocorrelated than NUTS's; check ``min_ess_bulk``.
        Both are traced: other lengths (``num_samples`` up to the same power of two) reuse the
        compiled program, and sweep ``i`` of a chain is the same sweep whatever the lengths.
    num_chains : int
        Chains, run ``vmap``-ed in one program.
    init : "map", GMMParams or sequence of GMMParams
        ``"map"`` (default): every chain starts at the MAP solution (k-means, then MAP-EM), as
        NUTS does; the chains then differ through their labels' draws. Under Dirichlet-process
        weights the chains start from it with only the components the data support occupied
        (the smallest removed and the rest refitted, K - 1 times, keeping the best BIC): a
        blocked sweep rarely empties an occupied component. A ``GMMParams``
        (original scale) starts every chain there; a sequence of ``num_chains`` gives one each.
    seed : int or jax key
        Same seed, same draws, bit for bit.
    progress_bar : bool
        A tqdm bar of the sweeps, advanced from inside the compiled program (draws unchanged).
    missing : {"error", "marginalize"}
        ``"marginalize"``: NaN entries are missing at random; each sweep draws the labels given
        the observed entries, then the missing entries from their conditional Gaussian given the
        labels (data augmentation), then the parameters: the chain's stationary distribution is
        the posterior of the observed-data likelihood. The default refuses NaN.
    align : bool
        Relabel every draw to the MAP pivot (:func:`bayesgmm.labels.align_draws`), or to the
        draw of highest log posterior under stick-breaking weights, an uneven Dirichlet or a
        concentration below 1, as :func:`bayesgmm.fit_mcmc` (``info["aligned_to"]``).

    Returns
    -------
    FitResult
        ``method="gibbs"``, shaped as NUTS's: ``draws`` (aligned) and ``raw_draws`` with axes
        (chains, draws); the point estimate is the posterior mean of the aligned draws and
        ``log_likelihood`` the training log-likelihood there; ``trace`` is ``log p(x, theta)``
        of every draw (``objective="log_posterior"``). ``sample_stats``: ``lp`` (as NUTS's: that of
        the aligned draw) and
        ``num_nonempty`` (components the sampled labels occupy). ``converged`` is True when the
        max R-hat is below 1.01 and the min bulk ESS at least 100 per chain (else a
        ``ConvergenceWarning`` says which). ``info``: ``min_ess_bulk``, ``max_rhat``,
        ``label_switch_fraction``, ``aligned_to``, ``compile_seconds``, ``run_seconds``, ``fit_seconds`` and
        the settings.

    Warns
    -----
    ConvergenceWarning
        Max R-hat >= 1.01 or min bulk ESS below 100 per chain.

    Raises
    ------
    ValueError
        Invalid data, settings, prior or starting values.

    See Also
    --------
    bayesgmm.fit_mcmc : NUTS on the same model and prior, z summed out.
    """
    arr, names = check_data(x, missing=missing)
    n, d = arr.shape
    k = check_num_components(num_components, n)
    check_covariance_type(covariance_type)
    num_warmup = check_int("num_warmup", num_warmup, 0)
    num_samples = check_int("num_samples", num_samples, 1)
    align = check_bool("align", align)
    num_chains = check_int("num_chains", num_chains, 1)
    if not isinstance(progress_bar, (bool, np.bool_)):
        raise ValueError(f"progress_bar must be True or False, got {progress_bar!r}.")
    prior = check_prior(prior, d, k, default_from=arr)
    std = shared.standardise(arr, k, covariance_type, prior)
    if isinstance(init, str) and init == "map":
        user_init = shared.placeholder_init(k, d, covariance_type, std.dtype, num_chains)
    elif isinstance(init, str):
        raise ValueError(f"init must be 'map', a GMMParams or a sequence of them; got {init!r}.")
    else:
        user_init = chain_starts(init, k, d, num_chains, covariance_type, std.shift, std.sd, std.dtype)
    # runs of chains at once, one thread each (one run where LAPACK calls could wait on each other)
    # with missing values, every row of the bucket is factored (not only those with a missing value)
    runs = concurrent_runs(num_chains, lapack_flops_per_chain(
        k, d, sampler_row_bucket(n, coarse=True) if np.isnan(arr).any() else 0))
    # the lengths are traced (the draws fill a buffer of their bucket): other lengths reuse the program
    config = _Config(k, covariance_type, length_bucket(num_samples), num_chains, bool(progress_bar),
                     num_chains // runs if runs > 1 else None)
    steps = num_warmup + num_samples
    # each run's vmapped chains tick once per sweep
    with progress("gibbs", steps * runs, enabled=bool(progress_bar), desc=f"Gibbs {num_chains} chain(s) x {steps} sweeps"):
        # padded to the row bucket (zero rows of weight 0): a new N in the bucket reuses the program
        filled, observed = mark_missing(std.xs)  # missing values: placeholders, marked
        std = std._replace(xs=filled)
        xs, row_weight = shard_rows(RowSharding(None, n, sampler_row_bucket(n, coarse=True)), std.xs, None)
        row_weight = np.ones(n, xs.dtype) if row_weight is None else row_weight  # one program with or without padding
        observed = pad_observed(observed, xs.shape[0])
        key = seed_to_key(seed)
        start = (START_PROGRAM, (xs, row_weight, std.prior_arrays, key, np.bool_(not isinstance(init, str)), user_init),
                 _StartConfig(k, covariance_type, shared.weights_ordered(std.prior_arrays.concentration),
                              prune=_sticks.is_sticks(std.prior_arrays.concentration)))
        lengths = (np.int32(num_warmup), np.int32(num_samples))
        program_args = (xs, row_weight, std.prior_arrays, key, observed, *lengths)
        timed = run_chain_groups(PROGRAM, program_args, config, runs, start=start, steps=steps,
                                 carry_shapes=lambda starts: _carry_shapes(*program_args, *starts, config=config))
    pivot_std, *chains = timed.outputs
    draws_std, lp, nonempty = jax.tree_util.tree_map(lambda a: np.asarray(a)[:, :num_samples], chains)

    done = finish_draws(pivot_std, draws_std, lp, std.shift, std.sd, n, covariance_type, align,
                        std.prior_arrays.concentration, observed_entry_counts(arr), data=arr, prior=prior)
    stats = {"lp": done.log_posterior, "num_nonempty": np.asarray(nonempty, np.int64)}
    return sampler_result(
        "gibbs", "Gibbs", arr=arr, feature_names=names, prior=prior, covariance_type=covariance_type, done=done,
        sample_stats=stats, timed=timed, seed=seed, num_warmup=num_warmup, num_samples=num_samples,
        num_chains=num_chains, init="map" if isinstance(init, str) else "user", dtype=std.dtype,
        warmup_share=num_warmup / (num_warmup + num_samples), info={},
    )

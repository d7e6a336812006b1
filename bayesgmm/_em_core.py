"""The EM iteration itself: pure init / step / run over immutable pytrees, and the batched program.

Shared by :mod:`bayesgmm.em` (in-memory fits, model-selection grids, bootstraps) and
:mod:`bayesgmm.streaming` (its in-memory initialisation), which never import each other.

Structure (after blackjax): a pure :func:`em_init` and :func:`em_step` over an immutable
:class:`EMState` and the fitted :class:`EMProblem`; a ``lax.while_loop`` driver
(:func:`run_em`); a batch of runs ``vmap``-ped into one program (:data:`PROGRAM`, compiled
ahead of time so that compile and run times are reported apart). Everything here works on the
standardised scale; units are the callers' business.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import _stats
from ._compile import CompiledProgram
from .kmeans import initial_responsibilities
from .model import log_prior
from .params import GMMParams

# Incremented each time the EM driver is traced; tests use it to prove "compile once per shape".
_TRACE_COUNT = {"fit": 0}


class EMState(NamedTuple):
    """Loop carry of the EM driver (standardised scale).

    ``objective`` is the mean per-observation objective at ``params`` *before* the last M-step
    (scikit-learn's convention for the tolerance test); ``trace[t]`` is the total objective
    after ``t`` M-steps.
    """

    params: GMMParams
    objective: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    trace: jax.Array


class EMConfig(NamedTuple):
    """Static choices of one EM program."""

    num_components: int
    num_features: int
    covariance_type: str
    hard: bool
    use_prior: bool


class EMProblem(NamedTuple):
    """What one EM run fits (a pytree; every field traced).

    Attributes
    ----------
    z : (N, p) exponential-family features of the standardised data (:func:`_stats.suff_features`)
    sample_weight : (N,) row weights, or None (all 1). Bootstrap counts; 0 for padding rows.
    active : (K,) bool, or None (all active). Components switched off, so that fits of every
        K' <= K run in one program (model-selection grids).
    prior : PriorArrays or None (maximum likelihood)
    tol, reg_covar : scalars
    """

    z: jax.Array
    sample_weight: jax.Array | None
    active: jax.Array | None
    prior: object
    tol: jax.Array
    reg_covar: jax.Array

    @property
    def num_obs(self):
        return self.z.shape[0] if self.sample_weight is None else jnp.sum(self.sample_weight)


class EMOutput(NamedTuple):
    """Per restart: final state, objective, marginal log-likelihood, expected counts N_k and the
    entropy of the responsibilities, -sum r log r (for ICL), all on the standardised scale."""

    state: EMState
    objective: jax.Array
    log_likelihood: jax.Array
    counts: jax.Array
    entropy: jax.Array


def _weighted_sum(values, sample_weight):
    return jnp.sum(values) if sample_weight is None else values @ sample_weight


def objective_terms(params: GMMParams, problem: EMProblem, config: EMConfig):
    """E-step: responsibilities (N, K) and the total objective (log-likelihood [+ log prior])."""
    theta = _stats.mask_components(_stats.natural_params(params, config.covariance_type), problem.active)
    resp, ll = _stats.e_step(problem.z, theta, hard=config.hard)
    total = _weighted_sum(ll, problem.sample_weight)
    if config.use_prior:
        total = total + log_prior(params, problem.prior, config.covariance_type, problem.active)
    return resp, total


def m_step(resp, problem: EMProblem, config: EMConfig) -> GMMParams:
    """Closed-form M-step from responsibilities (weighted by ``sample_weight``)."""
    if problem.sample_weight is not None:
        resp = resp * problem.sample_weight[:, None]
    stats = _stats.suff_stats(resp, problem.z, config.num_features, config.covariance_type)
    prior = problem.prior if config.use_prior else None
    return _stats.m_step(*stats, config.covariance_type, problem.reg_covar, prior, problem.active)


def em_init(params: GMMParams, max_iter: int) -> EMState:
    dtype = params.means.dtype
    return EMState(
        params=params,
        objective=jnp.asarray(-jnp.inf, dtype),
        n_iter=jnp.int32(0),
        converged=jnp.asarray(False),
        trace=jnp.full((max_iter + 1,), jnp.nan, dtype),
    )


def em_step(state: EMState, problem: EMProblem, config: EMConfig) -> EMState:
    """One E-step and M-step; the tolerance test is on the change of the mean objective."""
    resp, total = objective_terms(state.params, problem, config)
    new_params = m_step(resp, problem, config)
    mean_obj = total / problem.num_obs
    converged = jnp.abs(mean_obj - state.objective) < problem.tol
    return EMState(
        params=new_params,
        objective=mean_obj,
        n_iter=state.n_iter + 1,
        converged=converged,
        trace=state.trace.at[state.n_iter].set(total),
    )


def run_em(params0: GMMParams, problem: EMProblem, config: EMConfig, max_iter: int) -> EMOutput:
    """EM from ``params0`` until ``tol`` or ``max_iter``: a ``lax.while_loop`` (traceable, vmappable)."""
    state = jax.lax.while_loop(
        lambda s: (s.n_iter < max_iter) & ~s.converged,
        lambda s: em_step(s, problem, config),
        em_init(params0, max_iter),
    )
    resp, final = objective_terms(state.params, problem, config)
    trace = state.trace.at[state.n_iter].set(final)
    log_lik = final
    if config.hard or config.use_prior:  # the marginal log-likelihood alone
        theta = _stats.mask_components(_stats.natural_params(state.params, config.covariance_type), problem.active)
        resp, ll = _stats.e_step(problem.z, theta)
        log_lik = _weighted_sum(ll, problem.sample_weight)
    entropy = -_weighted_sum(jnp.sum(jax.scipy.special.xlogy(resp, resp), axis=1), problem.sample_weight)
    weighted = resp if problem.sample_weight is None else resp * problem.sample_weight[:, None]
    return EMOutput(state._replace(trace=trace), final, log_lik, jnp.sum(weighted, 0), entropy)


def _fit_batch(xs, keys, user_init, prior, tol, reg_covar, sample_weight, active, *, config: EMConfig, init_method: str, max_iter: int):
    """A batch of EM runs as one program, ``vmap``-ped over the leading axis of ``keys``.

    ``xs`` is (N, D) shared by every run, or (B, N, D) one data set per run (parametric
    bootstrap); ``sample_weight`` is None, (N,) shared or (B, N) per run (nonparametric
    bootstrap as multinomial counts); ``active`` is None or (B, K) (model-selection grids);
    ``prior`` is None, shared, or batched with a leading B on every leaf (``mean`` (B, D)).
    ``user_init`` holds standardised starting weights/means/covariances or None for each.
    """
    _TRACE_COUNT["fit"] += 1
    k = config.num_components
    # The starting M-step is a soft M-step under the same objective: maximum likelihood (as
    # scikit-learn, whose starts these are), or MAP when a prior is given, so that a start with one
    # point per component ("k-means++", "random_from_data") still has proper covariances.
    init_config = config._replace(hard=False)

    def run_one(x_one, key, weight, act, prior_one):
        problem = EMProblem(_stats.suff_features(x_one, config.covariance_type), weight, act, prior_one, tol, reg_covar)
        resp0 = initial_responsibilities(key, x_one, k, init_method, sample_weight=weight, active=act)
        params0 = m_step(resp0, problem, init_config)
        params0 = GMMParams(*(p if u is None else u for p, u in zip(params0, user_init)))
        return run_em(params0, problem, config, max_iter)

    def axis(a, batched_ndim):
        return None if a is None or a.ndim < batched_ndim else 0

    prior_axis = None if prior is None else axis(prior.mean, 2)
    in_axes = (axis(xs, 3), 0, axis(sample_weight, 2), axis(active, 2), prior_axis)
    return jax.vmap(run_one, in_axes=in_axes)(xs, keys, sample_weight, active, prior)


#: The EM program, compiled ahead of time once per shapes and static settings.
PROGRAM = CompiledProgram(_fit_batch, static_argnames=("config", "init_method", "max_iter"))

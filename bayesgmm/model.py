"""The one generative story, written once as a NumPyro model.

.. code-block:: text

    pi ~ Dirichlet(alpha)            (or truncated stick-breaking: a Dirichlet process)
    (mu_k, Sigma_k) ~ Normal-Inverse-Wishart(m0, kappa0, nu0, Psi0)     k = 1..K
    z_n ~ Categorical(pi)
    x_n | z_n = k ~ N(mu_k, Sigma_k)                                       n = 1..N

NUTS and SVI run :func:`gmm_model` itself (z summed out by ``MixtureSameFamily``, or kept as an
enumerable discrete site with ``marginalize=False``). EM and closed-form VB cannot run a NumPyro
function; they share the :class:`~bayesgmm.Prior` and are tied to this model by tests: the
objective EM reports equals ``numpyro.infer.util.log_density`` of this model at the same point.

Sample sites: ``weights`` (K,), ``covariances`` (stored per structure as scikit-learn does),
``means`` (K, D), ``x`` (N, D) and, when not marginalised, ``z`` (N,).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro import handlers
from numpyro.infer.util import log_density

from . import _missing, _numerics, _sticks
from ._compile import jit
from ._numerics import expand_covariances
from .params import GMMParams, PriorArrays, check_covariance_type

#: NumPyro (0.22) validates every distribution's arguments by default. Inside a compiled program
#: the checks are traced and then dropped; on constant arguments each of their operations is
#: compiled on its own (some 25 small programs per process for the Inverse-Wishart alone, about a
#: second). The model's arguments are checked where they enter bayesgmm (``Prior``, data and
#: parameter checks), so its distributions skip NumPyro's wherever the model is used (EM's MAP
#: prior, simulation, likelihoods). The NUTS, Gibbs and SVI programs are also traced under
#: :func:`bayesgmm._numpyro_common.without_validation`, which covers the distributions they build
#: beside the model's (SVI's guides).
UNCHECKED = {"validate_args": False}


class StickBreaking(dist.Distribution):
    """Truncated stick-breaking weights on the simplex (a generalised Dirichlet).

    ``sticks`` (K - 1, 2) holds the Beta parameters ``(a_k, b_k)`` of the free sticks; the last
    stick is 1. ``(1, gamma)`` for every stick is the Dirichlet process DP(gamma) truncated at K
    components. The density is :func:`bayesgmm._sticks.log_density` (with respect to the same
    measure as NumPyro's ``Dirichlet``), and its support is the simplex, so NUTS and the SVI
    autoguides sample it through NumPyro's stick-breaking bijection like a Dirichlet.

    Parameters
    ----------
    sticks : array (K - 1, 2)
        Positive Beta parameters ``(a_k, b_k)`` of the K - 1 free sticks.
    validate_args : bool, optional
        NumPyro's argument and sample validation; None: NumPyro's global setting.
    """

    arg_constraints = {"sticks": dist.constraints.positive}
    support = dist.constraints.simplex
    reparametrized_params = []

    def __init__(self, sticks, *, validate_args=None):
        self.sticks = sticks
        super().__init__(batch_shape=(), event_shape=(sticks.shape[0] + 1,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draw weights by breaking sticks: ``v_k ~ Beta(a_k, b_k)``, ``pi_k = v_k prod_{j<k} (1 - v_j)``.

        Parameters
        ----------
        key : jax key
            Random key.
        sample_shape : tuple of int
            Leading shape of independent draws.

        Returns
        -------
        array ``sample_shape + (K,)``
            Weights on the simplex (the Beta draws are made on the log scale, so sparse sticks
            do not underflow).
        """
        shape = sample_shape + (self.sticks.shape[0],)
        key_a, key_b = jax.random.split(key)
        log_a = jax.random.loggamma(key_a, jnp.broadcast_to(self.sticks[:, 0], shape))
        log_b = jax.random.loggamma(key_b, jnp.broadcast_to(self.sticks[:, 1], shape))
        return _sticks.weights_from_log_gammas(log_a, log_b)

    @dist.util.validate_sample
    def log_prob(self, value):
        """Log density of weights, with respect to the same measure as NumPyro's ``Dirichlet``.

        Parameters
        ----------
        value : array (..., K)
            Weights on the simplex.

        Returns
        -------
        array (...)
            The log density of each weight vector (:func:`bayesgmm._sticks.log_density`).
        """
        return _sticks.log_density(value, self.sticks)

    @property
    def mean(self):
        """Expected weights (K,): ``E pi_k = E v_k prod_{j<k} E(1 - v_j)``, the sticks being independent."""
        return _sticks.mean_weights(self.sticks)


def observed_mixture_log_density(x, params: GMMParams, covariance_type: str):
    """Per-row ``log sum_k pi_k N(x_n,o | mu_k,o, Sigma_k,oo)`` over each row's observed columns
    (NaN entries of ``x`` are missing), shape (N,): one program for every missingness pattern
    (:func:`bayesgmm._missing.observed_log_density`).

    Parameters
    ----------
    x : array (N, D)
        Rows, NaN where a value is missing.
    params : GMMParams
        Weights (K,), means (K, D) and covariances in the layout of ``covariance_type``, in the
        units of ``x``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The covariances' layout.

    Returns
    -------
    array (N,)
        Each row's log density over its observed columns (the plain mixture density for a row
        with nothing missing).
    """
    observed = ~jnp.isnan(x)
    filled = jnp.where(observed, x, 0.0)
    log_density = _missing.observed_log_density(filled, observed, params, covariance_type)
    return jax.scipy.special.logsumexp(log_density + jnp.log(params.weights), axis=-1)


class MarginalMixture(dist.Distribution):
    """The Gaussian mixture with missing values: a row's density is that of its observed columns.

    NaN entries of the value are missing at random, so the log density of a row is
    ``log sum_k pi_k N(x_o | mu_k,o, Sigma_k,oo)`` (the missing columns integrated out); a row
    with nothing missing gets the plain mixture density. Sampling draws complete rows.

    Parameters
    ----------
    params : GMMParams
        Weights (K,), means (K, D) and covariances in the layout of ``covariance_type``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The covariances' layout.
    num_obs : int
        N, the batch shape: the distribution is over N rows of D values.
    validate_args : bool, optional
        NumPyro's argument and sample validation; None: NumPyro's global setting.
    """

    arg_constraints = {}
    support = dist.constraints.real_vector

    def __init__(self, params: GMMParams, covariance_type: str, num_obs: int, *, validate_args=None):
        self.params, self.covariance_type = params, covariance_type
        super().__init__(batch_shape=(num_obs,), event_shape=params.means.shape[-1:], validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draw complete rows from the mixture (nothing missing).

        Parameters
        ----------
        key : jax key
            Random key.
        sample_shape : tuple of int
            Leading shape of independent draws of the N rows.

        Returns
        -------
        array ``sample_shape + (N, D)``
            The rows drawn.
        """
        mixture = dist.MixtureSameFamily(dist.Categorical(probs=self.params.weights, **UNCHECKED),
                                         component_distribution(self.params, self.covariance_type), **UNCHECKED)
        return mixture.sample(key, sample_shape + self.batch_shape)

    def log_prob(self, value):
        """Each row's log density over its observed columns (:func:`observed_mixture_log_density`).

        Parameters
        ----------
        value : array (N, D)
            Rows, NaN where a value is missing.

        Returns
        -------
        array (N,)
            ``log sum_k pi_k N(x_n,o | mu_k,o, Sigma_k,oo)`` for each row.
        """
        return observed_mixture_log_density(value, self.params, self.covariance_type)


def weights_distribution(concentration, num_components: int):
    """The prior of the weights: ``Dirichlet(alpha)`` for a (K,) concentration, or
    :class:`StickBreaking` for (K - 1, 2) stick parameters (a Dirichlet-process prior)."""
    if _sticks.is_sticks(concentration):
        return StickBreaking(concentration, **UNCHECKED)
    return dist.Dirichlet(jnp.broadcast_to(concentration, (num_components,)), **UNCHECKED)


def prior_distributions(prior: PriorArrays, num_components: int, covariance_type: str):
    """The prior's pieces as NumPyro distributions.

    Used by :func:`gmm_model` and :func:`log_prior`, so both are the same code.

    Parameters
    ----------
    prior : PriorArrays
        The prior's arrays for this K and structure (``Prior.arrays(K, covariance_type)``); a
        (K - 1, 2) concentration gives stick-breaking weights.
    num_components : int
        K.
    covariance_type : {"full", "diag", "spherical", "tied"}
        Structure: Inverse-Wishart covariances (full, tied) or inverse-gamma variances (diag,
        spherical).

    Returns
    -------
    tuple
        ``(weights_dist, covariances_dist, means_dist_given)`` where the last is a function of
        the covariances (and, for full and tied, optionally their Cholesky factors (K, D, D),
        :func:`covariance_factors`, so that a caller that has them does not factor again).
        ``covariances_dist`` has batch shape (K,) except for ``tied`` (no batch).
    """
    alpha, m0, kappa0, nu0, psi = (jnp.asarray(a) for a in prior)
    k = num_components
    weights_dist = weights_distribution(alpha, k)
    d = m0.shape[0]
    if covariance_type in ("full", "tied"):
        cov_dist = dist.InverseWishart(nu0, scale_matrix=psi, **UNCHECKED)
        if covariance_type == "full":
            cov_dist = cov_dist.expand((k,))

        def means_given(cov, factors=None):
            factors = covariance_factors(cov, covariance_type, k) if factors is None else factors
            return dist.MultivariateNormal(m0, scale_tril=factors / jnp.sqrt(kappa0), **UNCHECKED)

    elif covariance_type == "diag":
        cov_dist = dist.InverseGamma(0.5 * nu0, 0.5 * jnp.broadcast_to(psi, (k, d)), **UNCHECKED).to_event(1)

        def means_given(cov, factors=None):
            return dist.Normal(m0, jnp.sqrt(cov / kappa0), **UNCHECKED).to_event(1)

    else:
        cov_dist = dist.InverseGamma(0.5 * nu0, 0.5 * jnp.broadcast_to(psi, (k,)), **UNCHECKED)

        def means_given(cov, factors=None):
            return dist.Normal(m0, jnp.sqrt(cov / kappa0)[:, None] * jnp.ones(d), **UNCHECKED).to_event(1)

    return weights_dist, cov_dist, means_given


def covariance_factors(covariances, covariance_type: str, num_components: int):
    """Lower Cholesky factors (K, D, D) of full or tied covariances (tied: one, broadcast over K)."""
    d = covariances.shape[-1]
    return jnp.linalg.cholesky(expand_covariances(covariances, covariance_type, num_components, d))


class FactoredMultivariateNormal(dist.MultivariateNormal):
    """K full-covariance Gaussians (batch shape (K,)) whose ``log_prob`` maps the rows through
    the inverse Cholesky factors by one matrix product per component, as EM's E-step does
    (:func:`bayesgmm._numerics.component_log_density`), instead of NumPyro's triangular solve
    of every row against each factor. On the CPU that solve is a LAPACK call of K x D^2 x N
    flops, which jaxlib splits over XLA's thread pool (two chains on threads waited there
    forever), and which took 1.3-4.2x as long as this form with its gradient (N = 2048 to 8192;
    D = 3, K = 4 and D = K = 16). The density is the same (to rounding); sampling is
    NumPyro's.

    Parameters
    ----------
    loc : array (K, D)
        The components' means.
    covariance_matrix, precision_matrix, scale_tril : array (K, D, D), optional
        One of them, as for NumPyro's ``MultivariateNormal`` (the model passes ``scale_tril``,
        the covariances' lower Cholesky factors).
    validate_args : bool, optional
        NumPyro's argument and sample validation; None: NumPyro's global setting.
    """

    def log_prob(self, value):
        """Log density of rows under each component.

        Parameters
        ----------
        value : array (..., K, D)
            Rows, broadcast against the K components (``MixtureSameFamily`` passes (N, 1, D)).

        Returns
        -------
        array (..., K)
            ``log N(x | mu_k, L_k L_k^T)``.
        """
        inverse = _numerics.inverse_cholesky(self.scale_tril)  # (K, D, D)
        rows = jnp.einsum("...kd,ked->...ke", value - self.loc, inverse)  # (..., K, D)
        half_log_det = jnp.sum(jnp.log(jnp.diagonal(self.scale_tril, axis1=-2, axis2=-1)), axis=-1)
        return -0.5 * (jnp.sum(rows * rows, axis=-1) + self.loc.shape[-1] * _numerics.LOG_2PI) - half_log_det


def component_distribution(params: GMMParams, covariance_type: str, factors=None):
    """The K Gaussian components as one batched NumPyro distribution (batch shape (K,));
    ``factors``: the full or tied covariances' Cholesky factors when already computed."""
    w, mu, cov = params
    k, d = mu.shape
    if covariance_type == "diag":
        return dist.Normal(mu, jnp.sqrt(cov), **UNCHECKED).to_event(1)
    if covariance_type == "spherical":
        return dist.Normal(mu, jnp.sqrt(cov)[:, None] * jnp.ones(d), **UNCHECKED).to_event(1)
    factors = covariance_factors(cov, covariance_type, k) if factors is None else factors
    return FactoredMultivariateNormal(mu, scale_tril=factors, **UNCHECKED)


def _minibatch_indices(num_obs: int, subsample_size: int | None):
    """A handler that gives the ``obs`` plate its minibatch: ``subsample_size`` rows drawn
    uniformly *with* replacement from the seed handler's key (the likelihood's rescaled sum stays
    unbiased). NumPyro draws a plate's subsample without replacement by a Fisher-Yates shuffle,
    on the CPU a sequential loop of ``subsample_size`` steps over an array of all N indices: on
    20,000 rows it took 0.65 s per 1000 SVI steps for batches of 256 and 14.5 s for 4096, where
    a full-batch step of 4096 rows took 0.78 s. No minibatch, or no key (outside a seed handler):
    NumPyro's own plate."""
    if subsample_size is None or subsample_size >= num_obs:
        return contextlib.nullcontext()
    key = numpyro.prng_key()
    if key is None:
        return contextlib.nullcontext()
    return handlers.substitute(data={"obs": jax.random.randint(key, (subsample_size,), 0, num_obs)})


def gmm_model(
    x=None,
    *,
    num_components: int,
    prior: PriorArrays,
    covariance_type: str = "full",
    num_obs: int | None = None,
    marginalize: bool = True,
    subsample_size: int | None = None,
    missing: bool = False,
    row_mask=None,
):
    """NumPyro model of the Bayesian Gaussian mixture.

    Parameters
    ----------
    x : array (N, D) or None
        Observations; ``None`` simulates ``num_obs`` new ones.
    num_components : int
        K.
    prior : PriorArrays
        ``Prior.arrays(K, covariance_type)``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        Covariance structure (the ``covariances`` site's shape: full (K, D, D), tied (D, D),
        diag (K, D), spherical (K,)).
    num_obs : int, optional
        Number of observations to simulate when ``x`` is None.
    marginalize : bool
        True sums z out (``MixtureSameFamily``; what NUTS needs). False keeps ``z`` as a
        discrete site marked for parallel enumeration (``infer_discrete``, ``TraceEnum_ELBO``) and
        for forward simulation with labels.
    subsample_size : int, optional
        Minibatch size of the ``obs`` plate (SVI on large N); the likelihood is rescaled.
    missing : bool
        NaN entries of ``x`` are missing at random: each row's likelihood is the mixture of the
        Gaussians' marginals over its observed columns (:class:`MarginalMixture`; z summed out).
    row_mask : bool array (N,), optional
        Rows of ``x`` that are data; the others (padding of a program built for a row bucket,
        see :func:`bayesgmm._sharding.row_bucket`) add nothing to the log density. Not with
        ``subsample_size``.
    """
    k = num_components
    weights_dist, cov_dist, means_given = prior_distributions(prior, k, covariance_type)
    if k == 1:
        weights = numpyro.deterministic("weights", jnp.ones(1))
    else:
        weights = numpyro.sample("weights", weights_dist)
    covariances = numpyro.sample("covariances", cov_dist)
    # full and tied: one Cholesky factorisation for the means' prior and the components
    factors = covariance_factors(covariances, covariance_type, k) if covariance_type in ("full", "tied") else None
    means = numpyro.sample("means", means_given(covariances, factors))
    components = component_distribution(GMMParams(weights, means, covariances), covariance_type, factors)
    n = x.shape[0] if x is not None else num_obs
    if n is None:
        raise ValueError("gmm_model needs data x or num_obs to simulate.")
    padded = contextlib.nullcontext() if row_mask is None else handlers.mask(mask=row_mask)
    with _minibatch_indices(n, subsample_size), numpyro.plate("obs", n, subsample_size=subsample_size) as idx, padded:
        x_batch = None if x is None else x[idx] if subsample_size is not None else x
        if missing:
            if not marginalize:
                raise ValueError("missing values need z summed out (marginalize=True).")
            numpyro.sample("x", MarginalMixture(GMMParams(weights, means, covariances), covariance_type,
                                                n if subsample_size is None else subsample_size, **UNCHECKED), obs=x_batch)
        elif marginalize:
            numpyro.sample("x", dist.MixtureSameFamily(dist.Categorical(probs=weights, **UNCHECKED), components, **UNCHECKED),
                           obs=x_batch)
        else:
            z = numpyro.sample("z", dist.Categorical(probs=weights, **UNCHECKED), infer={"enumerate": "parallel"})
            mu_z = means[z]
            if covariance_type == "diag":
                comp = dist.Normal(mu_z, jnp.sqrt(covariances[z]), **UNCHECKED).to_event(1)
            elif covariance_type == "spherical":
                comp = dist.Normal(mu_z, jnp.sqrt(covariances[z])[..., None] * jnp.ones(mu_z.shape[-1]), **UNCHECKED).to_event(1)
            else:
                comp = dist.MultivariateNormal(mu_z, scale_tril=components.scale_tril[z], **UNCHECKED)
            numpyro.sample("x", comp, obs=x_batch)


def model_kwargs(num_components, prior: PriorArrays, covariance_type: str, **extra) -> dict:
    return dict(num_components=num_components, prior=prior, covariance_type=covariance_type, **extra)


@functools.partial(jit, static_argnames=("covariance_type",))
def log_prior(params: GMMParams, prior: PriorArrays, covariance_type: str, active=None):
    """log p(pi) + sum_k log p(mu_k, Sigma_k): the prior terms of :func:`gmm_model`.

    Parameters
    ----------
    params : GMMParams
        Weights (K,), means (K, D) and covariances in the layout of ``covariance_type``.
    prior : PriorArrays
        The prior's arrays for this K and structure, in the units of ``params``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The covariances' layout.
    active : bool array (K,), optional
        Evaluate the prior of the sub-model made of the active components only (what a K' < K
        fit inside a K-sized program needs; see :func:`bayesgmm._stats.mask_components`). The
        Dirichlet term is then that of the active weights, written out since a traced mask
        cannot select a NumPyro distribution's size. Dirichlet weights only (not sticks).

    Returns
    -------
    scalar array
        The log prior density (without a weights term when one component is active, or K = 1:
        its weight is then fixed at 1).

    """
    check_covariance_type(covariance_type)
    k = params.means.shape[0]
    weights_dist, cov_dist, means_given = prior_distributions(prior, k, covariance_type)
    lp_cov = cov_dist.log_prob(params.covariances)  # (K,), or () for tied
    # the means' factorisations after the covariances' (batched LAPACK calls one at a time:
    # _numerics.in_turn); NumPy arrays pass unchanged
    lp_means = means_given(_numerics.in_turn(lp_cov, params.covariances)).log_prob(params.means)  # (K,)
    if active is None:
        lp = jnp.sum(lp_cov) + jnp.sum(lp_means)
        if k > 1:
            lp = lp + weights_dist.log_prob(params.weights)
        return lp
    if _sticks.is_sticks(prior.concentration):
        raise ValueError("A sub-model of active components is defined for Dirichlet weights only.")
    if lp_cov.ndim:
        lp_cov = jnp.where(active, lp_cov, 0.0)
    lp = jnp.sum(lp_cov) + jnp.sum(jnp.where(active, lp_means, 0.0))
    alpha = weights_dist.concentration
    log_w = jnp.log(jnp.where(active, params.weights, 1.0))
    log_dirichlet = (
        gammaln(jnp.sum(jnp.where(active, alpha, 0.0)))
        - jnp.sum(jnp.where(active, gammaln(alpha), 0.0))
        + jnp.sum(jnp.where(active, (alpha - 1.0) * log_w, 0.0))
    )
    return lp + jnp.where(jnp.sum(active) > 1, log_dirichlet, 0.0)


def log_likelihood(x, params: GMMParams, covariance_type: str):
    """Per-observation marginal log-likelihood of :func:`gmm_model` (z summed out), shape (N,).

    NaN entries of ``x`` are missing values: a row's density is then that of its observed columns.

    NumPyro's log density of the observed site ``x`` at ``params``
    (``numpyro.infer.util.log_likelihood``); the prior plays no part in it.

    Parameters
    ----------
    x : array (N, D)
        Observations, NaN where a value is missing.
    params : GMMParams
        Weights (K,), means (K, D) and covariances in the layout of ``covariance_type``, in the
        units of ``x``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The covariances' layout.

    Returns
    -------
    array (N,)
        ``log sum_k pi_k N(x_n | mu_k, Sigma_k)`` for each row.
    """
    params = GMMParams(*(jnp.asarray(p) for p in params))
    x = jnp.asarray(x)
    return _site_log_likelihood(x, params, covariance_type, bool(jnp.isnan(x).any()))


@functools.partial(jit, static_argnames=("covariance_type", "missing"))
def _site_log_likelihood(x, params: GMMParams, covariance_type: str, missing: bool):
    """:func:`log_likelihood`, compiled (one program per shape, not one per NumPyro operation)."""
    from numpyro.infer.util import log_likelihood as site_log_likelihood

    k, d = params.means.shape
    values = {"weights": params.weights, "means": params.means, "covariances": params.covariances}
    kwargs = model_kwargs(k, _placeholder_prior(k, d, covariance_type), covariance_type, missing=missing)
    return site_log_likelihood(gmm_model, values, x, batch_ndims=0, **kwargs)["x"]


@functools.partial(jit, static_argnames=("covariance_type", "missing"))
def log_joint(x, params: GMMParams, prior: PriorArrays, covariance_type: str, missing: bool = False):
    """log p(x, params) of :func:`gmm_model` evaluated by NumPyro (z summed out), compiled.

    Parameters
    ----------
    x : array (N, D)
        Observations.
    params : GMMParams
        Weights (K,), means (K, D) and covariances in the layout of ``covariance_type``, in the
        units of ``x``.
    prior : PriorArrays
        The prior's arrays for this K and structure, in the units of ``x``.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The covariances' layout (static).
    missing : bool
        NaN entries of ``x`` are missing values: the likelihood is the observed-data density
        (static).

    Returns
    -------
    scalar array
        Log prior density plus log-likelihood.
    """
    k = params.means.shape[0]
    values = {"weights": params.weights, "means": params.means, "covariances": params.covariances}
    lp, _ = log_density(gmm_model, (x,), model_kwargs(k, prior, covariance_type, missing=missing), values)
    return lp


@functools.partial(jit, static_argnames=("num_obs", "covariance_type"))
def simulate(key, params: GMMParams, num_obs: int, covariance_type: str = "full"):
    """Run the generative story forward at fixed parameters.

    Parameters
    ----------
    key : jax key
        Random key.
    params : GMMParams
        Weights (K,), means (K, D) and covariances in the layout of ``covariance_type``.
    num_obs : int
        N, the number of observations.
    covariance_type : {"full", "diag", "spherical", "tied"}
        The covariances' layout.

    Returns
    -------
    x : array (N, D)
        The observations.
    z : int array (N,)
        The component of each observation.
    """
    params = GMMParams(*(jnp.asarray(p) for p in params))
    k, d = params.means.shape
    dummy = _placeholder_prior(k, d, covariance_type)
    data = {"weights": params.weights, "means": params.means, "covariances": params.covariances}
    with handlers.seed(rng_seed=key), handlers.condition(data=data):
        tr = handlers.trace(gmm_model).get_trace(
            None, **model_kwargs(k, dummy, covariance_type, num_obs=num_obs, marginalize=False)
        )
    return tr["x"]["value"], tr["z"]["value"]


def simulate_rows(key, params: GMMParams, num_obs: int, covariance_type: str = "full"):
    """:func:`simulate` on the host: ``(x, z)`` as NumPy arrays (x float64) of ``num_obs`` rows,
    drawn in the row bucket of ``num_obs`` (:func:`bayesgmm._sharding.row_bucket`) and cut to it,
    so that one compiled simulation serves every N of the bucket. JAX draws by position: the
    rows are those a draw of exactly ``num_obs`` gives.

    The draws are made in float64 whatever JAX's default float: the same key gives the same rows
    with x64 on or off (JAX's float32 and float64 draws of a key differ), and rows far from zero
    keep their digits (in float32, means of 1e8 left three distinct values in 10,000 draws of unit
    spread)."""
    from ._sharding import row_bucket

    n = int(num_obs)
    with jax.enable_x64(True):
        params = GMMParams(*(np.asarray(a, np.float64) for a in params))
        x, z = simulate(key, params, row_bucket(n), covariance_type)
        return np.asarray(x, np.float64)[:n], np.asarray(z)[:n]


def _placeholder_prior(k: int, d: int, covariance_type: str) -> PriorArrays:
    """A valid prior for running the model where the prior plays no part (the likelihood,
    simulation at given parameters)."""
    scale = {"full": jnp.eye(d), "tied": jnp.eye(d), "diag": jnp.ones(d), "spherical": jnp.ones(())}[covariance_type]
    return PriorArrays(jnp.ones(k), jnp.zeros(d), jnp.ones(()), jnp.asarray(d + 2.0), scale)


def sample_prior(key, prior: PriorArrays, num_components: int, covariance_type: str = "full") -> GMMParams:
    """Draw one set of mixture parameters from the prior (the model's own sites).

    Parameters
    ----------
    key : jax key
        Random key.
    prior : PriorArrays
        The prior's arrays for this K and structure (``Prior.arrays(K, covariance_type)``).
    num_components : int
        K.
    covariance_type : {"full", "diag", "spherical", "tied"}
        Covariance structure of the draw.

    Returns
    -------
    GMMParams
        Weights (K,) (all 1 when K = 1), means (K, D) and covariances in the layout of
        ``covariance_type``.
    """
    with handlers.seed(rng_seed=key), handlers.block(hide=["x"]):
        tr = handlers.trace(gmm_model).get_trace(
            None, **model_kwargs(num_components, prior, covariance_type, num_obs=1)
        )
    return GMMParams(tr["weights"]["value"], tr["means"]["value"], tr["covariances"]["value"])


__all__ = [
    "FactoredMultivariateNormal",
    "MarginalMixture",
    "StickBreaking",
    "gmm_model",
    "log_joint",
    "log_likelihood",
    "log_prior",
    "observed_mixture_log_density",
    "prior_distributions",
    "sample_prior",
    "simulate",
]

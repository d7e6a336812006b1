"""Bundled public data sets and synthetic mixtures drawn from the model's generative story."""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

import numpy as np

from .params import (
    GMMParams,
    check_bool,
    check_covariance_type,
    check_data_seed,
    check_int,
    check_num_components,
    real_scalar,
    seed_to_key,
)

__all__ = ["MixtureData", "load_faithful", "load_galaxies", "make_mixture"]


def _read_csv(name: str):
    with resources.files("bayesgmm").joinpath("data", name).open("r") as f:
        header = f.readline().strip().split(",")
        values = np.loadtxt(f, delimiter=",", ndmin=2)
    return values, header


def _frame_or_array(values, header, as_frame):
    if check_bool("as_frame", as_frame):
        import pandas as pd

        return pd.DataFrame(values, columns=header)
    return values


#: Axis labels with units for the bundled data sets' columns. Figures use them for a fit whose
#: features are exactly a bundled data set's columns (``("eruptions", "waiting")``,
#: ``("velocity_km_s",)``), not for a column of your own that shares a name; a DataFrame of your
#: own carries units in its column names, e.g. ``"waiting (min)"``.
AXIS_LABELS = {"eruptions": "eruptions (min)", "waiting": "waiting (min)", "velocity_km_s": "velocity (km/s)"}


def load_faithful(*, as_frame: bool = False):
    """Old Faithful geyser eruptions: 272 rows of ``eruptions`` and ``waiting`` (minutes).

    Source: R ``datasets::faithful`` (R 4.2.2); Härdle, W. (1991) *Smoothing Techniques with
    Implementation in S*; Azzalini, A. and Bowman, A. W. (1990) "A look at some data on the Old
    Faithful geyser", *Applied Statistics* 39, 357-365. Public domain. ``waiting`` is
    integer-valued, so some K >= 3 full-covariance optima collapse a component onto tied points.

    Parameters
    ----------
    as_frame : bool
        Return a pandas DataFrame (column names become feature coordinates) instead of a
        float64 array of shape (272, 2).
    """
    values, header = _read_csv("faithful.csv")
    return _frame_or_array(values, header, as_frame)


def load_galaxies(*, as_frame: bool = False):
    """Velocities (km/s) of 82 galaxies in the Corona Borealis region, shape (82, 1).

    Source: R ``MASS::galaxies`` (MASS 7.3-58.2); Roeder, K. (1990) "Density estimation with
    confidence sets exemplified by superclusters and voids in the galaxies", *JASA* 85, 617-624;
    used by Richardson & Green (1997). MASS notes that observation 78 (26690) should read 26960;
    the value is kept as published. Values span 9172 to 34279 km/s, a test of scale handling.

    Parameters
    ----------
    as_frame : bool
        Return a pandas DataFrame with the single column ``velocity_km_s`` instead of a float64
        array of shape (82, 1).
    """
    values, header = _read_csv("galaxies_mass.csv")
    return _frame_or_array(values, header, as_frame)


class MixtureData(NamedTuple):
    """Data simulated from the generative story, with the truth that produced it.

    Attributes
    ----------
    x : np.ndarray (N, D)
        The observations, float64.
    labels : np.ndarray (N,)
        The true component of each observation, in ``0 .. K-1``.
    params : GMMParams
        The true weights, means and covariances, the covariances stored in the layout of the
        ``covariance_type`` they were drawn for.
    """

    x: np.ndarray
    labels: np.ndarray
    params: GMMParams


def make_mixture(
    num_obs: int = 500,
    num_components: int = 3,
    num_features: int = 2,
    *,
    covariance_type: str = "full",
    separation: float = 4.0,
    weights=None,
    seed: int = 0,
) -> MixtureData:
    """Draw data from a Gaussian mixture with known parameters and labels.

    Component variances are drawn from [0.5, 1.5]: for ``diag`` and ``spherical`` as they are
    (average 1 in expectation), for ``full`` and ``tied`` as eigenvalues of a random orientation,
    then scaled to an average variance of exactly 1 (so never near-singular);
    means are drawn with standard deviation ``separation`` per coordinate, so larger values give
    better separated clusters. The data are produced by running
    :func:`bayesgmm.model.gmm_model` forward at these parameters.

    Parameters
    ----------
    num_obs : int
        N, the number of observations drawn.
    num_components : int
        K, the number of components.
    num_features : int
        D, the number of features.
    covariance_type : {"full", "diag", "spherical", "tied"}
        Structure of the true covariances, and the layout ``params.covariances`` is stored in.
    separation : float

        Spread of the means relative to the within-component standard deviation (finite, >= 0;
        0 puts every mean at the origin).
    weights : array (K,), optional
        Mixing weights; default a Dirichlet(10) draw (roughly balanced).
    seed : int
        Seeds both the parameters (weights, means, covariances) and the data drawn from them:
        the same seed gives the same data, whatever JAX's default float (the rows are drawn in
        float64). An integer in ``[0, 2**64)``.
    """
    from .model import simulate_rows

    check_covariance_type(covariance_type)
    k = check_num_components(num_components)
    num_obs, d = check_int("num_obs", num_obs), check_int("num_features", num_features)
    spread = real_scalar(separation)
    if spread is None or not (np.isfinite(spread) and spread >= 0):
        raise ValueError(f"separation must be a finite number >= 0 (the spread of the component means), got {separation!r}.")
    seed = check_data_seed(seed)
    rng = np.random.default_rng(seed)
    if weights is None:
        weights = rng.dirichlet(np.full(k, 10.0))
    try:
        weights = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        weights = np.full(0, np.nan)
    if weights.shape != (k,) or not np.all(weights >= 0) or not np.isclose(weights.sum(), 1):
        raise ValueError(f"weights must be a probability vector of shape ({k},), got {weights!r}.")
    weights = weights / weights.sum()  # the truth's weights sum to 1 exactly (within isclose they did not)
    means = rng.normal(0.0, spread, size=(k, d))
    if not np.all(np.abs(means) < np.finfo(np.float64).max / 4):  # the rows are drawn in float64
        raise ValueError(f"separation={separation!r} puts the component means beyond what float64 holds; use a "
                         "smaller separation.")

    def random_cov():
        # a random orientation with eigenvalues in [0.5, 1.5]: anisotropic, never near-singular
        q, r = np.linalg.qr(rng.normal(size=(d, d)))
        q = q * np.sign(np.diag(r))
        c = (q * rng.uniform(0.5, 1.5, size=d)) @ q.T
        return c / np.mean(np.diag(c))

    if covariance_type == "full":
        cov = np.stack([random_cov() for _ in range(k)])
    elif covariance_type == "tied":
        cov = random_cov()
    elif covariance_type == "diag":
        cov = rng.uniform(0.5, 1.5, size=(k, d))
    else:
        cov = rng.uniform(0.5, 1.5, size=k)
    params = GMMParams(weights, means, cov)
    x, z = simulate_rows(seed_to_key(seed), params, num_obs, covariance_type)  # one program per row bucket
    return MixtureData(x, z, params)

"""The rows of a parameter table: one scalar of a fit's weights, means or covariances each, labelled
(shared by :mod:`bayesgmm.uncertainty` and :mod:`bayesgmm.reporting`)."""

from __future__ import annotations

import numpy as np

from .params import GMMParams


def parameter_labels(params: GMMParams, covariance_type: str) -> list:
    """``(parameter, component, feature, feature_bis)`` of every scalar of
    :func:`flatten_parameters`, in its order (-1 where an index does not apply)."""
    k, d = params.means.shape
    rows = [("weights", j, -1, -1) for j in range(k)]
    rows += [("means", j, a, -1) for j in range(k) for a in range(d)]
    if covariance_type == "full":
        rows += [("covariances", j, a, b) for j in range(k) for a in range(d) for b in range(d)]
    elif covariance_type == "diag":
        rows += [("covariances", j, a, -1) for j in range(k) for a in range(d)]
    elif covariance_type == "spherical":
        rows += [("covariances", j, -1, -1) for j in range(k)]
    else:
        rows += [("covariances", -1, a, b) for a in range(d) for b in range(d)]
    return rows


def flatten_parameters(params: GMMParams) -> np.ndarray:
    """Weights, means and covariances as one float64 vector (the rows of a parameter table)."""
    return np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in params])


def flatten_draws(draws) -> np.ndarray:
    """Draws ``{"weights": (C, S, K), "means": ..., "covariances": ...}`` as one float64 row per
    draw (C * S rows), in the order of :func:`flatten_parameters`."""
    names = ("weights", "means", "covariances")
    w = np.asarray(draws["weights"])
    num_draws = w.shape[0] * w.shape[1]
    return np.concatenate([np.asarray(draws[n], np.float64).reshape(num_draws, -1) for n in names], axis=1)


def parameter_frame(fit, estimate, se, lower, upper):
    """The rows of one fit's parameter table: labels, feature names and the given columns."""
    import pandas as pd

    labels = parameter_labels(fit.params, fit.covariance_type)
    table = pd.DataFrame(labels, columns=["parameter", "component", "feature", "feature_bis"])
    names = list(fit.feature_names)
    table["feature_name"] = [names[f] if f >= 0 else "" for f in table["feature"]]
    table["feature_bis_name"] = [names[f] if f >= 0 else "" for f in table["feature_bis"]]
    table["estimate"], table["se"], table["lower"], table["upper"] = estimate, se, lower, upper
    return table

"""Publication-quality matplotlib figures of fitted Gaussian mixtures.

This module imports matplotlib at its top, so it is *not* imported by ``import bayesgmm``;
import it explicitly (``from bayesgmm import plotting``) when figures are wanted.

Conventions shared by every function:

- Component ``k`` has the same colour in every figure (:func:`component_colors`), so panels of
  different engines or iterations can be compared by eye. Components and chains are numbered
  from 0, as :meth:`~bayesgmm.FitResult.predict`, the fits' tables and the InferenceData
  coordinates number them.
- Each function takes an optional ``ax`` (or ``axes``); when omitted it creates a figure with
  constrained layout. Single-panel functions return the ``Axes`` (its figure is ``ax.figure``);
  multi-panel functions return ``(figure, axes)``; figures only draw (the fits they show are given).
- Axis labels are the result's ``feature_names``, with units where they are a bundled data set's
  columns (:data:`bayesgmm.datasets.AXIS_LABELS`: ``"waiting (min)"``, ``"velocity (km/s)"``); fit on a
  pandas DataFrame whose column names carry units to get units on the axes of your own data.
- The density and ellipses drawn are those of the point estimate (MLE/MAP, or the posterior
  mean for Bayesian engines); :func:`plot_posterior_ellipses` shows the posterior spread.
"""

from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse

from ._numerics import expand_covariances
from .labels import match_result
from .params import check_data
from .results import FitResult

#: Covariances as float64 (..., K, D, D) whatever the structure.
_expand = functools.partial(expand_covariances, dtype=np.float64)

__all__ = [
    "component_colors",
    "covariance_ellipse",
    "legend_handles",
    "plot_clusters_2d",
    "plot_density_1d",
    "plot_em_iterations",
    "plot_engines",
    "plot_num_components",
    "plot_pairs",
    "plot_posterior_ellipses",
    "plot_sbc_ranks",
    "plot_selection",
    "plot_trace",
]

# Colour-blind-safe qualitative colours chosen so that blends of two of them (points coloured by
# responsibility) stay distinguishable from both: blue + red blend to purple, not grey.
_PALETTE = ("#2166ac", "#c0392b", "#1b7837", "#e08214", "#762a83", "#35978f", "#8c510a", "#4d4d4d")

_OBJECTIVE_LABELS = {
    "log_likelihood": "log-likelihood",
    "log_posterior": "log posterior (unnormalised)",
    "classification_log_likelihood": "classification log-likelihood",
    "classification_log_posterior": "classification log posterior (unnormalised)",
    "elbo": "ELBO",
}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def component_colors(num_components: int) -> np.ndarray:
    """RGB colours (K, 3) of components 0..K-1, the same in every figure of this module.

    Parameters
    ----------
    num_components : int
        K. Up to 8 components the module's own palette; beyond that, matplotlib's ``tab20``
        colours (repeating after 20).

    Returns
    -------
    np.ndarray (K, 3)
        RGB values in [0, 1].
    """
    if num_components <= len(_PALETTE):
        return np.array([to_rgb(c) for c in _PALETTE[:num_components]])
    cmap = plt.get_cmap("tab20")
    return np.array([cmap(k % 20)[:3] for k in range(num_components)])


def _new_axes(ax, figsize=(4.8, 3.6)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _style(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(direction="out", length=3)


def _data(x, result: FitResult, features=None) -> np.ndarray:
    """The rows to draw, float64, with the fit's columns: a DataFrame's are matched to the fit's
    feature names (reordered as the fit's, as ``predict_proba`` reads them). Rows with a missing
    value (NaN, as a fit with ``missing="marginalize"`` takes them) in one of ``features`` (the
    columns drawn; default all) are left out of the figures."""
    arr, _ = check_data(_without_empty_rows(x), num_features=result.num_features, allow_constant=True,
                        missing="marginalize", feature_names=result.feature_names)
    arr = np.asarray(arr, dtype=np.float64)
    drawn = arr if features is None else arr[:, list(features)]
    complete = ~np.isnan(drawn).any(axis=1)
    if not complete.any():
        raise ValueError("every row of x has a missing value (NaN) in the columns drawn: there is no row to draw.")
    return arr if complete.all() else arr[complete]


def _without_empty_rows(x):
    """``x`` without its rows that observe nothing (all NaN; every row of 1-D data with NaN),
    which :func:`bayesgmm.params.check_data` refuses and a figure leaves out anyway."""
    if hasattr(x, "columns") and hasattr(x, "isna"):  # a DataFrame (names kept for matching)
        empty = x.isna().to_numpy().all(axis=1)
        return x[~empty] if empty.any() else x
    if hasattr(x, "isna"):  # a Series: one feature
        return x[~x.isna()]
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return x  # check_data's error
    if arr.ndim not in (1, 2) or not np.isnan(arr).any():
        return x
    empty = np.isnan(arr) if arr.ndim == 1 else np.isnan(arr).all(axis=1)
    return arr[~empty]


def _check_features(features, d: int, names=None) -> tuple[int, int]:
    """Two column indices from ``features``: indices, or names among the fit's ``names``."""
    if d < 2:
        raise ValueError("this plot needs at least 2 features; for 1-D data use plot_density_1d.")
    names = list(names or [])
    try:
        f = tuple(names.index(i) if isinstance(i, str) and i in names else int(i) for i in features)
    except (TypeError, ValueError):
        f = ()
    if len(f) != 2 or f[0] == f[1] or min(f) < 0 or max(f) >= d:
        raise ValueError(f"features must be two different column indices in [0, {d}) or names among {names}, got "
                         f"{features!r}.")
    return f


def _padded_limits(values: np.ndarray, pad: float = 0.08) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    span = hi - lo if hi > lo else max(abs(lo), 1.0)
    return lo - pad * span, hi + pad * span


def covariance_ellipse(mean, cov, n_std: float = 1.0, **kwargs) -> Ellipse:
    """The ``n_std`` Mahalanobis contour of a 2-D Gaussian as a matplotlib ``Ellipse``.

    The axes follow the eigen-decomposition ``cov = V diag(lambda) V^T``: semi-axes
    ``n_std * sqrt(lambda_i)`` along the eigenvectors.

    Parameters
    ----------
    mean : array (2,)
        Centre of the ellipse.
    cov : array (2, 2)
        Covariance matrix (symmetric; negative eigenvalues from round-off are clipped to 0).
    n_std : float
        The contour drawn, in standard deviations (Mahalanobis distance).
    **kwargs
        Passed to ``matplotlib.patches.Ellipse`` (``edgecolor``, ``lw``, ...); ``fill`` defaults
        to False.

    Returns
    -------
    matplotlib.patches.Ellipse
        Not yet added to any axes (``ax.add_patch``).
    """
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (2, 2):
        raise ValueError(f"cov must be a 2x2 matrix, got shape {cov.shape}.")
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))  # direction of the major axis
    width, height = 2 * n_std * np.sqrt(vals[1]), 2 * n_std * np.sqrt(vals[0])
    kwargs.setdefault("fill", False)
    return Ellipse(xy=tuple(np.asarray(mean, dtype=np.float64)), width=width, height=height, angle=angle, **kwargs)


def legend_handles(num_components: int, kind: str = "clusters", n_std=(1.0, 2.0)) -> list:
    """Legend entries shared by the panels of one figure (for a figure-level legend).

    Parameters
    ----------
    num_components : int
        K: one entry per component, in :func:`component_colors`.
    kind : {"clusters", "density"}
        ``"density"``: data, each component and the mixture density (as drawn by
        :func:`plot_density_1d`); ``"clusters"``: each component, the mean marker and the
        ``n_std`` contour styles (as drawn by :func:`plot_clusters_2d`).
    n_std : sequence of float
        The contour levels, in standard deviations, whose line styles are listed
        (``"clusters"`` only).

    Returns
    -------
    list of matplotlib artists
        Handles for ``fig.legend(handles=...)``.
    """
    colors = component_colors(num_components)
    if kind == "density":
        from matplotlib.patches import Patch

        handles = [Patch(facecolor="0.8", edgecolor="white", label="data")]
        handles += [Line2D([], [], color=colors[j], lw=1.3, label=f"component {j}") for j in range(num_components)]
        return handles + [Line2D([], [], color="black", lw=1.6, ls=(0, (4, 1.5)), label="mixture density")]
    if kind == "clusters":
        styles = ("-", "--", ":", "-.")
        handles = [Line2D([], [], color=colors[j], marker="o", ls="none", ms=6, label=f"component {j}") for j in range(num_components)]
        handles.append(Line2D([], [], color="0.5", mec="black", marker="X", ls="none", ms=8, label="mean"))
        return handles + [Line2D([], [], color="0.3", ls=styles[q % 4], label=_contour_label(s)) for q, s in enumerate(n_std)]
    raise ValueError(f"kind must be 'density' or 'clusters', got {kind!r}.")


def _normal_pdf(grid, mean, var):
    return np.exp(-0.5 * (grid - mean) ** 2 / var) / np.sqrt(2 * np.pi * var)


# ----------------------------------------------------------------------------------------------
# 1-D density
# ----------------------------------------------------------------------------------------------
def plot_density_1d(
    result: FitResult,
    x,
    ax=None,
    *,
    feature: int | str = 0,
    bins="auto",
    components: bool = True,
    legend: bool = True,
    xlim=None,
    num_grid: int = 512,
    hist: bool = True,
):
    """Histogram of one feature with the fitted mixture density and each weighted component.

    For D > 1 the curve is the mixture's marginal density of ``feature`` (a Gaussian mixture
    with means ``means[:, feature]`` and variances ``covariances[:, feature, feature]``).

    Parameters
    ----------
    result : FitResult
        The fit whose density is drawn.
    x : array (N,) or (N, D)
        Data to histogram (normally the training data).
    ax : matplotlib Axes, optional
        Axes to draw in; default a new figure.
    feature : int or str
        Column to plot: its index, or its name (the fit's ``feature_names``).
    bins : int, sequence or str
        Histogram bins (``numpy.histogram_bin_edges`` rules). The bars are the data's density,
        ``count / (N * width)`` over all N rows (those with ``feature`` observed), on the curve's
        scale: a window (``xlim``) narrower than the data does not rescale them.
    components : bool
        Also draw each weighted component ``pi_k N(x | mu_k, sigma_k^2)``.
    legend : bool
        Add a legend (data, components with their weights, mixture density).
    xlim : (float, float), optional
        Range of the density grid and the x axis; default: the data range padded by 15%.
    num_grid : int
        Points of the density grid.
    hist : bool
        Draw the histogram (False to overlay curves on an existing one).

    Returns
    -------
    matplotlib Axes
        The mixture curve is the line labelled ``"mixture density"``.
    """
    d = result.num_features
    names = list(result.feature_names or ())
    if isinstance(feature, str):
        if feature not in names:
            raise ValueError(f"feature {feature!r} is not one of the fit's features {names}.")
        feature = names.index(feature)
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < d:
        raise ValueError(f"feature must be a column index in [0, {d}) or a feature name, got {feature!r}.")
    feature = int(feature)
    values = _data(x, result, (feature,))[:, feature]  # every row that observes the feature
    ax = _new_axes(ax)
    k = result.num_components
    colors = component_colors(k)
    covs = _expand(result.covariances, result.covariance_type, k, d)
    mu = result.means[:, feature]
    var = covs[:, feature, feature]
    lo, hi = xlim if xlim is not None else _padded_limits(values, 0.15)
    grid = np.linspace(lo, hi, int(num_grid))
    comp = result.weights[:, None] * _normal_pdf(grid[None], mu[:, None], var[:, None])  # (K, G)

    if hist:  # the data's density: counts over all rows and the bin width, as the curve's (whatever the window)
        edges = np.histogram_bin_edges(values, bins=bins, range=(lo, hi))
        counts, _ = np.histogram(values, bins=edges)
        ax.hist(edges[:-1], bins=edges, weights=counts / (values.size * np.diff(edges)), color="0.8", edgecolor="white",
                linewidth=0.4, label="data")
    if components:
        for j in range(k):
            ax.fill_between(grid, comp[j], color=colors[j], alpha=0.18, lw=0)
            ax.plot(grid, comp[j], color=colors[j], lw=1.3, label=f"component {j} ($\\pi$ = {result.weights[j]:.2f})")
    ax.plot(grid, comp.sum(0), color="black", lw=1.6, ls=(0, (4, 1.5)), label="mixture density")
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(_axis_label(result, feature))
    ax.set_ylabel("density")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    _style(ax)
    if legend:
        ax.legend(frameon=False, fontsize="small")
    return ax


# ----------------------------------------------------------------------------------------------
# 2-D clusters
# ----------------------------------------------------------------------------------------------
def _draw_ellipses(ax, means, covs, colors, n_std, *, lw=1.6, alpha=1.0, zorder=3, halo=False):
    styles = ("-", "--", ":", "-.")
    patches = []
    for j in range(means.shape[0]):
        for i, s in enumerate(n_std):
            width = lw if i == 0 else 0.8 * lw
            e = covariance_ellipse(
                means[j], covs[j], s, edgecolor=colors[j], lw=width,
                ls=styles[i % len(styles)], alpha=alpha, zorder=zorder,
            )
            if halo:  # a white outline keeps the contour visible over dense points of its own colour
                e.set_path_effects([patheffects.Stroke(linewidth=width + 2.0, foreground="white", alpha=0.9), patheffects.Normal()])
            ax.add_patch(e)
            patches.append(e)
    return patches


def plot_clusters_2d(
    result: FitResult,
    x,
    ax=None,
    features=(0, 1),
    *,
    n_std=(1.0, 2.0),
    legend: bool = True,
    limits=None,
    point_size: float | None = None,
):
    """Points coloured by responsibility, component ellipses and means, for two features.

    Each point's colour is the blend ``sum_k r_nk c_k`` of the component colours weighted by
    its responsibilities (``result.predict_proba``), so uncertain points between components
    show a mixed colour. Ellipses are the ``n_std`` Mahalanobis contours of each component's
    covariance restricted to ``features`` (eigen-decomposition); means are marked with crosses.

    Parameters
    ----------
    result : FitResult
        The fit: its responsibilities colour the points, its components give the ellipses.
    x : array (N, D)
        Data to plot (normally the training data), with the fit's features.
    ax : matplotlib Axes, optional
        Axes to draw in; default a new figure.
    features : (int, int) or (str, str)
        Columns on the x and y axes: indices, or names (the fit's ``feature_names``).
    n_std : sequence of float
        Contour levels in standard deviations (solid, dashed, ...).
    legend : bool
        Add a legend (components with their weights, contour levels).
    limits : ((x0, x1), (y0, y1)), optional
        Axis limits; default: the data range padded by 8% (ellipses may extend beyond it).
    point_size : float, optional
        Marker area of the points (matplotlib's ``s``); default scaled to the number of rows,
        from 30 for small data down to 4.

    Returns
    -------
    matplotlib Axes
    """
    i, j = _check_features(features, result.num_features, result.feature_names)
    arr = _data(x, result, (i, j))  # colours from every column observed (predict_proba marginalises the rest)
    ax = _new_axes(ax, figsize=(4.6, 4.0))
    k = result.num_components
    colors = component_colors(k)
    resp = np.asarray(result.predict_proba(arr), dtype=np.float64)
    point_colors = np.clip(resp @ colors, 0.0, 1.0)
    size = point_size if point_size is not None else float(np.clip(3000.0 / arr.shape[0], 4.0, 30.0))
    ax.scatter(arr[:, i], arr[:, j], c=point_colors, s=size, lw=0, alpha=0.85, zorder=2, rasterized=arr.shape[0] > 5000)
    covs = _expand(result.covariances, result.covariance_type, k, result.num_features)[:, [i, j]][:, :, [i, j]]
    means = result.means[:, [i, j]]
    _draw_ellipses(ax, means, covs, colors, tuple(n_std), halo=True)
    ax.scatter(means[:, 0], means[:, 1], marker="X", s=110, c=colors, edgecolors="black", linewidths=0.8, zorder=6)
    _number_components(ax, means)
    xlim, ylim = limits if limits is not None else (_padded_limits(arr[:, i]), _padded_limits(arr[:, j]))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(_axis_label(result, i))
    ax.set_ylabel(_axis_label(result, j))
    _style(ax)
    if legend:
        handles = [
            Line2D([], [], color=colors[c], marker="o", ls="none", ms=6, label=f"component {c} ($\\pi$ = {result.weights[c]:.2f})")
            for c in range(k)
        ]
        styles = ("-", "--", ":", "-.")
        handles += [Line2D([], [], color="0.3", ls=styles[q % 4], label=_contour_label(s)) for q, s in enumerate(n_std)]
        ax.legend(handles=handles, frameon=True, framealpha=0.85, edgecolor="none", fontsize="x-small", loc="best")
    return ax


#: :func:`plot_pairs`'s default: at most this many features (their pairs: 15 panels).
PAIRS_MAX_FEATURES = 6


def plot_pairs(result: FitResult, x, *, features=None, n_std=(1.0, 2.0), point_size: float | None = None):
    """Every pair of features: :func:`plot_clusters_2d`'s panels in the lower triangle of a grid
    (a scatter-plot matrix, as mclust's classification plot), with one legend.

    For data of more than two features, where one panel of two shows only a projection.

    Parameters
    ----------
    result : FitResult
        The fit (at least 2 features).
    x : array (N, D)
        Data to plot (normally the training data), with the fit's features.
    features : sequence of int or str, optional
        The features drawn, in order (indices, or names among ``feature_names``); default every
        feature up to :data:`PAIRS_MAX_FEATURES` (the first ones, the title saying so beyond).
    n_std : sequence of float
        Contour levels in standard deviations.
    point_size : float, optional
        Marker area of the points; default smaller than a single panel's.

    Returns
    -------
    (Figure, ndarray of Axes)
        Axes ``(m - 1, m - 1)`` for ``m`` features: panel ``[r, c]`` plots feature ``c`` across and
        ``r + 1`` up; the panels above the diagonal are hidden.
    """
    d = result.num_features
    if d < 2:
        raise ValueError("plot_pairs needs at least 2 features; for 1-D data use plot_density_1d.")
    names = list(result.feature_names)
    if features is None:
        chosen = list(range(min(d, PAIRS_MAX_FEATURES)))
    else:
        chosen = [names.index(f) if isinstance(f, str) and f in names else f for f in features]
        if (len(chosen) < 2 or len(set(chosen)) != len(chosen)
                or not all(isinstance(f, int | np.integer) and 0 <= f < d for f in chosen)):
            raise ValueError(f"features must be at least two different column indices in [0, {d}) or names among "
                             f"{names}, got {features!r}.")
    m = len(chosen)
    size = point_size if point_size is not None else float(np.clip(1000.0 / max(len(np.asarray(x)), 1), 2.0, 12.0))
    fig, axes = plt.subplots(m - 1, m - 1, figsize=(0.6 + 2.5 * (m - 1), 0.6 + 2.3 * (m - 1)), layout="constrained",
                             squeeze=False)
    for r in range(m - 1):
        for c in range(m - 1):
            ax = axes[r, c]
            if c > r:
                ax.set_visible(False)
                continue
            plot_clusters_2d(result, x, ax=ax, features=(chosen[c], chosen[r + 1]), n_std=n_std, legend=False,
                             point_size=size)
            if c > 0:
                ax.set_ylabel("")
            if r < m - 2:
                ax.set_xlabel("")
    k = result.num_components
    handles = legend_handles(k, "clusters", n_std)
    for j in range(k):  # the components' weights, as a single panel's legend gives them
        handles[j].set_label(f"component {j} ($\\pi$ = {result.weights[j]:.2f})")
    where = axes[0, m - 2] if m > 2 else None
    if where is not None:  # the empty upper corner holds the legend
        where.set_visible(True)
        where.axis("off")
        where.legend(handles=handles, loc="upper right", frameon=False, fontsize="small")
    else:
        axes[0, 0].legend(handles=handles, frameon=True, framealpha=0.85, edgecolor="none", fontsize="x-small")
    if features is None and d > PAIRS_MAX_FEATURES:
        fig.suptitle(f"the first {PAIRS_MAX_FEATURES} of {d} features (plot_pairs(features=...) draws others)",
                     fontsize="small")
    return fig, axes


# ----------------------------------------------------------------------------------------------
# EM iterations
# ----------------------------------------------------------------------------------------------
def plot_em_iterations(
    x,
    fits,
    *,
    features=(0, 1),
    axes=None,
    bins="auto",
    labels=None,
    legend: bool = True,
):
    """Panels of EM after chosen numbers of iterations, e.g. from one common starting point.

    1-D data get histogram + density panels (:func:`plot_density_1d`); D >= 2 data get
    responsibility-coloured scatter panels with ellipses (:func:`plot_clusters_2d`). All
    panels share axis limits; each is titled with its iteration and log-likelihood.

    Parameters
    ----------
    x : array (N,) or (N, D), or DataFrame
        The data the fits were made on. A DataFrame's columns are matched to the fits' feature
        names (reordered as the fits'); the axis labels are the fits' feature names. Rows with
        a missing value (NaN) in a column drawn are left out.
    fits : dict int -> FitResult
        The fit after each number of iterations, e.g. :func:`bayesgmm.em.fit_em_path`'s.
    features : (int, int) or (str, str)
        Columns shown for D >= 2: indices, or names (the fit's ``feature_names``).
    axes : sequence of Axes, optional
        One per iteration; default a new row of panels.
    bins : int, sequence or str
        Histogram bins for 1-D data.
    labels : sequence of str, optional
        Panel titles (default ``"start"`` / ``"iteration t"``).
    legend : bool
        Add one legend: below the panels when this function creates the figure, else in
        the first of the given ``axes``.

    Returns
    -------
    fig, axes
    """
    if not isinstance(fits, dict) or not fits or not all(isinstance(r, FitResult) for r in fits.values()):
        raise ValueError("fits must be a non-empty dict mapping an iteration to its FitResult "
                         "(see bayesgmm.em.fit_em_path).")
    its = list(fits)
    first = fits[its[0]]
    one_d = first.num_features == 1
    if not one_d:
        f = _check_features(features, first.num_features, first.feature_names)
    arr = _data(x, first, (0,) if one_d else f)
    if labels is not None and len(labels) != len(its):  # before a figure is made, which would be left open
        raise ValueError(f"labels must hold one title per iteration ({len(its)}), got {len(labels)}.")
    own_figure = axes is None
    if own_figure:
        fig, axes = plt.subplots(1, len(its), figsize=(3.2 * len(its), 3.3), layout="constrained", squeeze=False)
        axes = axes[0]
    else:
        axes = np.asarray(axes, dtype=object).ravel()
        if axes.size != len(its):
            raise ValueError(f"axes must hold one Axes per iteration ({len(its)}), got {axes.size}.")
        fig = axes[0].figure
    if one_d:
        xlim = _padded_limits(arr[:, 0], 0.15)
        edges = np.histogram_bin_edges(arr[:, 0], bins=bins, range=xlim)
        ymax = 0.0
    else:
        limits = (_padded_limits(arr[:, f[0]]), _padded_limits(arr[:, f[1]]))
    for n, (t, ax) in enumerate(zip(its, axes)):
        r = fits[t]
        if one_d:
            plot_density_1d(r, arr, ax=ax, bins=edges, xlim=xlim, legend=False)
            ymax = max(ymax, ax.get_ylim()[1])
        else:
            plot_clusters_2d(r, arr, ax=ax, features=f, legend=False, limits=limits)
        title = _plain(labels[n]) if labels is not None else ("start" if t == 0 else f"iteration {t}")
        ax.set_title(title, fontsize="medium")
        weights = ", ".join(f"{w:.2f}" for w in r.weights)
        ax.text(
            0.98, 0.98, f"log L = {r.log_likelihood:.1f}\n$\\pi$ = ({weights})", transform=ax.transAxes,
            ha="right", va="top", fontsize="x-small", bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.5),
            zorder=5,
        )
        if n > 0:
            ax.set_ylabel("")
    if one_d:
        for ax in axes:
            ax.set_ylim(0, ymax * 1.12)  # head room for the panel text
    if legend:
        handles = legend_handles(fits[its[0]].num_components, "density" if one_d else "clusters")
        if own_figure:
            fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize="small")
        else:
            axes[0].legend(handles=handles, frameon=False, fontsize="x-small", loc="upper left")
    return fig, axes


# ----------------------------------------------------------------------------------------------
# Objective trace
# ----------------------------------------------------------------------------------------------
def plot_trace(result: FitResult, ax=None, *, gap: bool = False, first: int = 0):
    """The objective (log-likelihood, log posterior or ELBO) against iteration; for a sampler
    (NUTS, Gibbs) the log posterior density of each draw, one line per chain.

    Parameters
    ----------
    result : FitResult
        The fit whose ``trace`` is drawn.
    ax : matplotlib Axes, optional
        Axes to draw in; default a new figure.
    gap : bool
        Plot ``final - objective`` on a log axis instead, which shows the convergence rate
        (linear convergence is a straight line); non-positive gaps are left out. EM and VB
        only (a sampler's draws do not converge to a final value; SVI's ELBO is noisy).
    first : int
        First iteration (draw, for a sampler) shown (e.g. 1 to leave out a poor starting point
        that would squash the scale).

    Returns
    -------
    matplotlib Axes
    """
    trace = np.asarray(result.trace, dtype=np.float64)
    finite = np.isfinite(trace)
    if not finite.any():
        raise ValueError("result.trace holds no finite values; nothing to plot.")
    chains = int(result.info.get("num_chains", 1)) if result.method in _SAMPLERS else 0
    length = trace.size // chains if chains else trace.size
    if not 0 <= int(first) < length:
        raise ValueError(f"first must be an {'draw' if chains else 'iteration'} index in [0, {length}), got {first!r}.")
    if chains:
        if gap:
            raise ValueError("gap=True plots an optimiser's distance to its final objective; a sampler's draws have "
                             "none (plot gap=False).")
        return _plot_chains(result, trace.reshape(chains, length), _new_axes(ax, figsize=(4.6, 3.2)), int(first))
    if gap and result.method == "svi":  # its one-particle ELBO's noise: the gap to the last value is noise too
        raise ValueError("gap=True plots the distance to a final objective; SVI's trace is a noisy one-particle "
                         "ELBO whose last value is no final objective (plot gap=False).")
    ax = _new_axes(ax, figsize=(4.6, 3.2))
    steps = np.arange(trace.size)
    finite = finite & (steps >= int(first))
    label = _OBJECTIVE_LABELS.get(result.objective, result.objective)
    marker = "o" if trace.size <= 60 else None
    if gap:
        g = trace[finite][-1] - trace
        keep = finite & (g > 0)
        ax.semilogy(steps[keep], g[keep], color="black", marker=marker, ms=3, lw=1.4)
        ax.set_ylabel(f"final {label} $-$ {label}")
    else:
        ax.plot(steps[finite], trace[finite], color="black", marker=marker, ms=3, lw=1.4)
        ax.set_ylabel(label)
    unit = "step" if result.method == "svi" else "iteration"
    ax.set_xlabel("optimisation step" if unit == "step" else unit)
    status = "converged" if result.converged else "not converged"
    ax.set_title(f"{display_name(result.method)}: {status} after {result.n_iter} {unit}s", fontsize="medium")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _style(ax)
    return ax


#: Methods whose ``trace`` is the log posterior density of every draw, chains concatenated.
_SAMPLERS = ("mcmc", "gibbs")


def _plot_chains(result: FitResult, trace, ax, first: int):
    """:func:`plot_trace` of a sampler: each chain's log posterior density against the draw."""
    label = _OBJECTIVE_LABELS.get(result.objective, result.objective)
    chains, length = trace.shape
    steps = np.arange(first, length)
    colors = plt.get_cmap("tab10")(np.arange(chains) % 10)
    for c in range(chains):
        ax.plot(steps, trace[c, first:], color=colors[c] if chains > 1 else "black", lw=0.9, alpha=0.85,
                label=f"chain {c}")
    ax.set_xlabel("draw (after warm-up)")
    ax.set_ylabel(label)
    ax.set_title(f"{display_name(result.method)}: {chains} chain{'s' if chains > 1 else ''} of {length} draws",
                 fontsize="medium")
    if 1 < chains <= 10:
        ax.legend(frameon=False, fontsize="x-small", ncols=min(chains, 4))
    ax.xaxis.get_major_locator().set_params(integer=True)
    _style(ax)
    return ax


def plot_num_components(posterior, ax=None, *, title: str | None = None):
    """Bar chart of the posterior of the number of non-empty components.

    Parameters
    ----------
    posterior : pandas.Series
        ``FitResult.num_components_posterior(...)``: probabilities indexed by k = 1..K.
    ax : matplotlib Axes, optional
        Axes to draw in; default a new figure.
    title : str, optional
        Axes title; default names the mode and its probability.

    Returns
    -------
    matplotlib Axes
    """
    probs = np.asarray(posterior, dtype=np.float64)
    ks = np.asarray(getattr(posterior, "index", np.arange(1, probs.size + 1)), dtype=int)
    if probs.ndim != 1 or probs.size == 0 or not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("posterior must be the probabilities of FitResult.num_components_posterior (a Series).")
    ax = _new_axes(ax, figsize=(4.6, 3.2))
    mode = int(ks[np.argmax(probs)])
    ax.bar(ks, probs, color=[_PALETTE[1] if k == mode else _PALETTE[0] for k in ks], width=0.7)
    ax.set_xticks(ks)
    ax.set_xlabel("number of non-empty components $K_+$")
    ax.set_ylabel("posterior probability")
    ax.set_ylim(0, max(1e-9, probs.max()) * 1.12)
    ax.set_title(title or f"posterior of $K_+$ (mode {mode}, P = {probs.max():.2f})", fontsize="medium")
    _style(ax)
    return ax


# ----------------------------------------------------------------------------------------------
# Posterior draws
# ----------------------------------------------------------------------------------------------
def _flat_draws(result: FitResult, num_draws: int):
    if result.draws is None:
        raise ValueError(
            f"result (method={result.method!r}) has no posterior draws; fit with a Bayesian engine "
            "that stores draws (fit_mcmc, fit_svi), or use plot_clusters_2d for a point estimate."
        )
    if int(num_draws) < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}.")
    w, m, c = (np.asarray(result.draws[name], dtype=np.float64) for name in ("weights", "means", "covariances"))
    lead = w.shape[0] * w.shape[1]
    w, m, c = w.reshape(lead, *w.shape[2:]), m.reshape(lead, *m.shape[2:]), c.reshape(lead, *c.shape[2:])
    idx = np.unique(np.linspace(0, lead - 1, min(int(num_draws), lead)).round().astype(int))  # evenly thinned
    return w[idx], m[idx], c[idx]


def plot_posterior_ellipses(
    result: FitResult,
    x,
    num_draws: int = 50,
    ax=None,
    *,
    features=(0, 1),
    n_std: float = 2.0,
    legend: bool = True,
):
    """Posterior uncertainty of the components: one ellipse per draw and component.

    ``num_draws`` label-aligned posterior draws (``result.draws``, evenly thinned over chains
    and draws) each contribute a faint ``n_std`` contour per component, over the data in grey;
    the point estimate's contour and mean are drawn bold. For 1-D results the analogue is
    drawn instead: the mixture density of each draw over the histogram.

    Parameters
    ----------
    result : FitResult
        A fit with posterior draws (VB, SVI, MCMC, Gibbs).
    x : array (N, D)
        Data drawn in grey underneath (normally the training data).
    num_draws : int
        Number of draws shown (evenly thinned; all of them when there are fewer).
    ax : matplotlib Axes, optional
        Axes to draw in; default a new figure.
    features : (int, int) or (str, str)
        Columns on the x and y axes (D >= 2): indices, or names (the fit's ``feature_names``).
    n_std : float
        The contour drawn, in standard deviations.
    legend : bool
        Add a legend (components' draws, point estimate; for D = 1 the density's draws).

    Returns
    -------
    matplotlib Axes
    """
    k, d = result.num_components, result.num_features
    drawn = (0,) if d == 1 else _check_features(features, d, result.feature_names)
    arr = _data(x, result, drawn)
    w, m, c = _flat_draws(result, num_draws)
    colors = component_colors(k)
    covs = _expand(c, result.covariance_type, k, d)  # (S, K, D, D)
    alpha = float(np.clip(6.0 / len(w), 0.05, 0.5))
    if d == 1:
        ax = _new_axes(ax)
        lo, hi = _padded_limits(arr[:, 0], 0.15)
        grid = np.linspace(lo, hi, 512)
        ax.hist(arr[:, 0], bins="auto", range=(lo, hi), density=True, color="0.82", edgecolor="white", linewidth=0.5)
        dens = np.sum(w[:, :, None] * _normal_pdf(grid, m[:, :, 0, None], covs[:, :, 0, 0, None]), axis=1)
        ax.plot(grid, dens.T, color=_DRAWS_COLOR, lw=0.8, alpha=alpha)  # the mixture's, no component's colour
        plot_density_1d(result, arr, ax=ax, components=False, legend=False, xlim=(lo, hi), hist=False)
        ax.set_title(f"{len(w)} posterior draws of the density", fontsize="medium")
        if legend:
            handles = [Line2D([], [], color=_DRAWS_COLOR, lw=1.0, label="posterior draws"),
                       Line2D([], [], color="black", lw=1.6, ls=(0, (4, 1.5)), label="point estimate")]
            ax.legend(handles=handles, frameon=True, framealpha=0.85, edgecolor="none", fontsize="x-small", loc="best")
        return ax
    i, j = drawn
    ax = _new_axes(ax, figsize=(4.6, 4.0))
    ax.scatter(arr[:, i], arr[:, j], s=float(np.clip(3000.0 / arr.shape[0], 4.0, 30.0)), c="0.65", lw=0, zorder=1)
    sub = covs[:, :, [i, j]][:, :, :, [i, j]]
    for s in range(len(w)):
        _draw_ellipses(ax, m[s][:, [i, j]], sub[s], colors, (n_std,), lw=0.7, alpha=alpha, zorder=2)
    point_covs = _expand(result.covariances, result.covariance_type, k, d)[:, [i, j]][:, :, [i, j]]
    _draw_ellipses(ax, result.means[:, [i, j]], point_covs, np.zeros((k, 3)), (n_std,), lw=1.6, zorder=4, halo=True)
    ax.scatter(m[:, :, i].ravel(), m[:, :, j].ravel(), s=3, c=np.tile(colors, (len(w), 1)), lw=0, alpha=min(1.0, 3 * alpha), zorder=3)
    ax.set_xlim(*_padded_limits(arr[:, i]))
    ax.set_ylim(*_padded_limits(arr[:, j]))
    ax.set_xlabel(_axis_label(result, i))
    ax.set_ylabel(_axis_label(result, j))
    _style(ax)
    if legend:
        handles = [Line2D([], [], color=colors[q], lw=1.2, label=f"component {q}: draws") for q in range(k)]
        handles.append(Line2D([], [], color="black", lw=1.6, label="point estimate"))
        ax.legend(handles=handles, frameon=True, framealpha=0.85, edgecolor="none", fontsize="x-small", loc="best")
    ax.set_title(f"{len(w)} posterior draws, {n_std:g}-sd contours", fontsize="medium")
    return ax


# ----------------------------------------------------------------------------------------------
# Engines side by side
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
def plot_engines(results: dict, x, *, features=(0, 1), num_draws: int = 30, align: bool = True, axes=None):
    """One panel per engine, same axes, same component colours.

    D >= 2: :func:`plot_clusters_2d` panels, with faint posterior-draw ellipses added for
    results that carry ``draws``; D = 1: :func:`plot_density_1d` panels. Each panel is titled
    with its name and training log-likelihood at the point estimate.

    Parameters
    ----------
    results : dict str -> FitResult
        Panel title -> fit; all fitted on the same features.
    x : array (N, D)
        Data drawn in every panel (normally the training data).
    features : (int, int) or (str, str)
        Columns on the x and y axes (D >= 2): indices, or names (the fit's ``feature_names``).
    num_draws : int
        Posterior draws shown per Bayesian panel (0 to show none).
    align : bool
        Reorder each fit's components to match the first fit's (:func:`bayesgmm.labels.match_result`),
        so a component has the same colour in every panel.
    axes : sequence of Axes, optional
        One per result; default a new row of panels sharing their axes.

    Returns
    -------
    fig, axes
    """
    if not isinstance(results, dict) or not results:
        raise ValueError("results must be a non-empty dict mapping a panel name to a FitResult.")
    dims = {r.num_features for r in results.values()}
    if len(dims) != 1:
        raise ValueError(f"all results must be fitted on the same number of features, got {sorted(dims)}.")
    first = next(iter(results.values()))
    one_d = first.num_features == 1
    if not one_d:
        f = _check_features(features, first.num_features, first.feature_names)
    arr = _data(x, first, (0,) if one_d else f)
    if align:
        ks = {r.num_components for r in results.values()}
        if len(ks) == 1:
            results = {name: match_result(r, first) for name, r in results.items()}
    n = len(results)
    if axes is None:
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), layout="constrained", squeeze=False, sharex=True, sharey=True)
        axes = axes[0]
    else:
        axes = np.asarray(axes, dtype=object).ravel()
        if axes.size != n:
            raise ValueError(f"axes must hold one Axes per result ({n}), got {axes.size}.")
        fig = axes[0].figure
    if not one_d:
        limits = (_padded_limits(arr[:, f[0]]), _padded_limits(arr[:, f[1]]))
    draws_legend = False
    for q, ((name, r), ax) in enumerate(zip(results.items(), axes)):
        if one_d:
            plot_density_1d(r, arr, ax=ax, legend=q == 0)
        else:
            with_draws = r.draws is not None and num_draws > 0
            if with_draws:
                w, m, c = _flat_draws(r, num_draws)
                k = r.num_components
                sub = _expand(c, r.covariance_type, k, r.num_features)[:, :, list(f)][:, :, :, list(f)]
                for s in range(len(w)):
                    _draw_ellipses(ax, m[s][:, list(f)], sub[s], component_colors(k), (2.0,), lw=0.6, alpha=0.15, zorder=1)
            plot_clusters_2d(r, arr, ax=ax, features=f, legend=q == 0, limits=limits)
            if with_draws and not draws_legend:  # say once what the faint ellipses are
                draws_legend = True
                if ax.get_legend() is not None:
                    ax.add_artist(ax.get_legend())
                entry = Line2D([], [], color="0.45", lw=0.8, alpha=0.6, label=f"{len(w)} posterior draws (2 sd)")
                ax.legend(handles=[entry], frameon=True, framealpha=0.85, edgecolor="none", fontsize="x-small",
                          loc="lower right")
        ax.set_title(f"{_plain(display_name(name))}\nlog L = {r.log_likelihood:.1f}", fontsize="medium")
        if q > 0:
            ax.set_ylabel("")
    if not one_d and first.num_features > 2:  # a projection: say which, and how to see the rest
        names = [_plain(first.feature_names[i]) for i in f]
        fig.suptitle(f"features {names[0]} and {names[1]} of {first.num_features} (plot_pairs draws every pair)",
                     fontsize="small")
    return fig, axes


def display_name(method: str) -> str:
    """How an engine is named in figures and tables ("NUTS" for ``"mcmc"``, "EM" for ``"em"``,
    ...); other names unchanged."""
    from .reporting import DISPLAY_NAMES

    return DISPLAY_NAMES.get(method, method)


# ----------------------------------------------------------------------------------------------
# Simulation-based calibration
# ----------------------------------------------------------------------------------------------
_SBC_KINDS = ("hist", "ecdf")
_BAND_COLOR = "0.82"  # the histograms' pointwise band
_ECDF_BAND_COLOR = "#f1ddb0"  # the ECDF's band: another tone, so the two kinds are told apart in one figure


def _sbc_panels(results, quantities):
    """``{row name: SBCResult}`` and the quantities shown (in the first result's order)."""
    from .ranks import SBCResult

    if isinstance(results, SBCResult):
        results = {None: results}
    if not isinstance(results, dict) or not results or not all(isinstance(r, SBCResult) for r in results.values()):
        raise ValueError("result must be an SBCResult or a non-empty dict mapping a row name to an SBCResult.")
    first = next(iter(results.values()))
    if quantities is None:
        quantities = [q for q in first.quantities if all(q in r.quantities for r in results.values())]
    else:
        quantities = [quantities] if isinstance(quantities, str) else list(quantities)
        missing = sorted({q for q in quantities for r in results.values() if q not in r.quantities})
        if missing:
            raise ValueError(f"quantities {missing} are not in every result; choose from {list(first.quantities)}.")
    if not quantities:
        raise ValueError("no test quantity to plot (the results share none).")
    return results, quantities


def _sbc_title(results: dict) -> str:
    """"SBC of <engine>: K = ., D = ., N = ., R replications, L ranks" (the design shared by the
    results; engines listed when several)."""
    settings = [res.settings for res in results.values()]
    engines = ", ".join(dict.fromkeys(display_name(str(st.get("method", "?"))) for st in settings))
    parts = []
    for key, label in (("num_components", "K"), ("num_features", "D"), ("num_obs", "N")):
        values = sorted({st.get(key) for st in settings if st.get(key) is not None})
        if values:
            parts.append(f"{label} = {'/'.join(str(v) for v in values)}")
    reps = sorted({st.get("num_replications") for st in settings if st.get("num_replications") is not None})
    ranked = sorted({len(res.ranks) for res in results.values()})
    if reps:  # the ranks drawn: replications that failed (on_error="record") have none
        done = "" if ranked == reps else f"{'/'.join(str(v) for v in ranked)} of "
        parts.append(f"{done}{'/'.join(str(v) for v in reps)} replications")
    return f"SBC of {engines}: " + ", ".join(parts)


def _sbc_hist_panel(ax, ranks, num_ranks, edges, prob, pvalue, color):
    """Rank histogram with the pointwise (prob) band of each bin's count under uniformity."""
    from scipy import stats

    r = ranks.size
    widths = np.diff(edges)
    counts = np.bincount(np.searchsorted(edges, ranks, side="right") - 1, minlength=widths.size)
    p_bin = widths / (num_ranks + 1.0)
    lo = stats.binom.ppf((1.0 - prob) / 2.0, r, p_bin)
    hi = stats.binom.ppf(1.0 - (1.0 - prob) / 2.0, r, p_bin)
    band = ax.fill_between(edges, np.r_[lo, lo[-1]], np.r_[hi, hi[-1]], step="post", color=_BAND_COLOR, lw=0, zorder=1,
                           label=f"{prob:.0%} band per bin")
    band.set_gid("band")
    for edge in (lo, hi):  # the band's limits stay visible over the bars
        ax.step(edges, np.r_[edge, edge[-1]], where="post", color="0.55", lw=0.6, zorder=3)
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=color, alpha=0.85, edgecolor="white", linewidth=0.5, zorder=2)
    exp = r * p_bin
    ax.step(edges, np.r_[exp, exp[-1]], where="post", color="black", lw=0.9, ls=(0, (3, 2)), zorder=3, label="expected")
    ax.set_xlim(0, num_ranks + 1)
    ax.set_ylim(0, max(np.max(hi), np.max(counts)) * 1.18)
    _panel_pvalue(ax, r"$\chi^2$", pvalue)


def _sbc_ecdf_panel(ax, ranks, num_ranks, band, prob, pvalue, color):
    """ECDF minus the uniform CDF at the band's points, with the band."""
    r = ranks.size
    z = band.z
    j = np.round(z * (num_ranks + 1)).astype(np.int64)
    ecdf = np.sum(ranks[:, None] < j[None], axis=0) / r
    zz = np.r_[0.0, z, 1.0]
    kind = "simultaneous" if band.simultaneous else "pointwise"
    fill = ax.fill_between(zz, np.r_[0.0, band.lower - z, 0.0], np.r_[0.0, band.upper - z, 0.0], step="post",
                           color=_ECDF_BAND_COLOR, lw=0, zorder=1, label=f"{prob:.0%} {kind} band")
    fill.set_gid("band")
    ax.step(zz, np.r_[0.0, ecdf - z, 0.0], where="post", color=color, lw=1.3, zorder=3, label="ECDF $-$ uniform")
    ax.axhline(0.0, color="black", lw=0.6, zorder=2)
    ax.set_xlim(0, 1)
    lim = 1.15 * max(np.max(np.abs(band.lower - z)), np.max(np.abs(band.upper - z)), np.max(np.abs(ecdf - z)))
    ax.set_ylim(-lim, lim)
    _panel_pvalue(ax, "ECDF", pvalue)


def _panel_pvalue(ax, name, pvalue):
    weight = "bold" if pvalue < 0.01 else "normal"
    text = f"{name} p < 0.001" if pvalue < 0.001 else f"{name} p = {pvalue:.2g}"
    ax.text(0.97, 0.96, text, transform=ax.transAxes, ha="right", va="top", fontsize="x-small",
            fontweight=weight, bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.0), zorder=5)


def plot_sbc_ranks(
    result,
    kind: str = "hist",
    *,
    quantities=None,
    prob: float = 0.95,
    simultaneous: bool = True,
    bins=None,
    ncols: int | None = None,
    axes=None,
    legend: bool = True,
):
    """Simulation-based calibration ranks: histograms or ECDF differences, one panel per quantity.

    ``kind="hist"`` (Talts et al. 2018): the rank histogram with, shaded, the central ``prob``
    interval of each bin's count under uniformity (Binomial(R, width / (L + 1)) quantiles, a
    *pointwise* band: with B bins about ``B (1 - prob)`` bars leave it by chance), and the
    expected count dashed.

    ``kind="ecdf"`` (Säilynoja, Bürkner & Vehtari 2022): the ECDF of the fractional ranks
    ``z = j / (L + 1)`` minus the uniform CDF, with a band of probability ``prob``:
    *simultaneous* by default (the whole curve of a calibrated engine stays inside with
    probability ``prob``, :func:`bayesgmm.calibration.ecdf_band`), or pointwise binomial quantiles
    (``simultaneous=False``). A curve above zero means ranks too small (the posterior sits
    above the truth), a hump or valley in the middle a posterior too wide or too narrow.

    Each panel shows the p-value of the matching test (chi-square or ECDF; bold below 0.01).

    Parameters
    ----------
    result : SBCResult or dict str -> SBCResult
        One result (panels wrap over ``ncols`` columns), or several (one row each, named by the
        dict keys, e.g. engines side by side).
    kind : {"hist", "ecdf"}
        Rank histograms or ECDF differences (see above).
    quantities : sequence of str, optional
        Columns of ``result.ranks`` to show (default: all, or those shared by every result).
    prob : float in (0, 1)
        Probability of the bands.
    simultaneous : bool
        ECDF band simultaneous (True) or pointwise (False).
    bins : int, optional
        Histogram bins (default: the chi-square bins of the result, ``result.bin_edges``); the
        panel's chi-square p-value is that of the bins drawn.
    ncols : int, optional
        Panels per row for a single result (default up to 4).
    axes : array of Axes, optional
        One per panel, in row-major order.
    legend : bool
        Legend of the band and the reference line: below the panels when this function creates
        the figure, else in the first panel.

    Returns
    -------
    fig, axes
        ``axes`` is a 2-D array (rows, columns).
    """
    from .ranks import chi_square_test, ecdf_band, rank_bins

    if kind not in _SBC_KINDS:
        raise ValueError(f"kind must be one of {_SBC_KINDS}, got {kind!r}.")
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob!r}.")
    results, quantities = _sbc_panels(result, quantities)
    nq, nr = len(quantities), len(results)
    if nr == 1:
        ncols = min(nq, 4) if ncols is None else int(ncols)
        if ncols < 1:
            raise ValueError(f"ncols must be a positive integer, got {ncols!r}.")
        nrows = -(-nq // ncols)
    else:
        nrows, ncols = nr, nq
    own_figure = axes is None
    if own_figure:
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.1 * nrows + 0.5), layout="constrained", squeeze=False)
    else:
        axes = np.asarray(axes, dtype=object)
        if axes.size < nq * nr:
            raise ValueError(f"axes must hold at least {nq * nr} Axes (one per panel, row-major), got {axes.size}.")
        fig = axes.flat[0].figure
    flat = axes.ravel()
    color = _PALETTE[0]
    what = "count" if kind == "hist" else "ECDF $-$ uniform"
    for row, (name, res) in enumerate(results.items()):
        num_ranks = res.num_ranks
        p = res.p_values
        if kind == "ecdf":
            band = ecdf_band(len(res.ranks), num_ranks, prob=prob, simultaneous=simultaneous, seed=res.settings["null_seed"])
        for col, q in enumerate(quantities):
            ax = flat[row * nq + col]
            ranks = res.ranks[q].to_numpy()
            if kind == "hist":
                if bins is None:
                    edges, p_chi2 = res.bin_edges, float(p.loc[q, "chi2"])
                else:  # the p-value of the bins drawn
                    edges = rank_bins(num_ranks, len(ranks), int(bins))
                    p_chi2 = chi_square_test(ranks, num_ranks, edges)[2]
                _sbc_hist_panel(ax, ranks, num_ranks, edges, prob, p_chi2, color)
                ax.set_xlabel("rank")
            else:
                _sbc_ecdf_panel(ax, ranks, num_ranks, band, prob, float(p.loc[q, "ecdf"]), color)
                ax.set_xlabel("fractional rank")
            ax.set_title(_plain(q), fontsize="medium")
            ax.tick_params(labelsize="small")
            _style(ax)
            first_in_row = col == 0 if (nr > 1 or axes.ndim == 1) else col % axes.shape[1] == 0
            if first_in_row:
                ax.set_ylabel(what if name is None else f"{_plain(name)}\n{what}")
    for ax in flat[nq * nr:]:
        ax.set_visible(False)
    if own_figure:
        fig.suptitle(_sbc_title(results), fontsize="medium")
    if legend:
        handles, labels = flat[0].get_legend_handles_labels()
        if own_figure:
            fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False, fontsize="small")
        else:
            flat[0].legend(handles, labels, fontsize="xx-small", frameon=False, loc="lower right")
    return fig, axes


# ----------------------------------------------------------------------------------------------
# Model selection
# ----------------------------------------------------------------------------------------------
_CRITERIA = {"bic": "BIC", "aic": "AIC", "icl": "ICL"}
#: The bundled data sets' columns (:mod:`bayesgmm.datasets`), whose axes get units.
_BUNDLED_FEATURES = {("eruptions", "waiting"), ("velocity_km_s",)}


def _contour_label(n_std: float) -> str:
    """A 2-D contour's legend entry with the probability it encloses: ``n`` standard deviations
    of a bivariate normal hold ``1 - exp(-n^2 / 2)`` (39% at 1 sd, 86% at 2, not 68% and 95%)."""
    return f"{n_std:g} sd ({-np.expm1(-0.5 * n_std**2):.0%})"


def _number_components(ax, means) -> None:
    """Each component's number beside its mean, so that a figure printed in grey (where several
    of the palette's colours look alike) still tells the components apart."""
    from matplotlib import patheffects

    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for c, (mx, my) in enumerate(np.asarray(means, np.float64)):
        ax.annotate(str(c), (mx, my), xytext=(6, 6), textcoords="offset points", fontsize="small", fontweight="bold",
                    color="black", zorder=7, path_effects=halo, gid="component number")


#: The colour of the mixture density's posterior draws (1-D), apart from every component's.
_DRAWS_COLOR = "0.55"


def _plain(text) -> str:
    """A user's string (a column or engine name) drawn as written: matplotlib reads text between
    two ``$`` as a formula (``price ($) per unit ($)`` came out as ``price ()perunit()``)."""
    return str(text).replace("$", r"\$")


def _axis_label(result: FitResult, feature: int) -> str:
    """A feature's axis label: with its unit where the fit's features are a bundled data set's
    columns (a column of one's own named ``waiting`` may be in days)."""
    from .datasets import AXIS_LABELS

    names = tuple(str(n) for n in result.feature_names)
    return _plain(AXIS_LABELS.get(names[feature], names[feature]) if names in _BUNDLED_FEATURES else names[feature])


_TYPE_STYLE = {"full": (0, "o"), "diag": (1, "s"), "spherical": (2, "^"), "tied": (3, "D")}
#: mclust's models: a colour each, the marker of their layout (spherical, diagonal, ellipsoidal),
#: solid lines for varying volume and dashed for equal volume.
_MODEL_COLORS = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
                 "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#7f7f7f")
_LAYOUT_MARKERS = {"spherical": "^", "diag": "s", "tied": "D", "full": "o"}


def _selection_style(name: str, position: int) -> dict:
    """Colour, marker and line style of one structure's line in :func:`plot_selection`."""
    from ._covariance_models import MODELS, storage

    if name in _TYPE_STYLE:
        ci, marker = _TYPE_STYLE[name]
        return dict(color=_PALETTE[ci], marker=marker, ls="-")
    if name in MODELS:
        return dict(color=_MODEL_COLORS[MODELS.index(name)], marker=_LAYOUT_MARKERS[storage(name)],
                    ls="--" if name[0] == "E" else "-")
    return dict(color=_PALETTE[(len(_TYPE_STYLE) + position) % len(_PALETTE)], marker="v", ls="-")


def plot_selection(table, criterion: str = "bic", ax=None, *, mark_best: bool = True, legend: bool = True):
    """Information criterion against the number of components, one line per covariance structure.

    The mclust-style model-selection plot, with scikit-learn's sign: *lower is better*
    (``bic = -2 log L + p log N``, ``aic = -2 log L + 2 p``, ``icl = bic - 2 sum_n log max_k r_nk``). The
    best model of the table (smallest criterion among the fits not flagged ``degenerate``, the
    model :meth:`bayesgmm.selection.SelectionResult.best` returns) is ringed and named; degenerate
    fits are crossed out.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per fitted model, with columns ``covariance_type``, ``num_components`` and
        ``criterion`` (e.g. the model-selection table of :mod:`bayesgmm.selection`, with
        ``log_likelihood``, ``num_parameters``, ``bic``, ``aic``, ``icl``). Rows whose criterion
        is NaN (failed fits) are left out.
    criterion : {"bic", "aic", "icl"}
        The column plotted (and minimised for the best model).
    ax : matplotlib Axes, optional
        Axes to draw in; default a new figure.
    mark_best : bool
        Ring and name the best model.
    legend : bool
        Add a legend of the covariance structures (beside the axes when there are more than
        six of them).

    Returns
    -------
    matplotlib Axes
        One line per covariance structure (labelled with it, with the ``full``/``diag``/
        ``spherical``/``tied`` colours and markers of this module; mclust's models a colour each,
        the marker of their layout, dashed when the volume is equal), plus the best-model ring
        (label ``"best"``).
    """
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(_CRITERIA)}, got {criterion!r}.")
    if not (hasattr(table, "columns") and hasattr(table, "groupby")):
        raise ValueError("table must be a pandas DataFrame with columns covariance_type, num_components and the criterion.")
    missing = [c for c in ("covariance_type", "num_components", criterion) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; it needs covariance_type, num_components and {criterion!r}.")
    columns = ["covariance_type", "num_components", criterion] + (["degenerate"] if "degenerate" in table.columns else [])
    data = table[columns].copy()
    data[criterion] = data[criterion].astype(float)
    data = data[np.isfinite(data[criterion].to_numpy())]
    if data.empty:
        raise ValueError(f"table has no finite {criterion!r} value to plot.")
    seen = list(dict.fromkeys(data["covariance_type"]))
    types = sorted(seen, key=lambda t: _TYPE_STYLE[t][0] if t in _TYPE_STYLE else len(_TYPE_STYLE) + seen.index(t))
    many = legend and len(types) > 6  # mclust's 14 models: a two-column legend beside the axes
    ax = _new_axes(ax, figsize=(7.4, 4.0) if many else (4.8, 3.6))
    for position, t in enumerate(types):
        sub = data[data["covariance_type"] == t].sort_values("num_components")
        ax.plot(sub["num_components"].to_numpy(), sub[criterion].to_numpy(), ms=5, lw=1.4, label=str(t),
                **_selection_style(str(t), position))
    degenerate = data["degenerate"].to_numpy(bool) if "degenerate" in data.columns else np.zeros(len(data), bool)
    if degenerate.any():  # criteria of degenerate fits are unreliable: crossed out, never "best"
        flagged = data[degenerate]
        ax.plot(flagged["num_components"].to_numpy(), flagged[criterion].to_numpy(), ls="none", marker="x", ms=9,
                color="0.35", mew=1.2, label="degenerate", zorder=4)
    candidates = data[~degenerate] if (~degenerate).any() else data
    best = candidates.iloc[int(np.argmin(candidates[criterion].to_numpy()))]
    if mark_best:
        ax.plot([best["num_components"]], [best[criterion]], ls="none", marker="o", ms=14, mfc="none", mec="black",
                mew=1.4, label="best", zorder=5)
        ax.annotate(f"best: {best['covariance_type']}, K = {int(best['num_components'])}",
                    (best["num_components"], best[criterion]), xytext=(0, -13), textcoords="offset points",
                    ha="center", va="top", fontsize="x-small")
    ax.set_xlabel("number of components $K$")
    ax.set_ylabel(f"{_CRITERIA[criterion]} (lower is better)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.margins(y=0.15)
    values = data[criterion].to_numpy()
    # the better half of the models, and the best (lower criteria of degenerate fits aside)
    low, typical = values.min(), max(np.quantile(values, 0.5), float(best[criterion]))
    if values.max() - low > 4.0 * max(typical - low, 1e-12 * abs(low)):
        # far worse models (a poor structure) would squash the region of the minimum: keep the
        # better half of the models and the best in view and say that others are off the scale
        span = typical - low
        ax.set_ylim(low - 0.35 * span, typical + 0.6 * span)
        ax.text(0.02 if many else 0.98, 0.98, "worse models off the scale", transform=ax.transAxes,
                ha="left" if many else "right", va="top", fontsize="xx-small", color="0.35")
    _style(ax)
    if legend:
        ax.legend(frameon=False, fontsize="x-small" if many else "small", title="covariance", title_fontsize="small",
                  ncol=2 if many else 1, **(dict(loc="upper left", bbox_to_anchor=(1.0, 1.0)) if many else {}))
    return ax

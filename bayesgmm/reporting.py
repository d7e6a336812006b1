"""Tables for papers: every engine's parameters in one tidy frame, in one component order.

:func:`parameter_table` puts the estimates of several fits (EM, VB, SVI, NUTS, Gibbs, ...) side by
side with their uncertainty, each stated for what it is (a posterior sd and credible interval for
the Bayesian engines; an observed-information or bootstrap standard error and interval for EM),
and with the truth and the error when the data were simulated. Fits label their components
arbitrarily, so every fit is first relabelled to one canonical order (:meth:`FitResult.align_to`).
:func:`to_markdown` and :func:`to_latex` write any of the package's tables for a paper.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping

import numpy as np

from ._covariance_models import ALIASES
from ._tables import flatten_draws, flatten_parameters, parameter_frame
from .params import GMMParams
from .results import FitResult

__all__ = ["DISPLAY_NAMES", "LATEX_LINE_CHARACTERS", "parameter_table", "to_latex", "to_markdown"]

#: How the engines are named in tables and figures.
DISPLAY_NAMES = {
    "em": "EM", "map-em": "MAP-EM", "hard-em": "hard EM", "kmeans": "k-means", "vb": "VB", "svi": "SVI",
    "mcmc": "NUTS", "gibbs": "Gibbs",
}

EM_INTERVALS = ("observed-information", "bootstrap", None)


def _named_fits(fits) -> dict:
    if isinstance(fits, FitResult):
        fits = [fits]
    if isinstance(fits, Mapping):
        named = dict(fits)
    else:
        named, seen = {}, {}
        for fit in fits:
            base = DISPLAY_NAMES.get(getattr(fit, "method", None), getattr(fit, "method", "?"))
            seen[base] = seen.get(base, 0) + 1
            named[base if seen[base] == 1 else f"{base} #{seen[base]}"] = fit
    if not named or not all(isinstance(f, FitResult) for f in named.values()):
        raise ValueError("fits must be a FitResult, a sequence of them or a mapping name -> FitResult.")
    return named


class _Truth:
    """True parameters and their covariance structure (from a FitResult, or inferred from the
    shape of the covariances, the first fit's structure preferred when its shape fits)."""

    def __init__(self, truth, first: FitResult, covariance_type: str | None = None):
        k, d = first.num_components, first.num_features
        if isinstance(truth, FitResult):
            if covariance_type is not None and covariance_type != truth.covariance_type:
                raise ValueError(f"truth_covariance_type={covariance_type!r} contradicts the truth FitResult's "
                                 f"{truth.covariance_type!r} covariances; leave it out for a FitResult.")
            covariance_type = truth.covariance_type
        if isinstance(truth, FitResult):
            truth = truth.params
        try:
            params = GMMParams(*(np.asarray(a, np.float64) for a in truth))
        except (TypeError, ValueError):
            raise ValueError("truth must be a GMMParams (weights, means, covariances) or a FitResult.") from None
        if params.weights.shape != (k,) or params.means.shape != (k, d):
            raise ValueError(f"truth must have {k} components and {d} features like the fits, got weights of shape "
                             f"{params.weights.shape} and means of shape {params.means.shape}.")
        shapes = {"full": (k, d, d), "diag": (k, d), "spherical": (k,), "tied": (d, d)}
        if covariance_type is not None:
            if covariance_type not in shapes:
                raise ValueError(f"truth_covariance_type must be one of {list(shapes)}, got {covariance_type!r}.")
            if params.covariances.shape != shapes[covariance_type]:
                raise ValueError(f"truth covariances of shape {params.covariances.shape} are not {covariance_type!r} "
                                 f"covariances for K={k}, D={d} (shape {shapes[covariance_type]}).")
        else:
            fitting = [ct for ct, shape in shapes.items() if shape == params.covariances.shape]
            if not fitting:
                raise ValueError(f"truth covariances of shape {params.covariances.shape} fit no covariance structure "
                                 f"with K={k}, D={d}.")
            if first.covariance_type not in fitting and len(fitting) > 1:  # K = D: (K, D) is (D, D)
                raise ValueError(f"truth covariances of shape {params.covariances.shape} may be {' or '.join(fitting)} "
                                 f"covariances (K = D); say which with truth_covariance_type.")
            covariance_type = first.covariance_type if first.covariance_type in fitting else fitting[0]
        self.params, self.covariance_type = params, covariance_type


def _canonical(named: dict, truth: _Truth | None, cost: str) -> dict:
    """Every fit relabelled to one order: the truth's, or else the first fit's sorted by the mean of
    the first feature, each matched by :meth:`FitResult.align_to` (fits of another covariance
    structure as full covariances)."""
    import dataclasses

    first = next(iter(named.values()))
    if truth is None:
        reference = first.relabel(np.argsort(first.means[:, 0], kind="stable"))
    else:
        reference = dataclasses.replace(first, covariance_type=truth.covariance_type, covariance_model=None,
                                        weights=truth.params.weights,
                                        means=truth.params.means, covariances=truth.params.covariances, draws=None,
                                        raw_draws=None, predictive=None)
    return {name: fit.align_to(reference, cost=cost) for name, fit in named.items()}


def _posterior_columns(fit: FitResult, level: float):
    flat = flatten_draws(fit.draws)
    tail = (1.0 - level) / 2.0
    return flat.std(axis=0, ddof=1), np.quantile(flat, tail, axis=0), np.quantile(flat, 1.0 - tail, axis=0)


def parameter_table(fits, x=None, *, truth=None, level: float = 0.9, em_intervals="observed-information",
                    num_replicates: int = 200, seed=0, cost: str = "kl", truth_covariance_type: str | None = None):
    """One tidy table of the parameters of several fits, components in one order.

    Parameters
    ----------
    fits : FitResult, sequence of FitResult or mapping name -> FitResult
        Fits of the same data with the same K and D (any engines and covariance structures). A
        sequence is named by engine ("EM", "VB", "NUTS", ...; repeats numbered).
    x : array-like (N, D), optional
        The training data: needed for EM's standard errors (``em_intervals``).
    truth : GMMParams or FitResult, optional
        The true parameters of simulated data: adds ``truth`` and ``error = estimate - truth``,
        and the components take the truth's order. Fits of another structure than the truth's
        get a truth for their weights and means only.
    level : float
        Coverage of every interval (posterior quantiles, Wald or bootstrap percentiles).
    em_intervals : {"observed-information", "bootstrap", None}
        How maximum-likelihood and MAP fits get their standard errors and intervals (with ``x``):
        :func:`bayesgmm.observed_information` (Wald) or :func:`bayesgmm.bootstrap`
        (``num_replicates`` nonparametric replicates, percentile intervals).
    num_replicates : int
        Replicates when ``em_intervals="bootstrap"``.
    seed : int
        Seed of the bootstrap.
    cost : {"kl", "mahalanobis"}
        How components are matched across fits (:meth:`FitResult.align_to`; fits of another
        structure than the first with their covariances written out in full).
    truth_covariance_type : {"full", "diag", "spherical", "tied"}, optional
        The layout of a GMMParams ``truth``'s covariances. By default read from their shape, the
        first fit's structure preferred; where K = D a (D, D) array may be diag or tied
        covariances, and if the first fit is neither that is refused unless this says which.

    Returns
    -------
    pandas.DataFrame
        A row per (method, parameter, component, feature[, feature_bis]): ``method``,
        ``parameter`` ("weights", "means", "covariances"), ``component``, ``feature``,
        ``feature_bis`` (-1 where not applicable; tied covariances have component -1),
        ``feature_name``, ``feature_bis_name``, ``estimate`` (the fit's point estimate: MLE/MAP, or
        the posterior mean of the aligned draws), ``se`` (standard error, or posterior sd),
        ``lower``, ``upper``, ``interval`` ("posterior", "observed-information", "bootstrap" or
        "none"), ``level``, and with ``truth`` also ``truth`` and ``error``. Components are in the
        truth's order, or else in the order of the first fit's means of the first feature,
        numbered from 0. A figure numbers a fit's components as the fit holds them (from 0, as
        :meth:`FitResult.predict` does): to draw the table's component ``k`` as the figures'
        component ``k``, give the plots ``fit.relabel(np.argsort(fit.means[:, 0], kind="stable"))``
        (or ``other.align_to(truth)``) for the first fit, and the other fits aligned to it.

    Raises
    ------
    ValueError
        Fits of different K or D, a ``truth`` of another shape, or invalid options.

    Examples
    --------
    >>> x = bg.datasets.load_faithful()
    >>> table = bg.parameter_table([bg.fit_em(x, 2), bg.fit_vb(x, 2)], x)
    >>> print(bg.reporting.to_markdown(table.query("parameter == 'means'")))  # doctest: +SKIP
    """
    import pandas as pd

    from .uncertainty import bootstrap, observed_information

    named = _named_fits(fits)
    first = next(iter(named.values()))
    k, d = first.num_components, first.num_features
    for name, fit in named.items():
        if (fit.num_components, fit.num_features) != (k, d):
            raise ValueError(f"fit {name!r} has K={fit.num_components}, D={fit.num_features}; the first has K={k}, "
                             f"D={d}. Tabulate fits of one K and D together.")
    if not (isinstance(level, float | int) and 0.0 < level < 1.0):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}.")
    if em_intervals not in EM_INTERVALS:
        raise ValueError(f"em_intervals must be one of {EM_INTERVALS}, got {em_intervals!r}.")
    true = None if truth is None else _Truth(truth, first, truth_covariance_type)
    frames = []
    for name, fit in _canonical(named, true, cost).items():
        estimate = flatten_parameters(fit.params)
        nan = np.full(estimate.shape, np.nan)
        se, lower, upper, interval = nan, nan, nan, "none"
        if fit.draws is not None:
            se, lower, upper = _posterior_columns(fit, level)
            interval = "posterior"
        elif (x is not None and em_intervals == "observed-information" and fit.method in ("em", "map-em")
              and fit.covariance_model != ALIASES.get(fit.covariance_type)):
            warnings.warn(
                f"fit {name!r} is mclust's constrained model {fit.covariance_model!r}, which observed_information does "
                "not parameterise: its intervals are left blank; pass em_intervals='bootstrap' for them.",
                UserWarning, stacklevel=2)
        elif x is not None and em_intervals is not None and fit.method in ("em", "map-em"):
            if em_intervals == "bootstrap":
                unc = bootstrap(fit, x, num_replicates=num_replicates, level=level, seed=seed)
            else:
                unc = observed_information(fit, x, level=level)
            se, lower, upper = (unc.table[c].to_numpy() for c in ("se", "lower", "upper"))
            interval = em_intervals
        table = parameter_frame(fit, estimate, se, lower, upper)
        table.insert(0, "method", name)
        table["interval"], table["level"] = interval, float(level)
        if true is not None:
            if true.covariance_type == fit.covariance_type:
                truth_flat = flatten_parameters(true.params)
            else:  # another structure: weights and means only
                truth_flat = np.concatenate([true.params.weights, true.params.means.ravel(),
                                             np.full(estimate.size - k - k * d, np.nan)])
            table["truth"] = truth_flat
            table["error"] = table["estimate"] - table["truth"]
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------
def _cell(value, digits: int) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return ""
        v = v + 0.0  # -0.0 (an entropy of one component) printed as -0.0000
        if v != 0.0 and abs(v) < 10 ** -(digits - 1):  # would show as 0.000x: significant digits
            return f"{v:.{digits}g}"
        if abs(v) >= 1e15:  # beyond float64's decimals: every digit it holds
            return repr(v)
        return f"{v:.{digits}f}"  # large values too: criteria 1e4-1e7 apart by a few units stay apart
    if value is None or type(value).__name__ == "NAType":  # None and pandas' pd.NA: blank, as NaN
        return ""
    return " ".join(str(value).splitlines())  # a line break would end a table's row


def _whole_numbers(column) -> bool:
    """Whether a float column holds whole numbers only, besides NaN: counts that a missing value
    made float (``divergences``, ``effective_components``), written as integers, not ``2.0000``."""
    values = column.to_numpy()
    if values.dtype.kind != "f":
        return False
    finite = values[np.isfinite(values)]
    return finite.size > 0 and not np.isinf(values).any() and bool(np.all((finite == np.round(finite)) & (np.abs(finite) < 2**53)))


def _cells(table, digits: int):
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame, got {type(table).__name__}.")
    index = table.index
    default = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
    if any(name is not None for name in index.names) or not default:
        table = table.reset_index()  # the table's key (a summary's component, a BIC table's K)
    header = [" ".join(str(c).splitlines()) for c in table.columns]
    whole = [_whole_numbers(table[c]) for c in table.columns]
    rows = [[_cell(int(v) if w and v == v else v, digits) for v, w in zip(row, whole)]
            for row in table.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c]) for c in table.columns]
    return header, rows, numeric


#: Characters Markdown would read as markup inside a table cell (emphasis, code, links, HTML, cell ends).
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_\[\]|<>]")


def to_markdown(table, *, digits: int = 4) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (numbers right-aligned, NaN blank).

    Parameters
    ----------
    table : pandas.DataFrame
        Any of the package's tables (``compare``, ``parameter_table``, ``summarise_study``,
        ``select(...).table``); the index is written as the first column(s) when it is named
        or not the default ``0 .. n - 1`` (a summary's components, a criterion table's K).
    digits : int
        Digits after the decimal point, whatever the size of the number (a BIC of 2.6e7 keeps
        its units and decimals); numbers below ``10**-(digits - 1)`` in magnitude are written
        with ``digits`` significant digits, and those of 1e15 or more in full.
    """
    header, rows, numeric = _cells(table, digits)
    escape = lambda s: _MARKDOWN_SPECIAL.sub(r"\\\g<0>", s)  # noqa: E731 (a name x_1*x_2 stays literal, no HTML)
    lines = ["| " + " | ".join(escape(h) for h in header) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}


#: Characters of a row (cells plus two of padding each) that fit a page's text width in a
#: ``table`` float at 10 pt (about 6.5 in): :func:`to_latex` scales wider tables down to it.
LATEX_LINE_CHARACTERS = 90


def to_latex(table, *, digits: int = 4, caption: str | None = None, label: str | None = None,
             fit_width: bool | None = None) -> str:
    """A DataFrame as a LaTeX ``tabular`` in a ``table`` float (booktabs rules; special characters
    escaped; numbers right-aligned; NaN blank). Needs ``\\usepackage{booktabs}``, and
    ``\\usepackage{graphicx}`` for a table scaled to the text width.

    Parameters
    ----------
    table : pandas.DataFrame
        Any of the package's tables, as :func:`to_markdown` takes them (the index likewise).
    digits : int
        As :func:`to_markdown`.
    caption, label : str, optional
        ``\\caption`` and ``\\label`` of the float.
    fit_width : bool, optional
        Scale the tabular to the text width (``\\resizebox{\\linewidth}{!}{...}``). Default: when
        its widest row holds more than :data:`LATEX_LINE_CHARACTERS` characters (an engine
        comparison's 17 columns ran off the page); select columns for a readable table.
    """
    header, rows, numeric = _cells(table, digits)
    widths = [max([len(h)] + [len(r[j]) for r in rows]) + 2 for j, h in enumerate(header)]
    if fit_width is None:
        fit_width = sum(widths) > LATEX_LINE_CHARACTERS

    def escape(text):
        return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)

    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(r"\caption{" + escape(caption) + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    if fit_width:
        lines.append(r"\resizebox{\linewidth}{!}{%")
    lines += [r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}", r"\toprule",
              " & ".join(escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}" + ("}" if fit_width else ""), r"\end{table}"]
    return "\n".join(lines) + "\n"

"""The engine registry: every way bayesgmm fits a mixture, in one table.

The estimator, :func:`~bayesgmm.compare`, :func:`~bayesgmm.select_bayesian`,
:func:`~bayesgmm.sbc` and the ``bayesgmm`` command look engines up here by name; adding an
engine means adding one :class:`Engine` row. The fit functions are imported on first use, so
the registry itself imports no engine (and engines never import each other).

- ``em``: :func:`~bayesgmm.fit_em`, maximum likelihood (a prior is an error); every structure.
- ``map-em``: :func:`~bayesgmm.fit_em` with a prior (``Prior.default`` when none); every structure.
- ``vb``: :func:`~bayesgmm.fit_vb`, closed-form variational Bayes; full and diag; draws.
- ``svi``: :func:`~bayesgmm.fit_svi`, NumPyro SVI; every structure; draws.
- ``mcmc``: :func:`~bayesgmm.fit_mcmc`, NumPyro NUTS; every structure; draws.
- ``gibbs``: :func:`~bayesgmm.fit_gibbs`, conjugate Gibbs sampling; every structure; draws.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from typing import Callable, Mapping

from ._covariance_models import ALIASES
from .params import COVARIANCE_MODELS, COVARIANCE_TYPES

__all__ = ["ENGINES", "SET_BY_CALLER", "Engine", "check_engine_options", "get_engine", "engine_names"]


@dataclasses.dataclass(frozen=True)
class Engine:
    """One way of fitting a mixture.

    Attributes
    ----------
    name : str
        The name users give (``method="vb"``, ``--method vb``).
    module, function : str
        Where the fit function lives (``bayesgmm.<module>.<function>``).
    covariance_types : tuple of str
        The structures it fits.
    prior : {"none", "default"}
        ``"none"``: maximum likelihood, a prior is an error. ``"default"``: takes a
        :class:`~bayesgmm.Prior`, ``Prior.default(x, K)`` when none is given.
    draws : bool
        Whether the result carries posterior draws (so SBC and LOO apply).
    options : mapping
        Options the engine is called with unless the caller sets them.
    summary : str
        One line for listings and help texts.
    """

    name: str
    module: str
    function: str
    covariance_types: tuple[str, ...]
    prior: str
    draws: bool
    options: Mapping = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    summary: str = ""

    def load(self) -> Callable:
        """The fit function (imported on first use)."""
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), self.function)

    def check_covariance_type(self, covariance_type: str) -> None:
        """Raise a ValueError naming the engines that fit ``covariance_type`` when this one does not.

        Parameters
        ----------
        covariance_type : str
            A covariance structure (``"full"``, ...) or mclust model name (``"VEV"``, ...).

        Raises
        ------
        ValueError
            When ``covariance_type`` is not in :attr:`covariance_types`.
        """
        if covariance_type not in self.covariance_types:
            others = [e.name for e in ENGINES.values() if covariance_type in e.covariance_types]
            raise ValueError(
                f"covariance_type={covariance_type!r} is not supported by method {self.name!r} "
                f"(it covers {self.covariance_types}); use covariance_type in {self.covariance_types}, "
                f"or one of the methods {others} for {covariance_type!r}."
            )


#: Engine name -> :class:`Engine`; the estimator, ``compare``, ``select_bayesian``, ``sbc`` and the CLI read it.
ENGINES: Mapping[str, Engine] = types.MappingProxyType({
    e.name: e
    for e in (
        Engine("em", "em", "fit_em", COVARIANCE_TYPES + COVARIANCE_MODELS, "none", False,
               summary="maximum likelihood by EM (em-EM restarts, k-means++ starts)"),
        Engine("map-em", "em", "fit_em", COVARIANCE_TYPES + tuple(ALIASES.values()), "default", False,
               summary="MAP by EM under the conjugate prior"),
        Engine("vb", "vb", "fit_vb", ("full", "diag"), "default", True,
               summary="closed-form coordinate-ascent variational Bayes"),
        Engine("svi", "svi", "fit_svi", COVARIANCE_TYPES, "default", True,
               summary="NumPyro SVI on the model (autoguides, minibatches)"),
        Engine("mcmc", "mcmc", "fit_mcmc", COVARIANCE_TYPES, "default", True,
               summary="NumPyro NUTS on the model, z summed out"),
        Engine("gibbs", "gibbs", "fit_gibbs", COVARIANCE_TYPES, "default", True,
               summary="conjugate Gibbs sampling, z sampled with the parameters"),
    )
})


def engine_names(*, draws: bool | None = None) -> tuple[str, ...]:
    """Names of the registered engines, optionally only those that do (or do not) give draws.

    Parameters
    ----------
    draws : bool, optional
        True: only the engines whose results carry posterior draws; False: only those that
        give a point estimate; None (default): every engine.

    Returns
    -------
    tuple of str
        The names, in the registry's order.
    """
    return tuple(n for n, e in ENGINES.items() if draws is None or e.draws == draws)


def get_engine(name: str, *, draws: bool | None = None, purpose: str = "") -> Engine:
    """The engine called ``name``.

    Parameters
    ----------
    name : str
        A registered engine's name (a key of :data:`ENGINES`), e.g. ``"vb"``.
    draws : bool, optional

        Require an engine that gives posterior draws (True) or not (False).
    purpose : str
        Said in the error, e.g. ``"for SBC"``.

    Raises
    ------
    ValueError
        An unknown name, or an engine without the draws asked for.
    """
    allowed = engine_names(draws=draws)
    if name not in allowed:
        why = ""
        if name in ENGINES and draws:
            why = f" (method {name!r} gives a point estimate, not posterior draws)"
        raise ValueError(f"method must be one of {allowed}{' ' + purpose if purpose else ''}, got {name!r}{why}.")
    return ENGINES[name]


#: keyword arguments the callers of an engine set themselves (not engine options)
SET_BY_CALLER = ("x", "num_components", "covariance_type", "seed", "prior")


def check_engine_options(engine: Callable, method: str, kwargs: Mapping) -> None:
    """Engine options the engine takes, or a ValueError naming the others and listing the valid ones.

    Parameters
    ----------
    engine : callable
        The fit function (e.g. ``get_engine(method).load()``).
    method : str
        Its name, for the message.
    kwargs : mapping
        The options to check.
    """
    import inspect

    params = inspect.signature(engine).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        options = sorted(set(params) - set(SET_BY_CALLER) - {"source"})
        raise ValueError(f"engine option(s) {unknown} are not options of method {method!r} ({engine.__name__}); "
                         f"its options are {options}.")

"""bayesgmm: Bayesian Gaussian mixture models.

One generative story, written once as a NumPyro model (:mod:`bayesgmm.model`), fitted by
several engines that share its prior and parameterisation: JIT-compiled EM (maximum likelihood
and MAP; also streamed out of core), closed-form variational Bayes, NumPyro SVI and NUTS. Every
engine returns the same :class:`FitResult`; :func:`compare`, :func:`select` and :func:`sbc` run
the experiments researchers do with them.

``import bayesgmm`` stays light: ArviZ, pandas, matplotlib and scikit-learn are imported only
by the functions that need them (:class:`GaussianMixture`, the scikit-learn estimator, is
loaded on first use; figures live in :mod:`bayesgmm.plotting`), and NumPyro only by the engines
and experiments that run it (:func:`fit_mcmc`, :func:`fit_svi`, :func:`fit_gibbs` and
:func:`sbc` load on first use).

Importing bayesgmm turns on JAX's persistent compilation cache (:func:`set_compilation_cache`;
off with ``BAYESGMM_COMPILE_CACHE=0``), so that a fresh process reuses compiled programs.
"""

from . import _startup

if _startup.launched_as_command_line():  # before the seconds of importing JAX: Ctrl-C exits 130 at once
    _startup.exit_on_interrupt_while_starting()

from . import _program_store, datasets  # noqa: E402
from ._compile import InsufficientMemoryError, configure_default_cache, set_compilation_cache
from ._sharding import initialize_distributed
from .em import fit_em
from .experiments import compare, simulation_study
from .kmeans import KMeansResult, kmeans
from .params import ConvergenceWarning, DegenerateComponentWarning, GMMParams, PrecisionWarning, Prior
from .reporting import parameter_table
from .results import FitResult
from .selection import select, select_bayesian
from .storage import load_result, save_result
from .streaming import fit_em_stream
from .uncertainty import bootstrap, observed_information
from .vb import fit_vb

__version__ = "0.1.0"

configure_default_cache()
_program_store.snapshot_constants()  # the modules' constants as imported (the store refuses changed ones)

__all__ = [
    "ConvergenceWarning",
    "DegenerateComponentWarning",
    "FitResult",
    "GMMParams",
    "GaussianMixture",
    "InsufficientMemoryError",
    "KMeansResult",
    "PrecisionWarning",
    "Prior",
    "bootstrap",
    "compare",
    "datasets",
    "fit_em",
    "fit_em_stream",
    "fit_gibbs",
    "fit_mcmc",
    "fit_svi",
    "fit_vb",
    "initialize_distributed",
    "kmeans",
    "load_result",
    "observed_information",
    "parameter_table",
    "save_result",
    "sbc",
    "select",
    "select_bayesian",
    "set_compilation_cache",
    "simulation_study",
]


#: Public names loaded on first use: the estimator imports scikit-learn's base classes when
#: available; the samplers, SVI and SBC import NumPyro (about 0.25 s), which EM, VB, k-means and
#: streaming do not need (a MAP fit imports it when it first traces its prior).
_ON_FIRST_USE = {
    "GaussianMixture": "estimator",
    "fit_gibbs": "gibbs",
    "fit_mcmc": "mcmc",
    "fit_svi": "svi",
    "sbc": "calibration",
}


#: Public modules not imported by ``import bayesgmm`` (they import matplotlib, ArviZ or NumPyro),
#: reachable as attributes all the same: ``bg.plotting.plot_num_components(...)`` imports
#: :mod:`bayesgmm.plotting` on first use, as ``import bayesgmm.plotting`` would.
_MODULES_ON_FIRST_USE = ("calibration", "cli", "diagnostics", "engines", "estimator", "gibbs", "imputation", "labels",
                         "mcmc", "model", "plotting", "ranks", "sources", "svi")


def __getattr__(name):
    import importlib

    if name in _MODULES_ON_FIRST_USE:
        return importlib.import_module(f".{name}", __name__)  # the import binds it here too
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'bayesgmm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups find it without this hook
    return value


def __dir__():
    return sorted(set(globals()) | set(_ON_FIRST_USE) | set(_MODULES_ON_FIRST_USE))

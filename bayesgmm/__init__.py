"""bayesgmm: Bayesian Gaussian mixture models.

One generative story, written once as a NumPyro model (:mod:`bayesgmm.model`), fitted by
several engines that share its prior and parameterisation: JIT-compiled EM (maximum likelihood
and MAP), closed-form variational Bayes, NumPyro SVI and NUTS. Every engine returns the same
:class:`FitResult`.
"""

from . import datasets
from .em import fit_em
from .vb import fit_vb
from .kmeans import KMeansResult, kmeans
from .params import ConvergenceWarning, DegenerateComponentWarning, GMMParams, Prior
from .results import FitResult

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "DegenerateComponentWarning",
    "FitResult",
    "GMMParams",
    "KMeansResult",
    "Prior",
    "datasets",
    "fit_em",
    "fit_vb",
    "kmeans",
]

"""mclust's parsimonious covariance family: names, storage and parameter counts (host side).

Banfield & Raftery (1993) and Celeux & Govaert (1995) write each component's covariance as
``Sigma_k = lambda_k D_k A_k D_k^T``: a volume ``lambda_k`` (a scalar, ``|Sigma_k|^(1/D)``), an
orientation ``D_k`` (orthogonal: the eigenvectors) and a shape ``A_k`` (diagonal, determinant 1:
the normalised eigenvalues). A model's three letters say, for volume, shape and orientation in
that order, whether the part is **E**\\ qual across components, **V**\\ aries, or is the
**I**\\ dentity (shape and orientation only). mclust fits the 14 models of :data:`MODELS`.

scikit-learn's four structures are four of them (:data:`ALIASES`): ``"spherical"`` is VII,
``"diag"`` VVI, ``"tied"`` EEE and ``"full"`` VVV. Every model is *stored* in the layout of the
smallest scikit-learn structure that holds it (:func:`storage`), so prediction, scoring,
plotting and files need nothing new: EII in the spherical layout (K,) with equal values, EEI,
VEI and EVI in the diagonal layout (K, D), the six remaining full models in the full layout
(K, D, D). :attr:`bayesgmm.FitResult.covariance_model` keeps the model's name;
:attr:`~bayesgmm.FitResult.covariance_type` is its storage layout. The M-steps are in
:mod:`bayesgmm._constrained`.
"""

from __future__ import annotations

__all__ = ["ALIASES", "MODELS", "NATIVE", "NESTED", "common_scale", "constrained_models", "num_covariance_parameters", "resolve",
           "storage"]

#: mclust's 14 models, in mclust's order.
MODELS = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")
#: scikit-learn's structure names -> the mclust model each one is.
ALIASES = {"spherical": "VII", "diag": "VVI", "tied": "EEE", "full": "VVV"}
#: The models that are scikit-learn structures -> that structure (their M-steps are the classic ones).
NATIVE = {model: layout for layout, model in ALIASES.items()}

_DIAGONAL_LAYOUT = ("EEI", "VEI", "EVI", "VVI")

#: ``(smaller, larger)``: the smaller model is the larger with one part set equal across
#: components (E for V) or to the identity (I for E), so its optimum is a point of the larger.
#: Ordered so that a model comes after every model nested in it.
NESTED = (
    ("EII", "VII"), ("EII", "EEI"), ("VII", "VEI"), ("EEI", "VEI"), ("EEI", "EVI"), ("VEI", "VVI"), ("EVI", "VVI"),
    ("EEI", "EEE"), ("VEI", "VEE"), ("EVI", "EVE"), ("EEE", "VEE"), ("EEE", "EVE"), ("EEE", "EEV"),
    ("VVI", "VVE"), ("VEE", "VVE"), ("EVE", "VVE"), ("VEE", "VEV"), ("EEV", "VEV"), ("EVE", "EVV"),
    ("EEV", "EVV"), ("VVE", "VVV"), ("VEV", "VVV"), ("EVV", "VVV"),
)


def nested_pairs(models) -> list:
    """Every ``(small, large)`` of ``models`` with ``small`` nested in ``large`` through
    :data:`NESTED`'s chains (its transitive closure), smaller models first: spherical (VII) is
    nested in diag (VVI) and tied (EEE) in full (VVV) though no direct pair links them."""
    below = {m: set() for m in MODELS}
    for small, large in NESTED:
        below[large].add(small)
    changed = True
    while changed:
        changed = False
        for large in MODELS:
            reach = set().union(*(below[m] for m in below[large])) - below[large]
            if reach:
                below[large] |= reach
                changed = True
    present = [m for m in MODELS if m in set(models)]
    depth = {m: len(below[m]) for m in MODELS}
    return sorted(((s, big) for big in present for s in present if s in below[big]), key=lambda p: (depth[p[0]], depth[p[1]]))


def _model(name: str) -> str:
    if name in ALIASES:
        return ALIASES[name]
    if name in MODELS:
        return name
    raise ValueError(
        f"covariance_type must be one of {tuple(ALIASES)} or one of mclust's models {MODELS}, got {name!r}."
    )


def storage(name: str) -> str:
    """The scikit-learn layout a model's covariances are stored in (see the module docstring)."""
    model = _model(name)
    if model in ("EII", "VII"):
        return "spherical"
    if model in _DIAGONAL_LAYOUT:
        return "diag"
    return "tied" if model == "EEE" else "full"


def resolve(name: str) -> tuple[str, str]:
    """``(layout, model)`` of a scikit-learn structure or mclust model name.

    Raises
    ------
    ValueError
        An unknown name, listing the valid ones.
    """
    model = _model(name)
    return storage(model), model


def num_covariance_parameters(name: str, num_components: int, num_features: int) -> int:
    """Free covariance parameters of a model, counted as mclust counts them (``nVarParams``)."""
    model, k, d = _model(name), num_components, num_features
    volume = 1 if model[0] == "E" else k
    shape = {"I": 0, "E": d - 1, "V": k * (d - 1)}[model[1]]
    rotation = d * (d - 1) // 2
    orientation = {"I": 0, "E": rotation, "V": k * rotation}[model[2]]
    return volume + shape + orientation


def common_scale(name: str) -> bool:
    """Whether the model must be fitted on data scaled by one common factor.

    Per-feature scaling keeps a model's constraints only when they concern whole matrices or
    determinants (VVV, EEE, VEE, EVV, the diagonal models). Spherical models, and the ones that
    constrain eigenvalues or eigenvectors separately (EVE, VVE, EEV, VEV), are defined in the
    data's own units; one common scale keeps them, so the fit still does not depend on the units
    up to a common factor, as mclust's does not.
    """
    return _model(name) in ("EII", "VII", "EVE", "VVE", "EEV", "VEV")


def constrained_models(layout: str) -> tuple[str, ...]:
    """The models stored in ``layout`` other than the layout's own, in mclust's order (one
    compiled EM program per layout serves them all: :mod:`bayesgmm._constrained`)."""
    return tuple(m for m in MODELS if storage(m) == layout and m not in NATIVE)

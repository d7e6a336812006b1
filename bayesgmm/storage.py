"""Results on disk: NetCDF (through ArviZ) and JSON, read back into a :class:`~bayesgmm.FitResult`.

:func:`save_result` writes everything a result holds (draws, sampler statistics, the VB
predictive) as the ``InferenceData`` of :func:`bayesgmm.diagnostics.to_inference_data`;
:func:`load_result` reads that, or the JSON of :meth:`FitResult.to_json`, back;
:func:`from_inference_data` rebuilds a result from such an ``InferenceData`` in memory. Files are
written atomically; nothing is pickled.
"""

from __future__ import annotations

import json

import numpy as np

from .diagnostics import FORMAT_VERSION, META_KEY, import_arviz, to_inference_data
from .params import Prior
from .results import FitResult, predictive_from_arrays, validated_summary

__all__ = ["from_inference_data", "load_result", "save_result"]

#: The metadata fields checked as a JSON result's (:meth:`bayesgmm.FitResult.from_json`), and
#: those of them that may be absent.
_SUMMARY_FIELDS = ("method", "covariance_type", "covariance_model", "log_likelihood", "converged", "n_iter",
                   "objective", "feature_names", "num_obs", "degenerate_components", "prior", "info")
_SUMMARY_OPTIONAL = ("covariance_model", "degenerate_components", "prior", "info")


# ----------------------------------------------------------------------------------------------
# InferenceData -> FitResult, NetCDF
# ----------------------------------------------------------------------------------------------
def _group_arrays(idata, group, names):
    """The variables ``names`` of ``group`` as arrays; a ValueError names a group or variable missing."""
    if group not in idata.groups():
        raise ValueError(f"This InferenceData lacks the '{group}' group that its bayesgmm metadata says it holds "
                         "(was the file edited?); write it again with bayesgmm.save_result.")
    ds = idata[group]
    missing = [n for n in names if n not in ds]
    if missing:
        raise ValueError(f"This InferenceData's '{group}' group lacks the variable(s) {missing} bayesgmm wrote there "
                         "(was the file edited?); write it again with bayesgmm.save_result.")
    return {n: np.asarray(ds[n].values) for n in names}


#: The metadata fields of the groups beside the point estimate, and what each must be.
_GROUP_FIELDS = {"has_draws": "true or false", "raw_draws": "'none', 'same' or 'stored'",
                 "sample_stats_map": "a list of [name, stored name, sign] triples", "has_predictive": "true or false"}


def _checked_metadata(text) -> dict:
    """bayesgmm's metadata attribute, parsed and checked field by field: a ValueError names the
    first problem (not JSON, a field missing or of the wrong kind), where an edited file or one
    of another writer raised a bare KeyError or loaded without a word."""
    try:
        meta = json.loads(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"This InferenceData's '{META_KEY}' attribute is not bayesgmm's metadata (not JSON: {err}); "
                         "write the file again with bayesgmm.save_result.") from None
    if not isinstance(meta, dict):
        raise ValueError(f"This InferenceData's '{META_KEY}' attribute must hold a JSON object, got "
                         f"{type(meta).__name__}; write the file again with bayesgmm.save_result.")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"This file's bayesgmm result format version is {version!r}, not an integer: it was not "
                         "written by bayesgmm.save_result (or was edited); write it again with save_result.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"This file uses bayesgmm result format {meta['format_version']}, newer than this version "
            f"reads ({FORMAT_VERSION}); upgrade bayesgmm to load it."
        )
    missing = [name for name in _GROUP_FIELDS if name not in meta]
    if missing:
        raise ValueError(f"This file's bayesgmm metadata lacks the field(s) {missing} (written by an early development "
                         "version, or edited); write it again with bayesgmm.save_result.")
    stats_map = meta["sample_stats_map"]
    kinds = {"has_draws": isinstance(meta["has_draws"], bool), "has_predictive": isinstance(meta["has_predictive"], bool),
             "raw_draws": meta["raw_draws"] in ("none", "same", "stored"),
             "sample_stats_map": isinstance(stats_map, list) and all(
                 isinstance(t, list) and len(t) == 3 and all(isinstance(n, str) for n in t[:2])
                 and isinstance(t[2], int | float) and t[2] in (-1, 1) for t in stats_map)}
    for name, ok in kinds.items():
        if not ok:
            raise ValueError(f"This file's bayesgmm metadata field {name!r} must be {_GROUP_FIELDS[name]}, got "
                             f"{meta[name]!r:.80}; write the file again with bayesgmm.save_result.")
    if meta["raw_draws"] == "same" and not meta["has_draws"]:
        raise ValueError("This file's bayesgmm metadata says its raw draws are its draws, but it has no draws; write "
                         "the file again with bayesgmm.save_result.")
    return meta


def from_inference_data(idata):
    """Rebuild the :class:`~bayesgmm.FitResult` written by :func:`to_inference_data`.

    Restores the point estimate, draws (aligned and raw), sampler statistics under their
    original names, the objective trace, the prior, the closed-form predictive and ``info`` (as
    JSON types: arrays come back as lists), so ``predict``, ``predict_proba`` and
    ``score_samples`` give the same numbers as the original result.

    Parameters
    ----------
    idata : arviz.InferenceData
        Written by :meth:`bayesgmm.FitResult.to_inference_data` (or read back from a file
        :func:`save_result` wrote): it carries the ``point_estimate`` group and bayesgmm's
        metadata attribute.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        An InferenceData not written by bayesgmm, or written by a newer format version.
    """
    attrs = getattr(idata, "attrs", None) or {}
    if META_KEY not in attrs or "point_estimate" not in getattr(idata, "groups", lambda: [])():
        raise ValueError(
            "This InferenceData was not written by bayesgmm.to_inference_data (it lacks the "
            f"'{META_KEY}' attribute or the 'point_estimate' group); only such objects, or files "
            "written by bayesgmm.save_result, can be turned back into a FitResult."
        )
    meta = _checked_metadata(attrs[META_KEY])
    pnames = ("weights", "means", "covariances")
    point = _group_arrays(idata, "point_estimate", pnames)
    trace = _group_arrays(idata, "fit_trace", ("objective",))["objective"]
    # the point estimate and the fit's facts pass the checks a JSON file's do (shapes, weights
    # summing to 1, positive definite covariances, a known method, ...), in the same words
    summary = {name: meta[name] for name in _SUMMARY_FIELDS if name in meta}
    missing = [name for name in _SUMMARY_FIELDS if name not in meta and name not in _SUMMARY_OPTIONAL]
    if missing:
        raise ValueError(f"This file's bayesgmm metadata lacks the field(s) {missing}; write it again with "
                         "bayesgmm.save_result.")
    summary.update({name: point[name].tolist() for name in pnames}, trace=trace.tolist())
    validated_summary(summary, "This file's bayesgmm metadata and point estimate")
    draws = _group_arrays(idata, "posterior", pnames) if meta["has_draws"] else None
    raw = None
    if meta["raw_draws"] == "same":
        raw = dict(draws)
    elif meta["raw_draws"] == "stored":
        raw = _group_arrays(idata, "raw_posterior", pnames)
    sample_stats = None
    if meta["sample_stats_map"]:
        stored = _group_arrays(idata, "sample_stats", [name for _, name, _ in meta["sample_stats_map"]])
        sample_stats = {}
        for original, name, sign in meta["sample_stats_map"]:
            sample_stats[original] = -stored[name] if sign < 0 else stored[name]
    predictive = None
    if meta["has_predictive"]:
        predictive = predictive_from_arrays(*_group_arrays(idata, "predictive", ("weights", "loc", "scale", "df")).values())
    return FitResult(
        method=meta["method"],
        covariance_type=meta["covariance_type"],
        covariance_model=meta.get("covariance_model"),  # absent in files written before mclust's models
        weights=point["weights"],
        means=point["means"],
        covariances=point["covariances"],
        log_likelihood=float(meta["log_likelihood"]),
        converged=bool(meta["converged"]),
        n_iter=int(meta["n_iter"]),
        trace=trace,
        objective=meta["objective"],
        feature_names=tuple(meta["feature_names"]),
        num_obs=int(meta["num_obs"]),
        degenerate_components=tuple(meta["degenerate_components"]),
        prior=None if meta["prior"] is None else Prior(**meta["prior"]),
        draws=draws,
        raw_draws=raw,
        sample_stats=sample_stats,
        predictive=predictive,
        info=meta["info"],
    )


def save_result(result, path, x=None, **kwargs):
    """Write a result as NetCDF (via ArviZ): everything it holds, draws and predictive included.

    Parameters
    ----------
    result : FitResult
        The fit to save, from any engine.
    path : str or os.PathLike
        The NetCDF file (``.nc``). It is written atomically: a temporary file beside it is
        renamed onto ``path`` when complete, so an interrupted write leaves no truncated file.
    x : array-like, optional
        Data for the ``log_likelihood`` and ``observed_data`` groups (usually the training data).
    **kwargs
        Passed to :func:`to_inference_data` (e.g. ``posterior_predictive=True``).

    Returns
    -------
    str
        The path. Read it back with :func:`load_result`: ``predict``, ``predict_proba`` and
        ``score_samples`` of the loaded result equal the original's.
    """
    from pathlib import Path

    from ._files import atomic_path

    if not isinstance(result, FitResult):
        raise ValueError(f"result must be a FitResult (a fit of any engine), got {type(result).__name__}.")
    if Path(path).suffix.lower() == ".json":
        raise ValueError(f"save_result writes NetCDF, not JSON: give a path ending in .nc, not {str(path)!r} "
                         "(the JSON summary, without posterior draws, is result.to_json(path)).")
    nul = [name for name in result.feature_names if "\x00" in name]
    if nul:  # HDF5's strings end at a NUL (h5py: "VLEN strings do not support embedded NULLs")
        raise ValueError(f"feature name(s) {nul} hold a NUL character, which NetCDF cannot store; rename them "
                         "(dataclasses.replace(result, feature_names=...)) or save with result.to_json.")
    idata = to_inference_data(result, x, **kwargs)
    with atomic_path(path) as tmp:
        idata.to_netcdf(str(tmp))
    return str(path)


def load_result(path):
    """Read a result saved by :func:`save_result` (NetCDF) or :meth:`FitResult.to_json` (JSON).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.json`` file is read by :meth:`FitResult.from_json` (the point estimate only: a
        Bayesian result comes back without draws, flagged by ``posterior_omitted``, with a
        warning). Any other file is read as NetCDF, with every array loaded and the file closed:
        the full result, draws, sampler statistics and VB predictive included.

    Returns
    -------
    FitResult
    """
    from pathlib import Path

    if Path(path).suffix.lower() == ".json":
        return FitResult.from_json(Path(path))
    if Path(path).is_dir():
        raise ValueError(f"{str(path)!r} is a folder; give a .nc file written by bayesgmm.save_result or a .json file "
                         "written by FitResult.to_json.")
    with open(path, "rb") as f:  # a missing file: FileNotFoundError, as open() says it
        signature = f.read(8)
    if signature.startswith(b"CDF"):  # classic NetCDF (3): save_result writes NetCDF-4, which is HDF5
        raise ValueError(f"{str(path)!r} is a classic (version 3) NetCDF file; bayesgmm.save_result writes NetCDF-4 "
                         "files, and only those are read back as results.")
    if not signature.startswith(b"\x89HDF\r\n\x1a\n"):
        raise ValueError(f"{str(path)!r} is not a NetCDF file (nor .json); give a file written by bayesgmm.save_result "
                         "(NetCDF) or FitResult.to_json (.json).")
    az = import_arviz()
    try:
        with az.rc_context({"data.load": "eager"}):
            idata = az.from_netcdf(str(path))
    except OSError as err:  # h5py's "truncated file: eof = ..." and the like, without the path
        raise ValueError(f"{str(path)!r} could not be read as NetCDF ({err}); is the file truncated or damaged? "
                         "Write it again with bayesgmm.save_result.") from None
    return from_inference_data(idata)

"""Fit every engine once on tiny data with a fixed seed and print digests of every output.

Run as a script by ``tests/test_reproducibility.py``, twice, in two fresh processes: every
digest must be the same in both (the package promises the same result, bit for bit, for the
same seed). Prints one JSON object ``{"<engine>.<field path>": "<sha256>", ...}``.

Timings (``info`` keys ending in ``_seconds``) are the only outputs left out: they measure the
machine, not the fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Mapping

import jax

jax.config.update("jax_enable_x64", "--x64" in sys.argv)

import numpy as np  # noqa: E402

import bayesgmm as bg  # noqa: E402


def _digest(value) -> str:
    """sha256 of a value's exact bits (arrays: dtype, shape and bytes; floats: hex)."""
    h = hashlib.sha256()
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        arr = np.ascontiguousarray(np.asarray(value))
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(value, float):
        h.update(value.hex().encode())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()


def _flatten(prefix: str, value, out: dict) -> None:
    """Record a digest for every leaf of ``value`` (dataclasses, dicts, sequences, arrays)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _flatten(f"{prefix}.{field.name}", getattr(value, field.name), out)
    elif hasattr(value, "_fields"):  # NamedTuple (GMMParams, KMeansResult)
        for name in value._fields:
            _flatten(f"{prefix}.{name}", getattr(value, name), out)
    elif isinstance(value, Mapping):  # dicts, and a FitResult's read-only mappings
        for key in sorted(value, key=str):
            if str(key).endswith("_seconds"):
                continue
            _flatten(f"{prefix}.{key}", value[key], out)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple, np.ndarray, float)) for v in value):
        for i, item in enumerate(value):
            _flatten(f"{prefix}[{i}]", item, out)
    else:
        out[prefix] = _digest(value)


def fits(x: np.ndarray, path: str) -> dict:
    """One small fit per engine, all with seed 3."""
    prior = bg.Prior.default(x, 2)
    return {
        "em": lambda: bg.fit_em(x, 2, n_init=3, seed=3),
        "em_auto": lambda: bg.fit_em(x, 2, covariance_type="diag", seed=3),
        "map_em": lambda: bg.fit_em(x, 2, prior=prior, n_init=2, seed=3),
        "hard_em": lambda: bg.fit_em(x, 2, hard=True, n_init=2, seed=3),
        "kmeans": lambda: bg.kmeans(x, 2, n_init=3, seed=3),
        "vb": lambda: bg.fit_vb(x, 2, n_init=2, num_draws=20, seed=3),
        "svi": lambda: bg.fit_svi(x, 2, num_steps=60, num_draws=20, seed=3),
        "svi_minibatch": lambda: bg.fit_svi(x, 2, covariance_type="diag", guide="mvn", num_steps=40,
                                            subsample_size=20, num_draws=10, seed=3),
        "mcmc": lambda: bg.fit_mcmc(x, 2, num_warmup=30, num_samples=20, num_chains=2, seed=3),
        "stream_batch": lambda: bg.fit_em_stream(path, 2, batch_size=16, n_init=2, max_iter=20, seed=3),
        "stream_online": lambda: bg.fit_em_stream(path, 2, method="online", batch_size=16, n_init=2,
                                                  max_iter=5, seed=3),
    }


def main() -> None:
    """``python _reproducibility_script.py WORKDIR [--x64] [--engines=em,svi,...]``."""
    workdir = next(a for a in sys.argv[1:] if not a.startswith("--"))
    chosen = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--engines=")), None)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2.0, 1.0, (30, 2)), rng.normal(2.0, 0.7, (30, 2))])
    if "--x64" not in sys.argv:
        x = x.astype(np.float32)
    path = f"{workdir}/x.npy"
    np.save(path, x)
    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs warn (non-convergence); not the subject here
        for name, fit in fits(x, path).items():
            if chosen is not None and name not in chosen:
                continue
            start = time.perf_counter()
            _flatten(name, fit(), out)
            print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()

"""Are streamed totals exact? ``fit_em_stream`` on 1e7 rows in float32 (JAX's default precision),
its reported log-likelihood against a float64 recomputation from the returned parameters.

    python benchmarks/stream_exactness.py [--rows 10000000] [--components 3] [--features 2]

Prints the reported and recomputed totals, their difference and the relative difference (the
issue's bar: 1e-6 relative or 1e-3 absolute).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bayesgmm as bg


def main(args=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--components", type=int, default=3)
    p.add_argument("--features", type=int, default=2)
    a = p.parse_args(args)
    data = bg.datasets.make_mixture(a.rows, a.components, a.features, separation=3.0, seed=0)
    x = data.x.astype(np.float32)
    start = time.perf_counter()
    fit = bg.fit_em_stream(x, a.components, seed=0)
    seconds = time.perf_counter() - start
    exact = 0.0
    for block in range(0, a.rows, 1_000_000):  # float64 host recomputation from the returned parameters
        exact += float(np.sum(fit.score_samples(x[block:block + 1_000_000].astype(np.float64))))
    diff = fit.log_likelihood - exact
    out = {"rows": a.rows, "compute dtype": fit.info.get("dtype"), "fit seconds": round(seconds, 1),
           "reported log-likelihood": f"{fit.log_likelihood:.6f}", "float64 recomputation": f"{exact:.6f}",
           "difference": f"{diff:.3g}", "relative": f"{abs(diff) / abs(exact):.3g}",
           "converged": fit.converged}
    for k, v in out.items():
        print(f"{k:>28}: {v}")
    return out


if __name__ == "__main__":
    main()

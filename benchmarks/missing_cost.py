"""What do missing values cost EM? Seconds per iteration with ``missing="marginalize"`` (the
exact conditional E-step, :mod:`bayesgmm._missing`) against the same fit on complete data.

    python benchmarks/missing_cost.py [--rows 20000] [--components 4] [--features 2 4 8] [--repeats 5]

Both fits run one start (the same given parameters), ``tol=0`` and ``max_iter`` iterations, so
the timed work is the same number of EM iterations; compile time is excluded (a warm-up call
first) and the two are timed interleaved. 20% of the entries are missing completely at random.
Prints the load average and, per D, seconds per iteration of both and their ratio. BLAS threads
are pinned to 1.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

import bayesgmm as bg  # noqa: E402


def _seconds(x, k, start, max_iter, missing):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        bg.fit_em(x, k, weights_init=start.weights, means_init=start.means,
                  precisions_init=np.linalg.inv(start.full_covariances), n_init=1, tol=0.0, max_iter=max_iter,
                  missing=missing)
        return time.perf_counter() - t


def main(args=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--components", type=int, default=4)
    p.add_argument("--features", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(args)
    print(f"load average {os.getloadavg()[0]:.2f}; N={a.rows}, K={a.components}, full, "
          f"{a.iterations} iterations, 20% missing (MCAR)")
    rows = []
    for d in a.features:
        data = bg.datasets.make_mixture(a.rows, a.components, d, separation=3.0, seed=0)
        x = np.asarray(data.x)
        xm = x.copy()
        xm[np.random.default_rng(1).random(x.shape) < 0.2] = np.nan
        xm[np.isnan(xm).all(axis=1), 0] = x[np.isnan(xm).all(axis=1), 0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = bg.fit_em(x, a.components, n_init=1, max_iter=3, tol=0.0)
        for missing, data_ in (("error", x), ("marginalize", xm)):  # compile both first
            _seconds(data_, a.components, start, a.iterations, missing)
        complete, marginal = [], []
        for _ in range(a.repeats):  # interleaved
            complete.append(_seconds(x, a.components, start, a.iterations, "error"))
            marginal.append(_seconds(xm, a.components, start, a.iterations, "marginalize"))
        row = {"D": d, "complete s/iter": np.median(complete) / a.iterations,
               "missing s/iter": np.median(marginal) / a.iterations}
        row["ratio"] = row["missing s/iter"] / row["complete s/iter"]
        rows.append(row)
        print(f"D={d:>2}: complete {row['complete s/iter'] * 1e3:8.2f} ms/iter, with missing values "
              f"{row['missing s/iter'] * 1e3:8.2f} ms/iter, ratio {row['ratio']:.1f}")
    return rows


if __name__ == "__main__":
    main()

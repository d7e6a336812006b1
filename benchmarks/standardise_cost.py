"""The set-up of a fit on the host: the robust standardisation, against its definition.

Every engine standardises the data first (``bayesgmm.params.standardise``: each column centred on
its median, divided by 1.4826 times its median absolute deviation; weighted medians with
``sample_weight``). The package finds the medians by bracketing them from a strided sample
(``params.exact_median``, ``params.exact_weighted_median``); the reference here computes the same
numbers by their definition, ``np.median`` on a float64 copy, and a stable sort of every column
for the weighted median (the package's method before 1a39c62 / 4ff67de), on the rows the
package uses: unweighted data of more than ``params.STANDARDISATION_ROWS`` rows are standardised
by the medians of every ``ceil(N / params.STANDARDISATION_SAMPLE)``-th row. A third column times
the definition on every row (the unweighted standardisation before 0d0aea2 gave those numbers).
All run in this process, interleaved, each after a short idle; the script checks that the
package and the reference agree bit for bit and prints the medians and the ratios to the
package's time, with the machine load.

Usage::

    python benchmarks/standardise_cost.py              # N=1e5 and 1e6, D=16, float32 data
    python benchmarks/standardise_cost.py --reps 9
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bayesgmm import params  # noqa: E402

MAD_TO_SD = params.MAD_TO_SD


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def reference_weighted_median(columns: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted medians of the rows of ``columns`` (D, N) by a stable sort of each."""
    out = []
    for column in columns:
        order = np.argsort(column, kind="stable")
        cum = np.cumsum(w[order])
        half = 0.5 * cum[-1]
        lower, upper = np.argmax(cum >= half * (1 - 1e-12)), np.argmax(cum > half * (1 + 1e-12))
        out.append(0.5 * (column[order[lower]] + column[order[upper]]))
    return np.array(out)


def sampled_rows(x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """The rows whose medians standardise ``x`` (all of them for weighted or smaller data)."""
    if w is None and x.shape[0] > params.STANDARDISATION_ROWS:
        return x[:: -(-x.shape[0] // params.STANDARDISATION_SAMPLE)]
    return x


def reference(x: np.ndarray, w: np.ndarray | None, every_row: bool = False):
    """``(shift, scale)`` by the definition (no MAD-0 columns in these data), on the rows the
    package uses, or on every row."""
    columns = np.ascontiguousarray((x if every_row else sampled_rows(x, w)).T, dtype=np.float64)
    if w is None:
        shift = np.median(columns, axis=1)
        return shift, MAD_TO_SD * np.median(np.abs(columns - shift[:, None]), axis=1)
    shift = reference_weighted_median(columns, w)
    return shift, MAD_TO_SD * reference_weighted_median(np.abs(columns - shift[:, None]), w)


def timed(fn, *args) -> float:
    time.sleep(0.2)
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"# standardisation, D=16 float32 data (t(3) values), {args.reps} interleaved repetitions; load {load()}")
    print(f"{'N':>9} {'weights':>8} | {'package ms':>10} {'definition ms':>13} {'every row ms':>12} | "
          f"{'ratios':>11} | equal | load")
    for n in (100_000, 1_000_000):
        rng = np.random.default_rng(0)
        x = (rng.standard_t(3, size=(n, 16)) * rng.uniform(0.1, 10, 16) + rng.normal(0, 5, 16)).astype(np.float32)
        for w in (None, rng.integers(0, 4, size=n).astype(np.float64)):
            ours = params.standardisation(x, "full", w)
            ref = reference(x, w)
            equal = all(np.array_equal(a, b) for a, b in zip(ours, ref))
            times = {"package": [], "definition": [], "every row": []}
            for _ in range(args.reps):
                times["package"].append(timed(params.standardisation, x, "full", w))
                times["definition"].append(timed(reference, x, w))
                times["every row"].append(timed(reference, x, w, True))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{n:>9} {'none' if w is None else 'integer':>8} | {med['package'] * 1e3:>10.1f} "
                  f"{med['definition'] * 1e3:>13.1f} {med['every row'] * 1e3:>12.1f} | "
                  f"{med['definition'] / med['package']:>4.1f}x {med['every row'] / med['package']:>5.1f}x | "
                  f"{'yes' if equal else 'NO':>5} | {load()}", flush=True)


if __name__ == "__main__":
    main()

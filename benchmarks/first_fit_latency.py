"""First fit in a fresh process, with and without the persistent compilation cache.

Users run many short scripts; each pays for importing bayesgmm and compiling its programs. Since
issue 13 ``import bayesgmm`` turns JAX's persistent compilation cache on, so a second process
loads the programs the first one compiled. This benchmark runs, for each engine, fresh Python
processes (interleaved, ``--reps`` rounds):

* ``no cache``: ``BAYESGMM_COMPILE_CACHE=0``;
* ``warm cache``: a cache folder that an earlier process filled with the same fit.

and prints the wall time of the whole script (import included), the fit's own
``compile_seconds`` and ``run_seconds``, and the ratio warm / no cache. The fits are the defaults
on Old Faithful (K=2): ``fit_em``, ``fit_vb``, ``fit_mcmc`` (4 chains x (1000 + 1000)).

Run::

    .venv/bin/python benchmarks/first_fit_latency.py [--reps 2] [--engines em vb mcmc]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

SCRIPT = """
import sys, time, warnings
t0 = time.perf_counter()
import bayesgmm as bg
x = bg.datasets.load_faithful()
fit = {"em": bg.fit_em, "vb": bg.fit_vb, "mcmc": bg.fit_mcmc, "svi": bg.fit_svi}[sys.argv[1]]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    r = fit(x, 2, seed=0)
print(f"{time.perf_counter() - t0:.3f} {r.info['compile_seconds']:.3f} {r.info['run_seconds']:.3f}")
"""


def run(engine: str, cache: str | None) -> tuple[float, float, float]:
    env = dict(os.environ, BAYESGMM_COMPILE_CACHE=cache or "0", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT, engine], capture_output=True, text=True, env=env, check=True)
    wall, compile_s, run_s = (float(v) for v in out.stdout.split())
    return wall, compile_s, run_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--engines", nargs="+", default=["em", "vb", "mcmc"])
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; cores: {os.cpu_count()}")
    print(f"{'engine':<6} {'setting':<11} {'wall s':>7} {'compile s':>9} {'run s':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for engine in args.engines:
            cache = os.path.join(folder, engine)
            run(engine, cache)  # fills the cache
            rows = {"no cache": [], "warm cache": []}
            for _ in range(args.reps):  # interleaved
                rows["no cache"].append(run(engine, None))
                rows["warm cache"].append(run(engine, cache))
            med = {k: tuple(statistics.median(v[i] for v in r) for i in range(3)) for k, r in rows.items()}
            for setting, (wall, comp, run_s) in med.items():
                print(f"{engine:<6} {setting:<11} {wall:7.2f} {comp:9.2f} {run_s:7.2f}")
            print(f"{engine:<6} {'ratio':<11} {med['warm cache'][0] / med['no cache'][0]:7.2f}  (warm / no cache, wall)")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()

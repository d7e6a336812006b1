"""A first NUTS fit on a shared machine: quiet, and beside other busy JAX processes.

Issue 13 asks that, beside two other busy JAX processes on two cores, a first NUTS fit take at
most 2.5x its quiet time. This script runs the same fresh-process fit (import included, no
persistent compilation cache; Old Faithful, K=2, the defaults: 4 chains x (1000 + 1000)) with
nothing else running and beside ``--busy`` processes that multiply 512 x 512 matrices with JAX
in a loop, interleaved over ``--reps`` rounds, and prints the median wall, compile and run
seconds of each setting and the ratio busy / quiet, with the load average.

Usage: ``python benchmarks/shared_machine.py [--reps 2] [--busy 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _fresh_process import bytecode_note, child_env

FIT = """
import time, warnings
t0 = time.perf_counter()
import bayesgmm as bg
x = bg.datasets.load_faithful()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    r = bg.fit_mcmc(x, 2, seed=0)
print(f"{time.perf_counter() - t0:.3f} {r.info['compile_seconds']:.3f} {r.info['run_seconds']:.3f}")
"""

BUSY = """
import jax, jax.numpy as jnp
a = jnp.ones((512, 512)) / 512
f = jax.jit(lambda m: (m @ m) / jnp.linalg.norm(m))
while True:
    a = f(a).block_until_ready()
"""


def fit() -> tuple[float, float, float]:
    env = child_env(BAYESGMM_COMPILE_CACHE="0", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", FIT], capture_output=True, text=True, env=env, check=True)
    return tuple(float(v) for v in out.stdout.split())


def busy_fit(num_busy: int) -> tuple[float, float, float]:
    procs = [subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(num_busy)]
    try:
        time.sleep(5.0)  # the busy processes are past their own start-up
        return fit()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--busy", type=int, default=2)
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; load average before {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(bytecode_note())
    rows = {"quiet": [], f"beside {args.busy} busy": []}
    for _ in range(args.reps):  # interleaved
        rows["quiet"].append(fit())
        time.sleep(3.0)
        rows[f"beside {args.busy} busy"].append(busy_fit(args.busy))
        time.sleep(3.0)
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in rows.items()}
    print(f"{'setting':<16} {'wall s':>7} {'compile s':>9} {'run s':>7}   walls")
    for k, (wall, comp, run) in med.items():
        print(f"{k:<16} {wall:7.2f} {comp:9.2f} {run:7.2f}   {[r[0] for r in rows[k]]}")
    quiet, busy = (m[0] for m in med.values())
    print(f"ratio busy / quiet (wall): {busy / quiet:.2f}   (target <= 2.5)")
    print(f"load average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()

"""First fit in a fresh process, with and without the persistent compilation cache.

Users run many short scripts; each pays for importing bayesgmm and compiling its programs. Since
issue 13 ``import bayesgmm`` turns JAX's persistent compilation cache on, so a second process
loads the programs the first one compiled. This benchmark runs, for each engine, fresh Python
processes (interleaved, ``--reps`` rounds):

* ``no cache``: ``BAYESGMM_COMPILE_CACHE=0``;
* ``warm cache``: a cache folder that an earlier process filled with the same fit;
* ``upgraded 1st`` and ``upgraded``: a cache folder filled by a process with the program store
  off, as an earlier version of the package leaves it for this one (JAX's cache holds the
  programs, the store no file with this version's digest): the first process after the upgrade,
  then the next one (before f44e498 every process stayed as slow as the first, tracing again).

and prints the wall time of the whole script (import included), the fit's own
``compile_seconds`` and ``run_seconds``, and the ratio warm / no cache. The fits are the defaults
on Old Faithful (K=2): ``fit_em``, ``fit_vb``, ``fit_mcmc`` (4 chains x (1000 + 1000)).

``--numpyro`` adds the comparison of issue 13: the first NUTS fit in a fresh process (import
included, no persistent cache) against a plain NumPyro NUTS run of a comparable hand-written GMM
(Dirichlet weights, Normal means, LKJ-Cholesky correlations with half-Cauchy scales,
``MixtureSameFamily``; standardised data, 4 vectorised chains x (1000 + 1000)) in its own fresh
process, interleaved, with the ratio bayesgmm / NumPyro (target <= 0.35).

Run::

    .venv/bin/python benchmarks/first_fit_latency.py [--reps 2] [--engines em vb mcmc] [--numpyro]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _fresh_process import bytecode_note, child_env

SCRIPT = """
import sys, time, warnings
t0 = time.perf_counter()
import bayesgmm as bg
from bayesgmm import _program_store
_program_store.ENABLED = sys.argv[2:] != ["no-store"]
x = bg.datasets.load_faithful()
fit = {"em": bg.fit_em, "vb": bg.fit_vb, "mcmc": bg.fit_mcmc, "svi": bg.fit_svi}[sys.argv[1]]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    r = fit(x, 2, seed=0)
print(f"{time.perf_counter() - t0:.3f} {r.info['compile_seconds']:.3f} {r.info['run_seconds']:.3f}")
"""

PLAIN_NUMPYRO = """
import time
t0 = time.perf_counter()
import jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
x = np.loadtxt(sys.argv[1], delimiter=",", skiprows=1, usecols=(0, 1))
x = jnp.asarray((x - x.mean(0)) / x.std(0))
K, D = 2, x.shape[1]

def model(x):
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(K)))
    with numpyro.plate("k", K):
        mu = numpyro.sample("mu", dist.Normal(jnp.zeros(D), 3.0).to_event(1))
        corr = numpyro.sample("corr", dist.LKJCholesky(D, 2.0))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(jnp.ones(D)).to_event(1))
    comps = dist.MultivariateNormal(mu, scale_tril=sigma[..., None] * corr)
    numpyro.sample("x", dist.MixtureSameFamily(dist.Categorical(probs=w), comps), obs=x)

mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=1000, num_chains=4, chain_method="vectorized",
            progress_bar=False)
mcmc.run(jax.random.PRNGKey(0), x)
jax.block_until_ready(mcmc.get_samples())
print(f"{time.perf_counter() - t0:.3f} nan nan")
""".replace("import time", "import sys, time", 1)


def run_numpyro() -> tuple[float, float, float]:
    import bayesgmm.datasets as datasets

    csv = os.path.join(os.path.dirname(datasets.__file__), "data", "faithful.csv")
    env = child_env(OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PLAIN_NUMPYRO, csv], capture_output=True, text=True, env=env,
                         check=True)
    return tuple(float(v) for v in out.stdout.split())


def run(engine: str, cache: str | None, *flags: str) -> tuple[float, float, float]:
    env = child_env(BAYESGMM_COMPILE_CACHE=cache or "0", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT, engine, *flags], capture_output=True, text=True, env=env,
                         check=True)
    wall, compile_s, run_s = (float(v) for v in out.stdout.split())
    return wall, compile_s, run_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--engines", nargs="*", default=["em", "vb", "mcmc"])
    ap.add_argument("--numpyro", action="store_true", help="also: first NUTS fit against plain NumPyro")
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; cores: {os.cpu_count()}")
    print(bytecode_note())
    print(f"{'engine':<6} {'setting':<12} {'wall s':>7} {'compile s':>9} {'run s':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for engine in args.engines:
            cache = os.path.join(folder, engine)
            run(engine, cache)  # fills the cache
            rows = {"no cache": [], "warm cache": [], "upgraded 1st": [], "upgraded": []}
            for rep in range(args.reps):  # interleaved
                rows["no cache"].append(run(engine, None))
                rows["warm cache"].append(run(engine, cache))
                upgraded = os.path.join(folder, f"{engine}-upgraded-{rep}")
                run(engine, upgraded, "no-store")  # JAX's cache only, as the earlier version left it
                rows["upgraded 1st"].append(run(engine, upgraded))
                rows["upgraded"].append(run(engine, upgraded))
            med = {k: tuple(statistics.median(v[i] for v in r) for i in range(3)) for k, r in rows.items()}
            for setting, (wall, comp, run_s) in med.items():
                print(f"{engine:<6} {setting:<12} {wall:7.2f} {comp:9.2f} {run_s:7.2f}")
            print(f"{engine:<6} {'ratio':<12} {med['warm cache'][0] / med['no cache'][0]:7.2f}  (warm / no cache, wall); "
                  f"{med['upgraded'][0] / med['no cache'][0]:.2f} (upgraded / no cache)")
    if args.numpyro:
        walls = {"bayesgmm": [], "numpyro": []}
        for _ in range(args.reps):  # interleaved, each in its own fresh process, no persistent cache
            walls["bayesgmm"].append(run("mcmc", None)[0])
            walls["numpyro"].append(run_numpyro()[0])
        ours, theirs = (statistics.median(walls[k]) for k in ("bayesgmm", "numpyro"))
        print(f"first NUTS fit, fresh process, no cache: bayesgmm {ours:.2f} s {walls['bayesgmm']}, plain NumPyro "
              f"{theirs:.2f} s {walls['numpyro']}; ratio {ours / theirs:.2f}")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()

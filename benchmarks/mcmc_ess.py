"""NUTS efficiency of ``bayesgmm.fit_mcmc`` against PyMC, and the Gibbs sampler ``bayesgmm.fit_gibbs``
against NUTS: compile time, sampling time, min ESS per second.

Cases: Old Faithful (N=272, D=2) with K=2, and simulated data (``make_mixture``, N=1000, D=2,
K=3); full covariances, the default prior ``Prior.default(x, K)``.

Rows
----
* ``bayesgmm 1 chain f32``: the measured reference of the issue, ONE chain of ``fit_mcmc``
  (num_warmup=1000, num_samples=1000) in float32 (JAX's default precision);
  ``bayesgmm 4 chains f32``: the default 4 chains, ``vmap``-ed in one program.
* ``bayesgmm Gibbs 4 chains f32``: ``fit_gibbs`` with the same warmup and draws per chain (a
  sweep is far cheaper than a NUTS trajectory, its draws more autocorrelated); the row adds
  ``Gibbs/NUTS``, the ratio of its min-ESS/s to that of the 4 NUTS chains.
* ``PyMC 1 chain f64``: PyMC's default NUTS (``pm.sample``: jitter+adapt_diag, target_accept
  0.8, same warmup and draws), one chain, in a separate virtual environment
  (``.venv-pymc``, see below), run as a subprocess with OPENBLAS_NUM_THREADS=1.
* The first ``fit_mcmc`` call in a fresh process (default settings: 4 chains x (1000 + 1000),
  Old Faithful K=2), timed in a subprocess without and then with the persistent
  compilation cache. Target: at most 10 s.

Columns: ``compile`` (s; bayesgmm: ``info["compile_seconds"]``, PyMC: everything before
sampling, i.e. model compilation and initialisation), ``sample`` (s; bayesgmm:
``info["run_seconds"]``, i.e. MAP start + warmup + sampling; PyMC: its ``sampling_time``, warmup
+ sampling), ``minESS`` (the smallest bulk ESS, ArviZ, over every weight, mean and covariance
entry of the label-aligned draws, computed by the same function for both), ``ESS/s`` =
minESS / sample, ``div`` (divergent transitions after warmup), ``R-hat`` (max rank-normalised
split R-hat over the same entries), ``load1`` (1-minute load average when the row finished).
The PyMC rows add ``bayesgmm/PyMC``, the ratio of the 1-chain ESS/s. Target: at least 5.

The PyMC model is the same model and prior
----------------------------------------
Both samplers get the same standardised data ``x_s = (x - mean) / sd`` (bayesgmm standardises
internally; ESS and R-hat do not depend on units) and ``Prior.default(x, K)`` expressed on that
scale (``Prior.standardised``):

* ``weights ~ Dirichlet(alpha)`` — ``pm.Dirichlet`` (PyMC's simplex transform; NumPyro uses
  stick-breaking);
* ``Sigma_k ~ InverseWishart(nu0, Psi0)`` — PyMC has no inverse-Wishart, so ``Sigma_k = L L^T``
  with ``L`` lower triangular, free entries ``pm.Flat`` and a log diagonal (the log-Cholesky
  parameterisation, which is also what NumPyro's ``positive_definite`` transform uses), and
  ``pm.Potential`` adds ``log IW(Sigma_k) + log |d vech(Sigma_k) / d raw|`` (the Jacobian
  ``2^D prod_i L_ii^(D - i + 2)``, i = 1..D), so the density of ``Sigma_k`` is exactly the
  inverse Wishart;
* ``mu_k | Sigma_k ~ N(m0, Sigma_k / kappa0)`` — ``pm.MvNormal`` with Cholesky factor
  ``L / sqrt(kappa0)``;
* ``x_n ~ sum_k w_k N(mu_k, Sigma_k)`` with z summed out — ``pm.Mixture`` of
  ``pm.MvNormal.dist(mu_k, chol=L)``.

Both start at the MAP solution (bayesgmm: its internal MAP start; PyMC: ``initvals`` from
``fit_em(x, K, prior=...)``, jittered by PyMC's default init). PyMC's draws are mapped back to the
original scale and aligned with the same :func:`bayesgmm.labels.align_draws` (pivot: the MAP)
before ESS is computed.

Threads: BLAS and XLA are pinned to one thread (one core against one core; the machine may be
shared, hence the load column).

Setup of PyMC (a separate environment, so its pins never touch bayesgmm's)::

    python3 -m venv .venv-pymc && .venv-pymc/bin/pip install pymc

Without it the PyMC rows print "PyMC not available".

Run::

    .venv/bin/python benchmarks/mcmc_ess.py [--num-warmup 1000] [--num-samples 1000]
        [--skip-pymc] [--skip-latency] [--pymc-python PATH]

(``--skip-pymc --skip-latency``: the bayesgmm rows only, NUTS and Gibbs.)
"""

from __future__ import annotations

import os

# One thread for BLAS (NumPy, PyMC's pytensor) and XLA, before NumPy or JAX are imported.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PYMC_PYTHON = REPO / ".venv-pymc" / "bin" / "python"


# ----------------------------------------------------------------------------------------------
# PyMC worker: runs under .venv-pymc's Python (needs only numpy and pymc, never bayesgmm)
# ----------------------------------------------------------------------------------------------
def pymc_worker(in_path: str, out_path: str) -> None:
    """Sample the model with PyMC's default NUTS; inputs and draws on the standardised scale."""
    import pymc as pm
    import pytensor.tensor as pt

    inp = np.load(in_path)
    x, alpha, m0 = inp["x"], inp["alpha"], inp["m0"]
    kappa0, nu0, psi = float(inp["kappa0"]), float(inp["nu0"]), inp["psi"]
    k, d = inp["init_means"].shape
    tril = np.tril_indices(d)
    diag_pos = np.array([i for i, (r, c) in enumerate(zip(*tril)) if r == c])
    psi_chol = np.linalg.cholesky(psi)
    start = time.perf_counter()
    with pm.Model():
        w = pm.Dirichlet("weights", a=alpha)
        comps = []
        for j in range(k):
            raw = pm.Flat(f"chol_raw_{j}", shape=len(tril[0]))  # lower triangle, log diagonal
            log_diag = raw[diag_pos]
            chol = pt.set_subtensor(pt.zeros((d, d))[tril], pt.set_subtensor(raw[diag_pos], pt.exp(log_diag)))
            # log IW(Sigma | nu0, Psi0) up to a constant: -(nu0 + D + 1)/2 log|Sigma| - tr(Psi0 Sigma^-1)/2,
            # with tr(Psi0 Sigma^-1) = ||L^-1 chol(Psi0)||_F^2 and log|Sigma| = 2 sum log L_ii
            a = pt.linalg.solve_triangular(chol, psi_chol, lower=True)
            log_iw = -(nu0 + d + 1) * pt.sum(log_diag) - 0.5 * pt.sum(a**2)
            # Sigma = L L^T: |d vech Sigma / d vech L| = 2^D prod_i L_ii^(D - i + 1); L_ii = exp(raw) adds prod L_ii
            log_jac = d * np.log(2.0) + pt.sum((d - np.arange(d) + 1) * log_diag)
            pm.Potential(f"inverse_wishart_{j}", log_iw + log_jac)
            mu = pm.MvNormal(f"mu_{j}", mu=m0, chol=chol / np.sqrt(kappa0))
            comps.append(pm.MvNormal.dist(mu=mu, chol=chol))
        pm.Mixture("x", w=w, comp_dists=comps, observed=x)
        initvals = {"weights": inp["init_weights"]}
        for j in range(k):
            lc = np.linalg.cholesky(inp["init_covariances"][j])[tril]
            lc[diag_pos] = np.log(lc[diag_pos])
            initvals[f"chol_raw_{j}"] = lc
            initvals[f"mu_{j}"] = inp["init_means"][j]
        idata = pm.sample(
            int(inp["num_samples"]), tune=int(inp["num_warmup"]), chains=1, cores=1, random_seed=int(inp["seed"]),
            progressbar=False, initvals=initvals, compute_convergence_checks=False,
        )
    total = time.perf_counter() - start
    post = idata.posterior
    sampling = float(post.attrs.get("sampling_time", idata.sample_stats.attrs.get("sampling_time", total)))
    covs = []
    for j in range(k):
        raw = post[f"chol_raw_{j}"].values  # (1, S, D(D+1)/2)
        lo = np.zeros(raw.shape[:2] + (d, d))
        lo[..., tril[0], tril[1]] = raw
        lo[..., np.arange(d), np.arange(d)] = np.exp(lo[..., np.arange(d), np.arange(d)])
        covs.append(lo @ np.swapaxes(lo, -1, -2))
    np.savez(
        out_path,
        weights=post["weights"].values,
        means=np.stack([post[f"mu_{j}"].values for j in range(k)], axis=2),
        covariances=np.stack(covs, axis=2),
        divergences=int(idata.sample_stats["diverging"].values.sum()),
        total=total,
        sampling=sampling,
        version=pm.__version__,
    )


# ----------------------------------------------------------------------------------------------
# Main process (bayesgmm's environment)
# ----------------------------------------------------------------------------------------------
def cases():
    import bayesgmm as bg

    sim = bg.datasets.make_mixture(1000, 3, 2, seed=0)
    return [
        ("faithful N=272 K=2", np.asarray(bg.datasets.load_faithful(), np.float32), 2),
        ("sim N=1000 D=2 K=3", np.asarray(sim.x, np.float32), 3),
    ]


def min_ess_max_rhat(draws) -> tuple[float, float]:
    """Smallest bulk ESS and largest R-hat over every scalar of (aligned) draws (C, S, ...).

    R-hat of a single chain is that of its two halves (ArviZ needs two chains), as ``fit_mcmc``
    reports it.
    """
    import arviz as az

    arrays = {n: np.asarray(v, np.float64) for n, v in draws.items()}
    data = az.convert_to_dataset(arrays)
    ess = np.concatenate([np.ravel(v.values) for v in az.ess(data, method="bulk").data_vars.values()])
    if next(iter(arrays.values())).shape[0] == 1:
        half = next(iter(arrays.values())).shape[1] // 2
        data = az.convert_to_dataset({n: v[:, : 2 * half].reshape((2, half) + v.shape[2:]) for n, v in arrays.items()})
    rhat = np.concatenate([np.ravel(v.values) for v in az.rhat(data).data_vars.values()])
    return float(np.nanmin(ess)), float(np.nanmax(rhat))


def run_bayesgmm(x, k, chains, args, sampler="mcmc"):
    """One fit of bayesgmm's NUTS (``sampler="mcmc"``) or Gibbs sampler (``"gibbs"``)."""
    import bayesgmm as bg
    from bayesgmm.params import ConvergenceWarning

    fit = {"mcmc": bg.fit_mcmc, "gibbs": bg.fit_gibbs}[sampler]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = fit(x, k, num_warmup=args.num_warmup, num_samples=args.num_samples, num_chains=chains, seed=0)
    ess, rhat = min_ess_max_rhat(r.draws)
    i = r.info
    return dict(compile=i["compile_seconds"], sample=i["run_seconds"], ess=ess, div=i.get("num_divergences", 0),
                rhat=rhat)


def run_pymc(x, k, args):
    """PyMC's NUTS on the same model, prior and standardised data, in its own environment."""
    import bayesgmm as bg
    from bayesgmm.labels import align_draws
    from bayesgmm.params import GMMParams, params_to_original, params_to_standard, standardisation

    x64 = np.asarray(x, np.float64)
    prior = bg.Prior.default(x64, k)
    shift, sd = standardisation(x64, "full")
    std_prior = prior.standardised(shift, sd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = bg.fit_em(x64, k, prior=prior, n_init=4, seed=0)  # the MAP: start and alignment pivot
    start = params_to_standard(em.params, shift, sd, "full")
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(
            inp, x=(x64 - shift) / sd, alpha=std_prior.concentration(k), m0=std_prior.mean,
            kappa0=std_prior.mean_precision, nu0=std_prior.degrees_of_freedom, psi=std_prior.scale,
            init_weights=start.weights, init_means=start.means, init_covariances=start.covariances,
            num_warmup=args.num_warmup, num_samples=args.num_samples, seed=0,
        )
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_NUM_THREADS="1")
        env.pop("XLA_FLAGS", None)
        proc = subprocess.run(
            [str(args.pymc_python), os.path.abspath(__file__), "--pymc-worker", inp, out],
            env=env, capture_output=True, text=True, cwd=tmp,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output")
        res = dict(np.load(out))
    draws = params_to_original(GMMParams(res["weights"], res["means"], res["covariances"]), shift, sd, "full")
    aligned, _ = align_draws({"weights": draws.weights, "means": draws.means, "covariances": draws.covariances},
                             em.params, "full")
    ess, rhat = min_ess_max_rhat(aligned)
    return dict(compile=float(res["total"] - res["sampling"]), sample=float(res["sampling"]), ess=ess,
                div=int(res["divergences"]), rhat=rhat, version=str(res["version"]))


LATENCY_CODE = """
import sys, time, warnings
t0 = time.perf_counter()
import bayesgmm as bg
from bayesgmm import fit_mcmc
x = bg.datasets.load_faithful()
t1 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    r = fit_mcmc(x, 2, seed=0)
t2 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {r.info['compile_seconds']:.2f} {r.info['run_seconds']:.2f}")
"""


def first_call_latency(cache_dir=None):
    args = [sys.executable, "-c", LATENCY_CODE]
    env = dict(os.environ, BAYESGMM_COMPILE_CACHE=cache_dir or "0")  # no cache unless given one
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout.split()
    return [float(v) for v in out]


HEADER = f"{'run':<48} {'compile':>8} {'sample':>8} {'minESS':>8} {'ESS/s':>8} {'div':>5} {'R-hat':>7} {'load1':>6}"


def fmt(name, r, ref=None, versus="bayesgmm/PyMC", invert=True):
    rate = r["ess"] / r["sample"]
    ref_rate = None if ref is None else ref["ess"] / ref["sample"]
    ratio = "" if ref is None else f"  {versus} = {(ref_rate / rate if invert else rate / ref_rate):.1f}x"
    return (f"{name:<48} {r['compile']:8.2f} {r['sample']:8.2f} {r['ess']:8.0f} {rate:8.1f} "
            f"{r['div']:5d} {r['rhat']:7.3f} {os.getloadavg()[0]:6.2f}{ratio}")


def main(args):
    import jax

    pymc_ok = pathlib.Path(args.pymc_python).exists() and not args.skip_pymc
    print(f"python {sys.version.split()[0]}, jax {jax.__version__}, CPUs {os.cpu_count()}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    print(f"load average (1, 5, 15 min) at start: {tuple(round(v, 2) for v in os.getloadavg())}")
    print(f"num_warmup={args.num_warmup}, num_samples={args.num_samples} per chain, full covariances, "
          f"Prior.default, seed 0")
    print(HEADER)
    print("-" * len(HEADER))
    for name, x, k in cases():
        ref = run_bayesgmm(x, k, 1, args)
        print(fmt(f"{name} bayesgmm 1 chain f32", ref), flush=True)
        nuts4 = run_bayesgmm(x, k, 4, args)
        print(fmt(f"{name} bayesgmm 4 chains f32", nuts4), flush=True)
        print(fmt(f"{name} bayesgmm Gibbs 4 chains f32", run_bayesgmm(x, k, 4, args, "gibbs"), nuts4, "Gibbs/NUTS", False),
              flush=True)
        if not pymc_ok:
            print(f"{name} PyMC not available ({args.pymc_python} missing or --skip-pymc)", flush=True)
            continue
        try:
            res = run_pymc(x, k, args)
            print(fmt(f"{name} PyMC {res['version']} 1 chain f64", res, ref), flush=True)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
            print(f"{name} PyMC failed: {type(exc).__name__}: {exc}", flush=True)
    print(f"load average at end of the table: {tuple(round(v, 2) for v in os.getloadavg())}")
    if not args.skip_latency:
        print("\nfirst fit_mcmc in a fresh process (Old Faithful K=2, default 4 chains x (1000 + 1000), float32):")
        imp, fit, comp, samp = first_call_latency()
        print(f"  no cache:          import {imp:.2f} s, first fit_mcmc {fit:.2f} s (compile {comp:.2f}, "
              f"run {samp:.2f}); load1 {os.getloadavg()[0]:.2f}")
        with tempfile.TemporaryDirectory() as cache:
            first_call_latency(cache)  # fills the cache
            imp, fit, comp, samp = first_call_latency(cache)
            print(f"  persistent cache:  import {imp:.2f} s, first fit_mcmc {fit:.2f} s (compile/load {comp:.2f}, "
                  f"run {samp:.2f}); load1 {os.getloadavg()[0]:.2f}")
        print(f"load average at end: {tuple(round(v, 2) for v in os.getloadavg())}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--pymc-worker":
        pymc_worker(sys.argv[2], sys.argv[3])
        sys.exit(0)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--pymc-python", default=str(DEFAULT_PYMC_PYTHON),
                   help="Python of the environment with PyMC (default: .venv-pymc next to the repository)")
    p.add_argument("--skip-pymc", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    main(p.parse_args())

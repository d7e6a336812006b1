"""NUTS efficiency of ``bayesgmm.fit_mcmc``: compile time, sampling time, min bulk ESS per second.

Cases: Old Faithful (N=272, D=2) K=2 and simulated data (``make_mixture``, N=1000, D=2, K=3),
full covariances, default prior (``Prior.default``), float32 (JAX's default precision).

* The measured reference is ONE chain (num_warmup=1000, num_samples=1000); 4 vectorised chains
  are reported too. "min ESS/s" is the smallest bulk ESS (ArviZ, over every weight, mean and
  covariance entry of the label-aligned draws) divided by the sampling seconds (compile excluded).
* With ``--pymc`` (and PyMC installed), PyMC's default NUTS samples the same model and prior
  (z summed out with ``pm.Mixture``; the inverse-Wishart prior on each covariance written as a
  ``pm.Potential`` on a log-Cholesky parameterisation with its exact Jacobian), one chain,
  OPENBLAS_NUM_THREADS=1; the table shows the ESS/s ratio bayesgmm / PyMC. PyMC's draws are
  aligned with the same :func:`bayesgmm.labels.align_draws` before ESS is computed.
* The first ``fit_mcmc`` call in a fresh process (default settings, 4 chains, Old Faithful K=2)
  is timed in a subprocess, without and then with the opt-in persistent compilation cache.

Run::

    /work/venv/bin/python benchmarks/mcmc_ess.py [--pymc] [--skip-latency]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

import bayesgmm as bg
from bayesgmm.labels import align_draws
from bayesgmm.mcmc import fit_mcmc
from bayesgmm.params import ConvergenceWarning


def cases():
    sim = bg.datasets.make_mixture(1000, 3, 2, seed=0)
    return [("faithful K=2", np.asarray(bg.datasets.load_faithful(), np.float32), 2),
            ("sim N=1000 K=3", np.asarray(sim.x, np.float32), 3)]


def run_bayesgmm(x, k, chains, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        r = fit_mcmc(x, k, num_warmup=1000, num_samples=1000, num_chains=chains, seed=seed)
        total = time.perf_counter() - start
    i = r.info
    return dict(compile=i["compile_seconds"], sample=i["sampling_seconds"], total=total, ess=i["min_ess_bulk"],
                div=i["num_divergences"], rhat=i["max_rhat"])


def _min_ess_rhat(draws):
    import arviz as az

    data = az.convert_to_dataset({n: np.asarray(v) for n, v in draws.items()})
    ess = np.concatenate([np.ravel(v.values) for v in az.ess(data, method="bulk").data_vars.values()])
    rhat = np.concatenate([np.ravel(v.values) for v in az.rhat(data).data_vars.values()])
    return float(np.nanmin(ess)), float(np.nanmax(rhat))


def run_pymc(x, k, seed=0):
    """PyMC's default NUTS on the same model and prior, one chain."""
    import pymc as pm
    import pytensor.tensor as pt

    x = np.asarray(x, np.float64)
    n, d = x.shape
    prior = bg.Prior.default(x, k)
    m0, kappa0, nu0, psi = prior.mean, prior.mean_precision, prior.degrees_of_freedom, prior.scale
    tril = np.tril_indices(d)
    diag_pos = np.array([i for i, (r, c) in enumerate(zip(*tril)) if r == c])
    em = bg.fit_em(x, k, prior=prior, seed=seed)  # start where fit_mcmc starts: the MAP solution
    with pm.Model() as model:
        w = pm.Dirichlet("weights", a=prior.concentration(k))
        comps, covs = [], []
        for j in range(k):
            raw = pm.Flat(f"chol_raw_{j}", shape=len(tril[0]))  # log-diagonal Cholesky entries
            vals = pt.set_subtensor(raw[diag_pos], pt.exp(raw[diag_pos]))
            chol = pt.set_subtensor(pt.zeros((d, d))[tril], vals)
            cov = chol @ chol.T
            covs.append(cov)
            # log p_IW(cov) + log |d cov / d raw|: Sigma = L L^T has Jacobian 2^D prod L_ii^(D-i+1)
            # (i = 1..D), and L_ii = exp(raw) adds prod L_ii.
            ldiag = raw[diag_pos]
            logdet = 2 * pt.sum(ldiag)
            chol_inv = pt.linalg.solve_triangular(chol, np.eye(d), lower=True)
            iw = (-0.5 * (nu0 + d + 1) * logdet - 0.5 * pt.trace(psi @ chol_inv.T @ chol_inv))
            jac = d * np.log(2.0) + pt.sum((d - np.arange(d) + 1) * ldiag)
            pm.Potential(f"iw_{j}", iw + jac)
            mu = pm.MvNormal(f"mu_{j}", mu=m0, cov=cov / kappa0)
            comps.append(pm.MvNormal.dist(mu=mu, cov=cov))
        pm.Mixture("x", w=w, comp_dists=comps, observed=x)
        initvals = {}
        for j in range(k):
            L = np.linalg.cholesky(em.covariances[j])
            v = L[tril].copy()
            v[diag_pos] = np.log(v[diag_pos])
            initvals[f"chol_raw_{j}"] = v
            initvals[f"mu_{j}"] = em.means[j]
        initvals["weights"] = em.weights
        start = time.perf_counter()
        idata = pm.sample(1000, tune=1000, chains=1, cores=1, random_seed=seed, progressbar=False,
                          initvals=initvals, compute_convergence_checks=False)
        total = time.perf_counter() - start
    post = idata.posterior
    sample_s = float(post.attrs.get("sampling_time", total))
    means = np.stack([post[f"mu_{j}"].values for j in range(k)], axis=2)
    cov_draws = []
    for j in range(k):
        raw = post[f"chol_raw_{j}"].values
        L = np.zeros(raw.shape[:2] + (d, d))
        L[..., tril[0], tril[1]] = raw
        L[..., np.arange(d), np.arange(d)] = np.exp(L[..., np.arange(d), np.arange(d)])
        cov_draws.append(L @ np.swapaxes(L, -1, -2))
    draws = {"weights": post["weights"].values, "means": means, "covariances": np.stack(cov_draws, axis=2)}
    aligned, _ = align_draws(draws, em.params, "full")
    ess, rhat = _min_ess_rhat(aligned)
    div = int(idata.sample_stats["diverging"].values.sum())
    return dict(compile=total - sample_s, sample=sample_s, total=total, ess=ess, div=div, rhat=rhat)


LATENCY_CODE = """
import sys, time, warnings
t0 = time.perf_counter()
import bayesgmm as bg
from bayesgmm.mcmc import fit_mcmc, enable_compilation_cache
if len(sys.argv) > 1:
    enable_compilation_cache(sys.argv[1])
x = bg.datasets.load_faithful()
t1 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    r = fit_mcmc(x, 2, seed=0)
t2 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {r.info['compile_seconds']:.2f} {r.info['sampling_seconds']:.2f}")
"""


def first_call_latency(cache_dir=None):
    args = [sys.executable, "-c", LATENCY_CODE] + ([cache_dir] if cache_dir else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    return [float(v) for v in out]


def fmt(name, r, ref=None):
    rate = r["ess"] / r["sample"]
    ratio = "" if ref is None else f"  x{(ref['ess'] / ref['sample']) / rate:.2f} (bayesgmm/this)"
    return (f"{name:<34} {r['compile']:8.2f} {r['sample']:8.2f} {r['ess']:9.0f} {rate:9.0f} "
            f"{r['div']:5d} {r['rhat']:7.3f}{ratio}")


def main(args):
    print(f"load average (1, 5, 15 min) before: {os.getloadavg()}; CPUs: {os.cpu_count()}")
    header = f"{'run':<34} {'compile':>8} {'sample':>8} {'minESS':>9} {'ESS/s':>9} {'div':>5} {'R-hat':>7}"
    print(header)
    print("-" * len(header))
    for name, x, k in cases():
        ref = run_bayesgmm(x, k, 1)
        print(fmt(f"{name} bayesgmm 1 chain f32", ref), flush=True)
        print(fmt(f"{name} bayesgmm 4 chains f32", run_bayesgmm(x, k, 4)), flush=True)
        if args.pymc:
            os.environ["OPENBLAS_NUM_THREADS"] = "1"
            try:
                print(fmt(f"{name} PyMC 1 chain f64", run_pymc(x, k), ref), flush=True)
            except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"{name} PyMC failed: {type(exc).__name__}: {exc}")
    print(f"load average after: {os.getloadavg()}")
    if not args.skip_latency:
        print("\nfirst fit_mcmc in a fresh process (Old Faithful K=2, 4 chains x (1000 + 1000)):")
        imp, fit, comp, samp = first_call_latency()
        print(f"  no cache:          import {imp:.2f} s, first fit_mcmc {fit:.2f} s (compile {comp:.2f}, sample {samp:.2f})")
        with tempfile.TemporaryDirectory() as cache:
            first_call_latency(cache)  # fills the cache
            imp, fit, comp, samp = first_call_latency(cache)
            print(f"  persistent cache:  import {imp:.2f} s, first fit_mcmc {fit:.2f} s (compile/load {comp:.2f}, sample {samp:.2f})")
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pymc", action="store_true", help="also run PyMC's NUTS (needs pymc installed)")
    p.add_argument("--skip-latency", action="store_true")
    main(p.parse_args())

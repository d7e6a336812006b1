"""Unordered large LAPACK calls in every engine's compiled programs, at sizes past jaxlib's split.

jaxlib 0.10's CPU LAPACK kernels split a batch worth about 2e5 flops or more
(:data:`bayesgmm._chains.LAPACK_SPLIT_FLOPS`) over XLA's thread pool and wait there; two such
calls that XLA runs at once can wait on each other forever on two cores. This script compiles the
programs of each engine and setting at a size where their batched calls pass the split (D=K=16,
400 rows, 10 EM lanes, 4 chains; D=K=8 for SVI's full-rank guide), without running the samplers,
and prints for each program the pairs of such calls that neither depends on the other
(``tests/_lapack_order.py``; it follows data dependencies only, so a listed pair may still be
ordered through buffers, but an unlisted one cannot run at once). Expected output: 0 everywhere.
Only the programs of :class:`bayesgmm._compile.CompiledProgram` are read (not streaming EM's
chunk function, a plain ``jit``).

Usage::

    python benchmarks/lapack_order.py            # every case (several minutes without a cache)
    python benchmarks/lapack_order.py em nuts    # some cases
"""

from __future__ import annotations

import os
import re
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402
from _lapack_order import unordered_lapack_calls  # noqa: E402

import bayesgmm as bg  # noqa: E402
from bayesgmm import _compile, gibbs, mcmc  # noqa: E402
from bayesgmm._chains import LAPACK_SPLIT_FLOPS  # noqa: E402


class _Compiled(Exception):
    """Raised once a sampler's programs are compiled: their chains need not run."""


def _compile_only(program, args, config, runs, start):
    start_program, start_args, start_config = start
    _compile.compile_together(start_program, start_args, {"config": start_config}, program,
                              lambda outputs: (*args, *outputs[1:], np.int32(0)), {"config": config})
    raise _Compiled


def _cases():
    x = bg.datasets.make_mixture(400, 16, 16, separation=3.0, seed=2).x
    x8 = bg.datasets.make_mixture(400, 8, 8, separation=3.0, seed=2).x
    xm = bg.datasets.make_mixture(300, 16, 8, separation=3.0, seed=2).x.copy()
    xm[np.random.default_rng(0).random(xm.shape) < 0.1] = np.nan
    prior = bg.Prior.default(x, 16)
    chains = dict(num_warmup=5, num_samples=30, num_chains=4)
    lanes = dict(n_init=10, max_iter=3, tol=0.0)
    return {
        "em": lambda: bg.fit_em(x, 16),
        "em_lanes": lambda: bg.fit_em(x, 16, **lanes),
        "em_map": lambda: bg.fit_em(x, 16, prior=prior, **lanes),
        "em_mclust_full": lambda: bg.fit_em(x, 16, covariance_type="VEV", **lanes),
        "em_mclust_diag": lambda: bg.fit_em(x, 16, covariance_type="VEI", **lanes),
        "em_missing": lambda: bg.fit_em(xm, 8, missing="marginalize", max_iter=3),
        "select_all": lambda: bg.select(x, [4, 16], covariance_types="all"),
        "stream": lambda: bg.fit_em_stream(x, 16, max_iter=3),
        "vb": lambda: bg.fit_vb(x, 16),
        "vb_lanes": lambda: bg.fit_vb(x, 16, n_init=16, max_iter=3),
        "vb_missing": lambda: bg.fit_vb(xm, 8, missing="marginalize", max_iter=3),
        "nuts": lambda: bg.fit_mcmc(x, 16, **chains),
        "nuts_tied": lambda: bg.fit_mcmc(x, 16, covariance_type="tied", **chains),
        "nuts_diag": lambda: bg.fit_mcmc(x, 16, covariance_type="diag", **chains),
        "gibbs": lambda: bg.fit_gibbs(x, 16, **chains),
        "gibbs_tied": lambda: bg.fit_gibbs(x, 16, covariance_type="tied", **chains),
        "gibbs_missing": lambda: bg.fit_gibbs(xm, 8, missing="marginalize", **chains),
        "svi": lambda: bg.fit_svi(x, 16, num_steps=3),
        "svi_normal": lambda: bg.fit_svi(x, 16, guide="normal", num_steps=3),
        "svi_mvn": lambda: bg.fit_svi(x8, 8, guide="mvn", num_steps=3),
    }


def _executables():
    return [(p._jitted.__name__, exe) for ref in _compile._PROGRAMS if (p := ref()) is not None
            for exe in p._cache.values()]


def _describe(text, names):
    for line in text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
        if match and match.group(1) in names:
            meta = re.search(r'op_name="([^"]+)"', line)
            yield f"      {match.group(1)}: {meta.group(1)[-110:] if meta else ''}"


def main(argv):
    warnings.simplefilter("ignore")
    mcmc.run_chain_groups = gibbs.run_chain_groups = _compile_only
    cases = _cases()
    unknown = [name for name in argv if name not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {sorted(cases)}")
    print(f"# pairs of LAPACK calls of >= {LAPACK_SPLIT_FLOPS:.0e} flops that may run at once, per compiled program")
    total = 0
    for name in argv or cases:
        seen = {id(exe) for _, exe in _executables()}
        try:
            cases[name]()
        except _Compiled:
            pass
        new = [(program, exe) for program, exe in _executables() if id(exe) not in seen]
        if not new:
            print(f"{name:>15}: reuses programs listed above")
        for program, exe in new:
            text = exe.as_text()
            pairs = unordered_lapack_calls(text, LAPACK_SPLIT_FLOPS)
            total += len(pairs)
            print(f"{name:>15} {program:>16}: {len(pairs)}", flush=True)
            listed = {q.first for q in pairs} | {q.second for q in pairs}
            for line in _describe(text, listed):
                print(line)
    print(f"# {total} pair(s) in all")
    return 1 if total else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

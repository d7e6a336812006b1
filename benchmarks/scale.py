"""How EM scales with N: in memory (``fit_em``) and streamed from a ``.npy`` file (``fit_em_stream``).

float32, D=16, K=16, full covariances. Every case runs in a fresh interpreter, so its peak
memory (the whole process: JAX runtime, data, compiled programs) is its own. Reported per case:

* peak RSS: ``VmHWM`` of the fresh process on Linux (``ru_maxrss`` elsewhere; on Linux it
  would inherit the parent's peak through fork + exec);
* time per EM iteration: in memory ``(run(T) - run(1)) / (T - 1)`` of ``fit_em`` at ``tol=0``
  (compile excluded, both programs compiled first); streamed, the median time of one EM pass
  (read + E-step + statistics, the passes after the first, which compiles);
* the cost per row (time / N), flat when the cost is linear in N;
* GFLOP/s counting 4*N*K*D^2 flops per iteration (the classical formulation's work, as in
  ``em_vs_sklearn.py``), against the float32 GEMM rate of this machine measured in the same run;
* sharded vs single device on 4 forced CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``);
* the machine load (``os.getloadavg()``) when each row is printed: on a shared machine read
  ratios, not absolute times.

The streamed files are written to a temporary folder (page cache warm: the timings are of the
fit, not of the disk) and deleted at the end; the N=1e7 case (640 MB) is skipped when less than
2 GB of disk is free.

Usage::

    python benchmarks/scale.py            # the full table
    python benchmarks/scale.py --quick    # small sizes, for a smoke run
    python benchmarks/scale.py --platform gpu   # JAX_PLATFORMS for every case (default: JAX's choice)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _em_timing import first_rows_start, fixed_start, per_iteration

D, K = 16, 16
BLOCK = 250_000  # rows generated at a time, so generating data never needs a float64 copy of it all


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


# ----------------------------------------------------------------------------------------------
# Data: a K-component mixture in D=16, generated block by block (same rows in memory and on disk)
# ----------------------------------------------------------------------------------------------
def _blocks(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(K, D))
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        yield start, (centres[rng.integers(0, K, m)] + rng.normal(size=(m, D))).astype(np.float32)


def make_data(n: int):
    import numpy as np

    x = np.empty((n, D), np.float32)
    for start, block in _blocks(n):
        x[start : start + len(block)] = block
    return x


def write_npy(path: str, n: int) -> None:
    """A .npy file written block by block with plain writes (a memmap would count every page
    written towards this process's RSS, and its peak towards every child's, see peak_rss)."""
    import numpy as np

    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                  "fortran_order": False, "shape": (n, D)})
        for _, block in _blocks(n):
            block.tofile(f)


def start_params(x):
    """A fixed start from the first rows (no initialisation cost in the timings)."""
    from bayesgmm import GMMParams

    return GMMParams(*first_rows_start(x, K))


# ----------------------------------------------------------------------------------------------
# Worker: one case in a fresh interpreter, prints one JSON line
# ----------------------------------------------------------------------------------------------
def worker(case: dict) -> dict:
    import warnings

    import jax
    import numpy as np

    import bayesgmm as bg
    from bayesgmm.streaming import fit_em_stream

    warnings.simplefilter("ignore")  # fixed iterations at tol=0: ConvergenceWarning by design
    devices = case.get("devices")
    out = {"device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{len(jax.devices())}"}
    if case["kind"] == "machine":
        from threadpoolctl import threadpool_info

        blas = sorted({f"{i['internal_api']}({i['num_threads']})" for i in threadpool_info()})
        return dict(out, gemm=matmul_gflops(), jax=jax.__version__, blas=",".join(blas),
                    platform=jax.devices()[0].platform)
    iters = case["iters"]
    if case["kind"] == "memory":
        x = make_data(case["n"])
        start = fixed_start(x, K)

        def fit(t):
            return bg.fit_em(x, K, **start, init_params="random_from_data", tol=0.0, max_iter=t, devices=devices, seed=0)

        timed = per_iteration(fit, iters, case["reps"])
        first = timed["first"]
        out["per_iter"] = timed["per_iter"]
        out["compile"] = first.info["compile_seconds"]
        out["ll"] = first.log_likelihood
    else:
        path = case["path"]
        src = np.load(path, mmap_mode="r")
        params = start_params(src)
        del src
        t0 = time.perf_counter()
        r = fit_em_stream(path, K, init_params=params, batch_size=case["batch_size"], tol=0.0, max_iter=iters,
                          devices=devices, seed=0)
        out["fit_seconds"] = time.perf_counter() - t0
        passes = r.info["pass_seconds"]
        out["per_iter"] = statistics.median(passes[1:]) if len(passes) > 1 else passes[0]
        out["compile"] = passes[0] - out["per_iter"]  # the first pass compiles the chunk program
        out["moments"] = r.info["moments_seconds"]
        out["ll"] = r.log_likelihood
    out["peak_rss"] = peak_rss()
    return out


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes.

    ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, except that on Linux a fresh process inherits
    its parent's peak through fork + exec (``signal->maxrss``), so there the high-water mark of
    this process's own address space, ``VmHWM`` in ``/proc/self/status``, is read instead.
    """
    import resource

    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(case: dict, platform_name: str | None, forced_devices: int | None = None) -> dict:
    env = dict(os.environ)
    if platform_name:
        env["JAX_PLATFORMS"] = platform_name
    if forced_devices:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={forced_devices}").strip()
        env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def matmul_gflops(n: int | None = None, reps: int = 5) -> float:
    """float32 GEMM rate through XLA on JAX's default device, measured now, with full float32
    products as the package's programs compute them (not a GPU's TensorFloat-32); n=2000 on a
    CPU, 8192 on an accelerator (a smaller product there measures its launch, not its rate)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = n or (2000 if jax.default_backend() == "cpu" else 8192)
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
    f = jax.jit(lambda u: jnp.matmul(u, u, precision="highest"))
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--platform", default=None, help="JAX_PLATFORMS for every case (cpu, gpu, ...); default JAX's choice")
    ap.add_argument("--batch-size", type=int, default=65536, help="rows per chunk when streaming")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    # This process never imports JAX and holds no data: a child inherits its parent's peak RSS
    # on Linux (see peak_rss), and the cases are measured in fresh children.
    if args.quick:
        memory_sizes, stream_sizes, sharded_n = [20_000, 100_000], [20_000, 100_000, 400_000], 100_000
        iters_for = lambda n: 4  # noqa: E731
    else:
        memory_sizes, stream_sizes, sharded_n = [100_000, 1_000_000], [100_000, 1_000_000, 10_000_000], 1_000_000
        iters_for = lambda n: {100_000: 20, 1_000_000: 6}.get(n, 3)  # noqa: E731
    machine = run_case(dict(kind="machine", iters=0), args.platform)
    on_gpu = machine["platform"] == "gpu"
    if on_gpu and not args.quick:
        memory_sizes.append(10_000_000)  # the H100/H200 target: N=1e7 in device memory
    peak = machine["gemm"]
    print(f"# bayesgmm EM scaling -- {platform.node()}, {os.cpu_count()} cores, jax {machine['jax']}, "
          f"device {machine['device']}")
    print(f"# threads: XLA CPU uses one intra-op pool over all {os.cpu_count()} cores "
          f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '') or 'unset'}); numpy BLAS {machine['blas']} "
          f"(host-side moments only)")
    print(f"# float32 GEMM via XLA, measured now: {peak:.1f} GFLOP/s; load avg at start {load()}")
    print(f"# float32, D={D}, K={K}, full covariance; stream batch_size={args.batch_size}; "
          "GFLOP/s counts 4*N*K*D^2 per iteration")

    tmp = tempfile.mkdtemp(prefix="bayesgmm_scale_")
    free = shutil.disk_usage(tmp).free
    try:
        paths = {}
        for n in stream_sizes:
            need = n * D * 4
            if n >= 10_000_000 and free < 2e9:
                print(f"# skipping streamed N={n:.0e}: only {free / 1e9:.1f} GB free in {tmp} (2 GB needed)")
                continue
            path = os.path.join(tmp, f"x_{n}.npy")
            t = time.perf_counter()
            write_npy(path, n)
            paths[n] = path
            print(f"# wrote {path} ({need / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")

        header = (f"{'case':<22} {'N':>10} {'device':>14} | {'ms/iter':>9} {'ns/row':>7} | {'GFLOP/s':>7} {'%peak':>5} | "
                  f"{'peak RSS MB':>11} {'data MB':>7} | {'compile s':>9} | load")
        print(header)
        print("-" * len(header))

        def row(name, n, r):
            gf = 4 * n * K * D * D / r["per_iter"] / 1e9
            print(f"{name:<22} {n:>10.0e} {r['device'].split(':')[0] + ' ' + r['device'].split(' ')[-1]:>14} | "
                  f"{r['per_iter'] * 1e3:>9.1f} {r['per_iter'] / n * 1e9:>7.1f} | {gf:>7.1f} {100 * gf / peak:>4.0f}% | "
                  f"{r['peak_rss'] / 1e6:>11.0f} {n * D * 4 / 1e6:>7.0f} | {r['compile']:>9.2f} | {load()}", flush=True)

        for n in memory_sizes:
            r = run_case(dict(kind="memory", n=n, iters=iters_for(n), reps=args.reps), args.platform)
            row("fit_em in memory", n, r)
        for n, path in paths.items():
            r = run_case(dict(kind="stream", path=path, iters=iters_for(n) if n < 10_000_000 else 3,
                              batch_size=args.batch_size), args.platform)
            row("fit_em_stream (.npy)", n, r)
        # sharded vs single device, 4 forced CPU devices (both in the same 4-device configuration)
        for kind in ("memory", "stream"):
            if kind == "stream" and sharded_n not in paths:
                continue
            base = dict(kind=kind, n=sharded_n, iters=iters_for(sharded_n), reps=args.reps, path=paths.get(sharded_n),
                        batch_size=args.batch_size)
            name = "fit_em" if kind == "memory" else "fit_em_stream"
            one = run_case(base, None, forced_devices=4)
            row(f"{name} 4cpu, 1 used", sharded_n, one)
            four = run_case(dict(base, devices="all"), None, forced_devices=4)
            row(f"{name} 4cpu sharded", sharded_n, four)
            print(f"{'':<22} sharded/single time ratio {four['per_iter'] / one['per_iter']:.2f} "
                  f"(log-likelihoods {one['ll']:.6e} / {four['ll']:.6e})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"# temporary files deleted ({tmp}); load avg at end {load()}")
    if not on_gpu:
        print("# no GPU here: the H100 target (N=1e7, D=16, K=16 EM iteration <= 20 ms) was not measured; "
              "run with --platform gpu on a GPU machine.")
    print("# ms/iter: in memory (run(T) - run(1)) / (T - 1); streamed, median pass time (reading the chunks "
          "included). peak RSS: VmHWM of the whole fresh process (JAX runtime and compiler included).")


if __name__ == "__main__":
    main()

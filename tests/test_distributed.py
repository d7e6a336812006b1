"""Several processes (multi-controller JAX, gloo collectives on CPU): two processes on localhost,
each with one CPU device, fit EM and VB with the rows sharded over both, and together equal the
one-process fit. Each process is a fresh interpreter (JAX joins a distributed run before any
other work)."""

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    rank, num_processes, port, out, cases = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    import bayesgmm as bg
    import jax
    jax.config.update("jax_enable_x64", True)
    if num_processes > 1:
        bg.initialize_distributed(f"localhost:{port}", num_processes=num_processes, process_id=rank,
                                  initialization_timeout=120)
    import numpy as np

    devices = "all" if num_processes > 1 else None
    data = bg.datasets.make_mixture(1001, 3, 2, separation=3.0, seed=1)   # odd N: padded to 1002
    facts = dict(processes=jax.process_count(), devices=len(jax.devices()))

    def record(name, fit, value):
        facts[name] = dict(value=value, n_iter=fit.n_iter, converged=bool(fit.converged),
                           means=np.asarray(fit.means).tolist(), weights=np.asarray(fit.weights).tolist(),
                           num_devices=fit.info.get("num_devices"))

    for case in cases.split(","):
        if case == "mismatch":  # each process another seed, then another reg_covar: refused in every process
            for name, kw in (("seed", dict(seed=rank)), ("reg_covar", dict(reg_covar=[1e-10, 0.5][rank], seed=0))):
                try:
                    bg.fit_em(data.x, 3, n_init=2, max_iter=50, devices=devices, **kw)
                    facts["mismatch_" + name] = "fitted"
                except ValueError as err:
                    facts["mismatch_" + name] = str(err)
            try:  # another function in each process: a gather of another shape aborted in gloo
                (bg.fit_em, bg.fit_vb)[rank](data.x, 3, n_init=2, max_iter=50, seed=0, devices=devices)
                facts["mismatch_function"] = "fitted"
            except ValueError as err:
                facts["mismatch_function"] = str(err)
            continue
        if case == "refused" and num_processes == 1:  # five default fits (20 s) that show nothing here
            continue
        if case == "refused":  # one process's own data invalid: every process raises (the other waited forever)
            bad = data.x.copy()
            if rank == 1:
                bad[5, 0] = np.nan
            from bayesgmm.estimator import GaussianMixture

            callers = (("em", lambda x: bg.fit_em(x, 3, seed=0, devices=devices)),
                       ("vb", lambda x: bg.fit_vb(x, 3, seed=0, devices=devices)),
                       ("stream", lambda x: bg.fit_em_stream(x, 3, seed=0, devices=devices)),
                       # callers that check the data before an engine is given the devices
                       ("compare", lambda x: bg.compare(x, 3, methods=("em",), bootstrap_replicates=0,
                                                        engine_kwargs={"em": {"devices": devices}})),
                       ("estimator", lambda x: GaussianMixture(3, engine_kwargs={"devices": devices}).fit(x)))
            for name, fit in callers:
                try:
                    fit(bad)
                    facts["refused_" + name] = "fitted"
                except ValueError as err:
                    facts["refused_" + name] = str(err)
            continue
        engine, ct = case.split("_")
        # a loose tolerance: every iteration is a collective over TCP, and the default's few
        # hundred iterations on these overlapping clusters decide no more than a few dozen
        if engine == "vb":
            fit = bg.fit_vb(data.x, 3, covariance_type=ct, n_init=2, seed=0, devices=devices, tol=1e-3)
            record(case, fit, fit.diagnostics.elbo)
        else:
            prior = bg.Prior.default(data.x, 3) if engine == "map" else None
            fit = bg.fit_em(data.x, 3, covariance_type=ct, prior=prior, n_init=4, seed=0, devices=devices, tol=1e-3)
            record(case, fit, fit.log_likelihood)
    with open(out, "w") as f:
        json.dump(facts, f)
    """
)

#: Run by default (the fast variant): one EM and one VB program.
CASES = ("em_full", "vb_full")
#: Under ``-m slow``: the other structures and MAP-EM.
SLOW_CASES = ("em_tied", "map_full", "vb_diag")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(folder, cases):
    """Facts of the two ranks of a two-process run and of a one-process run, started together."""
    try:  # gloo's TCP transport binds to the address of this machine's host name
        socket.getaddrinfo(socket.gethostname(), None)
    except OSError as err:
        pytest.skip(f"this machine's host name does not resolve ({err}); gloo collectives need it")
    script = folder / "fit.py"
    script.write_text(SCRIPT)
    port = str(_free_port())
    jobs = {name: (subprocess.Popen([sys.executable, str(script), rank, count, port, str(folder / f"{name}.json"),
                                     ",".join(cases)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            for name, rank, count in (("rank0", "0", "2"), ("rank1", "1", "2"), ("alone", "0", "1"))}
    facts = {}
    for name, job in jobs.items():
        try:
            output, _ = job.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for other in jobs.values():
                other.kill()
            pytest.fail(f"{name} did not finish in 600 s")
        assert job.returncode == 0, f"{name} failed:\n{output[-4000:]}"
        facts[name] = json.loads((folder / f"{name}.json").read_text())
    return facts


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("distributed"), CASES + ("mismatch", "refused"))


def test_two_processes_see_each_others_devices(runs):
    assert (runs["rank0"]["processes"], runs["rank0"]["devices"]) == (2, 2)
    assert (runs["alone"]["processes"], runs["alone"]["devices"]) == (1, 1)
    for case in CASES:
        assert runs["rank0"][case]["num_devices"] == 2, case


@pytest.mark.parametrize("case", CASES)
def test_every_rank_gets_the_same_result(runs, case):
    """Both processes run one SPMD program and return bit-identical results."""
    assert runs["rank0"][case] == runs["rank1"][case]


def test_processes_called_differently_are_refused(runs):
    """A different seed in each process returned a fit that was neither seed's; a different
    reg_covar a different result in each process (other differences hung or aborted in gloo).
    Every process now compares the call's digests first and raises."""
    for rank in ("rank0", "rank1"):
        assert "called with different key" in runs[rank]["mismatch_seed"], runs[rank]["mismatch_seed"]
        assert "called with different options" in runs[rank]["mismatch_reg_covar"]
        # fit_em in one process, fit_vb in the other: gloo aborted one process (SIGABRT), the other hung
        assert "were not all running it: another process called another function" in runs[rank]["mismatch_function"]
    assert runs["alone"]["mismatch_seed"] == runs["alone"]["mismatch_reg_covar"] == "fitted"


def test_a_process_refusing_its_call_stops_every_process(runs):
    """A process whose own checks refuse the call (here its data hold a NaN) raises its error; the
    other process, which found nothing wrong, waited forever where the processes compare their
    calls: it now raises too, naming the process that refused. Also where a caller (compare, the
    scikit-learn estimator) checks the data before its engine is given the devices."""
    for name in ("em", "vb", "stream", "compare", "estimator"):
        assert "NaN" in runs["rank1"]["refused_" + name], runs["rank1"]["refused_" + name]
        assert "process(es) [1]" in runs["rank0"]["refused_" + name], runs["rank0"]["refused_" + name]


def _assert_equal_fits(runs, case):
    together, alone = runs["rank0"][case], runs["alone"][case]
    assert together["converged"] and alone["converged"]
    assert together["n_iter"] == alone["n_iter"]
    assert together["value"] == pytest.approx(alone["value"], rel=1e-10)
    np.testing.assert_allclose(together["means"], alone["means"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(together["weights"], alone["weights"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", CASES)
def test_two_processes_equal_one(runs, case):
    """The two-process fit is the one-process fit up to the order of floating-point sums
    (float64): the same iterations, objective and parameters."""
    _assert_equal_fits(runs, case)


@pytest.mark.slow
def test_two_processes_equal_one_other_structures(tmp_path):
    """Fast variant: test_two_processes_equal_one (full covariances)."""
    runs = _run(tmp_path, SLOW_CASES)
    for case in SLOW_CASES:
        assert runs["rank0"][case] == runs["rank1"][case], case
        _assert_equal_fits(runs, case)

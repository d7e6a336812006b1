"""The result API at its edges: data far from zero, columns by name, argument checks, seeds,
priors as values, and the precision rules of the NumPyro engines."""

import copy
import dataclasses
import json
import pickle
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import bayesgmm as bg


@pytest.fixture(scope="module")
def two_blobs():
    rng = np.random.default_rng(0)
    return np.r_[rng.normal(-2, 1, (100, 2)), rng.normal(3, 0.5, (100, 2))]


@pytest.fixture(scope="module")
def em_fit(two_blobs):
    return bg.fit_em(pd.DataFrame(two_blobs, columns=["a", "b"]), 2, seed=0)


def test_float32_input_far_from_zero_for_its_spread_is_warned_about(faithful):
    """float32 data at 1e6 hold values 0.0625 apart: Old Faithful's eruption lengths plus 1e6 keep
    49 distinct values, and the fit ran on them without a word (a review of invariance to units).
    A PrecisionWarning names the columns; float64 data, and float32 data near zero, fit quietly."""
    far = (faithful + np.array([1e6, 0.0])).astype(np.float32)
    with pytest.warns(bg.PrecisionWarning, match=r"column\(s\) \['x0'\] are far from zero .* 0.0625 apart"):
        bg.fit_em(far, 2, n_init=1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bg.fit_em(faithful + np.array([1e6, 0.0]), 2, n_init=1, seed=0)  # float64: its digits kept
        bg.fit_em(faithful.astype(np.float32), 2, n_init=1, seed=0)


def test_data_far_from_zero_keep_their_precision_in_float32():
    """In JAX's default float32, an offset of 1e8 once cost 30+ nats in score_samples and half of
    the predicted labels, while the fit itself (standardised in float64) was right. Run in a fresh
    process: the test session has x64 switched on."""
    code = textwrap.dedent(
        """
        import json, numpy as np, bayesgmm as bg
        rng = np.random.default_rng(0)
        base = np.r_[rng.normal(-2, 1, (100, 2)), rng.normal(3, 0.5, (100, 2))]
        out = {}
        for name, fit in [("em", bg.fit_em), ("vb", bg.fit_vb)]:
            r0, r = fit(base, 2, seed=0), fit(base + 1e8, 2, seed=0)
            idata = r.to_inference_data(base + 1e8)
            xs, _ = r.sample(1000, seed=0)
            out[name] = {
                "ll": [r0.log_likelihood, r.log_likelihood],
                "ll_samples": [float(r0.log_likelihood_samples(base).sum()), float(r.log_likelihood_samples(base + 1e8).sum())],
                "score": [float(r0.score_samples(base).sum()), float(r.score_samples(base + 1e8).sum())],
                "same_labels": float(np.mean(r.predict(base + 1e8) == r0.predict(base))),
                "idata_ll": [float(r0.to_inference_data(base).log_likelihood.x.mean(("chain", "draw")).sum()),
                             float(idata.log_likelihood.x.mean(("chain", "draw")).sum())],
                "dtypes": [str(r.predict_proba(base).dtype), str(r.score_samples(base).dtype), str(xs.dtype)],
                "sample_mean": (xs.mean(0) - 1e8).tolist(),
            }
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, o in out.items():
        for key in ("ll", "ll_samples", "score", "idata_ll"):
            a, b = o[key]
            assert abs(a - b) < 0.05, (name, key, a, b)  # float32 round-off of 200 rows, not 30 nats
        assert o["same_labels"] == 1.0
        assert o["dtypes"] == ["float64"] * 3
        # the mixture mean is 0.5; the sample keeps the offset exactly (no float32 rounding to 8)
        assert np.all(np.abs(np.asarray(o["sample_mean"]) - 0.5) < 0.3), o["sample_mean"]


def test_rows_too_far_for_float64_get_the_limit_not_nan(em_fit, two_blobs):
    """A finite row so far out that every squared Mahalanobis distance overflows has density 0
    (score -inf) and responsibilities 0/0: they are the limit along its direction (all on the
    nearest component relative to its size), not NaN, and agree with a row far out but finite."""
    centre = two_blobs.mean(0)
    direction = np.array([1.0, 0.3])
    far = centre + np.outer([1e155, 1e200, -1e300], direction)
    proba = em_fit.predict_proba(far)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(1), 1.0)
    assert np.all(np.isneginf(em_fit.score_samples(far)))
    reachable = em_fit.predict_proba(centre + np.outer([1e6, -1e6], direction))  # finite densities
    np.testing.assert_array_equal(proba[:2], np.repeat(np.round(reachable[:1]), 2, axis=0))
    np.testing.assert_array_equal(proba[2], np.round(reachable[1]))
    # with a missing entry too: the limit on the observed column (it was NaN, and impute NaN)
    missing = np.column_stack([far[:, 0], np.full(3, np.nan)])
    proba = em_fit.predict_proba(missing)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(1), 1.0)
    filled = em_fit.impute(missing)
    assert np.all(np.isfinite(filled)) and np.array_equal(filled[:, 0], missing[:, 0])


def test_a_bayesian_fits_student_t_density_of_far_rows_is_finite(two_blobs):
    """The predictive Student-t mixture has polynomial tails: a row of 1e155 standard deviations
    has a finite log density, which overflowed to -inf (squared distances beyond float64); the log
    density falls by the same amount per decade there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        vb = bg.fit_vb(two_blobs, 2, seed=0, max_iter=50)
    centre = two_blobs.mean(0)
    scores = vb.score_samples(centre + np.outer([1e145, 1e150, 1e155, 1e160], [1.0, 0.3]))
    assert np.all(np.isfinite(scores))
    steps = np.diff(scores)
    np.testing.assert_allclose(steps[1:], steps[0], rtol=1e-6)


def test_dataframe_columns_are_matched_by_name(em_fit, two_blobs):
    df = pd.DataFrame(two_blobs, columns=["a", "b"])
    np.testing.assert_array_equal(em_fit.score_samples(df[["b", "a"]]), em_fit.score_samples(df))
    np.testing.assert_array_equal(em_fit.predict(df[["b", "a"]]), em_fit.predict(two_blobs))
    with pytest.raises(ValueError, match=r"fitted on \['a', 'b'\] \(missing \['a'\], unexpected \['c'\]\)"):
        em_fit.score(df.rename(columns={"a": "c"}))
    with pytest.raises(ValueError, match="duplicated column name"):
        bg.fit_em(pd.DataFrame(two_blobs, columns=["a", "a"]), 2)
    # a result fitted on a plain array accepts any column names
    plain = bg.fit_em(two_blobs, 2, seed=0)
    np.testing.assert_allclose(plain.score_samples(df), plain.score_samples(two_blobs))
    # ... by position, unless they are its own names in another order (a frame with columns x1, x0
    # was read by position, as if the names were placeholders)
    named = pd.DataFrame(two_blobs, columns=["x0", "x1"])
    np.testing.assert_array_equal(plain.score_samples(named[["x1", "x0"]]), plain.score_samples(two_blobs))


def test_nullable_pandas_columns_are_numeric(two_blobs):
    df = pd.DataFrame(two_blobs, columns=["a", "b"]).astype("Float64")
    r = bg.fit_em(df, 2, seed=0)
    ref = bg.fit_em(two_blobs, 2, seed=0)
    np.testing.assert_allclose(r.means, ref.means, rtol=1e-12)  # memory layout may differ: round-off only
    df.loc[3, "a"] = pd.NA
    with pytest.raises(ValueError, match="NaN values in 1 row"):
        bg.fit_em(df, 2)
    # floats with None, which pandas keeps in an object column, were refused as non-numeric
    objects = pd.DataFrame(two_blobs, columns=["a", "b"]).astype(object)
    plain = pd.DataFrame(two_blobs, columns=["a", "b"])
    np.testing.assert_array_equal(bg.fit_em(objects, 2, seed=0).means, bg.fit_em(plain, 2, seed=0).means)
    objects.loc[3, "a"] = None
    with pytest.raises(ValueError, match="NaN values in 1 row"):
        bg.fit_em(objects, 2)
    nan = pd.DataFrame(two_blobs, columns=["a", "b"])
    nan.loc[3, "a"] = np.nan
    np.testing.assert_array_equal(bg.fit_em(objects, 2, missing="marginalize", seed=0).means,
                                  bg.fit_em(nan, 2, missing="marginalize", seed=0).means)
    objects.loc[4, "b"] = "1.5"  # a string stays refused
    with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['b'\]"):
        bg.fit_em(objects, 2)


@pytest.mark.parametrize("n", [0, -1, 2.5, "3", True])
def test_sample_rejects_bad_sizes(em_fit, n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        em_fit.sample(n)


@pytest.mark.parametrize("seed", [None, 1.5, True, 2**70, np.array([1, 2, 3])])
def test_bad_seeds_raise_value_errors(em_fit, seed):
    with pytest.raises(ValueError, match="seed must"):
        em_fit.sample(5, seed=seed)


def test_integer_seeds_of_every_kind_agree(two_blobs):
    ref = bg.fit_em(two_blobs, 2, seed=3, init_params="random")
    for seed in (np.int64(3), np.array(3), jax.numpy.int32(3), jax.random.key(3)):
        r = bg.fit_em(two_blobs, 2, seed=seed, init_params="random")
        np.testing.assert_array_equal(r.means, ref.means)
    from conftest import CompileCounter

    with CompileCounter() as counter:
        legacy = bg.fit_em(two_blobs, 2, seed=jax.random.PRNGKey(3), init_params="random")  # same bits, same program
    np.testing.assert_array_equal(legacy.means, ref.means)
    assert legacy.info["compile_seconds"] == 0.0 and counter.compiles <= 1  # at most the legacy key's own split
    x1, z1 = ref.sample(50, seed=np.array(7))
    x2, z2 = ref.sample(50, seed=7)
    np.testing.assert_array_equal(x1, x2)
    assert z1.dtype == np.int64 and x1.dtype == np.float64


def test_integer_seeds_are_jax_random_keys_in_both_precisions():
    """Integer seeds are keyed on the host (no program to compile) as ``jax.random.key`` keys them
    with x64, in both precisions: without x64 ``jax.random.key`` keeps a seed's low 32 bits, so
    that 5 and 2**32 + 5 (or -1 and 2**32 - 1) would give the same fit. Seeds in [0, 2**32) get
    ``jax.random.key``'s bits in either precision."""
    from bayesgmm.params import check_data_seed, seed_to_key

    seeds = [0, 1, 12345, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, -1, -(2**31), 2**63 - 1, -(2**63), 2**64 - 1]
    with jax.enable_x64(True):
        reference = [jax.random.key_data(jax.random.key(s if s < 2**63 else s - 2**64)) for s in seeds]
    for x64 in (True, False):
        with jax.enable_x64(x64):
            keys = [seed_to_key(seed) for seed in seeds]
            for seed, ours, theirs in zip(seeds, keys, reference):
                assert jax.random.key_impl(ours) == jax.random.key_impl(jax.random.key(0))
                np.testing.assert_array_equal(jax.random.key_data(ours), theirs, err_msg=str(seed))
                if 0 <= seed < 2**32:
                    np.testing.assert_array_equal(jax.random.key_data(ours), jax.random.key_data(jax.random.key(seed)))
            assert len({tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in keys[:-1]}) == len(seeds) - 1  # -1 is 2**64 - 1
    for bad in (-1, 2**64, 1.0, True):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
            check_data_seed(bad)
    with jax.enable_x64(False):  # simulated data: another seed, other data, whatever the precision
        a, b = (bg.datasets.make_mixture(20, 2, 2, seed=s).x for s in (5, 2**32 + 5))
        assert not np.array_equal(a, b)


def test_priors_are_values(two_blobs):
    a, b = bg.Prior.default(two_blobs, 2), bg.Prior.default(two_blobs, 2)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != bg.Prior.default(two_blobs, 3)
    assert a != bg.Prior.default(two_blobs, 2, weight_concentration=0.5)
    assert (a == "prior") is False


def test_default_prior_names_variances_float64_cannot_scale_and_a_wrong_number_of_concentrations(two_blobs):
    """Data of scale 1e-300 (variances underflow) gave "Prior scale must be a finite positive
    definite matrix", a prior the user never passed; a vector of K + 1 concentrations was taken
    and refused only at the fit."""
    with pytest.raises(ValueError, match=r"do not give a default prior scale float64 can hold .* rescale the others"):
        bg.Prior.default(two_blobs * 1e-300, 2)
    with pytest.raises(ValueError, match="weight_concentration has 3 entries but num_components=2"):
        bg.Prior.default(two_blobs, 2, weight_concentration=[1.0, 1.0, 1.0])
    np.testing.assert_array_equal(bg.Prior.default(two_blobs, 2, weight_concentration=[1.0, 2.0]).weight_concentration,
                                  [1.0, 2.0])


def test_collinear_columns_get_a_clear_error_and_a_way_out():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    x = np.c_[a, 2 * a + 1, rng.normal(size=200)]
    with pytest.raises(ValueError, match="linearly dependent columns"):
        bg.fit_vb(x, 2, covariance_type="diag")
    d = x.shape[1]
    prior = bg.Prior(1.0, x.mean(0), 0.01, d + 2, np.diag(x.var(0)))  # the way out the message names
    r = bg.fit_vb(x, 2, covariance_type="diag", prior=prior, seed=0)
    assert np.all(np.isfinite(r.covariances))


X64_OFF_SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import jax
    import numpy as np
    import bayesgmm as bg
    from _references import log_joint, mixture_log_density

    x = bg.datasets.load_faithful()
    prior = bg.Prior.default(x, 2)
    out = {"x64": bool(jax.config.jax_enable_x64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)  # tiny runs
        fits = {"mcmc": bg.fit_mcmc(x, 2, num_warmup=30, num_samples=30, num_chains=1, seed=0),
                "svi": bg.fit_svi(x, 2, num_steps=100, num_draws=10, seed=0)}
    for name, r in fits.items():
        out[name] = {
            "dtype": r.info["dtype"],
            "result_dtypes": sorted({str(a.dtype) for a in (r.weights, r.means, r.covariances, r.trace,
                                                             *r.draws.values())}),
            "log_likelihood": r.log_likelihood,
            "reference": float(mixture_log_density(x, *r.params, "full").sum()),
        }
    m = fits["mcmc"]
    out["mcmc"]["lp"] = [[float(m.sample_stats["lp"][0, s]),
                          log_joint(x, [m.raw_draws[n][0, s] for n in ("weights", "means", "covariances")], prior)]
                         for s in (0, 14, 29)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        delta = bg.fit_svi(x, 2, guide="delta", num_steps=100, seed=0)
    out["delta"] = [delta.info["elbo_final"], log_joint(x, list(delta.params), prior)]
    # one cluster whose features correlate at 0.9999: the start's jitter left one chain's step size at 0
    xc = np.random.default_rng(0).multivariate_normal([0, 0], [[1, 0.9999], [0.9999, 1]], 200)
    tight = bg.fit_mcmc(xc, 1, seed=0)
    out["correlated"] = dict(rhat=tight.info["max_rhat"], ess=tight.info["min_ess_bulk"],
                             step=float(tight.sample_stats["step_size"].min()))
    print(json.dumps(out))
    """
)


def test_nuts_and_svi_compute_in_float32_without_x64():
    """JAX's default precision (x64 off, as users run it), in a fresh process: NUTS and SVI
    compute in float32, return float64 arrays, and report the log-likelihood of the returned point,
    NUTS's per-draw log posterior and the delta guide's final log posterior as a float64
    recomputation (scipy) gives them. The programs' float32 values were up to 1e-3 nats off on
    20,000 rows (1e-6 relative here); they are now recomputed in float64 from the draws. And NUTS
    on one cluster of features correlated at 0.9999 mixes (its start's jitter is shrunk)."""
    import os
    import pathlib

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    tests = str(pathlib.Path(__file__).parent)
    env["PYTHONPATH"] = os.pathsep.join([tests] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", X64_OFF_SCRIPT], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["x64"] is False
    for name in ("mcmc", "svi"):
        o = out[name]
        assert o["dtype"] == "float32" and o["result_dtypes"] == ["float64"], (name, o)
        assert o["log_likelihood"] == pytest.approx(o["reference"], rel=1e-6), name
    for reported, exact in out["mcmc"]["lp"] + [out["delta"]]:
        assert reported == pytest.approx(exact, rel=1e-12, abs=1e-9)
    # the jitter of every chain's start is shrunk until the start is as probable as a typical draw
    # (0.1 in unconstrained units left one chain at step size 0: R-hat 1.53, bulk ESS 7)
    tight = out["correlated"]
    assert tight["rhat"] < 1.01 and tight["ess"] > 1000 and tight["step"] > 0.01, tight


@pytest.mark.slow  # float32 compute in NUTS and SVI: test_nuts_and_svi_compute_in_float32_without_x64
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_numpyro_engines_take_float32_data_under_x64(covariance_type):
    """The suite runs with x64 on: float32 input once crashed NUTS and SVI (float32 data against
    NumPyro's float64 constants). They now compute in JAX's default float, float64 here."""
    x = bg.datasets.make_mixture(60, 2, 2, separation=4.0, seed=0).x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)
        m = bg.fit_mcmc(x, 2, covariance_type=covariance_type, num_warmup=30, num_samples=30, num_chains=1, seed=0)
        s = bg.fit_svi(x, 2, covariance_type=covariance_type, num_steps=30, seed=0)
    assert m.info["dtype"] == s.info["dtype"] == "float64"
    assert np.isfinite(m.log_likelihood) and np.isfinite(s.log_likelihood)


def test_results_are_deeply_immutable(two_blobs):
    """Every array of a result is read-only, every mapping is read-only, down to the values inside
    ``info``; a result built from the caller's arrays copies them (the caller's stay writable and
    changing them changes nothing); and every method still works on the frozen result."""
    from collections.abc import Mapping

    vb = bg.fit_vb(two_blobs, 2, seed=0, num_draws=20)
    arrays = [vb.weights, vb.means, vb.covariances, vb.trace, *vb.draws.values(), *vb.raw_draws.values(),
              *vb.predictive]
    for arr in arrays:
        assert isinstance(arr, np.ndarray) and not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[...] = 0
    for mapping in (vb.draws, vb.raw_draws, vb.info):
        assert isinstance(mapping, Mapping)
        with pytest.raises(TypeError):
            mapping["new"] = 1
        with pytest.raises(TypeError):
            del mapping[next(iter(mapping))]
        assert not any(hasattr(mapping, m) for m in ("update", "pop", "clear", "setdefault", "__setitem__"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        vb.means = np.zeros((2, 2))

    stats = {"diverging": np.zeros((1, 20), bool)}
    info = {"nested": {"values": [1.0, 2.0], "array": np.arange(3.0)}, "empty": []}
    r = dataclasses.replace(vb, sample_stats=stats, info=info)
    assert stats["diverging"].flags.writeable and info["nested"]["array"].flags.writeable  # not frozen
    stats["diverging"][0, 0] = True
    info["nested"]["array"][0] = 99.0
    info["nested"]["values"].append(3.0)
    assert not r.sample_stats["diverging"].any() and r.info["nested"]["array"][0] == 0.0
    assert r.info["nested"]["values"] == (1.0, 2.0) and r.info["empty"] == ()
    assert not r.sample_stats["diverging"].flags.writeable and not r.info["nested"]["array"].flags.writeable
    with pytest.raises(TypeError):
        r.info["nested"]["other"] = 1
    assert r.info["nested"].keys() == {"values", "array"} and r.info.keys() == {"nested", "empty"}

    # everything the package does with a result reads it only (a write would raise here)
    x = two_blobs
    np.testing.assert_array_equal(r.predict(x), vb.predict(x))
    assert np.isfinite(r.score(x)) and np.isfinite(r.bic(x)) and np.isfinite(r.aic(x))
    assert r.sample(5, seed=0)[0].shape == (5, 2) and r.full_covariances.shape == (2, 2, 2)
    assert r.expected_counts().sum() == pytest.approx(len(x))
    r.to_inference_data(x)
    assert json.loads(r.to_json())["info"]["nested"]["values"] == [1.0, 2.0]
    # frozen results pickle and deep-copy (scikit-learn pickles estimators holding one)
    for back in (pickle.loads(pickle.dumps(r)), copy.deepcopy(r)):
        assert back.to_dict() == r.to_dict() and not back.means.flags.writeable
        assert isinstance(back.info["nested"], Mapping) and not back.info["nested"]["array"].flags.writeable
        np.testing.assert_array_equal(back.score_samples(x), r.score_samples(x))


def test_typed_diagnostics_are_the_engines_facts_and_nan_elsewhere(faithful):
    """FitResult.diagnostics: one typed record for every engine; NaN where a fact does not apply."""
    from bayesgmm.results import FitDiagnostics

    em_fit = bg.fit_em(faithful, 2, n_init=2, seed=0)
    vb_fit = bg.fit_vb(faithful, 2, n_init=2, seed=0)
    for fit in (em_fit, vb_fit):
        facts = fit.diagnostics
        assert isinstance(facts, FitDiagnostics)
        assert facts.compile_seconds == fit.info["compile_seconds"] and facts.run_seconds == fit.info["run_seconds"]
        assert facts.fit_seconds == facts.compile_seconds + facts.run_seconds
        assert np.isnan([facts.num_divergences, facts.max_rhat, facts.min_ess_bulk, facts.ess_per_second]).all()
    assert np.isnan(em_fit.diagnostics.elbo) and vb_fit.diagnostics.elbo == vb_fit.info["elbo"]
    made = dataclasses.replace(em_fit, info={"min_ess_bulk": 400.0, "run_seconds": 2.0, "num_divergences": 3})
    assert made.diagnostics.ess_per_second == 200.0 and made.diagnostics.num_divergences == 3.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.diagnostics.elbo = 1.0

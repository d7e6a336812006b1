"""Engine comparison and simulation studies: metrics against scikit-learn, truth alignment,
coverage bookkeeping, aggregation, errors."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import bayesgmm as bg
from bayesgmm.experiments import (
    adjusted_rand_index,
    compare,
    normalized_mutual_info,
    simulation_study,
    summarise_study,
)
from bayesgmm.params import GMMParams


@pytest.mark.parametrize("seed", range(5))
def test_agreement_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 300)
    b = np.where(rng.random(300) < 0.7, a, rng.integers(0, 5, 300))
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    perm = np.array([3, 1, 0, 2])[a]  # relabelling does not matter
    assert adjusted_rand_index(a, perm) == pytest.approx(1.0) and normalized_mutual_info(a, perm) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def sim():
    data = bg.datasets.make_mixture(900, 3, 2, separation=6.0, seed=8)
    return data.x[:600], data.x[600:], data.labels[:600], data.params


@pytest.fixture(scope="module")
def table(sim):
    x, xt, labels, truth = sim
    return compare(x, 3, methods=("kmeans", "em", "map-em", "vb"), x_test=xt, labels=labels, truth=truth,
                   bootstrap_replicates=100, seed=0)


def test_one_row_per_method_with_the_facts_of_each(table, sim):
    x, xt, labels, truth = sim
    assert list(table["method"]) == ["kmeans", "em", "map-em", "vb"]
    em_row = table.set_index("method").loc["em"]
    fit = bg.fit_em(x, 3, n_init=5, seed=0)
    assert em_row.log_likelihood == pytest.approx(fit.log_likelihood, rel=1e-12)
    assert em_row.test_lpd == pytest.approx(fit.score(xt), rel=1e-12)
    assert em_row.fit_seconds >= em_row.run_seconds > 0
    km_row = table.set_index("method").loc["kmeans"]
    assert km_row.fit_seconds > 0 and np.isnan(km_row.run_seconds)  # k-means is not timed apart
    vb_row = table.set_index("method").loc["vb"]
    assert np.isfinite(vb_row.elbo) and vb_row.elbo < vb_row.log_likelihood
    # well separated: every engine recovers the partition and the truth
    assert (table["ari"] > 0.95).all()
    assert (table.dropna(subset=["means_error"])["means_error"] < 0.2).all()


def test_truth_alignment_is_label_invariant(sim):
    """Permuting the truth's labels changes nothing: the point estimate is aligned to it first."""
    x, _, _, truth = sim
    perm = np.array([2, 0, 1])
    shuffled = GMMParams(truth.weights[perm], truth.means[perm], truth.covariances[perm])
    a = compare(x, 3, methods=("em",), truth=truth, bootstrap_replicates=0, seed=0)
    b = compare(x, 3, methods=("em",), truth=shuffled, bootstrap_replicates=0, seed=0)
    for col in ("weights_error", "means_error", "covariances_error"):
        assert a[col].iloc[0] == pytest.approx(b[col].iloc[0], rel=1e-12)
    assert np.isnan(a["coverage_means"].iloc[0])  # no bootstrap: no EM intervals


def test_coverage_is_the_share_of_true_values_inside_the_intervals(sim):
    """Recompute VB's coverage from its draws directly, in the fit's labels carried to the truth's
    by the point estimate's one matching."""
    x, _, _, truth = sim
    table, fits = compare(x, 3, methods=("vb",), truth=truth, interval=0.5, seed=0, return_fits=True)
    from bayesgmm.labels import align_draws, permute_draws

    fit = fits["vb"]
    point = {"weights": fit.weights[None, None], "means": fit.means[None, None], "covariances": fit.covariances[None, None]}
    perm = align_draws(point, truth, "full")[1][0, 0]
    draws = permute_draws(fit.draws, np.broadcast_to(perm, fit.draws["weights"].shape), "full")
    lo, hi = np.quantile(draws["means"][0], [0.25, 0.75], axis=0)
    expected = np.mean((lo <= truth.means) & (truth.means <= hi))
    assert table["coverage_means"].iloc[0] == pytest.approx(expected)
    # a covariance matrix's distinct scalars, each once (K D (D + 1) / 2): the upper triangles
    lo, hi = np.quantile(draws["covariances"][0], [0.25, 0.75], axis=0)
    i, j = np.triu_indices(truth.means.shape[1])
    value = truth.covariances[:, i, j]
    inside = (lo[:, i, j] <= value) & (value <= hi[:, i, j])
    assert table["coverage_covariances"].iloc[0] == pytest.approx(inside.mean())
    assert table["width_covariances"].iloc[0] == pytest.approx((hi - lo)[:, i, j].mean())
    # overlapping clusters: every draw was matched to the truth on its own, which pooled draws of
    # different components into one label (79% of draws permuted): 90% weight intervals 0.995 wide
    # covering every true weight, where the posterior's own are 0.02 wide and cover none
    overlap = bg.datasets.make_mixture(150, 3, 2, separation=1.2, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = compare(overlap.x, 3, methods=("vb",), truth=overlap.params, seed=0).iloc[0]
    assert row["width_weights"] < 0.05 and row["coverage_weights"] == 0.0


def test_mcmc_row_reports_ess_and_divergences(sim):
    """The NUTS facts of the row are those of the returned fit, recomputed: divergences counted in
    its sample_stats, R-hat and bulk ESS by ArviZ on its InferenceData, ESS per second of run."""
    az = bg.diagnostics.import_arviz()

    x, _, _, _ = sim
    table, fits = compare(x[:200], 3, methods=("mcmc",), seed=0, return_fits=True,
                          engine_kwargs={"mcmc": {"num_warmup": 150, "num_samples": 150, "num_chains": 2}})
    row, fit = table.iloc[0], fits["mcmc"]
    assert row.divergences == int(np.sum(fit.sample_stats["diverging"]))
    posterior = fit.to_inference_data().posterior
    rhat = np.concatenate([np.ravel(v.values) for v in az.rhat(posterior).data_vars.values()])
    ess = np.concatenate([np.ravel(v.values) for v in az.ess(posterior, method="bulk").data_vars.values()])
    assert row.max_rhat == pytest.approx(np.nanmax(rhat), rel=1e-10)
    assert row.min_ess_bulk == pytest.approx(np.nanmin(ess), rel=1e-10)
    assert row.run_seconds == fit.info["run_seconds"] > 0
    assert row.ess_per_second == pytest.approx(row.min_ess_bulk / row.run_seconds, rel=1e-12)
    # the share of draws relabelled by the alignment: aligned and raw draws differ exactly there
    moved = np.any(np.asarray(fit.draws["means"]) != np.asarray(fit.raw_draws["means"]), axis=(-2, -1))
    assert row.label_switch_fraction == pytest.approx(moved.mean(), abs=1e-12)
    assert row.warmup_seconds + row.sampling_seconds == pytest.approx(row.run_seconds, rel=1e-12)


def test_simulation_study_and_compare_stack_summarise_and_run_on_a_pool():
    study = simulation_study(3, num_obs=(150,), separation=(2.0, 6.0), methods=("em", "vb"), test_size=100,
                             bootstrap_replicates=30, progress_bar=False, seed=1)
    assert len(study) == 2 * 3 * 2
    assert set(study["separation"]) == {2.0, 6.0}
    # a study over other N of the row bucket (fits, bootstrap intervals, simulated data, test
    # densities) compiles nothing: engines compile once per structure, not per size
    from conftest import CompileCounter

    with CompileCounter() as counter:
        other_sizes = simulation_study(1, num_obs=(170, 230), separation=(2.0,), methods=("em", "vb"), test_size=100,
                                       bootstrap_replicates=30, progress_bar=False, seed=1)
    assert counter.compiles == 0 and sorted(set(other_sizes["num_obs"])) == [170, 230]
    summary = summarise_study(study)
    assert len(summary) == 4 and (summary["num_datasets"] == 3).all()
    by_sep = summary.set_index(["method", "separation"])
    # better separated clusters are recovered better
    assert by_sep.loc[("em", 6.0), "ari"] > by_sep.loc[("em", 2.0), "ari"]
    # coverage: per data set the share of the K x D = 2 x 2 true means inside their intervals, then
    # the mean over the 3 data sets of a cell; every averaged quantity with its Monte Carlo
    # standard error (sd over the data sets / sqrt(3)), recomputed here
    share = study["coverage_means"].to_numpy() * 4
    np.testing.assert_allclose(share, np.round(share), atol=1e-9)
    cells = study.groupby(["method", "separation"])
    for column in ("coverage_means", "width_means", "ari", "means_error", "test_lpd"):
        np.testing.assert_allclose(by_sep[column].to_numpy(), cells[column].mean().loc[by_sep.index].to_numpy(),
                                   rtol=1e-12)
        np.testing.assert_allclose(by_sep[f"{column}_mcse"].to_numpy(),
                                   (cells[column].std(ddof=1) / np.sqrt(3)).loc[by_sep.index].to_numpy(), rtol=1e-12)
    assert (study["width_means"] > 0).all()
    # fits that did not converge or warned are counted per cell, and can be left out
    flagged = study.assign(converged=[False] + [True] * (len(study) - 1))
    counted = summarise_study(flagged)
    first = (counted["method"] == study["method"][0]) & (counted["separation"] == study["separation"][0])
    assert counted.loc[first, "num_flagged"].item() == 1 and counted.loc[first, "flagged_share"].item() == 1 / 3
    assert (counted.loc[~first, "num_flagged"] == 0).all() and (counted["num_fits"] == 3).all()
    without = summarise_study(flagged, exclude_flagged=True)
    assert without.loc[first, "num_datasets"].item() == 2
    same_cell = (study["method"] == study["method"][0]) & (study["separation"] == study["separation"][0])
    assert without.loc[first, "ari"].item() == pytest.approx(study.loc[same_cell, "ari"].iloc[1:].mean())
    # the same study on a pool of two fresh processes (spawned: JAX must not be forked) is the same table
    import concurrent.futures
    import multiprocessing

    data = bg.datasets.make_mixture(250, 2, 2, separation=2.0, seed=4)
    x, x_test, labels = data.x[:150], data.x[150:], data.labels[:150]
    options = dict(methods=("em", "vb", "kmeans"), x_test=x_test, labels=labels, truth=data.params,
                   bootstrap_replicates=30, seed=2, return_fits=True)
    serial, serial_fits = compare(x, 2, **options)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        again = simulation_study(3, num_obs=(150,), separation=(2.0, 6.0), methods=("em", "vb"), test_size=100,
                                 bootstrap_replicates=30, progress_bar=False, seed=1, executor=pool)
        # compare's engines, one task each on the pool: the serial table and fits, in the same order
        pooled, pooled_fits = compare(x, 2, executor=pool, **options)
    assert list(pooled.columns) == list(serial.columns) and list(pooled["method"]) == ["em", "vb", "kmeans"]
    numbers = [c for c in serial.select_dtypes("number") if "seconds" not in c]
    np.testing.assert_array_equal(serial[numbers].to_numpy(), pooled[numbers].to_numpy())
    assert (serial["warnings"] == pooled["warnings"]).all()
    for method in ("em", "vb"):
        np.testing.assert_array_equal(serial_fits[method].params.means, pooled_fits[method].params.means)
        assert serial_fits[method].log_likelihood == pooled_fits[method].log_likelihood
    np.testing.assert_array_equal(serial_fits["kmeans"].labels, pooled_fits["kmeans"].labels)
    with pytest.raises(ValueError, match="executor must be a concurrent.futures.Executor"):
        compare(x, 2, methods="em", executor=object())
    # a forking pool waits forever once JAX has run here: refused, with the fix
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as forking:
        with pytest.raises(ValueError, match="mp_context=multiprocessing.get_context\\('spawn'\\)"):
            compare(x, 2, methods="em", executor=forking)
    # threads share the warnings module: each row's warnings are its own (they were swapped between
    # rows, or lost), and the caller's filters are as they were
    short = dict(methods=("em", "vb"), engine_kwargs={"em": {"max_iter": 2}, "vb": {"max_iter": 2}}, seed=2)
    alone = compare(x, 2, **short)
    filters = list(warnings.filters)
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        threaded = compare(x, 2, executor=threads, **short)
    assert list(warnings.filters) == filters
    assert all("did not converge" in w for w in alone["warnings"])
    assert (threaded["warnings"] == alone["warnings"]).all()
    assert list(again.columns) == list(study.columns)
    same_seed = [c for c in study.select_dtypes("number") if "seconds" not in c]  # timings aside
    np.testing.assert_array_equal(study[same_seed].to_numpy(), again[same_seed].to_numpy())
    assert (study["method"] == again["method"]).all()
    with pytest.raises(ValueError, match="executor must be a concurrent.futures.Executor"):
        simulation_study(1, executor="pool", progress_bar=False)
    # the design as run: num_obs=-5 simulated 45 rows and reported -5; 100.7 was cut to 100
    for bad, match in ((dict(num_obs=-5), "num_obs must be a positive integer"), (dict(num_obs=100.7), "num_obs must be"),
                       (dict(num_components=[2, 0]), "num_components must be"), (dict(test_size=-1), "test_size must be"),
                       (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*44\]"),
                       (dict(seed=2**45), r"seed must be an integer in \[0, 2\*\*44\]"),
                       # refused before any data set is simulated (one name was split into letters;
                       # the others failed inside the first data set, naming other arguments)
                       (dict(methods="metropolis"), r"got \['metropolis'\]"),
                       (dict(engine_kwargs={"em": 5}), r"engine_kwargs\['em'\] must be a dict"),
                       (dict(bootstrap_replicates=-5), "bootstrap_replicates must be 0"),
                       (dict(interval=1.5), r"interval must be a number in \(0, 1\)"),
                       (dict(num_obs=1), "num_obs must be at least num_components")):
        with pytest.raises(ValueError, match=match):
            simulation_study(1, progress_bar=False, **bad)
    # a column defined for some data sets of a cell only: its standard error counts those
    partial = study.assign(test_lpd=np.where(np.arange(len(study)) % 3 == 0, np.nan, study["test_lpd"]))
    part = summarise_study(partial)
    cells = partial.groupby(["method", "separation"], sort=False)["test_lpd"]
    expected = (cells.std(ddof=1) / np.sqrt(cells.count())).to_numpy()
    np.testing.assert_allclose(part["test_lpd_mcse"].to_numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['method'"):  # was KeyError: 'method'
        summarise_study(pd.DataFrame())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(methods=("em", "metropolis")), "methods must be a non-empty selection"),
        # a repeat was fitted twice: a study counted each data set twice, and its MCSEs fell by sqrt(2)
        (dict(methods=("em", "vb", "em")), r"methods names \['em'\] more than once"),
        (dict(labels=np.zeros(5)), r"labels must have shape \(272,\)"),
        (dict(engine_kwargs={"nuts": {}}), "not methods of"),
        (dict(interval=1.5), "interval must be a number in"),
        (dict(truth=GMMParams(np.ones(3) / 3, np.zeros((3, 2)), np.tile(np.eye(2), (3, 1, 1)))), r"truth.means must have shape \(2, 2\)"),
        # options for a method not run were dropped; a string truth failed as "could not convert"
        (dict(engine_kwargs={"vb": {"max_iter": 5}}), r"options for \['vb'\], which are not among the methods run"),
        (dict(truth="x"), "truth must be a GMMParams"),
    ],
)
def test_bad_arguments(kwargs, match, faithful):
    with pytest.raises(ValueError, match=match):
        compare(faithful, 2, **{"methods": ("em",), **kwargs})


def test_an_interrupted_study_continues_from_its_checkpoint(tmp_path):
    """Each data set's rows are saved as they finish; a second call with the same arguments and
    folder loads them and runs only the missing ones (here on threads), and the table equals the
    uninterrupted run's, dtypes and float bits included. Another study's folder is refused."""
    import concurrent.futures

    kw = dict(num_obs=(80,), separation=(2.0, 4.0), methods=("em", "vb"), test_size=40, bootstrap_replicates=0,
              progress_bar=False, seed=4)
    folder = tmp_path / "checkpoint"
    first = simulation_study(2, checkpoint=folder, **kw)
    plain = simulation_study(2, **kw)
    timings = [c for c in first if "seconds" in c]
    pd.testing.assert_frame_equal(first.drop(columns=timings), plain.drop(columns=timings))
    saved = sorted(p.name for p in folder.iterdir())
    assert saved == ["bayesgmm-checkpoint.json"] + [f"task-{i:06d}.parquet" for i in range(4)]
    for name in ("task-000001.parquet", "task-000002.parquet"):  # as if the run had stopped before them
        (folder / name).unlink()
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        resumed = simulation_study(2, checkpoint=folder, executor=threads, **kw)
    pd.testing.assert_frame_equal(resumed.drop(columns=timings), first.drop(columns=timings))
    task = (resumed["separation"] == 4.0).to_numpy() * 2 + resumed["dataset"].to_numpy()  # the data set's index
    loaded = np.isin(task, [0, 3])
    pd.testing.assert_frame_equal(resumed[loaded], first[loaded])  # loaded: their own timings too
    assert (resumed.loc[~loaded, "fit_seconds"] != first.loc[~loaded, "fit_seconds"]).all()  # computed again
    with pytest.raises(ValueError, match="holds the tasks of another run \\(it differs in seed\\)"):
        simulation_study(2, checkpoint=folder, **dict(kw, seed=5))
    with pytest.raises(ValueError, match="differs in num_tasks, num_datasets"):
        simulation_study(3, checkpoint=folder, **kw)
    with pytest.raises(ValueError, match="is a file"):
        simulation_study(2, checkpoint=folder / "task-000000.parquet", **kw)


def test_a_truth_of_another_layout_or_bad_settings_are_refused_before_any_fit(sim):
    """One component's covariances for K = 3 were broadcast into an error of nothing, a weights
    vector of another length failed after the fits inside NumPy; interval="0.9" raised a
    TypeError and bootstrap_replicates=1 failed after the EM fit naming another argument."""
    x, _, _, truth = sim
    one = GMMParams(truth.weights, truth.means, truth.covariances[:1])
    with pytest.raises(ValueError, match=r"truth: covariances .* must have shape \(3, 2, 2\)"):
        compare(x, 3, methods=("em",), truth=one)
    with pytest.raises(ValueError, match="truth: "):
        compare(x, 3, methods=("em",), truth=GMMParams(truth.weights[:2] / truth.weights[:2].sum(), truth.means,
                                                       truth.covariances))
    with pytest.raises(ValueError, match="interval must be a number in"):
        compare(x, 3, methods=("em",), truth=truth, interval="0.9")
    with pytest.raises(ValueError, match="bootstrap_replicates must be 0"):
        compare(x, 3, methods=("em",), truth=truth, bootstrap_replicates=1)


def test_held_out_data_are_matched_by_column_name_and_may_hold_missing_values():
    """``x_test`` as a DataFrame with its columns in another order was scored by position
    (test_lpd -111930 for -4.40), one of another name was taken; with every engine told
    missing="marginalize", NaN in ``x_test`` was still refused, with advice naming an argument
    compare does not have."""
    frame = bg.datasets.load_faithful(as_frame=True)
    train, test = frame.iloc[:200], frame.iloc[200:].copy()
    kw = dict(methods=("em",), bootstrap_replicates=0)
    same = compare(train, 2, x_test=test, **kw)["test_lpd"].iloc[0]
    assert compare(train, 2, x_test=test[["waiting", "eruptions"]], **kw)["test_lpd"].iloc[0] == same
    with pytest.raises(ValueError, match="wait"):
        compare(train, 2, x_test=test.rename(columns={"waiting": "wait"}), **kw)
    test.iloc[3, 0] = np.nan  # scored on its observed entries, whatever the fits' missing (as score_samples)
    table, fits = compare(train, 2, x_test=test, return_fits=True, **kw)
    scored = table["test_lpd"].iloc[0]
    assert np.isfinite(scored) and abs(scored - same) < 0.1 and scored == fits["em"].score(test)
    with pytest.raises(ValueError, match=r"pass engine_kwargs=\{method: \{'missing': 'marginalize'\}\} for each method"):
        compare(test, 2, **kw)  # NaN in the training data: the advice names compare's way to marginalise


def test_kmeans_predicts_a_dataframe_by_column_name():
    frame = bg.datasets.load_faithful(as_frame=True)
    km = bg.kmeans(frame, 2, seed=0)
    assert km.feature_names == ("eruptions", "waiting")
    np.testing.assert_array_equal(km.predict(frame[["waiting", "eruptions"]]), km.labels)
    with pytest.raises(ValueError, match="wait"):
        km.predict(frame.rename(columns={"waiting": "wait"}))


def test_a_failing_fit_or_bootstrap_does_not_lose_the_study():
    """EM's bootstrap failing on small data (fewer than two usable refits) stopped a whole
    simulation_study, without naming the data set (5 of 8 data sets at N = 15, K = 3 raised): its
    intervals are missing now, with a warning in the row. A failing fit stops the study naming
    the data set and the engine, or (``on_error="record"``) is a row of its own, counted."""
    study = simulation_study(2, num_obs=(15,), num_components=(3,), separation=(1.0,), methods=("em",), test_size=20,
                             bootstrap_replicates=20, progress_bar=False, seed=0)
    assert len(study) == 2 and study["coverage_means"].isna().all() and study["means_error"].notna().all()
    assert study["warnings"].str.contains("no bootstrap intervals for EM").all()
    assert summarise_study(study)["num_flagged"].item() == 2

    ties = np.repeat([1.0, 2.0, 3.0, 5.0], [30, 30, 30, 10])[:, None]  # K = 3 without regularisation: singular
    options = dict(methods=("em", "vb"), engine_kwargs={"em": {"reg_covar": 0.0}})
    table = compare(ties, 3, on_error="record", **options)
    em, vb = table.iloc[0], table.iloc[1]
    assert not em["converged"] and "singular in every run" in em["error"] and np.isnan(em["log_likelihood"])
    assert vb["converged"] and pd.isna(vb["error"]) and np.isfinite(vb["log_likelihood"])
    with pytest.raises(ValueError, match="singular in every run") as raised:
        compare(ties, 3, **options)
    assert "(in compare, method 'em')" in raised.value.__notes__
    table, fits = compare(ties, 3, on_error="record", return_fits=True, **options)
    assert fits["em"] is None and isinstance(fits["vb"], bg.FitResult)
    nothing_failed = compare(ties, 3, methods=("vb",), on_error="record")  # the column is there all the same
    assert "error" in nothing_failed and nothing_failed["error"].isna().all()

    options = dict(num_obs=(4,), num_components=(3,), separation=(0.0,), methods=("em",), test_size=0,
                   bootstrap_replicates=0, progress_bar=False, engine_kwargs={"em": {"reg_covar": 0.0}})
    with pytest.raises(ValueError, match="singular in every run") as raised:
        simulation_study(2, **options)
    assert any(note.startswith("(in simulation_study data set 0 of the cell num_obs=4, separation=0, num_components=3")
               for note in raised.value.__notes__)
    recorded = simulation_study(2, on_error="record", **options)
    summary = summarise_study(recorded)
    assert recorded["error"].str.contains("singular in every run").all()
    assert summary["num_failed"].item() == 2 and summary["num_flagged"].item() == 2 and summary["num_fits"].item() == 2
    # every fit failed: the table keeps a fit's columns (missing), and nothing is averaged
    succeeded = simulation_study(1, **{**options, "engine_kwargs": None})
    assert [c for c in recorded.columns if c != "error"] == list(succeeded.columns)
    assert recorded[["fit_seconds", "log_likelihood", "means_error", "coverage_means"]].isna().all().all()
    assert summary["num_datasets"].item() == 0 and np.isnan(summary["fit_seconds"].item())
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'record'"):
        simulation_study(2, on_error="skip", **options)

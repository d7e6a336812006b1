"""The command line: every command end to end on small data, the TOML runner, exit codes."""

import argparse
import dataclasses
import json
import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest

import bayesgmm as bg
from bayesgmm import cli

FAST = ["--engine-option", "mcmc.num_warmup=100", "--engine-option", "mcmc.num_samples=100",
        "--engine-option", "mcmc.num_chains=2", "--engine-option", "svi.num_steps=300", "--engine-option", "gibbs.num_warmup=100",
        "--engine-option", "gibbs.num_samples=300", "--no-progress"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    df = bg.datasets.load_faithful(as_frame=True)
    df["group"] = (df["waiting"] > 70).astype(int)
    df["name"] = "x"
    path = tmp_path_factory.mktemp("data") / "faithful.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("methods", [("em", "vb"), pytest.param(("em", "vb", "svi", "mcmc", "gibbs"), marks=pytest.mark.slow)],
                         ids=["em_vb", "every_engine"])
def test_demo_runs_every_engine_and_writes_the_table_and_figures(methods, tmp_path, capsys):
    """The README's main job; the default run checks it with EM and VB (the Bayesian engines'
    files, from VB), ``-m slow`` with every engine as the demo runs by default."""
    options = [flag for option, value in zip(FAST[::2], FAST[1::2]) if value.split(".")[0] in methods
               for flag in (option, value)]  # options for engines not run are an error
    assert cli.main(["demo", "--out", str(tmp_path), "--methods", *methods, *options, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Old Faithful" in out
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["method"]) == ["kmeans", *methods]
    for method in methods:
        assert method in out
        if method == "em":
            restored = bg.FitResult.from_json(tmp_path / f"{method}.json")
        else:  # JSON keeps the point estimate of a Bayesian fit, and says so
            with pytest.warns(UserWarning, match="holds only the point estimate"):
                restored = bg.FitResult.from_json(tmp_path / f"{method}.json")
        assert restored.num_components == 2 and restored.feature_names == ("eruptions", "waiting")
        assert restored.posterior_omitted == (method != "em")
        whole = bg.load_result(tmp_path / f"{method}.nc")  # NetCDF keeps the draws
        assert not whole.posterior_omitted and (whole.draws is not None) == (method != "em")
    wrote = [line for line in out.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1 and set(wrote[0].removeprefix("wrote ").split(", ")) == {str(p) for p in tmp_path.iterdir()}
    # the held-out quarter: EM's plug-in LPD is close to the Bayesian predictive ones
    lpd = table.set_index("method")["test_lpd"]
    assert np.ptp(lpd[[m for m in methods if m != "svi"]]) < 0.05
    assert (tmp_path / "engines.png").stat().st_size > 20_000 and (tmp_path / "em_clusters.png").exists()


def test_fit_writes_json_netcdf_and_figure(csv, tmp_path, capsys):
    rc = cli.main(["fit", str(csv), "-k", "2", "--columns", "eruptions", "waiting", "--out", str(tmp_path),
                   "--engine-option", "n_init=3"])
    assert rc == 0
    assert "component 0" in capsys.readouterr().out
    fit = bg.FitResult.from_json(tmp_path / "em_k2.json")
    ref = bg.fit_em(pd.read_csv(csv)[["eruptions", "waiting"]], 2, n_init=3, seed=0)
    np.testing.assert_allclose(fit.log_likelihood, ref.log_likelihood, rtol=1e-12)
    from bayesgmm.storage import load_result

    again = load_result(tmp_path / "em_k2.nc")
    np.testing.assert_allclose(again.means, fit.means)
    assert (tmp_path / "em_k2.png").exists()


def test_fit_streams_a_npy_file_out_of_core(tmp_path, capsys):
    data = bg.datasets.make_mixture(3000, 3, 2, separation=5.0, seed=2)
    np.save(tmp_path / "big.npy", data.x)
    rc = cli.main(["fit", str(tmp_path / "big.npy"), "-k", "3", "--stream", "--batch-size", "512",
                   "--out", str(tmp_path / "o"), "--no-progress", "--engine-option", "n_init=3"])
    assert rc == 0
    fit = bg.FitResult.from_json(tmp_path / "o" / "em_k3_stream.json")
    ref = bg.fit_em(data.x, 3, n_init=3, seed=0, tol=1e-6, max_iter=300)
    assert fit.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-4)
    assert fit.info["num_chunks"] == 6
    assert (tmp_path / "o" / "em_k3_stream_trace.png").exists()  # the figure of a fit without data in memory
    rc = cli.main(["fit", str(tmp_path / "big.npy"), "-k", "3", "--stream", "--method", "vb", "--out", str(tmp_path / "o2")])
    assert rc == 2 and "needs the data in memory" in capsys.readouterr().err
    # a .npy file's columns by number (negative ones too) or by the names a fit gives them
    for columns in (["-1", "0"], ["x1", "x0"]):
        rc = cli.main(["fit", str(tmp_path / "big.npy"), "-k", "2", "--stream", "--columns", *columns, "--no-progress",
                       "--out", str(tmp_path / "o3"), "--overwrite", "--engine-option", "max_iter=3"])
        assert rc == 0, capsys.readouterr().err
        assert bg.FitResult.from_json(tmp_path / "o3" / "em_k2_stream.json").feature_names == ("x1", "x0")
    err = _usage_error(["fit", str(tmp_path / "big.npy"), "-k", "2", "--stream", "--columns", "a", "--out",
                        str(tmp_path / "o4")], capsys)
    assert "--columns of a .npy file must" in err
    np.save(tmp_path / "two.npy", data.x[:2])
    err = _usage_error(["fit", str(tmp_path / "two.npy"), "-k", "3", "--stream", "--out", str(tmp_path / "o5")], capsys)
    assert "two.npy' has 2 observations but" in err


def test_errors_and_warnings_give_the_flags_not_python_arguments(tmp_path, capsys):
    """The library's advice named Python arguments (columns=[...], missing='marginalize',
    prior=bayesgmm.Prior.default(x, K)); the command line gives its flags."""
    pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "s": list("wxyz")}).to_parquet(tmp_path / "s.parquet")
    err = _usage_error(["fit", str(tmp_path / "s.parquet"), "-k", "2", "--stream", "--out", str(tmp_path / "o1")], capsys)
    assert "choose numeric columns with --columns" in err and "columns=[" not in err
    x = bg.datasets.make_mixture(300, 2, 2, seed=0).x.copy()
    x[7, 1] = np.inf
    pd.DataFrame(x, columns=["a", "b"]).to_csv(tmp_path / "inf.csv", index=False)
    err = _usage_error(["fit", str(tmp_path / "inf.csv"), "-k", "2", "--out", str(tmp_path / "o2")], capsys)
    assert "(--missing marginalize)" in err and "missing='marginalize'" not in err
    np.save(tmp_path / "inf.npy", x)
    err = _usage_error(["fit", str(tmp_path / "inf.npy"), "-k", "2", "--stream", "--no-progress", "--out",
                        str(tmp_path / "o3")], capsys)
    assert "infinite values" in err and "pass --missing marginalize" in err
    pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "b": [1.0, 0.0, 2.0, 1.0, 0.5, 3.0]}).to_csv(
        tmp_path / "tiny.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside the test suite (which makes warnings errors)
        rc = cli.main(["fit", str(tmp_path / "tiny.csv"), "-k", "3", "--no-plot", "--no-progress", "--out",
                       str(tmp_path / "o4")])
    err = capsys.readouterr().err
    assert "fit MAP-EM (--method map-em)" in err and "Prior.default" not in err, (rc, err)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        rc = cli.main(["compare", str(tmp_path / "tiny.csv"), "-k", "3", "--methods", "em", "--no-plot", "--no-progress",
                       "--out", str(tmp_path / "o6")])
    err = capsys.readouterr().err
    assert "compare MAP-EM (--methods map-em)" in err and "Prior.default" not in err, (rc, err)
    # select takes --missing too (its advice named missing='marginalize', an argument it lacked)
    err = _usage_error(["select", str(tmp_path / "inf.csv"), "-k", "1", "2", "--out", str(tmp_path / "o7")], capsys)
    assert "(--missing marginalize)" in err and "missing='marginalize'" not in err
    csv = str(tmp_path / "tiny.csv")
    for args, said in ((["sbc", "--replications", "0"], "--replications must be an integer >= 2"),
                       (["select", csv, "-k", "0", "1"], "-k must hold positive integers"),
                       (["fit", csv, "-k", "0"], "-k/--num-components must be at least 1"),
                       (["compare", csv, "-k", "2", "--methods", "em", "--test-fraction", "1"], "--test-fraction must be in"),
                       (["simulate", "--seed", "-1"], "--seed must be an integer in [0, 2**64)"),
                       (["simulate", "--seed", str(10**23)], "--seed must be an integer in [0, 2**64)"),
                       (["study", "--num-datasets", "1", "--seed", str(10**23)], "--seed must be an integer in [0, 2**44]"),
                       (["sbc", "--num-ranks", "0"], "--num-ranks must be a positive integer"),
                       (["sbc", "-n", "1"], "-n/--num-obs must be an integer >= 2"),
                       (["sbc", "-d", "0"], "-d/--num-features must be a positive integer"),
                       (["sbc", "--engine-option", "num_draws=5"], "fewer than --num-ranks=99"),
                       (["sbc", "--engine-option", "bogus=1"], "engine option(s) ['bogus'] are not options of method 'vb'")):
        err = _usage_error(args + ["--out", str(tmp_path / "o5")], capsys)
        assert said in err, (args, err)
        assert not (tmp_path / "o5").exists()


def test_compare_with_labels_and_held_out_data(csv, tmp_path):
    rc = cli.main(["compare", str(csv), "-k", "2", "--columns", "eruptions", "waiting", "--label-column", "group",
                   "--methods", "em", "vb", "--test-fraction", "0.2", "--out", str(tmp_path), "--no-plot", "--no-progress"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["method"]) == ["em", "vb"] and table["ari"].min() > 0.8
    assert np.isfinite(table["test_lpd"]).all()
    records = json.loads((tmp_path / "comparison.json").read_text())
    assert records[0]["method"] == "em"
    # every number as the CSV holds it (pandas' to_json kept 10 significant digits)
    exact = pd.read_csv(tmp_path / "comparison.csv")
    for column in ("log_likelihood", "test_lpd", "ari", "fit_seconds"):
        assert [r[column] for r in records] == exact[column].tolist(), column


def test_select_writes_the_table_and_the_best_model(tmp_path, capsys):
    """The best model is named as the table names it (mclust's EEE, not its layout "tied"), and
    the tables written for papers say which way the criteria point."""
    rc = cli.main(["select", "--dataset", "faithful", "-k", "1", "2", "3", "--covariance-types", "VVV", "EEE",
                   "--n-init", "3", "--out", str(tmp_path)])
    assert rc == 0
    said = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "selection.csv")
    assert len(table) == 6
    row = table.loc[table["bic"].idxmin()]
    assert f"best by BIC (lower is better): {row['covariance_type']}, K={row['num_components']}" in said
    assert row["covariance_type"] == "EEE"  # on Old Faithful (mclust's choice too)
    best = bg.FitResult.from_json(tmp_path / "best_bic.json")
    assert best.num_components == int(row["num_components"])
    assert (tmp_path / "selection_bic.png").exists()
    for stem in ("selection", "bic_table"):
        assert "lower is better (mclust prints -BIC" in (tmp_path / f"{stem}.md").read_text()
        assert r"\caption{" + stem.replace("_", " ") + ". BIC = -2 log L" in (tmp_path / f"{stem}.tex").read_text()


def test_a_file_in_the_way_is_refused_before_the_fits(tmp_path, capsys):
    """select's and compare's files are known before they fit: one the user wrote there stops the
    command at once (it was said after the whole grid was fitted)."""
    for command, name in ((["select", "-k", "1", "2", "3", "4", "5", "6", "--covariance-types", "all"], "selection.csv"),
                          (["compare", "-k", "2"], "comparison.tex"),
                          (["fit", "-k", "2", "--method", "vb"], "vb_k2.nc")):
        out = tmp_path / name
        out.mkdir()
        (out / name).write_text("mine\n")
        err = _usage_error(command + ["--dataset", "galaxies", "--overwrite", "--out", str(out)], capsys)
        assert f"would replace {name} (not written by the earlier bayesgmm run there); nothing was computed" in err
        assert _listing(out) == {name: b"mine\n"}


def test_fit_names_the_mclust_model_it_fitted(tmp_path, capsys):
    assert cli.main(["fit", "--dataset", "faithful", "-k", "2", "--covariance-type", "EEV", "--no-plot",
                     "--out", str(tmp_path)]) == 0
    assert "em fit, K=2, covariance_type=EEV (a full layout): log-likelihood" in capsys.readouterr().out


def test_simulate_then_fit_recovers_the_truth(tmp_path, capsys):
    assert cli.main(["simulate", "-n", "400", "-k", "2", "--separation", "6", "--seed", "3", "--out", str(tmp_path)]) == 0
    data = pd.read_csv(tmp_path / "data.csv")
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert list(data.columns) == ["x0", "x1", "component"] and len(data) == 400
    ref = bg.datasets.make_mixture(400, 2, 2, separation=6.0, seed=3)
    np.testing.assert_allclose(data[["x0", "x1"]].to_numpy(), ref.x)
    np.testing.assert_allclose(truth["means"], ref.params.means)
    # fit takes the label column out of the features (it was fitted as a third feature), and scores against it
    capsys.readouterr()
    assert cli.main(["fit", str(tmp_path / "data.csv"), "-k", "2", "--label-column", "component", "--no-plot",
                     "--no-progress", "--out", str(tmp_path / "fit")]) == 0
    said = capsys.readouterr().out
    assert "features (2): x0, x1; label column 'component' (not a feature)" in said
    assert float(said.split("adjusted Rand index against 'component': ")[1].split()[0]) > 0.99
    fitted = bg.load_result(tmp_path / "fit" / "em_k2.json")
    order = np.argsort(fitted.means[:, 0])
    np.testing.assert_allclose(fitted.means[order], ref.params.means[np.argsort(ref.params.means[:, 0])], atol=0.3)


def test_study_and_sbc_commands(tmp_path):
    rc = cli.main(["study", "--num-datasets", "2", "-n", "120", "--methods", "em", "vb", "--out", str(tmp_path / "s"),
                   "--no-progress"])
    assert rc == 0
    summary = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert set(summary["method"]) == {"em", "vb"} and (summary["num_datasets"] == 2).all()
    rc = cli.main(["sbc", "-k", "1", "-n", "30", "--replications", "12", "--num-ranks", "19", "--out", str(tmp_path / "c"),
                   "--no-progress", "--engine-option", "reg_covar=0.0"])
    assert rc == 0
    ranks = pd.read_csv(tmp_path / "c" / "sbc_ranks.csv")
    assert len(ranks) == 12 and ranks.to_numpy().max() <= 19
    assert (tmp_path / "c" / "sbc_ranks.png").exists()


def test_a_study_records_failing_fits_when_told(tmp_path, capsys):
    """``--on-error record``: fits that fail (EM without regularisation on 4 points, K = 3) are
    rows of the study with their error, counted in the summary, instead of ending the batch job."""
    study = ["study", "--num-datasets", "2", "-n", "4", "-k", "3", "--separation", "0", "--methods", "em",
             "--engine-option", "em.reg_covar=0.0", "--no-progress"]
    assert cli.main(study + ["--out", str(tmp_path / "stop")]) == 2
    error = capsys.readouterr().err
    assert "singular in every run" in error and "(in simulation_study data set 0 of the cell num_obs=4" in error
    assert "study MAP-EM (--methods map-em)" in error and "prior=bayesgmm" not in error
    assert cli.main(study + ["--on-error", "record", "--out", str(tmp_path / "s")]) == 0
    rows, summary = pd.read_csv(tmp_path / "s" / "study.csv"), pd.read_csv(tmp_path / "s" / "summary.csv")
    assert rows["error"].str.contains("singular in every run").all() and summary["num_failed"].tolist() == [2]
    assert "num_failed" in capsys.readouterr().out


def test_compare_records_a_failing_engine_and_keeps_the_others(tmp_path, capsys):
    """``compare --on-error record``: EM without regularisation fails on tied values (K = 3); VB's
    results are written, EM's failure is said on stderr and on the figure (it lost all before)."""
    data = tmp_path / "ties.csv"
    pd.DataFrame({"x": np.repeat([1.0, 2.0, 3.0, 5.0], [30, 30, 30, 10])}).to_csv(data, index=False)
    args = ["compare", str(data), "-k", "3", "--methods", "em", "vb", "--engine-option", "em.reg_covar=0.0",
            "--no-progress", "--out", str(tmp_path / "c")]
    assert cli.main(args + ["--on-error", "record"]) == 0
    err = capsys.readouterr().err
    assert "em failed: ValueError: EM failed: a covariance became singular in every run" in err
    table = pd.read_csv(tmp_path / "c" / "comparison.csv")
    assert table["error"].isna().tolist() == [False, True] and table["converged"].tolist() == [False, True]
    assert (tmp_path / "c" / "vb.json").exists() and not (tmp_path / "c" / "em.json").exists()
    assert (tmp_path / "c" / "engines.png").exists() and not (tmp_path / "c" / "em_clusters.png").exists()
    # the whole message in the .csv, its start in the paper tables (a page-wide cell shrank the .tex to nothing)
    assert len(table["error"][0]) > 150
    assert "| ValueError: EM failed: a covariance became singular in ev... |" in (tmp_path / "c" / "comparison.md").read_text()


def test_run_a_toml_experiment(tmp_path, csv):
    config = tmp_path / "study.toml"
    config.write_text(f"""
command = "compare"
num_components = 2
methods = ["em", "map-em"]
seed = 1
out = "{tmp_path / 'from_toml'}"
plot = false
progress = false

[data]
path = "{csv}"
columns = ["eruptions", "waiting"]

[engines.em]
n_init = 2
""")
    assert cli.main(["run", str(config)]) == 0
    table = pd.read_csv(tmp_path / "from_toml" / "comparison.csv")
    assert list(table["method"]) == ["em", "map-em"]
    em = bg.FitResult.from_json(tmp_path / "from_toml" / "em.json")
    assert em.info["n_init"] == 2 and em.info["seed"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "missing.csv", "-k", "2"], "does not exist"),
        (["fit", "{csv}", "-k", "2", "--columns", "nope"], "not in"),
        (["fit", "{csv}", "-k", "0", "--columns", "eruptions", "waiting"], "at least 1"),
        (["fit", "{csv}", "-k", "2", "--columns", "name"], "numeric"),
        (["fit", "{csv}", "-k", "2", "--columns", "eruptions", "--engine-option", "n_iters=3"],
         "engine option(s) ['n_iters'] are not options of method 'em'"),
        (["fit", "{csv}", "--dataset", "faithful", "-k", "2"], "exactly one data source"),
        (["compare", "{csv}", "-k", "2", "--label-column", "zzz"], "column(s) ['zzz'] not in"),
        (["compare", "{csv}", "-k", "2", "--test-fraction", "1.5", "--columns", "eruptions"], "--test-fraction must be in"),
        (["compare", "{csv}", "-k", "2", "--test-fraction", "0.001", "--columns", "eruptions"],
         "--test-fraction 0.001 of 272 rows holds out 0 row(s)"),
        (["fit", "{csv}", "-k", "2", "--columns", "eruptions", "--batch-size", "100"], "add --stream"),
        (["fit", "{npy}", "-k", "2", "--stream", "--method", "map-em", "--engine-option",
          "prior={weight_concentration=0.5}"], "engine option prior: with --stream a prior table needs every field"),
        (["run", "missing.toml"], "does not exist"),
        (["run", "{bad_toml}"], "is not valid TOML"),
        (["run", "{unknown_key}"], "unknown option(s) ['num_componets']"),
        (["run", "{no_command}"], "'command' must be one of"),
    ],
)
def test_errors_are_one_clear_line_and_exit_2(argv, message, csv, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("command = 'compare\n")
    (tmp_path / "unknown.toml").write_text("command = 'compare'\nnum_componets = 2\n[data]\ndataset = 'faithful'\n")
    (tmp_path / "none.toml").write_text("num_components = 2\n")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 2)))
    subs = {"{csv}": str(csv), "{bad_toml}": str(tmp_path / "bad.toml"), "{unknown_key}": str(tmp_path / "unknown.toml"),
            "{no_command}": str(tmp_path / "none.toml"), "{npy}": str(tmp_path / "x.npy")}
    argv = [subs.get(a, a) for a in argv]
    extra = ["--out", str(tmp_path / "o")] + (["--no-plot"] if argv[0] in ("fit", "compare") else [])
    assert cli.main(argv + (extra if argv[0] != "run" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("bayesgmm: error:") and "Traceback" not in err


@pytest.mark.parametrize("command", [None, "demo", "fit", "compare", "select", "simulate", "study", "sbc", "run"])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(([command] if command else []) + ["--help"])
    assert exc.value.code == 0
    assert "usage: bayesgmm" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bayesgmm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "simulate" in out.stdout


# ----------------------------------------------------------------------------------------------
# Review fixes: each invalid input is one clear line and exit 2
# ----------------------------------------------------------------------------------------------
def _usage_error(argv, capsys):
    """Run the command, assert exit 2 with one clean error line, return that line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayesgmm: error:") and "Traceback" not in err and err.count("\n") == 1
    return err


def test_bundled_dataset_columns_are_checked(tmp_path, capsys):
    err = _usage_error(["fit", "--dataset", "faithful", "--columns", "foo", "-k", "2", "--out", str(tmp_path)], capsys)
    assert "column(s) ['foo'] not in dataset 'faithful'" in err and "available: ['eruptions', 'waiting']" in err


def test_the_label_column_cannot_also_be_a_feature(tmp_path, capsys):
    assert cli.main(["simulate", "-n", "60", "-k", "2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    err = _usage_error(["compare", str(tmp_path / "data.csv"), "--columns", "x0", "component", "--label-column",
                        "component", "-k", "2", "--methods", "em", "--out", str(tmp_path / "o")], capsys)
    assert "the label column 'component' cannot also be a feature column" in err


def test_toml_values_are_type_checked_and_a_single_column_is_accepted(tmp_path, capsys):
    config = tmp_path / "one.toml"
    config.write_text('command = "fit"\nnum_components = 2\nplot = false\nprogress = false\n'
                      '[data]\ndataset = "faithful"\ncolumns = "eruptions"\n')
    assert cli.main(["run", str(config), "--out", str(tmp_path / "o")]) == 0
    assert bg.FitResult.from_json(tmp_path / "o" / "em_k2.json").feature_names == ("eruptions",)
    capsys.readouterr()
    base = 'command = "select"\n[data]\ndataset = "faithful"\n'
    for line, message in [('plot = "no"', "plot must be true or false"), ("seed = 1.5", "seed must be an integer"),
                          ('k = [1, "2"]', "k must be an integer or a list of them"),
                          ('prior = "flat"', "prior must be one of 'none', 'default'"),
                          # n_init takes what --n-init takes: "auto" (refused) or a positive integer
                          # (0 ended in a traceback, 2.5 was cut to 2)
                          ("n_init = 0", "n_init must be 'auto' or a positive integer, got '0'"),
                          ("n_init = 2.5", "n_init must be a string or an integer as on the command line")]:
        config.write_text(line + "\n" + base)
        err = _usage_error(["run", str(config)], capsys)
        assert f"config file {str(config)!r}: {message}" in err
    config.write_text('prior = "default"\n' + base)  # select's prior option is not sbc's [prior] table
    assert cli.options_from_toml(config)["prior"] == "default"
    # the library's errors name the file's keys, not the flags nor the Python arguments
    config.write_text("k = [0, 2]\n" + base)
    assert "bayesgmm: error: k must hold positive integers" in _usage_error(["run", str(config), "--out", str(tmp_path / "k")], capsys)
    for value, expected in (('"auto"', "auto"), ("3", 3), ('"4"', 4)):
        config.write_text(f"n_init = {value}\n" + base)
        assert cli.options_from_toml(config)["n_init"] == expected
    config.write_text('command = "fit"\nnum_components = 2.0\n[data]\ndataset = "faithful"\n')
    assert "num_components must be an integer, got 2.0" in _usage_error(["run", str(config)], capsys)
    # an empty list of columns is an error, not "every column" (a label column was fitted as a feature)
    config.write_text('command = "fit"\nnum_components = 2\n[data]\ndataset = "faithful"\ncolumns = []\n')
    assert "columns = [] names no feature" in _usage_error(["run", str(config), "--out", str(tmp_path / "o2")], capsys)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--engine-option", "seed=3"], "engine option seed is set by the command's own flag --seed; use that"),
        (["fit", "--engine-option", "covariance_type=diag"], "flag --covariance-type; use that"),
        (["compare", "--methods", "em", "--engine-option", "em.seed=1"], "engine option em.seed is set by the command's own flag --seed"),
        (["compare", "--methods", "em", "--engine-option", "em.prior=default"], "em.prior is set by the 'compare' command itself"),
    ],
)
def test_engine_options_cannot_set_the_commands_own_options(argv, message, tmp_path, capsys):
    argv = argv[:1] + ["--dataset", "faithful", "-k", "2", "--out", str(tmp_path)] + argv[1:]
    assert message in _usage_error(argv, capsys)


def test_engine_options_for_a_method_not_run_are_rejected(tmp_path, capsys):
    err = _usage_error(["compare", "--dataset", "faithful", "-k", "2", "--methods", "em", "--engine-option",
                        "vb.n_init=3", "--out", str(tmp_path)], capsys)
    assert "engine options for 'vb', which this command does not run" in err
    err = _usage_error(["fit", "--dataset", "faithful", "-k", "2", "--engine-option", "vb.n_init=3",
                        "--out", str(tmp_path)], capsys)
    assert "--method is 'em'" in err


def test_file_system_problems_are_usage_errors(csv, tmp_path, capsys):
    fit = ["fit", "--dataset", "faithful", "-k", "1", "--no-plot"]
    assert f"output folder {str(csv)!r} exists and is not a folder" in _usage_error(fit + ["--out", str(csv)], capsys)
    assert "cannot create output folder '/proc/bayesgmm_xx'" in _usage_error(fit + ["--out", "/proc/bayesgmm_xx"], capsys)
    err = _usage_error(fit + ["--out", str(tmp_path / "o"), "--compile-cache", str(csv)], capsys)
    assert f"--compile-cache {str(csv)!r} exists and is not a folder" in err
    assert "is a folder, not a data file" in _usage_error(["fit", str(tmp_path), "-k", "1", "--out", str(tmp_path / "o")], capsys)
    assert "is a folder, not a TOML file" in _usage_error(["run", str(tmp_path)], capsys)


def test_compile_cache_goes_before_or_after_the_command(monkeypatch, tmp_path):
    from bayesgmm import _compile

    seen = []
    monkeypatch.setattr(_compile, "set_compilation_cache", lambda path, **kw: seen.append(path and str(path)))
    args = ["simulate", "-n", "20", "--out", str(tmp_path), "--overwrite"]
    assert cli.main(["--compile-cache", "before", *args]) == 0
    assert cli.main([*args, "--compile-cache", "after"]) == 0
    assert cli.main(args) == 0  # the setting made on import stands
    assert cli.main([*args, "--compile-cache", "off"]) == 0
    assert seen == ["before", "after", None]


def test_toml_paths_are_relative_to_the_config_file(csv, tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "faithful.csv").write_text(csv.read_text())
    (folder / "exp.toml").write_text('command = "fit"\nnum_components = 2\nout = "results"\nplot = false\n'
                                     'progress = false\n[data]\npath = "data/faithful.csv"\n'
                                     'columns = ["eruptions", "waiting"]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["run", "../experiments/exp.toml"]) == 0
    assert (folder / "results" / "em_k2.json").exists() and not (elsewhere / "results").exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("header.csv", "a,b\n", "has no data rows"),
        ("empty.csv", "", "is empty"),
        ("binary.csv", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01" * 8, "is not a text file"),
        ("big.npy", None, "read out of core with fit --stream"),
    ],
)
def test_bad_files_are_named_in_one_line(name, content, message, tmp_path, capsys):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros((5, 2)))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    err = _usage_error(["fit", str(path), "-k", "1", "--out", str(tmp_path / "o")], capsys)
    assert f"input file {str(path)!r}" in err and message in err


def test_default_features_must_be_numeric(csv, tmp_path, capsys):
    err = _usage_error(["fit", str(csv), "-k", "1", "--out", str(tmp_path)], capsys)
    assert "non-numeric column(s) ['name']" in err and "every column except the label column" in err and "--columns" in err
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    assert "all numeric (default: every column except the label column" in " ".join(capsys.readouterr().out.split())


def test_a_closed_pipe_is_quiet_and_the_files_are_written(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "bayesgmm", "simulate", "-n", "20", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` exiting before the command prints
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait() == 0
    assert "Error" not in err and "Traceback" not in err
    assert (tmp_path / "data.csv").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_standard_output_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "bayesgmm", "simulate", "-n", "20", "--out", str(tmp_path / "o")],
                              stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["bayesgmm: error: cannot write to standard output (No space left on device); "
                                        "no files were written."]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------
# Files and the command line never lose, fake or mix results (issue 11)
# ----------------------------------------------------------------------------------------------
def _listing(folder):
    """{name: bytes} of every entry of ``folder`` (hidden ones included)."""
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


def test_out_refuses_a_non_empty_folder_and_overwrite_never_mixes_runs(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["simulate", "-n", "40", "-k", "2", "--out", str(out)]) == 0
    first = _listing(out)
    assert set(first) == {"data.csv", "truth.json", cli.MANIFEST}
    assert json.loads(first[cli.MANIFEST])["files"] == ["data.csv", "truth.json"]
    capsys.readouterr()
    err = _usage_error(["simulate", "-n", "50", "--out", str(out)], capsys)
    assert f"output folder {str(out)!r} is not empty" in err and "--overwrite" in err
    assert _listing(out) == first  # refused: nothing touched
    (out / "notes.txt").write_text("mine")  # not written by bayesgmm: kept
    rc = cli.main(["fit", str(out / "data.csv"), "-k", "1", "--columns", "x0", "x1", "--no-plot", "--overwrite",
                   "--engine-option", "n_init=1", "--out", str(out)])
    assert rc == 0
    # the earlier run's files are gone, except data.csv, which this run read; the user's file stays
    assert set(_listing(out)) == {"em_k1.json", "em_k1.nc", cli.MANIFEST, "notes.txt", "data.csv"}
    assert (out / "data.csv").read_bytes() == first["data.csv"]
    manifest = json.loads((out / cli.MANIFEST).read_text())
    assert manifest["command"] == "fit" and manifest["files"] == ["em_k1.json", "em_k1.nc"]


def test_a_command_that_fails_or_is_interrupted_leaves_the_earlier_run_untouched(tmp_path, capsys, monkeypatch):
    from bayesgmm import storage

    out = tmp_path / "o"
    fit = ["fit", "--dataset", "faithful", "-k", "1", "--no-plot", "--engine-option", "n_init=1", "--out", str(out)]
    assert cli.main(fit) == 0
    before = _listing(out)
    capsys.readouterr()

    def interrupted(result, path, x=None, **kwargs):  # the JSON is written by now, the NetCDF is half written
        with open(path, "wb") as f:
            f.write(b"CDF\x01 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "save_result", interrupted)
    assert cli.main(fit + ["--overwrite"]) == 130
    err = capsys.readouterr().err
    assert err == "bayesgmm: interrupted (Ctrl-C); no files were written.\n"
    assert _listing(out) == before  # no staging folder, no partial file, the earlier run intact

    def broken(result, path, x=None, **kwargs):
        raise ValueError("cannot encode")

    monkeypatch.setattr(storage, "save_result", broken)
    assert cli.main(fit + ["--overwrite"]) == 2
    assert _listing(out) == before
    assert cli.main(fit[:-1] + [str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()  # a folder the command created is removed again


def test_an_interrupted_study_keeps_its_finished_data_sets_for_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C (or a job's time limit) during ``study``: the data sets finished are kept in
    OUT/checkpoint and named on stderr; the same command refuses the folder (naming --resume),
    ``--resume`` runs only the other data sets and writes the study, whose loaded rows are the
    first run's, and the checkpoint is removed once the files are written."""
    from bayesgmm import experiments

    out = tmp_path / "o"
    study = ["study", "--num-datasets", "3", "-n", "60", "--methods", "em", "--engine-option", "em.n_init=1",
             "--no-progress", "--out", str(out)]
    compare, calls = experiments.compare, []

    def stopping(*args, **kwargs):  # Ctrl-C while the third data set is fitted
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return compare(*args, **kwargs)

    def at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "compare", at_once)  # before any data set finished: nothing is left
    assert cli.main(study) == 130
    assert capsys.readouterr().err.splitlines() == ["bayesgmm: interrupted (Ctrl-C); no files were written."]
    assert not out.exists()
    monkeypatch.setattr(experiments, "compare", stopping)
    assert cli.main(study) == 130
    assert capsys.readouterr().err.splitlines() == [
        "bayesgmm: interrupted (Ctrl-C); no files were written.",
        f"bayesgmm: the 2 data set(s) finished are kept in {str(out / 'checkpoint')!r}; run the same command with "
        "--resume to continue."]
    assert sorted(_listing(out)) == ["checkpoint"]
    kept = pd.concat([pd.read_parquet(out / "checkpoint" / f"task-00000{i}.parquet") for i in (0, 1)])
    assert cli.main(study) == 2
    assert "--resume continues it" in capsys.readouterr().err
    # --overwrite starts afresh, but the earlier run's data sets stay until the new run's files are
    # written: an error or Ctrl-C before then leaves them as they were
    checkpointed = {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()}

    def failing(*args, **kwargs):
        raise ValueError("this data set cannot be fitted")

    for broken, code, said in ((failing, 2, "cannot be fitted"), (at_once, 130, "the 2 data set(s) finished are kept")):
        monkeypatch.setattr(experiments, "compare", broken)
        assert cli.main(study + ["--overwrite"]) == code
        assert said in capsys.readouterr().err
        assert sorted(_listing(out)) == ["checkpoint"]
        assert {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()} == checkpointed
    monkeypatch.setattr(experiments, "compare", stopping)
    assert cli.main(study + ["--resume", "--seed", "1"]) == 2  # another study's data sets are never mixed in
    assert "differs in seed); give a new --out folder, or --overwrite without --resume" in capsys.readouterr().err
    calls.clear()
    assert cli.main(study + ["--resume"]) == 0
    assert len(calls) == 1  # only the data set not finished
    assert sorted(_listing(out)) == sorted([cli.MANIFEST, "study.csv", "summary.csv", "summary.md", "summary.tex"])
    table = pd.read_csv(out / "study.csv")
    assert list(table["dataset"]) == [0, 1, 2]
    np.testing.assert_allclose(table["fit_seconds"][:2], kept["fit_seconds"], rtol=1e-15)  # loaded, not refitted
    # a requeued job passing --resume after the end: nothing to do, the files untouched
    finished = _listing(out)
    capsys.readouterr()
    assert cli.main(study + ["--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().out and _listing(out) == finished
    assert cli.main(study[:-1] + [str(out) + "/", "--resume"]) == 0  # the folder however spelled
    assert "nothing to resume" in capsys.readouterr().out and _listing(out) == finished
    # a folder of the user's own named checkpoint is neither used nor deleted
    mine = tmp_path / "mine"
    (mine / "checkpoint").mkdir(parents=True)
    (mine / "checkpoint" / "notes.txt").write_text("mine")
    for extra in (["--overwrite"], ["--overwrite", "--resume"]):
        assert cli.main(study[:-1] + [str(mine)] + extra) == 2
        assert "is not a bayesgmm checkpoint" in capsys.readouterr().err
        assert sorted(_listing(mine)) == ["checkpoint"] and (mine / "checkpoint" / "notes.txt").read_text() == "mine"


def test_an_interrupted_overwrite_run_keeps_its_own_finished_data_sets(tmp_path, capsys, monkeypatch):
    """``--overwrite`` sets the earlier run's checkpoint aside. Stopped after finishing data sets of
    its own, the new run put the earlier one back and deleted its own, while its note said its data
    sets were kept and to ``--resume`` (which then refused: another seed). It now keeps its own."""
    from bayesgmm import experiments

    out = tmp_path / "o"
    study = ["study", "--num-datasets", "3", "-n", "60", "--methods", "em", "--engine-option", "em.n_init=1",
             "--no-progress", "--out", str(out)]
    compare, calls = experiments.compare, []

    def stopping_at(n):
        def stopping(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return compare(*args, **kwargs)
        return stopping

    monkeypatch.setattr(experiments, "compare", stopping_at(2))  # seed 0: one data set finished
    assert cli.main(study) == 130
    calls.clear()
    monkeypatch.setattr(experiments, "compare", stopping_at(3))  # seed 1 over it: two finished
    assert cli.main(study + ["--overwrite", "--seed", "1"]) == 130
    assert "the 2 data set(s) finished are kept" in capsys.readouterr().err
    assert len([p for p in (out / "checkpoint").iterdir() if p.name.startswith("task-")]) == 2
    assert sorted(_listing(out)) == ["checkpoint"]  # no staging folder left
    calls.clear()
    monkeypatch.setattr(experiments, "compare", stopping_at(99))
    assert cli.main(study + ["--resume", "--seed", "1"]) == 0
    assert len(calls) == 1  # only the seed-1 run's third data set


def test_a_full_disk_is_one_line_and_leaves_no_checkpoint_of_nothing(tmp_path, capsys, monkeypatch):
    """Writers that do not name the file (pandas, pyarrow) or raise a RuntimeError (h5py) on a full
    disk gave a traceback and exit code 1, the code of an internal error; and a study whose first
    data set could not be written left ``OUT/checkpoint`` holding a record of nothing, which the
    rerun refused as an interrupted run's."""
    import errno
    import os

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def no_space(*args, **kwargs):
        raise full

    out = tmp_path / "o"
    study = ["study", "--num-datasets", "2", "-n", "60", "--methods", "em", "--engine-option", "em.n_init=1",
             "--no-progress", "--out", str(out)]
    with monkeypatch.context() as patched:
        patched.setattr(pd.DataFrame, "to_parquet", no_space)
        assert cli.main(study) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"bayesgmm: error: {os.strerror(errno.ENOSPC)} while writing the results; no files were "
                                "written. Free space (or quota) and run the command again."], err
    assert not out.exists()
    with monkeypatch.context() as patched:  # as h5py says it
        patched.setattr(pd.DataFrame, "to_csv", lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError(f"Can't write data (file write failed: errno = 28, error message = '{os.strerror(errno.ENOSPC)}')")))
        assert cli.main(study) == 2
    err = capsys.readouterr().err.splitlines()  # the data sets finished before are kept, and it says so
    assert "while writing the results; no files were written" in err[0]
    assert err[1:] == [f"bayesgmm: the 2 data set(s) finished are kept in {str(out / 'checkpoint')!r}; run the same "
                       "command with --resume to continue."]
    assert cli.main(study + ["--resume"]) == 0  # space again


def test_sbc_resume_with_fewer_replications_is_refused(tmp_path, capsys):
    """``sbc --resume`` with fewer --replications than the interrupted run finished ran, and the
    checkpoint's removal after the commit threw the finished replications beyond the new count
    away (the library's own checkpoint keeps them; the command line deletes its folder)."""
    from bayesgmm._checkpoint import RECORD

    out = tmp_path / "o"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / RECORD).write_text("{}")
    for i in (0, 1, 5):
        (out / "checkpoint" / f"task-{i:06d}.json").write_text("{}")
    before = _listing(out / "checkpoint")
    err = _usage_error(["sbc", "--replications", "3", "--resume", "--no-progress", "--out", str(out)], capsys)
    assert "has finished replications up to 5, which this run would discard; resume with --replications 6 or more" in err
    assert _listing(out / "checkpoint") == before and sorted(_listing(out)) == ["checkpoint"]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_in_a_subprocess_exits_130_with_one_line_and_no_partial_files(tmp_path, signame):
    """SIGINT while NUTS is being compiled or run (a long XLA call): exit 130 at once, one line on
    stderr, no traceback or crash, and the folder as it was (here: an earlier run's files, replaced
    only on success). SIGTERM (``kill``, ``timeout``, a batch scheduler) the same way, status 143."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o"
    assert cli.main(["simulate", "-n", "60", "-k", "2", "--out", str(out)]) == 0
    before = _listing(out)
    # a compile cache of its own: the process is killed, and the suite's cache is not its to risk
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "BAYESGMM_COMPILE_CACHE": str(tmp_path / "xla")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bayesgmm", "fit", str(out / "data.csv"), "-k", "2", "--columns", "x0", "x1",
         "--method", "mcmc", "--engine-option", "num_warmup=20000", "--engine-option", "num_samples=20000",
         "--no-progress", "--overwrite", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = proc.stdout.readline()  # printed once the data are read, before the engine starts
    assert line.startswith("features (2): x0, x1"), line + proc.stderr.read()
    time.sleep(3.0)
    proc.send_signal(getattr(signal, signame))
    start = time.perf_counter()
    stdout, stderr = proc.communicate(timeout=300)
    assert time.perf_counter() - start < 20  # the 40000 NUTS steps would take minutes
    if signame == "SIGINT":
        assert proc.returncode == 130, stderr[-3000:]
        assert stderr.splitlines() == ["bayesgmm: interrupted (Ctrl-C); no files were written."]
    else:
        assert proc.returncode == 143, stderr[-3000:]
        assert stderr.splitlines() == ["bayesgmm: terminated (SIGTERM); no files were written."]
    assert "wrote" not in stdout
    assert _listing(out) == before


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_files_are_written_leaves_a_successful_run(tmp_path, signame):
    """Once the files are in place the command has succeeded: Ctrl-C or SIGTERM then must not turn
    it into status 130/143 (which means "no files were written"). Python's shutdown, a second or
    so after the last line, used to put the default handlers back and die of the signal."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "o"
    assert cli.main(["simulate", "-n", "60", "-k", "2", "--out", str(tmp_path / "data")]) == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bayesgmm", "fit", str(tmp_path / "data" / "data.csv"), "-k", "2", "--label-column",
         "component", "--no-plot", "--no-progress", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines = []
    while not (lines and lines[-1].startswith("wrote")):
        lines.append(proc.stdout.readline())
        assert lines[-1], "".join(lines) + proc.stderr.read()
    proc.send_signal(getattr(signal, signame))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, stderr[-3000:])
    # nothing of bayesgmm's nor a traceback on stderr (a host's XLA or absl log lines may be there)
    own = [line for line in stderr.splitlines() if not re.match(r"[IWEF]\d{4} ", line)]
    assert own == [], stderr[-3000:]
    assert sorted(_listing(out)) == sorted([cli.MANIFEST, "em_k2.json", "em_k2.nc"])


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_while_the_command_starts_exits_130_with_one_line(tmp_path, delay):
    """SIGINT while `import bayesgmm` is still loading JAX (the first seconds): exit 130 and one
    line, not an import traceback, and not a KeyboardInterrupt swallowed by a garbage-collector
    callback after which the command ran to the end. The executable and `python -m`."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    executable = Path(sys.executable).with_name("bayesgmm")  # the installed console script
    launchers = [[sys.executable, "-m", "bayesgmm"]] + ([[str(executable)]] if executable.exists() else [])
    # as from a terminal: SIGINT at its default, whatever this process inherited (a background job
    # of a non-interactive shell runs with SIGINT ignored, and its children inherit that)
    terminal = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execv(sys.argv[1], sys.argv[1:])"]
    for number, launcher in enumerate(launchers):
        out = tmp_path / f"o{number}"
        argv = terminal + launcher
        # a fit that cannot end before the signal on a fast machine (an EM fit from a warm cache
        # took 2.4 s of CPU here, and the second launcher could have found the first one's
        # programs), each launcher with a cache of its own (a killed process's)
        proc = subprocess.Popen(argv + ["fit", "--dataset", "faithful", "-k", "2", "--method", "mcmc", "--engine-option",
                                        "mcmc.num_warmup=20000", "--no-plot", "--no-progress", "--out", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "MPLBACKEND": "Agg",
                                     "BAYESGMM_COMPILE_CACHE": str(tmp_path / f"xla{number}")})
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, (launcher, stderr[-3000:])
        assert stderr.splitlines() == ["bayesgmm: interrupted (Ctrl-C); no files were written."], stderr[-3000:]
        assert not out.exists()


def test_overwrite_never_replaces_a_file_bayesgmm_did_not_write(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "data.csv").write_text("my own data\n")
    err = _usage_error(["simulate", "-n", "40", "-k", "2", "--overwrite", "--out", str(out)], capsys)
    assert "would replace data.csv (not written by the earlier bayesgmm run there); nothing was written" in err
    assert _listing(out) == {"data.csv": b"my own data\n"}


def test_labels_with_empty_cells_and_a_config_path_that_is_no_string_are_usage_errors(csv, tmp_path, capsys):
    import pandas as pd

    table = pd.read_csv(csv)
    table["species"] = ["a", "b"] * (len(table) // 2) + ["a"] * (len(table) % 2)
    table.loc[3, "species"] = None
    path = tmp_path / "labelled.csv"
    table.to_csv(path, index=False)
    err = _usage_error(["compare", str(path), "-k", "2", "--label-column", "species", "--methods", "em",
                        "--out", str(tmp_path / "o")], capsys)
    assert "label column 'species' has 1 empty cell(s) (first: row 3, counting from 0; line 5 of the file)" in err
    # a NaN feature in the same row is counted the same way (the library's rows)
    table.loc[3, "species"] = "a"
    table.loc[3, table.columns[0]] = None
    table.to_csv(path, index=False)
    err = _usage_error(["fit", str(path), "-k", "2", "--label-column", "species", "--columns", "eruptions", "waiting",
                        "--out", str(tmp_path / "o")], capsys)
    assert "NaN values in 1 row(s) (first: row 3, counting from 0)" in err
    config = tmp_path / "c.toml"
    config.write_text('command = "fit"\nnum_components = 2\n[data]\npath = 5\n')
    assert "data option 'path' must be a string, got 5" in _usage_error(["run", str(config), "--out",
                                                                         str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()


def test_rows_of_another_length_than_the_header_are_refused(tmp_path, capsys):
    """One field more in every row made pandas take the first column as the rows' index: a
    column lost and the others renamed, fitted without a word (exit 0); a semicolon file with
    decimal commas was fitted as one column of fragments; a short row became missing values."""
    def error(text, suffix=".csv"):
        path = tmp_path / f"data{suffix}"
        path.write_text(text)
        return _usage_error(["fit", str(path), "-k", "1", "--out", str(tmp_path / "o")], capsys)

    assert "line 2 has 3 field(s) where the header names 2 (a,b)" in error("a,b\n1,2,3\n4,5,6\n7,8,9\n")
    assert "line 3 has 1 field(s) where the header names 2" in error("a,b\n1,2\n3\n4,5\n")
    err = error("a;b\n1,5;2,25\n3,5;4,5\n5;6\n")
    assert "line 2 has 3 field(s)" in err and "one field holding semicolons: this reader splits commas" in err
    assert "its header 'a;b' is one field holding semicolons" in error("a;b\n1;2\n3;4\n5;6\n")
    assert "holding tabs: this reader splits commas (give a .tsv file" in error("a\tb\n1\t2\n3\t4\n", ".txt")
    assert not (tmp_path / "o").exists()


def test_a_csv_without_a_header_row_is_refused(tmp_path, capsys):
    path = tmp_path / "numbers.csv"
    path.write_text("1.5,2\n3,4.25\n5,6\n")
    err = _usage_error(["fit", str(path), "-k", "1", "--out", str(tmp_path / "o")], capsys)
    assert f"input file {str(path)!r} has no header row: its first line (1.5,2) is numbers" in err
    assert "Add a first line naming the columns (e.g. x0,x1)" in err
    tsv = tmp_path / "numbers.tsv"
    tsv.write_text("1\t-2e3\n3\t4\n")
    assert "has no header row" in _usage_error(["fit", str(tsv), "-k", "1", "--out", str(tmp_path / "o")], capsys)
    # a first row with an empty cell (a missing value), and Excel's "CSV UTF-8" (a byte-order mark)
    gap = tmp_path / "gap.csv"
    gap.write_text("1.5,,2.0\n3,4,5\n6,7,8.5\n")
    assert "its first line (1.5,,2.0) is numbers" in _usage_error(["fit", str(gap), "-k", "1", "--out",
                                                                   str(tmp_path / "o")], capsys)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("0.125,-0.5\n3,4\n6,7\n".encode("utf-8-sig"))
    assert "its first line (0.125,-0.5) is numbers" in _usage_error(["fit", str(bom), "-k", "1", "--out",
                                                                     str(tmp_path / "o")], capsys)
    indexed = tmp_path / "indexed.csv"  # pandas' to_csv() with its index: a nameless first column
    indexed.write_text(",a,b\n0,1,2\n1,4,5\n2,7,9\n")
    assert "column(s) without a name in its header (['Unnamed: 0']" in _usage_error(
        ["fit", str(indexed), "-k", "1", "--out", str(tmp_path / "o")], capsys)
    twice = tmp_path / "twice.csv"
    twice.write_text("a,b,a\n1,2,3\n4,5,6\n")
    assert "names column(s) ['a'] more than once" in _usage_error(["fit", str(twice), "-k", "1", "--out",
                                                                   str(tmp_path / "o")], capsys)
    named = tmp_path / "named.csv"  # a header with a byte-order mark is a header
    rows = "".join(f"{i % 7},{(i * 5) % 11 + 0.5}\n" for i in range(30))
    named.write_bytes(("a,b\n" + rows).encode("utf-8-sig"))
    assert cli.main(["fit", str(named), "-k", "1", "--no-plot", "--engine-option", "n_init=1", "--out",
                     str(tmp_path / "o")]) == 0
    assert "features (2): a, b;" in capsys.readouterr().out


def test_a_prior_is_never_dropped_and_map_em_streams(tmp_path, capsys):
    err = _usage_error(["fit", "--dataset", "faithful", "-k", "2", "--engine-option", "prior=default",
                        "--out", str(tmp_path / "a")], capsys)
    assert "--method em is maximum likelihood and takes no prior" in err and "--method map-em" in err
    with pytest.raises(ValueError, match="method 'em' is maximum likelihood and takes no prior"):
        bg.experiments.fit(np.arange(20.0), 1, "em", prior="default")
    data = bg.datasets.make_mixture(600, 2, 2, separation=5.0, seed=4)
    np.save(tmp_path / "x.npy", data.x)
    stream = ["fit", str(tmp_path / "x.npy"), "-k", "2", "--stream", "--batch-size", "256", "--no-progress",
              "--engine-option", "n_init=2"]
    err = _usage_error(stream + ["--engine-option", "prior=default", "--out", str(tmp_path / "b")], capsys)
    assert "--method em is maximum likelihood and takes no prior" in err
    assert cli.main(stream + ["--method", "map-em", "--out", str(tmp_path / "c")]) == 0
    fit = bg.FitResult.from_json(tmp_path / "c" / "map-em_k2_stream.json")
    assert fit.method == "map-em" and fit.objective == "log_posterior"
    expected = bg.Prior.default(data.x, 2)  # the default prior of the whole stream, from its first pass
    np.testing.assert_allclose(fit.prior.mean, expected.mean, rtol=1e-10)
    np.testing.assert_allclose(fit.prior.scale, expected.scale, rtol=1e-10)
    ref = bg.fit_em(data.x, 2, prior=expected, n_init=2, seed=0)
    assert fit.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-4)


def test_gibbs_with_a_partial_prior_table_reports_the_number_of_components(tmp_path, capsys):
    """An overfitted sparse Gibbs fit from the command line: the prior table's missing fields are
    Prior.default's, and the posterior of K+ is printed and kept in the NetCDF file."""
    out = tmp_path / "g"
    argv = ["fit", "--dataset", "galaxies", "-k", "10", "--method", "gibbs", "--engine-option", "num_warmup=500",
            "--engine-option", "num_samples=1000", "--engine-option", "prior={weight_concentration=0.01}",
            "--no-progress", "--no-plot", "--out", str(out)]
    with warnings.catch_warnings():
        # so short a run has not mixed over K+ (its chains disagree: docs/workflow.md runs 5000 + 20000)
        warnings.simplefilter("default", bg.ConvergenceWarning)
        assert cli.main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "Gibbs chains may not have converged" in captured.err
    fit = bg.load_result(out / "gibbs_k10.nc")
    x = bg.datasets.load_galaxies()
    expected = dataclasses.replace(bg.Prior.default(x, 10), weight_concentration=0.01)
    np.testing.assert_allclose(fit.prior.scale, expected.scale)
    assert float(np.asarray(fit.prior.weight_concentration)) == 0.01
    post = fit.num_components_posterior()
    line = next(li for li in printed.splitlines() if "posterior of the number of non-empty components" in li)
    assert f"{post.idxmax()}: {post.max():.3f}" in line


def test_dirichlet_process_weights_from_a_partial_prior_table(tmp_path, capsys):
    """``prior={weight_prior="dirichlet_process"}``: Prior.default's other fields, DP(1) weights,
    kept in the result file; the overfitted VB fit keeps the two clusters of Old Faithful."""
    out = tmp_path / "dp"
    argv = ["fit", "--dataset", "faithful", "-k", "10", "--method", "vb", "--engine-option",
            'prior={weight_prior="dirichlet_process"}', "--no-progress", "--no-plot", "--out", str(out)]
    assert cli.main(argv) == 0
    fit = bg.load_result(out / "vb_k10.nc")
    assert fit.prior == bg.Prior.default(bg.datasets.load_faithful(), 10, weight_prior="dirichlet_process")
    assert fit.info["effective_components"] == 2


def test_parquet_is_read_by_the_plain_install(csv, tmp_path, capsys):
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert any(dep.replace(" ", "").startswith("pyarrow") for dep in project["dependencies"])
    df = pd.read_csv(csv)[["eruptions", "waiting", "group"]]
    df.to_parquet(tmp_path / "faithful.parquet")
    argv = ["-k", "2", "--columns", "eruptions", "waiting", "--no-plot", "--engine-option", "n_init=2"]
    assert cli.main(["fit", str(tmp_path / "faithful.parquet"), *argv, "--out", str(tmp_path / "p")]) == 0
    assert cli.main(["fit", str(csv), *argv, "--out", str(tmp_path / "c")]) == 0
    from_parquet = bg.FitResult.from_json(tmp_path / "p" / "em_k2.json")
    assert from_parquet.num_obs == 272
    assert from_parquet.log_likelihood == bg.FitResult.from_json(tmp_path / "c" / "em_k2.json").log_likelihood


def test_every_option_has_help_with_its_default(capsys):
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = []
    for name, sub in [("bayesgmm", parser), *commands.items()]:
        for action in sub._actions:
            if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                continue
            text = " ".join((action.help or "").split())
            if not ("default:" in text or "(required)" in text):
                missing.append(f"{name} {action.option_strings or action.dest}: {text!r}")
    assert missing == []
    with pytest.raises(SystemExit):  # the defaults are filled in where the help shows them
        cli.main(["select", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: 0)" in shown and "(default: auto)" in shown and "%(default)" not in shown


def test_warnings_are_one_line_without_source(capsys, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside the test suite (which turns warnings into errors)
        rc = cli.main(["fit", "--dataset", "faithful", "-k", "3", "--engine-option", "n_init=1",
                       "--engine-option", "max_iter=2", "--no-plot", "--out", str(tmp_path)])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith("bayesgmm: warning: ") for line in err), err
    assert any("ConvergenceWarning: " in line for line in err)
    assert not any("warnings.warn" in line or ".py:" in line for line in err)


def test_commands_say_which_columns_are_features(csv, tmp_path, capsys):
    assert cli.main(["fit", str(csv), "-k", "1", "--columns", "waiting", "--no-plot", "--engine-option", "n_init=1",
                     "--out", str(tmp_path / "f")]) == 0
    assert "features (1): waiting; 272 rows" in capsys.readouterr().out
    assert cli.main(["compare", str(csv), "-k", "2", "--columns", "eruptions", "waiting", "--label-column", "group",
                     "--methods", "em", "--no-plot", "--no-progress", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "features (2): eruptions, waiting; label column 'group' (not a feature); 272 rows" in out


def test_select_takes_a_label_column(csv, tmp_path, capsys):
    rc = cli.main(["select", str(csv), "--columns", "eruptions", "waiting", "--label-column", "group", "-k", "1", "2",
                   "--covariance-types", "full", "--n-init", "2", "--no-plot", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "label column 'group' (not a feature)" in out
    assert "adjusted Rand index against 'group': " in out
    ari = float(out.split("adjusted Rand index against 'group': ")[1].split()[0])
    best = bg.FitResult.from_json(tmp_path / "best_bic.json")
    assert best.feature_names == ("eruptions", "waiting")
    # recomputed: scikit-learn's ARI of the saved best fit's labels against the column (3 decimals printed)
    from sklearn.metrics import adjusted_rand_score

    df = pd.read_csv(csv)
    expected = adjusted_rand_score(df["group"], best.predict(df[["eruptions", "waiting"]]))
    assert ari == pytest.approx(expected, abs=5e-4)
    assert expected > 0.5  # K=2 on Old Faithful matches waiting > 70 closely


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--separation", "-1"], "separation must be a finite number >= 0 (the spread of the component means), got -1.0"),
        (["simulate", "--separation", "nan"], "separation must be a finite number >= 0"),
        (["compare", "--dataset", "faithful", "-k", "2", "--methods", "em", "--engine-option", "em.bogus=1"],
         "engine option(s) ['bogus'] are not options of method 'em' (fit_em); its options are ["),
        (["fit", "--dataset", "faithful", "-k", "2", "--method", "vb", "--engine-option", "prior={concentration=1}"],
         "a prior table takes the fields ['weight_concentration', 'mean', 'mean_precision', "
         "'degrees_of_freedom', 'scale', 'weight_prior'] (unknown ['concentration']); those it leaves out are Prior.default's"),
        (["run", "{sbc_toml}"], "Prior weight_concentration must be a number or a non-empty array of numbers"),
    ],
)
def test_internal_errors_become_clear_messages(argv, message, tmp_path, capsys):
    config = tmp_path / "sbc.toml"
    config.write_text('command = "sbc"\nreplications = 2\n[prior]\nweight_concentration = "a"\n')
    argv = [str(config) if a == "{sbc_toml}" else a for a in argv]
    err = _usage_error(argv + ["--out", str(tmp_path / "o")], capsys)
    assert message in err
    for leaked in ("scale < 0", "MultivariateNormal", "could not convert", "unexpected keyword", "__init__()"):
        assert leaked not in err


def test_the_python_api_names_bad_options_too():
    x = bg.datasets.load_faithful()
    with pytest.raises(ValueError, match=r"engine option\(s\) \['bogus'\] are not options of method 'em'"):
        bg.compare(x, 2, methods=["em"], engine_kwargs={"em": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"engine_kwargs\['vb'\] sets \['seed'\], which compare sets itself"):
        bg.compare(x, 2, methods=["vb"], engine_kwargs={"vb": {"seed": 1}})
    with pytest.raises(ValueError, match="separation must be a finite number >= 0"):
        bg.datasets.make_mixture(20, 2, separation=float("inf"))
    one = bg.select(x, [1], covariance_types="tied", n_init=1)  # one name, not the letters 't', 'i', ...
    assert list(one.table["covariance_type"]) == ["tied"]


def test_every_file_written_is_listed(csv, tmp_path, capsys):
    """The demo runs this command's code (run_compare): its 'wrote' line names every file."""
    rc = cli.main(["compare", str(csv), "-k", "2", "--columns", "eruptions", "waiting", "--methods", "kmeans", "em",
                   "--no-progress", "--engine-option", "em.n_init=1", "--out", str(tmp_path)])
    assert rc == 0
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1
    listed = {p for p in wrote[0].removeprefix("wrote ").split(", ")}
    assert listed == {str(p) for p in tmp_path.iterdir()}
    assert {"comparison.csv", "comparison.md", "comparison.tex", "comparison.json", "em.json", "em.nc", "engines.png",
            "em_clusters.png", "parameters.csv", "parameters.md", "parameters.tex",
            cli.MANIFEST} == {p.name for p in tmp_path.iterdir()}
    # the CSV keeps the API's names (compare(methods=...) takes them); the tables for papers name
    # the engines as the figures do
    assert list(pd.read_csv(tmp_path / "comparison.csv")["method"]) == ["kmeans", "em"]
    assert "| k-means |" in (tmp_path / "comparison.md").read_text()
    assert "\nEM & " in (tmp_path / "parameters.tex").read_text()

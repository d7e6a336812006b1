"""The command line: every command end to end on small data, the TOML runner, exit codes."""

import json

import numpy as np
import pandas as pd
import pytest

import bayesgmm as bg
from bayesgmm import cli

FAST = ["--engine-option", "mcmc.num_warmup=100", "--engine-option", "mcmc.num_samples=100",
        "--engine-option", "mcmc.num_chains=2", "--engine-option", "svi.num_steps=300", "--no-progress"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    df = bg.datasets.load_faithful(as_frame=True)
    df["group"] = (df["waiting"] > 70).astype(int)
    df["name"] = "x"
    path = tmp_path_factory.mktemp("data") / "faithful.csv"
    df.to_csv(path, index=False)
    return path


def test_demo_runs_every_engine_and_writes_the_table_and_figures(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert "Old Faithful" in out
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["method"]) == ["kmeans", "em", "vb", "svi", "mcmc"]
    for method in ("em", "vb", "svi", "mcmc"):
        assert method in out
        restored = bg.FitResult.from_json(tmp_path / f"{method}.json")
        assert restored.num_components == 2 and restored.feature_names == ("eruptions", "waiting")
        assert (tmp_path / f"{method}.nc").stat().st_size > 1000
    # the held-out quarter: EM's plug-in LPD is close to the Bayesian predictive ones
    lpd = table.set_index("method")["test_lpd"]
    assert np.ptp(lpd[["em", "vb", "mcmc"]]) < 0.05
    assert (tmp_path / "engines.png").stat().st_size > 20_000 and (tmp_path / "em_clusters.png").exists()


def test_fit_writes_json_netcdf_and_figure(csv, tmp_path, capsys):
    rc = cli.main(["fit", str(csv), "-k", "2", "--columns", "eruptions", "waiting", "--out", str(tmp_path),
                   "--engine-option", "n_init=3"])
    assert rc == 0
    assert "component 0" in capsys.readouterr().out
    fit = bg.FitResult.from_json(tmp_path / "em_k2.json")
    ref = bg.fit_em(pd.read_csv(csv)[["eruptions", "waiting"]], 2, n_init=3, seed=0)
    np.testing.assert_allclose(fit.log_likelihood, ref.log_likelihood, rtol=1e-12)
    from bayesgmm.diagnostics import load_result

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
    rc = cli.main(["fit", str(tmp_path / "big.npy"), "-k", "3", "--stream", "--method", "vb", "--out", str(tmp_path / "o")])
    assert rc == 2 and "needs the data in memory" in capsys.readouterr().err


def test_compare_with_labels_and_held_out_data(csv, tmp_path):
    rc = cli.main(["compare", str(csv), "-k", "2", "--columns", "eruptions", "waiting", "--label-column", "group",
                   "--methods", "em", "vb", "--test-fraction", "0.2", "--out", str(tmp_path), "--no-plot", "--no-progress"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["method"]) == ["em", "vb"] and table["ari"].min() > 0.8
    assert np.isfinite(table["test_lpd"]).all()
    records = json.loads((tmp_path / "comparison.json").read_text())
    assert records[0]["method"] == "em"


def test_select_writes_the_table_and_the_best_model(tmp_path, capsys):
    rc = cli.main(["select", "--dataset", "faithful", "-k", "1", "2", "3", "--covariance-types", "full", "tied",
                   "--n-init", "3", "--out", str(tmp_path)])
    assert rc == 0
    assert "best by BIC" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "selection.csv")
    assert len(table) == 6
    best = bg.FitResult.from_json(tmp_path / "best_bic.json")
    assert best.num_components == int(table.loc[table["bic"].idxmin(), "num_components"])
    assert (tmp_path / "selection_bic.png").exists()


def test_simulate_then_fit_recovers_the_truth(tmp_path):
    assert cli.main(["simulate", "-n", "400", "-k", "2", "--separation", "6", "--seed", "3", "--out", str(tmp_path)]) == 0
    data = pd.read_csv(tmp_path / "data.csv")
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert list(data.columns) == ["x0", "x1", "component"] and len(data) == 400
    ref = bg.datasets.make_mixture(400, 2, 2, separation=6.0, seed=3)
    np.testing.assert_allclose(data[["x0", "x1"]].to_numpy(), ref.x)
    np.testing.assert_allclose(truth["means"], ref.params.means)


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
        (["fit", "{csv}", "-k", "2", "--columns", "eruptions", "--engine-option", "n_iters=3"], "engine option not accepted"),
        (["fit", "{csv}", "--dataset", "faithful", "-k", "2"], "exactly one data source"),
        (["compare", "{csv}", "-k", "2", "--label-column", "zzz"], "column(s) ['zzz'] not in"),
        (["compare", "{csv}", "-k", "2", "--test-fraction", "1.5", "--columns", "eruptions"], "test_fraction must be in"),
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
    subs = {"{csv}": str(csv), "{bad_toml}": str(tmp_path / "bad.toml"), "{unknown_key}": str(tmp_path / "unknown.toml"),
            "{no_command}": str(tmp_path / "none.toml")}
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
                          ('prior = "flat"', "prior must be one of 'none', 'default'")]:
        config.write_text(line + "\n" + base)
        err = _usage_error(["run", str(config)], capsys)
        assert f"config file {str(config)!r}: {message}" in err
    config.write_text('prior = "default"\n' + base)  # select's prior option is not sbc's [prior] table
    assert cli.options_from_toml(config)["prior"] == "default"
    config.write_text('command = "fit"\nnum_components = 2.0\n[data]\ndataset = "faithful"\n')
    assert "num_components must be an integer, got 2.0" in _usage_error(["run", str(config)], capsys)


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
    monkeypatch.setattr(_compile, "enable_compilation_cache", lambda path, **kw: seen.append(str(path)))
    monkeypatch.delenv("BAYESGMM_COMPILE_CACHE", raising=False)
    args = ["simulate", "-n", "20", "--out", str(tmp_path)]
    assert cli.main(["--compile-cache", "before", *args]) == 0
    assert cli.main([*args, "--compile-cache", "after"]) == 0
    assert cli.main(args) == 0
    assert seen == ["before", "after"]


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

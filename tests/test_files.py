"""Result files: FitResult JSON validated on load, Bayesian results kept whole in NetCDF (and
flagged when read from JSON), and files written whole or not at all."""

import dataclasses
import json
import os
import warnings

import numpy as np
import pytest

import bayesgmm as bg
from bayesgmm import _files


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    return np.r_[rng.normal(-2, 1, (40, 2)), rng.normal(3, 0.5, (40, 2))]


@pytest.fixture(scope="module")
def summary(x):
    """A valid FitResult JSON dict (full covariances, MAP-EM so that it has a prior)."""
    fit = bg.fit_em(x, 2, prior=bg.Prior.default(x, 2), n_init=2, seed=0)
    return json.loads(fit.to_json())


@pytest.fixture(scope="module")
def vb_fit(x):
    return bg.fit_vb(x, 2, seed=0)


def _load(d):
    return bg.FitResult.from_json(json.dumps(d))


def test_a_valid_summary_loads_back_exactly(summary, x):
    back = _load(summary)
    assert back.weights.tolist() == summary["weights"] and back.covariances.tolist() == summary["covariances"]
    assert back.prior is not None and back.converged is summary["converged"] and not back.posterior_omitted
    assert np.isfinite(back.score_samples(x)).all()


#: a field to remove from the summary (any other value replaces the field's)
DELETE = object()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"weights": [1.0, 1.0]}, "field 'weights' must sum to 1"),
        ({"weights": [1.5, -0.5]}, "field 'weights' must be finite and non-negative"),
        ({"weights": [0.5, "0.5"]}, "field 'weights' must be a list of numbers (not strings"),
        ({"weights": [0.2, 0.3, 0.5]}, "field 'means' must have shape (K, D) = (3, D)"),
        ({"covariances": [[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]},
         "the covariance of component 0 is not positive definite"),
        ({"covariances": [[[1.0, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]},
         "the covariance of component 0 is not symmetric"),
        ({"covariances": [[1.0, 1.0], [1.0, 1.0]]}, "field 'covariances' must have shape (2, 2, 2)"),
        ({"covariance_type": "diag"}, "field 'covariances' must have shape (2, 2) for covariance_type='diag'"),
        ({"covariance_type": "fulll"}, "field 'covariance_type' must be one of 'full', 'diag', 'spherical', 'tied'"),
        ({"converged": "false"}, "field 'converged' must be true or false (a JSON boolean); got \"false\""),
        ({"n_iter": -1}, "field 'n_iter' must be a non-negative integer"),
        ({"num_obs": 2.5}, "field 'num_obs' must be a positive integer"),
        ({"log_likelihood": None}, "field 'log_likelihood' must be a finite number"),
        ({"method": "metropolis"}, "field 'method' must be one of"),
        ({"objective": "loss"}, "field 'objective' must be one of"),
        ({"means": [[0.0, 1.0], [2.0]]}, "field 'means' must be a list of lists of numbers of equal lengths"),
        ({"feature_names": ["a"]}, "field 'feature_names' must name the D=2 features once each"),
        ({"degenerate_components": [5]}, "field 'degenerate_components' must be a list of component indices in [0, 2)"),
        ({"prior": {"mean": [0, 0]}}, "field 'prior' must be null or an object with the keys"),
        ({"info": [1]}, "field 'info' must be a JSON object"),
        ({"weights": DELETE}, "lacks the field(s) ['weights']"),
        ({"trace": DELETE, "converged": DELETE}, "lacks the field(s) ['converged', 'trace']"),
    ],
)
def test_every_field_is_validated_on_load(summary, change, message):
    d = json.loads(json.dumps(summary))
    for key, value in change.items():
        if value is DELETE:
            del d[key]
        else:
            d[key] = value
    with pytest.raises(ValueError) as err:
        _load(d)
    assert message in str(err.value)
    assert str(err.value).startswith("FitResult JSON text")


def test_a_truncated_or_foreign_json_file_is_named(summary, tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(summary)[:-40])
    with pytest.raises(ValueError, match=r"FitResult JSON file '.*fit.json' is not valid JSON .* truncated"):
        bg.FitResult.from_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        bg.load_result(path)
    data = tmp_path / "data.csv"  # not a result file at all: named, not HDF5's "file signature not found"
    data.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"'.*data.csv' is not a NetCDF file \(nor \.json\)"):
        bg.load_result(data)


@pytest.mark.parametrize("structure", ["diag", "spherical", "tied"])
def test_other_structures_check_their_variances(x, structure):
    d = json.loads(bg.fit_em(x, 2, covariance_type=structure, n_init=1, seed=0).to_json())
    assert _load(d).covariance_type == structure
    cov = np.asarray(d["covariances"])
    d["covariances"] = (-cov).tolist() if structure != "tied" else [[1.0, 3.0], [3.0, 1.0]]
    with pytest.raises(ValueError, match="positive variances|not positive definite"):
        _load(d)


def test_a_bayesian_result_from_json_says_it_is_a_point_estimate(x, vb_fit, tmp_path):
    vb = vb_fit
    path = tmp_path / "vb.json"
    vb.to_json(path)
    assert json.loads(path.read_text())["posterior_omitted"] is True
    with pytest.warns(UserWarning, match="holds only the point estimate of a 'vb' fit"):
        back = bg.load_result(path)  # .json goes through FitResult.from_json
    assert back.method == "vb" and back.posterior_omitted and back.predictive is None and back.draws is None
    assert "posterior omitted: point estimate only" in repr(back)
    # it predicts with the plug-in point estimate, which differs from VB's Student-t predictive
    plug_in = bg.FitResult.from_json(bg.fit_em(x, 2, n_init=1, seed=0).to_json())
    assert not plug_in.posterior_omitted
    assert not np.allclose(back.score_samples(x), vb.score_samples(x))


@pytest.mark.parametrize("method", ["vb", pytest.param("svi", marks=pytest.mark.slow)])
def test_netcdf_keeps_a_bayesian_result_whole(x, vb_fit, method, tmp_path):
    fit = vb_fit if method == "vb" else bg.fit_svi(x, 2, num_steps=200, num_draws=50, seed=0)
    path = bg.save_result(fit, tmp_path / f"{method}.nc", x=x)
    back = bg.load_result(path)
    assert back.method == method and not back.posterior_omitted
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(back.draws[name], fit.draws[name])
    np.testing.assert_array_equal(back.predict_proba(x), fit.predict_proba(x))
    np.testing.assert_array_equal(back.score_samples(x), fit.score_samples(x))
    assert [p.name for p in tmp_path.iterdir()] == [f"{method}.nc"]  # no temporary file left
    with pytest.raises(ValueError, match="save_result writes NetCDF, not JSON"):
        bg.save_result(fit, tmp_path / "fit.json")


@pytest.fixture(scope="module")
def mcmc_fit(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bg.ConvergenceWarning)  # short chains
        return bg.fit_mcmc(x, 2, num_warmup=100, num_samples=100, num_chains=2, seed=0)


def _assert_same_point_and_facts(back, fit):
    for name in ("method", "covariance_type", "log_likelihood", "converged", "n_iter", "objective", "feature_names",
                 "num_obs", "degenerate_components"):
        assert getattr(back, name) == getattr(fit, name), name
    for name in ("weights", "means", "covariances", "trace"):
        np.testing.assert_array_equal(getattr(back, name), getattr(fit, name), err_msg=name)
    assert back.prior == fit.prior


@pytest.mark.parametrize("method", ["vb", "mcmc"])
def test_bayesian_round_trips_keep_the_numbers(x, vb_fit, mcmc_fit, method, tmp_path):
    """A real VB and NUTS result: NetCDF gives back every number (draws, sampler statistics, the
    closed-form predictive, info) and the same predictions, bit for bit; JSON gives back the point
    estimate and fit facts exactly, and predicts with that point estimate (the plug-in mixture)."""
    fit = vb_fit if method == "vb" else mcmc_fit
    back = bg.load_result(bg.save_result(fit, tmp_path / "fit.nc", x=x))
    _assert_same_point_and_facts(back, fit)
    assert back.to_dict() == fit.to_dict()  # info included
    for group in ("draws", "raw_draws", "sample_stats"):
        a, b = getattr(fit, group), getattr(back, group)
        assert (a is None) == (b is None), group
        if a is not None:
            assert set(b) == set(a), group
            for name in a:
                np.testing.assert_array_equal(b[name], a[name], err_msg=f"{group}[{name}]")
                assert b[name].dtype == a[name].dtype, (group, name)
    assert (back.predictive is None) == (fit.predictive is None) == (method != "vb")
    for a, b in zip(fit.predictive or (), back.predictive or ()):
        np.testing.assert_array_equal(b, a)
    for call in ("predict", "predict_proba", "score_samples"):
        np.testing.assert_array_equal(getattr(back, call)(x), getattr(fit, call)(x), err_msg=call)

    with pytest.warns(UserWarning, match=f"holds only the point estimate of a '{method}' fit"):
        point = bg.FitResult.from_json(fit.to_json())
    _assert_same_point_and_facts(point, fit)
    assert point.posterior_omitted and point.draws is None and point.predictive is None
    assert {k: v for k, v in point.to_dict()["info"].items() if k != "posterior_omitted"} == fit.to_dict()["info"]
    plug_in = dataclasses.replace(fit, draws=None, raw_draws=None, predictive=None)
    for call in ("predict", "predict_proba", "score_samples"):
        np.testing.assert_array_equal(getattr(point, call)(x), getattr(plug_in, call)(x), err_msg=call)
    np.testing.assert_array_equal(point.score_samples(x), fit.log_likelihood_samples(x))
    assert np.sum(point.score_samples(x)) == pytest.approx(fit.log_likelihood, rel=1e-12)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "fit.json"
    _files.write_text(path, "old")
    with pytest.raises(RuntimeError, match="crash"):
        with _files.atomic_path(path) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp.name.startswith(".fit.tmp-")
            tmp.write_text("half of the new")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["fit.json"]
    with pytest.raises(KeyboardInterrupt):
        with _files.atomic_path(tmp_path / "new.nc") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["fit.json"]
    _files.write_text(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["fit.json"]


def test_a_destination_that_cannot_be_a_file_is_named(x, tmp_path):
    """A folder's path, or a file in a folder that does not exist, raised IsADirectoryError or
    h5py's FileNotFoundError naming the hidden temporary file; a result of another type failed
    deep inside ArviZ's conversion."""
    fit = bg.fit_em(x, 2, n_init=1, seed=0)
    with pytest.raises(ValueError, match="is a folder; give the path of a file"):
        bg.save_result(fit, tmp_path)
    for write in (lambda p: bg.save_result(fit, p), fit.to_json):
        with pytest.raises(ValueError, match="its folder .*nowhere.* does not exist; create it first"):
            write(tmp_path / "nowhere" / "fit.nc")
    with pytest.raises(ValueError, match="result must be a FitResult"):
        bg.save_result("fit", tmp_path / "fit.nc")
    assert os.listdir(tmp_path) == []


def test_to_json_is_atomic(x, tmp_path, monkeypatch):
    from conftest import assert_a_failed_write_keeps_the_file

    first, second = (bg.fit_em(x, k, n_init=1, seed=0) for k in (2, 3))
    assert_a_failed_write_keeps_the_file(tmp_path / "fit.json", first.to_json, second.to_json, monkeypatch)


def test_json_files_carry_their_format_version(summary, tmp_path):
    """JSON files had no version, and fields a newer writer adds were dropped without a word."""
    assert summary["format_version"] == 1
    with pytest.raises(ValueError, match="JSON result format 2, newer than this version reads"):
        _load({**summary, "format_version": 2})
    with pytest.raises(ValueError, match="'format_version' must be an integer"):
        _load({**summary, "format_version": "1"})
    with pytest.warns(UserWarning, match=r"field\(s\) \['mixture_shape'\] that this version"):
        _load({**summary, "mixture_shape": "skewed"})
    older = {k: v for k, v in summary.items() if k != "format_version"}  # files before the version: read as before
    assert _load(older).to_dict() == _load(summary).to_dict()
    folder = tmp_path / "{run}"  # a path that starts with "{" is a path, not JSON text
    folder.mkdir()
    (folder / "fit.json").write_text(json.dumps(summary))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert bg.FitResult.from_json("{run}/fit.json").to_dict() == _load(summary).to_dict()
    finally:
        os.chdir(cwd)


def test_damaged_or_foreign_netcdf_files_are_named(x, tmp_path):
    """A truncated file gave h5py's OSError without the path, a NetCDF file named .json a
    UnicodeDecodeError, a classic NetCDF-3 file 'file signature not found', a feature name with
    a NUL an error from inside h5py, and a hand-edited version a TypeError."""
    fit = bg.fit_em(x, 2, n_init=1, seed=0)
    path = tmp_path / "fit.nc"
    bg.save_result(fit, path)
    whole = path.read_bytes()
    (tmp_path / "cut.nc").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.nc' could not be read as NetCDF .* truncated or damaged"):
        bg.load_result(tmp_path / "cut.nc")
    (tmp_path / "fit.json").write_bytes(whole)
    with pytest.raises(ValueError, match="holds binary data, not JSON text"):
        bg.load_result(tmp_path / "fit.json")
    (tmp_path / "old.nc").write_bytes(b"CDF\x01" + bytes(60))
    with pytest.raises(ValueError, match="classic \\(version 3\\) NetCDF file"):
        bg.load_result(tmp_path / "old.nc")
    with pytest.raises(ValueError, match="hold a NUL character"):
        bg.save_result(dataclasses.replace(fit, feature_names=("a\x00b", "c")), tmp_path / "nul.nc")
    assert not (tmp_path / "nul.nc").exists()


def test_an_overwrite_keeps_permissions_and_symbolic_links_and_long_names_fit(x, tmp_path):
    """Overwriting replaced the file: a private 0600 file became 0644 and a symbolic link became a
    plain file (the file it named kept the old result); and a 248-byte name, which the file
    system takes, failed (the temporary name added 14 characters)."""
    one, two = bg.fit_em(x, 1, seed=0), bg.fit_em(x, 2, n_init=1, seed=0)
    private = tmp_path / "private.json"
    one.to_json(private)
    os.chmod(private, 0o600)
    two.to_json(private)
    assert os.stat(private).st_mode & 0o777 == 0o600
    real, link = tmp_path / "real.nc", tmp_path / "link.nc"
    bg.save_result(one, real)
    link.symlink_to(real)
    bg.save_result(two, link)
    assert link.is_symlink() and bg.load_result(real).num_components == 2
    long = tmp_path / ("r" * 243 + ".json")  # 248 bytes
    two.to_json(long)
    assert bg.FitResult.from_json(long).num_components == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([long.name, "link.nc", "private.json", "real.nc"])


def test_info_entries_json_cannot_hold_are_named(x, tmp_path):
    """A hand-made info entry JSON cannot hold (a set, a complex number): to_json raised a bare
    TypeError naming no entry, and save_result stored its repr() without a word."""
    fit = dataclasses.replace(bg.fit_em(x, 2, n_init=1, seed=0), info={"tags": frozenset({"a"}), "z": 1 + 2j, "ok": 1})
    with pytest.raises(ValueError, match=r"info entries \['tags', 'z'\] hold values JSON cannot store \(complex, frozenset\)"):
        fit.to_json(tmp_path / "fit.json")
    with pytest.warns(UserWarning, match=r"info entries \['tags', 'z'\] .* stored as their repr"):
        bg.save_result(fit, tmp_path / "fit.nc")
    assert bg.load_result(tmp_path / "fit.nc").info["z"] == "(1+2j)"


def _edited_copy(path, tmp_path, edit_meta=None, drop_group=None):
    """The NetCDF result at ``path`` with its bayesgmm metadata changed by ``edit_meta`` (a
    function of the parsed dict, or of the text when it returns a string) or a group dropped."""
    import arviz as az

    from bayesgmm.diagnostics import META_KEY

    idata = az.from_netcdf(str(path))
    idata.load()
    if edit_meta is not None:
        meta = json.loads(idata.attrs[META_KEY])
        edited = edit_meta(meta)
        idata.attrs[META_KEY] = edited if isinstance(edited, str) else json.dumps(meta)
    if drop_group is not None:
        del idata[drop_group]
    out = tmp_path / f"edited{len(list(tmp_path.iterdir()))}.nc"
    idata.to_netcdf(str(out))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("has_draws"), r"metadata lacks the field\(s\) \['has_draws'\]"),
    (lambda m: m.update(sample_stats_map="all"), "field 'sample_stats_map' must be a list of"),
    (lambda m: '{"format_version": 1, "method": "vb", "weig', "attribute is not bayesgmm's metadata \\(not JSON"),
    (lambda m: m.update(method="bogus"), "field 'method' must be one of 'em'"),
    (lambda m: m.update(feature_names=["a"]), "field 'feature_names' must name the D=2 features"),
    (lambda m: m.pop("log_likelihood"), r"metadata lacks the field\(s\) \['log_likelihood'\]"),
])
def test_an_edited_netcdf_result_is_refused_with_the_field_named(x, vb_fit, tmp_path, edit, message):
    """An edited (or early) file's metadata raised a bare KeyError, or loaded an unknown method
    without a word: its fields pass the checks a JSON result's do."""
    path = tmp_path / "vb.nc"
    bg.save_result(vb_fit, path, x=x)
    with pytest.raises(ValueError, match=message):
        bg.load_result(_edited_copy(path, tmp_path, edit_meta=edit))


@pytest.mark.parametrize("group", ["fit_trace", "posterior", "predictive"])
def test_a_netcdf_result_missing_a_group_names_it(x, vb_fit, tmp_path, group):
    path = tmp_path / "vb.nc"
    bg.save_result(vb_fit, path, x=x)
    with pytest.raises(ValueError, match=f"lacks the '{group}' group that its bayesgmm metadata says it holds"):
        bg.load_result(_edited_copy(path, tmp_path, drop_group=group))


def test_nan_and_infinities_are_written_as_standard_json(x, tmp_path):
    """An undefined number in info or the trace was written as the bare token NaN / Infinity,
    which strict JSON readers (jq, JavaScript, R's jsonlite) refuse; they are strings now, read
    back as the floats they were."""
    fit = bg.fit_em(x, 2, n_init=1, seed=0)
    odd = dataclasses.replace(fit, info={**fit.info, "max_rhat": float("nan"), "bounds": [float("-inf"), 1.5]},
                              trace=np.r_[-np.inf, np.asarray(fit.trace)[1:]])
    text = odd.to_json(tmp_path / "odd.json")

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    doc = json.loads(text, parse_constant=refuse)  # a strict reader
    assert doc["info"]["max_rhat"] == "NaN" and doc["info"]["bounds"][0] == "-Infinity" and doc["trace"][0] == "-Infinity"
    back = bg.FitResult.from_json(tmp_path / "odd.json")
    assert np.isnan(back.info["max_rhat"]) and list(back.info["bounds"]) == [-np.inf, 1.5]
    np.testing.assert_array_equal(back.trace, odd.trace)
    assert back.to_dict()["weights"] == fit.to_dict()["weights"]

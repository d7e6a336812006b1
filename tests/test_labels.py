"""Label alignment and label-invariant summaries (bayesgmm.labels), against brute force."""

import itertools

import numpy as np
import pytest

from bayesgmm import labels
from bayesgmm.labels import (
    align_draws,
    assignment_costs,
    invariant_summaries,
    mixture_moments,
    permute_draws,
    sort_components,
)
from bayesgmm.params import GMMParams

COV_TYPES = ("full", "diag", "spherical", "tied")


def _pivot(covariance_type, k=3, d=2):
    means = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])[:k, :d]
    full = np.stack([np.array([[1.0, 0.3], [0.3, 0.8]]) * (1 + 0.5 * j) for j in range(k)])
    cov = {"full": full, "diag": full[:, [0, 1], [0, 1]], "spherical": full[:, 0, 0], "tied": full[0]}[covariance_type]
    return GMMParams(np.array([0.2, 0.3, 0.5, 0.0])[:k] / np.array([0.2, 0.3, 0.5, 0.0])[:k].sum(), means, cov)


def _draws_near(pivot, covariance_type, rng, lead=(3, 40)):
    """Draws scattered tightly around the pivot, in the pivot's labelling."""
    w = np.broadcast_to(pivot.weights, lead + pivot.weights.shape) * np.exp(0.05 * rng.standard_normal(lead + pivot.weights.shape))
    m = pivot.means + 0.2 * rng.standard_normal(lead + pivot.means.shape)
    scale = np.exp(0.05 * rng.standard_normal(lead + (pivot.means.shape[0] if covariance_type != "tied" else 1,)))
    if covariance_type in ("full",):
        c = pivot.covariances * scale[..., None, None]
    elif covariance_type == "diag":
        c = pivot.covariances * scale[..., None]
    elif covariance_type == "spherical":
        c = pivot.covariances * scale
    else:
        c = pivot.covariances * scale[..., None]  # (lead, 1, 1) broadcast: still (D, D) per draw
    return {"weights": w / w.sum(-1, keepdims=True), "means": m, "covariances": np.asarray(c)}


def _random_perms(rng, lead, k):
    return np.stack([rng.permutation(k) for _ in range(int(np.prod(lead)))]).reshape(lead + (k,))


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_alignment_recovers_the_identity_labelling(covariance_type, rng):
    pivot = _pivot(covariance_type)
    draws = _draws_near(pivot, covariance_type, rng)
    perms = _random_perms(rng, (3, 40), 3)
    scrambled = permute_draws(draws, perms, covariance_type)
    assert not np.array_equal(scrambled["means"], draws["means"])  # the scramble did something
    aligned, found = align_draws(scrambled, pivot, covariance_type)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(aligned[name], draws[name])
    # found[k] is the scrambled component that carries true label k: the inverse permutation
    np.testing.assert_array_equal(np.take_along_axis(perms, found, -1), np.broadcast_to(np.arange(3), perms.shape))
    if covariance_type == "tied":
        np.testing.assert_array_equal(aligned["covariances"], scrambled["covariances"])


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_alignment_and_costs_do_not_depend_on_the_data_units(covariance_type, rng):
    """Both costs are invariant to each feature's units; data of scale 1e-156 (variances of
    1e-312, precisions beyond float64) made every cost infinite and left every draw as it was, so
    the posterior means averaged swapped labels (a sampler reported no switching)."""
    pivot = _pivot(covariance_type)
    draws = _draws_near(pivot, covariance_type, rng)
    perms = _random_perms(rng, (3, 40), 3)
    scrambled = permute_draws(draws, perms, covariance_type)
    units = np.array([1e-156, 2e-157])  # variances subnormal: rounded to about 1e-10
    per_pair = {"full": np.outer(units, units), "tied": np.outer(units, units), "diag": units**2,
                "spherical": units[0] ** 2}[covariance_type]

    def rescaled(p):
        return {**p, "means": p["means"] * units, "covariances": np.asarray(p["covariances"]) * per_pair}

    if covariance_type == "spherical":  # one variance per component: both features in one unit
        units = np.array([1e-156, 1e-156])
    small_pivot = GMMParams(pivot.weights, pivot.means * units, np.asarray(pivot.covariances) * per_pair)
    for cost in ("kl", "mahalanobis"):
        np.testing.assert_allclose(assignment_costs(rescaled(scrambled), small_pivot, covariance_type, cost=cost),
                                   assignment_costs(scrambled, pivot, covariance_type, cost=cost), rtol=1e-6)
    _, found = align_draws(rescaled(scrambled), small_pivot, covariance_type)
    np.testing.assert_array_equal(np.take_along_axis(perms, found, -1), np.broadcast_to(np.arange(3), perms.shape))


@pytest.mark.parametrize("cost", ["kl", "mahalanobis"])
@pytest.mark.parametrize("k", [4, labels.ENUMERATE_MAX_K + 1])  # all K! tried at once; Hungarian per draw
def test_alignment_finds_the_cheapest_of_all_permutations(cost, k, rng):
    grid = 6.0 * np.stack([np.arange(k) % 3, np.arange(k) // 3], axis=-1)  # K means on a grid
    pivot = GMMParams(np.full(k, 1.0 / k), grid, np.eye(2) * (1 + 0.5 * np.arange(k))[:, None, None])
    draws = {
        "weights": rng.dirichlet(np.ones(k), size=(2, 50)),
        "means": 3 + 4 * rng.standard_normal((2, 50, k, 2)),  # far from the pivot: real choices
        "covariances": np.broadcast_to(np.eye(2), (2, 50, k, 2, 2)) * rng.uniform(0.2, 3, (2, 50, k, 1, 1)),
    }
    _, found = align_draws(draws, pivot, "full", cost=cost)
    costs = assignment_costs(draws, pivot, "full", cost=cost)  # [..., j, k]
    all_perms = np.array(list(itertools.permutations(range(k))))  # perm[k_label] = j
    totals = costs[..., all_perms, np.arange(k)].sum(-1)  # (..., K!)
    best = totals.min(-1)
    chosen_total = costs[  # sum_k cost[j = found[k], k]
       np.arange(2)[:, None, None], np.arange(50)[None, :, None], found, np.arange(k)].sum(-1)
    np.testing.assert_allclose(chosen_total, best, rtol=1e-12)


def test_enumeration_and_hungarian_choose_the_same_permutations(rng, monkeypatch):
    k = labels.ENUMERATE_MAX_K
    grid = 6.0 * np.stack([np.arange(k) % 3, np.arange(k) // 3], axis=-1)
    pivot = GMMParams(np.full(k, 1.0 / k), grid, np.eye(2) * (1 + 0.5 * np.arange(k))[:, None, None])
    draws = {
        "weights": rng.dirichlet(np.ones(k), size=(3, 100)),
        "means": 3 + 4 * rng.standard_normal((3, 100, k, 2)),
        "covariances": np.broadcast_to(np.eye(2), (3, 100, k, 2, 2)) * rng.uniform(0.2, 3, (3, 100, k, 1, 1)),
    }
    draws["means"][0, :5] = draws["means"][0, :5, :1]  # five draws whose components are all alike ...
    draws["covariances"][0, :5] = draws["covariances"][0, :5, :1]
    draws["weights"][0, :5] = 1.0 / k
    _, enumerated = align_draws(draws, pivot, "full")
    np.testing.assert_array_equal(enumerated[0, :5], np.broadcast_to(np.arange(k), (5, k)))  # ... keep their labels
    monkeypatch.setattr(labels, "ENUMERATE_MAX_K", 0)  # the Hungarian algorithm for every K
    _, hungarian = align_draws(draws, pivot, "full")
    np.testing.assert_array_equal(enumerated[:, 5:], hungarian[:, 5:])


def test_kl_cost_separates_components_with_equal_means():
    """A scale mixture: equal means, covariances 1 and 25. Mean distance cannot tell them apart."""
    pivot = GMMParams(np.array([0.5, 0.5]), np.zeros((2, 1)), np.array([1.0, 25.0]))
    draws = {
        "weights": np.array([[[0.5, 0.5]]]),
        "means": np.array([[[[0.05], [-0.05]]]]),
        "covariances": np.array([[[24.0, 1.1]]]),  # labels swapped
    }
    aligned, perm = align_draws(draws, pivot, "spherical", cost="kl")
    np.testing.assert_array_equal(perm, [[[1, 0]]])
    np.testing.assert_allclose(aligned["covariances"], [[[1.1, 24.0]]])


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_summaries_are_invariant_to_relabelling(covariance_type, rng):
    pivot = _pivot(covariance_type)
    draws = _draws_near(pivot, covariance_type, rng)
    scrambled = permute_draws(draws, _random_perms(rng, (3, 40), 3), covariance_type)
    a, b = invariant_summaries(draws, covariance_type), invariant_summaries(scrambled, covariance_type)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-12)
    s1, s2 = sort_components(draws, covariance_type), sort_components(scrambled, covariance_type)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(s1[name], s2[name])


def test_mixture_moments_against_monte_carlo(rng):
    pivot = _pivot("full")
    draws = {n: np.asarray(v)[None, None] for n, v in zip(("weights", "means", "covariances"), pivot)}
    mean, cov = mixture_moments(draws, "full")
    z = rng.choice(3, size=200_000, p=pivot.weights)
    chol = np.linalg.cholesky(pivot.covariances)
    x = pivot.means[z] + np.einsum("nij,nj->ni", chol[z], rng.standard_normal((z.size, 2)))
    se = np.sqrt(np.diag(cov[0, 0]) / z.size)
    assert np.all(np.abs(mean[0, 0] - x.mean(0)) < 5 * se)
    np.testing.assert_allclose(cov[0, 0], np.cov(x.T), rtol=0.03, atol=0.05)


def test_bad_inputs_raise():
    pivot = _pivot("full")
    draws = {"weights": np.ones((1, 2, 3)) / 3, "means": np.zeros((1, 2, 3, 2)), "covariances": np.zeros((1, 2, 3, 2))}
    with pytest.raises(ValueError, match="covariances"):
        align_draws(draws, pivot, "full")
    with pytest.raises(ValueError, match="lacks"):
        align_draws({"weights": draws["weights"]}, pivot, "full")
    with pytest.raises(ValueError, match="cost"):
        assignment_costs(draws, pivot, "diag", cost="euclid")
    with pytest.raises(ValueError, match="permutations"):
        permute_draws({**draws, "covariances": np.ones((1, 2, 3, 2))}, np.zeros((1, 2)), "diag")
    # not a permutation (component 0 three times): refused, not duplicated silently
    with pytest.raises(ValueError, match="permutations must hold a permutation of 0 .. 2"):
        permute_draws({**draws, "covariances": np.ones((1, 2, 3, 2))}, np.zeros((1, 2, 3), int), "diag")
    with pytest.raises(ValueError, match="feature must index one of the 2 features, got 5"):  # an IndexError
        invariant_summaries({**draws, "covariances": np.ones((1, 2, 3, 2))}, "diag", feature=5)


def test_joint_kl_cost_keeps_filled_components_on_filled_labels():
    """Draws holding one filled component (weight 1) and empty ones (weight 0, parameters drawn
    far away, as a wide prior draws them): the weight-aware cost puts the filled component on the
    pivot's filled label whatever the empty ones look like; the plain KL cost, which ignores the
    weights, matches the far empty components first and moves the filled one off it."""
    pivot = GMMParams(np.array([1.0, 0.0, 0.0]), np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]]),
                      np.array([np.eye(2), np.eye(2), np.eye(2)]))
    draws = {"weights": np.array([[0.0, 1.0, 0.0]]),
             "means": np.array([[[6.0, 6.0], [0.2, -0.1], [40.0, -30.0]]]),
             "covariances": np.array([[np.eye(2) * 9.0, np.eye(2) * 1.1, np.eye(2) * 50.0]])}
    joint, perms = align_draws(draws, pivot, "full", cost="joint_kl")
    assert joint["weights"][0, 0] == 1.0 and perms[0, 0] == 1
    plain, _ = align_draws(draws, pivot, "full", cost="kl")
    assert plain["weights"][0, 0] == 0.0
    # in other units the same permutation (the log-determinant term is the same for every assignment then)
    scaled = {"weights": draws["weights"], "means": draws["means"] * 1e3, "covariances": draws["covariances"] * 1e6}
    pivot_scaled = GMMParams(pivot.weights, pivot.means * 1e3, pivot.covariances * 1e6)
    np.testing.assert_array_equal(align_draws(scaled, pivot_scaled, "full", cost="joint_kl")[1], perms)



def test_joint_kl_keeps_a_filled_component_off_a_label_of_weight_zero():
    """A pivot weight of exactly 0 was floored at float64's tiny (log -708), so a filled component
    went to that label (an infinite objective) wherever a finite placement cost more than 708."""
    pivot = GMMParams(np.array([1.0, 0.0]), np.array([[0.0], [40.0]]), np.array([[[1.0]], [[1.0]]]))
    draws = {"weights": np.array([[1.0, 0.0]]), "means": np.array([[[40.0], [0.0]]]),
             "covariances": np.array([[[[1.0]], [[1.0]]]])}
    aligned, perms = align_draws(draws, pivot, "full", cost="joint_kl")
    assert perms.tolist() == [[0, 1]] and aligned["weights"][0, 0] == 1.0


def test_joint_kl_lets_components_of_less_than_one_observation_go_anywhere():
    """A real Gibbs draw (two clusters merged in a stuck chain) whose empty component, weight 0.0022,
    is a prior draw far from the data: weighted by its weight it still cost more on its own label
    than moving cluster A off label 0, so label 0 received the empty component. With N = 300 rows
    its expected count, 0.66, is below one observation: it costs nothing anywhere, and A stays."""
    eye = np.eye(2)
    best = GMMParams(np.array([0.397, 0.300, 0.303]), np.array([[0.0, 0.0], [12.0, 0.0], [12.0, 5.0]]),
                     np.stack([eye, 0.25 * eye, 0.25 * eye]))
    draw = {"weights": np.array([[0.0022, 0.4209, 0.5769]]),  # empty, cluster A, clusters B and C merged
            "means": np.array([[[443.7, -315.1], [-0.2, 0.1], [12.0, 2.6]]]),
            "covariances": np.array([[0.5 * eye, eye, np.diag([0.25, 6.5])]])}
    unweighted = align_draws(draw, best, "full", cost="joint_kl")[1]
    assert unweighted[0, 0] == 0  # label 0 took the empty component
    perms = align_draws(draw, best, "full", cost="joint_kl", num_obs=300)[1]
    assert perms[0, 0] == 1  # cluster A keeps label 0

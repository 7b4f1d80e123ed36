"""Verification pairs and metrics: exact answers on hand-built data, properties on random data."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from face_pipeline.errors import FacePipelineError
from face_pipeline.verification import (
    PAIR_COLUMNS,
    VerificationError,
    cosine_similarity,
    kfold_accuracy,
    make_pairs,
    plot_roc,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_metrics,
)


def identities(sizes: dict[str, int]) -> dict[str, list[str]]:
    return {name: [f"{name}/{index}.jpg" for index in range(size)] for name, size in sizes.items()}


def separable(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched scores in [0.5, 1], unmatched in [-1, 0.2], 10 folds."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.uniform(0.5, 1.0, n), rng.uniform(-1.0, 0.2, n)])
    same = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    fold = np.tile(np.arange(10), 2 * n // 10)
    return scores, same, fold


def pair_keys(pairs: pd.DataFrame) -> list[frozenset]:
    return [frozenset(pair) for pair in zip(pairs["first"], pairs["second"], strict=True)]


def check_pairs(pairs: pd.DataFrame, folds: int) -> None:
    """What every make_pairs result must satisfy."""
    assert list(pairs.columns) == PAIR_COLUMNS
    assert pairs["same"].dtype == bool
    per_fold = pairs.groupby(["fold", "same"]).size()
    assert sorted(pairs["fold"].unique()) == list(range(folds))
    assert per_fold.nunique() == 1, per_fold  # every fold: equally many matched and unmatched
    assert pairs["same"].sum() * 2 == len(pairs)
    keys = pair_keys(pairs)
    assert len(set(keys)) == len(keys), "duplicate pair"
    assert (pairs["first"] != pairs["second"]).all(), "self pair"
    same_identity = pairs["first_identity"] == pairs["second_identity"]
    assert (same_identity == pairs["same"]).all()
    for side in ("first", "second"):  # the identity column names the image's own identity
        assert (pairs[side].str.split("/").str[0] == pairs[f"{side}_identity"]).all()


# --------------------------------------------------------------------------- make_pairs


def test_make_pairs_balanced_folds_without_duplicates():
    pairs = make_pairs(identities({f"id{i}": 3 + i % 4 for i in range(30)}), n_pairs=400, folds=10)
    assert len(pairs) == 400
    check_pairs(pairs, folds=10)
    assert (pairs.groupby(["fold", "same"]).size() == 20).all()


def test_make_pairs_with_few_identities_lists_identity_pairs_in_turns():
    """Ten identities: 45 identity pairs for 300 unmatched pairs, so each is used six or seven times."""
    pairs = make_pairs(identities({f"id{i}": 10 for i in range(10)}), n_pairs=600, folds=10, seed=3)
    check_pairs(pairs, folds=10)
    unmatched = pairs[~pairs["same"]]
    per_identity_pair = Counter(
        frozenset(pair)
        for pair in zip(unmatched["first_identity"], unmatched["second_identity"], strict=True)
    )
    assert len(per_identity_pair) == 45
    assert set(per_identity_pair.values()) == {6, 7}


def test_make_pairs_is_deterministic_for_a_seed():
    images = identities({f"id{i}": 2 + i % 5 for i in range(25)})
    first = make_pairs(images, n_pairs=200, folds=10, seed=7)
    again = make_pairs(dict(reversed(images.items())), n_pairs=200, folds=10, seed=7)
    other = make_pairs(images, n_pairs=200, folds=10, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert set(pair_keys(first)) != set(pair_keys(other))


def test_make_pairs_spreads_matched_pairs_round_robin():
    """Two identities with 780 possible pairs each do not crowd out eight with 6 each."""
    sizes = {"big1": 40, "big2": 40} | {f"small{i}": 4 for i in range(8)}
    even = make_pairs(identities(sizes), n_pairs=120, folds=10)
    assert set(even[even["same"]]["first_identity"].value_counts()) == {6}  # 60 over 10 identities

    pairs = make_pairs(identities(sizes), n_pairs=200, folds=10)
    counts = pairs[pairs["same"]]["first_identity"].value_counts()
    assert all(counts[f"small{i}"] == 6 for i in range(8))  # all they have
    assert counts["big1"] == counts["big2"] == (100 - 48) // 2


def test_make_pairs_uses_single_image_identities_in_unmatched_pairs():
    sizes = {"pair": 2} | {f"single{i}": 1 for i in range(20)}
    pairs = make_pairs(identities(sizes), n_pairs=2, folds=1)
    check_pairs(pairs, folds=1)
    assert len(pairs) == 2
    unmatched = pairs[~pairs["same"]].iloc[0]
    assert {unmatched["first_identity"], unmatched["second_identity"]} != {"pair"}


def test_make_pairs_trims_and_warns_when_identities_are_small(caplog):
    images = identities({f"id{i}": 3 for i in range(5)})  # 15 matched pairs possible
    with caplog.at_level(logging.WARNING, logger="face_pipeline.verification"):
        pairs = make_pairs(images, n_pairs=600, folds=10)
    check_pairs(pairs, folds=10)
    assert len(pairs) == 20  # 15 trimmed to 10 per side
    assert "made 20 verification pairs instead of the 600 asked" in caplog.text


def test_make_pairs_trims_to_the_unmatched_pairs_available(caplog):
    images = identities({"many": 30, "one": 1})  # 435 matched but only 30 unmatched pairs
    with caplog.at_level(logging.WARNING, logger="face_pipeline.verification"):
        pairs = make_pairs(images, n_pairs=600, folds=10)
    check_pairs(pairs, folds=10)
    assert len(pairs) == 60
    assert "instead of the 600 asked" in caplog.text


def test_make_pairs_does_not_warn_when_it_makes_what_was_asked(caplog):
    with caplog.at_level(logging.WARNING, logger="face_pipeline.verification"):
        make_pairs(identities({f"id{i}": 5 for i in range(10)}), n_pairs=100, folds=10)
    assert not caplog.records


@pytest.mark.parametrize(
    ("sizes", "n_pairs", "folds", "message"),
    [
        ({"only": 10}, 100, 10, r"holdout has 1 identity \(only\): open-set verification needs at least two"),
        ({}, 100, 10, r"holdout has 0 identities \(none with images\)"),
        ({"a": 5, "b": 0}, 100, 10, r"holdout has 1 identity \(a\)"),
        ({f"id{i}": 1 for i in range(8)}, 100, 10, r"no identity has two or more images \(8 identities"),
        (
            {"a": 2, "b": 2, "c": 2},
            100,
            10,
            r"give only 3 matched and 12 unmatched pairs, fewer than folds=10",
        ),
        ({f"id{i}": 5 for i in range(10)}, 19, 10, r"n_pairs=19 is fewer than 2 x folds=10"),
        ({f"id{i}": 5 for i in range(10)}, 100, 0, r"folds=0 must be at least 1"),
    ],
)
def test_make_pairs_errors_name_the_problem(sizes, n_pairs, folds, message):
    with pytest.raises(VerificationError, match=message) as raised:
        make_pairs(identities(sizes), n_pairs=n_pairs, folds=folds)
    assert isinstance(raised.value, FacePipelineError)
    assert "\n" not in str(raised.value)


def test_make_pairs_on_real_orl_faces(orl_faces):
    folders = sorted((path for path in orl_faces.iterdir() if path.is_dir()), key=lambda p: int(p.name[1:]))
    images = {folder.name: [str(path) for path in folder.glob("*.pgm")] for folder in folders[:10]}
    assert all(len(paths) == 10 for paths in images.values())

    pairs = make_pairs(images, n_pairs=600, folds=10, seed=0)
    assert len(pairs) == 600
    assert (pairs.groupby(["fold", "same"]).size() == 30).all()
    keys = pair_keys(pairs)
    assert len(set(keys)) == 600
    assert (pairs["first"] != pairs["second"]).all()
    for side in ("first", "second"):
        parents = pairs[side].map(lambda path: path.split("/")[-2])
        assert (parents == pairs[f"{side}_identity"]).all()
    assert ((pairs["first_identity"] == pairs["second_identity"]) == pairs["same"]).all()
    assert set(pairs[pairs["same"]]["first_identity"].value_counts()) == {30}  # 45 possible each


# --------------------------------------------------------------------------- cosine


def test_cosine_similarity_values_and_zero_vectors():
    first = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    second = np.array([[0.0, 2.0], [-2.0, -2.0], [1.0, 1.0], [6.0, 8.0]], dtype=np.float32)
    cosine = cosine_similarity(first, second)
    assert cosine.dtype == np.float64
    np.testing.assert_allclose(cosine, [0.0, -1.0, 0.0, 1.0], atol=1e-12)
    assert not np.isnan(cosine_similarity(np.zeros((2, 3)), np.zeros((2, 3)))).any()


def test_cosine_similarity_rejects_mismatched_shapes():
    with pytest.raises(VerificationError, match=r"two \(n, d\) arrays of the same shape"):
        cosine_similarity(np.ones((3, 4)), np.ones((3, 5)))


# --------------------------------------------------------------------------- metrics


def test_separable_scores_are_perfect():
    scores, same, fold = separable()
    assert kfold_accuracy(scores, same, fold)["accuracy"] == 1.0
    assert roc_auc(scores, same) == 1.0
    assert tar_at_far(scores, same, far=1e-3)["tar"] == 1.0


def test_identical_distributions_give_auc_near_half():
    rng = np.random.default_rng(1)
    same = np.repeat([True, False], 200)
    aucs = [roc_auc(rng.normal(size=400), same) for _ in range(200)]  # one score distribution for both
    assert abs(np.mean(aucs) - 0.5) < 0.01
    assert min(aucs) > 0.35
    assert max(aucs) < 0.65


def test_roc_auc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(20):
        same = rng.random(300) < 0.4
        scores = np.round(rng.normal(loc=same * 0.5, scale=1.0), 1)  # many ties
        matched, unmatched = scores[same][:, None], scores[~same][None, :]
        expected = (matched > unmatched).mean() + 0.5 * (matched == unmatched).mean()
        assert roc_auc(scores, same) == pytest.approx(expected, abs=1e-12)


def test_roc_curve_runs_from_origin_to_one_one_monotonically():
    rng = np.random.default_rng(3)
    same = rng.random(500) < 0.5
    scores = np.round(rng.normal(loc=same * 1.0), 1)
    fpr, tpr, thresholds = roc_curve(scores, same)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert (np.diff(fpr) >= 0).all()
    assert (np.diff(tpr) >= 0).all()
    assert (np.diff(thresholds) < 0).all()
    assert len(fpr) == len(np.unique(scores)) + 1  # one point per distinct score
    for rate_f, rate_t, threshold in zip(fpr, tpr, thresholds, strict=True):
        accepted = scores > threshold  # each point is what score > threshold gives
        assert rate_t == accepted[same].mean()
        assert rate_f == accepted[~same].mean()


def test_roc_curve_tie_between_classes_is_one_diagonal_step():
    fpr, tpr, thresholds = roc_curve([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [0.9, 0.5, 0.1, -np.inf])
    assert roc_auc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == 0.875


def test_tar_at_far_on_hand_built_scores():
    unmatched = np.arange(10) / 10  # 0.0 .. 0.9
    matched = np.array([0.95, 0.85, 0.75, 0.5, 0.3])
    scores = np.concatenate([matched, unmatched])
    same = np.concatenate([np.ones(5, bool), np.zeros(10, bool)])

    one_false_accept = tar_at_far(scores, same, far=0.1)
    assert one_false_accept == {
        "tar": 0.4,  # 0.95 and 0.85 are above 0.8
        "threshold": 0.8,
        "far": 0.1,  # only 0.9
        "unmatched": 10,
        "resolution": 0.1,
    }
    none_allowed = tar_at_far(scores, same, far=0.05)  # below 1/10: no false accept at all
    assert (none_allowed["tar"], none_allowed["threshold"], none_allowed["far"]) == (0.2, 0.9, 0.0)
    assert tar_at_far(scores, same, far=0.3)["threshold"] == 0.6


def test_tar_at_far_rejects_a_tie_at_the_threshold():
    scores = [0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2, 0.95, 0.8]
    same = [False] * 10 + [True, True]
    result = tar_at_far(scores, same, far=0.1)  # one false accept allowed, but the top two tie
    assert (result["threshold"], result["far"], result["tar"]) == (0.9, 0.0, 0.5)


def test_tar_at_far_counts_exactly_at_round_rates():
    """1e-3 of 3000 unmatched pairs is 3 false accepts, despite 1e-3 * 3000 in floating point."""
    unmatched = np.linspace(-1, 0.5, 3000)
    scores = np.concatenate([unmatched, [0.6]])
    same = np.r_[np.zeros(3000, bool), True]
    result = tar_at_far(scores, same, far=1e-3)
    assert result["far"] == pytest.approx(1e-3)
    assert result["threshold"] == unmatched[-4]


def test_kfold_accuracy_fits_thresholds_on_the_training_folds_only():
    """Each fold alone is separable, but at a threshold that fails the other fold."""
    scores = [0.9, 0.8, 0.6, 0.7, 0.5, 0.4, 0.1, 0.2]
    same = [True, True, False, False, True, True, False, False]
    fold = [0, 0, 0, 0, 1, 1, 1, 1]
    result = kfold_accuracy(scores, same, fold)
    # Held-out fold 0 gets fold 1's gap midpoint (0.2 + 0.4) / 2, and vice versa (0.7 + 0.8) / 2.
    assert result["thresholds"] == pytest.approx([0.3, 0.75])
    assert result["fold_accuracies"] == [0.5, 0.5]  # fitting on the test fold would give 1.0
    assert result["accuracy"] == 0.5
    assert result["accuracy_std"] == 0.0


def test_kfold_accuracy_with_a_fixed_grid():
    scores, same, fold = separable()
    result = kfold_accuracy(scores, same, fold, thresholds=np.arange(-1.0, 1.0, 0.01))
    assert result["accuracy"] == 1.0
    assert all(0.2 <= threshold <= 0.5 for threshold in result["thresholds"])
    assert len(result["thresholds"]) == 10


def test_kfold_accuracy_of_noise_is_near_half():
    rng = np.random.default_rng(4)
    result = kfold_accuracy(rng.normal(size=2000), np.repeat([True, False], 1000), np.arange(2000) % 10)
    assert 0.45 < result["accuracy"] < 0.55


@pytest.mark.parametrize(
    ("scores", "same", "fold", "message"),
    [
        ([0.1, 0.2], [True, True], [0, 1], r"2 matched and 0 unmatched: verification metrics need both"),
        ([0.1, 0.2, 0.3], [True, False], [0, 1, 0], r"1-D and of one length"),
        ([0.1, np.nan], [True, False], [0, 1], r"NaN or infinite"),
        ([0.1, 0.2], [True, False], [0, 0], r"needs at least two"),
        ([0.1, 0.2], [True, False], [0], r"one fold number per pair"),
    ],
)
def test_kfold_accuracy_errors(scores, same, fold, message):
    with pytest.raises(VerificationError, match=message):
        kfold_accuracy(scores, same, fold)


def test_verification_metrics_is_json_safe():
    scores, same, fold = separable(n=100)
    metrics = verification_metrics(scores, same, fold, far=1e-2)
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    assert metrics["accuracy"] == metrics["auc"] == metrics["tar_at_far"] == 1.0
    assert (metrics["matched"], metrics["unmatched"]) == (100, 100)
    assert metrics["far_target"] == 0.01
    assert metrics["far_achieved"] <= 0.01
    assert metrics["far_resolution"] == 0.01
    assert len(metrics["thresholds"]) == 10
    assert metrics["mean_score_matched"] > 0.5 > metrics["mean_score_unmatched"]
    for key in ("accuracy", "accuracy_std", "auc", "far_achieved", "mean_score_matched"):
        assert type(metrics[key]) is float
    assert type(metrics["matched"]) is int


# --------------------------------------------------------------------------- plot


def test_plot_roc_draws_one_line_per_model_and_the_far_marker():
    scores, same, _ = separable()
    rng = np.random.default_rng(5)
    noise = rng.normal(size=600)
    curves = {
        "separable (AUC 1.000)": roc_curve(scores, same)[:2],
        f"noise (AUC {roc_auc(noise, same):.3f})": roc_curve(noise, same)[:2],
    }
    figure = plot_roc(curves, far=1e-3)
    assert isinstance(figure, Figure)
    (axes,) = figure.axes
    assert len(axes.lines) == 3
    assert axes.get_xscale() == "log"
    assert axes.get_xlim()[0] > 0
    assert axes.get_title()
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels[:2] == list(curves)
    far_line = axes.lines[-1]
    assert far_line.get_linestyle() == ":"
    assert set(far_line.get_xdata()) == {1e-3}
    figure.savefig(io.BytesIO(), format="png")


def test_plot_roc_needs_a_curve():
    with pytest.raises(VerificationError, match="plot_roc got no curves"):
        plot_roc({})

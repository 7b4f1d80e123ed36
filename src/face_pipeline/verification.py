"""Open-set face verification: LFW-style pairs and the metrics computed on them.

The evaluation follows insightface's ``eval/verification.py`` (``calculate_roc`` and
``calculate_val``): 10-fold accuracy with the threshold chosen on the other nine folds,
and the true-accept rate at a fixed false-accept rate. Scores here are cosine
similarities, so higher means "same person", and a pair is predicted "same" when its
score is strictly greater than the threshold (``score > threshold``) everywhere in this
module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from face_pipeline.errors import FacePipelineError
from face_pipeline.labels import natural_key

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["first", "second", "first_identity", "second_identity", "same", "fold"]
_MAX_NAMES_SHOWN = 5


class VerificationError(FacePipelineError):
    """The identities, pairs or scores cannot give the verification evaluation asked for."""


# --------------------------------------------------------------------------- pairs


def make_pairs(
    images_by_identity: dict[str, list[str]], n_pairs: int, folds: int = 10, seed: int = 0
) -> pd.DataFrame:
    """Matched and unmatched image pairs split into ``folds`` folds, as LFW's 10 x (300 + 300).

    Half the pairs are matched (two different images of one identity), half unmatched
    (images of two different identities); no pair appears twice, and every fold holds
    equally many of each. Matched pairs are taken round-robin over the identities, so
    an identity with many images gives no more pairs than one with few until the small
    ones run out; unmatched pairs are spread the same way over pairs of identities.
    When the identities give fewer pairs than asked, all that fit are used and trimmed
    so each side divides by ``folds``, with a warning. The result depends only on the
    contents of ``images_by_identity`` and ``seed``, not on its order.
    """
    if folds < 1:
        raise VerificationError(f"folds={folds} must be at least 1: pass folds=10 for LFW-style folds")
    if n_pairs < 2 * folds:
        raise VerificationError(
            f"n_pairs={n_pairs} is fewer than 2 x folds={folds}: every fold needs at least one matched "
            f"and one unmatched pair; raise n_pairs or lower folds"
        )
    identities, images = _clean_identities(images_by_identity)
    _check_identities(identities, images)

    sizes = np.array([len(paths) for paths in images], dtype=np.int64)
    matched_available = int((sizes * (sizes - 1) // 2).sum())
    unmatched_available = int((sizes.sum() ** 2 - (sizes**2).sum()) // 2)
    possible = min(n_pairs // 2, matched_available, unmatched_available)
    per_side = possible - possible % folds
    if per_side < folds:
        raise VerificationError(
            f"the {len(identities)} identities give only {matched_available} matched and "
            f"{unmatched_available} unmatched pairs, fewer than folds={folds} per side: "
            f"add identities with more images or lower folds"
        )
    if 2 * per_side != n_pairs:
        logger.warning(
            "made %d verification pairs instead of the %d asked: the %d identities give %d matched and "
            "%d unmatched pairs, %d per side used so each of the %d folds holds %d + %d",
            2 * per_side,
            n_pairs,
            len(identities),
            matched_available,
            unmatched_available,
            per_side,
            folds,
            per_side // folds,
            per_side // folds,
        )

    rng = np.random.default_rng(seed)
    matched = _matched_pairs(images, per_side, rng)
    unmatched = _unmatched_pairs(images, per_side, rng)
    table = pd.concat(
        [
            _pair_table(identities, images, matched, same=True, folds=folds, rng=rng),
            _pair_table(identities, images, unmatched, same=False, folds=folds, rng=rng),
        ],
        ignore_index=True,
    )
    table = table.sort_values(["fold", "same"], ascending=[True, False], kind="stable")
    return table.reset_index(drop=True)[PAIR_COLUMNS]


def _clean_identities(images_by_identity: dict[str, list[str]]) -> tuple[list[str], list[list[str]]]:
    """Identities with at least one image, in natural order, each with its distinct paths sorted."""
    identities: list[str] = []
    images: list[list[str]] = []
    for identity in sorted(images_by_identity, key=lambda name: natural_key(str(name))):
        paths = sorted({str(path) for path in images_by_identity[identity]})
        if paths:
            identities.append(str(identity))
            images.append(paths)
    return identities, images


def _check_identities(identities: list[str], images: list[list[str]]) -> None:
    count = len(identities)
    if count < 2:
        names = ", ".join(identities) if identities else "none with images"
        noun = "identity" if count == 1 else "identities"
        raise VerificationError(
            f"holdout has {count} {noun} ({names}): open-set verification needs at least two "
            f"identities with images; hold out more identities"
        )
    if all(len(paths) < 2 for paths in images):
        shown = ", ".join(identities[:_MAX_NAMES_SHOWN]) + (", ..." if count > _MAX_NAMES_SHOWN else "")
        raise VerificationError(
            f"no identity has two or more images ({count} identities with one image each: {shown}): "
            f"matched pairs need two images of one person; hold out identities with more images"
        )


def _round_robin_counts(capacity: np.ndarray, total: int) -> np.ndarray:
    """How many items each group gives when the groups, in order, take turns giving one.

    Groups drop out of the turns once they are empty; ``total`` must not exceed
    ``capacity.sum()``. Computed as full rounds (a water level) plus one partial round.
    """
    low, high = 0, int(capacity.max())
    while low < high:  # the largest number of full rounds that does not overshoot
        middle = (low + high + 1) // 2
        if int(np.minimum(capacity, middle).sum()) <= total:
            low = middle
        else:
            high = middle - 1
    counts = np.minimum(capacity, low)
    remainder = total - int(counts.sum())
    counts[np.flatnonzero(capacity > low)[:remainder]] += 1
    return counts


def _matched_pairs(images: list[list[str]], total: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` distinct matched pairs as rows (identity, image, identity, image)."""
    sizes = np.array([len(paths) for paths in images], dtype=np.int64)
    order = rng.permutation(len(images))
    counts = _round_robin_counts(sizes[order] * (sizes[order] - 1) // 2, total)
    rows = []
    for identity, count in zip(order, counts, strict=True):
        if count == 0:
            continue
        first, second = np.triu_indices(int(sizes[identity]), k=1)
        picked = rng.choice(len(first), size=int(count), replace=False)
        column = np.full(int(count), identity)
        rows.append(np.column_stack([column, first[picked], column, second[picked]]))
    return np.concatenate(rows)


def _unmatched_pairs(images: list[list[str]], total: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` distinct unmatched pairs as rows (identity, image, identity, image).

    With more identity pairs than pairs needed, each identity pair is used at most
    once and never listed in full (there are n(n-1)/2 of them); otherwise every
    identity pair is listed and they take turns as the identities do for matched pairs.
    """
    sizes = np.array([len(paths) for paths in images], dtype=np.int64)
    order = rng.permutation(len(images))
    identity_pairs = len(images) * (len(images) - 1) // 2
    if total <= identity_pairs:
        first, second = _triangle_pair(rng.choice(identity_pairs, size=total, replace=False))
        first, second = order[first], order[second]
        return np.column_stack(
            [first, rng.integers(sizes[first]), second, rng.integers(sizes[second])]
        ).astype(np.int64)

    first, second = np.triu_indices(len(images), k=1)
    shuffled = rng.permutation(identity_pairs)
    first, second = order[first[shuffled]], order[second[shuffled]]
    counts = _round_robin_counts(sizes[first] * sizes[second], total)
    rows = []
    for a, b, count in zip(first, second, counts, strict=True):
        if count == 0:
            continue
        picked = rng.choice(int(sizes[a] * sizes[b]), size=int(count), replace=False)
        rows.append(
            np.column_stack(
                [np.full(int(count), a), picked // sizes[b], np.full(int(count), b), picked % sizes[b]]
            )
        )
    return np.concatenate(rows)


def _triangle_pair(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invert ``index = b(b-1)/2 + a`` for ``0 <= a < b``: the index of a pair in the strict triangle."""
    index = np.asarray(index, dtype=np.int64)
    second = np.floor((1 + np.sqrt(1 + 8 * index.astype(np.float64))) / 2).astype(np.int64)
    second -= second * (second - 1) // 2 > index  # float rounding may land one too high
    second += (second + 1) * second // 2 <= index  # ... or one too low
    return index - second * (second - 1) // 2, second


def _pair_table(
    identities: list[str],
    images: list[list[str]],
    pairs: np.ndarray,
    *,
    same: bool,
    folds: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One row per pair, in a random order, cut into ``folds`` equal consecutive folds."""
    pairs = pairs[rng.permutation(len(pairs))]
    return pd.DataFrame(
        {
            "first": [images[a][i] for a, i in zip(pairs[:, 0], pairs[:, 1], strict=True)],
            "second": [images[b][j] for b, j in zip(pairs[:, 2], pairs[:, 3], strict=True)],
            "first_identity": [identities[a] for a in pairs[:, 0]],
            "second_identity": [identities[b] for b in pairs[:, 2]],
            "same": np.full(len(pairs), same, dtype=bool),
            "fold": (np.arange(len(pairs)) * folds // len(pairs)).astype(np.int64),
        }
    )


# --------------------------------------------------------------------------- scores


def cosine_similarity(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays as float64; a zero vector scores 0 against anything."""
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.ndim != 2 or first.shape != second.shape:
        raise VerificationError(
            f"cosine_similarity needs two (n, d) arrays of the same shape, got {first.shape} and "
            f"{second.shape}: pass one embedding row per pair on each side"
        )
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    dots = np.einsum("ij,ij->i", first, second)
    cosine = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.clip(cosine, -1.0, 1.0)


def _scores_and_labels(scores: Sequence[float], same: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same)
    if scores.ndim != 1 or scores.shape != same.shape:
        raise VerificationError(
            f"scores and same must be 1-D and of one length, got shapes {scores.shape} and {same.shape}: "
            f"pass one score and one label per pair"
        )
    if not np.isfinite(scores).all():
        raise VerificationError(
            f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite: check the embeddings"
        )
    if same.dtype != bool and not np.isin(same, (0, 1)).all():
        raise VerificationError("same must hold booleans (or 0/1): True where both images show one person")
    same = same.astype(bool)
    matched = int(same.sum())
    if matched == 0 or matched == len(same):
        raise VerificationError(
            f"the pairs hold {matched} matched and {len(same) - matched} unmatched: verification "
            f"metrics need both kinds of pair"
        )
    return scores, same


def _threshold_accuracy(scores: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of ``score > t`` for every ``t``, from sorted scores instead of an n x t matrix."""
    matched = np.sort(scores[same])
    unmatched = np.sort(scores[~same])
    accepted = len(matched) - np.searchsorted(matched, thresholds, side="right")
    rejected = np.searchsorted(unmatched, thresholds, side="right")
    return (accepted + rejected) / len(scores)


def _candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Every distinct outcome of ``score > t`` on these scores: accept all, then each midpoint, then none."""
    distinct = np.unique(scores)
    below = np.nextafter(distinct[0], -np.inf)
    return np.concatenate([[below], (distinct[:-1] + distinct[1:]) / 2, distinct[-1:]])


def _best_threshold(scores: np.ndarray, same: np.ndarray, thresholds: np.ndarray | None) -> float:
    """The threshold with the best accuracy on these pairs.

    Ties go to the middle one of the tied candidates, so on a separable set the
    threshold sits in the middle of the gap instead of touching either side.
    """
    candidates = _candidate_thresholds(scores) if thresholds is None else np.sort(thresholds)
    accuracy = _threshold_accuracy(scores, same, candidates)
    best = np.flatnonzero(accuracy == accuracy.max())
    return float(candidates[best[len(best) // 2]])


def kfold_accuracy(
    scores: Sequence[float],
    same: Sequence[bool],
    fold: Sequence[int],
    thresholds: Sequence[float] | None = None,
) -> dict:
    """Mean accuracy over folds, each scored with the threshold fitted on the other folds.

    A pair is predicted "same" when ``score > threshold``. By default the candidates
    are the midpoints between consecutive distinct training scores (plus accept-all
    and reject-all), which hold every distinct training accuracy, so a separable
    training set is fitted exactly; pass ``thresholds`` to search a fixed grid
    instead, as insightface does. The held-out fold never influences its threshold.
    Returns ``accuracy``, ``accuracy_std`` (population std over folds), the chosen
    ``thresholds`` and the ``fold_accuracies``, both in sorted fold order.
    """
    scores, same = _scores_and_labels(scores, same)
    fold = np.asarray(fold)
    if fold.shape != scores.shape:
        raise VerificationError(
            f"fold has shape {fold.shape} but scores {scores.shape}: pass one fold number per pair"
        )
    fold_ids = np.unique(fold)
    if len(fold_ids) < 2:
        raise VerificationError(
            f"the pairs hold {len(fold_ids)} fold: k-fold accuracy needs at least two; "
            f"make pairs with folds >= 2"
        )
    grid = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if grid is not None and (grid.ndim != 1 or len(grid) == 0):
        raise VerificationError("thresholds must be a non-empty 1-D list of candidates, or None for all")

    chosen, accuracies = [], []
    for held_out in fold_ids:
        train = fold != held_out
        threshold = _best_threshold(scores[train], same[train], grid)
        test = ~train
        accuracies.append(float(np.mean((scores[test] > threshold) == same[test])))
        chosen.append(threshold)
    return {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "thresholds": chosen,
        "fold_accuracies": accuracies,
    }


def tar_at_far(scores: Sequence[float], same: Sequence[bool], far: float = 1e-3) -> dict:
    """True-accept rate at the lowest threshold whose false-accept rate is at most ``far``.

    A pair is accepted when ``score > threshold``. With ``n`` unmatched pairs at most
    ``floor(far * n)`` of them may be accepted, so the threshold is the unmatched score
    of that rank (ties with it are all rejected) and the achieved ``far`` can be below
    the target. The rate moves in steps of ``resolution = 1 / n``: with fewer than
    ``1 / far`` unmatched pairs the target allows no false accept at all, and the
    threshold is the highest unmatched score.
    """
    if not 0 <= far < 1:
        raise VerificationError(f"far={far} must be in [0, 1): it is the share of unmatched pairs accepted")
    scores, same = _scores_and_labels(scores, same)
    unmatched = np.sort(scores[~same])[::-1]
    allowed = int(np.floor(far * len(unmatched) + 1e-9))  # 1e-3 * 3000 must allow 3, not 2
    threshold = float(unmatched[allowed])
    return {
        "tar": float(np.mean(scores[same] > threshold)),
        "threshold": threshold,
        "far": float(np.mean(unmatched > threshold)),
        "unmatched": len(unmatched),
        "resolution": 1.0 / len(unmatched),
    }


def roc_curve(scores: Sequence[float], same: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-accept rates of ``score > threshold``, one point per distinct score.

    ``thresholds`` falls from the highest score (nothing accepted: the point (0, 0))
    through every distinct score to ``-inf`` (everything accepted: (1, 1)). Tied
    scores move together, so a tie of matched and unmatched pairs is one diagonal step.
    """
    scores, same = _scores_and_labels(scores, same)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same[order]
    # The last pair of each run of equal scores: accepting down to that score accepts the whole run.
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    run_ends = np.append(run_ends, len(sorted_scores) - 1)
    true_accepts = np.cumsum(sorted_same)[run_ends]
    false_accepts = np.cumsum(~sorted_same)[run_ends]
    tpr = np.concatenate([[0.0], true_accepts / true_accepts[-1]])
    fpr = np.concatenate([[0.0], false_accepts / false_accepts[-1]])
    thresholds = np.concatenate([sorted_scores[run_ends], [-np.inf]])
    return fpr, tpr, thresholds


def roc_auc(scores: Sequence[float], same: Sequence[bool]) -> float:
    """Area under the ROC curve: P(matched score > unmatched score) + 0.5 P(equal), the Mann-Whitney U."""
    fpr, tpr, _ = roc_curve(scores, same)
    return float(np.trapezoid(tpr, fpr))


def verification_metrics(
    scores: Sequence[float], same: Sequence[bool], fold: Sequence[int], far: float = 1e-3
) -> dict:
    """Every metric above in one JSON-safe dict of plain floats, ints and lists."""
    scores, same = _scores_and_labels(scores, same)
    accuracy = kfold_accuracy(scores, same, fold)
    at_far = tar_at_far(scores, same, far)
    return {
        "accuracy": accuracy["accuracy"],
        "accuracy_std": accuracy["accuracy_std"],
        "thresholds": accuracy["thresholds"],
        "tar_at_far": at_far["tar"],
        "tar_threshold": at_far["threshold"],
        "far_target": float(far),
        "far_achieved": at_far["far"],
        "far_resolution": at_far["resolution"],
        "auc": roc_auc(scores, same),
        "matched": int(same.sum()),
        "unmatched": int((~same).sum()),
        "mean_score_matched": float(scores[same].mean()),
        "mean_score_unmatched": float(scores[~same].mean()),
    }


# --------------------------------------------------------------------------- plot


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], far: float = 1e-3) -> Figure:
    """One ROC line per model (name -> (fpr, tpr)) on a log FAR axis, with a dotted line at ``far``.

    A log axis cannot show FAR = 0, so zeros are drawn at a floor one decade below the
    smallest positive FAR (or ``far``), at the left edge. Put the AUC in the name if wanted.
    """
    if not curves:
        raise VerificationError(
            "plot_roc got no curves: pass {model name: (fpr, tpr)} for at least one model"
        )
    rates = [np.asarray(fpr, dtype=np.float64) for fpr, _ in curves.values()]
    positive = [float(rate[rate > 0].min()) for rate in rates if (rate > 0).any()]
    smallest = min([*positive, far if far > 0 else 1.0])
    floor = 10.0 ** (np.floor(np.log10(smallest)) - 1)

    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axes = figure.add_subplot()
    for (name, (_, tpr)), rate in zip(curves.items(), rates, strict=True):
        axes.plot(np.clip(rate, floor, 1.0), tpr, label=name)
    if far > 0:
        axes.axvline(far, color="grey", linestyle=":", label=f"FAR = {far:g}")
    axes.set_xscale("log")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false accept rate (FAR)")
    axes.set_ylabel("true accept rate (TAR)")
    axes.set_title("Open-set verification ROC (held-out identities)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    return figure

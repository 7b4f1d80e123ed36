"""Split the identities 1:1:1 between server, client1 and client2, plus held-out identities.

Parties never share an identity. Inside each training party every class keeps a
share of its images back for closed-set accuracy; the held-out identities keep all
their images for open-set (verification) evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from face_pipeline.datasets import ImageFolder
from face_pipeline.errors import FacePipelineError
from face_pipeline.labels import natural_key

logger = logging.getLogger(__name__)

TRAINING_PARTIES = ("server", "client1", "client2")
HOLDOUT = "holdout"
TABLE_COLUMNS = ["key", "label", "party", "split", "source_path", "dest_path"]


class PartitionError(FacePipelineError):
    """The clean data or the partition parameters cannot give the partition asked for."""


def partition_identities(
    clean_manifest: pd.DataFrame, images: ImageFolder, params: dict
) -> tuple[dict[str, Path], pd.DataFrame, dict]:
    """Assign classes to parties and images to train/test.

    Returns ``{destination path: source file}`` for the partitioned image folder
    (hard links, see ImageFolderDataset), one table row per image and a summary.
    """
    per_party = int(params["classes_per_party"])
    holdout = int(params["holdout_classes"])
    min_images = int(params["min_images_per_class"])
    test_fraction = float(params["test_fraction"])
    seed = int(params["seed"])
    _check_params(per_party, holdout, min_images, test_fraction)

    counts = clean_manifest["label"].astype(str).value_counts()
    eligible = sorted(counts.index[counts >= min_images], key=natural_key)
    needed = len(TRAINING_PARTIES) * per_party + holdout
    if len(eligible) < needed:
        raise PartitionError(
            f"partition needs {needed} classes with at least min_images_per_class={min_images} images "
            f"({len(TRAINING_PARTIES)} x classes_per_party={per_party} + holdout_classes={holdout}), "
            f"but only {len(eligible)} of {len(counts)} classes have that many: lower classes_per_party, "
            f"holdout_classes or min_images_per_class in parameters_partition.yml"
        )

    rng = np.random.default_rng(seed)
    chosen = [eligible[index] for index in rng.permutation(len(eligible))[:needed]]
    parties = {
        party: sorted(chosen[i * per_party : (i + 1) * per_party], key=natural_key)
        for i, party in enumerate(TRAINING_PARTIES)
    }
    parties[HOLDOUT] = sorted(chosen[len(TRAINING_PARTIES) * per_party :], key=natural_key)

    labels = clean_manifest["label"].astype(str)
    picked = clean_manifest[labels.isin(chosen)].assign(label=labels).sort_values("path")
    by_label = dict(tuple(picked.groupby("label", sort=False)))
    rows: list[tuple] = []
    for party, party_labels in parties.items():
        for label in party_labels:
            group = by_label[label]
            paths = group["path"].astype(str).to_numpy()
            keys = group["key"].to_numpy()
            if party == HOLDOUT:
                splits = np.full(len(paths), "holdout", dtype=object)
            else:
                n_test = min(max(1, round(test_fraction * len(paths))), len(paths) - 1)
                splits = np.full(len(paths), "train", dtype=object)
                splits[rng.choice(len(paths), size=n_test, replace=False)] = "test"
            for key, source, split in zip(keys, paths, splits, strict=True):
                name = PurePosixPath(source).name
                dest = f"{party}/{label}/{name}" if party == HOLDOUT else f"{party}/{split}/{label}/{name}"
                rows.append((int(key), label, party, split, source, dest))

    table = pd.DataFrame(rows, columns=TABLE_COLUMNS).astype(
        {
            "key": "int64",
            "label": "string",
            "party": "string",
            "split": "string",
            "source_path": "string",
            "dest_path": "string",
        }
    )
    files = {dest: images.path(source) for _, _, _, _, source, dest in rows}
    summary = _summary(table, parties, params, len(eligible), len(counts))
    logger.info(
        "Partitioned %d of %d eligible classes (seed %d): %s",
        needed,
        len(eligible),
        seed,
        "; ".join(
            f"{party} {info['classes']} classes / {info['images']} images"
            for party, info in summary["parties"].items()
        ),
    )
    return files, table, summary


def _check_params(per_party: int, holdout: int, min_images: int, test_fraction: float) -> None:
    if per_party < 1 or holdout < 0:
        raise PartitionError(
            f"classes_per_party must be at least 1 and holdout_classes at least 0, "
            f"got {per_party} and {holdout}"
        )
    if min_images < 2:
        raise PartitionError(
            f"min_images_per_class must be at least 2 (one test and one training image), got {min_images}"
        )
    if not 0 < test_fraction < 1:
        raise PartitionError(f"test_fraction must be between 0 and 1, got {test_fraction}")


def _images_per_class(frame: pd.DataFrame) -> dict:
    counts = frame["label"].value_counts()
    if counts.empty:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": int(counts.min()), "median": float(counts.median()), "max": int(counts.max())}


def _summary(
    table: pd.DataFrame, parties: dict[str, list[str]], params: dict, eligible: int, classes: int
) -> dict:
    summary_parties = {}
    for party, labels in parties.items():
        rows = table[table["party"] == party]
        info = {
            "classes": len(labels),
            "images": len(rows),
            "images_per_class": _images_per_class(rows),
        }
        if party != HOLDOUT:
            info["train_images"] = int((rows["split"] == "train").sum())
            info["test_images"] = int((rows["split"] == "test").sum())
        info["labels"] = labels
        summary_parties[party] = info
    return {
        "seed": int(params["seed"]),
        "params": {
            key: params[key]
            for key in ("classes_per_party", "holdout_classes", "min_images_per_class", "test_fraction")
        },
        "classes_in_clean_manifest": classes,
        "eligible_classes": eligible,
        "unused_eligible_classes": eligible - sum(len(labels) for labels in parties.values()),
        "parties": summary_parties,
        "totals": {
            "classes": sum(len(labels) for labels in parties.values()),
            "images": len(table),
            "train_images": int((table["split"] == "train").sum()),
            "test_images": int((table["split"] == "test").sum()),
            "holdout_images": int((table["split"] == "holdout").sum()),
        },
    }

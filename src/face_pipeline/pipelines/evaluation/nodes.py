"""Closed-set top-1 per party, and open-set verification as insightface's verification does it.

Verification embeds the faces of the holdout identities (none of them trained
on), scores matched and unmatched pairs by cosine similarity and reports
10-fold accuracy, TAR at FAR=1e-3 and ROC-AUC, for every model on the same pairs.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from face_pipeline.datasets import ImageFolder
from face_pipeline.errors import FacePipelineError
from face_pipeline.verification import make_pairs, plot_roc, roc_curve, verification_metrics

logger = logging.getLogger(__name__)

HOLDOUT = "holdout"


def holdout_images(partitioned: ImageFolder) -> dict[str, list[str]]:
    """``{identity: [paths relative to the partition folder]}`` of the held-out identities."""
    folder = partitioned.path(HOLDOUT)
    if not folder.is_dir():
        raise FacePipelineError(f"{folder}: no holdout identities; run the partition pipeline first")
    return {
        identity.name: [f"{HOLDOUT}/{identity.name}/{face.name}" for face in sorted(identity.glob("*.jpg"))]
        for identity in sorted(folder.iterdir())
        if identity.is_dir()
    }


def make_verification_pairs(partitioned: ImageFolder, evaluation: dict) -> pd.DataFrame:
    """Matched and unmatched pairs of holdout faces in ``folds`` balanced folds."""
    pairs = make_pairs(
        holdout_images(partitioned), evaluation["pairs"], folds=evaluation["folds"], seed=evaluation["seed"]
    )
    logger.info(
        "%d verification pairs (%d matched) over %d holdout identities",
        len(pairs),
        int(pairs["same"].sum()),
        len(set(pairs["first_identity"]) | set(pairs["second_identity"])),
    )
    return pairs


def verify_model(model: Any, pairs: pd.DataFrame, partitioned: ImageFolder, evaluation: dict) -> dict:
    """The model's verification metrics on ``pairs``, with its ROC curve points."""
    from face_pipeline.models.evaluation import embed_faces

    faces = sorted(set(pairs["first"]) | set(pairs["second"]))
    index = {face: row for row, face in enumerate(faces)}
    embeddings = embed_faces(
        model,
        [str(partitioned.path(face)) for face in faces],
        batch_size=evaluation["batch_size"],
        flip=evaluation["flip"],
    )
    first = embeddings[pairs["first"].map(index).to_numpy()]
    second = embeddings[pairs["second"].map(index).to_numpy()]
    scores = np.sum(first * second, axis=1)  # the embeddings are unit vectors: this is the cosine
    same, fold = pairs["same"].to_numpy(), pairs["fold"].to_numpy()
    metrics = verification_metrics(scores, same, fold, far=evaluation["far"])
    fpr, tpr, _ = roc_curve(scores, same)
    logger.info(
        "%s: verification accuracy %.3f ± %.3f, TAR %.3f at FAR %g, AUC %.3f",
        model.name,
        metrics["accuracy"],
        metrics["accuracy_std"],
        metrics["tar_at_far"],
        evaluation["far"],
        metrics["auc"],
    )
    return {"model": model.name, **metrics, "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}


def evaluate_closed_set(
    *,
    partitioned: ImageFolder,
    server: Any,
    client1: Any,
    client2: Any,
    federated_parties: dict,
    centralized: Any,
    aggregation: dict,
    evaluation: dict,
) -> pd.DataFrame:
    """Top-1 on each party's held-out images of its own classes, for each kind of model.

    ``single party`` is the party's model from the training pipeline, ``federated``
    the global layers with the party's own head, ``centralized`` the pooled model
    (whose head knows every party's classes) scored on the same images.
    """
    from face_pipeline.models.evaluation import predict_classes
    from face_pipeline.models.inputs import list_class_folders

    single = {"server": server, "client1": client1, "client2": client2}
    parties = aggregation["parties"]
    _, _, pooled_classes = list_class_folders(*(partitioned.path(party) / "train" for party in parties))
    pooled_index = {name: index for index, name in enumerate(pooled_classes)}
    rows = []
    for party in parties:
        paths, labels, class_names = list_class_folders(partitioned.path(party) / "test")
        labels = np.asarray(labels)
        pooled_labels = np.asarray([pooled_index[class_names[label]] for label in labels])
        models = {
            "single party": (single.get(party), labels),
            "federated": (federated_parties[party]() if party in federated_parties else None, labels),
            "centralized": (centralized, pooled_labels),
        }
        for kind, (model, truth) in models.items():
            if model is None:
                continue
            predicted = predict_classes(model, paths, batch_size=evaluation["batch_size"])
            rows.append(
                {
                    "party": party,
                    "model": kind,
                    "top1": float(np.mean(predicted == truth)),
                    "test_images": len(paths),
                    "classes": len(class_names),
                }
            )
    return pd.DataFrame(rows, columns=["party", "model", "top1", "test_images", "classes"])


def write_evaluation_report(
    closed_set: pd.DataFrame, evaluation: dict, **verifications: dict
) -> tuple[str, dict, Figure]:
    """The markdown report, the same figures as JSON, and every model's ROC curve on one plot."""
    table = verification_table(verifications)
    curves = {
        f"{name} (AUC {result['auc']:.3f})": (
            np.asarray(result["roc"]["fpr"]),
            np.asarray(result["roc"]["tpr"]),
        )
        for name, result in verifications.items()
    }
    metrics = {
        "verification": {
            name: {key: value for key, value in result.items() if key != "roc"}
            for name, result in verifications.items()
        },
        "closed_set": closed_set.to_dict(orient="records"),
        "far_target": evaluation["far"],
    }
    return report_markdown(table, closed_set, evaluation), metrics, plot_roc(curves, far=evaluation["far"])


def verification_table(verifications: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": name,
                "architecture": result["model"],
                "accuracy": result["accuracy"],
                "accuracy_std": result["accuracy_std"],
                "tar_at_far": result["tar_at_far"],
                "auc": result["auc"],
                "pairs": result["matched"] + result["unmatched"],
            }
            for name, result in verifications.items()
        ]
    )


def report_markdown(table: pd.DataFrame, closed_set: pd.DataFrame, evaluation: dict) -> str:
    far = evaluation["far"]
    lines = [
        "# Evaluation",
        "",
        f"## Open set: verification on holdout identities ({evaluation['folds']}-fold, cosine similarity)",
        "",
        f"| model | architecture | accuracy | TAR @ FAR={far:g} | ROC-AUC | pairs |",
        "|---|---|---|---|---|---|",
        *(
            f"| {row.model} | {row.architecture} | {row.accuracy:.3f} ± {row.accuracy_std:.3f} | "
            f"{row.tar_at_far:.3f} | {row.auc:.3f} | {row.pairs} |"
            for row in table.itertuples()
        ),
        "",
        "`federated` is the global model after the last round, `centralized` the same architecture "
        "trained on the parties' pooled data, `server`/`client1`/`client2` each party's model trained "
        "on its own data alone.",
        "",
        "## Closed set: top-1 on each party's held-out images",
        "",
    ]
    if closed_set.empty:
        lines.append("No party models to score.")
    else:
        wide = closed_set.pivot(index="party", columns="model", values="top1")
        columns = list(wide.columns)
        lines += [
            "| party | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
            *(
                f"| {party} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |"
                for party, row in wide.iterrows()
            ),
        ]
    return "\n".join(lines) + "\n"

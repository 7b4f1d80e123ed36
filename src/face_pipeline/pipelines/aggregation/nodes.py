"""Federated rounds (FedAvg of the shared layers, a class head per party) and the pooled baseline.

Round 0 is the server's model from the ``training`` pipeline; rounds 1..R run
:func:`face_pipeline.models.federated.train_party_round` for every party and
average what they send back: in this process one party after another
(``engine: local``), or through Flower's simulation (``engine: flower``,
:mod:`face_pipeline.flower`), whose ClientApps call the same function. TensorFlow
is imported inside the nodes (see the training nodes for why).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from face_pipeline.datasets import ImageFolder
from face_pipeline.errors import FacePipelineError
from face_pipeline.flower.settings import ENGINES, flower_settings

logger = logging.getLogger(__name__)

WEIGHTINGS = ("images", "equal")
BATCH_NORM_MODES = ("shared", "local")  # as models.federated, which this module must not import early


def check_aggregation_params(aggregation: dict) -> None:
    """Refuse what cannot run before any training starts."""
    if not isinstance(aggregation["rounds"], int) or aggregation["rounds"] < 1:
        raise FacePipelineError(
            f"aggregation.rounds is {aggregation['rounds']!r}: it must be at least 1 "
            "(round 0 is the server's model from the training pipeline)"
        )
    if aggregation["local_epochs"] < 1:
        raise FacePipelineError(f"aggregation.local_epochs is {aggregation['local_epochs']!r}: at least 1")
    if not aggregation["parties"]:
        raise FacePipelineError("aggregation.parties is empty: name at least one party folder")
    for key, choices in (("batch_norm", BATCH_NORM_MODES), ("weighting", WEIGHTINGS)):
        if aggregation[key] not in choices:
            raise FacePipelineError(
                f"aggregation.{key} is {aggregation[key]!r}: choose one of {', '.join(choices)}"
            )
    engine = aggregation.get("engine", "local")
    if engine not in ENGINES:
        raise FacePipelineError(f"aggregation.engine is {engine!r}: choose one of {', '.join(ENGINES)}")
    flower_settings(aggregation)  # checked whichever the engine, so a switch to flower does not fail late


def round_zero(server_model: Any, training: dict) -> tuple[dict, dict, int]:
    """The server's model as round 0: the global shared weights, its own layers, its number of classes."""
    from face_pipeline.models.builders import CLASS_HEAD_LAYER
    from face_pipeline.models.federated import assign_weights, kept_weights, shared_weights
    from face_pipeline.models.training import build_model

    # The server's model must be what the training parameters build, or its weights mean nothing here.
    server_classes = server_model.get_layer(CLASS_HEAD_LAYER).output.shape[-1]
    global_weights = shared_weights(server_model)
    assign_weights(build_model(training, server_classes), global_weights, "server.party_model")
    return global_weights, kept_weights(server_model), server_classes


def run_federated_rounds(
    partitioned: ImageFolder, server_model: Any, training: dict, aggregation: dict
) -> tuple[Any, dict, dict, dict, pd.DataFrame, Figure]:
    """Round 0 from the server's model, then ``rounds`` rounds of local training and FedAvg.

    Returns the final global model (the shared layers, ending at the embedding),
    every round's global model, each party's final model (global layers with its
    own head), the round history, one row of metrics per round and party, and a plot.
    ``aggregation.engine`` says who runs the rounds; the outputs are the same.
    """
    from face_pipeline.models.federated import global_embedding_model, model_with_weights, weights_to_restore

    check_aggregation_params(aggregation)
    global_weights, server_kept, server_classes = round_zero(server_model, training)
    kept = {"server": server_kept}
    classes = {"server": server_classes}
    if aggregation.get("engine", "local") == "flower":
        from face_pipeline.flower.simulation import simulate_rounds

        folders = {party: partitioned.path(party) for party in aggregation["parties"]}
        result = simulate_rounds(folders, training, aggregation, global_weights, dict(kept))
        round_weights, history = result.round_weights, result.history
        kept.update(result.kept)
        classes.update(result.classes)
    else:
        round_weights, history = _local_rounds(
            partitioned, training, aggregation, global_weights, kept=kept, classes=classes
        )
    global_weights = round_weights[-1]
    rounds = {
        f"round_{number:02d}": functools.partial(global_embedding_model, training, weights)
        for number, weights in enumerate(round_weights)
    }
    party_models = {
        party: functools.partial(
            model_with_weights,
            training,
            global_weights,
            weights_to_restore(kept[party], aggregation["batch_norm"]),
            classes[party],
        )
        for party in aggregation["parties"]
        if party in kept
    }
    table = round_metrics_table(history)
    summary = {"params": aggregation, "training": training, "rounds": history}
    return (
        global_embedding_model(training, global_weights),
        rounds,
        party_models,
        summary,
        table,
        plot_rounds(table),
    )


def _local_rounds(
    partitioned: ImageFolder,
    training: dict,
    aggregation: dict,
    global_weights: dict,
    *,
    kept: dict,
    classes: dict,
) -> tuple[list[dict], list[dict]]:
    """``engine: local``: every party's round in this process, in the configured order.

    Updates ``kept`` and ``classes`` per party; returns every round's global weights
    (round 0 first) and the history.
    """
    from face_pipeline.models.federated import federated_average, train_party_round

    round_weights = [global_weights]
    history: list[dict] = []
    for round_number in range(1, aggregation["rounds"] + 1):
        started = time.perf_counter()
        updates = []
        for party in aggregation["parties"]:
            update = train_party_round(
                party,
                partitioned.path(party),
                global_weights,
                kept.get(party),
                training=training,
                federated=aggregation,
                round_number=round_number,
            )
            kept[party], classes[party] = update.kept, update.metrics["classes"]
            updates.append(update)
        global_weights = federated_average(
            [
                (u.party, u.shared, u.num_examples if aggregation["weighting"] == "images" else 1)
                for u in updates
            ]
        )
        round_weights.append(global_weights)
        history.append(
            {
                "round": round_number,
                "seconds": round(time.perf_counter() - started, 1),
                "parties": {u.party: u.metrics for u in updates},
            }
        )
        logger.info(
            "round %d/%d done in %.0fs: held-out top-1 %s",
            round_number,
            aggregation["rounds"],
            history[-1]["seconds"],
            ", ".join(f"{u.party} {u.metrics['closed_set_top1']:.3f}" for u in updates),
        )
    return round_weights, history


def round_metrics_table(history: list[dict]) -> pd.DataFrame:
    columns = ["closed_set_top1", "test_loss", "train_top1", "train_loss", "train_images", "train_seconds"]
    rows = [
        {"round": entry["round"], "party": party, **{key: metrics[key] for key in columns}}
        for entry in history
        for party, metrics in entry["parties"].items()
    ]
    return pd.DataFrame(rows, columns=["round", "party", *columns])


def plot_rounds(table: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(10, 4), layout="constrained")
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    for party, rows in table.groupby("party", sort=False):
        accuracy_axes.plot(rows["round"], rows["closed_set_top1"], marker="o", label=party)
        loss_axes.plot(rows["round"], rows["train_loss"], marker="o", label=party)
    rounds = table["round"].unique()
    accuracy_axes.set(title="held-out top-1 after local training", xlabel="round", ylim=(0, 1), xticks=rounds)
    loss_axes.set(title="training loss, last local epoch", xlabel="round", xticks=rounds)
    accuracy_axes.legend()
    loss_axes.legend()
    return figure


def centralized_epochs(training: dict, aggregation: dict) -> int:
    """As many epochs as the server's data gets in the federated run: round 0 plus every round."""
    if aggregation.get("centralized_epochs"):
        return aggregation["centralized_epochs"]
    return training["epochs"] + aggregation["rounds"] * aggregation["local_epochs"]


def train_centralized(partitioned: ImageFolder, training: dict, aggregation: dict) -> tuple[Any, dict, dict]:
    """The baseline federated learning is measured against: the parties' data pooled in one place."""
    import keras

    from face_pipeline.models.inputs import load_face_splits
    from face_pipeline.models.training import fit_face_model

    check_aggregation_params(aggregation)
    params = {**training, "epochs": centralized_epochs(training, aggregation)}
    keras.utils.set_random_seed(params["seed"])
    splits = load_face_splits([partitioned.path(party) for party in aggregation["parties"]], params)
    model, history, metrics = fit_face_model(
        "centralized", splits, params, Path(params["checkpoint_dir"]) / "centralized"
    )
    return model, history, {**metrics, "parties": aggregation["parties"]}

"""One party's federated round, and FedAvg of the shared layers.

Parties hold disjoint identities, so their class heads cannot be averaged: a head
column is one person. Everything before the layer named ``class_head`` (backbone
and embedding) is shared and averaged; the head stays with its party, and with
``batch_norm: local`` (FedBN) so do the party's batch-norm layers.

Nothing here knows about Kedro: the ``aggregation`` pipeline calls
:func:`train_party_round` in-process and a federated engine (Flower) can call the
same function on the party's own machine. Weights travel as ``{variable path:
numpy array}`` (``"conv1_conv/kernel"``), so a mismatch can name its layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from face_pipeline.errors import FacePipelineError
from face_pipeline.models.builders import CLASS_HEAD_LAYER, check_choice, embedding_model
from face_pipeline.models.inputs import FaceSplits, load_face_splits
from face_pipeline.models.training import EpochLog, build_model, closed_set_metrics, compile_model

logger = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]
BATCH_NORM_MODES = ("shared", "local")  # also checked up front by the aggregation pipeline


class AggregationError(FacePipelineError):
    """Party weights that cannot be averaged, or federated parameters that cannot run."""


@dataclass(frozen=True)
class PartyUpdate:
    """What a party sends back after a round, and what it keeps.

    ``shared`` is every weight before the class head (batch norm included, so the
    global model has statistics to evaluate with even under FedBN); ``kept`` is the
    party's own state for its next round: its class head and batch-norm layers.
    """

    party: str
    shared: Weights
    kept: Weights
    num_examples: int
    metrics: dict


def shared_weights(model: keras.Model) -> Weights:
    """Every weight of the layers before the class head, by variable path."""
    return {
        variable.path: keras.ops.convert_to_numpy(variable)
        for layer in model.layers
        if layer.name != CLASS_HEAD_LAYER
        for variable in layer.weights
    }


def kept_weights(model: keras.Model) -> Weights:
    """The class head and the batch-norm layers: what a party may keep to itself."""
    return {
        variable.path: keras.ops.convert_to_numpy(variable)
        for layer in model.layers
        if layer.name == CLASS_HEAD_LAYER or isinstance(layer, keras.layers.BatchNormalization)
        for variable in layer.weights
    }


def assign_weights(model: keras.Model, weights: Weights, source: str) -> None:
    """Load ``weights`` into the model's variables of the same path, or say which layer does not fit."""
    variables = {variable.path: variable for variable in model.weights}
    for path, value in weights.items():
        variable = variables.get(path)
        layer = path.split("/", maxsplit=1)[0]
        if variable is None:
            raise AggregationError(
                f"{source}: layer {layer!r} ({path}) is not in the {model.name} model these parameters "
                "build; were both trained with the same training parameters?"
            )
        if tuple(variable.shape) != value.shape:
            raise AggregationError(
                f"{source}: layer {layer!r} ({path}) has shape {value.shape}, the {model.name} model "
                f"these parameters build has {tuple(variable.shape)}; retrain with the same parameters"
            )
        variable.assign(value)


def check_same_layers(reference: Weights, reference_name: str, other: Weights, other_name: str) -> None:
    """Two parties' shared weights must name the same layers with the same shapes."""
    # In model order, so the error names the first layer that differs, the same one every run.
    for path in [*reference, *(path for path in other if path not in reference)]:
        layer = path.split("/", maxsplit=1)[0]
        if path not in other or path not in reference:
            holder, lacking = (reference_name, other_name)
            if path not in reference:
                holder, lacking = lacking, holder
            raise AggregationError(
                f"shared layers differ: {holder} has layer {layer!r} ({path}), {lacking} does not"
            )
        if reference[path].shape != other[path].shape:
            raise AggregationError(
                f"shared layers differ: layer {layer!r} ({path}) is {reference[path].shape} in "
                f"{reference_name} but {other[path].shape} in {other_name}"
            )


def federated_average(updates: Sequence[tuple[str, Weights, float]]) -> Weights:
    """FedAvg: the mean of each shared weight, weighted by ``(party, weights, weight)``'s weight."""
    if not updates:
        raise AggregationError("no party updates to average")
    first_name, first, _ = updates[0]
    for name, weights, _ in updates[1:]:
        check_same_layers(first, first_name, weights, name)
    total = float(sum(weight for _, _, weight in updates))
    if total <= 0:
        raise AggregationError("the parties' aggregation weights add up to zero")
    average = {}
    for path, value in first.items():
        mean = sum((weight / total) * weights[path].astype(np.float64) for _, weights, weight in updates)
        average[path] = mean.astype(value.dtype)
    return average


def imprint_class_head(model: keras.Model, splits: FaceSplits) -> None:
    """Start a new class head at each class's mean embedding (weight imprinting).

    A client's first round starts from the server's backbone with a head it has
    never trained; random class centres would send large, meaningless gradients
    into the shared layers until the head catches up.
    """
    embed = embedding_model(model)
    sums = np.zeros((len(splits.class_names), embed.output.shape[-1]), dtype=np.float64)
    for images, labels in splits.train:
        embeddings = keras.ops.convert_to_numpy(embed(images, training=False)).astype(np.float64)
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        np.add.at(sums, keras.ops.convert_to_numpy(labels), embeddings)
    centres = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    head = model.get_layer(CLASS_HEAD_LAYER)
    head.kernel.assign(centres.T.astype(head.kernel.dtype))
    if getattr(head, "bias", None) is not None:
        head.bias.assign(np.zeros(head.bias.shape, dtype=head.bias.dtype))


def weights_to_restore(kept: Weights, batch_norm: str) -> Weights:
    """What a party puts back over the global weights: its head, and its batch norm under FedBN."""
    if batch_norm == "local":
        return kept
    return {path: value for path, value in kept.items() if path.startswith(f"{CLASS_HEAD_LAYER}/")}


def round_params(training: dict, federated: dict) -> dict:
    """The training parameters of one local round: ``local_epochs``, the round's rate, no warm-up."""
    optimizer = {**training["optimizer"], "learning_rate": federated["learning_rate"], "warmup_epochs": 0}
    return {**training, "epochs": federated["local_epochs"], "optimizer": optimizer}


def train_party_round(
    party: str,
    party_folder: Path,
    global_weights: Weights,
    kept: Weights | None,
    *,
    training: dict,
    federated: dict,
    round_number: int,
) -> PartyUpdate:
    """One party's round: global shared weights + its data + its own head -> its update.

    ``kept`` is what the party kept from its previous round (None before its
    first); ``training`` are the training parameters, ``federated`` the
    aggregation ones (``local_epochs``, ``learning_rate``, ``batch_norm``).
    """
    batch_norm = check_choice("batch_norm", federated["batch_norm"], BATCH_NORM_MODES)
    params = round_params(training, federated)
    keras.backend.clear_session()  # one model per call; earlier rounds' graphs would pile up
    keras.utils.set_random_seed(params["seed"] + 1000 * round_number + sum(map(ord, party)))
    splits = load_face_splits([party_folder], params)
    model = build_model(params, len(splits.class_names))
    assign_weights(model, global_weights, "global model")
    if kept is None:
        imprint_class_head(model, splits)
    else:
        assign_weights(model, weights_to_restore(kept, batch_norm), f"{party}'s own layers")
    compile_model(model, params, steps_per_epoch=-(-splits.train_images // params["batch_size"]))
    started = time.perf_counter()
    fit = model.fit(
        splits.train,
        epochs=params["epochs"],
        shuffle=False,  # face_dataset shuffles
        verbose=0,
        callbacks=[EpochLog(f"round {round_number} {party}", splits.train_images)],
    )
    seconds = time.perf_counter() - started
    metrics = {
        **closed_set_metrics(model, splits, party),
        "round": round_number,
        "train_loss": float(fit.history["loss"][-1]),
        "train_top1": float(fit.history["sparse_categorical_accuracy"][-1]),
        "train_seconds": round(seconds, 1),
    }
    return PartyUpdate(party, shared_weights(model), kept_weights(model), splits.train_images, metrics)


def model_with_weights(training: dict, shared: Weights, own: Weights | None, num_classes: int) -> keras.Model:
    """A full model from the global weights with, if given, a party's own layers over them."""
    model = build_model(training, num_classes)
    assign_weights(model, shared, "global model")
    if own is not None:
        assign_weights(model, own, "party's own layers")
    return model


def global_embedding_model(training: dict, shared: Weights) -> keras.Model:
    """The global model as evaluation uses it: the shared layers, ending at the embedding."""
    # The head is not part of it, so its size does not matter: two classes is the least a head takes.
    return embedding_model(model_with_weights(training, shared, None, num_classes=2))

"""Compiling, checkpointing and logging the Keras training of a party's face model."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import keras

from face_pipeline.errors import TrainingError
from face_pipeline.models.builders import CLASS_HEAD_LAYER, build_face_model
from face_pipeline.models.inputs import FaceSplits
from face_pipeline.models.layers import ArcFaceLoss

logger = logging.getLogger(__name__)


def build_model(params: dict, num_classes: int) -> keras.Model:
    """The face model that the ``training`` parameters describe."""
    return build_face_model(
        num_classes,
        architecture=params["architecture"],
        attention=params["attention"],
        img_size=params["img_size"],
        loss=params["loss"],
        embedding_size=params["embedding_size"],
        dropout=params["dropout"],
        precision=params["precision"],
        backbone=params["backbone"],
    )


def fit_face_model(
    name: str, splits: FaceSplits, params: dict, checkpoint: Path
) -> tuple[keras.Model, dict, dict]:
    """Train a new model (or resume its checkpoint) on ``splits``; the model, its history and metrics.

    ``name`` is the party (or ``centralized``) in logs and metrics.
    """
    model, history, first_epoch = (
        resume_from_checkpoint(checkpoint, splits.class_names) if params["resume"] else (None, {}, 0)
    )
    if model is None:
        model = build_model(params, len(splits.class_names))
        compile_model(model, params, steps_per_epoch=-(-splits.train_images // params["batch_size"]))
    logger.info(
        "%s: training %s (%s parameters) on %d images of %d classes, %d held out, for %d epochs",
        name,
        model.name,
        f"{model.count_params():,}",
        splits.train_images,
        len(splits.class_names),
        splits.test_images,
        params["epochs"],
    )
    started = time.perf_counter()
    fit = model.fit(
        splits.train,
        validation_data=splits.test,
        epochs=params["epochs"],
        initial_epoch=first_epoch,
        shuffle=False,  # face_dataset shuffles; Keras cannot shuffle a tf.data pipeline
        verbose=0,
        callbacks=[
            EpochLog(name, splits.train_images),
            Checkpoint(checkpoint, splits.class_names, history),
        ],
    )
    seconds = time.perf_counter() - started
    for key, values in fit.history.items():
        history.setdefault(key, []).extend(float(v) for v in values)
    metrics = {
        **closed_set_metrics(model, splits, name),
        "epochs": params["epochs"],
        "train_seconds": round(seconds, 1),
        "class_names": splits.class_names,
        "params": params,
    }
    return model, history, metrics


def closed_set_metrics(model: keras.Model, splits: FaceSplits, name: str) -> dict:
    """Top-1 of the model's class head on the held-out images of the classes it was trained on."""
    loss, accuracy = model.evaluate(splits.test, verbose=0)
    logger.info("%s: closed-set top-1 %.3f on %d held-out images", name, accuracy, splits.test_images)
    return {
        "party": name,
        "architecture": model.name,
        "closed_set_top1": float(accuracy),
        "test_loss": float(loss),
        "test_images": splits.test_images,
        "train_images": splits.train_images,
        "classes": len(splits.class_names),
        "chance": 1 / len(splits.class_names),
    }


def compile_model(model, params: dict, steps_per_epoch: int) -> None:
    optimizer = params["optimizer"]
    total = max(1, steps_per_epoch * params["epochs"])
    warmup = min(total - 1, steps_per_epoch * optimizer.get("warmup_epochs", 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=optimizer["learning_rate"] if warmup == 0 else optimizer["learning_rate"] / 10,
        decay_steps=total - warmup,
        alpha=optimizer.get("final_fraction", 0.0),
        warmup_target=optimizer["learning_rate"] if warmup else None,
        warmup_steps=warmup,
    )
    name = optimizer["name"]
    if name == "sgd":
        chosen = keras.optimizers.SGD(
            schedule, momentum=optimizer["momentum"], weight_decay=optimizer["weight_decay"] or None
        )
    elif name == "adamw":
        chosen = keras.optimizers.AdamW(schedule, weight_decay=optimizer["weight_decay"])
    else:
        raise TrainingError(f"unknown optimizer {name!r}: choose sgd or adamw")
    if params["loss"] == "arcface":
        loss = ArcFaceLoss(scale=params["arcface"]["scale"], margin=params["arcface"]["margin"])
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=chosen, loss=loss, metrics=["sparse_categorical_accuracy"])


def resume_from_checkpoint(checkpoint: Path, class_names: list[str]):
    """The model, history and next epoch from the party's last checkpoint, if there is one."""
    model_path, state_path = checkpoint / "model.keras", checkpoint / "state.json"
    if not model_path.is_file():
        logger.info("No checkpoint at %s: starting from scratch", model_path)
        return None, {}, 0
    try:
        model = keras.saving.load_model(model_path, safe_mode=True)
    except Exception as error:
        raise TrainingError(f"{model_path}: cannot load the checkpoint: {error}") from None
    state = json.loads(state_path.read_text())
    head_units = model.get_layer(CLASS_HEAD_LAYER).output.shape[-1]
    if head_units != len(class_names) or state["class_names"] != class_names:
        raise TrainingError(
            f"{model_path}: its class head has {head_units} classes ({_preview(state['class_names'])}), "
            f"but the party has {len(class_names)} ({_preview(class_names)}); "
            "delete the checkpoint or set resume: false"
        )
    logger.info("Resuming from %s after epoch %d", model_path, state["epoch"])
    return model, state["history"], state["epoch"]


def _preview(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch: losses, accuracies, learning rate and images/s."""

    def __init__(self, party: str, images: int):
        super().__init__()
        self.party, self.images = party, images

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self.started
        logger.info(
            "%s epoch %d/%d: loss %.3f, top-1 %.3f, held-out loss %.3f, held-out top-1 %.3f, "
            "%.0fs, %.1f images/s",
            self.party,
            epoch + 1,
            self.params["epochs"],
            logs.get("loss", float("nan")),
            logs.get("sparse_categorical_accuracy", float("nan")),
            logs.get("val_loss", float("nan")),
            logs.get("val_sparse_categorical_accuracy", float("nan")),
            seconds,
            self.images / seconds,
        )


class Checkpoint(keras.callbacks.Callback):
    """Saves the model after every epoch, so that a long run can resume (``resume: true``).

    This writes outside the catalog on purpose: the catalog saves a node's outputs
    only when the node ends, and CASIA training takes hours on a CPU.
    """

    def __init__(self, folder: Path, class_names: list[str], history: dict):
        super().__init__()
        self.folder, self.class_names = folder, class_names
        self.history = {name: list(values) for name, values in history.items()}

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model.save(self.folder / "model.keras")
        state = {"epoch": epoch + 1, "class_names": self.class_names, "history": self.history}
        (self.folder / "state.json").write_text(json.dumps(state))

"""Attention maps: Grad-CAM of the party and global models, and the SE/ECA gates per block.

What the original ``visualize_attention.py --image-path`` did, for every model the
federated run makes: a grid of held-out faces per party, one face of the user's
(``attention.image_path``), and how peaked the channel attention of each block is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from face_pipeline.datasets import ImageFolder
from face_pipeline.errors import FacePipelineError
from face_pipeline.pipelines.evaluation.nodes import holdout_images

logger = logging.getLogger(__name__)

GLOBAL = "global"
# Faces per holdout identity whose mean embedding stands for it when the global model explains.
REFERENCE_FACES = 5
CHANNEL_COLUMNS = [
    "layer",
    "kind",
    "stage",
    "block",
    "channels",
    "mean_gate",
    "channel_std",
    "image_std",
    "peakedness",
    "top_decile_share",
    "mean_gates",
]


def read_face(path: str | Path, img_size: int, source: str = "") -> np.ndarray:
    """An image file as an ``img_size`` square uint8 RGB face; a clear error if it is not one.

    ``source`` names where the path came from (a parameter) at the start of the error.
    """
    path = Path(path)
    prefix = f"{source}: " if source else ""
    if not path.is_file():
        raise FacePipelineError(f"{prefix}{path} does not exist")
    image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FacePipelineError(f"{prefix}{path} is not an image OpenCV can decode")
    if image.shape[:2] != (img_size, img_size):
        image = cv2.resize(image, (img_size, img_size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def normalized(faces: np.ndarray) -> np.ndarray:
    """The models' input scaling, the same function training uses."""
    from face_pipeline.models.inputs import normalize

    return normalize(faces).numpy()


def input_size(model: Any) -> int:
    return int(model.input.shape[1])


def party_model(federated_party_models: dict, party: str) -> Any:
    """The global layers with ``party``'s own head, as the last federated round left them."""
    if party not in federated_party_models:
        raise FacePipelineError(
            f"federated_party_models has no model for {party!r} (it has {sorted(federated_party_models)}); "
            "run the aggregation pipeline first"
        )
    return federated_party_models[party]()


def sample(items: list, count: int, rng: np.random.Generator) -> list:
    picked = rng.choice(len(items), size=min(count, len(items)), replace=False)
    return [items[i] for i in sorted(picked)]


def identity_references(
    model: Any, partitioned: ImageFolder, faces: dict[str, list[str]]
) -> dict[str, np.ndarray]:
    """``{identity: unit mean embedding}`` from up to ``REFERENCE_FACES`` of its faces."""
    from face_pipeline.models.evaluation import embed_faces

    names = [name for name, paths in faces.items() if paths]
    chosen = [faces[name][:REFERENCE_FACES] for name in names]
    embeddings = embed_faces(
        model, [str(partitioned.path(p)) for paths in chosen for p in paths], batch_size=64, flip=False
    )
    references, start = {}, 0
    for name, paths in zip(names, chosen, strict=True):
        mean = embeddings[start : start + len(paths)].mean(axis=0)
        references[name] = mean / max(np.linalg.norm(mean), 1e-12)
        start += len(paths)
    return references


def explain_party_faces(
    partitioned: ImageFolder,
    global_model: Any,
    federated_party_models: dict,
    aggregation: dict,
    attention: dict,
) -> tuple[pd.DataFrame, Figure]:
    """Grad-CAM of a few test faces per party, and of holdout faces for the global model.

    A party's faces are explained by its federated model towards their true class;
    holdout faces by the global model towards the mean embedding of their identity's
    other faces (never the face itself, whose gradient would be zero).
    """
    from face_pipeline.models.attention import gradcam
    from face_pipeline.models.inputs import list_class_folders

    rng = np.random.default_rng(attention["seed"])
    count = attention["samples_per_party"]
    rows, panels = [], []
    for party in aggregation["parties"]:
        model = party_model(federated_party_models, party)
        paths, labels, class_names = list_class_folders(partitioned.path(party) / "test")
        picked = sample(list(zip(paths, labels, strict=True)), count, rng)
        faces = np.stack([read_face(path, input_size(model)) for path, _ in picked])
        truth = np.asarray([label for _, label in picked])
        heatmaps, scores = gradcam(model, normalized(faces), classes=truth)
        predicted = np.argmax(np.asarray(model(normalized(faces), training=False)), axis=1)
        for (path, label), score, guess in zip(picked, scores, predicted, strict=True):
            rows.append(
                {
                    "model": f"{party} (federated)",
                    "image": Path(path).relative_to(partitioned.root).as_posix(),
                    "identity": class_names[label],
                    "target": "class score of the true identity",
                    "score": float(score),
                    "top1_correct": bool(guess == label),
                }
            )
        panels.append((f"{party}: federated model", faces, heatmaps, [f"{s:.2f}" for s in scores]))
    holdout = {name: paths for name, paths in holdout_images(partitioned).items() if len(paths) >= 2}
    if holdout:
        identities = sample(sorted(holdout), count, rng)
        # The explained face is the identity's first; its reference is the mean of the others.
        references = identity_references(
            global_model, partitioned, {name: holdout[name][1:] for name in identities}
        )
        faces = np.stack(
            [read_face(partitioned.path(holdout[name][0]), input_size(global_model)) for name in identities]
        )
        heatmaps, scores = gradcam(
            global_model, normalized(faces), references=np.stack([references[name] for name in identities])
        )
        for name, score in zip(identities, scores, strict=True):
            rows.append(
                {
                    "model": "global",
                    "image": holdout[name][0],
                    "identity": name,
                    "target": "cosine to the identity's other faces",
                    "score": float(score),
                    "top1_correct": None,
                }
            )
        panels.append(("global model: holdout", faces, heatmaps, [f"cos {s:.2f}" for s in scores]))
    logger.info("Grad-CAM of %d faces over %d models", len(rows), len(panels))
    return pd.DataFrame(rows), plot_gradcam_grid(panels)


def plot_gradcam_grid(panels: list[tuple[str, np.ndarray, np.ndarray, list[str]]]) -> Figure:
    """One row per model: each face under its Grad-CAM heatmap, captioned with its score."""
    from face_pipeline.models.attention import overlay

    columns = max(len(faces) for _, faces, _, _ in panels)
    figure = Figure(figsize=(1.6 * columns + 1.2, 1.8 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), columns, squeeze=False)
    for row, (title, faces, heatmaps, captions) in enumerate(panels):
        for column, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(faces):
                ax.set_axis_off()
                continue
            ax.imshow(overlay(faces[column], heatmaps[column]))
            ax.set_xlabel(captions[column], fontsize=8)
        axes[row][0].set_ylabel(title, fontsize=8)
    figure.suptitle("Grad-CAM, last conv stage\n(caption: score of the target)", fontsize=9)
    return figure


def explain_image(
    partitioned: ImageFolder, global_model: Any, federated_party_models: dict, attention: dict
) -> tuple[dict, Figure]:
    """Grad-CAM of one face: ``attention.image_path``, or the first holdout face if none is given.

    ``attention.model`` explains it: ``global`` towards the most similar holdout
    identity, or a party's name, that party's federated model towards its top class.
    """
    from face_pipeline.models.attention import gradcam

    which = attention["model"]
    choices = [GLOBAL, *sorted(federated_party_models)]
    if which not in choices:
        raise FacePipelineError(f"attention.model is {which!r}: choose one of {', '.join(choices)}")
    holdout = holdout_images(partitioned)
    path = attention["image_path"] or str(partitioned.path(next(iter(holdout.values()))[0]))
    model = global_model if which == GLOBAL else party_model(federated_party_models, which)
    face = read_face(path, input_size(model), "attention.image_path")
    image = normalized(face[None])
    if which == GLOBAL:
        references = identity_references(global_model, partitioned, holdout)
        names = list(references)
        embedding = np.asarray(global_model(image, training=False), np.float64)[0]
        similarity = np.stack([references[name] for name in names]) @ (embedding / np.linalg.norm(embedding))
        target = names[int(np.argmax(similarity))]
        heatmaps, scores = gradcam(model, image, references=references[target][None])
        target_kind = "most similar holdout identity (cosine to its mean embedding)"
    else:
        from face_pipeline.models.inputs import list_class_folders

        _, _, class_names = list_class_folders(partitioned.path(which) / "train")
        top = int(np.argmax(np.asarray(model(image, training=False))[0]))
        target = class_names[top]
        heatmaps, scores = gradcam(model, image, classes=np.asarray([top]))
        target_kind = f"{which}'s top class"
    info = {
        "image": str(path),
        "model": which,
        "architecture": global_model.name,
        "target": target,
        "target_kind": target_kind,
        "score": float(scores[0]),
        "img_size": input_size(model),
    }
    logger.info("Grad-CAM of %s by the %s model: %s, score %.3f", path, which, target, scores[0])
    return info, plot_single_gradcam(face, heatmaps[0], info)


def plot_single_gradcam(face: np.ndarray, heatmap: np.ndarray, info: dict) -> Figure:
    from face_pipeline.models.attention import overlay

    figure = Figure(figsize=(7.5, 3), layout="constrained")
    axes = figure.subplots(1, 3)
    axes[0].imshow(face)
    axes[1].imshow(overlay(face, heatmap))
    axes[2].imshow(heatmap, cmap="jet", vmin=0, vmax=1)
    for ax, title in zip(axes, ("face", "Grad-CAM", "heatmap"), strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    figure.suptitle(
        f"{Path(info['image']).name}: {info['model']} model, target {info['target']} "
        f"(score {info['score']:.2f})",
        fontsize=9,
    )
    return figure


def measure_channel_attention(partitioned: ImageFolder, global_model: Any, attention: dict) -> pd.DataFrame:
    """Per SE and ECA layer of the global model, how its gates spread over holdout faces.

    ``peakedness`` is the Gini coefficient of the gates (0: all channels equal);
    ``top_decile_share`` the gate mass in the top tenth of channels (0.1: flat);
    ``image_std`` how much the gates change from face to face. An architecture
    without SE or ECA layers gives an empty table.
    """
    from face_pipeline.models.attention import channel_gates, peakedness, top_decile_share

    holdout = [path for paths in holdout_images(partitioned).values() for path in paths]
    picked = sample(holdout, attention["channel_images"], np.random.default_rng(attention["seed"]))
    faces = np.stack([read_face(partitioned.path(p), input_size(global_model)) for p in picked])
    gates = channel_gates(global_model, normalized(faces))
    if not gates:
        logger.warning(
            "%s has no SE or ECA layers: the attention pipeline gives Grad-CAM only", global_model.name
        )
    rows = []
    for name, values in gates.items():
        stage, block, kind = parse_attention_layer(name)
        mean_gates = values.mean(axis=0)
        rows.append(
            {
                "layer": name,
                "kind": kind,
                "stage": stage,
                "block": block,
                "channels": values.shape[1],
                "mean_gate": float(values.mean()),
                "channel_std": float(mean_gates.std()),
                "image_std": float(values.std(axis=0).mean()),
                "peakedness": float(peakedness(values).mean()),
                "top_decile_share": float(top_decile_share(values).mean()),
                "mean_gates": mean_gates.tolist(),
            }
        )
    return pd.DataFrame(rows, columns=CHANNEL_COLUMNS)


def parse_attention_layer(name: str) -> tuple[int, int, str]:
    """``conv3_block2_se`` -> ``(3, 2, "se")``: the layer names the SE-ECA ResNet builder gives."""
    match = re.fullmatch(r"conv(\d+)_block(\d+)_(se|eca)", name)
    if match is None:
        raise FacePipelineError(f"attention layer {name!r} is not named conv<stage>_block<n>_<se|eca>")
    return int(match[1]), int(match[2]), match[3]


def plot_channel_attention(table: pd.DataFrame) -> Figure:
    """Peakedness per block, and the sorted mean gates of each stage's last block."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    if table.empty:
        ax = figure.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "The model has no SE or ECA layers: Grad-CAM only.", ha="center", va="center")
        return figure
    per_block, per_stage = figure.subplots(1, 2)
    for kind, rows in table.groupby("kind", sort=False):
        labels = [f"{r.stage}.{r.block}" for r in rows.itertuples()]
        per_block.plot(labels, rows["peakedness"], marker="o", label=kind.upper())
    per_block.set_xlabel("block (stage.block)")
    per_block.set_ylabel("peakedness (Gini coefficient of the gates)")
    per_block.set_title("How peaked each block's channel gates are")
    per_block.tick_params(axis="x", labelrotation=90, labelsize=7)
    per_block.legend()
    last_blocks = table.loc[table.groupby(["stage", "kind"])["block"].idxmax()]
    for row in last_blocks.itertuples():
        ordered = np.sort(np.asarray(row.mean_gates))[::-1]
        per_stage.plot(
            np.linspace(0, 1, len(ordered)),
            ordered,
            linestyle="-" if row.kind == "se" else "--",
            label=f"stage {row.stage} {row.kind.upper()} ({row.channels} ch)",
        )
    per_stage.set_xlabel("channel rank (fraction of channels)")
    per_stage.set_ylabel("mean gate over faces")
    per_stage.set_title("Sorted gates of each stage's last block")
    per_stage.legend(fontsize=7)
    return figure


def top1_mark(correct: Any) -> str:
    """yes/no for a party's face; blank for a holdout face, which no head can classify."""
    if correct is None or pd.isna(correct):
        return ""
    return "yes" if correct else "no"


def write_attention_report(
    samples: pd.DataFrame, image_info: dict, channels: pd.DataFrame, attention: dict
) -> str:
    """The markdown report: what each map explains, and the channel-attention table."""
    lines = [
        "# Attention",
        "",
        f"Model architecture: `{image_info['architecture']}`, input {image_info['img_size']} px square. "
        "Grad-CAM explains the last convolutional stage "
        "(the feature map before global pooling).",
        "",
        "## Grad-CAM grid (`gradcam_grid.png`)",
        "",
        "| model | image | identity | target | score | top-1 correct |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r.model} | `{r.image}` | {r.identity} | {r.target} | {r.score:.3f} | "
            f"{top1_mark(r.top1_correct)} |"
            for r in samples.itertuples()
        ),
        "",
        "## One face (`gradcam_image.png`)",
        "",
        f"`{image_info['image']}`, explained by the {image_info['model']} model towards "
        f"{image_info['target_kind']}: **{image_info['target']}** (score {image_info['score']:.3f}).",
        "",
        "## Channel attention (`channel_attention.png`)",
        "",
    ]
    if channels.empty:
        lines.append(
            f"**Note:** `{image_info['architecture']}` has no SE or ECA layers, so there are no channel "
            "gates to show: this model gets Grad-CAM only."
        )
    else:
        lines += [
            f"Gates of the global model over {attention['channel_images']} holdout faces. "
            "Peakedness is the Gini coefficient of a face's gates (0 when every channel weighs the "
            "same, near 1 when one channel takes all), averaged over faces; a flat top-decile share "
            "is 0.10.",
            "",
            "| layer | kind | channels | mean gate | std over channels | std over faces | peakedness "
            "| top-decile share |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {r.layer} | {r.kind.upper()} | {r.channels} | {r.mean_gate:.3f} | {r.channel_std:.3f} | "
                f"{r.image_std:.3f} | {r.peakedness:.3f} | {r.top_decile_share:.3f} |"
                for r in channels.itertuples()
            ),
        ]
    return "\n".join(lines) + "\n"

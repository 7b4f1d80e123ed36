"""``kedro compare-architectures``: the training, federated and evaluation protocol once per architecture.

Each architecture runs in its own folder, ``data/09_architectures/<architecture>/``:
a copy of the project's ``conf`` whose ``data/03_primary`` points at the project's
partition, so every architecture sees the same identities and images and the
project's own models are left alone. One table compares them afterwards.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from face_pipeline.errors import FacePipelineError

logger = logging.getLogger(__name__)

PROTOCOL = ("training", "aggregation", "evaluation")
RUNS_FOLDER = Path("data/09_architectures")
REPORT = Path("data/08_reporting/architecture_comparison")
FINISHED = "comparison_run.json"  # the parameters and wall time of a finished run, written at its end


def deep_merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = (
            deep_merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def project_params(project: Path, env: str | None, runtime_params: dict) -> dict:
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params) as session:
        return session.load_context().params


def prepare_run_folder(project: Path, run_folder: Path) -> None:
    """A Kedro project of its own that reads the main project's partition, for one architecture."""
    partition = project / "data/03_primary"
    if not (partition / "partitioned").is_dir():
        raise FacePipelineError(
            f"{partition / 'partitioned'}: no partition to compare on; run the partition first"
        )
    shutil.rmtree(run_folder / "conf", ignore_errors=True)
    shutil.copytree(project / "conf", run_folder / "conf")
    shutil.copy(project / "pyproject.toml", run_folder / "pyproject.toml")
    (run_folder / "src").mkdir(exist_ok=True)  # bootstrap_project wants it; the package is installed
    (run_folder / "data").mkdir(exist_ok=True)
    link = run_folder / "data/03_primary"
    if not link.is_symlink():
        link.symlink_to(partition.resolve(), target_is_directory=True)


def run_protocol(run_folder: Path, env: str | None, params: dict) -> float:
    """Train the parties, run the federated rounds and the baseline, evaluate; the wall seconds.

    Each pipeline runs in a process of its own: TensorFlow keeps every model it has
    built until the process ends, and the first architecture's full-size ResNets
    alone took 17 GiB when all ran in one process.
    """
    started = time.perf_counter()
    for pipeline in PROTOCOL:
        command = [sys.executable, "-m", __name__, str(run_folder), env or "", json.dumps(params), pipeline]
        if subprocess.run(command, check=False).returncode != 0:
            raise FacePipelineError(
                f"{run_folder}: `kedro run --pipeline={pipeline}` failed for this architecture; "
                "its log is above"
            )
    return time.perf_counter() - started


def run_pipeline(run_folder: Path, env: str | None, params: dict, pipeline: str) -> None:
    bootstrap_project(run_folder)
    with KedroSession.create(project_path=run_folder, env=env, runtime_params=params) as session:
        session.run(pipeline_names=[pipeline])


def previous_run(run_folder: Path, resolved: dict) -> dict | None:
    """The record of a finished run in this folder with exactly these parameters, if there is one."""
    marker = run_folder / FINISHED
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    return record if record["params"] == json.loads(json.dumps(resolved)) else None


def compare_architectures(project: Path, env: str | None, runtime_params: dict[str, Any]) -> dict:
    """Run the protocol for each of ``comparison.architectures``; write and return the table.

    An architecture whose folder holds a finished run with the same parameters is
    not run again, so an interrupted comparison resumes where it stopped.
    """
    settings = project_params(project, env, runtime_params)["comparison"]
    results = {}
    for architecture in settings["architectures"]:
        run_folder = project / RUNS_FOLDER / architecture
        prepare_run_folder(project, run_folder)
        params = deep_merge(
            runtime_params, {"training": {**settings["training"], "architecture": architecture}}
        )
        resolved = project_params(run_folder, env, params)
        record = previous_run(run_folder, resolved)
        if record:
            logger.info("Comparing architectures: %s already ran with these parameters", architecture)
        else:
            logger.info("Comparing architectures: %s in %s", architecture, run_folder)
            (run_folder / FINISHED).unlink(missing_ok=True)
            record = {"params": resolved, "wall_seconds": run_protocol(run_folder, env, params)}
            (run_folder / FINISHED).write_text(json.dumps(record))
        metrics = json.loads((run_folder / "data/08_reporting/evaluation_metrics.json").read_text())
        results[architecture] = architecture_row(architecture, metrics, run_folder, record["wall_seconds"])
    bootstrap_project(project)
    comparison = {"settings": settings, "architectures": results, "claim": check_claim(results)}
    (project / REPORT).parent.mkdir(parents=True, exist_ok=True)
    (project / REPORT).with_suffix(".json").write_text(json.dumps(comparison, indent=2))
    (project / REPORT).with_suffix(".md").write_text(comparison_markdown(comparison))
    return comparison


def architecture_row(architecture: str, metrics: dict, run_folder: Path, seconds: float) -> dict:
    verification = metrics["verification"]
    closed = metrics["closed_set"]
    return {
        "architecture": architecture,
        "parameters": count_parameters(run_folder / "data/06_models/federated/global_model.keras"),
        "wall_seconds": round(seconds),
        **{f"{name}_accuracy": result["accuracy"] for name, result in verification.items()},
        **{f"{name}_accuracy_std": result["accuracy_std"] for name, result in verification.items()},
        **{f"{name}_tar_at_far": result["tar_at_far"] for name, result in verification.items()},
        **{f"{name}_auc": result["auc"] for name, result in verification.items()},
        **{
            f"closed_set_{kind.replace(' ', '_')}": mean_top1(closed, kind)
            for kind in ("single party", "federated", "centralized")
        },
    }


def mean_top1(closed_set: list[dict], kind: str) -> float:
    values = [row["top1"] for row in closed_set if row["model"] == kind]
    return sum(values) / len(values) if values else float("nan")


def count_parameters(model_file: Path) -> int:
    import keras  # noqa: PLC0415  (TensorFlow only once the runs are done)

    import face_pipeline.models.layers  # noqa: F401, PLC0415  (registers the custom layers)

    return keras.saving.load_model(model_file, safe_mode=True).count_params()


def check_claim(results: dict) -> str:
    """The original claim, SE-ECA clearly beats MobileNetV2, against the federated verification accuracy.

    "Clearly" here: the difference is larger than the larger of the two 10-fold
    standard deviations.
    """
    if not {"se_eca_resnet50", "mobilenetv2"} <= results.keys():
        return "not checked: the comparison needs both se_eca_resnet50 and mobilenetv2"
    ours, theirs = results["se_eca_resnet50"], results["mobilenetv2"]
    difference = ours["federated_accuracy"] - theirs["federated_accuracy"]
    spread = max(ours["federated_accuracy_std"], theirs["federated_accuracy_std"])
    verdict = "holds" if difference > spread else "does not hold"
    return (
        f"{verdict}: federated verification accuracy {ours['federated_accuracy']:.3f} (SE-ECA ResNet50) vs "
        f"{theirs['federated_accuracy']:.3f} (MobileNetV2), a difference of {difference:+.3f} against a "
        f"10-fold standard deviation of up to {spread:.3f}"
    )


def comparison_markdown(comparison: dict) -> str:
    rows = comparison["architectures"].values()
    lines = [
        "# Architecture comparison",
        "",
        "Same partition, same training, rounds and evaluation parameters for each architecture; "
        "verification accuracy on the holdout identities (10-fold), "
        "closed-set top-1 averaged over the parties.",
        "",
        "| architecture | parameters | federated | centralized | single party (server) | federated TAR@FAR "
        "| federated AUC | closed set: single / federated / centralized | wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['architecture']} | {row['parameters']:,} "
            f"| {row['federated_accuracy']:.3f} ± {row['federated_accuracy_std']:.3f} "
            f"| {row['centralized_accuracy']:.3f} ± {row['centralized_accuracy_std']:.3f} "
            f"| {row['server_accuracy']:.3f} ± {row['server_accuracy_std']:.3f} "
            f"| {row['federated_tar_at_far']:.3f} | {row['federated_auc']:.3f} "
            f"| {row['closed_set_single_party']:.3f} / {row['closed_set_federated']:.3f} / "
            f"{row['closed_set_centralized']:.3f} | {row['wall_seconds'] / 60:.1f} min |"
        )
    lines += ["", f'Claim "SE-ECA clearly beats MobileNetV2": {comparison["claim"]}.', ""]
    return "\n".join(lines)


if __name__ == "__main__":  # one pipeline of one architecture, in its own process (see run_protocol)
    folder, environment, runtime, name = sys.argv[1:]
    run_pipeline(Path(folder), environment or None, json.loads(runtime), name)

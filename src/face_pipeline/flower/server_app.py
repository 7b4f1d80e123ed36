"""The ServerApp: FedAvg of the shared layers over the parties' SuperNodes, round after round.

Under ``flwr run src/face_pipeline/flower <superlink>`` (deployment) it reads the Kedro
project on the server's machine: its ``training`` and ``aggregation`` parameters and the
server's model (``server.party_model``, round 0), and writes into ``out``::

    global_model.keras          the last complete round's global model (shared layers, to the embedding)
    rounds/round_<NN>.keras     every round's, round 00 the server's
    history.json                each round's seconds and every party's metrics

each file written beside itself and moved into place (``os.replace``), so a run that
fails or is killed leaves the last complete round's files whole. Run config
(``--run-config``; defaults in ``pyproject.toml``): ``project`` (the Kedro project,
relative to where the SuperLink runs), ``env`` (its conf environment), ``params``
(space-separated ``key=value`` as ``kedro run --params``), ``out`` (relative to ``project``).

The ``aggregation`` pipeline's ``flower`` engine builds the same ServerApp around its
node's inputs instead (:mod:`face_pipeline.flower.simulation`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from face_pipeline.flower.rounds import FlowerError, GridFederation, OnRound, RoundsSetup, Weights, run_rounds

logger = logging.getLogger(__name__)

SetupFn = Callable[[Context], tuple[RoundsSetup, OnRound | None]]


def make_server_app(setup: SetupFn, outcome: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp running :func:`run_rounds` from ``setup(context)``; the result lands in ``outcome``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rounds_setup, on_round = setup(context)
        result = run_rounds(GridFederation(grid), rounds_setup, on_round=on_round)
        if outcome is not None:
            outcome["result"] = result

    return app


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a file beside ``path``, then move it over ``path``: readers get the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        write(temporary)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class RoundWriter:
    """Writes each round's global model, the latest one and the history into ``out``, atomically."""

    def __init__(self, out: Path, training: dict, aggregation: dict) -> None:
        self.out, self.training, self.aggregation = out, training, aggregation

    def __call__(self, round_number: int, weights: Weights, history: list[dict]) -> None:
        from face_pipeline.models.federated import global_embedding_model  # noqa: PLC0415 (imports Keras)

        if round_number == 0:  # a new run: an earlier run's later rounds are not this one's
            for stale in (self.out / "rounds").glob("round_*.keras"):
                stale.unlink()
        model = global_embedding_model(self.training, weights)
        replace_atomically(self.out / "rounds" / f"round_{round_number:02d}.keras", model.save)
        replace_atomically(self.out / "global_model.keras", model.save)
        summary = {"params": self.aggregation, "training": self.training, "rounds": history}
        replace_atomically(
            self.out / "history.json", lambda path: path.write_text(json.dumps(summary, indent=2) + "\n")
        )
        logger.info("round %d's global model saved to %s", round_number, self.out / "global_model.keras")


def kedro_params(text: str) -> dict:
    """``"aggregation.rounds=2 training.epochs=1"`` to nested runtime params, as ``kedro run --params``."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    items = text.split()
    if not items:
        return {}
    bad = [item for item in items if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise FlowerError(f"run config params: {' '.join(bad)} is not key=value")
    return OmegaConf.to_container(OmegaConf.from_dotlist(items))


def setup_from_project(context: Context) -> tuple[RoundsSetup, OnRound]:
    """Deployment: the parameters and round 0 from the Kedro project named by the run config."""
    from kedro.framework.session import KedroSession  # noqa: PLC0415
    from kedro.framework.startup import bootstrap_project  # noqa: PLC0415

    import face_pipeline.models.layers  # noqa: F401, PLC0415 (the saved models' custom layers)
    from face_pipeline.pipelines.aggregation.nodes import check_aggregation_params, round_zero  # noqa: PLC0415

    config = context.run_config
    project = Path(str(config.get("project") or ".")).expanduser().resolve()
    os.chdir(project)  # the catalog's paths are relative to the project; this process is the run's own
    bootstrap_project(project)
    env = str(config.get("env") or "") or None
    with KedroSession.create(
        project_path=project, env=env, runtime_params=kedro_params(str(config.get("params") or ""))
    ) as session:
        kedro_context = session.load_context()
        training, aggregation = kedro_context.params["training"], kedro_context.params["aggregation"]
        check_aggregation_params(aggregation)
        if not kedro_context.catalog.exists("server.party_model"):
            raise FlowerError(
                f"server.party_model, round 0, does not exist in the Kedro project {project}: train the "
                "server first (kedro run --pipeline=training --namespaces=server)"
            )
        global_weights, _, _ = round_zero(kedro_context.catalog.load("server.party_model"), training)
    out = project / str(config.get("out") or "data/06_models/federated/flower")
    logger.info(
        "Kedro project %s (env %s): %d rounds of %s; writing to %s",
        project,
        env or "local",
        aggregation["rounds"],
        ", ".join(aggregation["parties"]),
        out,
    )
    return RoundsSetup(training, aggregation, global_weights), RoundWriter(out, training, aggregation)


# `flwr run` loads this one (pyproject.toml beside this file).
app = make_server_app(setup_from_project)

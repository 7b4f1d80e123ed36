"""``aggregation.engine: flower`` on one machine: the same ServerApp and ClientApp in Flower's simulation.

Flower's simulation (Ray) runs one virtual SuperNode per party; the ServerApp runs in
a thread of this process, so the rounds' result comes back to the Kedro node in memory,
and the parties send their heads back with their updates (``return_kept``) for the
``federated_party_models`` output, which the deployment never does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from face_pipeline.flower.rounds import FlowerError, RoundsResult, RoundsSetup, Weights
from face_pipeline.flower.settings import flower_settings

logger = logging.getLogger(__name__)


def simulate_rounds(
    party_folders: dict[str, Path],
    training: dict,
    aggregation: dict,
    global_weights: Weights,
    first_kept: dict[str, Weights],
) -> RoundsResult:
    """The federated rounds through Flower's simulation, one virtual SuperNode per party."""
    from flwr.simulation import run_simulation  # noqa: PLC0415 (Ray, only for this engine)

    from face_pipeline.flower.client_app import SimulatedParties, make_client_app  # noqa: PLC0415
    from face_pipeline.flower.server_app import make_server_app  # noqa: PLC0415

    settings = flower_settings(aggregation)
    parties = tuple(aggregation["parties"])
    setup = RoundsSetup(training, aggregation, global_weights, return_kept=True)
    outcome: dict = {}
    server_app = make_server_app(lambda context: (setup, None), outcome)
    client_app = make_client_app(
        SimulatedParties(parties, {party: str(party_folders[party]) for party in parties}, first_kept)
    )
    backend = {
        "client_resources": {"num_cpus": settings.cpus_per_party, "num_gpus": settings.gpus_per_party},
        "init_args": {"logging_level": "error"},
    }
    pythonpath = os.environ.get("PYTHONPATH")  # Flower's Ray backend rewrites it for its workers
    flower_logger = logging.getLogger("flwr")
    level = flower_logger.level
    flower_logger.setLevel(max(level, logging.INFO))  # its DEBUG records would reach Kedro's log handlers
    try:
        run_simulation(server_app, client_app, num_supernodes=len(parties), backend_config=backend)
    finally:
        flower_logger.setLevel(level)
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath
    if "result" not in outcome:
        raise FlowerError(
            "Flower's simulation ended without the ServerApp finishing its rounds; see the log above"
        )
    return outcome["result"]

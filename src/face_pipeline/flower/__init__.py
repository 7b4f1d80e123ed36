"""The federated rounds on Flower (``aggregation.engine: flower``), so parties can live on separate machines.

- :mod:`face_pipeline.flower.rounds`: the ServerApp's round loop (party discovery, FedAvg of the
  shared layers in the configured party order, the minimum of parties a round needs), written
  against a small :class:`~face_pipeline.flower.rounds.Federation` so it runs on Flower's grid
  and on a fake one in the tests.
- :mod:`face_pipeline.flower.client_app`: the ClientApp; its ``train`` calls
  :func:`face_pipeline.models.federated.train_party_round`, the local engine's own step, and keeps
  the party's class head in the ClientApp's state between rounds.
- :mod:`face_pipeline.flower.server_app`: the ServerApp; under ``flwr run`` it reads the Kedro
  project's parameters and the server's model, and writes every round's global model atomically.
- :mod:`face_pipeline.flower.simulation`: the ``aggregation`` node's ``flower`` engine, through
  Flower's simulation on one machine.
- :mod:`face_pipeline.flower.settings`: ``aggregation.flower``, checked before any training.

``pyproject.toml`` beside this file is the Flower App's configuration, for ``flwr run
src/face_pipeline/flower <superlink>`` (the project's own pyproject has a dynamic version,
which ``flwr run`` refuses). Nothing here imports TensorFlow at import time.
"""

import os

# No network at run time (see the Makefile): Flower's usage telemetry and update check, and the
# simulation's Ray usage stats, stay off unless asked for. Set before any flwr or ray import of this
# process that goes through this package.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

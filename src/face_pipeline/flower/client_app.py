"""The ClientApp: one party's round on the party's own machine, its class head kept in its own state.

``train`` calls :func:`face_pipeline.models.federated.train_party_round`, the step the
local engine calls in-process, with the global shared layers the ServerApp sent and
what this party kept from its previous round (``context.state``, never sent away
under ``flwr run``). Which party a SuperNode is, and where its faces are, comes from
its ``--node-config``::

    flower-supernode ... --node-config "party='client1' data='/srv/faces/partitioned/client1'"

``model`` (optional) is the party's trained model from the ``training`` pipeline; the
server's SuperNode gives it, so its head starts where round 0 left it, as in the
local engine (the other parties start theirs from their classes' mean embeddings).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from face_pipeline.errors import FacePipelineError
from face_pipeline.flower.rounds import (
    CONFIG,
    GLOBAL,
    KEPT,
    PARTY,
    RESULT,
    SHARED,
    Weights,
    decode_weights,
    encode_weights,
)

logger = logging.getLogger(__name__)

NODE_CONFIG_HELP = "--node-config \"party='<party>' data='<its partition folder>' [model='<model.keras>']\""


class PartyDataError(FacePipelineError):
    """A party whose SuperNode has no usable data folder (or no party name)."""


@dataclass(frozen=True)
class PartySetup:
    """Who this ClientApp is: the party, its ``<party>/{train,test}/<class>`` folder, its first head."""

    party: str
    folder: Path
    model: Path | None = None  # a trained party model to take the first head (and batch norm) from
    first_kept: Weights | None = field(default=None, repr=False)  # the same, already in memory
    deployed: bool = True  # on a SuperNode of its own (node config), not in Flower's simulation

    def problem(self) -> str:
        """Why this party cannot train here, in one line; empty if it can."""
        if not self.folder.is_dir():
            if not self.deployed:
                return f"{self.party}: data folder {self.folder} does not exist; run the partition pipeline"
            return (
                f"{self.party}: data folder {self.folder} does not exist on its SuperNode; give the party's "
                f"partition folder as data='...' in {NODE_CONFIG_HELP}"
            )
        if self.model is not None and not self.model.is_file():
            return (
                f"{self.party}: model {self.model} does not exist on its SuperNode (node config model='...')"
            )
        return ""

    def initial_kept(self) -> Weights | None:
        """The party's own layers before its first round: from ``model``, else none (weight imprinting)."""
        if self.first_kept is not None:
            return self.first_kept
        if self.model is None:
            return None
        import keras  # noqa: PLC0415 (TensorFlow only where a party trains)

        import face_pipeline.models.layers  # noqa: F401, PLC0415 (registers the custom layers)
        from face_pipeline.models.federated import kept_weights  # noqa: PLC0415

        return kept_weights(keras.saving.load_model(self.model, safe_mode=True))


def party_from_node_config(context: Context) -> PartySetup:
    """A deployed SuperNode's party, from its ``--node-config`` (``party``, ``data``, optional ``model``)."""
    config = context.node_config
    missing = [key for key in ("party", "data") if not str(config.get(key, "")).strip()]
    if missing:
        raise PartyDataError(
            f"this SuperNode's node config has no {' or '.join(missing)}: start it with {NODE_CONFIG_HELP}"
        )
    model = str(config.get("model", "")).strip()
    return PartySetup(
        party=str(config["party"]),
        folder=Path(str(config["data"])).expanduser().resolve(),
        model=Path(model).expanduser().resolve() if model else None,
    )


@dataclass(frozen=True)
class SimulatedParties:
    """Flower's simulation numbers its virtual SuperNodes 0..N-1; party i is ``parties[i]``."""

    parties: tuple[str, ...]
    folders: dict[str, str]
    first_kept: dict[str, Weights] = field(default_factory=dict, repr=False)

    def __call__(self, context: Context) -> PartySetup:
        party = self.parties[int(context.node_config["partition-id"])]
        folder = Path(self.folders[party])
        return PartySetup(party, folder, first_kept=self.first_kept.get(party), deployed=False)


def make_client_app(resolve: Callable[[Context], PartySetup]) -> ClientApp:
    """A ClientApp whose party comes from ``resolve(context)``: the node config, or the simulation's index."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        """Which party this SuperNode is, and whether it can train (checked before round 1)."""
        setup = resolve(context)
        answer = ConfigRecord({"party": setup.party, "problem": setup.problem()})
        return Message(RecordDict({PARTY: answer}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        from face_pipeline.models.federated import train_party_round  # noqa: PLC0415 (imports TensorFlow)

        setup = resolve(context)
        config = message.content[CONFIG]
        if str(config["party"]) != setup.party:
            raise PartyDataError(
                f"the ServerApp sent {config['party']}'s round to the SuperNode of {setup.party}"
            )
        problem = setup.problem()
        if problem:
            raise PartyDataError(problem)
        kept = decode_weights(context.state[KEPT]) if KEPT in context.state else setup.initial_kept()
        update = train_party_round(
            setup.party,
            setup.folder,
            decode_weights(message.content[GLOBAL]),
            kept,
            training=json.loads(str(config["training"])),
            federated=json.loads(str(config["federated"])),
            round_number=int(config["round"]),
        )
        context.state[KEPT] = encode_weights(update.kept)  # the head stays here for the next round
        content = RecordDict(
            {
                SHARED: encode_weights(update.shared),
                RESULT: ConfigRecord(
                    {"num_examples": update.num_examples, "metrics": json.dumps(update.metrics)}
                ),
            }
        )
        if bool(config["return_kept"]):
            content[KEPT] = encode_weights(update.kept)
        return Message(content, reply_to=message)

    return app


# `flwr run` loads this one (pyproject.toml beside this file): each SuperNode's party from its node config.
app = make_client_app(party_from_node_config)

"""The ServerApp's rounds: find each party's SuperNode, send it the global shared layers, average.

The loop is the local engine's (``aggregation`` pipeline) with messages in between:
the same round numbers, the same per-party step on the party's side, the replies
averaged with :func:`face_pipeline.models.federated.federated_average` in the
configured party order (never the order they arrive in) with the same weights, so
both engines give the same global model for the same seed.

It talks to Flower through :class:`Federation` (:class:`GridFederation` wraps the
ServerApp's ``Grid``), which is what lets the tests replay a dead SuperNode without
starting one. TensorFlow is not imported here: averaging is numpy.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from face_pipeline.errors import FacePipelineError
from face_pipeline.flower.settings import FlowerSettings, flower_settings

logger = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]

# Message content: the ServerApp sends GLOBAL + CONFIG, a party answers SHARED + RESULT (+ KEPT).
GLOBAL, CONFIG, SHARED, RESULT, KEPT, PARTY = "global", "config", "shared", "result", "kept", "party"


class FlowerError(FacePipelineError):
    """A Flower run that cannot start or go on; the message names the party and what it said."""


class FlowerRoundError(FlowerError):
    """A round with fewer updates than ``aggregation.flower.min_parties``."""


def encode_weights(weights: Weights) -> ArrayRecord:
    return ArrayRecord({path: Array(np.ascontiguousarray(value)) for path, value in weights.items()})


def decode_weights(record: ArrayRecord) -> Weights:
    return {path: array.numpy() for path, array in record.items()}


_REASON = re.compile(r"^<class '(?P<type>[^']+)'>:<(?P<message>.*)>$", re.DOTALL)


def error_text(reason: str) -> str:
    """The exception message inside Flower's ``<class 'X'>:<'message'>`` error reason, on one line."""
    match = _REASON.match(reason.strip())
    text = reason.strip()
    if match:
        text = match["message"]
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        if not match["type"].startswith("face_pipeline."):  # not one of ours: say what kind of error
            text = f"{match['type'].rsplit('.', 1)[-1]}: {text}"
    return " ".join(text.split())


@dataclass(frozen=True)
class Reply:
    content: RecordDict | None
    error: str | None = None
    node_gone: bool = False  # the SuperLink says the SuperNode stopped sending heartbeats


class Federation(Protocol):
    """What the rounds need from Flower: the connected nodes, and messages to and from them."""

    def node_ids(self) -> list[int]: ...

    def push(self, node_id: int, message_type: str, content: RecordDict, group: str) -> str: ...

    def pull(self, message_ids: Iterable[str]) -> dict[str, Reply]: ...


class GridFederation:
    """:class:`Federation` over a ServerApp's ``Grid`` (simulation or deployment alike)."""

    def __init__(self, grid) -> None:
        self.grid = grid

    def node_ids(self) -> list[int]:
        return list(self.grid.get_node_ids())

    def push(self, node_id: int, message_type: str, content: RecordDict, group: str) -> str:
        message = Message(content, dst_node_id=node_id, message_type=message_type, group_id=group)
        (message_id,) = self.grid.push_messages([message])
        return message_id

    def pull(self, message_ids: Iterable[str]) -> dict[str, Reply]:
        replies = {}
        for message in self.grid.pull_messages(list(message_ids)):
            key = message.metadata.reply_to_message_id
            if message.has_error():
                gone = message.error.code == ErrorCode.NODE_UNAVAILABLE
                text = error_text(message.error.reason or f"error code {message.error.code}")
                if gone:
                    text = f"its SuperNode stopped answering ({text})"
                replies[key] = Reply(None, text, gone)
            else:
                replies[key] = Reply(message.content)
        return replies


@dataclass(frozen=True)
class RoundsSetup:
    """What the ServerApp starts from: the parameters and round 0's global shared weights."""

    training: dict
    aggregation: dict
    global_weights: Weights
    return_kept: bool = False  # simulation only: parties send their head back for the party models


@dataclass
class RoundsResult:
    round_weights: list[Weights]  # index = round; 0 is the server's
    history: list[dict]
    kept: dict[str, Weights] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)


OnRound = Callable[[int, Weights, list[dict]], None]


def train_content(setup: RoundsSetup, party: str, round_number: int, weights: Weights) -> RecordDict:
    config = ConfigRecord(
        {
            "round": round_number,
            "party": party,
            "training": json.dumps(setup.training),
            "federated": json.dumps(setup.aggregation),
            "return_kept": setup.return_kept,
        }
    )
    return RecordDict({GLOBAL: encode_weights(weights), CONFIG: config})


def connect_parties(
    federation: Federation,
    parties: list[str],
    settings: FlowerSettings,
    *,
    known: dict[int, str | None] | None = None,
    wait: bool = True,
    poll_seconds: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Ask every connected SuperNode which party it is; ``{party: node id}`` for the configured ones.

    With ``wait`` (the start of a run), until every party is there or ``connect_timeout``
    passed, and then at least ``min_parties`` must be; a SuperNode that cannot answer,
    two claiming one party, or a configured party whose ClientApp reports a problem
    (its data folder is missing) stops the run here, before any training. Without
    ``wait`` (between rounds), it asks only SuperNodes it has not asked before, and
    anything wrong with them is logged: the rounds go on with the parties they have.
    """
    known = {} if known is None else known  # node id -> party (None: not one of ours, or broken)
    nodes = {party: node for node, party in known.items() if party is not None}
    deadline = clock() + settings.connect_timeout

    def refuse(message: str) -> None:
        if wait:
            raise FlowerError(message)
        logger.warning("%s", message)

    asked: dict[str, int] = {}
    while True:
        for node in federation.node_ids():
            if node not in known and node not in asked.values():
                asked[federation.push(node, MessageType.QUERY, RecordDict(), "connect")] = node
        for message_id, reply in federation.pull(list(asked)).items() if asked else ():
            node = asked.pop(message_id)
            known[node] = None
            if reply.error is not None:
                refuse(f"SuperNode {node} could not say which party it is: {reply.error}")
                continue
            answer = reply.content[PARTY]
            party, problem = str(answer["party"]), str(answer["problem"])
            if party not in parties:
                logger.info("SuperNode %s is party %r, which aggregation.parties does not name", node, party)
                continue
            if party in nodes and nodes[party] != node:
                refuse(
                    f"two SuperNodes say they are {party} ({nodes[party]} and {node}): start one "
                    "SuperNode per party, each with its own --node-config party"
                )
                continue
            if problem:
                refuse(problem)
                continue
            known[node] = party
            nodes[party] = node
            logger.info("party %s is SuperNode %s", party, node)
        missing = [party for party in parties if party not in nodes]
        if not missing or (not wait and not asked):
            return nodes
        if clock() > deadline:
            if not wait:
                return nodes
            if len(nodes) >= settings.min_parties:
                logger.warning(
                    "no SuperNode for %s after %.0fs; going on with %s (aggregation.flower.min_parties: %d)",
                    ", ".join(missing),
                    settings.connect_timeout,
                    ", ".join(nodes),
                    settings.min_parties,
                )
                return nodes
            raise FlowerError(
                f"no SuperNode for {', '.join(missing)} after {settings.connect_timeout:.0f}s (connected: "
                f"{', '.join(nodes) or 'none'}); start one per party with "
                "--node-config \"party='<party>' data='<its partition folder>'\""
            )
        sleep(poll_seconds)


def train_round(
    federation: Federation,
    setup: RoundsSetup,
    nodes: dict[str, int],
    round_number: int,
    weights: Weights,
    *,
    settings: FlowerSettings,
    poll_seconds: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[dict[str, RecordDict], dict[str, str]]:
    """Send the round to every party with a node; ``({party: reply}, {party: why it failed})``.

    Stops waiting as soon as ``min_parties`` can no longer be reached, or after ``round_timeout``.
    """
    parties = [party for party in setup.aggregation["parties"] if party in nodes]
    pending = {
        federation.push(
            nodes[party],
            MessageType.TRAIN,
            train_content(setup, party, round_number, weights),
            str(round_number),
        ): party
        for party in parties
    }
    replies: dict[str, RecordDict] = {}
    failed = {party: "no SuperNode" for party in setup.aggregation["parties"] if party not in nodes}
    deadline = None if settings.round_timeout is None else clock() + settings.round_timeout
    while pending:
        for message_id, reply in federation.pull(list(pending)).items():
            party = pending.pop(message_id)
            if reply.error is None:
                replies[party] = reply.content
            else:
                failed[party] = reply.error
                logger.warning("round %d: %s failed: %s", round_number, party, reply.error)
                if reply.node_gone:
                    nodes.pop(party, None)  # a restarted SuperNode is found again next round
        if len(replies) + len(pending) < settings.min_parties:
            break
        if pending and deadline is not None and clock() > deadline:
            for party in pending.values():
                failed[party] = (
                    f"no reply within aggregation.flower.round_timeout ({settings.round_timeout:g}s)"
                )
            break
        if pending:
            sleep(poll_seconds)
    return replies, failed


def run_rounds(
    federation: Federation,
    setup: RoundsSetup,
    *,
    on_round: OnRound | None = None,
    poll_seconds: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RoundsResult:
    """Rounds 1..R from ``setup.global_weights``; ``on_round(r, weights, history)`` after each and round 0."""
    from face_pipeline.models.federated import federated_average  # noqa: PLC0415 (imports Keras)

    aggregation = setup.aggregation
    parties = list(aggregation["parties"])
    settings = flower_settings(aggregation)
    known: dict[int, str | None] = {}
    nodes = connect_parties(
        federation, parties, settings, known=known, poll_seconds=poll_seconds, clock=clock, sleep=sleep
    )
    weights = setup.global_weights
    result = RoundsResult([weights], [])
    if on_round is not None:
        on_round(0, weights, result.history)
    for round_number in range(1, aggregation["rounds"] + 1):
        started = clock()
        if len(nodes) < len(parties):  # a party whose SuperNode came back since
            nodes.update(
                connect_parties(
                    federation,
                    parties,
                    settings,
                    known=known,
                    wait=False,
                    poll_seconds=poll_seconds,
                    clock=clock,
                    sleep=sleep,
                )
            )
        replies, failed = train_round(
            federation,
            setup,
            nodes,
            round_number,
            weights,
            settings=settings,
            poll_seconds=poll_seconds,
            clock=clock,
            sleep=sleep,
        )
        for node, party in known.items():  # a SuperNode that died is not asked again; its party may come back
            if party is not None and nodes.get(party) != node:
                known[node] = None
        if len(replies) < settings.min_parties:
            reasons = "; ".join(f"{party}: {why}" for party, why in failed.items())
            raise FlowerRoundError(
                f"round {round_number} of {aggregation['rounds']} failed: {len(replies)} of {len(parties)} "
                f"parties sent an update, aggregation.flower.min_parties is {settings.min_parties} "
                f"({reasons}). The last global model is round {round_number - 1}'s."
            )
        updates = []
        metrics = {}
        for party in parties:  # the configured order, as the local engine averages
            if party not in replies:
                continue
            content = replies[party]
            shared = decode_weights(content[SHARED])
            outcome = content[RESULT]
            num_examples = int(outcome["num_examples"])
            metrics[party] = json.loads(str(outcome["metrics"]))
            result.classes[party] = int(metrics[party]["classes"])
            if KEPT in content:
                result.kept[party] = decode_weights(content[KEPT])
            updates.append((party, shared, num_examples if aggregation["weighting"] == "images" else 1))
        weights = federated_average(updates)
        entry = {"round": round_number, "seconds": round(clock() - started, 1), "parties": metrics}
        if failed:
            entry["failed"] = failed
            logger.warning(
                "round %d averaged %d of %d parties (aggregation.flower.min_parties is %d); left out: %s",
                round_number,
                len(replies),
                len(parties),
                settings.min_parties,
                ", ".join(failed),
            )
        result.history.append(entry)
        result.round_weights.append(weights)
        logger.info(
            "round %d/%d done in %.0fs: held-out top-1 %s",
            round_number,
            aggregation["rounds"],
            entry["seconds"],
            ", ".join(f"{party} {m['closed_set_top1']:.3f}" for party, m in metrics.items()),
        )
        if on_round is not None:
            on_round(round_number, weights, result.history)
    return result

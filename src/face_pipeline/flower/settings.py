"""``aggregation.flower``: what a Flower run needs beyond the rounds themselves; imports nothing heavy.

The ``aggregation`` pipeline checks these before any training starts, so a bad value
fails in a second instead of after round 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from face_pipeline.errors import FacePipelineError

ENGINES = ("local", "flower")


@dataclass(frozen=True)
class FlowerSettings:
    """``aggregation.flower`` with its defaults filled in.

    ``min_parties``: the fewest parties whose update a round may be averaged from; a
    round with fewer replies (a SuperNode died, a ClientApp failed) fails the run and
    leaves the last complete round's global model as it is. ``round_timeout``: seconds a
    round waits for replies (None: until every party replied or failed; the SuperLink
    reports a SuperNode that stopped sending heartbeats after about a minute).
    ``connect_timeout``: seconds the ServerApp waits for every party's SuperNode to connect.
    ``cpus_per_party``/``gpus_per_party``: what Flower's simulation (Ray) gives each ClientApp.
    """

    min_parties: int
    round_timeout: float | None = None
    connect_timeout: float = 300.0
    cpus_per_party: float = 1.0
    gpus_per_party: float = 0.0


def flower_settings(aggregation: dict) -> FlowerSettings:
    """Read and check ``aggregation.flower``; every key may be left out."""
    parties = list(aggregation["parties"])
    given = dict(aggregation.get("flower") or {})
    unknown = sorted(
        set(given) - {"min_parties", "round_timeout", "connect_timeout", "cpus_per_party", "gpus_per_party"}
    )
    if unknown:
        raise FacePipelineError(
            f"aggregation.flower has unknown key(s) {', '.join(unknown)}: choose from min_parties, "
            "round_timeout, connect_timeout, cpus_per_party, gpus_per_party"
        )
    min_parties = given.get("min_parties")
    if min_parties is None:
        min_parties = len(parties)
    if (
        isinstance(min_parties, bool)
        or not isinstance(min_parties, int)
        or not 1 <= min_parties <= len(parties)
    ):
        raise FacePipelineError(
            f"aggregation.flower.min_parties is {given.get('min_parties')!r}: a whole number from 1 to "
            f"{len(parties)} (the number of parties), or null for all of them"
        )
    for key in ("round_timeout", "connect_timeout"):
        value = given.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise FacePipelineError(
                f"aggregation.flower.{key} is {value!r}: a number of seconds above 0, or null"
            )
    for key in ("cpus_per_party", "gpus_per_party"):
        value = given.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise FacePipelineError(f"aggregation.flower.{key} is {value!r}: a number of at least 0")
    if given.get("cpus_per_party") == 0:
        raise FacePipelineError("aggregation.flower.cpus_per_party is 0: each ClientApp needs some CPU")
    connect_timeout = given.get("connect_timeout")
    return FlowerSettings(
        min_parties=min_parties,
        round_timeout=None if given.get("round_timeout") is None else float(given["round_timeout"]),
        connect_timeout=300.0 if connect_timeout is None else float(connect_timeout),
        cpus_per_party=float(given.get("cpus_per_party") or 1.0),
        gpus_per_party=float(given.get("gpus_per_party") or 0.0),
    )

"""The federated rounds on Flower: its simulation and its deployment (a real SuperLink and SuperNodes).

Every run here trains the same tiny parties (4 demo identities each, 32 px, a one-block
ResNet) with ``TF_DETERMINISTIC_OPS=1``, which makes TensorFlow's kernels and the
input pipeline's random flips repeatable, so the Flower engines must give the local
engine's global weights: the same per-party step, seeds and averaging order.
Kedro and Flower run in subprocesses, as a user runs them; one local-engine run is
the reference for all. The deployment's failing runs start before its good one and
share its SuperLink, so the minute the SuperLink takes to give up on a killed
SuperNode passes while the good run trains.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY, KedroProject
from flwr.app import ConfigRecord, Context, RecordDict

import face_pipeline.models.layers  # noqa: F401 (the saved models' custom layers)
from face_pipeline.errors import FacePipelineError
from face_pipeline.flower.client_app import PartyDataError, party_from_node_config
from face_pipeline.flower.rounds import (
    CONFIG,
    GLOBAL,
    PARTY,
    RESULT,
    SHARED,
    FlowerRoundError,
    Reply,
    RoundsSetup,
    decode_weights,
    encode_weights,
    error_text,
    run_rounds,
)
from face_pipeline.flower.server_app import replace_atomically
from face_pipeline.models.federated import federated_average, shared_weights
from face_pipeline.pipelines.aggregation.nodes import check_aggregation_params

APP = REPO / "src" / "face_pipeline" / "flower"
BIN = Path(sys.executable).parent
PARTIES = ("server", "client1", "client2")
CLASSES, TRAIN_IMAGES, TEST_IMAGES = 4, 8, 2  # per party: a few seconds of training per round
# Attention off: the smallest graph traces fastest, and tracing is most of a tiny round's time.
TRAINING = {**TINY, "img_size": 32, "epochs": 1, "precision": "float32", "attention": "none"}
AGGREGATION = {"rounds": 2, "local_epochs": 1}


def load_shared(path: Path) -> dict[str, np.ndarray]:
    return shared_weights(keras.saving.load_model(path, safe_mode=True))


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_allclose(actual[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def run_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "TF_DETERMINISTIC_OPS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # The SuperLink and SuperNodes start flower-superexec by name: the venv's bin must be on PATH.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


def kedro_run(project: KedroProject, params: str = "", timeout: int = 900) -> float:
    """``kedro run`` of the federated rounds in ``project``; its wall time."""
    command = [sys.executable, "-m", "kedro", "run", "--pipeline=aggregation", "--nodes=run_federated_rounds"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *([f"--params={params}"] if params else [])],
        cwd=project.path,
        env=run_env(FLWR_HOME=str(project.path / ".flwr")),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return time.perf_counter() - started


# ---- one tiny project, and the local engine's run as the reference ------------------------------


@pytest.fixture(scope="module")
def tiny_project(demo_party_folders: KedroProject, tmp_path_factory) -> KedroProject:
    """The demo partition cut to a few faces per party, tiny parameters, an untrained server model."""
    project = KedroProject(tmp_path_factory.mktemp("flower"))
    source = demo_party_folders.data("03_primary/partitioned")
    for party in PARTIES:
        classes = sorted((source / party / "train").iterdir(), key=lambda p: int(p.name))[:CLASSES]
        for folder in classes:
            for split, count in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES)):
                target = project.data(f"03_primary/partitioned/{party}/{split}/{folder.name}")
                target.mkdir(parents=True)
                for image in sorted((source / party / split / folder.name).iterdir())[:count]:
                    shutil.copy(image, target / image.name)
    params = {"training": TRAINING, "aggregation": AGGREGATION}
    (project.path / "conf" / "local" / "parameters_flower.yml").write_text(yaml.safe_dump(params))
    from face_pipeline.models.training import build_model

    training = project.catalog().load("params:training")
    server = project.data("06_models/server/model.keras")
    server.parent.mkdir(parents=True)
    build_model(training, CLASSES).save(server)  # round 0: any model the parameters build will do
    return project


@dataclass
class Reference:
    rounds: list[dict]  # the global shared weights of rounds 0, 1, 2
    history: dict
    seconds: float


@pytest.fixture(scope="module")
def local_reference(tiny_project: KedroProject) -> Reference:
    """Two rounds of the local engine (``engine: local``, the default)."""
    seconds = kedro_run(tiny_project)
    rounds = [
        load_shared(tiny_project.data(f"06_models/federated/rounds/round_{n:02d}.keras")) for n in range(3)
    ]
    history = json.loads(tiny_project.data("07_model_output/federated/history.json").read_text())
    print(f"\nlocal engine, two rounds: {seconds:.0f}s (kedro run)")
    return Reference(rounds, history, seconds)


# ---- the simulation: the aggregation node with engine=flower ---------------------------------------


def test_the_flower_engine_gives_the_local_engines_outputs(tiny_project, local_reference):
    # One round: round 1 is the same in a one-round and a two-round run (seeds are per round and party).
    seconds = kedro_run(tiny_project, "aggregation.engine=flower,aggregation.rounds=1")
    print(f"\nflower engine (simulation), one round: {seconds:.0f}s (kedro run)")

    data = tiny_project.data
    assert_same_weights(
        load_shared(data("06_models/federated/global_model.keras")), local_reference.rounds[1]
    )
    rounds = sorted(p.name for p in data("06_models/federated/rounds").iterdir())
    assert rounds == ["round_00.keras", "round_01.keras"]
    assert_same_weights(
        load_shared(data("06_models/federated/rounds/round_00.keras")), local_reference.rounds[0]
    )
    for party in PARTIES:  # the global layers with the party's own head, sent back by its ClientApp
        model = keras.saving.load_model(data(f"06_models/federated/parties/{party}.keras"), safe_mode=True)
        assert model.get_layer("class_head").output.shape[-1] == CLASSES
        assert_same_weights(shared_weights(model), local_reference.rounds[1])
    history = json.loads(data("07_model_output/federated/history.json").read_text())
    assert history["params"]["engine"] == "flower"
    reference = local_reference.history["rounds"][0]["parties"]
    for party, metrics in history["rounds"][0]["parties"].items():
        assert metrics["train_images"] == reference[party]["train_images"] == CLASSES * TRAIN_IMAGES
        assert metrics["train_loss"] == pytest.approx(reference[party]["train_loss"], rel=1e-5)
    assert list(history["rounds"][0]["parties"]) == list(PARTIES)
    table = pd.read_parquet(data("07_model_output/federated/round_metrics.parquet"))
    assert len(table) == 3 and list(table["party"]) == list(PARTIES)
    assert data("08_reporting/federated/round_curves.png").read_bytes()[:4] == b"\x89PNG"


# ---- the deployment: a SuperLink and one SuperNode per party, on loopback ----------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group this test started (the node and what it spawned)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
    # Children outlive a parent that exited; the group id is the one this test created.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Deployment:
    project: KedroProject
    home: Path
    env: dict[str, str]
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, *command: str) -> subprocess.Popen:
        with (self.home / f"{name}.log").open("w") as log:
            process = subprocess.Popen(
                [str(BIN / command[0]), *command[1:]],
                cwd=self.project.path,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so its children stop with it
            )
        self.processes.append(process)
        return process

    def flwr_run(self, out: str, params: str = "") -> subprocess.Popen:
        config = f"project='{self.project.path}' out='{out}' params='{params}'"
        with (self.home / f"run-{Path(out).name}.log").open("w") as log:
            run = subprocess.Popen(
                [str(BIN / "flwr"), "run", str(APP), "test", "--run-config", config, "--stream"],
                cwd=self.project.path,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(run)  # stopped with the rest if a test gives up on it
        return run

    def status(self, run: subprocess.Popen, out: str) -> dict:
        """The finished run's status from the SuperLink (``flwr ls``)."""
        run.wait(timeout=900)
        output = (self.home / f"run-{Path(out).name}.log").read_text()
        match = re.search(r"Successfully started run (\d+)", output)
        assert match, output[-3000:]
        listed = subprocess.run(
            [str(BIN / "flwr"), "ls", "test", "--run-id", match[1], "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        (entry,) = json.loads(listed.stdout[listed.stdout.index("{") :])["runs"]
        return entry | {"log": output}


@pytest.fixture(scope="module")
def deployment(tiny_project: KedroProject, tmp_path_factory):
    """``flower-superlink`` and one ``flower-supernode`` per party, on loopback.

    Two more SuperNodes for the bad inputs: client3, whose data folder is missing, and
    client4 (client1's faces), whose SuperNode the dying run kills.
    """
    home = tmp_path_factory.mktemp("flwr_home")
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    federation = Deployment(tiny_project, home, run_env(FLWR_HOME=str(home)))
    try:
        superlink = federation.start(
            "superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert superlink.poll() is None and time.monotonic() < deadline, (
                home / "superlink.log"
            ).read_text()
            time.sleep(0.5)
        partitioned = tiny_project.data("03_primary/partitioned")
        folders = {party: partitioned / party for party in (*PARTIES, "client3")} | {
            "client4": partitioned / "client1"
        }
        for party, folder in folders.items():
            config = f"party='{party}' data='{folder}'"
            if party == "server":  # its head starts where round 0 left it, as in the local engine
                config += f" model='{tiny_project.data('06_models/server/model.keras')}'"
            federation.nodes[party] = federation.start(
                party, "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--port", str(free_port()), "--node-config", config,
            )  # fmt: skip
        yield federation
    finally:
        for process in reversed(federation.processes):
            stop(process)


@pytest.fixture(scope="module")
def bad_runs(deployment: Deployment) -> dict[str, subprocess.Popen]:
    """The runs that must fail, started before the good one so that their waiting overlaps its rounds.

    ``dead``: client4's SuperNode is killed (SIGKILL, no goodbye) as soon as round 0 is on
    disk, i.e. while round 1 is under way; the SuperLink notices it after two missed
    30-second heartbeats, the longest wait of these tests.
    """
    runs = {
        "missing": deployment.flwr_run(
            "data/06_models/federated/missing", "aggregation.parties=[server,client3]"
        ),
        "dead": deployment.flwr_run("data/06_models/federated/dead", "aggregation.parties=[client4]"),
    }
    round_zero = deployment.project.data("06_models/federated/dead/rounds/round_00.keras")

    def kill_client4_in_round_one() -> None:
        deadline = time.monotonic() + 600
        while not round_zero.exists():
            if runs["dead"].poll() is not None or time.monotonic() > deadline:
                return  # the test says what went wrong
            time.sleep(0.2)
        os.killpg(deployment.nodes["client4"].pid, signal.SIGKILL)  # the SuperNode and its ClientApp

    threading.Thread(target=kill_client4_in_round_one, daemon=True).start()
    return runs


def test_deployment_two_rounds_equal_the_local_engine(deployment, bad_runs, local_reference):
    started = time.perf_counter()
    status = deployment.status(deployment.flwr_run("data/06_models/federated/flower"), "flower")
    seconds = time.perf_counter() - started
    print(f"\nflower deployment, two rounds: {seconds:.0f}s (flwr run, SuperNodes already connected)")

    assert status["status"] == "finished:completed", status["status-details"] + status["log"][-3000:]
    out = deployment.project.data("06_models/federated/flower")
    for number in range(3):
        assert_same_weights(
            load_shared(out / "rounds" / f"round_{number:02d}.keras"), local_reference.rounds[number]
        )
    assert_same_weights(load_shared(out / "global_model.keras"), local_reference.rounds[2])
    history = json.loads((out / "history.json").read_text())
    assert [list(entry["parties"]) for entry in history["rounds"]] == [list(PARTIES)] * 2
    assert not [p.name for p in out.rglob("*partial*")]


def test_a_party_whose_data_folder_is_missing_fails_the_run_naming_it(deployment, bad_runs):
    status = deployment.status(bad_runs["missing"], "missing")

    assert status["status"] == "finished:failed"
    folder = deployment.project.data("03_primary/partitioned/client3")
    assert f"client3: data folder {folder} does not exist on its SuperNode" in status["status-details"]
    assert "\n" not in status["status-details"]
    assert not deployment.project.data("06_models/federated/missing").exists()  # stopped before round 0


def test_a_supernode_that_dies_mid_round_fails_the_run_and_leaves_the_last_global_model(deployment, bad_runs):
    status = deployment.status(bad_runs["dead"], "dead")

    assert deployment.nodes["client4"].poll() is not None, "client4's SuperNode was never killed"
    assert status["status"] == "finished:failed", status["log"][-3000:]
    details = status["status-details"]
    assert "round 1 of 2 failed: 0 of 1 parties sent an update" in details, details
    assert "client4: its SuperNode stopped answering" in details
    assert "The last global model is round 0's" in details
    out = deployment.project.data("06_models/federated/dead")
    round_zero = load_shared(out / "rounds" / "round_00.keras")
    assert_same_weights(load_shared(out / "global_model.keras"), round_zero)  # whole, and still round 0
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "global_model.keras", "history.json", "round_00.keras"
    ]  # fmt: skip


# ---- the round loop against a fake federation: no processes, no training ----------------------------


class FakeFederation:
    """Parties whose "training" adds a party's offset to the global weights; replies come back reversed."""

    def __init__(self, parties, *, dies_in: dict[str, int] | None = None, examples=(10, 30, 60)):
        self.party_of = {100 + i: party for i, party in enumerate(parties)}
        self.examples = dict(zip(parties, examples, strict=True))
        self.dies_in = dies_in or {}
        self.outbox: dict[str, tuple[int, str, RecordDict]] = {}

    def node_ids(self):
        return list(self.party_of)

    def push(self, node_id, message_type, content, group):
        message_id = f"m{len(self.outbox)}-{group}-{node_id}"
        self.outbox[message_id] = (node_id, message_type, content)
        return message_id

    def pull(self, message_ids):
        replies = {}
        for message_id in reversed(list(message_ids)):
            node_id, message_type, content = self.outbox.pop(message_id)
            party = self.party_of[node_id]
            if message_type == "query":
                replies[message_id] = Reply(
                    RecordDict({PARTY: ConfigRecord({"party": party, "problem": ""})})
                )
            elif self.dies_in.get(party) == content[CONFIG]["round"]:
                replies[message_id] = Reply(None, "its SuperNode stopped answering (Node Unavailable)", True)
            else:
                shared = {
                    path: value + PARTIES.index(party) + 1
                    for path, value in decode_weights(content[GLOBAL]).items()
                }
                result = ConfigRecord(
                    {
                        "num_examples": self.examples[party],
                        "metrics": json.dumps({"party": party, "classes": CLASSES, "closed_set_top1": 0.5}),
                    }
                )
                replies[message_id] = Reply(RecordDict({SHARED: encode_weights(shared), RESULT: result}))
        return replies


def fake_setup(**flower) -> RoundsSetup:
    aggregation = {"parties": list(PARTIES), "rounds": 2, "weighting": "images", "flower": flower}
    return RoundsSetup({}, aggregation, {"dense/kernel": np.zeros((2, 3), np.float32)})


def test_a_round_goes_on_under_min_parties_when_a_supernode_dies():
    saved = []
    federation = FakeFederation(PARTIES, dies_in={"client2": 2})

    result = run_rounds(
        federation, fake_setup(min_parties=2), on_round=lambda n, w, h: saved.append(n), poll_seconds=0
    )

    assert saved == [0, 1, 2]
    round_one = result.round_weights[1]
    expected = federated_average(
        [
            (p, {"dense/kernel": round_one["dense/kernel"] + i + 1}, n)
            for i, (p, n) in enumerate([("server", 10), ("client1", 30)])
        ]
    )
    np.testing.assert_array_equal(result.round_weights[2]["dense/kernel"], expected["dense/kernel"])
    assert list(result.history[1]["parties"]) == ["server", "client1"]
    assert result.history[1]["failed"] == {"client2": "its SuperNode stopped answering (Node Unavailable)"}


def test_a_round_below_min_parties_fails_and_the_last_global_model_stays():
    saved = []

    with pytest.raises(
        FlowerRoundError,
        match=r"round 2 of 2 failed: 2 of 3 parties sent an update, .*"
        r"min_parties is 3 \(client2: its SuperNode stopped answering .*round 1's",
    ):
        run_rounds(
            FakeFederation(PARTIES, dies_in={"client2": 2}),
            fake_setup(),
            on_round=lambda n, w, h: saved.append(n),
            poll_seconds=0,
        )

    assert saved == [0, 1]  # nothing of round 2 reached the disk


def test_updates_are_averaged_in_the_configured_order_whatever_order_they_arrive_in():
    result = run_rounds(FakeFederation(PARTIES), fake_setup(), poll_seconds=0)

    start = np.zeros((2, 3), np.float32)
    expected = federated_average(
        [
            (p, {"dense/kernel": start + i + 1}, n)
            for i, (p, n) in enumerate(zip(PARTIES, (10, 30, 60), strict=True))
        ]
    )
    np.testing.assert_array_equal(result.round_weights[1]["dense/kernel"], expected["dense/kernel"])
    assert list(result.history[0]["parties"]) == list(PARTIES)


# ---- small bad inputs ------------------------------------------------------------------------------


def test_a_file_replaced_atomically_is_whole_even_when_the_write_fails(tmp_path):
    target = tmp_path / "global_model.keras"
    target.write_text("round 1")

    def half_write(path: Path) -> None:
        path.write_text("round 2, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, half_write)

    assert target.read_text() == "round 1" and [p.name for p in tmp_path.iterdir()] == ["global_model.keras"]
    replace_atomically(target, lambda path: path.write_text("round 2"))
    assert target.read_text() == "round 2" and len(list(tmp_path.iterdir())) == 1


def test_a_supernode_without_party_or_data_in_its_node_config_is_refused():
    context = Context(
        run_id=1, node_id=2, node_config={"party": "client1"}, state=RecordDict(), run_config={}
    )

    with pytest.raises(PartyDataError, match=r"node config has no data: start it with --node-config"):
        party_from_node_config(context)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"engine": "grpc"}, r"aggregation.engine is 'grpc': choose one of local, flower"),
        ({"flower": {"min_parties": 4}}, r"aggregation.flower.min_parties is 4: a whole number from 1 to 3"),
        (
            {"flower": {"round_timeout": 0}},
            r"aggregation.flower.round_timeout is 0: a number of seconds above 0",
        ),
        ({"flower": {"min_party": 2}}, r"aggregation.flower has unknown key\(s\) min_party"),
    ],
)
def test_bad_flower_parameters_are_refused_before_any_training(changes, message):
    aggregation = {"parties": list(PARTIES), "rounds": 2, "local_epochs": 1, "batch_norm": "shared"}
    aggregation = {**aggregation, "weighting": "images", **changes}
    with pytest.raises(FacePipelineError, match=message):
        check_aggregation_params(aggregation)


def test_flowers_error_reasons_become_one_line():
    ours = (
        "<class 'face_pipeline.flower.client_app.PartyDataError'>:<'client3: data folder /x does not exist'>"
    )
    theirs = "<class 'ValueError'>:<'bad\nvalue'>"

    assert error_text(ours) == "client3: data folder /x does not exist"
    assert error_text(theirs) == "ValueError: bad value"

"""Shared fixtures: a throw-away copy of the project to run pipelines in, and the real faces."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ORL_REC = SHARED_DATA / "orl_rec"
ORL_FACES = SHARED_DATA / "orl_faces"

# A one-block-per-stage SE-ECA ResNet: trains the demo's parties in seconds.
TINY = {
    "backbone": {"stages": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "stem_width": 16},
    "embedding_size": 64,
    "batch_size": 16,
}


class KedroProject:
    """The project's conf in a temporary folder, so each test gets its own ``data/``."""

    def __init__(self, path: Path):
        self.path = path
        shutil.copytree(REPO / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
        (path / "conf" / "local").mkdir()
        shutil.copy(REPO / "pyproject.toml", path / "pyproject.toml")
        (path / "src").mkdir()  # bootstrap_project wants it; the package itself is installed

    def run(
        self, pipeline: str, env: str | None = None, params: dict[str, Any] | None = None, **options
    ) -> dict:
        """``kedro run``; ``options`` are KedroSession.run's, e.g. ``namespaces=["client1"]``.

        Runtime ``params`` must be nested dicts (``{"partition": {"seed": 7}}``): only the
        CLI turns dotted keys into nested ones.
        """
        bootstrap_project(self.path)
        with KedroSession.create(project_path=self.path, env=env, runtime_params=params) as session:
            return session.run(pipeline_names=[pipeline], **options)

    def catalog(self, env: str | None = None, params: dict[str, Any] | None = None):
        bootstrap_project(self.path)
        with KedroSession.create(project_path=self.path, env=env, runtime_params=params) as session:
            return session.load_context().catalog

    def data(self, relative: str) -> Path:
        return self.path / "data" / relative


# The longest groups start first, one per worker, so neither worker ends the run alone on a long
# one: the architecture comparison (about 9 min on 2 cores) and the demo run with its readers
# (about 7 min), then Flower's deployment (about 4 min) after the quick verification tests.
FIRST_GROUPS = ("test_comparison", "demo_outputs", "test_verification", "test_flower")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]):
    """Keep what shares expensive fixtures on one worker under ``make test``'s two pytest-xdist workers.

    ``--dist loadgroup`` sends each group to one worker: every test that reads the one demo run
    (``demo_outputs``) together, and otherwise each module's tests together, so module fixtures
    (a trained demo, a Flower deployment, a kedro-viz server) are built once. A wrapper, because
    xdist reads the groups in its own hook of the same name.
    """
    groups = {}
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        groups[item] = "demo_outputs" if "demo_outputs" in fixtures else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    first = {group: rank for rank, group in enumerate(FIRST_GROUPS)}
    items.sort(key=lambda item: first.get(groups[item], len(first)))  # stable: the rest keep their order
    return (yield)


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KedroProject:
    project = KedroProject(tmp_path)
    monkeypatch.chdir(tmp_path)
    return project


@pytest.fixture(scope="session")
def orl_rec() -> Path:
    assert (ORL_REC / "train.rec").is_file(), f"real faces missing: {ORL_REC} (../shared/data)"
    return ORL_REC


@pytest.fixture(scope="session")
def orl_faces() -> Path:
    assert ORL_FACES.is_dir(), f"real faces missing: {ORL_FACES} (../shared/data)"
    return ORL_FACES


@pytest.fixture(scope="module")
def demo_party_folders(tmp_path_factory) -> KedroProject:
    """Generated demo faces, extracted, validated and partitioned once per test module."""
    project = KedroProject(tmp_path_factory.mktemp("demo"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project.path)
        for pipeline in ("synthetic", "extraction", "validation", "partition"):
            project.run(pipeline, env="demo")
    return project


# `make demo` in minutes: a tiny SE-ECA ResNet, fewer epochs and rounds.
QUICK_DEMO = {
    "training": {**TINY, "epochs": 10},
    "aggregation": {"rounds": 2, "local_epochs": 2},
    "attention": {"samples_per_party": 3, "channel_images": 16},
}


@pytest.fixture(scope="session")
def demo_outputs(tmp_path_factory) -> KedroProject:
    """``kedro run --env demo`` (every pipeline of ``__default__``) once per test session.

    What the notebook, kedro-viz and end-to-end tests read: a project whose ``data/``
    holds every artifact, from the raw demo RecordIO to the attention maps.
    """
    project = KedroProject(tmp_path_factory.mktemp("demo_outputs"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project.path)
        patch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
        project.run("synthetic", env="demo")
        project.run("__default__", env="demo", params=QUICK_DEMO)
    return project

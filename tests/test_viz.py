"""kedro-viz draws the lineage: the real ``kedro viz run`` in headless Chromium, and ``kedro viz build``.

Both run in a throw-away copy of the project (conf/ and pyproject.toml; the package is
installed). kedro-viz needs the pipelines' structure only, no data. The browser is
Debian's Chromium (``make browser`` installs it), driven by Playwright; Playwright's own
browsers are never downloaded, and every request that would leave the machine is refused.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import KedroProject
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous waits: the machine is small and shared. Running out of one is a failure with a
# message, never a claim about speed.
SERVER_WAIT_S = 300
BROWSER_WAIT_MS = 120_000

PIPELINES = {
    "__default__",
    "synthetic",
    "extraction",
    "validation",
    "partition",
    "training",
    "aggregation",
    "evaluation",
    "attention",
}
LAYERS = ["raw", "intermediate", "primary", "model_input", "models", "model_output", "reporting"]
PARTIES = ("server", "client1", "client2")

# What __default__ draws. The training pipeline is one template namespaced per party, and
# kedro-viz collapses each namespace into a modular-pipeline node ("server", ...) until it
# is expanded; the namespaced datasets that other pipelines read (server.party_model) are
# drawn beside it.
DEFAULT_TASKS = [
    "extract_images",
    "validate_images",
    "partition_identities",
    "run_federated_rounds",
    "train_centralized_baseline",
    "make_verification_pairs",
    "verify_federated",
    "evaluate_closed_set",
    "write_evaluation_report",
    "explain_party_faces",
    "explain_image",
    "measure_channel_attention",
    "plot_channel_attention",
    "write_attention_report",
]
# dataset -> its catalog layer
DEFAULT_DATASETS = {
    "raw_recordio": "raw",
    "extracted_images": "intermediate",
    "clean_manifest": "primary",
    "partitioned_images": "primary",
    "verification_pairs": "model_input",
    "server.party_model": "models",
    "client1.party_model": "models",
    "global_model": "models",
    "federated_history": "model_output",
    "gradcam_samples": "model_output",
    "gradcam_grid": "reporting",
    "evaluation_report": "reporting",
    "attention_report": "reporting",
}
# The attention pipeline's datasets; its view draws only these four layers.
ATTENTION_DATASETS = {
    "partitioned_images": "primary",
    "global_model": "models",
    "federated_party_models": "models",
    "gradcam_samples": "model_output",
    "channel_attention": "model_output",
    "gradcam_grid": "reporting",
    "attention_report": "reporting",
}
ATTENTION_TASKS = [
    "explain_party_faces",
    "explain_image",
    "measure_channel_attention",
    "plot_channel_attention",
    "write_attention_report",
]


# ---- helpers ---------------------------------------------------------------------------------


def _kedro_env() -> dict[str, str]:
    return {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "PYTHONIOENCODING": "utf-8",  # kedro-viz prints emoji
    }


def _free_port() -> int:
    """A free port below 49152: kedro-viz refuses the ephemeral range the OS hands out."""
    for port in random.sample(range(20_000, 49_000), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port between 20000 and 49000")


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the whole process group (kedro viz run spawns the server), SIGKILL if it stays."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for_viz(process: subprocess.Popen, log: Path, port: int) -> str:
    """The URL ``kedro viz run`` serves, once ``/api/main`` answers."""
    deadline = time.monotonic() + SERVER_WAIT_S
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if process.poll() is not None:
            pytest.fail(f"kedro viz run exited with {process.returncode}:\n{output[-6000:]}")
        # kedro-viz moves to the next port if ours was taken meanwhile; it says where it went.
        found = re.search(r"running at\s*http://127\.0\.0\.1:(\d+)/", output)
        url = f"http://127.0.0.1:{found.group(1) if found else port}"
        try:
            with urllib.request.urlopen(f"{url}/api/main", timeout=10) as response:
                if response.status == 200:
                    return url
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(
        f"kedro viz run did not answer on port {port} within {SERVER_WAIT_S} s:\n"
        f"{log.read_text(errors='replace')[-6000:]}"
    )


def _node(page: Page, name: str, kind: str | None = None):
    """A drawn flowchart node (an SVG <g>), by its full name and optionally its type."""
    selector = f'g.pipeline-node[data-node-fullname="{name}"]'
    if kind:
        selector += f'[data-node-type="{kind}"]'
    return page.locator(f"#nodes {selector}")


def _open(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(BROWSER_WAIT_MS)

    def local_only(route):
        # Nothing leaves the machine (kedro-viz asks fonts.googleapis.com for its fonts).
        if route.request.url.startswith((url, "blob:", "data:")):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", local_only)
    page.goto(url)
    # The flowchart is drawn once its SVG holds nodes.
    page.wait_for_selector("#nodes g.pipeline-node")
    return page


def _dismiss_popups(page: Page) -> None:
    """Best effort: the feature tour and the version banner cover part of the screenshot.

    Neither is the lineage, and one can cover the other, so the click is dispatched to the
    button rather than made at its place on the screen.
    """
    for locator in (
        page.locator(".feature-hints__close"),
        page.locator(".update-reminder-unexpanded button", has_text="Dismiss"),
    ):
        try:
            if locator.count() and locator.first.is_visible():
                locator.first.dispatch_event("click", timeout=5_000)
        except PlaywrightError:
            pass


def _settle(page: Page) -> None:
    """Wait until the drawing stops moving: kedro-viz animates nodes and layer labels into place."""
    drawn = "#nodes g.pipeline-node, .pipeline-layer-name, rect.pipeline-layer"
    positions = "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width]; })"
    samples: list = []
    deadline = time.monotonic() + BROWSER_WAIT_MS / 1000
    while time.monotonic() < deadline:
        samples = [*samples[-2:], page.eval_on_selector_all(drawn, positions)]
        if len(samples) == 3 and samples[0] == samples[1] == samples[2]:
            return
        page.wait_for_timeout(400)
    pytest.fail(f"the flowchart was still moving after {BROWSER_WAIT_MS // 1000} s")


def _screenshot(page: Page, path: Path) -> None:
    page.mouse.move(0, 0)  # no hover highlight left from the last click
    _settle(page)
    page.screenshot(path=str(path))
    assert path.is_file(), path
    # A blank 1600x1000 PNG is a few kB; a drawn flowchart with its sidebar is far more.
    assert path.stat().st_size > 20_000, f"{path} is {path.stat().st_size} bytes: nothing drawn?"


_DRAWN_LAYERS = """names => {
    const box = e => { const r = e.getBoundingClientRect(); return [r.y, r.height]; };
    return {
        labels: [...document.querySelectorAll('.pipeline-layer-name')]
            .map(e => [e.textContent.trim(), ...box(e)]),
        bands: [...document.querySelectorAll('rect.pipeline-layer')].map(box),
        datasets: Object.fromEntries(names.map(n => [n, box(document.querySelector(
            `#nodes g.pipeline-node[data-node-type="data"][data-node-fullname="${n}"]`))])),
    };
}"""


def _layers_problem(drawn: dict, expected: list[str], datasets: dict[str, str]) -> str | None:
    """What is wrong with the drawn layers, or None."""
    # The DOM keeps the order of kedro-viz's updates (switching pipelines reorders it), so
    # what counts is where each label and band is drawn.
    labels = sorted((y + height / 2, name) for name, y, height in drawn["labels"])
    if [name for _, name in labels] != expected:
        return f"layer labels top to bottom: {labels}, expected {expected}"
    bands = dict(zip(expected, sorted(drawn["bands"]), strict=True))
    where = [(f"label {name}", middle, name) for middle, name in labels]
    where += [(name, y + height / 2, datasets[name]) for name, (y, height) in drawn["datasets"].items()]
    for what, middle, layer in where:
        top, height = bands[layer]
        if not top <= middle <= top + height:
            return f"{what} drawn at y={middle:.0f}, outside the {layer} band [{top:.0f}, {top + height:.0f}]"
    return None


def _assert_layers(page: Page, datasets: dict[str, str]) -> None:
    """Layer labels in the project's order from top to bottom, each dataset in its layer's band.

    kedro-viz computes the layout in the background and animates nodes and labels into
    place: the check is retried until the drawing satisfies it (or BROWSER_WAIT_MS passes).
    """
    expected = [layer for layer in LAYERS if layer in datasets.values()]
    expect(page.locator(".pipeline-layer-name")).to_have_count(len(expected))
    expect(page.locator("rect.pipeline-layer")).to_have_count(len(expected))
    deadline = time.monotonic() + BROWSER_WAIT_MS / 1000
    while True:
        problem = _layers_problem(page.evaluate(_DRAWN_LAYERS, list(datasets)), expected, datasets)
        if problem is None:
            return
        assert time.monotonic() < deadline, f"after {BROWSER_WAIT_MS // 1000} s: {problem}"
        page.wait_for_timeout(500)


def _assert_default_view(page: Page) -> None:
    """__default__'s nodes, datasets, collapsed party namespaces and layer bands, as drawn."""
    for task in DEFAULT_TASKS:
        node = _node(page, task, "task")
        expect(node, f"task node {task} not drawn").to_have_count(1)
        expect(node.locator("text.pipeline-node__text")).to_have_text(task)
    for party in PARTIES:
        expect(_node(page, party, "modularPipeline"), f"namespace {party} not drawn").to_have_count(1)
    for dataset in DEFAULT_DATASETS:
        node = _node(page, dataset, "data")
        expect(node, f"dataset {dataset} not drawn").to_have_count(1)
        expect(node.locator("text.pipeline-node__text")).to_have_text(dataset)
    # Parameters are hidden by default (the "Parameters" filter is off).
    expect(page.locator('#nodes g.pipeline-node[data-node-type="parameters"]')).to_have_count(0)
    # Every layer of the project has a dataset in __default__, so all seven are drawn.
    assert set(DEFAULT_DATASETS.values()) == set(LAYERS)
    _assert_layers(page, DEFAULT_DATASETS)


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: `make browser` (run by `make test` and `.ci/run`) installs "
            "Debian's chromium, which the kedro-viz tests drive with Playwright."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def viz_project(tmp_path_factory) -> KedroProject:
    return KedroProject(tmp_path_factory.mktemp("viz"))


@pytest.fixture(scope="module")
def viz_server(viz_project: KedroProject) -> Iterator[str]:
    """``kedro viz run`` on a free port in the throw-away project; its URL. Killed afterwards."""
    port = _free_port()
    log = viz_project.path / "kedro-viz-run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kedro",
                "viz",
                "run",
                "--no-browser",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=viz_project.path,
            env=_kedro_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that _stop reaches the server too
        )
    try:
        yield _wait_for_viz(process, log, port)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def viz_api(viz_server: str) -> dict:
    return _get_json(f"{viz_server}/api/main")


# ---- kedro viz run ---------------------------------------------------------------------------


def test_viz_api_lists_every_pipeline_and_layer(viz_api: dict) -> None:
    """Cross-check of what the browser tests expect, from the server's own API."""
    assert {pipeline["id"] for pipeline in viz_api["pipelines"]} == PIPELINES
    assert viz_api["selected_pipeline"] == "__default__"
    assert viz_api["layers"] == LAYERS
    nodes = {node["full_name"]: node for node in viz_api["nodes"] if "full_name" in node}
    for party in PARTIES:
        assert nodes[f"{party}.train_party"]["modular_pipelines"] == [party]
    layers = {node["name"]: node.get("layer") for node in viz_api["nodes"] if node["type"] == "data"}
    for dataset, layer in DEFAULT_DATASETS.items():
        assert layers[dataset] == layer, dataset


def _check_default_view(browser: Browser, url: str, screenshot: Path) -> None:
    """The ``__default__`` flowchart at ``url`` draws what it should; a screenshot of it is kept."""
    page = _open(browser, url)
    try:
        _assert_default_view(page)
        _dismiss_popups(page)
        _screenshot(page, screenshot)
    finally:
        page.close()


def test_viz_run_draws_the_lineage(browser: Browser, viz_server: str, tmp_path: Path) -> None:
    _check_default_view(browser, viz_server, tmp_path / "kedro-viz.png")


def test_viz_run_pipeline_selector(browser: Browser, viz_server: str, tmp_path: Path) -> None:
    """Every registered pipeline is in the selector; picking one draws that pipeline alone."""
    page = _open(browser, viz_server)
    try:
        selector = page.locator('[data-test="kedro-pipeline-selector"]')
        expect(selector.locator("button.dropdown__label")).to_have_text("__default__")
        selector.locator("button.dropdown__label").click()
        options = selector.locator(".menu-option")
        expect(options).to_have_count(len(PIPELINES))
        assert set(options.all_inner_texts()) == PIPELINES

        options.filter(has_text=re.compile(r"^attention$")).click()
        expect(selector.locator("button.dropdown__label")).to_have_text("attention")
        expect(_node(page, "extract_images")).to_have_count(0)
        for task in ATTENTION_TASKS:
            expect(_node(page, task, "task"), f"task node {task} not drawn").to_have_count(1)
        for dataset in ATTENTION_DATASETS:
            expect(_node(page, dataset, "data"), f"dataset {dataset} not drawn").to_have_count(1)
        # Only the labels, not their order: kedro-viz orders a pipeline's layers by the paths
        # between its own datasets, and in `attention` nothing leads from primary
        # (partitioned_images) to models (global_model), which are both inputs. kedro-viz 12.5
        # then orders those two by set iteration, i.e. by PYTHONHASHSEED, and draws them either
        # way round (__default__, where primary leads to models, is always in order).
        labels = page.locator(".pipeline-layer-name")
        expect(labels).to_have_count(4)
        assert sorted(text.strip() for text in labels.all_inner_texts()) == sorted(
            set(ATTENTION_DATASETS.values())
        )
        _dismiss_popups(page)
        _screenshot(page, tmp_path / "kedro-viz-attention.png")
    finally:
        page.close()


def test_viz_run_expands_the_server_namespace(browser: Browser, viz_server: str, viz_api: dict) -> None:
    """Clicking the collapsed "server" node draws server.train_party in its place."""
    ids = {node["full_name"]: node["id"] for node in viz_api["nodes"] if "full_name" in node}
    server_train_party = f'#nodes g.pipeline-node[data-id="{ids["server.train_party"]}"]'
    page = _open(browser, viz_server)
    try:
        expect(page.locator(server_train_party)).to_have_count(0)
        _dismiss_popups(page)
        _node(page, "server", "modularPipeline").click()
        page_node = page.locator(server_train_party)
        expect(page_node).to_have_count(1)
        expect(page_node).to_have_attribute("data-node-type", "task")
        expect(page_node.locator("text.pipeline-node__text")).to_have_text("train_party")
        expect(_node(page, "server", "modularPipeline")).to_have_count(0)
        # The other parties stay collapsed; the server's model is still drawn, now as its output.
        for party in ("client1", "client2"):
            expect(_node(page, party, "modularPipeline")).to_have_count(1)
        expect(_node(page, "server.party_model", "data")).to_have_count(1)
        expect(page.locator('#nodes g.pipeline-node[data-node-fullname="train_party"]')).to_have_count(1)
    finally:
        page.close()


# ---- kedro viz build -------------------------------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def static_site(tmp_path: Path) -> tuple[KedroProject, subprocess.CompletedProcess]:
    """``kedro viz build`` in a throw-away project: it writes ``build/`` in the working folder."""
    project = KedroProject(tmp_path / "project")
    built = subprocess.run(
        [sys.executable, "-m", "kedro", "viz", "build"],
        cwd=project.path,
        env=_kedro_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=SERVER_WAIT_S + 60,  # kedro-viz gives up on its own after 300 s
        check=False,
    )
    return project, built


def test_viz_build_writes_the_static_site(browser: Browser, static_site, tmp_path: Path) -> None:
    project, built = static_site
    tail = (built.stdout + built.stderr)[-6000:]
    # kedro viz build exits 0 even when it fails ("ERROR: Failed to build/deploy Kedro-Viz : ...").
    assert built.returncode == 0, tail
    assert "Failed to build" not in tail, tail
    assert "Success! Kedro-Viz build files have been added to the `build` directory." in tail, tail

    site = project.path / "build"
    assert (site / "index.html").is_file()
    api = json.loads((site / "api" / "main").read_text())
    assert {pipeline["id"] for pipeline in api["pipelines"]} == PIPELINES
    assert api["layers"] == LAYERS
    for pipeline in PIPELINES:
        assert (site / "api" / "pipelines" / pipeline).is_file(), pipeline
    attention = json.loads((site / "api" / "pipelines" / "attention").read_text())
    assert {node["name"] for node in attention["nodes"] if node["type"] == "task"} == set(ATTENTION_TASKS)

    # The built site on its own, served as static files, draws the same flowchart.
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _check_default_view(
            browser, f"http://127.0.0.1:{server.server_address[1]}/", tmp_path / "kedro-viz-build.png"
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

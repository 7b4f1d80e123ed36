"""notebooks/face_pipeline.ipynb: run headless against the demo's outputs, and kept without outputs."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "face_pipeline.ipynb"
PARTIES = ("server", "client1", "client2")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> tuple[str, Path]:
    """A kernel spec running this interpreter (the venv's), and the JUPYTER_PATH that finds it first."""
    jupyter = tmp_path_factory.mktemp("jupyter")
    name = "face-pipeline-test"
    spec = jupyter / "kernels" / name
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    return name, jupyter


def _execute(
    notebook_path: Path, cwd: Path, kernel: tuple[str, Path], **environment: str
) -> nbformat.NotebookNode:
    """Run every cell, as Jupyter would with the kernel started in ``cwd``; raises on a cell's error."""
    notebook = nbformat.read(notebook_path, as_version=4)
    name, jupyter = kernel
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FACE_PIPELINE_PROJECT", raising=False)
        patch.delenv("FACE_PIPELINE_ENV", raising=False)
        patch.setenv("JUPYTER_PATH", str(jupyter))
        patch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
        patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        for key, value in environment.items():
            patch.setenv(key, value)
        client = NotebookClient(
            notebook, kernel_name=name, timeout=600, resources={"metadata": {"path": str(cwd)}}
        )
        client.execute()  # CellExecutionError, with the cell and its traceback, on any error
    return notebook


@pytest.fixture(scope="module")
def executed(demo_outputs, kernel, tmp_path_factory) -> nbformat.NotebookNode:
    """The notebook run with the kernel in the demo project's root, the project given by environment."""
    notebook = _execute(
        NOTEBOOK,
        demo_outputs.path,
        kernel,
        FACE_PIPELINE_PROJECT=str(demo_outputs.path),
        FACE_PIPELINE_ENV="demo",
    )
    nbformat.write(notebook, tmp_path_factory.mktemp("executed") / "face_pipeline.ipynb")
    return notebook


def _cell(notebook: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    (cell,) = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    return cell


def _text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def _images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.outputs)


def test_notebook_runs_on_the_demo_outputs(executed, demo_outputs):
    cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in cells)
    assert not [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert str(demo_outputs.path.resolve()) in _text(_cell(executed, "settings"))


def test_party_statistics(executed):
    text = _text(_cell(executed, "party-statistics"))
    assert "images kept" in text
    for party in (*PARTIES, "holdout"):
        assert party in text


def test_figures(executed):
    assert _images(_cell(executed, "faces")) == 1
    assert _images(_cell(executed, "training-curves")) == 1
    assert _images(_cell(executed, "federated-rounds")) == 1
    assert _images(_cell(executed, "roc-curves")) == 1
    # gradcam_grid, gradcam_image and channel_attention_plot
    assert _images(_cell(executed, "attention-maps")) == 3
    assert sum(_images(cell) for cell in executed.cells if cell.cell_type == "code") >= 7


def test_evaluation_metrics(executed):
    text = _text(_cell(executed, "evaluation-metrics"))
    assert "accuracy" in text and "closed-set top-1" in text
    for model in ("federated", "centralized", *PARTIES):  # a row of the verification table each
        accuracy = re.search(rf"^{model} +([01]\.\d+) ", text, re.MULTILINE)
        assert accuracy and 0 <= float(accuracy.group(1)) <= 1, text


def test_channel_attention_table(executed):
    text = _text(_cell(executed, "channel-attention"))
    assert "rows, columns:" in text
    assert "does not exist" not in text


def test_notebook_finds_its_project_from_notebooks_folder(demo_outputs, kernel):
    """Opened in Jupyter: the kernel starts in <project>/notebooks and nothing is set."""
    folder = demo_outputs.path / "notebooks"
    folder.mkdir(exist_ok=True)
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    notebook = _execute(folder / NOTEBOOK.name, folder, kernel)
    assert f"project: {demo_outputs.path.resolve()}\n" in _text(_cell(notebook, "settings"))
    assert "client2" in _text(_cell(notebook, "party-statistics"))
    assert _images(_cell(notebook, "attention-maps")) == 3


def test_notebook_is_kept_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None

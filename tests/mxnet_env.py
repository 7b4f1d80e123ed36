"""A side virtualenv with the reference MXNet, for the compatibility tests.

MXNet 1.9.1 (its last release) needs ``numpy<1.24``, which cannot share an
environment with the project's TensorFlow, so the tests run MXNet in its own
virtualenv and talk to it through files and JSON.

The environment lives in ``<repo>/.venv-mxnet`` (git-ignored), or wherever
``FACE_PIPELINE_MXNET_VENV`` points. It is built once, with the Python 3.11 the
project runs on, and reused: a marker file is written only after the install
succeeded and ``import mxnet`` worked, so a half-built environment is rebuilt.
A file lock keeps parallel pytest processes from building it at the same time.
A failure raises ``MxnetEnvError`` with pip's output; it never skips, because CI
must really run these tests.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_ENV_VAR = "FACE_PIPELINE_MXNET_VENV"
REQUIREMENTS = ("mxnet==1.9.1", "numpy<1.24", "pillow")
MXNET_VERSION = "1.9.1"
_MARKER = ".face-pipeline-mxnet-ready"


class MxnetEnvError(RuntimeError):
    """The MXNet side environment could not be built, or a script in it failed."""


def venv_dir() -> Path:
    configured = os.environ.get(VENV_ENV_VAR)
    return Path(configured).expanduser().resolve() if configured else REPO / ".venv-mxnet"


def _base_python() -> str:
    """The interpreter to build the venv from: the real python3.11 behind our own venv."""
    base = getattr(sys, "_base_executable", None)
    if base and sys.version_info[:2] == (3, 11) and Path(base).is_file():
        return base
    found = shutil.which("python3.11")
    if found is None:
        raise MxnetEnvError("python3.11 not found: it is needed to build the MXNet side environment")
    return found


def _clean_env() -> dict[str, str]:
    """Our environment without what would leak this venv's packages into the side one."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(command: list[str], what: str, shown: str | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=_clean_env())
    except OSError as error:
        raise MxnetEnvError(f"{what}: cannot run {command[0]}: {error}") from error
    if result.returncode != 0:
        raise MxnetEnvError(
            f"{what} failed (exit {result.returncode}): {shown or ' '.join(map(str, command))}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-8000:]}"
        )
    return result


def _python_in(venv: Path) -> Path:
    return venv / "bin" / "python"


def _ready(venv: Path) -> bool:
    marker = venv / _MARKER
    return (
        marker.is_file()
        and marker.read_text(encoding="utf-8") == "\n".join(REQUIREMENTS)
        and _python_in(venv).is_file()
    )


def _build(venv: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)  # half-built or outdated: start again
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run([_base_python(), "-m", "venv", str(venv)], f"creating the MXNet venv {venv}")
    python = str(_python_in(venv))
    _run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *REQUIREMENTS],
        f"installing {' '.join(REQUIREMENTS)} into {venv}",
    )
    check = _run(
        [python, "-c", "import mxnet, numpy; print(mxnet.__version__, numpy.__version__)"],
        f"importing mxnet in {venv}",
    )
    version = check.stdout.split()[0] if check.stdout.split() else ""
    if version != MXNET_VERSION:
        raise MxnetEnvError(f"{venv}: expected mxnet {MXNET_VERSION}, found {check.stdout.strip()!r}")
    (venv / _MARKER).write_text("\n".join(REQUIREMENTS), encoding="utf-8")


@functools.cache
def mxnet_python() -> Path:
    """The side venv's interpreter, building the venv first if it is not ready."""
    venv = venv_dir()
    if not _ready(venv):
        digest = hashlib.sha1(str(venv).encode()).hexdigest()[:16]
        lock_path = Path(tempfile.gettempdir()) / f"face-pipeline-mxnet-{digest}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait for it
            try:
                if not _ready(venv):
                    _build(venv)
            except OSError as error:
                raise MxnetEnvError(
                    f"cannot build the MXNet side environment at {venv} (set {VENV_ENV_VAR} to put it "
                    f"elsewhere): {error}"
                ) from error
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return _python_in(venv)


def run_mxnet(script: str, *args: object) -> subprocess.CompletedProcess:
    """Run a Python snippet with MXNet (``sys.argv[1:]`` are ``args``); raise with its stderr on failure."""
    python = str(mxnet_python())
    first_line = next((line for line in script.splitlines() if line.strip()), "")
    shown = f"{python} -c '{first_line.strip()} ...' {' '.join(map(str, args))}"
    return _run([python, "-c", script, *map(str, args)], "MXNet script", shown)

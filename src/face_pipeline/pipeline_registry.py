"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The demo generator writes its own raw data; it is not a step of the real run.
_NOT_IN_DEFAULT = {"synthetic"}


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipeline for name, pipeline in pipelines.items() if name not in _NOT_IN_DEFAULT),
        start=Pipeline([]),
    )
    return pipelines

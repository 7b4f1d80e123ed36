"""Project hooks."""

from __future__ import annotations

import importlib
import pkgutil

from kedro.framework.hooks import hook_impl

from face_pipeline.errors import FacePipelineError


class KerasModelInputs:
    """Before a run that loads saved models: register the project's layers, check the files exist.

    ``.keras`` files name their custom classes (``face_pipeline>ArcFaceHead``), and
    Keras finds them only once the module that registers them is imported. The
    nodes import TensorFlow lazily, but the catalog loads a node's model inputs
    before the node runs; importing here, and only for pipelines that touch a
    model, keeps TensorFlow out of the runs that do not. A missing model file
    would otherwise surface as Kedro's "Failed while loading data from dataset
    ..." with the whole dataset repr; this says which node makes it.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        models = [name for name in pipeline.datasets() if _is_keras_model_dataset(catalog.get(name))]
        if not models:
            return
        import face_pipeline.models.layers  # noqa: F401, PLC0415

        missing = [name for name in sorted(pipeline.inputs()) if name in models and not catalog.exists(name)]
        if missing:
            raise FacePipelineError(
                "; ".join(_missing_model_message(name, catalog.get(name)) for name in missing)
            )


def _is_keras_model_dataset(dataset) -> bool:
    # By name: importing kedro_datasets.tensorflow would import TensorFlow itself.
    inner = getattr(dataset, "_dataset_type", None)  # a PartitionedDataset of models
    return "TensorFlowModelDataset" in (type(dataset).__name__, getattr(inner, "__name__", ""))


def _missing_model_message(name: str, dataset) -> str:
    where = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", "")
    makers = [node.name for node in _every_node() if name in node.outputs]
    hint = f"run `kedro run --nodes={makers[0]}` first" if makers else "train it first"
    return f"{name}: {where} does not exist; {hint}"


def _every_node():
    """The nodes of every pipeline in the project, whichever this run asked Kedro to load."""
    package = importlib.import_module("face_pipeline.pipelines")
    for module in pkgutil.iter_modules(package.__path__):
        yield from importlib.import_module(f"{package.__name__}.{module.name}").create_pipeline().nodes

"""Project hooks."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl


class RegisterKerasLayers:
    """Make the project's Keras layers and loss known before a run loads a saved model.

    ``.keras`` files name their custom classes (``face_pipeline>ArcFaceHead``), and
    Keras finds them only once the module that registers them is imported. The
    nodes import TensorFlow lazily, but the catalog loads a node's model inputs
    before the node runs; importing here, and only for pipelines that touch a
    model, keeps TensorFlow out of the runs that do not.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if any(_is_keras_model_dataset(catalog.get(name)) for name in pipeline.datasets()):
            import face_pipeline.models.layers  # noqa: F401, PLC0415


def _is_keras_model_dataset(dataset) -> bool:
    # By name: importing kedro_datasets.tensorflow would import TensorFlow itself.
    inner = getattr(dataset, "_dataset_type", None)  # a PartitionedDataset of models
    return "TensorFlowModelDataset" in (type(dataset).__name__, getattr(inner, "__name__", ""))

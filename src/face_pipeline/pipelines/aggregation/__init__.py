"""aggregation pipeline."""

from face_pipeline.pipelines.aggregation.pipeline import create_pipeline

__all__ = ["create_pipeline"]

"""attention pipeline."""

from face_pipeline.pipelines.attention.pipeline import create_pipeline

__all__ = ["create_pipeline"]

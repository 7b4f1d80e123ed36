"""extraction pipeline."""

from face_pipeline.pipelines.extraction.pipeline import create_pipeline

__all__ = ["create_pipeline"]

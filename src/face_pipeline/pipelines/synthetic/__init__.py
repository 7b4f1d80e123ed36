"""synthetic pipeline."""

from face_pipeline.pipelines.synthetic.pipeline import create_pipeline

__all__ = ["create_pipeline"]

"""extraction: the raw RecordIO to one JPEG file per record, a manifest and a report."""

from kedro.pipeline import Node, Pipeline

from face_pipeline.pipelines.extraction.nodes import extract_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                extract_images,
                inputs=["raw_recordio", "params:extraction"],
                outputs=["extracted_images", "extraction_manifest", "extraction_report"],
                name="extract_images",
            )
        ]
    )

"""validation: decode every extracted image, report damaged files and duplicates, write a clean manifest."""

from kedro.pipeline import Node, Pipeline

from face_pipeline.pipelines.validation.nodes import validate_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                validate_images,
                inputs=["extracted_images", "params:validation"],
                outputs=[
                    "clean_manifest",
                    "validation_report",
                    "validation_sample_faces",
                    "validation_images_per_class",
                ],
                name="validate_images",
            )
        ]
    )

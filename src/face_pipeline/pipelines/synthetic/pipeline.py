"""synthetic: the demo dataset, procedural faces written as an insightface-layout RecordIO."""

from kedro.pipeline import Node, Pipeline

from face_pipeline.pipelines.synthetic.nodes import generate_demo_faces


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_demo_faces,
                inputs="params:synthetic",
                outputs="demo_recordio",
                name="generate_demo_faces",
            )
        ]
    )

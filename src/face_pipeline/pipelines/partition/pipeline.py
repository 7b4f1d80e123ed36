"""partition: disjoint identities for server, client1, client2 (1:1:1) and a held-out set."""

from kedro.pipeline import Node, Pipeline

from face_pipeline.pipelines.partition.nodes import partition_identities


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                partition_identities,
                inputs=["clean_manifest", "extracted_images", "params:partition"],
                outputs=["partitioned_images", "partition_table", "partition_summary"],
                name="partition_identities",
            )
        ]
    )

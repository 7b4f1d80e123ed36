"""training: one template, namespaced per party (server, client1, client2)."""

from kedro.pipeline import Node, Pipeline

from face_pipeline.pipelines.training.nodes import train_party

PARTIES = ("server", "client1", "client2")


def create_template() -> Pipeline:
    return Pipeline(
        [
            Node(
                train_party,
                inputs=["partitioned_images", "params:training", "params:party", "params:overrides"],
                outputs=["party_model", "training_history", "training_curves", "closed_set_metrics"],
                name="train_party",
            )
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipeline=training --namespaces=client1`` trains one party."""
    return sum(
        (
            Pipeline(
                create_template(),
                namespace=party,
                inputs={"partitioned_images"},
                parameters={"params:training"},
            )
            for party in PARTIES
        ),
        start=Pipeline([]),
    )

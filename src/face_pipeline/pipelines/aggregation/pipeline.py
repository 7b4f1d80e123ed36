"""aggregation: federated rounds from the server's model, and the centralized baseline beside them."""

from kedro.pipeline import Node, Pipeline

from face_pipeline.pipelines.aggregation.nodes import run_federated_rounds, train_centralized


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                run_federated_rounds,
                inputs=["partitioned_images", "server.party_model", "params:training", "params:aggregation"],
                outputs=[
                    "global_model",
                    "round_global_models",
                    "federated_party_models",
                    "federated_history",
                    "federated_round_metrics",
                    "federated_curves",
                ],
                name="run_federated_rounds",
            ),
            Node(
                train_centralized,
                inputs=["partitioned_images", "params:training", "params:aggregation"],
                outputs=["centralized_model", "centralized_history", "centralized_metrics"],
                name="train_centralized_baseline",
            ),
        ]
    )

"""evaluation: closed-set top-1 per party and open-set verification on the holdout identities."""

from kedro.pipeline import Node, Pipeline

from face_pipeline.pipelines.evaluation.nodes import (
    evaluate_closed_set,
    make_verification_pairs,
    verify_model,
    write_evaluation_report,
)

# Verified on the same pairs: the federated global model, the pooled baseline, each party alone.
VERIFIED_MODELS = {
    "federated": "global_model",
    "centralized": "centralized_model",
    "server": "server.party_model",
    "client1": "client1.party_model",
    "client2": "client2.party_model",
}


def create_pipeline(**kwargs) -> Pipeline:
    verify = [
        Node(
            verify_model,
            inputs=[model, "verification_pairs", "partitioned_images", "params:evaluation"],
            outputs=f"{name}_verification",
            name=f"verify_{name}",
        )
        for name, model in VERIFIED_MODELS.items()
    ]
    return Pipeline(
        [
            Node(
                make_verification_pairs,
                inputs=["partitioned_images", "params:evaluation"],
                outputs="verification_pairs",
                name="make_verification_pairs",
            ),
            *verify,
            Node(
                evaluate_closed_set,
                inputs={
                    "partitioned": "partitioned_images",
                    "server": "server.party_model",
                    "client1": "client1.party_model",
                    "client2": "client2.party_model",
                    "federated_parties": "federated_party_models",
                    "centralized": "centralized_model",
                    "aggregation": "params:aggregation",
                    "evaluation": "params:evaluation",
                },
                outputs="closed_set_table",
                name="evaluate_closed_set",
            ),
            Node(
                write_evaluation_report,
                inputs={
                    "closed_set": "closed_set_table",
                    "evaluation": "params:evaluation",
                    **{name: f"{name}_verification" for name in VERIFIED_MODELS},
                },
                outputs=["evaluation_report", "evaluation_metrics", "roc_curves"],
                name="write_evaluation_report",
            ),
        ]
    )

"""attention: Grad-CAM over the last convolutional stage; SE and ECA gates per block."""

from kedro.pipeline import Node, Pipeline

from face_pipeline.pipelines.attention.nodes import (
    explain_image,
    explain_party_faces,
    measure_channel_attention,
    plot_channel_attention,
    write_attention_report,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                explain_party_faces,
                inputs=[
                    "partitioned_images",
                    "global_model",
                    "federated_party_models",
                    "params:aggregation",
                    "params:attention",
                ],
                outputs=["gradcam_samples", "gradcam_grid"],
                name="explain_party_faces",
            ),
            Node(
                explain_image,
                inputs=["partitioned_images", "global_model", "federated_party_models", "params:attention"],
                outputs=["gradcam_image_info", "gradcam_image"],
                name="explain_image",
            ),
            Node(
                measure_channel_attention,
                inputs=["partitioned_images", "global_model", "params:attention"],
                outputs="channel_attention",
                name="measure_channel_attention",
            ),
            Node(
                plot_channel_attention,
                inputs="channel_attention",
                outputs="channel_attention_plot",
                name="plot_channel_attention",
            ),
            Node(
                write_attention_report,
                inputs=["gradcam_samples", "gradcam_image_info", "channel_attention", "params:attention"],
                outputs="attention_report",
                name="write_attention_report",
            ),
        ]
    )

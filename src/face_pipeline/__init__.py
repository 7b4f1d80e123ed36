"""face_pipeline: CASIA-WebFace to a federated face recogniser, as a Kedro project."""

__version__ = "0.1.0"

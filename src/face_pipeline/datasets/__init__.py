"""Kedro datasets that kedro-datasets does not have."""

from face_pipeline.datasets.image_folder_dataset import ImageFolder, ImageFolderDataset
from face_pipeline.datasets.recordio_dataset import RecordIODataset

__all__ = ["ImageFolder", "ImageFolderDataset", "RecordIODataset"]

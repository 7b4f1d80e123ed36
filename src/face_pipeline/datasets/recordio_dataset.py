"""A folder holding an MXNet RecordIO pair (``train.rec`` + ``train.idx``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from face_pipeline.recordio import RecordIOError, RecordIOReader, write_insightface

logger = logging.getLogger(__name__)

HOW_TO_GET_DATA = (
    "put insightface's CASIA-WebFace (faces_webface_112x112: train.rec and train.idx) there, "
    "pass another folder with `kedro run --params raw_dir=/path`, "
    "or run `make demo` to generate demo data"
)


class RecordIODataset(AbstractDataset[Iterable[tuple[int, bytes]], RecordIOReader]):
    """Loads a memory-mapped :class:`RecordIOReader`; saves ``(label, jpeg)`` pairs
    in insightface's layout (header record, images, one record per identity).

    Example catalog entry::

        raw_recordio:
          type: face_pipeline.datasets.RecordIODataset
          path: ${runtime_params:raw_dir,data/01_raw/casia-webface}
    """

    def __init__(
        self,
        path: str,
        rec_name: str = "train.rec",
        idx_name: str = "train.idx",
        metadata: dict[str, Any] | None = None,
    ):
        self._path = Path(path)
        self._rec_name = rec_name
        self._idx_name = idx_name
        self.metadata = metadata

    @property
    def rec_path(self) -> Path:
        return self._path / self._rec_name

    @property
    def idx_path(self) -> Path:
        return self._path / self._idx_name

    def load(self) -> RecordIOReader:
        if not self._path.is_dir():
            raise DatasetError(f"raw_dir '{self._path}' does not exist: {HOW_TO_GET_DATA}")
        if not self.rec_path.is_file():
            found = f"{self._idx_name} is there but " if self.idx_path.is_file() else ""
            raise DatasetError(f"{found}{self.rec_path} is missing: {HOW_TO_GET_DATA}")
        if not self.idx_path.is_file():
            logger.warning("%s is missing: rebuilding the index by scanning %s", self.idx_path, self.rec_path)
        started = time.perf_counter()
        try:
            reader = RecordIOReader(self.rec_path, self.idx_path)
        except RecordIOError as error:
            raise DatasetError(str(error)) from None
        if reader.index_source == "scan":
            logger.info(
                "Indexed %d records of %s in %.1fs", len(reader), self.rec_path, time.perf_counter() - started
            )
        for problem in reader.scan_problems:
            logger.warning("%s: %s", self.rec_path, problem)
        return reader

    def save(self, data: Iterable[tuple[int, bytes]]) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        count = write_insightface(self.rec_path, self.idx_path, data)
        logger.info("Wrote %d images to %s", count, self.rec_path)

    def _exists(self) -> bool:
        return self.rec_path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "rec_name": self._rec_name, "idx_name": self._idx_name}

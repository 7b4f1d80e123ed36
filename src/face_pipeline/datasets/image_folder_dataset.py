"""A folder tree of image files, saved byte for byte, resumably and on all cores."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"
# Below this many files, starting worker processes costs more than it saves.
_PARALLEL_MIN_FILES = 2000

FileSource = bytes | bytearray | memoryview | os.PathLike


class ImageFolder:
    """What :class:`ImageFolderDataset` loads: the folder and its file list; nothing is read yet."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._relative_paths: list[str] | None = None

    def relative_paths(self) -> list[str]:
        """Every file below the root as a sorted posix path, e.g. ``'17/1234.jpg'``."""
        if self._relative_paths is None:
            self._relative_paths = sorted(_list_files(self.root))
        return self._relative_paths

    def path(self, relative: str) -> Path:
        return self.root / relative

    def read(self, relative: str) -> bytes:
        with open(self.root / relative, "rb") as handle:
            return handle.read()

    def __len__(self) -> int:
        return len(self.relative_paths())

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r})"


def _list_files(root: Path) -> dict[str, os.stat_result]:
    """``{relative posix path: stat}`` of the regular files below ``root``, hidden ones left out."""
    found: dict[str, os.stat_result] = {}
    pending = [("", str(root))]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append((f"{prefix}{entry.name}/", entry.path))
                elif entry.is_file():
                    found[prefix + entry.name] = entry.stat()
    return found


def _is_in_place(existing: os.stat_result | None, source: FileSource) -> bool:
    """Whether the file already on disk is the one ``source`` would put there.

    Files only ever appear complete (see ``_write_file``), so for bytes the size
    tells a finished file from a missing one; a link must be to the source itself,
    a copy (where links fail) of the same size.
    """
    if existing is None:
        return False
    if isinstance(source, bytes | bytearray | memoryview):
        return existing.st_size == memoryview(source).nbytes
    wanted = os.stat(source)
    if existing.st_dev == wanted.st_dev:
        return existing.st_ino == wanted.st_ino
    return existing.st_size == wanted.st_size


def _write_file(target: str, source: FileSource) -> None:
    """Put one file in place so that it is either absent or complete, never half written."""
    if isinstance(source, bytes | bytearray | memoryview):
        part = target + PART_SUFFIX
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(source)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(part, target)
        return
    if os.path.lexists(target):
        os.unlink(target)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy instead
        part = target + PART_SUFFIX
        shutil.copyfile(source, part)
        os.replace(part, target)


def _write_share(jobs: Sequence[tuple[str, FileSource]], share: int, shares: int, progress, errors) -> None:
    """One worker's share of the files; runs in a forked child that inherits ``jobs``."""
    done = 0
    try:
        for target, source in jobs[share::shares]:
            _write_file(target, source)
            done += 1
            if done % 256 == 0:
                progress[share] = done
        progress[share] = done
    except Exception as error:
        errors.put(f"{type(error).__name__}: {error}")
        raise SystemExit(1) from None


class ImageFolderDataset(AbstractDataset[Mapping[str, FileSource], ImageFolder]):
    """A tree of image files such as ``<label>/<key>.jpg``.

    ``save`` takes ``{relative path: bytes or source file}``. Bytes are written as
    they are (never re-encoded); a source path is hard-linked, or copied where a
    link is not possible. Every file appears atomically (written to ``.part``, then
    renamed), files already in place with the right size are kept, and files no
    longer in the mapping are removed, so an interrupted save resumes where it
    stopped and the folder always ends equal to the mapping. Large saves are split
    over ``workers`` forked processes (default: every core) with a progress bar.

    ``load`` returns an :class:`ImageFolder`, which lists and reads files on demand.
    """

    def __init__(
        self,
        path: str,
        workers: int | None = None,
        progress_unit: str = "file",
        metadata: dict[str, Any] | None = None,
    ):
        self._root = Path(path)
        self._workers = workers or len(os.sched_getaffinity(0))
        self._progress_unit = progress_unit
        self.metadata = metadata

    def load(self) -> ImageFolder:
        if not self._root.is_dir():
            raise DatasetError(
                f"image folder '{self._root}' does not exist: run the pipeline that writes it first"
            )
        return ImageFolder(self._root)

    def save(self, data: Mapping[str, FileSource]) -> None:
        started = time.perf_counter()
        self._root.mkdir(parents=True, exist_ok=True)
        on_disk = _list_files(self._root)
        removed = self._remove_unwanted(on_disk, data)
        jobs = [
            (str(self._root / relative), source)
            for relative, source in data.items()
            if not _is_in_place(on_disk.get(relative), source)
        ]
        for directory in {os.path.dirname(target) for target, _ in jobs}:
            os.makedirs(directory, exist_ok=True)
        self._write_all(jobs)
        logger.info(
            "%s: wrote %d files, kept %d already in place, removed %d stale, in %.1fs",
            self._root,
            len(jobs),
            len(data) - len(jobs),
            removed,
            time.perf_counter() - started,
        )

    def _remove_unwanted(self, on_disk: dict[str, os.stat_result], wanted: Mapping[str, FileSource]) -> int:
        """Delete leftovers of an interrupted save (``.part``) and files the mapping no longer has."""
        unwanted = [relative for relative in on_disk if relative not in wanted]
        for relative in unwanted:
            os.unlink(self._root / relative)
            del on_disk[relative]
        if unwanted:
            for directory, subdirectories, files in os.walk(self._root, topdown=False):
                if not subdirectories and not files and Path(directory) != self._root:
                    os.rmdir(directory)
        return sum(not relative.endswith(PART_SUFFIX) for relative in unwanted)

    def _write_all(self, jobs: list[tuple[str, FileSource]]) -> None:
        shares = min(self._workers, max(1, len(jobs) // _PARALLEL_MIN_FILES))
        bar = tqdm(
            total=len(jobs),
            unit=self._progress_unit,
            desc=f"writing {self._root.name}",
            mininterval=1.0,
            disable=len(jobs) < _PARALLEL_MIN_FILES,
        )
        if shares == 1:
            for target, source in jobs:
                _write_file(target, source)
                bar.update()
            bar.close()
            return
        context = multiprocessing.get_context("fork")
        progress = context.Array("q", shares, lock=False)
        errors = context.SimpleQueue()
        workers = [
            context.Process(target=_write_share, args=(jobs, share, shares, progress, errors))
            for share in range(shares)
        ]
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            time.sleep(0.2)
            bar.update(sum(progress) - bar.n)
        bar.update(sum(progress) - bar.n)
        bar.close()
        for worker in workers:
            worker.join()
        if any(worker.exitcode != 0 for worker in workers):
            reason = errors.get() if not errors.empty() else "a writer process died"
            raise DatasetError(f"writing {self._root} failed: {reason}")

    def _exists(self) -> bool:
        return self._root.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._root), "workers": self._workers}

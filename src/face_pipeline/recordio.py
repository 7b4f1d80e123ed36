"""MXNet RecordIO, read and written without MXNet.

The byte layout follows dmlc-core's ``recordio.cc`` and MXNet's ``recordio.py``:

* a record is ``uint32 magic``, ``uint32 lrec``, the data, then zero padding to a
  multiple of 4 bytes. ``lrec`` packs a 3-bit continuation flag (``cflag``) above a
  29-bit length. The writer splits a record wherever the magic number appears,
  4-byte aligned, inside the data (cflag 1 = first part, 2 = middle, 3 = last);
  the magic between two parts belongs to the data and is put back on reading.
* the ``.idx`` file is text, ``key<TAB>offset`` per line, in any order.
* a payload starts with ``IRHeader`` (``<IfQQ``: flag, label, id, id2); when
  ``flag > 0``, ``flag`` float32 labels follow. The image bytes come last.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from face_pipeline.errors import FacePipelineError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_RECORD_HEAD = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")

WHOLE, FIRST_PART, MIDDLE_PART, LAST_PART = 0, 1, 2, 3


class RecordIOError(FacePipelineError):
    """A RecordIO file that cannot be used at all (as opposed to one bad record)."""


class DamagedRecord(Exception):
    """One record that cannot be read; the rest of the file may still be fine."""

    def __init__(self, key: int, reason: str):
        super().__init__(f"record {key}: {reason}")
        self.key = key
        self.reason = reason


class IRHeader(NamedTuple):
    """MXNet's record header; a named tuple, as in ``mx.recordio``, so it is cheap to make."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int

    @property
    def class_label(self) -> float:
        """The record's class: the label, or the first of several."""
        return self.label[0] if isinstance(self.label, tuple) else self.label


def pack(header: IRHeader, payload: bytes = b"") -> bytes:
    """Encode a payload the way ``mx.recordio.pack`` does."""
    if isinstance(header.label, tuple):
        labels = header.label
        head = _IR_HEADER.pack(len(labels), 0.0, header.id, header.id2)
        return head + struct.pack(f"<{len(labels)}f", *labels) + bytes(payload)
    return _IR_HEADER.pack(0, header.label, header.id, header.id2) + bytes(payload)


def unpack(record: bytes | memoryview) -> tuple[IRHeader, memoryview]:
    """Split a payload into its header and the bytes after it (no copy)."""
    view = memoryview(record)
    if len(view) < _IR_HEADER.size:
        raise ValueError(f"payload of {len(view)} bytes is shorter than the {_IR_HEADER.size}-byte IRHeader")
    flag, label, id_, id2 = _IR_HEADER.unpack_from(view)
    start = _IR_HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if end > len(view):
            raise ValueError(f"header announces {flag} labels but the payload ends first")
        label = struct.unpack_from(f"<{flag}f", view, start)
        start = end
    return IRHeader(flag, label, id_, id2), view[start:]


def _aligned(n: int) -> int:
    return (n + 3) & ~3


def split_at_magic(data: bytes) -> list[bytes]:
    """Cut ``data`` where the magic number sits 4-byte aligned, as dmlc's writer does."""
    parts, start = [], 0
    pos = data.find(MAGIC_BYTES)
    while pos >= 0:
        if pos % 4 == 0:
            parts.append(data[start:pos])
            start = pos + 4
            pos = data.find(MAGIC_BYTES, start)
        else:
            pos = data.find(MAGIC_BYTES, pos + 1)
    parts.append(data[start:])
    return parts


class RecordIOWriter:
    """Writes ``.rec`` (and ``.idx`` when given) files that MXNet reads back identically."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115 - closed by close()
        self._idx = open(idx_path, "w", encoding="ascii") if idx_path else None  # noqa: SIM115

    def tell(self) -> int:
        return self._rec.tell()

    def write(self, record: bytes, key: int | None = None) -> int:
        """Append one record; returns its offset. ``key`` goes to the ``.idx`` file."""
        if len(record) >= 1 << 29:
            raise RecordIOError(f"{self.rec_path}: a record must be under 2**29 bytes")
        offset = self._rec.tell()
        parts = split_at_magic(bytes(record))
        for i, part in enumerate(parts):
            if len(parts) == 1:
                cflag = WHOLE
            else:
                cflag = FIRST_PART if i == 0 else LAST_PART if i == len(parts) - 1 else MIDDLE_PART
            self._rec.write(_RECORD_HEAD.pack(MAGIC, (cflag << 29) | len(part)))
            self._rec.write(part)
        self._rec.write(b"\0" * (_aligned(len(record)) - len(record)))
        if key is not None:
            if self._idx is None:
                raise RecordIOError(f"{self.rec_path}: a key needs an .idx file to go to")
            self._idx.write(f"{key}\t{offset}\n")
        return offset

    def overwrite(self, offset: int, record: bytes) -> None:
        """Replace a whole record of the same length (used for insightface's header record)."""
        end = self._rec.tell()
        self._rec.seek(offset)
        self._rec.write(_RECORD_HEAD.pack(MAGIC, len(record)) + record)
        self._rec.seek(end)

    def close(self) -> None:
        self._rec.close()
        if self._idx is not None:
            self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_insightface(
    rec_path: str | os.PathLike,
    idx_path: str | os.PathLike,
    images: Iterable[tuple[int, bytes]],
) -> int:
    """Write ``(label, image bytes)`` pairs, grouped by label, in insightface's layout.

    Record 0 holds ``[id_start, id_end]``; images are keys ``1 .. id_start-1``;
    keys ``id_start .. id_end-1`` hold each identity's ``[first_key, end_key)``.
    Returns the number of images written.
    """
    ranges: dict[int, list[int]] = {}
    with RecordIOWriter(rec_path, idx_path) as writer:
        placeholder = pack(IRHeader(2, (0.0, 0.0), 0, 0))
        header_offset = writer.write(placeholder, key=0)
        key, previous = 0, None
        for label, image in images:
            key += 1
            if label != previous and label in ranges:
                raise RecordIOError(f"{rec_path}: images of label {label} must be contiguous")
            ranges.setdefault(label, [key, key])[1] = key + 1
            previous = label
            writer.write(pack(IRHeader(0, float(label), key, 0), image), key=key)
        id_start = key + 1
        for offset, (first, end) in enumerate(ranges.values()):
            identity = pack(IRHeader(2, (float(first), float(end)), 0, 0))
            writer.write(identity, key=id_start + offset)
        id_end = id_start + len(ranges)
        writer.overwrite(header_offset, pack(IRHeader(2, (float(id_start), float(id_end)), 0, 0)))
    return key


def read_index(idx_path: str | os.PathLike) -> dict[int, int]:
    """Parse an ``.idx`` file into ``{key: offset}``; lines may come in any order."""
    with open(idx_path, "rb") as handle:
        data = handle.read()
    # The usual file, two fields on every line, in one go. Each newline becomes a ";" token, so
    # that fields are never paired across lines ("7\n8\n" must not read as key 7 at offset 8).
    tokens = (data if data.endswith(b"\n") else data + b"\n").replace(b"\n", b" ; ").split()
    if len(tokens) % 3 == 0 and tokens[2::3].count(b";") == len(tokens) // 3:
        try:
            return dict(zip(map(int, tokens[0::3]), map(int, tokens[1::3]), strict=True))
        except ValueError:
            pass
    return _read_index_by_line(idx_path)  # blank lines, or a bad line to report


def _read_index_by_line(idx_path: str | os.PathLike) -> dict[int, int]:
    index: dict[int, int] = {}
    with open(idx_path, encoding="ascii", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError
                key, offset = int(fields[0]), int(fields[1])
            except ValueError:
                raise RecordIOError(
                    f"{idx_path}:{number}: expected 'key<TAB>offset', found {line.strip()[:60]!r}"
                ) from None
            index[key] = offset
    return index


class RecordIOReader:
    """Random and sequential access to a ``.rec`` file, memory-mapped.

    Without an ``.idx`` file the index is rebuilt by scanning; keys are then the
    records' positions (0, 1, 2, ...), which is how MXNet numbers them too.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise RecordIOError(f"{self.rec_path}: no such RecordIO file")
        self.size = self.rec_path.stat().st_size
        if self.size == 0:
            raise RecordIOError(f"{self.rec_path}: the file is empty (0 bytes)")
        with open(self.rec_path, "rb") as handle:
            self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._mmap)
        self.scan_problems: list[str] = []
        if idx_path is not None and Path(idx_path).is_file():
            self.index = read_index(idx_path)
            self.index_source = str(idx_path)
        else:
            self.index = self._scan_index()
            self.index_source = "scan"

    # -- access -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: int) -> bool:
        return key in self.index

    def keys_in_file_order(self, keys: Iterable[int] | None = None) -> list[int]:
        """Keys sorted by offset, so that reading them walks the file forwards."""
        index = self.index
        chosen = index if keys is None else [k for k in keys if k in index]
        return sorted(chosen, key=index.__getitem__)

    def read(self, key: int) -> memoryview | bytes:
        """The record's payload; a view into the file unless it was split in parts."""
        try:
            offset = self.index[key]
        except KeyError:
            raise DamagedRecord(key, "key not in the index") from None
        return self._read_at(key, offset)

    def read_unpacked(self, key: int) -> tuple[IRHeader, memoryview]:
        try:
            return unpack(self.read(key))
        except ValueError as error:
            raise DamagedRecord(key, str(error)) from None

    def _read_at(self, key: int, offset: int) -> memoryview | bytes:
        size = self.size
        if offset < 0 or offset >= size:
            raise DamagedRecord(key, f"offset {offset} is past the end of the file ({size} bytes)")
        if offset + 8 > size:
            raise DamagedRecord(key, f"file ends inside the record head at offset {offset} (cut short?)")
        magic, lrec = _RECORD_HEAD.unpack_from(self._mmap, offset)
        if magic != MAGIC:
            raise DamagedRecord(key, f"no RecordIO magic at offset {offset}")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        start = offset + 8
        if start + length > size:
            raise DamagedRecord(
                key, f"record of {length} bytes at offset {offset} runs past the end of the file (cut short?)"
            )
        if cflag == WHOLE:
            return self._view[start : start + length]
        if cflag != FIRST_PART:
            raise DamagedRecord(
                key, f"offset {offset} holds a continuation part (cflag {cflag}), not a record start"
            )
        return self._join_parts(key, start, length)

    def _join_parts(self, key: int, start: int, length: int) -> bytes:
        parts = [self._view[start : start + length]]
        pos = start + _aligned(length)
        while True:
            if pos + 8 > self.size:
                raise DamagedRecord(key, "multi-part record is cut short")
            magic, lrec = _RECORD_HEAD.unpack_from(self._mmap, pos)
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if magic != MAGIC or cflag not in (MIDDLE_PART, LAST_PART):
                raise DamagedRecord(key, f"multi-part record broken at offset {pos}")
            if pos + 8 + length > self.size:
                raise DamagedRecord(key, "multi-part record is cut short")
            parts.append(MAGIC_BYTES)
            parts.append(self._view[pos + 8 : pos + 8 + length])
            if cflag == LAST_PART:
                return b"".join(parts)
            pos += 8 + _aligned(length)

    def _scan_index(self) -> dict[int, int]:
        """Walk the file from the start; each record start (cflag 0 or 1) gets the next key."""
        index: dict[int, int] = {}
        pos, size, key = 0, self.size, 0
        while pos + 8 <= size:
            magic, lrec = _RECORD_HEAD.unpack_from(self._mmap, pos)
            if magic != MAGIC:
                found = self._next_magic(pos + 4)
                self.scan_problems.append(
                    f"garbage at offset {pos}, resumed at {found if found >= 0 else 'end'}"
                )
                if found < 0:
                    break
                pos = found
                continue
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if cflag in (WHOLE, FIRST_PART):
                index[key] = pos
                key += 1
            pos += 8 + _aligned(length)
        if 0 < size - pos < 8:
            self.scan_problems.append(f"{size - pos} stray bytes at the end of the file")
        return index

    def _next_magic(self, pos: int) -> int:
        pos = _aligned(pos)
        while True:
            pos = self._mmap.find(MAGIC_BYTES, pos)
            if pos < 0 or pos % 4 == 0:
                return pos
            pos += 1

    def close(self) -> None:
        # Views handed out may still be alive; then the map goes when they do.
        with contextlib.suppress(BufferError):
            self._view.release()
            self._mmap.close()

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- insightface layout -------------------------------------------------------
    def identity_key_range(self) -> tuple[int, int] | None:
        """``(id_start, id_end)`` from record 0 when the file has insightface's header."""
        if 0 not in self.index:
            return None
        try:
            header, rest = self.read_unpacked(0)
        except DamagedRecord:
            return None
        if header.flag < 2 or len(rest) != 0:
            return None
        id_start, id_end = int(header.label[0]), int(header.label[1])
        return (id_start, id_end) if 0 < id_start <= id_end else None

    def image_keys(self) -> list[int]:
        """The keys of image records in file order, for both layouts."""
        identity = self.identity_key_range()
        if identity is None:
            return self.keys_in_file_order()
        return self.keys_in_file_order(k for k in self.index if 0 < k < identity[0])

    def iter_images(
        self, keys: Iterable[int] | None = None
    ) -> Iterator[tuple[int, IRHeader | None, memoryview | str]]:
        """Yield ``(key, header, image bytes)``, or ``(key, None, reason)`` for a damaged record.

        This is extraction's hot path: the heads of all common records (whole, one
        label) are decoded at once with numpy, and only the rest take the general path.
        """
        keys = self.image_keys() if keys is None else list(keys)
        offsets = np.fromiter((self.index.get(key, -1) for key in keys), np.int64, len(keys))
        common, labels, ids, ids2, ends = self._common_record_heads(offsets)
        view = self._view
        payload_start = 8 + _IR_HEADER.size
        for key, offset, is_common, label, id_, id2, end in zip(
            keys,
            offsets.tolist(),
            common.tolist(),
            labels.tolist(),
            ids.tolist(),
            ids2.tolist(),
            ends.tolist(),
            strict=True,
        ):
            if is_common:
                yield key, IRHeader(0, label, id_, id2), view[offset + payload_start : end]
                continue
            try:
                header, image = self.read_unpacked(key)
            except DamagedRecord as damage:
                yield key, None, damage.reason
                continue
            yield key, header, image

    def _common_record_heads(self, offsets: np.ndarray) -> tuple[np.ndarray, ...]:
        """For each offset: is it a whole record with a one-label header, and its label, ids and end."""
        words = np.frombuffer(self._mmap, dtype="<u4", count=self.size // 4)
        usable = (offsets >= 0) & (offsets % 4 == 0) & (offsets + 8 + _IR_HEADER.size <= self.size)
        at = np.where(usable, offsets // 4, 0)
        lrec = words[at + 1].astype(np.int64)
        ends = offsets + 8 + lrec
        common = (
            usable
            & (words[at] == MAGIC)
            & (lrec >> 29 == WHOLE)
            & (lrec >= _IR_HEADER.size)
            & (ends <= self.size)
            & (words[at + 2] == 0)
        )
        labels = words[at + 3].view("<f4")
        ids = words[at + 4].astype(np.uint64) | (words[at + 5].astype(np.uint64) << np.uint64(32))
        ids2 = words[at + 6].astype(np.uint64) | (words[at + 7].astype(np.uint64) << np.uint64(32))
        return common, labels, ids, ids2, ends

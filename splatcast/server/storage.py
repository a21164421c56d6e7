"""Durable storage of sequences: metadata and a frame index in SQLite, one append-only stream file each.

A sequence's stream file is a valid ``.splatcast`` file at every committed length: the header
message (written together with frame 0, when the SH degree is known), the frame messages in
order, and the end message once the sequence is finished. Every write is fsynced and its index
row committed before the call returns, so a frame the server acknowledged survives a crash;
bytes past the committed length (a write interrupted by a crash) are cut off by the next append.

``Storage`` is the interface the server uses; ``SqliteStorage`` the embedded implementation;
``scale_storage.ScaleStorage`` puts the same interface over Redis and S3 for many replicas.
Faults of the medium raise ``StorageError`` (``StorageFull`` when the disk is full), and leave
what was committed before intact and readable, listable and deletable.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from splatcast.server.errors import StorageError, StorageFull


@contextmanager
def _faults(what: str) -> Iterator[None]:
    """Turn a full disk into ``StorageFull`` and other I/O or SQLite failures into ``StorageError``."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"no space left on the storage device while {what}") from e
        raise StorageError(f"I/O error while {what}: {e.strerror or e}") from e
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise StorageFull(f"no space left on the storage device while {what}") from e
        raise StorageError(f"database error while {what}: {e}") from e


@dataclass
class FrameRecord:
    """Index row of one stored frame; ``offset``/``length`` locate its message in the stream file."""

    index: int
    frame_type: str  # "keyframe", "intra" or "interframe"
    num_gaussians: int
    raw_bytes: int  # size of the uploaded PLY body
    sha256: str  # hex digest of the uploaded PLY body (safe retries compare it)
    encode_ms: float
    received_at: float  # unix time the upload was accepted
    offset: int = 0
    length: int = 0


@dataclass
class SequenceInfo:
    """A sequence's metadata and running totals (totals are derived from the frame index)."""

    id: str
    name: str
    fps: float
    codec: dict  # CodecConfig.to_dict() fixed at creation
    created_at: float  # unix time
    encoding: str = "server"  # "server": the server encodes uploaded PLYs; "producer": uploads are encoded messages
    finished: bool = False
    sh_degree: int | None = None  # known once frame 0 is stored
    header_bytes: int = 0  # length of the header message at offset 0 (0 before frame 0)
    end_bytes: int = 0  # length of the end message (0 until finished)
    frame_count: int = 0
    frame_bytes: int = 0  # sum of frame message lengths
    raw_bytes: int = 0  # sum of uploaded PLY sizes
    encode_ms: float = 0.0  # sum of per-frame encode times
    keyframes: list[int] = field(default_factory=list)

    @property
    def stream_bytes(self) -> int:
        """Committed length of the stream file in bytes."""
        return self.header_bytes + self.frame_bytes + self.end_bytes


class Storage(Protocol):
    """What the server needs from storage. Sequence ids are validated by the caller."""

    def create(self, info: SequenceInfo) -> None:
        """Store a new sequence; raises ``KeyError`` if the id exists.

        Every method raises ``StorageError`` (``StorageFull`` for a full disk) on a storage fault.
        """

    def list(self) -> list[SequenceInfo]: ...

    def get(self, seq_id: str) -> SequenceInfo | None: ...

    def delete(self, seq_id: str) -> bool:
        """Remove a sequence and its stream; False if it did not exist."""

    def append(self, seq_id: str, record: FrameRecord, message: bytes, header: bytes | None = None,
               sh_degree: int | None = None, fence: str | None = None) -> FrameRecord:
        """Durably append one frame message (after ``header`` for frame 0); returns the record with offset/length.

        ``fence``: the caller's encoder lease (scale-out, ``lease.py``); a storage shared by
        replicas refuses a stale one (``Unavailable``). ``SqliteStorage`` ignores it.
        """

    def finish(self, seq_id: str, end_message: bytes, fence: str | None = None) -> None:
        """Durably append the end message and mark the sequence finished (``fence`` as in ``append``)."""

    def frames(self, seq_id: str, start: int = 0, stop: int | None = None) -> builtins.list[FrameRecord]:
        """Index rows of frames ``start`` <= index < ``stop`` (None = all after), in order."""

    def read(self, seq_id: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of the committed stream."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sequences (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, fps REAL NOT NULL, codec TEXT NOT NULL,
    created_at REAL NOT NULL, finished INTEGER NOT NULL DEFAULT 0, sh_degree INTEGER,
    header_bytes INTEGER NOT NULL DEFAULT 0, end_bytes INTEGER NOT NULL DEFAULT 0,
    encoding TEXT NOT NULL DEFAULT 'server');
CREATE TABLE IF NOT EXISTS frames (
    seq_id TEXT NOT NULL REFERENCES sequences(id) ON DELETE CASCADE, idx INTEGER NOT NULL,
    frame_type TEXT NOT NULL, num_gaussians INTEGER NOT NULL, raw_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL, encode_ms REAL NOT NULL, received_at REAL NOT NULL,
    offset INTEGER NOT NULL, length INTEGER NOT NULL, PRIMARY KEY (seq_id, idx));
"""

_FRAME_COLS = "idx, frame_type, num_gaussians, raw_bytes, sha256, encode_ms, received_at, offset, length"


def _record(row: tuple) -> FrameRecord:
    i, ftype, n, raw, sha, ms, at, off, length = row
    return FrameRecord(index=i, frame_type=ftype, num_gaussians=n, raw_bytes=raw, sha256=sha,
                       encode_ms=ms, received_at=at, offset=off, length=length)


class SqliteStorage:
    """``Storage`` on a local directory: ``index.sqlite3`` plus ``streams/<id>.splatcast``.

    Thread-safe (one connection behind a lock; file writes of different sequences run in
    parallel). Appends to one sequence must be serialised by the caller.
    """

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.root = Path(data_dir)
        self.streams = self.root / "streams"
        self.streams.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "index.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        if "encoding" not in {row[1] for row in self._db.execute("PRAGMA table_info(sequences)")}:
            self._db.execute("ALTER TABLE sequences ADD COLUMN encoding TEXT NOT NULL DEFAULT 'server'")  # older index

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _path(self, seq_id: str) -> Path:
        return self.streams / f"{seq_id}.splatcast"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on exit, rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite already rolled back after some errors (SQLITE_FULL)
                    self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, *params) -> int:
        with self._transaction() as db:
            return db.execute(sql, params).rowcount

    def create(self, info: SequenceInfo) -> None:
        with _faults(f"creating sequence {info.id}"):
            try:
                self._write("INSERT INTO sequences (id, name, fps, codec, created_at, encoding)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            info.id, info.name, info.fps, json.dumps(info.codec), info.created_at, info.encoding)
            except sqlite3.IntegrityError:
                raise KeyError(info.id) from None
        with _faults(f"creating the stream file of {info.id}"):
            self._path(info.id).write_bytes(b"")  # a crash before this leaves a row without a file: see append
            _fsync_dir(self.streams)

    def _infos(self, where: str, params: tuple) -> builtins.list[SequenceInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.name, s.fps, s.codec, s.created_at, s.finished, s.sh_degree, s.header_bytes,"
                " s.end_bytes, COUNT(f.idx), COALESCE(SUM(f.length), 0), COALESCE(SUM(f.raw_bytes), 0),"
                " COALESCE(SUM(f.encode_ms), 0), GROUP_CONCAT(CASE WHEN f.frame_type = 'keyframe' THEN f.idx END),"
                " s.encoding"
                f" FROM sequences s LEFT JOIN frames f ON f.seq_id = s.id {where}"
                " GROUP BY s.id ORDER BY s.created_at, s.id", params).fetchall()
        return [SequenceInfo(id=r[0], name=r[1], fps=r[2], codec=json.loads(r[3]), created_at=r[4],
                             finished=bool(r[5]), sh_degree=r[6], header_bytes=r[7], end_bytes=r[8],
                             frame_count=r[9], frame_bytes=r[10], raw_bytes=r[11], encode_ms=r[12],
                             keyframes=sorted(int(k) for k in r[13].split(",")) if r[13] else [], encoding=r[14])
                for r in rows]

    def list(self) -> list[SequenceInfo]:
        return self._infos("", ())

    def get(self, seq_id: str) -> SequenceInfo | None:
        found = self._infos("WHERE s.id = ?", (seq_id,))
        return found[0] if found else None

    def delete(self, seq_id: str) -> bool:
        """Remove the row, then the file; on a full disk the file goes first, to make room for the row's delete."""
        with _faults(f"deleting sequence {seq_id}"):
            try:
                deleted = self._write("DELETE FROM sequences WHERE id = ?", seq_id)
            except sqlite3.Error as e:
                if getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL or self.get(seq_id) is None:
                    raise
                self._path(seq_id).unlink(missing_ok=True)
                deleted = self._write("DELETE FROM sequences WHERE id = ?", seq_id)
            if deleted:
                self._path(seq_id).unlink(missing_ok=True)
        return bool(deleted)

    def _append_bytes(self, seq_id: str, offset: int, data: bytes) -> None:
        """Write ``data`` at the committed length ``offset`` and fsync it.

        A missing stream file is created when nothing was committed yet (a crash between the
        sequence's row and its file); with committed bytes it is a ``StorageError``.
        """
        path = self._path(seq_id)
        with _faults(f"writing the stream of {seq_id}"):
            try:
                fd = os.open(path, os.O_RDWR | (os.O_CREAT if offset == 0 else 0), 0o644)
            except FileNotFoundError:
                raise StorageError(f"the stream file of {seq_id} is missing ({offset} committed bytes lost); "
                                   "delete the sequence") from None
            with open(fd, "r+b") as f:
                f.truncate(offset)  # drop bytes of a write that never committed
                f.seek(offset)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def append(self, seq_id: str, record: FrameRecord, message: bytes, header: bytes | None = None,
               sh_degree: int | None = None, fence: str | None = None) -> FrameRecord:
        info = info_for_append(self, seq_id, header)
        prefix = header or b""
        offset = info.header_bytes + info.frame_bytes  # 0 when the header comes with frame 0
        record.offset, record.length = offset + len(prefix), len(message)
        self._append_bytes(seq_id, offset, prefix + message)
        with _faults(f"indexing frame {record.index} of {seq_id}"), self._transaction() as db:
            db.execute(f"INSERT INTO frames (seq_id, {_FRAME_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (seq_id, record.index, record.frame_type, record.num_gaussians, record.raw_bytes,
                        record.sha256, record.encode_ms, record.received_at, record.offset, record.length))
            if header is not None:
                db.execute("UPDATE sequences SET header_bytes = ?, sh_degree = ? WHERE id = ?",
                           (len(header), sh_degree, seq_id))
        return record

    def finish(self, seq_id: str, end_message: bytes, fence: str | None = None) -> None:
        info = self.get(seq_id)
        if info is None:
            raise KeyError(seq_id)
        self._append_bytes(seq_id, info.header_bytes + info.frame_bytes, end_message)
        with _faults(f"finishing {seq_id}"):
            self._write("UPDATE sequences SET finished = 1, end_bytes = ? WHERE id = ?", len(end_message), seq_id)

    def frames(self, seq_id: str, start: int = 0, stop: int | None = None) -> builtins.list[FrameRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_FRAME_COLS} FROM frames WHERE seq_id = ? AND idx >= ? AND idx < ?"
                                    " ORDER BY idx", (seq_id, start, 2**62 if stop is None else stop)).fetchall()
        return [_record(r) for r in rows]

    def read(self, seq_id: str, offset: int, length: int) -> bytes:
        with _faults(f"reading the stream of {seq_id}"), open(self._path(seq_id), "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise StorageError(f"the stream file of {seq_id} is shorter than its index ({offset}+{length})")
        return data


def info_for_append(storage: Storage, seq_id: str, header: bytes | None) -> SequenceInfo:
    """The info of the sequence an append goes to: ``KeyError`` if there is none, ``ValueError``
    for a header anywhere but with frame 0 (shared by the ``Storage`` implementations)."""
    info = storage.get(seq_id)
    if info is None:
        raise KeyError(seq_id)
    if header is not None and (info.frame_count or info.header_bytes):
        raise ValueError("the header is written with frame 0 only")
    return info


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

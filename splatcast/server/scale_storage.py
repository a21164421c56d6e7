"""``Storage`` for many replicas: metadata and the live stream in Redis, the bytes in S3 objects.

Objects of sequence ``<id>`` in the bucket (docs/SCALEOUT.md):

- ``<id>/header``: the stream header message; ``<id>/end``: the end message, once finished;
- ``<id>/pending/<index:08d>.<epoch>.<nonce>``: one frame message of the open GOP, written with
  ``If-None-Match: *`` before the frame is acknowledged; the encoder lease's epoch and a nonce
  in its name keep any other attempt (a fenced-off holder, a retry) from overwriting it; the
  index row names the object of the attempt that committed;
- ``<id>/gops/<n:06d>``: GOP ``n`` (frames from its keyframe to the next one) once it is closed,
  all its messages concatenated, immutable (``If-None-Match: *``); the pending objects go then;
- ``<id>/manifest.json``: the sequence's info, the frame index and the GOP table (first frame,
  frame count, byte offsets of each frame in the object), rewritten when a GOP closes and when
  the sequence finishes. A finished sequence is readable from S3 alone.

Redis holds the live state (``splatcast:seq:<id>`` hash, ``:frames`` list of index rows,
``:keys`` list of keyframe indices) and the live stream ``splatcast:live:<id>``. One Lua script
commits a frame: it checks the caller's lease (fencing token) and the frame order, appends the
index row and ``XADD``s the message to the live stream, trimmed at the previous keyframe (about
two GOPs). The commit is the publication: a frame is in the live stream iff it is committed.

Offsets are those of the sequence's virtual ``.splatcast`` stream (header, frames, end), as in
``SqliteStorage``, so ``read`` serves the stream, the GOPs and the subscribers alike by mapping
ranges onto objects; frames of the open GOP come from the live stream itself (``XRANGE`` of
their entry ids, kept in ``splatcast:entries:<id>``): the late join path. Redis unreachable:
``Unavailable`` (503), except for finished sequences, served from their manifest.
"""

from __future__ import annotations

import bisect
import builtins
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import redis

from splatcast.server.errors import StorageError, Unavailable
from splatcast.server.objects import Bucket
from splatcast.server.storage import FrameRecord, SequenceInfo, info_for_append

log = logging.getLogger("splatcast.server")
PREFIX = "splatcast:"

_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
if ARGV[1] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[1] then return -1 end
if tonumber(redis.call('HGET', KEYS[1], 'finished')) == 1 then return -4 end
if tonumber(redis.call('HGET', KEYS[1], 'frame_count')) ~= tonumber(ARGV[2]) then return -2 end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'header_bytes', ARGV[10], 'sh_degree', ARGV[11]) end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'frame_count', 1)
redis.call('HINCRBY', KEYS[1], 'frame_bytes', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'raw_bytes', ARGV[8])
redis.call('HINCRBYFLOAT', KEYS[1], 'encode_ms', ARGV[9])
local id = redis.call('XADD', KEYS[4], '*', 'kind', 'frame', 'index', ARGV[2], 'type', ARGV[4],
                      'at', ARGV[6], 'msg', ARGV[5])
redis.call('RPUSH', KEYS[6], id)
if ARGV[4] == 'keyframe' then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  local prev = redis.call('HGET', KEYS[1], 'key_entry')
  if prev then redis.call('XTRIM', KEYS[4], 'MINID', prev) end
  redis.call('HSET', KEYS[1], 'key_entry', id)
end
return 0
"""

_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if tonumber(redis.call('HGET', KEYS[1], 'finished')) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'finished', 1, 'end_bytes', ARGV[2], 'sealed', 0)
redis.call('XADD', KEYS[3], '*', 'kind', 'end', 'msg', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 0
"""

_SMALL_CACHE = 4096  # header and end messages kept in memory
_FINISHED_STREAM_TTL_S = 300  # a finished sequence's live stream (its last GOPs) leaves Redis after this
_INFO_FIELDS = ("name", "fps", "codec", "created_at", "finished", "sh_degree", "header_bytes", "end_bytes",
                "frame_count", "frame_bytes", "raw_bytes", "encode_ms", "gops_closed", "sealed", "encoding")


class LeaseLost(Unavailable):
    """The caller's encoder lease expired or was taken over before the frame was committed."""


def keys(seq_id: str) -> dict[str, str]:
    """Redis keys of one sequence."""
    return {k: f"{PREFIX}{k}:{seq_id}"
            for k in ("seq", "frames", "keys", "live", "lease", "epoch", "entries", "gops")}


def _seg(seq_id: str, name: str) -> str:
    return f"{seq_id}/{name}"


def gop_key(seq_id: str, n: int) -> str:
    """S3 key of GOP ``n`` of the sequence."""
    return _seg(seq_id, f"gops/{n:06d}")


class ScaleStorage:
    """``Storage`` over Redis (``redis_url``) and an S3 bucket; blocking, thread-safe.

    ``append`` and ``finish`` take the caller's encoder lease value as ``fence`` (the lease and
    fencing protocol is in ``lease.py``); a stale one raises ``LeaseLost``.
    """

    def __init__(self, redis_url: str, bucket: Bucket, timeout_s: float, retry_after_s: float) -> None:
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                          health_check_interval=10, protocol=2)
        self.bucket = bucket
        self.retry_after_s = retry_after_s
        self._append = self.redis.register_script(_APPEND)
        self._finish = self.redis.register_script(_FINISH)
        self._finished: dict[str, dict] = {}  # manifests of finished sequences (immutable), by id
        self._small: dict[str, bytes] = {}  # header and end objects (immutable, tiny), by key
        self._sealing: set[str] = set()  # finished sequences being written whole to S3 now
        self._lock = threading.Lock()

    def close(self) -> None:
        self.redis.close()

    @contextmanager
    def _redis(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise Unavailable(f"Redis unreachable while {what}", self.retry_after_s) from e
        except redis.RedisError as e:
            raise StorageError(f"Redis failed while {what}: {e}") from e

    # --- metadata -----------------------------------------------------------------------------------

    def create(self, info: SequenceInfo) -> None:
        k = keys(info.id)
        if self._manifest(info.id) is not None:
            raise KeyError(info.id)
        fields: dict[Any, Any] = {"name": info.name, "fps": repr(info.fps), "codec": json.dumps(info.codec),
                                  "created_at": repr(info.created_at), "finished": 0, "header_bytes": 0, "end_bytes": 0,
                                  "frame_count": 0, "frame_bytes": 0, "raw_bytes": 0, "encode_ms": 0,
                                  "gops_closed": 0, "encoding": info.encoding}
        with self._redis(f"creating sequence {info.id}"):
            if not self.redis.hsetnx(k["seq"], "name", info.name):
                raise KeyError(info.id)
            self.redis.hset(k["seq"], mapping=fields)
            self.redis.sadd(f"{PREFIX}ids", info.id)
        self._write_manifest(info.id)

    def _info_from_redis(self, seq_id: str) -> SequenceInfo | None:
        k = keys(seq_id)
        with self._redis(f"reading sequence {seq_id}"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.hmget(k["seq"], _INFO_FIELDS)
            pipe.lrange(k["keys"], 0, -1)
            values, keyframes = pipe.execute()
        if values[0] is None:
            return None
        f = dict(zip(_INFO_FIELDS, (v.decode() if v is not None else None for v in values)))
        if f["finished"] == "1" and f["sealed"] == "0":  # finished in Redis, not yet whole in S3: repair
            self._try_seal(seq_id)
        return SequenceInfo(id=seq_id, name=f["name"] or "", fps=float(f["fps"] or 0),
                            codec=json.loads(f["codec"] or "{}"),
                            created_at=float(f["created_at"] or 0), finished=f["finished"] == "1",
                            sh_degree=int(f["sh_degree"]) if f["sh_degree"] else None,
                            header_bytes=int(f["header_bytes"] or 0), end_bytes=int(f["end_bytes"] or 0),
                            frame_count=int(f["frame_count"] or 0), frame_bytes=int(f["frame_bytes"] or 0),
                            raw_bytes=int(f["raw_bytes"] or 0), encode_ms=float(f["encode_ms"] or 0),
                            keyframes=[int(x) for x in keyframes], encoding=f["encoding"] or "server")

    def _manifest(self, seq_id: str) -> dict | None:
        if seq_id in self._finished:
            return self._finished[seq_id]
        data = self.bucket.get(_seg(seq_id, "manifest.json"))
        if data is None:
            return None
        manifest = json.loads(data)
        if manifest["info"]["finished"]:
            with self._lock:
                self._finished[seq_id] = manifest
        return manifest

    def _finished_manifest(self, seq_id: str) -> dict | None:
        """The manifest if the sequence is finished in S3 (served without Redis), else None."""
        if seq_id in self._finished:
            return self._finished[seq_id]
        manifest = self._manifest(seq_id)
        return manifest if manifest is not None and manifest["info"]["finished"] else None

    def get(self, seq_id: str) -> SequenceInfo | None:
        if (m := self._finished.get(seq_id)) is not None:
            return _info_of(m)
        try:
            info = self._info_from_redis(seq_id)
        except Unavailable:
            if (m := self._finished_manifest(seq_id)) is None:
                raise
            return _info_of(m)
        if info is not None:
            return info
        m = self._finished_manifest(seq_id)  # Redis lost it (or never had it): S3 alone
        return _info_of(m) if m is not None else None

    def list(self) -> list[SequenceInfo]:
        with self._redis("listing sequences"):
            ids = sorted(x.decode() if isinstance(x, bytes) else str(x) for x in self.redis.smembers(f"{PREFIX}ids"))
        infos = [i for i in (self.get(s) for s in ids) if i is not None]
        known = {i.id for i in infos}
        infos += [i for i in (self.get(s) for s in self.bucket.prefixes() if s not in known) if i is not None]
        return sorted(infos, key=lambda i: (i.created_at, i.id))

    def delete(self, seq_id: str) -> bool:
        k = keys(seq_id)
        existed = self.get(seq_id) is not None
        with self._redis(f"deleting {seq_id}"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(k["seq"], k["frames"], k["keys"], k["lease"], k["entries"], k["gops"])
            pipe.srem(f"{PREFIX}ids", seq_id)
            pipe.execute()
        self.bucket.delete_prefix(f"{seq_id}/")
        with self._lock:
            self._finished.pop(seq_id, None)
            for key in [k for k in self._small if k.startswith(f"{seq_id}/")]:
                del self._small[key]
        return existed

    def tell_deleted(self, seq_id: str, message: bytes) -> None:
        """Put the 'deleted' error message into the live stream (subscribers on every replica get it);
        the stream key expires a minute later."""
        k = keys(seq_id)
        with self._redis(f"telling subscribers {seq_id} is gone"):
            self.redis.xadd(k["live"], {"kind": "error", "msg": message})
            self.redis.expire(k["live"], 60)

    # --- frames -------------------------------------------------------------------------------------

    def append(self, seq_id: str, record: FrameRecord, message: bytes, header: bytes | None = None,
               sh_degree: int | None = None, fence: str | None = None) -> FrameRecord:
        info = info_for_append(self, seq_id, header)
        epoch = fence.split("|", 1)[0] if fence else "0"
        if header is not None:
            self.bucket.put_new(_seg(seq_id, "header"), header)  # same bytes whoever writes it first
        obj = _seg(seq_id, f"pending/{record.index:08d}.{epoch}.{secrets.token_hex(4)}")  # one key per attempt
        if not self.bucket.put_new(obj, message):  # durable before it is acknowledged
            raise StorageError(f"object {obj} already exists")
        record.offset = (len(header) if header is not None else info.header_bytes) + info.frame_bytes
        record.length = len(message)
        row = json.dumps({**asdict(record), "obj": obj})
        k = keys(seq_id)
        with self._redis(f"committing frame {record.index} of {seq_id}"):
            status = self._append(keys=[k["seq"], k["frames"], k["keys"], k["live"], k["lease"], k["entries"]],
                                  args=[fence or "", record.index, row, record.frame_type, message,
                                        repr(record.received_at), len(message), record.raw_bytes,
                                        repr(record.encode_ms), len(header) if header is not None else "",
                                        sh_degree if sh_degree is not None else ""])
        if status == -1:
            raise LeaseLost(f"the encoder lease of {seq_id} was lost before frame {record.index} was committed",
                            self.retry_after_s)
        if status == -3:
            raise KeyError(seq_id)
        if status in (-2, -4):
            raise StorageError(f"frame {record.index} of {seq_id} is out of order in Redis")
        if record.frame_type == "keyframe" and record.index > 0:
            self.close_gops(seq_id)
        return record

    def close_gops(self, seq_id: str, through_end: bool = False) -> None:
        """Write the GOP objects of every closed GOP not written yet (all of them with ``through_end``),
        then the manifest, then drop their pending objects. Failures are logged: the pending objects
        stay and the next keyframe or the finish tries again."""
        try:
            self._close_gops(seq_id, through_end)
        except (StorageError, Unavailable) as e:
            log.warning("closing GOPs of %s failed (retried later): %s", seq_id, e)

    def _close_gops(self, seq_id: str, through_end: bool) -> None:
        info = self.get(seq_id)
        if info is None or not info.keyframes:
            return
        k = keys(seq_id)
        with self._redis(f"reading GOPs of {seq_id}"):
            closed = int(self.redis.hget(k["seq"], "gops_closed") or 0)
        bounds = [*info.keyframes, info.frame_count]
        last = len(info.keyframes) if through_end else len(info.keyframes) - 1
        if closed >= last:
            return
        rows = self._rows(seq_id, bounds[closed], bounds[last])
        done: list[str] = []
        table = []
        for n in range(closed, last):
            gop = [r for r in rows if bounds[n] <= r["index"] < bounds[n + 1]]
            data = b"".join(self._get(r["obj"]) for r in gop)
            self.bucket.put_new(gop_key(seq_id, n), data)  # False: written before a crash, same bytes
            done += [r["obj"] for r in gop]
            table.append(json.dumps({"n": n, "first": bounds[n], "count": len(gop), "offset": gop[0]["offset"],
                                     "bytes": len(data), "offsets": [r["offset"] - gop[0]["offset"] for r in gop]}))
        with self._redis(f"recording GOPs of {seq_id}"):
            pipe = self.redis.pipeline(transaction=True)  # the GOP table and its length together
            pipe.rpush(k["gops"], *table)
            pipe.hset(k["seq"], "gops_closed", last)
            pipe.execute()
        self._write_manifest(seq_id)
        self.bucket.delete(done)

    def _gop_table(self, seq_id: str) -> tuple[int, builtins.list[dict]]:
        """(GOPs closed, their table rows) from Redis."""
        k = keys(seq_id)
        with self._redis(f"reading GOPs of {seq_id}"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.hget(k["seq"], "gops_closed")
            pipe.lrange(k["gops"], 0, -1)
            closed, table = pipe.execute()
        return int(closed or 0), [json.loads(t) for t in table[:int(closed or 0)]]

    def _get(self, key: str, start: int | None = None, length: int | None = None, tag: str = "") -> bytes:
        """Bytes of an object; header and end objects (every subscriber's first and last message) are
        cached under ``key`` + ``tag`` (the sequence's creation time: an id deleted and created again
        on another replica gets new entries)."""
        if tag and key.endswith(("/header", "/end")):
            whole = self._small.get(key + tag)
            if whole is None:
                whole = self._get_object(key)
                with self._lock:
                    if len(self._small) >= _SMALL_CACHE:
                        self._small.pop(next(iter(self._small)))
                    self._small[key + tag] = whole
            return whole if start is None or length is None else whole[start:start + length]
        return self._get_object(key, start, length)

    def _get_object(self, key: str, start: int | None = None, length: int | None = None) -> bytes:
        data = self.bucket.get(key, start, length)
        if data is None:
            raise StorageError(f"object {key} is missing")
        return data

    def _rows(self, seq_id: str, start: int, stop: int | None) -> builtins.list[dict]:
        with self._redis(f"reading the frame index of {seq_id}"):
            raw = self.redis.lrange(keys(seq_id)["frames"], start, -1 if stop is None else stop - 1)
        return [json.loads(r) for r in raw]

    def _write_manifest(self, seq_id: str) -> None:
        """The manifest: info and GOP table while live (O(GOPs)), plus the whole frame index once
        finished (written once: what a replica needs to serve the sequence from S3 alone)."""
        info = self.get(seq_id)
        if info is None:
            return
        _, gops = self._gop_table(seq_id)
        rows = self._rows(seq_id, 0, None) if info.finished else []
        body = {"version": 1, "info": {**asdict(info), "keyframes": info.keyframes},
                "frames": [{f: r[f] for f in FrameRecord.__dataclass_fields__} for r in rows], "gops": gops}
        self.bucket.put(_seg(seq_id, "manifest.json"), json.dumps(body).encode())

    def finish(self, seq_id: str, end_message: bytes, fence: str | None = None) -> None:
        info = self.get(seq_id)
        if info is None:
            raise KeyError(seq_id)
        if info.finished:
            return
        self.bucket.put_new(_seg(seq_id, "end"), end_message)
        k = keys(seq_id)
        with self._redis(f"finishing {seq_id}"):
            status = self._finish(keys=[k["seq"], k["lease"], k["live"]],
                                  args=[fence or "", len(end_message), end_message, _FINISHED_STREAM_TTL_S])
        if status == -1:
            raise LeaseLost(f"the encoder lease of {seq_id} was lost before it was finished", self.retry_after_s)
        if status == -3:
            raise KeyError(seq_id)
        self._seal(seq_id)  # raises: the caller learns; the next read of the sequence tries again

    def _seal(self, seq_id: str) -> None:
        """Make a finished sequence whole in S3: its last GOP objects and the finished manifest."""
        with self._lock:
            if seq_id in self._sealing:
                return
            self._sealing.add(seq_id)
        try:
            self._close_gops(seq_id, through_end=True)
            self._write_manifest(seq_id)
            with self._redis(f"sealing {seq_id}"):
                self.redis.hset(keys(seq_id)["seq"], "sealed", 1)
        finally:
            with self._lock:
                self._sealing.discard(seq_id)

    def _try_seal(self, seq_id: str) -> None:
        try:
            self._seal(seq_id)
        except (StorageError, Unavailable) as e:
            log.warning("writing the finished sequence %s to S3 failed (retried at its next read): %s", seq_id, e)

    def frames(self, seq_id: str, start: int = 0, stop: int | None = None) -> builtins.list[FrameRecord]:
        if (m := self._finished.get(seq_id)) is not None:
            return [FrameRecord(**r) for r in m["frames"][start:stop]]
        try:
            rows = self._rows(seq_id, start, stop)
        except Unavailable:
            if (m := self._finished_manifest(seq_id)) is None:
                raise
            return [FrameRecord(**r) for r in m["frames"][start:stop]]
        if not rows and not self._known(seq_id) and (m := self._finished_manifest(seq_id)) is not None:
            return [FrameRecord(**r) for r in m["frames"][start:stop]]  # Redis lost it: S3 alone
        return [FrameRecord(**{f: r[f] for f in FrameRecord.__dataclass_fields__}) for r in rows]

    def _known(self, seq_id: str) -> bool:
        with self._redis(f"reading sequence {seq_id}"):
            return bool(self.redis.exists(keys(seq_id)["seq"]))

    def read(self, seq_id: str, offset: int, length: int) -> bytes:
        """Bytes of the virtual stream: frames of the open GOP from the live stream (one ``XRANGE``,
        the late join path; their S3 objects when trimmed away or Redis fails), the rest from S3."""
        segments, tag = self._segments(seq_id)
        starts = [s[0] for s in segments]
        pieces: builtins.list[tuple[tuple[int, int, str, str], int, int]] = []
        pos, stop = offset, offset + length
        i = max(0, bisect.bisect_right(starts, offset) - 1)
        while pos < stop and i < len(segments):
            seg = segments[i]
            if pos < seg[0] + seg[1]:
                take = min(stop, seg[0] + seg[1]) - pos
                pieces.append((seg, pos - seg[0], take))
                pos += take
            i += 1
        entries = [seg[3] for seg, _, _ in pieces if seg[3]]
        live = self._live_messages(seq_id, entries[0], entries[-1]) if entries else {}
        out = []
        for (_, seg_len, key, entry), rel, take in pieces:
            msg = live.get(entry)
            out.append(msg[rel:rel + take] if msg is not None and len(msg) == seg_len
                       else self._get(key, rel, take, tag))
        data = b"".join(out)
        if len(data) != length:
            raise StorageError(f"the stream of {seq_id} is shorter than its index ({offset}+{length})")
        return data

    def _live_messages(self, seq_id: str, first: str, last: str) -> dict[str, bytes]:
        """Frame messages in the live stream between two entry ids ({} when Redis fails: S3 serves)."""
        try:
            found: Any = self.redis.xrange(keys(seq_id)["live"], first, last)
        except redis.RedisError:
            return {}
        return {(e.decode() if isinstance(e, bytes) else str(e)): f[b"msg"] for e, f in found if b"msg" in f}

    def _segments(self, seq_id: str) -> tuple[builtins.list[tuple[int, int, str, str]], str]:
        """(offset, length, object key, live stream entry id or "") of the pieces of the virtual stream,
        and the sequence's creation time as a cache tag."""
        m = self._finished.get(seq_id)
        if m is None:
            info = self.get(seq_id)
            if info is None:
                raise StorageError(f"no sequence {seq_id}")
            m = self._finished.get(seq_id)
        if m is not None:
            info = _info_of(m)
            segs = [(0, info.header_bytes, _seg(seq_id, "header"), "")]
            segs += [(g["offset"], g["bytes"], gop_key(seq_id, g["n"]), "") for g in m["gops"]]
        else:  # live: the GOP table and the rows of the frames after the closed GOPs (O(GOPs + a GOP))
            assert info is not None
            k = keys(seq_id)
            closed, table = self._gop_table(seq_id)
            segs = [(0, info.header_bytes, _seg(seq_id, "header"), "")]
            segs += [(g["offset"], g["bytes"], gop_key(seq_id, g["n"]), "") for g in table]
            first_pending = [*info.keyframes, info.frame_count][closed] if closed else 0
            with self._redis(f"reading the live stream index of {seq_id}"):
                ids = [e.decode() if isinstance(e, bytes) else str(e)
                       for e in self.redis.lrange(k["entries"], first_pending, -1)]
            pending = self._rows(seq_id, first_pending, None)
            ids += [""] * (len(pending) - len(ids))
            segs += [(r["offset"], r["length"], r["obj"], e) for r, e in zip(pending, ids)]
        if info.finished:
            segs.append((info.header_bytes + info.frame_bytes, info.end_bytes, _seg(seq_id, "end"), ""))
        return segs, f"@{info.created_at!r}"


def _info_of(manifest: dict) -> SequenceInfo:
    return SequenceInfo(**manifest["info"])

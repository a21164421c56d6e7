"""Units of the server without a network: backpressure policy of the hub, durable storage."""

from __future__ import annotations

import asyncio
import random

import pytest

from splatcast.server.hub import Hub, Item, TooManySubscribers
from splatcast.server.storage import FrameRecord, SequenceInfo, SqliteStorage


def frame(i: int, ftype: str) -> Item:
    return Item("frame", f"m{i}".encode(), i, ftype)


def drain(sub) -> list[Item]:
    async def go():
        out = []
        while sub._queue:
            out.append(await sub.get())
        return out
    return asyncio.run(go())


def test_full_queue_skips_to_next_keyframe_and_keeps_control_messages():
    hub = Hub()
    slow = hub.subscribe("s", maxsize=3, limit=10)
    types = ["keyframe", "interframe", "interframe", "interframe", "interframe", "intra", "keyframe", "interframe"]
    for i, t in enumerate(types):
        hub.publish("s", frame(i, t))
    hub.publish("s", Item("end", b"end"))
    got = drain(slow)
    # 0..2 fill the queue; 3 finds it full: 0..2 dropped, 3..5 skipped until keyframe 6.
    assert [(i.index, i.frame_type) for i in got[:-1]] == [(6, "keyframe"), (7, "interframe")]
    assert got[-1].kind == "end"
    assert slow.skipped == 6 and slow.resyncs == 1


def test_random_publishing_never_delivers_a_frame_without_its_reference():
    rng = random.Random(0)
    hub = Hub()
    sub = hub.subscribe("s", maxsize=4, limit=10)
    delivered: list[Item] = []
    for i in range(2000):
        hub.publish("s", frame(i, "keyframe" if i % 7 == 0 else rng.choice(["intra", "interframe"])))
        if rng.random() < 0.4:  # a reader slower than the producer
            delivered += drain(sub)
    delivered += drain(sub)
    assert delivered[0].frame_type == "keyframe"
    for prev, cur in zip(delivered, delivered[1:]):
        assert cur.index > prev.index
        if cur.index != prev.index + 1:
            assert cur.frame_type == "keyframe", (prev.index, cur.index)
    assert sub.skipped == 2000 - len(delivered) > 0


def test_subscriber_limit_and_unsubscribe():
    hub = Hub()
    a = hub.subscribe("s", 4, limit=2)
    hub.subscribe("s", 4, limit=2)
    with pytest.raises(TooManySubscribers):
        hub.subscribe("s", 4, limit=2)
    hub.unsubscribe(a)
    assert hub.count("s") == 1
    hub.subscribe("s", 4, limit=2)


def record(i: int, ftype: str = "keyframe") -> FrameRecord:
    return FrameRecord(index=i, frame_type=ftype, num_gaussians=10, raw_bytes=100, sha256="x", encode_ms=1.0,
                       received_at=0.0)


def test_storage_survives_reopen_and_cuts_an_uncommitted_tail(tmp_path):
    st = SqliteStorage(tmp_path)
    st.create(SequenceInfo(id="a", name="n", fps=30.0, codec={"gop": 5}, created_at=1.0))
    with pytest.raises(KeyError):
        st.create(SequenceInfo(id="a", name="n", fps=30.0, codec={}, created_at=1.0))
    st.append("a", record(0), b"F0", header=b"HEAD", sh_degree=3)
    st.append("a", record(1, "interframe"), b"F1-")
    st.close()
    with open(tmp_path / "streams" / "a.splatcast", "ab") as f:
        f.write(b"torn write of a frame that never committed")
    st = SqliteStorage(tmp_path)
    info = st.get("a")
    assert (info.frame_count, info.sh_degree, info.header_bytes, info.keyframes) == (2, 3, 4, [0])
    st.append("a", record(2), b"F2")
    st.finish("a", b"END")
    info = st.get("a")
    assert info.finished and info.stream_bytes == len(b"HEADF0F1-F2END")
    assert st.read("a", 0, info.stream_bytes) == b"HEADF0F1-F2END"
    assert [(r.index, r.offset, r.length) for r in st.frames("a", 1)] == [(1, 6, 3), (2, 9, 2)]
    assert st.delete("a") and st.get("a") is None and not st.delete("a")
    assert not (tmp_path / "streams" / "a.splatcast").exists()


def test_storage_keeps_the_encoding_and_opens_an_index_made_before_it_existed(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "index.sqlite3")  # the sequences table as it was before issue 12
    db.execute("CREATE TABLE sequences (id TEXT PRIMARY KEY, name TEXT NOT NULL, fps REAL NOT NULL, codec TEXT NOT "
               "NULL, created_at REAL NOT NULL, finished INTEGER NOT NULL DEFAULT 0, sh_degree INTEGER, header_bytes "
               "INTEGER NOT NULL DEFAULT 0, end_bytes INTEGER NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO sequences (id, name, fps, codec, created_at) VALUES ('old', '', 30, '{}', 1)")
    db.commit()
    db.close()
    st = SqliteStorage(tmp_path)
    st.create(SequenceInfo(id="new", name="n", fps=30.0, codec={}, created_at=2.0, encoding="producer"))
    assert [(i.id, i.encoding) for i in st.list()] == [("old", "server"), ("new", "producer")]


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    from pydantic import ValidationError

    from splatcast.server import Settings

    monkeypatch.setenv("SPLATCAST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPLATCAST_MAX_SUBSCRIBERS", "3")
    monkeypatch.setenv("SPLATCAST_CODEC_DEFAULTS", '{"gop": 4}')
    monkeypatch.setenv("SPLATCAST_TOKEN", "t")
    s = Settings()
    assert (s.data_dir, s.max_subscribers, s.codec_defaults, s.token) == (tmp_path, 3, {"gop": 4}, "t")
    monkeypatch.setenv("SPLATCAST_DEVICE", "tpu")
    with pytest.raises(ValidationError):
        Settings()

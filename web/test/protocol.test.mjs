// The JS protocol decoder against the Python-generated vectors in tests/vectors/
// (scripts/make_vectors.py): good streams decode to what their JSON says, bad ones raise the
// same error class as the Python decoder.
import test from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { encode } from "../../splatcast/server/static/vendor/msgpack.mjs";
import { MessageSplitter, ProtocolError, WireArray, decodeBody, decodeStream }
  from "../../splatcast/server/static/js/protocol.mjs";

const VECTORS = fileURLToPath(new URL("../../tests/vectors/", import.meta.url));
const read = (rel) => new Uint8Array(readFileSync(VECTORS + rel));
const json = (rel) => JSON.parse(readFileSync(VECTORS + rel, "utf8"));
const GOOD = ["stream", "error"].filter((n) => existsSync(`${VECTORS}${n}.json`));

// Decoded message -> the JSON description make_vectors.py writes.
function describe(v) {
  if (v instanceof WireArray) {
    const out = { dtype: v.dtype, shape: v.shape, sha256: createHash("sha256").update(v.bytes).digest("hex") };
    const count = v.shape.reduce((p, d) => p * d, 1);
    if (count <= 1024) {
      const raw = v.data;
      out.values = v.dtype === "|b1" ? Array.from(raw, (x) => x === 1)
        : typeof raw[0] === "bigint" ? Array.from(raw, String) : Array.from(raw);
    }
    return out;
  }
  if (v !== null && typeof v === "object" && !Array.isArray(v)) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, describe(x)]));
  }
  return v;
}

for (const name of GOOD) {
  test(`vector ${name}: every message decodes as in ${name}.json`, () => {
    const doc = json(`${name}.json`);
    const bytes = read(doc.file);
    assert.equal(bytes.length, doc.size);
    const msgs = decodeStream(bytes);
    assert.equal(msgs.length, doc.messages.length);
    msgs.forEach((m, i) => {
      const want = { ...doc.messages[i].message };
      delete want.magic; // checked by the decoder, not kept in the message
      delete want.version;
      assert.deepEqual(describe(m), want);
    });
  });

  test(`vector ${name}: any chunking gives the same messages`, () => {
    const bytes = read(`${name}.splatcast`);
    const whole = decodeStream(bytes).map(describe);
    for (const size of [1, 3, 7, 64, 1000]) {
      const splitter = new MessageSplitter();
      const got = [];
      for (let i = 0; i < bytes.length; i += size) {
        for (const body of splitter.push(bytes.subarray(i, i + size))) got.push(describe(decodeBody(body)));
      }
      splitter.close();
      assert.deepEqual(got, whole, `chunks of ${size}`);
    }
  });
}

const bad = existsSync(VECTORS + "bad.json") ? Object.entries(json("bad.json")) : [];
for (const [name, { file, error }] of bad) {
  test(`bad vector ${name} raises ${error}, fed whole or byte by byte`, () => {
    const bytes = read(file);
    const byteByByte = () => {
      const splitter = new MessageSplitter();
      for (let i = 0; i < bytes.length; i++) splitter.push(bytes.subarray(i, i + 1)).forEach((b) => decodeBody(b));
      splitter.close();
    };
    for (const feed of [() => decodeStream(bytes), byteByByte]) {
      assert.throws(feed, (e) => {
        assert.ok(e instanceof ProtocolError, `${e}`);
        assert.equal(e.kind, error, e.message);
        return true;
      });
    }
  });
}

// A zstd frame holding `content` in one raw (stored) block, with its content size: RFC 8878
// section 3.1.1 (FHD 0xA0 = 4-byte content size, single segment; block header: last, raw).
function zstdRaw(content) {
  const out = new Uint8Array(4 + 1 + 4 + 3 + content.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, 0xfd2fb528, true);
  out[4] = 0xa0;
  dv.setUint32(5, content.length, true);
  const block = (content.length << 3) | 1; // size, type raw (0), last block
  out.set([block & 255, (block >> 8) & 255, (block >> 16) & 255], 9);
  out.set(content, 12);
  return out;
}

test("inherited property names are not message types or dtypes", () => {
  const frame = (payload) => ({ t: "frame", index: 0, pts: 0, frame_type: "keyframe", num_gaussians: 1, payload });
  const hostile = [
    { t: "constructor" }, { t: "toString" },
    frame({ x: { dtype: "constructor", shape: [1], data: new Uint8Array(1) } }),
    frame({ x: { dtype: "toString", shape: [1], data: new Uint8Array(1) } }),
  ];
  for (const wire of hostile) {
    assert.throws(() => decodeBody(zstdRaw(encode(wire))), (e) => e instanceof ProtocolError && e.kind === "SchemaError");
  }
  assert.equal(decodeBody(zstdRaw(encode({ t: "end", frame_count: 3 }))).frame_count, 3); // the helper is valid
});

// splatcast wire protocol in JavaScript (spec: docs/PROTOCOL.md; Python twin:
// splatcast/protocol/). Sans-I/O: bytes in, message objects out; runs in a Web Worker and
// in Node (web/test/).
//
// Framing: 4-byte big-endian length, then one zstd frame (content size in its header) holding
// one msgpack map tagged by "t" ("header" | "frame" | "end" | "error"). Arrays inside a frame
// payload are maps {dtype, shape, data: bin}; they become `WireArray`s here. Every limit is
// checked before the allocation it bounds, as in the Python decoder.
import { ZSTDDecoder } from "../vendor/three/addons/libs/zstddec.module.js";
import { Decoder } from "../vendor/msgpack.mjs";

// libzstd compiled to WebAssembly (zstddec, shipped with three.js): verifies content checksums,
// about 1.5x faster than pure-JS fzstd here.
const zstd = new ZSTDDecoder();
await zstd.init();

export const MAGIC = "splatcast";
export const PROTOCOL_MAJOR = 1;
export const FRAME_TYPES = ["keyframe", "intra", "interframe"];

/** Error for bytes that break the protocol; `kind` names the Python class it mirrors
 * (FramingError, LimitExceeded, DecompressionError, SchemaError, VersionError). */
export class ProtocolError extends Error {
  constructor(kind, message) {
    super(`${kind}: ${message}`);
    this.name = "ProtocolError";
    this.kind = kind;
  }
}

/** Same defaults as splatcast.protocol.Limits (bytes unless noted). */
export const DEFAULT_LIMITS = Object.freeze({
  maxMessageBytes: 256 << 20,
  maxDecompressedBytes: 512 << 20,
  maxWindowBytes: 128 << 20,
  maxArrayBytes: 256 << 20,
  maxStrLen: 1 << 16,
  maxListLen: 32,
  maxMapLen: 1024,
  maxItems: 1 << 16,
  maxDepth: 32,
  maxGaussians: 10_000_000,
});

/** A typed array with its wire dtype (numpy type string, e.g. "<f4"), shape and raw bytes
 * (the msgpack bin, a view into the decoded message, or an aligned copy of it when its offset
 * is not a multiple of the item size). `data` views `bytes`, except for float16 ("<f2"),
 * which is widened exactly to a new Float32Array; "|b1" is a Uint8Array of 0/1; 64-bit
 * integers are BigInt64Array / BigUint64Array. */
export class WireArray {
  constructor(dtype, shape, bytes, data) {
    this.dtype = dtype;
    this.shape = shape;
    this.bytes = bytes;
    this.data = data;
  }
}

const DTYPES = {
  "|b1": [1, Uint8Array], "|u1": [1, Uint8Array], "|i1": [1, Int8Array],
  "<u2": [2, Uint16Array], "<i2": [2, Int16Array], "<u4": [4, Uint32Array],
  "<i4": [4, Int32Array], "<u8": [8, BigUint64Array], "<i8": [8, BigInt64Array],
  "<f2": [2, null], "<f4": [4, Float32Array], "<f8": [8, Float64Array],
};

/** Exact float16 bits -> number. */
function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 31;
  const frac = h & 1023;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * Incremental splitter: push() byte chunks in any chunking, get whole message bodies back
 * (each a Uint8Array holding one zstd frame). The length prefix is checked against
 * `limits.maxMessageBytes` before any of the body is kept. `close()` throws a FramingError
 * if a partial message is buffered.
 */
export class MessageSplitter {
  constructor(limits = DEFAULT_LIMITS) {
    this.limits = limits;
    this.prefix = new Uint8Array(4);
    this.prefixLen = 0;
    this.body = null; // Uint8Array of the announced length, once the prefix is complete
    this.bodyLen = 0;
  }

  push(chunk) {
    const out = [];
    let pos = 0;
    while (pos < chunk.length) {
      if (this.body === null) {
        const take = Math.min(4 - this.prefixLen, chunk.length - pos);
        this.prefix.set(chunk.subarray(pos, pos + take), this.prefixLen);
        this.prefixLen += take;
        pos += take;
        if (this.prefixLen === 4) {
          const n = new DataView(this.prefix.buffer).getUint32(0, false);
          if (n === 0) throw new ProtocolError("FramingError", "message length prefix is 0");
          if (n > this.limits.maxMessageBytes) {
            throw new ProtocolError("LimitExceeded",
              `message length ${n} > maxMessageBytes=${this.limits.maxMessageBytes}`);
          }
          this.prefixLen = 0;
          if (this.bodyLen === 0 && chunk.length - pos >= n) { // whole body here: no copy
            out.push(chunk.subarray(pos, pos + n));
            pos += n;
            continue;
          }
          this.body = new Uint8Array(n);
          this.bodyLen = 0;
        }
        continue;
      }
      const take = Math.min(this.body.length - this.bodyLen, chunk.length - pos);
      this.body.set(chunk.subarray(pos, pos + take), this.bodyLen);
      this.bodyLen += take;
      pos += take;
      if (this.bodyLen === this.body.length) {
        out.push(this.body);
        this.body = null;
        this.bodyLen = 0;
      }
    }
    return out;
  }

  close() {
    if (this.prefixLen || this.body) {
      throw new ProtocolError("FramingError", "stream ended inside a message");
    }
  }
}

/** Parse a zstd frame header (RFC 8878 section 3.1.1): {contentSize, windowSize, dictId}. */
function zstdFrameHeader(b) {
  if (b.length < 6 || b[0] !== 0x28 || b[1] !== 0xb5 || b[2] !== 0x2f || b[3] !== 0xfd) {
    throw new ProtocolError("DecompressionError", "message body is not a zstd frame (bad magic number)");
  }
  const fhd = b[4];
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const dictFlag = fhd & 3;
  let pos = 5;
  let windowSize = 0;
  if (!single) {
    const wd = b[pos++];
    const base = 2 ** (10 + (wd >> 3));
    windowSize = base + (base / 8) * (wd & 7);
  }
  const dictBytes = [0, 1, 2, 4][dictFlag];
  const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  if (b.length < pos + dictBytes + fcsBytes) {
    throw new ProtocolError("DecompressionError", "truncated zstd frame header");
  }
  let dictId = 0;
  for (let i = dictBytes - 1; i >= 0; i--) dictId = dictId * 256 + b[pos + i];
  pos += dictBytes;
  if (fcsBytes === 0) {
    throw new ProtocolError("DecompressionError", "zstd frame header does not declare its content size");
  }
  let contentSize = 0;
  for (let i = fcsBytes - 1; i >= 0; i--) contentSize = contentSize * 256 + b[pos + i];
  if (fcsBytes === 2) contentSize += 256;
  if (single) windowSize = contentSize;
  return { contentSize, windowSize, dictId };
}

function unzstd(body, limits) {
  const { contentSize, windowSize, dictId } = zstdFrameHeader(body);
  if (contentSize > limits.maxDecompressedBytes) {
    throw new ProtocolError("LimitExceeded",
      `zstd content size ${contentSize} > maxDecompressedBytes=${limits.maxDecompressedBytes}`);
  }
  if (windowSize > limits.maxWindowBytes) {
    throw new ProtocolError("LimitExceeded", `zstd window ${windowSize} > maxWindowBytes=${limits.maxWindowBytes}`);
  }
  if (dictId) throw new ProtocolError("DecompressionError", "zstd frames with a dictionary are not allowed");
  // Decompresses into exactly contentSize bytes; a libzstd error (corrupt block, checksum
  // mismatch, output larger than declared, trailing bytes) comes back as a shorter result.
  const raw = zstd.decode(body, contentSize);
  if (raw.length !== contentSize) {
    throw new ProtocolError("DecompressionError", `zstd frame is corrupt or does not decode to the declared ${contentSize} bytes`);
  }
  return raw;
}

function unpack(raw, limits) {
  const decoder = new Decoder({
    maxStrLength: limits.maxStrLen, maxBinLength: limits.maxArrayBytes,
    maxArrayLength: limits.maxListLen, maxMapLength: limits.maxMapLen,
  });
  try {
    return decoder.decode(raw);
  } catch (e) {
    const kind = /exceeds max|max.*length/i.test(e.message) ? "LimitExceeded" : "SchemaError";
    throw new ProtocolError(kind, `msgpack: ${e.message}`);
  }
}

// A msgpack map decodes to a plain object; ext values (ExtData, timestamps as Date) do not.
const isMap = (v) => v !== null && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype;

// Walk the decoded message: count entries, bound depth, reject ext values.
function checkTree(wire, limits) {
  let items = 0;
  const walk = (v, depth) => {
    if (v === null || typeof v !== "object" || v instanceof Uint8Array) return;
    if (depth > limits.maxDepth) {
      throw new ProtocolError("LimitExceeded", `msgpack nesting over maxDepth=${limits.maxDepth}`);
    }
    if (!Array.isArray(v) && !isMap(v)) throw new ProtocolError("SchemaError", "msgpack ext types are not allowed");
    const values = Array.isArray(v) ? v : Object.values(v);
    items += values.length;
    if (items > limits.maxItems) {
      throw new ProtocolError("LimitExceeded", `more than maxItems=${limits.maxItems} map/array entries`);
    }
    for (const x of values) walk(x, depth + 1);
  };
  walk(wire, 1);
}

const isInt = (v) => typeof v === "number" && Number.isSafeInteger(v);

function need(cond, msg) {
  if (!cond) throw new ProtocolError("SchemaError", msg);
}

function arrayFromWire(m, limits) {
  const keys = Object.keys(m).sort();
  need(keys.join() === "data,dtype,shape", "array map must have exactly the keys ['data', 'dtype', 'shape']");
  const spec = typeof m.dtype === "string" && Object.hasOwn(DTYPES, m.dtype) ? DTYPES[m.dtype] : undefined;
  need(spec !== undefined, `array dtype ${JSON.stringify(m.dtype)} is not allowed`);
  const [itemsize, Ctor] = spec;
  const { shape, data } = m;
  need(Array.isArray(shape) && shape.every((d) => isInt(d) && d >= 0), "array shape must be a list of ints >= 0");
  const nonzero = shape.reduce((p, d) => (d ? p * d : p), 1);
  if (nonzero * itemsize > limits.maxArrayBytes) {
    throw new ProtocolError("LimitExceeded", `array shape ${shape} is over maxArrayBytes=${limits.maxArrayBytes}`);
  }
  const count = shape.reduce((p, d) => p * d, 1);
  need(count * itemsize === data.length,
    `array of shape [${shape}] and dtype ${m.dtype} needs ${count * itemsize} bytes, data has ${data.length}`);
  // msgpack bin fields are views into the decompressed message at any offset: typed arrays
  // view them in place when aligned to the item size, else an aligned copy.
  const bytes = data.byteOffset % itemsize === 0 ? data : data.slice();
  if (m.dtype === "|b1") need(bytes.every((x) => x <= 1), "bool array bytes must be 0 or 1");
  let typed;
  if (Ctor === null) { // float16 -> exact float32
    const h = new Uint16Array(bytes.buffer, bytes.byteOffset, count);
    typed = new Float32Array(count);
    for (let i = 0; i < count; i++) typed[i] = halfToFloat(h[i]);
  } else {
    typed = new Ctor(bytes.buffer, bytes.byteOffset, count);
  }
  return new WireArray(m.dtype, shape, bytes, typed);
}

function payloadFromWire(v, limits) {
  if (isMap(v)) {
    if (v.data instanceof Uint8Array) return arrayFromWire(v, limits);
    const out = {};
    for (const [k, item] of Object.entries(v)) out[k] = payloadFromWire(item, limits);
    return out;
  }
  need(["boolean", "number", "string"].includes(typeof v), `payload value of type ${typeof v} is not allowed`);
  return v;
}

const FIELDS = {
  header: ["codec", "codec_version", "codec_params", "sh_degree", "fps", "frame_count", "name"],
  frame: ["index", "pts", "frame_type", "num_gaussians", "payload"],
  end: ["frame_count"],
  error: ["code", "message"],
};

function checkFields(t, m) {
  const nonNegInt = (k) => need(isInt(m[k]) && m[k] >= 0, `${k} must be an integer >= 0`);
  const str = (k, nonEmpty) => need(typeof m[k] === "string" && (!nonEmpty || m[k]), `${k} must be a string`);
  if (t === "header") {
    str("codec", true);
    nonNegInt("codec_version");
    need(isMap(m.codec_params), "codec_params must be a dict");
    need(isInt(m.sh_degree) && m.sh_degree >= 0 && m.sh_degree <= 3, "sh_degree must be 0..3");
    need(typeof m.fps === "number" && Number.isFinite(m.fps) && m.fps > 0, "fps must be finite and > 0");
    if (m.frame_count !== null) nonNegInt("frame_count");
    str("name", false);
  } else if (t === "frame") {
    nonNegInt("index");
    need(typeof m.pts === "number" && Number.isFinite(m.pts) && m.pts >= 0, "pts must be finite and >= 0");
    need(FRAME_TYPES.includes(m.frame_type), `frame_type must be one of ${FRAME_TYPES}`);
    nonNegInt("num_gaussians");
    need(isMap(m.payload), "payload must be a map");
  } else if (t === "end") {
    nonNegInt("frame_count");
  } else {
    str("code", true);
    str("message", false);
  }
}

/**
 * Decode one message body (the bytes after the length prefix).
 * @returns {{t: string}} a header {t, codec, codec_version, codec_params, sh_degree, fps,
 *   frame_count, name}, frame {t, index, pts, frame_type, num_gaussians, payload},
 *   end {t, frame_count} or error {t, code, message}; frame payload arrays are WireArrays.
 * @throws {ProtocolError}
 */
export function decodeBody(body, limits = DEFAULT_LIMITS) {
  const wire = unpack(unzstd(body, limits), limits);
  need(isMap(wire), "message is not a msgpack map");
  checkTree(wire, limits);
  const t = wire.t;
  need(typeof t === "string" && Object.hasOwn(FIELDS, t), `unknown message type t=${JSON.stringify(t)}`);
  if (t === "header") {
    if (wire.magic !== MAGIC) throw new ProtocolError("VersionError", `bad magic ${JSON.stringify(wire.magic)}`);
    const v = wire.version;
    need(Array.isArray(v) && v.length === 2 && v.every((x) => isInt(x) && x >= 0), "version must be [major, minor]");
    if (v[0] !== PROTOCOL_MAJOR) {
      throw new ProtocolError("VersionError", `protocol version ${v[0]}.${v[1]} is not supported`);
    }
  }
  const missing = FIELDS[t].filter((k) => !Object.hasOwn(wire, k));
  need(missing.length === 0, `${t} message lacks ${missing}`);
  const msg = { t };
  for (const k of FIELDS[t]) msg[k] = wire[k];
  if (t === "frame" && isInt(msg.num_gaussians) && msg.num_gaussians > limits.maxGaussians) {
    throw new ProtocolError("LimitExceeded", `num_gaussians=${msg.num_gaussians} > maxGaussians=${limits.maxGaussians}`);
  }
  checkFields(t, msg);
  if (t === "frame") msg.payload = payloadFromWire(msg.payload, limits);
  return msg;
}

/** Decode a whole byte string (e.g. a .splatcast file): every message, in order.
 * @throws {ProtocolError} also for a stream that ends inside a message. */
export function decodeStream(bytes, limits = DEFAULT_LIMITS) {
  const splitter = new MessageSplitter(limits);
  const msgs = splitter.push(bytes).map((b) => decodeBody(b, limits));
  splitter.close();
  return msgs;
}

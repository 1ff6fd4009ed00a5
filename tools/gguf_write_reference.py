#!/usr/bin/env python3
"""Independent GGUF writer: produces small fixture files for orcd's gguf tests.

Written from the GGUF specification (ggml's docs/gguf.md) with llama.cpp's
conventions, using only the Python standard library (struct), so that the Go
reader is tested against files it did not write itself:

  header   : b"GGUF", version u32, tensor_count u64, kv_count u64
  kv       : key (u64 length + UTF-8 bytes), value type u32, value
  array    : element type u32, count u64, elements (arrays of arrays repeat
             "type u32, count u64, elements" per element)
  tensor   : name string, n_dims u32, dims u64[n_dims] (innermost first),
             ggml type u32, offset u64 relative to the data section
  data     : starts at the first multiple of general.alignment (default 32)
             after the tensor infos; each tensor's offset is a multiple of the
             alignment, and each tensor is padded with zeros to it (as
             llama.cpp's gguf writer does).

For every fixture NAME.gguf it also writes NAME.json: what the script put in
the file (version, alignment, data offset, size, every key with its type and
value, every tensor with type, dims, absolute offset, byte size and SHA-256),
which the Go tests compare against what the reader returns.

Run from the repository root:  python3 tools/gguf_write_reference.py
"""

import hashlib
import json
import math
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gguf", "testdata")

# GGUF metadata value types (gguf.md: enum gguf_metadata_value_type).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
TYPE_NAMES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
              "bool", "string", "array", "uint64", "int64", "float64"]
SCALAR_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I",
              INT32: "<i", FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q",
              FLOAT64: "<d"}

# ggml tensor types (ggml.h: enum ggml_type) and their block layouts:
# (elements per block, bytes per block).
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
GGML_NAMES = {GGML_F32: "F32", GGML_F16: "F16", GGML_Q8_0: "Q8_0"}


class V:
    """A typed metadata value: t is the GGUF type; for arrays, elem is the
    element type and value a list (of V for arrays of arrays)."""

    def __init__(self, t, value, elem=None):
        self.t, self.value, self.elem = t, value, elem


def enc_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def enc_payload(v):
    if v.t == STRING:
        return enc_string(v.value)
    if v.t == ARRAY:
        out = struct.pack("<IQ", v.elem, len(v.value))
        for x in v.value:
            if v.elem == ARRAY:
                assert x.t == ARRAY
                out += enc_payload(x)  # each inner array: type, count, elements
            elif v.elem == STRING:
                out += enc_string(x)
            else:
                out += struct.pack(SCALAR_FMT[v.elem], x)
        return out
    return struct.pack(SCALAR_FMT[v.t], v.value)


def as_stored(t, x):
    """x as the file holds it: float32 values rounded to float32."""
    if t == FLOAT32:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    return x


def to_json(v):
    """The sidecar form of a value: {"type", "value"} (+ "elem" for arrays)."""
    if v.t == ARRAY:
        if v.elem == ARRAY:
            vals = [to_json(x) for x in v.value]
        else:
            vals = [as_stored(v.elem, x) for x in v.value]
        return {"type": "array", "elem": TYPE_NAMES[v.elem], "value": vals}
    return {"type": TYPE_NAMES[v.t], "value": as_stored(v.t, v.value)}


def f16_bytes(values):
    return b"".join(struct.pack("<e", x) for x in values)


def f32_bytes(values):
    return b"".join(struct.pack("<f", x) for x in values)


def q8_0_bytes(blocks):
    """Q8_0 blocks of 32 elements: the scale d as IEEE half, then 32 int8 q;
    element i is d*q[i]. blocks is a list of (d, [32 ints])."""
    out = b""
    for d, qs in blocks:
        assert len(qs) == 32 and all(-128 <= q <= 127 for q in qs)
        out += struct.pack("<e", d) + struct.pack("<32b", *qs)
    return out


def align_up(n, a):
    return (n + a - 1) // a * a


def write_gguf(name, version, kvs, tensors, alignment=32):
    """kvs: list of (key, V). tensors: list of (name, ggml_type, dims, bytes)."""
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    body = b""
    for key, v in kvs:
        body += enc_string(key) + struct.pack("<I", v.t) + enc_payload(v)
    offsets, off = [], 0
    for tname, ttype, dims, data in tensors:
        offsets.append(off)
        off = align_up(off + len(data), alignment)
    for (tname, ttype, dims, data), o in zip(tensors, offsets):
        body += enc_string(tname) + struct.pack("<I", len(dims))
        body += b"".join(struct.pack("<Q", d) for d in dims)
        body += struct.pack("<IQ", ttype, o)
    image = header + body
    data_offset = align_up(len(image), alignment)
    image += b"\0" * (data_offset - len(image))
    for (tname, ttype, dims, data), o in zip(tensors, offsets):
        assert len(image) == data_offset + o
        image += data + b"\0" * (align_up(len(data), alignment) - len(data))
    with open(os.path.join(OUT, name + ".gguf"), "wb") as f:
        f.write(image)
    side = {
        "version": version,
        "alignment": alignment,
        "data_offset": data_offset,
        "size": len(image),
        "kv": [dict(key=k, **to_json(v)) for k, v in kvs],
        "tensors": [{
            "name": tname, "type": GGML_NAMES[ttype], "dims": dims,
            "offset": data_offset + o, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        } for (tname, ttype, dims, data), o in zip(tensors, offsets)],
    }
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(side, f, indent=1)
        f.write("\n")
    print(f"{name}.gguf: {len(image)} bytes, {len(kvs)} keys, {len(tensors)} tensors")


def tiny_vocab():
    """A GPT-2 style byte-level vocabulary fragment with merges."""
    tokens = ["!", "\"", "a", "b", "Ġ", "Ġa", "ab", "Ġab", "<|endoftext|>", "é", "日本"]
    types = [1] * (len(tokens) - 3) + [3, 1, 1]  # 1 normal, 3 control
    merges = ["Ġ a", "a b", "Ġa b"]
    return tokens, types, merges


def all_types_v3():
    tokens, types, merges = tiny_vocab()
    kvs = [
        ("general.architecture", V(STRING, "gpt2")),
        ("general.name", V(STRING, "orcd reference fixture")),
        ("general.file_type", V(UINT32, 1)),
        ("gpt2.context_length", V(UINT32, 1024)),
        ("gpt2.embedding_length", V(UINT32, 8)),
        ("gpt2.block_count", V(UINT32, 1)),
        ("gpt2.attention.head_count", V(UINT32, 2)),
        ("gpt2.attention.layer_norm_epsilon", V(FLOAT32, 9.999999747378752e-06)),
        ("tokenizer.ggml.model", V(STRING, "gpt2")),
        ("tokenizer.ggml.tokens", V(ARRAY, tokens, STRING)),
        ("tokenizer.ggml.token_type", V(ARRAY, types, INT32)),
        ("tokenizer.ggml.merges", V(ARRAY, merges, STRING)),
        ("tokenizer.ggml.bos_token_id", V(UINT32, 8)),
        ("tokenizer.ggml.eos_token_id", V(UINT32, 8)),
        # One key of every scalar type, at edge values.
        ("test.u8", V(UINT8, 255)),
        ("test.i8", V(INT8, -128)),
        ("test.u16", V(UINT16, 65535)),
        ("test.i16", V(INT16, -32768)),
        ("test.u32", V(UINT32, 4294967295)),
        ("test.i32", V(INT32, -2147483648)),
        ("test.f32", V(FLOAT32, -0.0)),
        ("test.f32_max", V(FLOAT32, 3.4028234663852886e38)),
        ("test.bool_true", V(BOOL, True)),
        ("test.bool_false", V(BOOL, False)),
        ("test.str_empty", V(STRING, "")),
        ("test.str_utf8", V(STRING, "héllo, 世界 \u2028")),
        ("test.u64", V(UINT64, 18446744073709551615)),
        ("test.i64", V(INT64, -9223372036854775808)),
        ("test.f64", V(FLOAT64, 1e300)),
        ("test.f64_tiny", V(FLOAT64, 5e-324)),
        # Arrays of every element type.
        ("test.arr_u8", V(ARRAY, [0, 1, 255], UINT8)),
        ("test.arr_i8", V(ARRAY, [-128, 0, 127], INT8)),
        ("test.arr_u16", V(ARRAY, [0, 65535], UINT16)),
        ("test.arr_i16", V(ARRAY, [-32768, 32767], INT16)),
        ("test.arr_u32", V(ARRAY, [0, 4294967295], UINT32)),
        ("test.arr_i32", V(ARRAY, [-2147483648, 2147483647], INT32)),
        ("test.arr_f32", V(ARRAY, [0.5, -1.25, 1e-45], FLOAT32)),
        ("test.arr_bool", V(ARRAY, [True, False, True], BOOL)),
        ("test.arr_str", V(ARRAY, ["", "x", "yz"], STRING)),
        ("test.arr_u64", V(ARRAY, [0, 18446744073709551615], UINT64)),
        ("test.arr_i64", V(ARRAY, [-9223372036854775808, 9223372036854775807], INT64)),
        ("test.arr_f64", V(ARRAY, [math.pi, -2.5e-300], FLOAT64)),
        ("test.arr_empty", V(ARRAY, [], UINT32)),
        # Arrays of arrays, inner arrays of different types, two levels deep.
        ("test.arr_nested", V(ARRAY, [
            V(ARRAY, [1, 2, 3], INT32),
            V(ARRAY, ["a", "b"], STRING),
            V(ARRAY, [V(ARRAY, [1.5], FLOAT32), V(ARRAY, [], BOOL)], ARRAY),
            V(ARRAY, [], UINT8),
        ], ARRAY)),
        # A long array, which inspect must summarize.
        ("test.arr_long", V(ARRAY, list(range(1000)), UINT16)),
    ]
    # Tensor data with known values. F32 and F16 values are exactly
    # representable; the Q8_0 scales are powers of two so d*q is exact.
    emb = [i * 0.25 - 4.0 for i in range(8 * 4)]
    q = [i * 0.5 for i in range(-32, 32)]  # 8x8, F16-exact
    blk0 = (0.5, [i - 16 for i in range(32)])
    blk1 = (2.0 ** -7, [(-1) ** i * min(127, i * 9) for i in range(32)])
    blk2 = (-3.0, [127, -127] + [0] * 29 + [-128])
    blk3 = (0.0, [5] * 32)
    tensors = [
        ("token_embd.weight", GGML_F32, [8, 4], f32_bytes(emb)),
        ("blk.0.attn_q.weight", GGML_F16, [8, 8], f16_bytes(q)),
        ("blk.0.ffn_up.weight", GGML_Q8_0, [64, 2], q8_0_bytes([blk0, blk1, blk2, blk3])),
        ("output_norm.weight", GGML_F32, [3], f32_bytes([1.0, -2.0, 0.125])),
    ]
    write_gguf("ref_v3_all_types", 3, kvs, tensors)


def v2_small():
    kvs = [
        ("general.architecture", V(STRING, "gpt2")),
        ("general.name", V(STRING, "v2 fixture")),
        ("gpt2.block_count", V(UINT32, 1)),
        ("tokenizer.ggml.tokens", V(ARRAY, ["a", "b", "c"], STRING)),
    ]
    tensors = [("blk.0.attn_norm.weight", GGML_F32, [4], f32_bytes([1.0, 2.0, 3.0, 4.0]))]
    write_gguf("ref_v2_small", 2, kvs, tensors)


def align64():
    kvs = [
        ("general.architecture", V(STRING, "gpt2")),
        ("general.alignment", V(UINT32, 64)),
    ]
    # Odd sizes (12, 6 and 34 bytes) so that every tensor needs padding.
    tensors = [
        ("blk.0.attn_k.bias", GGML_F32, [3], f32_bytes([0.1, 0.2, 0.3])),
        ("blk.0.attn_v.bias", GGML_F16, [3], f16_bytes([1.0, -1.0, 65504.0])),
        ("blk.0.ffn_down.weight", GGML_Q8_0, [32], q8_0_bytes([(1.0, list(range(-16, 16)))])),
    ]
    write_gguf("ref_align64", 3, kvs, tensors, alignment=64)


def metadata_only():
    kvs = [("general.architecture", V(STRING, "gpt2")), ("general.alignment", V(UINT32, 8))]
    write_gguf("ref_no_tensors", 3, kvs, [], alignment=8)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    all_types_v3()
    v2_small()
    align64()
    metadata_only()

"""The packed model file (``model.bin``): layout constants, the in-memory form and the writer.

Format version 1 (all integers little-endian, every section 16-byte aligned)::

    header (64 bytes)
      0  8s  magic "LINGERPK"           36 u32 section count
      8  u16 format version (1)         40 u32 section table offset (64)
     10  u16 header size (64)           44 u32 reserved (0)
     12  u32 byte-order mark 0x0A0B0C0D 48 u64 file size
     16  u32 target id                  56 u32 CRC-32 of bytes [64, file size)
     20  16s target name (NUL padded)   60 u32 CRC-32 of header bytes [0, 60)
    section table: count x (4s kind, u32 flags, u64 offset, u64 length); flags bit 0 = optional
    sections: STRS names, MODL model, TENS tensors, OPER operators, IOTB inputs/outputs,
              PLAN memory plan, PARM parameter blobs

The record layouts of each section are written next to their ``struct`` formats below and
documented in ``docs/packer.md``. The reader is :mod:`linger.packfile.reader`; the
C engine (:mod:`linger.engine`) reads the same layout.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..targets import MEMORY_KINDS

MAGIC = b"LINGERPK"
FORMAT_VERSION = 1
BYTE_ORDER_MARK = 0x0A0B0C0D
SECTION_ALIGN = 16
OPTIONAL = 1  # section flag: a reader that does not know the kind may skip it

HEADER = struct.Struct("<8sHHII16sIIIQII")        # 64 bytes
SECTION = struct.Struct("<4sIQQ")                  # 24 bytes
STRREF = struct.Struct("<II")                      # offset in STRS, length
TENSOR = struct.Struct("<IIBBBBiIIQQQ8q")          # 112 bytes
OP_HEAD = struct.Struct("<IIIIIIHHHH")             # op_type, domain, name, n_in, n_out, n_attr
ATTR_HEAD = struct.Struct("<IIBBHI")               # name, type, 0, 0, count
TENSOR_ATTR = struct.Struct("<BBHI")               # dtype, ndim, 0, 0; then dims, u64 nbytes
IO_HEAD = struct.Struct("<iiII")                   # tensor id, onnx elem type, ndim, 0
IO_DIM = struct.Struct("<IIq")                     # kind (0 int, 1 symbol, 2 unknown), 0, value
PLAN_HEAD = struct.Struct("<IIII")                 # memory count, strategy strref, 0
PLAN_MEM = struct.Struct("<IIQQQQ")                # kind, alignment, capacity, params, peak, lb
BLOB = struct.Struct("<IIQQ")                      # memory id, 0, offset in section, length

REQUIRED_SECTIONS = (b"STRS", b"MODL", b"TENS", b"OPER", b"IOTB", b"PLAN", b"PARM")
MAX_DIMS = 8
UNKNOWN_RANK = 0xFFFFFFFF

#: tensor flags
F_INPUT, F_OUTPUT, F_PARAM, F_ALIAS = 1, 2, 4, 8

#: element type codes of the file <-> numpy
DTYPES = {1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float32", 6: "float64", 7: "bool",
          8: "uint8", 9: "uint16", 10: "uint32", 11: "uint64", 12: "float16"}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}

#: attribute types (the numbers of onnx.AttributeProto)
A_FLOAT, A_INT, A_STRING, A_TENSOR, A_FLOATS, A_INTS, A_STRINGS = 1, 2, 3, 4, 6, 7, 8


@dataclass
class TensorRecord:
    name: str
    dtype: str
    shape: tuple
    flags: int
    memory: str
    alias_of: int        # tensor id or -1
    first: int
    last: int
    offset: int          # in its memory (parameters: in that memory's blob)
    nbytes: int
    size: int            # aligned footprint


@dataclass
class OpRecord:
    op_type: str
    domain: str
    name: str
    inputs: list         # tensor ids, -1 for an omitted optional input
    outputs: list
    attrs: list          # (name, type, value)


@dataclass
class IORecord:
    tensor: int
    elem_type: int       # onnx TensorProto element type
    dims: list | None    # int, str (symbol) or None (unknown) per axis; None: unknown rank


@dataclass
class MemoryRecord:
    kind: str
    alignment: int
    capacity: int
    params_bytes: int
    peak: int
    lower_bound: int


@dataclass
class PackedModel:
    target_id: int
    target_name: str
    opsets: list                 # (domain, version)
    ir_version: int
    graph_name: str
    producer: str
    dims: dict                   # symbol -> size planned for
    tensors: list                # TensorRecord
    ops: list                    # OpRecord
    inputs: list                 # IORecord
    outputs: list
    memories: list               # MemoryRecord
    strategy: str
    params: dict = field(default_factory=dict)   # tensor id -> numpy array
    format_version: int = FORMAT_VERSION


def align(n: int, a: int = SECTION_ALIGN) -> int:
    return -(-n // a) * a


class _Strings:
    def __init__(self):
        self.data = bytearray()
        self.index: dict[bytes, int] = {}

    def ref(self, s) -> tuple[int, int]:
        b = s if isinstance(s, bytes) else str(s).encode("utf-8")
        if b not in self.index:
            self.index[b] = len(self.data)
            self.data += b
        return self.index[b], len(b)


def _pad8(buf: bytearray) -> None:
    buf += b"\0" * (align(len(buf), 8) - len(buf))


def write(pm: PackedModel) -> bytes:
    """Serialize ``pm``; deterministic (same model, same bytes)."""
    strs = _Strings()
    sections = [(b"MODL", _modl(pm, strs)), (b"TENS", _tens(pm, strs)),
                (b"OPER", _oper(pm, strs)), (b"IOTB", _iotb(pm, strs)),
                (b"PLAN", _plan(pm, strs)), (b"PARM", _parm(pm))]
    sections.insert(0, (b"STRS", bytes(strs.data)))
    table_end = HEADER.size + SECTION.size * len(sections)
    offset = align(table_end)
    table, body = bytearray(), bytearray()
    for kind, data in sections:
        body += b"\0" * (offset - table_end - len(body))
        table += SECTION.pack(kind, 0, offset, len(data))
        body += data
        offset = align(offset + len(data))
    body += b"\0" * (offset - table_end - len(body))
    payload = bytes(table + body)
    size = HEADER.size + len(payload)
    name = pm.target_name.encode("utf-8")[:16]
    head = HEADER.pack(MAGIC, pm.format_version, HEADER.size, BYTE_ORDER_MARK, pm.target_id,
                       name, len(sections), HEADER.size, 0, size, zlib.crc32(payload), 0)
    head = head[:60] + struct.pack("<I", zlib.crc32(head[:60]))
    return head + payload


def _modl(pm, strs) -> bytes:
    out = bytearray(struct.pack("<I", len(pm.opsets)))
    for domain, version in pm.opsets:
        out += STRREF.pack(*strs.ref(domain)) + struct.pack("<q", version)
    out += struct.pack("<q", pm.ir_version)
    out += STRREF.pack(*strs.ref(pm.graph_name)) + STRREF.pack(*strs.ref(pm.producer))
    out += struct.pack("<I", len(pm.dims))
    for sym, value in sorted(pm.dims.items()):
        out += STRREF.pack(*strs.ref(sym)) + struct.pack("<q", value)
    return bytes(out)


def _tens(pm, strs) -> bytes:
    out = bytearray(struct.pack("<II", len(pm.tensors), TENSOR.size))
    for t in pm.tensors:
        dims = list(t.shape) + [0] * (MAX_DIMS - len(t.shape))
        out += TENSOR.pack(*strs.ref(t.name), DTYPE_CODES[t.dtype], len(t.shape), t.flags,
                           MEMORY_KINDS.index(t.memory), t.alias_of, t.first, t.last, t.offset,
                           t.nbytes, t.size, *dims)
    return bytes(out)


def _oper(pm, strs) -> bytes:
    out = bytearray(struct.pack("<I", len(pm.ops)))
    for op in pm.ops:
        out += OP_HEAD.pack(*strs.ref(op.op_type), *strs.ref(op.domain), *strs.ref(op.name),
                            len(op.inputs), len(op.outputs), len(op.attrs), 0)
        out += struct.pack(f"<{len(op.inputs) + len(op.outputs)}i", *op.inputs, *op.outputs)
        _pad8(out)
        for name, typ, value in op.attrs:
            out += _attr(strs, name, typ, value)
    return bytes(out)


def _attr(strs, name, typ, value) -> bytes:
    items = value if typ in (A_INTS, A_FLOATS, A_STRINGS) else [value]
    out = bytearray(ATTR_HEAD.pack(*strs.ref(name), typ, 0, 0, len(items)))
    if typ in (A_INT, A_INTS):
        out += struct.pack(f"<{len(items)}q", *[int(v) for v in items])
    elif typ in (A_FLOAT, A_FLOATS):
        out += np.asarray(items, dtype="<f4").tobytes()
    elif typ in (A_STRING, A_STRINGS):
        for v in items:
            out += STRREF.pack(*strs.ref(v))
    else:  # A_TENSOR
        arr = np.ascontiguousarray(value)
        out += TENSOR_ATTR.pack(DTYPE_CODES[arr.dtype.name], arr.ndim, 0, 0)
        out += struct.pack(f"<{arr.ndim}q", *arr.shape) + struct.pack("<Q", arr.nbytes)
        out += arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    _pad8(out)
    return bytes(out)


def _iotb(pm, strs) -> bytes:
    out = bytearray(struct.pack("<II", len(pm.inputs), len(pm.outputs)))
    for io in pm.inputs + pm.outputs:
        dims = io.dims
        out += IO_HEAD.pack(io.tensor, io.elem_type, UNKNOWN_RANK if dims is None else len(dims), 0)
        for d in dims or ():
            if isinstance(d, str):
                off, n = strs.ref(d)
                out += IO_DIM.pack(1, 0, (n << 32) | off)
            elif d is None:
                out += IO_DIM.pack(2, 0, 0)
            else:
                out += IO_DIM.pack(0, 0, int(d))
    return bytes(out)


def _plan(pm, strs) -> bytes:
    out = bytearray(PLAN_HEAD.pack(len(pm.memories), *strs.ref(pm.strategy), 0))
    for m in pm.memories:
        out += PLAN_MEM.pack(MEMORY_KINDS.index(m.kind), m.alignment, m.capacity,
                             m.params_bytes, m.peak, m.lower_bound)
    return bytes(out)


def _parm(pm) -> bytes:
    """One blob per parameter memory; each parameter at its planned offset in the blob."""
    blobs: dict[str, bytearray] = {}
    for tid, arr in sorted(pm.params.items()):
        t = pm.tensors[tid]
        blob = blobs.setdefault(t.memory, bytearray())
        if len(blob) < t.offset + t.size:
            blob += b"\0" * (t.offset + t.size - len(blob))
        data = np.ascontiguousarray(arr).astype(np.dtype(t.dtype).newbyteorder("<")).tobytes()
        blob[t.offset:t.offset + len(data)] = data
    kinds = [k for k in MEMORY_KINDS if k in blobs]
    offsets, cursor = [], align(8 + BLOB.size * len(kinds))
    for k in kinds:
        offsets.append(cursor)
        cursor = align(cursor + len(blobs[k]))
    out = bytearray(struct.pack("<II", len(kinds), 0))
    for k, off in zip(kinds, offsets):
        out += BLOB.pack(MEMORY_KINDS.index(k), 0, off, len(blobs[k]))
    for k, off in zip(kinds, offsets):
        out += b"\0" * (off - len(out))
        out += blobs[k]
    return bytes(out)

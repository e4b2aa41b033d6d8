"""Reading packed model files: every offset, length, count and id is checked before use.

A damaged, truncated or foreign file is refused with :class:`~linger.errors.ModelFileError`
saying what is wrong; nothing is read out of bounds (every read goes through :class:`_Cursor`),
no count is trusted before it is checked against the bytes that remain (so no huge allocation
and no long loop), and a file written by a newer format version is refused by name.

>>> read(b"LINGERPK")
Traceback (most recent call last):
...
linger.errors.ModelFileError: <bytes>: 8 bytes is too short for a linger packed model (the header alone is 64 bytes); the file is truncated
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from ..errors import ModelFileError
from ..targets import MEMORY_KINDS
from . import format as F
from .format import (ATTR_HEAD, BLOB, HEADER, IO_DIM, IO_HEAD, OP_HEAD, PLAN_HEAD, PLAN_MEM,
                     SECTION, STRREF, TENSOR, TENSOR_ATTR, IORecord, MemoryRecord, OpRecord,
                     PackedModel, TensorRecord)


def is_packed(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts like a packed model."""
    return bytes(head[:len(F.MAGIC)]) == F.MAGIC


class _Damaged(Exception):
    """Internal: a check failed; turned into ModelFileError with the file's name."""


class _Cursor:
    """Bounded reads inside ``data[start:end]``."""

    def __init__(self, data, start: int, end: int, what: str):
        self.data, self.pos, self.end, self.what = data, start, end, what

    def take(self, st: struct.Struct) -> tuple:
        if self.pos + st.size > self.end:
            raise _Damaged(f"{self.what}: a {st.size}-byte record at offset {self.pos} runs past"
                           f" the end of the section ({self.end})")
        out = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return out

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _Damaged(f"{self.what}: {n} bytes at offset {self.pos} run past the end of the"
                           f" section ({self.end})")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def count(self, n: int, each: int, what: str) -> int:
        """``n`` records of at least ``each`` bytes must fit in what remains."""
        if n * max(each, 1) > self.end - self.pos:
            raise _Damaged(f"{self.what}: {n} {what} cannot fit in the {self.end - self.pos}"
                           f" bytes left")
        return n

    def align8(self) -> None:
        self.raw(F.align(self.pos, 8) - self.pos)


def read(data, where: str = "<bytes>") -> PackedModel:
    """Parse and validate a packed model held in ``data`` (bytes)."""
    try:
        return _read(memoryview(bytes(data)), where)
    except _Damaged as e:
        raise ModelFileError(f"{where} is damaged: {e}. Re-create it with linger pack") from None


def read_file(path) -> PackedModel:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFileError(f"cannot read packed model '{path}': {e}") from None
    return read(data, f"'{path}'")


def _read(data, where) -> PackedModel:
    n = len(data)
    if n < HEADER.size:
        raise ModelFileError(f"{where}: {n} bytes is too short for a linger packed model (the"
                             f" header alone is {HEADER.size} bytes); the file is truncated")
    (magic, version, hsize, bom, target_id, tname, nsec, table, _, size, pcrc,
     hcrc) = HEADER.unpack_from(data, 0)
    if magic != F.MAGIC:
        raise ModelFileError(f"{where} is not a linger packed model (it starts with"
                             f" {bytes(magic)!r}, expected {F.MAGIC!r})")
    if version > F.FORMAT_VERSION:
        raise ModelFileError(f"{where} was written by a newer linger (packed format version"
                             f" {version}); this linger reads format version"
                             f" {F.FORMAT_VERSION}. Upgrade linger or re-pack the model with"
                             f" this version")
    if bom != F.BYTE_ORDER_MARK:
        raise _Damaged(f"byte-order mark is {bom:#010x}, expected {F.BYTE_ORDER_MARK:#010x}"
                       f" (little-endian)")
    if zlib.crc32(bytes(data[:60])) != hcrc:
        raise _Damaged("the header checksum does not match")
    if version < 1:
        raise _Damaged(f"format version {version} does not exist")
    if hsize != HEADER.size or table != HEADER.size:
        raise _Damaged(f"header size {hsize} / section table offset {table}, expected"
                       f" {HEADER.size}")
    if size != n:
        raise ModelFileError(f"{where} is {'truncated' if n < size else 'longer than written'}:"
                             f" the header says {size} bytes, the file has {n}. Copy it again"
                             f" or re-create it with linger pack")
    if zlib.crc32(bytes(data[HEADER.size:])) != pcrc:
        raise _Damaged("the checksum of the contents does not match (corrupted bytes)")
    sections = _sections(data, nsec)
    strs = sections[b"STRS"]
    text = lambda ref, what: _string(data, strs, ref, what)  # noqa: E731
    try:
        target_name = bytes(tname).rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError:
        raise _Damaged("the target name is not UTF-8") from None
    pm = PackedModel(target_id, target_name, [], 0, "", "", {}, [], [], [], [], [], "",
                     format_version=version)
    _modl(_Cursor(data, *sections[b"MODL"], "MODL"), pm, text)
    _tens(_Cursor(data, *sections[b"TENS"], "TENS"), pm, text)
    _oper(_Cursor(data, *sections[b"OPER"], "OPER"), pm, text)
    _iotb(_Cursor(data, *sections[b"IOTB"], "IOTB"), pm, text)
    _plan(_Cursor(data, *sections[b"PLAN"], "PLAN"), pm, text)
    _parm(data, sections[b"PARM"], pm)
    return pm


def _sections(data, nsec) -> dict:
    n = len(data)
    cur = _Cursor(data, HEADER.size, n, "section table")
    cur.count(nsec, SECTION.size, "sections")
    table_end = HEADER.size + nsec * SECTION.size
    found, spans = {}, []
    for _ in range(nsec):
        kind, flags, off, length = cur.take(SECTION)
        kind = bytes(kind)
        if kind in found:
            raise _Damaged(f"section {kind!r} appears twice")
        if off % F.SECTION_ALIGN or off < table_end or off + length > n:
            raise _Damaged(f"section {kind!r} at [{off}, {off + length}) is misaligned or outside"
                           f" the file ({n} bytes)")
        if kind not in F.REQUIRED_SECTIONS:
            if flags & F.OPTIONAL:
                continue
            raise _Damaged(f"unknown required section {kind!r}")
        found[kind] = (off, off + length)
        spans.append((off, off + length, kind))
    spans.sort()
    for (a0, a1, ka), (b0, b1, kb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise _Damaged(f"sections {ka!r} and {kb!r} overlap")
    missing = [k.decode() for k in F.REQUIRED_SECTIONS if k not in found]
    if missing:
        raise _Damaged(f"sections {missing} are missing")
    return found


def _string(data, strs, ref, what) -> str:
    off, length = ref
    start, end = strs
    if off + length > end - start:
        raise _Damaged(f"{what}: string [{off}, {off + length}) lies outside the names section")
    try:
        return bytes(data[start + off:start + off + length]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Damaged(f"{what}: a name is not UTF-8") from None


def _modl(cur, pm, text) -> None:
    (n,) = cur.take(struct.Struct("<I"))
    for _ in range(cur.count(n, 16, "opsets")):
        ref = cur.take(STRREF)
        (version,) = cur.take(struct.Struct("<q"))
        pm.opsets.append((text(ref, "opset domain"), version))
    (pm.ir_version,) = cur.take(struct.Struct("<q"))
    pm.graph_name = text(cur.take(STRREF), "graph name")
    pm.producer = text(cur.take(STRREF), "producer")
    (n,) = cur.take(struct.Struct("<I"))
    for _ in range(cur.count(n, 16, "dimensions")):
        ref = cur.take(STRREF)
        (value,) = cur.take(struct.Struct("<q"))
        pm.dims[text(ref, "dimension name")] = value


def _tens(cur, pm, text) -> None:
    n, record = cur.take(struct.Struct("<II"))
    if record != TENSOR.size:
        raise _Damaged(f"TENS: record size {record}, expected {TENSOR.size}")
    names = set()
    for tid in range(cur.count(n, TENSOR.size, "tensors")):
        (soff, slen, code, ndim, flags, mem, alias, first, last, offset, nbytes, size,
         *dims) = cur.take(TENSOR)
        name = text((soff, slen), f"tensor {tid}")
        if name in names or not name:
            raise _Damaged(f"TENS: tensor {tid} name {name!r} is empty or used twice")
        names.add(name)
        if code not in F.DTYPES or ndim > F.MAX_DIMS or mem >= len(MEMORY_KINDS):
            raise _Damaged(f"TENS: tensor '{name}' has dtype code {code}, rank {ndim}, memory"
                           f" {mem}")
        shape = tuple(dims[:ndim])
        if min(shape, default=0) < 0 or any(dims[ndim:]):
            raise _Damaged(f"TENS: tensor '{name}' has a bad shape {dims}")
        if nbytes != math.prod(shape) * np.dtype(F.DTYPES[code]).itemsize or size < nbytes:
            raise _Damaged(f"TENS: tensor '{name}' of shape {list(shape)} claims {nbytes} bytes"
                           f" in a {size}-byte slot")
        if not -1 <= alias < n or alias == tid or first > last:
            raise _Damaged(f"TENS: tensor '{name}' has alias {alias} or lifetime"
                           f" [{first}, {last}]")
        pm.tensors.append(TensorRecord(name, F.DTYPES[code], shape, flags, MEMORY_KINDS[mem],
                                       alias, first, last, offset, nbytes, size))


def _tensor_id(i, pm, what, optional=False) -> int:
    if (optional and i == -1) or 0 <= i < len(pm.tensors):
        return i
    raise _Damaged(f"{what}: tensor id {i} is not one of the {len(pm.tensors)} tensors")


def _oper(cur, pm, text) -> None:
    (n,) = cur.take(struct.Struct("<I"))
    for k in range(cur.count(n, OP_HEAD.size, "operators")):
        h = cur.take(OP_HEAD)
        op = OpRecord(text(h[0:2], f"op {k}"), text(h[2:4], f"op {k}"), text(h[4:6], f"op {k}"),
                      [], [], [])
        n_in, n_out, n_attr = h[6], h[7], h[8]
        ids = cur.take(struct.Struct(f"<{cur.count(n_in + n_out, 4, 'tensor ids')}i"))
        what = f"OPER: op '{op.name}'"
        op.inputs = [_tensor_id(i, pm, what, optional=True) for i in ids[:n_in]]
        op.outputs = [_tensor_id(i, pm, what, optional=True) for i in ids[n_in:]]
        cur.align8()
        for _ in range(cur.count(n_attr, ATTR_HEAD.size, "attributes")):
            op.attrs.append(_attr(cur, text, what))
        pm.ops.append(op)


def _attr(cur, text, what):
    soff, slen, typ, _, _, count = cur.take(ATTR_HEAD)
    name = text((soff, slen), what)
    where = f"{what} attribute '{name}'"
    if typ in (F.A_INT, F.A_INTS):
        vals = list(cur.take(struct.Struct(f"<{cur.count(count, 8, 'ints')}q")))
    elif typ in (F.A_FLOAT, F.A_FLOATS):
        raw = cur.raw(4 * cur.count(count, 4, "floats"))
        vals = [float(v) for v in np.frombuffer(raw, dtype="<f4")]
    elif typ in (F.A_STRING, F.A_STRINGS):
        vals = [text(cur.take(STRREF), where) for _ in range(cur.count(count, 8, "strings"))]
    elif typ == F.A_TENSOR and count == 1:
        code, ndim, _, _ = cur.take(TENSOR_ATTR)
        if code not in F.DTYPES or ndim > F.MAX_DIMS:
            raise _Damaged(f"{where}: tensor dtype code {code}, rank {ndim}")
        dims = cur.take(struct.Struct(f"<{ndim}q"))
        (nbytes,) = cur.take(struct.Struct("<Q"))
        dt = np.dtype(F.DTYPES[code]).newbyteorder("<")
        if min(dims, default=0) < 0 or nbytes != math.prod(dims) * dt.itemsize:
            raise _Damaged(f"{where}: shape {list(dims)} does not match {nbytes} bytes")
        vals = [np.frombuffer(cur.raw(nbytes), dtype=dt).astype(dt.newbyteorder("="))
                .reshape(dims)]
    else:
        raise _Damaged(f"{where}: attribute type {typ} with {count} values")
    if typ in (F.A_INT, F.A_FLOAT, F.A_STRING) and count != 1:
        raise _Damaged(f"{where}: a single value attribute holds {count} values")
    cur.align8()
    return name, typ, vals if typ in (F.A_INTS, F.A_FLOATS, F.A_STRINGS) else vals[0]


def _iotb(cur, pm, text) -> None:
    n_in, n_out = cur.take(struct.Struct("<II"))
    cur.count(n_in + n_out, IO_HEAD.size, "inputs and outputs")
    for k in range(n_in + n_out):
        tid, elem, ndim, _ = cur.take(IO_HEAD)
        what = f"IOTB: {'input' if k < n_in else 'output'} {k if k < n_in else k - n_in}"
        tid = _tensor_id(tid, pm, what)
        dims = None
        if ndim != F.UNKNOWN_RANK:
            dims = []
            for _ in range(cur.count(ndim, IO_DIM.size, "dimensions")):
                kind, _, value = cur.take(IO_DIM)
                if kind == 0:
                    dims.append(value)
                elif kind == 1:
                    dims.append(text((value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF), what))
                elif kind == 2:
                    dims.append(None)
                else:
                    raise _Damaged(f"{what}: dimension kind {kind}")
        (pm.inputs if k < n_in else pm.outputs).append(IORecord(tid, elem, dims))


def _plan(cur, pm, text) -> None:
    n, soff, slen, _ = cur.take(PLAN_HEAD)
    pm.strategy = text((soff, slen), "PLAN strategy")
    for _ in range(cur.count(n, PLAN_MEM.size, "memories")):
        kind, alignment, cap, params, peak, lb = cur.take(PLAN_MEM)
        if kind >= len(MEMORY_KINDS):
            raise _Damaged(f"PLAN: memory kind {kind}")
        pm.memories.append(MemoryRecord(MEMORY_KINDS[kind], alignment, cap, params, peak, lb))


def _parm(data, span, pm) -> None:
    start, end = span
    cur = _Cursor(data, start, end, "PARM")
    n, _ = cur.take(struct.Struct("<II"))
    blobs = {}
    for _ in range(cur.count(n, BLOB.size, "blobs")):
        mem, _, off, length = cur.take(BLOB)
        if mem >= len(MEMORY_KINDS) or off + length > end - start or off < cur.pos - start:
            raise _Damaged(f"PARM: blob of memory {mem} at [{off}, {off + length}) is outside"
                           f" the section")
        blobs[MEMORY_KINDS[mem]] = (start + off, length)
    for tid, t in enumerate(pm.tensors):
        if not t.flags & F.F_PARAM:
            continue
        if t.memory not in blobs or t.offset + t.nbytes > blobs[t.memory][1]:
            raise _Damaged(f"PARM: parameter '{t.name}' [{t.offset}, {t.offset + t.nbytes}) lies"
                           f" outside the {t.memory} blob")
        base = blobs[t.memory][0] + t.offset
        dt = np.dtype(t.dtype).newbyteorder("<")
        arr = np.frombuffer(data[base:base + t.nbytes], dtype=dt).astype(dt.newbyteorder("="))
        pm.params[tid] = arr.reshape(t.shape)


def to_model_proto(pm: PackedModel):
    """The ONNX graph a packed model holds (the runtime builds its session from it)."""
    from onnx import AttributeProto, helper, numpy_helper

    names = [t.name for t in pm.tensors]
    ref = lambda ids: [names[i] if i >= 0 else "" for i in ids]  # noqa: E731
    nodes = []
    for op in pm.ops:
        node = helper.make_node(op.op_type, ref(op.inputs), ref(op.outputs), name=op.name,
                                domain=op.domain)
        for name, typ, value in op.attrs:
            a = AttributeProto(name=name, type=typ)
            if typ == F.A_INT:
                a.i = value
            elif typ == F.A_FLOAT:
                a.f = value
            elif typ == F.A_STRING:
                a.s = value.encode("utf-8")
            elif typ == F.A_TENSOR:
                a.t.CopyFrom(numpy_helper.from_array(value))
            elif typ == F.A_INTS:
                a.ints.extend(value)
            elif typ == F.A_FLOATS:
                a.floats.extend(value)
            else:
                a.strings.extend(v.encode("utf-8") for v in value)
            node.attribute.append(a)
        nodes.append(node)
    inits = [numpy_helper.from_array(arr, names[tid]) for tid, arr in sorted(pm.params.items())]

    def info(io):
        try:
            helper.tensor_dtype_to_np_dtype(io.elem_type)
        except Exception:
            raise ModelFileError(f"graph value '{names[io.tensor]}' has element type"
                                 f" {io.elem_type}, which ONNX does not define") from None
        return helper.make_tensor_value_info(names[io.tensor], io.elem_type, io.dims)
    graph = helper.make_graph(nodes, pm.graph_name, [info(i) for i in pm.inputs],
                              [info(o) for o in pm.outputs], initializer=inits)
    model = helper.make_model(graph, producer_name=pm.producer,
                              opset_imports=[helper.make_opsetid(d, v) for d, v in pm.opsets])
    model.ir_version = pm.ir_version
    return model


def load_model_proto(data, where: str = "<bytes>"):
    """``read`` + ``to_model_proto``: what ``linger.runtime`` calls on a packed file."""
    pm = read(data, where)
    try:
        return to_model_proto(pm)
    except ModelFileError as e:
        raise ModelFileError(f"{where} is damaged: {e}") from None
    except Exception as e:  # an attribute or value the ONNX library refuses
        raise ModelFileError(f"{where} is damaged: its graph cannot be rebuilt: {type(e).__name__}:"
                             f" {e}. Re-create it with linger pack") from None

"""Seeded fuzzing of model files: the cases, the mutators and the sandboxed runner.

Used by ``tests/test_fuzz.py`` (a few hundred cases in CI) and ``bench/fuzz_campaign.py`` (the
long campaign whose figures are in docs/reliability.md). Case ``i`` of seed ``s`` is a pure
function of ``(s, i)``: a failure is reproduced with ``python tests/fuzzing.py --case s i``.

Each case takes one of the seed models (linger graphs built with ``onnx.helper``, no torch),
mutates it and loads + runs it with the fast and the plain runtime. The mutations:

- ``onnx-attr``: one attribute set to an extreme value (0, -1, 65, 2**31, 2**43, -2**63...), a
  list of them, or a value of another type;
- ``onnx-struct``: a node input renamed or emptied, a node dropped or duplicated, an op type or
  domain swapped, a graph input's element type or dimensions changed, an initializer's dtype
  or shape changed;
- ``packed-attr``: the same attribute mutations in a packed file (written by the packer's own
  writer, so every checksum is valid);
- ``packed-bytes``: 1..8 random bytes of a packed file changed and both checksums recomputed.

The outcome of a case is ``ran`` or ``refused:<LingerError subclass>`` (both fine), or a failure:
``raw:<exception>``, ``oom`` (memory ran out although the budget should have refused first),
``timeout`` or ``crash`` (the worker process died).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

L = "ai.linger"
EXTREMES = [0, -1, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 1 << 15, 1 << 16,
            1 << 20, (1 << 31) - 1, 1 << 31, 1 << 40, 1 << 43, 1 << 62, (1 << 63) - 1, -(1 << 31),
            -(1 << 63), -65, -128]
KINDS = ("onnx-attr", "onnx-struct", "packed-attr", "packed-bytes")
#: What a fuzzed session may allocate, and the address-space limit of the worker above its
#: start: a budget that holds never comes near it.
SESSION_MEMORY = 256 << 20
WORKER_HEADROOM = 2 << 30


# -- seed models -------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "seed", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid(L, 1)])
    m.ir_version = 8
    return m


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _int(rng, shape, lo, hi, dtype):
    return rng.integers(lo, hi, shape).astype(dtype)


def conv_model():
    """Quant -> Conv2dInt -> Relu -> MaxPool -> Reshape -> LinearInt -> Dequant."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(_int(rng, (4, 1, 3, 3), -127, 128, np.int8), "cw"),
             numpy_helper.from_array(_int(rng, 4, -500, 500, np.int32), "cb"),
             numpy_helper.from_array(np.array([0, 36], np.int64), "shape"),
             numpy_helper.from_array(_int(rng, (3, 36), -127, 128, np.int8), "fw"),
             numpy_helper.from_array(_int(rng, 3, -900, 900, np.int32), "fb")]
    layer = dict(exp_w=6, bits_x=8, bits_w=8, bits_o=8)
    nodes = [
        helper.make_node("Quant", ["x"], ["q"], "quant", domain=L, exp=4, bits=8),
        helper.make_node("Conv2dInt", ["q", "cw", "cb"], ["c"], "conv", domain=L,
                         kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                         dilations=[1, 1], group=1, exp_x=4, exp_o=3, **layer),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("MaxPool", ["r"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"], "flatten"),
        helper.make_node("LinearInt", ["f", "fw", "fb"], ["l"], "fc", domain=L, exp_x=3,
                         exp_o=2, **layer),
        helper.make_node("Dequant", ["l"], ["y"], "dequant", domain=L, exp=2, bits=8)]
    return _model(nodes, [_vi("x", ["N", 1, 6, 6])], [_vi("y", ["N", 3])], inits)


def rnn_model(mode):
    """Quant -> GRUInt / LSTMInt (batch first, with biases) -> Dequant."""
    rng = np.random.default_rng(1)
    gates, hs, feat = (3 if mode == "GRU" else 4), 5, 3
    inits = [numpy_helper.from_array(_int(rng, (gates * hs, feat), -100, 100, np.int8), "wih"),
             numpy_helper.from_array(_int(rng, (gates * hs, hs), -100, 100, np.int8), "whh"),
             numpy_helper.from_array(_int(rng, gates * hs, -3000, 3000, np.int32), "bih"),
             numpy_helper.from_array(_int(rng, gates * hs, -3000, 3000, np.int32), "bhh")]
    extra = dict(exp_c=11, bits_c=16) if mode == "LSTM" else {}
    head = ["q", "", ""] + ([""] if mode == "LSTM" else [])
    outs = ["h", "hn"] + (["cn"] if mode == "LSTM" else [])
    nodes = [
        helper.make_node("Quant", ["x"], ["q"], "quant", domain=L, exp=5, bits=8),
        helper.make_node(f"{mode}Int", head + ["wih", "whh", "bih", "bhh"], outs, "rnn",
                         domain=L, hidden_size=hs, num_layers=1, bidirectional=0, batch_first=1,
                         has_bias=1, exp_x=5, bits_x=8, exp_w=[7, 7], bits_w=8, exp_h=7,
                         bits_h=8, **extra),
        helper.make_node("Dequant", ["h"], ["y"], "dequant", domain=L, exp=7, bits=8)]
    return _model(nodes, [_vi("x", ["N", 4, feat])], [_vi("y", ["N", 4, hs])], inits)


def arith_model():
    """Quant -> AvgPoolInt, ConvTranspose1dInt, iqAdd, iqSigmoid, iqCat, SoftmaxInt,
    LayerNormInt, iqMean -> Dequant."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(_int(rng, (2, 2, 3), -60, 60, np.int8), "tw"),
             numpy_helper.from_array(_int(rng, 8, -60, 60, np.int8), "lw")]
    io = dict(exp_x=4, bits_x=8, exp_o=4, bits_o=8)
    nodes = [
        helper.make_node("Quant", ["x"], ["q"], "quant", domain=L, exp=4, bits=8),
        helper.make_node("AvgPoolInt", ["q"], ["a"], "avg", domain=L, kernel_shape=[2],
                         strides=[1], pads=[1, 0], exp=4, bits=8),
        helper.make_node("ConvTranspose1dInt", ["q", "tw"], ["t"], "convt", domain=L,
                         kernel_shape=[3], strides=[1], pads=[1, 1], dilations=[1], group=1,
                         output_padding=[0], exp_w=6, bits_w=8, **io),
        helper.make_node("iqAdd", ["a", "t"], ["s"], "add", domain=L, exp_y=4, bits_y=8, **io),
        helper.make_node("iqSigmoid", ["s"], ["g"], "sigmoid", domain=L, exp_x=4, bits_x=8,
                         exp_o=7, bits_o=8),
        helper.make_node("iqCat", ["g", "q"], ["k"], "cat", domain=L, axis=1, exp_inputs=[7, 4],
                         bits_inputs=[8, 8], exp_o=4, bits_o=8),
        helper.make_node("SoftmaxInt", ["k"], ["m"], "softmax", domain=L, axis=-1, **io),
        helper.make_node("LayerNormInt", ["m", "lw"], ["n"], "ln", domain=L, axis=-1, eps_q=4,
                         exp_w=6, bits_w=8, exp_x=4, bits_x=8, exp_o=4, bits_o=8),
        helper.make_node("iqMean", ["n"], ["e"], "mean", domain=L, axes=[1], keepdims=1, **io),
        helper.make_node("Dequant", ["e"], ["y"], "dequant", domain=L, exp=4, bits=8)]
    return _model(nodes, [_vi("x", ["N", 2, 8])], [_vi("y", ["N", 1, 8])], inits)


_SEEDS: dict = {}


def seeds() -> dict:
    """name -> (ONNX bytes, packed bytes) of every seed model (built once per process)."""
    if not _SEEDS:
        from linger import packer
        for name, m in (("conv", conv_model()), ("gru", rnn_model("GRU")),
                        ("lstm", rnn_model("LSTM")), ("arith", arith_model())):
            packed = packer.pack(m, force=True).data
            _SEEDS[name] = (m.SerializeToString(), packed)
    return _SEEDS


# -- mutators ----------------------------------------------------------------------------------
def _extreme(rng):
    return EXTREMES[rng.integers(len(EXTREMES))]


def _attr_value(rng, old):
    """An extreme value for an attribute whose value was ``old``."""
    r = rng.random()
    if r < 0.1:
        return "abc"
    if r < 0.15:
        return 1.5
    if isinstance(old, list) or r < 0.3:
        n = int(rng.integers(0, 7)) if r < 0.35 or not isinstance(old, list) else len(old)
        out = [_extreme(rng) if rng.random() < 0.5 else v for v in (old or [0] * n)][:n]
        out += [_extreme(rng) for _ in range(n - len(out))]
        return out
    return _extreme(rng)


def mutate_onnx_attr(data: bytes, rng) -> bytes:
    m = onnx.load_from_string(data)
    nodes = [n for n in m.graph.node if n.attribute]
    node = nodes[rng.integers(len(nodes))]
    k = int(rng.integers(len(node.attribute)))
    a = node.attribute[k]
    value = _attr_value(rng, list(helper.get_attribute_value(a))
                        if a.type == onnx.AttributeProto.INTS else helper.get_attribute_value(a))
    node.attribute.remove(a)
    if rng.random() > 0.05:  # else: the attribute is dropped
        node.attribute.append(helper.make_attribute(a.name, value))
    return m.SerializeToString()


def mutate_onnx_struct(data: bytes, rng) -> bytes:
    m = onnx.load_from_string(data)
    g = m.graph
    names = [i.name for i in g.input] + [t.name for t in g.initializer] \
        + [o for n in g.node for o in n.output] + ["", "nowhere"]
    what = int(rng.integers(8))
    node = g.node[rng.integers(len(g.node))]
    if what == 0 and node.input:
        node.input[rng.integers(len(node.input))] = names[rng.integers(len(names))]
    elif what == 1:
        g.node.remove(node)
    elif what == 2:
        g.node.append(node)
    elif what == 3:
        from linger.runtime import KERNELS
        ops = sorted(KERNELS)
        node.domain, node.op_type = ops[rng.integers(len(ops))]
    elif what == 4:
        g.input[0].type.tensor_type.elem_type = int(rng.choice([0, 2, 3, 5, 6, 7, 9, 16, 999]))
    elif what == 5:
        dims = g.input[0].type.tensor_type.shape.dim
        d = dims[rng.integers(len(dims))]
        d.dim_value = int(rng.choice([0, 1, 7, 1 << 20, 1 << 40]))
    elif what == 6 and g.initializer:
        t = g.initializer[rng.integers(len(g.initializer))]
        t.data_type = int(rng.choice([1, 2, 3, 5, 6, 7, 11]))
    elif g.initializer:
        t = g.initializer[rng.integers(len(g.initializer))]
        if t.dims:
            t.dims[rng.integers(len(t.dims))] = int(rng.choice([0, 1, 2, 1 << 20, 1 << 40]))
    return m.SerializeToString()


def mutate_packed_attr(data: bytes, rng) -> bytes:
    from linger.packer import format as F
    from linger.packer.reader import read
    pm = read(data)
    ops = [op for op in pm.ops if op.attrs]
    op = ops[rng.integers(len(ops))]
    k = int(rng.integers(len(op.attrs)))
    name, typ, old = op.attrs[k]
    value = _attr_value(rng, old)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        op.attrs[k] = (name, F.A_INTS, value)
    elif isinstance(value, int):
        op.attrs[k] = (name, F.A_INT, value)
    elif isinstance(value, float):
        op.attrs[k] = (name, F.A_FLOAT, value)
    else:
        op.attrs[k] = (name, F.A_STRING, str(value))
    return F.write(pm)


def refresh_crc(data: bytes) -> bytes:
    """Recompute both checksums of a packed file (header and contents)."""
    data = bytearray(data)
    data[56:60] = struct.pack("<I", zlib.crc32(bytes(data[64:])))
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60])))
    return bytes(data)


def mutate_packed_bytes(data: bytes, rng) -> bytes:
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(64, len(data)))] = int(rng.integers(256))
    return refresh_crc(bytes(data))


MUTATORS = {"onnx-attr": mutate_onnx_attr, "onnx-struct": mutate_onnx_struct,
            "packed-attr": mutate_packed_attr, "packed-bytes": mutate_packed_bytes}


def make_case(seed: int, index: int):
    """``(seed model name, kind, file bytes)`` of case ``index`` of ``seed``."""
    rng = np.random.default_rng([seed, index])
    names = sorted(seeds())
    name = names[rng.integers(len(names))]
    kind = KINDS[rng.integers(len(KINDS))]
    onnx_bytes, packed = seeds()[name]
    for _ in range(20):  # a mutation the writer itself cannot express is drawn again
        try:
            return name, kind, MUTATORS[kind](packed if kind.startswith("packed") else
                                              onnx_bytes, rng)
        except (ValueError, TypeError, OverflowError, struct.error):
            continue
    return name, kind, onnx_bytes


# -- running one case --------------------------------------------------------------------------
def _feed(sess, rng) -> dict:
    feed = {}
    for a in sess.get_inputs():
        shape = [d if isinstance(d, int) and 0 <= d <= 64 else 2 for d in (a.shape or [2])]
        dtype = a.dtype or np.dtype(np.float32)
        if dtype.kind == "f":
            feed[a.name] = (rng.standard_normal(shape) * 4).astype(dtype)
        elif dtype.kind in "iu":
            feed[a.name] = rng.integers(0, 3, shape).astype(dtype)
        else:
            feed[a.name] = np.zeros(shape, dtype)
    return feed


def outcome(data: bytes, fast: bool, seed: int = 0) -> str:
    """Load and run ``data``: ``ran``, ``refused:<error>``, ``oom`` or ``raw:<exception>``."""
    from linger.errors import LingerError, ResourceError
    from linger.runtime import InferenceSession
    try:
        sess = InferenceSession(data, fast=fast, max_memory_bytes=SESSION_MEMORY)
        sess.run(None, _feed(sess, np.random.default_rng(seed)))
        return "ran"
    except ResourceError as e:  # the budget refused (fine) or memory ran out (not fine)
        return "oom" if isinstance(e.__cause__, MemoryError) else "refused:ResourceError"
    except LingerError as e:
        return f"refused:{type(e).__name__}"
    except _Timeout:
        return "timeout"
    except BaseException as e:  # noqa: BLE001 - that is what the fuzzer looks for
        return f"raw:{type(e).__name__}: {str(e)[:200]}"


class _Timeout(BaseException):
    """Raised by the alarm inside a case that runs too long."""


def _alarm(signum, frame):
    raise _Timeout()


def worker(seed: int, start: int, stop: int, seconds: float) -> None:
    """Run cases ``start..stop-1`` under an address-space limit, one JSON line per case."""
    import linger.runtime  # noqa: F401  (imported before the limit: its own memory)
    seeds()
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + WORKER_HEADROOM, vm + WORKER_HEADROOM))
    signal.signal(signal.SIGALRM, _alarm)
    for i in range(start, stop):
        name, kind, data = make_case(seed, i)
        for fast in (True, False):
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                result = outcome(data, fast, i)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            print(json.dumps({"case": i, "seed_model": name, "kind": kind, "fast": fast,
                              "outcome": result, "seconds": time.perf_counter() - t0}),
                  flush=True)


def run_campaign(seed: int, cases: int, seconds: float = 10.0, start: int = 0) -> list:
    """Run cases in worker processes (restarted after a crash); returns one dict per case and
    path. A worker silent for ``3 * seconds`` is killed and its case counted as ``timeout``."""
    results, i = [], start
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    while i < start + cases:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                 str(seed), str(i), str(start + cases), str(seconds)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                text=True)
        done = _collect(proc, seconds * 3 + 30, results)
        last = max((r["case"] for r in done), default=i - 1)
        paths = {r["fast"] for r in done if r["case"] == last}
        if proc.returncode == 0 and last == start + cases - 1 and len(paths) == 2:
            break
        # the worker died or hung in case `bad`: count it, go on after it
        bad = last + 1 if len(paths) == 2 or last < i else last
        why = "timeout" if proc.returncode in (-9, None) else "crash"
        for fast in (True, False):
            if not any(r["case"] == bad and r["fast"] == fast for r in results):
                results.append({"case": bad, "fast": fast, "outcome": why, "seconds": None})
        i = bad + 1
    return results


def _collect(proc, silence, results):
    """Read the worker's lines until it exits; kill it after ``silence`` seconds without one."""
    import selectors
    done = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        if not sel.select(timeout=silence):
            proc.kill()
            break
        line = proc.stdout.readline()
        if not line:
            break
        r = json.loads(line)
        done.append(r)
        results.append(r)
    proc.wait()
    sel.close()
    return done


def failures(results) -> list:
    return [r for r in results if not (r["outcome"] == "ran"
                                       or r["outcome"].startswith("refused:"))]


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif sys.argv[1] == "--case":  # reproduce one case in this process, traceback shown
        name, kind, data = make_case(int(sys.argv[2]), int(sys.argv[3]))
        print(name, kind)
        for fast in (True, False):
            print("fast" if fast else "plain", outcome(data, fast))

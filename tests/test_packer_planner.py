"""The memory planner and its independent checker: hand-written lifetime tables, random graphs
(hypothesis) and deliberately broken plans the checker must catch."""

import dataclasses
from types import SimpleNamespace as NS

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linger.packer.graphinfo import ALIAS_OPS, build_values
from linger.packer.plancheck import PlanError, assert_plan_valid, check_plan
from linger.packer.planner import STRATEGIES, Request, place, plan_memory
from linger.targets import Memory, Target

MiB = 1 << 20


def target(share=655360, psram=8 * MiB, max_share=None, params="psram", alignment=16):
    mems = {"share": Memory("share", share), "psram": Memory("psram", psram),
            "flash": Memory("flash", 16 * MiB)}
    return Target("test", 255, "", alignment, mems, params,
                  share if max_share is None else max_share, {})


def graph(steps, inputs, outputs, sizes, params=()):
    """steps: (op_type, inputs, outputs); sizes: value -> bytes (int8 1-d tensors)."""
    nodes = [NS(name=f"n{k}", op_type=op, inputs=tuple(i), outputs=tuple(o))
             for k, (op, i, o) in enumerate(steps)]
    arr = {k: NS(shape=(v,), dtype=np.int8) for k, v in sizes.items()}
    values = build_values(inputs, {p: arr[p] for p in params}, nodes, outputs, arr)
    return nodes, values


def plan_and_check(nodes, values, inputs, outputs, t, **kw):
    plan = plan_memory(values, [n.name for n in nodes], t, **kw)
    problems = check_plan(plan, nodes, inputs, outputs,
                          {k for k, v in values.items() if v.kind == "param"},
                          {k: v.nbytes for k, v in values.items()},
                          {k: m.capacity for k, m in t.memories.items()})
    return plan, problems


# -- hand-written lifetime tables ---------------------------------------------------------------
def test_chain_reuses_two_blocks():
    steps = [("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Relu", ["b"], ["c"]),
             ("Relu", ["c"], ["y"])]
    nodes, values = graph(steps, ["x"], ["y"], dict(x=100, a=100, b=100, c=100, y=100))
    plan, problems = plan_and_check(nodes, values, ["x"], ["y"], target())
    assert problems == []
    p = plan.placements
    assert [(p[k].first, p[k].last) for k in "xabcy"] == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 3)]
    assert plan.memories["share"].peak == plan.memories["share"].lower_bound == 224
    assert len({p[k].offset for k in "xabcy"}) == 2


def test_residual_keeps_the_skip_tensor_alive():
    steps = [("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Relu", ["b"], ["c"]),
             ("Add", ["a", "c"], ["y"])]
    nodes, values = graph(steps, ["x"], ["y"], dict(x=64, a=64, b=64, c=64, y=64))
    plan, problems = plan_and_check(nodes, values, ["x"], ["y"], target())
    assert problems == [] and plan.placements["a"].last == 3
    assert plan.memories["share"].peak == plan.memories["share"].lower_bound == 3 * 64


def test_reshape_aliases_its_input_and_extends_its_life():
    steps = [("Relu", ["x"], ["a"]), ("Reshape", ["a", "shape"], ["r"]), ("Relu", ["x"], ["b"]),
             ("Add", ["r", "b"], ["y"])]
    nodes, values = graph(steps, ["x"], ["y"], dict(x=32, a=48, r=48, b=32, y=32, shape=16),
                          params=["shape"])
    plan, problems = plan_and_check(nodes, values, ["x"], ["y"], target())
    p = plan.placements
    assert problems == [] and p["r"].alias_of == "a" and p["r"].offset == p["a"].offset
    assert p["shape"].memory == "psram" and p["shape"].kind == "param"
    live_a = [s for s in range(4) if plan.live_bytes("share")[s] and p["a"].first <= s]
    assert live_a and p["b"].offset != p["a"].offset  # a (via r) is still live when b is made


def test_parameters_go_back_to_back_to_their_memory():
    steps = [("Conv", ["x", "w1", "b1"], ["a"]), ("Conv", ["a", "w2"], ["y"])]
    nodes, values = graph(steps, ["x"], ["y"], dict(x=8, a=8, y=8, w1=100, b1=40, w2=7),
                          params=["w1", "b1", "w2"])
    plan, problems = plan_and_check(nodes, values, ["x"], ["y"], target(), params="flash")
    p = plan.placements
    assert problems == []
    assert [(p[k].memory, p[k].offset, p[k].size) for k in ("w1", "b1", "w2")] == \
        [("flash", 0, 112), ("flash", 112, 48), ("flash", 160, 16)]
    assert plan.memories["flash"].params_bytes == 176 and plan.memories["psram"].peak == 0


def test_oversized_tensor_goes_to_psram_after_the_parameters():
    steps = [("Conv", ["x", "w"], ["big"]), ("Relu", ["big"], ["y"])]
    nodes, values = graph(steps, ["x"], ["y"], dict(x=16, big=5000, y=16, w=100), params=["w"])
    plan, problems = plan_and_check(nodes, values, ["x"], ["y"], target(max_share=4096))
    p = plan.placements
    assert problems == [] and p["big"].memory == "psram" and p["big"].offset == 112
    assert p["x"].memory == p["y"].memory == "share"


def test_spill_to_psram_when_share_memory_is_full():
    steps = [("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Add", ["a", "b"], ["y"])]
    nodes, values = graph(steps, ["x"], ["y"], dict(x=1000, a=3000, b=1000, y=1000))
    plan, problems = plan_and_check(nodes, values, ["x"], ["y"], target(share=4096))
    assert problems == [] and plan.spilled == ["a"] and plan.placements["a"].memory == "psram"
    assert plan.memories["share"].peak <= 4096


def test_capacity_problem_is_reported_not_an_invariant():
    steps = [("Relu", ["x"], ["y"])]
    nodes, values = graph(steps, ["x"], ["y"], dict(x=1000, y=1000))
    t = target(share=1024, psram=512)
    plan, problems = plan_and_check(nodes, values, ["x"], ["y"], t)
    assert problems and {p.kind for p in problems} == {"capacity"}
    assert_plan_valid(plan, nodes, ["x"], ["y"], set(), {"x": 1000, "y": 1000},
                      {k: m.capacity for k, m in t.memories.items()})  # capacity only: no raise


def test_place_first_fit_fills_gaps_and_best_fit_picks_the_smallest():
    # c (50 bytes) can go in the 64-byte gap or the 96-byte gap left by a and b
    reqs = [Request("low", 64, 0, 9), Request("gap1", 96, 0, 0), Request("mid", 32, 0, 9),
            Request("gap2", 64, 0, 0), Request("top", 32, 0, 9), Request("c", 50, 5, 6)]
    order = lambda rs, live: rs  # noqa: E731  (placement order = list order)
    first, _ = place(reqs, 16, (order, False))
    best, _ = place(reqs, 16, (order, True))
    assert first["c"] == first["gap1"] == 64 and best["c"] == best["gap2"] == 192


# -- random graphs --------------------------------------------------------------------------------
@st.composite
def programs(draw):
    n_in = draw(st.integers(1, 2))
    inputs = [f"in{i}" for i in range(n_in)]
    sizes = {x: draw(st.integers(1, 3000)) for x in inputs}
    params, avail, steps = [], list(inputs), []
    for k in range(draw(st.integers(1, 25))):
        op = draw(st.sampled_from(["Conv", "Relu", "Add", "Reshape", "Identity", "Split"]))
        reads = draw(st.lists(st.sampled_from(avail), min_size=1, max_size=3, unique=True))
        if op == "Conv" and draw(st.booleans()):
            params.append(f"w{k}")
            sizes[f"w{k}"] = draw(st.integers(1, 500))
            reads = reads + [f"w{k}"]
        outs = [f"v{k}_{j}" for j in range(2 if op == "Split" else 1)]
        for o in outs:
            sizes[o] = sizes[reads[0]] if op in ALIAS_OPS else draw(st.integers(1, 3000))
        steps.append((op, reads, outs))
        avail += outs
    outputs = sorted(set([steps[-1][2][0]] + draw(st.lists(st.sampled_from(avail), max_size=2))))
    return steps, inputs, outputs, sizes, params


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.sampled_from([1 << 20, 6000, 2000]), st.sampled_from(["psram", "flash"]))
def test_random_graphs_give_valid_plans(prog, share, params):
    steps, inputs, outputs, sizes, param_names = prog
    nodes, values = graph(steps, inputs, outputs, sizes, param_names)
    t = target(share=share)
    plan, problems = plan_and_check(nodes, values, inputs, outputs, t, params=params)
    assert [p for p in problems if p.kind != "capacity"] == []
    u = plan.memories["share"]
    assert u.peak >= u.lower_bound  # no plan beats the largest live set
    # every strategy on its own is valid too (same independent check)
    names = [n.name for n in nodes]
    for name in STRATEGIES:
        single = plan_memory(values, names, t, params=params, strategies=[name])
        problems = check_plan(single, nodes, inputs, outputs, set(param_names),
                              {k: v.nbytes for k, v in values.items()},
                              {k: m.capacity for k, m in t.memories.items()})
        assert [p for p in problems if p.kind != "capacity"] == []
        if not single.spilled and not plan.spilled:
            assert single.memories["share"].peak >= u.peak  # the best one was kept


# -- the checker catches broken plans ------------------------------------------------------------
def _valid():
    steps = [("Relu", ["x"], ["a"]), ("Reshape", ["a", "s"], ["r"]), ("Relu", ["r"], ["b"]),
             ("Add", ["b", "x"], ["y"])]
    sizes = dict(x=64, a=64, r=64, b=64, y=64, s=16)
    nodes, values = graph(steps, ["x"], ["y"], sizes, params=["s"])
    t = target(share=1024)
    plan, problems = plan_and_check(nodes, values, ["x"], ["y"], t)
    assert problems == []
    caps = {k: m.capacity for k, m in t.memories.items()}
    return plan, lambda p: check_plan(p, nodes, ["x"], ["y"], {"s"}, sizes, caps)


def _edit(plan, name, **changes):
    placements = dict(plan.placements)
    placements[name] = dataclasses.replace(placements[name], **changes)
    return dataclasses.replace(plan, placements=placements)


@pytest.mark.parametrize("breakage,expected", [
    (lambda p: _edit(p, "b", offset=p.placements["x"].offset), "overlap while both are live"),
    (lambda p: _edit(p, "a", offset=8), "is not a non-negative multiple of 16"),
    (lambda p: _edit(p, "y", offset=1024 - 16), "exceeds share capacity 1024"),
    (lambda p: _edit(p, "b", alias_of="r"), "no reshape-like op made it"),
    (lambda p: _edit(p, "r", offset=p.placements["a"].offset + 512), "at a different place"),
    (lambda p: _edit(p, "a", size=32), "gets 32 bytes but holds 64"),
    (lambda p: _edit(p, "s", memory="share", offset=p.placements["x"].offset),
     "overlap while both are live"),
    (lambda p: _edit(p, "a", memory="sram"), "which the target lacks"),
    (lambda p: dataclasses.replace(p, placements={k: v for k, v in p.placements.items()
                                                  if k != "b"}), "'b' has no placement"),
    (lambda p: dataclasses.replace(p, placements={**p.placements,
                                                  "ghost": p.placements["b"]}), "no value"),
])
def test_checker_catches(breakage, expected):
    plan, check = _valid()
    problems = check(breakage(plan))
    assert any(expected in p for p in problems), problems


def test_assert_plan_valid_raises_plan_error():
    plan, _ = _valid()
    nodes, values = graph([("Relu", ["x"], ["y"])], ["x"], ["y"], dict(x=16, y=16))
    bad = plan_memory(values, ["n0"], target())
    bad.placements["y"] = dataclasses.replace(bad.placements["y"],
                                              offset=bad.placements["x"].offset)
    with pytest.raises(PlanError, match="overlap"):
        assert_plan_valid(bad, nodes, ["x"], ["y"], set(), {"x": 16, "y": 16},
                          {"share": 1 << 20, "psram": 1 << 20, "flash": 1 << 20})

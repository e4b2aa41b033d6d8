"""Target profiles: one data file per chip (TOML or JSON), loaded into a checked :class:`Target`.

Built-in profiles live next to this module (``venus.toml``, ``venusA.toml``, ``arcs.toml``); a
custom profile is any file with the same layout, usually ``extends = "venus"`` plus what differs.
The layout is documented in ``docs/packer.md`` ("Target profiles"). Everything is validated when
the file is read: unknown keys, wrong types, formulas using names the op does not measure and
unknown memories are refused with the file and the key path in the message.

>>> t = load_target("venus")
>>> t.name, t.id, t.memories["share"].capacity
('venus', 0, 655360)
>>> [r.id for r in t.ops["Conv2dInt"].rules][:3]
['kernel', 'stride', 'pad']
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field

from ..errors import ConfigError
from .cost import CostModel, parse_cost
from .expr import Expr
from .quantities import vocabulary

#: Memory kinds, in the order of their ids in the packed file (flash 0, psram 1, share 2).
MEMORY_KINDS = ("flash", "psram", "share")
#: Built-in profiles: lower-case name -> file name.
BUILTIN = {"venus": "venus.toml", "venusa": "venusA.toml", "arcs": "arcs.toml"}
PROFILE_FORMAT = 1
SEVERITIES = ("error", "warning")

_TOP_KEYS = {"format", "name", "id", "description", "extends", "memory", "placement", "rulesets",
             "ops", "ops_removed", "cost"}
_RULE_KINDS = ("range", "one_of", "limit", "require")
_RULE_KEYS = {"id", "when", "fix", "severity", "label", "unit", "min", "max", "values", "text",
              "show", *_RULE_KINDS}
_OP_KEYS = {"display", "use", "rules"}


@dataclass(frozen=True)
class Memory:
    kind: str
    capacity: int            # bytes
    description: str = ""


@dataclass(frozen=True)
class Rule:
    """One limit. ``kind``: ``range`` (every element of ``quantity`` in ``[min, max]``),
    ``one_of`` (every element in ``values``), ``limit`` (``formula <= max``) or ``require``
    (``formula`` is true)."""

    id: str
    kind: str
    formula: Expr                       # the measured quantity or formula
    when: Expr | None = None            # rule applies only where this is true
    min: int | None = None
    max: int | None = None
    values: tuple = ()
    text: str = ""                      # require: the requirement in words
    label: str = ""                     # how the quantity is named in messages
    unit: str = ""
    show: tuple = ()                    # quantities shown in a `require` message
    fix: str = ""
    severity: str = "error"

    @property
    def names(self) -> set:
        """Every quantity the rule reads (a rule whose quantities are unknown is skipped)."""
        return self.formula.names | (self.when.names if self.when else set()) | set(self.show)


@dataclass(frozen=True)
class OpSpec:
    op_type: str
    display: str
    rules: tuple


@dataclass(frozen=True)
class Target:
    """A chip: its memories, where tensors go, and per supported op type its limits."""

    name: str
    id: int
    description: str
    alignment: int
    memories: dict
    parameters: str                     # memory kind of parameters
    max_share_tensor: int               # bigger activations go to PSRAM
    ops: dict = field(repr=False)       # op_type -> OpSpec
    source: str = ""
    cost: CostModel | None = None       # per-layer cycle estimate (linger.targets.cost)

    def supports(self, op_type: str) -> bool:
        return op_type in self.ops

    def display(self, op_type: str) -> str:
        spec = self.ops.get(op_type)
        return spec.display if spec else op_type


def available_targets() -> list[str]:
    """Names of the built-in profiles."""
    return [os.path.splitext(f)[0] for f in BUILTIN.values()]


def load_target(spec) -> Target:
    """A :class:`Target` from a built-in name (``"venus"``, ``"venusA"``, ``"arcs"``; case is
    ignored), a path to a ``.toml``/``.json`` profile, or a Target (returned as it is)."""
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"target must be a name ({', '.join(available_targets())}), a profile"
                          f" path or a Target, got {type(spec).__name__}")
    text = os.fspath(spec)
    if text.lower() in BUILTIN:
        return _builtin(text.lower())
    if os.path.isfile(text):
        return _load_file(os.path.abspath(text))
    raise ConfigError(f"unknown target {text!r}: built-in targets are"
                      f" {', '.join(available_targets())}; a custom profile is a path to a"
                      f" .toml or .json file (see docs/packer.md)")


@functools.lru_cache(maxsize=None)
def _builtin(name: str) -> Target:
    return _load_file(os.path.join(os.path.dirname(__file__), BUILTIN[name]))


def _read_raw(path: str, seen=()) -> dict:
    """The profile's dict with ``extends`` resolved (parent first, child overrides)."""
    if path in seen:
        raise ConfigError(f"profile '{path}': 'extends' forms a cycle through {list(seen)}")
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        else:
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                import tomli as tomllib  # type: ignore[no-redef]
            with open(path, "rb") as f:
                raw = tomllib.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError / TOMLDecodeError are ValueErrors
        raise ConfigError(f"profile '{path}' cannot be read: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"profile '{path}' must hold a table/object at the top level")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"profile '{path}': unknown keys {unknown}; allowed:"
                          f" {sorted(_TOP_KEYS)}")
    parent = raw.get("extends")
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"profile '{path}': extends must be a target name or a path")
    if parent.lower() in BUILTIN:
        ppath = os.path.join(os.path.dirname(__file__), BUILTIN[parent.lower()])
    else:
        ppath = os.path.abspath(os.path.join(os.path.dirname(path), parent))
        if not os.path.isfile(ppath):
            raise ConfigError(f"profile '{path}': extends {parent!r}, which is neither a built-in"
                              f" target ({', '.join(available_targets())}) nor a file")
    base = _read_raw(ppath, seen + (path,))
    merged = {k: v for k, v in base.items() if k not in ("id", "name", "description")}
    for key, value in raw.items():
        if key in ("memory", "placement", "rulesets", "ops", "cost") and isinstance(value, dict):
            sub = dict(base.get(key, {}))
            for k2, v2 in value.items():  # memory kinds merge key by key; ops are replaced
                if key == "memory" and isinstance(v2, dict) and isinstance(sub.get(k2), dict):
                    sub[k2] = {**sub[k2], **v2}
                else:
                    sub[k2] = v2
            merged[key] = sub
        elif key != "extends":
            merged[key] = value
    for op in raw.get("ops_removed", []):
        merged.get("ops", {}).pop(op, None)
    merged.pop("ops_removed", None)
    return merged


def _load_file(path: str) -> Target:
    raw = _read_raw(path)
    where = f"profile '{path}'"
    fmt = raw.get("format", PROFILE_FORMAT)
    if fmt != PROFILE_FORMAT:
        raise ConfigError(f"{where}: format = {fmt!r}; this linger reads profile format"
                          f" {PROFILE_FORMAT}")
    name = _typed(raw, "name", str, where)
    tid = raw.get("id", 255)
    if not isinstance(tid, int) or isinstance(tid, bool) or not 0 <= tid < 2 ** 32:
        raise ConfigError(f"{where}: id must be an integer in [0, 2**32), got {tid!r}")
    mem_raw = raw.get("memory", {})
    alignment = mem_raw.get("alignment", 16)
    if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
        raise ConfigError(f"{where}: memory.alignment must be a power of two, got {alignment!r}")
    memories = {}
    for kind, m in mem_raw.items():
        if kind == "alignment":
            continue
        if kind not in MEMORY_KINDS or not isinstance(m, dict):
            raise ConfigError(f"{where}: memory.{kind} is not a memory kind; use"
                              f" {', '.join(MEMORY_KINDS)} (tables with 'capacity')")
        cap = m.get("capacity")
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            raise ConfigError(f"{where}: memory.{kind}.capacity must be a byte count >= 0,"
                              f" got {cap!r}")
        extra = sorted(set(m) - {"capacity", "description"})
        if extra:
            raise ConfigError(f"{where}: memory.{kind} has unknown keys {extra}")
        memories[kind] = Memory(kind, cap, str(m.get("description", "")))
    if "share" not in memories:
        raise ConfigError(f"{where}: memory.share (the activation memory) is required")
    place = raw.get("placement", {})
    extra = sorted(set(place) - {"parameters", "max_share_tensor"})
    if extra:
        raise ConfigError(f"{where}: placement has unknown keys {extra}")
    params = place.get("parameters", next(k for k in ("psram", "flash", "share")
                                          if k in memories))
    if params not in memories:
        raise ConfigError(f"{where}: placement.parameters = {params!r} is not one of the"
                          f" profile's memories {sorted(memories)}")
    max_share = place.get("max_share_tensor", memories["share"].capacity)
    if not isinstance(max_share, int) or max_share < 0:
        raise ConfigError(f"{where}: placement.max_share_tensor must be a byte count")
    rulesets = raw.get("rulesets", {})
    ops = {}
    for op_type, spec in raw.get("ops", {}).items():
        ops[op_type] = _op(op_type, spec, rulesets, f"{where}: ops.{op_type}")
    return Target(name, tid, str(raw.get("description", "")), alignment, memories, params,
                  max_share, ops, path, parse_cost(raw.get("cost"), memories, where))


def _typed(d, key, typ, where):
    v = d.get(key)
    if not isinstance(v, typ):
        raise ConfigError(f"{where}: '{key}' must be a {typ.__name__}, got {v!r}")
    return v


def _op(op_type, spec, rulesets, where) -> OpSpec:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table")
    extra = sorted(set(spec) - _OP_KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown keys {extra}; allowed: {sorted(_OP_KEYS)}")
    raw_rules = []
    for name in spec.get("use", []):
        if name not in rulesets:
            raise ConfigError(f"{where}: use = {name!r}, but no [[rulesets.{name}]] exists")
        raw_rules += [(r, f"rulesets.{name}[{i}]") for i, r in enumerate(rulesets[name])]
    raw_rules += [(r, f"{where}.rules[{i}]") for i, r in enumerate(spec.get("rules", []))]
    vocab = vocabulary(op_type)
    rules, ids = [], set()
    for r, rwhere in raw_rules:
        rule = _rule(r, rwhere, vocab, op_type)
        if rule.id in ids:
            raise ConfigError(f"{where}: rule id {rule.id!r} is used twice")
        ids.add(rule.id)
        rules.append(rule)
    return OpSpec(op_type, str(spec.get("display", op_type)), tuple(rules))


def _rule(r, where, vocab, op_type) -> Rule:
    if not isinstance(r, dict):
        raise ConfigError(f"{where} must be a table")
    extra = sorted(set(r) - _RULE_KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown keys {extra}; allowed: {sorted(_RULE_KEYS)}")
    kinds = [k for k in _RULE_KINDS if k in r]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: a rule needs exactly one of {list(_RULE_KINDS)}, got"
                          f" {kinds}")
    kind = kinds[0]
    rid = r.get("id")
    if not isinstance(rid, str) or not rid:
        raise ConfigError(f"{where}: every rule needs an 'id' (a short name, e.g. 'kernel')")
    try:
        formula = Expr(r[kind])
        when = Expr(r["when"]) if "when" in r else None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    severity = r.get("severity", "error")
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}: severity must be one of {SEVERITIES}, got {severity!r}")
    lo, hi, values = r.get("min"), r.get("max"), tuple(r.get("values", ()))
    if kind == "range" and (not isinstance(lo, int) or not isinstance(hi, int) or lo > hi):
        raise ConfigError(f"{where}: a range rule needs integers min <= max")
    if kind == "one_of" and not values:
        raise ConfigError(f"{where}: a one_of rule needs a non-empty 'values' list")
    if kind == "limit" and not isinstance(hi, int):
        raise ConfigError(f"{where}: a limit rule needs an integer 'max'")
    if kind == "require" and not isinstance(r.get("text"), str):
        raise ConfigError(f"{where}: a require rule needs 'text' (the requirement in words)")
    rule = Rule(rid, kind, formula, when, lo, hi, values, str(r.get("text", "")),
                str(r.get("label", r[kind] if kind in ("range", "one_of") else rid)),
                str(r.get("unit", "")), tuple(r.get("show", ())), str(r.get("fix", "")),
                severity)
    unknown = sorted(rule.names - vocab)
    if unknown:
        raise ConfigError(f"{where}: {op_type} rules cannot use {unknown}; the quantities of"
                          f" {op_type} are {sorted(vocab)}")
    return rule

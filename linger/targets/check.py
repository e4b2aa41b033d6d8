"""The one conformity checker: a target's rules evaluated on one op's quantities.

Used at ``linger.init(model, target=...)`` (quantities of PyTorch layers), by ``linger check``
and ``linger pack`` (quantities of graph nodes). A rule whose quantities are not all known is
skipped (at init, activation shapes are not known yet; pack time checks them).

>>> from linger.targets import load_target
>>> q = {"kernel": (7, 7), "kernel_h": 7, "kernel_w": 7, "dilated": 0}
>>> [v] = [v for v in check_op(load_target("venus"), "Conv2dInt", "backbone.3.conv", q)]
>>> print(v)
Conv2d `backbone.3.conv` (kernel 7x7) exceeds target venus: kernel must be 1..5. Split the kernel (e.g. stacked 3x3 convs), or dilate it and choose target arcs or venusA.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, TargetError
from .profile import Rule, Target

_TUPLE_AS_LIST = {"pads", "perm"}


@dataclass(frozen=True)
class Violation:
    """One broken limit: where (``node``: module path or graph node name), which rule, and the
    complete message (what, the value, the limit, the fix)."""

    target: str
    op_type: str
    node: str
    rule: str            # "<op_type>.<rule id>", "<op_type>.supported" or "memory.<kind>"
    severity: str
    message: str
    value: object = None
    limit: object = None

    def __str__(self) -> str:
        return self.message


def check_op(target: Target, op_type: str, node: str, quantities: dict) -> list[Violation]:
    """Every violation of ``target``'s rules by one op (empty list: it fits)."""
    spec = target.ops.get(op_type)
    if spec is None:
        return [_unsupported(target, op_type, node)]
    out = []
    for rule in spec.rules:
        if not rule.names <= quantities.keys():
            continue
        try:
            if rule.when is not None and not rule.when(quantities):
                continue
            value = rule.formula(quantities)
        except (TypeError, ValueError, ConfigError) as e:
            raise ConfigError(f"target {target.name}: rule {op_type}.{rule.id} cannot be"
                              f" evaluated on {spec.display} `{node}`: {e}") from None
        if not _holds(rule, value):
            out.append(Violation(target.name, op_type, node, f"{op_type}.{rule.id}",
                                 rule.severity, _message(target, spec.display, node, rule,
                                                         value, quantities),
                                 value, _limit(rule)))
    return out


def raise_if_errors(violations, what: str) -> None:
    """Raise one :class:`~linger.errors.TargetError` listing every error-severity violation."""
    errors = [v for v in violations if v.severity == "error"]
    if not errors:
        return
    if len(errors) == 1:
        raise TargetError(errors[0].message, errors)
    lines = "\n".join(f"  - {v.message}" for v in errors)
    raise TargetError(f"{len(errors)} violations of target {errors[0].target} in {what}:\n{lines}",
                      errors)


# -- evaluation and messages ----------------------------------------------------------------------
def _elements(value):
    return value if isinstance(value, tuple) else (value,)


def _holds(rule: Rule, value) -> bool:
    if rule.kind == "range":
        return all(rule.min <= e <= rule.max for e in _elements(value))
    if rule.kind == "one_of":
        return all(e in rule.values for e in _elements(value))
    if rule.kind == "limit":
        return value <= rule.max
    return bool(value)


def _limit(rule: Rule):
    return {"range": (rule.min, rule.max), "one_of": rule.values, "limit": rule.max,
            "require": rule.text}[rule.kind]


def fmt(name: str, value) -> str:
    """A quantity as messages show it: ``7x7`` for spatial tuples, ``(1, 1, 0, 0)`` for pads."""
    if isinstance(value, tuple):
        if name in _TUPLE_AS_LIST or not value:
            return "(" + ", ".join(str(v) for v in value) + ")"
        return "x".join(str(v) for v in value)
    return str(int(value)) if isinstance(value, bool) else str(value)


def _bytes_text(n: int, unit: str) -> str:
    text = f"{n} {unit}".rstrip()
    if unit == "bytes" and n >= 1024 and n % 1024 == 0:
        text += f" ({n // 1024} KiB)"
    return text


def _message(target, display, node, rule: Rule, value, q) -> str:
    head = f"{display} `{node}`"
    name = rule.formula.text
    if rule.kind in ("range", "one_of"):
        shown = f"{rule.label} {fmt(name, value)}"
        if rule.kind == "range":
            too_big = any(e > rule.max for e in _elements(value))
            need = (f"{rule.label} must be {rule.min}" if rule.min == rule.max
                    else f"{rule.label} must be {rule.min}..{rule.max}")
        else:
            too_big = False
            allowed = [str(v) for v in rule.values]
            need = (f"{rule.label} must be {allowed[0]}" if len(allowed) == 1 else
                    f"{rule.label} must be one of {', '.join(allowed)}")
    elif rule.kind == "limit":
        inputs = ", ".join(f"{n}={fmt(n, q[n])}" for n in sorted(rule.formula.names))
        shown = f"{rule.label} {value}{' ' + rule.unit if rule.unit else ''} = {name}"
        if inputs:
            shown += f" with {inputs}"
        too_big = True
        need = f"{rule.label} must be <= {_bytes_text(rule.max, rule.unit)}"
    else:
        names = rule.show or tuple(sorted(rule.formula.names))
        shown = ", ".join(f"{n} {fmt(n, q[n])}" for n in names)
        too_big = False
        need = rule.text
    verb = "exceeds" if too_big else "does not fit"
    msg = f"{head} ({shown}) {verb} target {target.name}: {need}."
    return f"{msg} {rule.fix}" if rule.fix else msg


def _unsupported(target: Target, op_type: str, node: str) -> Violation:
    from .profile import _builtin, BUILTIN  # other built-ins, to suggest one that has the op
    others = [_builtin(k).name for k in BUILTIN
              if _builtin(k).name != target.name and _builtin(k).supports(op_type)]
    alt = f" or choose target {' or '.join(others)}" if others else ""
    msg = (f"{target.display(op_type)} `{node}` (op {op_type}) is not supported by target"
           f" {target.name}. Replace it with a supported op{alt}; target {target.name} runs:"
           f" {', '.join(sorted(target.ops))}.")
    return Violation(target.name, op_type, node, f"{op_type}.supported", "error", msg,
                     op_type, None)

"""Markdown tables of the built-in profiles, for ``docs/packer.md`` (a test keeps them in sync).

>>> print(limits_table(["venus"]).splitlines()[0])
| op | rule | venus |
"""

from __future__ import annotations

from .profile import available_targets, load_target
from .quantities import VOCABULARY


def rule_text(rule) -> str:
    """One rule as a short cell: ``kernel 1..5``, ``stride in {1, 2, 4}``, a formula <= max."""
    if rule.kind == "range":
        text = f"{rule.label} {rule.min}..{rule.max}"
    elif rule.kind == "one_of":
        text = f"{rule.label} in {{{', '.join(str(v) for v in rule.values)}}}"
    elif rule.kind == "limit":
        text = f"`{rule.formula.text}` <= {rule.max}"
    else:
        text = rule.text
    if rule.when is not None:
        text = f"if `{rule.when.text}`: {text}"
    return text + (" (warning)" if rule.severity == "warning" else "")


def limits_table(targets=None) -> str:
    """Every (op, rule) of the given profiles, one column per target."""
    targets = [load_target(t) for t in (targets or available_targets())]
    by_op: dict = {}  # op -> rule id -> target -> cell, in order of first appearance
    for t in targets:
        for op, spec in t.ops.items():
            for rule in spec.rules:
                by_op.setdefault(op, {}).setdefault(rule.id, {})[t.name] = rule_text(rule)
    rows = {(op, rid): cells for op, rules in by_op.items() for rid, cells in rules.items()}
    head = "| op | rule | " + " | ".join(t.name for t in targets) + " |"
    sep = "|" + "---|" * (2 + len(targets))
    lines = [head, sep]
    for (op, rid), cells in rows.items():
        lines.append(f"| {op} | {rid} | "
                     + " | ".join(cells.get(t.name, "-").replace("|", "\\|") for t in targets)
                     + " |")
    return "\n".join(lines)


def memory_table(targets=None) -> str:
    targets = [load_target(t) for t in (targets or available_targets())]
    lines = ["| target | id | share-memory | PSRAM | flash | parameters | alignment |",
             "|---|---|---|---|---|---|---|"]
    for t in targets:
        cap = {k: f"{m.capacity} ({m.capacity // 1024} KiB)" for k, m in t.memories.items()}
        lines.append(f"| {t.name} | {t.id} | {cap.get('share', '-')} | {cap.get('psram', '-')}"
                     f" | {cap.get('flash', '-')} | {t.parameters} | {t.alignment} |")
    return "\n".join(lines)


def vocabulary_table() -> str:
    lines = ["| family | ops | quantities |", "|---|---|---|"]
    from .quantities import FAMILIES
    for fam, names in VOCABULARY.items():
        ops = sorted(op for op, f in FAMILIES.items() if f == fam) or ["every other op"]
        extra = sorted(names - VOCABULARY["common"]) if fam != "common" else sorted(names)
        lines.append(f"| {fam} | {', '.join(ops)} | {', '.join(extra)} |")
    return "\n".join(lines)


#: marker name in docs/packer.md -> function producing the block
BLOCKS = {"memory_table": memory_table, "limits_table": limits_table,
          "vocabulary_table": vocabulary_table}


def update_doc(text: str) -> str:
    """``text`` with every ``<!-- generated: NAME -->`` ... ``<!-- end NAME -->`` block
    replaced by the current output of ``BLOCKS[NAME]``."""
    for name, fn in BLOCKS.items():
        start, end = f"<!-- generated: {name} -->", f"<!-- end {name} -->"
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            continue
        text = text[:i + len(start)] + "\n" + fn() + "\n" + text[j:]
    return text


if __name__ == "__main__":  # python -m linger.targets.describe docs/packer.md
    import sys
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        new = update_doc(f.read())
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)

"""Safe integer formulas for target profiles: ``align8(Cin) * align(W, 8*stride_w) * kernel_h``.

A profile is data written by users, so its formulas are never given to Python's ``eval``: they
are parsed with :mod:`ast` and only a small whitelist is accepted and interpreted here.

Accepted: integer and boolean constants, names (the op's quantities), tuples (``perm in ((0, 2,
1), (1, 0, 2))``), ``+ - * // %``, comparisons (``< <= > >= == != in``, chained), ``and or
not``, ``x if c else y`` and the functions ``align(x, n)`` (``x`` rounded up to a multiple of
``n``), ``align2/4/8/16(x)``, ``ceil_div(a, b)``, ``min``, ``max``, ``abs``.

>>> e = Expr("align8(Cin) * align(W, 8 * stride_w) * kernel_h")
>>> sorted(e.names)
['Cin', 'W', 'kernel_h', 'stride_w']
>>> e({"Cin": 3, "W": 10, "stride_w": 2, "kernel_h": 3})
384
>>> Expr("perm in ((0, 2, 1), (2, 0, 1))")({"perm": (0, 2, 1)})
True
"""

from __future__ import annotations

import ast
import operator

from ..errors import ConfigError


def align(x: int, n: int) -> int:
    """``x`` rounded up to a multiple of ``n`` (``n >= 1``): ``ceil(x / n) * n``."""
    n = int(n)
    if n < 1:
        raise ConfigError(f"align(x, n) needs n >= 1, got n={n}")
    return -(-int(x) // n) * n


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` on integers."""
    if int(b) == 0:
        raise ConfigError("ceil_div(a, b) with b = 0")
    return -(-int(a) // int(b))


FUNCTIONS = {
    "align": align, "ceil_div": ceil_div, "min": min, "max": max, "abs": abs,
    **{f"align{n}": (lambda x, n=n: align(x, n)) for n in (2, 4, 8, 16, 32, 64)},
}

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b}
_MAX_LEN = 400


class Expr:
    """A parsed formula; ``expr(env)`` evaluates it with quantities from ``env`` (a dict)."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text.strip() or len(text) > _MAX_LEN:
            raise ConfigError(f"a formula must be a non-empty string of at most {_MAX_LEN}"
                              f" characters, got {text!r}")
        self.text = text.strip()
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as e:
            raise ConfigError(f"formula {text!r} is not valid: {e.msg}") from None
        self.names: set[str] = set()
        self._check(tree.body)
        self._tree = tree.body

    def __repr__(self):
        return f"Expr({self.text!r})"

    def __call__(self, env: dict):
        return self._eval(self._tree, env)

    # -- validation: only the whitelist may appear ----------------------------------------------
    def _check(self, node) -> None:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, bool)):
                raise ConfigError(f"formula {self.text!r}: only integer constants are allowed,"
                                  f" got {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise ConfigError(f"formula {self.text!r}: {node.id} is a function; call it")
            self.names.add(node.id)
        elif isinstance(node, ast.Tuple):
            for e in node.elts:
                self._check(e)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            self._check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                self._check(v)
        elif isinstance(node, ast.Compare) and all(type(o) in _CMP for o in node.ops):
            for v in [node.left, *node.comparators]:
                self._check(v)
        elif isinstance(node, ast.IfExp):
            for v in (node.test, node.body, node.orelse):
                self._check(v)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in FUNCTIONS and not node.keywords):
            for a in node.args:
                self._check(a)
        else:
            what = type(node).__name__
            raise ConfigError(f"formula {self.text!r}: {what} is not allowed (use integers,"
                              f" names, + - * // %, comparisons, and/or/not and the functions"
                              f" {', '.join(sorted(FUNCTIONS))})")

    def _eval(self, node, env):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.Tuple):
            return tuple(self._eval(e, env) for e in node.elts)
        if isinstance(node, ast.BinOp):
            a, b = self._eval(node.left, env), self._eval(node.right, env)
            if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and b == 0:
                raise ConfigError(f"formula {self.text!r} divides by zero")
            return _BIN[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, env)
            return (not v) if isinstance(node.op, ast.Not) else (-v if isinstance(node.op, ast.USub)
                                                                 else +v)
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(self._eval(v, env) for v in node.values)
            return any(self._eval(v, env) for v in node.values)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, env)
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, env)
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self._eval(node.body if self._eval(node.test, env) else node.orelse, env)
        return FUNCTIONS[node.func.id](*(self._eval(a, env) for a in node.args))

"""Unique graph names: the first free of ``base``, ``base_1``, ``base_2``, ..."""


def unique_name(used: set, base: str) -> str:
    """Return the first of ``base``, ``base_1``, ... not in ``used``, and add it to ``used``."""
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name

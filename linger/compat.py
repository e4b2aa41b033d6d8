"""The original linger's (1.x and 3.x) names, mapped onto linger's semantics or refused with the
reason and what to write instead (docs/migration.md has the full table).

Importing this module does not import torch; the torch-side names live in
:mod:`linger.quant.legacy`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from .config import QuantConfig
from .errors import ConfigError, UnsupportedError


class QuantMode(enum.Enum):
    """Quantization modes of the original linger. 1.x had only ``QValue`` (power-of-two scales,
    symmetric); 3.x named its rounding modes here. linger implements ``QValue`` with
    round-half-up, which is 3.x's ``floor_add``; the other roundings are refused."""

    QValue = "QValue"
    floor_add = "floor_add"
    floor = "floor"
    round = "round"
    ceil = "ceil"


class PlatFormQuant(enum.Enum):
    """The original's platform switch; ``luna_quant`` (the only value it had) is linger's numerics."""

    luna_quant = "luna_quant"


_MODES_OK = (QuantMode.QValue, QuantMode.floor_add)


def check_mode(mode, where: str = "mode") -> None:
    """Accept ``None``, ``QuantMode.QValue``/``floor_add`` (or their names); refuse the rest.

    >>> check_mode(QuantMode.QValue)
    >>> check_mode("round")
    Traceback (most recent call last):
    ...
    linger.errors.ConfigError: mode=QuantMode.round: linger rounds half up (QuantMode.QValue, 3.x's floor_add) so that PyTorch and the integer runtime agree bit for bit; other roundings are not implemented. Drop mode= or pass linger.QuantMode.QValue
    """
    if mode is None:
        return
    try:
        m = QuantMode(getattr(mode, "value", mode))
    except ValueError:
        raise ConfigError(f"{where}={mode!r} is unknown; linger has linger.QuantMode.QValue"
                          f" only (power-of-two scales, round half up)") from None
    if m not in _MODES_OK:
        raise ConfigError(f"mode=QuantMode.{m.name}: linger rounds half up (QuantMode.QValue,"
                          f" 3.x's floor_add) so that PyTorch and the integer runtime agree bit"
                          f" for bit; other roundings are not implemented. Drop mode= or pass"
                          f" linger.QuantMode.QValue")


def check_zero_point(zero_point, where: str) -> None:
    if zero_point not in (0, None) or isinstance(zero_point, bool):
        raise ConfigError(f"{where}(zero_point={zero_point!r}): linger's quantization is"
                          f" symmetric (no zero point); drop zero_point= or pass 0")


def SetPlatFormQuant(platform_quant=PlatFormQuant.luna_quant) -> None:
    """Original switch. ``PlatFormQuant.luna_quant`` (its only value) is accepted; there is
    nothing else to choose: the chip is chosen at ``linger pack`` (``--target``)."""
    if getattr(platform_quant, "value", platform_quant) != "luna_quant":
        raise ConfigError(f"SetPlatFormQuant({platform_quant!r}): only"
                          f" PlatFormQuant.luna_quant exists; choose the chip with"
                          f" linger.init(..., target=...) or `linger pack --target`")


def _legacy_switch(name: str, why: str, refuse=None):
    """A switch of the original that changes nothing in linger (``why`` says so); ``refuse``: a
    value that is refused instead, with ``why`` as the reason."""
    def switch(enable: bool = True) -> None:
        if not isinstance(enable, bool):
            raise ConfigError(f"{name} takes True or False, got {enable!r}")
        if refuse is not None and enable is refuse:
            raise UnsupportedError(f"{name}({enable}): {why}")
    switch.__name__ = switch.__qualname__ = name
    switch.__doc__ = f"Original linger switch; {why}" + (
        f" ``{refuse}`` is refused." if refuse is not None else " Accepted, no effect.")
    return switch


SetIQTensorVar = _legacy_switch(
    "SetIQTensorVar", "linger has no integer variance: torch.var on a quantized value runs in"
    " float after a Dequant (on_unsupported='dequant'). Call SetIQTensorVar(False) or drop the"
    " call", refuse=True)
SetFunctionLinearQuant = _legacy_switch(
    "SetFunctionLinearQuant", "linger quantizes nn.Linear layers; a functional F.linear on a"
    " quantized value runs in float after a Dequant whatever this switch says (the original"
    " never read it either).")
SetFunctionChannelShuffleQuant = _legacy_switch(
    "SetFunctionChannelShuffleQuant", "linger.channel_shuffle only moves values, so it is exact"
    " on quantized values whatever this switch says.")
SetIQCat2AddZero = _legacy_switch(
    "SetIQCat2AddZero", "cat rescales its inputs to one exponent; there is no add-zero trick to"
    " switch (the original never read this switch).")
SetCastorBiasInt16 = _legacy_switch(
    "SetCastorBiasInt16", "biases are int32 in linger (SPEC section 2); an int16 castor bias does"
    " not exist. Drop the call", refuse=True)
SetTFQuant = _legacy_switch(
    "SetTFQuant", "TensorFlow-style (asymmetric, zero-point) quantization is not linger's"
    " numerics; linger is symmetric power-of-two. Drop the call", refuse=True)


# -- linger 3.x configuration ------------------------------------------------------------------
#: 3.x ``quant_info`` keys -> what linger does with them.
QUANT_INFO_KEYS = ("weight_bits", "activate_bits", "bias_bits", "is_symmetry", "is_perchannel",
                   "round_mode", "qat_method", "a_strategy", "w_strategy", "activation_type",
                   "a_calibrate_name", "w_calibrate_name")
CLAMP_INFO_KEYS = ("clamp_activation_value", "clamp_weight_value", "clamp_bias_value",
                   "clamp_factor_value")
TOP_KEYS = ("open_quant", "quant_method", "device", "dtype", "seed", "calibration", "platform",
            "quant_info", "clamp_info")
_PLATFORMS = {"venus": "venus", "venusa": "venusA", "arcs": "arcs"}


@dataclass(frozen=True)
class LegacyConfig:
    """A linger 3.x YAML/dict configuration, validated and mapped onto linger's objects.

    ``quant``: the :class:`~linger.config.QuantConfig` (``weight_bits`` -> ``parameter_bits``,
    ``activate_bits`` -> ``data_bits`` and ``out_bits``); ``normalize``: keyword arguments of
    :func:`linger.normalize_layers` (``clamp_weight_value`` -> ``normalize_weight_value``...);
    ``target``: the chip of ``platform`` (venus, venusA, arcs) or None; ``open_quant``: False
    makes :func:`linger.init` leave the model float.
    """

    quant: QuantConfig = field(default_factory=QuantConfig)
    normalize: dict = field(default_factory=lambda: {"normalize_weight_value": 8,
                                                     "normalize_bias_value": 8,
                                                     "normalize_output_value": 8})
    target: str | None = None
    open_quant: bool = True

    @classmethod
    def from_dict(cls, cfg: dict, where: str = "config") -> "LegacyConfig":
        """Validate a 3.x configuration; an unknown key is an error naming it and the valid ones.

        >>> LegacyConfig.from_dict({"quant_info": {"weight_bits": 4}}).quant.parameter_bits
        4
        >>> LegacyConfig.from_dict({"quant_inf": {}})
        Traceback (most recent call last):
        ...
        linger.errors.ConfigError: config: unknown key 'quant_inf'; valid keys: ['calibration', 'clamp_info', 'device', 'dtype', 'open_quant', 'platform', 'quant_info', 'quant_method', 'seed']
        """
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where}: expected a mapping of settings, got {type(cfg).__name__}")
        _known(cfg, TOP_KEYS, where)
        qi, ci = cfg.get("quant_info") or {}, cfg.get("clamp_info") or {}
        _known(qi, QUANT_INFO_KEYS, f"{where}: quant_info")
        _known(ci, CLAMP_INFO_KEYS, f"{where}: clamp_info")
        _must(qi, "bias_bits", (32,), "biases are int32 in linger", where)
        _must(qi, "is_symmetry", (True,), "linger's quantization is symmetric", where)
        _must(qi, "is_perchannel", (False,), "linger has one power-of-two scale per tensor", where)
        _must(qi, "round_mode", ("floor_add",), "linger rounds half up (floor_add)", where)
        _must(qi, "qat_method", ("MOM",), "linger's ranges are running statistics (MOM); TQT's"
              " learned thresholds are not implemented", where)
        _must(ci, "clamp_factor_value", (None,), "linger clamps to fixed values; the dynamic"
              " 7*mean|W| clip is not implemented (write clamp_factor_value: null)", where)
        act = qi.get("activate_bits", 8)
        _must(qi, "activate_bits", (8, 16), "linger's activations are 8 or 16 bits (32 only as"
              " a layer's out_bits)", where)
        quant = QuantConfig(data_bits=act, parameter_bits=qi.get("weight_bits", 8),
                            out_bits=act)
        normalize = {"normalize_weight_value": ci.get("clamp_weight_value", 8),
                     "normalize_bias_value": ci.get("clamp_bias_value", 8),
                     "normalize_output_value": ci.get("clamp_activation_value", 8)}
        platform = cfg.get("platform")
        target = None
        if platform is not None:
            target = _PLATFORMS.get(str(platform).lower())
            if target is None:
                raise ConfigError(f"{where}: platform={platform!r} has no linger target profile;"
                                  f" choose one of {sorted(set(_PLATFORMS.values()))}")
        return cls(quant, normalize, target, bool(cfg.get("open_quant", True)))

    def to_dict(self) -> dict:
        """The 3.x layout of this configuration (what :func:`config_save_to_yaml` writes)."""
        d = {"open_quant": self.open_quant,
             "quant_info": {"weight_bits": self.quant.parameter_bits,
                            "activate_bits": self.quant.out_bits, "bias_bits": 32,
                            "is_symmetry": True, "is_perchannel": False,
                            "round_mode": "floor_add", "qat_method": "MOM"},
             "clamp_info": {"clamp_weight_value": self.normalize["normalize_weight_value"],
                            "clamp_bias_value": self.normalize["normalize_bias_value"],
                            "clamp_activation_value": self.normalize["normalize_output_value"],
                            "clamp_factor_value": None}}
        if self.target is not None:
            d["platform"] = self.target
        return d


def _known(d, valid, where):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    for key in d:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {sorted(valid)}")


def _must(d, key, allowed, why, where):
    if key in d and d[key] not in allowed:
        raise ConfigError(f"{where}: {key}={d[key]!r} is not supported: {why}; use"
                          f" {allowed[0]!r} or remove the key")


def load_config(config_file) -> LegacyConfig:
    """A :class:`LegacyConfig` from a YAML file path or a dict (PyYAML needed for files)."""
    if isinstance(config_file, LegacyConfig):
        return config_file
    if isinstance(config_file, dict):
        return LegacyConfig.from_dict(config_file)
    path = os.fspath(config_file)
    yaml = _yaml()
    if not os.path.isfile(path):
        raise ConfigError(f"config_file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config_file '{path}' is not valid YAML: {e}") from e
    return LegacyConfig.from_dict(data, f"config_file '{path}'")


def config_save_to_yaml(path, config=None) -> None:
    """Write ``config`` (a :class:`LegacyConfig` or 3.x dict; default: linger's defaults) to
    ``path`` in the 3.x YAML layout, ready for ``init(model, config_file=path)``."""
    cfg = load_config(config) if config is not None else LegacyConfig()
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        _yaml().safe_dump(cfg.to_dict(), f, sort_keys=False)


def _yaml():
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading/writing a YAML config needs PyYAML: pip install pyyaml (or"
                          " pass the configuration as a dict)") from None
    return yaml


__all__ = ["QuantMode", "PlatFormQuant", "SetPlatFormQuant", "SetIQTensorVar",
           "SetFunctionLinearQuant", "SetFunctionChannelShuffleQuant", "SetIQCat2AddZero",
           "SetCastorBiasInt16", "SetTFQuant", "LegacyConfig",
           "load_config", "config_save_to_yaml", "check_mode", "check_zero_point"]

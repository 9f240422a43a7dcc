"""Engines: one small interface (`Engine`) and a registry of model specs."""

from cai.engines.base import (
    Engine,
    EngineError,
    EngineOptions,
    load_engine,
    parse_option_pairs,
    register_alias,
    register_engine,
)

__all__ = [
    "Engine",
    "EngineError",
    "EngineOptions",
    "load_engine",
    "parse_option_pairs",
    "register_alias",
    "register_engine",
]

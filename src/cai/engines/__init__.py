"""Engines: one small interface (`Engine`) and a registry of model specs.

Every model call goes through an engine: `base` (the interface, the registry, `EngineError`), the backends
(`transformers_engine` for the embedded and `hf:` models, `openai_compat`, `vllm_engine`, `ray_engine`,
`fake`), and the embedded engine's batching, decode loop, ragged attention and prefix cache.

May import `cai.core` and `cai.text` (chat templates); must not import runs, label or anything above: an
engine knows nothing of runs, judges or commands.
"""

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

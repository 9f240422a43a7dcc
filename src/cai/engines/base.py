"""The engine interface and the registry that turns a model spec into an engine.

An engine does two things, both async and both batched by the engine itself:

- `generate(requests)` returns, for each request, `params.n` completions;
- `score(messages, continuations)` returns the total log-probability of each
  continuation when it *starts the assistant's reply* to `messages`. Judges use it for
  soft labels: compare `score(msgs, ["The answer is (A)", "The answer is (B)"])`.
  `token_ids(text)` (optional) says how a continuation is tokenized.

Model specs name an engine by prefix, like simonw/llm's registry:
`smollm2` (the embedded default), `hf:<folder, gguf or hub id>`,
`openai:<model>@<base_url>[,<base_url>...]`, `vllm:<folder or hub id>`, `fake:<script>`.
Every engine, the test fake included, is found through `register_engine`; another
package adds one through an entry point in the group `cai.engines`.

Each engine has a pydantic `Options` model; unknown or ill-typed options fail loudly.
Not here: caching (see `cai.runs.store.CachedEngine`) and concurrency across samples
(see `cai.runs.rows`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cai.core.errors import CAIError
from cai.core.types import Completion, Message, Request


class EngineError(CAIError, RuntimeError):
    """An engine could not answer; the message says why and what to do.

    Raised while a run starts (an unknown spec, bad options, a missing model) it is a user
    error; raised for one call (a server that gave up after its retries, a model that ran
    out of memory) it fails that row with `code`, and the run goes on.
    """

    code: str = "engine_error"


class ContextOverflow(EngineError):
    """The prompt (plus the tokens asked for) does not fit the model's context window.

    Raised before any compute, so a too-long prompt costs nothing but its row.
    """

    code = "context_overflow"


class EngineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Engine(abc.ABC):
    Options: ClassVar[type[EngineOptions]] = EngineOptions

    #: identifies the model and its weights in cache keys and manifests (never secrets)
    model_id: str
    #: how prompts reach the model: "chat" (its chat template) or "plain" (a Human:/Assistant:
    #: transcript, for base models; `cai.engines.chat_tokens`); judges pick their templates by it
    prompt_format: str = "chat"

    @abc.abstractmethod
    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]: ...

    @abc.abstractmethod
    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, HTTP clients, GPU memory)."""

    def context_window(self) -> int | None:
        """Tokens the model can attend to (prompt plus generated), or None where unknown.

        Engines that know it refuse a request that would not fit with `ContextOverflow`
        before computing anything (`cai.engines.batching` checks it for local engines).
        """
        return None

    async def token_ids(self, text: str) -> list[int]:
        """`text` as the model's token ids, tokenized as `score` tokenizes a continuation.

        Judges check with it, before any call, that each label they score is one token (a
        rating scale's "10" is two in many tokenizers). An engine that cannot tell says so.
        """
        raise EngineError(f"{self.model_id}: this engine ({type(self).__name__}) cannot tell how its model "
                          "tokenizes text, so a judge cannot check that its labels are single tokens")

    def cache_identity(self) -> dict[str, str]:
        """What decides an answer besides the request, in every call-cache key: a cached
        answer is reused only by an engine with the same identity. The model, and the
        prompt format where it is not the chat template; engines add what else changes
        their numbers (the transformers engine its dtype)."""
        identity = {"model": self.model_id}
        if self.prompt_format != "chat":
            identity["prompt_format"] = self.prompt_format
        return identity

    def describe(self) -> dict[str, Any]:
        """What goes into the manifest: never API keys."""
        return {"engine": type(self).__name__, "model_id": self.model_id}


EngineFactory = Callable[[str, EngineOptions], Engine]
_REGISTRY: dict[str, tuple[type[Engine], EngineFactory]] = {}
_ALIASES: dict[str, str] = {}


def register_engine(prefix: str, engine_cls: type[Engine], factory: EngineFactory | None = None) -> None:
    """Make `<prefix>:<rest>` specs resolve to `factory(rest, options)`."""
    _REGISTRY[prefix] = (engine_cls, factory or (lambda rest, opts: engine_cls(rest, opts)))  # type: ignore[call-arg]


def register_alias(name: str, spec: str) -> None:
    """A bare name (like `smollm2`) that stands for a full spec."""
    _ALIASES[name] = spec


def parse_spec(spec: str) -> tuple[str, str]:
    _load_builtin_engines()  # they register the aliases too, so load them before looking one up
    spec = _ALIASES.get(spec, spec)
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in _REGISTRY:
        known = ", ".join(sorted([f"{p}:..." for p in _REGISTRY] + list(_ALIASES)))
        raise EngineError(f"unknown model spec {spec!r}; expected one of: {known}")
    return prefix, rest


def load_engine(spec: str, options: dict[str, Any] | None = None) -> Engine:
    """Build the engine for a model spec, validating its options."""
    _load_builtin_engines()
    prefix, rest = parse_spec(spec)
    engine_cls, factory = _REGISTRY[prefix]
    try:
        opts = engine_cls.Options(**(options or {}))
    except ValidationError as exc:
        raise EngineError(f"bad options for {prefix}: engine: {exc}") from exc
    return factory(rest, opts)


def parse_option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """`["max_batch_size=16", "dtype=bf16"]` -> dict; values are parsed as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EngineError(f"engine option {pair!r} must look like key=value")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise EngineError(f"engine option {pair!r}: cannot read the value ({problem})") from exc
    return out


_BUILTINS_LOADED = False


def _load_builtin_engines() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import importlib

    for module in ("fake", "transformers_engine", "openai_compat", "vllm_engine", "ray_engine"):
        try:
            importlib.import_module(f"cai.engines.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cai.engines.{module}":
                raise
    _load_plugin_engines()


def _load_plugin_engines() -> None:
    """Engines from other packages, as `llm` plugins do it: an entry point in the group
    `cai.engines` names a module (importing it calls `register_engine`) or a function
    to call. A plugin that fails to load is an error naming it, never silently skipped."""
    from cai.core.plugins import load_plugins

    load_plugins("cai.engines", "engine", EngineError)

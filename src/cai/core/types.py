"""The few value types every part of cai passes around.

A `Request` is one chat prompt plus its `SamplingParams`; an engine answers it with
`n` `Completion`s. Messages are plain dicts in the OpenAI/TRL shape
(`{"role": ..., "content": ...}`) so they go straight into datasets and chat templates.

Deliberately not here: anything that talks to a model (see `cai.engines`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cai.core.errors import ConfigError

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}

FinishReason = Literal["stop", "length", "error"]


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def system(content: str) -> Message:
    return {"role": "system", "content": content}


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `seed` is honoured per request where the backend can."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Request:
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)

    @classmethod
    def of(cls, messages: list[Message], params: SamplingParams | None = None) -> "Request":
        return cls(tuple(dict(m) for m in messages), params or SamplingParams())  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"messages": list(self.messages), "params": self.params.to_dict()}


@dataclass
class Completion:
    text: str
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Completion":
        return cls(**d)


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`; used for cache keys and config hashes."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any JSON-able parts (run seed, row id, step...)."""
    return int(stable_hash(list(parts))[:8], 16) & 0x7FFFFFFF

"""Prompt text lives in `cai/prompts/` as Jinja templates and YAML; this renders it.

Kept apart from parsing (`cai.text.parsing`): these functions only build text and messages.
Conversations shown to a judge use the transcript form of the CAI paper
("Human: ...\\n\\nAssistant: ...").
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
import yaml

from cai.core.types import Message

_ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("cai", "prompts"), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=False, autoescape=False)


def render(template: str, **values: Any) -> str:
    return _env().get_template(template).render(**values).strip()


@lru_cache(maxsize=None)
def load_prompt_yaml(name: str) -> Any:
    return yaml.safe_load((resources.files("cai") / "prompts" / name).read_text("utf-8"))


def transcript(messages: list[Message]) -> str:
    return "\n\n".join(f"{_ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in messages)

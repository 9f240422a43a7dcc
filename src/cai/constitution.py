"""Constitutions: principles, the files they come from, and seeded principle sampling.

A `Principle` has an id and up to three texts: a critique request and a revision
request (SL-CAI) and a judge question (RL-CAI). Constitutions load from:

- our own YAML (see `constitutions/default.yaml`), by path or by shipped name;
- Anthropic's published `CritiqueRevisionInstructions.json` shape,
  `{"harmful0": {"prompt": [critique], "edit_request": revision}}`, with its
  `CritiqueRequest:` / `Critique:` / `RevisionRequest:` framing stripped;
- a plain list of principle strings (`.txt` one per line, or a JSON / YAML list),
  turned into requests by the templates in `prompts/principle_from_text.yaml`.

Sampling is keyed by (seed, row id, purpose), never by scheduling order, so a row gets
the same principles however the run is interleaved or resumed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cai.types import derive_seed, stable_hash


class ConstitutionError(ValueError):
    pass


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str = ""
    revision: str = ""
    judge: str = ""


@dataclass
class Constitution:
    name: str
    principles: list[Principle]
    description: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.principles:
            raise ConstitutionError(f"constitution {self.name!r} ({self.source}) has no principles")
        ids = [p.id for p in self.principles]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConstitutionError(f"constitution {self.source}: duplicate principle ids {dupes}")

    @property
    def hash(self) -> str:
        return stable_hash([asdict(p) for p in self.principles])[:16]

    @property
    def sl_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.critique and p.revision]

    @property
    def judge_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.judge]

    def by_id(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    def sample(self, pool: list[Principle], k: int, *key: Any) -> list[Principle]:
        """k principles for one row and purpose: distinct while k <= len(pool)."""
        if not pool:
            raise ConstitutionError(f"constitution {self.name!r} has no principles usable for this step")
        rng = random.Random(derive_seed(*key))
        if k <= len(pool):
            return rng.sample(pool, k)
        return [rng.choice(pool) for _ in range(k)]

    def sample_sl(self, k: int, *key: Any) -> list[Principle]:
        return self.sample(self.sl_principles, k, "sl", *key)

    def sample_judge(self, k: int, *key: Any) -> list[Principle]:
        return self.sample(self.judge_principles, k, "judge", *key)


# ---- loading ---------------------------------------------------------------------------
def shipped_constitutions() -> list[str]:
    folder = resources.files("cai") / "constitutions"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_constitution(ref: str | Path) -> Constitution:
    """A shipped name (`default`) or a path to YAML, JSON or TXT."""
    ref_str = str(ref)
    if ref_str in shipped_constitutions():
        text = (resources.files("cai") / "constitutions" / f"{ref_str}.yaml").read_text(encoding="utf-8")
        return _from_own_yaml(yaml.safe_load(text), f"cai:constitutions/{ref_str}.yaml")
    path = Path(ref_str).expanduser()
    if not path.exists():
        raise ConstitutionError(
            f"constitution {ref_str!r} is neither a shipped name ({', '.join(shipped_constitutions())}) nor a file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = [ln.strip() for ln in text.splitlines()]
            return _from_plain_list([ln for ln in lines if ln and not ln.startswith("#")], str(path))
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConstitutionError(f"{path}: cannot parse: {exc}") from exc
    if isinstance(data, list):
        return _from_plain_list(data, str(path))
    if isinstance(data, dict) and "principles" in data:
        return _from_own_yaml(data, str(path))
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "edit_request" in v for v in data.values()):
        return _from_anthropic_json(data, str(path))
    raise ConstitutionError(
        f"{path}: not a known constitution format (expected our YAML with 'principles', Anthropic's "
        "CritiqueRevisionInstructions JSON, or a list of principle strings)")


def _from_own_yaml(data: dict[str, Any], source: str) -> Constitution:
    principles = []
    for i, item in enumerate(data.get("principles") or []):
        if not isinstance(item, dict) or "id" not in item:
            raise ConstitutionError(f"{source}: principle #{i + 1} needs at least an 'id'")
        unknown = set(item) - {"id", "critique", "revision", "judge"}
        if unknown:
            raise ConstitutionError(f"{source}: principle {item['id']!r} has unknown keys {sorted(unknown)}")
        principles.append(Principle(**{k: str(v).strip() for k, v in item.items()}))
    return Constitution(name=str(data.get("name") or Path(source).stem), principles=principles,
                        description=str(data.get("description") or "").strip(), source=source)


_FRAMING = re.compile(r"^\s*(CritiqueRequest|RevisionRequest|Critique|Revision)\s*:\s*", re.IGNORECASE)


def _strip_framing(text: str) -> str:
    text = _FRAMING.sub("", text.strip())
    text = re.sub(r"\s*(Critique|Revision)\s*:\s*$", "", text, flags=re.IGNORECASE)
    return text.strip()


def _from_anthropic_json(data: dict[str, Any], source: str) -> Constitution:
    principles = []
    for key, item in data.items():
        prompts = item.get("prompt")
        critique = prompts[0] if isinstance(prompts, list) and prompts else prompts
        if not isinstance(critique, str) or not isinstance(item.get("edit_request"), str):
            raise ConstitutionError(f"{source}: entry {key!r} needs 'prompt' (a list of strings) and 'edit_request'")
        principles.append(Principle(id=key, critique=_strip_framing(critique),
                                    revision=_strip_framing(item["edit_request"])))
    return Constitution(name=Path(source).stem, principles=principles, source=source,
                        meta={"format": "anthropic-critique-revision"})


def _from_plain_list(items: list[Any], source: str) -> Constitution:
    templates = yaml.safe_load((resources.files("cai") / "prompts" / "principle_from_text.yaml").read_text("utf-8"))
    principles = []
    for i, text in enumerate(items):
        if not isinstance(text, str) or not text.strip():
            raise ConstitutionError(f"{source}: item {i + 1} is not a non-empty string")
        filled = {k: templates[k].replace("{principle}", text.strip()) for k in ("critique", "revision", "judge")}
        principles.append(Principle(id=f"p{i + 1}", **filled))
    return Constitution(name=Path(source).stem, principles=principles, source=source,
                        meta={"format": "plain-list"})

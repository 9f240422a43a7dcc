"""Finding and reading what a report is built from: run directories and trained-model folders.

A path given to `cai report` may be a run directory (it holds `manifest.json`; its
`command` says what made it: `sl`, `rl`, `eval judge`, `eval models`, `eval revisions`),
a trained-model folder (`training_log.jsonl` or `train_report.json`, from `cai train`),
or a folder holding such things (a recipe's output), searched two levels deep. Run
directories nested in a given one (`runs/sl1/eval-revisions`) are found too.

Files are read leniently but never silently: a malformed JSONL line is skipped and
counted (`Source.skipped`), a missing file is simply absent. Big files are streamed,
and only the first `keep` records are kept where a section needs examples, not all.

Not here: what a section shows (`cai.report.sections`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.core.errors import CAIError

MODEL_MARKERS = ("training_log.jsonl", "train_report.json")
SEARCH_DEPTH = 2


class ReportError(CAIError, ValueError):
    """A path given to `cai report` holds nothing a report can show."""


@dataclass
class Source:
    """One run directory or model folder: its kind, manifest, summary and a reader for its files."""

    path: Path
    kind: str  # the run's command ("sl", "rl", "eval judge", ...), or "model"
    manifest: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    #: file name -> malformed lines skipped while reading it
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.path)

    def json(self, name: str) -> dict[str, Any]:
        file = self.path / name
        if not file.is_file():
            return {}
        try:
            loaded = json.loads(file.read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.skipped[name] = self.skipped.get(name, 0) + 1
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def records(self, name: str) -> Iterator[dict[str, Any]]:
        """Every JSON object of a JSONL file, streamed; malformed lines are counted in `skipped`."""
        file = self.path / name
        if not file.is_file():
            return
        with file.open("rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    rec = None
                if isinstance(rec, dict):
                    yield rec
                else:
                    self.skipped[name] = self.skipped.get(name, 0) + 1

    def text(self, name: str, limit: int = 20_000) -> str:
        file = self.path / name
        return file.read_text("utf-8", errors="replace")[:limit] if file.is_file() else ""


def _kind(folder: Path) -> str | None:
    if (folder / "manifest.json").is_file():
        try:
            manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unknown"
        return str(manifest.get("command") or "unknown") if isinstance(manifest, dict) else "unknown"
    if any((folder / m).is_file() for m in MODEL_MARKERS):
        return "model"
    return None


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    if _kind(folder) is not None:
        yield folder
    if depth == 0:
        return
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        yield from _walk(child, depth - 1)


def discover(paths: list[str]) -> list[Source]:
    """Every run and model under `paths`, in the order given (each found once)."""
    if not paths:
        raise ReportError("give at least one run directory or model folder")
    found: dict[Path, Source] = {}
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise ReportError(f"{given}: no such directory")
        if not root.is_dir():
            raise ReportError(f"{given}: not a directory; give a run directory (with manifest.json) or a model "
                              "folder (with training_log.jsonl)")
        hits = list(_walk(root, SEARCH_DEPTH))
        if not hits:
            raise ReportError(f"{given}: no cai run (manifest.json) or trained model (training_log.jsonl) in it or "
                              f"{SEARCH_DEPTH} levels below")
        for folder in hits:
            key = folder.resolve()
            if key not in found:
                found[key] = load(folder)
    return list(found.values())


def load(folder: Path) -> Source:
    kind = _kind(folder) or "unknown"
    source = Source(path=folder, kind=kind)
    if kind != "model":
        source.manifest = source.json("manifest.json")
        source.summary = source.json("summary.json")
    return source

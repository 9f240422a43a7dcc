"""Plugins from other packages, as simonw/llm loads them: an entry point names a module
(importing it registers what it adds) or a function to call. A plugin that fails to load
is an error naming it, never silently skipped. Used for `cai.engines` and `cai.labelers`.
"""

from __future__ import annotations

from importlib.metadata import entry_points


def load_plugins(group: str, kind: str, error: type[Exception]) -> None:
    """Load every entry point in `group`; a failure raises `error` naming the `kind` of plugin."""
    for point in entry_points(group=group):
        try:
            loaded = point.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as exc:
            raise error(f"{kind} plugin {point.name!r} ({point.value}) failed to load: {exc}") from exc

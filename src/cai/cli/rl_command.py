"""`cai rl`: candidates + AI preference labels under the constitution. Options: `cai.generate.rl.RLConfig`."""

from __future__ import annotations

from cai.cli.app import app
from cai.cli.derive import config_command
from cai.generate.rl import RLConfig


@config_command(app, "rl", RLConfig)
def rl(config: RLConfig, quiet: bool) -> None:
    """Sample K candidates per prompt and label preferences with an AI judge.

    Writes candidates.jsonl, preferences.jsonl (TRL conversational preference format
    with provenance: labeler, judges, principle ids, p_chosen per order, label_margin,
    position-bias flag, raw judge text), failures.jsonl, summary.json, manifest.json.
    """
    from cai.generate.rl import run_rl

    run_rl(config, show_progress=not quiet)

"""`cai sl`: SL-CAI critique-and-revision data. Options: `cai.generate.sl.SLConfig`."""

from __future__ import annotations

from cai.cli.app import app
from cai.cli.derive import config_command
from cai.generate.sl import SLConfig


@config_command(app, "sl", SLConfig)
def sl(config: SLConfig, quiet: bool) -> None:
    """Red-team prompts -> answer -> R x (critique under a sampled principle -> revision).

    Writes sl.jsonl (full trace), sft.jsonl (TRL messages format: prompt -> final
    revision), failures.jsonl, summary.json and manifest.json into --out.
    """
    from cai.generate.sl import run_sl

    run_sl(config, show_progress=not quiet)

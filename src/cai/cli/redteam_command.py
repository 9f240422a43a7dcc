"""`cai redteam`: new red-team prompts from a model shown seed prompts. Options: `cai.generate.redteam.RedteamConfig`."""

from __future__ import annotations

from cai.cli.app import app
from cai.cli.derive import config_command
from cai.generate.redteam import RedteamConfig


@config_command(app, "redteam", RedteamConfig)
def redteam(config: RedteamConfig, quiet: bool) -> None:
    """Seed prompts -> a model writes new red-team prompts -> filters -> exact and MinHash near-duplicate removal.

    Writes prompts.jsonl (read directly by `cai sl --prompts` and `cai rl --prompts`; each
    prompt keeps its seeds, model, principle and sampling seed), generated.jsonl (every
    sample and what became of it), failures.jsonl, summary.json (kept, dropped by reason,
    deduplication rate, distinct-n, Self-BLEU, coverage per principle) and manifest.json.
    Re-running on the same --out resumes; a larger --count adds tasks.
    """
    from cai.generate.redteam import run_redteam

    run_redteam(config, show_progress=not quiet)

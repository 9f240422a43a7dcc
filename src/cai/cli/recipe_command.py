"""`cai recipe`: the whole pipeline at demo scale. Options: `cai.recipes.end_to_end.RecipeConfig`."""

from __future__ import annotations

from cai.cli.app import app
from cai.cli.derive import config_command
from cai.recipes.end_to_end import RecipeConfig


@config_command(app, "recipe", RecipeConfig)
def recipe(config: RecipeConfig, quiet: bool) -> None:
    """The whole CAI pipeline at demo scale: SL data -> SFT -> RL data from the SFT model ->
    reward model + DPO. Re-running resumes at every stage."""
    from cai.recipes.end_to_end import run_recipe

    run_recipe(config, show_progress=not quiet)

"""`cai train sft|reward|dpo|policy` (and `ppo`, the old name of `policy`).

Each command's options are its config dataclass's fields (`cai.train.configs`); options left unset fall back to `--config FILE` (YAML with
the same names), then to the defaults. Every training command prints its report (steps,
final loss, where the model went) as JSON.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import typer

from cai.cli.app import app
from cai.cli.derive import config_command
from cai.train.common import training_data_source
from cai.train.configs import DPOWrapperConfig, PolicyRLConfig, RewardWrapperConfig, SFTWrapperConfig

train_app = typer.Typer(help="Train on CAI data with TRL (SFT, reward model, DPO, online RL: PPO-family with a reward model or a judge).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

#: command, its config, the kind of data it reads, the module whose main(config) trains, and its help
TRAINERS = [
    ("sft", SFTWrapperConfig, "sft", "cai.train.sft",
     "Supervised fine-tuning on SL-CAI revisions (loss on the final assistant reply only)."),
    ("reward", RewardWrapperConfig, "preference", "cai.train.reward",
     "A preference model on AI labels (soft labels by default when the data has p_chosen)."),
    ("dpo", DPOWrapperConfig, "preference", "cai.train.dpo",
     "Direct preference optimisation on AI labels (soft labels by default when the data has p_chosen)."),
    ("policy", PolicyRLConfig, "preference", "cai.train.policy",
     "Optimise the policy online (RLOO or GRPO from TRL) against --reward: the preference model, the judge's "
     "expected rating (judge-score, direct RLAIF) or its win rates within each group (judge-pairwise)."),
    ("ppo", PolicyRLConfig, "preference", "cai.train.policy",
     "The old name of `cai train policy` (same options; the reward defaults to the preference model)."),
]


def _trainer_command(name: str, config_cls: type, data_kind: str, module: str, doc: str) -> None:
    def train(config: Any, quiet: bool) -> None:
        training_data_source(config.data, data_kind)  # a wrong --data fails in a second, not after loading torch
        report = importlib.import_module(module).main(config)  # torch and TRL load only now
        typer.echo(json.dumps(report, indent=2))

    train.__name__, train.__doc__ = name, doc
    config_command(train_app, name, config_cls, quiet=False)(train)


for _name, _config_cls, _kind, _module, _doc in TRAINERS:
    _trainer_command(_name, _config_cls, _kind, _module, _doc)

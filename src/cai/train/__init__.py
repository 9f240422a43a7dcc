"""Thin wrappers over TRL's trainers: one config dataclass and one `main(config)` each.

`sft`, `reward`, `dpo`, `policy` (online RL: RLOO or GRPO); `rewards` holds the reward sources
`policy` hands TRL as reward functions (the reward model, the judge's expected rating, the judge's
win rates within each group).

May import export, generate, evaluate and everything below (a judge as a reward comes from `cai.label`);
only recipes and the CLI import it.
"""

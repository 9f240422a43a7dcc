"""Thin wrappers over TRL's trainers: one config dataclass and one `main(config)` each.

May import export, generate, evaluate and everything below (a judge as a reward comes from `cai.label`);
only recipes and the CLI import it.
"""

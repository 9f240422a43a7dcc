"""Data made with a model: SL-CAI critique-and-revision rows (`sl`) and RL-CAI preference rows (`rl`).

Each command is a config, a chain per row and a `run_*` function that hands both to `cai.runs.job`. May import
label, runs and everything below; must not import evaluate, train, recipes or cli.
"""

"""One resumable run: the store (`store`), the run directory (`run_dir`), the concurrent row loop
(`rows`), one command over its rows (`job`) and the same over a Ray cluster (`sharded`).

Must not import a command (`cai.generate`, `cai.evaluate.judge`, `cai.train`, `cai.recipes`, `cai.cli`) nor
`cai.label`: a job is handed its chain, and the sharded runner the command's run function.
"""

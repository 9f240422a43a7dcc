"""What the user hands in: prompt files (`prompts`), the user files they are read from (`files`),
constitutions (`constitution`) and few-shot files (`few_shot`).

Every bad row or file is an `InputError` naming the file, the line and the problem. Must not import: engines,
runs, label or anything above; only `cai.core` and `cai.text`.
"""

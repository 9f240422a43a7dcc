"""The errors a user can act on, and the rule for every other exception.

`CAIError` is the base of every error a user can fix: a bad input file (`InputError`), a
bad option or config (`ConfigError`), an unknown model or bad engine options
(`EngineError`), a run directory that cannot be used (`StoreError`, `RunLocked`), a
constitution or few-shot file in the wrong shape (`ConstitutionError`, `FewShotError`),
an export or training setup that cannot work (`ExportError`, `TrainError`). The `cai`
command prints one as a single red line and exits with its `exit_code`: 2, or 3 when a
run stopped on its failure budget (`FailureBudgetExceeded`). Each class stays importable
where it always was (`cai.inputs.files.InputError`, ...); the older ones are still `ValueError`s
too, for code that catches those.

Every other exception is a bug in cai: nothing catches it, so the command exits non-zero
with the full traceback. Inside a run only what a model or its output caused becomes a
row failure with a reason code (`cai.runs.rows`): an `EngineError` (the engine gave up
after its retries, or the prompt does not fit the model's context window) or a
`ChainFailure` (unusable output).

Not here: the reason codes of row failures (`cai.runs.rows`, `cai.label.pairwise`).
"""

from __future__ import annotations

from typing import Any


class CAIError(Exception):
    """An error the user can fix; its message is one line naming the file, option or model."""

    exit_code: int = 2


class ConfigError(CAIError, ValueError):
    """An option or config value is invalid; the message names the option."""


class FailureBudgetExceeded(CAIError):
    """More than `--max-failure-rate` of a run's finished rows failed, so it stopped early.

    Everything finished is stored and the outputs and summary are written; `result` is
    the job's result (`cai.runs.job.JobResult`) for library callers.
    """

    exit_code = 3

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result

"""Which label each preference row trains on, decided once for `cai train reward` and `dpo`.

- `p_chosen` (written by `cai rl`) is the judge's probability that `chosen` is better. A
  row whose p is null (a blended human-labelled row, say) is a hard label, p = 1.
- Modes: `soft` (each row's p reaches the loss, see soft_loss.py), `hard` (TRL's plain
  loss, p unused), `margin` (reward model only: TRL's own `margin` column, made here as
  |2p - 1| × margin_scale). The default is `soft` when some row has a p, else `hard`.
- `--min-margin` (DPO) reads `label_margin` (|2p - 1|), an older export's `margin`, or
  derives it from `p_chosen`; a row without one is a hard label and is kept.
- Only the columns a mode uses reach TRL. In particular no `margin` column goes through
  unless the mode is `margin`: TRL's RewardTrainer picks up a column of that name by itself.

Not here: the loss (soft_loss.py) and the trainers (reward.py, dpo.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cai.train.common import TrainError
from cai.train.soft_loss import P_COLUMN

PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected"]


@dataclass
class PreparedPreferences:
    data: Any  # a DatasetDict with only the columns the mode uses
    mode: str  # soft, hard or margin
    chosen_by: str  # why this mode
    train_rows: int
    rows_with_p: int  # train rows whose p_chosen was given (the rest count as p = 1)

    def report(self) -> dict[str, Any]:
        return {"soft_labels": self.mode, "soft_labels_chosen_by": self.chosen_by, "train_rows": self.train_rows,
                "rows_with_p_chosen": self.rows_with_p,
                "labels": f"{self.mode} ({self.chosen_by}); {self.rows_with_p} of {self.train_rows} train rows had "
                          f"a p_chosen, the others count as hard labels (p = 1)"}


def _p_values(data: Any, source: str) -> list[float | None]:
    """The train split's p_chosen, checked: each a probability in [0, 1] or null."""
    values = data["train"][P_COLUMN] if P_COLUMN in data["train"].column_names else []
    for i, p in enumerate(values, start=1):
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))
                              or not math.isfinite(p) or not 0.0 <= p <= 1.0):
            raise TrainError(f"{source}: train row {i}: p_chosen must be a probability in [0, 1] or null; got {p!r}")
    return values


def resolve_mode(requested: str | None, allowed: tuple[str, ...], rows_with_p: int) -> tuple[str, str]:
    """(mode, why). An explicit mode that the data cannot honour is an error, never a silent no-op."""
    if requested is None:
        if rows_with_p:
            return "soft", "default: the data has p_chosen"
        return "hard", "default: no row has a p_chosen"
    if requested not in allowed:
        hint = (" ('smoothing' is gone: TRL's sigmoid DPO loss ignored it; 'soft' trains on each row's p_chosen)"
                if requested == "smoothing" else "")
        raise TrainError(f"--soft-labels must be one of {', '.join(allowed)}; got {requested!r}{hint}")
    if requested in ("soft", "margin") and not rows_with_p:
        raise TrainError(f"--soft-labels {requested} needs p_chosen in the data, and no train row has one "
                         "(use --soft-labels hard)")
    return requested, "--soft-labels"


def prepare_preferences(data: Any, source: str, requested: str | None, allowed: tuple[str, ...],
                        margin_scale: float = 1.0) -> PreparedPreferences:
    """Choose the mode, fill null p with 1, and keep only the columns that mode trains on."""
    columns = data["train"].column_names
    if not set(PREFERENCE_COLUMNS) <= set(columns):
        raise TrainError(f"{source}: preference data needs prompt, chosen and rejected columns; got {columns}")
    rows_with_p = sum(p is not None for p in _p_values(data, source))
    mode, why = resolve_mode(requested, allowed, rows_with_p)
    train_rows = len(data["train"])
    if mode == "hard":
        return PreparedPreferences(data.select_columns(PREFERENCE_COLUMNS), mode, why, train_rows, rows_with_p)
    # every split the trainer may read needs the column; one without it is all hard labels
    data = data.map(lambda r: {P_COLUMN: 1.0 if r.get(P_COLUMN) is None else float(r[P_COLUMN])})
    if mode == "margin":
        data = data.map(lambda r: {"margin": abs(2 * r[P_COLUMN] - 1) * margin_scale})
        return PreparedPreferences(data.select_columns(PREFERENCE_COLUMNS + ["margin"]), mode, why, train_rows,
                                   rows_with_p)
    return PreparedPreferences(data.select_columns(PREFERENCE_COLUMNS + [P_COLUMN]), mode, why, train_rows,
                               rows_with_p)


def filter_min_margin(data: Any, min_margin: float) -> tuple[Any, int]:
    """Drop pairs whose label margin |2p - 1| is below min_margin; (data, train pairs dropped)."""
    if min_margin <= 0:
        return data, 0
    columns = data["train"].column_names
    column = next((c for c in ("label_margin", "margin") if c in columns), None)
    if column is None and P_COLUMN not in columns:
        raise TrainError("--min-margin needs a label_margin or p_chosen column (cai rl writes both)")

    def margin(row: dict[str, Any]) -> float | None:
        if column is not None:
            return row[column]
        return None if row[P_COLUMN] is None else abs(2 * row[P_COLUMN] - 1)

    before = len(data["train"])
    data = data.filter(lambda r: margin(r) is None or margin(r) >= min_margin)
    return data, before - len(data["train"])

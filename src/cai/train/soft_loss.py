"""The soft-label loss shared by `cai train reward` and `cai train dpo`, and the plumbing
that carries each row's `p_chosen` through TRL to it.

A soft label is the judge's probability p that `chosen` is the better reply (`cai rl`
writes it as `p_chosen`). Both trainers fit it with the Bradley-Terry cross-entropy

    loss(x, p) = -[p·log σ(x) + (1-p)·log σ(-x)]

where x is the model's preference logit for chosen over rejected: the reward gap
r_chosen - r_rejected for a reward model, β·h for DPO (h the usual DPO log-ratio
difference, which makes it conservative DPO with a per-row ε = 1 - p). The minimum is at
σ(x) = p: a p = 0.51 label asks for a near-zero gap instead of a full-strength preference,
p = 0.5 gives no gradient at x = 0, and p = 1 is the usual -log σ(x). This is how the CAI
paper trained its preference model on the judge's normalised probabilities.

TRL drops columns its model does not take and its collators build only the tensors they
know, so `KeepsPChosen` keeps `p_chosen` in the signature columns and wraps the collator
to add it to every batch. The trainers themselves are in reward.py and dpo.py; which rows
have a p, and what a missing p means, is decided in labels.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cai.train.common import TrainError

P_COLUMN = "p_chosen"


def soft_bradley_terry_loss(logits_diff: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-row -[p·log σ(x) + (1-p)·log σ(-x)]; the caller takes the mean."""
    p = p.to(device=logits_diff.device, dtype=logits_diff.dtype)
    return -(p * F.logsigmoid(logits_diff) + (1 - p) * F.logsigmoid(-logits_diff))


def collate_with_p(collator: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Wrap a TRL preference collator so each batch also carries the rows' p_chosen."""

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(examples)
        batch[P_COLUMN] = torch.tensor([float(e[P_COLUMN]) for e in examples], dtype=torch.float32)
        return batch

    return collate


class KeepsPChosen:
    """Mixin for a TRL trainer (put it first): `p_chosen` survives column removal and the collator.

    The train dataset must have a `p_chosen` column with no nulls (labels.py fills them).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from trl.data_utils import get_dataset_column_names

        dataset = kwargs.get("train_dataset")
        if dataset is None or P_COLUMN not in get_dataset_column_names(dataset):
            raise TrainError(f"{type(self).__name__} needs a train_dataset with a '{P_COLUMN}' column")
        super().__init__(*args, **kwargs)
        self.data_collator = collate_with_p(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        if P_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, P_COLUMN]

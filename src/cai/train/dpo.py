"""`cai train dpo`: DPO on AI preference labels with TRL's DPOTrainer.

How the label enters the loss (`--soft-labels`, see labels.py for the default):
- `soft`: `SoftDPOTrainer`, TRL's DPOTrainer with only the loss replaced by the same soft
  target on the implicit reward, -[p·log σ(βh) + (1-p)·log σ(-βh)], h the DPO log-ratio
  difference and p the row's `p_chosen`: conservative DPO with a per-row ε = 1 - p. It
  needs TRL's default `sigmoid` loss (the one it replaces) and precomputes the reference
  log-probs, so the loss reads them from the batch.
- `hard`: TRL unchanged with `--loss-type` (default `sigmoid`, -log σ(βh)).
`--min-margin` first drops pairs whose label margin |2p - 1| is below it (counted in the
report). `--label-smoothing` is TRL's global ε, which only the `robust`, `exo_pair`, `aot`
and `aot_unpaired` losses read (trl/trainer/dpo_trainer.py in TRL 1.16); with any other
loss it is an error, not a silent no-op.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import DPOTrainer

from cai.train.common import (
    TrainError,
    finish,
    load_tokenizer,
    load_training_data,
    model_path,
    peft_config,
    snapshot_trainable,
    trainer_args,
)
from cai.train.configs import (
    DPO_MODES as MODES,  # noqa: E402
    DPOWrapperConfig,
)
from cai.train.labels import filter_min_margin, prepare_preferences
from cai.train.soft_loss import P_COLUMN, KeepsPChosen, soft_bradley_terry_loss

LABEL_SMOOTHING_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")


class SoftDPOTrainer(KeepsPChosen, DPOTrainer):
    """DPOTrainer whose sigmoid loss becomes the soft cross-entropy on each row's p_chosen.

    TRL computes h inside one long `_compute_loss`; this subclass lets it run (model
    forward, metrics) and records the policy's forward output with a hook, rebuilds h from
    it and the precomputed reference log-probs exactly as TRL does, and returns the soft
    loss instead of TRL's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs["args"]
        unsupported = {"loss_type": (config.loss_type, ["sigmoid"]), "f_divergence_type":
                       (config.f_divergence_type, "reverse_kl"), "ld_alpha": (config.ld_alpha, None),
                       "use_weighting": (config.use_weighting, False),
                       "precompute_ref_log_probs": (config.precompute_ref_log_probs, True)}
        for name, (value, wanted) in unsupported.items():
            if value != wanted:
                raise TrainError(f"soft-label DPO needs {name}={wanted!r}; got {value!r}")
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        p = inputs.pop(P_COLUMN)
        seen: list[Any] = []

        def record(_module: Any, _args: Any, kwargs: dict[str, Any], output: Any) -> None:
            if kwargs.get("fused_lm_head") and not seen:
                seen.append(output)

        handle = model.register_forward_hook(record, with_kwargs=True)
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            handle.remove()
        loss = soft_bradley_terry_loss(self.beta * self._logratio_gap(seen[0], inputs), p).mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * seen[0].aux_loss
        return (loss, result[1]) if return_outputs else loss

    @staticmethod
    def _logratio_gap(outputs: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """h = (log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected)), per row."""
        seq_len = inputs["completion_mask"].size(1) - 1
        logps = outputs.log_probs[:, -seq_len:].sum(dim=1)  # non-completion tokens are 0 in TRL's fused head
        chosen, rejected = logps.chunk(2, dim=0)
        return (chosen - inputs["ref_chosen_logps"]) - (rejected - inputs["ref_rejected_logps"])


def check_options(config: DPOWrapperConfig) -> None:
    if config.label_smoothing is not None and config.loss_type not in LABEL_SMOOTHING_LOSSES:
        raise TrainError(f"--label-smoothing is read only by the {', '.join(LABEL_SMOOTHING_LOSSES)} losses; "
                         f"TRL's {config.loss_type!r} loss would ignore it (for per-row soft labels use "
                         "--soft-labels soft)")
    if config.soft_labels == "soft" and config.loss_type != "sigmoid":
        raise TrainError(f"--soft-labels soft replaces the sigmoid loss; --loss-type {config.loss_type} has no "
                         "soft form (use --soft-labels hard)")


def main(config: DPOWrapperConfig) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, set_seed
    from trl import DPOConfig

    check_options(config)
    data, filtered = filter_min_margin(load_training_data(config.data, "preference"), config.min_margin)
    if len(data["train"]) == 0:
        raise TrainError(f"no pairs left after --min-margin {config.min_margin} ({filtered} filtered)")
    prepared = prepare_preferences(data, config.data, config.soft_labels, MODES)
    if prepared.mode == "soft" and config.loss_type != "sigmoid":
        raise TrainError(f"the data has p_chosen, so soft labels are the default, and --loss-type "
                         f"{config.loss_type} has no soft form: pass --soft-labels hard to train on hard labels")
    soft = prepared.mode == "soft"
    path = model_path(config.model)
    extra_args = {} if config.label_smoothing is None else {"label_smoothing": config.label_smoothing}
    args = DPOConfig(**trainer_args(config), beta=config.beta, max_length=config.max_length,
                     loss_type=[config.loss_type], precompute_ref_log_probs=soft, **extra_args)
    set_seed(config.seed)
    trainer_cls = SoftDPOTrainer if soft else DPOTrainer
    trainer = trainer_cls(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                          train_dataset=prepared.data["train"], eval_dataset=prepared.data.get(config.eval_split),
                          processing_class=load_tokenizer(path), peft_config=peft_config(config, "CAUSAL_LM"))
    before = snapshot_trainable(trainer.model)
    trainer.train()
    return finish(trainer, config, "dpo", before, {**prepared.report(), "pairs_filtered": filtered,
                                                    "loss_type": config.loss_type,
                                                    "label_smoothing": config.label_smoothing})

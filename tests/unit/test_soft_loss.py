"""The soft Bradley-Terry loss, and the TRL trainer subclasses that feed it each row's p_chosen.

The trainers run on a tiny random Llama and a word-level tokenizer built here, so these
tests need no model files.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cai.train.soft_loss import soft_bradley_terry_loss


def _hand(x: float, p: float) -> float:
    sigmoid = 1 / (1 + math.exp(-x))
    return -(p * math.log(sigmoid) + (1 - p) * math.log(1 - sigmoid))


@pytest.mark.parametrize("x,p", [(0.0, 0.5), (0.0, 0.9), (1.5, 0.8), (-2.0, 0.7), (3.0, 0.55), (0.4, 1.0)])
def test_loss_matches_a_hand_computation(x: float, p: float) -> None:
    got = soft_bradley_terry_loss(torch.tensor([x], dtype=torch.float64), torch.tensor([p], dtype=torch.float64))
    assert got.item() == pytest.approx(_hand(x, p), rel=1e-12)


def test_p_one_is_the_standard_bradley_terry_loss() -> None:
    x = torch.tensor([-3.0, -0.2, 0.0, 0.7, 5.0])
    assert torch.allclose(soft_bradley_terry_loss(x, torch.ones(5)), -F.logsigmoid(x))


def test_gradient_is_sigmoid_minus_p_so_a_coin_flip_label_asks_for_no_gap() -> None:
    x = torch.tensor([0.0, 0.0, math.log(0.8 / 0.2), 1.0], requires_grad=True)
    p = torch.tensor([0.5, 0.9, 0.8, 0.6])
    soft_bradley_terry_loss(x, p).sum().backward()
    assert x.grad is not None
    assert x.grad[0].item() == 0.0  # p = 0.5: no push on the reward gap at all
    assert x.grad[1].item() == pytest.approx(0.5 - 0.9)  # pushes the gap up, less hard than a hard label
    assert x.grad[2].item() == pytest.approx(0.0, abs=1e-6)  # optimum at logit(p): a finite gap
    assert torch.allclose(x.grad, torch.sigmoid(x.detach()) - p, atol=1e-6)


def test_loss_is_stable_for_large_gaps() -> None:
    x = torch.tensor([-200.0, 200.0])
    loss = soft_bradley_terry_loss(x, torch.tensor([0.9, 0.9]))
    assert torch.isfinite(loss).all()
    assert loss[1].item() == pytest.approx(0.1 * 200, rel=1e-6)


# ---- the trainer subclasses on a tiny model ----------------------------------------------
WORDS = ["<pad>", "<eos>", "<unk>", *"a b c d e f g h i j".split()]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _llama(cls: type, **kw):
    from transformers import LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
                         **kw)
    return cls(config)


ROWS = [{"prompt": "a b", "chosen": " c d e", "rejected": " f", "p_chosen": 0.9},
        {"prompt": "g", "chosen": " h", "rejected": " i j", "p_chosen": 0.6}]


def _args(cls: type, tmp_path, **kw):
    return cls(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=2, max_steps=1,
               save_strategy="no", seed=0, **kw)


def _one_batch(trainer) -> dict:
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch["p_chosen"].tolist()) == pytest.approx([0.6, 0.9])  # survived TRL's columns and collator
    return batch


def test_soft_reward_trainer_uses_each_rows_p(tokenizer, tmp_path) -> None:
    from datasets import Dataset
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from cai.train.reward import SoftRewardTrainer

    model = _llama(LlamaForSequenceClassification, num_labels=1)
    trainer = SoftRewardTrainer(model=model, args=_args(RewardConfig, tmp_path, center_rewards_coefficient=0.01),
                                train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    batch = _one_batch(trainer)
    p = batch["p_chosen"]
    with torch.no_grad():
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        chosen, rejected = rewards.chunk(2)
        gaps = (chosen - rejected).tolist()
        center = 0.01 * ((chosen + rejected) ** 2).mean().item()
        expected = sum(_hand(g, pi) for g, pi in zip(gaps, p.tolist())) / 2 + center
        got = trainer.compute_loss(model, dict(batch)).item()
        assert got == pytest.approx(expected, rel=1e-5)
        assert abs(gaps[0] - gaps[1]) > 1e-4
        one_p = sum(_hand(g, p.mean().item()) for g in gaps) / 2 + center  # one global p would give this
        assert got != pytest.approx(one_p, rel=1e-6)
        # p = 1 is exactly TRL's own loss
        hard = {k: v for k, v in batch.items() if k != "p_chosen"}
        assert trainer.compute_loss(model, {**batch, "p_chosen": torch.ones(2)}).item() == pytest.approx(
            RewardTrainer.compute_loss(trainer, model, hard).item(), rel=1e-6)


def _completion_logps(model, batch) -> torch.Tensor:
    """Sum of log π(token) over each sequence's completion tokens, with a plain forward."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)


def test_soft_dpo_trainer_uses_each_rows_p(tokenizer, tmp_path) -> None:
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from cai.train.dpo import SoftDPOTrainer

    model = _llama(LlamaForCausalLM)
    beta = 0.5
    trainer = SoftDPOTrainer(model=model, args=_args(DPOConfig, tmp_path, beta=beta, precompute_ref_log_probs=True),
                             train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    batch = _one_batch(trainer)
    # before training the policy is the reference (h = 0); move the reference so that h differs per row
    batch["ref_chosen_logps"] = batch["ref_chosen_logps"] + torch.tensor([0.8, -1.3])
    with torch.no_grad():
        chosen, rejected = _completion_logps(model, batch).chunk(2)
        h = (chosen - batch["ref_chosen_logps"]) - (rejected - batch["ref_rejected_logps"])
        expected = sum(_hand(beta * hi, pi) for hi, pi in zip(h.tolist(), batch["p_chosen"].tolist())) / 2
        got = trainer.compute_loss(model, dict(batch)).item()
        assert got == pytest.approx(expected, rel=1e-4)
        one_p = sum(_hand(beta * hi, batch["p_chosen"].mean().item()) for hi in h.tolist()) / 2
        assert got != pytest.approx(one_p, rel=1e-5)
        # p = 1 is exactly TRL's own sigmoid loss
        hard = {k: v for k, v in batch.items() if k != "p_chosen"}
        assert trainer.compute_loss(model, {**batch, "p_chosen": torch.ones(2)}).item() == pytest.approx(
            DPOTrainer.compute_loss(trainer, model, hard).item(), rel=1e-6)


def test_soft_dpo_trainer_refuses_losses_it_would_not_replace(tokenizer, tmp_path) -> None:
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import DPOConfig

    from cai.train.common import TrainError
    from cai.train.dpo import SoftDPOTrainer

    with pytest.raises(TrainError, match="loss_type"):
        SoftDPOTrainer(model=_llama(LlamaForCausalLM),
                       args=_args(DPOConfig, tmp_path, loss_type="ipo", precompute_ref_log_probs=True),
                       train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    with pytest.raises(ValueError, match="p_chosen"):
        SoftDPOTrainer(model=_llama(LlamaForCausalLM), args=_args(DPOConfig, tmp_path, precompute_ref_log_probs=True),
                       train_dataset=Dataset.from_list([{k: v for k, v in r.items() if k != "p_chosen"}
                                                        for r in ROWS]), processing_class=tokenizer)

from __future__ import annotations

import re

import pytest

from cai.core.errors import ConfigError
from cai.train import dpo, reward
from cai.train.common import TrainError, load_config, load_training_data
from cai.train.dpo import DPOWrapperConfig
from cai.train.labels import filter_min_margin, prepare_preferences
from cai.train.sft import SFTWrapperConfig, to_prompt_completion
from tests.conftest import write_jsonl


def test_config_precedence_and_unknown_keys(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: runs/x\nout: models/y\nbeta: 0.3\nmax-steps: 7\n")
    config = load_config(DPOWrapperConfig, {"beta": 0.5, "out": None}, str(cfg))
    assert (config.beta, config.max_steps, config.out, config.learning_rate) == (0.5, 7, "models/y", 5e-7)
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(DPOWrapperConfig, {"data": "d", "out": "o", "betta": 1})
    with pytest.raises(ConfigError, match="required"):
        load_config(SFTWrapperConfig, {"data": "d"})


def _prefs(**extra_columns):
    from datasets import Dataset, DatasetDict

    base = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]} for i in range(3)]
    for name, values in extra_columns.items():
        for row, value in zip(base, values):
            row[name] = value
    return DatasetDict({"train": Dataset.from_list(base)})


def test_labels_default_to_soft_and_only_the_modes_columns_reach_trl() -> None:
    data = _prefs(p_chosen=[0.9, None, 0.6], margin=[0.8, None, 0.2], label_margin=[0.8, None, 0.2])
    soft = prepare_preferences(data, "prefs.jsonl", None, ("soft", "hard", "margin"))
    assert (soft.mode, soft.rows_with_p, soft.train_rows) == ("soft", 2, 3)
    assert soft.data["train"].column_names == ["prompt", "chosen", "rejected", "p_chosen"]  # no stray margin
    assert soft.data["train"]["p_chosen"] == [0.9, 1.0, 0.6]  # a null p is a hard label
    assert "2 of 3" in soft.report()["labels"]
    hard = prepare_preferences(data, "prefs.jsonl", "hard", ("soft", "hard"))
    assert hard.data["train"].column_names == ["prompt", "chosen", "rejected"]
    margin = prepare_preferences(data, "prefs.jsonl", "margin", ("soft", "hard", "margin"), margin_scale=2.0)
    assert margin.data["train"]["margin"] == pytest.approx([1.6, 2.0, 0.4])  # made from p, not the old column
    assert "p_chosen" not in margin.data["train"].column_names
    unlabelled = prepare_preferences(_prefs(), "prefs.jsonl", None, ("soft", "hard"))
    assert (unlabelled.mode, unlabelled.rows_with_p) == ("hard", 0)
    assert "no row has a p_chosen" in unlabelled.chosen_by


def test_bad_soft_labels_name_the_row() -> None:
    with pytest.raises(TrainError, match=r"prefs.jsonl: train row 2: p_chosen .* got 1.5"):
        prepare_preferences(_prefs(p_chosen=[0.9, 1.5, 0.6]), "prefs.jsonl", None, ("soft", "hard"))


def test_min_margin_reads_label_margin_then_old_margin_then_p() -> None:
    kept, dropped = filter_min_margin(_prefs(label_margin=[0.8, None, 0.1], margin=[0.0, 0.0, 0.9]), 0.2)
    assert (len(kept["train"]), dropped) == (2, 1)  # label_margin wins; None (hard label) is kept
    kept, dropped = filter_min_margin(_prefs(margin=[0.8, 0.05, 0.1]), 0.2)
    assert (len(kept["train"]), dropped) == (1, 2)
    kept, dropped = filter_min_margin(_prefs(p_chosen=[0.9, 0.55, None]), 0.2)
    assert (len(kept["train"]), dropped) == (2, 1)
    with pytest.raises(TrainError, match="label_margin"):
        filter_min_margin(_prefs(), 0.2)


@pytest.mark.parametrize("trainer,options,message", [
    ("dpo", {"label_smoothing": 0.1}, "'sigmoid' loss would ignore it"),
    ("dpo", {"label_smoothing": 0.1, "loss_type": "ipo", "soft_labels": "hard"}, "'ipo' loss would ignore it"),
    ("dpo", {"soft_labels": "smoothing"}, "'smoothing' is gone"),
    ("dpo", {"soft_labels": "soft", "loss_type": "hinge"}, "no soft form"),
    ("dpo", {"loss_type": "hinge"}, "pass --soft-labels hard"),  # soft is the default on labelled data
    ("dpo", {"soft_labels": "margin"}, "must be one of soft, hard"),
    ("reward", {"margin_scale": 2.0}, "--margin-scale is used only with --soft-labels margin"),
    ("reward", {"margin_scale": 2.0, "soft_labels": "soft"}, "--margin-scale is used only"),
    ("reward", {"soft_labels": "bogus"}, "must be one of soft, hard, margin"),
])
def test_an_option_the_trainer_would_ignore_is_an_error(tmp_path, trainer, options, message) -> None:
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 0.8}]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    module = dpo if trainer == "dpo" else reward
    config_cls = module.DPOWrapperConfig if trainer == "dpo" else module.RewardWrapperConfig
    with pytest.raises(TrainError, match=re.escape(message)):
        module.main(config_cls(data=str(data), out=str(tmp_path / "out"), model="/no/such/model", **options))


@pytest.mark.parametrize("trainer,mode", [("dpo", "soft"), ("reward", "soft"), ("reward", "margin")])
def test_soft_labels_on_data_without_p_is_an_error(tmp_path, trainer, mode) -> None:
    data = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 0.5}])
    module = dpo if trainer == "dpo" else reward
    config_cls = module.DPOWrapperConfig if trainer == "dpo" else module.RewardWrapperConfig
    with pytest.raises(TrainError, match=f"--soft-labels {mode} needs p_chosen"):
        module.main(config_cls(data=str(data), out=str(tmp_path / "out"), model="/no/such/model", soft_labels=mode))


def test_sft_rows_train_on_the_final_reply_only() -> None:
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "final"}]}
    pc = to_prompt_completion(row)
    assert pc["completion"] == [{"role": "assistant", "content": "final"}] and len(pc["prompt"]) == 3
    with pytest.raises(TrainError):
        to_prompt_completion({"messages": [{"role": "user", "content": "q"}]})


def test_training_data_sources(tmp_path) -> None:
    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}]
    jsonl = write_jsonl(tmp_path / "prefs.jsonl", rows)
    assert len(load_training_data(str(jsonl), "preference")["train"]) == 1
    (tmp_path / "run").mkdir()
    write_jsonl(tmp_path / "run" / "preferences.jsonl", rows)
    assert load_training_data(str(tmp_path / "run"), "preference")["train"][0]["chosen"][0]["content"] == "a"
    with pytest.raises(TrainError, match="sft.jsonl"):
        load_training_data(str(tmp_path / "run"), "sft")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1}\n{oops\n')
    from cai.inputs.files import InputError

    with pytest.raises(InputError, match="bad.jsonl:2"):
        load_training_data(str(bad), "preference")

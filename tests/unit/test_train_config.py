from __future__ import annotations

import pytest

from cai.train.common import TrainError, load_config, load_training_data
from cai.train.dpo import DPOWrapperConfig, smoothing_from_labels
from cai.train.sft import SFTWrapperConfig, to_prompt_completion
from tests.conftest import write_jsonl


def test_config_precedence_and_unknown_keys(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: runs/x\nout: models/y\nbeta: 0.3\nmax-steps: 7\n")
    config = load_config(DPOWrapperConfig, {"beta": 0.5, "out": None}, str(cfg))
    assert (config.beta, config.max_steps, config.out, config.learning_rate) == (0.5, 7, "models/y", 5e-7)
    with pytest.raises(TrainError, match="unknown option"):
        load_config(DPOWrapperConfig, {"data": "d", "out": "o", "betta": 1})
    with pytest.raises(TrainError, match="required"):
        load_config(SFTWrapperConfig, {"data": "d"})


def test_soft_label_smoothing() -> None:
    assert smoothing_from_labels([0.9, 0.7, None]) == pytest.approx(0.2)
    assert smoothing_from_labels([0.5, 0.5]) == 0.5
    assert smoothing_from_labels([None]) == 0.0


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
    from cai.data import InputError

    with pytest.raises(InputError, match="bad.jsonl:2"):
        load_training_data(str(bad), "preference")

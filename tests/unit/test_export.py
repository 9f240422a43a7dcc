"""`cai export`: no loss change a trainer did not ask for, no column dropped silently, NeMo SFT
trained on the final reply only, and splits decided by each prompt's content alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.export import ExportError, export_run
from tests.conftest import read_jsonl, write_jsonl


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


def pref_row(i: int, k: int = 0, **extra) -> dict:
    """A preference row as `cai rl` writes it, for prompt i (pair k of that prompt)."""
    p = 0.7 + 0.01 * k
    return {"id": f"q{i}", "prompt": [user(f"question {i}")], "chosen": [reply(f"good {i}.{k}")],
            "rejected": [reply(f"bad {i}.{k}")], "labeler": "pairwise", "judges": ["fake"], "principle_ids": ["p1"],
            "p_chosen": p, "p_chosen_order_ab": p, "p_chosen_order_ba": p, "label_margin": abs(2 * p - 1),
            "position_bias": False, "judge_agreement": None, "judge_raw": ["(A)"], "chosen_index": 0,
            "rejected_index": 1, "judge_generated_tokens": 0, **extra}


def rl_run_dir(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True)
    write_jsonl(path / "preferences.jsonl", rows)
    return path


def sl_run_dir(path: Path, conversations: list[list[dict]]) -> Path:
    path.mkdir(parents=True)
    write_jsonl(path / "sft.jsonl", [{"messages": m} for m in conversations])
    write_jsonl(path / "sl.jsonl", [{"id": f"s{i}"} for i in range(len(conversations))])
    return path


def all_rows(out: Path) -> list[dict]:
    from datasets import load_from_disk

    ds = load_from_disk(str(out))
    return [{**r, "_split": name} for name in ds for r in ds[name]]


# ---- 1. no loss change a raw TRL user did not ask for ----------------------------------
def test_export_has_no_margin_column_and_no_nulls_where_trainers_read(tmp_path) -> None:
    run = rl_run_dir(tmp_path / "rl", [pref_row(i) for i in range(6)])
    helpful = write_jsonl(tmp_path / "helpful.jsonl", [
        {"chosen": f"\n\nHuman: help {i}\n\nAssistant: sure {i}", "rejected": f"\n\nHuman: help {i}\n\nAssistant: no"}
        for i in range(6)])
    export_run(run, "trl", tmp_path / "trl", split="train=0.5,test=0.5", blends=[f"{helpful}:1.0"])
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "trl"))
    for name in ds:  # RewardTrainer adds a `margin` column to its loss by itself; ours must not be it
        assert "margin" not in ds[name].column_names and "label_margin" in ds[name].column_names
    rows = all_rows(tmp_path / "trl")
    assert len(rows) == 12
    for column in ("prompt", "chosen", "rejected", "p_chosen", "label_margin"):
        assert all(r[column] is not None for r in rows), column
    human = [r for r in rows if r["origin"] != "cai"]
    assert len(human) == 6
    assert all(r["labeler"] == "human" and r["p_chosen"] == 1.0 and r["label_margin"] == 1.0 for r in human)


def test_older_runs_margin_is_renamed_and_counted(tmp_path) -> None:
    old = [{k: v for k, v in pref_row(i).items() if k != "label_margin"} | {"margin": 0.4} for i in range(3)]
    report = export_run(rl_run_dir(tmp_path / "old", old), "trl", tmp_path / "trl", split="train=1")
    rows = all_rows(tmp_path / "trl")
    assert [r["label_margin"] for r in rows] == [0.4, 0.4, 0.4] and "margin" not in rows[0]
    assert report["columns"]["margin_renamed_to_label_margin"] == 3
    assert json.loads((tmp_path / "trl" / "export.json").read_text())["columns"] == report["columns"]


def test_a_row_without_p_chosen_is_an_error_naming_file_and_row(tmp_path) -> None:
    run = rl_run_dir(tmp_path / "rl", [pref_row(0), pref_row(1, p_chosen=None)])
    with pytest.raises(ExportError, match=r"preferences.jsonl: row 2 has no p_chosen"):
        export_run(run, "trl", tmp_path / "trl", split="train=1")


# ---- 2. no column dropped silently -----------------------------------------------------
def test_columns_some_rows_lack_are_filled_and_counted(tmp_path) -> None:
    rows = [pref_row(0, reason_code="ok", judge_failures=[]), pref_row(1, judge_raw='{"most_aligned": 1}'),
            pref_row(2, judge_failures=["timeout"])]
    report = export_run(rl_run_dir(tmp_path / "rl", rows), "trl", tmp_path / "trl", split="train=1")
    out = {r["id"]: r for r in all_rows(tmp_path / "trl")}
    raw = [json.loads(out[q]["judge_raw"]) for q in ("q0", "q1", "q2")]  # no shared type: kept as JSON text
    assert raw == [["(A)"], '{"most_aligned": 1}', ["(A)"]] and report["columns"]["json_encoded"] == {"judge_raw": 3}
    assert out["q0"]["reason_code"] == "ok" and out["q1"]["reason_code"] is None
    assert out["q2"]["judge_failures"] == ["timeout"] and out["q1"]["judge_failures"] is None
    assert report["columns"]["filled_with_null"] == {"reason_code": 2, "judge_failures": 1}
    assert {"reason_code", "judge_failures", "labeler", "p_chosen"} <= set(report["columns"]["names"])


def test_a_trainer_column_of_mixed_types_is_an_error(tmp_path) -> None:
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "plain text", "chosen": [reply("a")],
                                                           "rejected": [reply("b")]}])
    run = rl_run_dir(tmp_path / "rl", [pref_row(0)])
    with pytest.raises(ExportError, match="column 'prompt' mixes value types"):
        export_run(run, "trl", tmp_path / "trl", split="train=1", blends=[f"{plain}:1"])


# ---- 3. NeMo SFT trains on the final reply only ----------------------------------------
def nemo_trained_turns(record: dict) -> list[int]:
    """The turns NeMo computes a loss on, as GPTSFTChatDataset's `_mask_targets` decides
    (NVIDIA/NeMo nemo/collections/nlp/data/language_modeling/megatron/gpt_sft_chat_dataset.py):
    turn 0 is always masked, turns from the `mask` role are masked, every other turn is trained."""
    return [i for i, t in enumerate(record["conversations"]) if i > 0 and t["from"] != record["mask"]]


def test_nemo_sft_masks_every_assistant_turn_but_the_final_one(tmp_path) -> None:
    multi = [{"role": "system", "content": "Be kind."}, user("u1"), reply("EARLIER-1"), user("u2"),
             reply("EARLIER-2"), user("u3"), reply("FINAL")]
    run = sl_run_dir(tmp_path / "sl", [multi, [user("only"), reply("FINAL-2")]])
    export_run(run, "nemo", tmp_path / "nemo", split="train=1")
    records = read_jsonl(tmp_path / "nemo" / "train_sft.jsonl")
    assert len(records) == 2
    for record in records:
        trained = [record["conversations"][i]["value"] for i in nemo_trained_turns(record)]
        assert trained in (["FINAL"], ["FINAL-2"])
    folded = next(r for r in records if r["system"] == "Be kind.")
    masked_text = " ".join(t["value"] for i, t in enumerate(folded["conversations"]) if i not in
                           nemo_trained_turns(folded))
    for earlier in ("u1", "EARLIER-1", "u2", "EARLIER-2", "u3"):  # the context is kept, in masked positions
        assert earlier in masked_text


def test_nemo_sft_from_an_hh_context_run(tmp_path, hh_file) -> None:
    from cai.engines.fake import FakeScript, register_script
    from cai.generate.sl import SLConfig, run_sl

    multi_turn = [r for r in read_jsonl(hh_file) if r["chosen"].count("\n\nAssistant:") >= 3][:2]
    prompts = write_jsonl(tmp_path / "hh.jsonl", multi_turn)
    register_script("sl-final", FakeScript(lambda req, k: "THE FINAL REVISED REPLY"))
    run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "sl"), model="fake:sl-final", rounds=1,
                    hh_mode="context"), show_progress=False)
    sft = read_jsonl(tmp_path / "sl" / "sft.jsonl")
    assert sum(m["role"] == "assistant" for m in sft[0]["messages"]) >= 2  # earlier assistant turns in the prompt
    export_run(tmp_path / "sl", "nemo", tmp_path / "nemo", split="train=1")
    for record in read_jsonl(tmp_path / "nemo" / "train_sft.jsonl"):
        trained = [record["conversations"][i]["value"] for i in nemo_trained_turns(record)]
        assert trained and all(value.startswith("THE FINAL REVISED REPLY") for value in trained)


# ---- 4. split by the prompt's content --------------------------------------------------
def splits_by_prompt(out: Path) -> dict[str, set[str]]:
    """prompt text -> the splits its rows landed in."""
    found: dict[str, set[str]] = {}
    for r in all_rows(out):
        prompt = r["prompt"] if "prompt" in r else r["messages"][:-1]
        found.setdefault(json.dumps(prompt), set()).add(r["_split"])
    return found


def test_sl_and_rl_exports_put_a_shared_prompt_in_the_same_split(tmp_path) -> None:
    sl = sl_run_dir(tmp_path / "sl", [[user(f"question {i}"), reply(f"revised {i}")] for i in range(0, 40)])
    rl = rl_run_dir(tmp_path / "rl", [pref_row(i, k) for i in range(20, 60) for k in range(3)])
    export_run(sl, "trl", tmp_path / "sl-trl", split="train=0.5,test=0.5")
    export_run(rl, "trl", tmp_path / "rl-trl", split="train=0.5,test=0.5")
    sl_splits, rl_splits = splits_by_prompt(tmp_path / "sl-trl"), splits_by_prompt(tmp_path / "rl-trl")
    assert all(len(s) == 1 for s in rl_splits.values()), "the pairs of one prompt straddle splits"
    shared = set(sl_splits) & set(rl_splits)
    assert len(shared) == 20
    assert {p: sl_splits[p] for p in shared} == {p: rl_splits[p] for p in shared}
    assert {s for p in shared for s in sl_splits[p]} == {"train", "test"}  # both splits are used


def test_exports_of_two_subsets_agree_and_blends_follow_their_prompt(tmp_path) -> None:
    a = rl_run_dir(tmp_path / "a", [pref_row(i, k) for i in range(0, 30) for k in range(2)])
    b = rl_run_dir(tmp_path / "b", [pref_row(i) for i in range(15, 45)])
    blend = write_jsonl(tmp_path / "blend.jsonl", [{key: pref_row(i)[key] for key in ("prompt", "chosen", "rejected")}
                                                  for i in range(60, 70)] +
                        [{"prompt": [user(f"question {i}")], "chosen": [reply("human pick")],
                          "rejected": [reply("human reject")]} for i in range(0, 5)])
    export_run(a, "trl", tmp_path / "a-trl", split="train=0.7,test=0.3", seed=3, blends=[f"{blend}:0.25"])
    export_run(b, "trl", tmp_path / "b-trl", split="train=0.7,test=0.3", seed=3)
    in_a, in_b = splits_by_prompt(tmp_path / "a-trl"), splits_by_prompt(tmp_path / "b-trl")
    assert all(len(s) == 1 for s in in_a.values())  # blended rows of a CAI prompt land beside it
    shared = set(in_a) & set(in_b)
    assert len(shared) == 15 and all(in_a[p] == in_b[p] for p in shared)


def test_split_depends_on_the_seed_and_not_on_ids(tmp_path) -> None:
    rows = [pref_row(i) for i in range(40)]
    renamed = [{**r, "id": f"other-{r['id']}"} for r in rows]
    export_run(rl_run_dir(tmp_path / "a", rows), "trl", tmp_path / "a-trl", seed=1)
    export_run(rl_run_dir(tmp_path / "b", renamed), "trl", tmp_path / "b-trl", seed=1)
    export_run(rl_run_dir(tmp_path / "c", rows), "trl", tmp_path / "c-trl", seed=2)
    assert splits_by_prompt(tmp_path / "a-trl") == splits_by_prompt(tmp_path / "b-trl")
    assert splits_by_prompt(tmp_path / "a-trl") != splits_by_prompt(tmp_path / "c-trl")


def test_an_empty_split_is_a_warning_with_counts(tmp_path) -> None:
    report = export_run(rl_run_dir(tmp_path / "rl", [pref_row(7, k) for k in range(4)]), "trl", tmp_path / "trl",
                        split="train=0.5,test=0.5")
    assert sorted(report["rows"].values()) == [0, 4] and sorted(report["prompts"].values()) == [0, 1]
    empty = next(name for name, n in report["rows"].items() if n == 0)
    assert len(report["warnings"]) == 1 and f"split '{empty}'" in report["warnings"][0]
    assert json.loads((tmp_path / "trl" / "export.json").read_text())["warnings"] == report["warnings"]


def test_a_new_format_is_one_writer_and_one_entry(tmp_path, monkeypatch) -> None:
    import cai.export

    written = {}

    def write_csv(kind, splits, out, model):
        written.update(kind=kind, rows=sum(len(v) for v in splits.values()), columns=list(splits["train"][0]))
        (out / "train.csv").write_text("ok")

    monkeypatch.setitem(cai.export.FORMATS, "csv", write_csv)
    run = rl_run_dir(tmp_path / "rl", [pref_row(1, extra_column="kept")])
    report = export_run(run, "csv", tmp_path / "out", split="train=1.0")
    assert report["format"] == "csv" and (tmp_path / "out" / "train.csv").exists()
    assert written["kind"] == "rl" and written["rows"] == 1 and "extra_column" in written["columns"]
    with pytest.raises(ExportError, match="--format must be one of trl, nemo, csv; got 'xml'"):
        export_run(run, "xml", tmp_path / "out2")

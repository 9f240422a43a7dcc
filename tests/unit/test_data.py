from __future__ import annotations

import csv
import json

import pytest

from cai.inputs.files import InputError
from cai.inputs.prompts import BadRow, PromptRow, parse_hh_transcript, read_prompts
from tests.conftest import write_jsonl

TRANSCRIPT = ("\n\nHuman: Ratio: 3: 1 of what?\n\nAssistant: Could you say more: which recipe?"
              "\n\nHuman: Pancakes: the fluffy kind.\n\nAssistant: Sure.")


def test_hh_transcript_keeps_colons_inside_turns() -> None:
    msgs = parse_hh_transcript(TRANSCRIPT)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "Ratio: 3: 1 of what?"
    assert msgs[1]["content"] == "Could you say more: which recipe?"


def test_hh_first_turn_vs_context(tmp_path) -> None:
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": TRANSCRIPT, "rejected": TRANSCRIPT + "!"}])
    first = next(read_prompts(path))
    assert isinstance(first, PromptRow)
    assert first.messages == [{"role": "user", "content": "Ratio: 3: 1 of what?"}]
    context = next(read_prompts(path, hh_mode="context"))
    assert [m["role"] for m in context.messages] == ["user", "assistant", "user"]
    assert context.prompt == "Pancakes: the fluffy kind."


def test_shared_hh_file_reads_every_row(hh_file) -> None:
    rows = list(read_prompts(hh_file, hh_mode="context"))
    assert len(rows) == 500
    assert all(isinstance(r, PromptRow) and r.messages[-1]["role"] == "user" for r in rows)
    assert len({r.id for r in rows}) == 500


def test_bad_jsonl_rows_name_file_line_and_problem(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "broken"\n{"text": "no prompt"}\n{"prompt": "   "}\n[1, 2]\n')
    rows = list(read_prompts(path))
    assert isinstance(rows[0], PromptRow)
    bad = rows[1:]
    assert all(isinstance(r, BadRow) for r in bad)
    assert bad[0].source == f"{path}:2" and "malformed JSON" in bad[0].reason
    assert bad[1].source == f"{path}:3" and "missing field" in bad[1].reason
    assert bad[2].source == f"{path}:4" and "empty" in bad[2].reason
    assert "JSON object" in bad[3].reason


def test_missing_file_and_unknown_type(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(read_prompts(tmp_path / "nope.jsonl"))
    odd = tmp_path / "p.xlsx"
    odd.write_text("x")
    with pytest.raises(InputError, match="unsupported"):
        list(read_prompts(odd))


def test_csv_parquet_and_saved_dataset(tmp_path) -> None:
    records = [{"question": "one?", "id": "q1"}, {"question": "two?", "id": "q2"}]
    with (tmp_path / "p.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "question"])
        writer.writeheader()
        writer.writerows(records)
    import pandas as pd
    from datasets import Dataset

    pd.DataFrame(records).to_parquet(tmp_path / "p.parquet")
    Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    for name in ("p.csv", "p.parquet", "ds"):
        rows = list(read_prompts(tmp_path / name, prompt_field="question"))
        assert [r.id for r in rows] == ["q1", "q2"], name
        assert rows[1].prompt == "two?"
    csv_rows = list(read_prompts(tmp_path / "p.csv", prompt_field="question"))
    assert csv_rows[0].source.endswith("p.csv:2")


def test_ids_are_stable_and_duplicates_distinct(tmp_path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "same"}, {"prompt": "other"}, {"prompt": "same"}])
    ids = [r.id for r in read_prompts(path)]
    assert ids[0] != ids[2] and ids[2] == ids[0] + "-2"
    path2 = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "new first"}, {"prompt": "same"}])
    assert [r.id for r in read_prompts(path2)][1] == ids[0]  # content-keyed, not line-keyed
    assert len(list(read_prompts(path, limit=2))) == 2


def test_messages_field(tmp_path) -> None:
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "help me"}, {"role": "assistant", "content": "drop me"}]
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": convo}])
    row = next(read_prompts(path, hh_mode="context"))
    assert row.messages == convo[:3]
    assert json.dumps(row.messages)

from __future__ import annotations

import json

import pytest

from cai.engines import load_engine
from cai.engines.fake import FakeScript, register_script
from cai.inputs.constitution import load_constitution
from cai.generate.sl import SLConfig, build_critique_messages, build_revision_messages, load_few_shot, run_sl
from tests.conftest import read_jsonl


def scripted(request, k: int) -> str:
    last = request.messages[-1]["content"]
    if "BADREV" in json.dumps(request.messages) and last.startswith("Rewrite"):
        return "Sure, here is a revised response: "  # cleans to empty -> must fail the row
    if last.startswith(("Rewrite", "Please rewrite")):
        return "Sure, here is a revised response: A safer reply about " + str(len(request.messages))
    if request.messages[-1]["role"] == "user" and len(request.messages) == 1:
        return "An initial risky answer."
    return "A critique: the reply has problems number " + str(len(request.messages))


register_script("sl-test", FakeScript(scripted))


def test_prompt_building_keeps_few_shot_prefix_identical() -> None:
    few = load_few_shot("default")
    c = load_constitution("default")
    p = c.principles[0]
    convo = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    crit = build_critique_messages(few, convo, p)
    rev = build_revision_messages(few, convo, p, "my critique")
    prefix = few.prefix()
    assert crit[: len(prefix)] == prefix == rev[: len(prefix)]
    assert crit[-1] == {"role": "user", "content": p.critique}
    assert rev[-3:] == [{"role": "user", "content": p.critique}, {"role": "assistant", "content": "my critique"},
                        {"role": "user", "content": p.revision}]
    assert prefix[0]["role"] == "system" and len(prefix) == 1 + 6 * len(few.examples)
    assert load_few_shot("none").prefix() == []


def test_sl_run_traces_rounds_and_writes_trl_sft(tmp_path, prompts_file) -> None:
    out = tmp_path / "run"
    result = run_sl(SLConfig.of(prompts=str(prompts_file), out=str(out), model="fake:sl-test", rounds=3),
                    show_progress=False)
    assert result.summary["rows_ok_this_run"] == 3
    rows = read_jsonl(out / "sl.jsonl")
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    for row in rows:
        assert len(row["rounds"]) == 3
        assert len({r["principle_id"] for r in row["rounds"]}) == 3
        assert row["final"] == row["rounds"][-1]["revision"]
        assert row["final"].startswith("A safer reply")  # the wrapper was cleaned
        assert row["rounds"][0]["revision_raw"].startswith("Sure, here is")
    sft = read_jsonl(out / "sft.jsonl")
    assert sft[0]["messages"] == rows[0]["messages"] + [{"role": "assistant", "content": rows[0]["final"]}]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["constitution"]["hash"] == load_constitution("default").hash
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine_calls_made"] == 3 * (1 + 2 * 3)


def test_later_rounds_see_the_conversation_so_far(tmp_path, prompts_file) -> None:
    engine_calls = []
    register_script("sl-record", FakeScript(lambda req, k: engine_calls.append(req) or scripted(req, k)))
    run_sl(SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "r"), model="fake:sl-record", rounds=2,
                    few_shot="none", limit=1), show_progress=False)
    last = engine_calls[-1].messages  # round 2 revision request
    roles = [m["role"] for m in last]
    assert roles == ["user", "assistant"] + ["user", "assistant"] * 3 + ["user"]


def test_degenerate_revision_fails_the_row_and_is_kept(tmp_path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "good", "prompt": "fine"}\n{"id": "bad", "prompt": "BADREV please"}\n')
    out = tmp_path / "run"
    result = run_sl(SLConfig.of(prompts=str(prompts), out=str(out), model="fake:sl-test", rounds=2), show_progress=False)
    assert result.summary["rows_failed_this_run"] == 1
    assert [r["id"] for r in read_jsonl(out / "sl.jsonl")] == ["good"]
    assert len(read_jsonl(out / "sft.jsonl")) == 1
    assert "BADREV" not in (out / "sft.jsonl").read_text()
    failures = read_jsonl(out / "failures.jsonl")
    assert failures[0]["id"] == "bad" and failures[0]["stage"] == "round 1 revision"
    assert failures[0]["reason"] == "empty"
    assert failures[0]["trace"]["rounds"][0]["revision_raw"].startswith("Sure")
    assert result.summary["failure_reasons"] == {"round 1 revision: empty": 1}


def test_bad_input_stops_before_any_call_or_is_recorded(tmp_path) -> None:
    from cai.inputs.files import InputError

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": \n{"prompt": "also fine"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:2: malformed JSON"):
        run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "r1"), model="fake:sl-test", rounds=1),
               show_progress=False)
    result = run_sl(SLConfig.of(prompts=str(prompts), out=str(tmp_path / "r2"), model="fake:sl-test", rounds=1,
                             on_bad_input="skip"), show_progress=False)
    assert result.summary["bad_input_rows"] == 1 and result.summary["rows_ok_this_run"] == 2
    failures = read_jsonl(tmp_path / "r2" / "failures.jsonl")
    assert failures[0]["stage"] == "input" and failures[0]["source"].endswith("p.jsonl:2")


def test_rerun_resumes_from_the_store(tmp_path, prompts_file) -> None:
    config = SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "run"), model="fake:sl-test", rounds=2)
    first = run_sl(config, show_progress=False)
    second = run_sl(config, show_progress=False)
    assert first.summary["engine_calls_made"] == 15
    assert second.summary["engine_calls_made"] == 0
    assert second.summary["rows_already_done"] == 3
    assert len(read_jsonl(tmp_path / "run" / "sl.jsonl")) == 3


def test_resuming_a_finished_run_builds_no_engine(tmp_path, prompts_file, monkeypatch) -> None:
    import json

    import cai.runs.job

    built: list[str] = []
    real_load = cai.runs.job.load_engine

    def counting_load(spec, options=None):
        built.append(spec)
        return real_load(spec, options)

    monkeypatch.setattr(cai.runs.job, "load_engine", counting_load)
    config = SLConfig.of(prompts=str(prompts_file), out=str(tmp_path / "run"), model="fake:sl-test", rounds=1)
    run_sl(config, show_progress=False)
    assert built == ["fake:sl-test"]
    first_manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    again = run_sl(config, show_progress=False)
    assert built == ["fake:sl-test"]  # not built a second time
    assert again.summary["rows_already_done"] == 3 and len(read_jsonl(tmp_path / "run" / "sl.jsonl")) == 3
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["engines"] == first_manifest["engines"] and "engines_not_opened" in manifest
    assert len(manifest["invocations"]) == 2
    # a finished store without a manifest that names its engines (a Ray Data merge): they are built
    (tmp_path / "run" / "manifest.json").unlink()
    run_sl(config, show_progress=False)
    assert built == ["fake:sl-test"] * 2
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["engines"] == first_manifest["engines"]
    # one more input row: the engine is needed again
    prompts_file.write_text(prompts_file.read_text() + '{"id": "extra", "prompt": "One more question."}\n')
    more = run_sl(config, show_progress=False)
    assert built == ["fake:sl-test"] * 3 and more.summary["rows_ok_this_run"] == 1
    assert "engines_not_opened" not in json.loads((tmp_path / "run" / "manifest.json").read_text())


async def test_rows_run_concurrently_so_requests_batch(tmp_path, prompts_file) -> None:
    from cai.inputs.prompts import read_prompts
    from cai.runs.rows import run_rows
    from cai.runs.store import Store
    from cai.generate.sl import RevisionOptions, SLChain

    engine = load_engine("fake:sl-test")
    chain = SLChain(engine, load_constitution("default"), load_few_shot("none"), RevisionOptions(rounds=1))
    in_flight, peak = 0, 0
    original = engine.generate

    async def tracking(requests):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            import asyncio
            await asyncio.sleep(0.01)
            return await original(requests)
        finally:
            in_flight -= 1

    engine.generate = tracking
    counts = await run_rows(read_prompts(prompts_file), chain, store=Store(tmp_path / "s.sqlite"), stage="sl",
                            concurrency=8, show_progress=False)
    assert counts.ok == 3
    assert peak == 3  # all three chains had a request in flight at once

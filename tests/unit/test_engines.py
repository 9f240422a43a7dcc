from __future__ import annotations

import pytest

from cai.core.types import Request, SamplingParams
from cai.engines import EngineError, load_engine, parse_option_pairs
from cai.engines.base import parse_spec
from cai.runs.store import CachedEngine, Store


def test_unknown_spec_and_bad_options_fail_clearly() -> None:
    with pytest.raises(EngineError, match="unknown model spec"):
        load_engine("nosuch:thing")
    with pytest.raises(EngineError, match="bad options"):
        load_engine("fake:echo", {"no_such_option": 1})
    with pytest.raises(EngineError, match="key=value"):
        parse_option_pairs(["oops"])
    assert parse_option_pairs(["max_batch_size=8", "dtype=fp32"]) == {"max_batch_size": 8, "dtype": "fp32"}
    assert parse_spec("smollm2") == ("hf", "smollm2")


def test_sampling_params_validate() -> None:
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)


async def test_cached_engine_answers_from_store(tmp_path) -> None:
    engine = CachedEngine(load_engine("fake:echo"), Store(tmp_path / "s.sqlite"))
    req = Request.of([{"role": "user", "content": "hello"}], SamplingParams(n=2))
    first = await engine.generate([req])
    again = await engine.generate([req])
    assert [c.text for c in first[0]] == [c.text for c in again[0]]
    assert engine.stats == {**engine.stats, "calls_made": 1, "cache_hits": 1}
    other = await engine.generate([Request.of(req.messages, SamplingParams(n=2, temperature=0.1))])
    assert engine.stats["calls_made"] == 2 and len(other[0]) == 2
    scores = await engine.score([{"role": "user", "content": "q"}], ["a", "bb"])
    assert scores == await engine.score([{"role": "user", "content": "q"}], ["a", "bb"])
    assert engine.store.count_calls("score") == 1


async def test_cached_answers_are_not_shared_across_prompt_formats(tmp_path) -> None:
    store = Store(tmp_path / "s.sqlite")
    req = Request.of([{"role": "user", "content": "hello"}], SamplingParams(n=1))
    chat = CachedEngine(load_engine("fake:echo"), store)
    await chat.generate([req])
    plain_engine = load_engine("fake:echo")
    plain_engine.prompt_format = "plain"  # a base model's transcript renders the same request differently
    plain = CachedEngine(plain_engine, store)
    await plain.generate([req])
    assert plain.stats["calls_made"] == 1 and plain.stats["cache_hits"] == 0
    again = CachedEngine(load_engine("fake:echo"), store)
    await again.generate([req])
    assert again.stats["cache_hits"] == 1 and again.stats["calls_made"] == 0
    assert chat.identity == {"model": "fake:echo"} and plain.identity["prompt_format"] == "plain"
    assert plain.cache_identity() == plain_engine.cache_identity()  # a wrapper keeps its engine's identity


def test_builtin_specs_resolve_in_a_fresh_process() -> None:
    """`parse_spec('smollm2')` failed in a new process: the alias was looked up before the
    built-in engines (which register it) were loaded."""
    import subprocess
    import sys

    code = "from cai.engines.base import parse_spec; print(parse_spec('smollm2'), parse_spec('fake:echo'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "('hf', 'smollm2') ('fake', 'echo')" in proc.stdout


def test_an_installed_package_adds_an_engine_through_an_entry_point(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "cai_plugin_demo.py").write_text(
        "from cai.engines.base import register_engine\n"
        "from cai.engines.fake import FakeEngine\n"
        "def register():\n"
        "    register_engine('plugdemo', FakeEngine)\n")
    info = tmp_path / "cai_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cai-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cai.engines]\nplugdemo = cai_plugin_demo:register\n")
    code = "from cai.engines import load_engine; print(load_engine('plugdemo:echo').model_id)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "fake:echo"

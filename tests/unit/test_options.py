"""One source for options: the CLI and --config come from the config dataclasses, and a new
labeller is a class plus one registration, asked (never named) by rl, eval judge and export."""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.core.errors import ConfigError
from cai.core.options import flag_of
from cai.engines.fake import FakeScript, register_script
from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval
from cai.label.base import COMMON_COLUMNS
from cai.recipes.end_to_end import RecipeConfig
from cai.generate.rl import RLConfig, run_rl
from cai.generate.sl import SLConfig
from cai.train.configs import DPOWrapperConfig, PolicyRLConfig, RewardWrapperConfig, SFTWrapperConfig
from tests.conftest import read_jsonl, write_jsonl

COMMANDS = [(["sl"], SLConfig), (["rl"], RLConfig), (["eval", "judge"], JudgeEvalConfig),
            (["train", "sft"], SFTWrapperConfig), (["train", "reward"], RewardWrapperConfig),
            (["train", "dpo"], DPOWrapperConfig), (["train", "ppo"], PolicyRLConfig),
            (["train", "policy"], PolicyRLConfig), (["recipe"], RecipeConfig)]


def _help_flags(argv: list[str]) -> set[str]:
    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", result.output))


@pytest.mark.parametrize("argv,config_cls", COMMANDS, ids=[" ".join(a) for a, _ in COMMANDS])
def test_each_commands_options_are_its_configs_fields(argv, config_cls) -> None:
    expected = {"--config", "--help"}
    for _, f in config_cls.option_fields():
        flag = flag_of(f)
        expected |= set(flag.split("/")) if "/" in flag else {flag}
        if f.type in (bool, "bool") and "/" not in flag:
            expected.add("--no-" + flag[2:])
    shown = _help_flags(argv) - {"--quiet", "--lr"}
    assert shown == expected


def test_every_option_has_help_and_one_owner() -> None:
    for _, config_cls in COMMANDS:
        names = [f.name for _, f in config_cls.option_fields()]
        assert len(names) == len(set(names)), config_cls
        assert all(f.metadata["help"].strip() for _, f in config_cls.option_fields())
    # the options jobs share are one group class, composed into each command, not copies
    sl, rl, ev = SLConfig.groups(), RLConfig.groups(), JudgeEvalConfig.groups()
    assert sl["run"] is rl["run"] is ev["run"] and sl["constitution"] is rl["constitution"] is ev["constitution"]
    assert sl["inputs"] is rl["inputs"] and rl["labeling"] is ev["labeling"]


def test_config_file_flat_or_sectioned_and_the_command_line_wins(tmp_path) -> None:
    sectioned = tmp_path / "rl.yaml"
    sectioned.write_text("inputs: {prompts: p.jsonl, limit: 3}\nlabeling:\n  judges: [a, b]\n  combine: vote\n"
                         "min-margin: 0.2\nengine_options: {dtype: fp32}\n")
    config = RLConfig.load({"combine": "mean", "out": "o", "clamp": "0.3,0.7"}, str(sectioned))
    assert (config.inputs.prompts, config.inputs.limit, config.labeling.judges) == ("p.jsonl", 3, ["a", "b"])
    assert (config.labeling.combine, config.sampling.min_margin) == ("mean", 0.2)  # the command line won
    assert config.labeling.clamp == (0.3, 0.7) and config.run.engine_options == {"dtype": "fp32"}
    assert JudgeEvalConfig.of(pairs="x").run.max_failure_rate == 1.0  # a command's own default for a shared group


@pytest.mark.parametrize("text,message", [
    ("labeling: {judges: [a]}\nbogus: 1\n", r"rl\.yaml: unknown option\(s\) bogus"),
    ("inputs: [1, 2\n", r"rl\.yaml:2: not valid YAML"),
    ("- a list\n", r"rl\.yaml: a config file must be a mapping"),
    ("clamp: 0.7\n", r"rl\.yaml: --clamp: must be 'lo,hi'"),
    ("labeler: magic\n", r"--labeler must be one of pairwise, cot, rank-all; got 'magic'"),
])
def test_a_bad_config_file_is_a_clear_error(tmp_path, text, message) -> None:
    (tmp_path / "rl.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        RLConfig.load({"prompts": "p", "out": "o"}, str(tmp_path / "rl.yaml"))


@pytest.mark.parametrize("argv,message", [
    (["--clamp", "0.6"], "error: --clamp: must be 'lo,hi' with 0 <= lo <= hi <= 1; got '0.6'"),
    (["--clamp", "0.7,0.2"], "error: --clamp: must be 'lo,hi' with 0 <= lo <= hi <= 1; got '0.7,0.2'"),
    (["--candidates", "1"], "error: --candidates must be at least 2; got 1"),
    (["--min-judges", "2"], "error: --min-judges 2 needs an ensemble of at least that many judges: give that many "
                            "--judge options (got 1)"),
    (["--temperatures", "0.1,x"], "error: --temperatures: expected comma-separated numbers, got '0.1,x'"),
])
def test_invalid_options_are_one_line_errors_before_any_work(tmp_path, argv, message, capsys, monkeypatch) -> None:
    import sys

    from cai.cli import main

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    monkeypatch.setattr(sys, "argv", ["cai", "rl", "--prompts", str(prompts), "--out", str(tmp_path / "r"), *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.replace("\n", " ").strip() == message
    assert not (tmp_path / "r").exists()


# ---- a new labeller: one class, one registration --------------------------------------------
class LengthJudge:
    """A made-up labeller: prefers the longer reply, certain in proportion to the length gap."""

    name = "length"

    def __init__(self, engine) -> None:
        self.engine = engine

    async def label(self, messages, candidates, key):
        from cai.label.base import Judgement, PairLabel

        (i, a), (j, b) = candidates[0], candidates[-1]
        p = 0.5 + min(0.49, abs(len(a) - len(b)) / 100) * (1 if len(a) > len(b) else -1)
        label = PairLabel(p_x=p, p_x_by_order=[p, None], position_bias=None, principle_ids=[],
                          judges=[self.engine.model_id], extra={"length_gap": len(a) - len(b)})
        return [Judgement(i, j, label=label)]

    columns = (*COMMON_COLUMNS, "length_gap")

    def provenance(self, judgement, x_wins):
        from cai.label.base import pair_provenance

        return pair_provenance(self.name, judgement, x_wins)


register_script("options-cands", FakeScript(lambda req, k: " ".join(f"w{i}" for i in range(3 + 3 * k))))


@pytest.fixture
def length_labeler():
    from cai.label.registry import _REGISTRY, register_labeler

    register_labeler("length", lambda options, engine, constitution, seed: LengthJudge(engine),
                     columns=LengthJudge.columns)
    yield
    _REGISTRY.pop("length")


def test_a_registered_labeller_works_everywhere_and_its_columns_are_exported(tmp_path, length_labeler) -> None:
    from cai.export import export_run

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i}"} for i in range(4)])
    result = run_rl(RLConfig.of(prompts=str(prompts), out=str(tmp_path / "rl"), policy="fake:options-cands",
                                judges=["fake:echo"], labeler="length", min_margin=0), show_progress=False)
    prefs = read_jsonl(tmp_path / "rl" / "preferences.jsonl")
    assert len(prefs) == 4 and result.summary["labels_attempted"] == 4
    assert all(p["labeler"] == "length" and p["length_gap"] == -9 and p["chosen_index"] == 1 for p in prefs)
    export_run(str(tmp_path / "rl"), "trl", str(tmp_path / "trl"), split="train=1.0")
    from datasets import load_from_disk

    assert "length_gap" in load_from_disk(str(tmp_path / "trl"))["train"].column_names

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"chosen": "\n\nHuman: q\n\nAssistant: a long and careful answer", "rejected": "\n\nHuman: q\n\nAssistant: no"}])
    report = run_judge_eval(JudgeEvalConfig.of(pairs=str(pairs), out=str(tmp_path / "ev"), judges=["fake:echo"],
                                               labeler="length"), show_progress=False).summary["report"]
    assert report["pairs_labelled"] == 1 and report["accuracy"] == 1.0


def test_the_labeller_choice_lists_registered_labellers(length_labeler) -> None:
    from cai.label.registry import LabelerOptions

    assert LabelerOptions(labeler="length").labeler == "length"
    assert "length" in json.dumps([f.metadata["choices"]() for f in fields(LabelerOptions) if f.name == "labeler"])


def test_derived_option_reads_grouped_fields_with_the_configs_own_default() -> None:
    from cai.cli.derive import derived_option
    from cai.evaluate.judge import JudgeEvalConfig

    annotation = derived_option(JudgeEvalConfig, "max_failure_rate")  # a field of the run group
    info = annotation.__metadata__[0]
    assert "--max-failure-rate" in (info.default, *info.param_decls) and info.show_default == "1.0"  # eval judge's, not the group's 0.5
    with pytest.raises(KeyError, match="no option 'nope'"):
        derived_option(RLConfig, "nope")

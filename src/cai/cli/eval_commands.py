"""`cai eval judge|models|revisions|constitutions`: thin wrappers over `cai.evaluate`.

Options come from the config dataclasses (`JudgeEvalConfig`, `ModelsEvalConfig`,
`RevisionsEvalConfig`, `ConstitutionsEvalConfig`), each written once with its help; the
positional argument of `eval revisions` (the SL run) is the only thing written here.
"""

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cai.cli.app import app
from cai.cli.derive import ConfigFileOpt, QuietOpt, config_command, derived_option
from cai.evaluate.constitutions import ConstitutionsEvalConfig
from cai.evaluate.judge import JudgeEvalConfig
from cai.evaluate.models import ModelsEvalConfig
from cai.evaluate.revisions import RevisionsEvalConfig

eval_app = typer.Typer(help="Evaluate judges and models.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@config_command(eval_app, "judge", JudgeEvalConfig)
def eval_judge(config: JudgeEvalConfig, quiet: bool) -> None:
    """How often an AI labeller agrees with human harmlessness labels."""
    from cai.evaluate.judge import run_judge_eval

    result = run_judge_eval(config, show_progress=not quiet)
    labeling = config.labeling
    table = Table(title=f"judge accuracy vs human labels ({labeling.labeler}, {', '.join(labeling.judges)})",
                  show_header=False)
    for key, value in result.summary["report"].items():
        table.add_row(key.replace("_", " "), json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)


@config_command(eval_app, "constitutions", ConstitutionsEvalConfig, arguments=("constitution_a", "constitution_b"))
def eval_constitutions(config: ConstitutionsEvalConfig, quiet: bool) -> None:
    """A/B test of two constitutions: the same pairs, judge and seeds under A and under B.

    Reports their agreement, the pairs that flip (with examples), each one's accuracy
    against the human labels with an exact McNemar test of the difference, and the
    per-principle deltas. Writes comparisons.jsonl, report.json, failures.jsonl,
    summary.json and manifest.json; `cai report` draws it. Compare with the shipped
    one-principle baseline: `cai eval constitutions baseline mine.yaml --pairs ...`.
    """
    from cai.evaluate.constitutions import run_constitutions_eval

    result = run_constitutions_eval(config, show_progress=not quiet)
    report = json.loads((result.run.path / result.summary["report_file"]).read_text("utf-8"))
    names = report["constitutions"]
    table = Table(title=f"A: {names['a']['name']} ({names['a']['hash']})  vs  B: {names['b']['name']} "
                        f"({names['b']['hash']})  on {report['pairs_asked']} pairs (all counts: report.json)",
                  show_header=False)
    agreement, flips = report["agreement"], report["flips"]
    table.add_row("agreement", f"{agreement['rate']} {_ci(agreement['ci95'])} ({agreement['denominator']})")
    table.add_row("flips", f"{flips['count']} ({flips['denominator']})")
    for side in ("a", "b"):
        if "accuracy" in report:
            acc = report["accuracy"][side]
            table.add_row(f"accuracy {side.upper()}", f"{acc['rate']} {_ci(acc['ci95'])} ({acc['denominator']})")
    if "mcnemar" in report:
        m = report["mcnemar"]
        table.add_row("McNemar (exact)", f"p = {m['p_value']} (A right, B not: {m['a_right_b_not']}; B right, A not: "
                                         f"{m['b_right_a_not']}; {m['denominator']})")
    for pid, d in report["per_principle"]["deltas"].items():
        if d["in"] == "both" and not d["changed"] and not any(d[k]["delta"] for k in ("agreement", "strength")):
            continue
        parts = [f"{k} {d[k]['a']} (of {d[k]['a_of']}) -> {d[k]['b']} (of {d[k]['b_of']})"
                 for k in ("agreement", "strength") if d[k]["a"] is not None or d[k]["b"] is not None]
        where = {"a": "only in A", "b": "only in B"}.get(d["in"], "changed" if d["changed"] else "same text")
        table.add_row(f"principle {pid}", f"{where}: " + ("; ".join(parts) or "no labels"))
    Console().print(table)


@config_command(eval_app, "models", ModelsEvalConfig)
def eval_models(config: ModelsEvalConfig, quiet: bool) -> None:
    """Compare two or more policies: harmlessness and helpfulness win rates, Elo, refusals.

    Writes responses.jsonl, comparisons.jsonl, refusals.jsonl, report.json, failures.jsonl,
    summary.json and manifest.json; re-running on the same --out resumes.
    """
    from cai.evaluate.models import run_models_eval

    result = run_models_eval(config, show_progress=not quiet)
    print_models_report(json.loads((result.run.path / result.summary["report_file"]).read_text("utf-8")), Console())
    note = small_judge_note([config.judging.judge])
    if note:
        Console().print(f"[yellow]{note}[/]", highlight=False, soft_wrap=True)


def print_models_report(report: dict[str, Any], console: Console) -> None:
    """Headline figures; report.json (and `cai report`) has every count and denominator."""
    table = Table(title="cai eval models (all counts: report.json)")
    for column in ("scale / refusals", "model", "rate", "95% CI", "over", "Elo [95%]"):
        table.add_column(column)
    for scale in ("harmlessness", "helpfulness"):
        data = report.get(scale)
        if not data:
            continue
        elo = (data.get("elo") or {}).get("players", {})
        for model, r in data["overall"].items():
            e = elo.get(model)
            table.add_row(f"{scale} win rate", model, str(r["win_rate"]), _ci(r["ci95"]),
                          f"{r['labelled']} labelled of {r['asked']}", f"{e['elo']} {_ci(e['ci95'])}" if e else "")
    for kind, data in (report.get("refusals") or {}).items():
        for model, r in ((data or {}).get("models") or {}).items():
            for how in ("judge", "matcher"):
                x = r[how]
                undecided = f" (+{x['failures']} undecided)" if x["failures"] else ""
                table.add_row(f"refusals {kind} ({how})", model, str(x["rate"]), _ci(x["ci95"]),
                              f"{x['count']} of {x['of']}{undecided}", "")
    console.print(table)


def small_judge_note(judges: list[str]) -> str | None:
    """A line to print beside win rates judged by an embedded demo model (135M / 270M parameters)."""
    from cai.engines.models import EMBEDDED_MODELS

    small = [j for j in judges if j in EMBEDDED_MODELS]
    if not small:
        return None
    return (f"note: judged by {', '.join(small)}, an embedded model of a few hundred million parameters whose labels "
            "sit near chance on human preferences: these figures show the machinery, not the quality. Use a "
            "stronger --judge to measure quality.")


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:g}, {ci[1]:g}]" if ci else "—"


def _opt(name: str) -> Any:
    """The option `name` of `cai eval revisions`."""
    return derived_option(RevisionsEvalConfig, name)


@eval_app.command("revisions")
def eval_revisions(
    sl_run: Annotated[str, typer.Argument(help="A `cai sl` run directory (its sl.jsonl is scored).")],
    out: _opt("out") = None,
    judge: _opt("judge") = None,
    reward_model: _opt("reward_model") = None,
    harmless_constitution: _opt("harmless_constitution") = None,
    helpful_constitution: _opt("helpful_constitution") = None,
    helpfulness: _opt("helpfulness") = None,
    principles_per_label: _opt("principles_per_label") = None,
    limit: _opt("limit") = None,
    on_bad_input: _opt("on_bad_input") = None,
    seed: _opt("seed") = None,
    concurrency: _opt("concurrency") = None,
    engine_options: _opt("engine_options") = None,
    max_failure_rate: _opt("max_failure_rate") = None,
    config_file: ConfigFileOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The score-by-revision curve of an SL run: each revision against the initial answer.

    Writes revisions.jsonl and report.json (default --out: <SL_RUN>/eval-revisions).
    """
    from cai.evaluate.revisions import run_revisions_eval

    values = dict(sl_run=sl_run, out=out, judge=judge, reward_model=reward_model,
                  harmless_constitution=harmless_constitution, helpful_constitution=helpful_constitution,
                  helpfulness=helpfulness, principles_per_label=principles_per_label, limit=limit,
                  on_bad_input=on_bad_input, seed=seed, concurrency=concurrency, engine_options=engine_options,
                  max_failure_rate=max_failure_rate)
    config = RevisionsEvalConfig.load(values, config_file)
    result = run_revisions_eval(config, show_progress=not quiet)
    report = json.loads((result.run.path / result.summary["report_file"]).read_text("utf-8"))
    table = Table(title=f"score by revision ({report['denominator']})")
    for column in ("scale", "round", "win rate vs initial", "95% CI", "over"):
        table.add_column(column)
    for scale, curve in report["curves"].items():
        for p in curve["points"]:
            table.add_row(scale, str(p["round"]), str(p["win_rate"]), _ci(p["ci95"]),
                          f"{p['labelled']} labelled of {p['asked']}")
    for r in report.get("reward_curve") or []:
        table.add_row("reward", str(r["round"]), f"mean {r['mean_reward']} ± {r['stderr']}", "", f"{r['n']} answers")
    Console().print(table)
    note = small_judge_note([config.scoring.judge])
    if note:
        Console().print(f"[yellow]{note}[/]", highlight=False, soft_wrap=True)

"""`cai eval models`, `cai eval revisions` and `cai report`: thin wrappers over the library.

Options come from the config dataclasses (`ModelsEvalConfig`, `RevisionsEvalConfig`,
`ReportConfig`), each written once with its help; the positional arguments (the SL run,
the report's paths) are the only thing written here.
"""

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cai.cli.common import app
from cai.cli.derive import ConfigFileOpt, QuietOpt, config_command, derived_option
from cai.cli.export_eval_commands import eval_app
from cai.eval_models import ModelsEvalConfig
from cai.eval_revisions import RevisionsEvalConfig
from cai.report.builder import ReportConfig


@config_command(eval_app, "models", ModelsEvalConfig)
def eval_models(config: ModelsEvalConfig, quiet: bool) -> None:
    """Compare two or more policies: harmlessness and helpfulness win rates, Elo, refusals.

    Writes responses.jsonl, comparisons.jsonl, refusals.jsonl, report.json, failures.jsonl,
    summary.json and manifest.json; re-running on the same --out resumes.
    """
    from cai.eval_models import run_models_eval

    result = run_models_eval(config, show_progress=not quiet)
    print_models_report(json.loads((result.run.path / result.summary["report_file"]).read_text("utf-8")), Console())


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
    from cai.eval_revisions import run_revisions_eval

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


@app.command("report")
def report(
    paths: Annotated[list[str], typer.Argument(help=ReportConfig.__dataclass_fields__["paths"].metadata["help"])],
    out: derived_option(ReportConfig, "out") = None,
    title: derived_option(ReportConfig, "title") = None,
    examples: derived_option(ReportConfig, "examples") = None,
) -> None:
    """One self-contained HTML page (no network needed to view it) from runs and trained models."""
    from cai.report import build_report

    config = ReportConfig.load({"paths": paths, "out": out, "title": title, "examples": examples})
    result = build_report(config)
    Console(stderr=True).print(f"wrote {result.path}: {len(result.sections)} sections from {len(result.sources)} "
                               f"sources, {result.figures} figures, {result.path.stat().st_size / 1024:.0f} KiB in "
                               f"{result.seconds:.1f} s", highlight=False, soft_wrap=True)

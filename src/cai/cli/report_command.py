"""`cai report`: one self-contained HTML page from run directories and trained models. Options:
`cai.report.builder.ReportConfig`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from cai.cli.app import app
from cai.cli.derive import derived_option
from cai.report.builder import ReportConfig


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

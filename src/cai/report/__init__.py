"""`cai report`: one self-contained HTML page from run directories and trained-model folders.

`build_report(ReportConfig(paths=[...], out=...))` is the entry point (`cai.report.builder`);
`sources` finds and reads runs, `sections` and `eval_sections` decide what each kind of run
shows, `plots` draws the figures as inline SVG, `templates/report.html.j2` lays it out.

Reads files and statistics only: may import `cai.core` and `cai.stats`; never a model, an engine or a
command.
"""

from cai.report.builder import ReportConfig, ReportResult, build_report

__all__ = ["ReportConfig", "ReportResult", "build_report"]

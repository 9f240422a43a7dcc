"""The report's figures: matplotlib, rendered to inline SVG text.

Each function takes plain numbers and labels and returns one `<svg>` element (no XML
prologue, no date, text kept as text so the file stays small), ready to inline in the
page: nothing is fetched when the page opens. Every SVG gets its own id prefix
(`svg.hashsalt`), so several figures in one page never share a clip-path id.

Labels come from run files (model names, principle ids), so they are made plain before
matplotlib sees them: a `$` would start mathtext. matplotlib itself escapes `<` and `&`
in SVG text.

Not here: which figures a section shows (`cai.report.sections`).
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Sequence
from typing import Any

_COUNTER = itertools.count()
COLORS = ["#3b6ea8", "#d9822b", "#4f9a5b", "#b5485d", "#7b61a8", "#8c7a5b"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text: Any, limit: int = 40) -> str:
    """A label matplotlib draws as written: no mathtext, bounded length."""
    s = str(text)
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _figure(width: float = 5.6, height: float = 3.2) -> tuple[Any, Any]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def to_svg(fig: Any) -> str:
    plt = _plt()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"cai-fig-{next(_COUNTER)}"}):
        buf = io.StringIO()
        fig.tight_layout()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)


def bars(labels: Sequence[str], values: Sequence[float], *, title: str, xlabel: str = "", ylabel: str = "count",
         color: str = COLORS[0]) -> str:
    fig, ax = _figure()
    positions = range(len(labels))
    drawn = ax.bar(positions, values, color=color, width=0.6)
    ax.bar_label(drawn, fontsize=7)
    ax.set_xlim(-0.75, max(len(labels), 2) - 0.25)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xticks(list(positions), [plain(x, 18) for x in labels], rotation=30 if len(labels) > 5 else 0,
                  ha="right" if len(labels) > 5 else "center", fontsize=8)
    ax.set(title=plain(title, 80), xlabel=plain(xlabel, 80), ylabel=ylabel)
    return to_svg(fig)


def histogram(values: Sequence[float], *, low: float, high: float, bins: int, title: str, xlabel: str) -> str:
    fig, ax = _figure()
    ax.hist(list(values), bins=bins, range=(low, high), color=COLORS[0], edgecolor="white")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set(title=plain(title, 80), xlabel=xlabel, ylabel="count", xlim=(low, high))
    return to_svg(fig)


def reliability(points: Sequence[dict[str, Any]], *, title: str) -> str:
    """Accuracy against mean confidence per bin, with the diagonal of perfect calibration."""
    fig, ax = _figure(4.6, 4.0)
    ax.plot([0.5, 1.0], [0.5, 1.0], linestyle="--", color="#888", label="perfectly calibrated")
    used = [p for p in points if p["count"]]
    if used:
        ax.plot([p["mean_confidence"] for p in used], [p["accuracy"] for p in used], marker="o", color=COLORS[0],
                label="judge")
        for p in used:
            ax.annotate(f"n={p['count']}", (p["mean_confidence"], p["accuracy"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    ax.set(title=plain(title, 80), xlabel="judge confidence max(p, 1-p)", ylabel="accuracy vs human labels",
           xlim=(0.48, 1.02), ylim=(-0.02, 1.02))
    ax.legend(fontsize=8, loc="lower right")
    return to_svg(fig)


def lines(series: dict[str, Sequence[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str) -> str:
    fig, ax = _figure()
    for (name, points), color in zip(series.items(), itertools.cycle(COLORS)):
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=2.5, color=color,
                    label=plain(name, 60))
    ax.set(title=plain(title, 80), xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return to_svg(fig)


def elo_chart(harmless: dict[str, Any] | None, helpful: dict[str, Any] | None, models: Sequence[str]) -> str:
    """The paper's picture: helpfulness Elo (x) against harmlessness Elo (y), with 95% intervals.

    With only one scale, a horizontal interval plot of that scale.
    """
    fig, ax = _figure(5.6, 4.2)
    if harmless and helpful:
        for name, color in zip(models, itertools.cycle(COLORS)):
            x, y = helpful["players"][name], harmless["players"][name]
            ax.errorbar(x["elo"], y["elo"], xerr=[[x["elo"] - x["ci95"][0]], [x["ci95"][1] - x["elo"]]],
                        yerr=[[y["elo"] - y["ci95"][0]], [y["ci95"][1] - y["elo"]]], fmt="o", color=color,
                        capsize=3, label=plain(name, 40))
        ax.set(xlabel="helpfulness Elo", ylabel="harmlessness Elo",
               title=f"Elo relative to {plain(models[0], 30)} (95% bootstrap intervals)")
        ax.axhline(0, color="#bbb", linewidth=0.8)
        ax.axvline(0, color="#bbb", linewidth=0.8)
        ax.legend(fontsize=7)
    else:
        scale, data = ("harmlessness", harmless) if harmless else ("helpfulness", helpful)
        assert data is not None
        for i, (name, color) in enumerate(zip(models, itertools.cycle(COLORS))):
            p = data["players"][name]
            ax.errorbar(p["elo"], i, xerr=[[p["elo"] - p["ci95"][0]], [p["ci95"][1] - p["elo"]]], fmt="o",
                        color=color, capsize=3)
        ax.set_yticks(range(len(models)), [plain(m, 30) for m in models], fontsize=8)
        ax.set(xlabel=f"{scale} Elo relative to {plain(models[0], 30)}", title=f"{scale} Elo (95% intervals)")
    return to_svg(fig)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str, ylabel: str,
                 ylim: tuple[float, float] = (0.0, 1.0)) -> str:
    """Bars per group (e.g. per model), one colour per series; a missing value is left empty."""
    fig, ax = _figure()
    width = 0.8 / max(1, len(series))
    for k, ((name, values), color) in enumerate(zip(series.items(), itertools.cycle(COLORS))):
        xs = [i + k * width for i, v in enumerate(values) if v is not None]
        drawn = ax.bar(xs, [v for v in values if v is not None], width=width, color=color, label=plain(name, 40))
        ax.bar_label(drawn, fmt="%.2f", fontsize=6)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))], [plain(g, 20) for g in groups],
                  fontsize=8)
    ax.set(title=plain(title, 80), ylabel=ylabel, ylim=(ylim[0], ylim[1] * 1.08))
    ax.legend(fontsize=7)
    return to_svg(fig)


def revision_curve(curves: dict[str, list[dict[str, Any]]], rewards: list[dict[str, Any]] | None) -> str:
    """Win rate of revision r over the initial answer (95% Wilson band), per scale; rewards on a twin axis."""
    fig, ax = _figure(5.6, 3.6)
    for (scale, points), color in zip(curves.items(), itertools.cycle(COLORS)):
        pts = [p for p in points if p["win_rate"] is not None]
        xs = [0] + [p["round"] for p in pts]
        ax.plot(xs, [0.5] + [p["win_rate"] for p in pts], marker="o", color=color, label=f"{scale} (judge)")
        ax.fill_between(xs, [0.5] + [p["ci95"][0] for p in pts], [0.5] + [p["ci95"][1] for p in pts],
                        color=color, alpha=0.15)
    ax.set(xlabel="revision round (0 = initial answer)", ylabel="win rate vs initial answer", ylim=(0, 1),
           title="Score by revision")
    if rewards:
        twin = ax.twinx()
        twin.errorbar([r["round"] for r in rewards], [r["mean_reward"] for r in rewards],
                      yerr=[r["stderr"] for r in rewards], color=COLORS[3], marker="s", capsize=3,
                      label="preference model reward")
        twin.set_ylabel("mean reward")
        twin.legend(fontsize=7, loc="lower right")
    if curves:
        ax.legend(fontsize=7, loc="upper left")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return to_svg(fig)


def intervals(rows: Sequence[tuple[str, float | None, Sequence[float] | None]], *, title: str, xlabel: str,
              reference: float | None = None, series: str = "") -> str:
    """A forest plot: one row per label, its value as a dot and its interval as a line (per-principle figures)."""
    shown = [(label, v, ci) for label, v, ci in rows if v is not None]
    fig, ax = _figure(5.6, max(1.6, 0.28 * len(shown) + 1.0))
    for y, (_, value, ci) in enumerate(shown):
        if ci:
            ax.plot([ci[0], ci[1]], [y, y], color=COLORS[0], linewidth=2, solid_capstyle="butt")
        ax.plot([value], [y], "o", color=COLORS[1], markersize=4, label=plain(series) if series and y == 0 else None)
    if reference is not None:
        ax.axvline(reference, color="#888", linewidth=1, linestyle="--")
    ax.set_yticks(list(range(len(shown))), [plain(label, 32) for label, _, _ in shown], fontsize=7)
    ax.set_ylim(-0.8, max(len(shown), 1) - 0.2)
    ax.invert_yaxis()
    ax.set(title=plain(title, 80), xlabel=plain(xlabel, 80))
    return to_svg(fig)

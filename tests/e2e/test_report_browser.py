"""The report in a real browser: headless Chromium opens it from disk, offline.

Chromium writes every console message (errors, CSP violations, failed loads) to stderr
with `--enable-logging=stderr`; a page that rendered cleanly writes none. The first test
shows that this check does catch a broken page, so the second one can fail.

Needs Debian's `chromium` package (`apt-get install -y chromium`); without a Chromium
on PATH (or in $CAI_CHROMIUM) these tests are skipped, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cai.report import ReportConfig, build_report
from tests.unit.test_eval_models import build_models_run, build_sl_run
from tests.unit.test_principle_report import build_ab_run, build_audit_run
from tests.unit.test_report import HOSTILE_MODEL, build_judge_run, build_model_folder, build_rl_run

pytestmark = pytest.mark.slow
CONSOLE = re.compile(r":CONSOLE[:(]")
WIDTH, HEIGHT = 1200, 2000


def find_chromium() -> str | None:
    for name in (os.environ.get("CAI_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if not found:
        pytest.skip("no Chromium found (looked for $CAI_CHROMIUM, chromium, chromium-browser, google-chrome); "
                    "install Debian's package: apt-get install -y chromium")
    return found


def open_page(chromium: str, page: Path, profile: Path, *, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(what Chromium printed to stdout, its console messages) for one headless visit."""
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
            "--v=0", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if CONSOLE.search(line)]


def test_the_console_check_catches_a_broken_page(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" "
                    "content=\"default-src 'none'\"></head><body><p>hi</p><script>alert(1)</script></body></html>")
    _, console = open_page(chromium, page, tmp_path / "profile")
    assert console and any("Content Security Policy" in line for line in console), console


def test_report_renders_in_chromium(chromium: str, tmp_path: Path) -> None:
    build_sl_run(tmp_path)
    build_models_run(tmp_path, models=["fake:ev-safe", f"{HOSTILE_MODEL}=fake:ev-refuse"])
    build_rl_run(tmp_path)
    build_judge_run(tmp_path)
    build_model_folder(tmp_path)
    build_audit_run(tmp_path)
    build_ab_run(tmp_path)
    report = tmp_path / "report.html"
    result = build_report(ReportConfig(paths=[str(tmp_path)], out=str(report)))

    dom, console = open_page(chromium, report, tmp_path / "profile")
    assert console == [], f"the page logged to the console: {console}"
    assert dom.count('<figure class="plot"><svg') == result.figures >= 7  # every plot is there, inline
    assert "<script" not in dom.lower() and "&lt;script&gt;" in dom  # hostile text stayed text
    opened = len(re.findall(r"<details[ >]", dom))
    assert opened == dom.count("</details>") == sum(len(s.examples) for s in result.sections)
    # the per-principle tables and the A/B section, as the browser built the page
    assert dom.count("<caption>Per principle: ") == sum(
        1 for s in result.sections for t in s.tables if t.caption.startswith("Per principle: ")) >= 4
    assert re.search(r"<th>strength \[95% bootstrap\]</th>", dom) and "duplicates safe-again" in dom
    ab = dom[dom.index("<h2>A/B test of two constitutions</h2>"):]
    ab = ab[:ab.index("</section>")]
    for text in ("McNemar (exact, two-sided)", "accuracy A vs human labels", "<caption>Per-principle deltas (B - A):",
                 "<td>changed</td>", "flip h2", "&lt;b&gt;rules-b&lt;/b&gt;"):
        assert text in ab, text
    assert ab.count('<figure class="plot"><svg') == 1  # the accuracy of A and B with their intervals

    shot = tmp_path / "report.png"
    _, console = open_page(chromium, report, tmp_path / "profile", screenshot=shot)
    assert console == []
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (WIDTH, HEIGHT)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # not a blank page: text, tables and plots drew


def test_stage_verdicts_and_the_elo_by_stage_figure_render_in_chromium(chromium: str, tmp_path: Path) -> None:
    """What `cai recipe` ends with: the Elo of each stage (helpfulness against harmlessness, with
    intervals), the refusal rates, the model-comparison table and one verdict per stage."""
    from tests.unit.test_stage_verdicts import STAGES, judge_check

    out, _ = build_models_run(tmp_path, models=STAGES, judge_agreement=str(judge_check(tmp_path, 0.52, [0.42, 0.62])))
    report = tmp_path / "report.html"
    result = build_report(ReportConfig(paths=[str(out)], out=str(report)))
    dom, console = open_page(chromium, report, tmp_path / "profile")
    assert console == [], f"the page logged to the console: {console}"
    assert dom.count('<figure class="plot"><svg') == result.figures >= 2  # Elo by stage, refusal rates
    assert "Elo of each model relative to the first" in dom and "Refusal rate per model" in dom
    assert "Models compared" in dom and dom.count(" vs start: harmlessness ") == 2  # sft and dpo
    assert "judge vs human labels" in dom and "not above chance" in dom

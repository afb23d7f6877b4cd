from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spillover.report.html import load_summary, render_report, write_html_report
from spillover.report.plots import FIGURES

CHROMIUM = Path("/usr/bin/chromium")


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_embeds_every_figure_and_nothing_external(summary):
    text = render_report(summary)
    images = _images(text)
    assert len(images) == len(FIGURES)
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 5000 for img in images)
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert "<script" not in text
    # user strings are escaped
    assert "&lt;angle brackets&gt; &amp; ampersand" in text and "<angle" not in text
    assert "spillover demo &lt;test&gt;" in text
    assert "insecure_mixed" in text and "40.0%" in text  # geometry's relative reduction at 50%


def test_report_of_partial_summary_says_what_is_missing():
    text = render_report({"em": {"insecure": {"misaligned_rate": 0.1, "ci": [0.05, 0.15]}}})
    assert len(_images(text)) == 1
    assert text.count("Not in this run.") == len(FIGURES) - 1
    assert "No filtering experiment" in text


def test_write_report_and_cli(tmp_path, summary):
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    path = write_html_report(tmp_path)
    assert path == tmp_path / "report.html" and path.read_text().startswith("<!DOCTYPE html>")
    from spillover.cli.report import app

    out = tmp_path / "other" / "r.html"
    result = CliRunner().invoke(app, [str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    missing = CliRunner().invoke(app, [str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "spillover demo" in missing.output


def test_report_cli_fails_before_drawing_on_a_bad_summary_or_out(tmp_path, summary, monkeypatch):
    import spillover.report.html as html
    from spillover.cli.report import app

    monkeypatch.setattr(html, "render_report", lambda *a, **k: pytest.fail("rendered despite a bad input"))
    (tmp_path / "summary.json").write_text("{not json")
    bad = CliRunner().invoke(app, [str(tmp_path)])
    assert bad.exit_code == 2 and "not valid JSON" in bad.output
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    folder = CliRunner().invoke(app, [str(tmp_path), "--out", str(tmp_path)])
    assert folder.exit_code == 2 and f"--out {tmp_path} is a folder" in folder.output


def test_load_summary_names_the_file_on_bad_json(tmp_path):
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="summary.json: not valid JSON"):
        load_summary(tmp_path)


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(tmp_path, summary):
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html_path = write_html_report(tmp_path)
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1200,2400",
        f"--screenshot={shot}",
        html_path.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    shutil.rmtree(profile, ignore_errors=True)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    # The page must show rendered figures, not a blank page: many distinct colours, including the
    # inducing-red of the EM bars, and a substantial non-white area.
    small = img.resize((300, 600))
    pixels = [small.getpixel((x, y)) for y in range(small.height) for x in range(small.width)]
    non_white = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    assert non_white > 0.05
    assert len(set(pixels)) > 200
    assert any(abs(r - 0xC0) < 40 and g < 110 and b < 110 for r, g, b in pixels)


def test_claims_come_first_with_their_verdicts_escaped(summary):
    from spillover.report.html import render_report

    summary = {
        **summary,
        "run": {**summary.get("run", {}), "organisms": [0, 1, 2], "seeds": [0]},
        "verdicts": [
            {
                "claim": "EM: a > b",
                "measured": "5% vs 1%",
                "interval": "[+1, +7] pp",
                "verdict": "held",
                "criterion": "c",
            },
            {
                "claim": "x <script>",
                "measured": "–",
                "interval": "–",
                "verdict": "not held",
                "criterion": "c",
            },
        ],
    }
    page = render_report(summary)
    assert page.index("Claims") < page.index("EM: a &gt; b") < page.index("x &lt;script&gt;")
    assert "3 organism(s) x 1 fine-tuning seed(s)" in page
    assert ">not held</b>" in page and "<script>" not in page


def test_every_table_row_has_the_headers_cells(summary):
    text = render_report(summary)
    for table in re.findall(r"<table>.*?</table>", text, flags=re.S):
        width = table.split("</thead>")[0].count("<th>")
        rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], flags=re.S)
        assert all(row.count("<td>") == width for row in rows), table[:200]
    from spillover.report.html import _table

    with pytest.raises(ValueError, match="header's 2 cells"):
        _table(["a", "b"], [["only one"]])


def test_the_dataset_table_lists_datasets_only_with_their_roles(summary):
    text = render_report(summary)
    table = text.split("<h2>Results per dataset</h2>")[1].split("</table>")[0].split("<tbody>")[1]
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    kinds = {row[0]: row[1] for row in cells}
    assert "per_layer_p" not in kinds  # a mapping in the geometry section, not a dataset
    assert (kinds["insecure"], kinds["secure"], kinds["grey_code"]) == ("inducing", "control", "dataset")


def test_worker_time_is_listed_beside_the_stages_wall_times(summary):
    summary["worker_time_s"] = {"fine-tune (EM)": 151.25, "geometry": 49.5}
    text = render_report(summary)
    assert "in the workers: fine-tune (EM)" in text and "in the workers: geometry" in text
    assert "No timings recorded" not in text

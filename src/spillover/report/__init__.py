"""Figures and a self-contained HTML report made from saved results only."""

from spillover.report.html import load_summary, render_report, write_html_report

__all__ = ["load_summary", "render_report", "write_html_report"]

"""A self-contained HTML report of a Comparison: summary table and a per-layer SQNR bar
chart drawn as inline SVG (no plotting dependency, opens anywhere)."""

from __future__ import annotations

import html
import math

from onnxq.compare import Comparison, TensorError

__all__ = ["render_html", "sqnr_svg"]


def _fmt_db(v: float) -> str:
    return "∞" if math.isinf(v) and v > 0 else f"{v:.1f}"


def sqnr_svg(layers: tuple[TensorError, ...] | list[TensorError], *, width: int = 900, bar_height: int = 14) -> str:
    """Horizontal bars, one per layer in graph order, length = SQNR in dB (capped at 80)."""
    cap = 80.0
    label_w = 260
    height = bar_height * len(layers) + 40
    worst = {t.name for t in sorted(layers, key=lambda t: t.sqnr_db)[:5]}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sqnr-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
    ]
    scale = (width - label_w - 60) / cap
    for db in range(0, int(cap) + 1, 10):
        x = label_w + db * scale
        parts.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{height - 15}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="14" text-anchor="middle" fill="#555">{db} dB</text>')
    for i, t in enumerate(layers):
        y = 22 + i * bar_height
        value = min(t.sqnr_db, cap) if not math.isnan(t.sqnr_db) else 0.0
        w = max(value, 0.0) * scale
        color = "#d9534f" if t.name in worst else "#4a7fb5"
        name = html.escape(t.name if len(t.name) < 42 else "…" + t.name[-40:])
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_height - 4}" text-anchor="end">{name}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 1}" width="{w:.1f}" height="{bar_height - 3}" fill="{color}">'
            f"<title>{html.escape(t.name)} ({html.escape(t.op_type)}): {_fmt_db(t.sqnr_db)} dB</title></rect>"
        )
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_height - 4}" fill="#333">{_fmt_db(t.sqnr_db)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(comparison: Comparison, *, float_name: str, quant_name: str) -> str:
    rows = []
    for o in comparison.outputs:
        top1 = "" if o.top1_agreement is None else f"{o.top1_agreement:.1%}"
        rows.append(
            f"<tr><td>{html.escape(o.name)}</td><td>{o.cosine:.6f}</td><td>{_fmt_db(o.sqnr_db)}</td>"
            f"<td>{o.max_abs_error:.4g}</td><td>{top1}</td></tr>"
        )
    worst = "".join(
        f"<li>node <code>{html.escape(t.node)}</code> ({html.escape(t.op_type)}) → <code>{html.escape(t.name)}</code>: "
        f"{_fmt_db(t.sqnr_db)} dB</li>"
        for t in comparison.worst_layers(5)
    )
    chart = sqnr_svg(comparison.layers) if comparison.layers else "<p>No layers matched by name.</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>onnxq compare: {html.escape(quant_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child{{text-align:left}}</style>
</head><body>
<h1>onnxq compare</h1>
<p>float <code>{html.escape(float_name)}</code> vs quantized <code>{html.escape(quant_name)}</code>,
{comparison.samples} samples.</p>
<h2>Outputs</h2>
<table id="summary"><tr><th>output</th><th>cosine</th><th>SQNR dB</th><th>max abs error</th><th>top-1 agreement</th></tr>
{''.join(rows)}</table>
<h2>Worst layers</h2><ol id="worst">{worst}</ol>
<h2>Per-layer SQNR (graph order; red: the five worst)</h2>
{chart}
</body></html>
"""

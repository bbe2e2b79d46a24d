#!/usr/bin/env python
"""Drawing 43,200 points (30 days of minutes) with uPlot in Debian's chromium.

Figure: "a chart of 43,200 points drawn in ≤ 300 ms", as a ratio to the floor: the same points
drawn on a plain canvas of the same size with moveTo/lineTo and one stroke, in the same page.

The page holds uPlot from npm (node_modules/uplot/dist, what the panel serves as static) and
nothing else. Each round makes a fresh chart (uPlot: a new uPlot() with two series, avg and
peak, as the panel's cards draw them, until its draw hook; floor: both lines on a new canvas)
and reads one pixel back so the drawing has really happened. No panel or database is needed.

    .venv/bin/python benchmarks/metrics_render.py [--points 43200] [--rounds 30] [--tiny]
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.live import parse_args, summary  # noqa: E402
from tests.e2e.conftest import CHROMIUM_ARGS  # noqa: E402

GOAL_MS = 300.0
UPLOT = ROOT / "node_modules" / "uplot" / "dist"
PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>{css}</style></head>
<body style="margin:0;width:1200px"><div id="box"></div><script>{js}</script><script>
function series(n) {{
  const t = new Float64Array(n), avg = new Array(n), max = new Array(n), now = 1.7e9;
  for (let i = 0; i < n; i++) {{
    t[i] = now - (n - i) * 60;
    const v = 30 + 20 * Math.sin(i / 200) + 10 * Math.sin(i / 7) + (i * 7919 % 13);
    avg[i] = v; max[i] = v + (i * 104729 % 17);
  }}
  return [Array.from(t), avg, max];
}}
function withUplot(data) {{
  const box = document.getElementById("box");
  box.textContent = "";
  return new Promise((resolve) => {{
    const t0 = performance.now();
    new uPlot({{width: 1160, height: 170, scales: {{x: {{time: true}}}},
      cursor: {{drag: {{x: true, y: false}}}},
      series: [{{}}, {{stroke: "#2f5bd3", width: 1.6}}, {{stroke: "#2f5bd380", width: 1, dash: [4, 3]}}],
      hooks: {{draw: [(u) => {{ u.ctx.getImageData(0, 0, 1, 1); resolve(performance.now() - t0); }}]}}}}, data, box);
  }});
}}
function withCanvas(data) {{
  const box = document.getElementById("box");
  box.textContent = "";
  const t0 = performance.now();
  const c = document.createElement("canvas");
  c.width = 1160; c.height = 170;
  box.appendChild(c);
  const ctx = c.getContext("2d"), t = data[0], n = t.length;
  let lo = Infinity, hi = -Infinity;
  for (let s = 1; s < data.length; s++) for (let i = 0; i < n; i++) {{
    const v = data[s][i]; if (v < lo) lo = v; if (v > hi) hi = v;
  }}
  const sx = c.width / (t[n - 1] - t[0]), sy = c.height / (hi - lo);
  for (let s = 1; s < data.length; s++) {{
    ctx.beginPath();
    for (let i = 0; i < n; i++) {{
      const x = (t[i] - t[0]) * sx, y = c.height - (data[s][i] - lo) * sy;
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    }}
    ctx.strokeStyle = s === 1 ? "#2f5bd3" : "#2f5bd380";
    ctx.stroke();
  }}
  ctx.getImageData(0, 0, 1, 1);
  return Promise.resolve(performance.now() - t0);
}}
</script></body></html>"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=43_200)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = parse_args(ap, tiny={"points": 43_200, "rounds": 3, "warmup": 1})
    from playwright.sync_api import sync_playwright

    html = PAGE.format(css=(UPLOT / "uPlot.min.css").read_text(), js=(UPLOT / "uPlot.iife.min.js").read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 400})
            page.set_content(html)
            page.evaluate(f"window.data = series({args.points})")
            results = {}
            for name in ("withUplot", "withCanvas"):
                page.evaluate(f"async () => {{ for (let i = 0; i < {args.warmup}; i++) await {name}(window.data); }}")
                results[name] = page.evaluate(
                    f"async () => {{ const out = []; for (let i = 0; i < {args.rounds}; i++) out.push(await {name}(window.data)); return out; }}")
            drawn = page.evaluate("""() => { const c = document.querySelector('#box canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
        finally:
            browser.close()
    up, floor = summary(results["withUplot"]), summary(results["withCanvas"])
    print(f"drawing {args.points:,} points (two series: avg and peak) on a 1160×170 chart, headless chromium, "
          f"{args.rounds} rounds after {args.warmup} warm-up")
    print(f"  uPlot   p50 {up['p50']:7.1f}  p95 {up['p95']:7.1f}  max {up['max']:7.1f} ms   (new uPlot() to its draw hook)")
    print(f"  floor   p50 {floor['p50']:7.1f}  p95 {floor['p95']:7.1f}  max {floor['max']:7.1f} ms   "
          f"(plain canvas: min/max, moveTo/lineTo per point, one stroke per series; {drawn} pixels drawn)")
    print(f"  ratio uPlot/floor   p50 {up['p50'] / floor['p50']:6.2f}×   p95 {up['p95'] / floor['p95']:6.2f}×")
    print(f"  goal ≤ {GOAL_MS:.0f} ms: {'MET' if up['p95'] <= GOAL_MS else 'NOT MET'} (p95 {up['p95']:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

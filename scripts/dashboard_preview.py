"""Render deploy/grafana/vla-edge-dashboard.json's panels from a Prometheus, without Grafana, to one PNG.

Grafana is not packaged by Debian, so this is how the dashboard is looked at here: every panel's PromQL is run
through Prometheus's HTTP API (``query_range``), with ``$robot`` as ``.*`` and ``$__rate_interval`` as
``--rate-interval``, and drawn with matplotlib at the panel's place in the dashboard grid. It is a preview of the
queries and their data, not Grafana's look.

    python scripts/dashboard_preview.py --prometheus http://127.0.0.1:9090 --minutes 5 --out dashboard.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "vla-edge-dashboard.json"
UNIT_SCALE = {"s": (1000.0, "ms"), "bytes": (1 / 2**20, "MiB"), "percentunit": (100.0, "%")}


def expand(expr: str, rate_interval: str) -> str:
    return expr.replace("$robot", ".*").replace("$__rate_interval", rate_interval)


def legend(template: str, labels: dict[str, str]) -> str:
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out if "{{" not in out else ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__")


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=5.0, help="time range ending now")
    parser.add_argument("--end", type=float, default=None, help="end of the range (unix seconds; default now)")
    parser.add_argument("--rate-interval", default="30s")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args(argv)
    dashboard = json.loads(args.dashboard.read_text())
    end = args.end or time.time()
    start = end - args.minutes * 60
    step = max(1.0, (end - start) / 300)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig = plt.figure(figsize=(18, rows * 0.40))
    grid = fig.add_gridspec(rows, 24, hspace=4.0, wspace=2.5, top=0.95)
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        scale, shown_unit = UNIT_SCALE.get(unit, (1.0, unit if unit not in ("short", "") else ""))
        if panel["type"] == "stat" and unit == "s":
            scale, shown_unit = 1.0, "s"
        ax.set_title(panel["title"] + (f" [{shown_unit}]" if shown_unit else ""), fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        drawn = 0
        for target in panel["targets"]:
            for series in query_range(args.prometheus, expand(target["expr"], args.rate_interval), start, end, step):
                t = [float(v[0]) - end for v in series["values"]]
                y = [float(v[1]) * scale for v in series["values"]]
                label = legend(target.get("legendFormat", ""), series["metric"])
                if panel["type"] == "stat":
                    ax.plot(t, y, lw=1, color="#2457c5")
                    ax.text(0.98, 0.9, f"{y[-1]:.3g}{shown_unit and ' ' + shown_unit}", transform=ax.transAxes,
                            ha="right", va="top", fontsize=14, weight="bold")
                else:
                    ax.plot(t, y, lw=1.4, label=label)
                drawn += 1
        if panel["type"] != "stat" and drawn:
            ax.legend(fontsize=6, loc="upper left", ncol=2, frameon=False)
        if "confidence" in panel["title"].lower():
            ax.axhline(1.0, color="#c0392b", ls="--", lw=1)
        if not drawn:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#888")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{dashboard['title']} dashboard: panels rendered from Prometheus data with matplotlib "
                 f"(not Grafana), last {args.minutes:g} min; x = seconds before the end", fontsize=11)
    fig.savefig(args.out, dpi=90, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

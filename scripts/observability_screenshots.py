"""The README's observability pictures, made on a machine without a screen:

1. a short demo run (the daemon, the simulated arm, a simulated operator) logged to an .rrd file while Debian's
   Prometheus scrapes it with the shipped config;
2. the last refused chunk of that run in Rerun's web viewer (``rerun --serve-web``, offline), rendered by headless
   Chromium with a software rasteriser, the time cursor on the refusal;
3. the Grafana dashboard's panels drawn from that Prometheus's data (scripts/dashboard_preview.py: Grafana is not
   packaged by Debian, so not Grafana's rendering);
4. the operator console with the refused plan on the escalation card (the demo's console, in headless Chromium).

    python scripts/observability_screenshots.py --out docs/images [--seed 5] [--steps 4]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--ignore-gpu-blocklist", "--disable-background-networking", "--no-first-run"]


def last_refusal_tick(rrd: Path) -> int:
    from rerun.chunk import RrdReader

    ticks = []
    for chunk in RrdReader(rrd).stream():
        if chunk.entity_path != "/chunks/verdict" or chunk.is_static:
            continue
        batch = chunk.to_record_batch()
        for tick, level in zip(batch.column("tick").to_pylist(), batch.column("TextLog:level").to_pylist()):
            if level and level[0] == "WARN":
                ticks.append(int(tick))
    if not ticks:
        raise SystemExit("no chunk was refused in this run: try another --seed")
    return max(ticks)


def run_demo(work: Path, seed: int, steps: int, console_shot: Path | None, min_ticks: int = 60):
    from hil.harness import SimRobotProcess, SimulatedOperator, StepJudge
    from hil.prometheus import Prometheus, free_port, wait_for
    from vla_edge.config import load_settings
    from vla_edge.paths import REFERENCE_BUNDLE_DIR
    from vla_edge.service import Daemon
    from vla_edge.task import TaskSpec

    rrd = work / "run.rrd"
    with SimRobotProcess(seed=seed) as robot:
        p = robot.ports
        settings = load_settings(
            None,
            camera={"source": "sim", "sim_endpoint": p.endpoint(p.frames)},
            stream={"command_endpoint": p.endpoint(p.commands), "state_endpoint": p.endpoint(p.state), "curve": False},
            task={"state_dir": str(work / "state")},
            recorder={"enabled": False},
            operator={"port": free_port()},
            telemetry={"metrics_port": 0, "rerun": str(rrd)},
            policy={"bundle": str(REFERENCE_BUNDLE_DIR), "precision": "int8"},
        )
        sim = robot.channel()
        with Daemon(settings) as daemon:
            prometheus = Prometheus(shutil.which("prometheus"), work, f"127.0.0.1:{daemon.metrics_server.port}")
            wait_for(prometheus.ready, 60, "prometheus")
            wait_for(lambda: prometheus.scalar('up{job="vla-edge"}') == 1.0, 60, "the first scrape")
            daemon.wait_for_controller(15.0)
            daemon.wait_for_camera(10.0)
            instructions = sim.chain(steps, seed)
            judge = StepJudge(sim)
            # The operator answers after a pause long enough for the console screenshot of the open question.
            operator = SimulatedOperator(daemon.escalations, daemon.teleop, sim, judge, instructions, 15.0).start()
            shooter = None
            if console_shot is not None:
                shooter = threading.Thread(target=shoot_console, args=(daemon, console_shot), daemon=True)
                shooter.start()
            started = time.time()
            def on_event(event) -> None:
                judge.on_event(event)
                # End the recording at a refusal once it has some history: a viewer opens it at its end.
                if event.kind == "escalated" and event.detail.get("escalation_kind") == "low_confidence" \
                        and daemon.rerun.ticks_logged >= min_ticks:
                    daemon.rerun.close()

            try:
                daemon.run_task(TaskSpec(f"screenshots-{seed}", tuple(instructions)), threading.Event(),
                                events=on_event)
            finally:
                operator.stop()
            wait_for(lambda: (prometheus.scalar('timestamp(vla_edge_uptime_seconds)') or 0) > time.time() - 0.5,
                     30, "a last scrape")
            ended = time.time()
            if shooter is not None:
                shooter.join(timeout=30)
        sim.close()
    return rrd, prometheus, started, ended


def shoot_console(daemon, out: Path) -> None:
    """When the first refusal is open in the console, screenshot the page (the plan on the card)."""
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(e.kind == "low_confidence" for e in daemon.escalations.open()):
        time.sleep(0.1)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(daemon.console.url)
        page.locator(".card[data-plan='1']").wait_for(timeout=10000)
        page.wait_for_timeout(1200)
        page.screenshot(path=str(out), timeout=240000)
        browser.close()


def serve_file(path: Path) -> tuple[object, str]:
    """Serve one file on loopback with CORS (the web viewer fetches it from its own origin)."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def end_headers(self) -> None:
            self.send_header("Access-Control-Allow-Origin", "*")
            super().end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(path.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/{path.name}"


def shoot_rerun(rrd: Path, tick: int, out: Path, work: Path, wait_s: float = 240.0) -> None:
    """Rerun's web viewer (``rerun --serve-web``, offline) opening the recording, in headless Chromium."""
    from playwright.sync_api import sync_playwright

    from hil.prometheus import free_port

    rerun = shutil.which("rerun") or str(Path(sys.executable).parent / "rerun")
    web = free_port()
    log = (work / "rerun-serve.log").open("wb")
    viewer = subprocess.Popen([rerun, "--serve-web", "--bind", "127.0.0.1", "--web-viewer-port", str(web),
                               "--port", str(free_port())], stdout=log, stderr=subprocess.STDOUT)
    files, data = serve_file(rrd)
    try:
        url = f"http://127.0.0.1:{web}/?url={quote(data, safe='')}#when=tick@{tick}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            for _ in range(60):  # the viewer's server takes a moment to come up
                try:
                    page.goto(url)
                    break
                except Exception:
                    time.sleep(0.5)
            page.wait_for_timeout(wait_s * 1000)  # wasm start-up, loading the file, the software rasteriser
            page.screenshot(path=str(out), timeout=240000)
            browser.close()
    finally:
        files.shutdown()
        viewer.terminate()
        viewer.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--keep", type=Path, default=None, help="also keep the run's .rrd here")
    parser.add_argument("--rrd", type=Path, default=None, help="only the Rerun picture, of this recording")
    parser.add_argument("--wait", type=float, default=240.0,
                        help="seconds the web viewer gets to load and draw (software rendering is slow)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rrd is not None:
        with tempfile.TemporaryDirectory(prefix="vla-edge-shots-") as tmp:
            shoot_rerun(args.rrd, last_refusal_tick(args.rrd), args.out / "rerun_refused_chunk.png", Path(tmp),
                        args.wait)
        return 0
    with tempfile.TemporaryDirectory(prefix="vla-edge-shots-") as tmp:
        work = Path(tmp)
        rrd, prometheus, started, ended = run_demo(work, args.seed, args.steps, args.out / "console_refused_plan.png")
        try:
            if args.keep is not None:
                shutil.copyfile(rrd, args.keep)
            tick = last_refusal_tick(rrd)
            print(f"refused chunk at tick {tick}")
            shoot_rerun(rrd, tick, args.out / "rerun_refused_chunk.png", work, args.wait)
            from scripts.dashboard_preview import main as preview

            preview(["--prometheus", prometheus.url, "--minutes", f"{(ended - started) / 60 + 0.2:.2f}",
                     "--end", f"{ended:.0f}", "--rate-interval", "10s", "--out", str(args.out / "dashboard.png")])
        finally:
            prometheus.stop()
    print(f"wrote {args.out}/rerun_refused_chunk.png, dashboard.png, console_refused_plan.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

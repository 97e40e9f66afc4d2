"""End to end in a real headless Chromium: the page shows an escalation from a task running on the simulated
tabletop; clicking Approve lets the runner proceed; Take over with key presses moves the gripper. Screenshots are
kept under artifacts/ for a person to look at."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hil.tasks import make_chain
from hil.world import TabletopWorld
from vla_edge.checkpoint import CheckpointStore
from vla_edge.config import OperatorSettings, TaskSettings
from vla_edge.operator.console import ConsoleLinks, ConsoleModel, OperatorConsole, PlanView
from vla_edge.operator.escalation import EscalationQueue, TeleopChannel
from vla_edge.task import TaskRunner, TaskSpec

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("hil_executor", Path(__file__).parents[1] / "task" / "hil_executor.py")
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
HilExecutor = _module.HilExecutor


def _wait(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/dev-setup.sh installs it)")
def test_escalation_approve_and_takeover_in_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    world = TabletopWorld(seed=7)
    chain = make_chain(np.random.default_rng(7), world, n_steps=3)
    spec = TaskSpec("browser-demo", tuple(step.instruction for step in chain))
    queue, teleop = EscalationQueue(), TeleopChannel()
    model = ConsoleModel(queue, teleop)

    def on_confidence(ratios, passed):
        # As the daemon's ConsoleObserver does per chunk: the verdict and the chunk's K trajectories on the image.
        model.add_confidence(ratios, passed)
        model.set_plan(PlanView(
            t_s=0.0, start_tick=0, chosen_index=0, passed=passed, reason="" if passed else "spread",
            samples=[[(0.2 + 0.04 * i, 0.2 + 0.02 * i + 0.03 * k) for i in range(8)] for k in range(8)],
            chosen=[(0.2 + 0.04 * i, 0.2 + 0.02 * i) for i in range(8)]))

    executor = HilExecutor(world, faults={(0, 0): 9, (1, 0): 6}, tick_s=0.03, on_confidence=on_confidence)
    model.set_task(spec.task_id, spec.steps)
    model.set_frame_provider(executor.latest_frame)
    model.set_camera_status("sim 96×96 @ 10 Hz")
    model.set_remote_status("off")
    model.set_links(ConsoleLinks(metrics="http://127.0.0.1:9780/metrics", rerun_file="/tmp/run.rrd"))
    runner = TaskRunner(
        spec, executor, queue, CheckpointStore(tmp_path / "state"), TaskSettings(checkpoint_every=3),
        answer_timeout_s=30.0, events=model.on_task_event, teleop=teleop, verifier=executor.verify,
    )
    console = OperatorConsole(model, OperatorSettings(port=0))
    console.start()
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=runner.run(stop)), daemon=True)
    thread.start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(console.url)

            # 1. The low-confidence escalation of step 0 appears with its frame, instruction and figures.
            card = page.locator(".card[data-kind=low_confidence]")
            expect(card).to_have_count(1, timeout=30000)
            expect(card.locator(".instruction")).to_have_text(chain[0].instruction)
            expect(card.locator(".figures")).to_contain_text("spread")
            assert card.locator("img.frame").get_attribute("src").startswith("data:image/jpeg;base64,")
            expect(page.locator("#run-status")).to_have_text("holding")
            expect(page.locator("#steps li.holding")).to_have_count(1)
            page.wait_for_function("document.getElementById('camera').naturalWidth === 96")
            assert executor.overrides == []
            # The refused plan is drawn on the escalation's frame: 8 samples and the chosen chunk in red.
            expect(card).to_have_attribute("data-plan", "1")
            expect(card.locator("canvas.plan")).to_have_attribute("data-samples", "8")
            red = card.locator("canvas.plan").evaluate(
                """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                          for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i+1] < 80 && d[i+3] > 200) n++;
                          return n; }""")
            assert red > 20, red
            expect(page.locator("#camera-plan")).to_have_attribute("data-samples", "8")
            expect(page.locator("#link-metrics")).to_have_attribute("href", "http://127.0.0.1:9780/metrics")
            expect(page.locator("#rerun-file")).to_contain_text("/tmp/run.rrd")

            # 2. Approve: the runner actuates the flagged chunk once and the step goes on.
            card.get_by_role("button", name="Approve").click()
            _wait(lambda: executor.overrides == [0], what="the runner to proceed after Approve")

            # 3. Step 1 escalates; keep a screenshot of the console with the question open.
            card = page.locator(".card[data-kind=low_confidence]")
            expect(card.locator(".step")).to_have_text("step 1", timeout=30000)
            expect(page.locator("#history")).to_contain_text("approve")
            page.wait_for_timeout(700)  # one more poll so plot and camera show the hold
            page.screenshot(path=str(ARTIFACTS / "operator_console_escalation.png"))

            # 4. Take over and drive with the keyboard: three presses right, grip toggle.
            card.get_by_role("button", name="Take over").click()
            expect(page.locator("#teleop")).to_have_class("panel active", timeout=30000)
            with executor.lock:
                before = world.gripper_position()
            page.locator("#teleop h3").click()  # focus on the page, not on a form field
            direction = "ArrowRight" if before[0] < 0.5 else "ArrowLeft"
            for _ in range(3):
                page.keyboard.press(direction)
            page.keyboard.press("g")
            expect(page.locator("#grip")).to_have_text("grip: closed")
            _wait(lambda: teleop.received >= 4, what="the key presses to reach the teleop channel")
            sign = 1 if direction == "ArrowRight" else -1

            def moved() -> float:
                with executor.lock:
                    return float(world.gripper_position()[0] - before[0])

            _wait(lambda: abs(moved() - sign * 0.06) < 0.005, what="the gripper to move 3 presses")
            time.sleep(0.2)  # and stay there
            with executor.lock:
                after = world.gripper_position()
                grip_closed = world.grip_closed()
            assert after[0] - before[0] == pytest.approx(sign * 0.06, abs=0.005)
            assert after[1] == pytest.approx(before[1], abs=0.005)
            assert grip_closed
            page.screenshot(path=str(ARTIFACTS / "operator_console_takeover.png"))

            # 5. "Step done" (Enter) ends the take-over; the task finishes.
            page.keyboard.press("Enter")
            thread.join(30)
            assert not thread.is_alive(), "the task did not finish"
            expect(page.locator("#run-status")).to_have_text("completed", timeout=30000)
            expect(page.locator("#steps li.teleoperated")).to_have_count(1)
            assert errors == [], f"JavaScript errors on the page: {errors}"
            browser.close()
    finally:
        stop.set()
        console.stop()
    outcome = result["r"]
    assert outcome.status == "completed"
    assert [h.resolution for h in outcome.history] == ["done", "teleoperated", "done"]
    assert (ARTIFACTS / "operator_console_escalation.png").stat().st_size > 10_000

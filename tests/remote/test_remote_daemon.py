"""The daemon with the remote tier configured but down: the robot keeps working on the local tier, the console
shows the tier as degraded, and the metrics count each tier's calls. Real sockets, sessions and sim robot."""

from __future__ import annotations

import pytest

from hil.harness import SimRobotProcess, free_port, run_task_with_simulated_operator
from vla_edge.config import load_settings
from vla_edge.service import Daemon

pytestmark = pytest.mark.slow


def test_daemon_with_the_remote_tier_down_completes_its_task_on_the_local_tier(bundle, tmp_path):
    with SimRobotProcess(seed=5) as robot:
        p = robot.ports
        settings = load_settings(
            None,
            camera={"source": "sim", "sim_endpoint": p.endpoint(p.frames)},
            stream={"command_endpoint": p.endpoint(p.commands), "state_endpoint": p.endpoint(p.state),
                    "curve": False},
            # The operator verifies at the checkpoint, so a step the policy got wrong is put right.
            task={"state_dir": str(tmp_path / "state"), "verify_at_checkpoint": True},
            recorder={"enabled": False},
            operator={"enabled": False},
            telemetry={"metrics_port": 0},
            policy={"bundle": str(bundle.path), "precision": "fp32"},
            remote={"enabled": True, "url": f"127.0.0.1:{free_port()}", "deadline_ms": 150.0,
                    "startup_wait_s": 0.3},
        )
        sim = robot.channel()
        with Daemon(settings) as daemon:
            assert daemon.executor.router is not None
            assert daemon.console_model.state().remote.startswith("degraded"), daemon.console_model.state().remote
            assert daemon.wait_for_controller(15.0) and daemon.wait_for_camera(10.0)
            result, judge = run_task_with_simulated_operator(daemon, sim, "remote-down", sim.chain(2, seed=5))
            registry = daemon.metrics.registry
            calls = {f"{s.labels['tier']},{s.labels['outcome']}": s.value for family in registry.collect()
                     for s in family.samples if s.name == "vla_edge_tier_calls_total"}
            remote_up = registry.get_sample_value("vla_edge_remote_tier_up")
            remote_text = daemon.console_model.state().remote
        sim.close()
    assert result.status == "completed"
    assert all(ok for ok, _ in judge.outcomes.values()), judge.outcomes
    assert sum(v for k, v in calls.items() if k.startswith("local,")) > 0
    # Whatever the remote tier was asked, it never answered: no remote pass, and the console still says so.
    assert "remote,pass" not in calls
    assert remote_text.startswith("degraded")
    assert remote_up is not None and remote_up < 1.0

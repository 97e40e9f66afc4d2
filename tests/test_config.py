from pathlib import Path

import pytest

from vla_edge.config import load_settings
from vla_edge.errors import ConfigError


def test_defaults_load():
    settings = load_settings()
    assert settings.operator.host == "127.0.0.1"
    assert 3 <= settings.task.checkpoint_every <= 5


def test_toml_file_and_env_override(tmp_path: Path, monkeypatch):
    path = tmp_path / "vla-edge.toml"
    path.write_text('[policy]\nprecision = "fp32"\nnum_samples = 4\n[camera]\nsource = "0"\n')
    monkeypatch.setenv("VLA_EDGE_POLICY__PRECISION", "int4")
    settings = load_settings(path)
    assert settings.policy.precision == "int4"
    assert settings.policy.num_samples == 4
    assert settings.camera.source == "0"


def test_typo_is_named(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[camera]\nwidht = 64\n")
    with pytest.raises(ConfigError, match=r"camera\.widht"):
        load_settings(path)


def test_bad_value_is_named(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[task]\ncheckpoint_every = 9\n")
    with pytest.raises(ConfigError, match=r"task\.checkpoint_every.*got 9"):
        load_settings(path)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[camera\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


# ---- issue 16 item 3: one set of checks, strict values -------------------------------------------------------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from vla_edge.cli import main  # noqa: E402


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _writable_dirs(tmp_path: Path) -> str:
    return (f'[task]\nstate_dir = "{tmp_path}/state"\ninbox_dir = "{tmp_path}/inbox"\n'
            f'[recorder]\ndataset_dir = "{tmp_path}/dataset"\n')


@pytest.mark.parametrize(("section", "expected"), [
    ('[policy]\nbundle = "/nonexistent/bundle"\n[stream]\ncurve = false\n', "bundle directory not found: /nonexistent/bundle"),
    ('[camera]\nsource = "/dev/video63"\n[stream]\ncurve = false\n', "/dev/video63 does not exist"),
    ('[stream]\nkeys_dir = "/nonexistent/keys"\n', "key file /nonexistent/keys/server.key_secret not found"),
    ('[stream]\ncurve = false\ncommand_endpoint = "tcp://0.0.0.0:5571"\n', "only allowed on loopback endpoints"),
    ('[stream]\ncurve = false\n[operator]\nhost = "0.0.0.0"\n', "set operator.token"),
])
def test_config_check_refuses_what_run_refuses(tmp_path: Path, capsys, section: str, expected: str):
    config = _write(tmp_path / "c.toml", _writable_dirs(tmp_path) + section)
    assert main(["config", "check", str(config), "--no-start"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    task = _write(tmp_path / "t.toml", 'task_id = "t"\nsteps = ["put the red block in the left bin"]\n')
    run = subprocess.run([sys.executable, "-m", "vla_edge.cli", "run", "--config", str(config), "--task", str(task),
                          "--controller-timeout", "1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and expected in run.stderr, run.stderr  # the same check, before any hardware


def test_config_check_lists_every_problem_at_once(tmp_path: Path, capsys):
    config = _write(tmp_path / "c.toml", _writable_dirs(tmp_path) + '[camera]\nsource = "/dev/video63"\n'
                    '[stream]\ncurve = false\ncommand_endpoint = "tcp://0.0.0.0:5571"\n[operator]\nhost = "0.0.0.0"\n')
    assert main(["config", "check", str(config), "--no-start"]) == 2
    err = capsys.readouterr().err
    assert "3 problems in the configuration" in err, err


def test_config_check_starts_the_variant(tmp_path: Path, capsys):
    config = _write(tmp_path / "c.toml", _writable_dirs(tmp_path) + "[stream]\ncurve = false\n")
    assert main(["config", "check", str(config)]) == 0
    assert "int8 variant starts" in capsys.readouterr().out


@pytest.mark.parametrize("make", ["directory", "not-a-directory-parent", "latin1", "deep"])
def test_unreadable_config_is_one_line_and_exit_2(tmp_path: Path, make: str):
    if make == "directory":
        path = tmp_path / "conf.d"
        path.mkdir()
    elif make == "not-a-directory-parent":
        path = _write(tmp_path / "file", "") / "vla-edge.toml"
    elif make == "latin1":
        path = tmp_path / "latin1.toml"
        path.write_bytes('[camera]\nsource = "caméra"\n'.encode("latin-1"))
    else:
        path = _write(tmp_path / "deep.toml", "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    proc = subprocess.run([sys.executable, "-m", "vla_edge.cli", "config", "check", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(("value", "expected"), [
    ("CPUExecutionProvider", ["CPUExecutionProvider"]),
    ("CUDAExecutionProvider, CPUExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ('["CPUExecutionProvider"]', ["CPUExecutionProvider"]),
])
def test_list_settings_from_the_environment_take_a_comma_list(monkeypatch, value: str, expected: list[str]):
    monkeypatch.setenv("VLA_EDGE_POLICY__PROVIDERS", value)
    assert load_settings().policy.providers == expected


def test_unknown_environment_section_or_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("VLA_EDGE_NOSECTION__X", "1")
    with pytest.raises(ConfigError, match="VLA_EDGE_NOSECTION__X: there is no section 'nosection'"):
        load_settings()
    monkeypatch.delenv("VLA_EDGE_NOSECTION__X")
    monkeypatch.setenv("VLA_EDGE_TRITON_PYTHON", "/usr/bin/python3")  # no "__": a tool's variable, not a setting
    load_settings()


@pytest.mark.parametrize("value", ["off", "0", "no", "False "])
def test_switches_from_the_environment_take_only_true_or_false(monkeypatch, value: str):
    monkeypatch.setenv("VLA_EDGE_CONFIDENCE__ENABLED", value)
    if value.strip().lower() == "false":
        assert load_settings().confidence.enabled is False
        return
    with pytest.raises(ConfigError, match="VLA_EDGE_CONFIDENCE__ENABLED: .* use true or false"):
        load_settings()


@pytest.mark.parametrize(("section", "text"), [
    ("confidence", 'enabled = "off"'), ("confidence", "enabled = 0"), ("stream", "curve = 0"),
    ("stream", 'curve = "false"'),
])
def test_switches_in_the_file_must_be_toml_booleans(tmp_path: Path, section: str, text: str):
    path = _write(tmp_path / "c.toml", f"[{section}]\n{text}\n")
    with pytest.raises(ConfigError, match="valid boolean"):
        load_settings(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("[stream]\nstale_after_ms = 50\n", "at least twice stream.heartbeat_ms"),
    ("[scheduler]\ncontrol_rate_hz = 100000\n", "less than or equal to 1000"),
    ("[scheduler]\ncontrol_rate_hz = 0.01\n", "greater than or equal to 1"),
    ("[scheduler]\ncontrol_rate_hz = 2\n", "the controller would hold between two commands"),
    ("[camera]\nstall_timeout_ms = 100\n", "stall_timeout_ms"),
])
def test_settings_that_make_no_sense_together_are_refused(tmp_path: Path, text: str, expected: str):
    with pytest.raises(ConfigError, match=expected):
        load_settings(_write(tmp_path / "c.toml", text))


def _sim_children(seed: int) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "hil.sim_robot" in cmd and "--seed" in cmd and cmd[cmd.index("--seed") + 1] == str(seed):
            found.append(proc)
    return found


@pytest.mark.parametrize(("config_text", "seed"), [
    ("[camera]\nwidht = 64\n", 918_273),  # a config error: no robot may be started
    ('[policy]\nbundle = "/nonexistent/bundle"\n', 918_274),  # fails at daemon start: the robot must be reaped
])
def test_demo_that_stops_on_a_config_error_leaves_no_simulated_robot(tmp_path: Path, config_text: str, seed: int):
    config = _write(tmp_path / "c.toml", config_text)
    proc = subprocess.run([sys.executable, "-m", "vla_edge.cli", "demo", "--config", str(config), "--seed", str(seed),
                           "--out", str(tmp_path / "runs"), "--port", "0"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    deadline = time.monotonic() + 10
    left = _sim_children(seed)
    while left and time.monotonic() < deadline:  # a child being reaped right now may still show briefly
        time.sleep(0.1)
        left = [p for p in left if p.is_running() and p.status() != "zombie"]
    for p in left:
        os.kill(p.pid, 9)  # clean up what a broken demo left, so one failure does not leak into other tests
    assert not left, "the demo left its simulated robot running"


def test_nested_environment_settings_reach_camera_views(monkeypatch):
    monkeypatch.setenv("VLA_EDGE_CAMERA__VIEWS__WRIST__SOURCE", "/dev/video2")
    monkeypatch.setenv("VLA_EDGE_CAMERA__VIEWS__WRIST__CAPTURE_FPS", "30")
    view = load_settings().camera.views["wrist"]
    assert view.source == "/dev/video2" and view.capture_fps == 30
    monkeypatch.setenv("VLA_EDGE_CAMERA__VIEWS__WRIST__SOURCEE", "0")
    with pytest.raises(ConfigError, match="camera.views.wrist has no setting 'sourcee'"):
        load_settings()

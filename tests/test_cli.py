"""The command line's first hour: doctor, configuration mistakes, log levels, the open-API guard.

Commands run as a user runs them (``python -m service.cli`` in a subprocess, from the checkout)
where the process environment matters (a broken torchaudio, SpeechBrain's log level); in-process
through ``main`` where it does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import EXIT_CONFIG, build_parser, main
from service.commands.serve import check_exposure, is_loopback
from service.core.config_errors import ConfigurationError, load_settings
from service.core.settings import Settings
from tests.paths import REAL_VOXCELEB_DIR, REPO_ROOT, requires_real_model


def run_cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VOICESEARCH_", "SB_"))}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        env={**clean, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_env(tmp_path: Path, model_dirs: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "VOICESEARCH_DATA_DIR": str(tmp_path / "data"),
        "VOICESEARCH_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        **{f"VOICESEARCH_MODEL_{role.upper()}": str(path) for role, path in model_dirs.items()},
        **extra,
    }


# --- configuration mistakes: one line, exit 2 ------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("VOICESEARCH_API_KEYS", "admin:short", "at least 16 characters"),
        ("VOICESEARCH_THRESHOLDS", "voxceleb=abc", "VOICESEARCH_THRESHOLDS (voxceleb)"),
        ("VOICESEARCH_MAX_TOP_N", "-5", "VOICESEARCH_MAX_TOP_N='-5'"),
    ],
)
def test_configuration_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str, fragment: str
) -> None:
    # serve: the keys are checked before anything starts; the others fail on any command.
    command = ["serve"] if variable == "VOICESEARCH_API_KEYS" else ["db", "current"]
    done = run_cli({"VOICESEARCH_DATA_DIR": str(tmp_path), variable: value}, *command)
    assert done.returncode == EXIT_CONFIG, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("voicesearch: configuration error: ")
    assert fragment in lines[0]
    assert "Traceback" not in done.stderr
    assert "short" not in lines[0]  # a key is never echoed, not even a bad one


def test_a_rule_across_settings_names_both_variables() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(_env_file=None, live_hop_s=1.0, live_window_s=0.5)
    assert str(raised.value) == (
        "VOICESEARCH_LIVE_HOP_S (1) must not exceed VOICESEARCH_LIVE_WINDOW_S (0.5)"
    )


def test_load_settings_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="VOICESEARCH_MAX_TOP_N") as raised:
        load_settings(_env_file=None, max_top_n=0)
    assert "\n" not in str(raised.value)


def test_env_example_changes_no_default() -> None:
    """Copying .env.example to .env must not silently change behaviour (it once lowered the
    decision threshold): every uncommented value equals the built-in default."""
    defaults = Settings(_env_file=None)
    example = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    pairs = [
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    ]
    assert pairs, "no settings in .env.example"
    configured = Settings(_env_file=REPO_ROOT / ".env.example")
    for name, _ in pairs:
        field = name.removeprefix("VOICESEARCH_").lower()
        if name == "ALLOWED_ORIGINS":
            field = "allowed_origins"
        assert field in Settings.model_fields, name
        assert getattr(configured, field) == getattr(defaults, field), name


# --- log levels ------------------------------------------------------------------------------
def test_log_level_is_accepted_before_and_after_the_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["db", "current"]).log_level == "info"
    assert parser.parse_args(["--log-level", "debug", "db", "current"]).log_level == "debug"
    assert parser.parse_args(["db", "current", "--log-level", "warning"]).log_level == "warning"
    assert parser.parse_args(["eval", "m.csv", "--log-level", "ERROR"]).log_level == "error"
    with pytest.raises(SystemExit):
        parser.parse_args(["db", "current", "--log-level", "loud"])


def test_db_commands_print_no_third_party_chatter(tmp_path: Path) -> None:
    done = run_cli({"VOICESEARCH_DATA_DIR": str(tmp_path)}, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "alembic" not in done.stderr  # its INFO lines about plugins and migrations
    quiet = run_cli(
        {"VOICESEARCH_DATA_DIR": str(tmp_path)}, "db", "current", "--log-level", "warning"
    )
    assert quiet.returncode == 0 and " INFO " not in quiet.stderr, quiet.stderr


# --- doctor ----------------------------------------------------------------------------------
def test_doctor_with_tiny_models_is_healthy_and_explains_a_missing_one(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    done = run_cli(tiny_env(tmp_path, tiny_model_dirs), "doctor", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    names = {check["name"]: check for check in report["checks"]}
    noise = [
        line
        for line in done.stderr.splitlines()
        if " INFO " in line and not line.split(" INFO ", 1)[1].startswith("service.")
    ]
    assert not noise, noise  # faiss CPU probing, alembic plugins, SpeechBrain file lists
    assert report["ok"] is True
    for name in ("python", "torch", "torchaudio", "speechbrain", "faiss-cpu", "av", "silero-vad"):
        assert names[name]["ok"], names[name]
    assert {"model langid", "model voxceleb", "model cnceleb", "device"} <= names.keys()

    broken = {**tiny_model_dirs, "cnceleb": tmp_path / "nowhere"}
    env = tiny_env(tmp_path, broken, VOICESEARCH_MODEL_LANGID="off")
    done = run_cli(env, "doctor")
    assert done.returncode == 1, done.stdout
    lines = {line.split()[2]: line for line in done.stdout.splitlines() if " model " in line}
    assert lines["langid"].startswith("ok") and "switched off" in lines["langid"]
    assert lines["cnceleb"].startswith("FAIL") and "[files_missing]" in lines["cnceleb"]
    assert "does not exist" in lines["cnceleb"]
    assert "doctor: 1 problem(s): model cnceleb" in done.stdout


def test_doctor_reports_a_broken_torchaudio(tmp_path: Path, tiny_model_dirs: dict[str, Path]):
    """A torchaudio built for another torch fails to load with an OSError at import (what a
    fresh install hit): doctor says which package and exits non-zero, and every model says
    `dependency` instead of a misleading downstream error."""
    fake = tmp_path / "shadow" / "torchaudio"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise OSError("Could not load this library: libtorchaudio.so: undefined symbol: '
        'torch_exception_get_what_without_backtrace")\n'
    )
    env = tiny_env(tmp_path, tiny_model_dirs, PYTHONPATH=str(fake.parent))
    done = run_cli(env, "doctor", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert not checks["torchaudio"]["ok"] and "undefined symbol" in checks["torchaudio"]["detail"]
    assert not checks["speechbrain"]["ok"]  # it imports torchaudio
    for role in ("langid", "voxceleb", "cnceleb"):
        check = checks[f"model {role}"]
        assert not check["ok"] and check["kind"] == "dependency", check
        assert "torchaudio" in check["detail"]


@requires_real_model
@pytest.mark.real_model
def test_doctor_passes_with_the_real_model(tmp_path: Path) -> None:
    env = {
        "VOICESEARCH_DATA_DIR": str(tmp_path / "data"),
        "VOICESEARCH_MODEL_VOXCELEB": str(REAL_VOXCELEB_DIR),
        "VOICESEARCH_MODEL_LANGID": "off",
        "VOICESEARCH_MODEL_CNCELEB": "off",
    }
    done = run_cli(env, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "speechbrain/spkrec-ecapa-voxceleb@sha256:" in done.stdout
    assert "doctor: everything needed is working" in done.stdout


# --- serve refuses an open API on the network ------------------------------------------------
def test_serve_refuses_an_open_api_on_a_public_address(tmp_path: Path) -> None:
    done = run_cli({"VOICESEARCH_DATA_DIR": str(tmp_path)}, "serve", "--host", "0.0.0.0")
    assert done.returncode == EXIT_CONFIG
    assert "refusing to serve an open API on 0.0.0.0" in done.stderr
    assert "--allow-open" in done.stderr


def test_exposure_rules() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.3.4.5"):
        assert is_loopback(host)
        check_exposure(host, keys_enabled=False, allow_open=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "voice.example.org"):
        assert not is_loopback(host)
        with pytest.raises(ConfigurationError):
            check_exposure(host, keys_enabled=False, allow_open=False)
        check_exposure(host, keys_enabled=True, allow_open=False)
        check_exposure(host, keys_enabled=False, allow_open=True)


def test_main_returns_2_on_a_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICESEARCH_MAX_TOP_N", "nope")
    assert main(["db", "current"]) == EXIT_CONFIG


# --- index verify ----------------------------------------------------------------------------
def test_index_verify_without_any_encoder_says_nothing_was_verified(tmp_path: Path) -> None:
    # Issue 10 item 11: it printed "ok" and exited 0 although no index had been checked.
    nowhere = tmp_path / "nowhere"
    env = tiny_env(
        tmp_path, {"voxceleb": nowhere, "cnceleb": nowhere}, VOICESEARCH_MODEL_LANGID="off"
    )
    done = run_cli(env, "index", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing verified" in done.stdout and "index verify: ok" not in done.stdout
    assert "voxceleb: NOT VERIFIED" in done.stdout


def test_index_verify_with_one_encoder_missing_is_incomplete(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    env = tiny_env(
        tmp_path,
        {"voxceleb": tiny_model_dirs["voxceleb"], "cnceleb": tmp_path / "nowhere"},
        VOICESEARCH_MODEL_LANGID="off",
    )
    done = run_cli(env, "index", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "voxceleb: ok" in done.stdout and "cnceleb: NOT VERIFIED" in done.stdout
    assert "index verify: INCOMPLETE (cnceleb not verified)" in done.stdout

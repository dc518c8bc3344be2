"""Settings: TOML file, STREAMGW_* environment, flags; unknown keys are errors."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from streamgw.cli import build_parser
from streamgw.config import Settings, load_settings, split_addr
from streamgw.errors import ConfigError

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "streamgw.toml"


def test_defaults_need_no_config() -> None:
    s = load_settings(None, None, environ={})
    assert s.rtmp_addr == "127.0.0.1:1935" and s.http_addr == "127.0.0.1:9935"
    assert s.segment_duration == 2.0 and s.playlist_window == 6


def test_example_config_documents_every_setting_with_its_default() -> None:
    values = tomllib.loads(SAMPLE.read_text())
    assert set(values) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert values[name] == field.default, name
    text = SAMPLE.read_text()
    for name in Settings.model_fields:
        before = text.split(f"\n{name} =")[0]
        assert before.rstrip().splitlines()[-1].startswith("#"), f"{name} has a comment"
    assert load_settings(SAMPLE, None, environ={}) == Settings()


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('segment_duration = 4.0\nplaylist_window = 8\nhttp_addr = "0.0.0.0:8000"\n')
    env = {"STREAMGW_PLAYLIST_WINDOW": "9", "STREAMGW_HTTP_ADDR": "127.0.0.1:7000"}
    s = load_settings(cfg, {"http_addr": "127.0.0.1:7001", "rtmp_addr": None}, environ=env)
    assert s.segment_duration == 4.0
    assert s.playlist_window == 9
    assert s.http_addr == "127.0.0.1:7001"
    assert s.rtmp_addr == "127.0.0.1:1935"


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_streams = 3\n")
    assert load_settings(None, None, environ={"STREAMGW_CONFIG": str(cfg)}).max_streams == 3


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("segment_duraton = 2.0\n", {}, "segment_duraton"),
        ("", {"STREAMGW_SEGMENT_DURATON": "2"}, "STREAMGW_SEGMENT_DURATON"),
        ("segment_duration = 0.1\n", {}, "segment_duration"),
        ('rtmp_addr = "nope"\n', {}, "rtmp_addr"),
        ('log_level = "loud"\n', {}, "log_level"),
        ("playlist_window = [\n", {}, "not valid TOML"),
    ],
)
def test_invalid_settings_are_errors(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, None, environ=env)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", None, environ={})


def test_split_addr() -> None:
    assert split_addr("127.0.0.1:1935") == ("127.0.0.1", 1935)
    assert split_addr("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        split_addr("localhost")


def test_help_documents_every_setting() -> None:
    text = build_parser().format_help()
    assert "up" in text and "gateway" in text
    out = subprocess.run(["streamgw", "up", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    help_text = " ".join(out.stdout.split())
    for name, field in Settings.model_fields.items():
        assert "--" + name.replace("_", "-") in help_text
        assert " ".join(str(field.description).split()) in help_text


def test_cli_rejects_bad_settings() -> None:
    out = subprocess.run(["streamgw", "up", "--segment-duration", "99"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "segment_duration" in out.stderr

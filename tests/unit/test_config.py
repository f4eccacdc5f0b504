"""Settings: file, environment, errors, and the token never leaking."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.config import SettingsError, load_settings

TOKEN = "MTA-super-secret-token.abc"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DISCORD_TOKEN", "LOOPJAM_CONFIG", "LOOPJAM_QUEUE__BATCH_SIZE", "LOOPJAM_MODEL__NAME"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert settings.model.name == "facebook/musicgen-small"
    assert settings.queue.rate_limit_jobs == 5 and settings.queue.rate_limit_window_s == 600
    assert settings.queue.max_queued_per_user == 2
    assert settings.storage.retention_days == 7
    assert settings.token is None


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "loopjam.toml"
    config.write_text('[model]\nname = "tiny-model"\n[queue]\nbatch_size = 4\nmax_queue = 9\n')
    monkeypatch.setenv("LOOPJAM_QUEUE__BATCH_SIZE", "6")
    settings = load_settings(config)
    assert settings.model.name == "tiny-model"
    assert settings.queue.max_queue == 9
    assert settings.queue.batch_size == 6


def test_example_config_is_complete_and_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    settings = load_settings(example)
    assert settings.model_dump(exclude={"discord_token"}) == load_settings().model_dump(exclude={"discord_token"})


def test_token_from_environment_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    settings = load_settings()
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


def test_bad_setting_is_one_line_naming_it_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[discord]\ntoken = "{TOKEN}"\n[queue]\nbatch_size = 0\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert "\n" not in message
    assert "queue.batch_size" in message and "greater than or equal to 1" in message
    assert TOKEN not in message


def test_unknown_setting_and_missing_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("[queue]\nbatch_sise = 3\n")
    with pytest.raises(SettingsError, match=r"queue\.batch_sise"):
        load_settings(config)
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.toml")

"""`loopjam run` and `loopjam commands`, as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from discord_double import DiscordDouble
from tcp_proxy import free_port
from typer.testing import CliRunner

from generation.cli import app


@pytest.fixture(autouse=True)
def no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.delenv("LOOPJAM_CONFIG", raising=False)


def test_run_without_a_token_exits_2_and_says_how_to_set_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "DISCORD_TOKEN" in line
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_run_with_an_unreachable_database_says_so_in_one_line_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPJAM_DISCORD__TOKEN", "not-a-real-token")
    monkeypatch.setenv("LOOPJAM_STORAGE__DATABASE_URL", "postgresql+psycopg://loopjam:hunter2@127.0.0.1:1/loopjam")
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: Database postgresql+psycopg://loopjam:***@127.0.0.1:1/loopjam: ") and "refused" in line
    assert "hunter2" not in result.output and "not-a-real-token" not in result.output


def test_commands_prints_the_schema_that_would_be_synced() -> None:
    result = CliRunner().invoke(app, ["commands"])
    assert result.exit_code == 0, result.output
    schema = {command["name"]: command for command in json.loads(result.output)}
    assert set(schema) == {"loop", "loopify", "history", "replay", "status", "settings", "jam"}
    options = {option["name"]: option for option in schema["loop"]["options"]}
    assert options["bpm"]["min_value"] == 40 and options["bpm"]["max_value"] == 240
    assert options["prompt"]["max_length"] == 500 and options["prompt"]["autocomplete"]
    assert [choice["value"] for choice in options["bars"]["choices"]] == [1, 2, 4, 8]
    assert all(option["description"] for option in schema["loop"]["options"])
    assert int(schema["settings"]["default_member_permissions"]) == 32  # Manage Server


@pytest.mark.parametrize("fault", ["wrong token", "Discord unreachable", "Redis unreachable"])
async def test_run_that_cannot_start_exits_1_with_one_line_and_no_traceback(fault: str, tmp_path: Path) -> None:
    async with DiscordDouble() as double:
        env = {**os.environ, **double.bot_environment(), "LOOPJAM_STORAGE__DATA_DIR": str(tmp_path)}
        if fault == "wrong token":
            env["DISCORD_TOKEN"] = "not-the-token"
        elif fault == "Discord unreachable":
            env["LOOPJAM_DISCORD__API_BASE_URL"] = f"http://127.0.0.1:{free_port()}/api/v10"
        else:
            env |= {"LOOPJAM_QUEUE__MODE": "redis", "LOOPJAM_QUEUE__REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}
        bot = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "generation", "run", env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(bot.communicate(), 60)
    errors = [line for line in stderr.decode().splitlines() if not line.startswith("INFO ")]
    assert bot.returncode == 1 and len(errors) == 1, stderr.decode()[-3000:]
    assert errors[0].startswith({
        "wrong token": "Error: Discord refused the bot token",
        "Discord unreachable": "Error: Cannot reach Discord: ",
        "Redis unreachable": "Error: Cannot reach Redis: ",
    }[fault])
    assert "hunter2" not in stderr.decode() and double.token not in stderr.decode()

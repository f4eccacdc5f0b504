"""`loopjam db ...` and `loopjam history`, on SQLite and PostgreSQL; database passwords never show."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from storage_helpers import loop_request
from typer.testing import CliRunner

from generation.cli import app
from generation.storage import Database, GenerationStatus, LoopReportFields, create_generations, mark_done, mark_running
from generation.storage.migrate import head_revision

PASSWORD = "s3cret-Pw-9f2"


@pytest.fixture
def use_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point the CLI at a URL, from a directory with no config file and no migrations folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOOPJAM_CONFIG", raising=False)

    def use(url: URL) -> None:
        monkeypatch.setenv("LOOPJAM_STORAGE__DATABASE_URL", url.render_as_string(hide_password=False))

    return use


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_db_upgrade_current_downgrade_and_history_json(db_url: URL, use_database) -> None:
    # A password the server ignores (trust auth) still must not be shown.
    url = db_url.set(password=PASSWORD) if db_url.get_backend_name() == "postgresql" else db_url
    use_database(url)
    try:
        code, output = run("db", "current")
        assert code == 0 and "revision: none" in output

        code, output = run("history", "--json")
        if url.get_backend_name() == "sqlite":  # embedded: history brings its own database up to date
            assert code == 0 and output.strip().splitlines()[-1] == "[]"
        else:  # a shared server's operators migrate it
            assert code == 2 and "loopjam db upgrade" in output

        code, output = run("db", "upgrade")
        assert code == 0 and f"revision: {head_revision()} (head)" in output

        database = Database(url)
        with database.session() as session:
            rows = create_generations(session, [loop_request(prompt=f"lofi take {n}", seed=n) for n in range(3)])
            rows += create_generations(session, [loop_request(prompt="techno", user_id=5)])
            mark_running(session, rows[0].short_id, "gpu-1")
            mark_done(session, rows[0].short_id, audio_path="a.wav", report=LoopReportFields(verdict="clean"))
        database.dispose()

        code, output = run("history", "--search", "LOFI", "--limit", "2", "--json")
        assert code == 0
        records = json.loads(output.strip().splitlines()[-1])
        assert [record["short_id"] for record in records] == [rows[2].short_id, rows[1].short_id]
        assert records[0]["prompt"] == "lofi take 2" and records[0]["status"] == "queued"

        code, output = run("history", "--user", str(loop_request().user_id), "--json")
        done = next(record for record in json.loads(output.splitlines()[-1]) if record["short_id"] == rows[0].short_id)
        assert (done["status"], done["verdict"], done["attempts"], done["seed"]) == (GenerationStatus.DONE.value, "clean", 1, 0)
        assert done["created_at"].endswith("+00:00")

        code, output = run("history", "--user", "5")
        assert code == 0 and rows[3].short_id in output and "techno" in output and "lofi" not in output

        code, output = run("db", "downgrade", "base")
        assert code == 0 and "revision: none" in output
    finally:
        Database(url).downgrade("base")


@pytest.mark.postgres
def test_a_database_password_never_shows(postgres_url: URL, use_database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    use_database(postgres_url.set(password=PASSWORD))
    outputs = [run("-v", "db", "upgrade"), run("-v", "db", "current"), run("-v", "history", "--json")]
    outputs.append(run("-v", "db", "downgrade", "base"))
    assert all(code == 0 for code, _ in outputs), outputs
    assert "postgres:***@" in outputs[1][1]
    assert caplog.text and PASSWORD not in caplog.text
    assert all(PASSWORD not in output for _, output in outputs)


def test_an_unreachable_database_is_one_line_without_the_password(use_database) -> None:
    use_database(URL.create("postgresql+psycopg", "loopjam", PASSWORD, "127.0.0.1", 1, "loopjam"))
    code, output = run("db", "current")
    assert code == 2
    assert "Error: Database postgresql+psycopg://loopjam:***@127.0.0.1:1/loopjam" in output
    assert PASSWORD not in output


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"postgresql://loopjam:{PASSWORD}@:bad/loopjam", "its port is not a number"),
        (f"mysql://loopjam:{PASSWORD}@db/loopjam", "'mysql' is not supported"),
        (f"postgresql+asyncpg://loopjam:{PASSWORD}@db/loopjam", "the driver 'postgresql+asyncpg' is not installed"),
        (f"loopjam:{PASSWORD} at db", "it is not a URL like postgresql://"),
    ],
)
@pytest.mark.parametrize("command", [["history"], ["db", "current"], ["run"]])
def test_a_malformed_database_url_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, why: str, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOOPJAM_CONFIG", raising=False)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)  # were the URL let through, `run` stops at the token
    monkeypatch.setenv("LOOPJAM_STORAGE__DATABASE_URL", url)
    code, output = run(*command)
    assert code == 2
    (line,) = output.strip().splitlines()
    assert line.startswith(f"Error: Invalid setting storage.database_url: {why}")
    assert PASSWORD not in output and not (tmp_path / "data").exists()


@pytest.fixture
def fresh_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A first run: no config file, no database URL, an empty directory."""
    monkeypatch.chdir(tmp_path)
    for name in ("LOOPJAM_CONFIG", "LOOPJAM_STORAGE__DATABASE_URL", "LOOPJAM_STORAGE__DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "data"


def test_history_on_a_fresh_data_directory_creates_the_database_and_says_there_are_no_loops(fresh_data_dir: Path) -> None:
    code, output = run("history")
    assert code == 0, output
    assert output.strip() == "No loops yet: the loops made with /loop and /loopify in Discord are listed here."
    assert "db upgrade" not in output

    code, output = run("db", "current")
    assert code == 0 and f"revision: {head_revision()} (head)" in output and (fresh_data_dir / "loopjam.db").is_file()

    code, output = run("history", "--search", "techno")
    assert code == 0 and output.strip() == "No loops match these filters."


def test_history_lists_what_a_fresh_embedded_database_holds(fresh_data_dir: Path) -> None:
    assert run("history", "--json") == (0, "[]\n")
    database = Database(URL.create("sqlite+pysqlite", database=str(fresh_data_dir / "loopjam.db")))
    with database.session() as session:
        create_generations(session, [loop_request(prompt="dub techno chords")])
    database.dispose()

    code, output = run("history", "--json")
    assert code == 0 and [record["prompt"] for record in json.loads(output)] == ["dub techno chords"]
    code, output = run("history")
    assert code == 0 and "dub" in output and "No loops" not in output


def test_history_shows_prompts_as_typed_and_sends_none_of_their_terminal_codes(
    fresh_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # Rich writes styles and links as to a terminal
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that no prompt wraps
    prompts = ["[/oops] techno", "[link=https://evil.example]x[/link] house", "\x1b[31mred \x1b]8;;https://evil.example\x1b\\dub",
               "\u202erab \u200bmoob"]
    assert run("history", "--json") == (0, "[]\n")
    database = Database(URL.create("sqlite+pysqlite", database=str(fresh_data_dir / "loopjam.db")))
    with database.session() as session:
        create_generations(session, [loop_request(prompt=prompt) for prompt in prompts])
    database.dispose()

    code, output = run("history")
    assert code == 0, output
    assert "[/oops] techno" in output and "[link=https://evil.example]x[/link] house" in output
    assert "[31mred ]8;;https://evil.example\\dub" in output and "rab moob" in output  # the codes' printable rest
    assert "evil.example\x1b" not in output and "\x1b]8;" not in output and "\x1b[31m" not in output
    assert "\u202e" not in output and "\u200b" not in output


@pytest.mark.postgres
def test_history_on_an_empty_postgresql_still_asks_for_db_upgrade(postgres_url: URL, use_database) -> None:
    use_database(postgres_url)
    code, output = run("history")
    assert code == 2 and "run `loopjam db upgrade` first" in output
    assert Database(postgres_url).current_revision() is None  # operators migrate a shared server

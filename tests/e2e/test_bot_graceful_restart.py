"""`loopjam run` stopped by SIGTERM and started again, against the Discord API double (embedded mode, tiny model).

It exits 0 without a traceback and leaves no process behind; interactions that arrive while it
stops are told it is restarting; the running job waits, attempt refunded, and after the restart
its result lands in the original reply while the token lives, else in the channel, with the old
reply's Cancel button pointing at it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from datetime import timedelta

import pytest
import pytest_asyncio
from bot_process import CHANNEL_MESSAGE, EDIT_ORIGINAL, FOLLOW_UP, BotProcess, exact_samples, job_id_of, wav_samples
from discord_double import DiscordDouble, SentInteraction
from queue_helpers import descendants, still_running
from sqlalchemy import update

from bot.shutdown import RESTARTING
from generation.config import StorageSettings
from generation.storage import Database, Generation, GenerationStatus, InteractionReply, get_generation, utcnow

# Each test stops the shared bot and starts it again (its worker loads the model again).
pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(600)]

EPHEMERAL = 64
LONG_LOOP = {"prompt": "slow evolving pad", "bpm": 120, "bars": 4}
"""8 s of audio: long enough to still be generating when the signal comes."""
STARTED_S = 240.0
"""How long a (re)started bot may take to load the model and make a loop on a busy 2-core machine."""


@pytest_asyncio.fixture(scope="module", loop_scope="session", autouse=True)
async def idle_bot(bot: BotProcess) -> None:
    """The shared bot has finished what the other module asked of it: these tests count its jobs and replies."""
    opened = Database.from_settings(StorageSettings(data_dir=bot.env["LOOPJAM_STORAGE__DATA_DIR"]))
    try:
        deadline = asyncio.get_running_loop().time() + STARTED_S
        while True:
            with opened.session() as session:
                unfinished = session.query(Generation).filter(
                    Generation.status.in_([GenerationStatus.QUEUED, GenerationStatus.RUNNING])).count()
            if not unfinished:
                return
            assert asyncio.get_running_loop().time() < deadline, f"the bot still has {unfinished} loop(s) to make"
            await asyncio.sleep(0.2)
    finally:
        opened.dispose()


@pytest.fixture
def database(bot: BotProcess) -> Iterator[Database]:
    """The bot's own SQLite history, read while it is stopped or between its writes."""
    opened = Database.from_settings(StorageSettings(data_dir=bot.env["LOOPJAM_STORAGE__DATA_DIR"]))
    yield opened
    opened.dispose()


def edit_titles(double: DiscordDouble, sent: SentInteraction, since: int) -> list[str]:
    edits = double.requests.matching(lambda r: r.route == EDIT_ORIGINAL and r.path_params.get("token") == sent.token, since=since)
    return [edit.json["embeds"][0]["title"] for edit in edits if edit.json.get("embeds")]


async def queued_job(double: DiscordDouble, user: str) -> tuple[SentInteraction, str]:
    sent = await double.slash("loop", LONG_LOOP, user=user)
    return sent, (await sent.wait_callback(timeout=3)).json["data"]["embeds"][0]["footer"]["text"].split()[0]


async def noticed(bot: BotProcess, line: str, since: int, within_s: float = 10.0) -> None:
    """Wait until the bot's log has `line` after its first `since` characters (an earlier stop logged it too):
    its event loop may be busy when a signal comes."""
    assert bot.log is not None
    deadline = asyncio.get_running_loop().time() + within_s
    while line not in bot.log.read_text()[since:]:
        assert asyncio.get_running_loop().time() < deadline, f"the bot never logged {line!r}"
        await asyncio.sleep(0.05)


async def post_recorded(database: Database, job_id: str, within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        with database.session() as session:
            if get_generation(session, job_id).posted_message_id is not None:
                return
        assert asyncio.get_running_loop().time() < deadline, f"the bot never recorded where {job_id} was posted"
        await asyncio.sleep(0.05)


async def stopped_by_sigterm(bot: BotProcess) -> int:
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(bot.process.wait(), 30)


async def test_sigterm_stops_cleanly_and_the_job_finishes_in_its_reply_after_the_restart(
    double: DiscordDouble, bot: BotProcess, database: Database
) -> None:
    assert bot.process is not None and bot.log is not None
    since = len(double.requests)
    sent, job_id = await queued_job(double, "alice")
    await double.wait_for_request(
        EDIT_ORIGINAL, lambda r: r.path_params.get("token") == sent.token and r.json["embeds"][0]["title"] == "Generating",
        timeout=STARTED_S, since=since,
    )
    ours = descendants(bot.process.pid)
    assert ours, "no worker process to watch"

    # The stopping bot marks the reply before it closes the gateway: held, so the late one surely comes first.
    answered_late = asyncio.Event()
    held = double.hold(
        EDIT_ORIGINAL, answered_late,
        when=lambda r: r.path_params.get("token") == sent.token and r.json["embeds"][0]["title"] == "Waiting for a restart",
    )
    logged = len(bot.log.read_text())
    bot.process.send_signal(signal.SIGTERM)
    await noticed(bot, "SIGTERM: stopping", since=logged)
    try:
        late = await double.slash("loop", {"prompt": "asked while stopping", "bpm": 100, "bars": 1}, user="bob")
        answer = (await late.wait_callback(timeout=3)).json["data"]
    finally:
        answered_late.set()
    assert answer["flags"] & EPHEMERAL and answer["content"] == RESTARTING
    assert await asyncio.wait_for(bot.process.wait(), 30) == 0
    assert held.taken, "the reply was never marked as waiting for a restart"
    assert not await still_running(ours, within_s=10), "processes of the stopped bot are still running"
    log = bot.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert sent.token not in log
    with database.session() as session:
        row = get_generation(session, job_id)
        assert (row.status, row.attempts) == (GenerationStatus.QUEUED, 0)
        assert session.query(Generation).filter_by(prompt="asked while stopping").count() == 0
    assert "Waiting for a restart" in edit_titles(double, sent, since)

    restarted = len(double.requests)
    await bot.start()
    result = await double.wait_for_request(
        FOLLOW_UP, lambda r: r.path_params.get("token") == sent.token and bool(r.files), timeout=STARTED_S, since=restarted
    )
    assert wav_samples(result) == exact_samples(120, 4)
    await double.wait_for_request(  # the reply's last edit, after the follow-up: a link to it
        EDIT_ORIGINAL, lambda r: r.path_params.get("token") == sent.token and r.json["embeds"][0]["title"] == "Done",
        timeout=10, since=restarted,
    )
    assert "Generating" in edit_titles(double, sent, restarted)  # progress resumed in the original reply
    assert not double.requests.matching(
        lambda r: r.route == CHANNEL_MESSAGE and bool(r.files) and job_id_of(r) == job_id, since=restarted
    )
    with database.session() as session:
        assert session.query(InteractionReply).count() == 0  # the token is not kept once taken back
        assert get_generation(session, job_id).attempts == 1  # the stop refunded the interrupted one


async def test_past_the_token_the_loop_goes_to_the_channel_and_the_old_cancel_points_at_it(
    double: DiscordDouble, bot: BotProcess, database: Database
) -> None:
    sent, job_id = await queued_job(double, "carol")
    assert await stopped_by_sigterm(bot) == 0
    with database.session() as session:  # as if the restart had taken longer than the token lives
        session.execute(update(InteractionReply).values(created_at=utcnow() - timedelta(minutes=16)))
    sent.expire_token()

    restarted = len(double.requests)
    await bot.start()
    posted = await double.wait_for_request(
        CHANNEL_MESSAGE, lambda r: bool(r.files) and job_id_of(r) == job_id, timeout=STARTED_S, since=restarted
    )
    assert wav_samples(posted) == exact_samples(120, 4)
    assert not double.requests.matching(lambda r: r.path_params.get("token") == sent.token, since=restarted)
    with database.session() as session:
        assert session.query(InteractionReply).count() == 0

    await post_recorded(database, job_id)  # the double sees the post before the bot records where it went
    pressed = await double.click(double.original_message(sent), f"lj:cancel:{job_id}", user="carol")
    update_message = (await pressed.wait_callback(timeout=3)).json
    assert update_message["type"] == 7  # the old reply itself is updated
    embed = update_message["data"]["embeds"][0]
    assert embed["title"] == "Done" and str(posted.response["id"]) in embed["description"]
    assert not update_message["data"]["components"]

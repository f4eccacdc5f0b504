"""Slash commands at the tree level: the real bot in this process, real `discord.Interaction`s parsed
from gateway payloads by discord.py, and a real queue service whose worker never starts (so what
is queued stays queued and the limits can be counted exactly)."""

from __future__ import annotations

import io
import json
import os
import re
import time
import typing as tp
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from bot_helpers import InProcessBot, NoWorkers
from discord_double import DiscordDouble, FakeMember, Overwrite, Permission, Upload
from discord_double.inprocess import running_client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from storage_helpers import loop_request
from upload_files import bomb

from bot.text import quote
from generation.config import Settings
from generation.jobs import QueueService
from generation.storage import (
    UPLOADS_DIR,
    Database,
    LoopReportFields,
    create_request_groups,
    list_history,
    mark_done,
    mark_running,
    upsert_guild_settings,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
EPHEMERAL = 64
DEFERRED = 5
CALLBACK = "POST /interactions/{interaction_id}/{token}/callback"
FOLLOW_UP = "POST /webhooks/{application_id}/{token}"
DOWNLOAD = "GET /attachments/{channel_id}/{attachment_id}/{filename}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(double: DiscordDouble, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessBot]:
    data = tmp_path_factory.mktemp("tree")
    finetune = data / "models" / "jam-finetune"  # a local checkpoint: users see its name, never its path
    finetune.mkdir(parents=True)
    settings = Settings(
        storage={"data_dir": data}, queue={"max_queued_per_user": 3, "rate_limit_jobs": 50, "max_queue": 1000},
        model={"name": "facebook/musicgen-small", "allowed": ["facebook/musicgen-small", "facebook/musicgen-medium", str(finetune)]},
    )
    database = Database.from_settings(settings.storage)
    database.upgrade()
    bot = InProcessBot(settings, QueueService(settings, database, backend=NoWorkers()), database)
    bot._connection.guild_ready_timeout = 0.05  # type: ignore[attr-defined]
    async with running_client(bot, double, timeout=20):
        yield bot


async def answer(double: DiscordDouble, command: str, options: dict[str, tp.Any], user: str = "alice", **where: tp.Any) -> dict:
    sent = await double.slash(command, options, user=user, **where)
    callback = await sent.wait_callback(timeout=3)
    return callback.json


def text_of(response: dict) -> str:
    data = response["data"]
    return data.get("content") or " ".join(e.get("description", "") + e.get("title", "") for e in data.get("embeds", []))


def with_buttons(message: dict, custom_ids: list[str], channel_id: int) -> dict:
    """`message` as if it were in `channel_id` with these buttons, to press ids the bot would post under a result."""
    row = {"type": 1, "components": [{"type": 2, "style": 1, "label": c, "custom_id": c} for c in custom_ids]}
    return {**message, "channel_id": str(channel_id), "components": [row]}


def rows_of(bot: InProcessBot, user_id: int) -> list:
    with bot.database.session() as session:
        return list_history(session, user_id=user_id, limit=100)


async def test_a_valid_loop_is_queued_publicly_with_its_position(double: DiscordDouble, bot: InProcessBot) -> None:
    olga = double.world.add_member(double.world.guild, "olga")  # none of her loops waits yet, whatever ran before
    response = await answer(double, "loop", {"prompt": "dusty boom bap", "bpm": 60.23, "bars": 2, "meter": "3/4"}, user=olga)
    assert not response["data"].get("flags", 0) & EPHEMERAL
    embed = response["data"]["embeds"][0]
    job_id = embed["footer"]["text"].split()[0]
    # Nothing runs here (no workers): its place stays the one shown, whatever other tests queued before.
    assert embed["title"] == "Queued" and embed["fields"][0]["value"].startswith(str(bot.service.position(job_id)))
    assert "60.23 BPM" in embed["description"] and "2 bars" in embed["description"] and "3/4" in embed["description"]
    (row,) = rows_of(bot, olga.user.id)
    assert (row.bpm, row.bars, row.beats_per_bar, row.prompt_sent) == (60.23, 2, 3, "dusty boom bap, 60.23 bpm, 3/4 time")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt": "   ", "bpm": 90}, "The prompt is empty"),
        ({"prompt": "x" * 600, "bpm": 90}, "the limit is 500"),
        ({"prompt": "house", "bpm": 20}, "between 40 and 240"),
        ({"prompt": "house", "bpm": 90, "model": "facebook/musicgen-gigantic"}, "Unknown model"),
    ],
)
async def test_bad_options_get_a_friendly_ephemeral_error_and_queue_nothing(
    double: DiscordDouble, bot: InProcessBot, options: dict, message: str
) -> None:
    before = len(rows_of(bot, double.member("bob").user.id))
    response = await answer(double, "loop", options, user="bob")
    assert response["data"]["flags"] & EPHEMERAL
    assert message in text_of(response)
    assert len(rows_of(bot, double.member("bob").user.id)) == before


async def test_everyone_in_a_prompt_is_escaped_and_pings_nobody(double: DiscordDouble, bot: InProcessBot) -> None:
    double.world.add_member(double.world.guild, "mallory")  # no job of another test in the way of her limits
    response = await answer(double, "loop", {"prompt": "@everyone __loud__ <@&1> techno", "bpm": 128}, user="mallory")
    data = response["data"]
    assert data["allowed_mentions"] == {"parse": []} or data["allowed_mentions"]["parse"] == []
    description = data["embeds"][0]["description"]
    assert "@everyone" not in description and "\\_\\_loud\\_\\_" in description


async def test_history_and_info_show_each_loops_key(double: DiscordDouble, bot: InProcessBot) -> None:
    kim = double.world.add_member(double.world.guild, "kim")
    where = {"user_id": kim.user.id, "guild_id": double.world.guild.id, "channel_id": double.channel.id}
    keyed = {"moved": ("C# minor", "A minor", -4), "in key": ("E minor", None, None), "drums": (None, None, None)}
    with bot.database.session() as session:
        groups = create_request_groups(session, [[loop_request(prompt=f"keyed {name}", **where)] for name in keyed])
        for group, (found, target, shift) in zip(groups, keyed.values()):
            mark_running(session, group[0].short_id, "gpu-0")
            mark_done(session, group[0].short_id, audio_path="x.wav", report=LoopReportFields(
                verdict="good", source_key=found, key_confidence=0.9 if found else 0.0, target_key=target, key_shift_semitones=shift,
                grid_error_ms=3.2))
        ids = {name: group[0].short_id for name, group in zip(keyed, groups)}
    sent = await double.slash("history", {"search": "keyed"}, user=kim)
    listed = (await sent.wait_callback(timeout=3)).json
    names = {field["value"].split("\n")[0]: field["name"] for field in listed["data"]["embeds"][0]["fields"]}
    assert " · A minor · " in names["keyed moved"] and " · E minor · " in names["keyed in key"]
    assert "minor" not in names["keyed drums"]
    message = with_buttons(double.original_message(sent), [f"lj:info:{ids['moved']}"], double.world.channel.id)
    info = (await (await double.click(message, f"lj:info:{ids['moved']}", user=kim)).wait_callback(timeout=3)).json
    fields = {field["name"]: field["value"] for field in info["data"]["embeds"][0]["fields"]}
    assert (fields["Key found"], fields["Moved to"], fields["Shift (semitones)"]) == ("C# minor", "A minor", "-4")
    assert fields["Grid error (ms)"] == "3.2"


async def test_hidden_and_reordering_characters_never_reach_an_embed(double: DiscordDouble, bot: InProcessBot) -> None:
    erin = double.world.add_member(double.world.guild, "erin")
    hidden = "\u202e\u200b\u200c\u200d\u2066\u2067\u2068\u2069\ufeff\x1b"
    words = "deep house with a \u00e9lan vital and no tricks at all".split()
    prompt = " ".join(f"{char}{word}" for char, word in zip(hidden, words)) + " " + words[-1]
    queued = await answer(double, "loop", {"prompt": prompt, "bpm": 120}, user=erin)
    listed = await answer(double, "history", {"search": "house"}, user=erin)
    shown = [queued["data"]["embeds"][0]["description"], listed["data"]["embeds"][0]["fields"][0]["value"]]
    for text in shown:
        assert " ".join(words) in text
        assert not set(hidden) & set(text), text


async def test_too_many_queued_then_refused_exactly(double: DiscordDouble, bot: InProcessBot) -> None:
    user = double.member("carol").user
    waiting = len([r for r in rows_of(bot, user.id) if r.status.value == "queued"])
    responses = [await answer(double, "loop", {"prompt": f"dub {i}", "bpm": 100}, user="carol") for i in range(4 - waiting)]
    assert [bool(r["data"].get("flags", 0) & EPHEMERAL) for r in responses] == [False] * (3 - waiting) + [True]
    assert "3" in text_of(responses[-1])


async def test_rate_limit_says_when_to_try_again(double: DiscordDouble, bot: InProcessBot) -> None:
    guild_id = double.world.guild.id
    with bot.database.session() as session:
        upsert_guild_settings(session, guild_id, rate_limit_jobs=1, rate_limit_window_s=3600, max_queued_per_user=10)
    try:
        first = await answer(double, "loop", {"prompt": "first", "bpm": 100}, user="alice")
        second = await answer(double, "loop", {"prompt": "second", "bpm": 100}, user="alice")
    finally:
        with bot.database.session() as session:
            upsert_guild_settings(session, guild_id, rate_limit_jobs=None, rate_limit_window_s=None, max_queued_per_user=None)
    assert not first["data"].get("flags", 0) & EPHEMERAL
    # The wait is said once, as a live Discord timestamp.
    assert second["data"]["flags"] & EPHEMERAL
    assert re.fullmatch(r"You've made 1 loop recently; you can ask for another <t:\d+:R>\.", text_of(second))


async def test_a_channel_where_the_bot_cannot_attach_files_queues_nothing(double: DiscordDouble, bot: InProcessBot) -> None:
    guild = double.world.guild
    locked = double.world.add_channel(guild, "no-files", [Overwrite(guild.id, 0, deny=Permission.ATTACH_FILES)])
    before = len(rows_of(bot, double.member("bob").user.id))
    response = await answer(double, "loop", {"prompt": "house", "bpm": 120}, user="bob", channel=locked)
    assert response["data"]["flags"] & EPHEMERAL and "attach files" in text_of(response)
    assert len(rows_of(bot, double.member("bob").user.id)) == before


def wav_bytes(seconds: float = 1.0, rate: int = 32000) -> bytes:
    wav = io.BytesIO()
    sf.write(wav, np.zeros(round(seconds * rate), dtype=np.float32) + 0.1, rate, format="WAV")
    return wav.getvalue()


async def loopify(double: DiscordDouble, upload: Upload, user: FakeMember | str = "bob", **where: tp.Any) -> tuple[int, dict]:
    """/loopify with `upload` at 120 BPM: (the index of its first request, the messages the user was shown, as
    Discord shows them: the immediate answer, or the messages created for the interaction once it was deferred)."""
    since = len(double.requests)
    sent = await double.slash("loopify", {"file": upload, "bpm": 120}, user=user, **where)
    callback = (await sent.wait_callback(timeout=3)).json
    if callback["type"] != DEFERRED:
        return since, callback["data"]
    await double.wait_for_request(FOLLOW_UP, lambda r: r.path_params["token"] == sent.token, since=since, timeout=10)
    shown = [m for m in double.messages.messages.values() if m.get("interaction_metadata", {}).get("id") == str(sent.id)]
    assert len(shown) == 1, shown
    return since, shown[0]


def kept_uploads(bot: InProcessBot) -> list[str]:
    uploads = Path(bot.settings.storage.data_dir) / UPLOADS_DIR
    return sorted(path.name for path in uploads.iterdir()) if uploads.exists() else []


async def test_a_channel_the_server_did_not_allow_queues_nothing_and_keeps_no_upload(
    double: DiscordDouble, bot: InProcessBot
) -> None:
    guild = double.world.guild
    jam = double.world.add_channel(guild, "jam-only")
    with bot.database.session() as session:
        upsert_guild_settings(session, guild.id, allowed_channel_ids=[jam.id])
    try:
        before = len(rows_of(bot, double.member("bob").user.id))
        response = await answer(double, "loop", {"prompt": "house", "bpm": 120}, user="bob")
        kept = kept_uploads(bot)
        _, upload = await loopify(double, Upload("take.wav", wav_bytes(), "audio/wav"))
    finally:
        with bot.database.session() as session:
            upsert_guild_settings(session, guild.id, allowed_channel_ids=[])
    for refused in (response["data"], upload):
        assert refused["flags"] & EPHEMERAL
        assert text_of({"data": refused}) == f"Loops are made in <#{jam.id}> on this server."
    assert len(rows_of(bot, double.member("bob").user.id)) == before
    assert kept_uploads(bot) == kept  # the refused upload was deleted


async def test_loopify_answers_before_it_downloads_and_stores_the_upload_by_attachment_id(
    double: DiscordDouble, bot: InProcessBot
) -> None:
    name = "a" * 296 + ".WAV"  # 300 characters: more than a file name may have
    dana = double.world.add_member(double.world.guild, "dana")  # nothing queued yet, whatever ran before
    since, queued = await loopify(double, Upload(name, wav_bytes(), "audio/wav"), user=dana)

    assert queued["embeds"][0]["title"] == "Queued" and not queued["flags"] & EPHEMERAL
    routes = [r.route for r in double.requests.entries[since:]]
    deferred, downloaded = routes.index(CALLBACK), routes.index(DOWNLOAD)
    assert deferred < downloaded, routes
    (row,) = rows_of(bot, dana.user.id)
    stored = Path(row.source_path)
    attachment_id = double.requests.entries[since + downloaded].path_params["attachment_id"]
    assert stored.name == f"{attachment_id}.wav" and stored.is_file()
    assert row.prompt == f"loopify: {'a' * 99}…"


@pytest.mark.parametrize(
    ("make_upload", "message"),
    [
        (lambda _: Upload("big.wav", wav_bytes(), "audio/wav", declared_size=30 * 1024 * 1024),
         "That file is 30.0 MB; the limit is 25.0 MB."),
        (lambda _: Upload("liar.wav", wav_bytes(2.0), "audio/wav", declared_size=len(wav_bytes(1.0))),
         "Discord sent more of that file than the 63 KB it announced, so I stopped the download. Please upload it again."),
        (lambda tmp: Upload("bomb.flac", bomb(tmp / "bomb.flac").read_bytes(), "audio/flac"),
         "That file is sampled at 655,350 Hz; the limit is 192,000 Hz."),
    ],
    ids=["declared too big", "more bytes than declared", "decoded-size bomb"],
)
async def test_an_upload_over_a_limit_is_refused_to_its_sender_alone_and_not_kept(
    double: DiscordDouble, bot: InProcessBot, tmp_path: Path, make_upload: tp.Callable[[Path], Upload], message: str
) -> None:
    upload = make_upload(tmp_path)
    before, kept = len(rows_of(bot, double.member("bob").user.id)), kept_uploads(bot)

    _, shown = await loopify(double, upload)

    assert shown["flags"] & EPHEMERAL and shown["content"] == message
    assert len(rows_of(bot, double.member("bob").user.id)) == before
    assert kept_uploads(bot) == kept


async def test_the_retention_task_deletes_old_uploads_and_keeps_those_of_waiting_jobs(
    double: DiscordDouble, bot: InProcessBot
) -> None:
    erin = double.world.add_member(double.world.guild, "erin")
    _, queued = await loopify(double, Upload("keep.wav", wav_bytes(), "audio/wav"), user=erin)
    assert queued["embeds"][0]["title"] == "Queued"
    uploads = Path(bot.settings.storage.data_dir) / UPLOADS_DIR
    orphan = uploads / "1.wav"  # left by a crash between the download and the queue
    orphan.write_bytes(wav_bytes())
    long_ago = time.time() - 8 * 86400
    for path in uploads.iterdir():
        os.utime(path, (long_ago, long_ago))
    waiting = kept_uploads(bot)

    await bot.delivery.retention.run_once()

    assert kept_uploads(bot) == [name for name in waiting if name != orphan.name] and not bot.delivery.retention.failures


async def test_replay_of_an_unknown_id_is_explained(double: DiscordDouble, bot: InProcessBot) -> None:
    response = await answer(double, "replay", {"id": "nope1234"}, user="bob")
    assert response["data"]["flags"] & EPHEMERAL and "no loop with the id nope1234" in text_of(response)


async def test_settings_need_manage_server(double: DiscordDouble, bot: InProcessBot) -> None:
    response = await answer(double, "settings show", {}, user="bob")
    assert response["data"]["flags"] & EPHEMERAL and "manage guild permission" in text_of(response)


async def test_status_answers(double: DiscordDouble, bot: InProcessBot) -> None:
    response = await answer(double, "status", {}, user="bob")
    fields = {f["name"]: f["value"] for f in response["data"]["embeds"][0]["fields"]}
    assert fields["Workers"] == "0" and int(fields["Waiting"]) >= 1


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    # What Discord itself lets through: it enforces the options' lengths, ranges and choices.
    prompt=st.text(min_size=1, max_size=500),
    bpm=st.floats(min_value=40, max_value=240),
    bars=st.sampled_from([1, 2, 4, 8]),
    meter=st.sampled_from(["4/4", "3/4", "6/8"]),
    temperature=st.none() | st.floats(min_value=0.05, max_value=2.0),
)
async def test_any_loop_options_give_a_queue_notice_or_a_friendly_error(
    double: DiscordDouble, bot: InProcessBot, prompt: str, bpm: float, bars: int, meter: str, temperature: float | None
) -> None:
    options = {"prompt": prompt, "bpm": bpm, "bars": bars, "meter": meter}
    if temperature is not None:
        options["temperature"] = temperature
    response = await answer(double, "loop", options, user="owner")
    shown = text_of(response)
    assert "Something went wrong" not in shown and shown.strip()


async def test_settings_show_each_rule_as_the_server_set_it_or_the_default(double: DiscordDouble, bot: InProcessBot) -> None:
    def shown(response: dict) -> dict[str, str]:
        return {field["name"]: field["value"] for field in response["data"]["embeds"][0]["fields"]}

    before = shown(await answer(double, "settings show", {}, user="owner"))
    assert before["Longest loop"] == "8 (default) bars" and before["Queued per user"] == "3 (default)"
    assert before["Loops per user"] == "50 (default) every 600 (default) s" and before["Default model"] == "facebook/musicgen-small"
    try:
        await answer(double, "settings max-bars", {"bars": 2}, user="owner")
        after = shown(await answer(double, "settings model", {"name": "facebook/musicgen-medium"}, user="owner"))
        assert after["Longest loop"] == "2 (server) bars" and after["Default model"] == "facebook/musicgen-medium"
        assert after["Queued per user"] == "3 (default)"
    finally:
        with bot.database.session() as session:
            for guild in bot.guilds:
                upsert_guild_settings(session, guild.id, max_bars=None, default_model=None)


async def test_ids_resolve_only_in_the_server_their_loop_was_made_in(double: DiscordDouble, bot: InProcessBot) -> None:
    world = double.world
    dana = world.add_member(world.guild, "dana")
    away = world.add_guild("Other Jam", owner=world.owner)
    away_channel = world.add_channel(away, "loops")
    away.members[dana.user.id] = FakeMember(dana.user)  # the same user in both servers
    sent = await double.slash("loop", {"prompt": "a private jam", "bpm": 100}, user=dana)
    job_id = (await sent.wait_callback(timeout=3)).json["data"]["embeds"][0]["footer"]["text"].split()[0]
    home_message = double.original_message(sent)

    async def pressed(message: dict, custom_id: str) -> dict:
        return (await (await double.click(message, custom_id, user=dana)).wait_callback(timeout=3)).json

    def read_alike(custom_id: str) -> str:
        return custom_id.replace(job_id, "unknown0")

    # In another server the id reads exactly like an unknown one: /replay, every button, and no prompt suggested.
    before = rows_of(bot, dana.user.id)
    commands = [f"replay:{job_id}"] + [f"lj:{action}:{job_id}" for action in ("variation", "reroll", "double", "info", "cancel")]
    for command in commands:
        if command.startswith("replay:"):
            answers = [await answer(double, "replay", {"id": id_}, user=dana, channel=away_channel)
                       for id_ in (job_id, "unknown0")]
        else:
            away_message = with_buttons(home_message, [command, read_alike(command)], away_channel.id)
            answers = [await pressed(away_message, custom_id) for custom_id in (command, read_alike(command))]
        shown, unknown = answers
        assert shown["data"]["flags"] & EPHEMERAL, command
        assert text_of(shown).replace(quote(job_id), "unknown0") == text_of(unknown) and "no loop with" in text_of(unknown), command
    suggested = await double.autocomplete("loop", "prompt", {"prompt": "private"}, user=dana, channel=away_channel)
    assert (await suggested.wait_callback(timeout=3)).json["data"]["choices"] == []
    after = rows_of(bot, dana.user.id)
    assert [(r.short_id, r.status.value) for r in after] == [(r.short_id, r.status.value) for r in before]
    assert [r.status.value for r in after] == ["queued"]  # not cancelled from the other server

    # In its own server the same id works.
    replayed = await answer(double, "replay", {"id": job_id}, user=dana)
    assert replayed["data"]["embeds"][0]["title"] == "Queued"
    rerolled = await pressed(with_buttons(home_message, [f"lj:reroll:{job_id}"], world.channel.id), f"lj:reroll:{job_id}")
    assert rerolled["data"]["embeds"][0]["title"] == "Queued"
    suggested = await double.autocomplete("loop", "prompt", {"prompt": "private"}, user=dana)
    assert [c["value"] for c in (await suggested.wait_callback(timeout=3)).json["data"]["choices"]] == ["a private jam"]
    assert len(rows_of(bot, dana.user.id)) == 3


async def test_a_local_model_is_shown_by_its_name_never_its_path(double: DiscordDouble, bot: InProcessBot) -> None:
    path = bot.settings.model.allowed[-1]
    frank = double.world.add_member(double.world.guild, "frank")
    suggested = await double.autocomplete("loop", "model", {"prompt": "dub", "bpm": 100, "model": "jam"}, user=frank)
    assert (await suggested.wait_callback(timeout=3)).json["data"]["choices"] == [{"name": "jam-finetune", "value": "jam-finetune"}]
    unknown = await answer(double, "loop", {"prompt": "dub", "bpm": 100, "model": "jam-remix"}, user=frank)
    assert "jam-finetune" in text_of(unknown)

    sent = await double.slash("loop", {"prompt": "dub", "bpm": 100, "model": "jam-finetune"}, user=frank)
    job_id = (await sent.wait_callback(timeout=3)).json["data"]["embeds"][0]["footer"]["text"].split()[0]
    (row,) = rows_of(bot, frank.user.id)
    assert row.model == path  # the worker loads the path
    message = with_buttons(double.original_message(sent), [f"lj:info:{job_id}"], double.world.channel.id)
    info = (await (await double.click(message, f"lj:info:{job_id}", user=frank)).wait_callback(timeout=3)).json
    assert {f["name"]: f["value"] for f in info["data"]["embeds"][0]["fields"]}["Model"] == "jam-finetune"

    try:
        await answer(double, "settings model", {"name": "jam-finetune"}, user="owner")
        shown = await answer(double, "settings show", {}, user="owner")
        assert {f["name"]: f["value"] for f in shown["data"]["embeds"][0]["fields"]}["Default model"] == "jam-finetune"
    finally:
        with bot.database.session() as session:
            upsert_guild_settings(session, double.world.guild.id, default_model=None)
    every_answer = [r.json for r in double.requests.matching(lambda r: r.json is not None)]
    assert path not in json.dumps(every_answer)

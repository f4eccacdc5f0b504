"""Jam sessions in Discord: the real bot in this process against the Discord double, a real queue
service whose worker never starts, finished loops written straight into the history (as
test_bot_tree does) and posted by the outbox, so every button pressed here is one the bot posted.

Each test runs in a channel of its own: one jam per channel.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import typing as tp
import zipfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from bot_helpers import InProcessBot, NoWorkers
from discord_double import DiscordDouble, FakeChannel, FakeMember, Permission, Upload
from discord_double.inprocess import running_client
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from storage_helpers import loop_request

from bot.cogs import jam as jam_cog
from bot.cogs import loops as loops_cog
from bot.cogs.loops import NO_BPM
from generation.config import Settings
from generation.jobs import QueueService
from generation.shape import LoopShape
from generation.storage import (
    Database,
    Generation,
    GenerationKind,
    JamSession,
    LoopReportFields,
    NewJam,
    add_layer,
    create_request_groups,
    get_generation,
    list_history,
    mark_done,
    mark_running,
    running_jam,
    start_jam,
    upsert_guild_settings,
    utcnow,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
EPHEMERAL = 64
UPDATE_MESSAGE = 7
FOLLOW_UP = "POST /webhooks/{application_id}/{token}"
CHANNEL_MESSAGE = "POST /channels/{channel_id}/messages"
SHAPE = LoopShape(92, 4)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as running:
        yield running


def jam_settings(data: Path) -> Settings:
    return Settings(storage={"data_dir": data}, queue={"max_queued_per_user": 20, "rate_limit_jobs": 100, "max_queue": 1000})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(double: DiscordDouble, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessBot]:
    settings = jam_settings(tmp_path_factory.mktemp("jam"))
    database = Database.from_settings(settings.storage)
    database.upgrade()
    bot = InProcessBot(settings, QueueService(settings, database, backend=NoWorkers()), database)
    bot._connection.guild_ready_timeout = 0.05  # type: ignore[attr-defined]
    async with running_client(bot, double, timeout=20):
        yield bot
    database.dispose()


# --- helpers ---------------------------------------------------------------------------------------


class Place(tp.NamedTuple):
    """A channel of its own for one test, and members who have queued nothing yet."""

    channel: FakeChannel
    alice: FakeMember
    bob: FakeMember
    carol: FakeMember


def place(double: DiscordDouble, name: str) -> Place:
    world = double.world
    return Place(world.add_channel(world.guild, name), *(world.add_member(world.guild, f"{who}-{name}") for who in ("alice", "bob", "carol")))


async def answer(double: DiscordDouble, command: str, options: dict[str, tp.Any], user: FakeMember, channel: FakeChannel) -> dict:
    sent = await double.slash(command, options, user=user, channel=channel)
    return (await sent.wait_callback(timeout=5)).json


def text_of(response: dict) -> str:
    data = response["data"]
    return data.get("content") or " ".join(e.get("description", "") + e.get("title", "") for e in data.get("embeds", []))


def custom_ids(message: dict) -> list[str]:
    return [c["custom_id"] for row in message.get("components") or [] for c in row["components"]]


def fields(embed: dict) -> dict[str, str]:
    return {field["name"]: field["value"] for field in embed.get("fields", [])}


async def start(double: DiscordDouble, bot: InProcessBot, where: Place, **options: tp.Any) -> tuple[int, int]:
    """/jam start in the place's channel by its alice: (the jam's id, its card's message id)."""
    sent = await double.slash("jam start", {"bpm": 92, "key": "Am", **options}, user=where.alice, channel=where.channel)
    response = (await sent.wait_callback(timeout=5)).json
    (mix_button,) = custom_ids(response["data"])
    jam_id = int(mix_button.split(":")[-1])
    assert response["data"]["embeds"][0]["title"] == f"Jam #{jam_id}"
    card_id = int(double.original_message(sent)["id"])
    for _ in range(100):  # the card's id is stored once Discord has answered with it, just after the answer
        with bot.database.reading() as session:
            if session.get(JamSession, jam_id).card_message_id == card_id:
                return jam_id, card_id
        await asyncio.sleep(0.02)
    raise AssertionError(f"jam {jam_id} never stored its card {card_id}")


def finished(bot: InProcessBot, where: Place, user: FakeMember, prompt: str, *, shape: LoopShape = SHAPE,
             jam_id: int | None = None, done: bool = True, audio: str = "loop.wav", **changes: tp.Any) -> str:
    """A loop of `user` in the history, finished (its audio a short WAV) unless `done` is False; its id."""
    wav = Path(bot.settings.storage.data_dir) / "loop.wav"
    if not wav.exists():
        sf.write(wav, np.zeros(3200, dtype=np.float32), 32000)
    request = loop_request(user_id=user.user.id, guild_id=where.channel.guild_id, channel_id=where.channel.id, prompt=prompt,
                           shape=shape, jam_id=jam_id, **changes)
    with bot.database.session() as session:
        ((row,),) = create_request_groups(session, [[request]])
        if done:
            mark_running(session, row.short_id, "gpu-0")
            mark_done(session, row.short_id, audio_path=audio,
                      report=LoopReportFields(verdict="good", source_key="A minor"))
        return row.short_id


async def posted(double: DiscordDouble, bot: InProcessBot, loop_id: str) -> dict:
    """The message the outbox posted for `loop_id` (one pass of it runs here)."""
    await bot.delivery.redelivery.run_once()
    request = await double.wait_for_request(
        CHANNEL_MESSAGE, lambda r: bool(r.json and r.json.get("embeds")) and loop_id in r.json["embeds"][0]["footer"]["text"],
        status=200, timeout=10)
    (message,) = [m for m in double.messages.in_channel(int(request.path_params["channel_id"]))
                  if m.get("embeds") and loop_id in m["embeds"][0]["footer"]["text"]]
    return message


async def press(double: DiscordDouble, message: dict | int, custom_id: str, user: FakeMember, **values: tp.Any) -> dict:
    return (await (await double.click(message, custom_id, user=user, **values)).wait_callback(timeout=5)).json


async def card_when(double: DiscordDouble, card_id: int, shows: tp.Callable[[dict], bool]) -> dict:
    """The card's embed once the bot edited it to what `shows` expects (the edit follows the answer)."""
    for _ in range(250):
        embed = double.messages.get(card_id)["embeds"][0]
        if shows(embed):
            return double.messages.get(card_id)
        await asyncio.sleep(0.02)
    raise AssertionError(f"the card never showed what was expected: {embed}")


def layer_count(count: int) -> tp.Callable[[dict], bool]:
    return lambda embed: f"Layers ({count}/8)" in fields(embed)


def layers_of(bot: InProcessBot, channel: FakeChannel) -> list[str]:
    with bot.database.session() as session:
        jam = running_jam(session, channel.id)
        return [layer.generation.short_id for layer in jam.layers] if jam else []


def rows_of(bot: InProcessBot, user: FakeMember) -> list[Generation]:
    with bot.database.session() as session:
        return list_history(session, user_id=user.user.id, limit=100)


# --- starting -----------------------------------------------------------------------------------------


async def test_start_posts_the_card_and_a_second_start_is_refused(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "start")
    jam_id, card_id = await start(double, bot, where, bars=2, meter="3/4")

    card = double.messages.get(card_id)
    assert not card["flags"] & EPHEMERAL and custom_ids(card) == [f"lj:jammix:{jam_id}"]
    shown = fields(card["embeds"][0])
    assert (shown["Tempo"], shown["Key"], shown["Bars"], shown["Meter"], shown["Layers (0/8)"]) == ("92 BPM", "A minor", "2", "3/4", "None yet.")
    with bot.database.session() as session:
        jam = running_jam(session, where.channel.id)
        assert jam is not None and (jam.id, jam.card_message_id, jam.key, jam.shape) == (jam_id, card_id, "A minor", LoopShape(92, 2, 3))

    again = await answer(double, "jam start", {"bpm": 120}, where.bob, where.channel)
    assert again["data"]["flags"] & EPHEMERAL
    assert f"Jam #{jam_id} (92 BPM · 2 bars · 3/4 · A minor), started by <@{where.alice.user.id}>, is running" in text_of(again)
    shown = await answer(double, "jam show", {}, where.bob, where.channel)
    assert shown["data"]["flags"] & EPHEMERAL and shown["data"]["embeds"][0] == card["embeds"][0]


async def test_an_unknown_key_is_refused_and_nothing_is_stored(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "unknown-key")
    response = await answer(double, "jam start", {"bpm": 92, "key": "H minor"}, where.alice, where.channel)
    assert response["data"]["flags"] & EPHEMERAL and text_of(response).startswith("Unknown key 'H minor': write a note A-G")
    assert layers_of(bot, where.channel) == []
    with bot.database.session() as session:
        assert running_jam(session, where.channel.id) is None
    suggested = await double.autocomplete("jam start", "key", {"bpm": 92, "key": "f#"}, user=where.alice, channel=where.channel)
    assert [c["value"] for c in (await suggested.wait_callback(timeout=3)).json["data"]["choices"]] == ["F# major", "F# minor"]


async def test_a_jam_follows_the_servers_rules_for_loops(double: DiscordDouble, bot: InProcessBot) -> None:
    """A jam whose loops the server would all refuse (too many bars, a channel without loops) is not started."""
    where, elsewhere = place(double, "rules"), place(double, "rules-elsewhere")
    guild_id = where.channel.guild_id
    with bot.database.session() as session:
        upsert_guild_settings(session, guild_id, max_bars=2, allowed_channel_ids=[where.channel.id])
    try:
        long = await answer(double, "jam start", {"bpm": 92, "bars": 4}, where.alice, where.channel)
        assert text_of(long) == "This server allows loops of at most 2 bars, so a jam's are too."
        closed = await answer(double, "jam start", {"bpm": 92, "bars": 2}, elsewhere.alice, elsewhere.channel)
        assert text_of(closed) == f"Loops are made in <#{where.channel.id}> on this server, so jams are too."
        with bot.database.session() as session:
            assert running_jam(session, where.channel.id) is None and running_jam(session, elsewhere.channel.id) is None
    finally:
        with bot.database.session() as session:
            upsert_guild_settings(session, guild_id, max_bars=None, allowed_channel_ids=[])


# --- loops in a jam ------------------------------------------------------------------------------------


async def test_a_loop_in_a_jam_takes_its_tempo_length_and_key_without_a_bpm(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "loop-in-jam")
    await start(double, bot, where, bars=2)
    response = await answer(double, "loop", {"prompt": "dusty keys"}, where.bob, where.channel)
    assert not response["data"].get("flags", 0) & EPHEMERAL
    assert response["data"]["embeds"][0]["description"] == "“dusty keys” · 92 BPM · 2 bars · 4/4 · A minor"
    (row,) = rows_of(bot, where.bob)
    assert (row.bpm, row.bars, row.beats_per_bar, row.prompt) == (92, 2, 4, "dusty keys")


async def test_loopify_in_a_jam_takes_its_shape_without_a_bpm(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "loopify-in-jam")
    await start(double, bot, where, bars=8)
    wav = io.BytesIO()
    sf.write(wav, np.zeros(32000, dtype=np.float32) + 0.1, 32000, format="WAV")
    since = len(double.requests)
    sent = await double.slash("loopify", {"file": Upload("take.wav", wav.getvalue(), "audio/wav")}, user=where.bob, channel=where.channel)
    await sent.wait_callback(timeout=5)
    queued = await double.wait_for_request(FOLLOW_UP, lambda r: r.path_params["token"] == sent.token, since=since, timeout=10)
    assert queued.json["embeds"][0]["description"] == "“loopify: take.wav” · 92 BPM · 8 bars · 4/4 · A minor"
    (row,) = rows_of(bot, where.bob)
    assert (row.bpm, row.bars, row.source_path is not None) == (92, 8, True)


async def test_the_queue_keeps_a_jam_loops_key_and_jam(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "queue-keeps-key")
    jam_id, _ = await start(double, bot, where)
    await answer(double, "loop", {"prompt": "dusty keys"}, where.bob, where.channel)
    (row,) = rows_of(bot, where.bob)
    assert (row.target_key, row.jam_id) == ("A minor", jam_id) and "A minor" in row.prompt_sent


async def test_another_bpm_or_length_in_a_jam_is_replaced_with_a_note_to_its_asker(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "other-bpm")
    jam_id, _ = await start(double, bot, where)
    since = len(double.requests)
    sent = await double.slash("loop", {"prompt": "fast dub", "bpm": 120, "bars": 2}, user=where.bob, channel=where.channel)
    queued = (await sent.wait_callback(timeout=5)).json
    note = await double.wait_for_request(FOLLOW_UP, lambda r: r.path_params["token"] == sent.token, since=since)
    assert "92 BPM · 4 bars · 4/4 · A minor" in queued["data"]["embeds"][0]["description"]
    assert note.json["flags"] & EPHEMERAL
    assert note.json["content"].startswith(f"This channel's Jam #{jam_id} plays 92 BPM · 4 bars · 4/4 · A minor, so your loop is made at that, "
                                           "not at the 120 BPM · 2 bars · 4/4 you asked for.")
    (row,) = rows_of(bot, where.bob)
    assert (row.bpm, row.bars) == (92, 4)


async def test_a_loop_without_bpm_outside_a_jam_is_refused(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "no-bpm")
    response = await answer(double, "loop", {"prompt": "house"}, where.bob, where.channel)
    assert response["data"]["flags"] & EPHEMERAL and text_of(response) == NO_BPM
    assert rows_of(bot, where.bob) == []


# --- layers --------------------------------------------------------------------------------------------


async def test_two_members_loops_join_by_their_button_and_by_jam_add(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "two-join")
    jam_id, card_id = await start(double, bot, where)
    bobs = finished(bot, where, where.bob, "bob's bassline", jam_id=jam_id)
    carols = finished(bot, where, where.carol, "carol's pads")  # made elsewhere, any time: /jam add takes it

    message = await posted(double, bot, bobs)
    assert custom_ids(message) == [f"lj:{a}:{bobs}" for a in ("variation", "reroll", "double", "info")] + [f"lj:jamadd:{bobs}"]
    added = await press(double, message, f"lj:jamadd:{bobs}", where.bob)
    assert added["data"]["flags"] & EPHEMERAL
    assert text_of(added) == f"Added “bob's bassline” (`{bobs}`) to Jam #{jam_id} as layer 1 of 8."
    added = await answer(double, "jam add", {"id": carols}, where.carol, where.channel)
    assert text_of(added) == f"Added “carol's pads” (`{carols}`) to Jam #{jam_id} as layer 2 of 8."

    card = await card_when(double, card_id, layer_count(2))
    assert fields(card["embeds"][0])["Layers (2/8)"] == (
        f"1. “bob's bassline” · `{bobs}` · by <@{where.bob.user.id}>\n2. “carol's pads” · `{carols}` · by <@{where.carol.user.id}>")
    assert layers_of(bot, where.channel) == [bobs, carols]
    again = await answer(double, "jam add", {"id": bobs}, where.carol, where.channel)
    assert text_of(again) == f"“bob's bassline” (`{bobs}`) is already layer 1 of Jam #{jam_id}."

    # A re-roll or variation of a jam loop is made in the jam, in its key; a double, twice as long, is not.
    for action in ("reroll", "variation", "double"):
        await press(double, message, f"lj:{action}:{bobs}", where.carol)
    made = {row.kind.value: row for row in rows_of(bot, where.carol) if row.parent_id is not None}
    assert {kind: (row.jam_id, row.target_key) for kind, row in made.items()} == {
        "reroll": (jam_id, "A minor"), "variation": (jam_id, "A minor"), "double": (None, None)}


async def test_loops_that_cannot_join_get_friendly_errors_and_change_nothing(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "cannot-join")
    jam_id, card_id = await start(double, bot, where)
    shorter = finished(bot, where, where.bob, "short one", shape=LoopShape(92, 2))
    waiting = finished(bot, where, where.bob, "still cooking", done=False)
    mix = finished(bot, where, where.bob, "jam mix", jam_id=jam_id, kind=GenerationKind.MIX)
    card_before = double.messages.get(card_id)

    answers = {loop_id: text_of(await answer(double, "jam add", {"id": loop_id}, where.bob, where.channel))
               for loop_id in (shorter, waiting, mix, "nope1234")}

    assert answers[shorter] == (f"“short one” (`{shorter}`) is 92 BPM · 2 bars · 4/4, but Jam #{jam_id} is 92 BPM · 4 bars · 4/4: "
                                "only loops of the jam's tempo, bars and meter can join it.")
    assert answers[waiting] == f"“still cooking” (`{waiting}`) isn't finished yet: add it once it has been posted."
    assert answers[mix] == f"“jam mix” (`{mix}`) is a mix; a jam's layers are loops."
    assert answers["nope1234"] == "There is no loop with the id nope1234. /history lists them."
    assert layers_of(bot, where.channel) == [] and double.messages.get(card_id) == card_before
    elsewhere = place(double, "no-jam-here")
    refused = await answer(double, "jam add", {"id": shorter}, elsewhere.bob, elsewhere.channel)
    assert text_of(refused) == jam_cog.NO_JAM


async def test_a_ninth_layer_asks_which_one_it_replaces(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "ninth")
    jam_id, card_id = await start(double, bot, where)
    loops = [finished(bot, where, where.bob, f"layer {n}") for n in range(1, 10)]
    for loop_id in loops[:8]:
        await answer(double, "jam add", {"id": loop_id}, where.bob, where.channel)

    sent = await double.slash("jam add", {"id": loops[8]}, user=where.carol, channel=where.channel)
    asked = (await sent.wait_callback(timeout=5)).json
    assert asked["data"]["flags"] & EPHEMERAL and f"Jam #{jam_id} has 8 layers" in text_of(asked)
    menu = copy.deepcopy(double.original_message(sent))  # as it was offered: the answer replaces it
    select = menu["components"][0]["components"][0]
    assert select["custom_id"] == f"lj:jamswap:{jam_id}:{loops[8]}" and select["placeholder"] == "Replace which layer?"
    assert [option["value"] for option in select["options"]] == loops[:8]
    assert layers_of(bot, where.channel) == loops[:8]  # nothing changes until a layer is chosen

    chosen = await press(double, menu, select["custom_id"], where.carol, values=[loops[2]])
    assert chosen["type"] == UPDATE_MESSAGE and chosen["data"]["components"] == []
    assert chosen["data"]["content"] == (f"Replaced layer 3, “layer 3”, with “layer 9” (`{loops[8]}`); it is layer 8 of Jam #{jam_id} now.")
    assert layers_of(bot, where.channel) == loops[:2] + loops[3:]
    card = await card_when(double, card_id, lambda embed: "“layer 9”" in fields(embed).get("Layers (8/8)", ""))
    assert "“layer 3”" not in fields(card["embeds"][0])["Layers (8/8)"]
    stale = await press(double, menu, select["custom_id"], where.carol, values=[loops[2]])
    assert "has left" in text_of(stale) and layers_of(bot, where.channel) == loops[:2] + loops[3:]


async def test_only_the_starter_or_manage_server_remove_others_layers_or_stop(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "permissions")
    world = double.world
    mod = world.add_member(world.guild, "mod-permissions", role_ids=[world.add_role(world.guild, "mods", Permission.MANAGE_GUILD).id])
    jam_id, card_id = await start(double, bot, where)
    bobs, carols = (finished(bot, where, who, f"{who.user.username} loop") for who in (where.bob, where.carol))
    await answer(double, "jam add", {"id": bobs}, where.bob, where.channel)
    await answer(double, "jam add", {"id": carols}, where.carol, where.channel)

    refused = await answer(double, "jam remove", {"layer": 1}, where.carol, where.channel)
    assert refused["data"]["flags"] & EPHEMERAL and text_of(refused).startswith(f"Layer 1 was added by <@{where.bob.user.id}>: only they")
    refused = await answer(double, "jam stop", {}, where.bob, where.channel)
    assert text_of(refused) == f"Only <@{where.alice.user.id}>, who started Jam #{jam_id}, or someone with Manage Server can stop it."
    assert layers_of(bot, where.channel) == [bobs, carols]

    own = await answer(double, "jam remove", {"layer": 2}, where.carol, where.channel)
    assert text_of(own) == f"Removed layer 2, “{where.carol.user.username} loop” (`{carols}`), from Jam #{jam_id}."
    await answer(double, "jam remove", {"layer": 1}, mod, where.channel)
    assert layers_of(bot, where.channel) == []
    stopped = await answer(double, "jam stop", {}, mod, where.channel)
    assert text_of(stopped).startswith(f"Jam #{jam_id} has ended.")
    card = await card_when(double, card_id, lambda embed: embed["title"] == f"Jam #{jam_id} (ended)")
    assert custom_ids(card) == []
    assert "was stopped" in card["embeds"][0]["description"]
    with bot.database.session() as session:
        assert running_jam(session, where.channel.id) is None


# --- mixing --------------------------------------------------------------------------------------------


async def test_mix_without_a_running_jam_is_refused(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "mix-no-jam")
    response = await answer(double, "jam mix", {}, where.bob, where.channel)
    assert response["data"]["flags"] & EPHEMERAL and text_of(response) == jam_cog.NO_JAM
    assert rows_of(bot, where.bob) == []


async def test_jam_mix_and_the_cards_button_queue_a_mix(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "mix")
    jam_id, card_id = await start(double, bot, where)
    for who in (where.bob, where.carol):
        await answer(double, "jam add", {"id": finished(bot, where, who, "layer")}, who, where.channel)

    queued = await answer(double, "jam mix", {}, where.bob, where.channel)
    pressed = await press(double, card_id, f"lj:jammix:{jam_id}", where.carol)

    for response in (queued, pressed):
        embed = response["data"]["embeds"][0]
        assert embed["title"] == "Queued" and embed["description"] == "“jam mix: 2 layers” · 92 BPM · 4 bars · 4/4"
    mixes = [row for who in (where.bob, where.carol) for row in rows_of(bot, who) if row.kind is GenerationKind.MIX]
    assert [(row.bpm, row.bars, row.prompt) for row in mixes] == [(92, 4, "jam mix: 2 layers")] * 2  # as the queue names the layers it took


async def test_the_queue_refuses_a_mix_without_layers_and_keeps_a_mixs_layers(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "mix-queue-side")
    jam_id, _ = await start(double, bot, where)
    empty = await answer(double, "jam mix", {}, where.bob, where.channel)
    assert empty["data"].get("flags", 0) & EPHEMERAL and rows_of(bot, where.bob) == []
    layers = [finished(bot, where, where.carol, f"layer {n}") for n in (1, 2)]
    for loop_id in layers:
        await answer(double, "jam add", {"id": loop_id}, where.carol, where.channel)
    await answer(double, "jam mix", {}, where.bob, where.channel)
    (mix,) = rows_of(bot, where.bob)
    assert (mix.kind, mix.jam_id, mix.mix_loop_ids) == (GenerationKind.MIX, jam_id, layers)


def mix_files(data_dir: Path, name: str) -> str:
    """A finished mix's files as a worker leaves them: audio, waveform, and the stems zip beside them."""
    audio = data_dir / "loops" / f"{name}.wav"
    audio.parent.mkdir(exist_ok=True)
    sf.write(audio, np.zeros((6400, 2), dtype=np.float32), 32000)
    audio.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with zipfile.ZipFile(audio.with_suffix(".zip"), "w") as stems:
        for stem in ("01-drums.wav", "02-pads.wav"):
            wav = io.BytesIO()
            sf.write(wav, np.zeros((6400, 2), dtype=np.float32), 32000, format="WAV")
            stems.writestr(stem, wav.getvalue())
        stems.writestr("jam.json", json.dumps({"layers": [{"stem": "01-drums.wav"}, {"stem": "02-pads.wav"}]}))
    return f"loops/{name}.wav"


async def test_a_finished_mix_is_posted_with_its_stems_and_the_card_links_to_it(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "mix-posted")
    jam_id, card_id = await start(double, bot, where)
    layers = [finished(bot, where, where.carol, prompt) for prompt in ("drums", "pads")]
    for loop_id in layers:
        await answer(double, "jam add", {"id": loop_id}, where.carol, where.channel)
    audio = mix_files(Path(bot.settings.storage.data_dir), "mix-posted")
    mix = finished(bot, where, where.bob, "jam mix", jam_id=jam_id, kind=GenerationKind.MIX, mix_loop_ids=layers, audio=audio)

    since = len(double.requests)
    message = await posted(double, bot, mix)

    embed = message["embeds"][0]
    assert embed["title"] == "Jam mix" and embed["description"] == f"Jam #{jam_id} · 92 BPM · 4 bars · 4/4 · A minor"
    shown = fields(embed)
    assert shown["Layers"] == f"1. “drums” · `{layers[0]}`\n2. “pads” · `{layers[1]}`"
    assert shown["Stems"].startswith("Attached: each layer as its own loop, and jam.json")
    assert custom_ids(message) == [f"lj:info:{mix}"]  # no Variation, Re-roll, Double or Add to jam
    request = next(r for r in double.requests.entries[since:]
                   if r.route == CHANNEL_MESSAGE and r.files and r.json["embeds"][0]["footer"]["text"] == f"id {mix}")
    assert [f.filename for f in request.files] == ["mix-posted.wav", "waveform.png", "mix-posted.zip"]
    with zipfile.ZipFile(io.BytesIO(request.file("mix-posted.zip").data)) as stems:
        assert stems.testzip() is None and sorted(stems.namelist()) == ["01-drums.wav", "02-pads.wav", "jam.json"]
    card = await card_when(double, card_id, lambda embed: "Last mix" in fields(embed))
    link = f"https://discord.com/channels/{where.channel.guild_id}/{where.channel.id}/{message['id']}"
    assert fields(card["embeds"][0])["Last mix"] == f"[Listen to it]({link})"


# --- idle expiry, restarts -------------------------------------------------------------------------------


async def test_an_idle_jam_ends_by_itself_and_its_card_says_so(double: DiscordDouble, bot: InProcessBot) -> None:
    where, busy = place(double, "idle"), place(double, "busy")
    jam_id, card_id = await start(double, bot, where)
    await start(double, bot, busy)
    with bot.database.session() as session:
        idle_for = timedelta(hours=bot.settings.jam.idle_hours, minutes=1)
        session.execute(update(JamSession).where(JamSession.id == jam_id).values(last_active_at=utcnow() - idle_for))

    await bot.jam.expiry.run_once()

    card = double.messages.get(card_id)  # edited within the pass
    assert card["embeds"][0]["title"] == f"Jam #{jam_id} (ended)" and custom_ids(card) == []
    assert "ended after a long time without changes" in card["embeds"][0]["description"]
    with bot.database.session() as session:
        assert running_jam(session, where.channel.id) is None and running_jam(session, busy.channel.id) is not None


async def test_idle_expiry_survives_a_database_error(
    double: DiscordDouble, bot: InProcessBot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable(*_: object) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(jam_cog, "_end_idle", unreachable)
    await bot.jam.expiry.run_once()
    await bot.jam.expiry.run_once()
    assert bot.jam.expiry.failures == 2
    monkeypatch.undo()
    await bot.jam.expiry.run_once()
    assert bot.jam.expiry.failures == 0
    lines = [r.getMessage() for r in caplog.records if "jam expiry" in r.getMessage()]
    assert len(lines) == 2 and "connection refused" in lines[0] and "works again" in lines[1]


async def test_a_jam_and_its_layers_survive_a_restart(tmp_path: Path) -> None:
    settings = jam_settings(tmp_path)
    database = Database.from_settings(settings.storage)
    database.upgrade()
    try:
        async with DiscordDouble() as double:
            where = place(double, "restart")

            def started_bot() -> InProcessBot:
                bot = InProcessBot(settings, QueueService(settings, database, backend=NoWorkers()), database)
                bot._connection.guild_ready_timeout = 0.05  # type: ignore[attr-defined]
                return bot

            first = started_bot()
            async with running_client(first, double, timeout=20):
                jam_id, card_id = await start(double, first, where)
                loop_id = finished(first, where, where.bob, "after the restart", jam_id=jam_id)
            second = started_bot()
            async with running_client(second, double, timeout=20):
                message = await posted(double, second, loop_id)
                added = await press(double, message, f"lj:jamadd:{loop_id}", where.carol)
                card = await card_when(double, card_id, layer_count(1))
                mixed = await press(double, card_id, f"lj:jammix:{jam_id}", where.carol)
    finally:
        database.dispose()
    assert text_of(added) == f"Added “after the restart” (`{loop_id}`) to Jam #{jam_id} as layer 1 of 8."
    assert "“after the restart”" in fields(card["embeds"][0])["Layers (1/8)"]
    assert mixed["data"]["embeds"][0]["title"] == "Queued"


# --- history -------------------------------------------------------------------------------------------


async def test_history_filters_by_jam_bpm_and_key(double: DiscordDouble, bot: InProcessBot) -> None:
    where = place(double, "history")
    with bot.database.session() as session:
        jam = start_jam(session, NewJam(where.channel.guild_id, where.channel.id, where.alice.user.id, SHAPE, "F# minor"))
        assert jam is not None
        jam_id = jam.id
    in_jam = finished(bot, where, where.bob, "histo in jam", jam_id=jam_id, target_key="F# minor")
    mix = finished(bot, where, where.bob, "histo mix", jam_id=jam_id, kind=GenerationKind.MIX, mix_loop_ids=[in_jam])
    fast = finished(bot, where, where.bob, "histo fast", shape=LoopShape(133.33, 4))
    with bot.database.session() as session:
        loop = get_generation(session, in_jam)
        jam = running_jam(session, where.channel.id)
        assert loop is not None and jam is not None
        add_layer(session, jam, loop, where.bob.user.id)

    async def listed(**options: tp.Any) -> tuple[str, list[str]]:
        response = await answer(double, "history", {"scope": "server", "search": "histo", **options}, where.bob, where.channel)
        embed = response["data"]["embeds"][0]
        return embed["title"], [field["name"] for field in embed.get("fields", [])]

    title, names = await listed(jam=jam_id)
    assert title == f"Loops on this server · “histo” · Jam #{jam_id}"
    assert [name.split()[0] for name in names] == [f"`{mix}`", f"`{in_jam}`"] and names[0].startswith(f"`{mix}` · mix · ")
    assert [name.split()[0] for name in (await listed(bpm=133.33))[1]] == [f"`{fast}`"]
    title, names = await listed(key="f#m")
    assert title.endswith("· F# minor") and [name.split()[0] for name in names] == [f"`{in_jam}`"]
    refused = await answer(double, "history", {"key": "H"}, where.bob, where.channel)
    assert refused["data"]["flags"] & EPHEMERAL and text_of(refused).startswith("Unknown key 'H'")


async def test_a_database_outage_is_explained_to_jam_and_loop_users(
    double: DiscordDouble, bot: InProcessBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_: object) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    where = place(double, "outage")
    monkeypatch.setattr(jam_cog, "_running_card", unreachable)
    monkeypatch.setattr(loops_cog, "_in_jam", unreachable)
    for command, options in (("jam show", {}), ("jam mix", {}), ("loop", {"prompt": "dub", "bpm": 90})):
        response = await answer(double, command, options, where.bob, where.channel)
        assert response["data"]["flags"] & EPHEMERAL, command
        assert text_of(response) == "The queue's database is unreachable right now; please try again in a minute.", command
    assert rows_of(bot, where.bob) == []

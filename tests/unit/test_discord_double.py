"""The Discord API double, proven with a real `discord.Client` and `app_commands.CommandTree`."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
from discord import app_commands
from discord_double import DiscordDouble, Overwrite, Permission, Upload
from discord_double.inprocess import running_client

CALLBACK = "POST /interactions/{interaction_id}/{token}/callback"
FOLLOW_UP = "POST /webhooks/{application_id}/{token}"
EDIT_ORIGINAL = "PATCH /webhooks/{application_id}/{token}/messages/@original"
CHANNEL_MESSAGE = "POST /channels/{channel_id}/messages"
RENDERED = b"RIFF" + bytes(range(256)) * 64


class ProbeClient(discord.Client):
    """A small bot: one command per thing the double must carry."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.errors: list[app_commands.AppCommandError] = []
        self.interactions: asyncio.Queue[discord.Interaction] = asyncio.Queue()
        self.tree.on_error = self._record_error  # type: ignore[method-assign]
        self.tree.add_command(app_commands.Command(name="ping", description="Answers pong", callback=ping))
        self.tree.add_command(app_commands.Command(name="render", description="A deferred answer with a file", callback=render))
        self.tree.add_command(app_commands.Command(name="inspect", description="Reads an uploaded file", callback=inspect))
        self.tree.add_command(app_commands.Command(name="slow", description="Answers too late", callback=slow))

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every IDENTIFY but the first; the double has no identify limit."""

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.interactions.put(interaction)

    async def _record_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.errors.append(error)


@app_commands.describe(message="What to echo back")
async def ping(interaction: discord.Interaction, message: str, times: app_commands.Range[int, 1, 3] = 1) -> None:
    view = discord.ui.View()
    view.add_item(discord.ui.Button(label="Again", custom_id="ping:again"))
    await interaction.response.send_message(f"pong: {message}" * times, view=view)


async def render(interaction: discord.Interaction, name: str) -> None:
    await interaction.response.defer(thinking=True)
    await interaction.followup.send("rendered", file=discord.File(io.BytesIO(RENDERED), filename=f"{name}.wav"))
    await interaction.edit_original_response(content=f"rendered {name}")


async def inspect(interaction: discord.Interaction, file: discord.Attachment) -> None:
    data = await file.read()
    await interaction.response.send_message(f"{file.filename} {file.content_type} {hashlib.sha256(data).hexdigest()}", ephemeral=True)


async def slow(interaction: discord.Interaction) -> None:
    await asyncio.sleep(0.5)
    await interaction.response.send_message("too late")


@pytest.fixture
async def double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as double:
        yield double
    assert not double.unrouted_requests(), [r.route for r in double.unrouted_requests()]


@pytest.fixture
async def client(double: DiscordDouble) -> AsyncIterator[ProbeClient]:
    probe = ProbeClient()
    async with running_client(probe, double):
        await probe.tree.sync()
        yield probe


async def test_tree_sync_reaches_the_command_registry(double: DiscordDouble, client: ProbeClient) -> None:
    put = await double.wait_for_request("PUT /applications/{application_id}/commands", status=200)
    assert put.headers["Authorization"] == f"Bot {double.token}"
    registered = {c["name"]: c for c in double.commands.list()}
    assert set(registered) == {"ping", "render", "inspect", "slow"}
    options = {o["name"]: o for o in registered["ping"]["options"]}
    assert options["message"]["type"] == 3 and options["message"]["required"] is True
    assert options["times"]["min_value"] == 1 and options["times"]["max_value"] == 3
    fetched = await client.tree.fetch_commands()
    assert {c.name: c.id for c in fetched} == {name: int(c["id"]) for name, c in registered.items()}

    guild = discord.Object(double.world.guild.id)
    client.tree.copy_global_to(guild=guild)
    await client.tree.sync(guild=guild)
    guild_ping = double.commands.find("ping", guild.id)
    assert guild_ping is not None and guild_ping["guild_id"] == str(guild.id)
    sent = await double.slash("ping", {"message": "guild"})
    assert sent.payload["data"]["guild_id"] == str(guild.id)
    assert (await sent.wait_callback()).json["data"]["content"] == "pong: guild"


async def test_ping_is_answered_within_three_seconds(double: DiscordDouble, client: ProbeClient) -> None:
    sent = await double.slash("ping", {"message": "hi", "times": 2}, user="bob")
    callback = await sent.wait_callback(timeout=3)
    assert callback.json["type"] == 4
    assert callback.json["data"]["content"] == "pong: hipong: hi"
    assert sent.ack_latency_s < 3
    message = double.original_message(sent)
    assert message["interaction_metadata"]["user"]["username"] == "bob"
    assert message["components"][0]["components"][0]["custom_id"] == "ping:again"


async def test_identify_asks_for_no_privileged_intents(double: DiscordDouble, client: ProbeClient) -> None:
    identify = await double.gateway_frames.wait_for(lambda f: f.op == 2)
    assert identify.data["intents"] & ((1 << 1) | (1 << 8) | (1 << 15)) == 0
    connection = (await double.gateway.wait_connected()).connection
    assert connection is not None and connection.zlib_stream  # discord.py asked for compress=zlib-stream
    guild = client.get_guild(double.world.guild.id)
    assert guild is not None and guild.me.guild_permissions.attach_files
    assert {c.name for c in guild.text_channels} == {"loops", "general"}


async def test_deferred_answer_then_follow_up_file_then_edit(double: DiscordDouble, client: ProbeClient) -> None:
    sent = await double.slash("render", {"name": "groove"})
    assert (await sent.wait_callback()).json["type"] == 5
    follow_up = await double.wait_for_request(FOLLOW_UP, status=200)
    assert follow_up.file("groove.wav").data == RENDERED
    edit = await double.wait_for_request(EDIT_ORIGINAL, status=200)
    assert edit.json["content"] == "rendered groove"

    message = double.original_message(sent)
    assert message["content"] == "rendered groove" and not message["flags"] & 128  # no longer "thinking"
    async with aiohttp.ClientSession() as session, session.get(message["attachments"][0]["url"]) as response:
        assert await response.read() == RENDERED


async def test_attachment_option_is_downloadable(double: DiscordDouble, client: ProbeClient) -> None:
    upload = Upload("take.ogg", b"OggS" + b"\x01" * 1000)
    sent = await double.slash("inspect", {"file": upload}, user="carol")
    callback = await sent.wait_callback()
    assert callback.json["data"]["content"] == f"take.ogg audio/ogg {hashlib.sha256(upload.data).hexdigest()}"
    assert callback.json["data"]["flags"] == 64


async def test_interaction_callback_429_is_retried(double: DiscordDouble, client: ProbeClient) -> None:
    double.rate_limit(CALLBACK, times=1, retry_after=0.2)
    sent = await double.slash("ping", {"message": "again"})
    accepted = await sent.wait_callback()
    attempts = double.requests.matching(lambda r: r.route == CALLBACK)
    assert [r.status for r in attempts] == [429, 200]
    assert accepted.at - attempts[0].at >= 0.2


async def test_channel_message_429_is_retried_by_the_http_client(double: DiscordDouble, client: ProbeClient) -> None:
    double.rate_limit(CHANNEL_MESSAGE, times=2, retry_after=0.1)
    channel = client.get_channel(double.channel.id)
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("@everyone after two 429s", allowed_mentions=discord.AllowedMentions.none())
    attempts = double.requests.matching(lambda r: r.route == CHANNEL_MESSAGE)
    assert [r.status for r in attempts] == [429, 429, 200]
    assert attempts[-1].json["allowed_mentions"]["parse"] == []
    stored = double.messages.get(message.id)
    assert stored["content"] == "@everyone after two 429s" and stored["mention_everyone"] is False
    assert not message.mention_everyone


async def test_button_click_and_autocomplete_reach_the_client(double: DiscordDouble, client: ProbeClient) -> None:
    seen = client.interactions
    sent = await double.slash("ping", {"message": "hi"})
    await sent.wait_callback()
    await seen.get()

    click = await double.click(double.original_message(sent), "ping:again", user="alice")
    interaction = await asyncio.wait_for(seen.get(), 3)
    assert interaction.type is discord.InteractionType.component
    assert interaction.data == {"custom_id": "ping:again", "component_type": 2}
    assert interaction.message is not None and interaction.message.id == sent.original_message_id
    assert interaction.id == click.id

    await double.autocomplete("ping", "message", {"message": "h"})
    typed = await asyncio.wait_for(seen.get(), 3)
    assert typed.type is discord.InteractionType.autocomplete


async def test_late_callback_gets_unknown_interaction(client: ProbeClient, double: DiscordDouble) -> None:
    double.interactions.response_deadline_s = 0.2
    await double.slash("slow")
    refused = await double.wait_for_request(CALLBACK, status=404, timeout=3)
    assert refused.response["code"] == 10062
    await asyncio.sleep(0.05)
    assert isinstance(client.errors[0], app_commands.CommandInvokeError)
    assert isinstance(client.errors[0].original, discord.NotFound)


async def test_reconnect_resumes_and_missed_events_are_replayed(double: DiscordDouble, client: ProbeClient) -> None:
    await double.gateway.request_reconnect()
    resume = await double.gateway_frames.wait_for(lambda f: f.op == 6, timeout=5)
    assert resume.path == "/gateway-resume"
    await double.gateway.wait_connected()
    sent = await double.slash("ping", {"message": "still here"})
    assert (await sent.wait_callback()).json["data"]["content"] == "pong: still here"
    assert double.gateway.identify_count == 1 and double.gateway.resume_count == 1


async def test_dropped_connection_resumes_and_invalid_session_identifies_again(double: DiscordDouble, client: ProbeClient) -> None:
    await double.gateway.drop_connection()
    await double.gateway_frames.wait_for(lambda f: f.op == 6, timeout=5)
    await double.gateway.invalidate_session()
    await double.gateway.wait_connected(min_identifies=2, timeout=10)
    sent = await double.slash("ping", {"message": "new session"})
    assert (await sent.wait_callback()).json["data"]["content"] == "pong: new session"


async def test_component_update_then_edit_original(double: DiscordDouble, client: ProbeClient) -> None:
    sent = await double.slash("ping", {"message": "hi"})
    await sent.wait_callback()
    await client.interactions.get()
    click = await double.click(sent.original_message_id or 0, "ping:again", user="bob")
    interaction = await asyncio.wait_for(client.interactions.get(), 3)
    await interaction.response.edit_message(content="updated", view=None)
    assert (await click.wait_callback()).json["type"] == 7
    await interaction.edit_original_response(content="updated twice")  # @original of a click is the clicked message
    message = double.original_message(sent)
    assert message["content"] == "updated twice" and message["components"] == []
    assert click.original_message_id == sent.original_message_id


async def test_channel_where_the_bot_may_not_send_is_refused(double: DiscordDouble, client: ProbeClient) -> None:
    guild = double.world.guild
    locked = double.world.add_channel(guild, "locked", [Overwrite(guild.id, 0, deny=Permission.SEND_MESSAGES)])
    with pytest.raises(discord.Forbidden) as refused:
        await client.get_partial_messageable(locked.id, guild_id=guild.id).send("hello")
    assert refused.value.code == 50013
    sent = await double.slash("ping", {"message": "hi"}, channel=locked)
    assert int(sent.payload["app_permissions"]) & Permission.SEND_MESSAGES == 0
    assert (await sent.wait_callback()).status == 200  # interaction responses need no channel permission

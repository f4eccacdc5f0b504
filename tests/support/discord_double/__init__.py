"""A Discord API double (REST v10 and gateway) for end-to-end tests of a slash-command bot.

See `server.DiscordDouble` for the entry point and `inprocess` for running a `discord.Client`
against it in the test process.
"""

from .errors import DiscordAPIError
from .interaction_payloads import Upload
from .interactions import SentInteraction
from .model import FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser, Overwrite, Permission, World
from .recording import GatewayFrame, RecordedFile, RecordedRequest
from .server import DiscordDouble

__all__ = [
    "DiscordAPIError",
    "DiscordDouble",
    "FakeChannel",
    "FakeGuild",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "GatewayFrame",
    "Overwrite",
    "Permission",
    "RecordedFile",
    "RecordedRequest",
    "SentInteraction",
    "Upload",
    "World",
]

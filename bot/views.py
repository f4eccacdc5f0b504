"""Buttons (and a menu) that keep working after a restart: the ids they act on live in each `custom_id`.

`custom_id`s look like `lj:<action>:<job id>` (a jam's: `lj:jammix:<jam id>`, `lj:jamadd:<loop id>`,
`lj:jamswap:<jam id>:<loop id>`); discord.py's `DynamicItem` parses them back, so no view has to be
kept in memory.
"""

from __future__ import annotations

import re
import typing as tp

import discord

from generation.storage.models import SHORT_ID_LENGTH

from .errors import report_error
from .shutdown import refused_while_stopping

ACTIONS = {
    "variation": ("Variation", "🔀", "A new loop that continues this one"),
    "reroll": ("Re-roll", "🎲", "Same request, new seed"),
    "double": ("Double", "⏩", "Twice the bars"),
    "info": ("Info", "ℹ️", "Every parameter"),
}
JOB_ID = rf"(?P<job_id>[A-Za-z0-9_-]{{{SHORT_ID_LENGTH}}})"


class ButtonHandlers(tp.Protocol):
    """What the buttons ask of the bot: the Loops cog, reached as `bot.loops`."""

    async def on_loop_action(self, interaction: discord.Interaction, action: str, job_id: str) -> None: ...

    async def on_cancel(self, interaction: discord.Interaction, job_id: str) -> None: ...


class JamHandlers(tp.Protocol):
    """What a jam's buttons ask of the bot: the Jam cog, reached as `bot.jam`."""

    async def on_jam_mix(self, interaction: discord.Interaction, jam_id: int) -> None: ...

    async def on_jam_add(self, interaction: discord.Interaction, loop_id: str) -> None: ...

    async def on_jam_replace(self, interaction: discord.Interaction, jam_id: int, loop_id: str, replaced_id: str) -> None: ...


class _WithButtonHandlers(tp.Protocol):
    loops: ButtonHandlers
    jam: JamHandlers


def handlers(interaction: discord.Interaction) -> ButtonHandlers:
    return tp.cast(_WithButtonHandlers, interaction.client).loops


def jam_handlers(interaction: discord.Interaction) -> JamHandlers:
    return tp.cast(_WithButtonHandlers, interaction.client).jam


class _RefusedWhileStopping:
    """Buttons, like commands, are answered that LoopJam is restarting while it stops."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return not await refused_while_stopping(interaction)


ACTION_TEMPLATE = rf"lj:(?P<action>{'|'.join(ACTIONS)}):{JOB_ID}"


class LoopActionButton(_RefusedWhileStopping, discord.ui.DynamicItem[discord.ui.Button], template=ACTION_TEMPLATE):
    """Variation, Re-roll, Double or Info under a posted loop. Anyone may press them."""

    def __init__(self, action: str, job_id: str) -> None:
        label, emoji, _ = ACTIONS[action]
        style = discord.ButtonStyle.secondary if action == "info" else discord.ButtonStyle.primary
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"lj:{action}:{job_id}"))
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[tp.Any], match: re.Match[str]
    ) -> LoopActionButton:
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        # Component errors never reach the command tree's on_error, so they are reported here.
        try:
            await handlers(interaction).on_loop_action(interaction, self.action, self.job_id)
        except Exception as error:
            await report_error(interaction, error)


class CancelButton(_RefusedWhileStopping, discord.ui.DynamicItem[discord.ui.Button], template=rf"lj:cancel:{JOB_ID}"):
    """Under a queued job; only its requester may use it (the service checks)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.danger, custom_id=f"lj:cancel:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[tp.Any], match: re.Match[str]) -> CancelButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await handlers(interaction).on_cancel(interaction, self.job_id)
        except Exception as error:
            await report_error(interaction, error)


JAM_ID = r"(?P<jam_id>[0-9]{1,18})"


class JamMixButton(_RefusedWhileStopping, discord.ui.DynamicItem[discord.ui.Button], template=rf"lj:jammix:{JAM_ID}"):
    """On a jam's card: mix its layers now. Anyone may press it."""

    def __init__(self, jam_id: int) -> None:
        super().__init__(discord.ui.Button(label="Mix", emoji="🎚️", style=discord.ButtonStyle.success, custom_id=f"lj:jammix:{jam_id}"))
        self.jam_id = jam_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[tp.Any], match: re.Match[str]) -> JamMixButton:
        return cls(int(match["jam_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await jam_handlers(interaction).on_jam_mix(interaction, self.jam_id)
        except Exception as error:
            await report_error(interaction, error)


class JamAddButton(_RefusedWhileStopping, discord.ui.DynamicItem[discord.ui.Button], template=rf"lj:jamadd:{JOB_ID}"):
    """Under a loop made in a jam: add it to the channel's running jam, as `/jam add` does."""

    def __init__(self, job_id: str, label: str = "Add to jam") -> None:
        super().__init__(discord.ui.Button(label=label, emoji="➕", style=discord.ButtonStyle.success, custom_id=f"lj:jamadd:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[tp.Any], match: re.Match[str]) -> JamAddButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await jam_handlers(interaction).on_jam_add(interaction, self.job_id)
        except Exception as error:
            await report_error(interaction, error)


class JamReplaceSelect(_RefusedWhileStopping, discord.ui.DynamicItem[discord.ui.Select],
                       template=rf"lj:jamswap:{JAM_ID}:{JOB_ID}"):
    """"Replace which layer?": offered when a loop is added to a full jam; each option's value is a layer's loop id."""

    def __init__(self, jam_id: int, job_id: str, options: list[discord.SelectOption] | None = None) -> None:
        # Parsed back from a click, the options are not needed: the chosen value comes with the interaction.
        select: discord.ui.Select = discord.ui.Select(
            custom_id=f"lj:jamswap:{jam_id}:{job_id}", placeholder="Replace which layer?",
            options=options or [discord.SelectOption(label="-")],
        )
        super().__init__(select)
        self.jam_id = jam_id
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[tp.Any], match: re.Match[str]
    ) -> JamReplaceSelect:
        return cls(int(match["jam_id"]), match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await jam_handlers(interaction).on_jam_replace(interaction, self.jam_id, self.job_id, self.item.values[0])
        except Exception as error:
            await report_error(interaction, error)


def result_view(job_id: str, jam_loop_ids: tp.Sequence[str] = ()) -> discord.ui.View:
    """Variation, Re-roll, Double, Info, and an "Add to jam" button for each loop made in a jam."""
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        view.add_item(LoopActionButton(action, job_id))
    for number, loop_id in enumerate(jam_loop_ids, start=1):
        view.add_item(JamAddButton(loop_id, "Add to jam" if len(jam_loop_ids) == 1 else f"Add {number} to jam"))
    return view


def mix_view(job_id: str) -> discord.ui.View:
    """Under a mix: Info only (a mix is not varied, re-rolled or doubled)."""
    view = discord.ui.View(timeout=None)
    view.add_item(LoopActionButton("info", job_id))
    return view


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


class HistoryPages(discord.ui.View):
    """Previous / Next over pages computed by `fetch_page(page) -> (embed, has_next)`."""

    def __init__(self, owner_id: int, fetch_page: tp.Callable[[int], tp.Awaitable[tuple[discord.Embed, bool]]], has_next: bool) -> None:
        super().__init__(timeout=600)
        self.owner_id = owner_id
        self.fetch_page = fetch_page
        self.page = 0
        self._update_buttons(has_next)

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item) -> None:
        await report_error(interaction, error)

    def _update_buttons(self, has_next: bool) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = not has_next

    async def _show(self, interaction: discord.Interaction, page: int) -> None:
        self.page = page
        embed, has_next = await self.fetch_page(page)
        self._update_buttons(has_next)
        await interaction.response.edit_message(embed=embed, view=self)

    @discord.ui.button(label="Previous", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await self._show(interaction, max(0, self.page - 1))

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await self._show(interaction, self.page + 1)

"""The real `loopjam run` process (embedded mode, tiny model) against the Discord API double."""

from __future__ import annotations

import asyncio
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import soundfile as sf
from bot_process import (
    CHANNEL_MESSAGE,
    EDIT_ORIGINAL,
    FOLLOW_UP,
    RESULT_TIMEOUT_S,
    BotProcess,
    exact_samples,
    job_id_of,
    wav_samples,
)
from discord_double import DiscordDouble, RecordedRequest, Upload
from queue_helpers import descendants, live_children, still_running

from generation.jobs.worker import NICENESS

pytestmark = pytest.mark.asyncio(loop_scope="session")  # where the shared `bot` runs


async def result_of(double: DiscordDouble, sent, since: int) -> RecordedRequest:
    """The follow-up that carries the loop of the interaction `sent`."""
    return await double.wait_for_request(
        FOLLOW_UP, lambda r: r.path_params.get("token") == sent.token and bool(r.files), timeout=RESULT_TIMEOUT_S, since=since
    )


async def test_loop_is_acknowledged_fast_shows_progress_and_posts_an_exact_wav(
    double: DiscordDouble, bot: BotProcess, tiny_model_dir: Path
) -> None:
    since = len(double.requests)
    sent = await double.slash("loop", {"prompt": "dusty boom bap, vinyl crackle", "bpm": 92, "bars": 1}, user="alice")
    callback = await sent.wait_callback(timeout=3)
    assert sent.ack_latency_s < 3
    body = callback.json
    embed = body["data"]["embeds"][0]
    assert embed["title"] == "Queued" and "Position" in embed["fields"][0]["name"]
    assert body["data"]["allowed_mentions"]["parse"] == []
    assert body["data"]["components"][0]["components"][0]["label"] == "Cancel"

    result = await result_of(double, sent, since)
    assert wav_samples(result) == exact_samples(92, 1)
    edits = double.requests.matching(lambda r: r.route == EDIT_ORIGINAL and r.path_params.get("token") == sent.token, since=since)
    titles = [edit.json["embeds"][0]["title"] for edit in edits if edit.json.get("embeds")]
    assert any(title in ("Generating", "Cutting the loop", "Uploading") for title in titles), titles
    labels = [c["label"] for row in result.json["components"] for c in row["components"]]
    assert labels == ["Variation", "Re-roll", "Double", "Info"]
    footer = result.json["embeds"][0]["footer"]["text"]
    assert footer.startswith("id ")
    # The model is a local checkpoint: users see its directory's name, never its path.
    assert field(result, "Model") == "tiny"
    status = (await (await double.slash("status", {}, user="alice")).wait_callback(timeout=3)).json
    assert {f["name"]: f["value"] for f in status["data"]["embeds"][0]["fields"]}["Models"] == "tiny"
    assert str(tiny_model_dir) not in json.dumps([r.json for r in double.requests.matching(lambda r: r.json is not None)])


async def test_everyone_in_a_prompt_pings_nobody(double: DiscordDouble, bot: BotProcess) -> None:
    sent = await double.slash("loop", {"prompt": "@everyone **loud** techno", "bpm": 128, "bars": 1}, user="bob")
    callback = await sent.wait_callback(timeout=3)
    data = callback.json["data"]
    assert data["allowed_mentions"]["parse"] == []
    assert "@\u200beveryone" in data["embeds"][0]["description"] and "\\*\\*loud\\*\\*" in data["embeds"][0]["description"]


async def test_too_many_queued_is_refused_ephemerally(double: DiscordDouble, bot: BotProcess) -> None:
    # Five long loops at once: at most two run (a CPU batch) and two wait, so one at least is refused.
    sent = await asyncio.gather(*(
        double.slash("loop", {"prompt": f"ambient drone {i}", "bpm": 40, "bars": 8}, user="carol") for i in range(5)
    ))
    answers = [(await s.wait_callback(timeout=3)).json for s in sent]
    refused = [a for a in answers if a["data"].get("flags", 0) & 64]
    assert refused and all("waiting" in a["data"]["content"] for a in refused), answers
    # Cancel the accepted ones so the next tests do not wait behind them.
    for one, answer in zip(sent, answers):
        if answer not in refused:
            job_id = answer["data"]["embeds"][0]["footer"]["text"].split()[0]
            await (await double.click(double.original_message(one), f"lj:cancel:{job_id}", user="carol")).wait_callback(timeout=3)


async def test_history_lists_the_loop(double: DiscordDouble, bot: BotProcess) -> None:
    asked = await double.slash("loop", {"prompt": "boom bap for the history", "bpm": 90, "bars": 1}, user="alice")
    assert "embeds" in (await asked.wait_callback(timeout=3)).json["data"]  # queued, not refused
    sent = await double.slash("history", {"scope": "server", "search": "boom bap for the"}, user="alice")
    callback = await sent.wait_callback(timeout=3)
    fields = callback.json["data"]["embeds"][0]["fields"]
    assert any("boom bap for the history" in field["value"] for field in fields)


def field(result: RecordedRequest, name: str) -> str:
    return next(f["value"] for f in result.json["embeds"][0]["fields"] if f["name"] == name)


async def a_finished_loop(double: DiscordDouble, user: str, bpm: float = 120) -> tuple[RecordedRequest, dict]:
    since = len(double.requests)
    sent = await double.slash("loop", {"prompt": "jazzy rhodes", "bpm": bpm, "bars": 1}, user=user)
    await sent.wait_callback(timeout=3)
    result = await result_of(double, sent, since)
    return result, result.response


@pytest.mark.parametrize("action", ["reroll", "variation", "double"])
async def test_result_buttons_make_new_loops_for_whoever_presses(double: DiscordDouble, bot: BotProcess, action: str) -> None:
    result, message = await a_finished_loop(double, "alice")
    since = len(double.requests)
    pressed = await double.click(message, f"lj:{action}:{job_id_of(result)}", user="bob")
    callback = await pressed.wait_callback(timeout=3)
    assert callback.json["data"]["embeds"][0]["title"] == "Queued"
    new = await result_of(double, pressed, since)
    bars = 2 if action == "double" else 1
    assert wav_samples(new) == exact_samples(120, bars)
    made = field(new, "Made")
    assert str(double.member("bob").user.id) in made and str(double.member("alice").user.id) in made


async def test_info_button_is_ephemeral_with_every_parameter(double: DiscordDouble, bot: BotProcess) -> None:
    result, message = await a_finished_loop(double, "carol")
    pressed = await double.click(message, f"lj:info:{job_id_of(result)}", user="alice")
    data = (await pressed.wait_callback(timeout=3)).json["data"]
    names = {f["name"] for f in data["embeds"][0]["fields"]}
    assert data["flags"] & 64 and {"Seed", "BPM", "Bars", "Temperature", "Top-k", "CFG", "Model"} <= names


async def test_cancel_only_by_the_requester(double: DiscordDouble, bot: BotProcess) -> None:
    sent = await double.slash("loop", {"prompt": "very long drone", "bpm": 40, "bars": 8}, user="carol")
    queued = (await sent.wait_callback(timeout=3)).json["data"]
    message = double.original_message(sent)
    job_id = queued["embeds"][0]["footer"]["text"].split()[0]
    by_bob = await double.click(message, f"lj:cancel:{job_id}", user="bob")
    refusal = (await by_bob.wait_callback(timeout=3)).json["data"]
    assert refusal["flags"] & 64 and "Only" in refusal["content"]
    by_carol = await double.click(message, f"lj:cancel:{job_id}", user="carol")
    update = (await by_carol.wait_callback(timeout=3)).json
    assert update["type"] == 7 and update["data"]["embeds"][0]["title"] == "Cancelled"


def clicks(bpm: float, seconds: int = 8, rate: int = 32000) -> Upload:
    """A click track at `bpm`, accented on each bar's first beat, as an uploaded WAV."""
    import numpy as np

    track = np.zeros(rate * seconds, dtype=np.float32)
    for beat in range(int(seconds * bpm / 60)):
        start = int(beat * 60 / bpm * rate)
        track[start : start + 800] = np.hanning(800) * (0.9 if beat % 4 == 0 else 0.5)
    buffer = io.BytesIO()
    sf.write(buffer, track, rate, format="WAV")
    return Upload("groove.wav", buffer.getvalue(), "audio/wav")


async def test_loopify_makes_an_exact_loop_from_an_upload(double: DiscordDouble, bot: BotProcess) -> None:
    bpm = 100.0
    since = len(double.requests)
    sent = await double.slash("loopify", {"file": clicks(bpm), "bpm": bpm, "bars": 1}, user="alice")
    assert (await sent.wait_callback(timeout=3)).json["type"] == 5  # deferred: the download comes after the answer
    queued = await double.wait_for_request(FOLLOW_UP, lambda r: r.path_params.get("token") == sent.token, since=since)
    assert queued.json["embeds"][0]["title"] == "Queued"
    result = await result_of(double, sent, since)
    assert wav_samples(result) == exact_samples(bpm, 1)
    uploads = Path(bot.env["LOOPJAM_STORAGE__DATA_DIR"]) / "uploads"
    assert not any(uploads.iterdir())  # deleted once its job was done


async def test_a_jam_layers_two_members_loops_into_a_mix_with_its_stems(double: DiscordDouble, bot: BotProcess) -> None:
    """The whole jam, worker included: loops made in the jam take its tempo, join it by their button, and mix."""
    world = double.world
    channel = world.add_channel(world.guild, "jam-session")
    started = await double.slash("jam start", {"bpm": 100, "key": "Am", "bars": 1}, user="alice", channel=channel)
    await started.wait_callback(timeout=3)
    card_id = int(double.original_message(started)["id"])
    since = len(double.requests)
    # No bpm given: the jam's. Alice's upload needs no model; bob's loop is generated.
    loopified = await double.slash("loopify", {"file": clicks(100)}, user="alice", channel=channel)
    generated = await double.slash("loop", {"prompt": "warm bass line"}, user="bob", channel=channel)
    results = [await result_of(double, sent, since) for sent in (loopified, generated)]
    for result in results:
        assert wav_samples(result) == exact_samples(100, 1)
        # In the jam's key once moved (its relative major counts as in it), or unpitched and left alone.
        assert field(result, "Key").split(" (")[0] in ("A minor", "C major", "none"), field(result, "Key")
        labels = [c["label"] for row in result.json["components"] for c in row["components"]]
        assert "Add to jam" in labels

    for presser, result in zip(("bob", "alice"), results):  # each adds the other's loop
        pressed = await double.click(result.response, f"lj:jamadd:{job_id_of(result)}", user=presser)
        assert (await pressed.wait_callback(timeout=5)).json["data"]["content"].startswith("Added")

    since = len(double.requests)
    mixed = await double.slash("jam mix", {}, user="carol", channel=channel)
    assert (await mixed.wait_callback(timeout=3)).json["data"]["embeds"][0]["title"] == "Queued"
    mix = await result_of(double, mixed, since)
    assert mix.json["embeds"][0]["title"].startswith("Jam mix")
    assert wav_samples(mix) == exact_samples(100, 1)
    (stems,) = [f for f in mix.files if f.filename.endswith(".zip")]
    with zipfile.ZipFile(io.BytesIO(stems.data)) as archive:
        manifest = json.loads(archive.read("jam.json"))
        audio = [name for name in archive.namelist() if name != "jam.json"]
        assert [sf.info(io.BytesIO(archive.read(name))).frames for name in audio] == [exact_samples(100, 1)] * 2
    assert (manifest["bpm"], manifest["bars"], manifest["key"]) == (100, 1, "A minor")
    assert [layer["prompt"] for layer in manifest["layers"]] == ["loopify: groove.wav", "warm bass line"]
    for _ in range(100):  # the card links to the mix once it is posted
        if any(f["name"] == "Last mix" for f in double.messages.get(card_id)["embeds"][0]["fields"]):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the jam's card never linked to its mix")
    stopped = await double.slash("jam stop", {}, user="alice", channel=channel)
    assert "has ended" in (await stopped.wait_callback(timeout=3)).json["data"]["content"]


async def test_a_restart_keeps_buttons_working_and_finishes_queued_jobs(double: DiscordDouble, bot: BotProcess) -> None:
    result, message = await a_finished_loop(double, "alice")
    queued = []
    for user in ("bob", "carol"):
        sent = await double.slash("loop", {"prompt": "restart survivor", "bpm": 110, "bars": 1}, user=user)
        queued.append((await sent.wait_callback(timeout=3)).json["data"]["embeds"][0]["footer"]["text"].split()[0])
    since = len(double.requests)
    assert bot.process is not None and bot.log is not None
    ours = descendants(bot.process.pid)
    # The worker and its loop-engine processes (below the forkserver) leave the CPU to the bot first.
    workers = [pid for pid in ours if pid not in live_children(bot.process.pid)]
    assert len(workers) >= 3, "no worker with its two loop-engine processes"
    yielding = min(19, os.getpriority(os.PRIO_PROCESS, bot.process.pid) + NICENESS)
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in workers] == [yielding] * len(workers)
    await bot.kill()
    # Killed with SIGKILL, the bot can stop nothing: its processes notice and leave by themselves.
    assert not await still_running(ours, within_s=10.0), "processes of the killed bot are still running"
    assert "Traceback" not in bot.log.read_text()
    await bot.start()

    # The jobs queued before the crash are posted as channel messages that ping their requester.
    delivered = set()
    while len(delivered) < len(queued):
        posted = await double.wait_for_request(
            CHANNEL_MESSAGE, lambda r: bool(r.files) and job_id_of(r) in queued and job_id_of(r) not in delivered,
            timeout=RESULT_TIMEOUT_S, since=since,
        )
        delivered.add(job_id_of(posted))
        assert wav_samples(posted) == exact_samples(110, 1)
        assert posted.json["allowed_mentions"]["users"] and posted.json["content"].startswith("<@")
    # A button on a message from before the restart still works.
    pressed = await double.click(message, f"lj:reroll:{job_id_of(result)}", user="carol")
    assert (await pressed.wait_callback(timeout=3)).json["data"]["embeds"][0]["title"] == "Queued"
    # The command schema did not change, so the restarted bot did not sync it again.
    assert len(double.requests.matching(lambda r: r.route == "PUT /applications/{application_id}/commands")) == 1


async def test_progress_edits_survive_429s(double: DiscordDouble, bot: BotProcess) -> None:
    double.rate_limit(EDIT_ORIGINAL, times=3, retry_after=0.3)
    since = len(double.requests)
    sent = await double.slash("loop", {"prompt": "rate limited edits", "bpm": 96, "bars": 1}, user="bob")
    await sent.wait_callback(timeout=3)
    result = await result_of(double, sent, since)
    assert wav_samples(result) == exact_samples(96, 1)
    assert any(r.status == 429 for r in double.requests.matching(lambda r: r.route == EDIT_ORIGINAL, since=since))


async def test_a_result_discord_refused_is_posted_again_later(double: DiscordDouble, bot: BotProcess) -> None:
    since = len(double.requests)
    sent = await double.slash("loop", {"prompt": "refused once", "bpm": 124, "bars": 1}, user="carol")
    # Armed for this interaction's follow-up only: earlier tests may still be posting theirs.
    double.fail(FOLLOW_UP, status=403, code=50013, message="Missing Permissions",
                when=lambda r: bool(r.files) and r.path_params.get("token") == sent.token)
    queued = (await sent.wait_callback(timeout=3)).json["data"]["embeds"][0]["footer"]["text"].split()[0]
    posted = await double.wait_for_request(
        CHANNEL_MESSAGE, lambda r: bool(r.files) and job_id_of(r) == queued, timeout=RESULT_TIMEOUT_S, since=since
    )
    assert wav_samples(posted) == exact_samples(124, 1)
    assert posted.json["content"] == f"<@{double.member('carol').user.id}>"

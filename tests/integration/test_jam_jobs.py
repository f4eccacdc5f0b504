"""Jams in the queue: keyed loops, and MIX jobs through the real worker process with the tiny model.

One service (one worker spawn, `worker_service`, shared with test_job_kinds) serves the module; each
test has its own users and channel, so rate limits and running jams do not meet. Layers are real music where the mix is judged (grooves of the
key corpus, rendered by FluidSynth and cut to exact loops), the tiny model's loops where a layer
has to be made again from its seed.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus import fluidsynth_available
from key_corpus import BANDS, KeyGroove, render_key_groove
from queue_helpers import EVENT_TIMEOUT_S, migrated_database, tiny_settings
from sqlalchemy import func, select, update

from generation.audio_io import read_audio, write_audio
from generation.config import Settings
from generation.jobs import (
    FINAL_EVENT_TYPES,
    Accepted,
    JobDone,
    JobEvent,
    JobFailed,
    JobKind,
    JobProgress,
    JobRequest,
    QueueService,
    RefusalKind,
    Refused,
    Stage,
)
from generation.jobs.admission import EMPTY_JAM, NO_JAM, admit_group
from generation.jobs.files import STEMS_SUFFIX
from generation.jobs.rows import queued_jobs
from generation.music import Key, UnknownKey
from generation.shape import LoopShape
from generation.storage import (
    Database,
    Generation,
    GenerationKind,
    GenerationStatus,
    LoopReportFields,
    NewGeneration,
    NewJam,
    add_layer,
    create_generation,
    end_jam,
    get_generation,
    get_jam,
    mark_done,
    mark_running,
    remove_layer,
    start_jam,
    sweep_audio,
    utcnow,
)
from generation.storage.queue import queued_rows

pytestmark = pytest.mark.asyncio(loop_scope="session")  # where `worker_service` runs
SHAPE = LoopShape(120.0, 1)
"""The jams' shape: one bar, so a layer made again by the tiny model costs about a second."""
GUILD = 77
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_fluidsynth = pytest.mark.skipif(not fluidsynth_available(), reason="needs the fluidsynth CLI and FluidR3_GM")


@pytest.fixture
def service(worker_service: QueueService) -> QueueService:
    return worker_service


@pytest.fixture(scope="module")
def grooves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """One bar of SHAPE at 32 kHz stereo from two grooves: keys in D minor (bass and electric piano), and drums alone."""
    if not fluidsynth_available():
        pytest.skip("needs the fluidsynth CLI and FluidR3_GM")
    directory = tmp_path_factory.mktemp("jam_grooves")
    keys = render_key_groove(KeyGroove("jam_d_minor", Key(2, "minor"), SHAPE.bpm, BANDS[0], bars=2), directory)
    drums = render_key_groove(KeyGroove("jam_drums", None, SHAPE.bpm, None, bars=2), directory)
    return {"keys": keys.bars(1), "drums": drums.bars(1)}


def loop(user_id: int, **changes: object) -> JobRequest:
    return JobRequest(user_id=user_id, **{"prompt": "dusty boom bap", "shape": SHAPE, "guild_id": GUILD, **changes})  # type: ignore[arg-type]


def mix(user_id: int, channel_id: int, jam_id: int | None) -> JobRequest:
    return JobRequest(user_id=user_id, prompt="mix", shape=SHAPE, kind=JobKind.MIX, jam_id=jam_id, guild_id=GUILD,
                      channel_id=channel_id)


async def events_until_final(service: QueueService, job_id: str) -> list[JobEvent]:
    """Every event of the job, its final one last."""
    events, seen = service.subscribe(job_id), []
    while not isinstance(seen[-1] if seen else None, FINAL_EVENT_TYPES):
        seen.append(await asyncio.wait_for(events.get(), EVENT_TIMEOUT_S))
    return seen


async def finish(service: QueueService, request: JobRequest) -> JobDone:
    accepted = await service.submit(request)
    assert isinstance(accepted, Accepted), accepted
    done = (await events_until_final(service, accepted.job_id))[-1]
    assert isinstance(done, JobDone), done
    return done


def stored(database: Database, short_id: str) -> Generation:
    with database.session() as session:
        row = get_generation(session, short_id)
    assert row is not None
    return row


def new_jam(database: Database, channel_id: int, key: str | None) -> int:
    with database.session() as session:
        jam = start_jam(session, NewJam(GUILD, channel_id, started_by=1, shape=SHAPE, key=key))
        assert jam is not None
        session.flush()
        return jam.id


def add_layers(database: Database, jam_id: int, *loop_ids: str) -> None:
    with database.session() as session:
        jam = get_jam(session, jam_id, GUILD)
        assert jam is not None
        for loop_id in loop_ids:
            row = get_generation(session, loop_id)
            assert row is not None
            add_layer(session, jam, row, added_by=1)


def finished_loop(settings: Settings, database: Database, prompt: str, audio: np.ndarray, *, seed: int = 7,
                  kind: GenerationKind = GenerationKind.LOOP, source_path: str | None = None) -> str:
    """A finished loop of SHAPE in the history whose file holds `audio` (32 kHz): what a worker would have left."""
    with database.session() as session:
        row = create_generation(session, NewGeneration(
            user_id=100, guild_id=GUILD, channel_id=None, prompt=prompt, prompt_sent=prompt, shape=SHAPE, temperature=1.0,
            top_k=250, top_p=0.0, cfg_coef=3.0, seed=seed, model=settings.model.name, kind=kind, source_path=source_path,
        ))
        relative = f"loops/{row.short_id}.wav"
        write_audio(Path(settings.storage.data_dir) / relative, audio, 32000)
        assert mark_running(session, row.short_id, "earlier")
        assert mark_done(session, row.short_id, audio_path=relative, report=LoopReportFields(verdict="good"))
        return row.short_id


def forget_audio(service: QueueService, loop_id: str) -> None:
    """What the retention sweep does to a loop: its file deleted, its path cleared."""
    (Path(service.settings.storage.data_dir) / stored(service.database, loop_id).audio_path).unlink()  # type: ignore[arg-type]
    with service.database.session() as session:
        session.execute(update(Generation).where(Generation.short_id == loop_id).values(audio_path=None))


def stems_of(done: JobDone) -> tuple[list[str], dict[str, object], zipfile.ZipFile]:
    archive = zipfile.ZipFile(done.files[0].with_suffix(STEMS_SUFFIX))
    return archive.namelist(), json.loads(archive.read("jam.json")), archive


def stem_audio(archive: zipfile.ZipFile, name: str) -> tuple[np.ndarray, int]:
    """A stem of the zip as [C, T] float32 and its rate."""
    samples, rate = sf.read(io.BytesIO(archive.read(name)), dtype="float32", always_2d=True)
    return samples.T, rate


def rows_count(database: Database) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(Generation)) or 0


# --- keys -------------------------------------------------------------------------------------


async def test_a_keyed_loop_is_named_to_the_model_moved_and_its_variation_keeps_the_key(service: QueueService) -> None:
    done = await finish(service, loop(101, key="Am", seed=5))
    row = stored(service.database, done.job_id)
    assert row.target_key == "A minor" and row.prompt == "dusty boom bap"
    assert row.prompt_sent == "dusty boom bap, 120 bpm, A minor"
    assert done.report["target_key"] == "A minor" and isinstance(done.report["key_shift_semitones"], int)
    assert row.key_shift_semitones == done.report["key_shift_semitones"] and row.key_confidence is not None

    # A variation names no key: it keeps its parent's, in the prompt and in the move.
    variation = await finish(service, loop(101, kind=JobKind.VARIATION, parent_loop_id=done.job_id))
    varied = stored(service.database, variation.job_id)
    assert (varied.target_key, varied.prompt_sent) == ("A minor", "dusty boom bap, 120 bpm, A minor")
    assert variation.report["target_key"] == "A minor"


async def test_an_unknown_key_is_refused_and_nothing_is_stored(service: QueueService) -> None:
    before = rows_count(service.database)
    refused = await service.submit(loop(102, key="H minor"))
    assert refused == Refused(RefusalKind.INVALID, str(UnknownKey("H minor")))
    assert refused.message.startswith("Unknown key 'H minor': write a note A-G")
    assert rows_count(service.database) == before


async def test_a_job_rebuilt_from_its_rows_keeps_its_key_and_its_layers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """After a restart the queue reads its jobs back from the rows: a keyed loop and a mix are the jobs asked for."""
    settings = tiny_settings(tiny_model_dir, tmp_path)
    database = migrated_database(tmp_path)
    silence = np.zeros((2, SHAPE.samples(32000)), np.float32)
    first = finished_loop(settings, database, "rhodes", silence, seed=41)
    with database.session() as session:
        session.execute(update(Generation).where(Generation.short_id == first).values(target_key="E minor"))
    second = finished_loop(settings, database, "drums", silence, seed=42)
    jam_id = new_jam(database, channel_id=500, key="E minor")
    add_layers(database, jam_id, first, second)
    with database.session() as session:
        decided = admit_group(session, settings, [loop(103, key="f#m"), mix(103, 500, jam_id)])
        assert all(isinstance(each, list) for each in decided), decided
    with database.session() as session:
        keyed, mixed = (job.item for job in queued_jobs(queued_rows(session)))
    assert keyed.key == "F# minor" and keyed.prompt_sent.endswith(", F# minor") and keyed.mix is None
    assert (mixed.key, mixed.shape, mixed.prompt_sent, mixed.seed) == ("E minor", SHAPE, "jam mix: 2 layers", 0)
    assert mixed.mix is not None and [layer.loop_id for layer in mixed.mix] == [first, second]
    assert [(layer.prompt, layer.seed, layer.audio_path) for layer in mixed.mix] == [
        ("rhodes", 41, f"loops/{first}.wav"), ("drums", 42, f"loops/{second}.wav")]
    remake = mixed.mix[0].remake
    assert remake is not None and (remake.job_id, remake.seeds, remake.exact_seed, remake.key) == (first, (41,), True, "E minor")
    assert mixed.batch_key == ("alone", mixed.job_id)
    database.dispose()


# --- mixes ------------------------------------------------------------------------------------


@needs_fluidsynth
async def test_a_mix_of_two_grooves_is_an_exact_loop_with_its_stems(service: QueueService, grooves: dict[str, np.ndarray]) -> None:
    database, settings = service.database, service.settings
    keys = finished_loop(settings, database, "Rhodes stabs & bass, D minor!", grooves["keys"], seed=11)
    drums = finished_loop(settings, database, "tight drums", grooves["drums"], seed=12)
    jam_id = new_jam(database, channel_id=601, key="A minor")
    add_layers(database, jam_id, keys, drums)
    with database.session() as session:
        touched_before = get_jam(session, jam_id, GUILD).last_active_at  # type: ignore[union-attr]

    accepted = await service.submit(mix(104, 601, jam_id))
    assert isinstance(accepted, Accepted), accepted
    with database.session() as session:  # a layer taken out now: the mix asked for keeps both
        jam = get_jam(session, jam_id, GUILD)
        assert jam is not None and jam.last_active_at > touched_before
        remove_layer(session, jam, 2)
    events = await events_until_final(service, accepted.job_id)
    done = events[-1]
    assert isinstance(done, JobDone), done
    assert any(isinstance(event, JobProgress) and event.stage is Stage.LOOPING for event in events)

    audio, rate = read_audio(done.files[0])
    assert (rate, audio.shape) == (32000, (2, SHAPE.samples(32000)))
    assert done.files[0].with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    row = stored(database, done.job_id)
    assert (row.status, row.kind, row.jam_id, row.mix_loop_ids) == (GenerationStatus.DONE, GenerationKind.MIX, jam_id, [keys, drums])
    assert (row.prompt, row.target_key, row.bpm, row.bars) == ("jam mix: 2 layers", "A minor", 120.0, 1)
    assert row.loudness_lufs is not None and abs(row.loudness_lufs + 14.0) <= 1.0
    assert row.verdict == "good" and row.source_key is not None
    assert (done.report["layers"], done.report["target_key"]) == (2, "A minor")

    names, manifest, archive = stems_of(done)
    assert names == ["01-rhodes-stabs-bass-d-minor.wav", "02-tight-drums.wav", "jam.json"]
    assert (manifest["bpm"], manifest["bars"], manifest["beats_per_bar"], manifest["key"]) == (120.0, 1, 4, "A minor")
    layers = manifest["layers"]
    assert isinstance(layers, list)
    assert [(layer["prompt"], layer["loop_id"], layer["seed"]) for layer in layers] == [
        ("Rhodes stabs & bass, D minor!", keys, 11), ("tight drums", drums, 12)]
    # D minor moves a fifth down into A minor (or its relative); drums have no key and stay.
    assert layers[0]["shift_semitones"] == -5 and layers[1]["shift_semitones"] == 0 and layers[1]["source_key"] is None
    for name in names[:2]:
        stem, stem_rate = stem_audio(archive, name)
        assert (stem_rate, stem.shape) == (32000, (2, SHAPE.samples(32000)))


async def test_a_swept_layer_is_made_again_from_its_seed(service: QueueService) -> None:
    """Its loop comes back sample for sample (exact seed): its stem is the original, level apart."""
    jam_id = new_jam(service.database, channel_id=602, key=None)
    made = await finish(service, loop(105, seed=21, jam_id=jam_id, prompt="warm pad"))
    original, _ = read_audio(made.files[0])
    other = await finish(service, loop(105, seed=22, jam_id=jam_id, prompt="deep bass"))
    assert stored(service.database, made.job_id).jam_id == jam_id
    add_layers(service.database, jam_id, made.job_id, other.job_id)
    forget_audio(service, made.job_id)

    done = await finish(service, mix(115, 602, jam_id))  # another member mixes: 105 made its 2 loops
    assert read_audio(done.files[0])[0].shape == (2, SHAPE.samples(32000))
    names, _, archive = stems_of(done)
    assert names == ["01-warm-pad.wav", "02-deep-bass.wav", "jam.json"]
    again = stem_audio(archive, names[0])[0][0]
    correlation = np.dot(again, original[0]) / (np.linalg.norm(again) * np.linalg.norm(original[0]))
    assert correlation > 0.999


async def test_a_loopified_layer_whose_audio_is_gone_fails_the_mix_naming_it(service: QueueService, tmp_path: Path) -> None:
    settings = service.settings
    silence = np.zeros((2, SHAPE.samples(32000)), np.float32)
    kept = finished_loop(settings, service.database, "tight drums", silence + 0.1)
    upload = finished_loop(settings, service.database, "loopify: groove.wav", silence, kind=GenerationKind.LOOPIFY,
                           source_path=str(tmp_path / "groove.wav"))  # the upload was deleted once it was looped
    jam_id = new_jam(service.database, channel_id=603, key="C major")
    add_layers(service.database, jam_id, kept, upload)
    forget_audio(service, upload)

    accepted = await service.submit(mix(106, 603, jam_id))
    assert isinstance(accepted, Accepted)
    failed = (await events_until_final(service, accepted.job_id))[-1]
    assert failed == JobFailed(accepted.job_id, f"Layer 2 (“loopify: groove.wav”, loop {upload}) is no longer kept and "
                                                "could not be made again. Remove it with /jam remove, then mix again.")
    assert stored(service.database, accepted.job_id).status is GenerationStatus.FAILED


async def test_a_mix_needs_the_running_jam_of_the_channel_with_a_layer(service: QueueService) -> None:
    database = service.database
    empty = new_jam(database, channel_id=604, key=None)
    stopped = new_jam(database, channel_id=605, key=None)
    with database.session() as session:
        jam = get_jam(session, stopped, GUILD)
        assert jam is not None
        end_jam(session, jam, "stopped")
    before = rows_count(database)
    cases = {
        "no jam here": (mix(107, 699, None), NO_JAM),
        "another channel's jam": (mix(107, 699, empty), NO_JAM),
        "another server's jam": (JobRequest(user_id=107, prompt="mix", shape=SHAPE, kind=JobKind.MIX, jam_id=empty,
                                            guild_id=GUILD + 1, channel_id=604), NO_JAM),
        "a stopped jam": (mix(107, 605, stopped), NO_JAM),
        "no layers": (mix(107, 604, empty), EMPTY_JAM),
        "no layers, jam found by channel": (mix(107, 604, None), EMPTY_JAM),
    }
    for case, (request, message) in cases.items():
        assert await service.submit(request) == Refused(RefusalKind.INVALID, message), case
    assert rows_count(database) == before
    assert NO_JAM == "There is no jam running in this channel. Start one with /jam start."
    assert EMPTY_JAM == "This jam has no layers yet: add loops with /jam add or the Add to jam button."


async def test_the_sweep_takes_a_mix_s_stems_with_its_audio(tiny_model_dir: Path, tmp_path: Path) -> None:
    database = migrated_database(tmp_path)
    loop_id = finished_loop(tiny_settings(tiny_model_dir, tmp_path), database, "jam mix: 2 layers",
                            np.zeros((2, 3200), np.float32), kind=GenerationKind.MIX)
    audio = tmp_path / "loops" / f"{loop_id}.wav"
    for beside in (".png", STEMS_SUFFIX):
        audio.with_suffix(beside).write_bytes(b"beside")
    with database.session() as session:
        later = utcnow().replace(year=utcnow().year + 1)
        assert sweep_audio(session, tmp_path, retention_days=7, now=later).cleared == 1
    assert not any((tmp_path / "loops").iterdir())
    database.dispose()

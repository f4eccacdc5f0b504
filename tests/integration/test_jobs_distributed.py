"""Distributed mode end to end: two `loopjam worker` processes, the real Redis and PostgreSQL.

A worker killed with SIGKILL mid-batch and a bot-side service restarted with batches in flight
must lose nothing and do nothing twice. Without Redis or PostgreSQL these tests skip with the
reason, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
import wave
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from queue_helpers import HAS_PROC, final_event, live_children, still_running, tiny_settings
from redis.asyncio import Redis
from saq.job import Status
from saq.queue.redis import RedisQueue

from generation.audio_io import read_audio
from generation.config import Settings
from generation.jobs import (
    Accepted,
    JobCancelled,
    JobDone,
    JobEvent,
    JobFailed,
    JobKind,
    JobProgress,
    JobRequest,
    QueueService,
    Stage,
)
from generation.jobs.backend import MadeLoop, MixLayer, ParentLoop, WorkDone, WorkFailed, WorkItem
from generation.jobs.distributed import RedisRateLimiter, SaqBackend, Timing
from generation.jobs.distributed.wire import (
    COLLECTED_TTL_S,
    RUN_BATCH,
    RogueItem,
    RogueResult,
    check_result,
    decode_event,
    decode_items,
    encode_event,
    encode_items,
    input_files,
    pack_files,
    progress_meta,
    reported_progress,
    unpack_files,
    with_local_inputs,
)
from generation.jobs.files import UnsafeFile
from generation.shape import LoopShape
from generation.storage import (
    Base,
    Database,
    GenerationKind,
    GenerationStatus,
    NewJam,
    add_layer,
    get_generation,
    get_jam,
    start_jam,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT_S = 180.0  # importing torch and loading the model, two at once, on a busy 2-core machine
FAST = Timing(heartbeat_s=3, sweep_s=1, poll_s=0.2, workers_poll_s=0.5)
"""A killed worker's batch is swept a few seconds after its last heartbeat."""
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


# --- the wire format (no services needed) -----------------------------------------------------


def item(job_id: str = "abcdefgh", **changes: object) -> WorkItem:
    fields: dict[str, object] = {
        "job_id": job_id, "model": "tiny", "prompt_sent": "dusty boom bap, 120 bpm", "shape": LoopShape(120.0, 1),
        "temperature": 1.0, "top_k": 250, "top_p": 0.0, "cfg_coef": 3.0,
        "loop_ids": (job_id,), "seeds": (2**40 + 7,), **changes,
    }
    return WorkItem(**fields)  # type: ignore[arg-type]


def test_work_items_and_events_survive_json() -> None:
    variation = item("varvarva", parent=ParentLoop("loops/parent.wav", remake=item("parentid", exact_seed=True)))
    assert decode_items(encode_items([item(), variation])) == (item(), variation)
    done = WorkDone("abcdefgh", (MadeLoop("abcdefgh", "loops/abcdefgh.wav", {"verdict": "good"}, 5),),
                    (WorkFailed("abcdefgi", "silent"),))
    assert decode_event(encode_event(done)) == done


def test_files_travel_as_flac_and_come_back_bit_exact(tmp_path: Path) -> None:
    import numpy as np

    from generation.audio_io import write_audio

    sent, received = tmp_path / "worker", tmp_path / "bot"
    audio = np.random.default_rng(0).uniform(-1, 1, (2, 32000)).astype("float32")
    write_audio(sent / "loops" / "a.wav", audio, 32000)
    (sent / "loops" / "a.png").write_bytes(b"\x89PNG not really")
    original = (sent / "loops" / "a.wav").read_bytes()
    packed = pack_files(sent)
    assert packed["loops/a.wav"]["as"] == "flac" and not any(sent.rglob("*.*"))
    unpack_files(received, packed)
    with wave.open(str(received / "loops" / "a.wav")) as back:
        frames = back.readframes(back.getnframes())
    assert frames == original[-len(frames):]  # the same samples, bit for bit
    assert (received / "loops" / "a.png").read_bytes() == b"\x89PNG not really"
    with pytest.raises(ValueError):
        unpack_files(received, {"../escape.png": {"as": "raw", "data": ""}})


def test_uploads_and_parent_loops_travel_to_the_worker(tmp_path: Path) -> None:
    import numpy as np

    from generation.audio_io import write_audio

    bot, worker = tmp_path / "bot", tmp_path / "worker"
    write_audio(bot / "loops" / "parent.wav", np.zeros((1, 3200), dtype="float32"), 32000)
    upload = tmp_path / "upload.OGG"
    upload.write_bytes(b"OggS and the rest")
    items = (item("varvarva", parent=ParentLoop("loops/parent.wav", remake=None)),
             item("loopifyy", source_audio=str(upload)))
    local = with_local_inputs(items, worker, input_files(bot, items))
    assert local[0].parent == ParentLoop("inputs/varvarva.parent.wav", remake=None)
    assert (worker / "inputs" / "varvarva.parent.wav").is_file()
    assert local[1].source_audio == str(worker / "inputs" / "loopifyy.source.ogg")
    assert Path(local[1].source_audio).read_bytes() == upload.read_bytes()


def test_a_worker_opens_no_path_a_job_names(tmp_path: Path) -> None:
    """A crafted job (anything that can write to Redis) names files on the worker's machine: none is opened."""
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF not for you")
    worker = tmp_path / "worker"
    crafted = (
        item("absolute", source_audio=str(secret)),
        item("relative", parent=ParentLoop("../secret.wav", remake=item("remake", source_audio=str(secret)))),
    )
    local = with_local_inputs(crafted, worker, {"absolute": {"source": {"as": "raw", "data": "", "suffix": ".sh"}}})
    named = [local[0].source_audio, local[1].parent.audio_path, local[1].parent.remake.source_audio]
    assert local[1].parent.audio_path is None
    assert all(path is None or Path(worker, path).resolve().is_relative_to(worker.resolve()) for path in named), named
    assert not any(path.is_file() for path in worker.rglob("*"))  # nothing was sent as audio, so nothing is there
    with pytest.raises(UnsafeFile):
        with_local_inputs((item("../../etc"),), worker, {})


def layer(loop_id: str, **changes: object) -> MixLayer:
    fields: dict[str, object] = {"loop_id": loop_id, "prompt": "warm pad", "seed": 9, "model": "tiny",
                                 "audio_path": f"loops/{loop_id}.wav", "remake": item(loop_id, exact_seed=True, key="C major"),
                                 **changes}
    return MixLayer(**fields)  # type: ignore[arg-type]


def test_a_mix_and_a_keyed_loop_travel_and_tampered_ones_are_refused(tmp_path: Path) -> None:
    import numpy as np

    from generation.audio_io import write_audio

    keyed = item("keyedkey", key="F# minor")
    mixed = item("mixmixmi", key="A minor", mix=(layer("layerone"), layer("layertwo", audio_path=None)))
    assert decode_items(encode_items([keyed, mixed])) == (keyed, mixed)

    # The kept layer's audio travels as data; the swept one's remake is there to make it again.
    bot, worker = tmp_path / "bot", tmp_path / "worker"
    write_audio(bot / "loops" / "layerone.wav", np.zeros((1, 3200), dtype="float32"), 32000)
    local = with_local_inputs((mixed,), worker, input_files(bot, [mixed]))[0]
    assert local.mix is not None
    assert [each.audio_path for each in local.mix] == ["inputs/mixmixmi.layer1.wav", None]
    assert (worker / "inputs" / "mixmixmi.layer1.wav").is_file() and local.mix[1].remake == mixed.mix[1].remake  # type: ignore[index]

    tampered = {
        "a layer's file outside the data directory": item("mixmixmi", mix=(layer("layerone", audio_path="../../etc/passwd.wav"),)),
        "another loop's file": item("mixmixmi", mix=(layer("layerone", audio_path="loops/layertwo.wav"),)),
        "a layer id that names a path": item("mixmixmi", mix=(layer("../x", audio_path=None),)),
        "nine layers": item("mixmixmi", mix=tuple(layer(f"layer{n}") for n in range(9))),
        "no layers": item("mixmixmi", mix=()),
        "not a key": item("keyedkey", key="H minor"),
        "not a key in a layer's remake": item("mixmixmi", mix=(layer("layerone", remake=item("layerone", key="la")),)),
    }
    taken = []
    for case, crafted in tampered.items():
        try:
            decode_items(encode_items([crafted]))
            taken.append(case)
        except RogueItem:
            pass
    assert taken == []

    # A mix's stems come back beside its audio; a loop has none.
    stems = {"as": "raw", "data": ""}
    result = {"worker": "w", "seconds": 1.0, "events": [], "files": {"loops/mixmixmi.zip": stems}}
    assert check_result(result, [mixed]).files == {"loops/mixmixmi.zip": stems}
    with pytest.raises(RogueResult):
        check_result({**result, "files": {"loops/keyedkey.zip": stems}}, [keyed])


def test_a_result_speaks_only_for_the_joining_jobs_its_batch_took() -> None:
    host, joined, other = item("hosthost"), item("joinedjo", loop_ids=("joinedjo",)), item("otherjob")
    done = encode_event(WorkDone("joinedjo", (MadeLoop("joinedjo", "loops/joinedjo.wav", {"verdict": "good"}, 5),)))
    result = {"worker": "w", "seconds": 1.0, "events": [done], "files": {}, "joined": ["joinedjo"]}

    checked = check_result(result, [host], joining=[joined, other])
    assert checked.joined == ("joinedjo",) and [event.job_id for event in checked.events] == ["joinedjo"]  # type: ignore[union-attr]
    refused = {
        "took a job never sent": {**result, "joined": ["strangers"]},
        "took one twice": {**result, "joined": ["joinedjo", "joinedjo"]},
        "speaks for a joining job it did not take": {**result, "joined": []},
        "not a list": {**result, "joined": "joinedjo"},
    }
    for case, crafted in refused.items():
        with pytest.raises(RogueResult):
            check_result(crafted, [host], joining=[joined, other])
            pytest.fail(case)


def test_progress_from_a_worker_is_read_per_job_and_only_what_it_may_say() -> None:
    jobs = ["hosthost", "joinedjo"]
    meta = {"hosthost": ["generating", 40.0], "joinedjo": ["looping", 0], "otherjob": ["generating", 5.0]}
    assert reported_progress(meta, jobs) == {"hosthost": ("generating", 40.0), "joinedjo": ("looping", 0.0)}
    assert reported_progress(["retrying", 12.5], jobs) == dict.fromkeys(jobs, ("retrying", 12.5))  # an older worker's
    junk = {"hosthost": ["uploading", 40.0], "joinedjo": ["generating", 140.0]}
    assert reported_progress(junk, jobs) == {} and reported_progress("50%", jobs) == {}
    assert reported_progress(progress_meta({"hosthost": ("generating", 40.0)})["progress"], jobs) == {
        "hosthost": ("generating", 40.0)}


# --- services ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def queue_name(redis_url: str) -> Iterator[str]:
    """A saq queue of this module's own; its keys are deleted at the end."""
    name = f"loopjam-test-{uuid.uuid4().hex[:8]}"
    yield name
    delete_queue(redis_url, name)


def delete_queue(redis_url: str, name: str) -> None:
    """Delete every key of the saq queue `name` and of LoopJam's state beside it."""
    from redis import Redis

    redis = Redis.from_url(redis_url)
    for pattern in (f"saq:{name}:*", f"saq:job:{name}:*", f"loopjam:{name}:*"):
        for key in redis.scan_iter(pattern):
            redis.delete(key)
    redis.close()


@dataclass
class Workers:
    """`loopjam worker` processes serving the module's queue."""

    redis_url: str
    queue_name: str
    model_dir: Path
    cwd: Path
    processes: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str) -> None:
        env = {
            **os.environ, "OMP_NUM_THREADS": "1",  # two workers on two cores: no oversubscription
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),  # this checkout's code
            "LOOPJAM_MODEL__NAME": str(self.model_dir), "LOOPJAM_MODEL__DEVICE": "cpu", "LOOPJAM_MODEL__WARMUP": "false",
            "LOOPJAM_GENERATION__EXTRA_SECONDS": "0.5", "LOOPJAM_GENERATION__CANDIDATES": "1",
            "LOOPJAM_GENERATION__RETRY_BUDGET": "0",
        }
        command = [sys.executable, "-m", "generation", "worker", "--redis", self.redis_url,
                   "--queue", self.queue_name, "--name", name, "--stop-grace", "0"]
        log = (self.cwd / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> list[int]:
        """SIGKILL the worker; returns the processes it had started (its loop-engine processes)."""
        children = live_children(self.processes[name].pid)
        os.kill(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()
        return children

    def terminate(self, name: str, within_s: float) -> int:
        """SIGTERM the worker, as systemd or Docker stop it; its exit code."""
        self.processes[name].terminate()
        return self.processes[name].wait(within_s)

    def log_of(self, name: str) -> str:
        return (self.cwd / f"{name}.log").read_text()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(self.cwd.glob("*.log")))


@pytest.fixture(scope="module")
def workers(redis_url: str, queue_name: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """Two workers, started once for the module (each pays for importing torch and loading the model).

    With `--stop-grace 0`: SIGTERM hands a running batch back at once.
    """
    workers = Workers(redis_url, queue_name, tiny_model_dir, tmp_path_factory.mktemp("workers"), {})
    for name in ("gpu-a", "gpu-b"):
        workers.start(name)
    yield workers
    workers.stop()


@pytest.fixture
def database(postgres_url) -> Iterator[Database]:
    """The module's PostgreSQL database, migrated, emptied after each test."""
    database = Database(postgres_url)
    database.upgrade()
    yield database
    with database.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    database.dispose()


@pytest.mark.redis
async def test_the_shared_rate_limit_is_exact_under_concurrency(redis_url: str, queue_name: str) -> None:
    """Two processes' worth of clients asking at once: exactly `limit` get through, then the window frees one."""
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    limiters = [RedisRateLimiter(client, prefix=f"loopjam:{queue_name}:ratelimit") for client in clients]
    try:
        answers = await asyncio.gather(*(limiters[i % 2].take("user-1", 5, 1.0) for i in range(40)))
        assert answers.count(None) == 5
        assert all(0 < wait <= 1.0 for wait in answers if wait is not None)
        assert await limiters[0].take("user-2", 5, 1.0) is None  # per user
        await asyncio.sleep(max(answers, key=lambda wait: wait or 0) + 0.05)
        assert await limiters[1].take("user-1", 5, 1.0) is None
    finally:
        for client in clients:
            await client.aclose()


def distributed_service(settings: Settings, database: Database, workers: Workers) -> QueueService:
    return QueueService(settings, database, SaqBackend(settings, queue_name=workers.queue_name,
                                                       redis_url=workers.redis_url, timing=FAST))


async def both_workers_ready(service: QueueService, workers: Workers) -> None:
    deadline = asyncio.get_running_loop().time() + WORKER_START_TIMEOUT_S
    while service.backend.workers_alive() < 2:
        assert asyncio.get_running_loop().time() < deadline, f"the workers did not start:\n{workers.logs()}"
        await asyncio.sleep(0.5)


SHORT = LoopShape(120.0, 1)


def loop(user_id: int, shape: LoopShape = SHORT) -> JobRequest:
    return JobRequest(user_id=user_id, prompt="dusty boom bap", shape=shape)


LONG = LoopShape(70.0, 8)
"""About 28 seconds of audio: long enough on the tiny model to be killed or cancelled in."""


async def running_on(service: QueueService, job_id: str) -> str:
    """The worker that has started the job, once one has."""
    async def worker() -> str:
        while (name := await service.backend.worker_of(job_id)) is None:
            await asyncio.sleep(0.05)
        return name

    return await asyncio.wait_for(worker(), 60)


async def submit_all(service: QueueService, requests: list[JobRequest]) -> list[str]:
    results = [await service.submit(request) for request in requests]
    assert all(isinstance(result, Accepted) for result in results), results
    return [result.job_id for result in results]  # type: ignore[union-attr]


def assert_each_done_once(database: Database, data_dir: Path, job_ids: list[str], attempts: list[int]) -> None:
    """Every row done, started as often as expected, and exactly one audio file per job."""
    with database.session() as session:
        rows = [get_generation(session, job_id) for job_id in job_ids]
    assert [row.status for row in rows] == [GenerationStatus.DONE] * len(rows)
    assert [row.attempts for row in rows] == attempts
    audio = [path.relative_to(data_dir).as_posix() for path in data_dir.rglob("*")
             if path.suffix in AUDIO_SUFFIXES and not path.name.startswith(".")]
    assert sorted(audio) == sorted(row.audio_path for row in rows)


async def collected_ttl(queue: RedisQueue, job_id: str, wait_s: float = 5.0) -> int:
    """The finished batch's time to live once the bot has collected it (a job sent ahead can be
    delivered before its batch is collected, a poll later)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while (ttl := await queue.redis.ttl(job_id)) > COLLECTED_TTL_S and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    return ttl


async def deliveries(backend: SaqBackend, job_ids: list[str]) -> Counter[str]:
    """How many finished saq batches delivered each of the jobs: 1 each, or something ran twice."""
    queue = RedisQueue(Redis.from_url(backend.redis_url), name=backend.queue_name)
    delivered: Counter[str] = Counter()
    async for job in queue.iter_jobs([Status.COMPLETE]):
        if job.function == RUN_BATCH:
            assert 0 < await collected_ttl(queue, job.id) <= COLLECTED_TTL_S, "a collected batch expires, soon"
            assert job.result["files"] == {}, "its audio does not wait in Redis"
            delivered.update(event["data"]["job_id"] for event in job.result["events"]
                             if event["type"] == "WorkDone" and event["data"]["job_id"] in job_ids)
    await queue.disconnect()
    return delivered


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_restarted_service_collects_what_ran_while_it_was_down(workers, database, tiny_model_dir, tmp_path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path, batch_size=1)
    before = distributed_service(settings, database, workers)
    started: set[str] = set()
    before.add_listener(lambda e: started.add(e.job_id) if isinstance(e, JobProgress) and e.stage is Stage.GENERATING else None)
    await before.start()
    await both_workers_ready(before, workers)
    job_ids = await submit_all(before, [loop(user) for user in range(1, 6)])  # 2 in flight, 3 waiting
    async def two_started() -> None:
        while len(started) < 2:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(two_started(), 30)
    await before.stop()  # as if the bot went down: the workers go on without it
    await asyncio.sleep(3.0)

    after = distributed_service(settings, database, workers)
    events = {job_id: after.subscribe(job_id) for job_id in job_ids}
    await after.start()
    try:
        # The two batches in flight when the bot went down are picked up again (an earlier test's may be there too).
        assert started <= {j for ids in after.backend.resumed().values() for j in ids}
        finals: list[JobEvent] = await asyncio.gather(*(final_event(after, job_id, events[job_id]) for job_id in job_ids))
        assert all(isinstance(event, JobDone) for event in finals), finals
        assert_each_done_once(database, tmp_path, job_ids, attempts=[1] * len(job_ids))
        assert await deliveries(after.backend, job_ids) == Counter(job_ids)
    finally:
        await after.stop()


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_mix_runs_on_a_worker_and_its_stems_come_back(workers, database, tiny_model_dir, tmp_path) -> None:
    """A jam's mix whose first layer was swept: the worker makes it again (in the jam's key) from its seed,
    reads the other from the copy sent, and the mix, its waveform and its stems land in the bot's data directory."""
    settings = tiny_settings(tiny_model_dir, tmp_path, batch_size=1)
    service = distributed_service(settings, database, workers)
    await service.start()
    try:
        await both_workers_ready(service, workers)
        with database.session() as session:
            jam = start_jam(session, NewJam(guild_id=5, channel_id=50, started_by=1, shape=SHORT, key="A minor"))
            assert jam is not None
            session.flush()
            jam_id = jam.id
        in_jam = [JobRequest(user_id=user, prompt=prompt, shape=SHORT, key="A minor", jam_id=jam_id, guild_id=5)
                  for user, prompt in ((1, "warm pad"), (2, "deep bass"))]
        layers = await submit_all(service, in_jam)
        finals = await asyncio.gather(*(final_event(service, job_id) for job_id in layers))
        assert all(isinstance(final, JobDone) for final in finals), finals
        with database.session() as session:
            jam = get_jam(session, jam_id, 5)
            for loop_id in layers:
                add_layer(session, jam, get_generation(session, loop_id), added_by=1)
            swept = get_generation(session, layers[0])
            (tmp_path / swept.audio_path).unlink()
            swept.audio_path = None

        (mix_id,) = await submit_all(service, [JobRequest(user_id=3, prompt="mix", shape=SHORT, kind=JobKind.MIX,
                                                          jam_id=jam_id, guild_id=5, channel_id=50)])
        done = await final_event(service, mix_id)
        assert isinstance(done, JobDone), done
        audio, rate = read_audio(done.files[0])
        assert audio.shape == (2, SHORT.samples(rate)) and done.files[0].with_suffix(".png").is_file()
        with zipfile.ZipFile(done.files[0].with_suffix(".zip")) as archive:
            assert archive.namelist() == ["01-warm-pad.wav", "02-deep-bass.wav", "jam.json"]
            manifest = json.loads(archive.read("jam.json"))
        assert manifest["key"] == "A minor" and [each["loop_id"] for each in manifest["layers"]] == layers
        with database.session() as session:
            row = get_generation(session, mix_id)
            assert (row.status, row.kind, row.mix_loop_ids) == (GenerationStatus.DONE, GenerationKind.MIX, layers)
    finally:
        await service.stop()


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_worker_killed_mid_batch_loses_nothing(workers, database, tiny_model_dir, tmp_path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path, batch_size=1)
    service = distributed_service(settings, database, workers)
    await service.start()
    try:
        await both_workers_ready(service, workers)
        long, *short = await submit_all(service, [loop(1, LONG)] + [loop(user) for user in (2, 3, 4)])
        finals = {job_id: asyncio.ensure_future(final_event(service, job_id)) for job_id in (long, *short)}
        killed = await running_on(service, long)
        orphans = workers.kill(killed)
        workers.start(killed)  # back for the tests after this one, whatever their order
        assert all(isinstance(final, JobDone) for final in await asyncio.gather(*finals.values()))
        if HAS_PROC:
            assert orphans and not await still_running(orphans), "the killed worker's processes are still running"
        assert_each_done_once(database, tmp_path, [long, *short], attempts=[2, 1, 1, 1])
        assert await deliveries(service.backend, [long, *short]) == Counter([long, *short])

        # The owner cancels a running batch: the worker stops it between decoding steps and goes on.
        cancelled = (await submit_all(service, [loop(5, LONG)]))[0]
        events = service.subscribe(cancelled)
        await running_on(service, cancelled)
        assert (await service.cancel(cancelled, user_id=5, guild_id=None)).ok
        assert await final_event(service, cancelled, events) == JobCancelled(cancelled)
        after = (await submit_all(service, [loop(5)]))[0]
        assert isinstance(await final_event(service, after), JobDone)
        with database.session() as session:
            assert get_generation(session, cancelled).status is GenerationStatus.CANCELLED
        assert await deliveries(service.backend, [cancelled]) == Counter()
    finally:
        await service.stop()


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_worker_stopped_mid_batch_exits_cleanly_and_its_batch_finishes_elsewhere(
    workers, database, tiny_model_dir, tmp_path
) -> None:
    """SIGTERM (systemd, Docker) mid-batch: past its grace the batch goes back to the queue, the
    worker exits 0 with its loop-engine processes, and the other worker finishes the batch."""
    settings = tiny_settings(tiny_model_dir, tmp_path, batch_size=1)
    service = distributed_service(settings, database, workers)
    await service.start()
    try:
        await both_workers_ready(service, workers)
        job_ids = await submit_all(service, [loop(1, LONG), loop(2)])
        finals = [asyncio.ensure_future(final_event(service, job_id)) for job_id in job_ids]
        stopped = await running_on(service, job_ids[0])
        children = live_children(workers.processes[stopped].pid)
        assert workers.terminate(stopped, within_s=60) == 0, workers.logs()
        assert "Traceback" not in workers.log_of(stopped), workers.logs()
        if HAS_PROC:
            assert children and not await still_running(children), "the stopped worker's processes are still running"
        assert all(isinstance(final, JobDone) for final in await asyncio.gather(*finals)), workers.logs()
        assert_each_done_once(database, tmp_path, job_ids, attempts=[1, 1])
        assert await deliveries(service.backend, job_ids) == Counter(job_ids)

        # Idle, a worker stops at once.
        (staying,) = set(workers.processes) - {stopped}
        assert workers.terminate(staying, within_s=10) == 0, workers.logs()
        assert "Traceback" not in workers.log_of(staying), workers.logs()
    finally:
        await asyncio.wait_for(service.stop(), 30)  # it hung once: a redis-py call lost its cancellation
        for name, process in workers.processes.items():
            if process.poll() is not None:
                workers.start(name)  # back for the tests after this one, whatever their order


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_job_joins_a_batch_running_on_a_busy_worker_and_comes_back_first(workers, database, tiny_model_dir, tmp_path) -> None:
    """Both workers busy with a long loop each: a short one joins one of their batches (continuous
    batching) and is done while both long ones still decode, each job delivered once, started once."""
    settings = tiny_settings(tiny_model_dir, tmp_path, batch_size=2, batch_wait_ms=0)
    service = distributed_service(settings, database, workers)
    await service.start()
    try:
        await both_workers_ready(service, workers)
        longs = []
        for user in (1, 2):
            (long,) = await submit_all(service, [loop(user, LONG)])
            await running_on(service, long)
            longs.append(long)
        progress: list[JobProgress] = []
        # 4 s: done well before the long loops (28 s, about 2 s to decode on the tiny model), even with
        # the half-second heartbeat that sends it ahead; its progress has at least "looping".
        (short,) = await submit_all(service, [loop(3, LoopShape(120.0, 2))])
        events = service.subscribe(short)
        finals = [asyncio.ensure_future(final_event(service, job_id)) for job_id in longs]

        while not isinstance(event := await asyncio.wait_for(events.get(), 60), (JobDone, JobFailed)):
            progress.append(event)
        assert isinstance(event, JobDone), event
        with database.session() as session:
            rows = {job_id: get_generation(session, job_id) for job_id in (*longs, short)}
        assert [rows[long].status for long in longs] == [GenerationStatus.RUNNING] * 2, workers.logs()
        assert rows[short].worker in {rows[long].worker for long in longs}  # it ran in one of their batches
        # Its own progress, from the worker (a batch-wide one would be the long loops' "generating").
        assert any(e.stage is Stage.LOOPING or (e.stage is Stage.GENERATING and e.percent > 0) for e in progress), progress

        assert all(isinstance(final, JobDone) for final in await asyncio.gather(*finals))
        assert_each_done_once(database, tmp_path, [*longs, short], attempts=[1, 1, 1])
        assert await deliveries(service.backend, [*longs, short]) == Counter([*longs, short])
    finally:
        await service.stop()

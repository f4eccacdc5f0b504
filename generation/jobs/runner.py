"""Turns batches of work items into loop files: loads MusicGen once, owns the loop-engine processes.

`BatchRunner` knows nothing of how batches arrive or where their events go: each `run` is given
an event sink and the cancelled job ids (a container the caller may fill from another thread
while the batch runs). The embedded worker process (`jobs.worker`, over pipes) and the saq worker
(`jobs.distributed.worker`) both use it. torch, audiocraft and the loop engine are imported
inside its methods, never when this module is imported: the bot imports the jobs package and
must stay light.
"""

from __future__ import annotations

import logging
import typing as tp
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Decoder, GenerationSettings, LoopSettings, model_label
from ..music import Key, parse_key
from .backend import (
    EventSink,
    MadeLoop,
    MixLayer,
    ModelUnavailable,
    WorkDone,
    WorkerReady,
    WorkFailed,
    WorkItem,
    WorkProgress,
)
from .files import AUDIO_SUFFIXES, STEMS_SUFFIX, WAVEFORM_SUFFIX, UnsafeFile, inside, loop_file

log = logging.getLogger(__name__)

GPU_BATCH_SIZE, CPU_BATCH_SIZE = 8, 2
PROGRESS_STEP = 5.0  # percent; finer updates would only flood the event stream
CRASH_MESSAGE = "Something went wrong while making this loop. Please try again."
LOST_PARENT = "The loop to vary is no longer kept and could not be made again. Make a new loop and vary that one."
UNREADABLE_SOURCE = "I can't read the uploaded file as audio any more. Please upload it again."
SILENT_SOURCE = "The uploaded file is silent, so there is no loop in it."
LOST_LAYER = "Layer {number} ({name}) is no longer kept and could not be made again. Remove it with /jam remove, then mix again."
MIX_READ_PERCENT = 80.0
"""A mix's "looping" progress once every layer is read (or made again); mixing them is the rest."""


def lost_layer(number: int, layer: MixLayer) -> str:
    """Why a mix failed: its layer `number` (1-based) is gone for good, named by its prompt and loop id."""
    prompt = layer.prompt if len(layer.prompt) <= 60 else layer.prompt[:59] + "…"
    name = f"loop {layer.loop_id}" if prompt == layer.loop_id else f"“{prompt}”, loop {layer.loop_id}"
    return LOST_LAYER.format(number=number, name=name)


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    model: str
    """Loaded at start; other allowed models are loaded when a batch asks for them."""
    device: str
    generation: GenerationSettings
    loop: LoopSettings
    data_dir: Path
    decoder: Decoder = "fast"


def model_error_message(model: str) -> str:
    """What users are told: the model's label only; why it failed (paths and all) is in the worker's log."""
    label = model_label(model)
    return f"The model {label!r} could not be loaded. An admin has to fix the bot's model settings (the worker's log says why)."


class LoopUnavailable(Exception):
    """What a job starts from cannot be had (a lost parent loop, an unreadable upload): that job fails with the message."""


class BatchRunner:
    """One worker's models and loop-engine processes; runs its batches one at a time."""

    def __init__(self, config: WorkerConfig) -> None:
        from ..loop.parallel import LoopProcesses, auto_processes

        self.config = config
        self.slots = CPU_BATCH_SIZE * config.generation.candidates
        """Candidates decoded together when jobs join a running batch; set for the device by `start`."""
        self._makers: dict[str, Any] = {}
        self._unavailable: dict[str, str] = {}
        # Started before the model loads, so they warm up meanwhile.
        self._loop_processes = LoopProcesses(config.loop.processes or auto_processes())

    @property
    def models(self) -> list[str]:
        """The models loaded so far."""
        return sorted(self._makers)

    def start(self, send: EventSink) -> WorkerReady:
        """Load the configured model and wait for the loop-engine processes; the `WorkerReady` to announce.

        A model that fails to load is reported to `send` (`ModelUnavailable`), and the runner still
        serves: batches for other models may work, and this one's jobs fail with the reason.
        """
        maker = self.maker(self.config.model, send)
        self._loop_processes.wait_ready()
        on_gpu = maker is not None and not maker.engine.device.startswith("cpu")
        batch_size = GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE
        self.slots = batch_size * self.config.generation.candidates
        joins = maker is not None and maker.engine.fast is not None
        return WorkerReady(self.config.name, batch_size, self.config.model, joins=joins)

    def run(self, items: Sequence[WorkItem], send: EventSink, cancelled: Container[str],
            joining: Callable[[], Sequence[WorkItem]] | None = None) -> tuple[str, ...]:
        """Make the batch's loops, reporting each job's progress and outcome to `send`; the job ids it ran.

        With `joining` (and the fast decoder), jobs decode with continuous batching: `joining()`,
        asked between decoding steps, gives jobs that join the batch, each job leaves with its
        loops, and a job in `cancelled` leaves at the next step. Without, the batch is one
        generation, which stops between decoding steps once every generated job of the batch is
        in `cancelled`. A cancelled job gets no event.
        """
        batch = _Batch(self, send, cancelled, joining)
        batch.ran += [item.job_id for item in items]
        batch.run(items)
        return tuple(batch.ran)

    def maker(self, model: str, send: EventSink) -> Any:
        """The LoopMaker for `model`, loading it on first use; None (and the reason kept) if it fails."""
        if model in self._makers or model in self._unavailable:
            return self._makers.get(model)
        from ..engine import MusicGenEngine
        from ..pipeline import LoopMaker

        try:
            engine = MusicGenEngine.load(model, self.config.device, self.config.decoder)
        except Exception:  # any loader error is the model's, not the request's
            log.exception("cannot load %s", model)
            self._unavailable[model] = model_error_message(model)
            send(ModelUnavailable(self.config.name, model, self._unavailable[model]))
            return None
        self._makers[model] = LoopMaker(engine, self.config.generation, self.config.loop, self._loop_processes)
        return self._makers[model]

    def unavailable(self, model: str) -> str:
        """Why `model` could not be loaded."""
        return self._unavailable[model]

    def close(self) -> None:
        """End the loop-engine processes."""
        self._loop_processes.close()


class _Progress:
    """A `pipeline.StageCallback` sending jobs' progress: a new stage at once, within one every `PROGRESS_STEP` percent."""

    def __init__(self, send: EventSink, job_ids: tuple[str, ...]) -> None:
        self.send = send
        self.job_ids = job_ids
        self._last: tuple[str | None, float] = (None, -PROGRESS_STEP)

    def __call__(self, stage: str, percent: float) -> None:
        last_stage, last_percent = self._last
        if stage != last_stage or percent - last_percent >= PROGRESS_STEP or percent >= 100.0:
            self._last = (stage, percent)
            self.send(WorkProgress(self.job_ids, stage, percent))


class _Batch:
    """One `BatchRunner.run`: where its events go, which of its jobs are cancelled, which join it."""

    def __init__(self, runner: BatchRunner, send: EventSink, cancelled: Container[str],
                 joining: Callable[[], Sequence[WorkItem]] | None) -> None:
        self.runner = runner
        self.config = runner.config
        self.send = send
        self.cancelled = cancelled
        self.joining = joining
        self.ran: list[str] = []
        """The jobs of the batch and those that joined it."""

    def run(self, items: Sequence[WorkItem]) -> None:
        """Loopify and mix jobs one by one (no model), then generate the others together (`generate`)."""
        generated = [item for item in items if not self.without_model(item)]
        if generated:
            self.generate(generated)

    def without_model(self, item: WorkItem) -> bool:
        """Run a loopify or a mix (they start from audio, not from the model); False for any other job.

        One cancelled before its turn is not run (and gets no event)."""
        if item.source_audio is None and item.mix is None:
            return False
        if item.job_id in self.cancelled:
            return True
        self.send(WorkProgress((item.job_id,), "looping", 0.0))
        try:
            if item.mix is not None:
                self.send(WorkDone(item.job_id, (self.save_mix(item, self.mixed(item, self.send)),)))
            else:
                self.deliver(item, [self.loopified(item)])
        except LoopUnavailable as error:
            self.send(WorkFailed(item.job_id, str(error)))
        except Exception:
            log.exception("%s %s failed", "mix" if item.mix is not None else "loopify", item.job_id)
            self.send(WorkFailed(item.job_id, CRASH_MESSAGE))
        return True

    def generate(self, items: Sequence[WorkItem]) -> None:
        """Generate the jobs' loops: with continuous batching where the worker can, else in one generation."""
        maker = self.runner.maker(items[0].model, self.send)
        if maker is None:
            for item in items:
                self.send(WorkFailed(item.job_id, self.runner.unavailable(item.model)))
            return
        ready = [(item, specs) for item in items if (specs := self.prepared(maker, item)) is not None]
        if ready and self.joining is not None and maker.engine.fast is not None:
            ready = self.generate_continuously(maker, ready, self.joining)
        if ready:
            self.generate_together(maker, ready)

    def generate_continuously(self, maker: Any, ready: list[tuple[WorkItem, list[Any]]],
                              joining: Callable[[], Sequence[WorkItem]]) -> list[tuple[WorkItem, list[Any]]]:
        """Decode the jobs with continuous batching, and those that join meanwhile; each leaves with its loops.

        Returns the jobs that cannot decode this way (past the model's `max_duration`), for one
        generation afterwards. A joining job that does not decode with these (the pool sends none)
        runs after them.
        """
        from ..continuous_loops import ContinuousLoops

        join_key = ready[0][0].join_key
        loops = ContinuousLoops(maker, ready[0][1][0].params, self.runner.slots)
        decoding: dict[str, WorkItem] = {}
        together: list[tuple[WorkItem, list[Any]]] = []
        after: list[WorkItem] = []

        def admit(item: WorkItem, specs: list[Any]) -> None:
            if loops.fits(specs):
                loops.join(item.job_id, specs, _Progress(self.send, (item.job_id,)))
                decoding[item.job_id] = item
            else:
                together.append((item, specs))

        for item, specs in ready:
            admit(item, specs)
        while decoding:
            for item in joining():
                self.ran.append(item.job_id)
                if item.join_key != join_key:
                    after.append(item)
                elif (its_specs := self.prepared(maker, item)) is not None:
                    admit(item, its_specs)
            for job_id in [job_id for job_id in decoding if job_id in self.cancelled]:
                loops.leave(job_id)
                del decoding[job_id]
            try:
                finished = loops.step()
            except Exception:
                log.exception("batch %s failed", tuple(decoding))
                for job_id in decoding:
                    self.send(WorkFailed(job_id, CRASH_MESSAGE))
                break
            for left in finished:
                item = decoding.pop(tp.cast(str, left.key))
                if left.error is None:
                    self.deliver(item, left.outcomes)
                else:
                    log.error("%s failed", item.job_id, exc_info=left.error)
                    self.send(WorkFailed(item.job_id, CRASH_MESSAGE))
        if after:
            self.run(after)
        return together

    def generate_together(self, maker: Any, ready: list[tuple[WorkItem, list[Any]]]) -> None:
        """Decode the jobs in one generation (`LoopMaker.make`)."""
        from ..engine import GenerationCancelled

        job_ids = tuple(item.job_id for item, _ in ready)

        def should_cancel() -> bool:
            # Stop the batch only when all its jobs are cancelled; otherwise the others still need it.
            return all(job_id in self.cancelled for job_id in job_ids)

        try:
            outcomes = iter(maker.make([spec for _, specs in ready for spec in specs], _Progress(self.send, job_ids),
                                       should_cancel))
        except GenerationCancelled:
            return
        except Exception:
            log.exception("batch %s failed", job_ids)
            for job_id in job_ids:
                self.send(WorkFailed(job_id, CRASH_MESSAGE))
            return
        for item, specs in ready:
            self.deliver(item, [next(outcomes) for _ in specs])

    def prepared(self, maker: Any, item: WorkItem) -> list[Any] | None:
        """The item's loop specs, or None after reporting why it cannot be made (its parent is lost)."""
        try:
            return self.loop_specs(maker, item)
        except LoopUnavailable as error:
            reason = str(error)
        except Exception:
            log.exception("cannot prepare %s", item.job_id)
            reason = CRASH_MESSAGE
        self.send(WorkFailed(item.job_id, reason))
        return None

    def loop_specs(self, maker: Any, item: WorkItem) -> list[Any]:
        """One `LoopSpec` per loop of the item; a variation's carry the parent loop to continue."""
        from ..engine import SamplingParams
        from ..pipeline import LoopSpec

        previous = None
        if item.parent is not None:
            audio, rate = self.parent_audio(item)
            previous = maker.loop_to_continue(audio, rate, item.shape)
        params = SamplingParams(item.temperature, item.top_k, item.top_p, item.cfg_coef)
        return [
            LoopSpec(item.prompt_sent, item.shape, seed, params, exact_seed=item.exact_seed, previous=previous,
                     key=key_of(item))
            for seed in item.seeds
        ]

    def loop_audio(self, audio_path: str | None, remake: WorkItem | None, lost: str) -> tuple[Any, int]:
        """A finished loop's audio ([C, N], sample rate): its kept file, or made again by `remake`;
        `LoopUnavailable(lost)` when it is neither."""
        from ..audio_io import read_audio

        if audio_path is not None and (kept := self.kept(audio_path)) is not None:
            return read_audio(kept)
        if remake is None:
            raise LoopUnavailable(lost)
        log.info("the audio of %s is gone: making it again", remake.job_id)
        try:
            return self.remade_audio(remake)
        except LoopUnavailable as error:
            raise LoopUnavailable(lost) from error

    def parent_audio(self, item: WorkItem) -> tuple[Any, int]:
        """A variation's parent loop ([C, N] audio, sample rate): its file, or made again from its seed."""
        assert item.parent is not None
        return self.loop_audio(item.parent.audio_path, item.parent.remake, LOST_PARENT)

    def kept(self, audio_path: str) -> Path | None:
        """A kept loop's audio file: strictly under the data directory, or None."""
        try:
            path = inside(self.config.data_dir, audio_path, AUDIO_SUFFIXES)
        except UnsafeFile:
            log.warning("a loop's audio is not a loop file of the data directory: %r", audio_path[:200])
            return None
        return path if path.is_file() else None

    def remade_audio(self, item: WorkItem) -> tuple[Any, int]:
        """The audio ([C, N], sample rate) of the loop an exact-seed item makes again: mixed, loopified or generated."""
        if item.mix is not None:
            result = self.mixed(item)
            return result.audio, result.sample_rate
        outcome = self.loopified(item) if item.source_audio is not None else self.remade(item)
        if outcome.loop is None:
            raise LoopUnavailable(outcome.error or CRASH_MESSAGE)
        return outcome.loop.audio, outcome.loop.sample_rate

    def remade(self, item: WorkItem) -> Any:
        """The `LoopOutcome` of the item's first loop, generated again (an exact-seed item reproduces it)."""
        maker = self.runner.maker(item.model, self.send)
        if maker is None:
            raise LoopUnavailable(self.runner.unavailable(item.model))
        return maker.make(self.loop_specs(maker, item)[:1])[0]

    def loopified(self, item: WorkItem) -> Any:
        """The `LoopOutcome` of a loopify item: its source file looped as it is, no model."""
        from ..loop.keyed import in_key
        from ..loop.source import loop_file
        from ..pipeline import LoopOutcome, LoopSpec
        from ..prompts import InvalidRequest, UnreadableSource

        assert item.source_audio is not None
        try:
            # Its header is checked here again: whoever queued it, the limits hold before a sample is decoded.
            loop = loop_file(Path(item.source_audio), item.shape, self.config.loop)
        except UnreadableSource as error:
            raise LoopUnavailable(UNREADABLE_SOURCE) from error
        except InvalidRequest as error:
            raise LoopUnavailable(str(error)) from error
        spec = LoopSpec(item.prompt_sent, item.shape, item.seed)
        if loop.report.silent:
            return LoopOutcome(spec, item.seed, error=SILENT_SOURCE)
        return LoopOutcome(spec, item.seed, loop=in_key(loop, key_of(item), self.config.loop), candidates_tried=1)

    def mixed(self, item: WorkItem, send: EventSink | None = None) -> Any:
        """The `jam.MixResult` of a mix item: its layers read (or made again), layered in its key.

        `send` gets the mix's progress (a mix made again as a layer or a parent reports none).
        """
        from ..jam import Layer, LayerOrigin, mix_layers

        assert item.mix is not None
        layers = []
        for number, layer in enumerate(item.mix, start=1):
            audio, rate = self.loop_audio(layer.audio_path, layer.remake, lost_layer(number, layer))
            origin = LayerOrigin(prompt=layer.prompt, seed=layer.seed, model=layer.model, loop_id=layer.loop_id)
            layers.append(Layer(audio, rate, origin))
            if send is not None:
                send(WorkProgress((item.job_id,), "looping", MIX_READ_PERCENT * number / len(item.mix)))
        return mix_layers(layers, item.shape, self.config.loop, key=key_of(item))

    def deliver(self, item: WorkItem, outcomes: Sequence[Any]) -> None:
        """Write the item's loops; one WorkDone for all of them, or WorkFailed when none came out."""
        made = [self.save(item, loop_id, outcome) for loop_id, outcome in zip(item.loop_ids, outcomes) if outcome.ok]
        failures = tuple(
            WorkFailed(loop_id, outcome.error or CRASH_MESSAGE)
            for loop_id, outcome in zip(item.loop_ids, outcomes) if not outcome.ok
        )
        if not made:
            self.send(WorkFailed(item.job_id, failures[0].reason))
            return
        self.send(WorkDone(item.job_id, tuple(made), failures))

    def save(self, item: WorkItem, loop_id: str, outcome: Any) -> MadeLoop:
        """Write one loop in the item's format, and its waveform PNG beside it (same stem)."""
        relative, _ = self.write_loop(item, loop_id, outcome.loop.audio, outcome.loop.sample_rate)
        return MadeLoop(loop_id, relative, outcome.loop.report.as_dict(), outcome.seed)

    def save_mix(self, item: WorkItem, result: Any) -> MadeLoop:
        """Write a mix like a loop, and its stems beside it: a zip of the layers as mixed and jam.json (same stem)."""
        from ..jam import write_stems_zip

        relative, path = self.write_loop(item, item.job_id, result.audio, result.sample_rate)
        write_stems_zip(result, path.with_suffix(STEMS_SUFFIX), item.audio_format, self.config.loop.true_peak_dbtp)
        return MadeLoop(item.job_id, relative, result.report(), item.seed)

    def write_loop(self, item: WorkItem, loop_id: str, audio: Any, sample_rate: int) -> tuple[str, Path]:
        """Write a loop's audio [C, N] in the item's format and its waveform PNG beside it; (relative name, path)."""
        from ..audio_io import extension, write_audio
        from ..loop.waveform import waveform_png

        relative = loop_file(loop_id, f".{extension(item.audio_format)}")
        path = write_audio(self.config.data_dir / relative, audio, sample_rate, item.audio_format)
        path.with_suffix(WAVEFORM_SUFFIX).write_bytes(waveform_png(audio, item.shape))
        return relative, path


def key_of(item: WorkItem) -> Key | None:
    """The item's key, or None to leave its loops in their own."""
    return None if item.key is None else parse_key(item.key)

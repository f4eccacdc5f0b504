"""A loop-engine test corpus: MIDI grooves written with mido, rendered by the FluidSynth CLI.

Ground truth (beat and downbeat times) comes from the tempo map we write, never from the engine.
Audio is rendered at test time into a cache directory; nothing here is committed as audio.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import mido
import numpy as np

from generation.audio_io import read_audio

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
TICKS_PER_BEAT = 480
DRUMS, BASS, KEYS = 9, 0, 1  # MIDI channels (drums are channel 10, i.e. index 9)
KICK, SNARE, HAT = 36, 38, 42
# A four-chord progression, one chord per bar (roots and triads), so every bar starts with a change.
PROGRESSION = [(48, (60, 64, 67)), (45, (57, 60, 64)), (41, (57, 60, 65)), (43, (59, 62, 67))]


def fluidsynth_available() -> bool:
    return shutil.which("fluidsynth") is not None and SOUNDFONT.is_file()


@dataclass(frozen=True)
class Groove:
    """One corpus case: what is rendered (`render_bpm`) and what the engine is asked for (`request_bpm`)."""

    name: str
    request_bpm: float
    render_bpm: float | None = None  # None: same as the request
    beats_per_bar: int = 4
    bars: int = 4  # loop length asked of the engine
    source_bars: int = 8  # bars of music rendered
    swing: float = 0.5  # where the off-beat eighth falls within the beat (0.5 straight, 0.66 swung)
    pickup_beats: int = 0  # notes before the first downbeat
    lead_silence: float = 0.0  # seconds of silence before anything
    drift: float = 0.0  # the tempo ramps from -drift to +drift over the clip (0.015 = +-1.5 %)
    wave: float = 0.0  # the tempo swings +-wave around the ramp, a sine of `wave_beats` beats (0.03 = +-3 %)
    wave_beats: int = 12
    sample_rate: int = 32000
    downbeats_every_beats: int | None = None  # truth downbeat spacing in source beats when not a bar
    music_bar_beats: int | None = None  # requested beats per bar of the *music* (8 for half time in 4/4)

    @property
    def source_bpm(self) -> float:
        return self.render_bpm or self.request_bpm


@dataclass
class Rendered:
    groove: Groove
    audio: np.ndarray  # [C, T] float32
    sample_rate: int
    beat_times: np.ndarray = field(repr=False)  # seconds, every beat of the rendered tempo
    downbeat_times: np.ndarray = field(repr=False)  # seconds, the loop grid's true bar starts


def beat_durations(groove: Groove) -> np.ndarray:
    """Seconds of each beat (pickup beats included) under the groove's tempo map."""
    count = groove.pickup_beats + groove.source_bars * groove.beats_per_bar
    ramp = np.linspace(-1.0, 1.0, count)  # a slow drift from -drift to +drift over the clip
    wave = np.sin(2 * np.pi * np.arange(count) / groove.wave_beats)  # a player speeding up and slowing down
    bpm = groove.source_bpm * (1.0 + groove.drift * ramp + groove.wave * wave)
    return 60.0 / bpm


def _tempo_microseconds(seconds: float) -> int:
    return round(seconds * 1e6)


def groove_midi(groove: Groove) -> tuple[mido.MidiFile, np.ndarray]:
    """The MIDI file and the time in seconds of every beat (index 0 = the first pickup beat)."""
    durations = beat_durations(groove)
    tpb = TICKS_PER_BEAT
    lead_ticks = round(groove.lead_silence / durations[0] * tpb)
    events: list[tuple[int, mido.Message | mido.MetaMessage]] = []
    for beat, seconds in enumerate(durations):  # one tempo event per beat: the tempo map carries the drift
        events.append((lead_ticks + beat * tpb, mido.MetaMessage("set_tempo", tempo=_tempo_microseconds(seconds))))
    events.append((0, mido.MetaMessage("set_tempo", tempo=_tempo_microseconds(durations[0]))))
    events.append((0, mido.Message("program_change", channel=BASS, program=33)))
    events.append((0, mido.Message("program_change", channel=KEYS, program=4)))

    def note(channel: int, pitch: int, start: int, length: int, velocity: int) -> None:
        events.append((start, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity)))
        events.append((start + length, mido.Message("note_off", channel=channel, note=pitch, velocity=0)))

    bpb = groove.beats_per_bar
    swing_tick = round(groove.swing * tpb)
    for beat in range(len(durations)):
        start = lead_ticks + beat * tpb
        in_bar = (beat - groove.pickup_beats) % bpb
        note(DRUMS, HAT, start, tpb // 4, 70)
        note(DRUMS, HAT, start + swing_tick, tpb // 4, 50)
        if beat < groove.pickup_beats:
            note(BASS, 43, start, tpb // 2, 80)  # a bass pickup into the first bar
            continue
        bar = (beat - groove.pickup_beats) // bpb
        root, chord = PROGRESSION[bar % len(PROGRESSION)]
        if in_bar == 0:
            note(DRUMS, KICK, start, tpb // 2, 120)
            note(BASS, root, start, tpb - 20, 110)
            for pitch in chord:
                note(KEYS, pitch, start, bpb * tpb - 20, 80)
        elif in_bar % 2 == 1:
            note(DRUMS, SNARE, start, tpb // 2, 100)
        else:
            note(DRUMS, KICK, start, tpb // 2, 90)
            note(BASS, root + 7, start, tpb - 20, 90)
    beat_times = groove.lead_silence + np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    return midi_file(events), beat_times


def midi_file(events: list[tuple[int, mido.Message | mido.MetaMessage]]) -> mido.MidiFile:
    """One track of (absolute tick, message) events, tempo changes first within a tick; it ends two beats after the last."""
    track = mido.MidiTrack()
    now = 0
    for tick, message in sorted(events, key=lambda item: (item[0], item[1].type != "set_tempo")):
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=2 * TICKS_PER_BEAT))
    midi = mido.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)
    return midi


def render_midi(midi: mido.MidiFile, wav: Path, sample_rate: int) -> tuple[np.ndarray, int]:
    """Render `midi` with FluidSynth to `wav` (reused when it exists); returns its [C, T] audio and rate."""
    if not wav.exists():
        mid = wav.with_suffix(".mid")
        midi.save(str(mid))
        subprocess.run(
            ["fluidsynth", "-ni", "-q", "-g", "0.8", "-F", str(wav), "-r", str(sample_rate), str(SOUNDFONT), str(mid)],
            check=True, capture_output=True, timeout=120,
        )
    return read_audio(wav)


def part_midi(midi: mido.MidiFile, channel: int) -> mido.MidiFile:
    """`midi` with only `channel`'s messages (and the tempo map): one instrument's stem, on the same timeline."""
    part = mido.MidiTrack()
    skipped = 0  # ticks of the messages left out, added to the next one kept
    for message in midi.tracks[0]:
        if getattr(message, "channel", channel) == channel:
            part.append(message.copy(time=message.time + skipped))
            skipped = 0
        else:
            skipped += message.time
    stem = mido.MidiFile(ticks_per_beat=midi.ticks_per_beat)
    stem.tracks.append(part)
    return stem


def render(groove: Groove, directory: Path, channel: int | None = None) -> Rendered:
    """Render (or reuse) the groove's WAV in `directory`; returns audio and ground truth.

    `channel` (DRUMS, BASS or KEYS): render that instrument's part alone.
    """
    midi, beat_times = groove_midi(groove)
    name = groove.name if channel is None else f"{groove.name}-ch{channel}"
    if channel is not None:
        midi = part_midi(midi, channel)
    audio, rate = render_midi(midi, directory / f"{name}.wav", groove.sample_rate)
    bar_beats = groove.downbeats_every_beats or groove.beats_per_bar
    downbeats = beat_times[groove.pickup_beats::bar_beats]
    return Rendered(groove, audio, rate, beat_times, downbeats)


# The corpus: one row per case. Source lengths leave room for several candidate windows.
CORPUS: list[Groove] = [
    Groove("bpm40", 40.0, bars=2, source_bars=4),
    Groove("bpm60.23", 60.23, bars=2, source_bars=5),
    Groove("bpm87.5", 87.5),
    Groove("bpm120", 120.0),
    Groove("bpm174", 174.0, source_bars=10),
    Groove("bpm240", 240.0, bars=8, source_bars=14),
    Groove("waltz150", 150.0, beats_per_bar=3, source_bars=10),
    Groove("waltz72", 72.0, beats_per_bar=3, bars=2, source_bars=6),
    Groove("swing96", 96.0, swing=0.66),
    Groove("pickup100", 100.0, pickup_beats=2, lead_silence=1.3),
    Groove("drift110", 110.0, drift=0.015, source_bars=10),
    # A tempo wave inside every window: one stretch ratio leaves its beats 20-30 ms off the grid.
    Groove("wave110", 110.0, wave=0.03, source_bars=8),
    Groove("slow92", 92.0, render_bpm=92.0 * 0.955),
    Groove("fast130", 130.0, render_bpm=130.0 * 1.06),
    Groove("slow75", 75.0, render_bpm=75.0 * 0.93, bars=2, source_bars=6),
    Groove("fast140", 140.0, render_bpm=140.0 * 1.08),
    Groove("half140", 140.0, render_bpm=70.0, bars=4, source_bars=5, downbeats_every_beats=2, music_bar_beats=8),
    # Half time with a chord per bar of the music: only every other requested bar starts a chord.
    Groove("halfchords140", 140.0, render_bpm=70.0, bars=4, source_bars=5, music_bar_beats=8),
    Groove("rate44k", 128.0, sample_rate=44100),
]


# --- Independent measurements of a finished loop (they use librosa, not the engine's code) ---

MEASURE_HOP = 128
BEAT_SEARCH_S = 0.06  # an onset belongs to a grid beat when this close (and within a quarter beat)
PEAK_SEARCH_S = 0.03  # the flux peak of a beat: this close to where the loop's beats are (and within a sixth of a beat)
TEMPLATE_REACH_S = 0.06  # a beat's flux compared with the others' over this much on either side (and a third of a beat)
TEMPLATE_SEARCH_S = 0.035  # ... at lags up to this
SEAM_RADIUS_S = 0.025  # the flux at a point: its peak this close (an attack's rise and a grid's jitter)


# Issue #13's goals for a loop, on both corpora: its start this close to a true downbeat, its beats'
# spread around its grid, its drift, and the flux at its wrap against the other downbeats' (or the
# source's own there, when the source is known).
GOAL_START_MS = 40.0
GOAL_SPREAD_MS = 15.0
GOAL_DRIFT_MS_PER_BAR = 6.0
GOAL_SEAM_RATIO = 1.5


@dataclass(frozen=True)
class LoopMeasures:
    start_error_ms: float  # reported start - nearest true downbeat (negative: early)
    grid_deviation_ms: float  # grid spread: largest |beat's timing - median|, as three readers agree (_beat_timings)
    nearest_onset_deviation_ms: float  # the same read from the nearest onsets alone (the measure before it had three readers)
    grid_offset_ms: float  # median onset - grid beat (the loop starts this late on its beat)
    beats_found: float  # fraction of grid beats with an onset nearby
    drift_ms_per_bar: float
    seam_ratio: float  # flux at the wrap / what the music has there (see measure_loop)
    fade_db: float  # last bar RMS - first bar RMS


def _rms_db(x: np.ndarray) -> float:
    return 10 * math.log10(max(float(np.mean(np.square(x, dtype=np.float64))), 1e-20))


@dataclass(frozen=True)
class LoopSource:
    """What a loop was cut from, for judging its seam: the [C, T] source `audio` at `sample_rate`,
    and `end`, the source second the loop's end was cut at (its start is measure_loop's `source_start`)."""

    audio: np.ndarray
    sample_rate: int
    end: float


def _flux(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """[F] librosa's onset strength (log-mel flux) of [T] `mono`, one frame per MEASURE_HOP samples."""
    import librosa

    return librosa.onset.onset_strength(y=mono, sr=sample_rate, hop_length=MEASURE_HOP)


def _flux_peak(flux: np.ndarray, sample_rate: int, seconds: float) -> float:
    """The largest of `flux` [F] within SEAM_RADIUS_S of `seconds`."""
    radius = max(1, round(SEAM_RADIUS_S * sample_rate / MEASURE_HOP))
    frame = round(seconds * sample_rate / MEASURE_HOP)
    return float(flux[max(0, frame - radius) : frame + radius + 1].max())


def _source_flux(source: LoopSource, sample_rate: int, points: tuple[float, float]) -> list[float]:
    """`_flux_peak` of the source (at the loop's `sample_rate`, as the loop's flux is) at each of `points` (source seconds)."""
    import librosa

    mono = librosa.resample(source.audio.mean(axis=0), orig_sr=source.sample_rate, target_sr=sample_rate)
    flux = _flux(mono, sample_rate)
    return [_flux_peak(flux, sample_rate, seconds) for seconds in points]


def best_lag(envelope: np.ndarray, frame: int, reference: np.ndarray, search: int) -> int:
    """The lag in frames, within +-`search`, at which `envelope` [F] around `frame` best matches
    `reference` [2 R + 1] (centred on its frame) less its mean: their dot product is largest."""
    reach = len(reference) // 2
    pattern = reference - reference.mean()
    lags = range(-search, search + 1)
    return lags[int(np.argmax([envelope[frame - reach + lag : frame + reach + 1 + lag] @ pattern for lag in lags]))]


@dataclass(frozen=True)
class BeatTimings:
    """[B] ms each grid beat of a loop plays late, as read from its [F] flux (negative: early)."""

    nearest: np.ndarray  # the nearest detected onset (absolute: the loop's own lag included)
    agreed: np.ndarray  # the median of three readers, each less its own median (see _beat_timings)
    found: np.ndarray  # [B] bool: an onset was detected near the beat (the others are not read)


def _beat_timings(flux: np.ndarray, sample_rate: int, grid: np.ndarray, beat_s: float) -> BeatTimings:
    """Each beat's timing in `flux` (MEASURE_HOP frames) around `grid` (seconds), read three ways.

    One reader is easily fooled by a dense mix: the nearest onset jumps between a flam's two hits,
    the flux peak wanders on a beat whose attack is soft, and a beat's envelope shape differs from
    the others' where a fill plays. Each reader is centred on its own median and a beat's timing is
    the median of the three, so one reader's mistake on a beat is outvoted there:
    - the nearest onset that librosa's peak picker detects (the beat is read only when there is one);
    - the flux's highest frame within PEAK_SEARCH_S of where the loop's beats are;
    - the lag that best aligns the beat's flux with the mean of all the others' (aligned the same way
      once, then again against the aligned mean).
    test_real_corpus checks them on steady sources, cut straight and with a known tempo wave.
    """
    import librosa

    frame_s = MEASURE_HOP / sample_rate
    onsets = librosa.onset.onset_detect(onset_envelope=flux, sr=sample_rate, hop_length=MEASURE_HOP, units="time")
    distance = onsets[None, :] - grid[:, None]
    nearest = distance[np.arange(len(grid)), np.abs(distance).argmin(axis=1)]
    found = np.abs(nearest) < min(BEAT_SEARCH_S, beat_s / 4)
    centre = float(np.median(nearest[found])) if found.any() else 0.0

    radius = max(1, round(min(PEAK_SEARCH_S, beat_s / 6) / frame_s))
    frames = np.rint((grid + centre) / frame_s).astype(int)[:, None] + np.arange(-radius, radius + 1)
    peaks = (frames[np.arange(len(grid)), flux[frames].argmax(axis=1)] * frame_s - grid - centre)

    reach = max(1, round(min(TEMPLATE_REACH_S, beat_s / 3) / frame_s))
    search = max(1, round(TEMPLATE_SEARCH_S / frame_s))
    beat_frames = np.rint(grid / frame_s).astype(int)

    lags = np.zeros(len(grid), dtype=int)
    for _ in range(2):
        aligned = np.stack([flux[frame + lag - reach : frame + lag + reach + 1] for frame, lag in zip(beat_frames, lags, strict=True)])
        others = (aligned.sum(axis=0) - aligned) / max(1, len(grid) - 1)  # [B, L]: each beat's template
        lags = np.array([best_lag(flux, frame, template, search) for frame, template in zip(beat_frames, others, strict=True)])

    def centred(ms: np.ndarray) -> np.ndarray:
        return ms - (np.median(ms[found]) if found.any() else 0.0)

    readers = np.stack([centred(nearest * 1000), centred(peaks * 1000), centred(lags * frame_s * 1000)])
    return BeatTimings(nearest=nearest * 1000, agreed=np.median(readers, axis=0), found=found)


def measure_loop(
    loop: np.ndarray, sample_rate: int, bars: int, beats_per_bar: int,
    source_start: float, true_downbeats: np.ndarray, music_bar_beats: int | None = None,
    source: LoopSource | None = None,
) -> LoopMeasures:
    """Measure a [C, N] loop played three times in a row, looking at the middle copy.

    Seam and fade compare bars of the music: `music_bar_beats` requested beats (default a bar).
    The seam ratio is the flux at the wrap over the median flux at the loop's other downbeats or,
    with the loop's `source`, over the largest of that and the source's own flux where the loop's
    start and end were cut. The wrap joins what led to the source's end to what follows its start;
    the source plays that musical point twice (into the start, out of the end), so an accent it has
    there (a phrase start among soft downbeats) is not a seam, while a join that makes an attack of
    its own (a hard cut a quarter beat off the downbeat: test_real_corpus) still rises above both.
    The grid spread and drift are read from each beat's timing as three readers agree (_beat_timings).
    """
    signal = loop.mean(axis=0)
    n = len(signal)
    tiled = np.tile(signal, 3)
    beats = bars * beats_per_bar
    beat_s = n / sample_rate / beats
    grid = n / sample_rate + beat_s * np.arange(beats)
    flux = _flux(tiled, sample_rate)
    timings = _beat_timings(flux, sample_rate, grid, beat_s)
    found = timings.found
    median = float(np.median(timings.nearest[found])) if found.any() else math.nan
    agreed = timings.agreed[found]
    deviation = float(np.max(np.abs(agreed - np.median(agreed)))) if found.any() else math.inf
    nearest_deviation = float(np.max(np.abs(timings.nearest[found] - median))) if found.any() else math.inf
    bar_index = (np.arange(beats) / beats_per_bar)[found]
    drift = float(np.polyfit(bar_index, agreed, 1)[0]) if len(set(bar_index)) > 1 else 0.0

    shift = (median if math.isfinite(median) else 0.0) / 1000  # look where this loop's onsets are

    def flux_at(seconds: float) -> float:
        return _flux_peak(flux, sample_rate, seconds + shift)

    bar_beats = music_bar_beats or beats_per_bar
    step = bar_beats if beats > bar_beats else 1  # one-bar loops: compare with the other beats
    reference = float(np.median([flux_at(t) for t in grid[step::step]]))
    if source is not None:  # the shift in source seconds: the loop's span there over its length
        source_shift = shift * (source.end - source_start) / (n / sample_rate)
        points = (source_start + source_shift, source.end + source_shift)
        reference = max(reference, *_source_flux(source, sample_rate, points))
    wrap = max(flux_at(n / sample_rate), flux_at(2 * n / sample_rate))
    bar = n * bar_beats // beats
    return LoopMeasures(
        start_error_ms=float((source_start - true_downbeats)[np.abs(true_downbeats - source_start).argmin()]) * 1000,
        grid_deviation_ms=deviation,
        nearest_onset_deviation_ms=nearest_deviation,
        grid_offset_ms=median,
        beats_found=float(found.mean()),
        drift_ms_per_bar=drift,
        seam_ratio=wrap / max(reference, 1e-9),
        fade_db=_rms_db(signal[-bar:]) - _rms_db(signal[:bar]),
    )


MAX_SMEAR = 1.15  # `attack_smear` of a loop whose kicks stay sharp: 0.96-1.02 on both corpora, 1.2-1.5 when smeared
KICK_BAND_HZ = 200.0  # the kick's body: its attack is where this band's envelope rises
RISE_SEARCH_S = 0.04


def attack_rise_ms(audio: np.ndarray, sample_rate: int, times: np.ndarray) -> np.ndarray:
    """[B] how long the low band's envelope takes to rise from 10 % to 90 % of its peak at the
    strongest hit within RISE_SEARCH_S of each of `times` [B] (seconds) in `audio` [C, T]: a
    time stretch that smears a kick makes it longer."""
    from scipy import ndimage, signal

    low = signal.sosfiltfilt(signal.butter(4, KICK_BAND_HZ, "low", fs=sample_rate, output="sos"), audio.mean(axis=0))
    envelope = ndimage.uniform_filter1d(np.abs(signal.hilbert(low)), max(1, round(0.001 * sample_rate)))
    reach = round(RISE_SEARCH_S * sample_rate)
    rises = []
    for centre in np.rint(np.asarray(times) * sample_rate).astype(int):
        around = envelope[max(0, centre - reach) : centre + reach]
        peak = int(around.argmax())
        below = np.flatnonzero(around[:peak] <= 0.1 * around[peak])
        start = int(below[-1]) if len(below) else 0
        rises.append(max(1, int(np.argmax(around[start:] >= 0.9 * around[peak]))))  # at least a sample
    return np.array(rises) / sample_rate * 1000


def attack_smear(loop: np.ndarray, sample_rate: int, source: np.ndarray, source_rate: int, source_beats: np.ndarray) -> float:
    """How much slower the [C, N] loop's attacks rise than the [C, T] source's: the median over the
    loop's beats of its rise (`attack_rise_ms`, the loop played three times, the middle copy) over
    the rise at the source time that beat was cut from (`source_beats` [B] seconds). 1: as sharp."""
    beats = len(source_beats)
    seconds = loop.shape[1] / sample_rate
    in_loop = attack_rise_ms(np.tile(loop, 3), sample_rate, seconds + seconds / beats * np.arange(beats))
    return float(np.median(in_loop / attack_rise_ms(source, source_rate, source_beats)))

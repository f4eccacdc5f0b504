"""A loop's shape: its tempo, bars and meter, the three numbers that fix its exact length."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ALLOWED_BARS, ALLOWED_BEATS_PER_BAR, BPM_MAX, BPM_MIN


def format_bpm(bpm: float) -> str:
    """92.0 -> '92', 60.23 -> '60.23'."""
    return f"{bpm:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class LoopShape:
    """Tempo, length in bars and beats per bar: what every loop is cut to, whatever made it."""

    bpm: float
    bars: int
    beats_per_bar: int = 4

    @property
    def beats(self) -> int:
        return self.bars * self.beats_per_bar

    @property
    def beat_seconds(self) -> float:
        return 60.0 / self.bpm

    @property
    def seconds(self) -> float:
        return self.bars * self.beats_per_bar * 60.0 / self.bpm

    def samples(self, sample_rate: int) -> int:
        """The exact length of the loop: round(bars x beats per bar x 60 / BPM x rate)."""
        return round(self.bars * self.beats_per_bar * 60.0 / self.bpm * sample_rate)

    def problem(self) -> str | None:
        """What is wrong with this shape, in one line a user can act on; None when it is allowed."""
        if not (BPM_MIN <= self.bpm <= BPM_MAX):
            return f"BPM must be between {BPM_MIN:g} and {BPM_MAX:g}, not {format_bpm(self.bpm)}."
        if self.bars not in ALLOWED_BARS:
            return f"Bars must be one of {', '.join(map(str, ALLOWED_BARS))}, not {self.bars}."
        if self.beats_per_bar not in ALLOWED_BEATS_PER_BAR:
            return f"Beats per bar must be one of {', '.join(map(str, ALLOWED_BEATS_PER_BAR))}, not {self.beats_per_bar}."
        return None

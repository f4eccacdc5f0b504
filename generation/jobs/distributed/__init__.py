"""Distributed mode: GPU workers on any machine, fed through Redis by saq.

The bot side (`SaqBackend`) imports neither torch nor the model; `loopjam worker` (`worker.serve`)
does, inside the worker process only.
"""

from .backend import SaqBackend, Timing
from .ratelimit import RedisRateLimiter, SharedRateCounter
from .wire import DEFAULT_QUEUE

__all__ = ["DEFAULT_QUEUE", "RedisRateLimiter", "SaqBackend", "SharedRateCounter", "Timing"]

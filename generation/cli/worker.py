"""`loopjam worker`: distributed mode's GPU worker, serving the bot's jobs from Redis."""

from __future__ import annotations

from typing import Annotated

import typer

from ..jobs.distributed.wire import DEFAULT_QUEUE, SHUTDOWN_GRACE_S
from .common import fail, settings


def worker(
    redis: Annotated[str | None, typer.Option("--redis", help="Redis URL (default: the queue.redis_url setting).")] = None,
    name: Annotated[str | None, typer.Option(help="This worker's name (default: host-pid); unique per queue.")] = None,
    queue: Annotated[str, typer.Option(help="The saq queue to serve; the bot's must be the same.")] = DEFAULT_QUEUE,
    stop_grace: Annotated[float, typer.Option(
        min=0, help="On SIGTERM or Ctrl-C, seconds the running batch may finish in before it goes back to the queue.",
    )] = SHUTDOWN_GRACE_S,
) -> None:
    """Serve the bot's jobs from Redis on this machine (distributed mode): one per GPU."""
    from redis import Redis
    from redis.exceptions import RedisError

    from ..jobs.distributed.worker import default_worker_name, serve

    conf = settings()
    url = redis or conf.queue.redis_url
    try:  # one clear line now rather than a traceback after the model has loaded
        Redis.from_url(url, socket_connect_timeout=5).ping()
    except (RedisError, ValueError) as error:
        raise fail(f"Cannot reach Redis: {error}") from None
    worker_name = name or default_worker_name()
    if ":" in worker_name:
        raise fail("The worker name cannot contain ':'.")
    serve(conf, url, name=worker_name, queue_name=queue, grace_s=stop_grace)

"""The router benchmark's own loops run as the daemon's would: no batch falls back.

Not a timing test: it only checks that what bench/bench_router.py measures is the
batch path (a batch handler that raised would send every entry one by one, and the
figures would describe the wrong thing).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from bench import bench_router

pytestmark = pytest.mark.anyio


async def test_the_router_bench_measures_the_batch_path(
    redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="selfheal")
    rate, cpu_us = await bench_router.routed(redis_client, 300, tmp_path / "spans.jsonl", True)
    assert rate > 0 and cpu_us > 0
    samples = await bench_router.latency(redis_client, 200.0, 0.5, tmp_path / "lat.jsonl", True)
    assert len(samples) >= 100 and all(sample >= 0 for sample in samples)
    words = ("slow path", "failed")
    fallbacks = [r.message for r in caplog.records if any(w in r.message for w in words)]
    assert fallbacks == []
    spans = (tmp_path / "spans.jsonl").read_text().splitlines()
    assert len(spans) == 300, "one decision span per routed request"

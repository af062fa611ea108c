"""The embedding worker: claims jobs from the PostgreSQL queue, embeds their images and writes the vectors."""

from __future__ import annotations

from worker.loop import Worker, WorkerConfig, WorkerStats, stop_on_signals

__all__ = ["Worker", "WorkerConfig", "WorkerStats", "stop_on_signals"]

"""One execution of `run_search` for one search: darts_core's search loop inside `worker.job_run`'s
lease, heartbeat, outbox and end-of-run machinery (shared with trainings, `worker.training_run`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.lifecycle.kinds import SEARCH
from app.models import Search
from app.storage import search_dir
from worker.job_run import (
    HandedBack,
    JobOutcome,
    JobRun,
    Outbox,
    StopWatch,
    public_error,
    resolve_dataset,
    session_factory,
    worker_shutting_down,
)

__all__ = [
    "HandedBack", "Outbox", "SearchRun", "StopWatch", "public_error", "resolve_dataset", "session_factory",
    "worker_shutting_down",
]


class SearchRun(JobRun):
    """One execution of the task for one search (see `worker.job_run`)."""

    kind = SEARCH

    @property
    def search_id(self) -> str:
        return self.job_id

    def run_job(self, watch: StopWatch, report: Callable[[dict[str, Any]], None]) -> JobOutcome | None:
        # Imported here, in the task, so a worker's parent process never loads torch or CUDA.
        from darts_core.checkpoint import read_history
        from darts_core.data.registry import load_dataset
        from darts_core.search.loop import SearchConfig, run_search

        with self.factory() as session:
            search = session.get(Search, self.job_id)
            if search is None:
                return None
            dataset_spec = resolve_dataset(self.settings, session, search)
            spec = {key: value for key, value in search.spec.items() if key not in ("dataset", "name")}
        config = SearchConfig.from_spec(spec)
        dataset = load_dataset(dataset_spec)
        directory = search_dir(self.settings, self.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        for record in read_history(directory):
            report(record)
        self.estimate_bytes = _search_estimate(config, dataset)
        result = run_search(
            dataset,
            config,
            checkpoint_dir=directory,
            on_epoch=lambda epoch: report(epoch.to_dict()),
            should_stop=watch,
        )
        success: dict[str, Any] = {}
        if result.stopped_early:
            # The early-stop rule ended the search: it succeeded, with the genotype the rule keeps.
            success = {"stop_reason": result.stop_reason, "genotype": result.genotype.to_json()}
        return JobOutcome(
            stopped=result.stopped,
            epochs_completed=result.epochs_completed,
            success=success,
            kept_note="; the genotype of the last one is kept",
        )


def _search_estimate(config: Any, dataset: Any) -> int | None:
    """The admission estimate's peak bytes of the search on `dataset` (None when it cannot be made)."""
    from darts_core.estimate import estimate_search

    try:
        return estimate_search(
            config, in_channels=dataset.in_channels, image_size=tuple(dataset.image_size),
            num_classes=dataset.num_classes, num_samples=len(dataset.y_train),
        ).peak_bytes
    except Exception:  # noqa: BLE001 - only a failure's message uses it
        return None

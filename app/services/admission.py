"""Admission control: estimate what a search or a training needs before it is accepted, and refuse what
cannot fit.

The estimate (`darts_core.estimate`) needs the image shape and the class count of the dataset, which
the spec gives (built-ins, synthetic) or the uploaded dataset's row records. It imports torch, so it is
imported here only when a search is estimated, or by `preload()`, which the API calls in a thread of its
own when it starts: the import takes seconds of the interpreter (most of it holding the GIL), which the
first submissions would otherwise pay in the middle of serving (issue 10's burst of 200 submissions).
Processes that never estimate (workers' parents, the CLI) never load torch.

Which memory a job is compared with (`memory_limit`): a `cpu` job, WORKER_MEMORY_BYTES; a `cuda` job
(or an `auto` one while a GPU worker is up), the GPU memory of the workers that can take it, as their
heartbeats report it (app.worker_heartbeat; the smallest of them, less CUDA_CONTEXT_BYTES, since any of
them may take it), else WORKER_GPU_MEMORY_BYTES, else WORKER_MEMORY_BYTES. The message names which.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy.orm import Session

from app.models import Dataset
from app.redis import get_redis
from app.schemas.searches import DatasetSpec, SearchSpec, UploadedDatasetSpec
from app.schemas.trainings import TrainingSpec
from app.services.errors import Unprocessable
from app.settings import Settings
from app.worker_heartbeat import WorkerDevice, worker_devices
from darts_core.spec.dataset_spec import SyntheticDatasetSpec, builtin_datasets

logger = logging.getLogger(__name__)

# What a GPU's total memory holds besides the job's tensors: the CUDA context and the caching
# allocator's slack. A margin chosen, not measured here (no GPU was at hand).
CUDA_CONTEXT_BYTES = 2**30

# Sizes a caller can lower, in the order they usually matter most (batch first: activations dominate).
_LOWERABLE: tuple[tuple[str, Callable[[SearchSpec], bool]], ...] = (
    ("training.batch_size", lambda spec: spec.training.batch_size > 1),
    ("network.init_channels", lambda spec: spec.network.init_channels > 1),
    ("network.cells", lambda spec: spec.network.cells > 1),
    ("search_space.internal_nodes", lambda spec: spec.search_space.internal_nodes > 1),
    ("training.order", lambda spec: spec.training.order == "second"),
    ("network.stem_multiplier", lambda spec: spec.network.stem_multiplier > 1),
)


def data_shape(session: Session, dataset: DatasetSpec, owner: str) -> dict[str, Any]:
    """`in_channels`, `image_size`, `num_classes`, `num_samples` of a spec's dataset."""
    if isinstance(dataset, UploadedDatasetSpec):
        row = session.get(Dataset, dataset.id)
        if row is None or row.owner != owner:  # another owner's dataset is not there for this one
            raise Unprocessable(
                f"unknown dataset id {dataset.id!r}: upload it with POST /datasets first",
                loc=("body", "dataset", "id"),
                error_type="unknown_dataset",
            )
        return {
            "in_channels": row.channels,
            "image_size": (row.height, row.width),
            "num_classes": row.num_classes,
            "num_samples": row.num_samples,
        }
    if isinstance(dataset, SyntheticDatasetSpec):
        size = dataset.image_size
        height, width = size if isinstance(size, tuple) else (size, size)
        return {
            "in_channels": dataset.channels,
            "image_size": (height, width),
            "num_classes": dataset.num_classes,
            "num_samples": dataset.num_samples,
        }
    info = next(item for item in builtin_datasets() if item["name"] == dataset.name)
    channels, height, width = info["shape"]
    return {
        "in_channels": channels,
        "image_size": (height, width),
        "num_classes": info["num_classes"],
        "num_samples": info["num_samples"],
    }


@dataclass(frozen=True)
class MemoryLimit:
    """The memory a job is compared with: `limit_bytes`, on `device` ("cpu" or "cuda"), named by
    `source` in messages (a setting, or the GPU of a worker)."""

    limit_bytes: int
    device: str
    source: str


_CLIENTS: dict[str, redis.Redis] = {}  # one client (and connection pool) per Redis URL


def _redis_client(settings: Settings) -> redis.Redis:
    url = settings.redis_url or ""
    if url not in _CLIENTS:
        _CLIENTS[url] = get_redis(settings)
    return _CLIENTS[url]


def _gpu_workers(settings: Settings) -> list[WorkerDevice]:
    """The GPU workers whose heartbeat is fresh (none when Redis does not answer: the settings decide)."""
    if not settings.redis_url:
        return []
    try:
        devices = worker_devices(_redis_client(settings), settings.redis_prefix)
    except redis.RedisError:
        logger.warning("could not read the workers' devices; admitting by the settings", exc_info=True)
        return []
    return [device for device in devices if device.device == "cuda" and device.memory_bytes]


def memory_limit(settings: Settings, device: str) -> MemoryLimit:
    """What a job whose `resources.device` is `device` ("auto", "cpu", "cuda") is compared with."""
    host = MemoryLimit(settings.worker_memory_bytes, "cpu", "WORKER_MEMORY_BYTES")
    if device == "cpu":
        return host
    gpus = _gpu_workers(settings)
    if gpus:
        smallest = min(gpus, key=lambda gpu: gpu.memory_bytes or 0)
        total = smallest.memory_bytes or 0
        return MemoryLimit(
            max(1, total - CUDA_CONTEXT_BYTES),
            "cuda",
            f"the GPU memory of worker {smallest.hostname!r} ({smallest.name or 'cuda'}: {total} bytes, "
            f"{_gib(total)}) less {_gib(CUDA_CONTEXT_BYTES)} for the CUDA context",
        )
    if settings.worker_gpu_memory_bytes is not None:
        return MemoryLimit(
            settings.worker_gpu_memory_bytes,
            "cuda",
            "WORKER_GPU_MEMORY_BYTES (GPU memory; no GPU worker is up)",
        )
    if device == "cuda":
        return MemoryLimit(
            settings.worker_memory_bytes,
            "cuda",
            "WORKER_MEMORY_BYTES (no GPU worker is up and WORKER_GPU_MEMORY_BYTES is unset)",
        )
    return host


def preload() -> None:
    """Import what `estimate` needs (torch among it) now, so the first submission does not."""
    import darts_core.estimate  # noqa: F401


def estimate(session: Session, spec: SearchSpec, settings: Settings, *, owner: str) -> dict[str, Any]:
    """The admission estimate of `spec` against `settings.worker_memory_bytes` (a
    `SearchEstimatePublic` dict). Blocking (torch, milliseconds to a tenth of a second): call it off the
    event loop."""
    from darts_core.estimate import estimate_search
    from darts_core.spec.search_spec import SearchConfig

    try:
        config = SearchConfig.from_spec(spec.model_dump(mode="json"))
    except ValueError as exc:
        raise Unprocessable(f"the search engine refuses this spec: {exc}", error_type="invalid_spec") from exc
    allowed = memory_limit(settings, spec.resources.device)
    result = estimate_search(config, **data_shape(session, spec.dataset, owner))
    limit = allowed.limit_bytes
    fits = result.peak_bytes <= limit
    return {
        "weights": result.weights,
        "arch_weights": result.arch_weights,
        "peak_memory_bytes": result.peak_bytes,
        "step_memory_bytes": result.step_bytes,
        "dataset_bytes": result.dataset_bytes,
        "limit_bytes": limit,
        "limit_device": allowed.device,
        "limit_source": allowed.source,
        "fits": fits,
        "lower": [] if fits else [field for field, lowerable in _LOWERABLE if lowerable(spec)],
    }


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def require_fits(session: Session, spec: SearchSpec, settings: Settings, *, owner: str) -> dict[str, Any]:
    """The estimate, or Unprocessable (422) naming the estimate, the limit and the fields to lower."""
    result = estimate(session, spec, settings, owner=owner)
    if result["fits"]:
        return result
    lower = ", ".join(result["lower"]) or "the dataset's image size"
    raise Unprocessable(
        f"this search does not fit a worker: estimated peak memory {result['peak_memory_bytes']} bytes "
        f"({_gib(result['peak_memory_bytes'])}; {result['weights']} weights) exceeds the limit of "
        f"{result['limit_bytes']} bytes ({_gib(result['limit_bytes'])}, {result['limit_source']}); "
        f"lower {lower}",
        error_type="does_not_fit",
        ctx={key: result[key] for key in ("weights", "peak_memory_bytes", "limit_bytes", "lower")}
        | {"limit_device": result["limit_device"], "limit_source": result["limit_source"]},
    )


def require_training_fits(
    session: Session, spec: TrainingSpec, genotype: dict[str, Any], settings: Settings, *, owner: str
) -> None:
    """Unprocessable (422) when the training of `genotype` by `spec` would not fit a worker (its
    `darts_core.estimate.estimate_training` peak above WORKER_MEMORY_BYTES); the message names the
    estimate, the limit and the fields to lower."""
    from darts_core.estimate import estimate_training
    from darts_core.spec.genotype import Genotype
    from darts_core.spec.training_spec import TrainingJobConfig

    assert spec.dataset is not None  # create_training has filled it in
    config = TrainingJobConfig.from_spec(spec.model_dump(mode="json"))
    shape = data_shape(session, spec.dataset, owner)
    result = estimate_training(
        config,
        (shape["in_channels"], *shape["image_size"]),
        shape["num_classes"],
        Genotype.from_json(genotype),
        num_samples=shape["num_samples"],
    )
    allowed = memory_limit(settings, spec.resources.device)
    limit = allowed.limit_bytes
    if result.peak_bytes <= limit:
        return
    raise Unprocessable(
        f"this training does not fit a worker: estimated peak memory {result.peak_bytes} bytes "
        f"({_gib(result.peak_bytes)}; {result.weights} weights) exceeds the limit of {limit} bytes "
        f"({_gib(limit)}, {allowed.source}); lower training.batch_size, network.init_channels or "
        "network.cells",
        error_type="does_not_fit",
        ctx={
            "weights": result.weights,
            "peak_memory_bytes": result.peak_bytes,
            "limit_bytes": limit,
            "limit_device": allowed.device,
            "limit_source": allowed.source,
        },
    )


def require_budget_feasible(session: Session, spec: SearchSpec, *, owner: str) -> None:
    """Unprocessable (422) naming `constraints.max_parameters` (or `max_multiply_adds`) and the least
    value that could be met, when not even the cheapest genotype of the search space fits the budget.
    Blocking (torch, about a second for the cost table): call it off the event loop."""
    if not spec.constraints.active:
        return
    from darts_core.search.budget import Budget, cost_table_for
    from darts_core.spec.search_spec import SearchConfig

    config = SearchConfig.from_spec(spec.model_dump(mode="json"))
    shape = data_shape(session, spec.dataset, owner)
    table = cost_table_for(config, (shape["in_channels"], *shape["image_size"]), shape["num_classes"])
    try:
        table.check_feasible(Budget.of(config.constraints))
    except ValueError as exc:
        field = str(exc).split(":", 1)[0]  # "constraints.max_parameters" or "constraints"
        raise Unprocessable(
            str(exc), loc=("body", *field.split(".")), error_type="budget_infeasible"
        ) from exc

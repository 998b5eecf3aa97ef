"""Optimizer factories for DARTS: architecture weights and operation weights get separate optimizers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from darts_core.nn.special_parameter import SpecialParameter

__all__ = ["create_darts_optimizers_fn", "create_darts_adam_optimizers_fn"]

OptimizerFn = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerFn = Callable[[torch.optim.Optimizer], Any]


def _split_parameters(module: nn.Module, special: bool) -> list[nn.Parameter]:
    # Module.parameters() yields a parameter shared between cells only once.
    return [p for p in module.parameters() if isinstance(p, SpecialParameter) == special]


def create_darts_optimizers_fn(
    datasets: Mapping[str, Any] | Iterable[str],
    model: nn.Module,
    optimizer_fn: OptimizerFn,
    darts_weight_dataset_name: str,
    scheduler_fn: SchedulerFn | None = None,
) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any] | None]:
    """Create one optimizer (and scheduler) per dataset for a DARTS architecture search.

    Parameters that are :class:`~darts_core.nn.cell.SpecialParameter` are handled differently:

    - the optimizer of ``darts_weight_dataset_name`` gets exactly the SpecialParameters (the
      architecture weights);
    - the optimizer of every other dataset gets exactly the other parameters.

    Args:
        datasets: the datasets, keyed by name (only the names are used).
        model: the model. For an ``nn.ModuleDict``, the optimizer of a dataset considers only
            ``model[dataset_name].parameters()``, else ``model.parameters()``.
        optimizer_fn: ``optimizer_fn(parameters) -> torch.optim.Optimizer``.
        darts_weight_dataset_name: the dataset on which the architecture weights are trained.
        scheduler_fn: ``scheduler_fn(optimizer) -> scheduler``, or ``None`` for no scheduler.

    Returns:
        ``(optimizers, schedulers)``: dicts keyed by dataset name; ``schedulers`` is ``None`` without
        ``scheduler_fn``.

    Raises:
        ValueError: ``darts_weight_dataset_name`` is not among the datasets, a ``ModuleDict`` model has
            no entry for a dataset, or a dataset is left with no parameter to optimize.
    """
    names = list(datasets.keys()) if isinstance(datasets, Mapping) else list(datasets)
    if darts_weight_dataset_name not in names:
        raise ValueError(
            f"darts_weight_dataset_name {darts_weight_dataset_name!r} is not among the datasets {names}"
        )
    optimizers: dict[str, torch.optim.Optimizer] = {}
    schedulers: dict[str, Any] | None = {} if scheduler_fn is not None else None
    for name in names:
        if isinstance(model, nn.ModuleDict):
            if name not in model:
                raise ValueError(f"model is a ModuleDict without an entry for dataset {name!r}")
            sub_model = model[name]
        else:
            sub_model = model
        is_darts = name == darts_weight_dataset_name
        parameters = _split_parameters(sub_model, special=is_darts)
        if not parameters:
            kind = "SpecialParameter (architecture weights)" if is_darts else "non-SpecialParameter"
            raise ValueError(f"dataset {name!r} has no {kind} parameters to optimize")
        optimizer = optimizer_fn(parameters)
        optimizers[name] = optimizer
        if schedulers is not None:
            assert scheduler_fn is not None  # schedulers is a dict only when scheduler_fn is given
            schedulers[name] = scheduler_fn(optimizer)
    return optimizers, schedulers


def create_darts_adam_optimizers_fn(
    datasets: Mapping[str, Any] | Iterable[str],
    model: nn.Module,
    darts_weight_dataset_name: str,
    learning_rate: float,
    scheduler_fn: SchedulerFn | None = None,
) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any] | None]:
    """:func:`create_darts_optimizers_fn` with ``torch.optim.Adam(parameters, lr=learning_rate)``.

    Returns:
        ``(optimizers, schedulers)`` as :func:`create_darts_optimizers_fn`.
    """
    return create_darts_optimizers_fn(
        datasets,
        model,
        lambda parameters: torch.optim.Adam(parameters, lr=learning_rate),
        darts_weight_dataset_name,
        scheduler_fn=scheduler_fn,
    )

"""``darts search SPEC.json``: a DARTS search on this machine, resumable from its output directory::

    OUT/spec.json        the spec with every default filled in
    OUT/checkpoint.pt    network, alphas, optimizers, schedule, RNG states, history (after every epoch;
                         checkpoint.prev.pt keeps the generation before)
    OUT/metrics.jsonl    one epoch record per line (EpochResult.to_dict), epoch 1 first
    OUT/genotype.json    the latest genotype, JSON form of the REST contract
    OUT/genotype.txt     the same in the DARTS reference code's string form

torch is imported when the command runs, not when the module is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from darts_core.cli.common import (
    EXIT_INTERRUPTED,
    console,
    errors,
    fail,
    read_json_object,
    stop_on_interrupt,
    write_json,
    write_text_atomically,
)
from darts_core.spec.genotype import Genotype
from darts_core.spec.search_spec import SearchConfig

if TYPE_CHECKING:
    from darts_core.search.loop import EpochResult

__all__ = ["search"]

SPEC_NAME = "spec.json"
METRICS_NAME = "metrics.jsonl"
GENOTYPE_JSON_NAME = "genotype.json"
GENOTYPE_TEXT_NAME = "genotype.txt"


def _format_epoch(result: EpochResult, epochs: int) -> str:
    return (
        f"epoch {result.epoch:>3}/{epochs}  train loss {result.train_loss:.4f} acc {result.train_acc:.4f}  "
        f"valid loss {result.valid_loss:.4f} acc {result.valid_acc:.4f}  lr {result.lr:.5f}  "
        f"{result.seconds:.1f} s"
    )


def _write_genotype(out: Path, genotype: Genotype) -> None:
    write_json(out / GENOTYPE_JSON_NAME, genotype.to_json())
    write_text_atomically(out / GENOTYPE_TEXT_NAME, genotype.to_darts() + "\n")


def _write_metrics(out: Path, records: Mapping[int, dict[str, Any]]) -> None:
    lines = [json.dumps(records[epoch]) + "\n" for epoch in sorted(records)]
    write_text_atomically(out / METRICS_NAME, "".join(lines))


def _read_metrics(out: Path) -> dict[int, dict[str, Any]]:
    """The epoch records of ``OUT/metrics.jsonl`` by epoch; unreadable lines (a torn write) are skipped."""
    records: dict[int, dict[str, Any]] = {}
    try:
        lines = (out / METRICS_NAME).read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return records
    for line in lines:
        try:
            record = json.loads(line)
            records[int(record["epoch"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return records


def _spec_differences(previous: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Fields that differ between two specs, as ``"path (old -> new)"``; ``resources`` may differ."""
    found = []
    for key in sorted(set(previous) | set(current)):
        path = f"{prefix}{key}"
        old, new = previous.get(key), current.get(key)
        if path == "resources":
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            found += _spec_differences(old, new, f"{path}.")
        elif old != new:
            found.append(f"{path} ({old!r} there, {new!r} now)")
    return found


def search(
    spec_file: Annotated[
        Path,
        typer.Argument(
            metavar="SPEC.json",
            help='Search spec: the REST `spec` with a dataset, e.g. {"dataset": {"name": "digits"}, '
            '"training": {"epochs": 10}}. Missing fields take their defaults.',
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output directory (spec.json, checkpoint.pt, metrics.jsonl, genotype.json, genotype.txt). "
            "A directory that holds a checkpoint of the same spec is resumed. "
            "Default: runs/<SPEC file name without .json>.",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Override resources.device: auto (CUDA when available), cpu or cuda."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override training.epochs.")] = None,
) -> None:
    """Run a DARTS search locally, with a progress bar and one line of metrics per epoch."""
    spec = read_json_object(spec_file, "spec file")
    overrides: dict[str, dict[str, int | str | None]] = {
        "training": {"epochs": epochs},
        "resources": {"device": device},
    }
    for section, values in overrides.items():
        for key, value in values.items():
            if value is not None:
                if not isinstance(spec.get(section, {}), dict):
                    raise fail(f"{section} must be a JSON object, got {spec[section]!r}")
                spec.setdefault(section, {})[key] = value
    if "dataset" not in spec:
        raise fail('the spec needs a "dataset", e.g. {"dataset": {"name": "digits"}}')
    try:
        config = SearchConfig.from_spec(spec)
    except ValueError as error:
        raise fail(f"invalid spec {spec_file}: {error}") from None
    from darts_core.checkpoint import has_checkpoint
    from darts_core.data.registry import DatasetError, load_dataset
    from darts_core.search.loop import run_search

    try:
        dataset = load_dataset(spec["dataset"])
    except DatasetError as error:
        raise fail(f"invalid dataset in {spec_file}: {error}") from None

    out = out if out is not None else Path("runs") / spec_file.stem
    filled = {"dataset": spec["dataset"], **config.to_spec()}
    if "name" in spec:
        filled = {"name": spec["name"], **filled}
    spec_path = out / SPEC_NAME
    resuming = has_checkpoint(out)
    if resuming and spec_path.exists():
        differences = _spec_differences(read_json_object(spec_path, "existing spec"), filled)
        if differences:
            raise fail(
                f"{out} holds a search of another spec: {'; '.join(differences)}. "
                "Choose another --out, or remove that directory to start over."
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(spec_path, filled)

    # Lines of an earlier run stay; an epoch that is run again replaces its line and those after it.
    records = _read_metrics(out) if resuming else {}
    total = config.training.epochs
    console.print(
        f"{'resuming' if resuming else 'searching'} on {dataset.name} "
        f"({dataset.x_train.shape[0]} training images {tuple(dataset.x_train.shape[1:])}, "
        f"{dataset.num_classes} classes) -> {out}",
        highlight=False,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar, stop_on_interrupt() as stop_flag:
        tasks: dict[int, Any] = {}

        def on_progress(epoch: int, step: int, steps: int) -> None:
            if epoch not in tasks:
                tasks[epoch] = bar.add_task(f"epoch {epoch}/{total}", total=steps)
            bar.update(tasks[epoch], completed=step)

        def on_epoch(result: EpochResult) -> None:
            if result.epoch in tasks:
                bar.remove_task(tasks.pop(result.epoch))
            bar.console.print(_format_epoch(result, total), highlight=False, soft_wrap=True)
            for epoch in [epoch for epoch in records if epoch >= result.epoch]:
                del records[epoch]
            records[result.epoch] = result.to_dict()
            _write_metrics(out, records)
            _write_genotype(out, result.genotype)

        try:
            result = run_search(
                dataset,
                config,
                checkpoint_dir=out,
                on_epoch=on_epoch,
                should_stop=lambda: stop_flag[0],
                progress=on_progress,
            )
        except ValueError as error:
            raise fail(str(error)) from None

    # The checkpoint's history is the record: it also covers epochs finished by an earlier run.
    records = {item.epoch: item.to_dict() for item in result.history}
    _write_metrics(out, records)
    if result.history:
        _write_genotype(out, result.genotype)
    if result.stopped:
        errors.print(
            f"stopped after epoch {result.epochs_completed}/{total}; "
            f"run the same command again to resume ({out})",
            highlight=False,
        )
        raise typer.Exit(code=EXIT_INTERRUPTED)
    best = max((item.valid_acc for item in result.history), default=float("nan"))
    if result.stopped_early:
        console.print(f"stopped early: {result.stop_reason}", highlight=False)
    console.print(f"finished {result.epochs_completed} epochs; best supernet valid accuracy {best:.4f}")
    console.print(f"genotype ({out / GENOTYPE_TEXT_NAME}):", highlight=False)
    console.print(result.genotype.to_darts(), highlight=False, soft_wrap=True)

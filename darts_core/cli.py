"""The ``darts`` command: run a DARTS search or retrain a genotype locally, without the service.

``darts search SPEC.json`` runs the search a REST ``spec`` describes and keeps everything in one output
directory; pointed at that directory again, it resumes from the last finished epoch::

    OUT/spec.json        the spec with every default filled in
    OUT/checkpoint.pt    network, alphas, optimizers, schedule, RNG states, history (after every epoch;
                         checkpoint.prev.pt keeps the generation before)
    OUT/metrics.jsonl    one epoch record per line (EpochResult.to_dict), epoch 1 first
    OUT/genotype.json    the latest genotype, JSON form of the REST contract
    OUT/genotype.txt     the same in the DARTS reference code's string form

``darts train GENOTYPE --dataset NAME`` retrains a genotype (``genotype.json`` or ``genotype.txt``) from
scratch with :func:`~darts_core.train.train_genotype` and writes ``train.json`` with the test accuracy.
``darts datasets`` lists the built-in datasets (and the server's, when logged in). Bad input exits with
status 2 and a message.

The commands that talk to a darts-service server (``login``, ``submit``, ``list``, ``status``,
``watch``, ``genotype``, ``cancel``, ``upload``) live in :mod:`darts_core.remote`; ``darts trainings
submit|watch|weights|list|status|cancel`` (retraining on the server) in :mod:`darts_core.remote_trainings`;
``darts studies ...`` (a search per seed, selection and final trainings as one server job) in
:mod:`darts_core.remote_studies`.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from darts_core import remote, remote_studies, remote_trainings
from darts_core.checkpoint import has_checkpoint
from darts_core.config import SearchConfig
from darts_core.data import DatasetError, builtin_datasets, load_dataset
from darts_core.genotype import Genotype
from darts_core.search import EpochResult, run_search
from darts_core.train import TrainEpoch, train_genotype

__all__ = ["app", "main"]

app = typer.Typer(
    name="darts",
    help="Run DARTS architecture searches and retrain the genotypes they find, locally (no server), or\n"
    "on a darts-service server (`darts login URL`, then submit, list, watch, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

SPEC_NAME = "spec.json"
METRICS_NAME = "metrics.jsonl"
GENOTYPE_JSON_NAME = "genotype.json"
GENOTYPE_TEXT_NAME = "genotype.txt"
TRAIN_RESULT_NAME = "train.json"


class _TrainSettings(TypedDict):
    """The train command's options passed on to train_genotype (and recorded in its result file)."""

    epochs: int
    init_channels: int
    cells: int
    batch_size: int
    lr: float
    drop_path_prob: float
    auxiliary: bool
    cutout: bool
    seed: int
    device: str


def _fail(message: str) -> typer.Exit:
    """Print ``message`` to stderr and return the exit (status 2) for the caller to raise."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=EXIT_BAD_INPUT)


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _write_json(path: Path, data: Any) -> None:
    _write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(f"{what} {path} cannot be read: {error}") from None
    except json.JSONDecodeError as error:
        raise _fail(f"{what} {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise _fail(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


@contextmanager
def _stop_on_interrupt() -> Iterator[list[bool]]:
    """Turn the first Ctrl-C into a cooperative stop flag (the search ends after the current step)."""
    flag = [False]

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True
        errors.print("stopping after the current step (Ctrl-C again to abort at once)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _format_epoch(result: EpochResult, epochs: int) -> str:
    return (
        f"epoch {result.epoch:>3}/{epochs}  train loss {result.train_loss:.4f} acc {result.train_acc:.4f}  "
        f"valid loss {result.valid_loss:.4f} acc {result.valid_acc:.4f}  lr {result.lr:.5f}  "
        f"{result.seconds:.1f} s"
    )


def _write_genotype(out: Path, genotype: Genotype) -> None:
    _write_json(out / GENOTYPE_JSON_NAME, genotype.to_json())
    _write_text_atomically(out / GENOTYPE_TEXT_NAME, genotype.to_darts() + "\n")


def _write_metrics(out: Path, records: Mapping[int, dict[str, Any]]) -> None:
    lines = [json.dumps(records[epoch]) + "\n" for epoch in sorted(records)]
    _write_text_atomically(out / METRICS_NAME, "".join(lines))


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


@app.command()
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
    spec = _read_json_object(spec_file, "spec file")
    overrides: dict[str, dict[str, int | str | None]] = {
        "training": {"epochs": epochs},
        "resources": {"device": device},
    }
    for section, values in overrides.items():
        for key, value in values.items():
            if value is not None:
                if not isinstance(spec.get(section, {}), dict):
                    raise _fail(f"{section} must be a JSON object, got {spec[section]!r}")
                spec.setdefault(section, {})[key] = value
    if "dataset" not in spec:
        raise _fail('the spec needs a "dataset", e.g. {"dataset": {"name": "digits"}}')
    try:
        config = SearchConfig.from_spec(spec)
    except ValueError as error:
        raise _fail(f"invalid spec {spec_file}: {error}") from None
    try:
        dataset = load_dataset(spec["dataset"])
    except DatasetError as error:
        raise _fail(f"invalid dataset in {spec_file}: {error}") from None

    out = out if out is not None else Path("runs") / spec_file.stem
    filled = {"dataset": spec["dataset"], **config.to_spec()}
    if "name" in spec:
        filled = {"name": spec["name"], **filled}
    spec_path = out / SPEC_NAME
    resuming = has_checkpoint(out)
    if resuming and spec_path.exists():
        differences = _spec_differences(_read_json_object(spec_path, "existing spec"), filled)
        if differences:
            raise _fail(
                f"{out} holds a search of another spec: {'; '.join(differences)}. "
                "Choose another --out, or remove that directory to start over."
            )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(spec_path, filled)

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
    with Progress(*columns, console=console, transient=True) as bar, _stop_on_interrupt() as stop_flag:
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
            raise _fail(str(error)) from None

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


def _read_genotype(path: Path) -> Genotype:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(f"genotype file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(f"genotype file {path} cannot be read: {error}") from None
    try:
        if text.lstrip().startswith("{"):
            return Genotype.from_json(text)
        return Genotype.from_darts(text.strip())
    except ValueError as error:
        raise _fail(f"invalid genotype in {path}: {error}") from None


def _parse_dataset_option(value: str) -> dict[str, Any]:
    if value.lstrip().startswith("{"):
        try:
            spec = json.loads(value)
        except json.JSONDecodeError as error:
            raise _fail(f"--dataset is not valid JSON: {error}") from None
        if not isinstance(spec, dict):
            raise _fail("--dataset must be a dataset name or a JSON object")
        return spec
    return {"name": value}


@app.command()
def train(
    genotype_file: Annotated[
        Path,
        typer.Argument(
            metavar="GENOTYPE",
            help="Genotype to retrain: genotype.json (JSON form) or genotype.txt (DARTS string form).",
        ),
    ],
    dataset: Annotated[
        str,
        typer.Option(
            help="Dataset: a built-in name (see `darts datasets`) or a JSON dataset spec such as "
            '\'{"name": "npz", "path": "data.npz"}\'.',
        ),
    ] = "digits",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    init_channels: Annotated[int, typer.Option(help="Width of the first cells.")] = 16,
    cells: Annotated[int, typer.Option(help="Number of cells of the network.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Initial SGD learning rate (cosine-annealed to 0).")] = 0.025,
    drop_path_prob: Annotated[float, typer.Option(help="Final drop-path probability (ramped from 0).")] = 0.2,
    auxiliary: Annotated[
        bool, typer.Option(help="Add the auxiliary head and its loss (weight 0.4).")
    ] = False,
    cutout: Annotated[bool, typer.Option(help="Cutout augmentation (half the image side).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, data order, drop-path and cutout.")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Directory for train.json. Default: the genotype file's directory."),
    ] = None,
) -> None:
    """Retrain a genotype from scratch and report its test accuracy (written to train.json)."""
    genotype = _read_genotype(genotype_file)
    dataset_spec = _parse_dataset_option(dataset)
    try:
        data = load_dataset(dataset_spec)
    except DatasetError as error:
        raise _fail(f"invalid --dataset: {error}") from None
    settings: _TrainSettings = {
        "epochs": epochs,
        "init_channels": init_channels,
        "cells": cells,
        "batch_size": batch_size,
        "lr": lr,
        "drop_path_prob": drop_path_prob,
        "auxiliary": auxiliary,
        "cutout": cutout,
        "seed": seed,
        "device": device,
    }
    console.print(f"training {genotype.to_darts()} on {data.name}", highlight=False, soft_wrap=True)
    with Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("training", total=epochs)

        def on_epoch(record: TrainEpoch) -> None:
            bar.console.print(
                f"epoch {record.epoch:>3}/{epochs}  train loss {record.train_loss:.4f} "
                f"acc {record.train_acc:.4f}  test loss {record.test_loss:.4f} acc {record.test_acc:.4f}  "
                f"{record.seconds:.1f} s",
                highlight=False,
                soft_wrap=True,
            )
            bar.update(task, completed=record.epoch)

        try:
            result = train_genotype(genotype, data, on_epoch=on_epoch, **settings)
        except ValueError as error:
            raise _fail(str(error)) from None

    out = out if out is not None else genotype_file.parent
    out.mkdir(parents=True, exist_ok=True)
    _write_json(
        out / TRAIN_RESULT_NAME,
        {"genotype": genotype.to_json(), "dataset": dataset_spec, "settings": settings, **result.to_dict()},
    )
    console.print(
        f"test accuracy {result.test_accuracy:.4f} ({result.parameters:,} parameters, "
        f"{result.seconds:.1f} s) -> {out / TRAIN_RESULT_NAME}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def datasets(
    url: remote.UrlOption = None,
    token: remote.TokenOption = None,
    as_json: remote.JsonOption = False,
) -> None:
    """List the built-in datasets and their parameters (usable as {"name": ..., parameter: value}),
    then the server's datasets (built in and uploaded) when logged in (`darts login`, --url)."""
    if as_json:
        found: dict[str, Any] = {"builtin": builtin_datasets()}
        remote.server_datasets(url, token, lambda _table, items: found.update(server=items))
        remote.print_json(found)
        return
    table = Table("name", "classes", "shape (C, H, W)", "samples", "parameters", "description")
    for item in builtin_datasets():
        parameters = ", ".join(f"{key}={value}" for key, value in item["parameters"].items())
        shape = item.get("shape")
        table.add_row(
            item["name"],
            str(item.get("num_classes", "")),
            "x".join(map(str, shape)) if shape else "",
            str(item.get("num_samples") or ""),
            parameters,
            item.get("description", ""),
        )
    console.print(table)
    remote.server_datasets(url, token, lambda server_table, _items: console.print(server_table))


remote.register(app)
remote_studies.register(app)
remote_trainings.register(app)


def main() -> None:
    """Entry point of the ``darts`` console script."""
    app()


if __name__ == "__main__":
    main()

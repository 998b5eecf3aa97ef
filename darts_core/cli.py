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
scratch with :func:`~darts_core.training_job.run_training_job` (options, or ``--spec FILE``: the training
spec of ``POST /trainings``) and writes ``train.json`` (validation and test accuracy, parameters,
multiply-adds, history) and ``model.safetensors`` (:func:`darts_core.load_trained`); it checkpoints every
epoch into ``--checkpoint-dir`` (default ``OUT/train-checkpoint``) and resumes from there when run again.
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
from typing import Annotated, Any

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
from darts_core.training_config import TrainingJobConfig
from darts_core.training_job import TrainEpoch, TrainingStopped, run_training_job
from darts_core.weights import save_trained

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
WEIGHTS_NAME = "model.safetensors"
TRAIN_CHECKPOINT_NAME = "train-checkpoint"


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


#: The train command's options: where each lands in the training spec, and its default without --spec.
_TRAIN_OPTIONS: dict[str, tuple[str, str, object]] = {
    "epochs": ("training", "epochs", 30),
    "init_channels": ("network", "init_channels", 16),
    "cells": ("network", "cells", 5),
    "batch_size": ("training", "batch_size", 64),
    "lr": ("training", "lr", 0.025),
    "drop_path_prob": ("network", "drop_path_prob", 0.2),
    "auxiliary": ("network", "auxiliary", False),
    "cutout": ("training", "cutout", False),
    "seed": ("training", "seed", 0),
}


def _training_spec(spec_file: Path | None, options: dict[str, Any]) -> dict[str, Any]:
    """The training spec of ``--spec`` (or of the option defaults), with the options given merged in.

    With ``--spec`` an option may repeat the spec's value but not contradict it (what ran must be what
    the spec file says); without it, options not given take the command's defaults.
    """
    if spec_file is None:
        spec: dict[str, Any] = {}
        for name, (section, key, default) in _TRAIN_OPTIONS.items():
            value = default if options[name] is None else options[name]
            spec.setdefault(section, {})[key] = value
        return spec
    spec = _read_json_object(spec_file, "spec file")
    if "search_id" in spec:
        raise _fail(f"{spec_file}: search_id needs the service (`darts trainings submit`); locally, "
                    "give the genotype file")  # fmt: skip
    try:
        filled = TrainingJobConfig.from_spec(spec).to_spec()
    except ValueError as error:
        raise _fail(f"invalid spec {spec_file}: {error}") from None
    for name, (section, key, _) in _TRAIN_OPTIONS.items():
        value = options[name]
        if value is not None and filled[section][key] != value:
            option = "--" + name.replace("_", "-")
            raise _fail(
                f"{option} {value!r} contradicts {spec_file}: {section}.{key} is {filled[section][key]!r} "
                "there; change the spec file or leave the option out"
            )
    return spec


def _format_train_epoch(record: TrainEpoch, epochs: int) -> str:
    valid = "" if record.valid_acc is None else f"valid acc {record.valid_acc:.4f}  "
    return (
        f"epoch {record.epoch:>3}/{epochs}  train loss {record.train_loss:.4f} acc {record.train_acc:.4f}  "
        f"{valid}test loss {record.test_loss:.4f} acc {record.test_acc:.4f}  {record.seconds:.1f} s"
    )


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
        str | None,
        typer.Option(
            help="Dataset: a built-in name (see `darts datasets`) or a JSON dataset spec such as "
            '\'{"name": "npz", "path": "data.npz"}\'. Default: the --spec file\'s dataset, else digits.',
        ),
    ] = None,
    spec_file: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            metavar="FILE",
            help='Training spec (JSON, the body of POST /trainings): {"network": {...}, "training": {...}, '
            '"dataset": ...}; missing fields take the spec defaults (10 epochs, valid_fraction 0.1, ...), '
            "not the options' defaults. The options below may repeat its values but not contradict them.",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default 30).")] = None,
    init_channels: Annotated[int | None, typer.Option(help="Width of the first cells (default 16).")] = None,
    cells: Annotated[int | None, typer.Option(help="Number of cells of the network (default 5).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 64).")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Initial SGD learning rate, cosine-annealed to 0 (default 0.025).")
    ] = None,
    drop_path_prob: Annotated[
        float | None, typer.Option(help="Final drop-path probability, ramped from 0 (default 0.2).")
    ] = None,
    auxiliary: Annotated[
        bool | None,
        typer.Option("--auxiliary/--no-auxiliary", help="Add the auxiliary head and its loss (weight 0.4)."),
    ] = None,
    cutout: Annotated[
        bool | None, typer.Option("--cutout/--no-cutout", help="Cutout augmentation (half the image side).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of initialisation, data order, drop-path, cutout (default 0).")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="auto (CUDA when available), cpu or cuda; overrides the spec's resources.device."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Directory for train.json and model.safetensors. Default: the genotype file's directory.",
        ),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint directory (written after every epoch; a directory that holds a checkpoint of "
            "the same training is resumed). Default: OUT/train-checkpoint.",
        ),
    ] = None,
) -> None:
    """Retrain a genotype from scratch; report its validation and test accuracy (train.json) and save the
    trained network (model.safetensors, loadable with darts_core.load_trained)."""
    genotype = _read_genotype(genotype_file)
    options = {
        "epochs": epochs,
        "init_channels": init_channels,
        "cells": cells,
        "batch_size": batch_size,
        "lr": lr,
        "drop_path_prob": drop_path_prob,
        "auxiliary": auxiliary,
        "cutout": cutout,
        "seed": seed,
    }
    spec = _training_spec(spec_file, options)
    if "genotype" in spec and spec["genotype"] != genotype.to_json():
        raise _fail(f"{spec_file} names another genotype than {genotype_file}")
    if dataset is not None:
        dataset_spec = _parse_dataset_option(dataset)
        if "dataset" in spec and spec["dataset"] != dataset_spec:
            raise _fail(f"--dataset contradicts the dataset of {spec_file}")
    else:
        dataset_spec = spec.get("dataset", {"name": "digits"})
        if isinstance(dataset_spec, str):
            dataset_spec = {"name": dataset_spec}
    try:
        config = TrainingJobConfig.from_spec(spec)
    except ValueError as error:
        raise _fail(f"invalid training option: {error}") from None
    try:
        data = load_dataset(dataset_spec)
    except DatasetError as error:
        raise _fail(f"invalid --dataset: {error}") from None
    out = out if out is not None else genotype_file.parent
    checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else out / TRAIN_CHECKPOINT_NAME
    total = config.training.epochs
    resuming = has_checkpoint(checkpoint_dir)
    console.print(
        f"{'resuming' if resuming else 'training'} {genotype.to_darts()} on {data.name} "
        f"(checkpoints: {checkpoint_dir})",
        highlight=False,
        soft_wrap=True,
    )
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar, _stop_on_interrupt() as stop_flag:
        task = bar.add_task("training", total=total)

        def on_epoch(record: TrainEpoch) -> None:
            bar.console.print(_format_train_epoch(record, total), highlight=False, soft_wrap=True)
            bar.update(task, completed=record.epoch)

        try:
            result = run_training_job(
                genotype,
                config,
                data,
                checkpoint_dir=checkpoint_dir,
                on_epoch=on_epoch,
                should_stop=lambda: stop_flag[0],
                device=device,
            )
        except TrainingStopped as stopped:
            errors.print(
                f"stopped after epoch {stopped.epochs_completed}/{total}; run the same command again to "
                f"resume ({checkpoint_dir})",
                highlight=False,
            )
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
        except ValueError as error:
            raise _fail(str(error)) from None

    out.mkdir(parents=True, exist_ok=True)
    save_trained(result.network, out / WEIGHTS_NAME)
    filled = config.to_spec()
    settings = {name: filled[section][key] for name, (section, key, _) in _TRAIN_OPTIONS.items()}
    settings["device"] = device or filled["resources"]["device"]
    _write_json(
        out / TRAIN_RESULT_NAME,
        {
            "genotype": genotype.to_json(),
            "dataset": dataset_spec,
            "settings": settings,
            "spec": filled,
            **result.to_dict(),
        },
    )
    valid = "" if result.valid_accuracy is None else f"valid accuracy {result.valid_accuracy:.4f}, "
    console.print(
        f"{valid}test accuracy {result.test_accuracy:.4f} ({result.parameters:,} parameters, "
        f"{result.multiply_adds:,} multiply-adds, {result.seconds:.1f} s) -> {out / TRAIN_RESULT_NAME}, "
        f"{out / WEIGHTS_NAME}",
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

"""``darts train GENOTYPE``: retrain a genotype from scratch on this machine.

The genotype is ``genotype.json`` or ``genotype.txt``; the settings are the training spec of
``POST /trainings`` (``--spec FILE``) with the options merged in, and the spec's defaults where neither
says. It writes ``train.json`` (validation and test accuracy, parameters, multiply-adds, history) and
``model.safetensors`` (:func:`darts_core.load_trained`; with ``--export onnx|torchscript`` also
``model.onnx`` / ``model.pt``, which run without darts_core), checkpoints every epoch into
``--checkpoint-dir`` (default ``OUT/train-checkpoint``) and resumes from there when run again.

torch is imported when the command runs, not when the module is.
"""

from __future__ import annotations

import json
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
)
from darts_core.spec.artifacts import WEIGHTS_FILE, ExportFormat
from darts_core.spec.genotype import Genotype
from darts_core.spec.training_spec import TrainingJobConfig

if TYPE_CHECKING:
    from darts_core.train.records import TrainEpoch

__all__ = ["train"]

TRAIN_RESULT_NAME = "train.json"
TRAIN_CHECKPOINT_NAME = "train-checkpoint"


def _read_genotype(path: Path) -> Genotype:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(f"genotype file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"genotype file {path} cannot be read: {error}") from None
    try:
        if text.lstrip().startswith("{"):
            return Genotype.from_json(text)
        return Genotype.from_darts(text.strip())
    except ValueError as error:
        raise fail(f"invalid genotype in {path}: {error}") from None


def _parse_dataset_option(value: str) -> dict[str, Any]:
    if value.lstrip().startswith("{"):
        try:
            spec = json.loads(value)
        except json.JSONDecodeError as error:
            raise fail(f"--dataset is not valid JSON: {error}") from None
        if not isinstance(spec, dict):
            raise fail("--dataset must be a dataset name or a JSON object")
        return spec
    return {"name": value}


#: The train command's options and where each lands in the training spec. An option not given takes
#: the spec's value (``--spec``), else the spec's default: one set of defaults for the command and the API.
_TRAIN_OPTIONS: dict[str, tuple[str, str]] = {
    "epochs": ("training", "epochs"),
    "init_channels": ("network", "init_channels"),
    "cells": ("network", "cells"),
    "batch_size": ("training", "batch_size"),
    "lr": ("training", "lr"),
    "drop_path_prob": ("network", "drop_path_prob"),
    "auxiliary": ("network", "auxiliary"),
    "cutout": ("training", "cutout"),
    "seed": ("training", "seed"),
}
_SPEC_DEFAULTS = TrainingJobConfig().to_spec()


def _help(option: str, text: str) -> str:
    """``--help`` of ``option``: ``text`` and the training spec's default."""
    section, key = _TRAIN_OPTIONS[option]
    return f"{text} (default {_SPEC_DEFAULTS[section][key]})."


def _training_spec(spec_file: Path | None, options: dict[str, Any]) -> dict[str, Any]:
    """The training spec of ``--spec`` (or an empty one), with the options given merged in.

    With ``--spec`` an option may repeat the spec's value but not contradict it (what ran must be what
    the spec file says); without it, options not given take the spec's defaults.
    """
    if spec_file is None:
        spec: dict[str, Any] = {}
        for name, (section, key) in _TRAIN_OPTIONS.items():
            if options[name] is not None:
                spec.setdefault(section, {})[key] = options[name]
        return spec
    spec = read_json_object(spec_file, "spec file")
    if "search_id" in spec:
        raise fail(f"{spec_file}: search_id needs the service (`darts trainings submit`); locally, "
                    "give the genotype file")  # fmt: skip
    try:
        filled = TrainingJobConfig.from_spec(spec).to_spec()
    except ValueError as error:
        raise fail(f"invalid spec {spec_file}: {error}") from None
    for name, (section, key) in _TRAIN_OPTIONS.items():
        value = options[name]
        if value is not None and filled[section][key] != value:
            option = "--" + name.replace("_", "-")
            raise fail(
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
            '"dataset": ...}; missing fields take the spec defaults, as the options below do. The options '
            "may repeat its values but not contradict them.",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help=_help("epochs", "Training epochs"))] = None,
    init_channels: Annotated[
        int | None, typer.Option(help=_help("init_channels", "Width of the first cells"))
    ] = None,
    cells: Annotated[int | None, typer.Option(help=_help("cells", "Number of cells of the network"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_help("batch_size", "Batch size"))] = None,
    lr: Annotated[
        float | None, typer.Option(help=_help("lr", "Initial SGD learning rate, cosine-annealed"))
    ] = None,
    drop_path_prob: Annotated[
        float | None, typer.Option(help=_help("drop_path_prob", "Final drop-path probability, ramped from 0"))
    ] = None,
    auxiliary: Annotated[
        bool | None,
        typer.Option(
            "--auxiliary/--no-auxiliary", help=_help("auxiliary", "Add the auxiliary head and its loss")
        ),
    ] = None,
    cutout: Annotated[
        bool | None,
        typer.Option("--cutout/--no-cutout", help=_help("cutout", "Cutout augmentation (half the image)")),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=_help("seed", "Seed of initialisation, data order, drop-path, cutout"))
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
    export: Annotated[
        ExportFormat | None,
        typer.Option(
            help="Also write the trained network as model.onnx (onnxruntime) or model.pt (TorchScript, "
            "torch.jit.load): files that run without darts_core and carry the input shape, the "
            "normalisation and the genotype.",
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
        raise fail(f"{spec_file} names another genotype than {genotype_file}")
    if dataset is not None:
        dataset_spec = _parse_dataset_option(dataset)
        if "dataset" in spec and spec["dataset"] != dataset_spec:
            raise fail(f"--dataset contradicts the dataset of {spec_file}")
    else:
        dataset_spec = spec.get("dataset", {"name": "digits"})
        if isinstance(dataset_spec, str):
            dataset_spec = {"name": dataset_spec}
    try:
        config = TrainingJobConfig.from_spec(spec)
    except ValueError as error:
        raise fail(f"invalid training option: {error}") from None
    from darts_core.checkpoint import has_checkpoint
    from darts_core.data.registry import DatasetError, load_dataset
    from darts_core.train.export import export_trained
    from darts_core.train.job import run_training_job
    from darts_core.train.records import TrainingStopped
    from darts_core.train.weights import save_trained

    try:
        data = load_dataset(dataset_spec)
    except DatasetError as error:
        raise fail(f"invalid --dataset: {error}") from None
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
    with Progress(*columns, console=console, transient=True) as bar, stop_on_interrupt() as stop_flag:
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
            raise fail(str(error)) from None

    out.mkdir(parents=True, exist_ok=True)
    save_trained(result.network, out / WEIGHTS_FILE, **data.weights_metadata())
    written = [out / WEIGHTS_FILE]
    if export is not None:
        written.append(out / export.file_name)
        export_trained(out / WEIGHTS_FILE, written[-1], format=export.value)
    filled = config.to_spec()
    settings = {name: filled[section][key] for name, (section, key) in _TRAIN_OPTIONS.items()}
    settings["device"] = device or filled["resources"]["device"]
    write_json(
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
        f"{', '.join(str(path) for path in written)}",
        highlight=False,
        soft_wrap=True,
    )

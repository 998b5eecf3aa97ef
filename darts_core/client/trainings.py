"""``darts trainings ...``: retrain a genotype on a darts-service server, follow it, fetch its weights.

``submit`` takes a training spec file (what ``POST /trainings`` takes) and/or the options that fill its
genotype source (``--search-id`` with ``--epoch``, or ``--genotype``); ``watch`` follows the training's
event stream; ``weights`` downloads the trained network (safetensors, ``darts_core.load_trained``
reads it); ``export`` downloads it as ONNX or TorchScript, files that run without darts_core.
Same login, errors and exit codes as the search commands (:mod:`darts_core.client.searches`).
Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from darts_core.client.http import TERMINAL_STATUSES, DartsClient, ServiceError
from darts_core.client.searches import (
    EXIT_SERVER_ERROR,
    JsonOption,
    TokenOption,
    UrlOption,
    _client,
    _percent,
    console,
    errors,
    print_json,
    read_spec_file,
)
from darts_core.spec.artifacts import WEIGHTS_FILE, ExportFormat

app = typer.Typer(
    name="trainings",
    help="Retrain genotypes on the server: submit, watch, weights, export, list, status, cancel.",
    no_args_is_help=True,
)

_EPOCH_COLUMNS = ("train_acc", "valid_acc", "test_acc", "test_loss", "lr", "seconds")


def _training_table(trainings: list[dict[str, Any]]) -> Table:
    table = Table("id", "name", "status", "epoch", "test acc", "valid acc", "parameters")
    for training in trainings:
        metrics = training.get("metrics") or {}
        test = training.get("test_accuracy")
        table.add_row(
            training["id"],
            training["name"],
            training["status"],
            f"{training['epoch']}/{training['epochs']}",
            _percent(test if test is not None else metrics.get("test_acc")),
            _percent(training.get("valid_accuracy") or metrics.get("valid_acc")),
            "" if training.get("parameters") is None else f"{training['parameters']:,}",
        )
    return table


def _epoch_table(record: dict[str, Any]) -> Table:
    table = Table("epoch", *(name.replace("_", " ") for name in _EPOCH_COLUMNS), box=None)
    table.add_row(
        str(record["epoch"]),
        *("" if record.get(key) is None else f"{record[key]:.4g}" for key in _EPOCH_COLUMNS),
    )
    return table


def _read_spec(spec_file: Path | None) -> dict[str, Any]:
    return {} if spec_file is None else read_spec_file(spec_file)


@app.command()
def submit(
    spec_file: Annotated[
        Path | None, typer.Argument(help="A training spec (JSON), as POST /trainings takes it.")
    ] = None,
    search_id: Annotated[
        str | None, typer.Option("--search-id", help="Train this search's genotype (its final one).")
    ] = None,
    epoch: Annotated[
        int | None, typer.Option(min=1, help="With --search-id: the genotype of this epoch.")
    ] = None,
    genotype: Annotated[
        str | None,
        typer.Option(help="The genotype: its JSON form or the DARTS string (or a file holding either)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="A built-in dataset name (default: the search's).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="training.epochs")] = None,
    watch_it: Annotated[bool, typer.Option("--watch", help="Then follow it as `watch` does.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a training; prints its id (and follows it with --watch)."""
    spec = _read_spec(spec_file)
    if search_id is not None:
        spec["search_id"] = search_id
    if epoch is not None:
        spec["epoch"] = epoch
    if genotype is not None:
        text = Path(genotype).read_text(encoding="utf-8") if Path(genotype).is_file() else genotype
        try:
            spec["genotype"] = json.loads(text)
        except ValueError:
            spec["genotype"] = text.strip()  # the DARTS string form
    if dataset is not None:
        spec["dataset"] = {"name": dataset}
    if epochs is not None:
        spec["training"] = {**spec.get("training", {}), "epochs": epochs}
    with _client(url, token) as client:
        training = client.submit_training(spec)
        if as_json and not watch_it:
            print_json(training)
            return
        console.print(
            f"submitted {training['id']} ({training['name']}, {training['epochs']} epochs)", highlight=False
        )
        if watch_it:
            _watch(client, training["id"], as_json)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only trainings with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many, newest first.")] = 50,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List trainings, newest first."""
    with _client(url, token) as client:
        page = client.list_trainings(status=status, limit=limit)
    if as_json:
        print_json(page)
    else:
        console.print(_training_table(page["items"]))


@app.command()
def status(
    training_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one training: status, progress, the last epoch's metrics, final figures, error."""
    with _client(url, token) as client:
        training = client.get_training(training_id)
    if as_json:
        print_json(training)
        return
    console.print(_training_table([training]))
    if training.get("metrics"):
        console.print(_epoch_table(training["metrics"]))
    if training.get("error"):
        console.print(f"[red]error:[/] {training['error']}", highlight=False)


@app.command()
def cancel(
    training_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a training (a running one stops at its next batch)."""
    with _client(url, token) as client:
        training = client.cancel_training(training_id)
    console.print(f"{training['id']}: {training['status']}", highlight=False)


@app.command()
def weights(
    training_id: Annotated[str, typer.Argument(metavar="ID")],
    out: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the safetensors file.")
    ] = Path(WEIGHTS_FILE),
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Download a succeeded training's weights (safetensors; `darts_core.load_trained(path)` loads them)."""
    with _client(url, token) as client:
        size = client.download_weights(training_id, out)
    errors.print(f"wrote {out} ({size} bytes)", highlight=False)




#: ``--format`` of the export commands (``darts trainings export``, ``darts export``).
ExportFormatOption = Annotated[
    ExportFormat, typer.Option("--format", "-f", help="onnx (onnxruntime) or torchscript (torch.jit.load).")
]


@app.command()
def export(
    training_id: Annotated[str, typer.Argument(metavar="ID")],
    format: ExportFormatOption = ExportFormat.onnx,
    out: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the file. Default: model.onnx or model.pt."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Download a succeeded training's network as ONNX or TorchScript: a file that runs without darts_core
    and carries its input shape, class names, normalisation (mean, std) and genotype as metadata."""
    path = out if out is not None else Path(format.file_name)
    with _client(url, token) as client:
        size = client.download_model(training_id, format.value, path)
    errors.print(f"wrote {path} ({size} bytes)", highlight=False)


def _watch(client: DartsClient, training_id: str, as_json: bool) -> None:
    training = client.get_training(training_id)
    final = training["status"]
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs")
    )
    task = progress.add_task(final, total=training["epochs"], completed=training["epoch"])

    def reconnecting(last_event_id: str | None, reason: str) -> None:
        errors.print(f"{reason}; reconnecting after event {last_event_id or '(none)'} ...", highlight=False)

    events = client.follow(training_id, on_reconnect=reconnecting, collection="trainings")
    if as_json:
        for event in events:
            console.out(
                json.dumps({"event": event.event, "id": event.id, "data": event.json()}), highlight=False
            )
            if event.event == "status":
                final = event.json()["status"]
    else:
        with Live(progress, console=console, refresh_per_second=4):
            for event in events:
                data = event.json()
                if event.event == "epoch":
                    progress.update(task, completed=data["epoch"])
                    progress.console.print(_epoch_table(data))
                elif event.event == "status":
                    progress.update(task, description=data["status"])
                    final = data["status"]
        done = client.get_training(training_id)
        console.print(_training_table([done]))
        if done.get("error"):
            console.print(f"[red]error:[/] {done['error']}", highlight=False)
    if final not in TERMINAL_STATUSES:
        raise ServiceError(f"the event stream of {training_id} ended while it was {final}")
    if final != "succeeded":
        raise typer.Exit(code=EXIT_SERVER_ERROR)


@app.command()
def watch(
    training_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a training live until it ends; exits 0 when it succeeded, 1 otherwise.

    --json prints one event per line."""
    with _client(url, token) as client:
        _watch(client, training_id, as_json)


def register(parent: typer.Typer) -> None:
    """Add `darts trainings ...` to the `darts` app."""
    parent.add_typer(app, rich_help_panel="Server")

"""``darts studies submit|watch|list|status|cancel``: the DARTS paper's protocol on a darts-service server.

A study runs one search per seed, a short training of each found genotype, keeps the best by
validation accuracy and trains it fully (``POST /studies``). Same conventions as
:mod:`darts_core.client.searches`:
server errors exit 1, bad input 2, ``--json`` for scripts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from darts_core.client.http import TERMINAL_STATUSES, DartsClient, ServiceError
from darts_core.client.searches import (
    EXIT_SERVER_ERROR,
    JsonOption,
    TokenOption,
    UrlOption,
    _age,
    _client,
    _duration,
    _percent,
    console,
    darts_string,
    errors,
    print_json,
    read_spec_file,
)
from darts_core.client.sse import ServerSentEvent, iter_sse

app = typer.Typer(
    help="Studies: a search per seed, a selection training of each genotype, the final training of the "
    "best (the DARTS paper's protocol as one job).",
    no_args_is_help=True,
)


def _study_table(studies: list[dict[str, Any]]) -> Table:
    table = Table("id", "name", "status", "stage", "chosen seed", "age")
    for study in studies:
        chosen = study.get("chosen_seed")
        table.add_row(study["id"], study["name"], study["status"], study["stage"],
                      "" if chosen is None else str(chosen), _age(study.get("created_at")))
    return table


def _arm_names(study: dict[str, Any]) -> dict[str, str]:
    """Arm -> the method's name ("random" for the baseline), from the comparison."""
    return {row["arm"]: row["method"] for row in study.get("comparison") or []}


def _stages_table(study: dict[str, Any]) -> Table:
    names = _arm_names(study)
    table = Table("stage", "method", "seed", "id", "status", "epoch", "valid acc", "test acc", "error")
    stages = study["stages"]
    rows = [("search", child) for child in stages["search"]]
    rows += [("selection", child) for child in stages["selection"]]
    if stages.get("final"):
        rows.append(("final", stages["final"]))
    for stage, child in rows:
        arm = child.get("arm", "0")
        table.add_row(stage, names.get(arm, arm), str(child["seed"]), child["id"], child["status"],
                      f"{child['epoch']}/{child['epochs']}", _percent(child.get("valid_acc")),
                      _percent(child.get("test_accuracy")), child.get("error") or "")
    return table


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return _percent(mean) + ("" if std is None else f" ± {100 * std:.2f}")


def _count(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _comparison_table(study: dict[str, Any]) -> Table:
    """Per method (and the random baseline): what its selection trainings reached over the seeds."""
    table = Table("method", "runs", "succeeded", "valid acc (mean ± std)", "best", "test acc",
                  "parameters", "multiply-adds", "search time", title="comparison")
    for row in study["comparison"]:
        table.add_row(
            row["method"] + (" (chosen)" if row["chosen"] else ""), str(row["runs"]), str(row["succeeded"]),
            _mean_std(row["valid_acc_mean"], row["valid_acc_std"]), _percent(row["best_valid_acc"]),
            _percent(row["test_accuracy_mean"]), _count(row["parameters_mean"]),
            _count(row["multiply_adds_mean"]),
            "" if row["search_seconds_mean"] is None else _duration(row["search_seconds_mean"]),
        )
    return table


def _print_study(study: dict[str, Any]) -> None:
    console.print(_study_table([study]))
    console.print(_stages_table(study))
    if study.get("comparison"):
        console.print(_comparison_table(study))
    if study.get("selection"):
        line = ", ".join(
            f"{'' if entry.get('arm', '0') == '0' else entry.get('method', '') + ' '}"
            f"{'genotype' if entry.get('arm') == 'random' else 'seed'} {entry['seed']}: "
            f"{_percent(entry.get('valid_acc')) or entry['status']}"
            + (" (chosen)" if entry["chosen"] else "")
            for entry in study["selection"]
        )
        console.print(f"selection: {line}", highlight=False)
    if study.get("chosen_genotype"):
        genotype = darts_string(study["chosen_genotype"])
        console.print(f"chosen genotype: {genotype}", highlight=False, soft_wrap=True)
    console.print(
        f"wall time {_duration(study.get('wall_seconds'))}, its parts one after another "
        f"{_duration(study.get('child_seconds'))}",
        highlight=False,
    )
    if study.get("error"):
        console.print(f"[red]error:[/] {study['error']}", highlight=False)


@app.command()
def submit(
    spec_file: Annotated[
        Path, typer.Argument(help="A study (JSON) as POST /studies takes it: search, seeds, selection, final")
    ],
    watch_it: Annotated[
        bool, typer.Option("--watch", help="Then follow it as `darts studies watch` does.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a study; prints its id (and follows it with --watch)."""
    spec = read_spec_file(spec_file)
    with _client(url, token) as client:
        study = client.submit_study(spec)
        if as_json and not watch_it:
            print_json(study)
            return
        console.print(f"submitted study {study['id']} ({study['name']}, seeds {study['spec']['seeds']})",
                      highlight=False)
        if watch_it:
            _watch(client, study["id"], as_json)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only studies with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many, newest first.")] = 50,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List studies, newest first."""
    with _client(url, token) as client:
        page = client.list_studies(status=status, limit=limit)
    if as_json:
        print_json(page)
    else:
        console.print(_study_table(page["items"]))


@app.command()
def status(
    study_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one study: its stages and children, the selection side by side, the chosen genotype."""
    with _client(url, token) as client:
        study = client.get_study(study_id)
    if as_json:
        print_json(study)
    else:
        _print_study(study)


@app.command()
def cancel(
    study_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a study and every search and training it runs."""
    with _client(url, token) as client:
        study = client.cancel_study(study_id)
    console.print(f"{study['id']}: {study['status']}", highlight=False)


def _events(client: DartsClient, study_id: str, reconnect_for: float = 120.0) -> Iterator[ServerSentEvent]:
    """The study's events until its terminal `study` event, reconnecting when the stream drops (the
    stream starts over: `study` and `child` events are states, repeated ones change nothing)."""
    path = f"/studies/{study_id}/events"
    failing_since: float | None = None
    while True:
        try:
            with client._http.stream("GET", path, timeout=httpx.Timeout(10.0, read=60.0)) as response:
                client._raise_for_status("GET", path, response)
                for event in iter_sse(response.iter_lines()):
                    failing_since = None
                    yield event
                    if event.event == "study" and event.json().get("status") in TERMINAL_STATUSES:
                        return
        except httpx.TransportError as error:
            reason = type(error).__name__
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since > reconnect_for:
            raise ServiceError(f"the event stream of study {study_id} could not be resumed ({reason})")
        errors.print(f"stream lost ({reason}); reconnecting ...", highlight=False)
        time.sleep(1.0)


def _watch(client: DartsClient, study_id: str, as_json: bool) -> None:
    final = None
    for event in _events(client, study_id):
        data = event.json()
        if as_json:
            console.out(json.dumps({"event": event.event, "data": data}), highlight=False)
        elif event.event == "study":
            console.print(f"study {data['status']}, stage {data['stage']}"
                          + (f": {data['error']}" if data.get("error") else ""), highlight=False)
        elif event.event == "child":
            line = f"  {data['kind']} {data['id']} (seed {data['seed']}): {data['status']}"
            console.print(line, highlight=False)
        elif event.event == "epoch":
            record = data["record"]
            acc = record.get("valid_acc")
            console.print(f"  {data['stage']} seed {data['seed']} epoch {record['epoch']}"
                          + ("" if acc is None else f" valid acc {_percent(acc)}"), highlight=False)
        if event.event == "study":
            final = data["status"]
    if not as_json:
        _print_study(client.get_study(study_id))
    if final != "succeeded":
        raise typer.Exit(code=EXIT_SERVER_ERROR)


@app.command()
def watch(
    study_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a study live (stages, children, epochs) until it ends; exits 0 if it succeeded, 1 otherwise."""
    with _client(url, token) as client:
        _watch(client, study_id, as_json)


def register(parent: typer.Typer) -> None:
    """Add `darts studies ...` to the `darts` app."""
    parent.add_typer(app, name="studies", rich_help_panel="Server")

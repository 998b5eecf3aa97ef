"""The ``darts`` commands that talk to a darts-service server (next to the local ``search``/``train``).

``darts login URL`` stores the server and key; every other command reads them, with ``--url``/
``DARTS_URL`` and ``--token``/``DARTS_TOKEN`` overriding. A server error prints one line and exits 1;
bad input (no login, an unreadable spec) exits 2. Read commands take ``--json`` for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from darts_core.client.http import (
    TERMINAL_STATUSES,
    DartsClient,
    Login,
    ServiceError,
    load_login,
    save_login,
    split_login_url,
)
from darts_core.data.archive import folder_files, tar_size
from darts_core.spec.genotype import Genotype

console = Console()
errors = Console(stderr=True)

EXIT_SERVER_ERROR = 1
EXIT_BAD_INPUT = 2

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="DARTS_URL", help="Server URL (overrides the stored login).", show_default=False
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="DARTS_TOKEN", help="API key (overrides the stored login).", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of a table.")]


def _exit(message: str, code: int) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code=code)


def read_spec_file(spec_file: Path) -> dict[str, Any]:
    """The JSON object in `spec_file`; exits with EXIT_BAD_INPUT naming the file when it is not one."""
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise _exit(f"spec file {spec_file}: {error}", EXIT_BAD_INPUT) from None
    if not isinstance(spec, dict):
        raise _exit(f"spec file {spec_file}: must hold a JSON object", EXIT_BAD_INPUT)
    return spec


def _login(url: str | None, token: str | None) -> Login:
    try:
        login = load_login(url, token)
    except ValueError as error:
        raise _exit(f"--url: {error}", EXIT_BAD_INPUT) from None
    if login is None:
        raise _exit("not logged in: run `darts login URL` or pass --url / set DARTS_URL", EXIT_BAD_INPUT)
    return login


@contextmanager
def _client(url: str | None, token: str | None) -> Iterator[DartsClient]:
    """A client of the chosen server; a ServiceError inside the block exits 1 with its one line."""
    login = _login(url, token)
    try:
        with DartsClient(login.url, login.token) as client:
            yield client
    except ServiceError as error:
        raise _exit(str(error), EXIT_SERVER_ERROR) from None


def print_json(data: Any) -> None:
    """JSON for scripts: plain text, never wrapped or coloured."""
    typer.echo(json.dumps(data, indent=2))


def _age(stamp: str | None) -> str:
    if not stamp:
        return ""
    moment = datetime.fromisoformat(stamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _duration((datetime.now(UTC) - moment).total_seconds())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def darts_string(genotype: dict[str, Any]) -> str:
    """A genotype (REST JSON form) in the DARTS reference code's string form."""
    return Genotype.from_json(genotype).to_darts()


# ---------------------------------------------------------------------------------------------- login


def login(
    url: Annotated[
        str,
        typer.Argument(
            help="The server, e.g. http://127.0.0.1:8000 or the login URL "
            "`darts-service up` prints (…/?token=KEY)."
        ),
    ],
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="DARTS_TOKEN", help="API key; asked for when not given.", show_default=False
        ),
    ] = None,
) -> None:
    """Store the server URL and API key in the user's config directory, after checking them."""
    try:
        base, url_token = split_login_url(url)
    except ValueError as error:
        raise _exit(f"URL: {error}", EXIT_BAD_INPUT) from None
    key = token or url_token or typer.prompt("API key", hide_input=True)
    with _client(base, key) as client:
        client.list_searches(limit=1)  # 401 here means a wrong key: nothing is stored
    path = save_login(Login(base, key))
    console.print(f"logged in to {base} (saved in {path})", highlight=False)


# ---------------------------------------------------------------------------------------------- searches


def _search_table(searches: list[dict[str, Any]]) -> Table:
    table = Table("id", "name", "method", "status", "epoch", "best valid acc", "age", "duration")
    for search in searches:
        started, finished = search.get("started_at"), search.get("finished_at")
        duration = None
        if started:
            end = datetime.fromisoformat(finished) if finished else datetime.now(UTC)
            begin = datetime.fromisoformat(started)
            if begin.tzinfo is None:
                begin = begin.replace(tzinfo=UTC)
            if end.tzinfo is None:
                end = end.replace(tzinfo=UTC)
            duration = (end - begin).total_seconds()
        table.add_row(
            search["id"],
            search["name"],
            search["spec"].get("method", {}).get("name", "darts"),
            search["status"],
            f"{search['epoch']}/{search['epochs']}",
            _percent(search.get("best_valid_acc")),
            _age(search.get("created_at")),
            _duration(duration),
        )
    return table


def submit(
    spec_file: Annotated[Path, typer.Argument(help="A search spec (JSON), as POST /searches takes it.")],
    watch_it: Annotated[bool, typer.Option("--watch", help="Then follow it as `darts watch` does.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a search; prints its id (and follows it with --watch)."""
    spec = read_spec_file(spec_file)
    with _client(url, token) as client:
        search = client.submit(spec)
        if as_json and not watch_it:
            print_json(search)
            return
        console.print(
            f"submitted {search['id']} ({search['name']}, {search['epochs']} epochs)", highlight=False
        )
        if watch_it:
            _watch(client, search["id"], as_json)


def list_(
    status: Annotated[str | None, typer.Option(help="Only searches with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many, newest first.")] = 50,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List searches, newest first."""
    with _client(url, token) as client:
        page = client.list_searches(status=status, limit=limit)
    if as_json:
        print_json(page)
    else:
        console.print(_search_table(page["items"]))


def status(
    search_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one search: status, progress, latest metrics, error."""
    with _client(url, token) as client:
        search = client.get_search(search_id)
    if as_json:
        print_json(search)
        return
    console.print(_search_table([search]))
    if search.get("metrics"):
        console.print(_metrics_table(search["metrics"]))
    if search.get("error"):
        console.print(f"[red]error:[/] {search['error']}", highlight=False)


def cancel(
    search_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a search (a running one stops at its next batch)."""
    with _client(url, token) as client:
        search = client.cancel(search_id)
    console.print(f"{search['id']}: {search['status']}", highlight=False)


def genotype(
    search_id: Annotated[str, typer.Argument(metavar="ID")],
    fmt: Annotated[
        str,
        typer.Option("--format", help="json, darts (the DARTS code's string form) or svg (the cells drawn)."),
    ] = "json",
    out: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")
    ] = None,
    epoch: Annotated[int | None, typer.Option(min=1, help="An earlier epoch's genotype.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """The genotype a search found (latest, or --epoch N)."""
    if fmt not in ("json", "darts", "svg"):
        raise _exit(f"--format must be json, darts or svg, not {fmt!r}", EXIT_BAD_INPUT)
    with _client(url, token) as client:
        if fmt == "svg":
            text = client.genotype_svg(search_id, epoch)
        else:
            found = client.genotype(search_id, epoch)
            text = json.dumps(found, indent=2) if fmt == "json" else darts_string(found)
    if out is None:
        console.out(text, highlight=False)
    else:
        out.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
        errors.print(f"wrote {out}", highlight=False)


# ---------------------------------------------------------------------------------------------- watch


def _metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table("train loss", "train acc", "valid loss", "valid acc", "lr", "seconds", box=None)
    table.add_row(
        *(
            "" if metrics.get(key) is None else f"{metrics[key]:.4g}"
            for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "seconds")
        )
    )
    return table


def _schedule_text(record: dict[str, Any]) -> str:
    """The method's schedule in an epoch, e.g. ``gdas: tau 7.525``."""
    values = ", ".join(f"{name} {value:.4g}" for name, value in record["schedule"].items())
    return f"{record.get('method') or 'method'}: {values}"


def _genotype_text(genotype: dict[str, Any]) -> Text:
    lines = []
    for cell in ("normal", "reduce"):
        edges = genotype.get(cell, [])
        nodes = [edges[i : i + 2] for i in range(0, len(edges), 2)]
        lines.append(f"{cell} cell -> concat {genotype.get(f'{cell}_concat')}")
        for index, pair in enumerate(nodes):
            lines.append(f"  node {index}: " + " + ".join(f"{op}({source})" for op, source in pair))
    return Text("\n".join(lines))


class _WatchView:
    """What `darts watch` shows: status line, progress bar, the latest metrics, the current genotype."""

    def __init__(self, search: dict[str, Any]) -> None:
        self.search = search
        self.metrics: dict[str, Any] | None = search.get("metrics")
        self.genotype: dict[str, Any] | None = search.get("genotype")
        self.note = ""
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs")
        )
        self.task = self.progress.add_task(
            search["status"], total=search["epochs"], completed=search["epoch"]
        )

    def epoch(self, record: dict[str, Any]) -> None:
        self.metrics, self.genotype = record, record.get("genotype")
        self.progress.update(self.task, completed=record["epoch"])

    def status(self, status: str, error: str | None) -> None:
        self.search = self.search | {"status": status, "error": error}
        self.progress.update(self.task, description=status)

    def __rich__(self) -> Group:
        parts: list[Any] = [Text(f"{self.search['name']} ({self.search['id']})", style="bold"), self.progress]
        if self.metrics:
            parts.append(_metrics_table(self.metrics))
            if self.metrics.get("schedule"):
                parts.append(Text(_schedule_text(self.metrics), style="dim"))
        if self.genotype:
            parts.append(_genotype_text(self.genotype))
        if self.search.get("error"):
            parts.append(Text(f"error: {self.search['error']}", style="red"))
        if self.note:
            parts.append(Text(self.note, style="yellow"))
        return Group(*parts)


def _watch(client: DartsClient, search_id: str, as_json: bool) -> None:
    search = client.get_search(search_id)
    final = search["status"]
    view = _WatchView(search)

    def reconnecting(last_event_id: str | None, reason: str) -> None:
        view.note = f"{reason}; reconnecting after event {last_event_id or '(none)'} ..."
        if as_json:
            errors.print(view.note, highlight=False)

    events = client.follow(search_id, on_reconnect=reconnecting)
    if as_json:
        for event in events:
            console.out(
                json.dumps({"event": event.event, "id": event.id, "data": event.json()}), highlight=False
            )
            if event.event == "status":
                final = event.json()["status"]
    else:
        with Live(view, console=console, refresh_per_second=4):
            for event in events:
                view.note = ""
                data = event.json()
                if event.event == "epoch":
                    view.epoch(data)
                elif event.event == "status":
                    view.status(data["status"], data.get("error"))
                    final = data["status"]
        if view.genotype:
            console.print(darts_string(view.genotype), highlight=False, soft_wrap=True)
    if final not in TERMINAL_STATUSES:
        raise ServiceError(f"the event stream of {search_id} ended while it was {final}")
    if final != "succeeded":
        raise typer.Exit(code=EXIT_SERVER_ERROR)


def watch(
    search_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a search live (its event stream, resumed with Last-Event-ID when it drops) until it ends.

    Exits 0 when it succeeded, 1 when it failed or was cancelled. --json prints one event per line.
    """
    with _client(url, token) as client:
        _watch(client, search_id, as_json)


# ---------------------------------------------------------------------------------------------- datasets


def upload(
    file: Annotated[
        Path,
        typer.Argument(
            help="An .npz with x (N x C x H x W or N x H x W x C) and y (N labels); a .zip, .tar, .tar.gz "
            "or .tgz of an image folder (<class>/<image>); or such a folder itself, sent as a tar packed "
            "on the fly."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: the file name).")] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Folders and archives: resize every image to this side.", min=4)
    ] = None,
    channels: Annotated[
        int | None, typer.Option(help="Folders and archives: 1 (grey) or 3 (RGB); default from the images.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a dataset, with a progress bar; prints its id (and, for images, their classes)."""
    if not file.is_file() and not file.is_dir():
        raise _exit(f"FILE: {file} is not a file or folder", EXIT_BAD_INPUT)
    if channels not in (None, 1, 3):
        raise _exit(f"--channels: must be 1 or 3, got {channels}", EXIT_BAD_INPUT)
    if file.is_dir():
        files, left_out = folder_files(file)
        if left_out:
            message = f"left out {len(left_out)} links or special files, e.g. {left_out[0]}"
            errors.print(message, highlight=False)
        total = tar_size(files, file)
    else:
        total = file.stat().st_size
    with _client(url, token) as client:
        progress = Progress(
            TextColumn(file.name),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=errors,
            transient=True,
        )
        with progress:
            task = progress.add_task("upload", total=total)
            dataset = client.upload(
                file,
                name=name,
                progress=lambda sent: progress.advance(task, sent),
                image_size=image_size,
                channels=channels,
            )
    if as_json:
        print_json(dataset)
        return
    console.print(
        f"uploaded {dataset['id']} ({dataset['name']}: {dataset.get('num_samples')} samples, "
        f"{dataset.get('num_classes')} classes)",
        highlight=False,
    )
    if dataset.get("class_counts"):
        counts = ", ".join(f"{label} {count}" for label, count in dataset["class_counts"].items())
        console.print(f"classes: {counts}", highlight=False)
    skipped = dataset.get("skipped") or {}
    if skipped.get("count"):
        console.print(f"skipped {skipped['count']} files: {'; '.join(skipped['first'])}", highlight=False)


def class_names_cell(names: list[str] | None, width: int = 40) -> str:
    """Class names for a table cell, shortened to about `width` characters."""
    text = ", ".join(names or [])
    return text if len(text) <= width else text[: width - 1] + "…"


def server_datasets_table(client: DartsClient) -> tuple[Table, list[dict[str, Any]]]:
    """The server's datasets (built in and uploaded) as a table, and as returned."""
    items = client.datasets()
    table = Table(
        "id",
        "kind",
        "name",
        "samples",
        "classes",
        "class names",
        "shape (C, H, W)",
        title=f"datasets on {client.url}",
    )
    for item in items:
        shape = [item.get("channels"), item.get("height"), item.get("width")]
        table.add_row(
            item["id"],
            item["kind"],
            item["name"],
            str(item.get("num_samples") or ""),
            str(item.get("num_classes") or ""),
            class_names_cell(item.get("class_names")),
            "x".join(map(str, shape)) if all(shape) else "",
        )
    return table, items


def server_datasets(
    url: str | None, token: str | None, show: Callable[[Table, list[dict[str, Any]]], None]
) -> None:
    """`show` the server's datasets when a login (stored or given) exists; nothing otherwise."""
    try:
        login = load_login(url, token)
    except ValueError as error:
        raise _exit(f"--url: {error}", EXIT_BAD_INPUT) from None
    if login is None:
        return
    with _client(login.url, login.token) as client:
        show(*server_datasets_table(client))


def register(app: typer.Typer) -> None:
    """Add the remote commands to the `darts` app."""
    app.command(rich_help_panel="Server")(login)
    app.command(rich_help_panel="Server")(submit)
    app.command("list", rich_help_panel="Server")(list_)
    app.command(rich_help_panel="Server")(status)
    app.command(rich_help_panel="Server")(watch)
    app.command(rich_help_panel="Server")(genotype)
    app.command(rich_help_panel="Server")(cancel)
    app.command(rich_help_panel="Server")(upload)

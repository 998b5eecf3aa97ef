"""``darts datasets``: the built-in datasets, then the server's when logged in. Imports no torch."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from darts_core.cli.common import console
from darts_core.client import searches as remote
from darts_core.spec.dataset_spec import builtin_datasets

__all__ = ["datasets"]


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

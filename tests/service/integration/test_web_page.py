"""The web page in a real browser (Chromium through Playwright) against a real running app and worker.

Log in (the `?token=` URL, then a pasted key), upload a dataset, start a search from the form (a bad
value first: its 422 message appears next to its field), watch it reach `succeeded` with the charts,
the alpha heatmaps and the cell diagram (no two label boxes intersect, as laid out in the browser),
copy the DARTS string, see the collapse metrics (charts and a table per epoch) and an early-stopped
search's reason, cancel another search; no console errors along the way. Screenshots of the
list, the form and a finished search at 1280 and 390 px wide go to `out/screenshots/`.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.settings import Settings
from darts_core.spec.genotype import Genotype

from .conftest import REPO_ROOT, WorkerProcess, tiny_spec, wait_until
from .live_server import LiveServer, client_key

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SHOTS = REPO_ROOT / "out" / "screenshots"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
TINY_PRIMITIVES = {"none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"}
TINY = {  # the form's fields for TINY_SPEC (tests/service/integration/conftest.py)
    "f-search_space-internal_nodes": "2",
    "f-network-cells": "3",
    "f-network-init_channels": "4",
    "f-network-stem_multiplier": "1",
    "f-training-epochs": "3",
    "f-training-batch_size": "16",
}


@pytest.fixture(scope="module")
def live(
    stack_settings: Settings, worker: WorkerProcess, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    worker.ensure_running()
    # A key of its own per module: other browser modules reuse this fixture, and key names are unique.
    name = "browser-" + request.module.__name__.rsplit(".", 1)[-1].replace("_", "-")
    server = LiveServer(stack_settings, client_key(request, name)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from tests.conftest import CHROMIUM

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        yield chromium
        chromium.close()


class Console:
    """Console errors and uncaught exceptions of a page; `expect(text)` allows one expected error."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.expected: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def expect(self, text: str) -> None:
        self.expected.append(text)

    def unexpected(self) -> list[str]:
        """Errors beyond the expected ones (an expected error that did not occur is not a failure)."""
        left = list(self.expected)
        found = []
        for error in self.errors:
            match = next((text for text in left if text in error), None)
            if match is None:
                found.append(error)
            else:
                left.remove(match)
        return found


@pytest.fixture
def page(browser: Any, live: LiveServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.console = Console(page)
    page.on("dialog", lambda dialog: dialog.accept())  # the cancel/delete confirmations
    yield page
    unexpected = page.console.unexpected()
    context.close()
    assert not unexpected, f"console errors: {unexpected}"


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def api(live: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {live.key}"}, timeout=30)


def log_in(page: Any, live: LiveServer) -> None:
    page.goto(f"/?token={live.key}")
    page.locator("#view-list").wait_for(state="visible")


def screenshot(page: Any, name: str) -> None:
    """Full-page screenshots of the current view at both widths (phone last, desktop restored)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(300)  # a layout pass after the resize
        page.screenshot(path=str(SHOTS / f"{name}-{label}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def npz_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2
    x = (rng.random((64, 1, 8, 8)) * 60 + y[:, None, None, None] * 120).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    path = tmp_path / "stripes.npz"
    path.write_bytes(buffer.getvalue())
    return path


def intersect(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_login_from_the_url_sends_the_key_and_drops_it_from_the_address_bar(
    page: Any, live: LiveServer
) -> None:
    sent: list[str | None] = []
    page.on("request", lambda r: "/searches" in r.url and sent.append(r.headers.get("authorization")))
    response = page.goto(f"/?token={live.key}")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy  # no inline script runs
    page.locator("#view-list").wait_for(state="visible")
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('darts-service.key')") == live.key
    wait_until(lambda: sent, 10, "a request to /searches")
    assert set(sent) == {f"Bearer {live.key}"}

    page.click("#logout")
    page.locator("#view-login").wait_for(state="visible")
    assert page.evaluate("localStorage.getItem('darts-service.key')") is None
    page.fill("#login-key", live.key)
    page.click("#login-form button[type=submit]")
    page.locator("#view-list").wait_for(state="visible")
    assert page.evaluate("localStorage.getItem('darts-service.key')") == live.key


def test_upload_then_search_from_the_form_to_succeeded_with_charts_heatmaps_and_cells(
    page: Any, live: LiveServer, tmp_path: Path
) -> None:
    log_in(page, live)
    page.click("#nav a[href='#/new']")
    page.locator("#f-training-epochs").wait_for()

    # Upload: the progress bar fills and the new dataset becomes the form's choice.
    page.click("#upload-box summary")
    page.set_input_files("#upload-file", str(npz_file(tmp_path)))
    page.fill("#upload-name", "stripes")
    page.click("#upload-button")
    page.locator("#upload-status", has_text="uploaded stripes").wait_for()
    assert page.eval_on_selector("#upload-progress", "p => p.value") == 1
    chosen = page.eval_on_selector("#f-dataset", "s => s.selectedOptions[0].textContent")
    assert chosen.startswith("stripes (64 samples, 2 classes)")

    for field_id, value in TINY.items():
        page.fill(f"#{field_id}", value)
    # The primitives are one checkbox per operation the API's schema names, all ticked by default.
    boxes = page.locator("#f-search_space-primitives input[type=checkbox]")
    assert boxes.count() >= 8 and all(boxes.nth(i).is_checked() for i in range(boxes.count()))
    for i in range(boxes.count()):
        box = boxes.nth(i)
        box.set_checked(box.get_attribute("value") in TINY_PRIMITIVES)
    page.select_option("#f-resources-device", "cpu")
    page.fill("#f-name", "from the browser")
    # The method: every one the schema names, DARTS by default; this search runs beta-DARTS.
    methods = page.eval_on_selector_all("#f-method-name option", "options => options.map(o => o.value)")
    assert {"darts", "gdas", "beta_darts", "sdarts_rs", "sdarts_adv"} <= set(methods)
    assert page.input_value("#f-method-name") == "darts"
    page.select_option("#f-method-name", "beta_darts")

    # A bad value: the API's 422 message appears next to that field, and nothing is created. Chromium
    # logs each 422 answer as a resource error: the submit's, and the admission estimate's of the same
    # form (at most one per change, debounced).
    page.fill("#f-training-epochs", "0")
    page.console.expect("422")
    page.console.expect("422")
    page.click("#submit-search")
    error = page.locator(".field:has(#f-training-epochs) .field-error")
    error.wait_for()
    assert "greater than or equal to 1" in error.inner_text()
    assert page.get_attribute("#f-training-epochs", "aria-invalid") == "true"
    assert "#/new" in page.url
    screenshot(page, "form")

    page.fill("#f-training-epochs", "3")
    page.click("#submit-search")
    page.wait_for_url("**/#/search/*")
    search_id = page.url.rsplit("/", 1)[1]
    page.locator("#search-status", has_text="succeeded").wait_for(timeout=240_000)
    with api(live) as client:
        search = client.get(f"/searches/{search_id}").json()
    assert search["name"] == "from the browser" and search["spec"]["training"]["epochs"] == 3
    assert search["spec"]["dataset"]["id"]
    assert set(search["spec"]["search_space"]["primitives"]) == TINY_PRIMITIVES
    assert search["spec"]["method"]["name"] == "beta_darts"
    expect(page.locator("#search-method")).to_have_text("method beta_darts")

    # Three charts, each with its series drawn over the three epochs.
    expect(page.locator("#charts svg.chart")).to_have_count(3)
    assert page.locator("#charts svg.chart path.series").count() == 5  # loss x2, accuracy x2, lr
    # Two heatmaps (normal, reduction): 5 edges x 4 operations each for 2 internal nodes.
    expect(page.locator("#heatmaps svg.heatmap")).to_have_count(2)
    assert page.locator("#heatmaps svg.heatmap").first.locator("rect").count() == 5 * 4
    # The slider goes back in time: the heatmap then shows epoch 1.
    page.locator("#epoch-slider").fill("1")
    page.locator("#heatmaps .chart-title", has_text="epoch 1").first.wait_for()

    # The cells: drawn, every label clear of every other label and of every node, as laid out here
    # (all boxes measured at once, on the drawing of one epoch).
    page.locator("#epoch-slider").fill("3")
    page.locator("#cells-svg[data-epoch='3']").wait_for()
    boxes = page.eval_on_selector(
        "#cells-svg",
        """svg => {
          const rect = (e) => {
            const r = e.getBoundingClientRect();
            return {x: r.x, y: r.y, w: r.width, h: r.height};
          };
          const all = (selector) => [...svg.querySelectorAll(selector)].map(rect);
          return {
            labels: all("rect.edge-label"), texts: all(".edge-label-group text"), nodes: all("rect.node"),
          };
        }""",
    )
    labels, label_texts, nodes = boxes["labels"], boxes["texts"], boxes["nodes"]
    assert len(labels) == 8 and len(nodes) == 10
    for first, second in itertools.combinations(labels, 2):
        assert not intersect(first, second), (first, second)
    for label, node in itertools.product(labels + label_texts, nodes):
        assert not intersect(label, node), (label, node)
    for text, box in zip(label_texts, labels, strict=True):  # each text inside its own box
        assert box["x"] <= text["x"] and text["x"] + text["w"] <= box["x"] + box["w"] + 0.5, (text, box)

    # The collapse metrics: a table row per epoch with the API's figures, and their charts; not stopped.
    with api(live) as client:
        epochs = client.get(f"/searches/{search_id}/epochs").json()["items"]
    expect(page.locator("#collapse-table tbody tr")).to_have_count(3)
    for record in epochs:
        row = page.locator(f"#collapse-table tbody tr[data-epoch='{record['epoch']}']")
        expect(row.locator("td[data-key='skip_connections']")).to_have_text(str(record["skip_connections"]))
        expect(row.locator("td[data-key='parameter_free_ops']")).to_have_text(str(record["parameter_free_ops"]))
        expect(row.locator("td[data-key='alpha_entropy']")).to_have_text(f"{record['alpha_entropy']:.4f}")
        expect(row.locator("td[data-key='hessian_eigenvalue']")).to_have_text("—")  # hessian_every unset
    # counts, entropy and beta-DARTS's lambda schedule; no eigenvalue (hessian_every unset)
    expect(page.locator("#collapse-charts svg.chart")).to_have_count(3)
    schedule_chart = page.locator("#collapse-charts svg.chart[aria-label='beta_darts schedule: lambda']")
    expect(schedule_chart).to_have_count(1)
    assert page.locator("#search-stopped").is_hidden()

    # The DARTS string is on view as text and copies to the clipboard.
    darts = Genotype.from_json(search["genotype"]).to_darts()
    assert page.inner_text("#genotype-darts") == darts
    page.click("#copy-darts")
    page.locator("#copy-status", has_text="copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == darts
    screenshot(page, "search-succeeded")


def test_upload_an_archive_of_an_image_folder_shows_its_classes(
    page: Any, live: LiveServer, tmp_path: Path
) -> None:
    import zipfile

    from PIL import Image

    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for label, shade in (("cat", 40), ("dog", 200)):
            for index in range(2):
                image = io.BytesIO()
                Image.new("L", (8, 8), color=shade + index).save(image, "PNG")
                out.writestr(f"pets/{label}/{index}.png", image.getvalue())
        out.writestr("pets/dog/readme.txt", "not an image")
    log_in(page, live)
    page.click("#nav a[href='#/new']")
    page.locator("#f-training-epochs").wait_for()
    assert ".zip" in page.get_attribute("#upload-file", "accept")
    page.click("#upload-box summary")
    page.set_input_files("#upload-file", str(archive))
    page.click("#upload-button")
    status = page.locator("#upload-status", has_text="uploaded pets")
    status.wait_for()
    assert "(cat 2, dog 2; 1 files skipped: dog/readme.txt" in status.text_content()


def test_a_search_stopped_early_shows_the_reason_and_the_eigenvalues(page: Any, live: LiveServer) -> None:
    # Only skip connections to choose from: the first epoch's normal cell holds 4, so DARTS+ with
    # max_skip_connections 1 stops the search after it; the eigenvalue is measured every epoch.
    spec = tiny_spec(epochs=4, name="collapsing")
    spec["search_space"] = {**spec["search_space"], "primitives": ["none", "skip_connect"]}
    spec["training"] = {
        **spec["training"], "early_stop": "darts_plus", "max_skip_connections": 1, "hessian_every": 1
    }
    with api(live) as client:
        created = client.post("/searches", json=spec)
        assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    log_in(page, live)
    page.goto(f"/#/search/{search_id}")
    page.locator("#search-status", has_text="succeeded").wait_for(timeout=240_000)
    with api(live) as client:
        search = client.get(f"/searches/{search_id}").json()
        epochs = client.get(f"/searches/{search_id}/epochs").json()["items"]
    assert search["stopped_early"] and search["stop_reason"] and len(epochs) < 4
    expect(page.locator("#search-stopped")).to_have_text(f"Stopped early: {search['stop_reason']}")
    expect(page.locator("#collapse-table tbody tr")).to_have_count(len(epochs))
    last = page.locator(f"#collapse-table tbody tr[data-epoch='{epochs[-1]['epoch']}']")
    expect(last.locator("td[data-key='skip_connections']")).to_have_text("4")
    shown = float(last.locator("td[data-key='hessian_eigenvalue']").inner_text())
    assert shown == pytest.approx(epochs[-1]["hessian_eigenvalue"], rel=1e-3)
    expect(page.locator("#collapse-charts svg.chart")).to_have_count(3)  # counts, entropy, eigenvalue
    screenshot(page, "search-stopped-early")


def test_cancel_a_running_search_from_its_page(page: Any, live: LiveServer) -> None:
    with api(live) as client:
        created = client.post("/searches", json=tiny_spec(epochs=300, name="to cancel"))
        assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    log_in(page, live)
    page.goto(f"/#/search/{search_id}")
    page.locator("#search-status", has_text="running").wait_for(timeout=120_000)
    page.locator("#search-live", has_text="live").wait_for()
    page.click("#cancel-search")
    page.locator("#search-status", has_text="cancelled").wait_for(timeout=120_000)
    assert page.locator("#cancel-search").is_hidden()
    assert page.locator("#delete-search").is_visible()


def test_the_list_shows_progress_filters_by_status_and_opens_a_search(page: Any, live: LiveServer) -> None:
    log_in(page, live)
    rows = page.locator("#searches tbody tr")
    rows.first.wait_for()
    names = page.locator("#searches tbody td.name").all_inner_texts()
    assert "from the browser" in names and "to cancel" in names
    assert page.locator("#searches tbody progress").count() == rows.count()
    screenshot(page, "list")

    page.select_option("#status-filter", "cancelled")
    wait_until(
        lambda: set(page.locator("#searches tbody .badge").all_inner_texts()) == {"cancelled"},
        30,
        "the list to show only cancelled searches",
        interval=0.2,
    )
    page.select_option("#status-filter", "")
    page.click("#searches tbody a:text('from the browser')")
    page.locator("#search-status", has_text="succeeded").wait_for()
    page.locator("#genotype-darts").wait_for()


def test_retrain_a_succeeded_search_and_follow_the_training_to_its_weights(
    page: Any, live: LiveServer
) -> None:
    with api(live) as client:
        created = client.post("/searches", json=tiny_spec(epochs=1, name="to retrain"))
        assert created.status_code == 201, created.text
        search_id = created.json()["id"]
        wait_until(
            lambda: client.get(f"/searches/{search_id}").json()["status"] == "succeeded",
            180, "the search to succeed", interval=0.2,
        )
    log_in(page, live)
    streams: list[str] = []
    page.on("request", lambda request: "/events" in request.url and streams.append(request.url))
    page.goto(f"/#/search/{search_id}")
    page.locator("#search-status", has_text="succeeded").wait_for()
    page.click("#retrain-search")
    page.locator("#view-training").wait_for(state="visible")
    page.locator("#training-source", has_text=f"search {search_id}").wait_for()
    page.locator("#training-status", has_text="succeeded").wait_for(timeout=240_000)
    # The page followed the training's event stream (it polls only when the stream cannot be read).
    training_id = page.evaluate("location.hash").split("/")[-1]
    assert any(url.endswith(f"/trainings/{training_id}/events") for url in streams), streams
    expect(page.locator("#training-live")).to_have_text("")  # ended: neither live nor polling
    expect(page.locator("#training-charts svg.chart")).to_have_count(2)
    expect(page.locator("[data-figure='Test accuracy']")).to_have_text(re.compile(r"%$"))
    with page.expect_download() as download:
        page.click("#download-weights")
    assert download.value.suggested_filename.endswith(".safetensors")
    with page.expect_download(timeout=120_000) as download:
        page.click("#download-onnx")  # built by the server now, in a process of its own
    assert download.value.suggested_filename.endswith(".onnx")
    import onnx

    model = onnx.load_model_from_string(download.value.path().read_bytes())
    assert {prop.key: prop.value for prop in model.metadata_props}["format"] == "darts_core.export"
    screenshot(page, "training")
    page.click("#nav a[data-view='trainings']")
    page.locator("#trainings tbody tr").first.wait_for()
    assert "to retrain training" in page.locator("#trainings tbody td.name").all_inner_texts()

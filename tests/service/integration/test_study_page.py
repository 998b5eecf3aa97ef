"""The study view in a real browser (Chromium through Playwright): a study of 2 seeds and a random
baseline of 1 genotype run by the worker, its stages with their children, the comparison table, the
selection side by side with the chosen line, and the seeds' search curves on one chart. Screenshots go
to `out/screenshots/` with the page's others."""

from __future__ import annotations

from typing import Any

import pytest

from .test_study_flow import SEARCH, TRAINING
from .test_web_page import api, browser, expect, live, log_in, page, screenshot  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_a_study_shows_its_stages_the_choice_and_the_seeds_curves(page: Any, live: Any) -> None:  # noqa: F811
    with api(live) as client:
        response = client.post("/studies", json={"name": "page study", "search": SEARCH, "seeds": [0, 1],
                                                 "selection": TRAINING, "random_baseline": 1})
        assert response.status_code == 201, response.text
        study_id = response.json()["id"]
    log_in(page, live)
    page.locator('#nav a[data-view="studies"]').click()
    page.locator(f'#studies tr[data-id="{study_id}"] a').click()
    page.locator("#view-study").wait_for(state="visible")
    expect(page.locator("#study-name")).to_have_text("page study")
    page.locator("#study-status", has_text="succeeded").wait_for(timeout=600_000)

    rows = page.locator("#study-children tbody tr")
    expect(rows).to_have_count(5)  # 2 searches, 3 selection trainings (no final asked for)
    stages = [rows.nth(i).locator("td").first.inner_text() for i in range(5)]
    assert stages == ["search", "search", "selection", "selection", "selection"]
    methods = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(5)]
    assert methods == ["darts", "darts", "darts", "darts", "random"]
    # The comparison: DARTS over its 2 seeds, the random genotype; one of them holds the choice.
    comparison = page.locator("#study-comparison tbody tr")
    expect(comparison).to_have_count(2)
    expect(comparison.nth(0).locator("td").nth(2)).to_have_text("2")  # succeeded
    expect(comparison.nth(0).locator("td").nth(3)).to_contain_text("±")  # mean ± std of 2 seeds
    expect(comparison.nth(1).locator("td").first).to_contain_text("random")
    expect(page.locator("#study-comparison tr.chosen")).to_have_count(1)
    expect(page.locator("#study-selection li")).to_have_count(3)
    expect(page.locator("#study-selection li.chosen")).to_have_count(1)
    expect(page.locator("#study-selection li.chosen")).to_contain_text("(chosen)")
    expect(page.locator("#study-genotype")).not_to_have_text("not chosen yet")
    # Both seeds' search curves on one chart.
    series = page.locator("#study-chart svg path.series")
    expect(series).to_have_count(2)
    assert {series.nth(i).get_attribute("data-series") for i in range(2)} == {"seed 0", "seed 1"}
    expect(page.locator("#study-times")).to_contain_text("one after another")
    screenshot(page, "study-succeeded")

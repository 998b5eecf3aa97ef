"""The drnas and darts_minus sections through the API: in the schema, bounded, their clashes a 422 naming
the fields, their defaults filled in."""

from __future__ import annotations

from fastapi.testclient import TestClient

BASE = {"dataset": {"name": "digits"}, "training": {"epochs": 1}}


def test_the_sections_are_in_the_schema_bounded_and_their_clashes_are_422_naming_the_fields(
    client: TestClient,
) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["DrnasMethod"]["properties"]["regularizer"]["enum"] == ["l2", "kl"]
    assert schemas["DartsMinusMethod"]["properties"]["beta_start"]["maximum"] == 1.0

    bounded = client.post("/searches", json={**BASE, "method": {"name": "darts_minus", "beta_end": 2}})
    assert bounded.status_code == 422
    assert bounded.json()["detail"][0]["loc"][-3:] == ["method", "darts_minus", "beta_end"]
    second = client.post(
        "/searches", json={**BASE, "method": {"name": "drnas"}, "training": {"epochs": 1, "order": "second"}}
    )
    assert second.status_code == 422
    assert "method.name 'drnas' does not compose with training.order ('second')" in second.text
    no_skip = client.post(
        "/searches",
        json={
            **BASE,
            "method": {"name": "darts_minus"},
            "search_space": {"primitives": ["none", "max_pool_3x3", "sep_conv_3x3"]},
        },
    )
    assert no_skip.status_code == 422 and "search_space.primitives" in no_skip.text
    assert client.get("/searches").json()["items"] == []

    drnas = client.post("/searches", json={**BASE, "method": {"name": "drnas", "regularizer": "kl"}})
    assert drnas.status_code == 201, drnas.text
    assert drnas.json()["spec"]["method"] == {"name": "drnas", "regularizer": "kl", "regularizer_scale": 1e-3}
    minus = client.post(
        "/searches", json={**BASE, "method": {"name": "darts_minus"}, "training": {"order": "second"}}
    )
    assert minus.status_code == 201, minus.text
    assert minus.json()["spec"]["method"] == {"name": "darts_minus", "beta_start": 1.0, "beta_end": 0.0}

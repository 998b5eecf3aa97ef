"""Search events: their schema (`schema`), the workers' side (`publisher`) and the ingester that
projects them onto SQL (`ingester`, through `app.lifecycle.projection`)."""

"""HTTP routes: thin handlers that parse the request, call app.services and shape the response."""

"""The `darts-service` subcommands beyond the stack's own (`app.cli` assembles them): `keys`."""

"""The one-machine stack of `darts-service up`: `local.LocalStack` starts and stops it; its parts are the
supervised children (`supervisor`, `processes`), the embedded servers (`embedded_redis`,
`embedded_postgres`), and `demo` drives a search through it (`make demo`)."""

"""Celery workers: the app (`worker.celery_app`) and the `run_search` task (`worker.tasks`).

Start one with `darts-service worker` (one process per device, `--pool=solo`).
"""

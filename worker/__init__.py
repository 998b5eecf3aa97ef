"""Celery workers: `python -m worker` (`worker.__main__`), the task (`worker.search_task`) and one run of a
search (`worker.search_run`). Start one per device; `darts-service worker` runs the same command.
"""

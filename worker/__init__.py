"""Celery workers: `python -m worker` (`worker.__main__`), the task (`worker.task`) and one run of a
search (`worker.run`). Start one per device; `darts-service worker` runs the same command.
"""

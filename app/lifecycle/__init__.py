"""The job lifecycle: the one place that decides a search's or a training's status and who may change it.

- `kinds`: the kinds of job (`SEARCH`, `TRAINING`): their tables and tasks; every function takes one.
- `status`: the statuses and the table of allowed transitions (`can_transition`).
- `lease`: the worker's lease with its fencing token, and the database clock.
- `start`: what a worker does with a task (run it, or why not).
- `projection`: worker events applied to rows (epochs, status changes), fenced by token.
- `cancel`: cancelling, at once or between two batches.
- `sweep`: expired leases handed back, lost task messages re-sent, warm shutdown's hand-back.
- `studies`: a study's stages, and the conditional updates that move it on (its orchestrator is
  `app.services.study_advance`).

The API (`app.services`), the ingester (`app.events.ingester`) and the worker (`worker.search_run`) call
these and hold no status logic of their own.
"""

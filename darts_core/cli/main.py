"""The ``darts`` command: run a DARTS search or retrain a genotype locally, without the service.

``darts search SPEC.json`` runs the search a REST ``spec`` describes and keeps everything in one output
directory; pointed at that directory again, it resumes from the last finished epoch
(:mod:`darts_core.cli.local_search`).

``darts train GENOTYPE --dataset NAME`` retrains a genotype (``genotype.json`` or ``genotype.txt``) from
scratch with :func:`~darts_core.train.job.run_training_job` (options, or ``--spec FILE``: the training
spec of ``POST /trainings``) and writes ``train.json`` (validation and test accuracy, parameters,
multiply-adds, history) and ``model.safetensors`` (:func:`darts_core.load_trained`); it checkpoints every
epoch into ``--checkpoint-dir`` (default ``OUT/train-checkpoint``) and resumes from there when run again.
``darts export WEIGHTS`` writes a weights file as ONNX or TorchScript (:mod:`darts_core.cli.local_export`).
``darts datasets`` lists the built-in datasets (and the server's, when logged in). Bad input exits with
status 2 and a message.

The commands that talk to a darts-service server (``login``, ``submit``, ``list``, ``status``,
``watch``, ``genotype``, ``cancel``, ``upload``) live in :mod:`darts_core.client.searches`; ``darts trainings
submit|watch|weights|list|status|cancel`` (retraining on the server) in :mod:`darts_core.client.trainings`;
``darts studies ...`` (a search per seed, selection and final trainings as one server job) in
:mod:`darts_core.client.studies`.
"""

from __future__ import annotations

import typer

from darts_core.cli.local_datasets import datasets
from darts_core.cli.local_export import export
from darts_core.cli.local_search import search
from darts_core.cli.local_train import train
from darts_core.client import searches, studies, trainings

__all__ = ["app", "main"]

app = typer.Typer(
    name="darts",
    help="Run DARTS architecture searches and retrain the genotypes they find, locally (no server), or\n"
    "on a darts-service server (`darts login URL`, then submit, list, watch, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Local commands first (torch is imported inside them), then the server's.
app.command()(search)
app.command()(train)
app.command()(datasets)
app.command()(export)
searches.register(app)
studies.register(app)
trainings.register(app)


def main() -> None:
    """Entry point of the ``darts`` console script."""
    app()


if __name__ == "__main__":
    main()

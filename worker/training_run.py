"""One execution of `run_training` for one training: `darts_core.train.job.run_training_job` inside
`worker.job_run`'s lease, heartbeat, outbox and end-of-run machinery (shared with searches).

The training checkpoints every epoch under `ARTIFACT_DIR/trainings/<id>/checkpoint` and a later attempt
resumes from there, bit-identically; once it succeeded, the trained network's weights are written to
`ARTIFACT_DIR/trainings/<id>/model.safetensors` before `succeeded` is reported with the final figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.events.schema import TrainingOutcome
from app.lifecycle.kinds import TRAINING
from app.models import Training
from app.storage import training_checkpoint_dir, training_weights_path
from worker.job_run import JobOutcome, JobRun, StopWatch, resolve_dataset


class TrainingRun(JobRun):
    """One execution of the task for one training (see `worker.job_run`)."""

    kind = TRAINING

    def run_job(self, watch: StopWatch, report: Callable[[dict[str, Any]], None]) -> JobOutcome | None:
        # Imported here, in the task, so a worker's parent process never loads torch or CUDA.
        from darts_core.checkpoint import read_history
        from darts_core.data.registry import load_dataset
        from darts_core.spec.genotype import Genotype
        from darts_core.spec.training_spec import TrainingJobConfig
        from darts_core.train.job import run_training_job
        from darts_core.train.records import TrainingStopped
        from darts_core.train.weights import save_trained

        with self.factory() as session:
            training = session.get(Training, self.job_id)
            if training is None:
                return None
            dataset_spec = resolve_dataset(self.settings, session, training)
            spec = dict(training.spec)
            genotype_json = training.genotype
        if genotype_json is None:
            raise ValueError("the training has no genotype")
        config = TrainingJobConfig.from_spec(spec)
        genotype = Genotype.from_json(genotype_json)
        dataset = load_dataset(dataset_spec)
        checkpoint_dir = training_checkpoint_dir(self.settings, self.job_id)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for record in read_history(checkpoint_dir):
            report(record)
        self.estimate_bytes = _training_estimate(config, dataset, genotype)
        try:
            result = run_training_job(
                genotype,
                config,
                dataset,
                checkpoint_dir=checkpoint_dir,
                on_epoch=lambda epoch: report(epoch.to_dict()),
                should_stop=watch,
            )
        except TrainingStopped:
            return JobOutcome(stopped=True, epochs_completed=len(read_history(checkpoint_dir)))
        # Atomic (a reader never sees half a file), and with the input shape and normalisation that
        # the exports (GET /trainings/{id}/model.onnx, model.pt) carry.
        save_trained(
            result.network, training_weights_path(self.settings, self.job_id), **dataset.weights_metadata()
        )
        outcome = TrainingOutcome(
            test_accuracy=result.test_accuracy,
            test_loss=result.test_loss,
            valid_accuracy=result.valid_accuracy,
            parameters=result.parameters,
            multiply_adds=result.multiply_adds,
        )
        return JobOutcome(stopped=False, epochs_completed=len(result.history), success={"outcome": outcome})


def _training_estimate(config: Any, dataset: Any, genotype: Any) -> int | None:
    """The admission estimate's peak bytes of the training on `dataset` (None when it cannot be made)."""
    from darts_core.estimate import estimate_training

    try:
        return estimate_training(
            config, tuple(dataset.x_train.shape[1:]), dataset.num_classes, genotype,
            num_samples=len(dataset.y_train),
        ).peak_bytes
    except Exception:  # noqa: BLE001 - only a failure's message uses it
        return None

"""Fine-tuning runs tracked in MLflow, the tool MONAI Label's own trainers log to: the run's settings,
its loss parts and validation Dice per step, the published checkpoint as an artifact, and the version
id it was kept as (medsam2/versions.py). TensorBoard stays as it was.

The default store is a SQLite database and an artifact folder in the model folder
(`model/mlflow.db`, `model/mlflow-artifacts/`; MLflow 3 refuses its old file store); `--conf mlflow_uri`
names a tracking server instead. Browse with `mlflow ui --backend-store-uri sqlite:///model/mlflow.db`.
A tracking failure is logged and never fails or changes the training run.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

EXPERIMENT = "medsam2 fine-tuning"


def default_uri(model_dir: Path) -> str:
    return f"sqlite:///{Path(model_dir).resolve() / 'mlflow.db'}"


class RunTracker:
    """`with RunTracker(uri, artifacts) as run: run.params(...); run.metrics(entry); run.published(...)`."""

    def __init__(self, uri: str, artifact_root: Path, run_name: str, experiment: str = EXPERIMENT):
        self.uri, self.artifact_root, self.run_name, self.experiment = uri, Path(artifact_root), run_name, experiment
        self.run_id: str | None = None
        self._mlflow = None

    def __enter__(self) -> "RunTracker":
        try:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            exp = mlflow.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else mlflow.create_experiment(
                self.experiment, artifact_location=self.artifact_root.resolve().as_uri())
            self.run_id = mlflow.start_run(experiment_id=exp_id, run_name=self.run_name).info.run_id
            self._mlflow = mlflow
        except Exception as e:  # noqa: BLE001 (tracking never fails training)
            logger.warning("MLflow tracking off for this run (%s): %s: %s", self.uri, type(e).__name__, e)
        return self

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self._mlflow is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            logger.warning("MLflow %s failed: %s: %s", what, type(e).__name__, e)

    def params(self, values: dict) -> None:
        shown = {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool, Path)) or v is None}
        self._call("params", lambda: self._mlflow.log_params({k: str(v) for k, v in shown.items()}))

    def metrics(self, entry: dict) -> None:
        """One log entry of the trainer (`step`, loss parts, `val_dice`, ...)."""
        step = int(entry.get("step", 0))
        values = {k: float(v) for k, v in entry.items() if k not in ("step", "elapsed_s")
                  and isinstance(v, (int, float)) and v == v}
        self._call("metrics", lambda: self._mlflow.log_metrics(values, step=step))

    def published(self, checkpoint: Path | None, version_id: str | None, outcome: dict) -> None:
        if checkpoint:
            self._call("artifact", lambda: self._mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint"))
        tags = {"version": version_id or "", **{k: str(v) for k, v in outcome.items() if v is not None}}
        self._call("tags", lambda: self._mlflow.set_tags(tags))

    def __exit__(self, kind, error, tb) -> None:
        status = "FINISHED" if kind is None else "FAILED"
        self._call("end", lambda: self._mlflow.end_run(status=status))

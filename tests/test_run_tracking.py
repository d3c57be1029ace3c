"""Fine-tuning runs in MLflow (medsam2/training/tracking.py): what a run logs, and a store that cannot be
reached never failing the training."""

from medsam2.training.tracking import RunTracker, default_uri


def test_a_run_logs_its_settings_steps_checkpoint_and_version(tmp_path):
    import mlflow

    checkpoint = tmp_path / "finetuned.pt"
    checkpoint.write_bytes(b"weights")
    with RunTracker(default_uri(tmp_path), tmp_path / "artifacts", "medsam2 test") as run:
        run.params({"max_steps": 3, "lr": None, "out_checkpoint": checkpoint, "nested": {"x": 1}})
        for step, loss in ((1, 0.9), (2, 0.7), (3, 0.5)):
            run.metrics({"step": step, "loss": loss, "elapsed_s": 1.0})
        run.metrics({"step": 3, "val_dice": float("nan")})  # not measured: not logged
        run.published(checkpoint, "20261205T000000Z-abcdef12", {"best_val_dice": 0.8, "not_promoted": None})
    client = mlflow.MlflowClient(tracking_uri=default_uri(tmp_path))
    data = client.get_run(run.run_id).data
    assert data.params == {"max_steps": "3", "lr": "None", "out_checkpoint": str(checkpoint)}
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [0.9, 0.7, 0.5]
    assert "val_dice" not in data.metrics and data.tags["version"] == "20261205T000000Z-abcdef12"
    assert [a.path for a in client.list_artifacts(run.run_id, "checkpoint")] == ["checkpoint/finetuned.pt"]


def test_a_tracking_store_that_cannot_be_used_leaves_the_run_alone(tmp_path, caplog):
    with RunTracker("postgresql://127.0.0.1:1/nothing", tmp_path / "artifacts", "x") as run:
        run.params({"a": 1})
        run.metrics({"step": 1, "loss": 0.5})
    assert run.run_id is None and "MLflow tracking off" in caplog.text

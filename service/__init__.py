"""The controller: job specs, the job store, the meta-training loop, checkpoints, MLflow, CLI."""

"""The pretraining loop and what it needs: config, schedule, checkpoints, DDP, run log, CLI."""

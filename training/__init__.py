"""Fine-tuning and model versions (see DESIGN.md); `training.train_default` builds the bundled model."""

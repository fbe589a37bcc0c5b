"""Fine-tuning on reviewed data and model versions (see DESIGN.md).

`training.finetune` reads the reviewed samples and runs the job of `training.job` (prepare, chunks,
finish) with the settings of `training.config`, deciding from validation by the rules of
`training.choices`; `training.registry` keeps the versions. Also the
star check, the hybrid-training experiment (`training.converge`), backups, and the bundled model's
recipe (`training.train_default`).
"""

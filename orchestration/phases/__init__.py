"""The sweep's phases, each a unit with a JSON result recorded in `sweep.json` (see orchestration.driver).

    references/real        ground truth + real held-out rows (shared by every family)
    sd-lora/vae            (--tune-vae) the base's VAE tuned at the data's resolution; the family then uses it
    <family>/reference     the family's untrained row (sd-lora: the base without LoRA)
    <family>/grid          the study's grid (or Optuna) as a Ray Tune experiment
    <family>/final         the best configuration retrained, evaluated once, registered once
    <family>/cfg           the guidance-scale sweep and its Pareto plot
    <family>/samplers      (--sampler-phase) the final model under every sampler x step count

Each phase is a module here (references, grid, final, guidance = the CFG sweep, samplers); `tune` runs a
phase's trials as a Ray Tune experiment and `nested` opens the nested MLflow run of a phase.
"""

"""Studies beside the main one (dvc.yaml): Hydra sweeps (`sweep`), CMR's ablations, the implementation's sanity
check, the hyperparameter search and the pretrained-LM study. Each reuses the study's stage
functions; none is a stage of dvc.yaml."""

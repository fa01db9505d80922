"""The study's configuration, a leaf package (nothing of the pipeline's working packages, no torch):
`schema` (every key, its type and default), `load` (compose conf/, load params.yaml, validate), `checks`
(cross-field checks) and what a group's keys imply (`data`, `train`, `evaluate`). A memory's own config
and checks live in its module (pipeline/models/<name>.py); here `models.<variant>` is a mapping with a
`name`, typed by pipeline.models.registry."""

from pipeline.config.load import (CONF_DIR, PARAMS_FILE, REPO_ROOT, as_plain, compose, load_params, to_params_yaml,
                                  typed, validate)

__all__ = ["CONF_DIR", "PARAMS_FILE", "REPO_ROOT", "as_plain", "compose", "load_params", "to_params_yaml", "typed",
           "validate"]

"""Hydra imports every module under the `hydra_plugins` namespace when it starts composing (plugin discovery).
This one puts the study's schema (pipeline/config/schema.py) and each memory's own config
(pipeline/models/registry.py) into Hydra's ConfigStore, so conf/ composes the same in every process that composes
it: `python -m pipeline.compose`, the sweeps, and DVC's own for `dvc exp run -S`."""

from hydra.core.config_store import ConfigStore

from pipeline.config.schema import register
from pipeline.models import registry

register(ConfigStore.instance())
registry.register(ConfigStore.instance())

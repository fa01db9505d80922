"""Hydra imports every module under the `hydra_plugins` namespace when it starts composing (plugin discovery).
This one puts the study's schema (pipeline/schema.py) into Hydra's ConfigStore, so conf/ composes the same in
every process that composes it: `python -m pipeline.compose`, the sweeps, and DVC's own for `dvc exp run -S`."""

from hydra.core.config_store import ConfigStore

from pipeline.schema import register

register(ConfigStore.instance())

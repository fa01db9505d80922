"""Weights & Biases runs for pipeline stages.

The mode is decided before `wandb.init`: offline unless the config or the WANDB_MODE env var says
otherwise. An online run that cannot reach the server within logger.wandb.init_timeout seconds (or
has no API key) logs offline instead, with one warning: it never blocks a stage for minutes. Each stage's run
lives under that stage's own output folder so a DVC stage owns its wandb files, and every run is
finished even when the stage fails (otherwise the next Hydra multirun job logs into it).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.config.access import cfg_get as _get
from pipeline.errors import ConfigError
from pipeline.config.checks import WANDB_MODES


def wandb_mode(cfg: Any) -> str:
    """The mode a run will use: 'disabled' if logger.wandb.enabled is false, else env WANDB_MODE if
    set, else logger.wandb.mode (default 'offline')."""
    wb = _get(_get(cfg, "logger"), "wandb")
    if wb is not None and not bool(_get(wb, "enabled", True)):
        return "disabled"
    env = os.environ.get("WANDB_MODE")
    if env:
        mode, source = env.strip().lower(), "env WANDB_MODE"
        if mode == "dryrun":
            mode = "offline"
    else:
        mode, source = str(_get(wb, "mode", "offline") or "offline"), "logger.wandb.mode"
    if mode not in WANDB_MODES:
        raise ConfigError(f"{source}={mode!r} is not allowed; allowed: {', '.join(WANDB_MODES)}")
    return mode


def run_tags(cfg: Any, job_type: str, variant: Optional[str] = None, seed: Optional[int] = None) -> list[str]:
    """logger.wandb.tags, then what the run is: its profile, stage, variant and seed (W&B filters on tags)."""
    wb = _get(_get(cfg, "logger"), "wandb")
    tags = [str(t) for t in (_get(wb, "tags") or [])]
    tags += [f"profile:{_get(cfg, 'profile_name') or 'none'}", job_type]
    if variant is not None:
        tags.append(f"variant:{variant}")
    if seed is not None:
        tags.append(f"seed:{int(seed)}")
    return list(dict.fromkeys(tags))


def start_wandb(cfg: Any, job_type: str, name: str, run_dir: str | os.PathLike,
                extra_config: Optional[dict] = None, *, variant: Optional[str] = None, seed: Optional[int] = None):
    """Start a wandb run for one stage, or return None when wandb is disabled.

    group = logger.wandb.group or the profile name (one study, or one sweep); job_type = the stage; tags
    (run_tags) and config name the variant and seed, so a dashboard groups and filters runs by them;
    files go to <run_dir>/wandb, without wandb's `latest-run`/`debug*.log` symlinks: a run killed between
    making a symlink and its target leaves it dangling inside a DVC output, and `dvc repro` then refuses the
    stage (it hashes the persisted output before resuming it).
    """
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    import wandb  # lazy: importing wandb costs seconds

    wb = _get(_get(cfg, "logger"), "wandb")
    # absolute: a wandb service started by another process (its address is inherited through the environment)
    # resolves a relative dir against its own working directory, and wrote runs into that other checkout
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    group = _get(wb, "group") or _get(cfg, "profile_name") or None
    tags = run_tags(cfg, job_type, variant, seed)
    config = dict(extra_config or {})
    if variant is not None:
        config.setdefault("variant", variant)
    if seed is not None:
        config.setdefault("seed", int(seed))
    timeout = float(_get(wb, "init_timeout", 10.0) or 10.0)
    kwargs = dict(
        project=str(_get(wb, "project", "cmr-repro") or "cmr-repro"),
        entity=_get(wb, "entity"),
        group=str(group) if group else None,
        job_type=job_type,
        name=name,
        tags=tags,
        config=config,
        dir=str(run_dir),  # wandb writes <dir>/wandb/
        reinit="finish_previous",
    )
    if mode == "online":
        try:
            settings = wandb.Settings(silent=True, symlink=False, init_timeout=timeout, login_timeout=timeout)
            return wandb.init(mode="online", settings=settings, **kwargs)
        except Exception as err:  # no key (UsageError), unreachable server (CommError), ...
            print(f"warning: wandb online unavailable ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                  f"logging offline to {run_dir / 'wandb'} (`wandb sync` it later)", file=sys.stderr)
    return wandb.init(mode="offline", settings=wandb.Settings(silent=True, symlink=False), **kwargs)


def finish_wandb(run: Any, exit_code: int = 0) -> None:
    """Finish the run, then drop the `logs/debug-core.log` symlink wandb-core makes into the user's cache (no
    setting turns it off): a stage's outputs hold the run's own files, not a link out of the repository that
    dangles once that cache is cleared."""
    if run is not None:
        run_folder = Path(run.settings.sync_dir)
        run.finish(exit_code=exit_code)
        for path in run_folder.rglob("*"):
            if path.is_symlink():
                path.unlink()


@contextlib.contextmanager
def wandb_run(cfg: Any, job_type: str, name: str, run_dir: str | os.PathLike,
              extra_config: Optional[dict] = None, *, variant: Optional[str] = None,
              seed: Optional[int] = None) -> Iterator[Any]:
    """`with wandb_run(...) as run:` - yields the run (or None) and always finishes it; a failing
    stage marks the run failed (exit code 1)."""
    run = start_wandb(cfg, job_type, name, run_dir, extra_config, variant=variant, seed=seed)
    try:
        yield run
    except BaseException:
        finish_wandb(run, exit_code=1)
        raise
    finish_wandb(run, exit_code=0)

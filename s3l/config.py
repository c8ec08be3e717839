"""Config helpers: the OmegaConf resolvers the YAML uses, and reading the chain out of a composed config."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hydra.errors import HydraException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from s3l.data.subset import read_subset
from s3l.errors import S3LError


def run_id(overrides: str, resume: bool | str) -> str:
    """The run directory name: a hash of the command-line overrides, or a timestamp when not resuming.

    Hashing the overrides makes the same command land in the same directory, so an interrupted or
    partly finished chain is found and continued instead of started again.
    """
    if str(resume).lower() in ("false", "0", "no"):
        return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"run-{digest}"


def scaled_lr(base: float, batch_size: int) -> float:
    """The linear scaling rule, `base * batch_size / 256` (SimSiam, BYOL and SimCLR state their LR this way)."""
    return float(base) * int(batch_size) / 256


def register_resolvers() -> None:
    """Register `${s3l_run_id:...}` and `${s3l_scaled_lr:base,batch}` (idempotent)."""
    if not OmegaConf.has_resolver("s3l_run_id"):
        OmegaConf.register_new_resolver("s3l_run_id", run_id)
    if not OmegaConf.has_resolver("s3l_scaled_lr"):
        OmegaConf.register_new_resolver("s3l_scaled_lr", scaled_lr)


def target_class(node: DictConfig, key: str, base: type, name: str, example: str) -> type:
    """The class that `node._target_` names, a subclass of `base` (called `name` in messages, e.g. "a Stage");
    one S3LError line naming `key` and `example` (what to name instead) if it cannot be imported or is not one."""
    target = node.get("_target_")
    try:
        cls = get_class(str(target))
    except Exception as error:  # ImportError, AttributeError, ValueError from Hydra's locate
        reason = " ".join(str(error).split())  # Hydra's message spans lines
        raise S3LError(f"{key}._target_={target} cannot be imported ({reason}): name {example}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise S3LError(f"{key}._target_={target} is not {name} ({base.__module__})")
    return cls


def config_hash(cfg: DictConfig) -> str:
    """A short hash of a resolved config, recorded in every exported artifact."""
    data = OmegaConf.to_container(cfg, resolve=True)
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StageSpec:
    """One stage of the chain: its name, where it lives in the config, and its resolved settings."""

    name: str
    key: str          # the config path users override, e.g. "stages.pretrain"
    cfg: DictConfig


def stage_specs(cfg: DictConfig) -> list[StageSpec]:
    """The stages to run, in order: `stage` alone when selected, else the experiment's `chain`."""
    if cfg.get("stage") is not None:
        return [StageSpec(str(cfg.stage.kind), "stage", cfg.stage)]
    return [StageSpec(str(name), f"stages.{name}", cfg.stages[name]) for name in cfg.chain]


def stage_epochs(cfg: DictConfig, spec: StageSpec) -> int:
    """The epochs a stage trains: its own, capped by trainer.max_epochs when that is set (smoke tests)."""
    cap = cfg.trainer.max_epochs
    return spec.cfg.epochs if cap is None else min(cap, spec.cfg.epochs)


NUMERIC_GROUPS = ("resolution",)


def quote_numeric_group_overrides(argv: list[str]) -> list[str]:
    """Quote `resolution=56` (and sweeps `resolution=56,112`) so Hydra reads the option names as strings.

    Hydra 1.3 parses `resolution=56` as the integer 56 and refuses integers as config-group options
    ("Config group override must be a string or a list"); quoting makes `resolution=56` work as written.
    """
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("~+") in NUMERIC_GROUPS and value and all(v.isdigit() for v in value.split(",")):
            arg = f"{key}=" + ",".join(f"'{v}'" for v in value.split(","))
        quoted.append(arg)
    return quoted


def check_group_options(argv: list[str], config_dir: Path) -> str | None:
    """One line naming an unknown config-group option and the valid ones (Hydra's own message is a
    multi-line block with the search path); None when every `group=option` on the command line exists."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("~+")
        folder = config_dir / group
        if not sep or "@" in group or "." in group or not folder.is_dir() or value in ("", "null"):
            continue
        valid = sorted((p.stem for p in folder.glob("*.yaml")), key=lambda s: (len(s), s))
        for option in value.split(","):
            if option.strip("'\"") not in valid:
                return f"unknown {group} option '{option}': choose one of {', '.join(valid)}"
    return None


# Settings that change how fast a stage runs or how much it prints, never what it computes: a resume or a
# reuse of a finished stage does not depend on them.
RESULT_NEUTRAL_KEYS = ("dataset.num_workers", "dataset.cache_dir", "dataset.resident_memory_fraction",
                       "trainer.log_every_n_steps", "trainer.check_finite_every_n_steps")


def stage_identity(cfg: DictConfig, spec: StageSpec) -> dict:
    """What a stage's result depends on: its own settings plus method, views, optimizer, network, data, trainer
    and seed."""
    identity = {"stage": OmegaConf.to_container(spec.cfg, resolve=True)}
    for key in ("method", "augmentation", "optimizer", "architecture", "dataset", "trainer", "seed"):
        value = cfg[key]
        identity[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    for dotted in RESULT_NEUTRAL_KEYS:
        group, name = dotted.split(".")
        identity[group].pop(name, None)
    subset = identity["dataset"].get("subset")
    if subset:  # the list's content, not only its path: a list edited in place is another dataset
        identity["dataset"]["subset"] = {"path": subset, "sha256": read_subset(subset).sha256}
    return identity


def stage_config_hash(cfg: DictConfig, spec: StageSpec) -> str:
    """A short hash of `stage_identity`, recorded in every stage's results and exported backbone."""
    return config_hash(OmegaConf.create(stage_identity(cfg, spec)))


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        flat: dict[str, object] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def describe_changes(before: dict, now: dict, stage_key: str) -> str:
    """The settings that differ between two `stage_identity` dicts, e.g. "method.m 0.99 -> 0.9"."""
    old, new = _flatten(before), _flatten(now)
    changes = []
    for key in sorted(old.keys() | new.keys(), key=lambda k: (not k.startswith("stage."), k)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            shown = stage_key + key.removeprefix("stage") if key.startswith("stage.") else key
            changes.append(f"{shown} {old.get(key, '<unset>')} -> {new.get(key, '<unset>')}")
    more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
    return ", ".join(changes[:4]) + more


class HydraTask:
    """Whether Hydra has handed the composed config to the task (s3l.run.main sets it)."""

    started = False


@contextmanager
def one_line_config_errors() -> Iterator[None]:
    """Hydra's composition errors, and a run directory Hydra cannot create, as one line and exit status 2.

    Hydra prints such an error as a block that ends in "Set the environment variable HYDRA_FULL_ERROR=1" and
    exits 1; with that variable set it raises the exception instead, which is caught here. Errors raised once
    the task runs are the task's own (S3LError is handled in s3l.run; anything else is a bug: traceback).
    """
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except (HydraException, OmegaConfBaseException) as error:
        if HydraTask.started:
            raise
        _exit_with(f"config: {_one_line(error)}")
    except OSError as error:
        if HydraTask.started:
            raise
        _exit_with(f"cannot create the run directory ({error.strerror or error}: {error.filename}): "
                   "set paths.log_dir to a writable folder")


def _one_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line for line in lines if line and not line.startswith(("full_key:", "object_type=", "reference_type="))]
    return " ".join(kept) or type(error).__name__


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def prepare_argv(argv: list[str], config_dir: Path) -> list[str]:
    """The command line as Hydra should see it; an unknown group option exits here with one line (status 2)."""
    problem = check_group_options(argv, config_dir)
    if problem:
        _exit_with(problem)
    return quote_numeric_group_overrides(argv)

"""Config helpers: the OmegaConf resolvers the YAML uses, and reading the chain out of a composed config."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def run_id(overrides: str, resume: bool | str) -> str:
    """The run directory name: a hash of the command-line overrides, or a timestamp when not resuming.

    Hashing the overrides makes the same command land in the same directory, so an interrupted or
    partly finished chain is found and continued instead of started again.
    """
    if str(resume).lower() in ("false", "0", "no"):
        return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"run-{digest}"


def register_resolvers() -> None:
    """Register `${s3l_run_id:...}` (idempotent)."""
    if not OmegaConf.has_resolver("s3l_run_id"):
        OmegaConf.register_new_resolver("s3l_run_id", run_id)


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


def stage_config_hash(cfg: DictConfig, spec: StageSpec) -> str:
    """What a stage's result depends on: its own settings plus method, network, data, trainer and seed."""
    relevant = {key: cfg[key] for key in ("method", "architecture", "dataset", "trainer", "seed")}
    return config_hash(OmegaConf.create({"stage": OmegaConf.to_container(spec.cfg, resolve=True),
                                         **{k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig)
                                            else v for k, v in relevant.items()}}))


def prepare_argv(argv: list[str], config_dir: Path) -> list[str]:
    """The command line as Hydra should see it; an unknown group option exits here with one line (status 2)."""
    problem = check_group_options(argv, config_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return quote_numeric_group_overrides(argv)

"""Output safety: one live run per directory, and no silent reuse of results made with another config."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from s3l.config import describe_changes
from s3l.errors import S3LError
from s3l.lock import ProcessLock

LOCK = "run.lock"
# What s3l.checkpoints.write_atomically leaves behind when a process dies mid-write.
STRAY_TEMPORARY = ".*.tmp"


def is_ddp_child() -> bool:
    """True in the processes Lightning launches for ranks > 0 (they share the parent's directory)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def claim(run_dir: Path) -> ProcessLock | None:
    """Lock the run directory for this process's life, or stop if another live run holds it.

    Ranks > 0 of a DDP run write into their rank-0 parent's directory and take no lock (None). Once the
    lock is held nobody else writes here, so temporary files of a killed predecessor are removed.
    """
    if is_ddp_child():
        return None
    lock = ProcessLock(run_dir / LOCK)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        holder = lock.try_acquire()
    except OSError as error:
        raise S3LError(
            f"cannot write into the run directory {run_dir} ({error.strerror or error}): "
            "set paths.log_dir to a writable folder"
        ) from None
    if holder is not None:
        raise S3LError(
            f"another run ({holder}) is writing into {run_dir}: wait for it to finish, or pass resume=false "
            "to start a separate run directory"
        )
    for stray in run_dir.rglob(STRAY_TEMPORARY):
        if stray.is_file():
            stray.unlink()
    return lock


def check_same_config(stage_dir: Path, stage_key: str, identity: dict, config_hash: str) -> None:
    """A finished stage is reused only if it was made with the same stage identity (see s3l.config)."""
    results = json.loads((stage_dir / "results.json").read_text())
    previous = results.get("config_hash")
    if previous is None or previous == config_hash:
        return
    changed = describe_changes(results["config"], identity, stage_key) if "config" in results else (
        f"config hash {previous}, now {config_hash}")
    raise S3LError(
        f"{stage_dir} holds a finished {stage_key} made with a different configuration ({changed}): "
        "pass resume=false for a fresh run directory, or delete that directory to redo it"
    )


def keep_ddp_ranks_in_this_sweep() -> None:
    """Make the DDP processes Lightning starts for ranks > 0 write into this multirun's job directories.

    Lightning starts them by running the script again with our arguments plus `hydra.run.dir=...`, which
    a multirun ignores: each would sweep again into a new timestamped directory and look for the previous
    stage's weights there. With the sweep directory pinned, every rank runs the same jobs, in step, in the
    same job directories (a sweep must therefore keep the number of devices fixed).
    """
    hydra_cfg = HydraConfig.get()
    pinned = f'hydra.sweep.dir="{hydra_cfg.sweep.dir}"'
    if hydra_cfg.mode == RunMode.MULTIRUN and pinned not in sys.argv:
        sys.argv.append(pinned)

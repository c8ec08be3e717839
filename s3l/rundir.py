"""Output safety: one live run per directory, and no silent reuse of results made with another config."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from s3l.errors import S3LError

LOCK = "run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_ddp_child() -> bool:
    """True in the processes Lightning launches for ranks > 0 (they share the parent's directory)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def claim(run_dir: Path) -> None:
    """Take the directory for this process, or stop if another live run is writing into it."""
    if is_ddp_child():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    if lock.is_file():
        pid = int(lock.read_text().strip() or 0)
        if pid and pid != os.getpid() and _alive(pid):
            raise S3LError(
                f"another run (pid {pid}) is writing into {run_dir}: wait for it to finish, or pass resume=false "
                "to start a separate run directory"
            )
    lock.write_text(str(os.getpid()))


def release(run_dir: Path) -> None:
    """Drop the lock taken by `claim` (a stale lock of a killed run is taken over by the next one)."""
    lock = run_dir / LOCK
    if not is_ddp_child() and lock.is_file() and lock.read_text().strip() == str(os.getpid()):
        lock.unlink()


def check_same_config(stage_dir: Path, stage_key: str, config_hash: str) -> None:
    """A finished stage is reused only if it was made with the same resolved stage config."""
    results = stage_dir / "results.json"
    previous = json.loads(results.read_text()).get("config_hash")
    if previous is not None and previous != config_hash:
        raise S3LError(
            f"{stage_dir} holds a finished {stage_key} made with a different configuration "
            f"(config hash {previous}, now {config_hash}): pass resume=false for a fresh run directory, "
            "or delete that directory to redo it"
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

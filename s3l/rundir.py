"""Output safety: one live run per directory, and no silent reuse of results made with another config."""

from __future__ import annotations

import json
import os
from pathlib import Path

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

"""`python tests/e2e/die_after.py <train.py arguments>`: train.py, killed at a chosen instant.

The process ends with os._exit(137), as SIGKILL would end it (no cleanup, no flush), right after
- S3L_DIE_AFTER=save:N:STAGE   its N-th checkpoint save of the stage whose directory name contains STAGE, or
- S3L_DIE_AFTER=export:STAGE   the export of that stage's weights, before its results.json is written.
A real SIGKILL at a random moment cannot hit these instants reliably; this one always does.
"""

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import s3l.callbacks.checkpointing as checkpointing  # noqa: E402
from s3l.stages.training import TrainingStage  # noqa: E402

what, *rest = os.environ["S3L_DIE_AFTER"].split(":")
if what == "save":
    count, stage = int(rest[0]), rest[1]
    saves = []
    save = checkpointing.AtomicCheckpointIO.save_checkpoint

    def save_then_die(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if stage in str(path):
            saves.append(path)
            if len(saves) == count:
                os._exit(137)

    checkpointing.AtomicCheckpointIO.save_checkpoint = save_then_die
else:
    (stage,) = rest
    export = TrainingStage.export

    def export_then_die(self, stage_dir, module, trainer):
        export(self, stage_dir, module, trainer)
        if stage in stage_dir.name:
            os._exit(137)

    TrainingStage.export = export_then_die

sys.argv[0] = str(ROOT / "train.py")
runpy.run_path(str(ROOT / "train.py"), run_name="__main__")

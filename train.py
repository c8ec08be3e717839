"""S3L entry point: `python train.py [experiment=...] [overrides]` (see README.md)."""

import gc
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from s3l.config import one_line_config_errors, prepare_argv, register_resolvers
from s3l.run import main as run_main

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Compose the config with Hydra and run the chain; returns the final top-1 for sweepers."""
    return run_main(cfg)


if __name__ == "__main__":
    # The half million objects the imports made (torch, Lightning) are kept for the process's life: frozen, the
    # collector never walks them again, which takes the interpreter's exit from about 2 s to 0.3 s on 2 cores
    # (docs/benchmarks.md, runs F to I) and spares the DataLoader workers' copies of them from the collector too.
    gc.freeze()
    sys.argv[1:] = prepare_argv(sys.argv[1:], Path(__file__).parent / "configs")
    with one_line_config_errors():
        main()

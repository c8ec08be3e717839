"""S3L entry point: `python train.py [experiment=...] [overrides]` (see README.md)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from s3l.config import check_group_options, quote_numeric_group_overrides, register_resolvers
from s3l.run import main as run_main

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Compose the config with Hydra and run the chain; returns the final top-1 for sweepers."""
    keep_ddp_ranks_in_this_sweep()
    return run_main(cfg)


def keep_ddp_ranks_in_this_sweep() -> None:
    """Make the DDP processes Lightning starts for ranks > 0 write into this multirun's job directories.

    Lightning starts them by running this script again with our arguments plus `hydra.run.dir=...`, which
    a multirun ignores: each would sweep again into a new timestamped directory and look for the previous
    stage's weights there. With the sweep directory pinned, every rank runs the same jobs, in step, in the
    same job directories (a sweep must therefore keep the number of devices fixed).
    """
    hydra_cfg = HydraConfig.get()
    pinned = f'hydra.sweep.dir="{hydra_cfg.sweep.dir}"'
    if hydra_cfg.mode == RunMode.MULTIRUN and pinned not in sys.argv:
        sys.argv.append(pinned)


if __name__ == "__main__":
    problem = check_group_options(sys.argv[1:], Path(__file__).parent / "configs")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = quote_numeric_group_overrides(sys.argv[1:])
    main()

"""S3L entry point: `python train.py [experiment=...] [overrides]` (see README.md)."""

import sys

import hydra
from omegaconf import DictConfig

from s3l.config import quote_numeric_group_overrides, register_resolvers
from s3l.run import main as run_main

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Compose the config with Hydra and run the chain; returns the final top-1 for sweepers."""
    return run_main(cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_numeric_group_overrides(sys.argv[1:])
    main()

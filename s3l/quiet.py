"""Quiet by default: dependency messages the user cannot act on are dropped at their source.

Each one is named precisely (never a whole category of warnings), with the reason it is noise here.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's info messages, through the logger its rank_zero_info writes to.
_LIGHTNING_NOISE = (
    # An advertisement for a hosted service, printed for every Trainer (one per stage).
    "💡 Tip: For seamless cloud logging",
    # Printed whenever the LR schedule asks for the number of steps (every stage): nothing to act on.
    "Loading `train_dataloader` to estimate number of stepping batches",
)


# LitData's info messages (s3l.data.stream), by the logger that writes them.
_LITDATA_NOISE = {
    # Each StreamingDataset (one per loader, per epoch's workers) says how it reads local chunks.
    "litdata.streaming.dataset": ("StreamingDataset POSIX-fast",),
    # The cache budget of a local folder it reads in place; remote shards use dataset.stream.max_cache_size.
    "litdata.utilities.format": ("max_cache_size is unset",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_dependency_noise() -> None:
    """Install the filters (idempotent); the run calls it first, in every process."""
    for name, prefixes in {"lightning.pytorch.utilities.rank_zero": _LIGHTNING_NOISE, **_LITDATA_NOISE}.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    # Lightning warns that an IterableDataset's length may be wrong with several workers; LitData's loader
    # gives each worker its own share of the chunks, so the length it reports is exact.
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    # Lightning 2.6's own pytree helper still uses an API that torch >= 2.10 deprecates; it works, and only
    # a Lightning release can change it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)

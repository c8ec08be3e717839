"""S3L: scaled-down self-supervised learning (Cao and Wu, arXiv 2103.13559)."""

__version__ = "0.1.0"

"""Evaluation of a trained backbone on cached features: per-stage linear probes, k-shot, 2-D embeddings."""

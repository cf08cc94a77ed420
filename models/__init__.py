"""Flax NNX decoders converted from real checkpoints, with dense or SharePrefill attention."""

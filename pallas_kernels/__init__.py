"""Pallas kernels of sharedsparse-jax. Knows blocks, not what heads mean; imports only jax."""

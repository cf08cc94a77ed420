"""Test setup: CPU with a few simulated devices unless SHAREDSPARSE_TEST_PLATFORM=gpu.

This runs before any test module imports jax, which is what makes the environment stick.
"""

import os

if os.environ.get("SHAREDSPARSE_TEST_PLATFORM", "cpu") == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()

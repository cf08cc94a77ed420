"""Column and diagonal attention profiles of one block of queries (the planner's estimate)."""

from pallas_kernels.query_block_profiles.api import (
    DEFAULT_IMPLEMENTATIONS as DEFAULT_IMPLEMENTATIONS,
)
from pallas_kernels.query_block_profiles.api import IMPLEMENTATIONS as IMPLEMENTATIONS
from pallas_kernels.query_block_profiles.api import query_block_profiles as query_block_profiles

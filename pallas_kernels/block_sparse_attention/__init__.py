"""Block-sparse flash attention over per-row key-block lists (reference, XLA, Pallas backends)."""

from pallas_kernels.block_sparse_attention.api import (
    DEFAULT_IMPLEMENTATIONS as DEFAULT_IMPLEMENTATIONS,
)
from pallas_kernels.block_sparse_attention.api import IMPLEMENTATIONS as IMPLEMENTATIONS
from pallas_kernels.block_sparse_attention.api import (
    block_sparse_attention as block_sparse_attention,
)
from pallas_kernels.block_sparse_attention.api import (
    block_sparse_attention_with_block_map as block_sparse_attention_with_block_map,
)
from pallas_kernels.block_sparse_attention.common import MASK_VALUE as MASK_VALUE
from pallas_kernels.block_sparse_attention.layout import BlockGeometry as BlockGeometry
from pallas_kernels.block_sparse_attention.layout import BlockLayout as BlockLayout
from pallas_kernels.block_sparse_attention.layout import causal_layout as causal_layout
from pallas_kernels.block_sparse_attention.layout import layout_from_mask as layout_from_mask
from pallas_kernels.block_sparse_attention.layout import validate_layout as validate_layout

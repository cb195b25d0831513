"""Stage 1, h5ad: opening AnnData files and reading their rows (no genes, tokens or cells plans).

``open`` (read-only opening, :class:`H5adReader` with lazy layers), ``rows`` (row chunks, rows,
library sizes), ``checks`` (bad counts), ``direct`` (datasets served from the page cache:
memory-mapped or ``pread`` segments), ``files`` (a worker's open files, read by row ranges).
"""

from stformer_data.h5ad.checks import check_counts
from stformer_data.h5ad.open import H5adReader, open_h5ad
from stformer_data.h5ad.rows import iter_row_chunks, library_sizes, read_rows

__all__ = [
    "H5adReader",
    "check_counts",
    "iter_row_chunks",
    "library_sizes",
    "open_h5ad",
    "read_rows",
]

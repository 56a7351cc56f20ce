"""Server-side conversion tracking on Dagster.

Text columns are Arrow-backed: pandas' "string" dtype means `string[pyarrow]` in every
process that imports this package (the default from pandas 3 on). An hour of a million
conversions holds about 20 million text cells; as Python `str` objects they cost about
4.5 KB a record and a pass over Python objects for every Parquet read, Arrow conversion
and comparison, where Arrow keeps them in a few buffers that Parquet, the JSON encoders
and the vectorised checks read without copying.

Arrow allocates through jemalloc (`memory`), which returns freed memory to the
system, unless `ARROW_DEFAULT_MEMORY_POOL` says otherwise; glibc maps blocks of 4 MiB or
more on their own, so freed column-sized arrays leave the process, unless
`MALLOC_MMAP_THRESHOLD_` says otherwise.
"""

import pandas as _pd

from conversion_platform.memory import fix_large_block_threshold as _fix_threshold
from conversion_platform.memory import use_returning_allocator as _use_allocator

_pd.set_option("mode.string_storage", "pyarrow")
_use_allocator()
_fix_threshold()

"""Prints the Parquet properties of the first file under a table directory."""
import glob
import json
import sys

import pyarrow.parquet as pq

path = sorted(glob.glob(f"{sys.argv[1]}/*/*.parquet"))[0]
f = pq.ParquetFile(path)
md = f.metadata
rg = md.row_group(0)
names = [rg.column(i).path_in_schema for i in range(rg.num_columns)]
uscc = rg.column(names.index("uscc"))
json.dump(
    {
        "compression": uscc.compression,
        "balance_compression": rg.column(names.index("balance")).compression,
        "has_page_index": bool(uscc.has_column_index and uscc.has_offset_index),
        "has_min_max": bool(uscc.statistics is not None and uscc.statistics.has_min_max),
        "uscc_type": str(f.schema_arrow.field("uscc").type),
    },
    sys.stdout,
)

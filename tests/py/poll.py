"""Polls warehouses (every directory under argv[1]) with pyarrow while ironlake writes to them, until the file
named by argv[2] appears. Every read of a table must give whole files and
no duplicate key. A file that vanished between listing and opening (the
directory moved on to a newer generation) is a retry, not a violation.
Prints {"reads": N, "retries": N, "violations": [...]}."""
import json
import os
import sys
import time

import pyarrow.compute as pc
import pyarrow.dataset as ds

KEYS = {
    "enterprises": ["uscc", "as_of"],
    "operations": ["uscc", "period_end"],
    "bank_loans": ["bank_code", "loan_id", "period_end"],
    "financing_demands": ["demand_id"],
    "direct_financing": ["record_id"],
}


def main(root, stop):
    reads = retries = 0
    violations = []
    while not os.path.exists(stop):
      for wh in sorted(os.listdir(root)):
        for table, key in KEYS.items():
            path = os.path.join(root, wh, "tables", table)
            if not os.path.exists(path):
                continue
            try:
                t = ds.dataset(path, format="parquet", partitioning="hive").to_table(columns=key)
            except (FileNotFoundError, OSError) as e:
                msg = str(e)
                if "No such file" in msg or "not found" in msg.lower() or isinstance(e, FileNotFoundError):
                    retries += 1
                    continue
                violations.append(f"{wh}/{table}: {type(e).__name__}: {msg}")
                continue
            except Exception as e:  # a half-written or corrupt file
                violations.append(f"{wh}/{table}: {type(e).__name__}: {e}")
                continue
            reads += 1
            if t.num_rows:
                distinct = t.group_by(key).aggregate([]).num_rows
                if distinct != t.num_rows:
                    violations.append(f"{wh}/{table}: {t.num_rows} rows but {distinct} distinct keys")
        time.sleep(0.01)
    json.dump({"reads": reads, "retries": retries, "violations": violations}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

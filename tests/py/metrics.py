"""Parses a Prometheus text exposition (the file named by the first argument) with the reference parser
(prometheus_client) and prints its samples as JSON: [[name, labels, value], ...].
Fails (non-zero exit) if the text does not parse."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
types = {}
with open(sys.argv[1], encoding="utf-8") as f:
    text = f.read()
for family in text_string_to_metric_families(text):
    types[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps({"samples": samples, "types": types}))

"""Crawls the simulator's bank_loans feed (all quarters) into one CSV file."""
import sys
import urllib.request

base, token, out = sys.argv[1], sys.argv[2], sys.argv[3]
with open(out, "w") as f:
    header_written = False
    for year in (2017, 2018, 2019):
        for q in (1, 2, 3, 4):
            url = f"{base}/v1/bank_loans?quarter={year}Q{q}&per_page=10000"
            while url:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req) as r:
                    body = r.read().decode()
                    link = r.headers.get("Link")
                lines = body.splitlines(keepends=True)
                if not header_written:
                    f.write(lines[0])
                    header_written = True
                f.writelines(lines[1:])
                url = link.split(">")[0].lstrip("<") if link and 'rel="next"' in link else None

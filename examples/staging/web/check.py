"""The staging example's smoke test, for CI: `envy run --machine web -- python3 /project/web/check.py`.
Asks db by name and web's own page; exits 1 when either answers wrong."""
import json
import os
import sys
import urllib.request

DB_URL = os.environ.get("DB_URL", "http://db:7000")

records = json.load(urllib.request.urlopen(DB_URL + "/records", timeout=5))
page = json.load(urllib.request.urlopen("http://127.0.0.1:8000/", timeout=5))
print("db says:", json.dumps(records))
print("web says:", json.dumps(page))
sys.exit(0 if records[0]["name"] == "seed" and page["from_db"] == records else 1)

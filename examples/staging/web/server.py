"""The staging example's front end: shows what the db machine holds, reached by name."""
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

DB_URL = os.environ.get("DB_URL", "http://db:7000")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with urllib.request.urlopen(DB_URL + "/records", timeout=5) as response:
            records = response.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"from_db": ' + records + b"}")


HTTPServer(("0.0.0.0", 8000), Handler).serve_forever()

"""A tiny record store for the staging example: GET /records lists, POST /records adds."""
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

RECORDS = [{"id": 1, "name": "seed"}]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(RECORDS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        record = json.loads(self.rfile.read(length) or b"{}")
        record["id"] = len(RECORDS) + 1
        RECORDS.append(record)
        self.send_response(201)
        self.end_headers()


HTTPServer(("0.0.0.0", 7000), Handler).serve_forever()

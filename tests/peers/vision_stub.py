"""A dedupcad-vision stand-in for the vision-backend tests: `POST /api/v2/search` on loopback.

usage: vision_stub.py PORT_FILE
Listens on a free 127.0.0.1 port and writes the port to PORT_FILE.

Behaviour is scripted by the test:
  POST /_script   body: a JSON list of responses served to the next searches, in order; each is
                  {"status": int, "body": <JSON>, "raw": "<text body>", "headers": {...},
                   "delay": seconds}. When the list is empty, searches get the default answer.
  GET  /_requests the searches received so far: form fields, file name, content type, size,
                  sha256 and (for a PNG) the image width.
The default answer is a search result derived from the upload's file name: one duplicate and one similar
match, with fields beyond the result model (to check that they pass through).
"""
import hashlib
import json
import os
import struct
import sys
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
SCRIPT = []
REQUESTS = []


def parse_form(content_type, body):
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields, upload = {}, None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            upload = {"file_name": part.get_filename(), "content_type": part.get_content_type(), "data": data}
        else:
            fields[name] = data.decode()
    return fields, upload


def png_width(data):
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">I", data[16:20])[0]
    return None


def default_answer(upload):
    # Keyed by the file name, not the bytes: two workers' renders of one DXF differ in pixels.
    digest = hashlib.sha256(upload["file_name"].encode()).hexdigest()
    stem = upload["file_name"].rsplit(".", 1)[0]

    def item(n, sim, verdict, level):
        return {"drawing_id": f"{n}", "file_hash": f"{digest[:16]}{n}", "file_name": f"{stem}_v{n}.png",
                "similarity": sim, "confidence": round(sim - 0.02, 4), "match_level": level, "verdict": verdict,
                "levels": {"l1": {"passed": True}, "l2": {"score": sim}}, "vendor_rank": n,
                "diff_image_base64": None}

    return {"success": True, "total_matches": 2,
            "duplicates": [item(1, 0.97, "duplicate", 2)], "similar": [item(2, 0.86, "similar", 2)],
            "final_level": 2, "timing": {"total_ms": 12.5, "l1_ms": 1.0, "l2_ms": 11.5, "l3_ms": 0.0, "l4_ms": 0.0},
            "level_stats": {"l1": {"passed": 40, "filtered": 10, "time_ms": 1.0}, "l2": {"passed": 2, "filtered": 38, "time_ms": 11.5}},
            "warnings": [], "error": None, "search_id": f"s-{digest[:8]}"}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        if self.path == "/_requests":
            with LOCK:
                return self.send(200, list(REQUESTS))
        if self.path == "/health":
            return self.send(200, {"status": "ok"})
        self.send(404, {"detail": "Not Found"})

    def do_POST(self):
        body = self.body()
        if self.path == "/_script":
            with LOCK:
                SCRIPT[:] = json.loads(body)
            return self.send(200, {"scripted": len(SCRIPT)})
        if self.path != "/api/v2/search":
            return self.send(404, {"detail": "Not Found"})
        fields, upload = parse_form(self.headers["Content-Type"], body)
        with LOCK:
            REQUESTS.append({"fields": fields, "file_name": upload["file_name"], "content_type": upload["content_type"],
                             "size": len(upload["data"]), "sha256": hashlib.sha256(upload["data"]).hexdigest(),
                             "png_width": png_width(upload["data"]), "at": time.time()})
            step = SCRIPT.pop(0) if SCRIPT else None
        if step is None:
            return self.send(200, default_answer(upload))
        time.sleep(step.get("delay", 0))
        if "raw" in step:
            return self.send(step.get("status", 200), step["raw"].encode(), step.get("headers"))
        self.send(step.get("status", 200), step.get("body", default_answer(upload)), step.get("headers"))


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()

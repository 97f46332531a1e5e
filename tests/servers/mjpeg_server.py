#!/usr/bin/env python3
"""A small HTTP MJPEG camera for the network-source tests: serves the JPEG files of a folder,
in name order and looping, as one multipart/x-mixed-replace stream at a fixed frame rate.

    mjpeg_server.py FOLDER PORT [FPS] [once]

Listens on 127.0.0.1:PORT only; prints "ready PID" once listening (the PID to kill: a
launcher such as a pyenv shim may stand between the caller and this process). Killing it mid-stream is how
the tests make the camera drop out; with "once" each client gets every file one time and the
stream ends.
"""
import http.server
import os
import socketserver
import sys
import time
from pathlib import Path

BOUNDARY = "carivisframe"


def main():
    folder, port = Path(sys.argv[1]), int(sys.argv[2])
    fps = float(sys.argv[3]) if len(sys.argv) > 3 else 25.0
    once = len(sys.argv) > 4 and sys.argv[4] == "once"
    frames = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    if not frames:
        sys.exit(f"no .jpg files in {folder}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
            self.end_headers()
            start, i = time.monotonic(), 0
            try:
                while not once or i < len(frames):
                    jpeg = frames[i % len(frames)]
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                    i += 1
                    time.sleep(max(0.0, start + i / fps - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        allow_reuse_address = True
        daemon_threads = True

    with Server(("127.0.0.1", port), Handler) as server:
        print(f"ready {os.getpid()}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""A small RTSP camera for the network-source tests (GStreamer's RTSP server, Debian's
gir1.2-gst-rtsp-server-1.0 and python3-gi): streams a video file's H.264 track, as an IP
camera would, at rtsp://127.0.0.1:PORT/camera.

    rtsp_server.py VIDEO.mp4 PORT

Listens on 127.0.0.1 only; prints "ready PID" once listening. Killing it mid-stream is how
the tests make the camera drop out.
"""
import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    video, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{video}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )')
    factory.set_shared(True)
    server.get_mount_points().add_factory("/camera", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print(f"ready {os.getpid()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()

"""A scripted WebSocket stream "replica" for failover tests (`ScriptedReplica`)."""

from __future__ import annotations

import json
import socket
import threading


class ScriptedReplica:
    """A WebSocket "replica" that plays a script: for each frame received, ``script(frame)`` returns the
    reply (a dict), ``None`` for no reply, an int (close with that code), ``"drop"`` (cut the
    connection) or ``"stall"`` (send ``stall_replies`` ahead of time, then never read again). Frames are
    recorded."""

    def __init__(self, script, process_request=None, **options) -> None:
        from websockets.sync.server import serve

        self.script = script
        self.frames: list[dict] = []
        self.stall_replies: list[dict] = []
        self._closed = threading.Event()
        self.server = serve(self._handle, "127.0.0.1", 0, compression=None, process_request=process_request, **options)
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handle(self, ws) -> None:
        for raw in ws:
            frame = json.loads(raw)
            self.frames.append(frame)
            reply = self.script(frame)
            if reply == "drop":  # the process died: no close frame
                ws.socket.shutdown(socket.SHUT_RDWR)
                return
            if reply == "stall":
                for ahead in self.stall_replies:
                    ws.send(json.dumps(ahead))
                self._closed.wait()
                return
            if isinstance(reply, int):
                ws.close(reply)
                return
            if reply is not None:
                ws.send(json.dumps(reply))

    def close(self) -> None:
        self._closed.set()
        self.server.shutdown()

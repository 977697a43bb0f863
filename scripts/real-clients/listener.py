"""The callback both protocols push to, on a free loopback port.

EWS push notifications arrive on /ews: exchangelib's own SendNotification service parses
them and writes the SendNotificationResult (OK) reply. Graph arrives on /graph: a
validation handshake (POST with ?validationToken=) is answered by echoing the token as
text/plain, as Graph requires; a change notification is answered 202.
"""

import json
import queue
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Listener:
    def __init__(self):
        self.ews = queue.Queue()  # exchangelib Notification objects
        self.graph = queue.Queue()  # each notification of a Graph collection, as a dict
        self.validations = []  # validation tokens echoed
        self.ews_parser = None  # set to exchangelib's SendNotification service once known
        self.errors = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                url = urllib.parse.urlparse(self.path)
                try:
                    if url.path == "/ews":
                        self._ews(body)
                    elif url.path == "/graph":
                        self._graph(url, body)
                    else:
                        self._send(404, b"", "text/plain")
                except Exception as e:  # noqa: BLE001 - reported by the step that waits
                    listener.errors.append(f"{url.path}: {type(e).__name__}: {e}")
                    self._send(500, b"", "text/plain")

            def _ews(self, body):
                parser = listener.ews_parser
                for notification in parser.parse(body):
                    listener.ews.put(notification)
                self._send(200, parser.ok_payload(), "text/xml; charset=utf-8")

            def _graph(self, url, body):
                query = urllib.parse.parse_qs(url.query)
                if "validationToken" in query:
                    token = query["validationToken"][0]
                    listener.validations.append(token)
                    self._send(200, token.encode(), "text/plain; charset=utf-8")
                    return
                for notification in json.loads(body).get("value", []):
                    listener.graph.put(notification)
                self._send(202, b"", "text/plain")

            def _send(self, status, body, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path):
        return f"{self.base}{path}"

    @staticmethod
    def wait(q, what, match, timeout=10.0):
        """The first item of q that match() accepts within timeout seconds; others are dropped."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout:.0f} s")
            try:
                item = q.get(timeout=left)
            except queue.Empty:
                continue
            if match(item):
                return item

    def close(self):
        self.server.shutdown()

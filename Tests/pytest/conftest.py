"""A ready-to-copy pytest fixture that runs Gatehouse as an authenticating proxy.

Copy this file (or the `gatehouse_proxy` fixture) into your project. It needs only the
`gatehouse` binary: set GATEHOUSE_BIN, or put it on PATH. The proxy listens on an ephemeral
port, prints its address when ready (--print-address), writes one JSON log line per
response to stdout, and exits when its stdin closes (--exit-on-stdin-eof), so a test run that
dies never leaks a proxy.
"""
import json
import os
import shutil
import subprocess
import threading
import urllib.parse

import pytest


def _gatehouse_binary():
    explicit = os.environ.get("GATEHOUSE_BIN")
    if explicit:
        return explicit
    here = os.path.dirname(os.path.abspath(__file__))
    built = os.path.join(here, "..", "..", ".build", "debug", "gatehouse")
    if os.path.exists(built):
        return built
    found = shutil.which("gatehouse")
    if found:
        return found
    pytest.skip("gatehouse binary not found: set GATEHOUSE_BIN")


class GatehouseProxy:
    def __init__(self, address, user, password, process):
        self.address = address
        self.user = user
        self.password = password
        self.process = process
        self.records = []  # one dict per response the proxy sent (status, reason, user, ...)
        self._lock = threading.Lock()

    @property
    def url(self):
        """Proxy URL with percent-encoded credentials, for http_proxy/https_proxy."""
        quote = lambda s: urllib.parse.quote(s, safe="")
        return f"http://{quote(self.user)}:{quote(self.password)}@{self.address}"

    @property
    def url_without_credentials(self):
        return f"http://{self.address}"

    def _collect(self, stream):
        for line in stream:
            line = line.strip()
            if line:
                with self._lock:
                    self.records.append(json.loads(line))

    def wait_for_records(self, count, timeout=5.0):
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.records) >= count:
                    return list(self.records)
            time.sleep(0.01)
        with self._lock:
            return list(self.records)


@pytest.fixture
def gatehouse_proxy():
    user, password = "tester", "p@ss:w0rd%"
    process = subprocess.Popen(
        [_gatehouse_binary(), "--listen", "127.0.0.1:0", "--user", f"{user}:{password}",
         "--print-address", "--exit-on-stdin-eof", "--access-log", "-", "--log-format", "json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    address = process.stdout.readline().strip()
    if not address:
        process.kill()
        pytest.fail("gatehouse did not print its address")
    proxy = GatehouseProxy(address, user, password, process)
    reader = threading.Thread(target=proxy._collect, args=(process.stdout,), daemon=True)
    reader.start()
    try:
        yield proxy
    finally:
        process.stdin.close()  # --exit-on-stdin-eof: a graceful stop
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        reader.join(timeout=5)

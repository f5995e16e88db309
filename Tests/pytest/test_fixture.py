"""Tests the pytest fixture in conftest.py against a local origin, with requests."""
import http.server
import threading

import pytest
import requests


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from origin\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_requests_through_proxy(gatehouse_proxy, origin):
    response = requests.get(f"{origin}/x", proxies={"http": gatehouse_proxy.url}, timeout=10)
    assert response.status_code == 200
    assert response.text == "hello from origin\n"
    assert response.headers["Via"] == "1.0 gatehouse"
    records = gatehouse_proxy.wait_for_records(1)
    assert [r["status"] for r in records] == [200]
    assert records[0]["user"] == gatehouse_proxy.user
    assert records[0]["reason"] == "forwarded"
    assert gatehouse_proxy.password not in str(records)


def test_missing_credentials_get_407(gatehouse_proxy, origin):
    response = requests.get(f"{origin}/x", proxies={"http": gatehouse_proxy.url_without_credentials}, timeout=10)
    assert response.status_code == 407
    assert response.headers["Proxy-Authenticate"] == 'Basic realm="Gatehouse", charset="UTF-8"'
    assert [r["reason"] for r in gatehouse_proxy.wait_for_records(1)] == ["auth_missing"]

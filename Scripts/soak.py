#!/usr/bin/env python3
"""Soak test for Gatehouse: mixed load for a given time, then checks for leaks.

    Scripts/soak.py --duration 600 [--binary PATH] [--concurrency 16] [--slowloris 200] [--json OUT]

Python 3.11 standard library only. In one process it starts:

  * an origin (ThreadingHTTPServer on 127.0.0.1:0):
      GET  /bytes/N?seed=S    N deterministic pseudo-random bytes (0 B ... 8 MiB), Content-Length
      GET  /chunked/N?seed=S  the same body, Transfer-Encoding: chunked, chunks of mixed sizes
      POST /upload            reads the body (Content-Length or chunked), answers "<sha256> <length>"
      GET  /reset?seed=S      declares Content-Length: 100000, sends part of it, then RST (SO_LINGER 0)
    It answers 500 if a request ever arrives with a Proxy-Authorization header (credential leak),
    and closes a keep-alive connection after 5 s idle (as origins do; matters if the proxy pools);
  * a TCP echo server, the only port CONNECT may reach;
  * Gatehouse itself (a private copy of the binary, so a rebuild cannot disturb the run), on
    127.0.0.1:0 with user soak:soak-pass, --header-timeout 5s and --idle-timeout 10s.

Load: --concurrency worker threads pick weighted random operations until the deadline, and
reuse keep-alive connections for a random number of requests:

  get        authenticated GET, Content-Length body, sha256 checked against the expected body
  chunked    authenticated GET, chunked body, sha256 checked
  upload     POST of random bytes (<= 4 MiB; Content-Length or chunked), origin's sha256 checked
  connect    CONNECT to the echo server, random bytes sent in pieces, echo checked by sha256;
             ends by half-close (EOF must come back), by close, or by an abort mid-stream
  noauth     no / malformed / non-Basic credentials (GET, POST with body, CONNECT) -> 407 with
             Proxy-Authenticate: Basic realm=...; the connection must stay usable: an
             authenticated retry follows on it
  badpass    wrong password or unknown user (from 127.0.2.x, so the failed-login throttle never
             touches the good traffic from 127.0.0.1) -> 407, or 429 with Retry-After once the
             address or name is throttled; then an authenticated retry on the connection
  denied     CONNECT to a port outside --connect-ports -> 403
  reset      GET /reset: the proxy must close the connection before the declared length
             (or answer 502 if the origin's head never reached it)
  pipeline   2-3 requests (GET, chunked GET, unauthenticated GET) written at once, answers in order
  abort      client gives up: closes (sometimes with RST) mid-download or mid-upload

Slowloris: --slowloris connections (from 127.0.3.x, so the per-address connection limit does
not apply) each send a partial request head, one byte every ~2 s; each must get 408 and be
closed by the proxy after --header-timeout; they are reopened.

Leak check: the proxy's RSS (/proc/PID/status VmRSS) and open fds (/proc/PID/fd) are measured
after a warm-up (5 s of load, all connections closed, 2 s idle), sampled during the run, and
measured again after all load stopped and all client connections closed (waiting up to 15 s for
the proxy to settle). fds must be back to the baseline (+- --fd-slack, 2) and RSS within
max(--rss-slack-mib 10 MiB, --rss-slack-pct 20 %) of it.

Exit status: 0 pass; 1 any byte mismatch, unexpected status or error, proxy crash or leak;
2 the run could not be set up (no binary, proxy did not start).
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import http.server
import json
import os
import random
import selectors
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

KIB = 1024
MIB = 1024 * 1024
MAX_BODY = 8 * MIB
MAX_UPLOAD = 4 * MIB
RESET_DECLARED = 100_000
USER, PASSWORD = "soak", "soak-pass"
IO_TIMEOUT = 30.0  # every socket operation of the load generator
OP_DEADLINE = 90.0  # a whole tunnel exchange
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


GOOD_AUTH = basic(USER, PASSWORD)


# --------------------------------------------------------------------------------------------
# Deterministic bodies
# --------------------------------------------------------------------------------------------

class Bodies:
    """body(n, seed): n pseudo-random bytes. The seed picks one of 8 fixed random blocks
    (generated once) and an offset into it, so bodies cost no generation per request."""

    BLOCKS = 8

    def __init__(self) -> None:
        self._blocks = [memoryview(random.Random(0x5EED0000 + i).randbytes(MAX_BODY + 4096))
                        for i in range(self.BLOCKS)]

    def body(self, n: int, seed: int) -> memoryview:
        if not 0 <= n <= MAX_BODY:
            raise ValueError(f"size {n} out of range")
        offset = (seed * 2654435761 + n) % 4096
        return self._blocks[seed % self.BLOCKS][offset:offset + n]

    def sha(self, n: int, seed: int) -> str:
        return hashlib.sha256(self.body(n, seed)).hexdigest()


# --------------------------------------------------------------------------------------------
# Origin and echo servers
# --------------------------------------------------------------------------------------------

class OriginServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, bodies: Bodies) -> None:
        self.bodies = bodies
        self.leaks = 0
        super().__init__(("127.0.0.1", 0), OriginHandler)

    def handle_error(self, request, client_address) -> None:  # quiet: the proxy aborts on purpose
        pass


ORIGIN_IDLE_TIMEOUT = 5.0


class OriginHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "soak-origin"
    timeout = 60
    wbufsize = 0

    def handle(self) -> None:
        # Keep-alive: wait at most ORIGIN_IDLE_TIMEOUT for the next request line; the request
        # itself gets `timeout` per socket operation (parse_request restores it).
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.connection.settimeout(ORIGIN_IDLE_TIMEOUT)
            self.handle_one_request()

    def parse_request(self) -> bool:
        self.connection.settimeout(self.timeout)
        return super().parse_request()

    def log_message(self, format, *args) -> None:
        pass

    def _leaked(self) -> bool:
        if self.headers.get("Proxy-Authorization") is None:
            return False
        self.server.leaks += 1
        self._plain(500, "Proxy-Authorization reached the origin\n")
        return True

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self._leaked():
            return
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        seed = int(query.get("seed", ["0"])[0])
        parts = url.path.split("/")
        try:
            if len(parts) == 3 and parts[1] == "bytes":
                return self._bytes(int(parts[2]), seed)
            if len(parts) == 3 and parts[1] == "chunked":
                return self._chunked(int(parts[2]), seed)
            if url.path == "/reset":
                return self._reset(seed)
        except ValueError:
            pass
        self._plain(404, "no such path\n")

    def _bytes(self, n: int, seed: int) -> None:
        body = self.server.bodies.body(n, seed)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        for i in range(0, n, 256 * KIB):
            self.wfile.write(body[i:i + 256 * KIB])

    def _chunked(self, n: int, seed: int) -> None:
        body = self.server.bodies.body(n, seed)
        rng = random.Random(seed ^ n)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        pos, pending = 0, []
        while pos < n:
            k = min(n - pos, rng.choice((1, 17, 100, 1000, 4096, 16384, 65536, 200_000)))
            pending += (b"%x\r\n" % k, body[pos:pos + k], b"\r\n")
            pos += k
            if sum(len(p) for p in pending) >= 64 * KIB or len(pending) > 300:
                self.wfile.write(b"".join(pending))
                pending = []
        pending.append(b"0\r\n\r\n")
        self.wfile.write(b"".join(pending))

    def _reset(self, seed: int) -> None:
        self.close_connection = True
        sent = random.Random(seed).randint(0, 50_000)
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % RESET_DECLARED)
        self.wfile.write(head + bytes(self.server.bodies.body(sent, seed)))
        time.sleep(0.05)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()  # RST

    def _hash_exactly(self, left: int, digest) -> int:
        """Reads exactly `left` body bytes into `digest`; returns how many."""
        n = left
        while left:
            data = self.rfile.read(min(left, 256 * KIB))
            if not data:
                raise ConnectionError("upload cut short")
            digest.update(data)
            left -= len(data)
        return n

    def do_POST(self) -> None:
        if self._leaked():
            return
        if self.path != "/upload":
            self._plain(404, "no such path\n")
            return
        digest, n = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                n += self._hash_exactly(size, digest)
                self.rfile.readline(16)
        else:
            n += self._hash_exactly(int(self.headers.get("Content-Length", "0")), digest)
        self._plain(200, f"{digest.hexdigest()} {n}\n")


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)

    def handle_error(self, request, client_address) -> None:
        pass


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(60)
        try:
            while True:
                data = sock.recv(256 * KIB)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # pass the half-close back
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# Gatehouse process
# --------------------------------------------------------------------------------------------

class SetupError(Exception):
    pass


class Proxy:
    def __init__(self, binary: str, echo_port: int, workdir: str, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.stderr_path = os.path.join(workdir, "gatehouse.stderr")
        self.proc: subprocess.Popen | None = None
        self.address: tuple[str, int] | None = None
        self.exit_status: int | None = None
        last_error = "?"
        for attempt in range(5):  # the binary may be rebuilt under us: copy it and retry
            try:
                self._start(binary, echo_port, args)
                return
            except (OSError, SetupError) as error:
                last_error = str(error)
                self.stop(quiet=True)
                print(f"soak: starting gatehouse failed (attempt {attempt + 1}): {error}", file=sys.stderr)
                time.sleep(3)
        raise SetupError(f"gatehouse did not start: {last_error}")

    def _start(self, binary: str, echo_port: int, args: argparse.Namespace) -> None:
        copy = os.path.join(self.workdir, "gatehouse")
        shutil.copy2(binary, copy)
        cmd = [copy, "--listen", "127.0.0.1:0", "--user", f"{USER}:{PASSWORD}", "--print-address",
               "--exit-on-stdin-eof", "--access-log", "/dev/null", "--connect-ports", str(echo_port),
               "--header-timeout", f"{round(args.header_timeout * 1000)}ms",
               "--idle-timeout", f"{round(args.idle_timeout * 1000)}ms"]
        self.cmd = cmd
        stderr = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                         start_new_session=True, close_fds=True)
        finally:
            stderr.close()
        fd = self.proc.stdout.fileno()
        line, deadline = b"", time.monotonic() + 20
        while b"\n" not in line:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SetupError("no address on stdout within 20 s")
            sel = selectors.DefaultSelector()
            sel.register(fd, selectors.EVENT_READ)
            ready = sel.select(min(left, 0.5))
            sel.close()
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise SetupError(f"exited before printing its address (status {self.proc.wait(5)}); "
                                     f"stderr: {self.stderr_tail()}")
                line += chunk
        first = line.split(b"\n")[0].decode().strip()
        host, _, port = first.rpartition(":")
        self.address = (host.strip("[]"), int(port))
        threading.Thread(target=self._drain_stdout, daemon=True).start()

    def _drain_stdout(self) -> None:
        try:
            while self.proc and self.proc.stdout.read1(65536):
                pass
        except (OSError, ValueError):
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample(self) -> dict | None:
        try:
            rss = threads = None
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            return None
        return {"rss_kib": rss, "fds": fds, "threads": threads, "cpu_s": round(cpu, 2)}

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, quiet: bool = False) -> int | None:
        """Closes stdin (--exit-on-stdin-eof); SIGTERM after 15 s, SIGKILL after 5 more."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.exit_status
        try:
            proc.stdin.close()
        except OSError:
            pass
        for sig, wait in ((None, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if sig is not None:
                if not quiet:
                    print(f"soak: gatehouse still running; sending {sig.name}", file=sys.stderr)
                try:
                    proc.send_signal(sig)
                except OSError:
                    pass
            try:
                self.exit_status = proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            proc.stdout.close()
        except OSError:
            pass
        return self.exit_status


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: dict[str, dict] = collections.defaultdict(lambda: {"ok": 0, "fail": 0, "up": 0, "down": 0})
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.counters: collections.Counter = collections.Counter()
        self.failure_kinds: collections.Counter = collections.Counter()
        self.failures: list[dict] = []
        self.slowloris_times: list[float] = []
        self.started = time.monotonic()

    def ok(self, op: str, up: int = 0, down: int = 0, latency: float | None = None) -> None:
        with self.lock:
            entry = self.ops[op]
            entry["ok"] += 1
            entry["up"] += up
            entry["down"] += down
            if latency is not None:
                self.latency[op].append(latency)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def fail(self, op: str, kind: str, message: str) -> None:
        with self.lock:
            self.ops[op]["fail"] += 1
            self.failure_kinds[kind] += 1
            if len(self.failures) < 200:
                self.failures.append({"t": round(time.monotonic() - self.started, 3), "op": op,
                                      "kind": kind, "message": message})
            if len(self.failures) <= 10:
                print(f"soak: FAIL {op} [{kind}] {message}", file=sys.stderr, flush=True)

    def total_failures(self) -> int:
        with self.lock:
            return sum(e["fail"] for e in self.ops.values())


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --------------------------------------------------------------------------------------------
# HTTP client on raw sockets
# --------------------------------------------------------------------------------------------

class Failure(Exception):
    """An operation's result differs from what the proxy must do. kind: mismatch, status,
    protocol, timeout, error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class PeerClosed(Exception):
    def __init__(self, got: int, reset: bool = False, in_head: bool = False) -> None:
        super().__init__(f"connection {'reset' if reset else 'closed'} after {got} body bytes"
                         if not in_head else f"connection {'reset' if reset else 'closed'} before a complete response head")
        self.got, self.reset, self.in_head = got, reset, in_head
        self.response: Response | None = None


class Response:
    def __init__(self, version: str, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.version, self.status, self.reason, self.headers = version, status, reason, headers
        self.length = 0
        self.sha = ""
        self.body = b""  # first 64 KiB only
        self.close = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def describe(self) -> str:
        text = self.body[:200].decode("latin-1", errors="replace").strip()
        return f"{self.status} {self.reason!r} ({self.length} body bytes{': ' + repr(text) if text else ''})"


class Registry:
    """All open client sockets, so a stop can unblock stuck operations."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.socks: set[socket.socket] = set()

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.socks.add(sock)

    def discard(self, sock: socket.socket) -> None:
        with self.lock:
            self.socks.discard(sock)

    def close_all(self) -> int:
        with self.lock:
            socks = list(self.socks)
            self.socks.clear()
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass
        return len(socks)

    def abort_all(self) -> int:
        with self.lock:
            socks = list(self.socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks)


class Conn:
    def __init__(self, address: tuple[str, int], registry: Registry, source: str | None = None) -> None:
        self.registry = registry
        self.sock = socket.create_connection(address, timeout=IO_TIMEOUT,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        registry.add(self.sock)
        self.buf = bytearray()
        self.closed = False

    def close(self, rst: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.registry.discard(self.sock)
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes | memoryview) -> None:
        self.sock.sendall(data)

    def _recv(self, in_head: bool, got: int = 0) -> bytes:
        try:
            return self.sock.recv(256 * KIB)
        except ConnectionResetError:
            raise PeerClosed(got, reset=True, in_head=in_head) from None

    def readline(self, limit: int = 65536) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise Failure("protocol", "response line too long")
            data = self._recv(in_head=True)
            if not data:
                raise PeerClosed(0, in_head=True)
            self.buf += data

    def read_head(self) -> Response:
        while True:
            line = self.readline()
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise Failure("protocol", f"bad status line {line[:100]!r}")
            headers = []
            while True:
                raw = self.readline()
                if raw in (b"\r\n", b"\n"):
                    break
                key, sep, value = raw.decode("latin-1").partition(":")
                if not sep:
                    raise Failure("protocol", f"bad header line {raw[:100]!r}")
                headers.append((key.strip().lower(), value.strip()))
            status = int(parts[1])
            if 100 <= status < 200:
                continue
            response = Response(parts[0], status, parts[2] if len(parts) > 2 else "", headers)
            tokens = ",".join(v for k, v in headers if k == "connection").lower()
            response.close = "close" in tokens or (parts[0] == "HTTP/1.0" and "keep-alive" not in tokens)
            return response

    def _exact(self, n: int, digest, keep: bytearray, got0: int = 0) -> int:
        got = 0
        if self.buf:
            take = min(n, len(self.buf))
            chunk = self.buf[:take]
            digest.update(chunk)
            if len(keep) < 65536:
                keep += chunk[:65536 - len(keep)]
            del self.buf[:take]
            got = take
        if got < n:
            scratch = memoryview(bytearray(min(n - got, 256 * KIB)))
            while got < n:
                try:
                    k = self.sock.recv_into(scratch, min(len(scratch), n - got))
                except ConnectionResetError:
                    raise PeerClosed(got0 + got, reset=True) from None
                if k == 0:
                    raise PeerClosed(got0 + got)
                digest.update(scratch[:k])
                if len(keep) < 65536:
                    keep += scratch[:min(k, 65536 - len(keep))]
                got += k
        return got

    def _chunked(self, digest, keep: bytearray) -> int:
        total = 0
        while True:
            try:
                line = self.readline(1024)
            except PeerClosed as closed:
                raise PeerClosed(total, closed.reset) from None
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise Failure("protocol", f"bad chunk size line {line[:60]!r}") from None
            if size == 0:
                while self.readline(8192) not in (b"\r\n", b"\n"):
                    pass
                return total
            total += self._exact(size, digest, keep, total)
            if self.readline(16) not in (b"\r\n", b"\n"):
                raise Failure("protocol", "chunk not followed by CRLF")

    def _to_eof(self, digest, keep: bytearray) -> int:
        total = 0
        while True:
            if self.buf:
                chunk = bytes(self.buf)
                self.buf.clear()
            else:
                chunk = self._recv(in_head=False, got=total)
                if not chunk:
                    return total
            digest.update(chunk)
            if len(keep) < 65536:
                keep += chunk[:65536 - len(keep)]
            total += len(chunk)

    def read_response(self, method: str = "GET") -> Response:
        response = self.read_head()
        digest, keep = hashlib.sha256(), bytearray()
        te = (response.header("transfer-encoding") or "").lower()
        cl = response.header("content-length")
        try:
            if method == "HEAD" or response.status in (204, 304) or (method == "CONNECT" and response.status // 100 == 2):
                response.length = 0
            elif "chunked" in te:
                response.length = self._chunked(digest, keep)
            elif cl is not None:
                response.length = self._exact(int(cl), digest, keep)
            else:
                response.length = self._to_eof(digest, keep)
                response.close = True
        except PeerClosed as closed:
            closed.response = response
            raise
        response.sha = digest.hexdigest()
        response.body = bytes(keep)
        return response

    def expect_eof(self, timeout: float = 5.0) -> bool:
        """True if the peer closes (FIN or RST) within timeout with no further bytes."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except (socket.timeout, OSError):
            return False
        finally:
            self.sock.settimeout(IO_TIMEOUT)


def request(method: str, target: str, host: str, auth: str | None = GOOD_AUTH,
            headers: tuple[str, ...] = ()) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if auth is not None:
        lines.append(f"Proxy-Authorization: {auth}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def pick_size(rng: random.Random, top: int) -> int:
    """0 B ... top, mostly small: 3 % empty, 22 % <= 1 KiB, 30 % <= 64 KiB, 30 % <= 1 MiB,
    13 % above 1 MiB, 2 % exactly top."""
    r = rng.random()
    if r < 0.03:
        return 0
    for bound, low, high in ((0.25, 1, KIB), (0.55, KIB + 1, 64 * KIB), (0.85, 64 * KIB + 1, MIB), (0.98, MIB + 1, top - 1)):
        if r < bound:
            low = min(low, top)
            return rng.randint(low, max(low, min(high, top)))
    return top


def check_407(response: Response, what: str) -> None:
    if response.status != 407:
        raise Failure("status", f"{what}: expected 407, got {response.describe()}")
    challenge = response.header("proxy-authenticate") or ""
    if not challenge.startswith('Basic realm="'):
        raise Failure("protocol", f"{what}: 407 without 'Proxy-Authenticate: Basic realm=\"...', got {challenge!r}")


# --------------------------------------------------------------------------------------------
# Load workers
# --------------------------------------------------------------------------------------------

OPERATIONS = {  # name: weight
    "get": 28, "chunked": 10, "upload": 12, "connect": 12, "noauth": 8, "badpass": 5,
    "denied": 2, "reset": 5, "pipeline": 8, "abort": 4,
}


class Context:
    def __init__(self, proxy_address, origin_port: int, echo_port: int, bodies: Bodies,
                 stats: Stats, registry: Registry) -> None:
        self.proxy_address = proxy_address
        self.origin_host = f"127.0.0.1:{origin_port}"
        self.origin = f"http://127.0.0.1:{origin_port}"
        self.origin_port = origin_port
        self.echo = f"127.0.0.1:{echo_port}"
        self.bodies = bodies
        self.stats = stats
        self.registry = registry


class Worker(threading.Thread):
    def __init__(self, ctx: Context, index: int, seed: int, stop: threading.Event) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.ctx = ctx
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.conn: Conn | None = None
        self.uses = 0
        self.budget = 0
        self.current = "-"
        self.names = list(OPERATIONS)
        self.weights = [OPERATIONS[n] for n in self.names]

    # connection reuse -----------------------------------------------------------------------

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def connection(self) -> Conn:
        if self.conn is None or self.conn.closed or self.uses >= self.budget:
            self.drop()
            self.conn = Conn(self.ctx.proxy_address, self.ctx.registry)
            self.uses = 0
            self.budget = self.rng.choice((1, 1, 2, 3, 5, 8, 13, 20, 50))
            self.ctx.stats.count("connections_opened")
        else:
            self.ctx.stats.count("keepalive_reuses")
        self.uses += 1
        return self.conn

    def done_with(self, response: Response, conn: Conn | None = None) -> None:
        """After `Connection: close` the proxy must close the connection (conn, default the
        worker's keep-alive connection)."""
        if response.close:
            conn = conn or self.conn
            if conn is not None and not conn.expect_eof():
                raise Failure("protocol", f"response said Connection: close but the proxy kept the connection open "
                                          f"({response.describe()})")
            if conn is self.conn:
                self.drop()
            elif conn is not None:
                conn.close()

    # main loop --------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop_event.is_set():
            name = self.rng.choices(self.names, self.weights)[0]
            self.current = name
            try:
                getattr(self, "op_" + name)()
            except Failure as failure:
                self.ctx.stats.fail(name, failure.kind, str(failure))
                self.drop()
            except PeerClosed as closed:
                detail = f" (head: {closed.response.describe()})" if closed.response else ""
                self.ctx.stats.fail(name, "closed", f"{closed}{detail}")
                self.drop()
            except socket.timeout:
                self.ctx.stats.fail(name, "timeout", f"no progress for {IO_TIMEOUT:.0f} s")
                self.drop()
            except OSError as error:
                if self.stop_event.is_set() and error.errno in (None, 9, 32, 104, 107):
                    pass  # the stop aborted this operation's socket
                else:
                    self.ctx.stats.fail(name, "error", f"{type(error).__name__}: {error}")
                self.drop()
            except Exception as error:  # a bug in this script must not hang the run
                self.ctx.stats.fail(name, "script", f"{type(error).__name__}: {error}")
                self.drop()
        self.current = "-"
        self.drop()

    # operations -------------------------------------------------------------------------------

    def _get(self, op: str, chunked: bool, close: bool = False) -> None:
        n = pick_size(self.rng, MAX_BODY)
        seed = self.rng.randrange(1 << 30)
        path = f"/{'chunked' if chunked else 'bytes'}/{n}?seed={seed}"
        conn = self.connection()
        headers = ("Connection: close",) if close else ()
        started = time.monotonic()
        conn.send(request("GET", self.ctx.origin + path, self.ctx.origin_host, headers=headers))
        response = conn.read_response()
        elapsed = time.monotonic() - started
        self._verify_get(response, n, seed, path, chunked)
        if close and not response.close:
            raise Failure("protocol", f"GET {path} with Connection: close: response without Connection: close")
        self.done_with(response)
        self.ctx.stats.ok(op, down=n, latency=elapsed)

    def _verify_get(self, response: Response, n: int, seed: int, path: str, chunked: bool) -> None:
        if response.status != 200:
            raise Failure("status", f"GET {path}: expected 200, got {response.describe()}")
        if chunked:
            if "chunked" not in (response.header("transfer-encoding") or "").lower():
                raise Failure("protocol", f"GET {path}: expected a chunked response, headers {response.headers}")
        elif response.header("content-length") != str(n):
            raise Failure("protocol", f"GET {path}: Content-Length {response.header('content-length')!r}, expected {n}")
        if response.length != n or response.sha != self.ctx.bodies.sha(n, seed):
            raise Failure("mismatch", f"GET {path}: body differs ({response.length} bytes, sha256 {response.sha[:16]}..., "
                                      f"expected {n} bytes, sha256 {self.ctx.bodies.sha(n, seed)[:16]}...)")

    def op_get(self) -> None:
        self._get("get", chunked=False, close=self.rng.random() < 0.05)

    def op_chunked(self) -> None:
        self._get("chunked", chunked=True, close=self.rng.random() < 0.05)

    def op_upload(self) -> None:
        n = pick_size(self.rng, MAX_UPLOAD)
        data = self.rng.randbytes(n)
        chunked = self.rng.random() < 0.3
        conn = self.connection()
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {n}"
        started = time.monotonic()
        conn.send(request("POST", self.ctx.origin + "/upload", self.ctx.origin_host,
                          headers=("Content-Type: application/octet-stream", framing)))
        view, pos = memoryview(data), 0
        while pos < n:
            k = min(n - pos, self.rng.choice((1, 100, 4096, 65536, 300_000, MIB)))
            piece = view[pos:pos + k]
            conn.send(b"%x\r\n" % k + piece + b"\r\n" if chunked else piece)
            pos += k
        if chunked:
            conn.send(b"0\r\n\r\n")
        response = conn.read_response("POST")
        if response.status != 200:
            raise Failure("status", f"POST /upload ({n} bytes, {'chunked' if chunked else 'length'}): "
                                    f"expected 200, got {response.describe()}")
        expected = f"{hashlib.sha256(data).hexdigest()} {n}"
        if response.body.decode(errors="replace").strip() != expected:
            raise Failure("mismatch", f"POST /upload ({n} bytes, {'chunked' if chunked else 'length'}): origin got "
                                      f"{response.body[:80]!r}, expected {expected[:20]}... {n}")
        self.done_with(response)
        self.ctx.stats.count("upload_chunked" if chunked else "upload_length")
        self.ctx.stats.ok("upload", up=n, latency=time.monotonic() - started)

    def _tunnel(self, conn: Conn, size: int, ending: str) -> tuple[int, int]:
        """Echo `size` random bytes through an established tunnel. ending: half-close, close
        or abort. Returns (bytes sent, bytes received)."""
        data = self.rng.randbytes(size)
        sent_digest, got_digest = hashlib.sha256(data), hashlib.sha256()
        sock = conn.sock
        received = 0
        if conn.buf:
            got_digest.update(conn.buf)
            received = len(conn.buf)
            conn.buf.clear()
        abort_at = self.rng.randint(0, size) if ending == "abort" else None
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        sent, shut, eof = 0, False, False
        deadline = time.monotonic() + OP_DEADLINE
        last_progress = time.monotonic()
        view = memoryview(data)
        try:
            while True:
                if abort_at is not None and sent >= abort_at:
                    conn.close(rst=self.rng.random() < 0.5)
                    return sent, received
                if sent == size and not shut and ending == "half-close":
                    sock.shutdown(socket.SHUT_WR)
                    shut = True
                if received == size and (ending != "half-close" or eof):
                    break
                if eof:
                    raise Failure("mismatch" if received > size else "closed",
                                  f"CONNECT {self.ctx.echo}: tunnel closed after echoing {received} of {size} bytes")
                now = time.monotonic()
                if now > deadline or now - last_progress > IO_TIMEOUT:
                    raise Failure("timeout", f"CONNECT {self.ctx.echo}: tunnel stalled, sent {sent}/{size}, "
                                             f"echoed {received}, ending {ending}")
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < size else 0)
                sel.modify(sock, want)
                for _, events in sel.select(1.0):
                    if events & selectors.EVENT_WRITE and sent < size:
                        k = min(size - sent, self.rng.choice((1, 10, 1000, 16384, 65536, 262144)))
                        try:
                            sent += sock.send(view[sent:sent + k])
                            last_progress = time.monotonic()
                        except (BlockingIOError, InterruptedError):
                            pass
                    if events & selectors.EVENT_READ:
                        try:
                            chunk = sock.recv(256 * KIB)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except ConnectionResetError:
                            raise Failure("closed", f"CONNECT {self.ctx.echo}: tunnel reset after echoing "
                                                    f"{received} of {size} bytes") from None
                        if not chunk:
                            eof = True
                        else:
                            got_digest.update(chunk)
                            received += len(chunk)
                            last_progress = time.monotonic()
                            if received > size:
                                raise Failure("mismatch", f"CONNECT {self.ctx.echo}: echo longer than sent "
                                                          f"({received} > {size})")
        finally:
            sel.close()
            if not conn.closed:
                sock.setblocking(True)
                sock.settimeout(IO_TIMEOUT)
        if got_digest.hexdigest() != sent_digest.hexdigest():
            raise Failure("mismatch", f"CONNECT {self.ctx.echo}: echo of {size} bytes differs (sha256)")
        return sent, received

    def op_connect(self) -> None:
        reuse = self.conn is not None and not self.conn.closed and self.rng.random() < 0.3
        if reuse:
            conn, self.conn = self.conn, None  # the tunnel consumes the connection
        else:
            conn = Conn(self.ctx.proxy_address, self.ctx.registry)
        started = time.monotonic()
        try:
            conn.send(request("CONNECT", self.ctx.echo, self.ctx.echo))
            response = conn.read_head()
            if response.status != 200:
                raise Failure("status", f"CONNECT {self.ctx.echo}{' (reused connection)' if reuse else ''}: "
                                        f"expected 200, got {response.status} {response.reason!r}")
            size = pick_size(self.rng, 2 * MIB)
            ending = self.rng.choices(("half-close", "close", "abort"), (60, 30, 10))[0]
            sent, received = self._tunnel(conn, size, ending)
            self.ctx.stats.count(f"connect_{ending}")
            if reuse:
                self.ctx.stats.count("connect_on_reused_connection")
            self.ctx.stats.ok("connect", up=sent, down=received, latency=time.monotonic() - started)
        finally:
            conn.close()

    def _retry_authenticated(self, conn: Conn, what: str, throttled_ok: bool = False) -> None:
        """After a 407 the connection must still carry a request. throttled_ok: a 429 is
        acceptable (the source address is throttled and the good credentials were not cached)."""
        n, seed = self.rng.randint(0, 4096), self.rng.randrange(1 << 30)
        path = f"/bytes/{n}?seed={seed}"
        conn.send(request("GET", self.ctx.origin + path, self.ctx.origin_host))
        try:
            response = conn.read_response()
        except PeerClosed as closed:
            raise Failure("closed", f"{what}: the 407 kept the connection open, but the authenticated retry "
                                    f"on it failed: {closed}") from None
        if throttled_ok and response.status == 429:
            self.ctx.stats.count("badpass_retry_429")
        else:
            self._verify_get(response, n, seed, path, chunked=False)
        self.done_with(response, conn)

    def _expect_407(self, op: str, what: str, payload: bytes, method: str = "GET") -> None:
        conn = self.connection()
        conn.send(payload)
        response = conn.read_response(method)
        check_407(response, what)
        if response.close:
            self.done_with(response)
        elif method == "CONNECT" or self.rng.random() < 0.7:
            self._retry_authenticated(conn, what)
        self.ctx.stats.ok(op)

    def op_noauth(self) -> None:
        variant = self.rng.choice(("missing", "missing", "scheme", "malformed", "connect", "post"))
        target = f"{self.ctx.origin}/bytes/10?seed=1"
        self.ctx.stats.count(f"noauth_{variant}")
        if variant == "missing":
            self._expect_407("noauth", "GET without credentials", request("GET", target, self.ctx.origin_host, auth=None))
        elif variant == "scheme":
            self._expect_407("noauth", "GET with Bearer credentials",
                             request("GET", target, self.ctx.origin_host, auth="Bearer c29hazpzb2FrLXBhc3M="))
        elif variant == "malformed":
            self._expect_407("noauth", "GET with malformed Basic credentials",
                             request("GET", target, self.ctx.origin_host, auth="Basic !!!not-base64"))
        elif variant == "connect":
            self._expect_407("noauth", "CONNECT without credentials",
                             request("CONNECT", self.ctx.echo, self.ctx.echo, auth=None), method="CONNECT")
        else:
            n = self.rng.randint(1, 64 * KIB)
            payload = request("POST", self.ctx.origin + "/upload", self.ctx.origin_host, auth=None,
                              headers=(f"Content-Length: {n}",)) + self.rng.randbytes(n)
            self._expect_407("noauth", f"POST of {n} bytes without credentials", payload, method="POST")

    def op_badpass(self) -> None:
        """Wrong password or unknown user, 1-3 times on one connection, then (mostly) the right
        credentials on it. Sent from a source address of its own, 127.0.2.x: Gatehouse throttles
        failed logins per address and per user name (429 auth_throttled with Retry-After), and
        that must not touch the good traffic from 127.0.0.1. Expected: 407, or 429 once the
        address or the name is over its limit."""
        source = f"127.0.2.{self.rng.randint(1, 254)}"
        conn = Conn(self.ctx.proxy_address, self.ctx.registry, source=source)
        target = f"{self.ctx.origin}/bytes/10?seed=2"
        try:
            for _ in range(self.rng.choice((1, 1, 2, 3))):
                if self.rng.random() < 0.5:
                    auth, what = basic(USER, "wrong-" + str(self.rng.randrange(1000))), f"GET with a wrong password from {source}"
                else:
                    auth, what = basic("nobody" + str(self.rng.randrange(1000)), PASSWORD), f"GET as an unknown user from {source}"
                conn.send(request("GET", target, self.ctx.origin_host, auth=auth))
                response = conn.read_response()
                if response.status == 429:
                    if not (response.header("retry-after") or "").isdigit():
                        raise Failure("protocol", f"{what}: 429 without a numeric Retry-After ({response.headers})")
                    self.ctx.stats.count("badpass_429")
                else:
                    check_407(response, what)
                    self.ctx.stats.count("badpass_407")
                if response.close:
                    self.done_with(response, conn)
                    break
            else:
                if self.rng.random() < 0.7:
                    self._retry_authenticated(conn, what, throttled_ok=True)
            self.ctx.stats.ok("badpass")
        finally:
            conn.close()

    def op_denied(self) -> None:
        conn = self.connection()
        target = f"127.0.0.1:{self.ctx.origin_port}"
        conn.send(request("CONNECT", target, target))
        response = conn.read_response("CONNECT")
        if response.status != 403:
            raise Failure("status", f"CONNECT {target} (port not allowed): expected 403, got {response.describe()}")
        self.done_with(response)
        self.ctx.stats.ok("denied")

    def op_reset(self) -> None:
        conn = self.connection()
        seed = self.rng.randrange(1 << 30)
        conn.send(request("GET", f"{self.ctx.origin}/reset?seed={seed}", self.ctx.origin_host))
        try:
            response = conn.read_response()
        except PeerClosed as closed:
            self.drop()
            if closed.in_head or closed.response is None:
                raise Failure("closed", f"GET /reset: proxy closed without any response ({closed})") from None
            if closed.response.status != 200 or closed.got >= RESET_DECLARED:
                raise Failure("status", f"GET /reset: unexpected {closed.response.status} cut at {closed.got}") from None
            self.ctx.stats.count("reset_truncated")
            self.ctx.stats.ok("reset", down=closed.got)
            return
        if response.status == 502:
            self.done_with(response)
            self.ctx.stats.count("reset_502")
            self.ctx.stats.ok("reset")
            return
        raise Failure("status", f"GET /reset: expected the connection closed before {RESET_DECLARED} bytes "
                                f"(or a 502), got a complete {response.describe()}")

    def op_pipeline(self) -> None:
        conn = self.connection()
        plan = []
        payload = b""
        for _ in range(self.rng.choice((2, 2, 3))):
            kind = self.rng.choices(("get", "chunked", "noauth"), (5, 3, 2))[0]
            n, seed = pick_size(self.rng, 256 * KIB), self.rng.randrange(1 << 30)
            path = f"/{'chunked' if kind == 'chunked' else 'bytes'}/{n}?seed={seed}"
            payload += request("GET", self.ctx.origin + path, self.ctx.origin_host,
                               auth=None if kind == "noauth" else GOOD_AUTH)
            plan.append((kind, n, seed, path))
        started = time.monotonic()
        conn.send(payload)
        down = 0
        for i, (kind, n, seed, path) in enumerate(plan):
            response = conn.read_response()
            if kind == "noauth":
                check_407(response, f"pipelined request {i + 1}/{len(plan)} without credentials")
            else:
                self._verify_get(response, n, seed, f"{path} (pipelined {i + 1}/{len(plan)})", kind == "chunked")
                down += n
            if response.close:
                if i < len(plan) - 1:
                    raise Failure("protocol", f"pipelined request {i + 1}/{len(plan)} answered with "
                                              f"Connection: close: {response.describe()}")
                self.done_with(response)
        self.ctx.stats.count(f"pipeline_{len(plan)}")
        self.ctx.stats.ok("pipeline", down=down, latency=time.monotonic() - started)

    def op_abort(self) -> None:
        rst = self.rng.random() < 0.5
        conn = self.connection()
        self.conn = None
        try:
            if self.rng.random() < 0.6:
                n, seed = self.rng.randint(MIB, MAX_BODY), self.rng.randrange(1 << 30)
                conn.send(request("GET", f"{self.ctx.origin}/bytes/{n}?seed={seed}", self.ctx.origin_host))
                response = conn.read_head()
                if response.status != 200:
                    raise Failure("status", f"GET /bytes/{n} (to abort): expected 200, got {response.status}")
                want, got = self.rng.randint(0, n - 1), len(conn.buf)
                while got < want:
                    chunk = conn.sock.recv(min(256 * KIB, want - got))
                    if not chunk:
                        raise Failure("closed", f"GET /bytes/{n}: closed after {got} bytes")
                    got += len(chunk)
                self.ctx.stats.count("abort_download")
                self.ctx.stats.ok("abort", down=got)
            else:
                n = self.rng.randint(MIB, MAX_UPLOAD)
                part = self.rng.randint(0, n - 1)
                conn.send(request("POST", self.ctx.origin + "/upload", self.ctx.origin_host,
                                  headers=(f"Content-Length: {n}",)))
                conn.send(self.rng.randbytes(part))
                self.ctx.stats.count("abort_upload")
                self.ctx.stats.ok("abort", up=part)
        finally:
            conn.close(rst=rst)


# --------------------------------------------------------------------------------------------
# Slowloris
# --------------------------------------------------------------------------------------------

class Slowloris(threading.Thread):
    """Keeps `count` connections sending a request head one byte every ~2 s. Each must be
    answered 408 and closed by the proxy after the header timeout."""

    def __init__(self, ctx: Context, count: int, header_timeout: float, seed: int, stop: threading.Event) -> None:
        super().__init__(name="slowloris", daemon=True)
        self.ctx, self.count, self.header_timeout = ctx, count, header_timeout
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.payload = (f"GET {ctx.origin}/bytes/1?seed=1 HTTP/1.1\r\nHost: {ctx.origin_host}\r\n"
                        f"Proxy-Authorization: {GOOD_AUTH}\r\nX-Slowloris: ").encode() + b"z" * 4096

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        conns: dict[socket.socket, dict] = {}
        try:
            while not self.stop_event.is_set():
                while len(conns) < self.count and not self.stop_event.is_set():
                    try:
                        sock = socket.create_connection(self.ctx.proxy_address, timeout=5,
                                                        source_address=(f"127.0.3.{self.rng.randint(1, 254)}", 0))
                    except OSError as error:
                        self.ctx.stats.fail("slowloris", "error", f"connect: {error}")
                        self.stop_event.wait(1)
                        break
                    sock.setblocking(False)
                    now = time.monotonic()
                    conns[sock] = {"opened": now, "first": None, "next": now + self.rng.uniform(0, 2),
                                   "sent": 0, "buf": b""}
                    sel.register(sock, selectors.EVENT_READ)
                for key, _ in sel.select(0.2):
                    sock = key.fileobj
                    state = conns[sock]
                    try:
                        data = sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if data:
                        state["buf"] += data
                    else:
                        self._finish(sel, conns, sock, "closed")
                now = time.monotonic()
                for sock, state in list(conns.items()):
                    if now - (state["first"] or state["opened"]) > self.header_timeout + 10:
                        self._finish(sel, conns, sock, "overdue")
                    elif now >= state["next"] and not state["buf"]:
                        try:
                            sock.send(self.payload[state["sent"] % len(self.payload):][:1])
                            state["sent"] += 1
                            if state["first"] is None:
                                state["first"] = now
                            state["next"] = now + self.rng.uniform(1.5, 2.5)
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:
                            self._drain(sock, state)
                            self._finish(sel, conns, sock, "send failed")
        finally:
            for sock in list(conns):
                sel.unregister(sock)
                sock.close()
            sel.close()

    @staticmethod
    def _drain(sock: socket.socket, state: dict) -> None:
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    return
                state["buf"] += data
        except OSError:
            return

    def _finish(self, sel, conns: dict, sock: socket.socket, how: str) -> None:
        state = conns.pop(sock)
        sel.unregister(sock)
        sock.close()
        status_line = state["buf"].split(b"\r\n", 1)[0].decode("latin-1", errors="replace")
        if how == "overdue":
            self.ctx.stats.fail("slowloris", "timeout", f"no 408 and no close {time.monotonic() - state['opened']:.1f} s "
                                                        f"after opening (got {status_line!r})")
        elif status_line.startswith("HTTP/1.1 408"):
            self.ctx.stats.ok("slowloris")
            with self.ctx.stats.lock:
                self.ctx.stats.slowloris_times.append(time.monotonic() - state["first"])
        else:
            self.ctx.stats.fail("slowloris", "status", f"expected 408, connection {how} after {state['sent']} bytes "
                                                       f"with {status_line!r}")


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.registry = Registry()
        self.samples: list[dict] = []
        self.peak = {"rss_kib": 0, "fds": 0, "threads": 0}
        self.crashed = False
        self.t0 = time.monotonic()

    def sample(self, phase: str, record: bool = False) -> dict | None:
        s = self.proxy.sample()
        if s is None:
            return None
        s["t"] = round(time.monotonic() - self.t0, 1)
        s["phase"] = phase
        for key in self.peak:
            if s.get(key) is not None:
                self.peak[key] = max(self.peak[key], s[key])
        if record:
            self.samples.append(s)
        return s

    def load(self, seconds: float, phase: str, seed: int, report: bool) -> None:
        stop = threading.Event()
        workers = [Worker(self.ctx, i, seed * 1000 + i, stop) for i in range(self.args.concurrency)]
        threads: list[threading.Thread] = list(workers)
        if self.args.slowloris:
            threads.append(Slowloris(self.ctx, self.args.slowloris, self.args.header_timeout, seed, stop))
        for t in threads:
            t.start()
        started = time.monotonic()
        deadline = started + seconds
        next_record = started + 10
        last_ops, last_own, last_t = 0, time.process_time(), time.monotonic()
        first = self.proxy.sample()
        last_cpu = first["cpu_s"] if first else None
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                time.sleep(min(1.0, deadline - now))
                if not self.proxy.alive():
                    self.crashed = True
                    print(f"soak: gatehouse exited during {phase} (status {self.proxy.proc.returncode})",
                          file=sys.stderr)
                    break
                record = time.monotonic() >= next_record
                s = self.sample(phase, record=record)
                if record and s is not None:
                    next_record += 10
                    if report:
                        with self.stats.lock:
                            ops = sum(e["ok"] + e["fail"] for e in self.ops_view().values())
                            fails = sum(e["fail"] for e in self.stats.ops.values())
                        now, own = time.monotonic(), time.process_time()
                        span = max(now - last_t, 1e-3)
                        cpu = f"{(s['cpu_s'] - last_cpu) / span * 100:.0f}%" if last_cpu is not None else "-"
                        print(f"soak: t={now - started:5.0f}s  ops={ops} (+{(ops - last_ops) / span:.0f}/s)  "
                              f"fail={fails}  rss={s['rss_kib'] / 1024:.1f} MiB  fds={s['fds']}  "
                              f"threads={s['threads']}  cpu proxy={cpu} soak={(own - last_own) / span * 100:.0f}%",
                              flush=True)
                        last_ops, last_cpu, last_own, last_t = ops, s["cpu_s"], own, now
        finally:
            stop.set()
            grace = time.monotonic() + IO_TIMEOUT + 15
            for t in threads:
                t.join(max(0.0, grace - time.monotonic()))
            stuck = [t for t in threads if t.is_alive()]
            if stuck:
                names = ", ".join(f"{t.name}({getattr(t, 'current', '-')})" for t in stuck)
                aborted = self.registry.abort_all()
                for t in stuck:
                    t.join(5)
                self.stats.fail("run", "timeout", f"{phase}: threads still busy {IO_TIMEOUT + 15:.0f} s after stop: "
                                                  f"{names}; aborted {aborted} sockets")
            left = self.registry.close_all()
            if left:  # a bug in this script, not in the proxy: say so, and do not count it as a proxy leak
                print(f"soak: warning: {left} client sockets were still open after {phase}; closed them", file=sys.stderr)

    def ops_view(self) -> dict:
        return {k: v for k, v in self.stats.ops.items()}

    def settle(self, base: dict | None, limit_s: float) -> dict | None:
        """Waits (up to limit_s) for the proxy to be back at `base`; without base, until fds are stable."""
        deadline = time.monotonic() + limit_s
        last = None
        stable_since = time.monotonic()
        while True:
            s = self.sample("settle")
            if s is None:
                return last
            if base is not None:
                if s["fds"] <= base["fds"] + self.args.fd_slack and s["rss_kib"] <= self.rss_limit:
                    return s
            else:
                if last is not None and s["fds"] != last["fds"]:
                    stable_since = time.monotonic()
                if time.monotonic() - stable_since >= 2.0:
                    return s
            last = s
            if time.monotonic() >= deadline:
                return s
            time.sleep(0.25)

    def execute(self) -> int:
        args = self.args
        self.workdir = tempfile.mkdtemp(prefix="gatehouse-soak-")
        self.bodies = Bodies()
        self.origin = OriginServer(self.bodies)
        self.echo = EchoServer()
        for server in (self.origin, self.echo):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        origin_port, echo_port = self.origin.server_address[1], self.echo.server_address[1]
        self.proxy = None
        try:
            try:
                self.proxy = Proxy(args.binary, echo_port, self.workdir, args)
            except SetupError as error:
                print(f"soak: {error}", file=sys.stderr)
                return 2
            self.ctx = Context(self.proxy.address, origin_port, echo_port, self.bodies, self.stats, self.registry)
            print(f"soak: gatehouse pid {self.proxy.pid} on {self.proxy.address[0]}:{self.proxy.address[1]}; "
                  f"origin 127.0.0.1:{origin_port}, echo 127.0.0.1:{echo_port}", flush=True)
            print(f"soak: {' '.join(self.proxy.cmd)}", flush=True)
            time.sleep(0.5)
            self.initial = self.sample("initial", record=True)

            print(f"soak: warm-up {args.warmup:g} s", flush=True)
            self.load(args.warmup, "warm-up", args.seed, report=False)
            if not self.crashed:
                time.sleep(2)
                self.baseline = self.settle(None, 10)
                if self.baseline is not None:
                    self.baseline["phase"] = "baseline"
                    self.samples.append(self.baseline)
                    self.rss_limit = self.baseline["rss_kib"] + max(args.rss_slack_mib * 1024,
                                                                    self.baseline["rss_kib"] * args.rss_slack_pct / 100)
                    print(f"soak: baseline rss={self.baseline['rss_kib'] / 1024:.1f} MiB fds={self.baseline['fds']}; "
                          f"main phase {args.duration:g} s, concurrency {args.concurrency}, "
                          f"slowloris {args.slowloris}", flush=True)
                    self.main_started = time.monotonic()
                    self.load(args.duration, "main", args.seed + 1, report=True)
                    self.main_elapsed = time.monotonic() - self.main_started
            self.end = None
            if not self.crashed and self.proxy.alive():
                print(f"soak: load stopped; waiting up to {args.settle:g} s for the proxy to settle", flush=True)
                time.sleep(0.5)
                self.end = self.settle(self.baseline, args.settle)
                if self.end is not None:
                    self.end["phase"] = "end"
                    self.samples.append(self.end)
            if self.proxy.alive() is False:
                self.crashed = True
        finally:
            if self.proxy is not None:
                self.stderr_tail = self.proxy.stderr_tail()
                self.exit_status = self.proxy.stop()
            for server in (self.origin, self.echo):
                server.shutdown()
                server.server_close()
        return self.report()

    def report(self) -> int:
        args, stats = self.args, self.stats
        problems = []
        mismatches = stats.failure_kinds.get("mismatch", 0)
        if mismatches:
            problems.append(f"{mismatches} byte mismatches")
        other = stats.total_failures() - mismatches
        if other:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.failure_kinds.items()) if k != "mismatch")
            problems.append(f"{other} failed operations ({kinds})")
        if self.origin.leaks:
            problems.append(f"{self.origin.leaks} requests reached the origin with Proxy-Authorization")
        if self.crashed:
            problems.append(f"gatehouse exited during the run (status {self.exit_status})")
        elif self.exit_status not in (0, None):
            problems.append(f"gatehouse exited with status {self.exit_status} on stdin EOF")
        base, end = getattr(self, "baseline", None), getattr(self, "end", None)
        if base is None or end is None:
            if not self.crashed:
                problems.append("no baseline or end measurement")
        else:
            if end["fds"] > base["fds"] + args.fd_slack:
                problems.append(f"fd leak: {base['fds']} -> {end['fds']} (allowed +{args.fd_slack})")
            if end["rss_kib"] > self.rss_limit:
                problems.append(f"RSS grew: {base['rss_kib']} -> {end['rss_kib']} KiB (limit {self.rss_limit:.0f} KiB)")

        lines = []
        elapsed = getattr(self, "main_elapsed", 0.0)
        lines.append(f"Gatehouse soak: main phase {elapsed:.0f} s (+{args.warmup:g} s warm-up), concurrency "
                     f"{args.concurrency}, slowloris {args.slowloris}, binary {args.binary}")
        lines.append(f"{'operation':<11}{'ok':>9}{'fail':>7}{'up MiB':>10}{'down MiB':>10}{'p50 ms':>9}{'p99 ms':>9}")
        total = {"ok": 0, "fail": 0, "up": 0, "down": 0}
        for name in list(OPERATIONS) + ["slowloris", "run"]:
            e = stats.ops.get(name)
            if e is None:
                continue
            for key in total:
                total[key] += e[key]
            lat = stats.latency.get(name, [])
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            ms = lambda v: f"{v * 1000:>9.1f}" if v is not None else f"{'-':>9}"
            lines.append(f"{name:<11}{e['ok']:>9}{e['fail']:>7}{e['up'] / MIB:>10.1f}{e['down'] / MIB:>10.1f}"
                         f"{ms(p50)}{ms(p99)}")
        lines.append(f"{'total':<11}{total['ok']:>9}{total['fail']:>7}{total['up'] / MIB:>10.1f}{total['down'] / MIB:>10.1f}")
        gets = stats.latency.get("get", []) + stats.latency.get("chunked", [])
        if gets:
            lines.append(f"GET latency (get+chunked, {len(gets)} requests): p50 {percentile(gets, 50) * 1000:.1f} ms, "
                         f"p99 {percentile(gets, 99) * 1000:.1f} ms, max {max(gets) * 1000:.1f} ms")
        if stats.slowloris_times:
            st = stats.slowloris_times
            lines.append(f"slowloris: {len(st)} x 408; first byte to 408: min {min(st):.2f} s, "
                         f"median {percentile(st, 50):.2f} s, max {max(st):.2f} s (header timeout {args.header_timeout:g} s)")
        if stats.counters:
            lines.append("details: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.counters.items())))
        initial = getattr(self, "initial", None) or {}
        if base and end:
            lines.append(f"proxy RSS MiB: initial {initial.get('rss_kib', 0) / 1024:.1f}, start {base['rss_kib'] / 1024:.1f}, "
                         f"peak {self.peak['rss_kib'] / 1024:.1f}, end {end['rss_kib'] / 1024:.1f} "
                         f"(limit {self.rss_limit / 1024:.1f})")
            lines.append(f"proxy fds:     initial {initial.get('fds', 0)}, start {base['fds']}, peak {self.peak['fds']}, "
                         f"end {end['fds']} (limit {base['fds'] + args.fd_slack})")
            lines.append(f"proxy threads: start {base['threads']}, peak {self.peak['threads']}, end {end['threads']}")
        lines.append(f"gatehouse exit status on stdin EOF: {self.exit_status}")
        if stats.failures:
            lines.append(f"first failures ({len(stats.failures)} kept):")
            for f in stats.failures[:15]:
                lines.append(f"  t={f['t']:.1f}s {f['op']} [{f['kind']}] {f['message']}")
        if problems and self.stderr_tail:
            lines.append("gatehouse stderr (tail):")
            lines.extend("  " + line for line in self.stderr_tail.splitlines())
        verdict = "PASS" if not problems else "FAIL: " + "; ".join(problems)
        lines.append(f"verdict: {verdict}")
        print("\n".join(lines), flush=True)

        if args.json:
            out = {
                "verdict": "pass" if not problems else "fail",
                "problems": problems,
                "config": {k: v for k, v in vars(args).items()},
                "main_seconds": round(elapsed, 1),
                "operations": {k: dict(v, p50_ms=round((percentile(stats.latency.get(k, []), 50) or 0) * 1000, 2),
                                       p99_ms=round((percentile(stats.latency.get(k, []), 99) or 0) * 1000, 2))
                               for k, v in stats.ops.items()},
                "get_latency_ms": {"p50": round(percentile(gets, 50) * 1000, 2), "p99": round(percentile(gets, 99) * 1000, 2)}
                if gets else None,
                "counters": dict(stats.counters),
                "failure_kinds": dict(stats.failure_kinds),
                "failures": stats.failures,
                "slowloris_408_seconds": {"min": min(stats.slowloris_times), "median": percentile(stats.slowloris_times, 50),
                                          "max": max(stats.slowloris_times)} if stats.slowloris_times else None,
                "proxy": {"initial": initial, "baseline": base, "end": end, "peak": self.peak,
                          "rss_limit_kib": round(getattr(self, "rss_limit", 0)), "fd_limit":
                              base["fds"] + args.fd_slack if base else None, "exit_status": self.exit_status},
                "samples": self.samples,
            }
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
                f.write("\n")
        return 0 if not problems else 1


def default_binary() -> str:
    for flavour in ("release", "debug"):
        path = os.path.join(REPO, ".build", flavour, "gatehouse")
        if os.access(path, os.X_OK):
            return path
    return os.path.join(REPO, ".build", "release", "gatehouse")


def main() -> int:
    parser = argparse.ArgumentParser(description="Soak test for Gatehouse: mixed load, then byte-exactness and leak checks.")
    parser.add_argument("--duration", type=float, default=600, help="seconds of load after the warm-up (default 600)")
    parser.add_argument("--binary", default=default_binary(),
                        help="gatehouse binary (default .build/release/gatehouse, else .build/debug/gatehouse)")
    parser.add_argument("--concurrency", type=int, default=16, help="load worker threads (default 16)")
    parser.add_argument("--slowloris", type=int, default=200, help="slowloris connections kept open (default 200)")
    parser.add_argument("--json", metavar="OUT", help="write the summary as JSON to OUT")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up load before the baseline (default 5)")
    parser.add_argument("--settle", type=float, default=15, help="seconds to wait for the proxy to settle at the end (default 15)")
    parser.add_argument("--header-timeout", type=float, default=5, help="gatehouse --header-timeout in seconds (default 5)")
    parser.add_argument("--idle-timeout", type=float, default=10, help="gatehouse --idle-timeout in seconds (default 10)")
    parser.add_argument("--fd-slack", type=int, default=2, help="fds allowed above the baseline at the end (default 2)")
    parser.add_argument("--rss-slack-mib", type=float, default=10, help="RSS growth allowed, MiB (default 10) ...")
    parser.add_argument("--rss-slack-pct", type=float, default=20, help="... or percent of the baseline, whichever is larger (default 20)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000, help="random seed (default: from the clock)")
    args = parser.parse_args()
    if args.duration <= 0 or args.concurrency < 1 or args.slowloris < 0:
        parser.error("--duration and --concurrency must be positive, --slowloris >= 0")
    if not os.access(args.binary, os.X_OK):
        print(f"soak: no gatehouse binary at {args.binary} (build with Scripts/soak.sh --build)", file=sys.stderr)
        return 2
    print(f"soak: seed {args.seed}", flush=True)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    run = Run(args)
    try:
        return run.execute()
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        proxy = getattr(run, "proxy", None)
        if proxy is not None:
            proxy.stop(quiet=True)
        return 130
    finally:
        if getattr(run, "workdir", None):
            shutil.rmtree(run.workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

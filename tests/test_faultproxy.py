"""The fault proxy fixture: every fault, against a tiny in-process upstream."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from fixtures.faultproxy import (
    AddHeaders,
    Answer416,
    BodyLimit,
    Cut,
    Delay,
    FaultProxy,
    FlipByte,
    IgnoreRange,
    Redirect,
    Stall,
    Status,
    Truncate,
    WrongContentRange,
)

BLOB = random.Random(1234).randbytes(1 << 20)
BLOB_LEN = len(BLOB)
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
BLOB_PATH = "/v2/x/blobs/sha256:abc"
CHUNKED_PARTS = [b"alpha-", b"beta-" * 1000, b"gamma"]


class _Upstream(BaseHTTPRequestHandler):
    """Serves BLOB at BLOB_PATH (with Range), a chunked body, a 401, and uploads."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle waits

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def base(self) -> str:
        host, port = self.connection.getsockname()[:2]
        return f"http://{host!s}:{port}"

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self._send(401, {"WWW-Authenticate": 'Bearer realm="http://auth/token"'}, b"{}")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in CHUNKED_PARTS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path.split("?")[0] == BLOB_PATH:
            headers = {"Docker-Content-Digest": BLOB_DIGEST, "Content-Type": "application/x"}
            rng = self.headers.get("Range")
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
            if m is None:
                self._send(200, headers, BLOB)
                return
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else BLOB_LEN - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{BLOB_LEN}"
            self._send(206, headers, BLOB[start : end + 1])
        else:
            self._send(404, {}, b"not found")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                out += self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return bytes(out)
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _upload(self) -> None:
        body = self._read_body()
        info = {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        location = f"{self.base}/v2/x/blobs/uploads/u1?_state=a%2Bb%3D"
        self._send(202, {"Location": location}, json.dumps(info).encode())

    do_PUT = do_PATCH = do_POST = _upload


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the proxy cutting or dropping upstream connections is expected here


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as p:
        yield p


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def read_until_error(client: httpx.Client, url: str) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    try:
        with client.stream("GET", url) as r:
            for chunk in r.iter_raw():
                got += chunk
    except httpx.TransportError as exc:
        return bytes(got), exc
    return bytes(got), None


def raw_get(host: str, path: str) -> tuple[bytes, bytes]:
    """GET over a bare socket, read to EOF (a reset raises): (head, body)."""
    hostname, port = host.split(":")
    with socket.create_connection((hostname, int(port)), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body


# --------------------------------------------------------------------------- forwarding


def test_forwarding_keeps_bytes_and_headers(proxy: FaultProxy, client: httpx.Client) -> None:
    r = client.get(proxy.url + BLOB_PATH)
    assert r.status_code == 200
    assert r.content == BLOB
    assert r.headers["content-length"] == str(BLOB_LEN)
    assert r.headers["docker-content-digest"] == BLOB_DIGEST

    r = client.get(proxy.url + "/v2/")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="http://auth/token"'

    r = client.head(proxy.url + BLOB_PATH)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(BLOB_LEN)
    assert r.content == b""

    r = client.get(proxy.url + "/chunked")
    assert r.content == b"".join(CHUNKED_PARTS)
    assert r.headers.get("transfer-encoding") == "chunked"

    (rec,) = proxy.requests("GET", "/v2/x/")
    assert rec.status == 200
    assert rec.fault is None
    assert rec.body_bytes_sent == BLOB_LEN
    assert rec.request_headers["host"] == proxy.host


def test_keep_alive_serves_several_requests_on_one_connection(proxy: FaultProxy) -> None:
    host, port = proxy.host.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        first_sock = None
        for i in range(5):
            method = "HEAD" if i == 2 else "GET"
            conn.request(method, BLOB_PATH, headers={"Range": f"bytes={i * 10}-{i * 10 + 9}"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 206
            assert body == (b"" if method == "HEAD" else BLOB[i * 10 : i * 10 + 10])
            assert not resp.will_close
            first_sock = first_sock or conn.sock
            assert conn.sock is first_sock
    finally:
        conn.close()
    assert len(proxy.snapshot()) == 5


def test_range_is_forwarded(proxy: FaultProxy, client: httpx.Client) -> None:
    r = client.get(proxy.url + BLOB_PATH, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 100-199/{BLOB_LEN}"
    assert r.content == BLOB[100:200]


def test_uploads_are_forwarded_and_location_rewritten(
    proxy: FaultProxy, client: httpx.Client, upstream: str
) -> None:
    payload = random.Random(7).randbytes(300_000)
    want = {"len": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}

    r = client.put(proxy.url + "/v2/x/blobs/uploads/u1?digest=sha256:00", content=payload)
    assert r.status_code == 202
    assert r.json() == want
    assert r.headers["location"] == proxy.url + "/v2/x/blobs/uploads/u1?_state=a%2Bb%3D"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 70_000):
            yield payload[i : i + 70_000]

    r = client.patch(proxy.url + "/v2/x/blobs/uploads/u1", content=chunks())  # chunked
    assert r.json() == want

    r = client.post(proxy.url + "/v2/x/blobs/uploads/")
    assert r.json()["len"] == 0
    assert [rec.method for rec in proxy.requests(path_contains="/uploads/")] == [
        "PUT",
        "PATCH",
        "POST",
    ]
    assert proxy.requests("PUT")[0].path == "/v2/x/blobs/uploads/u1?digest=sha256:00"


def test_body_limit_refuses_request_bodies_over_the_cap_with_413_and_forwards_the_rest(
    proxy: FaultProxy, client: httpx.Client
) -> None:
    fault = proxy.add(BodyLimit(1000))
    url = proxy.url + "/v2/x/blobs/uploads/u1"
    assert client.patch(url, content=b"x" * 1000).json()["len"] == 1000
    assert client.patch(url, content=b"x" * 1001).status_code == 413
    assert client.patch(url, content=iter([b"x" * 10])).status_code == 413  # no length: refused
    assert client.post(proxy.url + "/v2/x/blobs/uploads/").status_code == 202
    # The connection stays usable after a refusal (the body was read and dropped).
    assert client.patch(url, content=b"y" * 10).json()["len"] == 10
    assert fault.fired == 2
    assert [r.status for r in proxy.requests("PATCH")] == [202, 413, 413, 202]


def test_add_headers_adds_to_the_upstream_answer(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(AddHeaders([("OCI-Chunk-Min-Length", "123")], method="POST"))
    r = client.post(proxy.url + "/v2/x/blobs/uploads/")
    assert r.status_code == 202 and r.headers["oci-chunk-min-length"] == "123"
    assert r.headers["location"].startswith(proxy.url)
    assert "oci-chunk-min-length" not in client.post(proxy.url + "/v2/x/blobs/uploads/").headers


def test_upstream_down_gives_502() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with FaultProxy(dead) as p, httpx.Client(timeout=10) as c:
        assert c.get(p.url + BLOB_PATH).status_code == 502


# --------------------------------------------------------------------------- faults


def test_cut_gives_exactly_n_bytes_then_an_error(proxy: FaultProxy, client: httpx.Client) -> None:
    fault = proxy.add(Cut(at=1000))
    got, err = read_until_error(client, proxy.url + BLOB_PATH)
    assert isinstance(err, httpx.TransportError)
    assert got == BLOB[:1000]
    assert fault.fired == 1
    assert proxy.requests()[0].fault == "Cut"

    assert client.get(proxy.url + BLOB_PATH).content == BLOB  # times=1: used up
    assert fault.fired == 1


def test_cut_counts_from_the_start_of_a_206(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(Cut(at=10))
    got = bytearray()
    with (
        pytest.raises(httpx.TransportError),
        client.stream("GET", proxy.url + BLOB_PATH, headers={"Range": "bytes=5000-"}) as r,
    ):
        assert r.status_code == 206
        for chunk in r.iter_raw():
            got += chunk
    assert bytes(got) == BLOB[5000:5010]


def test_ignore_range_gives_200_with_whole_body(proxy: FaultProxy, client: httpx.Client) -> None:
    fault = proxy.add(IgnoreRange())
    client.get(proxy.url + BLOB_PATH)  # no Range: does not match, keeps its use
    assert fault.fired == 0
    r = client.get(proxy.url + BLOB_PATH, headers={"Range": "bytes=100-199"})
    assert r.status_code == 200
    assert r.content == BLOB
    assert fault.fired == 1
    assert proxy.requests()[-1].request_headers["range"] == "bytes=100-199"


def test_wrong_content_range_shifts(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(WrongContentRange(shift=10))
    r = client.get(proxy.url + BLOB_PATH, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 110-209/{BLOB_LEN}"
    assert r.content == BLOB[100:200]


def test_status_with_retry_after_then_forwarding(proxy: FaultProxy, client: httpx.Client) -> None:
    fault = proxy.add(Status(429, retry_after="2", times=2, body=b'{"errors":[]}'))
    for _ in range(2):
        r = client.get(proxy.url + BLOB_PATH)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "2"
        assert r.content == b'{"errors":[]}'
    r = client.get(proxy.url + BLOB_PATH)
    assert r.status_code == 200
    assert r.content == BLOB
    assert fault.fired == 2
    assert [rec.fault for rec in proxy.snapshot()] == ["Status", "Status", None]
    assert [rec.status for rec in proxy.snapshot()] == [429, 429, 200]


def test_status_on_upload_drains_body_and_keeps_connection(
    proxy: FaultProxy, client: httpx.Client
) -> None:
    proxy.add(Status(500, match=re.compile(r"/uploads/\w+$"), method="PATCH"))
    body = b"z" * 200_000
    assert client.patch(proxy.url + "/v2/x/blobs/uploads/u1", content=body).status_code == 500
    r = client.patch(proxy.url + "/v2/x/blobs/uploads/u1", content=body)
    assert r.status_code == 202
    assert r.json()["len"] == len(body)


def test_flip_byte_in_full_body_and_in_206(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(FlipByte(offset=5000))
    got = client.get(proxy.url + BLOB_PATH).content
    assert len(got) == BLOB_LEN
    assert [i for i in range(BLOB_LEN) if got[i] != BLOB[i]] == [5000]
    assert got[5000] == BLOB[5000] ^ 0xFF

    proxy.add(FlipByte(offset=5000))
    r = client.get(proxy.url + BLOB_PATH, headers={"Range": "bytes=4096-8191"})
    assert r.status_code == 206
    want = bytearray(BLOB[4096:8192])
    want[5000 - 4096] ^= 0xFF
    assert r.content == bytes(want)


def test_truncate_closes_cleanly_after_n_bytes(proxy: FaultProxy) -> None:
    proxy.add(Truncate(at=500))
    head, body = raw_get(proxy.host, BLOB_PATH)  # reaches EOF without a reset
    assert f"content-length: {BLOB_LEN}".encode() in head.lower()
    assert body == BLOB[:500]


def test_stall_sends_some_bytes_then_waits_then_closes(
    proxy: FaultProxy, client: httpx.Client
) -> None:
    proxy.add(Stall(after=100, seconds=0.3))
    t0 = time.monotonic()
    got, err = read_until_error(client, proxy.url + BLOB_PATH)
    assert time.monotonic() - t0 >= 0.3
    assert got == BLOB[:100]
    assert err is not None


def test_answer_416_only_to_range_requests(upstream: str, client: httpx.Client) -> None:
    with FaultProxy(upstream) as proxy:
        fault = proxy.add(Answer416(total=BLOB_LEN))
        assert client.get(proxy.url + BLOB_PATH).status_code == 200
        r = client.get(proxy.url + BLOB_PATH, headers={"Range": f"bytes={BLOB_LEN}-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{BLOB_LEN}"
        assert fault.fired == 1


def test_redirect_to_second_proxy_records_headers(upstream: str, proxy: FaultProxy) -> None:
    with FaultProxy(upstream) as cdn:
        proxy.add(Redirect(cdn.url, times=None))
        with httpx.Client(timeout=10, headers={"Authorization": "Bearer secret"}) as c:
            r = c.get(proxy.url + BLOB_PATH + "?x=1", follow_redirects=False)
            assert r.status_code == 307
            assert r.headers["location"] == cdn.url + BLOB_PATH + "?x=1"

            r = c.get(proxy.url + BLOB_PATH + "?x=1", follow_redirects=True)
            assert r.status_code == 200
            assert r.content == BLOB

        assert all(rec.request_headers["authorization"] == "Bearer secret" for rec in proxy.records)
        assert [rec.status for rec in proxy.snapshot()] == [307, 307]
        (seen,) = cdn.requests("GET")
        assert seen.path == BLOB_PATH + "?x=1"
        assert "authorization" not in seen.request_headers
        assert cdn.bytes_sent() == BLOB_LEN


def test_latency_and_delay_add_time(upstream: str, client: httpx.Client) -> None:
    with FaultProxy(upstream, latency=0.2) as slow:
        t0 = time.monotonic()
        assert client.get(slow.url + "/v2/").status_code == 401
        assert time.monotonic() - t0 >= 0.2

    with FaultProxy(upstream) as proxy:
        proxy.add(Delay(0.2))
        t0 = time.monotonic()
        assert client.get(proxy.url + BLOB_PATH).content == BLOB
        assert time.monotonic() - t0 >= 0.2
        assert proxy.requests()[0].fault == "Delay"


def test_rate_caps_response_bodies(upstream: str, client: httpx.Client) -> None:
    with FaultProxy(upstream, rate=1 << 20) as proxy:  # 1 MiB/s
        t0 = time.monotonic()
        r = client.get(proxy.url + BLOB_PATH, headers={"Range": "bytes=0-262143"})
        assert r.content == BLOB[:262144]
        assert time.monotonic() - t0 >= 0.15  # 256 KiB minus the first burst at 1 MiB/s


def test_bytes_sent_and_requests(proxy: FaultProxy, client: httpx.Client) -> None:
    client.get(proxy.url + BLOB_PATH)
    client.head(proxy.url + BLOB_PATH)
    proxy.add(Cut(at=1000))
    read_until_error(client, proxy.url + BLOB_PATH)
    client.get(proxy.url + "/v2/")
    assert proxy.bytes_sent("/blobs/") == BLOB_LEN + 1000
    assert proxy.bytes_sent() == BLOB_LEN + 1000 + 2
    assert len(proxy.requests("GET")) == 3
    assert len(proxy.requests("HEAD", "/blobs/")) == 1
    proxy.clear()
    proxy.records.reset()
    assert proxy.snapshot() == []


def test_stop_does_not_hang_on_a_stalled_connection(upstream: str) -> None:
    proxy = FaultProxy(upstream).start()
    proxy.add(Stall(after=10, seconds=30))
    result: list[tuple[bytes, BaseException | None]] = []

    def fetch() -> None:
        with httpx.Client(timeout=10) as c:
            result.append(read_until_error(c, proxy.url + BLOB_PATH))

    thread = threading.Thread(target=fetch)
    thread.start()
    deadline = time.monotonic() + 5
    while proxy.bytes_sent() < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    proxy.stop()
    assert time.monotonic() - t0 < 5
    thread.join(5)
    assert result
    assert result[0][0] == BLOB[:10]
    assert result[0][1] is not None

#!/usr/bin/env python3
"""Streaming time-to-first-byte probe for bench/run.sh.

Sends N sequential streaming chat completions over one keep-alive HTTP/1.1
connection (raw socket, TCP_NODELAY) and measures, per request, the time from
just before the request is written to the moment the first body bytes holding
an SSE `data:` line are received. Every response is read to its end so the
connection stays reusable. Prints one JSON object:
{"n": N, "median_ms": ..., "p99_ms": ..., "min_ms": ..., "mean_ms": ...}

usage: ttfb.py HOST:PORT MODEL [N] [WARMUP]

A gateway key in the environment variable TTFB_KEY is sent as `Authorization: Bearer`.
"""
import json
import math
import os
import socket
import statistics
import sys
import time

PATH = "/v1/chat/completions"
KEY = os.environ.get("TTFB_KEY", "")
AUTH = f"Authorization: Bearer {KEY}\r\n" if KEY else ""


class Conn:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by peer")
        return data

    def request(self, body):
        """One request; returns seconds to the first `data:` body bytes."""
        head = (
            f"POST {PATH} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: text/event-stream\r\n"
            f"{AUTH}"
            f"Content-Length: {len(body)}\r\n"
            "\r\n"
        ).encode()
        assert not self.buf, "stray bytes between responses"
        t0 = time.perf_counter()
        self.sock.sendall(head + body)
        # Status line and headers.
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.recv()
        raw_head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {self.buf[:300]!r}")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not chunked and "content-length" not in headers:
            raise RuntimeError("response has neither chunked encoding nor Content-Length")
        ttfb = None
        seen = b""  # body payload received so far, kept only until the first `data:`

        def check(extra):
            nonlocal ttfb
            if ttfb is None and b"data:" in seen + extra:
                ttfb = time.perf_counter() - t0

        if chunked:
            while True:
                while b"\r\n" not in self.buf:
                    self.buf += self.recv()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    # Trailers (normally none), then the final CRLF.
                    while True:
                        while b"\r\n" not in self.buf:
                            self.buf += self.recv()
                        line, self.buf = self.buf.split(b"\r\n", 1)
                        if line == b"":
                            break
                    break
                # The chunk may still be arriving: timestamp the first `data:`
                # bytes as soon as they are in hand, not when the chunk completes.
                while len(self.buf) < size + 2:
                    check(self.buf[:size])
                    self.buf += self.recv()
                payload, self.buf = self.buf[:size], self.buf[size + 2:]
                check(payload)
                if ttfb is None:
                    seen += payload
        else:
            remaining = int(headers["content-length"])
            while remaining > 0:
                if not self.buf:
                    self.buf = self.recv()
                take = self.buf[:remaining]
                self.buf = self.buf[len(take):]
                remaining -= len(take)
                check(take)
                if ttfb is None:
                    seen += take
        if ttfb is None:
            raise RuntimeError("stream ended without any `data:` line")
        if headers.get("connection", "").lower() == "close":
            self.sock.close()
            self.__init__(self.host, self.port)
        return ttfb


def percentile(sorted_xs, q):
    # Nearest-rank percentile.
    k = max(0, min(len(sorted_xs) - 1, math.ceil(q / 100 * len(sorted_xs)) - 1))
    return sorted_xs[k]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    host, _, port = sys.argv[1].rpartition(":")
    model = sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        },
        separators=(",", ":"),
    ).encode()
    conn = Conn(host, int(port))
    for _ in range(warmup):
        conn.request(body)
    xs = sorted(conn.request(body) * 1000.0 for _ in range(n))
    print(
        json.dumps(
            {
                "n": n,
                "median_ms": statistics.median(xs),
                "p99_ms": percentile(xs, 99),
                "min_ms": xs[0],
                "mean_ms": statistics.fmean(xs),
            }
        )
    )


if __name__ == "__main__":
    main()

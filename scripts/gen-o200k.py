#!/usr/bin/env python3
"""Converts tiktoken's o200k_base vocabulary into the compact file bourse embeds.

Usage: scripts/gen-o200k.py PATH/TO/o200k_base.tiktoken [OUT]
OUT defaults to crates/bourse/src/meter/o200k_base.bin (relative to the repository root).
Prints the SHA-256 of what it wrote.

Input: one line per token, "base64(token bytes) SPACE rank". The ranks must be exactly
0..N-1 (each once) and no token may be longer than 255 bytes; anything else is an error.
The input comes with the tiktoken-rs crate
(~/.cargo/registry/src/*/tiktoken-rs-*/assets/o200k_base.tiktoken; OpenAI's vocabulary,
MIT licensed).

Output format (all integers little-endian):
    magic   4 bytes   b"BPE1"
    count   u32       N, the number of tokens
    N records, in rank order (record r is the token of rank r):
        len     u8        length of the token in bytes, 1..=255
        bytes   len bytes the token
Nothing follows the last record.
"""

import base64
import hashlib
import os
import struct
import sys

MAGIC = b"BPE1"


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    src = sys.argv[1]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join(root, "crates/bourse/src/meter/o200k_base.bin")

    by_rank = {}
    with open(src, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split(b" ")
            if len(fields) != 2:
                raise SystemExit(f"{src}:{lineno}: expected 'base64 rank'")
            token = base64.b64decode(fields[0], validate=True)
            rank = int(fields[1])
            if rank in by_rank:
                raise SystemExit(f"{src}:{lineno}: rank {rank} appears twice")
            if not 1 <= len(token) <= 255:
                raise SystemExit(f"{src}:{lineno}: token of {len(token)} bytes does not fit a u8 length")
            by_rank[rank] = token

    n = len(by_rank)
    if sorted(by_rank) != list(range(n)):
        raise SystemExit(f"{src}: ranks are not exactly 0..{n - 1}")
    if len(set(by_rank.values())) != n:
        raise SystemExit(f"{src}: a token appears under two ranks")

    blob = bytearray(MAGIC + struct.pack("<I", n))
    for rank in range(n):
        token = by_rank[rank]
        blob.append(len(token))
        blob += token

    with open(out, "wb") as f:
        f.write(blob)
    longest = max(len(t) for t in by_rank.values())
    print(f"{out}: {n} tokens, longest {longest} bytes, {len(blob)} bytes")
    print(f"sha256 {hashlib.sha256(blob).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

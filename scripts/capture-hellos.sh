#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Regenerates the real ClientHellos in tests/data/hello/ that the sniffer unit
# tests read. Each client (openssl s_client, curl, python3 ssl, node tls) is
# pointed at a throwaway listener on 127.0.0.1 that saves the first TLS
# handshake message the client sends, re-framed exactly as it arrived, and
# then hangs up. Only loopback traffic; no other address is contacted.
# The hellos differ run to run (random, key shares), so the tests check
# structure and SNI, never exact bytes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../tests/data/hello}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# capture NAME CMD...: run CMD with @PORT@ replaced by the listener's port and
# write what it sent first to $out/NAME.bin.
capture() {
	local name=$1
	shift
	python3 - "$out/$name.bin" "$@" <<'PY'
import socket, subprocess, sys

# Stop reading once the handshake message is complete, or at this many bytes.
READ_MAX_BYTES = 65536
TIMEOUT_S = 10

path, argv = sys.argv[1], sys.argv[2:]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
srv.settimeout(TIMEOUT_S)
port = str(srv.getsockname()[1])
client = subprocess.Popen([a.replace("@PORT@", port) for a in argv],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
conn, _ = srv.accept()
conn.settimeout(TIMEOUT_S)
data = b""

def complete(d):
    """True once the records so far carry a whole handshake message."""
    hs, off = b"", 0
    while off + 5 <= len(d):
        rlen = int.from_bytes(d[off + 3:off + 5], "big")
        hs += d[off + 5:off + 5 + rlen]
        off += 5 + rlen
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            return off
    return 0

while len(data) < READ_MAX_BYTES:
    chunk = conn.recv(4096)
    if not chunk:
        break
    data += chunk
    end = complete(data)
    if end:
        data = data[:end]
        break
conn.close()
client.kill()
client.wait()
if not complete(data):
    sys.exit(f"capture {path}: incomplete hello ({len(data)} bytes)")
with open(path, "wb") as f:
    f.write(data)
print(f"{path}: {len(data)} bytes")
PY
}

capture openssl openssl s_client -connect 127.0.0.1:@PORT@ -servername example.com
capture openssl-nosni openssl s_client -connect 127.0.0.1:@PORT@ -noservername
# RFC 6066 forbids IP literals in SNI, but openssl sends what it is told.
capture openssl-ip openssl s_client -connect 127.0.0.1:@PORT@ -servername 192.0.2.1
capture curl curl -sk --max-time 5 --resolve example.com:@PORT@:127.0.0.1 \
	https://example.com:@PORT@/
capture curl-ip curl -sk --max-time 5 https://127.0.0.1:@PORT@/
capture python python3 -c '
import socket, ssl, sys
ctx = ssl.create_default_context()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
ctx.wrap_socket(s, server_hostname="example.com")
' @PORT@
capture node node -e '
require("tls").connect({ host: "127.0.0.1", port: +process.argv[1],
	servername: "example.com" }).on("error", () => process.exit(0));
' @PORT@

#!/usr/bin/env python3
"""Measures the proxy under hostile peers (issue 18's bars), on loopback only:

1. decompression-bomb headers (GIF, PNG, WebP, JPEG, AVIF) declaring
   65535x65535: time per request and the proxy's peak RSS;
2. 50 HTTP/1.1 connections and 50 h2 streams (two connections, initial
   window 0, so the proxy may send no DATA) asking for distinct 20 MB
   cacheable responses and never reading: the proxy's RSS and the latency of
   /_vaeproxy/healthz, polled every 100 ms meanwhile;
3. slowloris: 300 connections trickling header bytes from 127.0.0.1 while a
   client on 127.0.0.2 fetches a cached page every 100 ms (issue 17's bar:
   < 100 ms), and how many the per-address cap closed.

Runs `target/release/vaeproxy serve` as a child with a generated config and a
Python origin on 127.0.0.1. Needs `pip install h2`. Pause any training while
it runs: it reports latencies.

    cargo build --release && python3 scripts/hostile-bench.py
"""
import http.server, os, socket, struct, subprocess, sys, tempfile, threading, time, zlib

import h2.config, h2.connection

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import Server, free_port, read_all, rss  # noqa: E402

BIG = b"\x07" * (20 << 20)


def png_bomb():
    ihdr = struct.pack(">IIBBBBB", 65535, 65535, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def gif_bomb():
    return b"GIF89a" + struct.pack("<HH", 65535, 65535) + bytes([0x80, 0, 0, 0, 0, 0, 255, 255, 255, 0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 1, 0, 0x3B])


def webp_bomb():
    # VP8X canvas 65535x65535 (24-bit fields) around a real 1x1 lossless image
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "WEBP", lossless=True)
    inner = buf.getvalue()[12:]  # the VP8L chunk
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (65534).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + inner
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_bomb():
    # a real JPEG whose frame header (SOF0) is patched to 65535x65535
    b = bytearray(open("tests/data/canyon.jpg", "rb").read())
    i = b.index(b"\xff\xc0")
    b[i + 5 : i + 9] = struct.pack(">HH", 65535, 65535)
    return bytes(b)


def avif_bomb():
    ispe = struct.pack(">I", 20) + b"ispe" + b"\x00" * 4 + struct.pack(">II", 65535, 65535)
    ftyp = struct.pack(">I", 20) + b"ftypavif" + b"\x00\x00\x00\x00" + b"avif"
    return ftyp + ispe


BOMBS = {"gif": gif_bomb(), "png": png_bomb(), "webp": webp_bomb(), "jpeg": jpeg_bomb(), "avif": avif_bomb()}


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # head and body are separate writes: without this, Nagle plus delayed
    # ACKs add 40 ms to every response
    disable_nagle_algorithm = True

    def do_GET(self):
        name = self.path.strip("/").split(".")[0]
        body = BOMBS.get(name) or (b"a small cacheable page\n" if name == "page" else BIG)
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "max-age=600")
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *a):
        pass



def get(port, path, timeout=10, source="127.0.0.1"):
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = read_all(s)
    s.close()
    return data, (time.perf_counter() - t) * 1000


def main():
    origin = Server(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    # health and metrics answer on the admin listener only; it is served by
    # the same runtime, so its latency is the runtime's under the attack
    port, admin = free_port(), free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f'listen = "127.0.0.1:{port}"\nsamples = []\n[admin]\nlisten = "127.0.0.1:{admin}"\n[[route]]\norigin = "http://127.0.0.1:{origin.server_address[1]}"\n'
              '[cache]\nmax_object_bytes = 33554432\n')
    cfg.close()
    env = dict(os.environ, RUST_LOG="warn")
    proxy = subprocess.Popen(["target/release/vaeproxy", "serve", "--config", cfg.name], env=env)
    try:
        for _ in range(100):
            try:
                get(admin, "/_vaeproxy/healthz", 1)
                break
            except OSError:
                time.sleep(0.1)
        print("bombs (each requested 3 times, distinct URLs):")
        for name in BOMBS:
            times = []
            for i in range(3):
                data, ms = get(port, f"/{name}.{i}")
                assert data.startswith(b"HTTP/1.1 200"), data[:100]
                times.append(ms)
            print(f"  {name:5s} {len(BOMBS[name]):5d} B  max {max(times):6.1f} ms  median {sorted(times)[1]:6.1f} ms")
        m = rss(proxy.pid)
        print(f"  proxy RSS {m['VmRSS']} MB, peak {m['VmHWM']} MB")
        guards = [l for l in get(admin, "/_vaeproxy/metrics")[0].decode().splitlines() if l.startswith("vaeproxy_guard_total")]
        print("  " + "; ".join(guards))

        print("slow readers: 50 HTTP/1.1 connections + 50 h2 streams, 20 MB each, never read")
        idle = []
        for i in range(50):
            c = socket.create_connection(("127.0.0.1", port))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sendall(f"GET /big/h1/{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            idle.append(c)
        for k in range(2):
            c = socket.create_connection(("127.0.0.1", port))
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
            for i in range(25):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [(":method", "GET"), (":path", f"/big/h2/{k}/{i}"), (":scheme", "http"), (":authority", "t")], end_stream=True)
            c.sendall(conn.data_to_send())
            idle.append(c)
        worst, lat, peak = 0.0, [], 0
        t_end = time.time() + 10
        while time.time() < t_end:
            _, ms = get(admin, "/_vaeproxy/healthz")
            lat.append(ms)
            peak = max(peak, rss(proxy.pid)["VmRSS"])
            time.sleep(0.1)
        lat.sort()
        m = rss(proxy.pid)
        print(f"  healthz over 10 s: {len(lat)} requests, median {lat[len(lat)//2]:.1f} ms, max {lat[-1]:.1f} ms")
        print(f"  proxy RSS max while polling {peak} MB, peak (VmHWM) {m['VmHWM']} MB")
        metrics = get(admin, "/_vaeproxy/metrics")[0].decode().splitlines()
        for l in metrics:
            if l.startswith(("vaeproxy_buffer_budget", "vaeproxy_requests_total", "vaeproxy_origin_requests")):
                print("  " + l)
        for c in idle:
            c.close()

        print("slowloris: 300 connections from 127.0.0.1 trickling a header byte a second;")
        print("  a client on 127.0.0.2 fetching a cached page on the public listener every 100 ms")
        get(port, "/page", source="127.0.0.2")
        slow, refused = [], 0
        for i in range(300):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
            slow.append(c)
        stop = threading.Event()

        def trickle():
            while not stop.is_set():
                for c in slow:
                    try:
                        c.send(b"x")
                    except OSError:
                        pass
                stop.wait(1.0)

        threading.Thread(target=trickle, daemon=True).start()
        lat = []
        t_end = time.time() + 10
        while time.time() < t_end:
            data, ms = get(port, "/page", source="127.0.0.2")
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            lat.append(ms)
            time.sleep(0.1)
        stop.set()
        for c in slow:
            c.setblocking(False)
            try:
                if c.recv(1) == b"":
                    refused += 1
            except BlockingIOError:
                pass
            except OSError:
                refused += 1
            c.close()
        lat.sort()
        m = rss(proxy.pid)
        print(f"  page over 10 s: {len(lat)} requests, median {lat[len(lat)//2]:.2f} ms, max {lat[-1]:.2f} ms")
        print(f"  closed by the per-address cap: {refused} of 300; proxy RSS {m['VmRSS']} MB")
    finally:
        proxy.terminate()
        proxy.wait()
        os.unlink(cfg.name)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Soak test (issue 17): mixed traffic with origin faults, on loopback only.

Runs `target/release/vaeproxy serve` as a child in front of a Python origin
and sends, at fixed rates for --minutes:

- image misses at --encode-rate per second (default 40: about twice what one
  pool thread encodes), each a new JPEG made by the origin from a packaged
  photo, half from latent-capable clients;
- image and document hits (a working set requested again and again), and
  documents fresh for 2 s with an ETag (revalidated with 304s);
- faults, a few per second: `down.test` routed to a closed port (connection
  refused), a head that never comes (hang past the header timeout), a body
  that trickles slowly but completes, a connection reset in the middle of a
  body, and a stale entry whose origin now answers 500 (stale-if-error).

It checks every answer: a 200 must carry its whole body (Content-Length
matches; documents byte for byte), and errors count as expected only where
the origin caused them (refused, hang, reset). A reset body must never come
back later as a complete 200 (that would mean the truncated body was
stored). RSS is read after --warmup seconds and at the end.

    cargo build --release && python3 scripts/soak.py --minutes 30

Prints one report; exits 1 when a check fails. Pause training while it runs.
"""
import argparse, http.server, re, io, os, random, socket, subprocess, sys, tempfile, threading, time

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import Server, free_port, read_all, rss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = [Image.open(os.path.join(ROOT, "config/demo", f)).convert("RGB")
          for f in ("canyon01.jpg", "lava3.jpg", "sea8.jpg")]


def image_bytes(n):
    """A distinct 256x192 JPEG for every n (a crop of a packaged photo)."""
    p = PHOTOS[n % len(PHOTOS)]
    rng = random.Random(n)
    x, y = rng.randrange(p.width - 256), rng.randrange(p.height - 192)
    buf = io.BytesIO()
    p.crop((x, y, x + 256, y + 192)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def doc_bytes(n):
    return (f"document {n}\n" * 64).encode()


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    stale_served = {}

    def reply(self, body, ctype, cc, etag=None):
        if etag and self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("etag", etag)
            self.send_header("cache-control", cc)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", cc)
        if etag:
            self.send_header("etag", etag)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        kind, _, n = path.strip("/").partition("/")
        try:
            if kind == "img":
                self.reply(image_bytes(int(n)), "image/jpeg", "max-age=600")
            elif kind == "doc":
                self.reply(doc_bytes(int(n)), "text/plain", "max-age=2", etag=f'"d{n}"')
            elif kind == "hang":
                time.sleep(40)
            elif kind == "slow":
                body = doc_bytes(7)[:200]
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                for i in range(0, len(body), 50):
                    self.wfile.write(body[i:i + 50])
                    self.wfile.flush()
                    time.sleep(0.3)
            elif kind == "reset":
                self.send_response(200)
                self.send_header("content-length", "100000")
                self.send_header("cache-control", "max-age=600")
                self.end_headers()
                self.wfile.write(b"x" * 30000)
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
            elif kind == "stale":
                # 200 once (fresh 1 s, stale-if-error 600), then 500s
                if Origin.stale_served.setdefault(n, 0) == 0:
                    Origin.stale_served[n] = 1
                    self.reply(doc_bytes(1000 + int(n)), "text/plain", "max-age=1, stale-if-error=600")
                else:
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
            else:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
        except OSError:
            pass

    def log_message(self, *a):
        pass



def fetch(port, path, host="t", accept=None, timeout=30):
    """(status, headers dict, body, error) over a fresh connection."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        if accept:
            req += f"Accept: {accept}\r\n"
        s.sendall((req + "\r\n").encode())
        data = read_all(s)
        s.close()
    except OSError as e:
        return 0, {}, b"", str(e)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0, {}, b"", "no status line"
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body, None



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=120, help="seconds before the first RSS reading")
    ap.add_argument("--encode-rate", type=float, default=40)
    ap.add_argument("--hit-rate", type=float, default=200)
    ap.add_argument("--fault-rate", type=float, default=4)
    a = ap.parse_args()

    origin = Server(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    oport = origin.server_address[1]
    port, admin = free_port(), free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f'listen = "127.0.0.1:{port}"\nsamples = []\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
              # small caches, so they are full after the warm-up and RSS then
              # measures leaks, not the cache filling
              f'[cache]\ncapacity_bytes = "32MiB"\noriginals_bytes = "16MiB"\n'
              f'[limits]\nheader_timeout_ms = "5s"\nmax_connections_per_ip = 4096\n'
              f'[[route]]\nhost = "down.test"\norigin = "http://127.0.0.1:9"\n'
              f'[[route]]\norigin = "http://127.0.0.1:{oport}"\n')
    cfg.close()
    proxy = subprocess.Popen([os.path.join(ROOT, "target/release/vaeproxy"), "serve", "--config", cfg.name],
                             env=dict(os.environ, RUST_LOG="error"))
    info = subprocess.run([os.path.join(ROOT, "target/release/vaeproxy"), "info"], capture_output=True,
                          text=True).stdout
    model_id = re.search(r"\b[0-9a-f]{32}\b", info).group(0)
    latent = f"application/vnd.vaeproxy.latent; model={model_id}"
    for _ in range(100):
        if fetch(admin, "/_vaeproxy/healthz", timeout=1)[0] == 200:
            break
        time.sleep(0.1)

    lock = threading.Lock()
    stats = {"requests": 0, "unexpected": [], "expected_errors": 0, "stale_served": 0, "latents": 0}

    def bad(what):
        with lock:
            if len(stats["unexpected"]) < 20:
                stats["unexpected"].append(what)
            stats.setdefault("unexpected_count", 0)
            stats["unexpected_count"] += 1

    def check(kind, n, accept):
        path = {"img": f"/img/{n}", "hit": f"/img/{n % 20}", "doc": f"/doc/{n % 50}", "refused": "/x",
                "hang": f"/hang?{n}", "slow": f"/slow?{n}", "reset": "/reset", "stale": f"/stale/{n % 20}"}[kind]
        host = "down.test" if kind == "refused" else "t"
        status, h, body, err = fetch(port, path, host=host, accept=accept)
        with lock:
            stats["requests"] += 1
        if kind in ("refused", "hang", "reset"):
            # the origin's fault: a 502/504 (or a cut body for the reset) is the right answer,
            # but a 200 must never carry a truncated body
            if status == 200 and len(body) != int(h.get("content-length", -1)):
                bad(f"{path}: 200 with {len(body)} of {h.get('content-length')} bytes")
            elif status == 200 and kind == "reset":
                bad(f"{path}: a reset body was served as complete ({len(body)} bytes)")
            elif status == 200:
                bad(f"{path}: 200 for an origin that never answers")
            else:
                with lock:
                    stats["expected_errors"] += 1
            return
        if err or status != 200:
            bad(f"{path}: status {status} {err or ''}")
            return
        if len(body) != int(h.get("content-length", -1)):
            bad(f"{path}: {len(body)} bytes of {h.get('content-length')}")
        if kind == "doc" and body != doc_bytes(n % 50):
            bad(f"{path}: wrong body")
        if kind == "stale":
            if body != doc_bytes(1000 + n % 20):
                bad(f"{path}: wrong body")
            if "stale" in h.get("cache-status", ""):
                with lock:
                    stats["stale_served"] += 1
        if h.get("content-type", "").startswith("application/vnd.vaeproxy.latent"):
            with lock:
                stats["latents"] += 1

    def stream(kind_of, rate, seed):
        rng = random.Random(seed)
        period = 1.0 / rate
        n = 0
        t0 = time.monotonic()
        while time.monotonic() < end:
            due = t0 + n * period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            kind = kind_of(rng)
            accept = latent if rng.random() < 0.5 else None
            threading.Thread(target=check, args=(kind, seed * 10_000_000 + n, accept), daemon=True).start()
            n += 1

    start = time.monotonic()
    end = start + a.minutes * 60
    threads = [
        threading.Thread(target=stream, args=(lambda r: "img", a.encode_rate, 1)),
        threading.Thread(target=stream, args=(lambda r: r.choice(["hit", "hit", "doc"]), a.hit_rate, 2)),
        threading.Thread(target=stream, args=(lambda r: r.choice(["refused", "hang", "slow", "reset", "stale"]),
                                              a.fault_rate, 3)),
    ]
    for t in threads:
        t.start()
    time.sleep(min(a.warmup, a.minutes * 30))
    rss_warm = rss(proxy.pid)["VmRSS"]
    peak = rss_warm
    while time.monotonic() < end:
        time.sleep(5)
        peak = max(peak, rss(proxy.pid)["VmRSS"])
    for t in threads:
        t.join()
    time.sleep(10)  # the hang requests' 504s come back after the header timeout
    rss_end = rss(proxy.pid)["VmRSS"]
    metrics = fetch(admin, "/_vaeproxy/metrics")[2].decode().splitlines()
    proxy.terminate()
    proxy.wait()
    os.unlink(cfg.name)

    pick = ("vaeproxy_encodes_total", "vaeproxy_guard_total{reason=\"pool_full\"}",
            "vaeproxy_origin_errors_total", "vaeproxy_requests_total{outcome=\"stale\"}")
    print(f"soak: {a.minutes:g} min, {stats['requests']} requests "
          f"(encode misses {a.encode_rate:g}/s, hits {a.hit_rate:g}/s, faults {a.fault_rate:g}/s)")
    for l in metrics:
        if l.startswith(pick):
            print("  " + l)
    print(f"  latent answers {stats['latents']}, stale-if-error answers {stats['stale_served']}, "
          f"origin-caused errors {stats['expected_errors']}")
    n_bad = stats.get("unexpected_count", 0)
    print(f"  unexpected client errors or truncations: {n_bad}")
    for u in stats["unexpected"]:
        print("    " + u)
    change = (rss_end - rss_warm) / rss_warm * 100
    print(f"  RSS after warm-up {rss_warm:.0f} MB, peak {peak:.0f} MB, end {rss_end:.0f} MB ({change:+.1f} %)")
    return 1 if n_bad or abs(change) > 10 else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the loopback measuring scripts (hostile-bench.py, soak.py) share: a
threaded origin server, a free port, the proxy's memory from /proc."""
import http.server, socket, socketserver


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def free_port():
    """A loopback port that was free a moment ago (bound, read, released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss(pid):
    """{"VmRSS": MB, "VmHWM": MB} of process `pid`."""
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) // 1024
    return out


def read_all(sock):
    """Everything `sock` sends until it closes (requests say Connection: close)."""
    data = b""
    while True:
        b = sock.recv(1 << 16)
        if not b:
            return data
        data += b

//! The servers under load, as child processes: `vaeproxy serve` with a
//! generated config, and nginx as a caching reverse proxy in front of the
//! same origin. Both are measured the same way, from /proc: CPU seconds
//! (user + system, master and workers) and peak resident memory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// vaeproxy's admin listener (metrics); nginx has none.
    pub admin: Option<SocketAddr>,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A free loopback port (bound, read, released).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

impl Server {
    /// `vaeproxy serve` routing everything to `origin` (every client is
    /// 127.0.0.1, so the per-address connection cap is lifted); `toml` is appended
    /// to the config (cache, codec, samples sections).
    pub fn vaeproxy(bin: &Path, origin: SocketAddr, toml: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, admin) = (free_addr(), free_addr());
        let cfg = dir.path().join("vaeproxy.toml");
        let text = format!(
            "listen = \"{addr}\"\n{toml}\n[admin]\nlisten = \"{admin}\"\n\
             [limits]\nmax_connections_per_ip = 65536\n\
             [[route]]\norigin = \"http://{origin}\"\n"
        );
        std::fs::write(&cfg, text).expect("config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            // One log line per request would measure the logger, and nginx
            // runs with access_log off.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting vaeproxy");
        Server {
            name: "vaeproxy",
            addr,
            admin: Some(admin),
            child,
            _dir: dir,
        }
    }

    /// nginx with proxy_cache in front of `origin`, two workers (one per core,
    /// as vaeproxy's runtime), no access log, sendfile and open_file_cache on.
    pub fn nginx(bin: &Path, origin: SocketAddr) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let d = dir.path().display();
        for sub in ["cache", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).expect("dir");
        }
        // nginx started as root drops its workers to `nobody`.
        let _ = Command::new("chmod")
            .args(["-R", "777"])
            .arg(dir.path())
            .status();
        let conf = format!(
            "worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  # Tuned as an operator would: cached files' descriptors stay open.
  open_file_cache max=10000 inactive=60s;
  open_file_cache_valid 60s;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:32m max_size=2g inactive=1h use_temp_path=off;
  upstream origin {{ server {origin}; keepalive 32; }}
  server {{
    listen {addr};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_cache bench;
      proxy_cache_lock on;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        Server {
            name: "nginx",
            addr,
            admin: None,
            child,
            _dir: dir,
        }
    }

    /// Waits until the port accepts connections (at most 20 s).
    pub fn wait_listening(&mut self) {
        let t = Instant::now();
        while std::net::TcpStream::connect(self.addr).is_err() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited while starting: {st}", self.name);
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process and its children (nginx workers).
    fn pids(&self) -> Vec<u32> {
        let me = self.child.id();
        let mut pids = vec![me];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                    == Some(me)
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// User + system CPU seconds so far, all processes.
    pub fn cpu_seconds(&self) -> f64 {
        // Linux reports clock ticks of 1/100 s (USER_HZ) on every platform we run on.
        self.pids()
            .into_iter()
            .filter_map(stat_fields)
            .map(|f| {
                let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                (t(11) + t(12)) / 100.0
            })
            .sum()
    }

    /// Resets the peak-RSS high-water mark of every process.
    pub fn reset_peak(&self) {
        for pid in self.pids() {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// Peak resident memory since the last reset, MiB, summed over processes.
    pub fn peak_rss_mib(&self) -> f64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| {
                let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .sum::<f64>()
            / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: both shut down cleanly (nginx takes its workers along).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fields of /proc/PID/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

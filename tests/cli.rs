//! The `vaeproxy` binary: encode, decode, eval and its error messages.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vaeproxy"))
}

#[test]
fn encode_decode_eval() {
    let dir = tempfile::tempdir().unwrap();
    let vlat = dir.path().join("a.vlat");
    let png = dir.path().join("a.png");
    let st = bin()
        .args(["encode", "tests/data/canyon.jpg"])
        .arg(&vlat)
        .args(["--quality", "1"])
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&vlat).unwrap();
    assert_eq!(&bytes[..4], b"VLAT");
    assert!(bin()
        .arg("decode")
        .arg(&vlat)
        .arg(&png)
        .status()
        .unwrap()
        .success());
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (320, 160));
    // the output format follows the extension
    let jpg = dir.path().join("a.jpg");
    assert!(bin()
        .arg("decode")
        .arg(&vlat)
        .arg(&jpg)
        .status()
        .unwrap()
        .success());
    assert_eq!(
        &std::fs::read(&jpg).unwrap()[..2],
        b"\xff\xd8",
        "JPEG bytes in a .jpg"
    );
    let odd = dir.path().join("a.xyz");
    let out = bin().arg("decode").arg(&vlat).arg(&odd).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown output format"));

    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    std::fs::copy("tests/data/canyon.jpg", imgs.join("canyon.jpg")).unwrap();
    let csv = dir.path().join("r.csv");
    let out = bin()
        .args(["eval", "--images"])
        .arg(&imgs)
        .arg("--csv")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("mean bpp="), "{last}");
    for key in ["psnr=", "ms_ssim=", "enc_ms=", "dec_ms="] {
        assert!(last.contains(key), "{last}");
    }
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 2);
}

#[test]
fn bad_inputs_name_the_file_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"definitely not a png").unwrap();
    let out = bin()
        .arg("encode")
        .arg(&junk)
        .arg(dir.path().join("o.vlat"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("junk.png"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = bin()
        .arg("decode")
        .arg(&junk)
        .arg(dir.path().join("o.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("junk.png") && err.contains("magic"), "{err}");

    let out = bin()
        .args(["encode", "tests/data/canyon.jpg"])
        .arg(dir.path().join("o.vlat"))
        .args(["--quality", "99"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("quality 99"));

    let out = bin()
        .args(["decode", "/nonexistent/x.vlat", "/tmp/x.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("/nonexistent/x.vlat"));
}

/// `vaeproxy serve` with a bad config stops at once with one message naming
/// the key (toml's own ones keep their source line and caret below it).
#[test]
fn serve_refuses_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[[route]]\norigin = \"http://127.0.0.1:9\"\n[cache]\ncapacity = 1\n", "capacity"),
        ("[[route]]\norigin = \"gopher://x\"\n", "route[0].origin"),
        ("[[route]]\norigin = \"http://127.0.0.1:9\"\n[codec]\nweights = \"/no/such.safetensors\"\n", "codec.weights"),
        ("listen = \"nope\"\n[[route]]\norigin = \"http://127.0.0.1:9\"\n", "listen"),
        ("", "no [[route]]"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&p, toml).unwrap();
        let out = bin().arg("serve").arg("--config").arg(&p).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key}: {err}");
        assert!(
            err.starts_with("vaeproxy: ") && err.matches("vaeproxy: ").count() == 1,
            "one message: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = bin()
        .args([
            "serve",
            "--origin",
            "ftp://x",
            "--config",
            "config/vaeproxy.toml",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--origin"));
}

/// `vaeproxy sample` writes a contact sheet of a configured pool.
#[test]
fn sample_writes_a_contact_sheet() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[route]]\norigin = \"http://127.0.0.1:9\"\n[[samples]]\nname = \"s\"\nwidth = 32\nheight = 32\ncount = 5\n",
    )
    .unwrap();
    let grid = dir.path().join("g.png");
    let sample = |args: &[&str]| {
        bin()
            .arg("sample")
            .arg("--config")
            .arg(&cfg)
            .arg("--grid")
            .arg(&grid)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(sample(&["--pool", "s", "--columns", "3"]).status.success());
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 36 + 4, 2 * 36 + 4));
    // With an interpolation row: 4 frames of the common 320x160, scaled to
    // the sheet's inner width (104 px), below the grid.
    let (a, b) = ("tests/data/canyon.jpg", "tests/data/twowings.png");
    let out = sample(&[
        "--pool",
        "s",
        "--columns",
        "3",
        "--steps",
        "4",
        "--interpolate",
        a,
        b,
    ]);
    assert!(out.status.success());
    let img = image::open(&grid).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (3 * 36 + 4, 2 * 36 + 4 + 13 + 4)
    );
    let out = sample(&["--pool", "s", "--interpolate", a, "tests/data/nope.png"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.png"));
    let out = sample(&["--pool", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [[samples]] pool named \"nope\""));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 GET on a fresh connection; the status line's code (0 when
/// nothing answers).
fn status_of(port: u16, path: &str, host: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// SIGHUP re-reads the configuration: a new route answers, a broken file
/// keeps the running configuration, and the process lives through both.
#[cfg(unix)]
#[test]
fn sighup_reloads_the_config() {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let write = |routes: &str| {
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\nsamples = []\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{routes}"
        );
        std::fs::write(&cfg, text).unwrap();
    };
    write("[[route]]\nhost = \"a\"\norigin = \"http://127.0.0.1:9\"\n");
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if status_of(admin, "/_vaeproxy/healthz", "t") == 200 {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "proxy did not start");
    assert_eq!(
        status_of(port, "/_vaeproxy/healthz", "t"),
        404,
        "ops are admin-only"
    );
    assert_eq!(status_of(port, "/x", "b"), 404, "no route for host b yet");
    let pid = child.id().to_string();
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    // Port 9 (discard) refuses: a routed request is a 502, not a 404.
    write("[[route]]\nhost = \"b\"\norigin = \"http://127.0.0.1:9\"\n");
    hup();
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP killed the proxy"
    );
    assert_eq!(status_of(port, "/x", "b"), 502, "the new route is in force");
    assert_eq!(status_of(port, "/x", "a"), 404, "the old one is gone");
    write("[[route]]\norigin = \"ftp://nope\"\n");
    hup();
    assert!(child.try_wait().unwrap().is_none());
    assert_eq!(
        status_of(port, "/x", "b"),
        502,
        "a bad file keeps the running config"
    );
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
}

#[test]
fn check_validates_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "samples = []\n[[route]]\norigin = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    // --config before the subcommand works as well as after it.
    let ok = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("ok") && out.contains("1 route"), "{out}");
    std::fs::write(&cfg, "[cache]\ncapacity = 5\n").unwrap();
    let bad = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    // toml's own message, with the offending line and its caret.
    assert!(
        err.contains("c.toml") && err.contains("capacity") && err.contains('^'),
        "{err}"
    );
    let none = bin()
        .arg("check")
        .current_dir(dir.path())
        .env_remove("VAEPROXY_CONFIG")
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no configuration file"));
    let env = bin()
        .arg("check")
        .current_dir(dir.path())
        .env("VAEPROXY_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(
        !env.status.success(),
        "$VAEPROXY_CONFIG names the (now bad) file"
    );
}

#[test]
fn eval_v2_reports_every_level() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("tests/data/canyon.jpg", dir.path().join("canyon.jpg")).unwrap();
    let out = bin()
        .args([
            "eval-v2",
            "--network",
            "tests/data/hyperprior-parity.safetensors",
            "--images",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    // the header and one line per level of the fixture network (3)
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    let bad = bin()
        .args(["eval-v2", "--network", "tests/data/canyon.jpg", "--images"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("canyon.jpg"));
}

/// `log_format = "json"`: the access line is one JSON object with the
/// client, host, query, user agent and upstream time.
#[test]
fn json_access_log() {
    use std::io::{BufRead, Write};
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nlog_format = \"json\"\nsamples = []\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n[[route]]\norigin = \"http://127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if status_of(admin, "/_vaeproxy/healthz", "t") == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /p?q=1 HTTP/1.1\r\nHost: site.test\r\nUser-Agent: probe/1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut reply);
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut found = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("every line is JSON");
        if v["path"] == "/p" {
            found = Some(v);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let v = found.expect("an access line");
    assert_eq!(v["target"], "vaeproxy::access");
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["host"], "site.test");
    assert_eq!(v["query"], "q=1");
    assert_eq!(v["user_agent"], "probe/1");
    assert_eq!(v["status"], 502);
    assert!(
        v["upstream_ms"].as_i64().unwrap() >= 0,
        "the origin was asked: {v}"
    );
}

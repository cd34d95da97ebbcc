//! The shared tier over a real `redis-server` (Debian's, started here on a
//! free loopback port): two proxies in front of one origin fetch and encode
//! each image once between them, concurrent misses on both make one origin
//! request, invalidation reaches the store, and a store that is down, comes
//! up late or returns garbage never reaches a client.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;
use vaeproxy::client::Decoder;

/// A `redis-server` on a port (the second field) that dies with the value.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A memory-only `redis-server` on `port` with `extra` arguments.
fn spawn_redis(port: u16, extra: &[&str]) -> Redis {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (.ci/run installs Debian's redis-server)");
    Redis(child, port)
}

async fn start_redis(port: u16) -> Redis {
    let redis = spawn_redis(port, &[]);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return redis;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not start on {port}");
}

async fn redis_conn(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The site's host: behind a load balancer every proxy sees the same one,
/// and it is part of the key.
const HOST: (&str, &str) = ("host", "photos.example");

fn shared_toml(port: u16) -> String {
    format!("{BASIC}[cache]\nshared = \"redis://127.0.0.1:{port}/\"\nshared_timeout_ms = 200\n")
}

fn photo_reply(photo: &bytes::Bytes, delay: Duration) -> Reply {
    let mut r = Reply::ok(
        photo.clone(),
        &[
            ("cache-control", "public, max-age=600"),
            ("content-type", "image/jpeg"),
            ("etag", "\"p1\""),
        ],
    );
    r.delay = delay;
    r
}

/// Waits until the proxy's shared tier has connected (it connects in the background).
async fn until_shared_up(proxy: &Proxy) {
    for _ in 0..200 {
        if get(&proxy.admin_url("/_vaeproxy/healthz"), &[])
            .await
            .body
            .ends_with(b"shared: up\n")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the shared tier never came up");
}

/// Waits until the record of a store made in the background is in Redis.
async fn until_stored(proxy: &Proxy, n: f64) {
    for _ in 0..200 {
        if metric(proxy, "vaeproxy_shared_total{event=\"store\"}").await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing was stored in the shared tier");
}

#[tokio::test]
async fn two_proxies_fetch_and_encode_once() {
    let port = free_port();
    let _redis = start_redis(port).await;
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| photo_reply(&p, Duration::ZERO)).await;
    let a = start_proxy(&shared_toml(port), &origin.url()).await;
    let b = start_proxy(&shared_toml(port), &origin.url()).await;
    until_shared_up(&a).await;
    until_shared_up(&b).await;
    let accept = Decoder::shipped().unwrap().accept_header();

    let from_a = get(&a.url("/photo.jpg"), &[("accept", &accept), HOST]).await;
    assert_eq!(from_a.status, 200);
    until_stored(&a, 1.0).await;
    // The key names the model, so other weights never read it.
    let mut r = redis_conn(port).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut r)
        .await
        .unwrap();
    let model = Decoder::shipped().unwrap().model_id().to_hex();
    assert!(
        keys.iter()
            .any(|k| k == &format!("vaeproxy:{model}:GET http://photos.example/photo.jpg")),
        "{keys:?}"
    );

    // B has never seen the URL: it comes from the shared tier, latent and original alike.
    let from_b = get(&b.url("/photo.jpg"), &[("accept", &accept), HOST]).await;
    assert_eq!((from_b.status, &from_b.body), (200, &from_a.body));
    assert!(from_b.header("age").is_some());
    let plain = get(&b.url("/photo.jpg"), &[("accept", "image/*"), HOST]).await;
    assert_eq!(plain.body, photo, "the original travelled with the latent");
    assert_eq!(
        origin.count("/photo.jpg"),
        1,
        "one origin fetch for the fleet"
    );
    assert_eq!(metric(&a, "vaeproxy_encodes_total").await, 1.0);
    assert_eq!(
        metric(&b, "vaeproxy_encodes_total").await,
        0.0,
        "one encode for the fleet"
    );
    assert_eq!(
        metric(&b, "vaeproxy_shared_total{event=\"hit\"}").await,
        1.0
    );
    assert_eq!(
        get(&b.url("/photo.jpg"), &[("accept", &accept), HOST])
            .await
            .cache(),
        "hit"
    );

    // An unsafe method through B removes the record for everyone.
    send("POST", &b.url("/photo.jpg"), &[HOST]).await;
    let left: Option<Vec<u8>> = redis::cmd("GET")
        .arg(keys.iter().find(|k| !k.contains(":lock:")).unwrap())
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(left.is_none(), "invalidated in the shared tier");
}

#[tokio::test]
async fn concurrent_misses_on_two_proxies_make_one_origin_fetch() {
    let port = free_port();
    let _redis = start_redis(port).await;
    let photo = data("canyon.jpg");
    let p = photo.clone();
    // slow enough that every request arrives while the first is at the origin
    let origin = start_origin(move |_, _| photo_reply(&p, Duration::from_millis(400))).await;
    let a = start_proxy(&shared_toml(port), &origin.url()).await;
    let b = start_proxy(&shared_toml(port), &origin.url()).await;
    until_shared_up(&a).await;
    until_shared_up(&b).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let url = if i % 2 == 0 {
            a.url("/same.jpg")
        } else {
            b.url("/same.jpg")
        };
        tasks.push(tokio::spawn(async move {
            get(&url, &[("accept", "image/*"), HOST]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, photo);
    }
    assert_eq!(
        origin.count("/same.jpg"),
        1,
        "the fleet lock let one proxy fetch"
    );
    let waits = metric(&a, "vaeproxy_shared_total{event=\"lock_wait\"}").await
        + metric(&b, "vaeproxy_shared_total{event=\"lock_wait\"}").await;
    assert_eq!(waits, 1.0, "the other proxy's leader waited for the record");
}

#[tokio::test]
async fn a_store_that_is_down_late_or_garbage_never_reaches_clients() {
    let port = free_port();
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| photo_reply(&p, Duration::ZERO)).await;
    // No Redis yet: the proxy serves from the origin and its own cache.
    let proxy = start_proxy(&shared_toml(port), &origin.url()).await;
    let r = get(&proxy.url("/down.jpg"), &[HOST]).await;
    assert_eq!((r.status, &r.body), (200, &photo));
    let health = get(&proxy.admin_url("/_vaeproxy/healthz"), &[]).await;
    assert_eq!(
        health.status, 200,
        "health does not fail on the shared tier"
    );
    assert!(String::from_utf8_lossy(&health.body).contains("shared: down"));

    // Redis comes up later: the proxy connects by itself and starts storing.
    let _redis = start_redis(port).await;
    until_shared_up(&proxy).await;
    get(&proxy.url("/late.jpg"), &[HOST]).await;
    until_stored(&proxy, 1.0).await;

    // Garbage under a key: counted, ignored, the origin answers.
    let mut r = redis_conn(port).await;
    let model = Decoder::shipped().unwrap().model_id().to_hex();
    let key = format!("vaeproxy:{model}:GET http://photos.example/bad.jpg");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a record")
        .query_async(&mut r)
        .await
        .unwrap();
    let before = origin.count("/bad.jpg");
    let got = get(&proxy.url("/bad.jpg"), &[HOST]).await;
    assert_eq!((got.status, &got.body), (200, &photo));
    assert_eq!(origin.count("/bad.jpg"), before + 1);
    assert_eq!(
        metric(&proxy, "vaeproxy_shared_errors_total{kind=\"garbage\"}").await,
        1.0
    );

    // Redis dies: requests go on (each shared call gives up within its timeout).
    drop(_redis);
    let r = get(&proxy.url("/after.jpg"), &[HOST]).await;
    assert_eq!((r.status, &r.body), (200, &photo));
}

/// Three `redis-server`s in cluster mode, their slots assigned by
/// `redis-cli --cluster create`.
async fn start_cluster() -> Vec<Redis> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for p in &ports {
        let conf = dir.path().join(format!("nodes-{p}.conf"));
        let conf = conf.to_str().unwrap();
        let redis = spawn_redis(
            *p,
            &["--cluster-enabled", "yes", "--cluster-config-file", conf],
        );
        nodes.push(redis);
    }
    for p in &ports {
        let mut up = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", *p))
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "cluster node {p} did not start");
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let made = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli is installed with redis-server");
    assert!(made.success(), "redis-cli --cluster create failed");
    // until every slot is served
    for _ in 0..100 {
        let out = Command::new("redis-cli")
            .args(["-p", &ports[0].to_string(), "cluster", "info"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
            std::mem::forget(dir); // the nodes' config files live as long as the nodes
            return nodes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cluster never reached cluster_state:ok");
}

/// The cluster form of `cache.shared`: two proxies on a three-node Redis
/// Cluster share one fetch and one encode, as with one Redis.
#[tokio::test]
async fn a_redis_cluster_as_the_shared_tier() {
    let cluster = start_cluster().await;
    let seeds: Vec<String> = cluster
        .iter()
        .map(|r| format!("\"redis://127.0.0.1:{}/\"", r.1))
        .collect();
    let toml = format!(
        "{BASIC}[cache]\nshared = [{}]\nshared_timeout_ms = 500\n",
        seeds.join(", ")
    );
    let photo = data("canyon.jpg");
    let p = photo.clone();
    let origin = start_origin(move |_, _| photo_reply(&p, Duration::ZERO)).await;
    let a = start_proxy(&toml, &origin.url()).await;
    let b = start_proxy(&toml, &origin.url()).await;
    until_shared_up(&a).await;
    until_shared_up(&b).await;
    for i in 0..4 {
        let path = format!("/c{i}.jpg");
        let first = get(&a.url(&path), &[HOST]).await;
        let second = get(&b.url(&path), &[HOST]).await;
        assert_eq!((first.status, second.status), (200, 200));
        assert_eq!(second.body, photo);
        assert_eq!(
            origin.count(&path),
            1,
            "{path}: one fetch across the cluster-backed fleet"
        );
    }
    assert_eq!(
        metric(&b, "vaeproxy_shared_total{event=\"hit\"}").await,
        4.0
    );
    // A prefix purge scans every primary (a cluster has no cross-node SCAN).
    until_stored(&a, 4.0).await;
    let r = purge(&a, "/c*", &[]).await;
    assert!(r.contains("\"shared\":4"), "{r}");
    let fresh = start_proxy(&toml, &origin.url()).await;
    until_shared_up(&fresh).await;
    get(&fresh.url("/c0.jpg"), &[HOST]).await;
    assert_eq!(origin.count("/c0.jpg"), 2, "purged in the cluster too");
}

/// A text origin whose responses carry a surrogate key per folder.
async fn tagged_text_origin() -> Origin {
    start_origin(|req, _| {
        let path = req.uri().path();
        let tag = if path.starts_with("/p/") {
            "pics"
        } else {
            "docs"
        };
        // /pq.txt is "docs" too: outside the /p/ prefix, inside the tag
        Reply::ok(
            bytes::Bytes::from(format!("body of {path}")),
            &[
                ("cache-control", "public, max-age=600"),
                ("content-type", "text/plain"),
                ("surrogate-key", tag),
            ],
        )
    })
    .await
}

/// Sends a `PURGE` to `proxy`'s admin listener for the site's host.
async fn purge(proxy: &Proxy, target: &str, extra: &[(&str, &str)]) -> String {
    let mut h = vec![HOST];
    h.extend_from_slice(extra);
    let r = send("PURGE", &proxy.admin_url(target), &h).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// Prefix and tag purges on one proxy drop the shared records too, so no
/// proxy refills from Redis what the operator purged.
#[tokio::test]
async fn prefix_and_tag_purges_reach_the_fleet() {
    let port = free_port();
    let _redis = start_redis(port).await;
    let origin = tagged_text_origin().await;
    let a = start_proxy(&shared_toml(port), &origin.url()).await;
    let b = start_proxy(&shared_toml(port), &origin.url()).await;
    until_shared_up(&a).await;
    until_shared_up(&b).await;
    let paths = ["/p/a.txt", "/p/b.txt", "/pq.txt", "/d/x.txt"];
    for p in paths {
        assert_eq!(get(&a.url(p), &[HOST]).await.status, 200);
    }
    until_stored(&a, 4.0).await;

    let r = purge(&a, "/p/*", &[]).await;
    assert!(
        r.contains("\"purged\":2") && r.contains("\"shared\":2"),
        "{r}"
    );
    for p in ["/p/a.txt", "/p/b.txt"] {
        assert_eq!(get(&b.url(p), &[HOST]).await.status, 200);
        assert_eq!(
            origin.count(p),
            2,
            "{p} was refetched, not refilled from Redis"
        );
    }
    assert_eq!(get(&b.url("/pq.txt"), &[HOST]).await.status, 200);
    assert_eq!(
        origin.count("/pq.txt"),
        1,
        "outside the prefix: still in Redis"
    );

    let r = purge(&a, "/", &[("vaeproxy-purge-tag", "docs")]).await;
    assert!(r.contains("\"shared\":2"), "{r}");
    let mut conn = redis_conn(port).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("*x.txt")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(get(&b.url("/d/x.txt"), &[HOST]).await.status, 200);
    assert_eq!(origin.count("/d/x.txt"), 2);
    assert_eq!(
        metric(&a, "vaeproxy_shared_total{event=\"purged\"}").await,
        4.0
    );
}

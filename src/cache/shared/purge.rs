//! Purges that reach the whole fleet. A prefix or tag purge on one proxy
//! must also drop the shared tier's records, or the next local miss (here
//! or on any other proxy) would fill straight back from Redis what the
//! operator just purged.
//!
//! - Tags: every record is listed, at store time, in one Redis set per
//!   surrogate key (`NAMESPACE tag: TAG`), which lives as long as its
//!   longest-lived member; a tag purge reads the set and deletes what it
//!   names. A member that expired on its own is a harmless no-op.
//! - Prefixes: `SCAN MATCH` over the namespace, on every primary of a
//!   cluster (a cluster has no cross-node SCAN), then `DEL` per key.
//!
//! A purge is an operator's request, not a client's, so it gets a longer
//! budget than one cache call ([`PURGE_BUDGET`]); what it could not reach in
//! that time is counted as an error and logged, and expires with its TTL.

use super::{Conn, Shared};
use crate::cache::key::PrimaryKey;
use redis::aio::ConnectionLike;
use std::time::Duration;
use tokio::time::Instant;

/// Longest one purge spends on the shared tier.
pub const PURGE_BUDGET: Duration = Duration::from_secs(5);
/// Keys asked for per `SCAN` round trip.
const SCAN_COUNT: usize = 500;

/// Adds `member` to a tag's set and makes the set live at least `ttl`
/// seconds (never shorter than a member stored earlier needs).
const TAG_SCRIPT: &str = "redis.call('sadd', KEYS[1], ARGV[1]) \
     if redis.call('ttl', KEYS[1]) < tonumber(ARGV[2]) then \
     redis.call('expire', KEYS[1], ARGV[2]) end return 1";

/// `s` with Redis glob metacharacters escaped, so a URL prefix matches
/// literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The primaries' addresses in `CLUSTER NODES` output (failed ones left out).
fn primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.split(',').any(|x| x == "master") || flags.contains("fail") {
                return None;
            }
            let addr = f.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

impl Shared {
    fn tag_key(&self, tag: &str) -> String {
        format!("{}tag:{tag}", self.namespace)
    }

    /// Lists `key`'s record under each of its surrogate keys.
    pub(super) async fn index_tags(&self, key: &PrimaryKey, tags: &[String], ttl_secs: u64) {
        for tag in tags {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(TAG_SCRIPT)
                .arg(1)
                .arg(self.tag_key(tag))
                .arg(self.key(key))
                .arg(ttl_secs);
            let _ = self.call::<i64>(cmd).await;
        }
    }

    /// Drops every record listed under any of `tags`; returns how many went.
    pub async fn purge_tags(&self, tags: &[String]) -> usize {
        let deadline = Instant::now() + PURGE_BUDGET;
        let mut gone = 0;
        for tag in tags {
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(self.tag_key(tag));
            let Some(members) = self.call::<Vec<String>>(cmd).await else {
                continue;
            };
            gone += self.delete(members, deadline).await;
            let mut cmd = redis::cmd("DEL");
            cmd.arg(self.tag_key(tag));
            let _ = self.call::<i64>(cmd).await;
        }
        self.count_purged(gone);
        gone
    }

    /// Drops every record whose primary key starts with `prefix`; returns
    /// how many went.
    pub async fn purge_prefix(&self, prefix: &PrimaryKey) -> usize {
        let deadline = Instant::now() + PURGE_BUDGET;
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let conn = self.conn.read().unwrap_or_else(|e| e.into_inner()).clone();
        let keys = match conn {
            None => return 0,
            Some(Conn::One(mut c)) => self.scan(&mut c, &pattern, deadline).await,
            Some(Conn::Cluster(_)) => self.scan_cluster(&pattern, deadline).await,
        };
        let gone = self.delete(keys, deadline).await;
        self.count_purged(gone);
        gone
    }

    fn count_purged(&self, n: usize) {
        self.events.with_label_values(&["purged"]).inc_by(n as u64);
    }

    /// `DEL` one key at a time: in a cluster the keys live in different
    /// slots, and one multi-key `DEL` would be refused.
    async fn delete(&self, keys: Vec<String>, deadline: Instant) -> usize {
        let mut gone = 0;
        for k in keys {
            if Instant::now() > deadline {
                self.over_budget("delete");
                break;
            }
            let mut cmd = redis::cmd("DEL");
            cmd.arg(k);
            gone += self.call::<i64>(cmd).await.unwrap_or(0) as usize;
        }
        gone
    }

    fn over_budget(&self, what: &str) {
        self.errors.with_label_values(&["timeout"]).inc();
        tracing::warn!(
            "shared cache: purge ran out of time at {what}; the rest expires with its TTL"
        );
    }

    /// Every key matching `pattern` on one node.
    async fn scan<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        pattern: &str,
        deadline: Instant,
    ) -> Vec<String> {
        let mut found = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(self.cfg.timeout * 10), cmd.query_async(conn)).await
            {
                Ok(Ok((next, keys))) => {
                    let keys: Vec<String> = keys;
                    found.extend(keys);
                    cursor = next;
                }
                Ok(Err(e)) => {
                    tracing::debug!("shared cache: SCAN: {e}");
                    self.errors.with_label_values(&["redis"]).inc();
                    break;
                }
                Err(_) => {
                    self.over_budget("scan");
                    break;
                }
            }
            if cursor == 0 {
                break;
            }
        }
        found
    }

    /// `scan` on every primary of the cluster, each over its own connection.
    async fn scan_cluster(&self, pattern: &str, deadline: Instant) -> Vec<String> {
        let Some(nodes) = self
            .call::<String>(redis::cmd("CLUSTER").arg("NODES").clone())
            .await
        else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for (host, port) in primaries(&nodes) {
            // the seed's settings (password, database) with this node's address
            let info =
                match redis::IntoConnectionInfo::into_connection_info(self.cfg.nodes[0].as_str()) {
                    Ok(i) => i.set_addr(redis::ConnectionAddr::Tcp(host, port)),
                    Err(_) => continue,
                };
            let open = async {
                redis::Client::open(info)?
                    .get_multiplexed_async_connection()
                    .await
            };
            match tokio::time::timeout(self.cfg.timeout * 10, open).await {
                Ok(Ok(mut c)) => found.extend(self.scan(&mut c, pattern, deadline).await),
                _ => self.errors.with_label_values(&["redis"]).inc(),
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_literally() {
        assert_eq!(
            glob_escape("GET http://a/x*[1]?\\"),
            "GET http://a/x\\*\\[1\\]\\?\\\\"
        );
    }

    #[test]
    fn primaries_from_cluster_nodes() {
        let out = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                   b2 127.0.0.1:7001@17001,host.example master - 0 0 2 connected 5461-10922\n\
                   c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n\
                   d4 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected\n\
                   garbage\n";
        assert_eq!(
            primaries(out),
            vec![
                ("127.0.0.1".to_string(), 7000),
                ("127.0.0.1".to_string(), 7001)
            ]
        );
    }
}

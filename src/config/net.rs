//! Addresses in the configuration: the CIDR blocks of `trusted_proxies` and
//! origin URLs, parsed once at load so requests never parse them again.

/// Why an address in the configuration does not parse; the text quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddrError(String);

/// An IP address or CIDR block (`10.0.0.0/8`, `::1`), for `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `10.0.0.0/8`, `::1` or `192.168.1.7` (a single address is a /32 or /128).
    pub fn parse(s: &str) -> Result<IpBlock, AddrError> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| AddrError(format!("{s:?} is not an IP address or CIDR block")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| AddrError(format!("{s:?}: prefix length must be 0..={max}")))?,
        };
        Ok(IpBlock { addr, prefix })
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(ip, V4),
            v4 => v4,
        };
        let bits = |a: std::net::IpAddr| -> u128 {
            match a {
                V4(v4) => u32::from(v4) as u128,
                V6(v6) => u128::from(v6),
            }
        };
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let shift = width - self.prefix as u32;
        shift >= width || bits(ip) >> shift == bits(self.addr) >> shift
    }
}

/// An origin URL split into what the upstream client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `https://` origins are reached over TLS (rustls), verified against
    /// the Mozilla roots and `origin_ca_file`.
    pub tls: bool,
    /// `host:port` to connect to and, unless the route preserves it, send as Host.
    pub authority: String,
    /// Path prepended to every request path ("" for none).
    pub base_path: String,
}

/// Accepts `http://host[:port][/base]` and `https://...`; no user info, no query.
pub fn parse_origin(s: &str) -> Result<Origin, AddrError> {
    let err = |m: String| AddrError(m);
    let uri: hyper::Uri = s
        .parse()
        .map_err(|e| err(format!("{s:?} is not a URL ({e})")))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(err(format!(
                "{s:?}: scheme {other} is not supported (http or https)"
            )))
        }
        None => return Err(err(format!("{s:?}: needs http:// or https://"))),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| err(format!("{s:?}: no host")))?
        .as_str()
        .to_string();
    if authority.contains('@') {
        return Err(err(format!("{s:?}: user info is not allowed")));
    }
    if uri.query().is_some() {
        return Err(err(format!("{s:?}: a query is not allowed")));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Origin {
        tls,
        authority,
        base_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const MIN: &str = "[[route]]\norigin = \"http://127.0.0.1:9000\"\n";

    #[test]
    fn ip_blocks() {
        let b = IpBlock::parse("10.0.0.0/8").unwrap();
        assert!(b.contains("10.200.1.1".parse().unwrap()));
        assert!(!b.contains("11.0.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.2.3".parse().unwrap()), "v4-mapped");
        let one = IpBlock::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!(IpBlock::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let e =
            Config::from_toml(&format!("trusted_proxies = [\"10.0.0.0/33\"]\n{MIN}")).unwrap_err();
        assert!(e.0.contains("trusted_proxies[0]"), "{e}");
    }

    #[test]
    fn origin_parts() {
        let o = parse_origin("http://example.com:81/base/").unwrap();
        assert_eq!(o.authority, "example.com:81");
        assert_eq!(o.base_path, "/base");
        assert!(parse_origin("http://u:p@example.com").is_err());
        assert!(!o.tls);
        let o = parse_origin("https://example.com").unwrap();
        assert!(o.tls && o.authority == "example.com");
    }
}

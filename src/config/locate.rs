//! Where the configuration comes from: the file (found on a search path),
//! then environment overrides, then command-line flags, validated last, so
//! `serve`, `check` and a SIGHUP reload all read it the same way.

use super::{Config, ConfigError};
use std::path::{Path, PathBuf};

/// Searched in order when neither `--config` nor `$VAEPROXY_CONFIG` names a file.
pub const SEARCH_PATH: [&str; 2] = ["config/vaeproxy.toml", "/etc/vaeproxy/vaeproxy.toml"];

/// Everything that decides the configuration, kept so a reload repeats it.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The file read; `None` only with an origin given (all defaults plus it).
    pub path: Option<PathBuf>,
    /// `--listen`, over `$VAEPROXY_LISTEN` and the file.
    pub listen: Option<std::net::SocketAddr>,
    /// `--origin`, over `$VAEPROXY_ORIGIN`: one catch-all route.
    pub origin: Option<String>,
}

impl Source {
    /// Finds the file: `explicit` (`--config`), else `$VAEPROXY_CONFIG`, else
    /// the first of [`SEARCH_PATH`] that exists. With none found, an origin
    /// (flag or `$VAEPROXY_ORIGIN`) runs on the defaults; without one it is
    /// an error that names where it looked.
    pub fn find(
        explicit: Option<&Path>,
        listen: Option<std::net::SocketAddr>,
        origin: Option<String>,
    ) -> Result<Source, ConfigError> {
        let env_path = std::env::var_os("VAEPROXY_CONFIG").map(PathBuf::from);
        let path = explicit
            .map(Path::to_path_buf)
            .or(env_path)
            .or_else(|| SEARCH_PATH.iter().map(PathBuf::from).find(|p| p.is_file()));
        let origin = origin.or_else(|| env_text("VAEPROXY_ORIGIN"));
        if path.is_none() && origin.is_none() {
            return Err(ConfigError(format!(
                "no configuration file: give --config FILE or $VAEPROXY_CONFIG (looked in {}), \
                 or --origin URL to run on the defaults",
                SEARCH_PATH.join(", ")
            )));
        }
        Ok(Source {
            path,
            listen,
            origin,
        })
    }

    /// Reads and validates the configuration as it stands now.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.path {
            Some(p) => Config::parse_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = env_text("VAEPROXY_LISTEN") {
            cfg.listen = v
                .parse()
                .map_err(|_| ConfigError(format!("$VAEPROXY_LISTEN: {v:?} is not host:port")))?;
        }
        if let Some(v) = env_text("VAEPROXY_ADMIN_LISTEN") {
            cfg.admin.listen = v.parse().map_err(|_| {
                ConfigError(format!("$VAEPROXY_ADMIN_LISTEN: {v:?} is not host:port"))
            })?;
        }
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        match &self.origin {
            Some(o) => cfg.with_single_origin(o),
            None => {
                let named = |e: ConfigError| match &self.path {
                    Some(p) => ConfigError(format!("{}: {}", p.display(), e.0)),
                    None => e,
                };
                cfg.validate().map_err(named)?;
                Ok(cfg)
            }
        }
    }

    /// Where the configuration came from, for log lines.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "the built-in defaults".into(),
        }
    }
}

fn env_text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:1\"\n[[route]]\norigin = \"http://a:1\"\n",
        )
        .unwrap();
        let s = Source::find(Some(&p), None, None).unwrap();
        assert_eq!(s.load().unwrap().listen.port(), 1);
        let s = Source::find(Some(&p), Some("127.0.0.1:2".parse().unwrap()), None).unwrap();
        assert_eq!(
            s.load().unwrap().listen.port(),
            2,
            "--listen wins over the file"
        );
        let s = Source::find(Some(&p), None, Some("http://b:2".into())).unwrap();
        assert_eq!(s.load().unwrap().routes[0].origin, "http://b:2");
        std::fs::write(&p, "[[route]]\norigin = \"ftp://a\"\n").unwrap();
        let e = Source::find(Some(&p), None, None)
            .unwrap()
            .load()
            .unwrap_err();
        assert!(
            e.0.contains("v.toml") && e.0.contains("route[0].origin"),
            "{e}"
        );
    }
}

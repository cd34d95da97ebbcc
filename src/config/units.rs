//! Sizes and durations with units. A `*_bytes` key (and the other sizes)
//! takes a plain number of bytes or a string such as `"256MiB"` or `"64 kB"`
//! (bytesize: KiB/MiB/GiB are powers of 1024, kB/MB/GB of 1000); a `*_ms`
//! or `*_secs` key takes its number or a string such as `"30s"`, `"1m 30s"`,
//! `"500ms"` (humantime). The key's name keeps saying what a bare number means.

use serde::{de, Deserialize, Deserializer};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Number(u64),
    Text(String),
}

fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
    Raw::deserialize(d).map_err(|_| {
        de::Error::custom("expected a whole number or a string with a unit (\"256MiB\", \"30s\")")
    })
}

/// A size: bytes, or a string with a unit.
pub fn bytes<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    let n = match raw(d)? {
        Raw::Number(n) => n,
        Raw::Text(t) => t
            .trim()
            .parse::<bytesize::ByteSize>()
            .map_err(|e| de::Error::custom(format!("{t:?} is not a size ({e})")))?
            .as_u64(),
    };
    T::try_from(n).map_err(|_| de::Error::custom(format!("{n} is too large")))
}

fn duration<'de, D: Deserializer<'de>>(d: D, unit: Duration) -> Result<u64, D::Error> {
    match raw(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Text(t) => {
            let dur = humantime::parse_duration(t.trim())
                .map_err(|e| de::Error::custom(format!("{t:?} is not a duration ({e})")))?;
            let n = dur.as_nanos() / unit.as_nanos();
            if dur.as_nanos() % unit.as_nanos() != 0 {
                return Err(de::Error::custom(format!(
                    "{t:?} is not a whole number of {}",
                    if unit.as_secs() == 1 {
                        "seconds"
                    } else {
                        "milliseconds"
                    }
                )));
            }
            u64::try_from(n).map_err(|_| de::Error::custom(format!("{t:?} is too long")))
        }
    }
}

/// Milliseconds, or a string with a unit.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    duration(d, Duration::from_millis(1))
}

/// Seconds, or a string with a unit.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    duration(d, Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const MIN: &str = "[[route]]\norigin = \"http://127.0.0.1:9\"\n";

    #[test]
    fn sizes_and_durations_with_units() {
        let cfg = Config::from_toml(&format!(
            "{MIN}[cache]\ncapacity_bytes = \"256MiB\"\noriginals_bytes = \"64 kB\"\n\
             keep_stale_secs = \"1h\"\n[limits]\nconnect_timeout_ms = \"3s\"\n\
             max_header_bytes = \"16KiB\"\nbody_idle_timeout_ms = 1500\n"
        ))
        .unwrap();
        assert_eq!(cfg.cache.capacity_bytes, 256 << 20);
        assert_eq!(cfg.cache.originals_bytes, 64_000);
        assert_eq!(cfg.cache.keep_stale_secs, 3600);
        assert_eq!(cfg.limits.connect_timeout_ms, 3000);
        assert_eq!(cfg.limits.max_header_bytes, 16 << 10);
        assert_eq!(
            cfg.limits.body_idle_timeout_ms, 1500,
            "a bare number still works"
        );
        for (bad, key) in [
            ("[cache]\ncapacity_bytes = \"lots\"\n", "capacity_bytes"),
            (
                "[limits]\nconnect_timeout_ms = \"soon\"\n",
                "connect_timeout_ms",
            ),
            (
                "[cache]\nkeep_stale_secs = \"1500ms\"\n",
                "whole number of seconds",
            ),
            ("[cache]\ncapacity_bytes = -1\n", "capacity_bytes"),
        ] {
            let e = Config::from_toml(&format!("{MIN}{bad}")).unwrap_err();
            assert!(e.0.contains(key), "{bad}: {e}");
        }
    }
}

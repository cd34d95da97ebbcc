//! Which representation a client gets: the latent code, the original bytes,
//! or (only if the operator opts in) a reconstruction. Pure header logic.

use crate::config::Reconstructions;
use crate::latent::wire::{ModelId, MIME};
use hyper::header::{self, HeaderMap, HeaderValue};

/// The representation chosen for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The `.vlat` code.
    Latent,
    /// The origin's image bytes.
    Original,
    /// The image decoded from the latent (when the original is gone).
    Reconstruction,
}

/// One media range of an `Accept` header (RFC 9110 12.5.1), parameters with
/// their quotes and escapes undone; `q` is `None` when absent.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRange {
    /// `type/subtype`, lower-cased.
    pub media_type: String,
    /// Parameters other than `q`, names lower-cased, values unquoted.
    pub params: Vec<(String, String)>,
    /// The `q` weight if given (0..=1).
    pub q: Option<f32>,
}

/// Parses one `Accept` line into its media ranges. Commas and semicolons
/// inside quoted strings are data, not separators. A range with a malformed
/// weight (not `0`..`1` with at most three decimals) is dropped, as is
/// anything that does not parse: a garbled range never counts as a yes.
pub fn parse_accept(line: &str) -> Vec<MediaRange> {
    let mut out = Vec::new();
    for element in split_unquoted(line, ',') {
        let mut parts = split_unquoted(&element, ';').into_iter();
        let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let well_formed = media_type.split_once('/').is_some_and(|(t, sub)| {
            !t.is_empty() && !sub.is_empty() && !sub.contains('/') && !media_type.contains(' ')
        });
        if !well_formed {
            continue;
        }
        let mut range = MediaRange {
            media_type,
            params: Vec::new(),
            q: None,
        };
        let mut ok = true;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                ok = false;
                break;
            };
            let k = k.trim().to_ascii_lowercase();
            let Some(v) = unquote(v.trim()) else {
                ok = false;
                break;
            };
            if k == "q" {
                match qvalue(&v) {
                    Some(q) => range.q = Some(q),
                    None => ok = false,
                }
                // parameters after q are accept-ext, not media-type parameters
                break;
            }
            range.params.push((k, v));
        }
        if ok {
            out.push(range);
        }
    }
    out
}

/// Splits on `sep` outside double quotes (a backslash escapes inside them).
fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut quoted, mut escaped) = (false, false);
    for ch in s.chars() {
        if escaped {
            escaped = false;
        } else if quoted && ch == '\\' {
            escaped = true;
        } else if ch == '"' {
            quoted = !quoted;
        } else if ch == sep && !quoted {
            out.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push(ch);
    }
    out.push(cur);
    out
}

/// A token or a quoted-string with its escapes undone; `None` if malformed.
fn unquote(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"') else {
        return (!v.is_empty() && !v.contains(['"', ' ', '\\'])).then(|| v.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let (mut out, mut escaped) = (String::new(), false);
    for ch in inner.chars() {
        match (escaped, ch) {
            (false, '\\') => escaped = true,
            (false, '"') => return None,
            _ => {
                out.push(ch);
                escaped = false;
            }
        }
    }
    (!escaped).then_some(out)
}

/// RFC 9110 12.4.2 weight: `0`, `0.x{0,3}`, `1` or `1.0{0,3}`.
fn qvalue(v: &str) -> Option<f32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits_ok = frac.len() <= 3 && frac.bytes().all(|b| b.is_ascii_digit());
    match int {
        "0" if digits_ok => v.parse().ok(),
        "1" if digits_ok && frac.bytes().all(|b| b == b'0') => Some(1.0),
        _ => None,
    }
}

/// Whether `Accept` names the latent type with this model's id and q > 0.
/// A wildcard does not count: only decoders that ask get latents.
pub fn accepts_latent(req: &HeaderMap, model: &ModelId) -> bool {
    req.get_all(header::ACCEPT)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(parse_accept)
        .any(|r| {
            r.media_type.eq_ignore_ascii_case(MIME)
                && r.q.is_none_or(|q| q > 0.0)
                && r.params
                    .iter()
                    .any(|(k, v)| k == "model" && ModelId::from_hex(v) == Some(*model))
        })
}

/// `Save-Data: on` (the client asks for fewer bytes).
pub fn save_data(req: &HeaderMap) -> bool {
    req.get(header::HeaderName::from_static("save-data"))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("on"))
}

/// Chooses the representation of a stored latent image for this request.
pub fn choose(
    req: &HeaderMap,
    req_no_transform: bool,
    model: &ModelId,
    policy: Reconstructions,
) -> Choice {
    if req_no_transform {
        return Choice::Original;
    }
    if accepts_latent(req, model) {
        return Choice::Latent;
    }
    match policy {
        Reconstructions::Always => Choice::Reconstruction,
        Reconstructions::SaveData if save_data(req) => Choice::Reconstruction,
        _ => Choice::Original,
    }
}

/// The members of a comma-separated list header over all its lines, lowercased.
pub fn list_members(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Adds `names` to the response's `Vary` unless already listed (or `*`).
pub fn add_vary(headers: &mut HeaderMap, names: &[&str]) {
    let existing = list_members(headers, header::VARY);
    if existing.iter().any(|s| s == "*") {
        return;
    }
    let mut all = existing.clone();
    for n in names {
        if !existing.iter().any(|e| e.eq_ignore_ascii_case(n)) {
            all.push(n.to_string());
        }
    }
    if all.len() != existing.len() {
        if let Ok(v) = HeaderValue::from_str(&all.join(", ")) {
            headers.insert(header::VARY, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        h
    }

    #[test]
    fn latent_needs_type_and_model() {
        let id = ModelId([0xab; 16]);
        let hex = id.to_hex();
        assert!(accepts_latent(
            &req(&format!("{MIME}; model={hex}, image/*")),
            &id
        ));
        assert!(accepts_latent(
            &req(&format!("image/png,{MIME};model=\"{hex}\";q=0.9")),
            &id
        ));
        assert!(!accepts_latent(
            &req(&format!("{MIME}; model={hex}; q=0")),
            &id
        ));
        assert!(!accepts_latent(&req(MIME), &id));
        assert!(!accepts_latent(&req(&format!("{MIME}; model=00")), &id));
        assert!(!accepts_latent(&req("*/*"), &id));
    }

    #[test]
    fn accept_is_parsed_not_split() {
        let id = ModelId([0xab; 16]);
        let hex = id.to_hex();
        // a quoted comma or semicolon is data
        let r = parse_accept(r#"text/html;x="a,b;c", image/png;q=0.5"#);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].params, vec![("x".to_string(), "a,b;c".to_string())]);
        assert_eq!(r[1].q, Some(0.5));
        // q over 1, or with four decimals, or garbage: the range is dropped
        for bad in ["q=1.5", "q=2", "q=0.1234", "q=abc", "q=-1"] {
            assert!(
                !accepts_latent(&req(&format!("{MIME}; model={hex}; {bad}")), &id),
                "{bad}"
            );
        }
        assert!(accepts_latent(
            &req(&format!("{MIME}; model={hex}; q=1.000")),
            &id
        ));
        // a model id hidden in another parameter's quoted value is not one
        assert!(!accepts_latent(
            &req(&format!("{MIME}; x=\"; model={hex}\"")),
            &id
        ));
        assert!(accepts_latent(
            &req(&format!("{MIME}; x=\"a\\\"b\"; model={hex}")),
            &id
        ));
        // parameters after q are extensions, not the model
        assert!(!accepts_latent(
            &req(&format!("{MIME}; q=1; model={hex}")),
            &id
        ));
        assert!(parse_accept("nonsense, , /").is_empty());
    }

    #[test]
    fn reconstructions_only_when_opted_in() {
        let id = ModelId([1; 16]);
        let mut h = req("image/*");
        assert_eq!(
            choose(&h, false, &id, Reconstructions::Never),
            Choice::Original
        );
        assert_eq!(
            choose(&h, false, &id, Reconstructions::SaveData),
            Choice::Original
        );
        h.insert("save-data", HeaderValue::from_static("on"));
        assert_eq!(
            choose(&h, false, &id, Reconstructions::SaveData),
            Choice::Reconstruction
        );
        assert_eq!(
            choose(&h, true, &id, Reconstructions::Always),
            Choice::Original
        );
    }

    #[test]
    fn vary_is_merged() {
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        add_vary(&mut h, &["Accept", "accept-encoding"]);
        assert_eq!(h[header::VARY], "accept-encoding, Accept");
    }
}

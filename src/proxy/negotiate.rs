//! Which representation a client gets: the latent code, the original bytes,
//! or (only if the operator opts in) a reconstruction. Pure header logic.

use crate::config::Reconstructions;
use crate::latent::wire::{ModelId, MIME};
use hyper::header::{self, HeaderMap, HeaderValue};

/// The representation chosen for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Latent,
    Original,
    Reconstruction,
}

/// Whether `Accept` names the latent type with this model's id and q > 0.
/// A wildcard does not count: only decoders that ask get latents.
pub fn accepts_latent(req: &HeaderMap, model: &ModelId) -> bool {
    req.get_all(header::ACCEPT).iter().any(|line| {
        let Ok(line) = line.to_str() else {
            return false;
        };
        line.split(',').any(|range| {
            let mut parts = range.split(';');
            let ty = parts.next().unwrap_or("").trim();
            if !ty.eq_ignore_ascii_case(MIME) {
                return false;
            }
            let mut model_ok = false;
            let mut q_ok = true;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim().trim_matches('"'));
                if k.eq_ignore_ascii_case("model") {
                    model_ok = ModelId::from_hex(v) == Some(*model);
                } else if k.eq_ignore_ascii_case("q") {
                    q_ok = v.parse::<f32>().is_ok_and(|q| q > 0.0);
                }
            }
            model_ok && q_ok
        })
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

//! Who may reach a sandbox's ports: the sandbox's traffic token (`X-Cove-Traffic-Token`), a
//! signed URL naming sandbox, port and expiry (`cove_expires`, `cove_signature`), or anyone
//! when the sandbox was created with public ports. Tokens and signatures are HMAC-SHA256 under
//! this coved's traffic key (`HOME/traffic.key`, made once): nothing per sandbox is stored, and
//! a token is checked before anything is looked up, so a wrong one learns nothing and wakes
//! nothing.

use std::io::Write as _;
use std::path::Path;

use hmac::{KeyInit, Mac};

/// The header carrying a sandbox's traffic token.
pub const TOKEN_HEADER: &str = "x-cove-traffic-token";
/// Query parameters of a signed URL.
pub const EXPIRES_PARAM: &str = "cove_expires";
/// The signature's parameter.
pub const SIGNATURE_PARAM: &str = "cove_signature";

type Hmac = hmac::Hmac<sha2::Sha256>;

/// The traffic key, and where ports are served.
#[derive(Debug)]
pub struct Traffic {
    key: Vec<u8>,
    /// The domain under which `PORT-ID.DOMAIN` reaches a sandbox's port.
    pub domain: String,
}

/// Why a request may not reach a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Neither a token nor a signature.
    Missing,
    /// A token or signature that does not match.
    Wrong,
    /// A signed URL past its expiry.
    Expired,
}

impl Denied {
    /// For the 401's message.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "this port needs the sandbox's traffic token (X-Cove-Traffic-Token) or a signed URL (`cove url`)"
            }
            Self::Wrong => "the traffic token or the URL's signature does not match",
            Self::Expired => "the signed URL has expired",
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Traffic {
    /// Opens (or makes, once) the traffic key in `home`.
    pub fn open(home: &Path, domain: String) -> std::io::Result<Self> {
        let path = home.join("traffic.key");
        let key = match std::fs::read_to_string(&path) {
            Ok(k) => k.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = crate::keys::random_hex(32)?;
                let tmp = home.join(format!("traffic.key.{}", std::process::id()));
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(k.as_bytes())?;
                    f.sync_all()?;
                }
                // Another coved of this home may have made one first: theirs is kept.
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
                let _ = std::fs::remove_file(&tmp);
                std::fs::read_to_string(&path)?.trim().to_string()
            }
            Err(e) => return Err(e),
        };
        if key.len() < 32 {
            return Err(std::io::Error::other(format!(
                "{} is too short to be a traffic key",
                path.display()
            )));
        }
        Ok(Self {
            key: key.into_bytes(),
            domain,
        })
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut m = <Hmac as KeyInit>::new_from_slice(&self.key).expect("any key length");
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"\0");
        }
        hex(&m.finalize().into_bytes())
    }

    /// Sandbox `id`'s traffic token.
    pub fn token(&self, id: &str) -> String {
        self.mac(&["token", id])
    }

    /// Sandbox `id`'s access token for the E2B-compatible in-sandbox API (commands, files): a
    /// key of its own, so a traffic token (given to whoever may see a port) never runs code.
    pub fn envd_token(&self, id: &str) -> String {
        self.mac(&["envd", id])
    }

    /// Whether `token` is sandbox `id`'s envd access token (compared in constant time).
    pub fn check_envd(&self, id: &str, token: &str) -> bool {
        same(token.trim(), &self.envd_token(id))
    }

    /// The signature of a URL to `port` of sandbox `id` valid until `expires` (seconds since
    /// the epoch).
    pub fn sign(&self, id: &str, port: u16, expires: u64) -> String {
        self.mac(&["url", id, &port.to_string(), &expires.to_string()])
    }

    /// Checks a request for `port` of sandbox `id`: its token header, else its signed query.
    pub fn check(
        &self,
        id: &str,
        port: u16,
        token: Option<&str>,
        query: Option<&str>,
        now: u64,
    ) -> Result<(), Denied> {
        if let Some(t) = token {
            return if same(t.trim(), &self.token(id)) {
                Ok(())
            } else {
                Err(Denied::Wrong)
            };
        }
        let (mut expires, mut sig) = (None, None);
        for (k, v) in query
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
        {
            match k {
                EXPIRES_PARAM => expires = Some(v),
                SIGNATURE_PARAM => sig = Some(v),
                _ => {}
            }
        }
        let (Some(expires), Some(sig)) = (expires, sig) else {
            return Err(Denied::Missing);
        };
        let Ok(at) = expires.parse::<u64>() else {
            return Err(Denied::Wrong);
        };
        if !same(sig, &self.sign(id, port, at)) {
            return Err(Denied::Wrong);
        }
        if at < now {
            return Err(Denied::Expired);
        }
        Ok(())
    }
}

/// `query` without the signed URL's own parameters (the guest's server never sees them).
pub fn strip_query(query: &str) -> String {
    query
        .split('&')
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or("");
            !kv.is_empty() && k != EXPIRES_PARAM && k != SIGNATURE_PARAM
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_signatures_check_sandbox_port_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let t = Traffic::open(dir.path(), "cove.localhost".into()).unwrap();
        // The key is made once and kept.
        let again = Traffic::open(dir.path(), "x".into()).unwrap();
        assert_eq!(t.token("abc"), again.token("abc"));
        let tok = t.token("abcdefabcdef");
        assert_eq!(t.check("abcdefabcdef", 80, Some(&tok), None, 0), Ok(()));
        assert_eq!(
            t.check("000000000000", 80, Some(&tok), None, 0),
            Err(Denied::Wrong)
        );
        assert_eq!(
            t.check("abcdefabcdef", 80, None, None, 0),
            Err(Denied::Missing)
        );
        let sig = t.sign("abcdefabcdef", 80, 100);
        let q = format!("a=1&{EXPIRES_PARAM}=100&{SIGNATURE_PARAM}={sig}");
        assert_eq!(t.check("abcdefabcdef", 80, None, Some(&q), 99), Ok(()));
        assert_eq!(
            t.check("abcdefabcdef", 80, None, Some(&q), 101),
            Err(Denied::Expired)
        );
        assert_eq!(
            t.check("abcdefabcdef", 81, None, Some(&q), 99),
            Err(Denied::Wrong)
        );
        let longer = q.replace("=100&", "=1000&");
        assert_eq!(
            t.check("abcdefabcdef", 80, None, Some(&longer), 99),
            Err(Denied::Wrong)
        );
        assert_eq!(strip_query(&q), "a=1");
    }
}

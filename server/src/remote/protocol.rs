//! What the control plane and an agent say to each other (JSON over mutual TLS).

use serde::{Deserialize, Serialize};

/// The agent protocol's version: both sides refuse a peer of another.
pub const PROTOCOL: u32 = 1;

/// `POST /v1/join` on the control plane's agent port, from a host joining with a token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The secret part of the join token.
    pub secret: String,
    /// host:port where the control plane reaches this agent; empty: the address the join
    /// came from, with `port`.
    #[serde(default)]
    pub address: Option<String>,
    pub port: u16,
    pub protocol: u32,
    pub version: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub server_id: String,
    pub server_name: String,
    /// The address the control plane will call.
    pub address: String,
}

/// An error answer of either side: `{"error": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
}

/// `GET /v1/status` on an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub server_id: String,
    pub version: String,
    pub protocol: u32,
    /// Free and total bytes of the filesystem of its storage root.
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Container trees in its storage root.
    pub containers: u64,
}

/// A join token as the operator copies it: `doppel-join-1.<secret>.<fingerprint>`. The
/// fingerprint is the control plane's certificate's, so the joining agent knows whom it
/// talks to before it sends the secret.
pub fn join_token(secret: &str, control_plane: crate::tls::Fingerprint) -> String {
    format!("doppel-join-1.{secret}.{control_plane}")
}

/// The secret and the control plane's fingerprint of a join token.
pub fn parse_join_token(token: &str) -> Option<(String, crate::tls::Fingerprint)> {
    let mut parts = token.trim().split('.');
    let (Some("doppel-join-1"), Some(secret), Some(fp), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((secret.to_string(), crate::tls::Fingerprint::parse(fp)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_refuse_garbage() {
        let fp = crate::tls::Fingerprint::of(b"cp");
        let secret = "ab".repeat(32);
        let token = join_token(&secret, fp);
        assert_eq!(parse_join_token(&token), Some((secret.clone(), fp)));
        assert_eq!(parse_join_token(&format!(" {token}\n")), Some((secret, fp)));
        for bad in [
            "",
            "doppel-join-1",
            "doppel-join-2.aa.bb",
            &format!("{token}.x"),
        ] {
            assert_eq!(parse_join_token(bad), None, "{bad}");
        }
    }
}

//! Mutual TLS between the control plane and its agents, with pinned self-signed
//! certificates (as Incus's trust): each side has one key pair and certificate made on its
//! first start, and trusts exactly the certificates whose SHA-256 fingerprints it was told
//! (by a join token, or by the control plane for a transfer). No CA, no names checked: a
//! peer is who holds the pinned certificate's key (TLS proves that in the handshake).
//!
//! The ring provider throughout (not aws-lc-rs: no cmake or C++ compiler on a fresh host).

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The SHA-256 of a certificate's DER: how a peer is named and pinned.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut fp = [0u8; 32];
        fp.copy_from_slice(d.as_ref());
        Fingerprint(fp)
    }

    /// 64 hex digits (lower case; upper case and colons are accepted).
    pub fn parse(s: &str) -> Option<Fingerprint> {
        let hex_digits: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(hex_digits.to_ascii_lowercase()).ok()?;
        Some(Fingerprint(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// This process's certificate and key.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key_pem: String,
    pub fingerprint: Fingerprint,
}

impl Identity {
    /// The identity kept in `dir` (`cert.pem`, `key.pem`), made on first use. Two processes
    /// making it at once agree on one: the key is written first under a temporary name and
    /// the pair published with a link that fails if another already did.
    pub fn load_or_create(dir: &Path, name: &str) -> io::Result<Identity> {
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert_path.exists() {
            fs::create_dir_all(dir)?;
            let made = rcgen::generate_simple_self_signed(vec![name.to_string()])
                .map_err(io::Error::other)?;
            let tmp = |what: &str| dir.join(format!(".{what}.{}", std::process::id()));
            let write = |path: &PathBuf, text: &str| -> io::Result<()> {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()
            };
            let (tmp_key, tmp_cert) = (tmp("key"), tmp("cert"));
            write(&tmp_key, &made.signing_key.serialize_pem())?;
            write(&tmp_cert, &made.cert.pem())?;
            // The key first: a cert.pem never exists without its key.
            let published = fs::hard_link(&tmp_key, &key_path)
                .and_then(|()| fs::hard_link(&tmp_cert, &cert_path));
            let _ = fs::remove_file(&tmp_key);
            let _ = fs::remove_file(&tmp_cert);
            match published {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Another process won; wait for its certificate.
                    for _ in 0..50 {
                        if cert_path.exists() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(io::Error::other)?;
        let key_pem = fs::read_to_string(&key_path)?;
        // The key must parse now, not at the first connection.
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(io::Error::other)?;
        let fingerprint = Fingerprint::of(&cert);
        Ok(Identity {
            cert,
            key_pem,
            fingerprint,
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("checked at load")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn refused() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// The server's certificate must be exactly this one.
#[derive(Debug)]
struct PinnedServer {
    pin: Fingerprint,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A client configuration that presents `me` and accepts only the server pinned by `pin`.
/// Sessions are not resumed: every connection shows its certificate again.
pub fn client_config(
    me: &Identity,
    pin: Fingerprint,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        pin,
        algs: provider.signature_verification_algorithms,
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![me.cert.clone()], me.key())?;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// The client certificates a server accepts: a set that may change while it runs, or any
/// certificate at all (a join: the joining agent proves it holds its key, and the join
/// token says whether it may join).
#[derive(Clone, Debug)]
pub enum ClientPins {
    Only(Arc<RwLock<HashSet<Fingerprint>>>),
    Any,
}

impl ClientPins {
    pub fn only(pins: impl IntoIterator<Item = Fingerprint>) -> ClientPins {
        ClientPins::Only(Arc::new(RwLock::new(pins.into_iter().collect())))
    }

    /// From now on these (a set of pins only).
    pub fn replace(&self, pins: impl IntoIterator<Item = Fingerprint>) {
        if let ClientPins::Only(set) = self {
            *set.write() = pins.into_iter().collect();
        }
    }

    pub fn allows(&self, fp: &Fingerprint) -> bool {
        match self {
            ClientPins::Only(set) => set.read().contains(fp),
            ClientPins::Any => true,
        }
    }
}

#[derive(Debug)]
struct PinnedClients {
    pins: ClientPins,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.pins.allows(&Fingerprint::of(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A server configuration that presents `me` and requires a client certificate `pins`
/// allows. No session resumption (a resumed session would skip the pin check after a pin
/// was removed).
pub fn server_config(
    me: &Identity,
    pins: ClientPins,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PinnedClients {
        pins,
        algs: provider.signature_verification_algorithms,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![me.cert.clone()], me.key())?;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Who is on the other end of an accepted connection: its certificate's fingerprint and
/// its address. [`serve`] puts it into each request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub fingerprint: Fingerprint,
    pub address: std::net::SocketAddr,
}

/// Serves `router` over TLS on `listener` until `stop` resolves (connections under way go
/// on until the process ends): each connection's handshake (at most 10 s) must pass
/// `config`'s client check; its requests carry [`Peer`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::pin!(stop);
    loop {
        let (tcp, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TLS connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let _ = dead_peer_detection(&socket2::SockRef::from(&tcp));
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(error = %e, %address, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let Some(peer) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Peer {
                    fingerprint: Fingerprint::of(c),
                    address,
                })
            else {
                return;
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    tower::ServiceExt::oneshot(router.clone(), req)
                },
            );
            // Upgrades: a transfer turns its request's connection into the engine's stream.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

/// How long a connection's peer may stay silent before the connection fails: keepalive
/// probes after 5 s of quiet, then every 2 s, three of them; data unacknowledged for
/// [`USER_TIMEOUT`]. A transfer over a cut link fails in seconds, and is tried again.
pub const USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

fn dead_peer_detection(sock: &socket2::SockRef<'_>) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(5))
        .with_interval(std::time::Duration::from_secs(2))
        .with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// A client for one pinned server, presenting `me` (HTTP/1.1 over TLS).
pub fn client(
    me: &Identity,
    pin: Fingerprint,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, String> {
    let tls = client_config(me, pin).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .tcp_keepalive(std::time::Duration::from_secs(5))
        .tcp_keepalive_interval(std::time::Duration::from_secs(2))
        .tcp_keepalive_retries(3)
        .tcp_user_timeout(USER_TIMEOUT)
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse() {
        let fp = Fingerprint::of(b"x");
        let text = fp.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(Fingerprint::parse(&text), Some(fp));
        assert_eq!(Fingerprint::parse(&text.to_uppercase()), Some(fp));
        assert_eq!(Fingerprint::parse("abc"), None);
    }

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), "doppel").unwrap();
        let b = Identity::load_or_create(dir.path(), "doppel").unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join("key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the key is the owner's alone");
    }
}

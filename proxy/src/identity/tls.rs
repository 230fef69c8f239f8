//! [`Tls`]: the workload's current certificate and trust bundle, and the rustls configs that
//! use them.
//!
//! Credentials live behind `arc_swap`. The configs never hold a certificate or a root store
//! of their own: a cert resolver hands out the current certified key on every handshake and
//! the verifiers read the current bundle, so a renewal or a new bundle applies to the next
//! handshake while established connections carry on with what they negotiated.
//!
//! Session resumption is off on both sides: a resumed TLS 1.3 session skips certificate
//! verification, so a peer whose certificate has expired, or whose root was dropped from the
//! bundle, could go on resuming. Every connection pays for a full handshake instead, which
//! HTTP/2 between proxies (one connection per peer) keeps rare.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tokio::sync::Notify;
use weft_api::SpiffeId;
use weft_tls::{BundleCell, ClientIdVerifier, ServerIdVerifier, TrustBundle};

use super::credentials::{Credentials, CredentialsError};
use super::IdentityError;

/// ALPN offered by the inbound side: HTTP/2 between proxies, HTTP/1.1 for anything else.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// An outbound proxy talks to a bounded set of peers, but identities come from config the
/// proxy does not control; past this many cached client configs the cache starts over.
const MAX_CACHED_PEERS: usize = 4096;

/// The workload's identity for mTLS, shared as `Arc<Tls>` by every listener and connector.
pub struct Tls {
    state: Arc<State>,
    server: Arc<ServerConfig>,
    /// Whatever keeps the credentials fresh (the refresh task's shutdown handle or the file
    /// watcher); dropped with the last `Arc<Tls>`, which stops it.
    source: Mutex<Option<Source>>,
}

pub(crate) enum Source {
    /// Dropping the sender ends the refresh task.
    Refresh(#[allow(dead_code)] tokio::sync::oneshot::Sender<()>),
    /// Dropping the watcher ends the reload task.
    Watcher(#[allow(dead_code)] notify::RecommendedWatcher),
}

/// Client configs by expected peer, each with the ALPN list it was built for (looked up by
/// `&SpiffeId` and compared by slice, so a hit allocates nothing).
type ClientCache = HashMap<SpiffeId, Vec<(Vec<Vec<u8>>, Arc<ClientConfig>)>>;

/// What the resolvers, verifiers and refreshers share.
pub(crate) struct State {
    pub(crate) provider: Arc<CryptoProvider>,
    current: ArcSwapOption<Credentials>,
    pub(crate) bundle: BundleCell,
    changed: Notify,
    clients: Mutex<ClientCache>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Makes `credentials` the ones every new handshake uses. A changed bundle also replaces
    /// the verifiers' roots and empties the client-config cache.
    pub(crate) fn install(&self, credentials: Credentials) {
        let bundle_changed = match &*self.bundle.load() {
            Some(current) => current.roots() != credentials.bundle.roots(),
            None => true,
        };
        if bundle_changed {
            // Bundle first: a renewal during an anchor rotation brings a leaf from the new
            // root, and peers already holding such leaves must be accepted from now on.
            self.bundle.store(Some(credentials.bundle.clone()));
            self.clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        self.current.store(Some(Arc::new(credentials)));
        self.changed.notify_waiters();
    }

    /// Installs `credentials` unless they are not current while the installed ones are: a
    /// renewal or reload never trades a valid certificate for an expired one.
    pub(crate) fn install_if_no_worse(
        &self,
        credentials: Credentials,
    ) -> Result<(), CredentialsError> {
        let credentials = if self.current().is_some_and(|c| c.is_current()) {
            credentials.check_current()?
        } else {
            credentials
        };
        self.install(credentials);
        Ok(())
    }

    /// Stops presenting a certificate (it expired and no renewal came). The bundle stays.
    pub(crate) fn clear(&self) {
        self.current.store(None);
        self.changed.notify_waiters();
    }
}

/// Hands the current certificate to every handshake, inbound and outbound.
#[derive(Debug)]
struct CurrentCert(Arc<State>);

impl CurrentCert {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.current.load().as_ref().map(|c| c.certified.clone())
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.0.current.load().is_some()
    }
}

impl Tls {
    /// An empty store: not ready, every handshake refused until credentials are installed.
    pub(crate) fn empty() -> Tls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let state = Arc::new(State {
            provider: provider.clone(),
            current: ArcSwapOption::empty(),
            bundle: Arc::new(ArcSwapOption::empty()),
            changed: Notify::new(),
            clients: Mutex::new(HashMap::new()),
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(ClientIdVerifier::new(
                state.bundle.clone(),
                &provider,
            )))
            .with_cert_resolver(Arc::new(CurrentCert(state.clone())));
        server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Tls {
            state,
            server: Arc::new(server),
            source: Mutex::new(None),
        }
    }

    /// Fixed credentials from DER (tests, benchmarks, embedding): the certificate chain leaf
    /// first, its private key, and the roots peers must chain to. Checked as a renewal is,
    /// except that an expired (or not yet valid) certificate is taken: the store is then not
    /// ready, and peers refuse it.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<Tls>, IdentityError> {
        let tls = Tls::empty();
        tls.replace(chain, key, bundle)?;
        Ok(Arc::new(tls))
    }

    /// Swaps in new credentials, as a renewal does: new handshakes use them, established
    /// connections are untouched. Refused (and the current ones kept) unless the key matches
    /// the leaf, the leaf names one SPIFFE ID and the chain verifies against `bundle` — and,
    /// while the current certificate is valid, unless the new one is valid now too.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<(), IdentityError> {
        let provider = &self.state.provider;
        let bundle = Arc::new(TrustBundle::new(bundle, provider).map_err(CredentialsError::from)?);
        let credentials = Credentials::new(chain, key, bundle, provider)?;
        self.state.install_if_no_worse(credentials)?;
        Ok(())
    }

    pub(crate) fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub(crate) fn set_source(&self, source: Source) {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// The SPIFFE ID of the current certificate.
    pub fn local_identity(&self) -> Option<SpiffeId> {
        self.state
            .current
            .load()
            .as_ref()
            .map(|c| c.identity.clone())
    }

    /// Whether a certificate is loaded and valid now.
    pub fn is_ready(&self) -> bool {
        self.state
            .current
            .load()
            .as_ref()
            .is_some_and(|c| c.is_current())
    }

    /// Resolves once [`Tls::is_ready`] (at once if it already is).
    pub async fn ready(&self) {
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so an install between the check and the await is
            // not missed.
            changed.as_mut().enable();
            if self.is_ready() {
                return;
            }
            changed.await;
        }
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.state.current.load().as_ref().map(|c| c.not_after)
    }

    /// Inbound: TLS 1.3, a client certificate required and verified against the current
    /// bundle (and naming exactly one SPIFFE ID; read it with [`super::peer_identity`]), ALPN
    /// `h2` then `http/1.1`, our current certificate. The same config for the process's
    /// lifetime: renewals need no new one.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Outbound to a peer that must be `expected`: presents our certificate, verifies the
    /// server's chain against the current bundle and that its only URI SAN is `expected` (a
    /// mismatch fails the handshake, saying both names). The server name passed to the
    /// connector is not checked (an IP address is fine; it is sent as SNI only if it is a DNS
    /// name). Cached per (`expected`, `alpn`); the cache is emptied when the bundle changes.
    pub fn client_config(&self, expected: &SpiffeId, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut cache = self.state.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, config)) = cache.get(expected).and_then(|configs| {
            configs
                .iter()
                .find(|(protocols, _)| protocols.iter().map(Vec::as_slice).eq(alpn.iter().copied()))
        }) {
            return config.clone();
        }
        let config = Arc::new(self.build_client_config(expected, alpn, None));
        if cache.len() >= MAX_CACHED_PEERS {
            cache.clear();
        }
        cache
            .entry(expected.clone())
            .or_default()
            .push((alpn.iter().map(|p| p.to_vec()).collect(), config.clone()));
        config
    }

    /// A client config as [`Tls::client_config`] builds it, optionally also trusting
    /// `anchors` (the control-plane connection, which must work before the first bundle).
    pub(crate) fn build_client_config(
        &self,
        expected: &SpiffeId,
        alpn: &[&[u8]],
        anchors: Option<Arc<TrustBundle>>,
    ) -> ClientConfig {
        let provider = &self.state.provider;
        let verifier = ServerIdVerifier::new(
            expected.clone(),
            self.state.bundle.clone(),
            anchors,
            provider,
        );
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(CurrentCert(self.state.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = Resumption::disabled();
        config
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.local_identity().map(|id| id.to_string()))
            .field(
                "not_after",
                &self.not_after().map(humantime::format_rfc3339_seconds),
            )
            .finish_non_exhaustive()
    }
}

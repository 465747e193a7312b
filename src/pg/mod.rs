//! The PostgreSQL wire protocol, so psql, DBeaver, BI tools and drivers
//! (psycopg, SQLAlchemy, pandas, JDBC) reach the warehouse.
//!
//! Built on `datafusion-postgres` (its `pg_catalog` emulation, its
//! PostgreSQL-dialect rewriting, its Arrow to PostgreSQL encoding) and
//! `pgwire`, with ironlake's own accept loop, logins and statement rules:
//! - user = role (`analyst`, `admin`, `viewer`), password = that role's
//!   token, database `ironlake`; SCRAM-SHA-256, so the token never crosses
//!   the network, and TLS when `[pg] tls_cert`/`tls_key` are set; failed
//!   logins are logged without the secret and slowed down per address;
//! - statements follow the SQL API's rules and limits ([`session`]);
//! - each query sees one warehouse snapshot ([`engine`]).

mod engine;
mod session;

use crate::daemon::Daemon;
use async_trait::async_trait;
use datafusion_postgres::pgwire;
use futures::Sink;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{
    ClientInfo, ConnectionManager, ErrorHandler, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::collections::HashMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use engine::{SERVER_VERSION, VERSION};

/// The database name clients connect to.
pub const DATABASE: &str = "ironlake";

/// SCRAM iterations (PostgreSQL's default).
const SCRAM_ITERATIONS: usize = 4096;

/// Errors starting the PostgreSQL server.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The TLS certificate or key could not be used.
    #[error("[pg] TLS: {0}")]
    Tls(String),
    /// The SQL engine could not be set up.
    #[error(transparent)]
    Engine(#[from] crate::catalog::CatalogError),
}

/// A TLS acceptor from a PEM certificate chain and its key (PKCS#8,
/// PKCS#1 or SEC1). Fails rather than falling back to plain text.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<pgwire::tokio::TlsAcceptor, PgError> {
    use pgwire::tokio::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| PgError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgError::Tls(format!("{}: not a PEM certificate: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(PgError::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| PgError::Tls(format!("{}: not a PEM private key: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| PgError::Tls(format!("the certificate and key do not fit: {e}")))?;
    // PostgreSQL 17's direct TLS negotiation asks for this protocol.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}

/// A role's SCRAM secret: the fingerprint of the token it was derived
/// from, the salt and the salted password.
struct Secret {
    token: String,
    salt: Vec<u8>,
    salted: Vec<u8>,
}

/// Roles' SCRAM secrets, derived from their tokens (again when a token changes).
struct RoleAuth {
    d: Arc<Daemon>,
    /// By role.
    secrets: Mutex<HashMap<String, Secret>>,
}

impl Debug for RoleAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoleAuth")
    }
}

#[async_trait]
impl AuthSource for RoleAuth {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().ok_or(PgWireError::UserNameRequired)?;
        let tokens = self.d.tokens();
        let token = match user {
            "admin" => tokens.admin,
            "analyst" => tokens.analyst,
            "viewer" => tokens.viewer,
            _ => None,
        };
        let random = |n| crate::primitives::random_bytes(n).map_err(PgWireError::IoError);
        let Some(token) = token else {
            // An unknown role fails like a wrong password (no enumeration).
            return Ok(Password::new(Some(random(16)?), random(32)?));
        };
        let fingerprint = crate::primitives::fingerprint(&token, None, "pg");
        if let Some(s) = self.secrets.lock().expect("secrets lock").get(user)
            && s.token == fingerprint
        {
            return Ok(Password::new(Some(s.salt.clone()), s.salted.clone()));
        }
        let salt = random(16)?;
        let (s, t) = (salt.clone(), token.clone());
        let salted =
            tokio::task::spawn_blocking(move || gen_salted_password(&t, &s, SCRAM_ITERATIONS))
                .await
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        self.secrets.lock().expect("secrets lock").insert(
            user.to_string(),
            Secret {
                token: fingerprint,
                salt: salt.clone(),
                salted: salted.clone(),
            },
        );
        Ok(Password::new(Some(salt), salted))
    }
}

/// Failed logins per client address: after [`Throttle::FREE`] failures in
/// a row, each further attempt waits longer (up to [`Throttle::MAX`]).
#[derive(Default)]
struct Throttle(Mutex<HashMap<IpAddr, (u32, Instant)>>);

impl Throttle {
    const FREE: u32 = 3;
    const MAX: Duration = Duration::from_secs(5);
    const FORGET: Duration = Duration::from_secs(600);

    fn delay(&self, ip: IpAddr) -> Duration {
        let map = self.0.lock().expect("throttle lock");
        match map.get(&ip) {
            Some((n, at)) if *n >= Self::FREE && at.elapsed() < Self::FORGET => {
                (Duration::from_millis(250) * 2u32.pow((*n - Self::FREE).min(5))).min(Self::MAX)
            }
            _ => Duration::ZERO,
        }
    }

    fn failed(&self, ip: IpAddr) -> u32 {
        let mut map = self.0.lock().expect("throttle lock");
        if map.len() > 10_000 {
            map.retain(|_, (_, at)| at.elapsed() < Self::FORGET);
        }
        let e = map.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= Self::FORGET {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = Instant::now();
        e.0
    }

    fn succeeded(&self, ip: IpAddr) {
        self.0.lock().expect("throttle lock").remove(&ip);
    }
}

/// SCRAM login, the database name check and the failed-login brake.
struct Startup {
    sasl: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    /// For a TLS connection when a certificate is configured: also offers
    /// SCRAM-SHA-256-PLUS (channel binding), which plain connections must
    /// not be offered.
    sasl_tls: Option<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
    throttle: Arc<Throttle>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let ip = client.socket_addr().ip();
        match &message {
            PgWireFrontendMessage::Startup(s) => {
                if let Some(db) = s.parameters.get("database")
                    && db != DATABASE
                    && Some(db) != s.parameters.get("user")
                {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "3D000".into(),
                        format!("database \"{db}\" does not exist; connect to database {DATABASE}"),
                    ))));
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(_) => {
                let wait = self.throttle.delay(ip);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            _ => {}
        }
        match &self.sasl_tls {
            Some(tls) if client.is_secure() => tls.on_startup(client, message).await?,
            _ => self.sasl.on_startup(client, message).await?,
        }
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            self.throttle.succeeded(ip);
            tracing::debug!(peer = %client.socket_addr(), user = client.metadata().get(pgwire::api::METADATA_USER).map(String::as_str).unwrap_or(""), "PostgreSQL login.");
        }
        Ok(())
    }
}

/// Logs failed logins (never the secret) and maps engine errors to SQLSTATEs.
struct Errors {
    throttle: Arc<Throttle>,
}

impl ErrorHandler for Errors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        match error {
            PgWireError::InvalidPassword(_) => {
                let failures = self.throttle.failed(client.socket_addr().ip());
                let user = client
                    .metadata()
                    .get(pgwire::api::METADATA_USER)
                    .map(String::as_str)
                    .unwrap_or("");
                tracing::warn!(peer = %client.socket_addr(), user, failures, "PostgreSQL login failed: wrong token or unknown role.");
                *error = PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".into(),
                    "28P01".into(),
                    format!(
                        "password authentication failed for user \"{user}\" (the user is a role: analyst, admin or viewer; the password is that role's token)"
                    ),
                )));
            }
            PgWireError::ApiError(inner) => {
                if let Some(e) = inner.downcast_ref::<datafusion::error::DataFusionError>() {
                    *error =
                        session::pg_error(session::sqlstate(e), crate::query::describe(e, &[]));
                }
            }
            _ => {}
        }
    }
}

/// Everything a connection needs.
struct Handlers {
    session: Arc<session::PgSession>,
    auth: Arc<RoleAuth>,
    params: Arc<DefaultServerParameterProvider>,
    connections: Arc<ConnectionManager>,
    pids: Arc<dyn PidSecretKeyGenerator>,
    throttle: Arc<Throttle>,
    cert_pem: Option<Vec<u8>>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // One per connection: the SASL exchange has per-connection state.
        let sasl = |cert: Option<&[u8]>| {
            let mut scram = ScramAuth::new(self.auth.clone());
            scram.set_iterations(SCRAM_ITERATIONS);
            if let Some(pem) = cert {
                let _ = scram.configure_certificate(pem);
            }
            SASLAuthStartupHandler::new(self.params.clone())
                .with_scram(scram)
                .with_connection_manager(self.connections.clone())
                .with_pid_secret_key_generator(self.pids.clone())
        };
        Arc::new(Startup {
            sasl: sasl(None),
            sasl_tls: self.cert_pem.as_deref().map(|pem| sasl(Some(pem))),
            throttle: self.throttle.clone(),
        })
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.connections.clone()))
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(Errors {
            throttle: self.throttle.clone(),
        })
    }
}

/// A PostgreSQL protocol server over a daemon, ready to accept.
pub struct PgServer {
    handlers: Arc<Handlers>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    max_connections: usize,
}

impl PgServer {
    /// Sets up the engine, the logins and TLS from the daemon's `[pg]` settings.
    pub fn new(d: Arc<Daemon>) -> Result<PgServer, PgError> {
        let pg = d.project().settings.pg.clone();
        let (tls, cert_pem) = match (&pg.tls_cert, &pg.tls_key) {
            (Some(cert), Some(key)) => (Some(tls_acceptor(cert, key)?), std::fs::read(cert).ok()),
            _ => (None, None),
        };
        let engine = Arc::new(engine::PgEngine::new(&d.catalog())?);
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = SERVER_VERSION.to_string();
        params.default_transaction_read_only = true;
        params.is_superuser = false;
        params.scram_iterations = SCRAM_ITERATIONS;
        Ok(PgServer {
            handlers: Arc::new(Handlers {
                session: Arc::new(session::PgSession::new(d.clone(), engine)),
                auth: Arc::new(RoleAuth {
                    d,
                    secrets: Mutex::default(),
                }),
                params: Arc::new(params),
                connections: Arc::new(ConnectionManager::new()),
                pids: Arc::new(RandomPidSecretKeyGenerator::default()),
                throttle: Arc::default(),
                cert_pem,
            }),
            tls,
            max_connections: pg.max_connections,
        })
    }

    /// Whether clients may use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Accepts connections until `shutdown`; connections over the limit
    /// get a `53300` error.
    pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: CancellationToken) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        loop {
            let (socket, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tokio::spawn(refuse(socket, self.max_connections));
                continue;
            };
            let (handlers, tls, stop) = (self.handlers.clone(), self.tls.clone(), shutdown.clone());
            tokio::spawn(async move {
                let _slot = slot;
                tokio::select! {
                    r = pgwire::tokio::process_socket(socket, tls, handlers) => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "PostgreSQL connection ended with an error.");
                        }
                    }
                    _ = stop.cancelled() => {}
                }
            });
        }
    }
}

/// Tells a client over the connection limit why, and hangs up: declines
/// TLS/GSS if asked (so libpq shows the message), reads the startup packet,
/// answers `FATAL 53300`.
async fn refuse(mut socket: tokio::net::TcpStream, limit: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SSL_REQUEST: u32 = 80877103;
    const GSS_REQUEST: u32 = 80877104;
    let talk = async {
        loop {
            let len = socket.read_u32().await? as usize;
            if !(8..=10_000).contains(&len) {
                return Ok::<_, std::io::Error>(());
            }
            let mut body = vec![0u8; len - 4];
            socket.read_exact(&mut body).await?;
            let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            if len == 8 && (code == SSL_REQUEST || code == GSS_REQUEST) {
                socket.write_all(b"N").await?;
                continue;
            }
            break;
        }
        let message = format!("sorry, too many clients already ([pg] max_connections is {limit})");
        let mut body = Vec::new();
        for (field, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "53300"),
            (b'M', &message),
        ] {
            body.push(field);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut frame = vec![b'E'];
        frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        frame.extend_from_slice(&body);
        socket.write_all(&frame).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), talk).await;
}

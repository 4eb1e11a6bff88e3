//! Authentication on the Postgres endpoint: the password is an API key.
//!
//! The user name picks the method. When it is the name of a key that has a SCRAM verifier
//! (every key created by this version), the client authenticates by SCRAM-SHA-256 against
//! that key (SCRAM-SHA-256-PLUS, bound to the server certificate, on TLS connections), and
//! the key never crosses the wire. Any other user name (`tarn`, say) or a key from before
//! verifiers were stored gets a cleartext password request, checked against the key hashes:
//! any key for a user name that names no key, otherwise that key only. Without keys on
//! loopback no password is asked. Each session is registered for cancel requests.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, ConnectionManager, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::AppState;
use crate::auth::ScramKeys;

/// Checks passwords and hands out SCRAM verifiers from the server's API keys.
struct KeySource(AppState);

impl Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySource")
    }
}

fn refused(login: &LoginInfo) -> PgWireError {
    PgWireError::InvalidPassword(login.user().unwrap_or_default().to_owned())
}

#[async_trait]
impl AuthSource for KeySource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Keys are stored hashed: nothing recoverable to hand out.
        Err(refused(login))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let key = std::str::from_utf8(presented).unwrap_or_default();
        let keys = &self.0.keys;
        let ok = match login.user().filter(|u| keys.named(u).is_some()) {
            Some(name) => keys.verify_named(name, key),
            None => keys.verify(key),
        };
        if ok { Ok(None) } else { Err(refused(login)) }
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let decoded = login
            .user()
            .and_then(|u| self.0.keys.named(u))
            .and_then(|k| k.scram)
            .and_then(|v| v.decode());
        // The key may have been revoked since the method was chosen.
        let Some(ScramKeys {
            salt,
            iterations,
            stored_key,
            server_key,
        }) = decoded
        else {
            return Err(refused(login));
        };
        Ok((
            ScramSecret::Verifier {
                salt,
                iterations,
                stored_key,
                server_key,
            },
            None,
        ))
    }
}

/// A failed login as Postgres words it (`password authentication failed for user "NAME"`,
/// SQLSTATE 28P01, FATAL), whichever mechanism failed: pgwire's SCRAM does not know the
/// user name, and tools match Postgres's text.
fn as_postgres_says(error: PgWireError, user: Option<&String>) -> PgWireError {
    match error {
        PgWireError::InvalidPassword(_) => PgWireError::UserError(Box::new(ErrorInfo::new(
            "FATAL".to_owned(),
            "28P01".to_owned(),
            format!(
                "password authentication failed for user \"{}\"",
                user.map_or("", String::as_str)
            ),
        ))),
        other => other,
    }
}

/// The startup handler shared by every connection.
pub(super) struct Startup {
    state: AppState,
    /// Whether this endpoint runs without keys (loopback, no key exists yet).
    open_without_keys: bool,
    driver: AuthDriver<Arc<DefaultServerParameterProvider>>,
    cleartext: CleartextPasswordAuth<KeySource>,
    /// SCRAM-SHA-256 for plain connections.
    scram: ScramAuth,
    /// SCRAM-SHA-256 and SCRAM-SHA-256-PLUS for TLS connections.
    scram_tls: ScramAuth,
}

impl Startup {
    pub(super) fn new(
        state: AppState,
        open_without_keys: bool,
        parameters: DefaultServerParameterProvider,
        manager: Arc<ConnectionManager>,
        cert_pem: Option<&[u8]>,
    ) -> Startup {
        let source = Arc::new(KeySource(state.clone()));
        let mut scram = ScramAuth::new(source.clone());
        scram.set_iterations(crate::auth::SCRAM_ITERATIONS as usize);
        let mut scram_tls = scram.clone();
        if let Some(pem) = cert_pem
            && let Err(e) = scram_tls.configure_certificate(pem)
        {
            tracing::warn!(
                error = %e,
                "SCRAM channel binding (SCRAM-SHA-256-PLUS) is off: the certificate's signature algorithm is not supported"
            );
        }
        Startup {
            state,
            open_without_keys,
            driver: AuthDriver::new(Arc::new(parameters)).with_connection_manager(manager),
            cleartext: CleartextPasswordAuth::new(source),
            scram,
            scram_tls,
        }
    }
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
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let keys = &self.state.keys;
                if self.open_without_keys && keys.is_empty() {
                    return self.driver.complete_authentication(client, None).await;
                }
                let has_verifier = client
                    .metadata()
                    .get(METADATA_USER)
                    .and_then(|u| keys.named(u))
                    .and_then(|k| k.scram)
                    .and_then(|v| v.decode())
                    .is_some();
                let mechanism = match (has_verifier, client.is_secure()) {
                    (true, true) => self.scram_tls.create(),
                    (true, false) => self.scram.create(),
                    (false, _) => self.cleartext.create(),
                };
                self.driver.begin_authentication(client, mechanism).await?
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => self
                .driver
                .advance_authentication(client, message)
                .await
                .map_err(|e| as_postgres_says(e, client.metadata().get(METADATA_USER)))?,
            _ => return Ok(()),
        };
        match outcome {
            AuthOutcome::InProgress => Ok(()),
            AuthOutcome::Authenticated { final_message, .. } => {
                self.driver
                    .complete_authentication(client, final_message)
                    .await
            }
        }
    }
}

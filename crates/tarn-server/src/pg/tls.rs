//! TLS for the Postgres endpoint: a rustls server configuration (aws-lc-rs provider) from a
//! PEM certificate chain and a PEM private key, loaded once at start-up.

use std::path::Path;
use std::sync::Arc;

use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A loaded certificate and key.
pub struct PgTls {
    pub(super) acceptor: TlsAcceptor,
    /// The certificate file as read, for SCRAM's `tls-server-end-point` channel binding.
    pub(super) cert_pem: Vec<u8>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTls")
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

impl PgTls {
    /// Reads `cert` (one or more PEM `CERTIFICATE` blocks, the server's first) and `key` (a
    /// PEM PKCS#8, PKCS#1 or SEC1 private key). Errors name the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<PgTls, String> {
        let cert_pem = read("Postgres TLS certificate", cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                format!(
                    "the Postgres TLS certificate {} is not valid PEM: {e}",
                    cert.display()
                )
            })?;
        if chain.is_empty() {
            return Err(format!(
                "the Postgres TLS certificate {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                cert.display()
            ));
        }
        let key_pem = read("Postgres TLS key", key)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "the Postgres TLS key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| {
                format!(
                    "the Postgres TLS key {} does not fit the certificate {}: {e}",
                    key.display(),
                    cert.display()
                )
            })?;
        // Clients of Postgres 17 may negotiate TLS directly, which requires this ALPN name.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(PgTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = PgTls::load(&missing, &missing).unwrap_err();
        assert!(
            e.contains("missing.pem") && e.contains("certificate"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = PgTls::load(&junk, &missing).unwrap_err();
        assert!(
            e.contains("junk.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = PgTls::load(&broken, &missing).unwrap_err();
        assert!(e.contains("broken.pem"), "{e}");
    }
}

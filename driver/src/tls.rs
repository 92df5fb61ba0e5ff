//! [`TlsSettings`]: which certificates token and discovery requests trust.
//!
//! One setting for both adapters' token transports (ureq's agent and
//! `DirectHttp`): the Mozilla roots of the `webpki-roots` crates (the
//! default, the same everywhere), the operating system's store through
//! `rustls-platform-verifier` (what machines with a private CA installed by
//! their administrators expect; only with the `platform-verifier` feature, so
//! a build without it cannot ask for it), and extra CA certificates added to
//! the Mozilla roots (PEM or DER). A combination a transport cannot express is
//! refused when the client is built, never at the first token request.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The most certificates [`TlsSettings::with_ca_pem`] takes from one text, and
/// the largest CA file [`TlsSettings::with_ca_file`] reads.
const MAX_EXTRA_CERTIFICATES: usize = 1024;
const MAX_CA_FILE: u64 = 16 * 1024 * 1024;

/// Where trust starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsRoots {
    /// The Mozilla roots shipped in the `webpki-roots` crates (the default).
    Webpki,
    /// The operating system's certificate store and verifier
    /// (`rustls-platform-verifier`; on Linux it reads the system bundle and
    /// honours `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    #[cfg(feature = "platform-verifier")]
    Platform,
}

/// Which certificates token and discovery requests trust. See the
/// [module docs](self).
///
/// ```
/// use token_keeper_driver::tls::TlsSettings;
/// # let pem = include_str!("../../testkit/fixtures/tls/test-ca.pem");
/// let tls = TlsSettings::webpki().with_ca_pem(pem.as_bytes())?;
/// assert_eq!(tls.extra_certificates().len(), 1);
/// # Ok::<(), token_keeper_driver::tls::TlsError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    roots: TlsRoots,
    extra: Arc<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("roots", &self.roots)
            .field("extra_certificates", &self.extra.len())
            .finish()
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings::webpki()
    }
}

/// A CA certificate that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(String);

impl TlsError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> TlsError {
        TlsError(message.into())
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl TlsSettings {
    /// The Mozilla roots only (the default).
    pub fn webpki() -> TlsSettings {
        TlsSettings {
            roots: TlsRoots::Webpki,
            extra: Arc::new(Vec::new()),
        }
    }

    /// The operating system's store and verifier.
    #[cfg(feature = "platform-verifier")]
    pub fn platform() -> TlsSettings {
        TlsSettings {
            roots: TlsRoots::Platform,
            extra: Arc::new(Vec::new()),
        }
    }

    /// Also trusts every `CERTIFICATE` in `pem` (other sections are skipped).
    /// Refuses a text with none, or with one that is not a certificate.
    pub fn with_ca_pem(self, pem: &[u8]) -> Result<TlsSettings, TlsError> {
        let mut added = Vec::new();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| pem_error(&e))?;
            if added.len() == MAX_EXTRA_CERTIFICATES {
                return Err(TlsError(format!(
                    "more than {MAX_EXTRA_CERTIFICATES} CA certificates in one PEM text"
                )));
            }
            added.push(checked(certificate)?);
        }
        if added.is_empty() {
            return Err(TlsError(
                "no \"BEGIN CERTIFICATE\" section in the CA certificate PEM".to_owned(),
            ));
        }
        Ok(self.with_certificates(added))
    }

    /// Also trusts this DER-encoded X.509 certificate.
    pub fn with_ca_der(self, der: &[u8]) -> Result<TlsSettings, TlsError> {
        let certificate = checked(CertificateDer::from(der.to_vec()))?;
        Ok(self.with_certificates(vec![certificate]))
    }

    /// Also trusts the CA certificates in the file at `path`: PEM (any number
    /// of certificates) or one DER certificate.
    pub fn with_ca_file(self, path: &Path) -> Result<TlsSettings, TlsError> {
        use std::io::Read;
        let shown = path.display();
        let file = std::fs::File::open(path)
            .map_err(|e| TlsError(format!("cannot read the CA file {shown}: {e}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_CA_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| TlsError(format!("cannot read the CA file {shown}: {e}")))?;
        if bytes.len() as u64 > MAX_CA_FILE {
            return Err(TlsError(format!(
                "the CA file {shown} is larger than {} MiB",
                MAX_CA_FILE / (1024 * 1024)
            )));
        }
        // DER certificates start with a SEQUENCE tag; PEM is text.
        let result = if bytes.first() == Some(&0x30) {
            self.with_ca_der(&bytes)
        } else {
            self.with_ca_pem(&bytes)
        };
        result.map_err(|e| TlsError(format!("{shown}: {e}")))
    }

    /// Where trust starts.
    pub fn roots(&self) -> TlsRoots {
        self.roots
    }

    /// The CA certificates trusted besides the roots.
    pub fn extra_certificates(&self) -> &[CertificateDer<'static>] {
        &self.extra
    }

    fn with_certificates(mut self, certificates: Vec<CertificateDer<'static>>) -> TlsSettings {
        Arc::make_mut(&mut self.extra).extend(certificates);
        self
    }
}

/// What is wrong with a CA PEM text, in words of our own: the library's
/// own messages quote whole lines (a key pasted by mistake, in full).
fn pem_error(error: &rustls_pki_types::pem::Error) -> TlsError {
    use rustls_pki_types::pem::Error;
    TlsError(
        match error {
            Error::MissingSectionEnd { .. } => {
                "the CA certificate PEM has a BEGIN line without its END line"
            }
            Error::IllegalSectionStart { .. } => {
                "the CA certificate PEM has a BEGIN line that does not end in five dashes"
            }
            Error::Base64Decode(_) => "the CA certificate PEM has a body that is not base64",
            Error::SectionTooLarge => "the CA certificate PEM has a section over 256 MB",
            _ => "the CA certificate PEM cannot be read",
        }
        .to_owned(),
    )
}

/// `certificate` if it parses as an X.509 certificate a root store takes.
fn checked(certificate: CertificateDer<'static>) -> Result<CertificateDer<'static>, TlsError> {
    webpki::anchor_from_trusted_cert(&certificate)
        .map_err(|e| TlsError(format!("not a usable CA certificate: {e:?}")))?;
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_quote_nothing_of_the_input() {
        let key_body = "MC4CAQAwBQYDK2VwBCIEIJtSecretSeedMaterial0123456789abcdef";
        let one_line = format!("-----BEGIN PRIVATE KEY----- {key_body} -----END PRIVATE KEY-----");
        let long_line = format!("-----BEGIN {}", "A".repeat(1 << 20));
        for text in [one_line, long_line] {
            let error = TlsSettings::webpki()
                .with_ca_pem(text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(error.len() < 200, "{error}");
            assert!(
                !error.contains("MC4C") && !error.contains("AAAA"),
                "{error}"
            );
        }
        let none = TlsSettings::webpki()
            .with_ca_pem(b"no pem here")
            .unwrap_err();
        assert!(none.to_string().contains("BEGIN CERTIFICATE"), "{none}");
    }
}

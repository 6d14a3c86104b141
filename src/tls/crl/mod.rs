//! Certificate revocation lists: `listeners.NAME.tls.client_crls` (client
//! certificates validated against `client_ca`) and `backends.NAME.tls.crls`
//! (the SCP's certificate). This module reads them (PEM or DER, told apart
//! by content), checks each at load the way the handshake will use it, and
//! describes it (issuer, thisUpdate, nextUpdate, revoked serials) for
//! `check`, the log, the status page and the metrics. The checking itself
//! during handshakes is rustls's (webpki's), configured by [`client_policy`]
//! and [`server_policy`]; [`super::revocation`] tells the audit trail which
//! certificate a refusal was about.
//!
//! The policy (docs/security.md, "Certificate revocation"):
//! - a certificate whose issuer has no CRL here is refused (revocation
//!   status unknown): a forgotten CRL must not silently turn revocation off;
//! - a CRL past its nextUpdate is refused at load (start, reload, `check`)
//!   and, when it expires while loaded, refuses every handshake it governs,
//!   as OpenSSL-based terminators do: a stale list cannot prove a
//!   certificate is still good;
//! - only the end-entity certificate is checked: every CRL must be signed
//!   by a CA certificate of the configured bundle, so the certificate under
//!   revocation control is the peer's own; CA certificates in the bundle are
//!   trust anchors, removed by editing the bundle, never by a CRL.
//!
//! What the load checks (one error naming the key and the file each):
//! readable; PEM `X509 CRL` blocks or one DER CRL; parsed by x509-parser
//! and by webpki (which accepts only RFC 5280 v2 CRLs with extensions and a
//! nextUpdate, no delta or indirect CRLs); issued by a certificate of the
//! CA bundle with the cRLSign key usage (if it has key usages at all), and
//! signed by that certificate's key (`signature`); nextUpdate not passed;
//! at most one CRL per issuer (webpki would consult only the first).

mod signature;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ServerCertVerifierBuilder;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::{ClientCertVerifierBuilder, WebPkiClientVerifier};
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};

use crate::pki::utc_text;

/// The CRLs of one listener or backend, checked, with what they say.
#[derive(Debug, Clone, Default)]
pub struct CrlSet {
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    /// One per CRL (a PEM file may hold several), in configured order.
    pub infos: Vec<CrlInfo>,
    /// Subjects of CA certificates in the bundle no CRL is from: with CRLs
    /// configured, certificates they issue directly are refused.
    pub uncovered: Vec<String>,
}

impl CrlSet {
    pub fn is_empty(&self) -> bool {
        self.ders.is_empty()
    }
}

/// What one CRL says, as `check`, the log and the status page show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// The key, relative to the `tls` section: `client_crls` or `crls`.
    pub field: &'static str,
    /// Position in that list.
    pub index: usize,
    pub path: PathBuf,
    /// RFC 4514-style, e.g. `CN=Vendor CA,O=Vendor`.
    pub issuer: String,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    /// Serial numbers listed.
    pub revoked: usize,
    /// The cRLNumber extension, decimal.
    pub number: Option<String>,
}

impl CrlInfo {
    /// The full key, e.g. `listeners.store.tls.client_crls[1]`, given the
    /// owner's `tls` section key.
    pub fn key(&self, owner: &str) -> String {
        format!("{owner}.{}[{}]", self.field, self.index)
    }

    pub fn view(&self, owner: &str) -> CrlView {
        CrlView {
            key: self.key(owner),
            file: self.path.display().to_string(),
            issuer: self.issuer.clone(),
            this_update: rfc3339(self.this_update),
            next_update: rfc3339(self.next_update),
            revoked: self.revoked,
            crl_number: self.number.clone(),
            next_update_unix: self.next_update.unix_timestamp(),
        }
    }
}

/// One line for `check` and the log: `CRL of CN=CA, 2 revoked, issued …, next update … (in 6d 23h)`.
impl fmt::Display for CrlInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let left = self.next_update - OffsetDateTime::now_utc();
        let left = match u64::try_from(left.whole_seconds()) {
            Ok(s) => format!("in {}", humantime::format_duration(std::time::Duration::from_secs(s - s % 60))),
            Err(_) => "PASSED".to_owned(),
        };
        write!(
            f,
            "CRL of {}, {} revoked, issued {}, next update {} ({left})",
            self.issuer,
            self.revoked,
            utc_text(self.this_update),
            utc_text(self.next_update)
        )
    }
}

/// A CRL as `/status` and the status page show it.
#[derive(Debug, Clone, Serialize)]
pub struct CrlView {
    /// e.g. `listeners.store.tls.client_crls[0]`
    pub key: String,
    pub file: String,
    pub issuer: String,
    /// RFC 3339 UTC.
    pub this_update: String,
    pub next_update: String,
    /// Number of serial numbers listed.
    pub revoked: usize,
    pub crl_number: Option<String>,
    #[serde(skip)]
    pub next_update_unix: i64,
}

/// A CRL that cannot be used; the message names the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{field}[{index}]: {}: {problem}", .path.display())]
pub struct CrlError {
    pub field: &'static str,
    pub index: usize,
    pub path: PathBuf,
    pub problem: CrlProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum CrlProblem {
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    #[error("neither a PEM CRL (-----BEGIN X509 CRL-----) nor a DER one")]
    NotACrl,
    #[error("not a readable PEM file: {0}")]
    Pem(String),
    #[error("not a valid X.509 CRL: {0}")]
    Parse(String),
    #[error("rustls cannot use this CRL ({0}); {PROFILE_HINT}")]
    Unsupported(String),
    #[error(
        "issued by {issuer}, which is not a certificate in {ca_key}: use the CRL of the CA that issues the \
         certificates (and put that CA, even an intermediate, into {ca_key})"
    )]
    UnknownIssuer { issuer: String, ca_key: &'static str },
    #[error(
        "not signed by {issuer} in {ca_key}: its signature does not verify with that certificate's key (a CRL \
         of another CA with the same name, or a damaged file)"
    )]
    BadSignature { issuer: String, ca_key: &'static str },
    #[error("signed with {algorithm}, which rustls does not verify for {issuer}'s key type")]
    UnsupportedSignature { issuer: String, algorithm: String },
    #[error(
        "{issuer} in {ca_key} lacks the cRLSign key usage, so rustls would refuse its CRL at every handshake: \
         re-issue the CA certificate with keyUsage cRLSign"
    )]
    NotCrlSigner { issuer: String, ca_key: &'static str },
    #[error(
        "its nextUpdate ({next_update}) has passed, and an expired CRL refuses every certificate it governs: \
         install the CA's current CRL (`openssl ca -gencrl`) and reload"
    )]
    Expired { next_update: String },
    #[error(
        "{issuer} already has a CRL in {field}[{other}]: keep only the current CRL of each CA (the first one \
         would be the only one consulted)"
    )]
    DuplicateIssuer { issuer: String, field: &'static str, other: usize },
}

/// Why webpki refuses CRLs OpenSSL happily writes.
const PROFILE_HINT: &str = "it accepts RFC 5280 version 2 CRLs with extensions and a nextUpdate, no delta or \
     indirect CRLs; `openssl ca -gencrl` makes one when the CA configuration sets `crlnumber` (docs/security.md)";

/// Applies the revocation policy (module docs) to a listener's verifier.
pub fn client_policy(builder: ClientCertVerifierBuilder, crls: &CrlSet) -> ClientCertVerifierBuilder {
    // Unknown status stays refused: rustls's default, kept deliberately.
    builder.with_crls(crls.ders.iter().cloned()).only_check_end_entity_revocation().enforce_revocation_expiration()
}

/// Applies the revocation policy (module docs) to a backend's verifier.
pub fn server_policy(builder: ServerCertVerifierBuilder, crls: &CrlSet) -> ServerCertVerifierBuilder {
    builder.with_crls(crls.ders.iter().cloned()).only_check_end_entity_revocation().enforce_revocation_expiration()
}

/// Reads and checks the CRLs at `paths` (the `field` key of a `tls`
/// section) against the CA certificates `cas` (from the `ca_key` file), as
/// of `now`. Empty `paths`: an empty set.
pub fn load(
    field: &'static str,
    ca_key: &'static str,
    paths: &[PathBuf],
    cas: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
    now: OffsetDateTime,
) -> Result<CrlSet, CrlError> {
    let mut set = CrlSet::default();
    for (index, path) in paths.iter().enumerate() {
        let err = |problem| CrlError { field, index, path: path.clone(), problem };
        for der in read_crls(path).map_err(err)? {
            let info = check(&der, field, index, path, ca_key, cas, provider, now).map_err(err)?;
            if let Some(other) = set.infos.iter().find(|o| o.issuer == info.issuer) {
                let (issuer, other) = (info.issuer.clone(), other.index);
                return Err(err(CrlProblem::DuplicateIssuer { issuer, field, other }));
            }
            set.infos.push(info);
            set.ders.push(der);
        }
    }
    if !set.is_empty() {
        set.uncovered = cas
            .iter()
            .filter_map(|ca| X509Certificate::from_der(ca).ok().map(|(_, c)| c.subject().to_string()))
            .filter(|subject| !set.infos.iter().any(|i| &i.issuer == subject))
            .collect();
    }
    Ok(set)
}

/// The CRLs in one file: every `X509 CRL` block of a PEM file, or the file
/// itself when it is DER (a SEQUENCE). Told apart by content, not name.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, CrlProblem> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(CrlProblem::Read)?;
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CrlProblem::Pem(e.to_string()))?;
    if crls.is_empty() {
        return Err(CrlProblem::NotACrl);
    }
    Ok(crls)
}

/// Every load-time check of one CRL (module docs), in the order an admin
/// would fix them.
#[allow(clippy::too_many_arguments)]
fn check(
    der: &CertificateRevocationListDer<'static>,
    field: &'static str,
    index: usize,
    path: &Path,
    ca_key: &'static str,
    cas: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
    now: OffsetDateTime,
) -> Result<CrlInfo, CrlProblem> {
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| CrlProblem::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlProblem::Parse(format!("{} bytes after the CRL", rest.len())));
    }
    webpki_accepts(der, cas, provider)?;
    let issuer = crl.issuer().to_string();
    // webpki matches a CRL to a certificate by the issuer name's bytes.
    let ca = cas
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .find(|c| c.subject().as_raw() == crl.issuer().as_raw())
        .ok_or_else(|| CrlProblem::UnknownIssuer { issuer: issuer.clone(), ca_key })?;
    signature::verify(der, &ca, provider).map_err(|e| match e {
        signature::Failure::Invalid => CrlProblem::BadSignature { issuer: issuer.clone(), ca_key },
        signature::Failure::Unsupported(algorithm) => {
            CrlProblem::UnsupportedSignature { issuer: issuer.clone(), algorithm }
        }
    })?;
    if let Ok(Some(ku)) = ca.key_usage() {
        if !ku.value.crl_sign() {
            return Err(CrlProblem::NotCrlSigner { issuer, ca_key });
        }
    }
    let time = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|e| CrlProblem::Parse(e.to_string()));
    let this_update = time(crl.last_update().timestamp())?;
    // webpki's parse (above) refuses a CRL without nextUpdate.
    let next_update = match crl.next_update() {
        Some(t) => time(t.timestamp())?,
        None => return Err(CrlProblem::Unsupported("no nextUpdate".to_owned())),
    };
    if next_update <= now {
        return Err(CrlProblem::Expired { next_update: utc_text(next_update) });
    }
    Ok(CrlInfo {
        field,
        index,
        path: path.to_owned(),
        issuer,
        this_update,
        next_update,
        revoked: crl.iter_revoked_certificates().count(),
        number: crl.crl_number().map(|n| n.to_string()),
    })
}

/// Parses the CRL with the parser the handshake uses (webpki's, reached
/// through rustls's verifier builder, which parses its CRLs when built), so
/// that what loads here is what rustls accepts, and the error names this file.
fn webpki_accepts(
    der: &CertificateRevocationListDer<'static>,
    cas: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<(), CrlProblem> {
    let mut roots = rustls::RootCertStore::empty();
    // Unusable CA certificates are reported for the CA key itself.
    let _ = roots.add_parsable_certificates(cas.iter().cloned());
    if roots.is_empty() {
        return Ok(());
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    match builder.with_crls([der.clone()]).build() {
        Err(rustls::server::VerifierBuilderError::InvalidCrl(e)) => Err(CrlProblem::Unsupported(format!("{e:?}"))),
        _ => Ok(()),
    }
}

/// The serial number as the CA's index file and `openssl x509 -serial`
/// print it: upper-case hex, no sign octet.
pub fn serial_text(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02X}")).collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    let at = std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

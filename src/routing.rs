//! Association policy, pure: (raw A-ASSOCIATE-RQ fields, listener policy) →
//! forward to a backend, or the A-ASSOCIATE-RJ of the rejection table
//! (docs/architecture.md, "Stable interfaces").
//!
//! Checks run in the order of the table: protocol version, calling AE title,
//! called AE title. AE titles come from the raw 16-byte fields and are parsed
//! strictly ([`AeTitle::from_wire`]); a title that does not parse is treated
//! as not recognised.

use crate::config::ListenerConfig;
use crate::dicom::ae::{display_raw, AeTitleError};
use crate::dicom::associate::AssociateView;
use crate::dicom::pdu::Rejection;
use crate::dicom::AeTitle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward { backend: String, calling: AeTitle, called: AeTitle },
    Reject(PolicyRejection),
}

/// Why the policy rejected an association; [`PolicyRejection::rejection`]
/// is the A-ASSOCIATE-RJ to send, `Display` the why in words (naming the
/// offending AE title, escaped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRejection {
    #[error("protocol version 0x{0:04X} does not include version 1")]
    ProtocolVersion(u16),
    #[error("calling AE title \"{raw}\" {error}")]
    CallingAeInvalid { raw: String, error: AeTitleError },
    #[error("calling AE title {:?} is not in calling_ae_titles", .0.as_str())]
    CallingAeNotAllowed(AeTitle),
    #[error("called AE title \"{raw}\" {error}")]
    CalledAeInvalid { raw: String, error: AeTitleError },
    #[error("no route for called AE title {:?}", .0.as_str())]
    NoRoute(AeTitle),
}

impl PolicyRejection {
    pub fn rejection(&self) -> Rejection {
        match self {
            PolicyRejection::ProtocolVersion(_) => Rejection::ProtocolVersionNotSupported,
            PolicyRejection::CallingAeInvalid { .. } | PolicyRejection::CallingAeNotAllowed(_) => {
                Rejection::CallingAeNotRecognized
            }
            PolicyRejection::CalledAeInvalid { .. } | PolicyRejection::NoRoute(_) => Rejection::CalledAeNotRecognized,
        }
    }
}

pub fn decide(rq: &AssociateView, listener: &ListenerConfig) -> Decision {
    if !rq.supports_protocol_version_1() {
        return Decision::Reject(PolicyRejection::ProtocolVersion(rq.protocol_version));
    }
    let calling = match AeTitle::from_wire(&rq.calling_ae) {
        Ok(ae) => ae,
        Err(error) => {
            return Decision::Reject(PolicyRejection::CallingAeInvalid { raw: display_raw(&rq.calling_ae), error })
        }
    };
    if let Some(allowed) = &listener.calling_ae_titles {
        if !allowed.contains(&calling) {
            return Decision::Reject(PolicyRejection::CallingAeNotAllowed(calling));
        }
    }
    let called = match AeTitle::from_wire(&rq.called_ae) {
        Ok(ae) => ae,
        Err(error) => {
            return Decision::Reject(PolicyRejection::CalledAeInvalid { raw: display_raw(&rq.called_ae), error })
        }
    };
    match listener.routes.lookup(&called) {
        Some(backend) => Decision::Forward { backend: backend.to_owned(), calling, called },
        None => Decision::Reject(PolicyRejection::NoRoute(called)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn listener(extra: &str) -> ListenerConfig {
        let yaml = format!(
            "backends:\n  pacs: {{ae_title: PACS, servers: [127.0.0.1:104]}}\n\
             listeners:\n  store:\n    listen: 127.0.0.1:0\n    insecure_plaintext: true\n    allow: [127.0.0.1/32]\n{extra}"
        );
        let c = Config::from_yaml_str(&yaml, std::path::Path::new(".")).expect("valid test config");
        (*c.listeners["store"]).clone()
    }

    fn field(s: &[u8]) -> [u8; 16] {
        let mut f = [b' '; 16];
        f[..s.len()].copy_from_slice(s);
        f
    }

    fn rq(called: [u8; 16], calling: [u8; 16]) -> AssociateView {
        AssociateView {
            protocol_version: 1,
            called_ae: called,
            calling_ae: calling,
            presentation_contexts: 1,
            max_lengths: Vec::new(),
            implementation_class_uid: None,
            implementation_version_name: None,
        }
    }

    fn rejection(d: Decision) -> Option<Rejection> {
        match d {
            Decision::Reject(r) => Some(r.rejection()),
            Decision::Forward { .. } => None,
        }
    }

    #[test]
    fn design_table_rows() {
        let l = listener("    calling_ae_titles: [BUTTERFLY]\n    routes: {PACS: pacs}\n");
        let ok = decide(&rq(field(b"PACS"), field(b"BUTTERFLY")), &l);
        assert!(matches!(ok, Decision::Forward { ref backend, .. } if backend == "pacs"), "{ok:?}");
        assert_eq!(
            rejection(decide(&rq(field(b"PACS"), field(b"INTRUDER")), &l)),
            Some(Rejection::CallingAeNotRecognized)
        );
        assert_eq!(
            rejection(decide(&rq(field(b"OTHER"), field(b"BUTTERFLY")), &l)),
            Some(Rejection::CalledAeNotRecognized)
        );
        let mut v0 = rq(field(b"PACS"), field(b"BUTTERFLY"));
        v0.protocol_version = 0x0002;
        assert_eq!(rejection(decide(&v0, &l)), Some(Rejection::ProtocolVersionNotSupported));
    }

    #[test]
    fn case_and_padding() {
        let l = listener("    calling_ae_titles: [BUTTERFLY]\n    routes: {PACS: pacs}\n");
        assert_eq!(
            rejection(decide(&rq(field(b"PACS"), field(b"butterfly")), &l)),
            Some(Rejection::CallingAeNotRecognized)
        );
        let leading = decide(&rq(field(b"  PACS"), field(b" BUTTERFLY")), &l);
        assert!(matches!(leading, Decision::Forward { .. }));
    }

    #[test]
    fn hostile_ae_fields_are_not_recognised() {
        let l = listener("    routes: {\"*\": pacs}\n");
        for bad in [field(b"\tBUTTERFLY"), field(b"A\\B"), [b' '; 16], [0u8; 16]] {
            assert_eq!(rejection(decide(&rq(field(b"PACS"), bad), &l)), Some(Rejection::CallingAeNotRecognized));
            assert_eq!(rejection(decide(&rq(bad, field(b"X")), &l)), Some(Rejection::CalledAeNotRecognized));
        }
    }

    #[test]
    fn wildcard_route_and_open_calling_list() {
        let l = listener("    routes: {\"*\": pacs}\n");
        assert!(matches!(decide(&rq(field(b"ANYTHING"), field(b"ANYONE")), &l), Decision::Forward { .. }));
    }
}

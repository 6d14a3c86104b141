//! The label values the metrics module owns. The values of a connection's
//! outcome and the SCP's answer are defined where they are decided
//! ([`crate::report`]), how an association ended in [`crate::relay`]; the
//! metric functions take them as strings.

/// `direction` label of `dicomgate_bytes_total`.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    ToBackend,
    ToClient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToBackend => "to_backend",
            Direction::ToClient => "to_client",
        }
    }
}

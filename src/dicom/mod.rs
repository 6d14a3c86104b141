//! DICOM Upper Layer knowledge, free of I/O: AE titles, PDU headers and the
//! control PDUs the gateway writes, the raw A-ASSOCIATE view.

pub mod ae;
pub mod associate;
pub mod pdu;

pub use ae::AeTitle;

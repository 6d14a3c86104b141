//! DICOM Upper Layer knowledge, free of I/O: AE titles, PDU headers and the
//! control PDUs the gateway writes, the raw A-ASSOCIATE view, the DIMSE
//! command-set reader and status table.

pub mod ae;
pub mod associate;
pub mod command_set;
pub mod pdu;

pub use ae::AeTitle;

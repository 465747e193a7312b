//! Domain facts shared by every stage: validators for USCCs, district and
//! industry codes, and the calendar quarter the warehouse is partitioned by.

pub mod decimal;
pub mod quarter;
pub mod reference;
pub mod uscc;

pub use quarter::{Quarter, QuarterParseError};

//! Names, limits, errors and time helpers shared by every tarn crate.

pub mod error;
pub mod limits;
pub mod names;
pub mod time;

pub use error::{ErrorKind, TarnError, TarnResult};

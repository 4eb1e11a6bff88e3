//! Names, limits, errors, time helpers and allocator settings shared by every tarn crate.

pub mod allocator;
pub mod error;
pub mod fs;
pub mod limits;
pub mod names;
pub mod time;

pub use error::{ErrorKind, TarnError, TarnResult};

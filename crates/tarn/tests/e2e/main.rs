//! End-to-end tests: the real `tarn` binary on port 0, driven over HTTP.

mod api;
mod crash;
mod roundtrip;
mod support;
mod tutorial;

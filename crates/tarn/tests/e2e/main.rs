//! End-to-end tests: the real `tarn` binary on port 0, driven over HTTP.

mod api;
mod crash;
mod dashboards;
mod kafka;
mod kinesis;
mod patch;
mod peers;
mod pg;
mod rockset_clients;
mod roundtrip;
mod support;
mod tutorial;
mod ui;

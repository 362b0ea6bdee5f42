//! The desktop client's tests, one binary: `device` (the core without a window: egress rules,
//! secrets, telemetry, licences, the CLI) and `ui` (the window, driven by egui_kittest), over
//! `common`'s loopback stub of the server.
#![allow(clippy::unwrap_used)]

mod common;
mod device;
mod ui;

//! A Rust program that reports to the crash intake with the official `sentry` crate, as the
//! desktop app would, with personal data planted everywhere the SDK lets a program put it:
//!
//!     pexper-crasher-under-test DSN panic|error|ok
#![allow(clippy::unwrap_used)]

use pexper_tests::canary;

fn main() {
    let mut args = std::env::args().skip(1);
    let dsn = args.next().expect("a DSN");
    let mode = args.next().unwrap_or_else(|| "ok".into());
    let mut options = sentry::ClientOptions::default();
    options.release = Some(canary::RELEASE.into());
    options.environment = Some("production".into());
    options.server_name = Some(canary::HOSTNAME.into());
    options.auto_session_tracking = true;
    options.session_mode = sentry::SessionMode::Application;
    // The worst case: the SDK sends everything it may; the server must keep nothing.
    options.send_default_pii = true;
    let _guard = sentry::init((dsn, options));
    sentry::configure_scope(|scope| {
        scope.set_user(Some(sentry::User {
            email: Some(canary::EMAIL.into()),
            username: Some("alice".into()),
            ip_address: Some(sentry::protocol::IpAddress::Exact(
                canary::IPV4.parse().unwrap(),
            )),
            ..Default::default()
        }));
        scope.set_tag("email", canary::EMAIL);
        scope.set_extra("home", canary::LINUX_HOME.into());
        scope.set_extra("key", canary::API_KEY.into());
    });
    sentry::add_breadcrumb(sentry::Breadcrumb {
        message: Some(format!(
            "opened {}notes.txt from {}",
            canary::LINUX_HOME,
            canary::IPV6
        )),
        ..Default::default()
    });
    match mode.as_str() {
        "panic" => crash_here(),
        "error" => {
            let error = std::io::Error::new(std::io::ErrorKind::NotFound, canary::sentence());
            sentry::capture_error(&error);
        }
        _ => {}
    }
}

#[inline(never)]
fn crash_here() {
    panic!("{}", canary::sentence());
}

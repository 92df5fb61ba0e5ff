//! A ten-line logger: token-keeper's log lines (targets `token_keeper*`) and
//! the service's own, at info and above, one line each on stderr. No logging
//! crate beyond the `log` facade token-keeper already writes to; other
//! crates' lines (hyper, reqwest) are dropped, since a transport's trace
//! lines may hold whole requests. token-keeper's lines never hold a token or
//! a secret.

struct StderrLogger;

/// The service's own log target.
const OWN_TARGET: &str = env!("CARGO_CRATE_NAME");

/// The longest line written (a message is never this long; the bound keeps a
/// hostile server's text from flooding the log).
const MAX_LINE: usize = 1000;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
            && (metadata.target().starts_with("token_keeper")
                || metadata.target().starts_with(OWN_TARGET))
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line: String = record
                .args()
                .to_string()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(MAX_LINE)
                .collect();
            eprintln!("{} {}: {line}", record.level(), record.target());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once; a second call does nothing).
pub fn init() {
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

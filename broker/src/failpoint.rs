//! Crash points for tests: `SILT_FAILPOINT=<name>` makes the broker abort at that point, as a
//! crash there would (`flush-after-put`: a flush's object is stored, its commit never sent;
//! `compaction-after-put`: a compacted object is stored, its swap never sent;
//! `rollup-after-put`: an index page is stored, the index root never swapped). Unset in any
//! real deployment; read once.

use std::sync::OnceLock;

/// True when the crash point `name` is armed.
pub fn armed(name: &str) -> bool {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("SILT_FAILPOINT").ok())
        .as_deref()
        == Some(name)
}

/// Aborts the process if the crash point `name` is armed.
pub fn hit(name: &str) {
    if armed(name) {
        tracing::warn!(failpoint = name, "failpoint armed: aborting");
        std::process::abort();
    }
}

//! One file per panel. Each `show` reads the [`AppState`](crate::state::AppState) and calls its
//! methods; none does work that could block the UI thread.

pub mod backend;
pub mod compare;
pub mod folder_picker;
pub mod heatmap;
pub mod model;
pub mod notices;
pub mod prompt;
pub mod speed;

/// `1234567` → `1.23M`.
pub fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}B", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

pub fn bytes(n: f64) -> String {
    let gib = (1u64 << 30) as f64;
    let mib = (1u64 << 20) as f64;
    match n {
        n if n >= gib => format!("{:.2} GiB", n / gib),
        n if n >= mib => format!("{:.2} MiB", n / mib),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n:.0} B"),
    }
}

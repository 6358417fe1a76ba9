//! The routing trace of `generate --trace-routing`: one JSON line per generated token. The CLI
//! writes it and the app exports and reads it through these functions, so the two agree.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::generate::TokenRoute;

#[derive(Serialize)]
struct Line<'a> {
    index: usize,
    token: u32,
    text: &'a str,
    ms: f64,
    routing: &'a [TokenRoute],
}

/// Writes one token's line (newline included).
pub fn write_line(
    w: &mut dyn Write,
    index: usize,
    token: u32,
    text: &str,
    ms: f64,
    routing: &[TokenRoute],
) -> std::io::Result<()> {
    let line = Line {
        index,
        token,
        text,
        ms,
        routing,
    };
    serde_json::to_writer(&mut *w, &line).map_err(std::io::Error::other)?;
    w.write_all(b"\n")
}

/// One line of a trace as read back.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TraceRecord {
    pub index: usize,
    pub token: u32,
    pub text: String,
    pub ms: f64,
    pub routing: Vec<RouteRecord>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RouteRecord {
    pub layer: usize,
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

impl From<RouteRecord> for TokenRoute {
    fn from(r: RouteRecord) -> TokenRoute {
        TokenRoute {
            layer: r.layer,
            ids: r.ids,
            weights: r.weights,
        }
    }
}

/// Reads a whole trace file.
pub fn read(path: &Path) -> Result<Vec<TraceRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::Invalid(format!(
                    "{} line {}: not a routing trace line: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

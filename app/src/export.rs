//! Saving a generation's routing: the trace as JSON lines (the exact format of
//! `nemotron-rt generate --trace-routing`), as CSV, and the heatmap as a PNG.

use std::io::Write;
use std::path::Path;

use crate::colormap;
use crate::heatmap::{HeatMode, Heatmap};
use crate::state::RunData;

fn io_err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("writing {}: {e}", path.display())
}

pub fn trace_jsonl(run: &RunData, path: &Path) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    for t in &run.tokens {
        nemotron_rt::trace::write_line(&mut w, t.index, t.id, &t.text, t.ms, &t.routing)
            .map_err(|e| io_err(path, e))?;
    }
    w.flush().map_err(|e| io_err(path, e))
}

/// One line per (token, layer, chosen expert).
pub fn trace_csv(run: &RunData) -> String {
    let mut s = String::from("token_index,token_id,layer,expert,weight\n");
    for t in &run.tokens {
        for r in &t.routing {
            for (id, w) in r.ids.iter().zip(&r.weights) {
                s.push_str(&format!("{},{},{},{id},{w}\n", t.index, t.id, r.layer));
            }
        }
    }
    s
}

pub fn write_text(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| io_err(path, e))
}

/// Pixels per expert and per layer in the exported image: wide enough to tell neighbours apart
/// at 512 experts, tall enough to see 40 rows.
pub const PNG_CELL: (u32, u32) = (3, 12);

pub fn heatmap_image(h: &Heatmap, mode: HeatMode, log: bool) -> image::RgbImage {
    let (cw, ch) = PNG_CELL;
    let (w, ht) = (
        (h.experts as u32 * cw).max(1),
        (h.rows() as u32 * ch).max(1),
    );
    let max = h.max(mode);
    image::RgbImage::from_fn(w, ht, |x, y| {
        let (e, row) = ((x / cw) as usize, (y / ch) as usize);
        if row < h.rows() && e < h.experts {
            image::Rgb(colormap::cell_color(h.value(mode, row, e), max, log))
        } else {
            image::Rgb(colormap::NEVER)
        }
    })
}

pub fn heatmap_png(h: &Heatmap, mode: HeatMode, log: bool, path: &Path) -> Result<(), String> {
    heatmap_image(h, mode, log)
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| io_err(path, e))
}

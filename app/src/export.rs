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

/// Pixels per expert and per layer in the exported image: at least 3 wide (neighbours apart at
/// 512 experts) and 12 tall (40 rows visible), and larger for smaller models so the image is
/// about 1536 x 384 whatever the model (a 32-expert, 7-layer model would otherwise be a
/// 96 x 84 stamp).
pub fn png_cell(experts: usize, rows: usize) -> (u32, u32) {
    let w = (1536 / experts.max(1)).clamp(3, 48) as u32;
    let h = (384 / rows.max(1)).clamp(12, 48) as u32;
    (w, h)
}

pub fn heatmap_image(h: &Heatmap, mode: HeatMode, log: bool) -> image::RgbImage {
    let (cw, ch) = png_cell(h.experts, h.rows());
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

#[cfg(test)]
mod tests {
    use super::png_cell;

    #[test]
    fn cells_shrink_to_their_floor_for_super_and_grow_for_small_models() {
        // Super: 512 experts, 40 MoE layers.
        assert_eq!(png_cell(512, 40), (3, 12));
        // The default model: 32 experts, 7 MoE layers.
        assert_eq!(png_cell(32, 7), (48, 48));
        assert_eq!(png_cell(16, 3), (48, 48));
        assert_eq!(png_cell(0, 0), (48, 48));
    }
}

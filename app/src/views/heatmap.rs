//! The routing heatmap: MoE layers × experts painted as one texture (not a widget per cell) with
//! zoom and pan, a colour legend, the experts of a selected token outlined, an expert-load
//! histogram of one layer, and export of the trace and the image.

use std::path::PathBuf;

use eframe::egui::{
    self, Color32, ColorImage, Pos2, Rect, Sense, Stroke, TextureOptions, pos2, vec2,
};
use egui_plot::{Bar, BarChart, Plot};

use crate::colormap;
use crate::export;
use crate::heatmap::{HeatMode, Heatmap};
use crate::state::AppState;

/// What the texture was built from; rebuilt when any of it changes.
type TextureKey = (u64, u64, HeatMode, bool);

pub struct HeatmapUi {
    pub mode: HeatMode,
    pub log: bool,
    /// Visible part of the map in `[0, 1]²` (x: experts, y: layers).
    pub view: Rect,
    /// Row whose expert load the histogram shows.
    pub layer_row: usize,
}

impl Default for HeatmapUi {
    fn default() -> Self {
        HeatmapUi {
            mode: HeatMode::Count,
            log: false,
            view: Rect::from_min_max(pos2(0.0, 0.0), pos2(1.0, 1.0)),
            layer_row: 0,
        }
    }
}

const GUTTER_LEFT: f32 = 44.0;
const GUTTER_TOP: f32 = 18.0;

impl HeatmapUi {
    pub fn reset_view(&mut self) {
        self.view = Rect::from_min_max(pos2(0.0, 0.0), pos2(1.0, 1.0));
    }

    /// Zooms by `fx`, `fy` (> 1 = in) keeping the map point `at` (in `[0, 1]²`) in place, then
    /// keeps at least 8 experts and 1 layer in view and the view inside the map.
    pub fn zoom(&mut self, at: Pos2, fx: f32, fy: f32, h: &Heatmap) {
        let v = self.view;
        let min_w = (8.0 / h.experts.max(1) as f32).min(1.0);
        let min_h = (1.0 / h.rows().max(1) as f32).min(1.0);
        let w = (v.width() / fx).clamp(min_w, 1.0);
        let ht = (v.height() / fy).clamp(min_h, 1.0);
        let x0 = at.x - (at.x - v.min.x) * w / v.width();
        let y0 = at.y - (at.y - v.min.y) * ht / v.height();
        self.view = Rect::from_min_size(pos2(x0, y0), vec2(w, ht));
        self.clamp();
    }

    fn pan(&mut self, d: egui::Vec2) {
        self.view = self.view.translate(d);
        self.clamp();
    }

    fn clamp(&mut self) {
        let (w, h) = (self.view.width().min(1.0), self.view.height().min(1.0));
        let x = self.view.min.x.clamp(0.0, 1.0 - w);
        let y = self.view.min.y.clamp(0.0, 1.0 - h);
        self.view = Rect::from_min_size(pos2(x, y), vec2(w, h));
    }

    /// The map as a texture, one texel per cell. It is cached in the context's memory (a
    /// texture belongs to one context) and rebuilt only when the run or the colouring changes.
    fn texture(&self, ctx: &egui::Context, h: &Heatmap, key: TextureKey) -> egui::TextureId {
        let id = egui::Id::unique("routing_heatmap_texture");
        let cached: Option<(egui::TextureHandle, TextureKey)> = ctx.data(|d| d.get_temp(id));
        if let Some((t, k)) = cached
            && k == key
        {
            return t.id();
        }
        let max = h.max(self.mode);
        let mut img = ColorImage::filled([h.experts.max(1), h.rows().max(1)], Color32::BLACK);
        for row in 0..h.rows() {
            for e in 0..h.experts {
                let [r, g, b] = colormap::cell_color(h.value(self.mode, row, e), max, self.log);
                img[(e, row)] = Color32::from_rgb(r, g, b);
            }
        }
        let t = ctx.load_texture("routing_heatmap", img, TextureOptions::NEAREST);
        let tex_id = t.id();
        ctx.data_mut(|d| d.insert_temp(id, (t, key)));
        tex_id
    }
}

/// The largest power of two that keeps labels at least `min_px` apart.
fn label_step(px_per_item: f32, min_px: f32) -> usize {
    let mut step = 1usize;
    while (step as f32) * px_per_item < min_px && step < 1 << 20 {
        step *= 2;
    }
    step
}

pub fn show(ui: &mut egui::Ui, state: &mut AppState) {
    ui.heading("Expert routing");
    let mut notice: Option<Result<String, String>> = None;
    let AppState {
        run,
        heat,
        selected_token,
        export_dir,
        ..
    } = state;
    let Some(run) = run.as_ref() else {
        ui.weak("Generate something to see which experts each MoE layer chose.");
        return;
    };
    let h = &run.heatmap;
    if h.rows() == 0 || h.experts == 0 {
        ui.weak("This model has no MoE layers.");
        return;
    }
    heat.layer_row = heat.layer_row.min(h.rows() - 1);

    ui.horizontal_wrapped(|ui| {
        ui.label("colour =");
        ui.radio_value(&mut heat.mode, HeatMode::Count, "times chosen");
        ui.radio_value(&mut heat.mode, HeatMode::Weight, "sum of weights");
        ui.checkbox(&mut heat.log, "log scale");
        ui.separator();
        let centre = heat.view.center();
        if ui.button("+").on_hover_text("zoom in").clicked() {
            heat.zoom(centre, 2.0, 1.0, h);
        }
        if ui.button("-").on_hover_text("zoom out").clicked() {
            heat.zoom(centre, 0.5, 1.0, h);
        }
        if ui.button("reset").clicked() {
            heat.reset_view();
        }
    });
    ui.label(
        egui::RichText::new(
            "scroll: zoom experts · ctrl+scroll: zoom both · drag: pan · double-click: reset · click: histogram of that layer",
        )
        .small()
        .weak(),
    );
    ui.horizontal(|ui| {
        ui.label(format!(
            "{} tokens, {} MoE layers × {} experts",
            h.tokens,
            h.rows(),
            h.experts
        ));
        ui.separator();
        ui.label("token");
        let n = run.tokens.len();
        if ui.add_enabled(n > 0, egui::Button::new("<")).clicked() {
            *selected_token = Some(selected_token.map_or(0, |t| t.saturating_sub(1)));
        }
        if ui.add_enabled(n > 0, egui::Button::new(">")).clicked() {
            *selected_token = Some(selected_token.map_or(0, |t| (t + 1).min(n - 1)));
        }
        match selected_token.and_then(|t| run.tokens.get(t)) {
            Some(t) => {
                ui.monospace(format!("#{} {:?}", t.index, t.text));
                if ui.small_button("clear").clicked() {
                    *selected_token = None;
                }
            }
            None => {
                ui.weak("none (click a token in the output)");
            }
        }
    });

    // The map itself.
    let rows = h.rows();
    let height = (rows as f32 * 18.0).clamp(100.0, 460.0);
    let (resp, painter) = ui.allocate_painter(
        vec2(ui.available_width(), GUTTER_TOP + height),
        Sense::click_and_drag(),
    );
    let map = Rect::from_min_max(resp.rect.min + vec2(GUTTER_LEFT, GUTTER_TOP), resp.rect.max);
    let view = heat.view;
    let to_uv = |p: Pos2| {
        let t = (p - map.min) / map.size();
        pos2(
            view.min.x + t.x * view.width(),
            view.min.y + t.y * view.height(),
        )
    };
    let to_screen = |u: f32, v: f32| {
        pos2(
            map.min.x + (u - view.min.x) / view.width() * map.width(),
            map.min.y + (v - view.min.y) / view.height() * map.height(),
        )
    };
    let hover = resp.hover_pos().filter(|p| map.contains(*p));
    if let Some(p) = hover {
        let (scroll, zoom) = ui.input(|i| (i.smooth_scroll_delta, i.zoom_delta()));
        if zoom != 1.0 {
            heat.zoom(to_uv(p), zoom, zoom, h);
        } else if scroll.y != 0.0 {
            heat.zoom(to_uv(p), (scroll.y * 0.004).exp(), 1.0, h);
            // The map took the scroll; the scroll area around the tab must not scroll too.
            ui.input_mut(|i| i.smooth_scroll_delta = egui::Vec2::ZERO);
        }
    }
    if resp.dragged() {
        let d = resp.drag_delta() / map.size() * heat.view.size();
        heat.pan(-d);
    }
    if resp.double_clicked() {
        heat.reset_view();
    }
    let key = (run.id, run.version, heat.mode, heat.log);
    let tex = heat.texture(ui.ctx(), h, key);
    painter.rect_filled(map, 0.0, Color32::BLACK);
    painter.image(tex, map, heat.view, Color32::WHITE);

    let view = heat.view;
    let (e0, e1) = (view.min.x * h.experts as f32, view.max.x * h.experts as f32);
    let (r0, r1) = (view.min.y * rows as f32, view.max.y * rows as f32);
    let px_e = map.width() / (e1 - e0);
    let px_r = map.height() / (r1 - r0);
    let font = egui::FontId::monospace(10.0);
    let text_color = ui.visuals().text_color();
    let clip = painter.with_clip_rect(resp.rect);
    let step = label_step(px_e, 40.0);
    let mut e = (e0 as usize / step) * step;
    while (e as f32) < e1 {
        let x = map.min.x + (e as f32 + 0.5 - e0) * px_e;
        if x >= map.min.x {
            clip.text(
                pos2(x, map.min.y - 2.0),
                egui::Align2::CENTER_BOTTOM,
                e.to_string(),
                font.clone(),
                text_color,
            );
        }
        e += step;
    }
    let rstep = label_step(px_r, 12.0);
    let mut r = (r0 as usize / rstep) * rstep;
    while (r as f32) < r1 && r < rows {
        let y = map.min.y + (r as f32 + 0.5 - r0) * px_r;
        if y >= map.min.y {
            clip.text(
                pos2(map.min.x - 4.0, y),
                egui::Align2::RIGHT_CENTER,
                format!("L{}", h.layers[r]),
                font.clone(),
                text_color,
            );
        }
        r += rstep;
    }
    let map_painter = painter.with_clip_rect(map);
    if px_r >= 8.0 {
        for r in (r0.ceil() as usize)..=(r1.floor() as usize).min(rows) {
            let y = map.min.y + (r as f32 - r0) * px_r;
            map_painter.hline(
                map.x_range(),
                y,
                Stroke::new(1.0, Color32::from_black_alpha(160)),
            );
        }
    }
    let cell = |row: usize, e: usize| {
        Rect::from_min_max(
            to_screen(e as f32 / h.experts as f32, row as f32 / rows as f32),
            to_screen(
                (e + 1) as f32 / h.experts as f32,
                (row + 1) as f32 / rows as f32,
            ),
        )
    };
    // The selected token's experts, outlined; at least 3 px so one expert of 512 stays visible.
    if let Some(t) = selected_token.and_then(|t| run.tokens.get(t)) {
        for route in &t.routing {
            let Some(row) = h.row_of(route.layer) else {
                continue;
            };
            for &id in &route.ids {
                let c = cell(row, id as usize);
                let c = Rect::from_center_size(c.center(), c.size().max(vec2(3.0, 3.0)));
                map_painter.rect_stroke(
                    c,
                    0.0,
                    Stroke::new(1.5, Color32::WHITE),
                    egui::StrokeKind::Middle,
                );
            }
        }
    }
    let row_rect = cell(heat.layer_row, 0).union(cell(heat.layer_row, h.experts - 1));
    map_painter.rect_stroke(
        row_rect,
        0.0,
        Stroke::new(1.0, Color32::from_rgb(255, 120, 120)),
        egui::StrokeKind::Inside,
    );
    if let Some(p) = hover {
        let uv = to_uv(p);
        let e = ((uv.x * h.experts as f32) as usize).min(h.experts - 1);
        let row = ((uv.y * rows as f32) as usize).min(rows - 1);
        map_painter.rect_stroke(
            cell(row, e),
            0.0,
            Stroke::new(1.0, Color32::RED),
            egui::StrokeKind::Outside,
        );
        let (count, weight) = (
            h.value(HeatMode::Count, row, e),
            h.value(HeatMode::Weight, row, e),
        );
        let layer = h.layers[row];
        let tokens = h.tokens.max(1) as f64;
        resp.clone().on_hover_ui_at_pointer(|ui| {
            ui.label(format!("layer {layer}, expert {e}"));
            ui.label(format!(
                "chosen by {count:.0} of {} tokens ({:.0}%)",
                h.tokens,
                100.0 * count / tokens
            ));
            ui.label(format!("sum of weights {weight:.4}"));
        });
        if resp.clicked() {
            heat.layer_row = row;
        }
    }

    legend(ui, h, heat.mode, heat.log);
    ui.separator();

    // Expert load of one layer.
    ui.horizontal(|ui| {
        ui.strong("expert load of");
        egui::ComboBox::from_label("layer")
            .selected_text(format!("L{}", h.layers[heat.layer_row]))
            .show_ui(ui, |ui| {
                for (row, l) in h.layers.iter().enumerate() {
                    ui.selectable_value(&mut heat.layer_row, row, format!("L{l}"));
                }
            });
    });
    let load = h.row(heat.mode, heat.layer_row);
    let bars: Vec<Bar> = load
        .iter()
        .enumerate()
        .map(|(e, &v)| Bar::new(e as f64, v).width(0.9))
        .collect();
    let name = match heat.mode {
        HeatMode::Count => "times chosen",
        HeatMode::Weight => "sum of weights",
    };
    Plot::new("expert_load")
        .height(140.0)
        .x_axis_label("expert")
        .y_axis_label(name)
        .include_y(0.0)
        .allow_scroll(false)
        .show(ui, |p| {
            p.bar_chart(BarChart::new(name, bars).color(Color32::from_rgb(80, 140, 230)));
        });
    ui.separator();

    ui.horizontal_wrapped(|ui| {
        let l = ui.label("export to");
        ui.add(egui::TextEdit::singleline(export_dir).desired_width(220.0))
            .labelled_by(l.id);
        let dir = PathBuf::from(export_dir.trim());
        if ui
            .button("trace JSONL")
            .on_hover_text("the format of `nemotron-rt generate --trace-routing`")
            .clicked()
        {
            let p = dir.join("nemotron-routing.jsonl");
            notice = Some(export::trace_jsonl(run, &p).map(|_| format!("wrote {}", p.display())));
        }
        if ui.button("trace CSV").clicked() {
            let p = dir.join("nemotron-routing.csv");
            notice = Some(
                export::write_text(&p, &export::trace_csv(run))
                    .map(|_| format!("wrote {}", p.display())),
            );
        }
        if ui.button("heatmap CSV").clicked() {
            let p = dir.join("nemotron-heatmap.csv");
            notice =
                Some(export::write_text(&p, &h.to_csv()).map(|_| format!("wrote {}", p.display())));
        }
        if ui.button("heatmap PNG").clicked() {
            let p = dir.join("nemotron-heatmap.png");
            notice = Some(
                export::heatmap_png(h, heat.mode, heat.log, &p)
                    .map(|_| format!("wrote {}", p.display())),
            );
        }
    });
    match notice {
        Some(Ok(m)) => state.info(m),
        Some(Err(e)) => state.error(e),
        None => {}
    }
}

fn legend(ui: &mut egui::Ui, h: &Heatmap, mode: HeatMode, log: bool) {
    let max = h.max(mode);
    ui.horizontal(|ui| {
        let (r, painter) = ui.allocate_painter(vec2(14.0, 12.0), Sense::hover());
        let [cr, cg, cb] = colormap::NEVER;
        painter.rect_filled(r.rect, 0.0, Color32::from_rgb(cr, cg, cb));
        ui.label("never");
        ui.add_space(8.0);
        ui.label("0");
        let (r, painter) = ui.allocate_painter(vec2(220.0, 12.0), Sense::hover());
        let n = 64;
        for i in 0..n {
            let t = i as f64 / (n - 1) as f64;
            let [cr, cg, cb] = colormap::viridis(t);
            let x0 = r.rect.min.x + r.rect.width() * i as f32 / n as f32;
            let x1 = r.rect.min.x + r.rect.width() * (i + 1) as f32 / n as f32;
            painter.rect_filled(
                Rect::from_min_max(pos2(x0, r.rect.min.y), pos2(x1 + 0.5, r.rect.max.y)),
                0.0,
                Color32::from_rgb(cr, cg, cb),
            );
        }
        let what = match mode {
            HeatMode::Count => format!("{max:.0} tokens"),
            HeatMode::Weight => format!("{max:.3} (sum of weights)"),
        };
        ui.label(format!("{what}{}", if log { ", log scale" } else { "" }));
    });
}

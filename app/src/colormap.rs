//! A perceptually ordered colour scale (viridis, sampled at nine stops) so that the heatmap,
//! its legend and the exported PNG use the same colours.

const STOPS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [72, 36, 117],
    [65, 68, 135],
    [53, 95, 141],
    [42, 120, 142],
    [33, 145, 140],
    [34, 168, 132],
    [122, 209, 81],
    [253, 231, 37],
];

/// Colour of `t` in `[0, 1]` (clamped; NaN maps to 0).
pub fn viridis(t: f64) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    std::array::from_fn(|c| {
        (f64::from(a[c]) + (f64::from(b[c]) - f64::from(a[c])) * f).round() as u8
    })
}

/// Maps a cell value to `[0, 1]`: linear, or logarithmic so that rarely chosen experts stay
/// visible next to hot ones. Zero always maps to 0.
pub fn normalize(v: f64, max: f64, log: bool) -> f64 {
    if max <= 0.0 || v <= 0.0 {
        return 0.0;
    }
    if log {
        (1.0 + v).ln() / (1.0 + max).ln()
    } else {
        v / max
    }
}

/// Experts never chosen are drawn apart from the scale, so "chosen once" is not lost in
/// "never chosen".
pub const NEVER: [u8; 3] = [24, 24, 28];

pub fn cell_color(v: f64, max: f64, log: bool) -> [u8; 3] {
    if v <= 0.0 {
        NEVER
    } else {
        viridis(normalize(v, max, log))
    }
}

// y[t, row0 + r] = W[r] · x[t] (+ bias) for the rows of one weight chunk, the weight decoded
// from its stored format inside the loop (never expanded in memory); the decoding comes from
// decode.wgsl. A workgroup computes ROWS = WG / LANES rows for TILE tokens: LANES threads
// share a row, striding over its 16-element blocks, and every decoded block is used for all
// TILE tokens, so a prefill reads the weights once per TILE tokens rather than once per token.
// The lanes of a row are reduced through shared memory (`main`) or subgroup shuffles
// (`main_subgroup`, linear_subgroup.wgsl, where LANES fits in one subgroup).

override FORMAT: u32 = 0u; // 0 F32, 1 BF16, 2 F16, 3 FP8 E4M3, 4 NVFP4
override TILE: u32 = 1u; // tokens per workgroup, 1..=4
override LANES: u32 = 16u; // threads per row: a power of two dividing WG
override BLOCKED: bool = true; // cols % 16 == 0: rows start on a block boundary
const WG: u32 = 64u;

struct Params {
    cols: u32,
    tokens: u32,
    chunk_rows: u32,
    row0: u32,
    out_cols: u32,
    has_bias: u32,
    tensor_scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<vec4<f32>, WG>;

fn x4(t: u32, c: u32) -> vec4<f32> {
    let o = t * p.cols + c;
    return vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
}

fn x_block_dot(b: Block, t: u32, c: u32) -> f32 {
    return block_dot(b, x4(t, c), x4(t, c + 4u), x4(t, c + 8u), x4(t, c + 12u));
}

// This lane's share of row r dotted with tokens t0 .. t0 + TILE (component i = token t0 + i;
// tokens past the end repeat the last one, and their sums are never stored).
fn lane_dots(r: u32, t0: u32, lane: u32) -> vec4<f32> {
    let last = p.tokens - 1u;
    let t1 = min(t0 + 1u, last);
    let t2 = min(t0 + 2u, last);
    let t3 = min(t0 + 3u, last);
    var acc = vec4<f32>(0.0);
    if (BLOCKED) {
        let blocks = p.cols / 16u;
        for (var k = lane; k < blocks; k += LANES) {
            let blk = r * blocks + k;
            let b = load_block(blk);
            let s = block_scale(blk, p.tensor_scale);
            let c = k * 16u;
            acc.x += x_block_dot(b, t0, c) * s;
            if (TILE > 1u) {
                acc.y += x_block_dot(b, t1, c) * s;
            }
            if (TILE > 2u) {
                acc.z += x_block_dot(b, t2, c) * s;
            }
            if (TILE > 3u) {
                acc.w += x_block_dot(b, t3, c) * s;
            }
        }
    } else {
        let base = r * p.cols;
        for (var c = lane; c < p.cols; c += LANES) {
            let v = weight_at(base + c, p.tensor_scale);
            acc.x += v * x[t0 * p.cols + c];
            if (TILE > 1u) {
                acc.y += v * x[t1 * p.cols + c];
            }
            if (TILE > 2u) {
                acc.z += v * x[t2 * p.cols + c];
            }
            if (TILE > 3u) {
                acc.w += v * x[t3 * p.cols + c];
            }
        }
    }
    return acc;
}

struct Slot {
    row: u32,
    lane: u32,
    t0: u32,
}

fn slot_of(wid: vec3<u32>, lid: u32) -> Slot {
    let group = wid.x + wid.y * 65535u;
    return Slot(group * (WG / LANES) + lid / LANES, lid % LANES, wid.z * TILE);
}

fn lane_sums(s: Slot) -> vec4<f32> {
    if (s.row < p.chunk_rows) {
        return lane_dots(s.row, s.t0, s.lane);
    }
    return vec4<f32>(0.0);
}

fn store(s: Slot, sums: vec4<f32>) {
    if (s.row >= p.chunk_rows) {
        return;
    }
    var b = 0.0;
    if (p.has_bias != 0u) {
        b = bias[p.row0 + s.row];
    }
    for (var i = 0u; i < TILE; i++) {
        let t = s.t0 + i;
        if (t < p.tokens) {
            y[t * p.out_cols + p.row0 + s.row] = sums[i] + b;
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = slot_of(wid, lid);
    partial[lid] = lane_sums(s);
    workgroupBarrier();
    for (var h = LANES / 2u; h > 0u; h >>= 1u) {
        if (s.lane < h) {
            partial[lid] += partial[lid + h];
        }
        workgroupBarrier();
    }
    if (s.lane == 0u) {
        store(s, partial[lid]);
    }
}

// The routed experts, reading only the experts each token chose. Slot s = t * top_k + j is
// token t's j-th choice (expert ids[s], weight route_w[s]). Two entry points share the
// bindings and are dispatched once per chunk of experts (whole experts packed back to back in
// their stored format); a workgroup whose slot's expert lies outside the chunk does nothing:
//   up:   act[s, r] = relu(up_e[r] · x[t])²          (act `[slots, F]`, weight rows = F)
//   down: act[s, r] = route_w[s] · (down_e[r] · h[s])  (act `[slots, L]`, weight rows = L)
// A workgroup computes WG / LANES rows of one slot's expert, LANES threads per row striding
// over its 16-element blocks (decode.wgsl's block decoder) and reducing through shared
// memory, as in linear.wgsl. The sum over slots is `moe_experts_sum.wgsl`. Expert ids are
// trusted to be < the expert count: they come from `router`.

override FORMAT: u32 = 0u; // 0 F32, 1 BF16, 2 F16, 3 FP8 E4M3, 4 NVFP4
override LANES: u32 = 16u; // threads per row: a power of two dividing WG
override BLOCKED: bool = true; // cols % 16 == 0: every row starts on a block boundary
const WG: u32 = 64u;

struct Params {
    slots: u32,   // T * top_k
    top_k: u32,
    rows: u32,    // rows of one expert matrix
    cols: u32,    // cols of one expert matrix (= input width)
    e0: u32,      // first expert of this chunk
    count: u32,   // experts in this chunk
    s0: u32,      // first slot of this batch of tokens (act is indexed from it)
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> tensor_scales: array<f32>;
@group(0) @binding(4) var<storage, read> ids: array<u32>;
@group(0) @binding(5) var<storage, read> route_w: array<f32>;
@group(0) @binding(6) var<storage, read> inp: array<f32>;
@group(0) @binding(7) var<storage, read_write> act: array<f32>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> here: u32;

fn in4(o: u32) -> vec4<f32> {
    return vec4<f32>(inp[o], inp[o + 1u], inp[o + 2u], inp[o + 3u]);
}

// This lane's share of row r of expert e (relative to the chunk) dotted with inp[in_row].
fn lane_dot(e: u32, r: u32, in_row: u32, lane: u32) -> f32 {
    let ts = tensor_scales[e];
    let row = (e - p.e0) * p.rows + r;
    let xo = in_row * p.cols;
    var acc = 0.0;
    if (BLOCKED) {
        let blocks = p.cols / 16u;
        for (var k = lane; k < blocks; k += LANES) {
            let blk = row * blocks + k;
            let b = load_block(blk);
            let c = xo + k * 16u;
            let d = block_dot(b, in4(c), in4(c + 4u), in4(c + 8u), in4(c + 12u));
            acc += d * block_scale(blk, ts);
        }
    } else {
        let base = row * p.cols;
        for (var c = lane; c < p.cols; c += LANES) {
            acc += weight_at(base + c, ts) * inp[xo + c];
        }
    }
    return acc;
}

// Row sums of this workgroup's rows for slot s (valid in each row's lane 0), or `false` when
// slot s's expert is not in this chunk: the whole workgroup then skips it.
struct Rows {
    here: bool,
    row: u32,
    lane: u32,
    sum: f32,
}

fn row_sums(wid: vec3<u32>, lid: u32, s: u32, in_row: u32) -> Rows {
    // Workgroup-uniform, read once (the uniformity analysis cannot see that every thread would
    // read the same id from storage).
    if (lid == 0u) {
        let e = ids[s];
        here = select(0u, 1u, e >= p.e0 && e < p.e0 + p.count);
    }
    if (workgroupUniformLoad(&here) == 0u) {
        return Rows(false, 0u, 0u, 0.0);
    }
    let lane = lid % LANES;
    let r = wid.z * (WG / LANES) + lid / LANES;
    var v = 0.0;
    if (r < p.rows) {
        v = lane_dot(ids[s], r, in_row, lane);
    }
    partial[lid] = v;
    workgroupBarrier();
    for (var h = LANES / 2u; h > 0u; h >>= 1u) {
        if (lane < h) {
            partial[lid] += partial[lid + h];
        }
        workgroupBarrier();
    }
    return Rows(r < p.rows, r, lane, partial[lid]);
}

@compute @workgroup_size(64)
fn up(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sl = wid.x + wid.y * 65535u;
    if (sl >= p.slots) {
        return;
    }
    let s = p.s0 + sl;
    let rs = row_sums(wid, lid, s, s / p.top_k);
    if (rs.here && rs.lane == 0u) {
        let a = max(rs.sum, 0.0);
        act[sl * p.rows + rs.row] = a * a;
    }
}

@compute @workgroup_size(64)
fn down(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sl = wid.x + wid.y * 65535u;
    if (sl >= p.slots) {
        return;
    }
    let s = p.s0 + sl;
    let rs = row_sums(wid, lid, s, sl);
    if (rs.here && rs.lane == 0u) {
        act[sl * p.rows + rs.row] = route_w[s] * rs.sum;
    }
}

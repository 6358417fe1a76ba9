// The routed experts, reading only the experts each token chose. Slot s = t * top_k + j is
// token t's j-th choice (expert ids[s], weight route_w[s]). Two entry points share the
// bindings and are dispatched once per chunk of experts (whole experts packed back to back in
// their stored format); a workgroup whose slot's expert lies outside the chunk does nothing:
//   up:   act[s, r] = relu(up_e[r] · x[t])²          (act `[slots, F]`, weight rows = F)
//   down: act[s, r] = route_w[s] · (down_e[r] · h[s])  (act `[slots, L]`, weight rows = L)
// One workgroup per (slot, row); 64 threads stride over the row and reduce, as in linear.wgsl.
// The sum over slots is `moe_experts_sum.wgsl`. Expert ids are trusted to be < the expert
// count: they come from `router`.

override FORMAT: u32 = 0u; // 0 F32, 1 BF16, 2 F16, 3 FP8 E4M3, 4 NVFP4
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

// Row r of slot s's expert dotted with inp[in_row], reduced over the workgroup; the result is
// valid in every thread.
fn row_dot(s: u32, r: u32, in_row: u32, lid: u32) -> f32 {
    let e = ids[s];
    let ts = tensor_scales[e];
    let base = (e - p.e0) * p.rows * p.cols + r * p.cols;
    var acc = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        acc += weight_at(base + c, ts) * inp[in_row * p.cols + c];
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) {
            partial[lid] += partial[lid + st];
        }
        workgroupBarrier();
    }
    return partial[0];
}

var<workgroup> here: u32;

// Whether slot s's expert is in this chunk, as a workgroup-uniform value (ids are read from
// storage, which the uniformity analysis cannot see is the same for every thread).
fn in_chunk_uniform(s: u32, lid: u32) -> bool {
    if (lid == 0u) {
        let e = ids[s];
        here = select(0u, 1u, e >= p.e0 && e < p.e0 + p.count);
    }
    return workgroupUniformLoad(&here) != 0u;
}

@compute @workgroup_size(64)
fn up(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sl = wid.x + wid.y * 65535u;
    let r = wid.z;
    if (sl >= p.slots || r >= p.rows) {
        return;
    }
    let s = p.s0 + sl;
    if (!in_chunk_uniform(s, lid)) {
        return;
    }
    let v = row_dot(s, r, s / p.top_k, lid);
    if (lid == 0u) {
        let a = max(v, 0.0);
        act[sl * p.rows + r] = a * a;
    }
}

@compute @workgroup_size(64)
fn down(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sl = wid.x + wid.y * 65535u;
    let r = wid.z;
    if (sl >= p.slots || r >= p.rows) {
        return;
    }
    let s = p.s0 + sl;
    if (!in_chunk_uniform(s, lid)) {
        return;
    }
    let v = row_dot(s, r, sl, lid);
    if (lid == 0u) {
        act[sl * p.rows + r] = route_w[s] * v;
    }
}

// `linear` for adapters with subgroups: the same dot products as linear.wgsl (`dot_row`), the
// reduction through subgroupAdd and one shared-memory step across subgroups. Appended to
// decode.wgsl + linear.wgsl, so it only exists where the SUBGROUP feature was granted.

var<workgroup> sg_partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let r = wid.x + wid.y * 65535u;
    let t = wid.z;
    if (r >= p.chunk_rows) {
        return;
    }
    let s = subgroupAdd(dot_row(r, t, lid));
    if (sg_lane == 0u) {
        sg_partial[lid / sg_size] = s;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var sum = 0.0;
        // A subgroup wider than the workgroup still holds the whole sum in slot 0.
        for (var i = 0u; i < max(WG / sg_size, 1u); i++) {
            sum += sg_partial[i];
        }
        store(t, r, sum);
    }
}

// `linear` for adapters with subgroups at least LANES wide: the lanes of a row are reduced by
// butterfly shuffles inside their subgroup, with no shared memory and no barrier. Appended to
// decode.wgsl + linear.wgsl, so it only exists where the SUBGROUP feature was granted; the host
// sets LANES to a power of two no wider than the adapter's smallest subgroup, so a row's lanes
// (consecutive invocation indices) never straddle two subgroups.

@compute @workgroup_size(64)
fn main_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = slot_of(wid, lid);
    var sums = lane_sums(s);
    for (var h = LANES / 2u; h > 0u; h >>= 1u) {
        sums += subgroupShuffleXor(sums, h);
    }
    if (s.lane == 0u) {
        store(s, sums);
    }
}

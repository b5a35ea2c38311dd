//! `wgpu-ensemble devices`: every adapter, whether it is usable, and what it offers.

use wgpu_ensemble::probe_adapters;
use wgpu_ensemble::wgpu::Features;

/// Prints one line per adapter, then the CPU.
pub(crate) fn devices() {
    let probes = probe_adapters();
    if probes.is_empty() {
        outln!("no adapters found; members placed on `auto` run on the CPU");
    }
    for p in probes {
        let usable = match &p.usable {
            Ok(()) => "usable".to_string(),
            Err(why) => format!("unusable: {why}"),
        };
        let mut extras = Vec::new();
        if p.info.features.contains(Features::SHADER_F16) {
            extras.push("f16".to_string());
        }
        if p.info.features.contains(Features::TIMESTAMP_QUERY) {
            extras.push("timestamps".to_string());
        }
        for c in &p.info.cooperative_matrix {
            extras.push(format!(
                "coop {}x{}x{} {:?}->{:?}",
                c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
            ));
        }
        if p.info.features.contains(Features::SUBGROUP) {
            extras.push(format!(
                "subgroup {}..{}",
                p.info.subgroup_sizes.0, p.info.subgroup_sizes.1
            ));
        }
        outln!(
            "{}\t{:?}\t{:?}\t{}\t{}\t{}",
            p.info.index,
            p.info.backend,
            p.info.device_type,
            p.info.name,
            usable,
            extras.join(", ")
        );
    }
    outln!("cpu\t-\tCpu\thost CPU\tusable");
}

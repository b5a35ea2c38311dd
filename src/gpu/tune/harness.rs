//! Timing one candidate tile: a few submissions of its kernel on synthetic data of the
//! shape class, timed by the device's timestamps where it has them.

use std::time::{Duration, Instant};

use wgpu::util::DeviceExt;

use super::cache::Key;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::{Kernel, Kernels};
use crate::gpu::params::DenseParams;
use crate::gpu::readback::{map_for_reading, read_mapped, wait_for, CALLBACK_GRACE};
use crate::gpu::timing::{self, PassTimer};
use crate::precision::Precision;

/// The best of three timed submissions of four dispatches' work each (one dispatch for
/// a stack of four members or more), on synthetic data of the shape class, after one
/// untimed; a submission slower than `give_up` ends the timing there. Timed by the
/// device's timestamps where it has `TIMESTAMP_QUERY`, else by the wall clock from
/// submission to the end of the wait. A stack's
/// members share the input and the weights here, each with an output of its own.
/// `(tile_cols, tile_rows)` are the outputs and rows one workgroup of the pipeline
/// computes.
pub(super) fn time_kernel(
    ctx: &GpuContext,
    kernels: &mut Kernels,
    precision: Precision,
    (kernel, constants, (tile_cols, tile_rows)): (Kernel, &[(&'static str, u32)], (u32, u32)),
    key: &Key,
    give_up: Option<Duration>,
) -> Result<Duration> {
    let device = &ctx.device;
    let (mut m, mut n, mut k) = (key.rows as usize, key.outputs as usize, key.inputs as usize);
    let members = key.members.max(1) as usize;
    // Keep every synthetic buffer within the device's binding limit.
    let limits = device.limits();
    let max_values = (limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        / 4) as usize;
    while m * k > max_values || n * k > max_values || members * (m * n + 3) > max_values {
        if m >= n && m > 16 {
            m /= 2;
        } else if n > 16 {
            n /= 2;
        } else if k > 16 {
            k /= 2;
        } else {
            break;
        }
    }
    let pipeline = kernels.pipeline(device, kernel, constants)?;
    // Errors of this timing only: an earlier error stays for the caller to report.
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let weight_bytes = match precision {
        Precision::F32 => (n * k * 4).next_multiple_of(16),
        Precision::F16 | Precision::F16CoopMatrix => (n * k * 2).next_multiple_of(8),
    };
    let buffer = |size: usize, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("autotune"),
            size: size as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    // dense_coop.wgsl reads x as vec4<f32>.
    let x = buffer(
        (m * k * 4).next_multiple_of(16),
        wgpu::BufferUsages::STORAGE,
    );
    let w = buffer(weight_bytes, wgpu::BufferUsages::STORAGE);
    let b = buffer(n * 4, wgpu::BufferUsages::STORAGE);
    let y_stride = (m * n).next_multiple_of(4);
    let y = buffer(members * y_stride * 4, wgpu::BufferUsages::STORAGE);
    let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("autotune params"),
        contents: bytemuck::bytes_of(&DenseParams::single(
            m as u32,
            n as u32,
            k as u32,
            y_stride as u32,
        )),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("autotune"),
        layout: &kernels.dense_layout,
        entries: &[&x, &w, &b, &y, &params]
            .iter()
            .enumerate()
            .map(|(i, buf)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: buf.as_entire_binding(),
            })
            .collect::<Vec<_>>(),
    });
    let groups = (
        (n as u32).div_ceil(tile_cols),
        (m as u32).div_ceil(tile_rows),
    );
    // Where the device has timestamps, a round's time is the GPU's time for the
    // dispatches: on a fast GPU the submission and the wait take longer than a small
    // layer's kernels, and their jitter would decide between the candidates.
    // The timer, and the buffer its timestamps are read back from.
    let timing = PassTimer::new(ctx).map(|timer| {
        let stamps = buffer(
            timing::BYTES as usize,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        (timer, stamps)
    });
    let gpu_error = |e: &dyn std::fmt::Display| Error::Gpu {
        device: ctx.label.to_string(),
        message: format!("autotune: {e}"),
    };
    let mut best = Duration::MAX;
    for round in 0..4 {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("autotune"),
                timestamp_writes: timing.as_ref().map(|(timer, _)| timer.writes()),
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            for _ in 0..(4 / members).max(1) {
                pass.dispatch_workgroups(groups.0, groups.1, members as u32);
            }
        }
        if let Some((timer, stamps)) = &timing {
            timer.copy_to(&mut encoder, stamps, 0);
        }
        let started = Instant::now();
        let index = ctx.queue.submit([encoder.finish()]);
        let staging: Vec<(&wgpu::Buffer, u64)> = timing
            .iter()
            .map(|(_, stamps)| (stamps, timing::BYTES))
            .collect();
        let mapping = map_for_reading(&staging);
        wait_for(device, index, Duration::ZERO, Duration::from_secs(60))
            .map_err(|e| gpu_error(&e))?;
        let wall = started.elapsed();
        // Another thread's wait on the device may run the callback.
        mapping.wait(CALLBACK_GRACE).map_err(|e| gpu_error(&e))?;
        let gpu = match &timing {
            Some((timer, stamps)) => {
                let time = read_mapped(stamps, timing::BYTES, |view| timer.elapsed(view))
                    .map_err(|e| gpu_error(&e))?;
                Some((time, timer.tick()))
            }
            None => None,
        };
        let took = round_time(gpu, wall);
        // The first round compiles and warms up.
        if round > 0 {
            best = best.min(took);
            // Two rounds at least: one slow round on a busy machine is not enough.
            if round > 1 && give_up.is_some_and(|limit| best > limit) {
                break;
            }
        }
    }
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Gpu {
            device: ctx.label.to_string(),
            message: format!("autotune: {e}"),
        });
    }
    Ok(best)
}

/// A timing round's time: the device's, where it has timestamps, at least one tick (a
/// pass too short for the clock reads zero: the fastest candidate, not the slowest);
/// else the wall clock's. The two are never mixed within one device.
fn round_time(gpu: Option<(Duration, Duration)>, wall: Duration) -> Duration {
    match gpu {
        Some((time, tick)) => time.max(tick),
        None => wall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device's time when there is one, never below a tick; else the wall clock.
    #[test]
    fn a_round_takes_the_devices_time() {
        let (ms, ns) = (Duration::from_millis, Duration::from_nanos);
        assert_eq!(round_time(Some((ms(2), ns(1))), ms(5)), ms(2));
        assert_eq!(round_time(Some((Duration::ZERO, ns(1))), ms(5)), ns(1));
        assert_eq!(round_time(Some((ns(3), ns(8))), ms(5)), ns(8));
        assert_eq!(round_time(None, ms(5)), ms(5));
    }
}

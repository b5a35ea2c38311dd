//! Waiting for a submission and reading its results back, for the executor and the
//! tuner alike: map the staging buffers, spin then sleep on the driver's fence within
//! a timeout, wait for the map callbacks (which another thread's wait on the same
//! device may run), copy the mapped bytes out.

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::exec::spin_until;

/// How long a run waits, at least, for the map callbacks of work its wait saw done
/// (another thread's wait on the same device may be running them).
pub(crate) const CALLBACK_GRACE: Duration = Duration::from_secs(1);

/// The map callbacks of the buffers [`map_for_reading`] mapped, one message each.
pub(crate) struct Mapping {
    results: mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
    count: usize,
}

/// Asks to map the first `size` bytes of each buffer for reading once the work before
/// it is done.
pub(crate) fn map_for_reading(buffers: &[(&wgpu::Buffer, u64)]) -> Mapping {
    let (tx, results) = mpsc::channel();
    for &(buf, size) in buffers {
        let tx = tx.clone();
        buf.slice(..size).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
    }
    Mapping {
        results,
        count: buffers.len(),
    }
}

impl Mapping {
    /// Waits for every callback, within `left` in all: `Err` names the first failure
    /// (a mapping that failed, or one that did not come in time).
    pub(crate) fn wait(self, left: Duration) -> Result<(), String> {
        // No deadline instant: `left` may be as long as `Duration::MAX` ("never").
        let waiting = Instant::now();
        for _ in 0..self.count {
            match self
                .results
                .recv_timeout(left.saturating_sub(waiting.elapsed()))
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("mapping a result: {e}")),
                Err(_) => {
                    return Err(format!(
                        "a result buffer was not mapped within {left:?} of the work's end"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Waits until `submission` is done: polls for up to `spin` (never past `timeout`),
/// then sleeps on the driver's fence for what is left of `timeout`.
pub(crate) fn wait_for(
    device: &wgpu::Device,
    submission: wgpu::SubmissionIndex,
    spin_for: Duration,
    timeout: Duration,
) -> Result<(), wgpu::PollError> {
    let started = Instant::now();
    if spin(device, spin_for.min(timeout)) {
        return Ok(());
    }
    device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: Some(timeout.saturating_sub(started.elapsed())),
        })
        .map(|_| ())
}

/// Polls `device` without blocking until its queue is empty (every submission
/// finished; its callbacks run by this poll, or by another thread's on the same
/// device, which may still be running them) or `limit` has passed, yielding the core
/// between polls (on lavapipe the device's work runs on the CPU's cores); whether it
/// emptied. An error ends the spin: the blocking wait that follows reports it.
pub(crate) fn spin(device: &wgpu::Device, limit: Duration) -> bool {
    spin_until(limit, || match device.poll(wgpu::PollType::Poll) {
        Ok(status) if status.is_queue_empty() => ControlFlow::Break(Some(())),
        Ok(_) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(None),
    })
    .is_some()
}

/// Reads the first `size` bytes of a buffer mapped by [`map_for_reading`] with `read`,
/// then unmaps it; `Err` says why the mapping could not be read.
pub(crate) fn read_mapped<T>(
    buf: &wgpu::Buffer,
    size: u64,
    read: impl FnOnce(&[u8]) -> T,
) -> Result<T, String> {
    let out = {
        let view = buf
            .slice(..size)
            .get_mapped_range()
            .map_err(|e| format!("reading a result: {e}"))?;
        read(&view)
    };
    buf.unmap();
    Ok(out)
}

/// Copies mapped bytes into `dst` without assuming the mapping's alignment.
pub(crate) fn copy_f32(dst: &mut [f32], bytes: &[u8]) {
    match bytemuck::try_cast_slice::<u8, f32>(bytes) {
        Ok(src) => dst.copy_from_slice(src),
        Err(_) => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::DevicePool;
    use crate::precision::Precision;

    /// `spin` reports an emptied queue only once the work is done (its map callback
    /// has run), and gives up at once with no time to spin.
    #[test]
    fn spin_returns_when_the_queue_is_empty() {
        let mut pool = DevicePool::new(Precision::F32);
        let Some(&index) = pool.usable().first() else {
            assert!(
                std::env::var("WGPU_ENSEMBLE_REQUIRE_GPU").as_deref() != Ok("1"),
                "no usable adapter and WGPU_ENSEMBLE_REQUIRE_GPU=1"
            );
            eprintln!("spin: no usable adapter, skipped");
            return;
        };
        let ctx = pool.open("test", index, 0).unwrap();
        let device = &ctx.device;
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 1 << 20,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = buffer(wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
        let dst = buffer(wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ);
        let submit = || {
            let mut encoder = device.create_command_encoder(&Default::default());
            encoder.clear_buffer(&src, 0, None);
            encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, 1 << 20);
            ctx.queue.submit([encoder.finish()]);
            let (tx, rx) = mpsc::channel();
            dst.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r.is_ok());
            });
            rx
        };
        let rx = submit();
        assert!(
            spin(device, Duration::from_secs(30)),
            "the queue never emptied"
        );
        assert_eq!(
            rx.try_recv(),
            Ok(true),
            "spun out before the mapping was done"
        );
        dst.unmap();
        // Nothing to spin for: the queue is empty on the first poll.
        assert!(spin(device, Duration::from_secs(30)));
        // No time to spin: the caller waits instead.
        let rx = submit();
        assert!(!spin(device, Duration::ZERO));
        device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(Duration::from_secs(30)),
            })
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(true));
    }
}

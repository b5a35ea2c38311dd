//! GPU time of a compute pass, from timestamp queries (`TIMESTAMP_QUERY`): what
//! `SessionOptions::device_timing` reports and what the autotune times candidates
//! with where the device has them.
//!
//! The pass writes a timestamp as it begins and as it ends; the encoder resolves the
//! two into a small buffer and copies them into a mappable one, which the caller
//! reads back with its results. The difference is the device's time for every
//! dispatch of the pass, without the submission, the wait or the readback.

use std::time::Duration;

use super::context::GpuContext;

/// Bytes of the two resolved timestamps.
pub(crate) const BYTES: u64 = 2 * wgpu::QUERY_SIZE as u64;

/// A query set of two timestamps and the buffer they are resolved into.
pub(crate) struct PassTimer {
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    /// Nanoseconds per tick.
    period: f64,
}

impl PassTimer {
    /// A timer on `ctx`'s device, or `None` when it has no `TIMESTAMP_QUERY`.
    pub(crate) fn new(ctx: &GpuContext) -> Option<Self> {
        if !ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return None;
        }
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("pass timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("resolved timestamps"),
            size: BYTES,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(Self {
            set,
            resolved,
            period: f64::from(ctx.queue.get_timestamp_period()),
        })
    }

    /// The `timestamp_writes` of the pass to time.
    pub(crate) fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// After the pass: resolves its timestamps and copies them into `staging` at
    /// `offset` (a multiple of 4, with [`BYTES`] of room).
    pub(crate) fn copy_to(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        staging: &wgpu::Buffer,
        offset: u64,
    ) {
        encoder.resolve_query_set(&self.set, 0..2, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, staging, offset, BYTES);
    }

    /// One tick of the device's clock, at least a nanosecond.
    pub(crate) fn tick(&self) -> Duration {
        Duration::from_nanos((self.period.ceil() as u64).max(1))
    }

    /// The time between the two timestamps in `bytes`, as
    /// [`copy_to`](Self::copy_to) wrote them.
    pub(crate) fn elapsed(&self, bytes: &[u8]) -> Duration {
        between(bytes, self.period)
    }
}

/// The time from the first to the second little-endian tick in `bytes`, at `period`
/// nanoseconds a tick; zero if the end is not after the beginning (a driver may
/// report equal or wrapped values for a pass too short to see) or `bytes` is short.
fn between(bytes: &[u8], period: f64) -> Duration {
    let tick = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let ticks = tick(8).saturating_sub(tick(0));
    // Saturating: a period of zero or past u64's range gives zero or the maximum.
    Duration::from_nanos((ticks as f64 * period).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(start: u64, end: u64) -> Vec<u8> {
        [start.to_le_bytes(), end.to_le_bytes()].concat()
    }

    /// Two little-endian ticks scaled by the period; an end before the beginning,
    /// or too few bytes, is zero.
    #[test]
    fn between_scales_ticks_by_the_period() {
        assert_eq!(
            between(&bytes(1_000, 1_400), 2.5),
            Duration::from_nanos(1_000)
        );
        assert_eq!(
            between(&bytes(7, 7 + (3 << 40)), 1.0),
            Duration::from_nanos(3 << 40)
        );
        assert_eq!(between(&bytes(1_400, 1_000), 2.5), Duration::ZERO);
        assert_eq!(between(&bytes(0, 9)[..12], 1.0), Duration::ZERO);
    }
}

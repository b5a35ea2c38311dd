//! [`GpuContext`]: one wgpu device, its queue, and what its error handlers caught.

use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Error;
use crate::placement::{next_device_id, DeviceReports, ExecutionDevice, ExternalDevice};

/// Installs `device`'s uncaptured-error handler and device-lost callback, replacing
/// any set before, to report to new stores.
fn install(device: &wgpu::Device) -> DeviceReports {
    let reports = DeviceReports::default();
    let errors = Arc::clone(&reports.errors);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(e.to_string());
    }));
    let lost = Arc::clone(&reports.lost);
    device.set_device_lost_callback(move |reason, message| {
        *lost.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(format!("{reason:?}: {message}"));
    });
    reports
}

/// A device, its queue, and what its error handlers caught.
///
/// The handlers replace wgpu's default one, which panics: validation and
/// out-of-memory errors outside an error scope are stored here and returned as
/// [`Error::Gpu`] by the run that caused them, and a lost device as
/// [`Error::DeviceLost`].
#[derive(Clone, Debug)]
pub(crate) struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) label: ExecutionDevice,
    /// The adapter the device was created on, to recreate it after a loss (`None`
    /// for a device the caller handed in).
    pub(crate) adapter: Option<wgpu::Adapter>,
    /// Tells this device from every other of the process (see
    /// [`next_device_id`]); the clones share it.
    pub(crate) id: u64,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    pub(crate) fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        label: ExecutionDevice,
        adapter: Option<wgpu::Adapter>,
    ) -> Self {
        let sinks = install(&device);
        Self {
            device,
            queue,
            label,
            adapter,
            id: next_device_id(),
            errors: sinks.errors,
            lost: sinks.lost,
        }
    }

    /// The context of a device the caller handed in. Every context made for it (by
    /// any session or trainer, through any clone of `ext`) reports to the same
    /// stores: its handlers are installed once, with the first, since a device has
    /// one uncaptured-error handler and one device-lost callback, and a second
    /// installation would take the reports away from the users of the first.
    pub(crate) fn external(ext: &ExternalDevice) -> Self {
        let sinks = ext.reports.get_or_init(|| install(&ext.device)).clone();
        Self {
            device: ext.device.clone(),
            queue: ext.queue.clone(),
            label: ExecutionDevice::External {
                label: ext.label.clone(),
            },
            adapter: None,
            id: ext.id,
            errors: sinks.errors,
            lost: sinks.lost,
        }
    }

    /// Whether the device has been lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Destroys the device, as a driver reset would (fault injection).
    pub(crate) fn lose(&self) {
        self.device.destroy();
        *self.lost.lock().unwrap_or_else(PoisonError::into_inner) =
            Some("destroyed by fault injection".to_string());
    }

    /// Names the adapter (or external device) for the autotune cache.
    pub(crate) fn adapter_key(&self) -> String {
        match &self.label {
            ExecutionDevice::Adapter { backend, name, .. } => format!("{backend:?} {name}"),
            other => other.to_string(),
        }
    }

    /// How many errors the store holds now: [`GpuContext::take_error_since`] with it
    /// leaves those to whoever made them (on a device handed in, another session, a
    /// trainer, or the caller's own work).
    pub(crate) fn error_mark(&self) -> usize {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// As [`GpuContext::take_error`], for the errors caught after `mark` only (and a
    /// lost device, which is everyone's).
    pub(crate) fn take_error_since(&self, mark: usize) -> Option<Error> {
        if let Some(message) = self
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Some(Error::DeviceLost {
                device: self.label.to_string(),
                message,
            });
        }
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() <= mark {
            return None;
        }
        let mine: Vec<String> = errors.drain(mark..).collect();
        Some(Error::Gpu {
            device: self.label.to_string(),
            message: mine.join("; "),
        })
    }

    /// The first problem the handlers caught since the last call, if any.
    pub(crate) fn take_error(&self) -> Option<Error> {
        self.take_error_since(0)
    }
}

//! One job on one device's executor: the faults planned for its members applied, a
//! panic inside the executor caught and reported as the job's failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::device_tensor::{DeviceCopy, DeviceTensor};
use crate::error::{Error, Result};
use crate::exec::{DeviceOutput, Executor, Loss, Wants};
use crate::fault::{Fault, FaultPlan};
use crate::tensor::Tensor;

/// A job's input.
pub(crate) enum JobInput<'a> {
    /// On the host: [`Executor::run`].
    Host(&'a Tensor),
    /// A device tensor, and whether to keep the aggregate on the device:
    /// [`Executor::run_resident`].
    Device(&'a DeviceTensor, bool),
}

/// Runs one job on `executor` for run number `run`, applying the faults the plan in
/// `cx` holds for its members. A panic inside the executor becomes
/// [`Error::WorkerFailed`] for this job (the executor is reset and lives on).
pub(crate) fn execute(
    executor: &mut dyn Executor,
    input: &Tensor,
    wants: Wants,
    run: u64,
    cx: &WorkerContext,
) -> Result<DeviceOutput> {
    execute_input(executor, JobInput::Host(input), wants, run, cx).map(|(out, _)| out)
}

/// [`execute`] on a host or device input; with a device input the executor may keep
/// the aggregate on its device.
pub(crate) fn execute_input(
    executor: &mut dyn Executor,
    input: JobInput<'_>,
    wants: Wants,
    run: u64,
    cx: &WorkerContext,
) -> Result<(DeviceOutput, Option<Arc<dyn DeviceCopy>>)> {
    let (members, names, plan, device) = (&cx.members, &cx.names, &cx.plan, &cx.device);
    let injected = |m: usize| {
        (
            m,
            Error::InjectedFault {
                member: names[m].clone(),
                run,
            },
        )
    };
    let mut skip: Vec<(usize, Error)> = Vec::new();
    let mut panic = false;
    // The members whose own fault loses the device, the parts whose devices are lost
    // (part 0 but for a split member), and whether for good.
    let mut losers: Vec<usize> = Vec::new();
    let mut lost_parts: Vec<usize> = Vec::new();
    let mut permanently = false;
    if !plan.is_empty() {
        for &m in members.iter() {
            for (part, fault) in plan.faults(&names[m], run) {
                match fault {
                    Fault::Sleep(d) => std::thread::sleep(*d),
                    Fault::Fail => skip.push(injected(m)),
                    Fault::Panic => panic = true,
                    Fault::LoseDevice | Fault::LoseDevicePermanently => {
                        permanently |= matches!(fault, Fault::LoseDevicePermanently);
                        if !losers.contains(&m) {
                            losers.push(m);
                        }
                        if !lost_parts.contains(&part) {
                            lost_parts.push(part);
                        }
                    }
                }
            }
        }
    }
    if !losers.is_empty() {
        let mut loss = Loss::Device(None);
        for &part in &lost_parts {
            match executor.lose_part_device(part, permanently) {
                Loss::Device(None) => {}
                other => {
                    if matches!(loss, Loss::Device(None)) {
                        loss = other;
                    }
                }
            }
        }
        match loss {
            Loss::Device(Some(err)) => return Err(err),
            Loss::Device(None) => {}
            // The members the fault named fail by fault injection; the others on the
            // device fail because the device did, as the members of a lost GPU do
            // (and a member failed already by its own `Fault::Fail` keeps that).
            Loss::NoDevice => {
                let cause: Vec<&str> = losers.iter().map(|&m| names[m].as_str()).collect();
                for &m in members.iter() {
                    if skip.iter().any(|(s, _)| *s == m) {
                        continue;
                    }
                    if losers.contains(&m) {
                        skip.push(injected(m));
                    } else {
                        skip.push((
                            m,
                            Error::DeviceLost {
                                device: device.to_string(),
                                message: format!(
                                    "by fault injection on member '{}' on run {run}, \
                                     so member '{}' on it failed too",
                                    cause.join("', '"),
                                    names[m]
                                ),
                            },
                        ));
                    }
                }
            }
        }
    }
    let skipped: Vec<usize> = skip.iter().map(|(m, _)| *m).collect();
    let result = catch_unwind(AssertUnwindSafe(|| {
        if panic {
            // Fault injection: the worker's job unwinds as a bug's panic would,
            // without the panic hook's message and backtrace.
            std::panic::resume_unwind(Box::new(format!("fault injection on run {run}")));
        }
        match input {
            JobInput::Host(x) => executor.run(x, wants, &skipped).map(|out| (out, None)),
            JobInput::Device(x, keep) => executor.run_resident(x, wants, &skipped, keep),
        }
    }));
    let result = result.unwrap_or_else(|panic| {
        executor.reset();
        Err(Error::WorkerFailed {
            device: device.to_string(),
            message: format!("it panicked: {}", panic_message(panic.as_ref())),
        })
    });
    result.map(|(mut out, kept)| {
        out.failed = skip;
        (out, kept)
    })
}

/// A panic's message (its payload when that is text).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// What a worker knows besides its executor: its members, every member's name (for
/// the fault plan), the fault plan, and its device's description.
pub(crate) struct WorkerContext {
    pub(crate) members: Vec<usize>,
    pub(crate) names: Vec<String>,
    pub(crate) plan: Arc<FaultPlan>,
    pub(crate) device: String,
}

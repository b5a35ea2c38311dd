//! The crate's error type: one enum, structured fields, every message says what was
//! expected and what was given.

use std::path::PathBuf;
use std::time::Duration;

/// Errors returned by every fallible operation of the crate.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor's data length does not match the product of its shape.
    #[error("tensor data has {got} values but shape {shape:?} needs {expected}")]
    TensorData {
        /// The shape that was given.
        shape: Vec<usize>,
        /// Number of values the shape needs.
        expected: usize,
        /// Number of values that were given.
        got: usize,
    },
    /// A shape whose number of values does not fit in memory's address range.
    #[error("shape {shape:?} has more values than this machine can address")]
    ShapeTooLarge {
        /// The shape that was given.
        shape: Vec<usize>,
    },
    /// A tensor has the wrong number of dimensions for the operation.
    #[error("{what}: expected a tensor of rank {expected}, got shape {shape:?}")]
    Rank {
        /// What the tensor was for.
        what: &'static str,
        /// The rank the operation needs.
        expected: usize,
        /// The shape that was given.
        shape: Vec<usize>,
    },
    /// The input's feature width differs from the graph's input width.
    #[error("input has {got} features per row, the graph expects {expected}")]
    FeatureWidth {
        /// The graph's input width.
        expected: usize,
        /// The width of the input that was given.
        got: usize,
    },
    /// The input has no rows.
    #[error("input batch is empty: expected at least one row, got 0")]
    EmptyBatch,
    /// A weight or bias value is NaN or infinite.
    #[error("layer {layer}: {tensor}{index:?} is {value}: weights and biases must be finite")]
    NonFiniteWeight {
        /// Index of the layer in its model (0-based).
        layer: usize,
        /// `weight` or `bias`.
        tensor: &'static str,
        /// The value's position: `[out, in]` in a weight, `[out]` in a bias.
        index: Vec<usize>,
        /// The value.
        value: f32,
    },
    /// A weight is finite in f32 but beyond the range of the session's f16 precision
    /// (±65504), where it would become infinite.
    #[error("member '{member}' layer {layer}: weight{index:?} is {value}, beyond f16's range (±65504) of precision {precision}: use Precision::F32 or scale the layer")]
    WeightOutOfRange {
        /// The member.
        member: String,
        /// Index of the layer in its model (0-based).
        layer: usize,
        /// The weight's position, `[out, in]`.
        index: Vec<usize>,
        /// The value.
        value: f32,
        /// The session's precision.
        precision: &'static str,
    },
    /// A model was built with no layers.
    #[error("a model needs at least one dense layer, got none")]
    EmptyModel,
    /// A dense layer's weight or bias shape is invalid or does not chain with the
    /// previous layer.
    #[error("layer {layer}: {what}: expected {expected:?}, got {got:?}")]
    LayerShape {
        /// Index of the layer in its model (0-based).
        layer: usize,
        /// Which tensor of the layer is wrong (`weight` or `bias`) and why.
        what: &'static str,
        /// The shape that would have been valid.
        expected: Vec<usize>,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A member's input width differs from the graph's input width.
    #[error("member '{member}' takes {got} input features, the graph's input has {expected}")]
    MemberInputWidth {
        /// The member's name.
        member: String,
        /// The graph's input width.
        expected: usize,
        /// The member's input width.
        got: usize,
    },
    /// Members disagree on their output width.
    #[error("member '{member}' produces {got} outputs, member '{first}' produces {expected}; all members must agree")]
    MemberOutputWidth {
        /// The member whose width differs.
        member: String,
        /// The first member, whose width sets the graph's output width.
        first: String,
        /// The first member's output width.
        expected: usize,
        /// This member's output width.
        got: usize,
    },
    /// A stack's blender does not take the members' outputs side by side, or does not
    /// produce the members' output width.
    #[error("stack blender: {what} is {got}, expected {expected} ({reason})")]
    BlenderWidth {
        /// `input width` or `output width`.
        what: &'static str,
        /// The width the graph needs.
        expected: usize,
        /// The blender's width.
        got: usize,
        /// Where the expected width comes from.
        reason: String,
    },
    /// A stack needs every member's output; this operation cannot give the blender
    /// them.
    #[error("{operation} cannot run a stack aggregate: {reason}")]
    StackUnsupported {
        /// What was asked.
        operation: &'static str,
        /// Why not, and what to use instead.
        reason: &'static str,
    },
    /// A member was given an empty name.
    #[error("a member name must not be empty")]
    EmptyMemberName,
    /// Two members have the same name.
    #[error("member name '{name}' is used twice; member names must be unique")]
    DuplicateMember {
        /// The repeated name.
        name: String,
    },
    /// A graph was built with no members.
    #[error("a graph needs at least one member, got none")]
    NoMembers,
    /// The graph's input width is zero.
    #[error("the graph's input width must be at least 1, got 0")]
    ZeroInputWidth,
    /// The number of aggregate weights differs from the number of members.
    #[error("aggregate has {got} weights but the graph has {expected} members")]
    AggregateWeightCount {
        /// Number of members.
        expected: usize,
        /// Number of weights given.
        got: usize,
    },
    /// An aggregate weight is negative or not finite.
    #[error("aggregate weight {index} is {value}: expected a finite value >= 0")]
    AggregateWeight {
        /// Index of the weight (the member's index).
        index: usize,
        /// The value that was given.
        value: f32,
    },
    /// Every aggregate weight is zero.
    #[error("aggregate weights are all zero: at least one must be positive")]
    AggregateWeightsAllZero,
    /// A member's placement names an adapter that does not exist.
    #[error("member '{member}' is placed on adapter {index}, which does not exist; adapters found: {}", list_or_none(.available))]
    AdapterOutOfRange {
        /// The member whose placement named the adapter.
        member: String,
        /// The index that was asked for.
        index: usize,
        /// Every adapter that exists, one description each.
        available: Vec<String>,
    },
    /// A device could not be created on an adapter.
    #[error("could not create a device on adapter {index} ({name}): {message}; adapters found: {}", list_or_none(.available))]
    DeviceCreation {
        /// The adapter's index.
        index: usize,
        /// The adapter's name.
        name: String,
        /// What wgpu reported.
        message: String,
        /// Every adapter that exists, one description each.
        available: Vec<String>,
    },
    /// An adapter cannot run compute shaders (for example a GL adapter without
    /// compute support).
    #[error("adapter {index} ({name}) cannot run compute shaders")]
    NoCompute {
        /// The adapter's index.
        index: usize,
        /// The adapter's name.
        name: String,
    },
    /// A shader module or pipeline failed to compile or validate.
    #[error("shader {kernel}: {message}")]
    Shader {
        /// The kernel's body file, with its variant where it has one (`dense.wgsl (f16)`).
        kernel: &'static str,
        /// What wgpu reported.
        message: String,
    },
    /// A buffer this session needs is larger than the device allows.
    #[error("{what} needs {bytes} bytes on {device}, which allows at most {limit} per buffer")]
    BufferTooLarge {
        /// Which buffer.
        what: String,
        /// Device description.
        device: String,
        /// Bytes needed.
        bytes: u64,
        /// The largest buffer the device (or the session options) allow.
        limit: u64,
    },
    /// A layer has more inputs than the device's driver computes correctly: llvmpipe
    /// (lavapipe, GL llvmpipe) ends a shader invocation after 65535 loop iterations
    /// in all, without an error.
    #[error("member '{member}' layer {layer} has {inputs} inputs, more than {device} computes correctly (at most {limit}: llvmpipe ends a shader after 65535 loop iterations); place the member on the CPU")]
    InputsBeyondDriver {
        /// The member.
        member: String,
        /// The layer's index in the member.
        layer: usize,
        /// The layer's inputs.
        inputs: usize,
        /// The most inputs a layer may have there.
        limit: usize,
        /// Device description.
        device: String,
    },
    /// A stacking blender's first layer, applied on a device to a stack of members'
    /// outputs, needs more loop iterations than the device's driver runs correctly
    /// (llvmpipe ends a shader invocation after 65535 loop iterations, without an
    /// error).
    #[error("the blender's first layer ({hidden} units over member '{member}' and the {members} members stacked with it, {classes} classes each) needs {iterations} loop iterations per row on {device}, more than it computes correctly (at most {limit}: llvmpipe ends a shader after 65535 loop iterations); place the members on the CPU or use a blender with fewer units")]
    BlenderBeyondDriver {
        /// The first member of the stack.
        member: String,
        /// The members in the stack, that one included.
        members: usize,
        /// The blender's first-layer units.
        hidden: usize,
        /// The members' outputs.
        classes: usize,
        /// Loop iterations blend.wgsl would run per row.
        iterations: usize,
        /// The most it may run there.
        limit: usize,
        /// Device description.
        device: String,
    },
    /// A layer needs more workgroups along one dispatch dimension than the device
    /// allows.
    #[error("{what} needs {groups} workgroups along one dimension on {device}, which allows at most {limit}")]
    DispatchTooLarge {
        /// Which layer.
        what: String,
        /// Device description.
        device: String,
        /// Workgroups needed.
        groups: u64,
        /// The device's limit.
        limit: u32,
    },
    /// A device reported an error while running (validation, out of memory, a failed
    /// buffer map).
    #[error("device {device}: {message}")]
    Gpu {
        /// Device description.
        device: String,
        /// What went wrong.
        message: String,
    },
    /// A device was lost while the session was using it.
    #[error("device {device} was lost: {message}")]
    DeviceLost {
        /// Device description.
        device: String,
        /// The reason the driver gave.
        message: String,
    },
    /// A wait on a device took longer than the session's operation timeout.
    #[error("device {device} did not finish within the operation timeout of {timeout:?}")]
    OperationTimeout {
        /// Device description.
        device: String,
        /// The session's operation timeout.
        timeout: Duration,
    },
    /// A run did not finish within its `RunOptions::timeout`.
    #[error("run exceeded its deadline of {timeout:?}; members that had not answered: {}", .missing.join(", "))]
    DeadlineExceeded {
        /// The run's timeout.
        timeout: Duration,
        /// Names of the members whose output had not arrived.
        missing: Vec<String>,
    },
    /// The server could not listen on its address (in use, not this machine's, not
    /// permitted).
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: String,
        /// What the operating system reported.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        message: String,
    },
    /// A `.safetensors` file is truncated or not a safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        message: String,
    },
    /// A tensor a dense layer needs is not in the file.
    #[error("{path}: tensor '{tensor}' is missing{}", hint_suffix(.hint))]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What the file has instead, when that helps.
        hint: String,
    },
    /// A tensor of the file is not part of a dense layer.
    #[error("{path}: tensor '{tensor}' is not a dense layer's weight or bias; list the layers to use in the manifest's `layers` to ignore it")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor has the wrong shape, or does not chain with the previous layer.
    #[error("{path}: tensor '{tensor}' has shape {}, expected {expected}", excerpt(&format!("{got:?}")))]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape that would be valid, in words.
        expected: String,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A tensor of a model file holds a NaN or infinite value.
    #[error(
        "{path}: tensor '{tensor}' has {value} at {index:?}: weights and biases must be finite"
    )]
    NonFiniteTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The value's position in the tensor.
        index: Vec<usize>,
        /// The value.
        value: f32,
    },
    /// An f64 tensor in a file holds a finite value beyond f32's range (it would
    /// become infinite).
    #[error(
        "{path}: tensor '{tensor}' has {value:e} at {index:?}, beyond f32's range (±3.4028235e38)"
    )]
    TensorOutOfRange {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The value's position in the tensor.
        index: Vec<usize>,
        /// The value, as the file holds it.
        value: f64,
    },
    /// A tensor's dtype cannot be converted to f32.
    #[error("{path}: tensor '{tensor}' has dtype {dtype}; supported: F32, F16, BF16, F64")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtype in the file.
        dtype: String,
    },
    /// An activation name is not one this crate knows.
    #[error("{path}: unknown activation '{name}': expected one of identity, relu, tanh, sigmoid, gelu, softmax")]
    UnknownActivation {
        /// The file that names it (a model or a manifest).
        path: PathBuf,
        /// The name that was given.
        name: String,
    },
    /// The number of activations differs from the number of layers, or there are none.
    #[error("{path}: {got} activations for {expected} layers{}", if *.got == 0 { " (give them in the manifest's `activations` or the file's metadata key `activations`)" } else { "" })]
    ActivationCount {
        /// The model file.
        path: PathBuf,
        /// Number of layers.
        expected: usize,
        /// Number of activations given.
        got: usize,
    },
    /// A manifest could not be parsed or has an invalid value.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A device specification (`auto`, `cpu`, `adapter:N`, `adapter:N/queue:K`) could
    /// not be parsed.
    #[error("invalid device '{spec}': expected auto, cpu, adapter:N or adapter:N/queue:K")]
    DeviceSpec {
        /// The text that was given (at most 200 characters of it).
        spec: String,
    },
    /// A `.npy` file is unreadable or not the array that was expected.
    #[error("{path}: {message}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong: the dtype, layout or shape found and what was expected.
        message: String,
    },
    /// A precision name is not one this crate knows.
    #[error("unknown precision '{name}': expected f32, f16 or f16-coop")]
    UnknownPrecision {
        /// The name that was given.
        name: String,
    },
    /// [`SessionOptions::device_timing`](crate::SessionOptions::device_timing) was set
    /// and a device the members run on has no timestamp queries.
    #[error("device {device} cannot time its kernels: it lacks TIMESTAMP_QUERY")]
    DeviceTimingUnsupported {
        /// Device description.
        device: String,
    },
    /// A device cannot run the session's precision.
    #[error("device {device} cannot run precision {precision}: it lacks {missing}")]
    PrecisionUnsupported {
        /// Device description.
        device: String,
        /// The precision asked for.
        precision: &'static str,
        /// The adapter feature it lacks.
        missing: &'static str,
    },
    /// A fixed tile configuration or coop shape is outside what the kernels take (at
    /// most 8 × 8 accumulators per thread, 4 or 8 a side with `vec4`; at most 4 × 4
    /// matrices per block) or the device's limits (workgroup size, workgroup memory).
    #[error("tile configuration {tile} does not fit the kernels or the limits of device {device}")]
    TileUnsupported {
        /// Device description.
        device: String,
        /// The configuration, and why it does not fit.
        tile: String,
    },
    /// Fewer members finished than the run's quorum asked for.
    #[error("quorum not met: {finished} of {members} members finished, {required} required; missing: {}", .missing.join("; "))]
    QuorumNotMet {
        /// The quorum asked for.
        required: usize,
        /// Members that finished.
        finished: usize,
        /// Members in the graph.
        members: usize,
        /// Each missing member with why it is missing (`name: late` or
        /// `name: <error>`).
        missing: Vec<String>,
    },
    /// A quorum of zero, or of more members than the graph has.
    #[error("quorum {quorum} is invalid for {members} members: expected 1 to {members}")]
    InvalidQuorum {
        /// The quorum asked for.
        quorum: usize,
        /// Members in the graph.
        members: usize,
    },
    /// A member's [`Split`](crate::Split) cannot be applied to its model, or has an
    /// invalid value; `key` names the manifest key (`devices`, `micro_batches`,
    /// `boundaries`, `split`).
    #[error("member '{member}': `{key}`: {message}")]
    Split {
        /// The member.
        member: String,
        /// The key that is wrong.
        key: &'static str,
        /// What is wrong, expected against given.
        message: String,
    },
    /// A [`FaultPlan`](crate::FaultPlan) names a member the graph does not have.
    #[error("the fault plan names member '{member}', which the graph does not have; members: {}", .members.join(", "))]
    FaultUnknownMember {
        /// The name in the plan.
        member: String,
        /// The graph's members.
        members: Vec<String>,
    },
    /// A member was made to fail by a [`FaultPlan`](crate::FaultPlan).
    #[error("member '{member}' failed by fault injection on run {run}")]
    InjectedFault {
        /// The member.
        member: String,
        /// The run.
        run: u64,
    },
    /// A lost device could not be recreated; its members stay unavailable.
    #[error("device {device} is permanently unavailable: {message}")]
    DeviceUnavailable {
        /// Device description.
        device: String,
        /// Why it could not be recreated.
        message: String,
    },
    /// An input was sent to a pipeline after it was closed.
    #[error("the pipeline is closed: it takes no more inputs")]
    PipelineClosed,
    /// A value given as text (a command-line flag, a tile or fault specification, a
    /// workload name) is not one that is understood.
    #[error("invalid {what} '{value}': expected {expected}")]
    InvalidValue {
        /// What the value was for (a flag such as `--tile`, or `workload`).
        what: &'static str,
        /// The value that was given (at most 200 characters of it).
        value: String,
        /// What is understood.
        expected: &'static str,
    },
    /// A device worker stopped (it panicked or its thread ended) before answering.
    #[error("the worker of device {device} stopped before answering: {message}")]
    WorkerFailed {
        /// Device description.
        device: String,
        /// What is known about why.
        message: String,
    },
    /// A file to be read is not a regular file (or a symbolic link to one): a
    /// directory, a device node, a fifo or a socket.
    #[error("{path}: is a {kind}, not a regular file")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is: `directory`, `character device`, `block device`, `fifo`,
        /// `socket`.
        kind: &'static str,
    },
    /// A file is larger than the crate reads of its kind: a manifest or an autotune
    /// cache holds at most 1 MiB.
    #[error("{path}: the file has {size} bytes, more than the limit of {limit} bytes")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        size: u64,
        /// The most bytes read of such a file.
        limit: u64,
    },
    /// A file is larger than this process can allocate to read it.
    #[error("{path}: cannot allocate the {bytes} bytes to read the file")]
    ReadAllocation {
        /// The file.
        path: PathBuf,
        /// Its length.
        bytes: u64,
    },
    /// A safetensors header names one tensor twice.
    #[error("{path}: tensor '{tensor}' is named twice in the safetensors header")]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name (at most 200 characters of it).
        tensor: String,
    },
    /// A safetensors tensor's data offsets span a different number of bytes than its
    /// dtype and shape need.
    #[error("{path}: tensor '{tensor}' of dtype {dtype} and shape {shape:?} needs {expected} bytes; its data offsets span {got}")]
    TensorByteLength {
        /// The file.
        path: PathBuf,
        /// The tensor's name (at most 200 characters of it).
        tensor: String,
        /// Its dtype, as the header names it.
        dtype: String,
        /// Its shape.
        shape: Vec<u64>,
        /// The bytes dtype and shape need.
        expected: u64,
        /// The bytes between its data offsets.
        got: u64,
    },
    /// A setting only an adapter honours (a tile, a coop shape, a sweep, the autotune,
    /// device timing) was asked for while members run on the CPU: refused rather than
    /// reported as if it had run.
    #[error("{asked} needs an adapter, but members {} run on the CPU (placement {placement})", .members.join(", "))]
    NeedsAdapter {
        /// What was asked for.
        asked: String,
        /// The members on the CPU.
        members: Vec<String>,
        /// The placement that put them there.
        placement: String,
    },
    /// A path given as an output is one no write may replace: a symbolic link, a
    /// device node, a fifo, a socket, a folder, or one of the run's own inputs.
    #[error("{path}: refused as an output: {what}; nothing was written")]
    OutputRefused {
        /// The output.
        path: PathBuf,
        /// What it is.
        what: String,
    },
    /// A training data set is not usable as given: a shape, the kind of targets for the
    /// task, the number of classes.
    #[error("training data '{key}': expected {expected}, got {got}")]
    TrainData {
        /// Which part of the data (`x`, `y`, `validation_fraction`, …).
        key: &'static str,
        /// What would have been valid.
        expected: String,
        /// What was given.
        got: String,
    },
    /// The features and the targets of a training data set have different numbers of
    /// rows.
    #[error("training data: x has {x} rows but y has {y}; they must be equal")]
    DataRows {
        /// Rows of the features.
        x: usize,
        /// Rows of the targets.
        y: usize,
    },
    /// A feature or target value of a training data set is NaN or infinite.
    #[error("training data '{key}' has {value} at {index:?}: values must be finite")]
    NonFiniteData {
        /// `x` or `y`.
        key: &'static str,
        /// The value's position, `[row, column]`.
        index: Vec<usize>,
        /// The value.
        value: f32,
    },
    /// A hyperparameter is outside its range.
    #[error("hyperparameter '{field}': expected {expected}, got {got}")]
    InvalidHyper {
        /// The field of [`Hyper`](crate::train::Hyper) (`hidden[1]`, `batch_size`,
        /// `optimizer.beta1`, …).
        field: &'static str,
        /// The range it must be in.
        expected: &'static str,
        /// The value that was given.
        got: String,
    },
    /// A training batch names a row the training split does not have.
    #[error("training row {row} does not exist: the training split has {rows} rows")]
    TrainRow {
        /// The row asked for.
        row: usize,
        /// Rows of the training split.
        rows: usize,
    },
    /// The training loss became NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}: the {what} loss is {loss}; lower the learning rate"
    )]
    TrainingDiverged {
        /// The epoch (1-based).
        epoch: usize,
        /// `training` or `validation`.
        what: &'static str,
        /// The loss.
        loss: f64,
    },
    /// Training was stopped by its caller (a callback asked to stop).
    #[error("training was interrupted after epoch {epoch}")]
    TrainingInterrupted {
        /// The last epoch run (1-based).
        epoch: usize,
    },
    /// A placement cannot train (yet): no engine runs there.
    #[error("training on placement {placement} is not supported: {reason}")]
    TrainingUnsupported {
        /// The placement asked for.
        placement: String,
        /// Why.
        reason: String,
    },
    // Training studies (`train::study`): these variants together.
    /// A study file, or one trial's parameters, could not be parsed, has an invalid
    /// value, or does not fit the data or the output folder it is used with.
    #[error("{path}: `{key}`: {message}")]
    Study {
        /// The study file (or the trial's parameters file).
        path: PathBuf,
        /// The key, with its section (`space.learning_rate`, `data.y`).
        key: String,
        /// What is wrong: what was expected, what was given.
        message: String,
    },
    /// A study stopped (an interrupt, or its progress callback asked) before every
    /// trial had run. Finished trials keep their records and weights.
    #[error("the study stopped after {finished} of {trials} trials; their records and weights are kept in {}: run the same command again to resume", .out.display())]
    StudyStopped {
        /// Trials recorded (finished or failed), this run and earlier ones.
        finished: usize,
        /// Trials in the study.
        trials: usize,
        /// The study's output folder.
        out: PathBuf,
    },
    /// No trial of a study finished: there is no ensemble to form.
    #[error("no trial of the study finished ({failed} failed; their errors are in {})", .records.display())]
    NoFinishedTrial {
        /// Trials that failed.
        failed: usize,
        /// The study's records (`trials.jsonl`).
        records: PathBuf,
    },
}

impl Error {
    /// [`Error::InvalidValue`], quoting at most 200 characters of `value`.
    pub(crate) fn invalid(what: &'static str, value: &str, expected: &'static str) -> Self {
        Error::InvalidValue {
            what,
            value: value.chars().take(200).collect(),
            expected,
        }
    }
}

/// The most characters of user input (a value, a name, a line of a file) an error
/// message quotes.
pub(crate) const QUOTE_LIMIT: usize = 200;

/// `text` as an error quotes it: whole when it has at most [`QUOTE_LIMIT`] characters,
/// else its first ones, an ellipsis and its length.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        None => text.to_string(),
        Some((end, _)) => format!(
            "{}… ({} characters in all)",
            &text[..end],
            text.chars().count()
        ),
    }
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join("; ")
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

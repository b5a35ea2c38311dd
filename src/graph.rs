//! The graph: one input node, the member networks with their placements, and one
//! aggregate node that waits for every member.

use std::collections::HashSet;
use std::sync::Arc;

use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::placement::Placement;
use crate::split::Split;

/// One member of the ensemble: a named model pinned to a device.
#[derive(Clone, Debug)]
pub struct Member {
    pub(crate) name: String,
    pub(crate) model: Arc<Model>,
    pub(crate) placement: Placement,
    /// Set for a member split across several devices (its `placement` is then the
    /// first of them).
    pub(crate) split: Option<Split>,
}

impl Member {
    /// The member's name (unique within its graph).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's network.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Where the member was asked to run (for a split member, its first device).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// How the member is split across devices, for a member added with
    /// [`GraphBuilder::split_member`].
    pub fn split(&self) -> Option<&Split> {
        self.split.as_ref()
    }
}

/// A validated ensemble graph, ready to be compiled into a [`Session`](crate::Session).
///
/// Built with [`Graph::builder`]; every check (widths, names, aggregate weights) has
/// passed by the time a `Graph` exists.
#[derive(Clone, Debug)]
pub struct Graph {
    pub(crate) input_width: usize,
    pub(crate) output_width: usize,
    pub(crate) members: Vec<Member>,
    pub(crate) aggregate: Aggregate,
    pub(crate) weights: Vec<f32>,
}

impl Graph {
    /// Starts a graph whose input node takes rows of `input_width` features.
    pub fn builder(input_width: usize) -> GraphBuilder {
        GraphBuilder {
            input_width,
            members: Vec::new(),
            aggregate: Aggregate::Mean,
        }
    }

    /// Features per input row.
    pub fn input_width(&self) -> usize {
        self.input_width
    }

    /// Values per output row (every member's output width).
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    /// The members, in the order they were added.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The aggregate node's rule.
    pub fn aggregate(&self) -> &Aggregate {
        &self.aggregate
    }
}

/// The longest member name a graph takes, in characters.
const MAX_NAME: usize = 200;

/// Builds a [`Graph`]; [`GraphBuilder::build`] checks everything at once.
#[derive(Clone, Debug)]
#[must_use]
pub struct GraphBuilder {
    input_width: usize,
    members: Vec<Member>,
    aggregate: Aggregate,
}

impl GraphBuilder {
    /// Adds a member network pinned to `placement`.
    pub fn member(mut self, name: impl Into<String>, model: Model, placement: Placement) -> Self {
        self.members.push(Member {
            name: name.into(),
            model: Arc::new(model),
            placement,
            split: None,
        });
        self
    }

    /// Adds a member network split across several devices (model parallelism): by
    /// layers or by columns, as [`Split`] describes. It is one member of the graph for
    /// the aggregate, deadlines, quorum and reports.
    pub fn split_member(mut self, name: impl Into<String>, model: Model, split: Split) -> Self {
        self.members.push(Member {
            name: name.into(),
            model: Arc::new(model),
            placement: split.devices().first().cloned().unwrap_or_default(),
            split: Some(split),
        });
        self
    }

    /// Sets the aggregate node's rule (the default is [`Aggregate::Mean`]).
    pub fn aggregate(mut self, aggregate: Aggregate) -> Self {
        self.aggregate = aggregate;
        self
    }

    /// Checks the graph: at least one member, unique non-empty names of at most 200
    /// characters ([`Error::InvalidValue`] otherwise), every member takes the
    /// input width, all members agree on the output width, aggregate weights valid,
    /// every split fits its member's model ([`Error::Split`]), a stack's blender takes
    /// `members × output_width` inputs and gives `output_width` outputs
    /// ([`Error::BlenderWidth`]).
    pub fn build(self) -> Result<Graph> {
        if self.input_width == 0 {
            return Err(Error::ZeroInputWidth);
        }
        let first = self.members.first().ok_or(Error::NoMembers)?;
        let output_width = first.model.out_features();
        let mut names = HashSet::new();
        for m in &self.members {
            if m.name.is_empty() {
                return Err(Error::EmptyMemberName);
            }
            if m.name.chars().count() > MAX_NAME {
                // Errors, reports and metrics name members: a name is short.
                return Err(Error::invalid(
                    "member name",
                    &m.name,
                    "a name of at most 200 characters",
                ));
            }
            if !names.insert(m.name.as_str()) {
                return Err(Error::DuplicateMember {
                    name: m.name.clone(),
                });
            }
            if m.model.in_features() != self.input_width {
                return Err(Error::MemberInputWidth {
                    member: m.name.clone(),
                    expected: self.input_width,
                    got: m.model.in_features(),
                });
            }
            if let Some(split) = &m.split {
                split.check(&m.name, &m.model)?;
            }
            if m.model.out_features() != output_width {
                return Err(Error::MemberOutputWidth {
                    member: m.name.clone(),
                    first: first.name.clone(),
                    expected: output_width,
                    got: m.model.out_features(),
                });
            }
        }
        if let Some(blender) = self.aggregate.blender() {
            let members = self.members.len();
            let width = members
                .checked_mul(output_width)
                .ok_or(Error::ShapeTooLarge {
                    shape: vec![members, output_width],
                })?;
            if blender.in_features() != width {
                return Err(Error::BlenderWidth {
                    what: "input width",
                    expected: width,
                    got: blender.in_features(),
                    reason: format!(
                        "{members} members × {output_width} outputs, side by side in member order"
                    ),
                });
            }
            if blender.out_features() != output_width {
                return Err(Error::BlenderWidth {
                    what: "output width",
                    expected: output_width,
                    got: blender.out_features(),
                    reason: "the members' output width".to_string(),
                });
            }
        }
        let weights = self.aggregate.member_weights(self.members.len())?;
        Ok(Graph {
            input_width: self.input_width,
            output_width,
            members: self.members,
            aggregate: self.aggregate,
            weights,
        })
    }
}

//! Sizes owns the sink's estimates of the memory a buffered row holds, by
//! which the queue and the pending rows are kept within the budget.

use crate::event::{DeadLetter, Prepared, Record};

/// The memory a prepared message holds, for the budget of the queue it waits
/// in: counted as the buffer counts it.
pub fn prepared_size(p: &Prepared) -> usize {
    match p {
        Prepared::Record(r) => record_size(r),
        Prepared::DeadLetter(d) => dead_letter_size(d),
        Prepared::Consumed(_) => std::mem::size_of::<Prepared>(),
    }
}

pub(super) fn dead_letter_size(d: &DeadLetter) -> usize {
    d.raw.len() + d.detail.len() + 128
}

/// The memory a buffered record holds, for the budget: the struct twice (the
/// `Vec` it sits in may have doubled) plus every string's heap. An estimate
/// that runs low is memory over budget, so it counts generously.
pub(super) fn record_size(r: &Record) -> usize {
    let e = &r.event;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
    let output = e
        .output
        .as_ref()
        .map_or(0, |o| o.sha256.capacity() + opt(&o.preview));
    let approval = e
        .approval
        .as_ref()
        .map_or(0, |a| opt(&a.id) + opt(&a.approver));
    let attributes: usize = e
        .attributes
        .iter()
        .map(|(k, v)| k.capacity() + v.capacity() + 48)
        .sum();
    2 * std::mem::size_of::<Record>()
        + e.event_id.capacity()
        + e.tenant.capacity()
        + e.agent_id.capacity()
        + e.environment.capacity()
        + e.tool.capacity()
        + [
            &e.actor,
            &e.workflow_id,
            &e.tool_call_id,
            &e.tool_type,
            &e.agent_version,
            &e.mcp_server,
            &e.mcp_server_version,
            &e.credential_id,
            &e.error_type,
            &r.input_json,
            &r.attributes_json,
        ]
        .into_iter()
        .map(opt)
        .sum::<usize>()
        + output
        + approval
        + attributes
        + r.redactions
            .iter()
            .map(|s| s.capacity() + 24)
            .sum::<usize>()
}

//! Manifests on disk to a plan: the one seam where planning meets the disk. `plan`, `apply`
//! and the benchmarks go through it; the daemon, which keeps a load between reconciles, calls
//! the same steps itself ([`crate::manifest::load`], [`crate::hold::check`],
//! [`crate::plan::Plan::for_manifests`]).

use std::collections::HashMap;

use crate::contact::ListKey;
use crate::manifest::Manifests;
use crate::plan::{ListRecords, Plan, PlanOptions};
use crate::store::Baseline;

/// Loads the manifests under `path`, joins to its policies the contacts webhook events fed
/// them (`events`, [`crate::feed::join_event_contacts`] with a store), holds the policies
/// the forget threshold stops (from `baselines`, what the store keeps of each policy),
/// builds the desired state and plans it, with `records` telling what the store remembers
/// of each list. A store that cannot be read fails the plan: planning its contacts as new
/// would re-send confirmed work.
pub fn load_and_plan<E: Send>(
    path: &std::path::Path,
    options: PlanOptions,
    baselines: &HashMap<String, Baseline>,
    events: impl FnOnce(&mut Manifests) -> Result<(), E>,
    records: impl Fn(&ListKey) -> Result<ListRecords, E> + Sync,
) -> Result<(Manifests, Plan), E> {
    let mut manifests = crate::manifest::load(path);
    crate::account::resolve(&mut manifests, &options.accounts);
    events(&mut manifests)?;
    let plan = Plan::for_manifests(&manifests, baselines, records, options)?;
    Ok((manifests, plan))
}

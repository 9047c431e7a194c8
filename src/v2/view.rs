//! A gateway job as the contract's `Job` object: status, progress, outputs, error, links.

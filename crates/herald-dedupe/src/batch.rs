//! Batch claims: answer repeated keys of one batch from their first occurrence.

use std::collections::HashMap;

use herald_core::dedupe::Claim;

/// The distinct keys of `keys` in first-seen order, and for each position of `keys` the
/// index of its key among them and whether it is the first occurrence.
pub(crate) fn distinct(keys: &[String]) -> (Vec<&str>, Vec<(usize, bool)>) {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    let mut unique = Vec::with_capacity(keys.len());
    let slots = keys
        .iter()
        .map(|k| match index.get(k.as_str()) {
            Some(&i) => (i, false),
            None => {
                index.insert(k.as_str(), unique.len());
                unique.push(k.as_str());
                (unique.len() - 1, true)
            }
        })
        .collect();
    (unique, slots)
}

/// One answer per position: the first occurrence gets its key's answer; a repeat is
/// `InProgress` when the first got the key (the batch holds it), else the same answer.
pub(crate) fn expand(slots: &[(usize, bool)], answers: &[Claim]) -> Vec<Claim> {
    slots
        .iter()
        .map(|&(i, first)| match (&answers[i], first) {
            (c, true) => c.clone(),
            (Claim::New(_), false) => Claim::InProgress,
            (c, false) => c.clone(),
        })
        .collect()
}

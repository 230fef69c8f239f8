//! One lookup of the Service table (by cluster IP and port, or by host name and port), kept
//! right as Services come and go one by one.
//!
//! Two Services may claim one key for a while: a cluster IP handed to a new Service before
//! the old one's removal reached the control plane, or one host name listed by both. The
//! claim of the Service last in `(namespace, name)` order answers, which is what compiling
//! the view in its order (each claim overwriting the one before) has always meant. The
//! other claims are kept aside, so that when the answering Service leaves or lets the key
//! go the next in line takes it over, exactly as a rebuild from the whole view would: the
//! table never depends on the order in which updates arrived.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use super::{ServiceState, Target};

#[derive(Debug, Clone)]
pub(super) struct Index<K> {
    answers: HashMap<K, Arc<Target>>,
    /// The claims that lost, by key: empty unless Services collide.
    waiting: HashMap<K, Vec<Arc<Target>>>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index {
            answers: HashMap::new(),
            waiting: HashMap::new(),
        }
    }
}

fn order(target: &Target) -> (&str, &str) {
    (&target.service.namespace, &target.service.name)
}

impl<K: Hash + Eq + Clone> Index<K> {
    pub(super) fn get<Q>(&self, key: &Q) -> Option<&Arc<Target>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.answers.get(key)
    }

    /// Adds `target`'s claim on `key`. A Service claims each key once (the table dedups its
    /// cluster IPs, host names and ports); a second claim of its own replaces the first.
    pub(super) fn claim(&mut self, key: K, target: &Arc<Target>) {
        match self.answers.entry(key) {
            Entry::Vacant(vacant) => {
                vacant.insert(target.clone());
            }
            Entry::Occupied(mut held) => {
                let loser = match order(held.get()).cmp(&order(target)) {
                    std::cmp::Ordering::Greater => target.clone(),
                    std::cmp::Ordering::Less => held.insert(target.clone()),
                    std::cmp::Ordering::Equal => {
                        held.insert(target.clone());
                        return;
                    }
                };
                let key = held.key().clone();
                self.waiting.entry(key).or_default().push(loser);
            }
        }
    }

    /// Takes back `service`'s claim on `key`, if it has one; the next in line answers.
    pub(super) fn release(&mut self, key: &K, service: &Arc<ServiceState>) {
        let answering = self
            .answers
            .get(key)
            .is_some_and(|t| Arc::ptr_eq(&t.service, service));
        let Some(waiting) = self.waiting.get_mut(key) else {
            if answering {
                self.answers.remove(key);
            }
            return;
        };
        if answering {
            let next =
                (0..waiting.len()).max_by(|&a, &b| order(&waiting[a]).cmp(&order(&waiting[b])));
            match next {
                Some(next) => {
                    let next = waiting.swap_remove(next);
                    self.answers.insert(key.clone(), next);
                }
                None => {
                    self.answers.remove(key);
                }
            }
        } else {
            waiting.retain(|t| !Arc::ptr_eq(&t.service, service));
        }
        if waiting.is_empty() {
            self.waiting.remove(key);
        }
    }

    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.values().map(Vec::len).sum()
    }
}

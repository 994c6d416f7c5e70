//! The offload manager's bookkeeping on the host backend: budget, in-use protection,
//! pinning, prefetch, the two policies, and a randomized stress test whose invariants are
//! checked after every step.

use wmap::offload::{HostBackend, Manager, Policy};

/// `n` groups of `bytes` each, every group filled with its own pattern.
fn manager(n: usize, bytes: usize, budget_groups: u64, policy: Policy) -> Manager<HostBackend> {
    let groups: Vec<(String, usize)> = (0..n)
        .map(|i| (format!("layer=0/expert={i}"), bytes))
        .collect();
    let mut m = Manager::new(
        HostBackend::default(),
        &groups,
        budget_groups * bytes as u64,
        policy,
    );
    for g in 0..n {
        for (k, b) in m.host_mut(g).unwrap().iter_mut().enumerate() {
            *b = (g * 31 + k) as u8;
        }
    }
    m
}

fn check_invariants(m: &Manager<HostBackend>, bytes: usize) {
    assert!(
        m.device_bytes() <= m.budget(),
        "over budget: {} > {}",
        m.device_bytes(),
        m.budget()
    );
    for g in 0..m.group_count() {
        if m.users(g) > 0 || m.is_pinned(g) {
            assert!(
                m.is_resident(g),
                "group {g} in use or pinned but not resident"
            );
        }
        if let Some(buf) = m.buffer(g) {
            assert_eq!(buf.len(), bytes);
            assert!(
                buf.iter()
                    .enumerate()
                    .all(|(k, &b)| b == (g * 31 + k) as u8),
                "group {g}: device copy differs from host"
            );
        }
    }
}

/// A cyclic sweep over more groups than fit: LRU always evicts the group needed next.
#[test]
fn lru_thrashes_on_a_cyclic_sweep_and_order_aware_does_not() {
    let (n, cap) = (8, 6);
    let mut rates = Vec::new();
    for policy in [Policy::Lru, Policy::OrderAware] {
        let mut m = manager(n, 64, cap, policy);
        for _pass in 0..10 {
            for g in 0..n {
                m.acquire(g).unwrap();
                m.release(g);
                check_invariants(&m, 64);
            }
        }
        let s = &m.stats;
        rates.push(s.hits as f64 / (s.hits + s.misses) as f64);
    }
    assert_eq!(rates[0], 0.0, "LRU: every access misses");
    assert!(rates[1] > 0.6, "order-aware hit rate {}", rates[1]);
}

/// The same sweep with each group read twice back to back (an expert's two tensors): the
/// first pass records each group once, so order-aware keeps its advantage.
#[test]
fn back_to_back_reads_of_a_group_are_one_use_in_the_recorded_order() {
    let (n, cap) = (8, 6);
    let mut m = manager(n, 64, cap, Policy::OrderAware);
    for _pass in 0..10 {
        for g in 0..n {
            for _tensor in 0..2 {
                m.acquire(g).unwrap();
                m.release(g);
                check_invariants(&m, 64);
            }
        }
    }
    let s = &m.stats;
    let first_reads = (s.hits + s.misses) / 2;
    assert!(
        s.misses * 10 < first_reads * 4,
        "order-aware with paired reads: {} misses in {first_reads} group uses",
        s.misses
    );
}

#[test]
fn a_group_in_use_is_never_evicted() {
    let mut m = manager(4, 100, 2, Policy::Lru);
    m.acquire(0).unwrap();
    m.acquire(1).unwrap();
    let err = m.acquire(2).unwrap_err();
    assert_eq!(
        err,
        wmap::offload::Error::DoesNotFit {
            group: "layer=0/expert=2".into(),
            bytes: 100,
            budget: 200
        }
    );
    assert_eq!(wmap::diag::Diagnostic::from(err).code.as_str(), "E0701");
    assert!(m.is_resident(0) && m.is_resident(1));
    m.release(0);
    m.acquire(2).unwrap();
    assert!(!m.is_resident(0), "the released group made room");
    assert!(m.is_resident(1));
    check_invariants(&m, 100);
}

#[test]
fn pinned_groups_stay_and_count_against_the_budget() {
    let mut m = manager(5, 10, 3, Policy::Lru);
    m.pin(4).unwrap();
    for pass in 0..3 {
        for g in 0..4 {
            m.acquire(g).unwrap();
            m.release(g);
            check_invariants(&m, 10);
            assert!(m.is_resident(4), "pass {pass}: pinned group evicted");
        }
    }
    assert!(!m.unload(4).unwrap(), "pinned groups do not unload");
}

#[test]
fn prefetch_never_exceeds_the_budget_and_a_group_larger_than_it_is_refused() {
    let mut m = manager(6, 10, 2, Policy::Lru);
    assert!(m.prefetch(0).unwrap());
    assert!(m.prefetch(1).unwrap());
    assert!(!m.prefetch(2).unwrap(), "LRU prefetch does not evict");
    check_invariants(&m, 10);
    let big = Manager::new(
        HostBackend::default(),
        &[("big".to_string(), 100)],
        50,
        Policy::Lru,
    );
    let mut big = big;
    assert_eq!(
        big.acquire(0).err(),
        Some(wmap::offload::Error::DoesNotFit {
            group: "big".into(),
            bytes: 100,
            budget: 50
        })
    );
}

/// Thousands of random operations; the invariants hold after each.
#[test]
fn random_operations_keep_every_invariant() {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as usize
    };
    for policy in [Policy::Lru, Policy::OrderAware] {
        let n = 12;
        let mut m = manager(n, 32, 5, policy);
        let mut held: Vec<usize> = Vec::new();
        for step in 0..5000 {
            match next(6) {
                0 | 1 => {
                    let g = next(n);
                    match m.acquire(g) {
                        Ok(_) => held.push(g),
                        // Only allowed when the budget is full of groups in use.
                        Err(_) => {
                            let mut distinct = held.clone();
                            distinct.sort_unstable();
                            distinct.dedup();
                            assert!(
                                distinct.len() >= 5,
                                "step {step}: refused with {} groups held",
                                distinct.len()
                            );
                        }
                    }
                }
                2 if !held.is_empty() => {
                    let g = held.swap_remove(next(held.len()));
                    m.release(g);
                }
                3 => {
                    let _ = m.prefetch(next(n)).unwrap();
                }
                4 => {
                    let g = next(n);
                    let in_use = held.contains(&g);
                    let dropped = m.unload(g).unwrap();
                    assert!(!(in_use && dropped), "step {step}: unloaded a group in use");
                }
                _ => m.poll(),
            }
            check_invariants(&m, 32);
        }
        assert!(m.stats.hits + m.stats.misses > 1000);
    }
}

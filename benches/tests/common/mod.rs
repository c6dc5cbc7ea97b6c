//! What the counting-allocator tests (`alloc.rs`, `alloc_ranked.rs`, each
//! its own test binary) share.

use vitrine_core::Decision;

/// The heap blocks a decision owns: each allocation the call may make.
pub fn owned_blocks(d: &Decision<'_>) -> u64 {
    let block = |capacity: usize| u64::from(capacity > 0);
    let mut n = block(d.items.capacity()) + block(d.held_out.capacity());
    if let Some(e) = &d.explanation {
        n += block(e.audiences.capacity()) + block(e.steps.capacity());
        n += e.audiences.iter().map(|a| block(a.capacity())).sum::<u64>();
        n += e.steps.iter().map(|s| block(s.entry.capacity())).sum::<u64>();
    }
    n
}

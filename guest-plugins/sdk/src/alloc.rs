//! The global allocator (feature `arena-allocator`, on by default).
//!
//! Rust's default wasm allocator (dlmalloc) takes every heap page from `memory.grow`, so each
//! fresh sandbox grows its memory at the first allocation, and the host has to change the page
//! protection of the memory slot twice per evaluation (grow, then reset): two `mprotect` calls
//! and a TLB shootdown, most of the cost of a fresh instance. Here [talc](https://docs.rs/talc)
//! allocates from a static arena that is part of the module's initial memory (untouched pages
//! cost nothing: they are copy-on-write zero pages), claimed from the bottom in 64 KiB steps so
//! that the pages an evaluation dirties sit together right after the stack and data, inside
//! the span the host keeps resident; it only grows memory beyond the arena.
//!
//! A plugin that depends on the SDK with the feature on gets it; nothing to write. On non-wasm
//! targets (the rules' unit tests) this module is empty and the system allocator is used.

#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[allow(
    unsafe_code,
    reason = "an allocator hands out raw memory; every unsafe block says why it is sound"
)]
mod wasm {
    use core::alloc::Layout;
    use core::arch::wasm32::memory_grow;
    use core::mem::MaybeUninit;

    use talc::base::Talc;
    use talc::base::binning::Binning;
    use talc::cell::TalcSyncCell;
    use talc::source::Source;
    use talc::wasm::WasmBinning;

    /// Bytes of the static arena: enough for every default plugin's settings and requests.
    const ARENA_BYTES: usize = 1024 * 1024;
    const PAGE: usize = 64 * 1024;

    static mut ARENA: [MaybeUninit<u8>; ARENA_BYTES] = [MaybeUninit::uninit(); ARENA_BYTES];

    /// First the arena, claimed from its bottom in 64 KiB steps (so an evaluation dirties only
    /// the pages it uses, next to the stack and data), then `memory.grow`.
    #[derive(Debug)]
    pub(crate) struct ArenaThenGrow {
        /// Bytes of the arena claimed so far.
        claimed: usize,
    }

    /// Room for an allocation of `layout`, its alignment and talc's chunk headers, in pages.
    fn pages_for(layout: Layout) -> usize {
        (layout.size() + layout.align() + 64).div_ceil(PAGE)
    }

    // SAFETY: `acquire` only hands talc memory it owns (parts of the static arena, each claimed
    // once, or pages just added by `memory.grow`) and never allocates.
    unsafe impl Source for ArenaThenGrow {
        fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
            let want = pages_for(layout) * PAGE;
            let left = ARENA_BYTES - talc.source.claimed;
            if want <= left {
                // SAFETY: this part of the arena was never claimed, and the arena is only ever
                // reached through this allocator.
                let base = unsafe { (&raw mut ARENA).cast::<u8>().add(talc.source.claimed) };
                talc.source.claimed += want;
                // SAFETY: `base..base + want` is that part of the arena, now marked claimed, so
                // talc is its only user from here on.
                if unsafe { talc.claim(base, want) }.is_some() {
                    return Ok(());
                }
            }
            let pages = pages_for(layout);
            let previous = memory_grow(0, pages);
            if previous == usize::MAX {
                return Err(());
            }
            // SAFETY: the pages were just added to linear memory and nothing else uses them.
            let claimed = unsafe { talc.claim((previous * PAGE) as *mut u8, pages * PAGE) };
            claimed.map(|_| ()).ok_or(())
        }
    }

    #[global_allocator]
    static ALLOCATOR: TalcSyncCell<ArenaThenGrow, WasmBinning> =
        TalcSyncCell::new_wasm(ArenaThenGrow { claimed: 0 });
}

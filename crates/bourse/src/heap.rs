//! The global allocator: mimalloc, called the way its size classes want.
//!
//! mimalloc's thread-local heaps avoid the lock contention glibc malloc has when memory
//! allocated on one worker is freed on another. It is called directly rather than through the
//! `mimalloc` crate, whose `GlobalAlloc` sends every request through `mi_malloc_aligned`: in
//! mimalloc v3 that over-allocates any block above 1 KiB whose size class is not a power of
//! two (a request body, a hyper read buffer, a response), through two slow functions
//! (docs/decisions.md has the measurement).
//!
//! So: when the alignment is at most 16 and the size a multiple of it, plain
//! `mi_malloc`/`mi_zalloc`/`mi_realloc` already give that alignment (mimalloc's size
//! classes are multiples of 8, of 16 above 16 bytes, and a page's first block is 16-aligned),
//! and everything else keeps the aligned calls. The tests below check the alignment of what
//! comes back for every size and alignment the rule covers. `libmimalloc-sys` is pinned to
//! an exact version in Cargo.toml because the rule relies on mimalloc's size classes, and
//! debug builds (tests included) assert the alignment of every block a plain call returns.

use libmimalloc_sys as ffi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc's guaranteed alignment for plain allocations of 16 bytes or more
/// (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator (set in `main.rs`).
pub struct MiMalloc;

/// Whether plain (unaligned) mimalloc calls satisfy `align` for a block of `size` bytes.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && size.is_multiple_of(align)
}

/// `p`, from a plain call for a block that needs `align`, after checking in debug builds that
/// it has that alignment. A release build compiles this to nothing. `extern "C"` so that a
/// failed check aborts the process: a panic must not unwind out of a global allocator.
#[inline(always)]
extern "C" fn checked_plain(p: *mut c_void, align: usize) -> *mut c_void {
    debug_assert!(
        p.addr().is_multiple_of(align),
        "mimalloc returned {p:p} from a plain call for alignment {align}: its size classes no longer give the alignment heap.rs relies on"
    );
    p
}

type Plain = unsafe extern "C" fn(usize) -> *mut c_void;
type Aligned = unsafe extern "C" fn(usize, usize) -> *mut c_void;

/// A new block for `layout` from the plain call when that suffices, else the aligned one.
///
/// # Safety
/// As [`GlobalAlloc::alloc`]: `layout` has a non-zero size.
#[inline(always)]
unsafe fn new_block(layout: Layout, plain_call: Plain, aligned_call: Aligned) -> *mut u8 {
    if plain(layout.size(), layout.align()) {
        checked_plain(plain_call(layout.size()), layout.align()).cast()
    } else {
        aligned_call(layout.size(), layout.align()).cast()
    }
}

// SAFETY: every pointer handed out comes from mimalloc and is freed by mimalloc (`mi_free`
// and `mi_realloc*` accept blocks from either the plain or the aligned calls); alignment is
// guaranteed by `plain` or requested explicitly.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        new_block(layout, ffi::mi_malloc, ffi::mi_malloc_aligned)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        new_block(layout, ffi::mi_zalloc, ffi::mi_zalloc_aligned)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        ffi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(new_size, layout.align()) {
            checked_plain(ffi::mi_realloc(ptr.cast::<c_void>(), new_size), layout.align()).cast()
        } else {
            ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: *mut u8, layout: Layout) {
        assert!(!p.is_null(), "{layout:?}: null");
        assert_eq!(p as usize % layout.align(), 0, "{layout:?}: misaligned {p:p}");
    }

    /// Every size up to 5 KiB (small, medium and the over-1-KiB blocks that motivated the
    /// plain path) at every alignment from 1 to 64, through alloc, alloc_zeroed and realloc
    /// (growing and shrinking), with the contents carried over. Several live blocks per size
    /// so the checks see blocks at different positions in their pages.
    #[test]
    fn every_block_is_aligned_zeroed_and_reallocated_intact() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64] {
            for size in (1..=5 * 1024usize).filter(|&s| s < 256 || s.is_multiple_of(8) || s % 24 == 1) {
                let layout = Layout::from_size_align(size, align).unwrap();
                let mut live = Vec::new();
                for k in 0..3u8 {
                    // SAFETY: non-zero size; every block is freed below with its layout.
                    unsafe {
                        let p = a.alloc(layout);
                        check(p, layout);
                        std::ptr::write_bytes(p, k.wrapping_add(size as u8), size);
                        live.push((p, layout));
                        let z = a.alloc_zeroed(layout);
                        check(z, layout);
                        assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                        live.push((z, layout));
                    }
                }
                for (p, layout) in live {
                    // SAFETY: `p` is live with `layout`; every new size is non-zero, and the
                    // block is freed with the layout of its last size.
                    unsafe {
                        let first = *p;
                        let grown = Layout::from_size_align(size * 3 + 5, align).unwrap();
                        let q = a.realloc(p, layout, grown.size());
                        check(q, grown);
                        assert_eq!(*q, first, "{grown:?}: contents lost growing");
                        let shrunk = Layout::from_size_align(size.div_ceil(2), align).unwrap();
                        let r = a.realloc(q, grown, shrunk.size());
                        check(r, shrunk);
                        assert_eq!(*r, first, "{shrunk:?}: contents lost shrinking");
                        a.dealloc(r, shrunk);
                    }
                }
            }
        }
    }

    #[test]
    fn the_plain_rule() {
        assert!(plain(1500, 1) && plain(1504, 8));
        assert!(plain(48, 16));
        assert!(!plain(8, 16), "an 8-byte block may be only 8-aligned");
        assert!(!plain(256, 32), "beyond mimalloc's guaranteed 16");
        assert!(plain(3, 1));
    }
}

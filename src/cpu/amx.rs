//! Intel AMX (Advanced Matrix Extensions): the one module where the engine
//! touches the CPU's tile registers, in inline assembly (Rust's AMX
//! intrinsics, and even `is_x86_feature_detected!("amx-tile")`, are unstable
//! on stable Rust as of 1.95).
//!
//! AMX gives each core eight tile registers of up to 16 rows of 64 bytes
//! and a unit that multiplies them: `tdpbf16ps` adds the products of a
//! `[m, 32]` bf16 tile and a `[32, n]` one (stored as 16 rows of bf16 pairs)
//! to an `[m, n]` f32 tile, `tdpbusd` the same with u8 by i8 in groups of
//! four into i32. Measured here (a Sapphire Rapids-class Xeon, one core):
//! 700-950 GFLOP/s of bf16 products with 2x2 tile blocking, against about
//! 170 for f32 FMA on AVX-512.
//!
//! # Safety argument
//!
//! A tile instruction is only executed through [`Tiles`], which exists only
//! where these hold:
//!
//! 1. the CPU has AMX-TILE, AMX-BF16 and AMX-INT8 (CPUID leaf 7) and the OS
//!    enables the tile state (XCR0 bits 17 and 18), it has AVX-512 F and BW
//!    (the kernels' epilogues are compiled for them), and on Linux the
//!    process was granted the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//!    XFEATURE_XTILEDATA)`, asked once): [`Amx::detect`] is the only way to
//!    an [`Amx`] token, and [`Tiles::new`] takes one. (Without the grant a
//!    tile instruction raises SIGILL; elsewhere than Linux the engine does
//!    not ask and does not use AMX.)
//! 2. the calling thread's tile configuration is the one [`Tiles`] holds:
//!    it loads it on creation and on [`Tiles::configure`], at most one
//!    [`Tiles`] exists per thread at a time (a thread-local flag, checked
//!    on creation), and it is neither `Send` nor `Sync`. The OS saves and
//!    restores the tile state (configuration included) across context
//!    switches and signals.
//! 3. every tile load and store stays inside the slice it is given: the
//!    rows and row bytes of the tile come from the configuration, and
//!    [`Tiles::load`] and [`Tiles::store`] check `offset + (rows - 1) *
//!    stride + row bytes <= len` before the instruction runs.
//!
//! The products themselves read and write only tile registers; a product
//! of tiles whose shapes do not fit raises #UD (SIGILL), never touches
//! memory, and is checked before it runs as well, so a wrong kernel panics.
//! Dropping a [`Tiles`] runs `tilerelease`, so a thread that is done with
//! the tiles no longer carries 8 KiB of tile state through every context
//! switch.
//!
//! The instructions exist on x86-64 only. Elsewhere (the Apple, Android and
//! browser builds) this module compiles without them: no [`Amx`] token can
//! be made there, so no [`Tiles`] either, and `tile_asm!` stands in for
//! the assembly with `unreachable!`.
#![allow(unsafe_code)]
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(unused_unsafe, unused_variables, unreachable_code, dead_code)
)]

use std::cell::Cell;
use std::marker::PhantomData;

/// A tile instruction: `core::arch::asm!` on x86-64; elsewhere never
/// reached (no [`Amx`] token exists there).
#[cfg(target_arch = "x86_64")]
macro_rules! tile_asm {
    ($($asm:tt)*) => {
        core::arch::asm!($($asm)*)
    };
}
#[cfg(not(target_arch = "x86_64"))]
macro_rules! tile_asm {
    ($($asm:tt)*) => {
        unreachable!("AMX tile instructions off x86-64")
    };
}

/// Proof that this process may run the tile instructions (see the module's
/// safety argument).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Amx {
    _private: (),
}

impl Amx {
    /// AMX with bf16 and int8 products, once the OS granted the tile state
    /// to this process (asked on the first call; `None` on refusal, on other
    /// CPUs and on other operating systems than Linux).
    pub(crate) fn detect() -> Option<Amx> {
        static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        GRANTED
            .get_or_init(|| cpu_has_amx() && request_tile_data())
            .then_some(Amx { _private: () })
    }
}

/// CPUID: AMX-BF16 (leaf 7 EDX bit 22), AMX-TILE (24), AMX-INT8 (25),
/// AVX-512 F and BW, and the OS's XSAVE support of the tile state (XCR0
/// bits 17 and 18).
#[cfg(target_arch = "x86_64")]
fn cpu_has_amx() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(0).eax < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let amx = [22, 24, 25].iter().all(|bit| leaf7.edx >> bit & 1 == 1);
    // OSXSAVE: XGETBV may run
    let osxsave = __cpuid(1).ecx >> 27 & 1 == 1;
    // the kernels' epilogues are compiled for AVX-512 (every CPU with AMX
    // so far has it; one without simply does not get the AMX kernels)
    let avx512 = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    amx && avx512 && osxsave && {
        /// XCR0 (XGETBV needs the `xsave` feature, which OSXSAVE implies).
        #[target_feature(enable = "xsave")]
        fn xcr0() -> u64 {
            // SAFETY: `xgetbv(0)` reads XCR0; the CPU has XSAVE and the OS
            // enabled it (OSXSAVE, checked by the caller).
            unsafe { core::arch::x86_64::_xgetbv(0) }
        }
        // SAFETY: OSXSAVE is set, so the CPU has XSAVE (all the target
        // feature asks for).
        let xcr0 = unsafe { xcr0() };
        xcr0 >> 17 & 3 == 3
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx() -> bool {
    false
}

/// Asks Linux for the tile data state (since Linux 5.16): `true` if granted.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes a feature number
    // and changes only what the process may use; a kernel without it fails
    // with EINVAL, and then the engine does not use AMX.
    let status = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    status == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}

/// Rows of a tile at most.
pub(crate) const MAX_ROWS: usize = 16;

/// Bytes of a tile row at most.
pub(crate) const ROW_BYTES: usize = 64;

/// A tile configuration (palette 1): rows and bytes per row of each of the
/// eight tiles; a tile of 0 rows is not configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    bytes: [u8; 64],
}

impl TileConfig {
    /// No tile configured yet.
    pub(crate) const fn new() -> Self {
        let mut bytes = [0; 64];
        bytes[0] = 1; // palette 1
        TileConfig { bytes }
    }

    /// Tile `t` of `rows` rows of `row_bytes` bytes (a multiple of 4).
    pub(crate) const fn tile(mut self, t: usize, rows: usize, row_bytes: usize) -> Self {
        assert!(t < 8 && rows <= MAX_ROWS && row_bytes <= ROW_BYTES && row_bytes.is_multiple_of(4));
        // bytes 16..32: bytes per row, u16 little-endian; 48..56: rows
        self.bytes[16 + 2 * t] = row_bytes as u8;
        self.bytes[48 + t] = rows as u8;
        self
    }

    fn rows(&self, t: u8) -> usize {
        usize::from(self.bytes[48 + usize::from(t)])
    }

    fn row_bytes(&self, t: u8) -> usize {
        usize::from(self.bytes[16 + 2 * usize::from(t)])
    }
}

thread_local! {
    /// Whether a [`Tiles`] exists on this thread.
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// The tile registers of the calling thread, configured; released on drop.
pub(crate) struct Tiles {
    config: TileConfig,
    /// Not `Send` or `Sync`: the configuration is the thread's.
    _thread: PhantomData<*const ()>,
}

impl Tiles {
    /// Loads `config` into this thread's tiles (all zero afterwards).
    ///
    /// # Panics
    /// When this thread already holds a [`Tiles`].
    pub(crate) fn new(_amx: Amx, config: &TileConfig) -> Tiles {
        assert!(
            !CONFIGURED.replace(true),
            "tiles configured twice on one thread"
        );
        let mut tiles = Tiles {
            config: TileConfig::new(),
            _thread: PhantomData,
        };
        tiles.load_config(config);
        tiles
    }

    /// Loads `config` unless it is the one loaded; zeroes every tile when
    /// it loads.
    #[inline]
    pub(crate) fn configure(&mut self, config: &TileConfig) {
        if self.config != *config {
            self.load_config(config);
        }
    }

    fn load_config(&mut self, config: &TileConfig) {
        self.config = *config;
        // SAFETY: the CPU has AMX and the process its tile state (an `Amx`
        // token made this `Tiles`); LDTILECFG reads the 64 bytes of
        // `self.config`, a valid palette-1 configuration (TileConfig's
        // constructors keep rows and row bytes within the palette's limits).
        unsafe {
            tile_asm!(
                "ldtilecfg [{}]",
                in(reg) self.config.bytes.as_ptr(),
                options(nostack, readonly, preserves_flags)
            );
        }
    }

    /// Zeroes tile `T`.
    #[inline(always)]
    pub(crate) fn zero<const T: u8>(&mut self) {
        // SAFETY: registers only; tile `T` is configured (a TILEZERO of an
        // unconfigured tile raises #UD and touches nothing).
        unsafe {
            tile_asm!("tilezero tmm{t}", t = const T, options(nostack, nomem, preserves_flags));
        }
    }

    /// Loads tile `T` from `data`: its rows start at element `offset` and
    /// lie `stride` bytes apart.
    ///
    /// # Panics
    /// When a row would lie outside `data`.
    #[inline(always)]
    pub(crate) fn load<const T: u8, E: bytemuck::Pod>(
        &mut self,
        data: &[E],
        offset: usize,
        stride: usize,
    ) {
        let start = self.check_span(T, size_of_val(data), offset * size_of::<E>(), stride);
        let base = data.as_ptr().cast::<u8>().wrapping_add(start);
        // SAFETY: the tile's rows (rows and bytes per row from the loaded
        // configuration) lie inside `data`, checked above; TILELOADD reads
        // only them.
        unsafe {
            tile_asm!(
                "tileloadd tmm{t}, [{base} + {stride}*1]",
                t = const T,
                base = in(reg) base,
                stride = in(reg) stride,
                options(nostack, readonly, preserves_flags)
            );
        }
    }

    /// Stores tile `T` into `data`, its rows from element `offset`,
    /// `stride` bytes apart.
    ///
    /// # Panics
    /// When a row would lie outside `data`.
    #[inline(always)]
    pub(crate) fn store<const T: u8, E: bytemuck::Pod>(
        &mut self,
        data: &mut [E],
        offset: usize,
        stride: usize,
    ) {
        let start = self.check_span(T, size_of_val(data), offset * size_of::<E>(), stride);
        let base = data.as_mut_ptr().cast::<u8>().wrapping_add(start);
        // SAFETY: the tile's rows lie inside `data`, checked above;
        // TILESTORED writes only them, and `data` is borrowed mutably.
        unsafe {
            tile_asm!(
                "tilestored [{base} + {stride}*1], tmm{t}",
                t = const T,
                base = in(reg) base,
                stride = in(reg) stride,
                options(nostack, preserves_flags)
            );
        }
    }

    /// The byte offset of tile `t`'s first row, after checking that all of
    /// its rows lie within `len` bytes.
    #[inline(always)]
    fn check_span(&self, t: u8, len: usize, start: usize, stride: usize) -> usize {
        let (rows, row_bytes) = (self.config.rows(t), self.config.row_bytes(t));
        assert!(
            rows > 0
                && (rows - 1)
                    .checked_mul(stride)
                    .and_then(|s| s.checked_add(start))
                    .and_then(|s| s.checked_add(row_bytes))
                    .is_some_and(|end| end <= len),
            "tile {t} ({rows} rows of {row_bytes} bytes, {stride} apart) from byte {start} of {len}"
        );
        start
    }

    /// Whether `c += a * b` fits the configured shapes: `c` has `a`'s rows
    /// and `b`'s row bytes, `b` has a row per four bytes of an `a` row.
    #[inline(always)]
    fn check_product(&self, c: u8, a: u8, b: u8) {
        let k = &self.config;
        assert!(
            k.rows(c) == k.rows(a)
                && k.row_bytes(c) == k.row_bytes(b)
                && k.row_bytes(a) == 4 * k.rows(b)
                && k.rows(c) > 0,
            "tile product {c} += {a} * {b} of unfit shapes"
        );
    }

    /// `C += A B` on bf16 pairs into f32 (`tdpbf16ps`): `A` is `[m, 2k]`
    /// bf16, `B` is `k` rows of `n` bf16 pairs, `C` `[m, n]` f32.
    #[inline(always)]
    pub(crate) fn dp_bf16<const C: u8, const A: u8, const B: u8>(&mut self) {
        self.check_product(C, A, B);
        // SAFETY: registers only, on configured tiles of fitting shapes.
        unsafe {
            tile_asm!(
                "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nostack, nomem, preserves_flags)
            );
        }
    }

    /// `C += A B` on bytes into i32 (`tdpbusd`): `A` is `[m, 4k]` u8, `B`
    /// is `k` rows of `n` groups of four i8, `C` `[m, n]` i32.
    #[inline(always)]
    pub(crate) fn dp_u8i8<const C: u8, const A: u8, const B: u8>(&mut self) {
        self.check_product(C, A, B);
        // SAFETY: registers only, on configured tiles of fitting shapes.
        unsafe {
            tile_asm!(
                "tdpbusd tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nostack, nomem, preserves_flags)
            );
        }
    }

    /// `C += A B` on signed bytes into i32 (`tdpbssd`): `A` is `[m, 4k]`
    /// i8, `B` is `k` rows of `n` groups of four i8, `C` `[m, n]` i32.
    #[inline(always)]
    pub(crate) fn dp_i8i8<const C: u8, const A: u8, const B: u8>(&mut self) {
        self.check_product(C, A, B);
        // SAFETY: registers only, on configured tiles of fitting shapes.
        unsafe {
            tile_asm!(
                "tdpbssd tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nostack, nomem, preserves_flags)
            );
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: TILERELEASE returns the tiles to their initial state;
        // registers only.
        unsafe {
            tile_asm!("tilerelease", options(nostack, nomem, preserves_flags));
        }
        CONFIGURED.set(false);
    }
}

/// The configuration of the engine's 2x2 tile blocking for a pair of row
/// tiles of `h0` and `h1` rows (`h1` = 0: one row tile): tiles 0 and 1 the
/// `h0` rows' results against B tiles 6 and 7, tiles 2 and 3 the `h1`
/// rows'; 4 and 5 the A tiles; every row 64 bytes (32 bf16, 64 bytes, 16
/// f32 or i32), B tiles 16 rows.
pub(crate) fn pair_config(h0: usize, h1: usize) -> TileConfig {
    let mut config = TileConfig::new()
        .tile(0, h0, ROW_BYTES)
        .tile(1, h0, ROW_BYTES)
        .tile(4, h0, ROW_BYTES)
        .tile(6, MAX_ROWS, ROW_BYTES)
        .tile(7, MAX_ROWS, ROW_BYTES);
    if h1 > 0 {
        config = config
            .tile(2, h1, ROW_BYTES)
            .tile(3, h1, ROW_BYTES)
            .tile(5, h1, ROW_BYTES);
    }
    config
}

/// The row tiles of `rows` rows as pairs `(first, h0, h1)`: whole tiles of
/// [`MAX_ROWS`] first, the rest in one last pair (`h1` = 0: a single tile),
/// so that every pair but the last has the same configuration.
pub(crate) fn row_pairs(rows: usize) -> impl DoubleEndedIterator<Item = (usize, usize, usize)> {
    let pair = 2 * MAX_ROWS;
    let whole = rows / pair;
    let rest = rows % pair;
    (0..whole)
        .map(move |p| (p * pair, MAX_ROWS, MAX_ROWS))
        .chain((rest > 0).then(|| {
            let h0 = rest.min(MAX_ROWS);
            (whole * pair, h0, rest - h0)
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_pairs_cover_every_row_once() {
        for rows in 0..100 {
            let mut next = 0;
            for (first, h0, h1) in row_pairs(rows) {
                assert_eq!(first, next);
                assert!((1..=MAX_ROWS).contains(&h0) && h1 <= MAX_ROWS);
                assert!(h1 == 0 || h0 == MAX_ROWS);
                next += h0 + h1;
            }
            assert_eq!(next, rows);
        }
    }

    #[test]
    fn tiles_multiply_bf16_and_bytes_or_say_why_not() {
        let Some(amx) = Amx::detect() else {
            eprintln!("SKIPPED: this CPU (or OS) has no AMX");
            return;
        };
        // [3, 32] bf16 ones times 16 pairs of (1, 2) per column: 3 * 16 per
        // pair element... every output 16 * (1 + 2) = 48
        let one = half::bf16::from_f32(1.0).to_bits();
        let two = half::bf16::from_f32(2.0).to_bits();
        let a = vec![one; 3 * 32];
        let b: Vec<u16> = (0..16 * 32)
            .map(|i| if i % 2 == 0 { one } else { two })
            .collect();
        let mut c = vec![0f32; 3 * 16];
        let config = pair_config(3, 0);
        let mut tiles = Tiles::new(amx, &config);
        tiles.zero::<0>();
        tiles.load::<4, u16>(&a, 0, 64);
        tiles.load::<6, u16>(&b, 0, 64);
        tiles.dp_bf16::<0, 4, 6>();
        tiles.store::<0, f32>(&mut c, 0, 64);
        assert!(c.iter().all(|&v| v == 48.0), "{c:?}");
        // bytes: 200 (u8) times -3 (i8), 64 of them per output
        let a = vec![200u8; 2 * 64];
        let b = vec![(-3i8) as u8; 16 * 64];
        let mut c = vec![0i32; 2 * 16];
        tiles.configure(&pair_config(2, 0));
        tiles.load::<4, u8>(&a, 0, 64);
        tiles.load::<6, u8>(&b, 0, 64);
        tiles.dp_u8i8::<0, 4, 6>();
        tiles.store::<0, i32>(&mut c, 0, 64);
        assert!(c.iter().all(|&v| v == -600 * 64), "{c:?}");
        // a tile reaching past its slice is refused before it runs
        let short = vec![0u16; 2 * 32 - 1];
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tiles.load::<4, u16>(&short, 0, 64)
        }));
        assert!(refused.is_err());
        drop(tiles);
        // and a second Tiles on this thread is possible once the first is gone
        drop(Tiles::new(amx, &config));
    }
}

//! Which instructions the CPU engine's matrix products run on: found at run
//! time, or forced ([`KernelChoice`], also `TRM_CPU_KERNEL`) to test and
//! time every path on a CPU that has several.
//!
//! With f32 activations every product runs on f32 FMA (`panels.rs`,
//! `token_panels.rs`, faer), on the widest vectors the CPU has. With
//! matched activations:
//!
//! | weights | AMX | AVX-512 VNNI | AVX-VNNI | AVX2 | otherwise |
//! |---|---|---|---|---|---|
//! | int8: channel SwiGLU | `amx-int8` | `avx512-vnni` | `avx-vnni` | `avx2` | `portable` |
//! | int8: token mixer | int8 on AMX | f32 | f32 | f32 | f32 |
//! | bf16: every block product | `amx-bf16` | f32 | f32 | f32 | f32 |
//!
//! bf16 products only pay on AMX: without it, `vdpbf16ps` runs at about
//! 0.4x f32 FMA here (`int8_panels.rs`). The int8 channel kernels all give
//! the same results bit for bit (exact integer sums, one epilogue).

use super::amx::Amx;
use super::int8_panels::Int8Kernel;
use crate::error::{Result, TrmError};

/// The environment variable that forces a [`KernelChoice`]
/// ([`super::CpuOptions::with_env`]).
pub const KERNEL_ENV: &str = "TRM_CPU_KERNEL";

/// Which instructions the matched-activation products may run on
/// ([`super::CpuOptions::kernels`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelChoice {
    /// The fastest this CPU has.
    #[default]
    Auto,
    /// AMX tiles: bf16 and int8 products.
    Amx,
    /// 512-bit `vpdpbusd` (AVX-512 VNNI) for int8; bf16 on f32 FMA.
    Avx512Vnni,
    /// 256-bit `vpdpbusd` (AVX-VNNI, as on Alder Lake and later without
    /// AVX-512) for int8; bf16 on f32 FMA.
    AvxVnni,
    /// Portable integer code compiled for AVX2 for int8; bf16 on f32 FMA.
    Avx2,
    /// Portable integer code as the crate is compiled (the same results
    /// bit for bit, slower; for tests).
    Portable,
}

impl KernelChoice {
    /// `auto`, `amx`, `avx512-vnni`, `avx-vnni`, `avx2` or `portable`.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelChoice::Auto => "auto",
            KernelChoice::Amx => "amx",
            KernelChoice::Avx512Vnni => "avx512-vnni",
            KernelChoice::AvxVnni => "avx-vnni",
            KernelChoice::Avx2 => "avx2",
            KernelChoice::Portable => "portable",
        }
    }

    /// The kernels for this choice on this CPU: fails when it names
    /// instructions the CPU (or, for AMX, the OS) does not offer.
    pub(super) fn resolve(self) -> Result<Kernels> {
        let amx = Amx::detect();
        let missing = |what: &str| {
            Err(TrmError::Input(format!(
                "CPU kernel `{}`: this CPU {what}",
                self.as_str()
            )))
        };
        let int8 = match self {
            KernelChoice::Auto => {
                return Ok(Kernels {
                    amx,
                    int8: if amx.is_some() {
                        Int8Kernel::Amx
                    } else {
                        Int8Kernel::detect_vector()
                    },
                });
            }
            KernelChoice::Amx => {
                if amx.is_none() {
                    return missing("(or OS) has no AMX tiles");
                }
                Int8Kernel::Amx
            }
            KernelChoice::Avx512Vnni => Int8Kernel::Vnni512,
            KernelChoice::AvxVnni => Int8Kernel::AvxVnni,
            KernelChoice::Avx2 => Int8Kernel::Avx2,
            KernelChoice::Portable => Int8Kernel::Portable,
        };
        if !int8.available() {
            return missing("lacks its instructions");
        }
        Ok(Kernels {
            amx: amx.filter(|_| self == KernelChoice::Amx),
            int8,
        })
    }
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KernelChoice {
    type Err = TrmError;

    fn from_str(s: &str) -> Result<Self> {
        let all = [
            KernelChoice::Auto,
            KernelChoice::Amx,
            KernelChoice::Avx512Vnni,
            KernelChoice::AvxVnni,
            KernelChoice::Avx2,
            KernelChoice::Portable,
        ];
        let wanted = s.trim().to_ascii_lowercase();
        all.into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| {
                TrmError::Input(format!(
                    "unknown CPU kernel `{s}` (expected auto, amx, avx512-vnni, avx-vnni, avx2 or portable)"
                ))
            })
    }
}

/// The kernels an engine's weights are packed for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Kernels {
    /// AMX, where the choice allows it and the CPU has it: bf16 products.
    pub amx: Option<Amx>,
    /// The int8 products' kernel.
    pub int8: Int8Kernel,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_resolve_to_what_the_cpu_has_or_say_why_not() {
        for choice in [
            KernelChoice::Auto,
            KernelChoice::Amx,
            KernelChoice::Avx512Vnni,
            KernelChoice::AvxVnni,
            KernelChoice::Avx2,
            KernelChoice::Portable,
        ] {
            assert_eq!(choice.as_str().parse::<KernelChoice>().unwrap(), choice);
            match choice.resolve() {
                Ok(kernels) => {
                    assert!(kernels.int8.available());
                    assert_eq!(
                        kernels.amx.is_some(),
                        Amx::detect().is_some()
                            && matches!(choice, KernelChoice::Auto | KernelChoice::Amx)
                    );
                }
                Err(e) => {
                    eprintln!("{choice}: {e}");
                    assert!(e.to_string().contains(choice.as_str()));
                }
            }
        }
        assert_eq!(
            KernelChoice::Portable.resolve().unwrap().int8,
            Int8Kernel::Portable
        );
        assert!("avx1024".parse::<KernelChoice>().is_err());
    }
}

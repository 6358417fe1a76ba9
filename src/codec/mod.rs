//! Bit-exact number formats of quantized checkpoints: FP8 E4M3 and NVFP4 (E2M1 elements with
//! E4M3 block scales), matching what NVIDIA ModelOpt 0.47 writes and reads.

pub mod fp8;
pub mod nvfp4;

/// BF16 is the upper half of an f32, so widening is a shift and always exact (NaN payloads
/// included).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// IEEE binary16 to f32; exact for every input, subnormals included.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_widening_is_exact() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        assert_eq!(bf16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(bf16_to_f32(0x0001).to_bits(), 0x0001_0000);
        assert_eq!(bf16_to_f32(0x7f80), f32::INFINITY);
        assert!(bf16_to_f32(0x7fc1).is_nan());
        for b in [0x3f81u16, 0x4049, 0x0080, 0xff7f] {
            assert_eq!(half::bf16::from_bits(b).to_f32(), bf16_to_f32(b));
        }
    }

    #[test]
    fn f16_widening() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        // smallest f16 subnormal
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}

//! Deterministic test data for the kernels' tests and the engine's (not used by the kernels
//! themselves).

/// A small deterministic generator (xorshift), so failures reproduce.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }
    /// Uniform in [-1, 1] in steps of 0.001.
    #[allow(clippy::cast_precision_loss)]
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() % 2001) as f32 / 1000.0 - 1.0
    }
    /// A random f16 bit pattern of a finite value in about ±0.06.
    pub fn f16(&mut self) -> [u8; 2] {
        // Exponent 5..=10 (2^-10..2^-5), random sign and mantissa.
        let exp = 5 + u16::from(self.byte()) % 6;
        let bits = (u16::from(self.byte() & 1) << 15)
            | (exp << 10)
            | (u16::from_le_bytes([self.byte(), self.byte()]) & 0x3ff);
        bits.to_le_bytes()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

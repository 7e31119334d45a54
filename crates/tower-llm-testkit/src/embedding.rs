//! The deterministic vectors the mock's embeddings route answers with.

/// Dimensions of an embedding when the request names none.
pub const DEFAULT_DIMENSIONS: usize = 8;

/// The largest `dimensions` the mock accepts (larger requests answer 400).
pub const MAX_DIMENSIONS: u64 = 4096;

/// The embedding the mock answers for `text` with `dims` dimensions: a unit vector derived
/// from a hash of the text, the same in every process and on every platform, so a test can
/// check that each caller of a batched call got its own input's vector back.
///
/// ```
/// use tower_llm_testkit::embedding_for;
/// let a = embedding_for("hello", 8);
/// assert_eq!(a.len(), 8);
/// assert_eq!(a, embedding_for("hello", 8));
/// assert_ne!(a, embedding_for("hello!", 8));
/// let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
/// assert!((norm - 1.0).abs() < 1e-5);
/// ```
pub fn embedding_for(text: &str, dims: usize) -> Vec<f32> {
    // FNV-1a seeds a splitmix64 stream: tiny, stable, and good enough to tell texts apart.
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let raw: Vec<f32> = (0..dims)
        .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        raw.into_iter().map(|x| x / norm).collect()
    } else {
        raw
    }
}

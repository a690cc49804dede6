//! A small reader for the WAV files the bench takes: RIFF/WAVE, 16-bit PCM, 16 kHz, mono
//! (no resampling, no channel mixing: convert first, e.g. `sox in.wav -r 16000 -c 1 -b 16
//! out.wav`).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("no fmt chunk before the data")]
    NoFormat,
    #[error("no data chunk")]
    NoData,
    #[error(
        "unsupported format: {format} ({channels} ch, {rate} Hz, {bits} bit); need 16-bit PCM, 16000 Hz, mono (convert with: sox IN -r 16000 -c 1 -b 16 OUT.wav)"
    )]
    Unsupported {
        format: String,
        channels: u16,
        rate: u32,
        bits: u16,
    },
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Samples (-1.0..1.0) of a 16-bit PCM 16 kHz mono WAV file's bytes.
pub fn read_wav_16k_mono(bytes: &[u8]) -> Result<Vec<f32>, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut pos = 12;
    let mut format_ok = false;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32_at(bytes, pos + 4).ok_or(WavError::NotWave)? as usize;
        let body_start = pos + 8;
        // Writers streaming to a pipe leave huge sizes: clamp to what is there.
        let body_end = body_start.saturating_add(size).min(bytes.len());
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => {
                let tag = u16_at(body, 0).ok_or(WavError::NoFormat)?;
                let channels = u16_at(body, 2).ok_or(WavError::NoFormat)?;
                let rate = u32_at(body, 4).ok_or(WavError::NoFormat)?;
                let bits = u16_at(body, 14).ok_or(WavError::NoFormat)?;
                // WAVE_FORMAT_EXTENSIBLE: the real tag is the sub-format GUID's first 2 bytes.
                let real_tag = if tag == 0xFFFE {
                    u16_at(body, 24).unwrap_or(0)
                } else {
                    tag
                };
                if real_tag != 1 || channels != 1 || rate != 16_000 || bits != 16 {
                    return Err(WavError::Unsupported {
                        format: if real_tag == 1 {
                            "PCM".into()
                        } else {
                            format!("format tag {real_tag:#x}")
                        },
                        channels,
                        rate,
                        bits,
                    });
                }
                format_ok = true;
            }
            b"data" => {
                if !format_ok {
                    return Err(WavError::NoFormat);
                }
                return Ok(body
                    .chunks_exact(2)
                    .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                    .collect());
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body_start.saturating_add(size).saturating_add(size & 1);
    }
    Err(WavError::NoData)
}

/// The bytes of a 16-bit PCM 16 kHz mono WAV file holding `samples` (for tests and tools).
pub use hearth_engine::audio::wav_16k_mono as write_wav_16k_mono;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejections() {
        let s = [0.0, 0.5, -0.5, 0.25];
        let got = read_wav_16k_mono(&write_wav_16k_mono(&s)).unwrap();
        for (a, b) in s.iter().zip(&got) {
            assert!((a - b).abs() < 1e-4);
        }
        assert_eq!(read_wav_16k_mono(b"garbage"), Err(WavError::NotWave));
        let mut stereo = write_wav_16k_mono(&s);
        stereo[22] = 2;
        assert!(matches!(
            read_wav_16k_mono(&stereo),
            Err(WavError::Unsupported { channels: 2, .. })
        ));
        let mut truncated = write_wav_16k_mono(&s);
        truncated.truncate(44 + 3); // data size says 8, 3 bytes there: one whole sample
        assert_eq!(read_wav_16k_mono(&truncated).unwrap().len(), 1);
    }
}

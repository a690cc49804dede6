//! Writes the log-mel features of a 16 kHz mono WAV file as raw little-endian f32
//! (80 x N, row-major), to compare the front end with a reference implementation:
//! `cargo run -p hearth-stt --example mel_dump -- IN.wav OUT.f32 [FRAMES]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: mel_dump IN.wav OUT.f32 [FRAMES]".into());
    }
    let samples = hearth_stt::wav::read_wav_16k_mono(&std::fs::read(&args[1])?)?;
    let frames = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3000);
    let mel = hearth_stt::mel::MelFrontEnd::new(80).compute(&samples, frames);
    let bytes: Vec<u8> = mel.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args[2], bytes)?;
    Ok(())
}

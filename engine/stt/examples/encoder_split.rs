//! Splits a decode's time between the encoder and the decoder (greedy and beam 5):
//! `cargo run -p hearth-stt --example encoder_split -- MODEL_DIR FILE.wav [RUNS] [int8|float32]`.
//! Run it pinned (`taskset -c 1`) for numbers comparable with `hearth-stt --bench`.

use std::time::Instant;

use ct2rs::sys::{StorageView, Whisper, WhisperOptions};
use ct2rs::{ComputeType, Config, Device};
use hearth_stt::mel::{MelFrontEnd, N_FRAMES};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: encoder_split MODEL_DIR FILE.wav [RUNS]".into());
    }
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let samples = hearth_stt::wav::read_wav_16k_mono(&std::fs::read(&args[2])?)?;
    let config = Config {
        compute_type: match args.get(4).map(String::as_str) {
            Some("float32") => ComputeType::FLOAT32,
            _ => ComputeType::INT8,
        },
        num_threads_per_replica: 1,
        ..Config::default()
    };
    let whisper = Whisper::new(&args[1], config)?;
    let front_end = MelFrontEnd::new(80);
    let prompt = vec![vec!["<|startoftranscript|>", "<|notimestamps|>"]];
    let (mut mel_t, mut enc_t, mut greedy_t, mut beam_t) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs + 1 {
        let t = Instant::now();
        let mut features = front_end.compute(&samples, N_FRAMES);
        mel_t.push(t.elapsed().as_secs_f64());
        let view = StorageView::new(&[1, 80, N_FRAMES], &mut features, Device::CPU)?;
        let t = Instant::now();
        let encoded = whisper.encode(&view, true)?;
        enc_t.push(t.elapsed().as_secs_f64());
        for (beam, times) in [(1, &mut greedy_t), (5, &mut beam_t)] {
            let options = WhisperOptions {
                beam_size: beam,
                return_scores: true,
                return_no_speech_prob: true,
                ..WhisperOptions::default()
            };
            let t = Instant::now();
            // Encoder output in: CTranslate2 skips the encoder (`is_encoded`).
            whisper.generate(&encoded, &prompt, &options)?;
            times.push(t.elapsed().as_secs_f64());
        }
    }
    // The first run warms up.
    for v in [&mut mel_t, &mut enc_t, &mut greedy_t, &mut beam_t] {
        v.remove(0);
    }
    println!(
        "{}: audio {:.2} s, mel {:.1} ms, encoder {:.0} ms, decoder greedy {:.0} ms, decoder beam 5 {:.0} ms",
        args[2],
        samples.len() as f64 / 16_000.0,
        median(mel_t) * 1e3,
        median(enc_t) * 1e3,
        median(greedy_t) * 1e3,
        median(beam_t) * 1e3
    );
    Ok(())
}

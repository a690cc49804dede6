//! `Engine::load` reports bad model directories as errors, never as panics or aborts.

mod common;

use common::TempDir;
use hearth_stt::{Engine, LoadError};

#[test]
fn load_missing_directory_is_an_error() {
    let err = Engine::load("/nonexistent/hearth/whisper-tiny.en", 1).unwrap_err();
    assert!(matches!(err, LoadError::NoDirectory(_)), "{err:?}");
    assert!(err.to_string().contains("install-whisper.sh"), "{err}");
}

#[test]
fn load_file_instead_of_directory_is_an_error() {
    let dir = TempDir::new("notdir");
    let file = dir.path().join("model.bin");
    std::fs::write(&file, b"x").unwrap();
    let err = Engine::load(&file, 1).unwrap_err();
    assert!(matches!(err, LoadError::NotADirectory(_)), "{err:?}");
}

#[test]
fn load_directory_without_model_bin_is_an_error() {
    let dir = TempDir::new("empty");
    let err = Engine::load(dir.path(), 1).unwrap_err();
    assert!(matches!(err, LoadError::NoModelFile(_)), "{err:?}");
}

fn garbage(n: usize) -> Vec<u8> {
    // A fixed xorshift stream: not a CTranslate2 header.
    let mut x: u32 = 0x9E37_79B9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn load_garbage_model_bin_is_an_error_not_a_panic() {
    let dir = TempDir::new("garbage");
    std::fs::write(dir.path().join("model.bin"), garbage(1 << 20)).unwrap();
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    // A vocabulary, so that the failure is CTranslate2's reading of model.bin.
    std::fs::write(
        dir.path().join("vocabulary.txt"),
        b"a\nb\n<|endoftext|>\n<|startoftranscript|>\n<|notimestamps|>\n",
    )
    .unwrap();
    let err = Engine::load(dir.path(), 1).unwrap_err();
    assert!(matches!(err, LoadError::Model { .. }), "{err:?}");
    println!("garbage model.bin: {err}");
}

#[test]
fn load_empty_model_bin_is_an_error() {
    let dir = TempDir::new("emptybin");
    std::fs::write(dir.path().join("model.bin"), b"").unwrap();
    std::fs::write(dir.path().join("vocabulary.txt"), b"<|endoftext|>\n").unwrap();
    let err = Engine::load(dir.path(), 1).unwrap_err();
    assert!(matches!(err, LoadError::Model { .. }), "{err:?}");
}

#[test]
fn load_without_vocabulary_is_an_error() {
    let dir = TempDir::new("novocab");
    std::fs::write(dir.path().join("model.bin"), garbage(1024)).unwrap();
    let err = Engine::load(dir.path(), 1).unwrap_err();
    assert!(matches!(err, LoadError::Vocabulary(_)), "{err:?}");
}

/// The real model cut short (a partial download): CTranslate2 must report it.
#[test]
fn load_truncated_real_model_is_an_error() {
    let Some(model) = common::model_dir("load_truncated_real_model_is_an_error") else {
        return;
    };
    let dir = TempDir::new("truncated");
    let bin = std::fs::read(model.join("model.bin")).expect("model.bin in HEARTH_STT_MODEL");
    for (name, cut) in [
        ("head", 4096),
        ("half", bin.len() / 2),
        ("tail", bin.len() - 7),
    ] {
        std::fs::write(dir.path().join("model.bin"), &bin[..cut]).unwrap();
        for f in ["config.json", "vocabulary.txt"] {
            std::fs::copy(model.join(f), dir.path().join(f)).unwrap();
        }
        let err = Engine::load(dir.path(), 1).unwrap_err();
        assert!(matches!(err, LoadError::Model { .. }), "{name}: {err:?}");
        println!("model.bin cut at {cut} ({name}): {err}");
    }
}

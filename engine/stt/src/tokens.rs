//! Whisper's vocabulary and the byte-level BPE decoding of token ids to text.
//!
//! Whisper uses GPT-2's byte-level BPE: every byte 0..=255 is mapped to a printable Unicode
//! character (`bytes_to_unicode`), tokens are strings of those characters (a leading space
//! shows as `Ġ`, a newline as `Ċ`). Decoding maps each character back to its byte and reads
//! the bytes as UTF-8. Special tokens (`<|endoftext|>` and everything after it: start of
//! transcript, languages, tasks, timestamps) are dropped.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VocabError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Token strings by id.
pub struct Vocabulary {
    tokens: Vec<String>,
    ids: HashMap<String, usize>,
    /// Ids at or above this are special (`<|endoftext|>` and later).
    first_special: usize,
    byte_of: HashMap<char, u8>,
}

/// GPT-2's reversible byte -> printable character table.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (u32::from('!')..=u32::from('~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut n = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

impl Vocabulary {
    /// From token strings in id order.
    pub fn from_tokens(tokens: Vec<String>) -> Result<Self, String> {
        let first_special = tokens
            .iter()
            .position(|t| t == "<|endoftext|>")
            .ok_or("no <|endoftext|> token")?;
        let byte_of = bytes_to_unicode()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let ids = tokens
            .iter()
            .enumerate()
            .rev() // the first of duplicate strings wins
            .map(|(i, t)| (t.clone(), i))
            .collect();
        Ok(Self {
            tokens,
            ids,
            first_special,
            byte_of,
        })
    }

    /// Loads `vocabulary.txt` (one token a line, the id is the line number: CTranslate2's
    /// own format) from `model_dir`, or else the vocabulary of `tokenizer.json`.
    pub fn load(model_dir: &Path) -> Result<Self, VocabError> {
        let txt = model_dir.join("vocabulary.txt");
        let json = model_dir.join("tokenizer.json");
        if txt.is_file() {
            let path = txt.display().to_string();
            let text = std::fs::read_to_string(&txt).map_err(|source| VocabError::Io {
                path: path.clone(),
                source,
            })?;
            let tokens = text.lines().map(str::to_owned).collect();
            Self::from_tokens(tokens).map_err(|reason| VocabError::Invalid { path, reason })
        } else {
            let path = json.display().to_string();
            let text = std::fs::read_to_string(&json).map_err(|source| VocabError::Io {
                path: format!("{path} (nor vocabulary.txt)"),
                source,
            })?;
            let tokens =
                tokens_from_tokenizer_json(&text).map_err(|reason| VocabError::Invalid {
                    path: path.clone(),
                    reason,
                })?;
            Self::from_tokens(tokens).map_err(|reason| VocabError::Invalid { path, reason })
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token string of `id`.
    pub fn token(&self, id: usize) -> Option<&str> {
        self.tokens.get(id).map(String::as_str)
    }

    /// The id of the token string `token`.
    pub fn id(&self, token: &str) -> Option<usize> {
        self.ids.get(token).copied()
    }

    pub fn is_special(&self, id: usize) -> bool {
        id >= self.first_special
    }

    /// Text of `ids`, special tokens and unknown ids skipped, trimmed.
    pub fn decode(&self, ids: &[usize]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if self.is_special(id) {
                continue;
            }
            let Some(tok) = self.tokens.get(id) else {
                continue;
            };
            for c in tok.chars() {
                match self.byte_of.get(&c) {
                    Some(&b) => bytes.push(b),
                    // Not a byte-level character: keep it as it is.
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

/// The id-ordered tokens of a Hugging Face `tokenizer.json` (BPE `model.vocab` plus
/// `added_tokens`).
fn tokens_from_tokenizer_json(text: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut by_id: Vec<Option<String>> = Vec::new();
    let mut put = |id: u64, tok: &str| {
        let id = id as usize;
        if id >= by_id.len() {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some(tok.to_owned());
    };
    let vocab = v["model"]["vocab"]
        .as_object()
        .ok_or("no model.vocab object")?;
    for (tok, id) in vocab {
        put(id.as_u64().ok_or("non-integer id")?, tok);
    }
    if let Some(added) = v["added_tokens"].as_array() {
        for t in added {
            if let (Some(id), Some(tok)) = (t["id"].as_u64(), t["content"].as_str()) {
                put(id, tok);
            }
        }
    }
    if by_id.len() > 1_000_000 {
        return Err("implausibly large vocabulary".into());
    }
    Ok(by_id.into_iter().map(Option::unwrap_or_default).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(t[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(t[0], 'Ā'); // U+0100
        assert_eq!(t[0xAD], '\u{143}'); // the 67th non-printable byte
        let mut seen = std::collections::HashSet::new();
        assert!(
            t.iter().all(|c| seen.insert(*c)),
            "the table is a bijection"
        );
    }

    fn toy() -> Vocabulary {
        // ids: 0 "Hello", 1 "Ġworld", 2 ",", 3 "ĠGr", 4 "Ã¼", 5 "ÃŁe", 6 "<|endoftext|>",
        // 7 "<|startoftranscript|>", 8 "<|notimestamps|>"
        let toks = [
            "Hello",
            "Ġworld",
            ",",
            "ĠGr",
            "Ã¼",
            "ÃŁe",
            "<|endoftext|>",
            "<|startoftranscript|>",
            "<|notimestamps|>",
        ];
        Vocabulary::from_tokens(toks.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    #[test]
    fn decodes_byte_level_bpe_and_skips_specials() {
        let v = toy();
        assert_eq!(v.decode(&[7, 8, 0, 2, 1, 6]), "Hello, world");
        // "ü" is bytes C3 BC, shown as "Ã¼"; "ß" is C3 9F, shown as "ÃŁ".
        assert_eq!(v.decode(&[3, 4, 5]), "Grüße");
        // Unknown ids are skipped, not a panic.
        assert_eq!(v.decode(&[0, 999]), "Hello");
    }

    #[test]
    fn a_token_split_inside_a_character_is_lossy_not_a_panic() {
        let v = Vocabulary::from_tokens(vec!["Ã".into(), "<|endoftext|>".into()]).unwrap();
        assert_eq!(v.decode(&[0]), "\u{FFFD}");
    }

    #[test]
    fn tokenizer_json_vocabulary() {
        let json = r#"{"model":{"type":"BPE","vocab":{"a":0,"Ġb":1}},
            "added_tokens":[{"id":2,"content":"<|endoftext|>","special":true}]}"#;
        let v = Vocabulary::from_tokens(tokens_from_tokenizer_json(json).unwrap()).unwrap();
        assert_eq!(v.decode(&[0, 1, 2]), "a b");
        assert!(v.is_special(2));
    }
}

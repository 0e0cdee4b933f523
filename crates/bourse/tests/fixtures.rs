//! Extra check: the recorded real provider streams in `../shared/fixtures/` parse,
//! re-serialize to streams that parse identically, and end whole by their decoder's account
//! (the relay calls a stream that does not a broken one). Ignored, with the reason, when `../shared`
//! is not beside the repository (a fresh clone stands alone; see build.rs).

use bourse::dialect::{anthropic, openai, Decode};
use bourse::sse::{parse_all, write_item, Item};
use bytes::BytesMut;
use std::path::PathBuf;

fn fixtures(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(dir);
    let entries = std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// Whether `decoder` calls the events of `items` a whole answer.
fn whole(mut decoder: impl Decode, items: &[Item]) -> bool {
    let mut deltas = Vec::new();
    for item in items {
        if let Item::Event(e) = item {
            if decoder.event(e, &mut deltas).is_err() {
                return false;
            }
        }
    }
    decoder.complete()
}

fn roundtrip(items: &[Item]) -> Vec<Item> {
    let mut out = BytesMut::new();
    for i in items {
        write_item(i, &mut out);
    }
    parse_all(&out)
}

#[test]
#[cfg_attr(not(shared_data), ignore = "needs ../shared beside the repository (recorded provider streams)")]
fn recorded_openai_streams_parse_and_roundtrip() {
    let files = fixtures("openai-chat-streams");
    assert!(!files.is_empty());
    for (path, body) in files {
        let items = parse_all(&body);
        let events: Vec<_> = items.iter().filter_map(|i| if let Item::Event(e) = i { Some(e) } else { None }).collect();
        assert!(!events.is_empty(), "{}", path.display());
        for e in &events {
            if e.data != "[DONE]" {
                let v: serde_json::Value =
                    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{}: {err}: {}", path.display(), e.data));
                assert!(v.get("choices").is_some() || v.get("error").is_some(), "{}", path.display());
            }
        }
        assert!(whole(openai::Decoder::new(), &items), "{} does not end whole", path.display());
        assert_eq!(roundtrip(&items), items, "{}", path.display());
    }
}

#[test]
#[cfg_attr(not(shared_data), ignore = "needs ../shared beside the repository (recorded provider streams)")]
fn recorded_anthropic_streams_parse_and_roundtrip() {
    let files = fixtures("anthropic-message-streams");
    assert!(!files.is_empty());
    for (path, body) in files {
        let items = parse_all(&body);
        let names: Vec<&str> =
            items.iter().filter_map(|i| if let Item::Event(e) = i { e.event.as_deref() } else { None }).collect();
        assert_eq!(names.first(), Some(&"message_start"), "{}", path.display());
        assert_eq!(names.last(), Some(&"message_stop"), "{}", path.display());
        assert!(whole(anthropic::Decoder::new(false), &items), "{} does not end whole", path.display());
        assert_eq!(roundtrip(&items), items, "{}", path.display());
    }
}

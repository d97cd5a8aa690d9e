//! The JSON machine against serde_json as the independent reference.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::*;

fn fed(text: &str) -> Option<JsonMachine> {
    let mut machine = JsonMachine::default();
    machine.feed(text).then_some(machine)
}

/// serde_json's verdict on `text` as a JSON object: `Ok(true)` complete, `Ok(false)` a
/// proper prefix of one (it ran out of input, and what it read opens an object), `Err`
/// wrong.
fn reference(text: &str) -> Result<bool, ()> {
    let opens_object = text.trim_start().chars().next().is_none_or(|c| c == '{');
    match serde_json::from_str::<Map<String, Value>>(text) {
        Ok(_) => Ok(true),
        Err(err) if err.is_eof() && opens_object => Ok(false),
        Err(_) => Err(()),
    }
}

#[test]
fn objects_are_accepted_whole_and_done_only_at_their_end() {
    let text = r#"{"a": [1, -2.5e+3, 0.0, true, false, null], "b\"\u00e9\n": {"c": {}}, "d": []}"#;
    let mut machine = JsonMachine::default();
    for (idx, c) in text.char_indices() {
        assert!(!machine.is_done(), "done before {idx}");
        assert!(machine.feed(&c.to_string()), "rejected {c:?} at {idx}");
    }
    assert!(machine.is_done());
    assert!(!machine.accepts("x") && !machine.accepts(" ") && !machine.accepts("}"));
}

#[test]
fn not_an_object_or_not_json_is_rejected() {
    for text in [
        "[1]",
        "1",
        "\"a\"",
        "{,}",
        "{\"a\" 1}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":tru}",
        "{\"a\":nul l}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":[1}",
        "{\"a\":{]}",
        "{} {}",
        "{'a':1}",
    ] {
        assert!(fed(text).is_none_or(|m| !m.is_done()), "{text:?}");
        assert!(
            reference(text) != Ok(true),
            "the reference disagrees on {text:?}"
        );
    }
}

#[test]
fn whitespace_runs_are_capped() {
    let ok = format!("{{{}\"a\":1}}", " ".repeat(MAX_SPACE_RUN as usize));
    assert!(fed(&ok).is_some_and(|m| m.is_done()));
    let long = format!("{{{}", " ".repeat(MAX_SPACE_RUN as usize + 1));
    assert!(fed(&long).is_none());
}

#[test]
fn nesting_deeper_than_the_limit_is_refused() {
    let deep = format!("{{\"a\":{}", "[".repeat(MAX_DEPTH as usize - 1));
    assert!(fed(&deep).is_some());
    assert!(fed(&format!("{deep}[")).is_none());
}

/// A byte decoder: ids below 128 are ASCII, 128 is `{"`, 129 a special token.
struct Vocab;

impl crate::runner::TokenDecoder for Vocab {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        ids.iter()
            .map(|&id| match id {
                0..128 => char::from(id as u8).to_string(),
                128 => "{\"".to_string(),
                _ if skip_special_tokens => String::new(),
                _ => "<|end|>".to_string(),
            })
            .collect()
    }
}

#[test]
fn the_mask_keeps_exactly_the_tokens_that_fit() {
    let vocab = JsonVocab::new(&Vocab, 130);
    let mut row = vec![1.0f32; 130];
    assert!(vocab.mask(&JsonMachine::default(), &mut row));
    let kept: Vec<usize> = (0..130).filter(|&id| row[id].is_finite()).collect();
    assert_eq!(kept, vec![9, 10, 13, 32, 123, 128]); // whitespace, `{` and `{"`
    let machine = fed("{\"k\":").unwrap();
    let mut row: Vec<f32> = (0..130).map(|id| id as f32).collect();
    assert!(vocab.mask(&machine, &mut row));
    assert_eq!(row[b'7' as usize], b'7' as f32);
    assert!(row[b'}' as usize].is_infinite() && row[129].is_infinite());
    // Inside a string nearly everything fits (the list of the others is kept).
    let mut row = vec![1.0f32; 131];
    assert!(vocab.mask(&fed("{\"").unwrap(), &mut row));
    let masked: Vec<usize> = (0..131).filter(|&id| row[id].is_infinite()).collect();
    let controls: Vec<usize> = (0..32).collect();
    assert_eq!(masked, [controls, vec![129, 130]].concat());
    // Nothing fits after the object: the row is left alone.
    let mut row = vec![1.0f32; 130];
    assert!(!vocab.mask(&fed("{}").unwrap(), &mut row));
    assert!(row.iter().all(|l| *l == 1.0));
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "[a-z\"\\\\é\n\t/]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"]{0,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{", "}", "[", "]", ":", ",", "\"", "\\", "a", "1", "0", "-", ".", "e", "true", "null",
        "false", " ", "\n", "\\n", "\\u00e9", "é",
    ])
}

proptest! {
    #[test]
    fn serialized_objects_are_accepted_compact_and_pretty(
        entries in prop::collection::btree_map("[a-z]{0,4}", value(), 0..5),
    ) {
        let object = Value::Object(entries.into_iter().collect());
        for text in [serde_json::to_string(&object).unwrap(), serde_json::to_string_pretty(&object).unwrap()] {
            let machine = fed(&text);
            prop_assert!(machine.is_some_and(|m| m.is_done()), "{}", text);
        }
    }

    #[test]
    fn the_machine_agrees_with_serde_json_on_any_text(pieces in prop::collection::vec(piece(), 0..12)) {
        let text = pieces.concat();
        let verdict = fed(&text).map(|m| m.is_done());
        match reference(&text) {
            // A complete object, or a proper prefix of one.
            Ok(done) if !text.is_empty() => prop_assert_eq!(verdict, Some(done), "{:?}", text),
            Ok(_) => prop_assert_eq!(verdict, Some(false)),
            Err(()) => prop_assert_eq!(verdict, None, "{:?}", text),
        }
    }
}

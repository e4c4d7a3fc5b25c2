//! Property test: any JSON object survives encrypt → text → parse → decrypt unchanged.

use orcastrate_crypt::{decrypt, encrypt, Document, EncryptedDocument, Format, Key};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn top_level() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        any::<String>().prop_filter("reserved", |k| k != "_orcastrate"),
        json(),
        0..8,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_json_round_trips(value in top_level(), pretty in any::<bool>()) {
        let key = Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let text = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            serde_json::to_string(&value).unwrap()
        };
        let plain = Document::parse(&text, Format::Json, "p").unwrap();
        let enc = encrypt(&plain, &key, &[], "p").unwrap();
        let written = enc.to_text();
        let parsed = EncryptedDocument::parse(&written, Format::Json, "e").unwrap();
        let back = decrypt(&parsed, &key, "e").unwrap();
        prop_assert_eq!(&back, &plain);
        // Compared with serde_json's own reading of the input: its float parsing is not
        // exact without `float_roundtrip`, so comparing with `value` could fail on its own.
        let reparsed: Value = serde_json::from_str(&back.to_text()).unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(reparsed, original);
        // Re-encrypting the decrypted text keeps every token.
        let again = encrypt(&back, &key, &[&parsed], "p").unwrap();
        prop_assert_eq!(again.to_text(), written);
    }
}

//! An order's contents (`fields`: items, amounts, address, waybill, …), each top-level value
//! kept as the JSON text it arrived in.
//!
//! The engine mostly moves contents around: from a request into the journal, into the order,
//! into a sync's body. Kept as `serde_json::Value` trees, that took about a fifth of its CPU per
//! event (BENCHMARKS.md, "2026-12-02"): building the trees, copying and comparing them, writing
//! them out again, freeing them. As text, a value is checked once where it enters, merged into
//! an order by its top-level name, compared as text and written as it is; the few readers that
//! look inside one (rules that read `order.fields`, stock lines, operator names) parse it then.

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// One top-level value of an order's contents, as compact JSON text (shared: an event, its
/// order and the order's syncs hold the same text).
#[derive(Clone)]
pub struct Field(Arc<RawValue>);

impl Field {
    /// The value's JSON text.
    pub fn raw(&self) -> &str {
        self.0.get()
    }

    /// The value parsed (it was checked where it entered, so it parses).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.raw()).unwrap_or(Value::Null)
    }

    /// The value as text, when it is a JSON string (borrowed unless it holds escapes).
    pub fn as_str(&self) -> Option<Cow<'_, str>> {
        let raw = self.raw();
        let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
        if !inner.contains('\\') {
            return Some(Cow::Borrowed(inner));
        }
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    }

    /// Whether the value is JSON `null`.
    pub fn is_null(&self) -> bool {
        self.raw() == "null"
    }

    /// The text of `value`.
    pub fn from_value(value: &Value) -> Field {
        // A `Value` always serializes (its keys are strings).
        let text = serde_json::value::to_raw_value(value).unwrap_or_default();
        Field(Arc::from(text))
    }

    /// A value's text as it arrived: kept as it is when it is compact JSON whose every string
    /// and number a parser takes; otherwise parsed, which names what is wrong (a number out of
    /// range, a lone surrogate escape), and written again compactly.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Field, serde_json::Error> {
        if plain(raw.get()) {
            return Ok(Field(Arc::from(raw)));
        }
        let value: Value = serde_json::from_str(raw.get())?;
        Ok(Field::from_value(&value))
    }
}

/// Whether `text` (well-formed JSON) is compact and holds neither `\u` escapes nor exponents:
/// the only things a well-formed text can hold that a `Value` would not take or would write
/// differently are in those. Strings, most of the text, are skipped with `memchr` to their
/// next quote or backslash.
fn plain(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(at) = bytes
                        .get(i..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    else {
                        return false;
                    };
                    i += at;
                    if bytes[i] == b'"' {
                        break;
                    }
                    if bytes.get(i + 1) == Some(&b'u') {
                        return false;
                    }
                    i += 2;
                }
            }
            b' ' | b'\n' | b'\r' | b'\t' => return false,
            b'e' | b'E' if i > 0 && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.') => {
                return false;
            }
            _ => {}
        }
        i += 1;
    }
    true
}

impl PartialEq for Field {
    fn eq(&self, other: &Field) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.raw() == other.raw()
    }
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw())
    }
}

impl Serialize for Field {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Field::from_raw(raw).map_err(de::Error::custom)
    }
}

/// An order's or an event's contents: top-level names to values, in name order.
#[derive(Clone, Default, PartialEq)]
pub struct Fields(BTreeMap<Arc<str>, Field>);

impl Fields {
    /// No contents.
    pub fn new() -> Fields {
        Fields(BTreeMap::new())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many top-level values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The value named `name`.
    pub fn get(&self, name: &str) -> Option<&Field> {
        self.0.get(name)
    }

    /// Whether a value is named `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The value named `name` as text, when it is a JSON string.
    pub fn str(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).and_then(Field::as_str)
    }

    /// The value named `name`, parsed.
    pub fn value(&self, name: &str) -> Option<Value> {
        self.get(name).map(Field::value)
    }

    /// Names and values, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Field)> {
        self.0.iter().map(|(name, field)| (&**name, field))
    }

    /// Sets `name` to `field`.
    pub fn insert(&mut self, name: &str, field: Field) {
        match self.0.get_mut(name) {
            Some(kept) => *kept = field,
            None => {
                self.0.insert(Arc::from(name), field);
            }
        }
    }

    /// Sets `name` to the text of `value`.
    pub fn insert_value(&mut self, name: &str, value: &Value) {
        self.insert(name, Field::from_value(value));
    }

    /// Takes every value of `other` (replacing those of the same name); true when anything
    /// changed. A value equal to the one kept is left alone (most reports repeat the contents
    /// an order has: a channel's pushes carry the whole order each time).
    pub fn merge(&mut self, other: &Fields) -> bool {
        let mut changed = false;
        for (name, field) in &other.0 {
            match self.0.get_mut(name) {
                Some(kept) if kept == field => {}
                Some(kept) => {
                    *kept = field.clone();
                    changed = true;
                }
                None => {
                    self.0.insert(name.clone(), field.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// The contents as a JSON object (for readers that look inside: rules, templates, stock).
    pub fn to_json(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|(name, field)| (name.to_string(), field.value()))
            .collect()
    }

    /// The contents as compact JSON object text.
    pub fn to_json_text(&self) -> String {
        // Names are strings and values are checked JSON text: this cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Fields {
        Fields::from(&map)
    }
}

impl From<&Map<String, Value>> for Fields {
    fn from(map: &Map<String, Value>) -> Fields {
        Fields(
            map.iter()
                .map(|(name, value)| (Arc::from(name.as_str()), Field::from_value(value)))
                .collect(),
        )
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, field) in &self.0 {
            map.serialize_entry(&**name, field)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Fields, A::Error> {
                let mut fields = BTreeMap::new();
                while let Some(name) = access.next_key::<Cow<'de, str>>()? {
                    let raw: Box<RawValue> = access.next_value()?;
                    let field = Field::from_raw(raw)
                        .map_err(|e| de::Error::custom(format_args!("fields.{name}: {e}")))?;
                    fields.insert(Arc::from(&*name), field);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Fields, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn compact_contents_are_kept_as_they_arrived() {
        let text = r#"{"amount":99.50,"items":[{"sku":"A-1","qty":2}],"note":"a b\"c"}"#;
        let fields = parse(text).unwrap();
        assert_eq!(fields.get("amount").unwrap().raw(), "99.50");
        assert_eq!(
            fields.get("items").unwrap().raw(),
            r#"[{"sku":"A-1","qty":2}]"#
        );
        assert_eq!(fields.str("note").unwrap(), "a b\"c");
        assert_eq!(fields.to_json_text(), text);
        assert_eq!(serde_json::to_string(&fields).unwrap(), text);
        assert_eq!(
            Value::Object(fields.to_json()),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn whitespace_escapes_and_exponents_are_parsed_and_written_compactly() {
        let fields = parse(
            "{\"items\": [ {\"sku\" : \"A\"} ],\n \"city\": \"\\u5357\\u5c71\", \"big\": 1.5e3, \"t\": true}",
        )
        .unwrap();
        assert_eq!(fields.get("items").unwrap().raw(), r#"[{"sku":"A"}]"#);
        assert_eq!(fields.get("city").unwrap().raw(), "\"南山\"");
        assert_eq!(fields.get("big").unwrap().raw(), "1500.0");
        assert_eq!(fields.get("t").unwrap().raw(), "true");
    }

    #[test]
    fn what_a_parser_would_not_take_is_refused_with_the_field_named() {
        let lone = parse(r#"{"ok": 1, "name": "\ud800"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            lone.contains("fields.name") && lone.contains("escape"),
            "{lone}"
        );
        let huge = parse(r#"{"amount": 1e400}"#).unwrap_err().to_string();
        assert!(
            huge.contains("fields.amount") && huge.contains("out of range"),
            "{huge}"
        );
        let not_object = parse("[1]").unwrap_err().to_string();
        assert!(not_object.contains("JSON object of fields"), "{not_object}");
    }

    #[test]
    fn values_read_back_and_compare_as_text() {
        let mut fields = Fields::from(json!({"operator": "li.na", "n": 3}).as_object().unwrap());
        assert_eq!(fields.str("operator").unwrap(), "li.na");
        assert_eq!(fields.str("n"), None);
        assert_eq!(fields.value("n"), Some(json!(3)));
        assert!(!fields.get("n").unwrap().is_null());
        let update = Fields::from(json!({"n": 3, "waybill": "SF1"}).as_object().unwrap());
        assert!(fields.merge(&update), "a new name changes the contents");
        assert!(
            !fields.merge(&update),
            "the same values again change nothing"
        );
        fields.insert_value("n", &json!(4));
        assert_eq!(fields.len(), 3);
        assert_eq!(
            fields.to_json_text(),
            r#"{"n":4,"operator":"li.na","waybill":"SF1"}"#
        );
    }

    /// The scan as it was first written, a byte at a time.
    fn plain_bytewise(text: &str) -> bool {
        let bytes = text.as_bytes();
        let mut in_string = false;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if in_string {
                match b {
                    b'\\' if bytes.get(i + 1) == Some(&b'u') => return false,
                    b'\\' => i += 1,
                    b'"' => in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b' ' | b'\n' | b'\r' | b'\t' => return false,
                    b'e' | b'E'
                        if i > 0 && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.') =>
                    {
                        return false;
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        !in_string
    }

    proptest::proptest! {
        #[test]
        fn the_skipping_scan_agrees_with_the_bytewise_one(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["\"", "\\", "u", "e", "E", "1", ".", " ", "a", "[", "]", "\n"]),
                0..24,
            )
        ) {
            let text = parts.concat();
            proptest::prop_assert_eq!(plain(&text), plain_bytewise(&text), "{:?}", text);
        }
    }

    #[test]
    fn contents_survive_a_value_round_trip() {
        // `serde_json::from_value` (the engine's slow path for malformed batches) reads them too.
        let value = json!({"fields": {"a": [1, 2], "b": {"c": null}}});
        #[derive(Deserialize)]
        struct Holder {
            fields: Fields,
        }
        let holder: Holder = serde_json::from_value(value).unwrap();
        assert_eq!(
            holder.fields.to_json_text(),
            r#"{"a":[1,2],"b":{"c":null}}"#
        );
        assert!(holder.fields.get("b").unwrap().value()["c"].is_null());
    }
}

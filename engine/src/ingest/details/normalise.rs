//! The normalised contents of an order (see the parent module's doc): money in yuan, the
//! seller's own sku codes, the receiver as delivered; phone masking for the API.

use serde_json::{Map, Value};

/// Yuan from a fen integer (a number or a numeric string).
pub(crate) fn yuan_from_fen(value: &Value) -> Option<Value> {
    let fen = match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f.round() as i64))?,
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    money(fen as f64 / 100.0)
}

/// Yuan from a yuan amount (a numeric string such as `"12.30"`, or a number).
pub(crate) fn yuan(value: &Value) -> Option<Value> {
    let amount = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    money(amount)
}

/// A money amount as a JSON number rounded to the fen.
fn money(amount: f64) -> Option<Value> {
    if !amount.is_finite() {
        return None;
    }
    serde_json::Number::from_f64((amount * 100.0).round() / 100.0).map(Value::Number)
}

/// A string from a string or a number (ids, codes).
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A quantity from a number or a numeric string.
pub(crate) fn count(value: &Value) -> Option<Value> {
    match value {
        Value::Number(n) => n.as_i64().map(Value::from),
        Value::String(s) => s.trim().parse::<i64>().ok().map(Value::from),
        _ => None,
    }
}

/// One normalised item.
pub(crate) fn item(
    sku: Option<String>,
    name: &Value,
    qty: Option<Value>,
    price: Option<Value>,
) -> Value {
    serde_json::json!({
        "sku": sku,
        "name": text(name),
        "qty": qty.unwrap_or(Value::Null),
        "price": price.unwrap_or(Value::Null),
    })
}

/// The seller's own code when set, else the platform's id.
pub(crate) fn seller_sku(own: &[&Value], platform: &Value) -> Option<String> {
    own.iter().find_map(|v| text(v)).or_else(|| text(platform))
}

/// The normalised receiver.
pub(crate) fn receiver(parts: [(&str, Option<String>); 6]) -> Value {
    Value::Object(
        parts
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.map_or(Value::Null, Value::String)))
            .collect(),
    )
}

/// An order's normalised contents (see the module's doc).
pub(crate) struct Contents {
    /// `items[] {sku, name, qty, price}`.
    pub(crate) items: Vec<Value>,
    /// What the buyer pays (yuan).
    pub(crate) amount: Option<Value>,
    /// Whether it was paid (then `paid` is the amount).
    pub(crate) paid: bool,
    /// Freight (yuan).
    pub(crate) freight: Option<Value>,
    /// `{name, phone, province, city, district, address}`.
    pub(crate) receiver: Value,
    /// The platform's buyer id, if it gives one.
    pub(crate) buyer: Option<String>,
}

impl Contents {
    /// The order `fields` they make; absent values are left out.
    pub(crate) fn into_fields(self) -> Map<String, Value> {
        fields(vec![
            ("items", Some(Value::Array(self.items))),
            ("paid", if self.paid { self.amount.clone() } else { None }),
            ("amount", self.amount),
            ("freight", self.freight),
            ("currency", Some(Value::from("CNY"))),
            ("receiver", Some(self.receiver)),
            ("buyer", self.buyer.map(Value::from)),
        ])
    }
}

/// Each line of the array `list` as `line` makes it (none when `list` is no array).
pub(crate) fn lines(list: &Value, line: impl Fn(&Value) -> Value) -> Vec<Value> {
    list.as_array()
        .map(|list| list.iter().map(line).collect())
        .unwrap_or_default()
}

/// Assembles the normalised fields; absent values are left out.
fn fields(parts: Vec<(&str, Option<Value>)>) -> Map<String, Value> {
    parts
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key.to_owned(), v)))
        .collect()
}

/// Masks a phone number for a caller who may not see it: keeps the first 3 and last 4 digits
/// of a plain number (`138****5678`); an encrypted or already masked value is left as it is.
pub(crate) fn mask_phone(phone: &str) -> String {
    let plain = phone
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' '));
    if !plain {
        // Masked (`138****5678`) or ciphertext: as the platform delivered it.
        return phone.to_owned();
    }
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 7 {
        return "****".to_owned();
    }
    let head: String = digits[..3].iter().collect();
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

//! Strict validation of JSON request bodies.
//!
//! Every check returns the exact client-facing 400 message fixed by gateway-design.md §0, so a
//! handler only has to wrap the `Err` in the error envelope. Endpoints describe their bodies
//! with [`Fields`], a walker over one JSON object that knows its dotted path:
//!
//! ```ignore
//! let f = Fields::body(&body)?;
//! let input = f.req_str("input")?;
//! f.only(&["input", "model", "user"])?;
//! let user = f.str("user")?;
//! ```
//!
//! JSON `null` counts as absent everywhere: an optional field set to `null` passes and a
//! required one fails with `field required`.

use std::fmt::Display;

use serde_json::{Map, Value};

pub mod chat;
pub mod embeddings;
pub mod responses;
pub mod search;

/// The exact client-facing 400 message.
pub type Invalid = String;

pub fn required(path: &str) -> Invalid {
    format!("field required: '{path}'")
}

pub fn unknown(path: &str) -> Invalid {
    format!("unknown field: '{path}'")
}

/// `expected` is a type word (`string`, `integer`, `number`, `boolean`, `object`, `array`) or a
/// union of them such as `string or array`.
pub fn wrong_type(path: &str, expected: &str) -> Invalid {
    format!("invalid type for '{path}': expected {expected}")
}

/// Bounds print plainly: `f64` displays `2.0` as `2` and `0.5` as `0.5`.
pub fn out_of_range(path: &str, lo: impl Display, hi: impl Display) -> Invalid {
    format!("'{path}' must be between {lo} and {hi}")
}

pub fn not_one_of(path: &str, allowed: &[&str]) -> Invalid {
    format!("invalid value for '{path}': expected one of {}", allowed.join(", "))
}

pub fn empty(path: &str) -> Invalid {
    format!("'{path}' must not be empty")
}

/// The path of `key` inside the object at `parent` (`""` is the body itself).
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

// Checks on a bare value, for array items and fields that accept several types.

pub fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, Invalid> {
    value.as_str().ok_or_else(|| wrong_type(path, "string"))
}

pub fn boolean(value: &Value, path: &str) -> Result<bool, Invalid> {
    value.as_bool().ok_or_else(|| wrong_type(path, "boolean"))
}

pub fn integer(value: &Value, path: &str, lo: i64, hi: i64) -> Result<i64, Invalid> {
    let Value::Number(n) = value else {
        return Err(wrong_type(path, "integer"));
    };
    if let Some(i) = n.as_i64() {
        return if (lo..=hi).contains(&i) { Ok(i) } else { Err(out_of_range(path, lo, hi)) };
    }
    if n.is_u64() {
        return Err(out_of_range(path, lo, hi));
    }
    // serde_json parses integers too long for u64 as floats; a whole number outside the range
    // is better reported as out of range than as "not an integer".
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && !(lo as f64..=hi as f64).contains(&f) => {
            Err(out_of_range(path, lo, hi))
        }
        _ => Err(wrong_type(path, "integer")),
    }
}

pub fn number(value: &Value, path: &str, lo: f64, hi: f64) -> Result<f64, Invalid> {
    let n = value.as_f64().ok_or_else(|| wrong_type(path, "number"))?;
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(out_of_range(path, lo, hi))
    }
}

pub fn one_of<'a>(value: &'a Value, path: &str, allowed: &[&str]) -> Result<&'a str, Invalid> {
    let s = string(value, path)?;
    if allowed.contains(&s) {
        Ok(s)
    } else {
        Err(not_one_of(path, allowed))
    }
}

pub fn object<'a>(value: &'a Value, path: &str) -> Result<Fields<'a>, Invalid> {
    match value {
        Value::Object(map) => Ok(Fields::new(map, path)),
        _ => Err(wrong_type(path, "object")),
    }
}

pub fn array<'a>(value: &'a Value, path: &str) -> Result<&'a [Value], Invalid> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(wrong_type(path, "array")),
    }
}

/// Runs `check` on every item with its indexed path, stopping at the first problem.
pub fn each<'a>(
    items: &'a [Value],
    path: &str,
    mut check: impl FnMut(&'a Value, &str) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    items.iter().enumerate().try_for_each(|(i, item)| check(item, &index(path, i)))
}

/// One JSON object being validated, with its path for messages.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    /// `path` is where the object sits in the body; `""` for the body itself.
    pub fn new(map: &'a Map<String, Value>, path: &str) -> Self {
        Self { map, path: path.to_owned() }
    }

    /// The request body, which must be an object.
    pub fn body(body: &'a Value) -> Result<Self, Invalid> {
        match body {
            Value::Object(map) => Ok(Self::new(map, "")),
            _ => Err(wrong_type("body", "object")),
        }
    }

    pub fn map(&self) -> &'a Map<String, Value> {
        self.map
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path of `key` in this object.
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Rejects the first key not in `allowed` (in the map's iteration order, which is stable).
    pub fn only(&self, allowed: &[&str]) -> Result<(), Invalid> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(key) => Err(unknown(&self.at(key))),
            None => Ok(()),
        }
    }

    /// The value of `key`, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn require(&self, key: &str) -> Result<&'a Value, Invalid> {
        self.get(key).ok_or_else(|| required(&self.at(key)))
    }

    /// Runs `check` on an optional field: the building block for fields of several types.
    pub fn opt<T>(
        &self,
        key: &str,
        check: impl FnOnce(&'a Value, &str) -> Result<T, Invalid>,
    ) -> Result<Option<T>, Invalid> {
        self.get(key).map(|v| check(v, &self.at(key))).transpose()
    }

    /// Runs `check` on a required field.
    pub fn req<T>(
        &self,
        key: &str,
        check: impl FnOnce(&'a Value, &str) -> Result<T, Invalid>,
    ) -> Result<T, Invalid> {
        check(self.require(key)?, &self.at(key))
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, Invalid> {
        self.opt(key, string)
    }

    pub fn req_str(&self, key: &str) -> Result<&'a str, Invalid> {
        self.req(key, string)
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, Invalid> {
        self.opt(key, boolean)
    }

    pub fn int(&self, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, Invalid> {
        self.opt(key, |v, p| integer(v, p, lo, hi))
    }

    pub fn num(&self, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, Invalid> {
        self.opt(key, |v, p| number(v, p, lo, hi))
    }

    pub fn one_of(&self, key: &str, allowed: &[&str]) -> Result<Option<&'a str>, Invalid> {
        self.opt(key, |v, p| one_of(v, p, allowed))
    }

    pub fn req_one_of(&self, key: &str, allowed: &[&str]) -> Result<&'a str, Invalid> {
        self.req(key, |v, p| one_of(v, p, allowed))
    }

    pub fn object(&self, key: &str) -> Result<Option<Fields<'a>>, Invalid> {
        self.opt(key, object)
    }

    pub fn req_object(&self, key: &str) -> Result<Fields<'a>, Invalid> {
        self.req(key, object)
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a [Value]>, Invalid> {
        self.opt(key, array)
    }

    pub fn req_array(&self, key: &str) -> Result<&'a [Value], Invalid> {
        self.req(key, array)
    }

    /// An optional array whose items all pass `check`.
    pub fn list(
        &self,
        key: &str,
        check: impl FnMut(&'a Value, &str) -> Result<(), Invalid>,
    ) -> Result<Option<&'a [Value]>, Invalid> {
        self.opt(key, |v, p| {
            let items = array(v, p)?;
            each(items, p, check)?;
            Ok(items)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: &Value) -> Fields<'_> {
        object(value, "root").unwrap()
    }

    #[test]
    fn message_builders() {
        assert_eq!(required("model"), "field required: 'model'");
        assert_eq!(unknown("a.b"), "unknown field: 'a.b'");
        assert_eq!(
            wrong_type("x", "string or array"),
            "invalid type for 'x': expected string or array"
        );
        assert_eq!(out_of_range("t", 0.0, 2.0), "'t' must be between 0 and 2");
        assert_eq!(out_of_range("t", -0.5, 1.5), "'t' must be between -0.5 and 1.5");
        assert_eq!(out_of_range("t", 1, u32::MAX), "'t' must be between 1 and 4294967295");
        assert_eq!(
            out_of_range("t", 0.0, f64::from(u32::MAX)),
            "'t' must be between 0 and 4294967295"
        );
        assert_eq!(not_one_of("r", &["a", "b"]), "invalid value for 'r': expected one of a, b");
        assert_eq!(empty("messages"), "'messages' must not be empty");
    }

    #[test]
    fn paths() {
        assert_eq!(join("", "model"), "model");
        assert_eq!(join("messages[0]", "role"), "messages[0].role");
        assert_eq!(index("messages", 3), "messages[3]");
        let v = json!({"a": {"b": [{"c": 1}]}});
        let f = Fields::body(&v).unwrap();
        let a = f.req_object("a").unwrap();
        assert_eq!(a.path(), "a");
        let b = a.req_array("b").unwrap();
        let c = object(&b[0], &index(&a.at("b"), 0)).unwrap();
        assert_eq!(c.at("c"), "a.b[0].c");
        assert_eq!(c.req_str("c").unwrap_err(), "invalid type for 'a.b[0].c': expected string");
    }

    #[test]
    fn body_must_be_object() {
        for body in [json!([]), json!("x"), json!(1), json!(null), json!(true)] {
            assert_eq!(
                Fields::body(&body).unwrap_err(),
                "invalid type for 'body': expected object"
            );
        }
        assert_eq!(Fields::body(&json!({})).unwrap().path(), "");
    }

    #[test]
    fn null_is_absent() {
        let v = json!({"n": null});
        let f = fields(&v);
        assert_eq!(f.get("n"), None);
        assert_eq!(f.str("n"), Ok(None));
        assert_eq!(f.int("n", 0, 1), Ok(None));
        assert!(f.object("n").unwrap().is_none());
        assert_eq!(f.req_str("n").unwrap_err(), "field required: 'root.n'");
        assert_eq!(f.req_str("missing").unwrap_err(), "field required: 'root.missing'");
    }

    #[test]
    fn only_rejects_unknown_keys() {
        let v = json!({"a": 1, "zz": 2});
        let f = fields(&v);
        assert_eq!(f.only(&["a", "zz"]), Ok(()));
        assert_eq!(f.only(&["a"]).unwrap_err(), "unknown field: 'root.zz'");
        let top = json!({"foo": 1});
        assert_eq!(Fields::body(&top).unwrap().only(&[]).unwrap_err(), "unknown field: 'foo'");
    }

    #[test]
    fn integers() {
        let cases: &[(Value, Result<i64, &str>)] = &[
            (json!(5), Ok(5)),
            (json!(1), Ok(1)),
            (json!(10), Ok(10)),
            (json!(0), Err("'i' must be between 1 and 10")),
            (json!(11), Err("'i' must be between 1 and 10")),
            (json!(-3), Err("'i' must be between 1 and 10")),
            (json!(u64::MAX), Err("'i' must be between 1 and 10")),
            (json!(5.0), Err("invalid type for 'i': expected integer")),
            (json!(5.5), Err("invalid type for 'i': expected integer")),
            (json!(1e30), Err("'i' must be between 1 and 10")),
            (json!("5"), Err("invalid type for 'i': expected integer")),
            (json!(true), Err("invalid type for 'i': expected integer")),
        ];
        for (value, want) in cases {
            assert_eq!(integer(value, "i", 1, 10), want.map_err(String::from), "{value}");
        }
        let huge: Value = serde_json::from_str("99999999999999999999").unwrap();
        assert_eq!(integer(&huge, "i", 1, 10).unwrap_err(), "'i' must be between 1 and 10");
        assert_eq!(integer(&json!(i64::MIN), "i", i64::MIN, i64::MAX), Ok(i64::MIN));
        assert_eq!(
            integer(&json!(u64::MAX), "i", i64::MIN, i64::MAX).unwrap_err(),
            "'i' must be between -9223372036854775808 and 9223372036854775807"
        );
    }

    #[test]
    fn numbers() {
        let cases: &[(Value, Result<f64, &str>)] = &[
            (json!(0), Ok(0.0)),
            (json!(2), Ok(2.0)),
            (json!(1.5), Ok(1.5)),
            (json!(-0.1), Err("'n' must be between 0 and 2")),
            (json!(2.01), Err("'n' must be between 0 and 2")),
            (json!(u64::MAX), Err("'n' must be between 0 and 2")),
            (json!("1"), Err("invalid type for 'n': expected number")),
            (json!([1]), Err("invalid type for 'n': expected number")),
        ];
        for (value, want) in cases {
            assert_eq!(number(value, "n", 0.0, 2.0), want.map_err(String::from), "{value}");
        }
    }

    #[test]
    fn other_types() {
        let v = json!({"s": "x", "b": true, "o": {}, "a": [], "e": "low", "n": 1});
        let f = fields(&v);
        assert_eq!(f.str("s"), Ok(Some("x")));
        assert_eq!(f.bool("b"), Ok(Some(true)));
        assert!(f.req_object("o").is_ok());
        assert_eq!(f.req_array("a").map(<[Value]>::len), Ok(0));
        assert_eq!(f.one_of("e", &["low", "high"]), Ok(Some("low")));
        assert_eq!(f.str("n").unwrap_err(), "invalid type for 'root.n': expected string");
        assert_eq!(f.bool("n").unwrap_err(), "invalid type for 'root.n': expected boolean");
        assert_eq!(f.object("n").unwrap_err(), "invalid type for 'root.n': expected object");
        assert_eq!(f.array("n").unwrap_err(), "invalid type for 'root.n': expected array");
        assert_eq!(
            f.one_of("n", &["a"]).unwrap_err(),
            "invalid type for 'root.n': expected string"
        );
        assert_eq!(
            f.req_one_of("s", &["a", "b"]).unwrap_err(),
            "invalid value for 'root.s': expected one of a, b"
        );
    }

    #[test]
    fn lists_check_every_item() {
        let v = json!({"l": ["a", "b", 3]});
        let f = fields(&v);
        assert_eq!(
            f.list("l", |v, p| string(v, p).map(drop)).unwrap_err(),
            "invalid type for 'root.l[2]': expected string"
        );
        assert_eq!(f.list("missing", |_, _| Ok(())), Ok(None));
        assert_eq!(f.list("l", |_, _| Ok(())).map(|l| l.map(<[Value]>::len)), Ok(Some(3)));
    }
}

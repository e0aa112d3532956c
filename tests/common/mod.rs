//! Shared helpers of the integration tests: the PyTorch golden-vector harness.
#![allow(dead_code)]

use flint::{DType, Tensor};
use serde_json::Value;
use std::path::PathBuf;

/// The folder of golden case files: `$FLINT_GOLDEN_DIR` when set, else `tests/golden/`.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("FLINT_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"))
}

/// One case file: `{"name", "inputs", "params", "outputs"}` as written by golden.py.
pub struct Case {
    pub name: String,
    json: Value,
}

impl Case {
    pub fn load(name: &str) -> Case {
        Case::from_path(&golden_dir().join(format!("{name}.json")))
    }

    /// Reads a case file; its name is the file stem.
    pub fn from_path(path: &std::path::Path) -> Case {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read golden case {}: {e}", path.display()));
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
        Case { name, json }
    }

    fn tensor(&self, section: &str, key: &str) -> Tensor {
        let v = &self.json[section][key];
        assert!(!v.is_null(), "{}: no {section}.{key}", self.name);
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let data = v["data"].as_array().expect("data");
        match v["dtype"].as_str().expect("dtype") {
            "f64" => Tensor::from_vec(data.iter().map(as_f64).collect::<Vec<f64>>(), shape),
            "i64" => Tensor::from_vec(
                data.iter()
                    .map(|x| x.as_i64().expect("i64"))
                    .collect::<Vec<i64>>(),
                shape,
            ),
            "bool" => Tensor::from_vec(
                data.iter()
                    .map(|x| x.as_bool().expect("bool"))
                    .collect::<Vec<bool>>(),
                shape,
            ),
            other => panic!("{}: unknown dtype {other}", self.name),
        }
    }

    pub fn input(&self, key: &str) -> Tensor {
        self.tensor("inputs", key)
    }
    pub fn output(&self, key: &str) -> Tensor {
        self.tensor("outputs", key)
    }
    pub fn param(&self, key: &str) -> &Value {
        &self.json["params"][key]
    }
}

fn as_f64(x: &Value) -> f64 {
    match x {
        Value::Number(n) => n.as_f64().expect("number"),
        // golden.py writes non-finite values as strings
        Value::String(s) => match s.as_str() {
            "inf" | "Infinity" => f64::INFINITY,
            "-inf" | "-Infinity" => f64::NEG_INFINITY,
            _ => f64::NAN,
        },
        Value::Null => f64::NAN,
        other => panic!("not a number: {other}"),
    }
}

/// Asserts `got` equals `want` elementwise within `rtol` relative error (plus a tiny
/// absolute floor for values near zero), with the same shape.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rtol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let g = got.to_dtype(DType::F64).to_vec::<f64>();
    let w = want.to_vec::<f64>();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = a == b
            || (a - b).abs() <= rtol * b.abs().max(1e-12) + 1e-300
            || (a - b).abs() < rtol * 1e-6;
        assert!(
            ok,
            "{what}[{i}]: got {a}, PyTorch {b} (rel err {:e})",
            (a - b).abs() / b.abs()
        );
    }
}
